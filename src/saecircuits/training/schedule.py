"""The numbers a step uses besides the batch: the learning-rate factor of each step, and the
geometric median the decoder bias may start from."""

from __future__ import annotations

import torch


def geometric_median(x: torch.Tensor, iters: int = 50, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to the rows of x."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * m.norm().clamp_min(1e-8):
            return new
        m = new
    return m


def lr_factor(step: int, total_steps: int, warmup: float, decay: float) -> float:
    """Linear warm-up over the first ``warmup`` share of steps, linear decay to 0 over the last ``decay`` share."""
    w = max(1, int(warmup * total_steps)) if warmup > 0 else 0
    f = min(1.0, (step + 1) / w) if w else 1.0
    d0 = int((1 - decay) * total_steps)
    if decay > 0 and step >= d0:
        f *= max(0.0, (total_steps - step) / max(1, total_steps - d0))
    return f
