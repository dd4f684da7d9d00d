"""Scoring heads with sparse-autoencoder codes (O'Neill & Bui, "Sparse Autoencoders Enable Scalable
and Reliable Circuit Identification in Language Models").

For every head, a small TopK SAE is trained on its ``hook_z`` output over the task's positive
(clean) and negative (corrupted) prompts; each example's code is the set of its top-k active
latents, written as one integer; a head's score is the share of positive examples whose code
never occurs among the negatives. Heads that carry what distinguishes the task score high.

All heads' SAEs are trained at once as one batched tensor program ([n_heads, d_head, d_sae]
weights, full-batch Adam): a few seconds for SmolLM2's 270 heads. The head outputs come from the
``HeadPatcher``'s caches, so no extra forward pass is run.
"""

from __future__ import annotations

import time

import torch
from scipy.stats import spearmanr

from saecircuits.circuits.config import SAECodeConfig
from saecircuits.circuits.patching import HeadPatcher


def head_examples(patcher: HeadPatcher, position: str = "answer") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head examples [n_layers * n_heads, n_examples, d_head] and labels [n_examples] (True = positive)."""
    zc, zx = patcher.z_clean, patcher.z_corrupted  # [L, n, pos, H, d]
    if position == "answer":
        p = patcher.task.positions[0]
        zc, zx = zc[:, :, p], zx[:, :, p]  # [L, n, H, d]
    else:
        zc, zx = zc.flatten(1, 2), zx.flatten(1, 2)
    x = torch.cat([zc, zx], 1).permute(0, 2, 1, 3).flatten(0, 1)  # [L*H, 2n, d]
    labels = torch.cat([torch.ones(zc.shape[1], dtype=torch.bool), torch.zeros(zx.shape[1], dtype=torch.bool)])
    return x.float(), labels


def train_codes(x: torch.Tensor, cfg: SAECodeConfig) -> torch.Tensor:
    """Train one TopK SAE per group of ``x`` [G, N, d]; return each example's code [G, N] (int64)."""
    G, N, d = x.shape
    g = torch.Generator().manual_seed(cfg.seed)
    x = x - x.mean(1, keepdim=True)
    x = x / x.pow(2).sum(-1).mean(1, keepdim=True).sqrt().clamp_min(1e-8)[..., None]  # unit mean norm per head
    W_dec = torch.randn(G, cfg.d_sae, d, generator=g)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    W_enc = W_dec.transpose(1, 2).clone().requires_grad_(True)
    W_dec.requires_grad_(True)
    b_enc = torch.zeros(G, 1, cfg.d_sae, requires_grad=True)
    b_dec = torch.zeros(G, 1, d, requires_grad=True)
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=cfg.lr)
    k = min(cfg.k, cfg.d_sae)

    def encode(inp):
        pre = torch.relu(torch.bmm(inp - b_dec, W_enc) + b_enc)  # [G, N, d_sae]
        top = pre.topk(k, dim=-1)
        return pre, top

    with torch.enable_grad():
        for _ in range(cfg.steps):
            _, top = encode(x)
            acts = torch.zeros(G, N, cfg.d_sae).scatter(-1, top.indices, top.values)
            loss = (torch.bmm(acts, W_dec) + b_dec - x).pow(2).sum(-1).mean(1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    with torch.no_grad():
        _, top = encode(x)
        ids = torch.where(top.values > 0, top.indices, cfg.d_sae).sort(-1).values  # d_sae marks an inactive slot
        code = torch.zeros(G, N, dtype=torch.long)
        for j in range(k):  # base-(d_sae+1) number of the sorted active ids
            code = code * (cfg.d_sae + 1) + ids[..., j]
    return code


def unique_code_share(codes: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per group: the share of positive examples whose code occurs in no negative example, [G]."""
    pos, neg = codes[:, positive], codes[:, ~positive]  # [G, P], [G, Q]
    seen = (pos[:, :, None] == neg[:, None, :]).any(-1)  # [G, P]
    return (~seen).float().mean(1)


def score_heads(patcher: HeadPatcher, cfg: SAECodeConfig | None = None) -> dict:
    """SAE-code scores of every head: ``scores`` [n_layers, n_heads] and the time it took."""
    cfg = cfg or SAECodeConfig()
    t0 = time.perf_counter()
    x, labels = head_examples(patcher, cfg.position)
    codes = train_codes(x, cfg)
    scores = unique_code_share(codes, labels).view(patcher.n_layers, patcher.n_heads)
    return {"scores": scores, "seconds": time.perf_counter() - t0, "config": cfg.model_dump(),
            "n_examples": int(labels.sum())}


def compare_scores(a: torch.Tensor, b: torch.Tensor, top: int) -> dict:
    """Agreement of two per-head score tables: Spearman rank correlation and overlap of the ``top`` heads."""
    a, b = a.flatten().double(), b.flatten().double()
    rho = spearmanr(a.numpy(), b.numpy())
    top = max(1, min(top, len(a)))
    ta, tb = set(a.argsort(descending=True)[:top].tolist()), set(b.argsort(descending=True)[:top].tolist())
    return {"spearman": float(rho.statistic), "spearman_p": float(rho.pvalue), "top": top,
            "top_overlap": len(ta & tb), "top_overlap_share": len(ta & tb) / top}
