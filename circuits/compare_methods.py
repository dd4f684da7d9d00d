"""Run the circuit-method comparison (issue 21) for one task and model and write circuits/results/{task}-{model}/.

    python circuits/compare_methods.py --model smollm2-135m --task ioi
"""

from __future__ import annotations

import argparse
import time

from saecircuits.circuits.comparison import compare
from saecircuits.circuits.comparison_files import write_comparison
from saecircuits.circuits.config import ComparisonConfig, PruningConfig
from saecircuits.model.loading import load

p = argparse.ArgumentParser()
p.add_argument("--model", default="smollm2-135m")
p.add_argument("--task", default="ioi")
p.add_argument("--train", type=int, default=32)
p.add_argument("--val", type=int, default=32)
p.add_argument("--test", type=int, default=64)
p.add_argument("--pruning-steps", type=int, default=15)
p.add_argument("--out", default=None)
a = p.parse_args()
t0 = time.perf_counter()
cfg = ComparisonConfig(task=a.task, n_train=a.train, n_val=a.val, n_test=a.test, greedy_pool=16,
                       pruning=PruningConfig(steps=a.pruning_steps, batch_size=8))
model = load(a.model)
out = compare(model, cfg, note=lambda s: print(f"{time.perf_counter() - t0:7.1f}s {s}", flush=True))
out["config"] = {**cfg.model_dump(), "seconds": time.perf_counter() - t0}
print(write_comparison(out, a.out or f"circuits/results/{a.task}-{a.model}/methods"))
