"""One pass over a matching stream: every SAE encoded once per batch, every requested (A, B)
correlation and every SAE's firing statistics updated, a sample of codes kept.

Tokens whose SAE input norm is far above the median (massive-activation / attention-sink tokens)
can be left out of the comparison (``drop_outlier_norm``): they become special positions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.matching.codes import CorrelationAccumulator, dense_from_code, sparse_code
from saecircuits.matching.firing import FiringStats, TokenClasses
from saecircuits.matching.stream import SIDES, Batch
from saecircuits.sae import SparseAutoencoder


@dataclass
class Entry:
    """One SAE of a matching: its side ("a" or "b"), input site, firing statistics and sampled codes."""

    name: str
    side: str
    sae: SparseAutoencoder
    site: str
    stats: FiringStats
    sample: list = field(default_factory=list)  # codes of the first sample rows


class ActivationMatcher:
    """Streams batches once, updating every requested (A, B) correlation and every SAE's statistics."""

    def __init__(self, saes_a: dict[str, SparseAutoencoder], saes_b: dict[str, SparseAutoencoder],
                 pairs: list[tuple[str, str]] | None = None, top_m: int = 20, sample_tokens: int = 0,
                 classes: dict[str, TokenClasses] | None = None, drop_outlier_norm: float | None = None,
                 limit: int | None = None):
        clash = sorted(n for n in set(saes_a) & set(saes_b) if saes_a[n] is not saes_b[n])
        if clash:
            raise SaecircuitsError(f"SAE names must differ between the two sides: {clash}",
                                   "the same name on both sides is allowed only for the same SAE (pairs within one suite)")
        self.entries: dict[str, Entry] = {}
        for side, saes in zip(SIDES, (saes_a, saes_b), strict=True):
            for name, sae in saes.items():
                if name not in self.entries:  # an SAE on both sides (one suite, one model) is encoded once
                    self.entries[name] = Entry(name, side, sae, sae.cfg.hook, FiringStats(sae.d_sae, top_m))
        self.pairs = pairs if pairs is not None else [(a, b) for a in saes_a for b in saes_b]
        if not self.pairs:
            raise SaecircuitsError("nothing to match: no (A, B) pair of SAEs")
        for a, b in self.pairs:
            if a not in saes_a or b not in saes_b:
                raise SaecircuitsError(f"pair ({a}, {b}) names an SAE that is not on its side")
        self.acc = {p: CorrelationAccumulator(saes_a[p[0]].d_sae, saes_b[p[1]].d_sae) for p in self.pairs}
        self.classes = classes or {}
        self.sample_tokens = sample_tokens
        self.sampled = 0
        self.encode_seconds = 0.0
        self.drop_outlier_norm = drop_outlier_norm
        self.outlier_limits: dict[tuple[str, str], float] = {}  # (side, site) -> norm limit, from the first batch
        self.dropped_outliers = 0
        self.limit = limit  # compare at most this many rows in all

    def _drop_outliers(self, batch: Batch) -> Batch:
        """Aligned rows where any site of either side has a norm above the limit become special positions."""
        keep = torch.ones(len(batch.rows["a"]), dtype=torch.bool)
        for e in self.entries.values():
            key = (e.side, e.site)
            norms = batch.acts[e.side][e.site].index_select(0, batch.rows[e.side]).float().norm(dim=1)
            if key not in self.outlier_limits and len(norms):
                self.outlier_limits[key] = float(norms.median()) * self.drop_outlier_norm
            keep &= norms <= self.outlier_limits.get(key, math.inf)
        if bool(keep.all()):
            return batch
        self.dropped_outliers += int((~keep).sum())
        special = {s: v.clone() for s, v in batch.special.items()}
        for s in SIDES:
            special[s][batch.rows[s][~keep]] = True
        return Batch(batch.acts, batch.tokens, batch.valid, special, {s: batch.rows[s][keep] for s in SIDES})

    @property
    def compared(self) -> int:
        return next(iter(self.acc.values())).n if self.acc else 0

    @torch.no_grad()
    def update(self, batch: Batch) -> None:
        codes = {}
        start = time.perf_counter()
        if self.drop_outlier_norm is not None:
            batch = self._drop_outliers(batch)
        if self.limit is not None and self.compared + len(batch.rows["a"]) > self.limit:
            left = max(self.limit - self.compared, 0)
            batch = Batch(batch.acts, batch.tokens, batch.valid, batch.special, {s: batch.rows[s][:left] for s in SIDES})
        punct = {s: self.classes[s].punct(batch.tokens[s]) if s in self.classes else torch.zeros_like(batch.valid[s])
                 for s in SIDES if s in batch.tokens}
        for name, e in self.entries.items():
            x = batch.acts[e.side][e.site]
            if x.shape[1] != e.sae.d_in:
                raise SaecircuitsError(f"SAE {name} expects inputs of width {e.sae.d_in}, site {e.site} gives {x.shape[1]}")
            valid = batch.valid[e.side]
            rows_all = valid.nonzero().squeeze(1)
            code = sparse_code(e.sae, x.index_select(0, rows_all).float())
            compared = torch.zeros(len(valid), dtype=torch.bool)
            compared[batch.rows[e.side]] = True
            e.stats.update(code, batch.tokens[e.side][rows_all], compared[rows_all], batch.special[e.side][rows_all],
                           punct[e.side][rows_all])
            # codes at the compared rows, in pair order
            pos = torch.full((len(valid),), -1, dtype=torch.long)
            pos[rows_all] = torch.arange(len(rows_all))
            sel = pos[batch.rows[e.side]]
            codes[name] = (code[0].index_select(0, sel), code[1].index_select(0, sel))
        self.encode_seconds += time.perf_counter() - start
        for (a, b), acc in self.acc.items():
            acc.update(codes[a], codes[b])
        if self.sampled < self.sample_tokens:
            take = min(self.sample_tokens - self.sampled, len(batch.rows["a"]))
            for name, e in self.entries.items():
                e.sample.append((codes[name][0][:take], codes[name][1][:take]))
            self.sampled += take

    def sample_acts(self, name: str) -> torch.Tensor:
        """[sample_tokens, d_sae] dense activations of the sampled compared rows."""
        e = self.entries[name]
        if not e.sample:
            return torch.zeros(0, e.sae.d_sae)
        return torch.cat([dense_from_code(c, e.sae.d_sae) for c in e.sample])
