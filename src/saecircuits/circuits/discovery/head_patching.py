"""Head selection by exact activation patching: each head's effect alone, and the circuit of the strongest.

A single-head sweep (``HeadPatcher.sweep``) replaces one head's output at a time by ``values`` (the
corrupted run of the same prompt for activation patching, an ablation value otherwise) and
normalises the metric's change: 0 = no effect, 1 = as if the whole input were corrupted. The
circuit is the ``size`` heads with the largest |effect|, or every head at or above a threshold.
"""

from __future__ import annotations

import time

import torch

from saecircuits.circuits.patching import HeadPatcher
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.hooks import head_name


def head_effects(patcher: HeadPatcher, values: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The normalised effect of replacing each head alone by ``values``, [n_layers, n_heads], and the
    seconds the batched sweep took."""
    t = time.perf_counter()
    metric = patcher.sweep(values)
    seconds = time.perf_counter() - t
    return patcher.normalized_effect(metric), seconds


def select_heads(scores: torch.Tensor, size: int | None = None, threshold: float | None = None) -> torch.Tensor:
    """A circuit mask [n_layers, n_heads] (True = in): the ``size`` largest |scores|, or |scores| >= threshold."""
    a = scores.abs().nan_to_num(0.0)
    mask = torch.zeros_like(a, dtype=torch.bool)
    if size is not None:
        mask.view(-1)[a.flatten().argsort(descending=True)[: min(size, a.numel())]] = True
    elif threshold is not None:
        mask = a >= threshold
    else:
        raise SaecircuitsError("select a circuit by size or by threshold")
    return mask


def select_circuit(scores: torch.Tensor, size: int | None, threshold: float) -> tuple[torch.Tensor, bool]:
    """The circuit mask: the ``size`` largest |scores| when ``size`` is given, else every head at or above
    ``threshold``, else (when none is) the single strongest head; and whether it fell back to that head."""
    mask = select_heads(scores, size, None if size else threshold)
    if bool(mask.any()):
        return mask, False
    return select_heads(scores, size=1), True


def circuit_heads(mask: torch.Tensor) -> list[str]:
    """The heads of a circuit mask [n_layers, n_heads] as ``L.H``, layer by layer."""
    return [head_name(int(L), int(h)) for L, h in mask.nonzero()]
