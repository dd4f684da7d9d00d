"""Weight-based feature statistics: logit effects through the unembedding, and decoder neighbours.

Logit effects follow the direct path: a feature's decoder row, mapped into the residual stream
(``saecircuits.sae.directions.residual_directions``: through W_O for an attention-output site,
W_out for MLP neurons), times the unembedding W_U.
TransformerLens's ``fold_ln`` has already folded the final norm's weight into W_U; the norm's
per-token scale is left out (it rescales every token's logit alike, so it cannot change the
ranking), as SAEDashboard does. Each row is centred over the vocabulary (softmax ignores a shift),
so positive values are tokens the feature raises relative to the rest.
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def logit_effects(directions: torch.Tensor, W_U: torch.Tensor, n: int = 10, hist_bins: int = 32,
                  chunk: int = 256) -> dict[str, torch.Tensor]:
    """Top and bottom ``n`` tokens of each direction @ W_U (centred), and a histogram of all its logits.

    Returns pos_ids/pos_vals/neg_ids/neg_vals [d, n] (neg sorted most negative first) and
    logit_hist [d, hist_bins] counts on [logit_min, logit_max] [d] per feature. Processed in chunks of
    features so the [d, vocab] matrix never exists whole.
    """
    d = directions.shape[0]
    n = min(n, W_U.shape[1])
    out = {k: [] for k in ("pos_ids", "pos_vals", "neg_ids", "neg_vals", "logit_hist", "logit_min", "logit_max")}
    W_U = W_U.float()
    W_U = W_U - W_U.mean(dim=1, keepdim=True)  # centred once: each row of directions @ W_U then has mean 0
    for start in range(0, d, chunk):
        logits = directions[start : start + chunk].float() @ W_U  # [c, vocab]
        pv, pi = logits.topk(n, dim=1)
        nv, ni = logits.topk(n, dim=1, largest=False)
        lo, hi = nv[:, 0], pv[:, 0]
        scale = hist_bins / (hi - lo).clamp_min(1e-12)
        b = logits.sub_(lo[:, None]).mul_(scale[:, None]).to(torch.int32).clamp_(max=hist_bins - 1)
        b += (torch.arange(len(b), dtype=torch.int32) * hist_bins)[:, None]
        hist = torch.bincount(b.view(-1), minlength=len(b) * hist_bins).view(len(b), hist_bins)
        for k, v in zip(out, (pi, pv, ni, nv, hist, lo, hi), strict=True):
            out[k].append(v)
    return {k: torch.cat(v) for k, v in out.items()}


@torch.inference_mode()
def nearest_features(W_dec: torch.Tensor, n: int = 10, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, cosines) [d, n] of each feature's nearest other features by decoder cosine similarity."""
    W = W_dec.float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    d = W.shape[0]
    n = min(n, d - 1)
    ids, cos = [], []
    for start in range(0, d, chunk):
        sims = W[start : start + chunk] @ W.T  # [c, d]
        rows = torch.arange(len(sims))
        sims[rows, rows + start] = -float("inf")  # not itself
        v, i = sims.topk(n, dim=1)
        ids.append(i)
        cos.append(v)
    return torch.cat(ids), torch.cat(cos)
