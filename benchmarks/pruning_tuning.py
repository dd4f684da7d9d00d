"""Edge pruning's settings chosen on validation prompts only (issue 21: "tuned on validation").

For each setting (learning rate, steps per target, objective), edge pruning trains on the comparison's
train prompts and its f(k) curve over MIB's sizes is scored on the comparison's *validation* prompts
(counterfactual ablation): CPR, CMD and k*. The test prompts are never built into a number here. The
setting with the lowest validation CMD is the one to pass to ``saecircuits circuit-methods``.

Run:   nice -n 19 python benchmarks/pruning_tuning.py --task ioi --lr 0.1 --lr 0.3 --lr 1.0
Smoke: python benchmarks/pruning_tuning.py --smoke
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness


def tune(model, task: str, granularity: str, settings: list[dict], base: dict, n: tuple[int, int, int],
         seed: int = 0, note=print) -> list[dict]:
    """Validation CPR/CMD/k* of edge pruning under each setting (PruningConfig fields over ``base``)."""
    from saecircuits.circuits.config import PruningConfig
    from saecircuits.circuits.discovery.edge_pruning import edge_pruning
    from saecircuits.circuits.evaluation import Evaluator
    from saecircuits.circuits.faithfulness import MIB_SIZES, mib_counts
    from saecircuits.circuits.masked_forward import MaskedForward
    from saecircuits.circuits.splits import build_splits
    from saecircuits.circuits.sweep import curve, summarise, top_k

    splits = build_splits(task, model, *n, seed)  # the same prompts circuit-methods builds with these sizes and seed
    forward = MaskedForward(model)
    val = Evaluator(forward, splits.val, splits.train, batch_size=16, seed=seed)
    n_units = forward.graph.n_units(granularity)
    rows = []
    for s in settings:
        cfg = PruningConfig(**{**base, **s})
        t = time.perf_counter()
        res = edge_pruning(forward, splits.train, cfg, granularity)
        seconds = time.perf_counter() - t
        vals = curve(val, "counterfactual", granularity,
                     lambda k: top_k(res.ranking(k / n_units), k, absolute=False))
        summary = summarise(vals["task"], val.empty("counterfactual")["task"], val.full["task"], MIB_SIZES,
                            mib_counts(n_units), n_boot=200, seed=seed)
        rows.append({**s, "seconds": seconds, "cpr": summary["cpr"], "cmd": summary["cmd"],
                     "k_star": summary["k_star"], "curve": [p["f"] for p in summary["curve"]]})
        note(f"{s}: validation CMD {summary['cmd']:.3f} CPR {summary['cpr']:.3f} k* {summary['k_star']} "
             f"({seconds:.0f} s)")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="ioi")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--granularity", default="edges", choices=["edges", "nodes", "heads"])
    p.add_argument("--lr", type=float, action="append")
    p.add_argument("--steps", type=int, action="append")
    p.add_argument("--objective", action="append", choices=["kl", "task"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    import torch

    from saecircuits.model.loading import load

    if a.smoke:
        sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
        from conftest import make_tiny_model

        model, task, n, name = make_tiny_model(n_layers=2, n_kv=2), "induction", (12, 8, 8), "tiny"
        a.steps = a.steps or [2]
    else:
        model, task, n, name = load(a.model), a.task, (32, 32, 64), a.model
    grid = [{"lr": lr, "steps": st, "objective": ob} for lr, st, ob in
            itertools.product(a.lr or [0.1], a.steps or [15], a.objective or ["kl"])]
    rows = tune(model, task, a.granularity, grid, {"batch_size": a.batch}, n)
    name_json = harness.RESULTS / f"pruning_tuning_{task}_{name}_{a.granularity}.json"
    if not a.smoke and name_json.exists():  # rows of earlier runs (same task, model, splits, batch) are kept
        old = json.loads(name_json.read_text())
        if (old["split_sizes"], old["batch_size"]) == (list(n), a.batch):
            new = {(r["lr"], r["steps"], r["objective"]) for r in rows}
            rows = [r for r in old["rows"] if (r["lr"], r["steps"], r["objective"]) not in new] + rows
    best = min(rows, key=lambda r: r["cmd"])
    data = {"task": task, "model": name, "granularity": a.granularity, "split_sizes": n, "batch_size": a.batch,
            "rows": rows, "best": {k: best[k] for k in ("lr", "steps", "objective")}, "machine": harness.machine(),
            "threads": torch.get_num_threads()}
    table = harness.md_table(["lr", "steps/target", "objective", "val CPR", "val CMD", "val k* (%)", "seconds",
                              "val f at 0.1 ... 100%"],
                             [[r["lr"], r["steps"], r["objective"], f"{r['cpr']:.3f}", f"{r['cmd']:.3f}", r["k_star"],
                               f"{r['seconds']:.0f}", " ".join(f"{f:.2f}" for f in r["curve"])] for r in rows])
    md = (f"# Edge pruning tuned on validation: {task}, {name}, {a.granularity}\n\n"
          f"Train {n[0]} prompts, validation {n[1]} (the comparison's own splits, seed 0); test prompts unused. "
          f"Batch {a.batch}, counterfactual ablation.\n\n{table}\n\nLowest validation CMD: {data['best']}.\n")
    if a.smoke:
        print(md)
        return
    harness.write(f"pruning_tuning_{task}_{name}_{a.granularity}", data, md)
    print(md)
    print(json.dumps(data["best"]))


if __name__ == "__main__":
    main()
