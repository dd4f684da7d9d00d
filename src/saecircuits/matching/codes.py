"""Sparse codes of a matching stream and the running sums of a feature x feature Pearson correlation.

Activation matching (Lan et al. 2024, "Sparse Autoencoders Reveal Universal Feature Spaces Across
Large Language Models"): both SAEs run over the same text and a feature x feature Pearson
correlation matrix is accumulated from running sums (Σx, Σy, Σx², Σy², Σxy, float64), never holding
the activations. SAE codes are sparse, so Σxy is a scatter-add of the k_a·k_b products of the
features active on each token (n·k_a·k_b work instead of the n·d_a·d_b of a dense matmul); codes
that are not sparse fall back to a dense float32 matmul per chunk added into float64.

A code here is the pair (vals [n, k], idx [n, k]) of a fixed-k ``saecircuits.sae.sparse.SparseCode``.
"""

from __future__ import annotations

import time

import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.sae import SparseAutoencoder
from saecircuits.sae.sparse import SparseCode, inference_code

Code = tuple[torch.Tensor, torch.Tensor]  # (vals [n, k], idx [n, k]); entries with value 0 are padding


@torch.no_grad()
def sparse_code(sae: SparseAutoencoder, x: torch.Tensor) -> Code:
    """Feature activations of ``x`` [n, d_in] as (vals [n, k], idx [n, k]) (``sae.sparse.inference_code``)."""
    code = inference_code(sae, x)
    return code.vals, code.idx


def dense_from_code(code: Code, d: int) -> torch.Tensor:
    """[n, d] activations from (vals, idx), in the values' dtype."""
    vals, idx = code
    return SparseCode(idx, vals).dense(d)


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
    def update(self, code_a: Code, code_b: Code) -> None:
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
