"""Scores of matched features: the cosine of two sets of directions, and the distribution of a
score over the matched pairs (the summary every matching reports).
"""

from __future__ import annotations

import numpy as np
import torch


def cosine_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[n_x, n_y] cosine of the rows of x and y."""
    x = x.float() / x.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = y.float() / y.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ y.T


def distribution(values: np.ndarray, name: str, thresholds: tuple[float, ...] = (0.5, 0.7, 0.9),
                 bins: int = 20, total: int | None = None) -> dict:
    """Mean, median, quantiles, shares above thresholds (of ``total`` if given) and a [-1, 1] histogram."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    denom = total if total is not None else max(len(v), 1)
    hist, edges = np.histogram(v, bins=bins * 2, range=(-1, 1))
    out = {f"mean_{name}": float(v.mean()) if len(v) else float("nan"),
           f"median_{name}": float(np.median(v)) if len(v) else float("nan"),
           f"q10_{name}": float(np.quantile(v, 0.1)) if len(v) else float("nan"),
           f"q90_{name}": float(np.quantile(v, 0.9)) if len(v) else float("nan")}
    for t in thresholds:
        out[f"share_{name}_gt_{t:g}"] = float((v > t).sum() / max(denom, 1))
    out[f"hist_{name}"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in hist]}
    return out
