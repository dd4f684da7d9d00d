"""Streaming per-feature statistics over SAE activations, in one pass, in bounded memory.

Each batch of contexts arrives as dense feature activations ``f`` [B, T, d_sae] (excluded tokens
already zeroed). Everything is updated with whole-tensor operations, never a loop over tokens:

- density: tokens where a feature fires (> 0), over the kept tokens;
- top examples: the ``top_k`` contexts with the largest maximum activation (one example per
  context, shown at its arg-max), kept by a running merge: the current best and the batch's
  candidates are concatenated and cut back with ``topk``;
- quantile samples: a uniform random sample of ``n_samples`` contexts where the feature fires
  (bottom-k of iid uniform keys, a reservoir sample that merges the same way), later split into
  quantile bands of their maximum activation;
- a histogram of token-level activations on fixed log-spaced bins (``bins_per_decade`` over
  [hist_low, hist_high], plus an underflow and an overflow bin);
- for every kept example, a token window around its maximum (``before`` tokens, the maximum,
  ``after`` tokens) with the token ids and the feature's activation at each, gathered while the
  batch is in memory: no context is stored or re-run.

Memory is O(d_sae · (top_k + n_samples) · window) whatever the number of tokens. The state is a
flat dict of tensors (``state_dict``), so a checkpoint is one safetensors file, and an update
depends only on the state and the batch (the reservoir's random keys come from a generator
seeded by the batch index), so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math

import torch

WINDOW_PAD = -1  # token id for window positions outside the context
STATE_FORMAT = 2  # bump when the state layout or the update changes: older checkpoints are not reused


class FeatureStats:
    """Running statistics of ``d_sae`` features; see the module docstring."""

    def __init__(self, d_sae: int, top_k: int = 20, n_samples: int = 32, before: int = 12, after: int = 4,
                 hist_low: float = 1e-4, hist_high: float = 1e4, bins_per_decade: int = 32, seed: int = 0):
        self.d, self.k, self.m = d_sae, top_k, n_samples
        self.before, self.after = before, after
        self.width = before + 1 + after
        self.log_low = math.log10(hist_low)
        self.bins_per_decade = bins_per_decade
        self.n_bins = int(round((math.log10(hist_high) - self.log_low) * bins_per_decade))
        self.seed = seed
        d, k, m, w = d_sae, top_k, n_samples, self.width
        self.t: dict[str, torch.Tensor] = {
            "n_tokens": torch.zeros((), dtype=torch.int64),
            "n_contexts": torch.zeros((), dtype=torch.int64),
            "fired": torch.zeros(d, dtype=torch.int64),
            "act_sum": torch.zeros(d, dtype=torch.float64),
            "hist": torch.zeros(d, self.n_bins + 2, dtype=torch.int64),
            **_slots("top", d, k, w, fill=-math.inf),
            **_slots("smp", d, m, w, fill=math.inf),
            "smp_val": torch.zeros(d, m),
        }

    # ---- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.t)

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self.t) - set(tensors)
        if missing:
            raise KeyError(f"statistics state lacks {sorted(missing)}")
        for name, v in self.t.items():
            if tensors[name].shape != v.shape or tensors[name].dtype != v.dtype:
                raise ValueError(f"statistics state {name}: {tuple(tensors[name].shape)} {tensors[name].dtype}, "
                                 f"expected {tuple(v.shape)} {v.dtype}")
        self.t = {name: tensors[name].clone() for name in self.t}

    def hist_edges(self) -> torch.Tensor:
        """[n_bins + 1] edges of the inner bins (bin 0 is below the first edge, the last bin above the last)."""
        return 10 ** (self.log_low + torch.arange(self.n_bins + 1, dtype=torch.float64) / self.bins_per_decade)

    # ---- update
    @torch.inference_mode()
    def update(self, f: torch.Tensor, tokens: torch.Tensor, n_kept: int, first_context: int, batch_index: int) -> None:
        """Fold in one batch: ``f`` [B, T, d] activations (0 at excluded tokens), ``tokens`` [B, T] ids,
        ``n_kept`` the number of kept tokens, ``first_context`` the global index of context 0."""
        B, T, d = f.shape
        t = self.t
        t["n_tokens"] += n_kept
        t["n_contexts"] += B
        flat = f.reshape(B * T, d)

        # token level: density, mean, histogram, from the nonzero entries only
        rows, feats = flat.nonzero(as_tuple=True)
        vals = flat[rows, feats]
        t["fired"] += torch.bincount(feats, minlength=d)
        t["act_sum"].index_add_(0, feats, vals.double())
        b = ((vals.log10() - self.log_low) * self.bins_per_decade).floor_().clamp_(-1, self.n_bins).long() + 1
        t["hist"].view(-1).index_add_(0, feats * (self.n_bins + 2) + b, torch.ones_like(b))

        # context level: each context's maximum per feature and its first position, from the nonzero entries
        lin = (rows // T) * d + feats
        cmax = torch.zeros(B * d, dtype=f.dtype).scatter_reduce_(0, lin, vals, "amax")
        at_max = vals == cmax[lin]
        cpos = torch.full((B * d,), T - 1, dtype=torch.int64).scatter_reduce_(0, lin[at_max], (rows % T)[at_max], "amin")
        cmax, cpos = cmax.view(B, d).T.contiguous(), cpos.view(B, d).T.contiguous()  # [d, B]
        self._merge("top", cmax.masked_fill(cmax <= 0, -math.inf), cpos, f, tokens, first_context, largest=True)

        g = torch.Generator().manual_seed((self.seed * 1_000_003 + batch_index) % 2**63)
        keys = torch.rand(B, d, generator=g).T.contiguous().masked_fill_(cmax <= 0, math.inf)
        self._merge("smp", keys, cpos, f, tokens, first_context, largest=False, extra={"val": cmax})

    def _merge(self, name: str, score: torch.Tensor, pos: torch.Tensor, f: torch.Tensor, tokens: torch.Tensor,
               first_context: int, largest: bool, extra: dict | None = None) -> None:
        """Merge this batch's contexts (score, arg-max position: [d, B]) into slot set ``name``, keeping the
        ``n`` largest (or smallest) scores per feature. Slots stay sorted, so only features with a context
        that beats their current worst slot are touched, and windows are gathered for those alone."""
        t = self.t
        cur = t[f"{name}_key"]  # [d, n], sorted best first
        n = cur.shape[1]
        worst = cur[:, -1:]
        better = score > worst if largest else score < worst
        feats = better.any(dim=1).nonzero().squeeze(1)  # features to update
        if len(feats) == 0:
            return
        sentinel = -math.inf if largest else math.inf
        cand = score[feats].masked_fill_(~better[feats], sentinel)
        c = min(n, int(better[feats].sum(dim=1).max()))  # candidates come sorted, so the rest are sentinels
        cand, b_idx = cand.topk(c, dim=1, largest=largest)  # [F, c]
        pos_c = pos[feats].gather(1, b_idx)
        win_act, win_tok = self._windows(f, tokens, feats, b_idx, pos_c)
        new = {"key": cand, "ctx": b_idx + first_context, "pos": pos_c, "win_act": win_act, "win_tok": win_tok,
               **{k: v[feats].gather(1, b_idx) for k, v in (extra or {}).items()}}
        _, sel = torch.cat([cur[feats], cand], dim=1).topk(n, dim=1, largest=largest)
        for field, v in new.items():
            old = t[f"{name}_{field}"]
            both = torch.cat([old[feats], v.to(old.dtype)], dim=1)
            index = sel if both.dim() == 2 else sel[:, :, None].expand(-1, -1, both.shape[2])
            old[feats] = both.gather(1, index)

    def _windows(self, f: torch.Tensor, tokens: torch.Tensor, feats: torch.Tensor, b_idx: torch.Tensor, pos: torch.Tensor):
        """Activations [F, c, W] of features ``feats`` and token ids [F, c, W] around (context, position) pairs."""
        T = f.shape[1]
        p = pos[:, :, None] + torch.arange(-self.before, self.after + 1)  # [F, c, W]
        inside = (p >= 0) & (p < T)
        p = p.clamp_(0, T - 1)
        b = b_idx[:, :, None].expand_as(p)
        acts = f[b, p, feats[:, None, None].expand_as(p)] * inside
        toks = tokens[b, p].masked_fill_(~inside, WINDOW_PAD).to(torch.int32)
        return acts, toks

    # ---- results
    def summary(self) -> dict[str, torch.Tensor]:
        """Per-feature results [d] / [d, ...]: density, max, mean when firing, dead, and the kept examples
        (top_* sorted by activation, smp_* sorted by activation; invalid slots have ctx -1)."""
        t = self.t
        n = max(int(t["n_tokens"]), 1)
        fired = t["fired"]
        top_valid = t["top_key"] > 0
        smp_valid = torch.isfinite(t["smp_key"])
        order = t["smp_val"].masked_fill(~smp_valid, -1.0).argsort(dim=1, descending=True, stable=True)
        smp = {f: t[f"smp_{f}"].gather(1, order if t[f"smp_{f}"].dim() == 2 else order[:, :, None].expand_as(t[f"smp_{f}"]))
               for f in ("val", "ctx", "pos", "win_act", "win_tok")}
        smp_valid = smp_valid.gather(1, order)
        return {
            "density": fired.double() / n,
            "fired": fired,
            "max_act": t["top_key"][:, 0].clamp_min(0).float(),
            "mean_act": (t["act_sum"] / fired.clamp_min(1)).float(),
            "dead": fired == 0,
            "hist": t["hist"],
            "top_val": t["top_key"].clamp_min(0).float(),
            "top_ctx": t["top_ctx"].masked_fill(~top_valid, -1),
            "top_pos": t["top_pos"],
            "top_win_act": t["top_win_act"],
            "top_win_tok": t["top_win_tok"],
            "smp_val": smp["val"],
            "smp_ctx": smp["ctx"].masked_fill(~smp_valid, -1),
            "smp_pos": smp["pos"],
            "smp_win_act": smp["win_act"],
            "smp_win_tok": smp["win_tok"],
        }


def _slots(name: str, d: int, n: int, w: int, fill: float) -> dict[str, torch.Tensor]:
    """Empty example slots: sort key, context, position, and the token window."""
    return {
        f"{name}_key": torch.full((d, n), fill),
        f"{name}_ctx": torch.full((d, n), -1, dtype=torch.int64),
        f"{name}_pos": torch.zeros(d, n, dtype=torch.int64),
        f"{name}_win_act": torch.zeros(d, n, w),
        f"{name}_win_tok": torch.full((d, n, w), WINDOW_PAD, dtype=torch.int32),
    }
