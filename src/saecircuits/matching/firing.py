"""Where each feature fires in a matching stream: token classes and per-feature firing statistics.

``FiringStats`` counts, for every feature of one SAE, its firings on the compared tokens, on special
positions (BOS and special tokens) and on punctuation/whitespace tokens (``TokenClasses``), its mean
activation when firing, and its highest activations with their token ids. Features that fire mostly
on special positions or punctuation are flagged in the matched pairs; the mean activation is the
activation scale SAE Match can fold into a TopK decoder.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable

import torch

from saecircuits.matching.codes import Code


class TokenClasses:
    """Which token ids are punctuation, symbols or whitespace only (decoded once per id, lazily)."""

    def __init__(self, tokenizer, special_ids: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.special = set(int(i) for i in special_ids)
        self.known: dict[int, bool] = {}

    @staticmethod
    def is_punct_text(s: str) -> bool:
        return bool(s) and all(ch.isspace() or unicodedata.category(ch)[0] in "PS" for ch in s)

    def punct(self, ids: torch.Tensor) -> torch.Tensor:
        """[n] bool for token ids [n]."""
        if self.tokenizer is None:
            return torch.zeros(ids.shape, dtype=torch.bool)
        uniq = torch.unique(ids).tolist()
        new = [i for i in uniq if i not in self.known]
        if new:
            for i, s in zip(new, self.tokenizer.batch_decode([[i] for i in new]), strict=True):
                self.known[i] = i not in self.special and self.is_punct_text(s)
        table = torch.tensor([self.known[i] for i in uniq], dtype=torch.bool)
        return table[torch.searchsorted(torch.tensor(uniq, dtype=ids.dtype), ids)]

    def text(self, ids: list[int]) -> list[str]:
        if self.tokenizer is None:
            return [str(i) for i in ids]
        return self.tokenizer.batch_decode([[i] for i in ids])


class FiringStats:
    """Per-feature counts over a stream: firings on compared tokens, on special positions (BOS and
    special tokens) and on punctuation/whitespace tokens, mean activation when firing, and the
    ``top_m`` highest activations with their token ids (compared tokens only)."""

    def __init__(self, d_sae: int, top_m: int = 20):
        self.d, self.m = d_sae, top_m
        self.fires = torch.zeros(d_sae, dtype=torch.long)
        self.fires_special = torch.zeros(d_sae, dtype=torch.long)
        self.fires_punct = torch.zeros(d_sae, dtype=torch.long)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.top_vals = torch.full((d_sae, top_m), -math.inf)
        self.top_tokens = torch.full((d_sae, top_m), -1, dtype=torch.long)
        self.rows = 0

    @torch.no_grad()
    def update(self, code: Code, tokens: torch.Tensor, compared: torch.Tensor,
               special: torch.Tensor, punct: torch.Tensor) -> None:
        """``code`` of n rows; ``tokens``/``compared``/``special``/``punct`` are [n] per row."""
        vals, idx = code
        k = vals.shape[1]
        on = vals > 0
        row_c = compared[:, None].expand(-1, k) & on
        self.rows += int(compared.sum())
        self.fires.index_add_(0, idx[row_c], torch.ones(int(row_c.sum()), dtype=torch.long))
        self.act_sum.index_add_(0, idx[row_c], vals[row_c].double())
        row_s = special[:, None].expand(-1, k) & on
        self.fires_special.index_add_(0, idx[row_s], torch.ones(int(row_s.sum()), dtype=torch.long))
        row_p = (punct & compared)[:, None].expand(-1, k) & on
        self.fires_punct.index_add_(0, idx[row_p], torch.ones(int(row_p.sum()), dtype=torch.long))
        # top-m per feature: sort the new entries and the kept ones by (feature, -value), keep the first m of each feature
        feats = torch.cat([idx[row_c], torch.arange(self.d).repeat_interleave(self.m)])
        v = torch.cat([vals[row_c].float(), self.top_vals.reshape(-1)])
        t = torch.cat([tokens[:, None].expand(-1, k)[row_c], self.top_tokens.reshape(-1)])
        order = torch.argsort(-v, stable=True)
        order = order[torch.argsort(feats[order], stable=True)]
        feats, v, t = feats[order], v[order], t[order]
        first = torch.searchsorted(feats, torch.arange(self.d))
        rank = torch.arange(len(feats)) - first[feats]
        sel = rank < self.m
        self.top_vals[feats[sel], rank[sel]] = v[sel]
        self.top_tokens[feats[sel], rank[sel]] = t[sel]

    def special_share(self) -> torch.Tensor:
        """[d] share of a feature's firings that fall on BOS/special positions or punctuation tokens."""
        total = (self.fires + self.fires_special).double()
        return ((self.fires_special + self.fires_punct).double() / total.clamp_min(1)).where(total > 0, torch.tensor(0.0, dtype=torch.float64))

    def mean_active(self) -> torch.Tensor:
        """[d] mean activation when firing (0 for features that never fired)."""
        return self.act_sum / self.fires.clamp_min(1).double()

    def top_token_ids(self, feature: int, n: int = 5) -> list[int]:
        """Up to n distinct token ids among the feature's highest activations, strongest first."""
        out: list[int] = []
        for v, t in zip(self.top_vals[feature].tolist(), self.top_tokens[feature].tolist(), strict=True):
            if v == -math.inf or t < 0:
                break
            if t not in out:
                out.append(t)
            if len(out) == n:
                break
        return out
