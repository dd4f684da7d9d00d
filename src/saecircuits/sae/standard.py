"""Standard SAE: ReLU features, L1 penalty weighted by decoder row norms (Bricken et al. 2023)."""

from __future__ import annotations

import torch

from saecircuits.sae.base import SparseAutoencoder


class StandardSAE(SparseAutoencoder):
    architecture = "standard"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def sparsity_loss(self, f, extra: dict, progress: float) -> tuple[torch.Tensor, dict]:
        warm = self.cfg.l1_warmup_fraction
        coef = self.cfg.l1_coefficient * (min(1.0, progress / warm) if warm > 0 else 1.0)
        l1 = (f * self.W_dec.norm(dim=1)).sum(-1).mean()
        return coef * l1, {"l1": float(l1.detach()), "l1_coefficient": coef}

    def saelens_architecture(self) -> str:
        if self.is_transcoder:
            return "skip_transcoder" if self.W_skip is not None else "transcoder"
        return "standard"
