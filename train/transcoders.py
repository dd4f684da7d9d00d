"""Recipe: a skip-transcoder suite (MLP input -> MLP output) on chosen layers of a model.

    python train/transcoders.py --layers 2 6 10 --tokens 1000000 --out runs/transcoders
"""

from __future__ import annotations

import argparse

from saecircuits.core.config import validate
from saecircuits.model import loading as models
from saecircuits.training.config import TrainConfig
from saecircuits.training.run import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 6, 10])
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--out", default="runs/transcoders")
    p.add_argument("--wandb", default="auto")
    a = p.parse_args()
    model = models.load(a.model)
    saes = [{"architecture": "batchtopk", "hook": f"blocks.{L}.ln2.hook_normalized", "hook_out": f"blocks.{L}.hook_mlp_out",
             "skip": True, "d_sae": a.d_sae, "k": a.k} for L in a.layers]
    cfg = validate(TrainConfig, {"model": a.model, "total_tokens": a.tokens, "out": a.out, "saes": saes,
                                 "checkpoint_every_tokens": max(a.tokens // 10, 4096), "wandb": {"mode": a.wandb}})
    summary = train(cfg, model=model)
    for name, r in summary["saes"].items():
        print(f"{name}: explained variance of the MLP output {r['explained_variance']:.3f}, "
              f"CE recovered {r.get('ce_loss_recovered', float('nan')):.3f}")


if __name__ == "__main__":
    main()
