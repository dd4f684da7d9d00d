"""JumpReLU SAE (Rajamanoharan et al. 2024): f = z · H(z − θ) with a learned threshold θ per latent,
trained with straight-through estimators (rectangle kernel of bandwidth ε) and an L0 penalty."""

from __future__ import annotations

import math

import torch
from torch import nn

from saecircuits.sae.base import SparseAutoencoder


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z·H(z−θ); ∂/∂z = H(z−θ), ∂/∂θ = −(θ/ε)·K((z−θ)/ε) (paper, eq. 11)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (-(theta / eps) * _rectangle((z - theta) / eps) * g).sum(0)
        return (z > theta) * g, grad_theta, None


class _Step(torch.autograd.Function):
    """H(z−θ); ∂/∂z = 0, ∂/∂θ = −(1/ε)·K((z−θ)/ε) (paper, eq. 12)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (-(1.0 / eps) * _rectangle((z - theta) / eps) * g).sum(0)
        return torch.zeros_like(z), grad_theta, None


class JumpReLUSAE(SparseAutoencoder):
    architecture = "jumprelu"

    def __init__(self, cfg, d_in: int, d_out: int | None = None):
        super().__init__(cfg, d_in, d_out)
        self.log_threshold = nn.Parameter(torch.full((self.d_sae,), math.log(cfg.jumprelu_init_threshold)))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu() * (pre > self.threshold)

    def training_forward(self, x: torch.Tensor):
        pre = self.pre_acts(x)
        f = _JumpReLU.apply(pre.relu(), self.threshold, self.cfg.jumprelu_bandwidth)
        return self.decode(f, x), f, {"pre": pre}

    def sparsity_loss(self, f, extra: dict, progress: float) -> tuple[torch.Tensor, dict]:
        l0 = _Step.apply(extra["pre"], self.threshold, self.cfg.jumprelu_bandwidth).sum(-1).mean()
        return self.cfg.l0_coefficient * l0, {"l0_penalty": float(l0.detach())}

    def saelens_architecture(self) -> str:
        return "jumprelu_skip_transcoder" if self.W_skip is not None else "jumprelu_transcoder" if self.is_transcoder else "jumprelu"

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(), "threshold": self.threshold.detach().clone()}
