"""Freezing a model's own parameters while something else (a lens, an input) gets the gradients."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No gradients into ``model``'s parameters inside the block; each one's ``requires_grad`` is restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
