"""How much each sublayer writes into the residual stream ("Do Language Models Use Their Depth
Efficiently?", Csordás et al. 2025).

Per layer L, over the kept tokens of a text (special tokens and the first position excluded):
``||attn_out|| / ||resid_pre||``, ``||mlp_out|| / ||resid_pre||`` and ``||resid_post - resid_pre|| /
||resid_pre||`` (means of per-token ratios), and the cosine of each sublayer's output with
``resid_pre`` (negative: the sublayer erases what is there). The text streams in batches; only
per-layer sums are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saecircuits.layerwise.config import StreamConfig
from saecircuits.layerwise.results import ContributionsResult, Halves
from saecircuits.layerwise.stream import activations, token_batches

EPS = 1e-12
METRICS = ("attn_rel_norm", "mlp_rel_norm", "block_rel_norm", "attn_cos", "mlp_cos", "block_cos")


def _hooks(model: HookedTransformer) -> list[str]:
    hooks = []
    for layer in range(model.cfg.n_layers):
        p = f"blocks.{layer}."
        hooks += [p + "hook_resid_pre", p + "hook_attn_out", p + "hook_resid_post"]
        if not model.cfg.attn_only:
            hooks.append(p + "hook_mlp_out")
    return hooks


@torch.no_grad()
def measure(model: HookedTransformer, cfg: StreamConfig) -> dict:
    """Per-layer relative norms and cosines of the attention, MLP and whole-block outputs
    (``ContributionsResult``'s JSON)."""
    n = model.cfg.n_layers
    acts = activations(model, _hooks(model))
    sums = {m: torch.zeros(n, dtype=torch.float64) for m in METRICS}
    resid_norm = torch.zeros(n, dtype=torch.float64)
    count = 0
    for tokens in token_batches(model, cfg):
        a = acts.activations(tokens)
        keep = acts.keep_mask(tokens).to(next(iter(a.values())).device)
        for layer in range(n):
            p = f"blocks.{layer}."
            pre = a[p + "hook_resid_pre"][keep].float()
            pre_norm = pre.norm(dim=-1).clamp_min(EPS)
            outs = {"attn": a[p + "hook_attn_out"][keep].float(), "block": a[p + "hook_resid_post"][keep].float() - pre}
            if not model.cfg.attn_only:
                outs["mlp"] = a[p + "hook_mlp_out"][keep].float()
            for name, out in outs.items():
                sums[f"{name}_rel_norm"][layer] += float((out.norm(dim=-1) / pre_norm).sum())
                sums[f"{name}_cos"][layer] += float(F.cosine_similarity(out, pre, dim=-1, eps=EPS).sum())
            resid_norm[layer] += float(pre_norm.sum())
        count += int(keep.sum())
    means = {m: (v / max(count, 1)).tolist() for m, v in sums.items() if model.cfg.attn_only is False or "mlp" not in m}
    half = n // 2
    first, second = slice(0, half), slice(half, n)

    def halves(m: str) -> Halves:
        v = sums[m] / max(count, 1)
        return Halves(first_half=float(v[first].mean()), second_half=float(v[second].mean()),
                      first_half_median=float(v[first].median()), second_half_median=float(v[second].median()))

    return ContributionsResult(
        model=model.cfg.model_name, layers=list(range(n)), tokens=count, text=cfg.text.model_dump(mode="json"),
        by_layer={**means, "resid_norm": (resid_norm / max(count, 1)).tolist()},
        halves={m: halves(m) for m in means},
        second_half_contributes_less=bool(halves("block_rel_norm").second_half < halves("block_rel_norm").first_half),
    ).to_json()
