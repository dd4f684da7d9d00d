"""Sparse codes and the two kernels that make TopK-style SAEs cheap on a CPU.

A ``SparseCode`` holds only the active latents of each row. Decoding gathers just those decoder
rows (``F.embedding_bag``, forward and backward), and the encoder's backward pass scatters the
gradient of the active pre-activations only, instead of multiplying a dense, mostly-zero
[batch, d_sae] gradient by the input. With k active latents of d_sae, the three dense matmuls
of the decoder and the encoder's backward matmul shrink by a factor of about d_sae / k; only the
encoder's forward matmul stays dense (every pre-activation is needed to choose the top k).
``inference_code`` gives any SAE's activations at inference in the same form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # base imports this module: the SAE class is for annotations only
    from saecircuits.sae.base import SparseAutoencoder


@dataclass
class SparseCode:
    """Active latents: ``idx``/``vals`` [batch, k] (fixed k), or flat [n] with ``offsets`` [batch] (rows in order)."""

    idx: torch.Tensor
    vals: torch.Tensor
    offsets: torch.Tensor | None = None
    batch: int = 0

    @property
    def rows(self) -> torch.Tensor:
        """Row index of every active entry, flat [n]."""
        if self.offsets is None:
            b, k = self.idx.shape
            return torch.arange(b, device=self.idx.device).repeat_interleave(k)
        counts = torch.diff(self.offsets, append=torch.tensor([self.idx.numel()], device=self.idx.device))
        return torch.arange(len(self.offsets), device=self.idx.device).repeat_interleave(counts)

    def dense(self, d_sae: int) -> torch.Tensor:
        """[batch, d_sae] feature activations."""
        if self.offsets is None:  # fixed k: one scatter along the rows, no flat row index built
            return torch.zeros(self.idx.shape[0], d_sae, dtype=self.vals.dtype, device=self.vals.device).scatter_add_(
                1, self.idx, self.vals)
        out = torch.zeros(self.batch or len(self.offsets), d_sae, dtype=self.vals.dtype, device=self.vals.device)
        out.index_put_((self.rows, self.idx.reshape(-1)), self.vals.reshape(-1), accumulate=True)
        return out

    def l0(self) -> float:
        """Mean active latents per row (counts only nonzero values)."""
        n = self.batch or (self.idx.shape[0] if self.offsets is None else len(self.offsets))
        return float((self.vals != 0).sum()) / max(n, 1)

    def fired(self, d_sae: int) -> torch.Tensor:
        """[d_sae] bool: which latents were active in any row."""
        out = torch.zeros(d_sae, dtype=torch.bool, device=self.idx.device)
        out[self.idx.reshape(-1)[self.vals.reshape(-1) > 0]] = True
        return out


def sparse_decode(code: SparseCode, W_dec: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    """Σ_active vals · W_dec[idx]: [batch, d_out], without the bias. ``limit`` keeps latents < limit only."""
    vals = code.vals if limit is None else code.vals * (code.idx < limit)
    return F.embedding_bag(code.idx, W_dec, code.offsets, mode="sum", per_sample_weights=vals)


class _SparseEncode(torch.autograd.Function):
    """pre = x @ W_enc + b_enc; select the active latents; backward only through them."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, select, d_sae):  # noqa: D401
        pre = torch.addmm(b_enc, x, W_enc)
        code = select(pre)
        ctx.save_for_backward(x, W_enc, code.idx, code.offsets if code.offsets is not None else torch.empty(0), code.vals)
        ctx.fixed_k = code.offsets is None
        ctx.d_sae = d_sae
        ctx.mark_non_differentiable(code.idx)
        return code.vals, code.idx, code.offsets if code.offsets is not None else torch.empty(0, dtype=torch.long)

    @staticmethod
    def backward(ctx, g_vals, _g_idx, _g_off):
        x, W_enc, idx, offsets, vals = ctx.saved_tensors
        offsets = None if ctx.fixed_k else offsets
        g_vals = g_vals * (vals > 0)  # the ReLU: a selected but negative pre-activation passes no gradient
        g = g_vals.reshape(-1)
        grad_b = torch.zeros(ctx.d_sae, dtype=g.dtype, device=g.device).index_add_(0, idx.reshape(-1), g)
        # d/dW_enc[:, j] = Σ_rows g[row, j] · x[row]: the embedding_bag weight-gradient, with x as the output grad
        with torch.enable_grad():
            w = torch.zeros(ctx.d_sae, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
            out = F.embedding_bag(idx, w, offsets, mode="sum", per_sample_weights=g_vals.detach())
            (grad_wt,) = torch.autograd.grad(out, w, grad_outputs=x)
        grad_x = None
        if ctx.needs_input_grad[0]:  # Σ_j g[row, j] · W_enc[:, j]: reaches b_dec through x - b_dec
            grad_x = F.embedding_bag(idx, W_enc.T.contiguous(), offsets, mode="sum", per_sample_weights=g_vals)
        return grad_x, grad_wt.T, grad_b, None, None


def sparse_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, select: Callable[[torch.Tensor], SparseCode]
) -> SparseCode:
    """Encode with a selection rule (top-k per row, top-k·batch overall, ...), sparse backward."""
    vals, idx, offsets = _SparseEncode.apply(x, W_enc, b_enc, select, W_enc.shape[1])
    return SparseCode(idx, vals, offsets if offsets.numel() else None, batch=x.shape[0])


def select_topk(k: int) -> Callable[[torch.Tensor], SparseCode]:
    """The k largest pre-activations of each row, ReLU'd (a negative one contributes zero)."""

    def select(pre: torch.Tensor) -> SparseCode:
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        return SparseCode(idx, vals.relu_())

    return select


def select_batch_topk(k: int) -> Callable[[torch.Tensor], SparseCode]:
    """The k·batch largest positive pre-activations of the whole batch (BatchTopK), rows in order."""

    def select(pre: torch.Tensor) -> SparseCode:
        b, d = pre.shape
        vals, flat = pre.reshape(-1).topk(min(k * b, pre.numel()), sorted=False)
        keep = vals > 0
        vals, flat = vals[keep], flat[keep]
        flat, order = flat.sort()
        vals = vals[order]
        rows = flat // d
        offsets = torch.searchsorted(rows, torch.arange(b, device=pre.device))
        return SparseCode(flat % d, vals, offsets, batch=b)

    return select


@torch.no_grad()
def inference_code(sae: SparseAutoencoder, x: torch.Tensor) -> SparseCode:
    """Feature activations of ``x`` [n, d_in] as a fixed-k SparseCode [n, k]; entries with value 0 are padding.

    TopK: the k largest pre-activations, ReLU'd (what ``encode`` keeps). Other architectures:
    ``encode`` then the row's nonzero entries, padded to the largest count in the batch.
    """
    if sae.architecture == "topk":
        return select_topk(min(sae.cfg.k, sae.d_sae))(sae.pre_acts(x))
    f = sae.encode(x)
    k = int((f > 0).sum(1).max()) if len(f) else 0
    vals, idx = f.topk(max(k, 1), dim=-1, sorted=False)
    return SparseCode(idx, vals.relu_())
