"""Feature matching: which SAE features of one layer or model correspond to which of another.

Activation matching (Lan et al. 2024, "Sparse Autoencoders Reveal Universal Feature Spaces Across
Large Language Models"): both SAEs run over the same text and a feature x feature Pearson
correlation matrix is accumulated from running sums (Σx, Σy, Σx², Σy², Σxy, float64), never holding
the activations. SAE codes are sparse, so Σxy is a scatter-add of the k_a·k_b products of the
features active on each token (n·k_a·k_b work instead of the n·d_a·d_b of a dense matmul); codes
that are not sparse fall back to a dense float32 matmul per chunk added into float64.
Features that fire fewer than ``min_fires`` times are dead and masked.

Assignment (Li et al. 2016, "Convergent Learning"): one-to-one by maximum total r (Hungarian,
``scipy.optimize.linear_sum_assignment``), best partner (each feature of A takes its most
correlated feature of B, many-to-one), or greedy one-to-one (highest r first; computed as rounds
of mutually-best pairs, which for distinct values is exactly the sequential greedy matching).

Weight matching, no data (Balagansky et al. 2024, "Mechanistic Permutability", SAE Match): the
decoders of two SAEs in the same residual basis are matched by Hungarian on the squared distance
of *folded* decoder rows: a JumpReLU feature with threshold θ fires at θ or above, so its decoder
row is scaled by θ (and its encoder by 1/θ, which leaves the SAE's function unchanged) to make
the features' activation scales comparable; for TopK / ReLU SAEs, which have no threshold, a
per-feature activation scale from data (mean activation when firing) can be folded the same way,
and without one the rows stay unit norm (the squared distance is then 2 - 2·cos). Matchings of
adjacent layers compose into feature chains.

Feature flow (Laptev et al. 2025, "Analyze Feature Flow to Enhance Interpretation and Steering in
Language Models"): for a residual-stream feature at layer L, the top cosine of its decoder (or
encoder) direction against the decoder directions of the previous residual SAE and of the
attention and MLP SAEs writing in between says which earlier feature, and which sublayer, it most
likely came from; the result is a ``networkx.DiGraph``.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import networkx as nx
import numpy as np
import torch
from pydantic import Field
from scipy.optimize import linear_sum_assignment

from saecircuits.model import hooks as hooklib
from saecircuits.text.alignment import Rule
from saecircuits.core.config import Config
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.progress import TokenBar
from saecircuits.sae import SparseAutoencoder
from saecircuits.text.source import TextConfig

Method = Literal["hungarian", "best", "greedy"]
SIDES = ("a", "b")


# ------------------------------------------------------------------ sparse codes and running sums


@torch.no_grad()
def sparse_code(sae: SparseAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature activations as (vals [n, k], idx [n, k]); entries with value 0 are padding.

    TopK: the k largest pre-activations, ReLU'd (what ``encode`` keeps). Other architectures:
    ``encode`` then the row's nonzero entries, padded to the largest count in the batch.
    """
    if sae.architecture == "topk":
        vals, idx = sae.pre_acts(x).topk(min(sae.cfg.k, sae.d_sae), dim=-1, sorted=False)
        return vals.relu_(), idx
    f = sae.encode(x)
    k = int((f > 0).sum(1).max()) if len(f) else 0
    vals, idx = f.topk(max(k, 1), dim=-1, sorted=False)
    return vals.relu_(), idx


def dense_from_code(code: tuple[torch.Tensor, torch.Tensor], d: int) -> torch.Tensor:
    """[n, d] activations from (vals, idx), in the values' dtype."""
    vals, idx = code
    return torch.zeros(vals.shape[0], d, dtype=vals.dtype).scatter_add_(1, idx, vals)


class CorrelationAccumulator:
    """Pearson r of every feature of A with every feature of B, from running float64 sums.

    ``update`` takes the codes of the same rows (tokens) for both SAEs. Memory: d_a·d_b float64
    for Σxy plus a few [d] vectors, whatever the number of tokens.
    """

    def __init__(self, d_a: int, d_b: int, chunk_rows: int = 4096, dense_ratio: float = 1 / 32):
        self.d_a, self.d_b = d_a, d_b
        self.n = 0
        self.sum_a = torch.zeros(d_a, dtype=torch.float64)
        self.sum_b = torch.zeros(d_b, dtype=torch.float64)
        self.sq_a = torch.zeros(d_a, dtype=torch.float64)
        self.sq_b = torch.zeros(d_b, dtype=torch.float64)
        self.cross = torch.zeros(d_a * d_b, dtype=torch.float64)
        self.chunk_rows = chunk_rows
        # scatter-add costs ~dense_ratio^-1 times a matmul FLOP: go dense when k_a·k_b > ratio·d_a·d_b
        self.dense_ratio = dense_ratio
        self.seconds = 0.0

    @torch.no_grad()
    def update(self, code_a: tuple[torch.Tensor, torch.Tensor], code_b: tuple[torch.Tensor, torch.Tensor]) -> None:
        start = time.perf_counter()
        va, ia = code_a
        vb, ib = code_b
        if va.shape[0] != vb.shape[0]:
            raise SaecircuitsError(f"correlation update with {va.shape[0]} rows of A but {vb.shape[0]} of B")
        self.n += va.shape[0]
        va64, vb64 = va.double(), vb.double()
        self.sum_a.index_add_(0, ia.reshape(-1), va64.reshape(-1))
        self.sum_b.index_add_(0, ib.reshape(-1), vb64.reshape(-1))
        self.sq_a.index_add_(0, ia.reshape(-1), va64.square().reshape(-1))
        self.sq_b.index_add_(0, ib.reshape(-1), vb64.square().reshape(-1))
        dense = va.shape[1] * vb.shape[1] > self.dense_ratio * self.d_a * self.d_b
        for s in range(0, va.shape[0], self.chunk_rows):
            sl = slice(s, s + self.chunk_rows)
            if dense:
                fa = dense_from_code((va64[sl], ia[sl]), self.d_a)
                fb = dense_from_code((vb64[sl], ib[sl]), self.d_b)
                self.cross += (fa.T @ fb).reshape(-1)
            else:
                prod = va64[sl, :, None] * vb64[sl, None, :]
                flat = ia[sl, :, None] * self.d_b + ib[sl, None, :]
                self.cross.index_add_(0, flat.reshape(-1), prod.reshape(-1))
        self.seconds += time.perf_counter() - start

    def correlation(self) -> torch.Tensor:
        """[d_a, d_b] float64 Pearson r; NaN where a feature never varied."""
        n = max(self.n, 1)
        mean_a, mean_b = self.sum_a / n, self.sum_b / n
        cov = self.cross.view(self.d_a, self.d_b) / n - mean_a[:, None] * mean_b[None, :]
        var_a = (self.sq_a / n - mean_a.square()).clamp_min(0)
        var_b = (self.sq_b / n - mean_b.square()).clamp_min(0)
        denom = (var_a[:, None] * var_b[None, :]).sqrt()
        r = cov / denom
        r[denom <= 0] = float("nan")
        return r.clamp_(-1, 1)


# ------------------------------------------------------------------ per-feature statistics


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


class FeatureStats:
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
    def update(self, code: tuple[torch.Tensor, torch.Tensor], tokens: torch.Tensor, compared: torch.Tensor,
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


# ------------------------------------------------------------------ assignment


def assign(score: np.ndarray, method: Method = "hungarian", alive_a: np.ndarray | None = None,
           alive_b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (idx_a, idx_b) maximising ``score`` [d_a, d_b] among alive features, ascending in A.

    hungarian: one-to-one, maximum total score (min(d_a, d_b) pairs).
    best: every alive feature of A with its best feature of B (many-to-one).
    greedy: one-to-one, highest remaining score first.
    """
    d_a, d_b = score.shape
    ra = np.nonzero(alive_a)[0] if alive_a is not None else np.arange(d_a)
    cb = np.nonzero(alive_b)[0] if alive_b is not None else np.arange(d_b)
    if len(ra) == 0 or len(cb) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sub = np.nan_to_num(np.asarray(score, dtype=np.float64)[np.ix_(ra, cb)], nan=-2.0)
    if method == "hungarian":
        i, j = linear_sum_assignment(sub, maximize=True)
    elif method == "best":
        i, j = np.arange(len(ra)), sub.argmax(1)
    elif method == "greedy":
        i, j = _greedy(sub)
    else:
        raise SaecircuitsError(f"matching method must be hungarian, best or greedy, got {method!r}")
    order = np.argsort(ra[i])
    return ra[i][order].astype(np.int64), cb[j][order].astype(np.int64)


def _greedy(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching: rounds that accept every mutually-best pair of what is left.

    The largest remaining entry is always mutually best, and a mutually-best pair is never
    blocked by a later choice, so (for distinct values) this equals the sequential greedy."""
    rows, cols = np.arange(s.shape[0]), np.arange(s.shape[1])
    out_i, out_j = [], []
    while len(rows) and len(cols):
        sub = s[np.ix_(rows, cols)]
        best_c = sub.argmax(1)
        best_r = sub.argmax(0)
        mutual = best_r[best_c] == np.arange(len(rows))
        ri, ci = np.nonzero(mutual)[0], best_c[mutual]
        out_i.append(rows[ri])
        out_j.append(cols[ci])
        rows = np.delete(rows, ri)
        cols = np.delete(cols, ci)
    return np.concatenate(out_i), np.concatenate(out_j)


# ------------------------------------------------------------------ weight matching (SAE Match)


def fold_scale(sae: SparseAutoencoder, scale: torch.Tensor | None = None) -> torch.Tensor:
    """[d_sae] activation scale folded into the decoder: the JumpReLU threshold θ, else ``scale``
    (e.g. ``FeatureStats.mean_active()``), else ones."""
    if scale is not None:
        s = torch.as_tensor(scale, dtype=torch.float32)
    elif hasattr(sae, "threshold") and torch.is_tensor(sae.threshold) and sae.threshold.numel() > 1:
        s = sae.threshold.detach().float()
    elif hasattr(sae, "threshold") and torch.is_tensor(sae.threshold) and sae.threshold.numel() == 1:
        s = torch.full((sae.d_sae,), float(sae.threshold))
    else:
        s = torch.ones(sae.d_sae)
    if s.shape != (sae.d_sae,):
        raise SaecircuitsError(f"activation scale has shape {tuple(s.shape)}, the SAE has {sae.d_sae} features")
    return s.clamp_min(1e-12)


def folded_decoder(sae: SparseAutoencoder, scale: torch.Tensor | None = None) -> torch.Tensor:
    """[d_sae, d_out] decoder rows times each feature's activation scale (SAE Match's folding)."""
    W = sae.W_dec.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12) * fold_scale(sae, scale)[:, None]


def folded_encoder(sae: SparseAutoencoder, scale: torch.Tensor | None = None) -> torch.Tensor:
    """[d_sae, d_in] encoder columns divided by the activation scale (the other half of the fold)."""
    return sae.W_enc.detach().float().T / fold_scale(sae, scale)[:, None]


def cosine_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[n_x, n_y] cosine of the rows of x and y."""
    x = x.float() / x.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = y.float() / y.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ y.T


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2 * x @ y.T).clamp_min(0)


def weight_match(sae_a: SparseAutoencoder, sae_b: SparseAutoencoder, method: Method = "hungarian",
                 scale_a: torch.Tensor | None = None, scale_b: torch.Tensor | None = None,
                 include_encoder: bool = False) -> dict:
    """Match features by folded decoder weights (no data). Returns JSON-able pairs and a summary.

    Cost: squared distance of folded decoder rows (plus folded encoder columns if
    ``include_encoder``), minimised; every pair also carries the cosine of its raw decoder rows.
    """
    if sae_a.d_out != sae_b.d_out:
        raise SaecircuitsError(
            f"weight matching needs decoders in the same space, got widths {sae_a.d_out} and {sae_b.d_out}",
            "use activation matching (saecircuits match without --mode weights) across models or sites",
        )
    with torch.no_grad():
        da, db = folded_decoder(sae_a, scale_a), folded_decoder(sae_b, scale_b)
        cost = _sq_dist(da, db)
        if include_encoder:
            if sae_a.d_in != sae_b.d_in:
                raise SaecircuitsError("include_encoder needs SAEs with the same input width")
            cost = cost + _sq_dist(folded_encoder(sae_a, scale_a), folded_encoder(sae_b, scale_b))
        cos = cosine_matrix(sae_a.W_dec.detach(), sae_b.W_dec.detach())
    ia, ib = assign(-cost.double().numpy(), method)
    c = cos[ia, ib].numpy()
    mse = (cost[ia, ib] / da.shape[1]).numpy()
    pairs = [{"a": int(i), "b": int(j), "cos": float(x), "folded_mse": float(m)} for i, j, x, m in zip(ia, ib, c, mse, strict=True)]
    return {"method": method, "pairs": pairs, "summary": {**distribution(c, "cos"), "n_pairs": len(pairs)}}


def distribution(values: np.ndarray, name: str, thresholds: tuple[float, ...] = (0.5, 0.7, 0.9),
                 bins: int = 20, total: int | None = None) -> dict:
    """Mean, median, quantiles, shares above thresholds (of ``total`` if given) and a [-1, 1] histogram."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    denom = total if total is not None else max(len(v), 1)
    hist, edges = np.histogram(v, bins=bins * 2, range=(-1, 1))
    out = {f"mean_{name}": float(v.mean()) if len(v) else float("nan"),
           f"median_{name}": float(np.median(v)) if len(v) else float("nan"),
           f"q10_{name}": float(np.quantile(v, 0.1)) if len(v) else float("nan"),
           f"q90_{name}": float(np.quantile(v, 0.9)) if len(v) else float("nan")}
    for t in thresholds:
        out[f"share_{name}_gt_{t:g}"] = float((v > t).sum() / max(denom, 1))
    out[f"hist_{name}"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in hist]}
    return out


def feature_chains(saes: list[SparseAutoencoder], names: list[str] | None = None, min_cos: float = 0.5,
                   method: Method = "hungarian", scales: list[torch.Tensor | None] | None = None) -> dict:
    """Compose adjacent-layer weight matchings into chains (SAE Match's composition).

    ``saes`` in layer order. Chain f starts at feature f of the first SAE and follows the matched
    feature at each next SAE while the matched decoder cosine stays >= ``min_cos``.
    Returns ``chains`` [[feature or -1 per SAE]], ``cos`` [[cosine per step]], survival (share of
    chains still alive after s steps) and a DiGraph of every matched edge above ``min_cos``.
    """
    if len(saes) < 2:
        raise SaecircuitsError("feature chains need at least two SAEs, in layer order")
    names = names or [f"sae{i}" for i in range(len(saes))]
    scales = scales or [None] * len(saes)
    steps = []
    for i in range(len(saes) - 1):
        m = weight_match(saes[i], saes[i + 1], method, scales[i], scales[i + 1])
        nxt = np.full(saes[i].d_sae, -1, dtype=np.int64)
        cos = np.full(saes[i].d_sae, np.nan)
        for p in m["pairs"]:
            nxt[p["a"]], cos[p["a"]] = p["b"], p["cos"]
        steps.append((nxt, cos, m["summary"]))
    d0 = saes[0].d_sae
    chains = np.full((d0, len(saes)), -1, dtype=np.int64)
    chain_cos = np.full((d0, len(saes) - 1), np.nan)
    chains[:, 0] = np.arange(d0)
    alive = np.ones(d0, dtype=bool)
    for s, (nxt, cos, _) in enumerate(steps):
        cur = chains[:, s]
        ok = alive & (cur >= 0)
        c = np.where(ok, cos[np.clip(cur, 0, None)], np.nan)
        chain_cos[:, s] = c
        alive = ok & (c >= min_cos)
        chains[:, s + 1] = np.where(alive, nxt[np.clip(cur, 0, None)], -1)
    graph = nx.DiGraph(kind="feature_chains", min_cos=min_cos)
    for s, (nxt, cos, _) in enumerate(steps):
        keep = np.nonzero((nxt >= 0) & (cos >= min_cos))[0]
        for f in keep:
            u, v = f"{names[s]}:{f}", f"{names[s + 1]}:{nxt[f]}"
            graph.add_node(u, sae=names[s], feature=int(f), position=s)
            graph.add_node(v, sae=names[s + 1], feature=int(nxt[f]), position=s + 1)
            graph.add_edge(u, v, cos=float(cos[f]))
    length = (chains >= 0).sum(1) - 1
    return {
        "names": names, "min_cos": min_cos, "method": method,
        "chains": chains.tolist(), "cos": [[None if np.isnan(x) else float(x) for x in row] for row in chain_cos],
        "survival": [float((length >= s).mean()) for s in range(len(saes))],
        "steps": [{"from": names[i], "to": names[i + 1], **st[2]} for i, st in enumerate(steps)],
        "graph": graph,
    }


# ------------------------------------------------------------------ feature flow


@dataclass(frozen=True)
class Place:
    """Where an SAE reads: a residual-stream position (layer + 0, +0.5 mid, +1 post) or a sublayer output."""

    kind: Literal["resid", "attn", "mlp"]
    layer: int
    position: float  # residual position: resid_pre L = L, resid_mid L = L + 0.5, resid_post L = L + 1


def place_of(hook: str) -> Place | None:
    """The place of a hook site, or None for sites feature flow does not use."""
    hook = hook.split(":")[0]
    layer = hooklib.layer_of(hook)
    if layer is None:
        return None
    if hook.endswith("hook_resid_pre"):
        return Place("resid", layer, layer)
    if hook.endswith("hook_resid_mid"):
        return Place("resid", layer, layer + 0.5)
    if hook.endswith("hook_resid_post"):
        return Place("resid", layer, layer + 1)
    if hook.endswith(("hook_attn_out", "attn.hook_z")):
        return Place("attn", layer, layer + 0.25)
    if hook.endswith(("hook_mlp_out",)):
        return Place("mlp", layer, layer + 0.75)
    return None


def residual_directions(sae: SparseAutoencoder, model=None, which: Literal["decoder", "encoder"] = "decoder") -> torch.Tensor:
    """[d_sae, d_model] feature directions in the residual stream (hook_z decoders through W_O)."""
    hook = sae.cfg.hook_out or sae.cfg.hook
    site, _, head = hook.partition(":")
    with torch.no_grad():
        W = sae.W_dec.detach().float() if which == "decoder" else sae.W_enc.detach().float().T
        if site.endswith("attn.hook_z"):
            if model is None:
                raise SaecircuitsError(f"SAE on {hook}: projecting hook_z directions to the residual stream needs the model (W_O)")
            W_O = model.blocks[hooklib.layer_of(site)].attn.W_O.detach().float()  # [n_heads, d_head, d_model]
            if head:
                W = W @ W_O[int(head)]
            else:
                W = torch.einsum("fhd,hdm->fm", W.reshape(W.shape[0], W_O.shape[0], W_O.shape[1]), W_O)
    return W


def feature_flow(saes: dict[str, SparseAutoencoder], model=None, which: Literal["decoder", "encoder"] = "decoder",
                 min_cos: float = 0.3) -> dict:
    """Feature-flow graph over a suite of SAEs of one model (residual, attention and MLP sites).

    For every residual SAE with a predecessor — the residual SAE just before it (at most one layer
    back) and the attention / MLP SAEs writing between the two — each feature's ``which`` direction
    is compared with every predecessor's decoder directions. Its origin is the predecessor kind
    with the highest top cosine if that is >= ``min_cos``, else ``new``. Returns per-feature rows,
    per-SAE origin shares, and the DiGraph (edges: predecessor feature -> feature, with ``cos`` and
    ``kind``; nodes carry ``sae``, ``feature``, ``layer``, ``kind`` and, for targets, ``origin``).
    """
    places = {}
    for name, sae in saes.items():
        p = place_of(sae.cfg.hook_out or sae.cfg.hook)
        if p is not None:
            places[name] = p
    graph = nx.DiGraph(kind="feature_flow", which=which, min_cos=min_cos)
    rows, shares = [], {}
    resid = sorted((p.position, n) for n, p in places.items() if p.kind == "resid")
    for pos, target in resid:
        prev = [(q, n) for q, n in resid if pos - 1 <= q < pos]
        lo = prev[-1][0] if prev else pos - 1
        sources = ([("resid", prev[-1][1])] if prev else []) + [
            (p.kind, n) for n, p in places.items() if p.kind in ("attn", "mlp") and lo < p.position < pos
        ]
        if not sources:
            continue
        t_dirs = residual_directions(saes[target], model, which)
        best_cos, best_idx = [], []
        for _, s in sources:
            cos = cosine_matrix(t_dirs, residual_directions(saes[s], model, "decoder"))
            v, i = cos.max(1)
            best_cos.append(v)
            best_idx.append(i)
        bc = torch.stack(best_cos, 1)  # [d_target, n_sources]
        bi = torch.stack(best_idx, 1)
        top, arg = bc.max(1)
        counts: dict[str, int] = {}
        for f in range(bc.shape[0]):
            src = int(arg[f])
            origin = sources[src][0] if float(top[f]) >= min_cos else "new"
            counts[origin] = counts.get(origin, 0) + 1
            node = f"{target}:{f}"
            graph.add_node(node, sae=target, feature=f, layer=places[target].layer, kind="resid", origin=origin)
            row = {"sae": target, "feature": f, "origin": origin, "origin_sae": sources[src][1] if origin != "new" else None,
                   "origin_feature": int(bi[f, src]) if origin != "new" else None}
            for k, (kind, s) in enumerate(sources):
                c = float(bc[f, k])
                row[f"{kind}_cos"], row[f"{kind}_feature"] = c, int(bi[f, k])
                if c >= min_cos:
                    u = f"{s}:{int(bi[f, k])}"
                    if u not in graph:
                        graph.add_node(u, sae=s, feature=int(bi[f, k]), layer=places[s].layer, kind=kind)
                    graph.add_edge(u, node, cos=c, kind=kind)
            rows.append(row)
        n = bc.shape[0]
        shares[target] = {"sources": [s for _, s in sources], **{k: v / n for k, v in sorted(counts.items())}}
    if not shares:
        raise SaecircuitsError(
            "feature flow needs a residual-stream SAE and at least one predecessor: the residual SAE of the layer "
            "before, or an attention / MLP SAE of the same layer"
        )
    return {"which": which, "min_cos": min_cos, "rows": rows, "origin_shares": shares, "graph": graph}


# ------------------------------------------------------------------ activation matching


class MatchConfig(Config):
    """Activation matching over a text: how much text, how to match, what to filter, which statistics."""

    text: TextConfig = TextConfig()
    tokens: int = Field(100_000, ge=1, description="compared tokens (aligned positions across models)")
    batch_contexts: int = Field(8, ge=1, description="contexts per forward pass")
    method: Method = "hungarian"
    min_fires: int = Field(5, ge=1, description="a feature firing on fewer compared tokens is dead and unmatched")
    min_r: float = Field(0.1, ge=-1, le=1, description="pairs with lower r are flagged low_r and left out of the statistics")
    max_special_share: float = Field(0.9, ge=0, le=1, description="features with at least this share of firings on BOS/special/punctuation tokens are flagged")
    top_tokens: int = Field(5, ge=1)
    top_m: int = Field(20, ge=1, description="highest activations kept per feature to find its top tokens")
    alignment: Rule = "boundary"
    drop_outlier_norm: float | None = Field(
        10.0, gt=1, description="tokens whose SAE input norm exceeds this many times the median (massive-activation / "
        "attention-sink tokens, ~100x the median in SmolLM2) are not compared; they would dominate r and CKA. None: keep all")
    null: int = Field(1000, ge=0, description="shuffled pairings in each similarity null (0: skip the statistics)")
    random_subsets: int = Field(100, ge=0, description="random-subset baseline draws")
    sample_tokens: int = Field(2048, ge=0, description="tokens whose activations are kept for activation-space similarity (0: decoders only)")
    activation_svcca_dims: int = Field(128, ge=1, description="SVCCA on activations keeps at most this many directions per side")
    rsa_max_points: int = Field(2000, ge=10, description="RSA on at most this many (random) points")
    measures: list[Literal["svcca", "rsa", "cka"]] = ["svcca", "rsa", "cka"]
    seed: int = 0


@dataclass
class Batch:
    """One step of a matching stream: SAE inputs of every site, and which rows to compare.

    ``acts[side][site]`` [n_side, d]; ``tokens[side]`` [n_side]; ``valid[side]`` real tokens (not
    padding); ``special[side]`` BOS / special positions; ``rows[side]`` [n] aligned row indices.
    """

    acts: dict[str, dict[str, torch.Tensor]]
    tokens: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    special: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]

    def side_a_on_both(self) -> Batch:
        """Side A's model on both sides, at side A's aligned rows (same-model pairs on a cross-model token set)."""
        return Batch(*({s: part["a"] for s in SIDES} for part in (self.acts, self.tokens, self.valid, self.special, self.rows)))


@dataclass
class Entry:
    name: str
    side: str
    sae: SparseAutoencoder
    site: str
    stats: FeatureStats
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
                    self.entries[name] = Entry(name, side, sae, sae.cfg.hook, FeatureStats(sae.d_sae, top_m))
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


def model_batches(model, sites: list[str], text_cfg: TextConfig, tokens: int | None, batch_contexts: int) -> Iterator[Batch]:
    """Same-model stream: ONE forward pass per batch for every site; compared rows are the rows
    the SAEs were trained on (not BOS/special, not position 0)."""
    from saecircuits.activations.store import ModelActivations, Site, expand_sites
    from saecircuits.text.source import TextSource

    site_objs = expand_sites(model, sorted(set(sites)))
    ma = ModelActivations(model, site_objs)
    src = TextSource.for_model(text_cfg, model)
    done = 0
    for toks in src.batches(batch_contexts):
        acts = ma.activations(toks)
        keep = ma.keep_mask(toks)
        rows = keep.nonzero().squeeze(1)
        if tokens is not None and done + len(rows) > tokens:
            rows = rows[: tokens - done]
        flat = toks.reshape(-1)
        valid = torch.ones(len(flat), dtype=torch.bool)
        acts_by_key = {Site.parse(s).key: acts[Site.parse(s).key] for s in sites}
        yield Batch({"a": acts_by_key, "b": acts_by_key}, {"a": flat, "b": flat}, {"a": valid, "b": valid},
                    {"a": ~keep, "b": ~keep}, {"a": rows, "b": rows})
        done += len(rows)
        if tokens is not None and done >= tokens:
            return


def aligned_model_batches(model_a, sites_a: list[str], model_b, sites_b: list[str], text_cfg: TextConfig,
                          tokens: int | None, batch_contexts: int, rule: Rule = "boundary") -> Iterator[Batch]:
    """Two-model stream: the same text through both models, compared at character-aligned positions
    (``saecircuits.text.alignment``); one forward pass per model per batch."""
    from saecircuits.text.alignment import Side, aligned_batches
    from saecircuits.activations.store import ModelActivations, Site, expand_sites
    from saecircuits.text.source import iter_documents

    if text_cfg.source.startswith("tokens:"):
        raise SaecircuitsError("cross-model matching needs raw text; a tokens: source has no characters to align",
                               "use stdlib, bible, a text file or hf:NAME")
    mas = {}  # a side without sites is only tokenized, never run (its positions align the other side)
    for side, model, sites in (("a", model_a, sites_a), ("b", model_b, sites_b)):
        mas[side] = ModelActivations(model, expand_sites(model, sorted(set(sites)))) if sites else None
    sa, sb = Side.for_model(model_a), Side.for_model(model_b)
    texts = (t for _, t in iter_documents(text_cfg, "train"))
    done = 0
    for ab in aligned_batches(texts, sa, sb, text_cfg.context_size, batch_contexts, rule, limit_pairs=tokens):
        rows = {"a": ab.rows_a, "b": ab.rows_b}
        if tokens is not None and done + len(ab.rows_a) > tokens:
            rows = {k: v[: tokens - done] for k, v in rows.items()}
        acts, toks, valid, special = {}, {}, {}, {}
        for side, t, v, sites in (("a", ab.tokens_a, ab.valid_a, sites_a), ("b", ab.tokens_b, ab.valid_b, sites_b)):
            toks[side] = t.reshape(-1)
            valid[side] = v
            if mas[side] is None:
                acts[side], special[side] = {}, torch.zeros_like(v)
                continue
            out = mas[side].activations(t)
            acts[side] = {Site.parse(s).key: out[Site.parse(s).key] for s in sites}
            special[side] = v & ~mas[side].keep_mask(t)
        yield Batch(acts, toks, valid, special, rows)
        done += len(rows["a"])
        if tokens is not None and done >= tokens:
            return


def pair_table(r: torch.Tensor, ia: np.ndarray, ib: np.ndarray, stats_a: FeatureStats, stats_b: FeatureStats,
               cfg: MatchConfig, cos: torch.Tensor | None, classes_a: TokenClasses | None,
               classes_b: TokenClasses | None) -> list[dict]:
    """One row per matched pair: ids, r, decoder cosine, firing counts, special shares, top tokens, flags."""
    share_a, share_b = stats_a.special_share(), stats_b.special_share()
    rv = r[ia, ib].numpy() if len(ia) else np.zeros(0)
    cv = cos[ia, ib].numpy() if cos is not None and len(ia) else None
    rows = []
    for k, (i, j) in enumerate(zip(ia.tolist(), ib.tolist(), strict=True)):
        top_a = stats_a.top_token_ids(i, cfg.top_tokens)
        top_b = stats_b.top_token_ids(j, cfg.top_tokens)
        low = not (rv[k] >= cfg.min_r)
        spec = bool(share_a[i] >= cfg.max_special_share or share_b[j] >= cfg.max_special_share)
        rows.append({
            "a": i, "b": j, "r": float(rv[k]),
            "cos": float(cv[k]) if cv is not None else None,
            "fires_a": int(stats_a.fires[i]), "fires_b": int(stats_b.fires[j]),
            "special_share_a": float(share_a[i]), "special_share_b": float(share_b[j]),
            "top_tokens_a": (classes_a.text(top_a) if classes_a else [str(t) for t in top_a]),
            "top_tokens_b": (classes_b.text(top_b) if classes_b else [str(t) for t in top_b]),
            "low_r": low, "special_only": spec, "kept": not low and not spec,
        })
    return rows


def pair_result(matcher: ActivationMatcher, a: str, b: str, cfg: MatchConfig, same_space: bool,
                classes: dict[str, TokenClasses]) -> dict:
    """Match one (A, B) pair from the accumulated sums: pairs table, summary, similarity statistics."""
    from saecircuits.matching import similarity

    ea, eb = matcher.entries[a], matcher.entries[b]
    r = matcher.acc[(a, b)].correlation()
    alive_a = (ea.stats.fires >= cfg.min_fires).numpy()
    alive_b = (eb.stats.fires >= cfg.min_fires).numpy()
    alive_a &= ~np.isnan(r.numpy()).all(1)
    alive_b &= ~np.isnan(r.numpy()).all(0)
    start = time.perf_counter()
    ia, ib = assign(r.numpy(), cfg.method, alive_a, alive_b)
    assign_seconds = time.perf_counter() - start
    cos = cosine_matrix(ea.sae.W_dec.detach(), eb.sae.W_dec.detach()) if same_space and ea.sae.d_out == eb.sae.d_out else None
    rows = pair_table(r, ia, ib, ea.stats, eb.stats, cfg, cos, classes.get(ea.side), classes.get(eb.side))
    rv = np.array([p["r"] for p in rows]) if rows else np.zeros(0)
    kept = np.array([p["kept"] for p in rows], dtype=bool) if rows else np.zeros(0, dtype=bool)
    summary = {
        "tokens": matcher.acc[(a, b)].n, "d_sae_a": ea.sae.d_sae, "d_sae_b": eb.sae.d_sae,
        "alive_a": int(alive_a.sum()), "alive_b": int(alive_b.sum()), "n_pairs": len(rows), "n_kept": int(kept.sum()),
        "n_low_r": int(sum(p["low_r"] for p in rows)), "n_special_only": int(sum(p["special_only"] for p in rows)),
        "unique_b": int(len(np.unique(ib))),
        **distribution(rv, "r", total=int(alive_a.sum())),
        "kept": distribution(rv[kept], "r") if kept.any() else {},
        "correlation_seconds": matcher.acc[(a, b)].seconds, "assign_seconds": assign_seconds,
    }
    if cos is not None and len(rows):
        summary.update(distribution(np.array([p["cos"] for p in rows]), "cos"))
    sim: dict = {}
    if cfg.null > 0 and kept.sum() >= 4:
        ka, kb = ia[kept], ib[kept]
        da, db = ea.sae.W_dec.detach().double(), eb.sae.W_dec.detach().double()
        pool_a, pool_b = np.nonzero(alive_a)[0], np.nonzero(alive_b)[0]
        sim["decoder"] = similarity.compare(
            da[ka], db[kb], cfg.measures, n_null=cfg.null, seed=cfg.seed, pool=(da[pool_a], db[pool_b]),
            n_subsets=cfg.random_subsets, rsa_max_points=cfg.rsa_max_points,
        )
        sa, sb = matcher.sample_acts(a), matcher.sample_acts(b)
        if cfg.sample_tokens > 0 and len(sa) >= 8:
            sim["activations"] = similarity.compare(
                sa[:, ka].double(), sb[:, kb].double(), cfg.measures, n_null=cfg.null, seed=cfg.seed,
                pool=(sa[:, pool_a].double(), sb[:, pool_b].double()), pool_axis="columns",
                n_subsets=cfg.random_subsets, rsa_max_points=cfg.rsa_max_points,
                max_dims=min(cfg.activation_svcca_dims, max(len(sa) // 4, 1)),
            )
    return {"a": a, "b": b, "hook_a": ea.sae.cfg.hook, "hook_b": eb.sae.cfg.hook, "method": cfg.method,
            "summary": summary, "similarity": sim, "pairs": rows}


def match_saes(saes_a: dict[str, SparseAutoencoder], saes_b: dict[str, SparseAutoencoder], model_a, model_b=None,
               cfg: MatchConfig | None = None, pairs: list[tuple[str, str]] | None = None, progress: bool = True,
               align_to=None) -> dict:
    """Activation matching of every (A, B) pair of SAEs over one stream of text. JSON-able result.

    ``model_b`` None: both sides read the same model (one forward pass for every hook); else the
    text is aligned across the two tokenizers by character offsets (``saecircuits.text.alignment``).
    ``align_to`` (a second model, with ``model_b`` None): same-model pairs are compared only at the
    character-aligned positions a comparison of ``model_a`` with ``align_to`` uses (only its tokenizer is used), so
    same-model and cross-model numbers are measured on one token set.
    Returns {"config", "models", "timing", "results": [pair_result ...]}.
    """
    cfg = cfg or MatchConfig()
    same = model_b is None or model_b is model_a
    if align_to is not None and not same:
        raise SaecircuitsError("align_to is for same-model pairs; with model_b the text is aligned to model_b already")
    sites_a = [s.cfg.hook for s in saes_a.values()]
    sites_b = [s.cfg.hook for s in saes_b.values()]
    from saecircuits.model.loading import special_token_ids

    classes = {"a": TokenClasses(model_a.tokenizer, special_token_ids(model_a))}
    classes["b"] = classes["a"] if same else TokenClasses(model_b.tokenizer, special_token_ids(model_b))
    matcher = ActivationMatcher(saes_a, saes_b, pairs, cfg.top_m, cfg.sample_tokens, classes, cfg.drop_outlier_norm,
                                limit=cfg.tokens)
    if same and align_to is None:
        stream = model_batches(model_a, sites_a + sites_b, cfg.text, None, cfg.batch_contexts)
    elif same:
        stream = (b.side_a_on_both() for b in aligned_model_batches(model_a, sites_a + sites_b, align_to, [], cfg.text,
                                                                         None, cfg.batch_contexts, cfg.alignment))
    else:
        stream = aligned_model_batches(model_a, sites_a, model_b, sites_b, cfg.text, None, cfg.batch_contexts, cfg.alignment)
    start = time.perf_counter()
    with TokenBar("match", cfg.tokens, enabled=progress, transient=True) as bar:
        for batch in stream:
            matcher.update(batch)
            bar.update(matcher.compared)
            if matcher.compared >= cfg.tokens:
                break
    stream_seconds = time.perf_counter() - start
    if matcher.compared == 0:
        raise SaecircuitsError(f"text source '{cfg.text.source}' gave no tokens to compare")
    results = []
    t0 = time.perf_counter()
    for a, b in matcher.pairs:
        results.append(pair_result(matcher, a, b, cfg, same, classes))
        del matcher.acc[(a, b)].cross  # free d_a·d_b float64 as soon as a pair is done
    from saecircuits.model.loading import hf_name

    corr = sum(acc.seconds for acc in matcher.acc.values())
    return {
        "config": cfg.model_dump(mode="json"),
        "models": {"a": hf_name(model_a), "b": hf_name(model_b if not same else model_a),
                   **({"aligned_to": hf_name(align_to)} if align_to is not None else {})},
        "same_model": same,
        "saes": {n: {"side": e.side, "hook": e.sae.cfg.hook, "d_sae": e.sae.d_sae, "architecture": e.sae.architecture,
                     "alive": int((e.stats.fires >= cfg.min_fires).sum()), "compared_tokens": e.stats.rows,
                     "fires_special_share": float(e.stats.fires_special.sum() / max(int((e.stats.fires + e.stats.fires_special).sum()), 1)),
                     # per-feature mean activation when firing: the activation scale SAE Match folds into a TopK decoder
                     "mean_active": e.stats.mean_active().float().tolist()}
                 for n, e in matcher.entries.items()},
        "timing": {"stream_seconds": stream_seconds, "encode_seconds": matcher.encode_seconds, "correlation_seconds": corr,
                   "forward_seconds": stream_seconds - matcher.encode_seconds - corr,
                   "results_seconds": time.perf_counter() - t0, "tokens": matcher.compared,
                   "dropped_outlier_tokens": matcher.dropped_outliers},
        "results": results,
    }


def sae_names(folders: list[str | Path]) -> list[str]:
    """Distinct short names for SAE folders (the folder name, made unique with a suffix)."""
    names: list[str] = []
    for f in folders:
        base = Path(f).name or str(f)
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}~{k}"
        names.append(name)
    return names


