"""Edge attribution patching (EAP, Syed et al. 2023) for every edge of the model (see ``edges``).

Score = (sender output on corrupted - on clean) . d metric / d receiver input, averaged over prompts:
the first-order estimate of the metric change when only that edge carries the corrupted activation.
``ig_steps`` > 0 averages the gradients over inputs interpolated between corrupted and clean
embeddings (EAP-IG, Hanna et al. 2024).
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits.discovery.edges import EdgeScores, edge_hooks_enabled, node_lists, sender_deltas, sender_hooks
from saecircuits.circuits.task import Task
from saecircuits.model.frozen import frozen
from saecircuits.model.unembed import unembed


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


def edge_attribution(model: HookedTransformer, task: Task, batch_size: int = 8, ig_steps: int = 0) -> EdgeScores:
    """EAP scores of every edge (EAP-IG with ``ig_steps`` interpolation steps), averaged over prompts."""
    senders, s_depth, receivers, r_depth = node_lists(model)
    valid = torch.tensor(s_depth)[:, None] < torch.tensor(r_depth)[None, :]
    scores = torch.zeros(len(senders), len(receivers), dtype=torch.float64)
    alphas = [1.0] if ig_steps <= 0 else [(k + 1) / ig_steps for k in range(ig_steps)]
    c = model.cfg
    pos = list(task.positions)
    with edge_hooks_enabled(model), frozen(model):
        for i in range(0, len(task), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(task)))
            sub = task.subset(idx)
            with torch.no_grad():
                snames = sender_hooks(model)
                _, cc = model.run_with_cache(sub.clean.to(c.device), names_filter=lambda n: n in snames, stop_at_layer=c.n_layers)
                _, cx = model.run_with_cache(sub.corrupted.to(c.device), names_filter=lambda n: n in snames, stop_at_layer=c.n_layers)
                deltas = sender_deltas(model, cc, cx)
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
