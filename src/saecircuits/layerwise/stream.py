"""The residual stream of a model at every depth, over text in bounded batches.

Depths are counted the way the layer analyses report them: stream index ``s`` in ``0..n_layers``,
where ``s = 0`` is the embedding (``blocks.0.hook_resid_pre``) and ``s = L + 1`` is the residual
after block ``L`` (``blocks.L.hook_resid_post``). Labels: ``embed``, ``0``, ``1``, ... (the block).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformer_lens import HookedTransformer

from saecircuits.activations.site import Site
from saecircuits.activations.store import ModelActivations
from saecircuits.core.errors import SaecircuitsError
from saecircuits.layerwise.config import StreamConfig
from saecircuits.text.config import Split
from saecircuits.text.source import TextSource


def stream_hooks(model: HookedTransformer) -> list[str]:
    """Hook names of stream indices 0..n_layers."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]


def stream_labels(model: HookedTransformer) -> list[str]:
    return ["embed"] + [str(layer) for layer in range(model.cfg.n_layers)]


def token_batches(model: HookedTransformer, cfg: StreamConfig, split: Split | None = None) -> Iterator[torch.Tensor]:
    """[batch, context_size] token batches, ``cfg.tokens`` in all (rounded up to whole batches)."""
    source = TextSource.for_model(cfg.text, model)
    n = 0
    for batch in source.batches(cfg.batch_size, split or cfg.split, limit_tokens=cfg.tokens):
        n += 1
        yield batch
    if n == 0:
        raise SaecircuitsError(
            f"text source '{cfg.text.source}' gave no batch of {cfg.batch_size} contexts of {cfg.text.context_size} tokens",
            "lower --batch-size or --context-size, or use a longer text",
        )


def activations(model: HookedTransformer, hooks: list[str]) -> ModelActivations:
    """One forward pass for many hooks (the store's), keeping every position: callers mask with ``keep_mask``."""
    return ModelActivations(model, [Site(h) for h in hooks], exclude_special_tokens=True, exclude_first_position=True)
