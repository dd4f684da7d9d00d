"""Ablation of attention heads: the values a head's output is replaced by.

Replacement values for a head's ``hook_z`` (per position, so every task keeps one prompt length):

- ``mean``: the mean over the task's corrupted prompts (the reference distribution; for IOI the
  ABC prompts, as in Wang et al.);
- ``zero``: zeros;
- ``resample``: the corrupted run of another prompt, drawn at random (a seeded permutation);
- ``patch``: the corrupted run of the same prompt (activation patching).

A circuit is validated with these values in ``validation``.
"""

from __future__ import annotations

from typing import Literal

import torch

from saecircuits.circuits.evaluation import derangement
from saecircuits.circuits.patching import HeadPatcher
from saecircuits.core.errors import SaecircuitsError

AblationKind = Literal["mean", "zero", "resample", "patch"]
ABLATIONS = ("mean", "zero", "resample", "patch")


def ablation_values(patcher: HeadPatcher, kind: str, seed: int = 0) -> torch.Tensor:
    """Replacement z for every head: [n_layers, n_prompts or 1, pos, n_heads, d_head]."""
    zc = patcher.z_corrupted
    if kind == "mean":
        return zc.mean(1, keepdim=True)
    if kind == "zero":
        return torch.zeros_like(zc[:, :1])
    if kind == "patch":
        return zc
    if kind == "resample":  # another prompt's corrupted run, never the prompt's own pair
        n = zc.shape[1]
        return zc[:, derangement(n, seed)] if n > 1 else zc
    raise SaecircuitsError(f"unknown ablation '{kind}'", f"choose one of: {', '.join(ABLATIONS)}")
