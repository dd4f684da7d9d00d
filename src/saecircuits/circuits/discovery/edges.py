"""The edge graph of a model that edge-level methods score: senders, receivers and their hooks.

Edges run sender -> receiver between the input embedding, heads, MLPs and the logits; a receiver
head's query, key and value inputs are separate receivers (``L.H:q``, ``L.H:k``, ``L.H:v``; per
query head under grouped-query attention). A sender's change is its output on the corrupted run
minus its output on the clean run. ``edge_attribution`` estimates every edge's effect to first
order, ``edge_patching`` measures chosen edges exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer
from transformer_lens.HookedTransformer import POST_NORM_ARCHITECTURES

from saecircuits.circuits.patching import z_hook
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.hooks import head_name


@dataclass
class EdgeScores:
    """Scores of every sender -> receiver edge: ``scores`` [n_senders, n_receivers], NaN where no edge exists.

    Senders: ``input``, heads ``L.H``, ``mlpL``. Receivers: ``L.H:q``/``:k``/``:v``, ``mlpL``, ``logits``.
    """

    senders: list[str]
    receivers: list[str]
    scores: torch.Tensor
    method: str

    def top(self, k: int, absolute: bool = True) -> list[tuple[str, str, float]]:
        s = self.scores.nan_to_num(0.0)
        order = (s.abs() if absolute else s).flatten().argsort(descending=True)[:k]
        R = len(self.receivers)
        return [(self.senders[int(i) // R], self.receivers[int(i) % R], float(s.flatten()[i])) for i in order]

    def edge(self, sender: str, receiver: str) -> float:
        return float(self.scores[self.senders.index(sender), self.receivers.index(receiver)])


def node_lists(model: HookedTransformer) -> tuple[list[str], list[float], list[str], list[float]]:
    """Senders and receivers with their depth (an edge needs sender depth < receiver depth)."""
    c = model.cfg
    mlp_depth = 0.0 if c.parallel_attn_mlp else 0.5  # a parallel MLP reads the same stream as the heads
    senders, s_depth = ["input"], [-1.0]
    receivers, r_depth = [], []
    for L in range(c.n_layers):
        for h in range(c.n_heads):
            senders.append(head_name(L, h))
            s_depth.append(L)
            for x in "qkv":
                receivers.append(f"{head_name(L, h)}:{x}")
                r_depth.append(L)
        if not c.attn_only:
            senders.append(f"mlp{L}")
            s_depth.append(L + mlp_depth)
            receivers.append(f"mlp{L}")
            r_depth.append(L + mlp_depth)
    receivers.append("logits")
    r_depth.append(float(c.n_layers))
    return senders, s_depth, receivers, r_depth


@contextlib.contextmanager
def edge_hooks_enabled(model: HookedTransformer) -> Iterator[None]:
    """Expose per-head q/k/v inputs (ungrouped under GQA, so each query head has its own) and MLP inputs."""
    c = model.cfg
    if c.original_architecture in POST_NORM_ARCHITECTURES:
        raise SaecircuitsError(f"edge attribution does not support post-norm blocks ({c.original_architecture})")
    saved = (c.use_split_qkv_input, c.ungroup_grouped_query_attention, c.use_hook_mlp_in)
    c.use_split_qkv_input = True
    c.ungroup_grouped_query_attention = c.n_key_value_heads is not None
    if not c.attn_only:
        c.use_hook_mlp_in = True
    try:
        yield
    finally:
        c.use_split_qkv_input, c.ungroup_grouped_query_attention, c.use_hook_mlp_in = saved


def head_outputs(model: HookedTransformer, layer: int, z_base: torch.Tensor, z_new: torch.Tensor) -> torch.Tensor:
    """Each head's change to the residual stream when only its z goes from ``z_base`` to ``z_new``.

    [H, batch, pos, d_model]. Exact also with a norm after the attention output (Gemma's post-norms).
    """
    a = model.blocks[layer].attn
    dz = z_new - z_base  # [b, pos, H, d_head]
    per_head = torch.einsum("bphd,hdm->hbpm", dz, a.W_O)
    if not model.cfg.use_normalization_before_and_after:
        return per_head
    post = model.blocks[layer].ln1_post
    base = torch.einsum("bphd,hdm->bpm", z_base, a.W_O) + a.b_O
    return post(base[None] + per_head) - post(base)[None]


def sender_deltas(model: HookedTransformer, clean: dict, corrupted: dict) -> torch.Tensor:
    """Corrupted-minus-clean output of every sender, [n_senders, batch, pos, d_model]."""
    c = model.cfg
    out = [corrupted["blocks.0.hook_resid_pre"] - clean["blocks.0.hook_resid_pre"]]
    for L in range(c.n_layers):
        out.extend(head_outputs(model, L, clean[z_hook(L)], corrupted[z_hook(L)]).unbind(0))
        if not c.attn_only:
            out.append(corrupted[f"blocks.{L}.hook_mlp_out"] - clean[f"blocks.{L}.hook_mlp_out"])
    return torch.stack(out)


def sender_hooks(model: HookedTransformer) -> list[str]:
    """The hooks ``sender_deltas`` reads: the embedding, every layer's ``hook_z`` and MLP output."""
    names = ["blocks.0.hook_resid_pre"] + [z_hook(L) for L in range(model.cfg.n_layers)]
    if not model.cfg.attn_only:
        names += [f"blocks.{L}.hook_mlp_out" for L in range(model.cfg.n_layers)]
    return names
