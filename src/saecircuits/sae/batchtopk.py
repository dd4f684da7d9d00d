"""BatchTopK SAE (Bussmann et al. 2024): the k·batch largest activations across the whole batch,
so k holds on average per token. For inference it becomes a JumpReLU with one threshold, the
running average of the smallest selected activation, and is saved as SAELens's ``jumprelu``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from saecircuits.core import distributed
from saecircuits.sae.sparse import SparseCode, select_batch_topk
from saecircuits.sae.topk import TopKSAE

THRESHOLD_LR = 0.01  # SAELens's topk_threshold_lr


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"

    def __init__(self, cfg, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.across_processes = False  # data-parallel training: select and track the threshold over the global batch

    def select(self):
        if self.across_processes:
            return select_global_batch_topk(self.cfg.k)
        return select_batch_topk(self.cfg.k)

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Inference: JumpReLU at the learned threshold (what the saved file does)."""
        return pre.relu() * (pre > self.threshold.to(pre.dtype))

    def training_forward(self, x: torch.Tensor):
        if self.cfg.sparse_kernels:
            return super().training_forward(x)
        pre = self.pre_acts(x)
        code = self.select()(pre.detach())
        f = torch.zeros_like(pre).index_put_((code.rows, code.idx), torch.ones_like(code.vals)) * pre
        return self.decode(f, x), f, {"pre": pre}

    @torch.no_grad()
    def after_step(self, code, extra: dict) -> None:
        vals = code.vals if isinstance(code, SparseCode) else code[code > 0]
        vals = vals[vals > 0]
        if self.across_processes:  # the smallest selected activation of the global batch
            from saecircuits.core.distributed import min_across

            smallest = min_across(float(vals.min()) if len(vals) else math.inf)
            if math.isfinite(smallest):
                self.threshold.mul_(1 - THRESHOLD_LR).add_(THRESHOLD_LR * smallest)
            return
        if len(vals):
            self.threshold.mul_(1 - THRESHOLD_LR).add_(THRESHOLD_LR * vals.min().double())

    def saelens_architecture(self) -> str:
        return "jumprelu_skip_transcoder" if self.W_skip is not None else "jumprelu_transcoder" if self.is_transcoder else "jumprelu"

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(), "threshold": torch.full((self.d_sae,), float(self.threshold))}

    def saelens_cfg_fields(self) -> dict:
        return {}


def select_global_batch_topk(k: int) -> Callable:
    """BatchTopK over the global batch: the k·(rows of all processes) largest pre-activations, positive ones kept.

    Exact, as one process selecting over the concatenated batch: each process sends its own largest
    k·N_global values (no process can hold more of the global top set); the threshold t is the
    k·N_global-th largest of those; each process keeps its entries above t, and entries equal to t
    (duplicate rows make exact ties) fill the remaining count in rank order, then index order.
    Every process must have the same number of rows.
    """

    def select(pre: torch.Tensor) -> SparseCode:
        b, d = pre.shape
        flat_pre = pre.reshape(-1)
        want = k * b * distributed.world()
        local = flat_pre.topk(min(want, flat_pre.numel()), sorted=False).values
        everything = distributed.all_gather_cat(local)
        t = everything.topk(min(want, everything.numel()), sorted=False).values.min()
        above, tied = flat_pre > t, flat_pre == t
        counts = distributed.all_gather_cat(torch.stack([above.sum(), tied.sum()])[None]).tolist()  # [world, 2]
        need = want - sum(c[0] for c in counts) - sum(c[1] for c in counts[: distributed.rank()])
        tied_here = tied.nonzero().squeeze(1)[: max(0, need)]
        keep = above.index_fill_(0, tied_here, True) & (flat_pre > 0)
        flat = keep.nonzero().squeeze(1)  # sorted: rows in order
        rows = flat // d
        offsets = torch.searchsorted(rows, torch.arange(b, device=pre.device))
        return SparseCode(flat % d, flat_pre[flat], offsets, batch=b)

    return select
