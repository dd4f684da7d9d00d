"""How similar two paired representation spaces are: SVCCA, RSA and linear CKA, with nulls.

X [n, p] and Y [n, q] hold n paired samples: matched feature pairs (rows: decoder directions,
as Lan et al. 2024 compare SAE feature spaces) or tokens (rows: activations of the matched
features). Each measure is invariant to permutations and rotations of the columns, so the null
for "the pairing carries no information" permutes the rows of Y (shuffled pairings) and
recomputes the measure; the p-value is (1 + #{null >= observed}) / (1 + n_null). A second
baseline draws random subsets of the same size from all features of each side (random-subset
baseline): it says whether the matched subset is more similar than an arbitrary one.

Definitions (all columns centred):
- linear CKA (Kornblith et al. 2019): ||XᵀY||²_F / (||XᵀX||_F ||YᵀY||_F), i.e. HSIC with linear kernels.
- SVCCA (Raghu et al. 2017): keep the top singular directions of X and of Y explaining
  ``keep_variance`` of the variance, then CCA between the two reduced spaces; the score is the mean
  canonical correlation. With orthonormal bases U_x, U_y of the reduced spaces, the canonical
  correlations are the singular values of U_xᵀU_y.
- RSA (Kriegeskorte et al. 2008): the Spearman correlation of the upper triangles of the two
  sample x sample similarity matrices (Pearson correlation between samples).

Nulls are vectorised: the reduced bases (SVCCA), Gram matrices (CKA) and rank matrices (RSA) are
computed once, and a batch of permutations is applied by gathering rows, in float32.
"""

from __future__ import annotations

import math
import time
from itertools import permutations
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from scipy.stats import rankdata, spearmanr

from saecircuits.core.errors import SaecircuitsError

Measure = Literal["svcca", "rsa", "cka"]
MEASURES: tuple[Measure, ...] = ("svcca", "rsa", "cka")


def _as64(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).double()
    if t.ndim != 2:
        raise SaecircuitsError(f"similarity measures take [samples, dims] matrices, got shape {tuple(t.shape)}")
    return t


def _center(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(0, keepdim=True)


def _check_pair(X: torch.Tensor, Y: torch.Tensor) -> None:
    if X.shape[0] != Y.shape[0]:
        raise SaecircuitsError(f"paired matrices need the same number of samples, got {X.shape[0]} and {Y.shape[0]}")
    if X.shape[0] < 3:
        raise SaecircuitsError(f"similarity needs at least 3 paired samples, got {X.shape[0]}")


# ------------------------------------------------------------------ the measures


def linear_cka(X, Y) -> float:
    """Linear CKA of X [n, p] and Y [n, q]."""
    X, Y = _center(_as64(X)), _center(_as64(Y))
    _check_pair(X, Y)
    n, p, q = X.shape[0], X.shape[1], Y.shape[1]
    if n * n * (p + q) < n * (p + q) ** 2:  # fewer samples than dims: the same quantities from n x n Gram matrices
        K, L = X @ X.T, Y @ Y.T
        num, den = (K * L).sum(), torch.linalg.matrix_norm(K) * torch.linalg.matrix_norm(L)
    else:
        num = (X.T @ Y).square().sum()
        den = torch.linalg.matrix_norm(X.T @ X) * torch.linalg.matrix_norm(Y.T @ Y)
    return float(num / den) if den > 0 else float("nan")


def reduced_basis(X: torch.Tensor, keep_variance: float = 0.99, max_dims: int | None = None) -> torch.Tensor:
    """Orthonormal [n, k] basis of the top singular directions of centred X holding ``keep_variance``.

    From the eigendecomposition of the smaller of XᵀX and XXᵀ (float64): the left singular
    vectors are U = X V / S for the kept directions.
    """
    Xc = _center(X)
    small_side = Xc.shape[1] <= Xc.shape[0]
    G = (Xc.T @ Xc if small_side else Xc @ Xc.T).numpy()
    m = G.shape[0]
    if max_dims is not None and max_dims < m // 4:
        # only the top max_dims eigenpairs can be kept; the variance total is the trace (~3x faster than all of them)
        ev, vec = scipy.linalg.eigh(G, subset_by_index=[m - max_dims, m - 1], driver="evr")
    else:
        ev, vec = scipy.linalg.eigh(G, driver="evd")
    ev, vec = torch.from_numpy(ev[::-1].copy()).clamp_min(0), torch.from_numpy(vec[:, ::-1].copy())
    total = torch.tensor(float(np.trace(G))).clamp_min(0)
    if total <= 0:
        raise SaecircuitsError("SVCCA of a constant matrix is undefined")
    frac = torch.cumsum(ev, 0) / total
    k = int(torch.searchsorted(frac, torch.tensor(keep_variance - 1e-12, dtype=frac.dtype))) + 1
    k = min(k, int((ev > ev[0] * 1e-12).sum()))
    if max_dims is not None:
        k = min(k, max_dims)
    k = max(k, 1)
    if not small_side:
        return vec[:, :k]
    # U = X V / S; the kept directions hold >= 1e-12 of the top variance, so U stays orthonormal to ~1e-10
    return Xc @ vec[:, :k] / ev[:k].sqrt()


def svcca(X, Y, keep_variance: float = 0.99, max_dims: int | None = None) -> float:
    """SVCCA: mean canonical correlation of the ``keep_variance`` SVD-truncated spaces of X and Y."""
    X, Y = _as64(X), _as64(Y)
    _check_pair(X, Y)
    Ux, Uy = reduced_basis(X, keep_variance, max_dims), reduced_basis(Y, keep_variance, max_dims)
    return float(torch.linalg.svdvals(Ux.T @ Uy).clamp(max=1).mean())


def _sample_similarity(X: torch.Tensor) -> torch.Tensor:
    """[n, n] Pearson correlation between the rows (samples) of X."""
    Z = X - X.mean(1, keepdim=True)
    Z = Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Z @ Z.T


def rsa(X, Y) -> float:
    """RSA: Spearman correlation of the upper triangles of the sample-similarity matrices of X and Y."""
    X, Y = _as64(X), _as64(Y)
    _check_pair(X, Y)
    return _RSA(X, Y).observed()


MEASURE_FUNCTIONS = {"svcca": svcca, "rsa": rsa, "cka": linear_cka}


# ------------------------------------------------------------------ prepared measures for permutation nulls


class _Prepared:
    """A measure prepared once for X and Y; ``score(perms)`` is the measure of (X, Y[perm]) per permutation."""

    n: int

    def observed(self) -> float:
        raise NotImplementedError

    def score(self, perms: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch(self) -> int:
        return 16


class _CKA(_Prepared):
    """HSIC(X, PY) = <K, P L Pᵀ> with Gram matrices K = XXᵀ, L = YYᵀ of the centred data."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor):
        Xc, Yc = _center(X), _center(Y)
        self.n = X.shape[0]
        # the cheaper exact form: a gathered n x n Gram entry costs ~300 matmul multiply-adds on a CPU
        self.gram = Xc.shape[1] * Yc.shape[1] > 300 * self.n
        self.den = float(torch.linalg.matrix_norm(Xc.T @ Xc) * torch.linalg.matrix_norm(Yc.T @ Yc))
        self.exact = float((Xc.T @ Yc).square().sum() / self.den) if self.den > 0 else float("nan")
        if self.gram:
            self.K, self.L = (Xc @ Xc.T).float(), (Yc @ Yc.T).float()
        else:
            self.Xf, self.Yf = Xc.float(), Yc.float()

    def observed(self) -> float:
        return self.exact

    def batch(self) -> int:
        return max(1, min(64, int(4e7 // max(self.n * self.n if self.gram else self.n * self.Yf.shape[1], 1))))

    def score(self, perms: torch.Tensor) -> torch.Tensor:
        if self.gram:
            out = torch.empty(len(perms), dtype=torch.float64)
            for i, p in enumerate(perms):
                out[i] = float((self.L.index_select(0, p).index_select(1, p) * self.K).sum()) / self.den
            return out
        M = self.Xf.T @ self.Yf[perms]
        return M.square().sum((1, 2)).double() / self.den


class _SVCCA(_Prepared):
    def __init__(self, X: torch.Tensor, Y: torch.Tensor, keep_variance: float, max_dims: int | None):
        self.n = X.shape[0]
        Ux, Uy = reduced_basis(X, keep_variance, max_dims), reduced_basis(Y, keep_variance, max_dims)
        self.dims = (Ux.shape[1], Uy.shape[1])
        self.exact = float(torch.linalg.svdvals(Ux.T @ Uy).clamp(max=1).mean())
        self.Ux, self.Uy = Ux.float(), Uy.float()

    def observed(self) -> float:
        return self.exact

    def batch(self) -> int:
        return max(1, min(32, int(2e7 // max(self.n * self.Uy.shape[1], 1))))

    def score(self, perms: torch.Tensor) -> torch.Tensor:
        M = (self.Ux.T @ self.Uy[perms]).numpy()  # [B, kx, ky]
        k = min(M.shape[1], M.shape[2])
        # LAPACK's divide-and-conquer SVD (scipy) is several times faster here than torch's batched routines
        sv = [scipy.linalg.svd(m, compute_uv=False, lapack_driver="gesdd", check_finite=False) for m in M]
        return torch.tensor([float(np.clip(v, 0, 1).sum()) / k for v in sv], dtype=torch.float64)


class _RSA(_Prepared):
    """Spearman of upper triangles = Pearson of their ranks; permuting samples permutes the rank
    matrix of Y symmetrically, so the ranks are computed once (standardised, so float32 sums are exact enough)."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor):
        self.n = X.shape[0]
        self.m = self.n * (self.n - 1) / 2
        self.ZX, ux = self._standard_ranks(X)
        self.ZY, uy = self._standard_ranks(Y)
        self.exact = float(np.mean(ux * uy)) if ux is not None and uy is not None else float("nan")

    def _standard_ranks(self, X: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
        S = _sample_similarity(X).numpy()
        iu = np.triu_indices(self.n, 1)
        u = rankdata(S[iu])
        sd = u.std()
        if sd == 0:
            return torch.zeros(self.n, self.n), None
        u = (u - u.mean()) / sd
        Z = np.zeros((self.n, self.n), dtype=np.float32)
        Z[iu] = u
        return torch.from_numpy(Z + Z.T), u

    def observed(self) -> float:
        return self.exact

    def batch(self) -> int:
        return max(1, min(64, int(2e7 // max(self.n * self.n, 1))))

    def score(self, perms: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(perms), dtype=torch.float64)
        for i, p in enumerate(perms):
            out[i] = float((self.ZY.index_select(0, p).index_select(1, p) * self.ZX).sum()) / (2 * self.m)
        return out


def prepare(measure: Measure, X, Y, keep_variance: float = 0.99, max_dims: int | None = None) -> _Prepared:
    X, Y = _as64(X), _as64(Y)
    _check_pair(X, Y)
    if measure == "cka":
        return _CKA(X, Y)
    if measure == "svcca":
        return _SVCCA(X, Y, keep_variance, max_dims)
    if measure == "rsa":
        return _RSA(X, Y)
    raise SaecircuitsError(f"unknown similarity measure {measure!r}", f"choose from {', '.join(MEASURES)}")


def permutation_null(prep: _Prepared, n_null: int, seed: int = 0) -> np.ndarray:
    """[n_null] scores of (X, Y[perm]) for uniformly random permutations, in batches."""
    g = torch.Generator().manual_seed(seed)
    out = []
    b = prep.batch()
    done = 0
    while done < n_null:
        k = min(b, n_null - done)
        perms = torch.argsort(torch.rand(k, prep.n, generator=g), dim=1)
        out.append(prep.score(perms))
        done += k
    return torch.cat(out).numpy() if out else np.zeros(0)


def p_value(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (1 + len(null)): a valid permutation p-value."""
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def permutation_test(X, Y, measure: Measure, n_null: int = 1000, seed: int = 0, keep_variance: float = 0.99,
                     max_dims: int | None = None) -> dict:
    """The measure of (X, Y) against ``n_null`` shuffled pairings (rows of Y permuted)."""
    start = time.perf_counter()
    prep = prepare(measure, X, Y, keep_variance, max_dims)
    ident = torch.arange(prep.n)[None]
    same_precision = float(prep.score(ident)[0])  # the observed value computed as the null is
    null = permutation_null(prep, n_null, seed)
    out = {"score": prep.observed(), "null_mean": float(null.mean()) if len(null) else float("nan"),
           "null_std": float(null.std()) if len(null) else float("nan"),
           "null_q99": float(np.quantile(null, 0.99)) if len(null) else float("nan"),
           "p_value": p_value(same_precision - 1e-6 * abs(same_precision), null) if len(null) else float("nan"),
           "n_null": int(n_null), "seconds": time.perf_counter() - start}
    if isinstance(prep, _SVCCA):
        out["dims"] = list(prep.dims)
        # kx + ky > n forces kx + ky - n canonical correlations to 1 whatever the pairing: the score saturates
        out["saturated"] = prep.dims[0] + prep.dims[1] > prep.n
    return out


def random_subset_baseline(pool_a, pool_b, size: int, measure: Measure, n_draws: int = 100, seed: int = 0,
                           axis: Literal["rows", "columns"] = "rows", keep_variance: float = 0.99,
                           max_dims: int | None = None) -> np.ndarray:
    """[n_draws] scores of random same-size subsets: ``size`` random rows (or columns) of each pool, paired arbitrarily."""
    A, B = _as64(pool_a), _as64(pool_b)
    n_a, n_b = (A.shape[0], B.shape[0]) if axis == "rows" else (A.shape[1], B.shape[1])
    if size > min(n_a, n_b):
        raise SaecircuitsError(f"random subsets of {size} from pools of {n_a} and {n_b}")
    rng = np.random.default_rng(seed)
    fn = MEASURE_FUNCTIONS[measure]
    kw = {"keep_variance": keep_variance, "max_dims": max_dims} if measure == "svcca" else {}
    out = []
    for _ in range(n_draws):
        ia, ib = rng.choice(n_a, size, replace=False), rng.choice(n_b, size, replace=False)
        X, Y = (A[ia], B[ib]) if axis == "rows" else (A[:, ia], B[:, ib])
        out.append(fn(X, Y, **kw))
    return np.asarray(out, dtype=np.float64)


def compare(X, Y, measures: list[Measure] | tuple[Measure, ...] = MEASURES, n_null: int = 1000, seed: int = 0,
            pool: tuple | None = None, pool_axis: Literal["rows", "columns"] = "rows", n_subsets: int = 100,
            rsa_max_points: int | None = 2000, keep_variance: float = 0.99, max_dims: int | None = None) -> dict:
    """Every measure of paired X [n, p], Y [n, q] with its shuffled-pairing null and p-value, and
    (given the full ``pool`` of each side, in the same orientation) a random-subset baseline.

    RSA works on n x n matrices: with more than ``rsa_max_points`` samples it uses a random subset
    of that many pairs (recorded as ``points``). The random-subset size is the number of paired
    features: rows of X for ``pool_axis="rows"`` (features are rows), columns for ``"columns"``.
    """
    X, Y = _as64(X), _as64(Y)
    _check_pair(X, Y)
    rng = np.random.default_rng(seed)
    out: dict = {"n": X.shape[0], "dims": [X.shape[1], Y.shape[1]]}
    for k, measure in enumerate(measures):
        x, y = X, Y
        if measure == "rsa" and rsa_max_points is not None and X.shape[0] > rsa_max_points:
            sel = torch.from_numpy(np.sort(rng.choice(X.shape[0], rsa_max_points, replace=False)))
            x, y = X[sel], Y[sel]
        res = permutation_test(x, y, measure, n_null, seed + k, keep_variance, max_dims)
        res["points"] = x.shape[0]
        if pool is not None and n_subsets > 0:
            size = X.shape[0] if pool_axis == "rows" else X.shape[1]
            pa, pb = _as64(pool[0]), _as64(pool[1])
            if measure == "rsa" and pool_axis == "rows" and rsa_max_points is not None and size > rsa_max_points:
                size = rsa_max_points
            if pool_axis == "columns" and measure == "rsa" and rsa_max_points is not None and pa.shape[0] > rsa_max_points:
                rows = torch.from_numpy(np.sort(rng.choice(pa.shape[0], rsa_max_points, replace=False)))
                pa, pb = pa[rows], pb[rows]
            n_pool = min(pa.shape[0], pb.shape[0]) if pool_axis == "rows" else min(pa.shape[1], pb.shape[1])
            if size <= n_pool:
                start = time.perf_counter()
                base = random_subset_baseline(pa, pb, size, measure, n_subsets, seed + 100 + k, pool_axis, keep_variance, max_dims)
                res["random_subset"] = {"mean": float(np.nanmean(base)), "std": float(np.nanstd(base)),
                                        "p_value": p_value(res["score"], base[np.isfinite(base)]),
                                        "n": int(n_subsets), "size": int(size), "seconds": time.perf_counter() - start}
        out[measure] = res
    return out


def similarity_matrix(results: list[dict], row_key: str = "a", col_key: str = "b",
                      value: str = "svcca", source: str = "decoder") -> dict:
    """A layer x layer (SAE x SAE) matrix of one statistic from pair results (``matching.pair_result``).

    ``value``: a similarity measure (``svcca``, ``rsa``, ``cka``: its score from ``source``
    ("decoder" or "activations")) or a summary statistic (e.g. ``mean_r``, ``share_r_gt_0.7``).
    Returns {"rows", "cols", "values" [[float | None]], "p_values" (for measures)}.
    """
    rows = list(dict.fromkeys(r[row_key] for r in results))
    cols = list(dict.fromkeys(r[col_key] for r in results))
    vals = [[None] * len(cols) for _ in rows]
    pvals = [[None] * len(cols) for _ in rows]
    for r in results:
        i, j = rows.index(r[row_key]), cols.index(r[col_key])
        if value in MEASURES:
            m = (r.get("similarity") or {}).get(source, {}).get(value)
            if m is not None:
                vals[i][j], pvals[i][j] = m["score"], m["p_value"]
        else:
            v = r["summary"].get(value)
            vals[i][j] = None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    return {"rows": rows, "cols": cols, "value": value, "source": source, "values": vals,
            "p_values": pvals if value in MEASURES else None}


def depth_alignment(matrix: dict, depth_rows: dict[str, float], depth_cols: dict[str, float],
                    max_permutations: int = 40_320, seed: int = 0) -> dict:
    """Which layers of two models correspond, from a layer x layer matrix (``similarity_matrix``; higher = more alike).

    A raw argmax is dominated by main effects: if early layers of both models share more token-level
    features, one column wins every row. The interaction left after removing row and column means
    (double centring, as in a two-way ANOVA) says which layers are alike beyond those effects.
    ``depth_*``: relative depth of each row / column layer, (layer + 1) / n_layers.
    Returns the per-row and per-column best of the raw matrix and of the interaction, and the
    Spearman correlation between the interaction and -|depth_row - depth_col| with a permutation
    p-value over orderings of the rows (all of them when rows! <= ``max_permutations``; the smallest
    possible p is 1 / rows!, 1/24 for a 4 x 4 matrix).
    """
    rows, cols = matrix["rows"], matrix["cols"]
    M = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix["values"]])
    if np.isnan(M).any() or min(M.shape) < 2:
        raise SaecircuitsError("depth alignment needs a complete matrix of at least 2 x 2 layers",
                               "match every row layer with every column layer first")
    inter = M - M.mean(1, keepdims=True) - M.mean(0, keepdims=True) + M.mean()
    closeness = -np.abs(np.array([depth_rows[r] for r in rows])[:, None] - np.array([depth_cols[c] for c in cols])[None])

    def best(A: np.ndarray, axis: int, labels: list[str], keys: list[str]) -> dict:
        return {k: labels[int(i)] for k, i in zip(keys, A.argmax(axis), strict=True)}

    out = {"rows": rows, "cols": cols, "interaction": inter.tolist(),
           "best_col_raw": best(M, 1, cols, rows), "best_row_raw": best(M, 0, rows, cols),
           "best_col_interaction": {}, "best_row_interaction": {}, "spearman_with_depth": None, "p_value": None,
           "permutations": 0}
    if np.ptp(inter) <= 1e-12 * max(np.abs(M).max(), 1.0) or np.ptp(closeness) == 0:
        return out  # purely additive (no interaction to rank) or every depth difference equal (nothing to rank against)

    def stat(order) -> float:
        return float(spearmanr(inter[list(order)].ravel(), closeness.ravel())[0])

    observed = stat(range(len(rows)))
    if math.factorial(len(rows)) <= max_permutations:
        null = np.array([stat(p) for p in permutations(range(len(rows)))])  # includes the identity
        p_value = float(np.mean(null >= observed - 1e-12))
    else:
        g = np.random.default_rng(seed)
        null = np.array([stat(g.permutation(len(rows))) for _ in range(max_permutations)])
        p_value = float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))
    return {**out, "best_col_interaction": best(inter, 1, cols, rows), "best_row_interaction": best(inter, 0, rows, cols),
            "spearman_with_depth": observed, "p_value": p_value, "permutations": len(null)}
