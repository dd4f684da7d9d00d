"""Evaluate SAEs on held-out token contexts.

Per SAE: reconstruction (MSE in the site's raw units, fraction of variance unexplained and
explained variance), sparsity (L0, dead and dense latents, feature densities), and the model's
next-token loss with the SAE's reconstruction spliced in, against the clean model and against
zero-ablating the site: CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), plus the
mean KL divergence from the clean model.

Positions are treated as in training: special tokens and the first position keep their clean
activation (they were never trained on), and the rest are replaced. The forward pass of a splice
starts at the site's layer from the cached clean residual, so layers before it are not rerun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saecircuits.activations.site import Site
from saecircuits.activations.store import ModelActivations, site_rows
from saecircuits.sae import SparseAutoencoder


@dataclass
class SAEUnderTest:
    """An SAE with the scales its inputs/outputs were multiplied by in training (1.0 once saved)."""

    name: str
    sae: SparseAutoencoder
    scale_in: float = 1.0
    scale_out: float = 1.0

    @property
    def site_in(self) -> Site:
        return Site.parse(self.sae.cfg.hook)

    @property
    def site_out(self) -> Site:
        return Site.parse(self.sae.cfg.hook_out or self.sae.cfg.hook)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in raw output units, feature activations) for raw input rows."""
        xs = x * self.scale_in
        f = self.sae.encode(xs)
        return self.sae.decode(f, xs) / self.scale_out, f


class _Accumulator:
    def __init__(self, d_sae: int):
        self.sse = 0.0
        self.sum_y = None
        self.sum_sq_y = 0.0
        self.n = 0
        self.l0 = 0.0
        self.fires = torch.zeros(d_sae, dtype=torch.long)
        self.ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0, "n": 0}

    def add(self, y: torch.Tensor, recon: torch.Tensor, f: torch.Tensor) -> None:
        y64 = y.double()
        self.sse += float((recon.double() - y64).pow(2).sum())
        s = y64.sum(0)
        self.sum_y = s if self.sum_y is None else self.sum_y + s
        self.sum_sq_y += float(y64.pow(2).sum())
        self.n += len(y)
        active = f > 0
        self.l0 += float(active.sum())
        self.fires += active.sum(0).cpu()

    def result(self, dense_threshold: float) -> dict:
        n = max(self.n, 1)
        sst = self.sum_sq_y - float(self.sum_y.pow(2).sum()) / n if self.sum_y is not None else 0.0
        density = self.fires.double() / n
        out = {
            "tokens": self.n,
            "mse": self.sse / n,
            "fvu": self.sse / sst if sst > 0 else float("nan"),
            "l0": self.l0 / n,
            "dead_latents": int((self.fires == 0).sum()),
            "dense_latents": int((density > dense_threshold).sum()),
            "density": density.tolist(),
        }
        out["explained_variance"] = 1 - out["fvu"]
        c = self.ce
        if c["n"]:
            clean, sae, zero = c["clean"] / c["n"], c["sae"] / c["n"], c["zero"] / c["n"]
            out.update(ce_clean=clean, ce_with_sae=sae, ce_zero_ablation=zero, kl_to_clean=c["kl"] / c["n"],
                       ce_loss_recovered=(zero - sae) / (zero - clean) if zero != clean else float("nan"))
        return out


def _replace_at(site: Site, rows: torch.Tensor, keep: torch.Tensor):
    """A hook that writes ``rows`` into the kept positions of a site's activation."""

    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        b, t = act.shape[:2]
        act = act.clone()
        if site.head is None:
            flat = act.reshape(b * t, -1)
            flat[keep] = rows.to(act.dtype)
            return flat.reshape(act.shape)
        part = act[:, :, site.head].reshape(b * t, -1)
        part[keep] = rows.to(act.dtype)
        act[:, :, site.head] = part.reshape(b, t, -1)
        return act

    return hook


def _start_layer(site: Site) -> int:
    return site.layer if site.layer is not None else 0


@torch.no_grad()
def evaluate(
    model: HookedTransformer,
    saes: list[SAEUnderTest],
    tokens: torch.Tensor,
    batch_contexts: int = 8,
    ce: bool = True,
    exclude_special_tokens: bool = True,
    exclude_first_position: bool = True,
    dense_threshold: float = 0.1,
) -> dict[str, dict]:
    """Metrics per SAE name over ``tokens`` [contexts, positions] (held-out text)."""
    sites = {s.key: s for u in saes for s in (u.site_in, u.site_out)}
    acts = ModelActivations(model, list(sites.values()), exclude_special_tokens=exclude_special_tokens,
                            exclude_first_position=exclude_first_position)
    acc = {u.name: _Accumulator(u.sae.d_sae) for u in saes}
    resid_names = {f"blocks.{_start_layer(u.site_out)}.hook_resid_pre" for u in saes} if ce else set()
    for i in range(0, len(tokens), batch_contexts):
        toks = tokens[i : i + batch_contexts].to(model.cfg.device)
        keep = acts.keep_mask(toks)
        b, t = toks.shape
        if ce:
            logits, cache = model.run_with_cache(toks, names_filter=lambda n: n in resid_names or n in {s.hook for s in sites.values()})
            clean_lp = F.log_softmax(logits.float(), -1)
            n_pred = b * (t - 1)
            clean_ce = _ce(clean_lp, toks)
            raw = site_rows(cache, sites.values(), b * t)
        else:
            raw = acts.activations(toks)
        recon_cache: dict[str, torch.Tensor] = {}
        for u in saes:
            x = raw[u.site_in.key][keep]
            y = raw[u.site_out.key][keep]
            recon, f = u.reconstruct(x)
            acc[u.name].add(y, recon, f)
            recon_cache[u.name] = recon
        if not ce:
            continue
        zero_ce: dict[str, float] = {}
        for u in saes:
            out = u.site_out
            layer = _start_layer(out)
            resid = cache[f"blocks.{layer}.hook_resid_pre"]
            if out.key not in zero_ce:
                zeros = torch.zeros(int(keep.sum()), raw[out.key].shape[1])
                zlog = model.run_with_hooks(resid, start_at_layer=layer, tokens=toks,
                                            fwd_hooks=[(out.hook, _replace_at(out, zeros, keep))])
                zero_ce[out.key] = _ce(F.log_softmax(zlog.float(), -1), toks)
            slog = model.run_with_hooks(resid, start_at_layer=layer, tokens=toks,
                                        fwd_hooks=[(out.hook, _replace_at(out, recon_cache[u.name], keep))])
            slp = F.log_softmax(slog.float(), -1)
            c = acc[u.name].ce
            c["clean"] += clean_ce * n_pred
            c["sae"] += _ce(slp, toks) * n_pred
            c["zero"] += zero_ce[out.key] * n_pred
            c["kl"] += float((clean_lp.exp() * (clean_lp - slp)).sum(-1)[:, :-1].sum())
            c["n"] += n_pred
    return {name: a.result(dense_threshold) for name, a in acc.items()}


def _ce(logprobs: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) over all predicted positions."""
    return float(-logprobs[:, :-1].gather(-1, tokens[:, 1:, None]).mean())


def density_histogram(density: list[float], bins: int = 30) -> dict:
    """log10 feature density histogram (dead latents counted apart)."""
    d = torch.tensor(density, dtype=torch.float64)
    live = d[d > 0].log10()
    if len(live) == 0:
        return {"edges": [], "counts": [], "dead": int((d == 0).sum())}
    lo, hi = math.floor(float(live.min())), 0.0
    counts = torch.histc(live, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(), "counts": counts.long().tolist(), "dead": int((d == 0).sum())}
