"""Interventions on attention heads: batched head patching and ablation, edge attribution, edge patching.

Heads are intervened on at ``blocks.L.attn.hook_z`` ([batch, pos, head, d_head], one slice per
query head, also for grouped-query attention). Three tools:

- ``HeadPatcher``: caches one clean and one corrupted run, then runs any number of head masks
  ("keep these heads, replace the others' z by these values") as batched forwards that start at
  the first intervened layer from the cached clean residual stream (``start_at_layer``) and unembed
  only the positions the task's metric reads. A single-head sweep runs every head of a layer in one
  forward by stacking one copy of the prompt batch per head.
- ``edge_attribution``: edge attribution patching (EAP, Syed et al. 2023) for every edge
  sender -> receiver between the input embedding, heads, MLPs and the logits; a receiver head's
  query, key and value inputs are separate receivers (``L.H:q``, ``L.H:k``, ``L.H:v``; per query
  head under grouped-query attention). Score = (sender output on corrupted - on clean) . d metric /
  d receiver input, averaged over prompts: the first-order estimate of the metric change when
  only that edge carries the corrupted activation. ``ig_steps`` > 0 averages the gradients over
  inputs interpolated between corrupted and clean embeddings (EAP-IG, Hanna et al. 2024).
- ``patch_edges``: the exact version for chosen edges: the receiver's input gets the sender's
  corrupted-minus-clean output added, everything else stays clean; batched over edges.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.hooks import head_name
from saecircuits.circuits.tasks import Task, unembed


def all_head_names(model: HookedTransformer) -> list[str]:
    return [head_name(L, h) for L in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


class HeadPatcher:
    """Batched interventions on head outputs for one task.

    Caches (for every layer) the clean residual stream entering the layer, and the clean and
    corrupted ``hook_z``: memory ~ n_prompts x pos x n_layers x (d_model + 2 n_heads d_head) floats.
    ``max_rows``: sequences per forward pass (prompt copies stacked for masks or heads).
    """

    def __init__(self, model: HookedTransformer, task: Task, batch_size: int = 32, max_rows: int = 256,
                 lean: bool = True):
        from saecircuits.model.forward import LeanForward, unsupported

        self.model, self.task = model, task
        # the project's lean forward (fused QKV, weights laid out once) where it covers the model: ~1.5x faster
        self._lean = LeanForward(model) if lean and unsupported(model) is None else None
        self.batch_size, self.max_rows = batch_size, max_rows
        c = model.cfg
        self.n_layers, self.n_heads = c.n_layers, c.n_heads
        names = [_z(L) for L in range(c.n_layers)] + [f"blocks.{L}.hook_resid_pre" for L in range(c.n_layers)]
        resid, z_clean, z_corr, m_clean, m_corr = [], [], [], [], []
        with torch.inference_mode():
            for i in range(0, len(task), batch_size):
                idx = torch.arange(i, min(i + batch_size, len(task)))
                for tokens, zs, ms in ((task.clean[idx], z_clean, m_clean), (task.corrupted[idx], z_corr, m_corr)):
                    final, cache = model.run_with_cache(tokens.to(c.device), names_filter=lambda n: n in names,
                                                        stop_at_layer=c.n_layers)
                    zs.append(torch.stack([cache[_z(L)] for L in range(c.n_layers)]))
                    ms.append(task.subset(idx).metric(unembed(model, final[:, list(task.positions)])))
                    if zs is z_clean:
                        resid.append(torch.stack([cache[f"blocks.{L}.hook_resid_pre"] for L in range(c.n_layers)]))
        self.resid = torch.cat(resid, 1)  # [L, n, pos, d_model]
        self.z_clean = torch.cat(z_clean, 1)  # [L, n, pos, H, d_head]
        self.z_corrupted = torch.cat(z_corr, 1)
        self.clean_metric = torch.cat(m_clean)  # [n]
        self.corrupted_metric = torch.cat(m_corr)

    @torch.inference_mode()
    def run(self, keep: torch.Tensor, values: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """The task metric with heads replaced: [M, n] for M masks.

        ``keep``: [M, n_layers, n_heads] bool, False = replace that head's z by ``values``.
        ``values``: [n_layers, n or 1, pos, n_heads, d_head] replacement z (per prompt, or one for all).
        """
        L, H = self.n_layers, self.n_heads
        if keep.dim() == 2:
            keep = keep[None]
        if keep.shape[1:] != (L, H):
            raise SaecircuitsError(f"head mask has shape {tuple(keep.shape)}, expected [masks, {L}, {H}]")
        prompts = torch.arange(len(self.task)) if prompts is None else prompts
        M = keep.shape[0]
        out = self.clean_metric[prompts][None].repeat(M, 1)
        touched = (~keep).any(0).any(1)  # layers with any replaced head
        if not bool(touched.any()):
            return out
        start = int(touched.nonzero()[0, 0])
        per_prompt = values.shape[1] != 1
        b = max(1, min(self.batch_size, self.max_rows))
        for i in range(0, len(prompts), b):
            idx = prompts[i: i + b]
            m_chunk = max(1, self.max_rows // len(idx))
            for j in range(0, M, m_chunk):
                ks = keep[j: j + m_chunk]
                out[j: j + len(ks), i: i + len(idx)] = self._run_chunk(ks, values, idx, start, per_prompt)
        return out

    def _run_chunk(self, keep: torch.Tensor, values: torch.Tensor, idx: torch.Tensor, start: int,
                   per_prompt: bool) -> torch.Tensor:
        m, b = keep.shape[0], len(idx)
        edits = {}
        for layer in range(start, self.n_layers):
            k = keep[:, layer]
            if bool(k.all()):
                continue
            mask = k.repeat_interleave(b, 0)[:, None, :, None]  # [m*b, 1, H, 1], mask-major
            vals = values[layer][idx] if per_prompt else values[layer]
            vals = vals.repeat(m, 1, 1, 1) if per_prompt else vals
            edits[_z(layer)] = lambda z, mask=mask, vals=vals: torch.where(mask, z, vals)
        final = self._forward_from(self.resid[start][idx].repeat(m, 1, 1), start, edits)
        logits = unembed(self.model, final[:, list(self.task.positions)])
        return self.task.subset(idx.repeat(m)).metric(logits).view(m, b)

    def _forward_from(self, resid: torch.Tensor, start: int, edits: dict) -> torch.Tensor:
        """The residual stream after the last block, from ``resid`` entering block ``start``, with
        ``edits[hook_z name](z) -> z`` applied. Uses the lean forward where it covers the model."""
        if self._lean is None:
            hooks = [(name, lambda z, hook, f=f: f(z)) for name, f in edits.items()]
            return self.model.run_with_hooks(resid, start_at_layer=start, stop_at_layer=self.n_layers, fwd_hooks=hooks)

        def keep(name, value):
            # LeanForward hands each hook_z to ``keep`` before projecting it, so editing it in place intervenes
            f = edits.get(name)
            if f is not None:
                value.copy_(f(value))

        for layer in range(start, self.n_layers):
            resid = self._lean.block(layer, resid, keep)
        return resid

    def sweep(self, values: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Replace one head at a time: the metric for every head and prompt, [n_layers, n_heads, n].

        Each layer is one batched run of ``n_heads`` stacked copies of the prompts, started at that layer.
        """
        L, H = self.n_layers, self.n_heads
        out = self.clean_metric[None, None].repeat(L, H, 1)
        eye = ~torch.eye(H, dtype=torch.bool)
        for layer in range(L) if layers is None else layers:
            keep = torch.ones(H, L, H, dtype=torch.bool)
            keep[:, layer] = eye
            out[layer] = self.run(keep, values)
        return out

    def normalized_effect(self, metric: torch.Tensor) -> torch.Tensor:
        """(patched - clean) / (corrupted - clean) of mean metrics: 0 = no effect, 1 = as if fully corrupted."""
        denom = float(self.corrupted_metric.mean() - self.clean_metric.mean())
        if abs(denom) < 1e-9:
            denom = float("nan")
        return (metric.mean(-1) - self.clean_metric.mean()) / denom


# --- edges --------------------------------------------------------------------------------------

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


def _node_lists(model: HookedTransformer) -> tuple[list[str], list[float], list[str], list[float]]:
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
def _edge_hooks_enabled(model: HookedTransformer) -> Iterator[None]:
    """Expose per-head q/k/v inputs (ungrouped under GQA, so each query head has its own) and MLP inputs."""
    c = model.cfg
    from transformer_lens.HookedTransformer import POST_NORM_ARCHITECTURES

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


def _sender_deltas(model: HookedTransformer, clean: dict, corrupted: dict) -> torch.Tensor:
    """Corrupted-minus-clean output of every sender, [n_senders, batch, pos, d_model]."""
    c = model.cfg
    out = [corrupted["blocks.0.hook_resid_pre"] - clean["blocks.0.hook_resid_pre"]]
    for L in range(c.n_layers):
        out.extend(head_outputs(model, L, clean[_z(L)], corrupted[_z(L)]).unbind(0))
        if not c.attn_only:
            out.append(corrupted[f"blocks.{L}.hook_mlp_out"] - clean[f"blocks.{L}.hook_mlp_out"])
    return torch.stack(out)


def _sender_hooks(model: HookedTransformer) -> list[str]:
    names = ["blocks.0.hook_resid_pre"] + [_z(L) for L in range(model.cfg.n_layers)]
    if not model.cfg.attn_only:
        names += [f"blocks.{L}.hook_mlp_out" for L in range(model.cfg.n_layers)]
    return names


def _receiver_hooks(model: HookedTransformer) -> list[str]:
    names = []
    for L in range(model.cfg.n_layers):
        names += [f"blocks.{L}.hook_{x}_input" for x in "qkv"]
        if not model.cfg.attn_only:
            names.append(f"blocks.{L}.hook_mlp_in")
    return names + [f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]


def _stack_grads(model: HookedTransformer, grads: dict) -> torch.Tensor:
    """Receiver gradients in receiver order, [n_receivers, batch, pos, d_model]."""
    out = []
    for L in range(model.cfg.n_layers):
        q, k, v = (grads[f"blocks.{L}.hook_{x}_input"] for x in "qkv")  # [b, pos, H, d]
        out.append(torch.stack([q, k, v], 3).permute(2, 3, 0, 1, 4).flatten(0, 1))  # [H*3, b, pos, d]
        if not model.cfg.attn_only:
            out.append(grads[f"blocks.{L}.hook_mlp_in"][None])
    out.append(grads[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][None])
    return torch.cat(out)


@contextlib.contextmanager
def _frozen(model: HookedTransformer) -> Iterator[None]:
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def edge_attribution(model: HookedTransformer, task: Task, batch_size: int = 8, ig_steps: int = 0) -> EdgeScores:
    """EAP scores of every edge (EAP-IG with ``ig_steps`` interpolation steps), averaged over prompts."""
    senders, s_depth, receivers, r_depth = _node_lists(model)
    valid = torch.tensor(s_depth)[:, None] < torch.tensor(r_depth)[None, :]
    scores = torch.zeros(len(senders), len(receivers), dtype=torch.float64)
    alphas = [1.0] if ig_steps <= 0 else [(k + 1) / ig_steps for k in range(ig_steps)]
    c = model.cfg
    pos = list(task.positions)
    with _edge_hooks_enabled(model), _frozen(model):
        for i in range(0, len(task), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(task)))
            sub = task.subset(idx)
            with torch.no_grad():
                snames = _sender_hooks(model)
                _, cc = model.run_with_cache(sub.clean.to(c.device), names_filter=lambda n: n in snames, stop_at_layer=c.n_layers)
                _, cx = model.run_with_cache(sub.corrupted.to(c.device), names_filter=lambda n: n in snames, stop_at_layer=c.n_layers)
                deltas = _sender_deltas(model, cc, cx)
                emb_clean = model.embed(sub.clean.to(c.device)) if ig_steps > 0 else None
                emb_corr = model.embed(sub.corrupted.to(c.device)) if ig_steps > 0 else None
            grads: dict[str, torch.Tensor] = {}

            def save(act, hook):
                def keep(g, name=hook.name):
                    grads[name] = grads.get(name, 0) + g.detach() / len(alphas)

                act.register_hook(keep)

            for alpha in alphas:
                fwd = [(n, save) for n in _receiver_hooks(model)]
                if ig_steps > 0:
                    mix = emb_corr + alpha * (emb_clean - emb_corr)
                    fwd.insert(0, ("hook_embed", lambda e, hook, mix=mix: mix.clone().requires_grad_(True)))
                else:
                    fwd.insert(0, ("hook_embed", lambda e, hook: e.detach().requires_grad_(True)))
                with torch.enable_grad(), model.hooks(fwd_hooks=fwd):
                    final = model(sub.clean.to(c.device), stop_at_layer=c.n_layers)
                    sub.metric(unembed(model, final[:, pos])).sum().backward()
            g = _stack_grads(model, grads)
            scores += (deltas.flatten(1) @ g.flatten(1).T).double()
    scores = scores / len(task)
    scores[~valid] = float("nan")
    return EdgeScores(senders, receivers, scores.float(), "eap-ig" if ig_steps > 0 else "eap")


_RECEIVER = re.compile(r"^(\d+)\.(\d+):([qkv])$")


def patch_edges(model: HookedTransformer, task: Task, edges: Sequence[tuple[str, str]], batch_size: int = 16,
                max_rows: int = 256) -> torch.Tensor:
    """Exact metric change when only each edge carries the sender's corrupted output: [n_edges, n_prompts].

    The receiver's input becomes clean input + (sender output on corrupted - on clean); all other
    inputs stay clean. Edges into the same layer run as one batched forward from that layer.
    """
    senders, s_depth, receivers, r_depth = _node_lists(model)
    for s, r in edges:
        if s not in senders or r not in receivers:
            raise SaecircuitsError(f"unknown edge {s} -> {r}", "senders: input, L.H, mlpL; receivers: L.H:q|k|v, mlpL, logits")
        if s_depth[senders.index(s)] >= r_depth[receivers.index(r)]:
            raise SaecircuitsError(f"{s} -> {r} is not an edge: the sender does not come before the receiver")
    c = model.cfg
    pos = list(task.positions)
    out = torch.zeros(len(edges), len(task))
    by_layer: dict[int, list[int]] = {}
    for e, (_, r) in enumerate(edges):
        by_layer.setdefault(_receiver_layer(r, c.n_layers), []).append(e)
    names = _sender_hooks(model) + [f"blocks.{L}.hook_resid_pre" for L in range(c.n_layers)]
    names.append(f"blocks.{c.n_layers - 1}.hook_resid_post")
    with _edge_hooks_enabled(model), torch.inference_mode():
        for i in range(0, len(task), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(task)))
            sub = task.subset(idx)
            final, cc = model.run_with_cache(sub.clean.to(c.device), names_filter=lambda n: n in names, stop_at_layer=c.n_layers)
            _, cx = model.run_with_cache(sub.corrupted.to(c.device), names_filter=lambda n: n in names, stop_at_layer=c.n_layers)
            base = sub.metric(unembed(model, final[:, pos]))
            deltas = _sender_deltas(model, cc, cx)
            b = len(idx)
            for layer, es in by_layer.items():
                for j in range(0, len(es), max(1, max_rows // b)):
                    chunk = es[j: j + max(1, max_rows // b)]
                    d = torch.stack([deltas[senders.index(edges[e][0])] for e in chunk])  # [m, b, pos, d]
                    rec = [edges[e][1] for e in chunk]
                    if layer == c.n_layers:  # logits
                        resid = final[None] + d
                        m = sub.subset(torch.arange(b).repeat(len(chunk))).metric(unembed(model, resid.flatten(0, 1)[:, pos]))
                    else:
                        m = _run_patched_inputs(model, cc[f"blocks.{layer}.hook_resid_pre"], layer, rec, d, sub, pos)
                    for k, e in enumerate(chunk):
                        out[e, i: i + b] = m.view(len(chunk), b)[k] - base
    return out


def _receiver_layer(receiver: str, n_layers: int) -> int:
    if receiver == "logits":
        return n_layers
    if receiver.startswith("mlp"):
        return int(receiver[3:])
    return int(receiver.split(".")[0])


def _run_patched_inputs(model: HookedTransformer, resid: torch.Tensor, layer: int, receivers: list[str],
                        deltas: torch.Tensor, sub: Task, pos: list[int]) -> torch.Tensor:
    """Run ``len(receivers)`` stacked copies of the batch from ``layer``, copy k adding ``deltas[k]``
    to receiver k's input. Returns the metric, [m * b]."""
    m, b = deltas.shape[:2]
    adds: dict[str, list[tuple[int, int | None]]] = {}
    for k, r in enumerate(receivers):
        if r.startswith("mlp"):
            adds.setdefault(f"blocks.{layer}.hook_mlp_in", []).append((k, None))
        else:
            mt = _RECEIVER.match(r)
            assert mt is not None
            adds.setdefault(f"blocks.{layer}.hook_{mt.group(3)}_input", []).append((k, int(mt.group(2))))

    def make_hook(items):
        def hook(act, hook):
            act = act.clone()
            for k, h in items:
                if h is None:
                    act[k * b:(k + 1) * b] += deltas[k]
                else:
                    act[k * b:(k + 1) * b, :, h] += deltas[k]
            return act
        return hook

    hooks = [(name, make_hook(items)) for name, items in adds.items()]
    final = model.run_with_hooks(resid.repeat(m, 1, 1), start_at_layer=layer, stop_at_layer=model.cfg.n_layers,
                                 fwd_hooks=hooks)
    rep = sub.subset(torch.arange(b).repeat(m))
    return rep.metric(unembed(model, final[:, pos]))
