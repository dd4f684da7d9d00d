"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): every prefix of the latents,
at the widths given, must reconstruct the input on its own, so early latents learn general
features and later ones refine them. Loss: the full reconstruction plus each inner prefix's."""

from __future__ import annotations

import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.sae.batchtopk import BatchTopKSAE


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    architecture = "matryoshka_batchtopk"

    def __init__(self, cfg, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        widths = list(cfg.matryoshka_widths or [])
        if widths[-1] > self.d_sae:
            raise SaecircuitsError(f"matryoshka_widths {widths} exceed d_sae {self.d_sae}",
                                   f"the last width must be at most d_sae; set it to {self.d_sae}")
        self.inner_widths = [w for w in widths if w < self.d_sae]

    def extra_loss(self, x: torch.Tensor, y: torch.Tensor, code, extra: dict) -> tuple[torch.Tensor, dict]:
        total = torch.zeros((), device=x.device)
        metrics = {}
        for w in self.inner_widths:
            mse = (self.decode_code(code, x, limit=w) - y).pow(2).sum(-1).mean()
            metrics[f"mse_first_{w}"] = float(mse.detach())
            total = total + mse
        return total, metrics
