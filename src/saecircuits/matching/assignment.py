"""Assignment of features of A to features of B from a score matrix (e.g. correlation, -distance).

Li et al. 2016, "Convergent Learning": one-to-one by maximum total score (Hungarian,
``scipy.optimize.linear_sum_assignment``), best partner (each feature of A takes its highest-scoring
feature of B, many-to-one), or greedy one-to-one (highest score first; computed as rounds of
mutually-best pairs, which for distinct values is exactly the sequential greedy matching).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from saecircuits.core.errors import SaecircuitsError
from saecircuits.matching.config import Method


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
