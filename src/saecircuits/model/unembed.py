"""Unembedding: residual-stream vectors to logits through the final norm, ``W_U`` and the logit soft-cap."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities.activation_functions import apply_softcap


def unembed_normed(model: HookedTransformer, normed: torch.Tensor) -> torch.Tensor:
    """Logits of residual vectors already through the final norm: ``W_U`` (and ``b_U``), then the soft-cap
    (Gemma's ``cap * tanh(x / cap)``, the identity without one). [..., d_model] -> [..., vocab]."""
    return apply_softcap(model.unembed(normed), model.cfg.output_logits_soft_cap)


def unembed(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """Logits of residual vectors: the final norm (when the model has one), then ``unembed_normed``.

    [batch, pos, d_model] -> [batch, pos, vocab] (the norm modules expect a batch and a position dimension)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return unembed_normed(model, resid)
