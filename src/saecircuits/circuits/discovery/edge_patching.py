"""Exact edge patching: the metric change when only chosen edges (see ``edges``) carry the corrupted run.

The receiver's input gets the sender's corrupted-minus-clean output added, everything else stays
clean; edges into the same layer run as one batched forward from that layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits.discovery.edges import edge_hooks_enabled, node_lists, sender_deltas, sender_hooks
from saecircuits.circuits.task import Task
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.unembed import unembed

_RECEIVER = re.compile(r"^(\d+)\.(\d+):([qkv])$")


def patch_edges(model: HookedTransformer, task: Task, edges: Sequence[tuple[str, str]], batch_size: int = 16,
                max_rows: int = 256) -> torch.Tensor:
    """Exact metric change when only each edge carries the sender's corrupted output: [n_edges, n_prompts].

    The receiver's input becomes clean input + (sender output on corrupted - on clean); all other
    inputs stay clean. Edges into the same layer run as one batched forward from that layer.
    """
    senders, s_depth, receivers, r_depth = node_lists(model)
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
    names = sender_hooks(model) + [f"blocks.{L}.hook_resid_pre" for L in range(c.n_layers)]
    names.append(f"blocks.{c.n_layers - 1}.hook_resid_post")
    with edge_hooks_enabled(model), torch.inference_mode():
        for i in range(0, len(task), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(task)))
            sub = task.subset(idx)
            final, cc = model.run_with_cache(sub.clean.to(c.device), names_filter=lambda n: n in names, stop_at_layer=c.n_layers)
            _, cx = model.run_with_cache(sub.corrupted.to(c.device), names_filter=lambda n: n in names, stop_at_layer=c.n_layers)
            base = sub.metric(unembed(model, final[:, pos]))
            deltas = sender_deltas(model, cc, cx)
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
