"""Recipe: one TopK SAE on every layer's residual stream of a model, all from one forward pass per batch.

    python train/all_layers.py --model smollm2-135m --tokens 2000000 --out runs/all_layers
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
    p.add_argument("--tokens", type=int, default=2_000_000)
    p.add_argument("--expansion", type=float, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--text", default="stdlib")
    p.add_argument("--out", default="runs/all_layers")
    p.add_argument("--wandb", default="auto")
    a = p.parse_args()
    model = models.load(a.model)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    cfg = validate(TrainConfig, {
        "model": a.model, "text": {"source": a.text}, "total_tokens": a.tokens, "out": a.out,
        "saes": [{"architecture": "topk", "expansion": a.expansion, "k": a.k, "sweep": {"hook": hooks}}],
        "checkpoint_every_tokens": max(a.tokens // 10, 4096), "wandb": {"mode": a.wandb},
    })
    summary = train(cfg, model=model)
    for name, r in summary["saes"].items():
        print(f"{name}: explained variance {r['explained_variance']:.3f}, CE recovered {r.get('ce_loss_recovered', float('nan')):.3f}")


if __name__ == "__main__":
    main()
