"""What every SAE shares: parameters, encode/decode, the unit-norm decoder, and the SAELens layout.

Shapes (SAELens's): W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
and for a transcoder with a skip connection W_skip [d_out, d_in]. An SAE has d_out = d_in and
subtracts b_dec from its input; a transcoder maps one site (MLP input) to another (MLP output).

    pre  = (x - b_dec) @ W_enc + b_enc          (SAE; a transcoder encodes x itself)
    f    = activation(pre)                      (architecture: ReLU, TopK, JumpReLU, ...)
    x̂   = f @ W_dec + b_dec (+ x @ W_skip.T)

Decoder rows are kept at unit norm during training (the gradient's component along each row
is removed before the step, and rows are renormalised after it), so feature activations carry
the scale and sparsity penalties need no decoder-norm weighting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from saecircuits.core.config import Config
from saecircuits.sae.sparse import SparseCode, sparse_decode

Architecture = Literal["standard", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk"]


class SAEConfig(Config):
    """One SAE to train. ``d_sae`` or ``expansion`` (x d_in) sets the width."""

    architecture: Architecture = "topk"
    hook: str = Field(..., description="input site, e.g. blocks.6.hook_resid_post or blocks.3.attn.hook_z:5")
    hook_out: str | None = Field(None, description="transcoder output site, e.g. blocks.6.hook_mlp_out")
    skip: bool = Field(False, description="transcoder skip connection W_skip")
    d_sae: int | None = Field(None, ge=1)
    expansion: float | None = Field(None, gt=0)
    k: int = Field(32, ge=1, description="active latents per token (topk, batchtopk, matryoshka)")
    l1_coefficient: float = Field(5.0, ge=0, description="standard: L1 penalty weight")
    l1_warmup_fraction: float = Field(0.05, ge=0, le=1)
    l0_coefficient: float = Field(1.0, ge=0, description="jumprelu: L0 penalty weight")
    jumprelu_bandwidth: float = Field(0.05, gt=0)
    jumprelu_init_threshold: float = Field(0.01, gt=0)
    matryoshka_widths: list[int] | None = None
    aux_k: int | None = Field(None, ge=1, description="dead latents used by the AuxK loss (default d_in / 2)")
    aux_coefficient: float = Field(1 / 32, ge=0)
    aux_rows: int = Field(1024, ge=1, description="rows of each batch the AuxK loss is computed on")
    dead_after_tokens: int | None = Field(None, ge=1, description="a latent that has not fired for this many tokens is dead (default: a tenth of the run, at least 10 batches)")
    lr: float = Field(2e-3, gt=0)
    lr_warmup_fraction: float = Field(0.01, ge=0, le=1)
    lr_decay_fraction: float = Field(0.2, ge=0, le=1, description="linear decay to zero over this last share of the run")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    sparse_kernels: bool = Field(True, description="sparse decode and encoder backward for TopK-style SAEs")
    seed: int = 0
    name: str | None = Field(None, description="folder name of the saved SAE (default from hook and settings)")

    @model_validator(mode="after")
    def _check(self) -> SAEConfig:
        if self.d_sae is not None and self.expansion is not None:
            raise ValueError("give d_sae or expansion, not both")
        if self.skip and self.hook_out is None:
            raise ValueError("skip (a transcoder skip connection) needs hook_out")
        if self.architecture == "matryoshka_batchtopk" and not self.matryoshka_widths:
            raise ValueError("matryoshka_batchtopk needs matryoshka_widths, e.g. [128, 512, 2048]")
        if self.matryoshka_widths is not None and any(b <= a for a, b in zip(self.matryoshka_widths, self.matryoshka_widths[1:])):
            raise ValueError("matryoshka_widths must increase strictly")
        if self.hook_out is not None and self.architecture == "topk":
            raise ValueError("SAELens has no TopK transcoder format; use batchtopk (saved as JumpReLU) or jumprelu")
        return self

    def width(self, d_in: int) -> int:
        if self.d_sae is not None:
            return self.d_sae
        return int(round((self.expansion or 8) * d_in))

    def default_name(self) -> str:
        parts = [self.hook.replace(":", "_h"), self.architecture]
        if self.hook_out:
            parts.insert(1, "to_" + self.hook_out.replace(":", "_h"))
        if self.architecture in ("topk", "batchtopk", "matryoshka_batchtopk"):
            parts.append(f"k{self.k}")
        parts += [f"d{self.d_sae or 'x' + str(self.expansion or 8)}", f"lr{self.lr:g}"]
        if self.seed:
            parts.append(f"s{self.seed}")
        return "-".join(parts)


@dataclass
class StepOutput:
    """One training step's loss and what the trainer tracks from it."""

    loss: torch.Tensor
    mse: float
    recon: torch.Tensor
    code: SparseCode | torch.Tensor
    metrics: dict


class SparseAutoencoder(nn.Module):
    """Base class: parameters and the math all architectures share. Subclasses define
    ``code`` (pre-activations -> feature activations) and ``sparsity_loss``."""

    architecture: ClassVar[str]
    uses_sparse_code: ClassVar[bool] = False

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.d_in, self.d_out = d_in, d_out or d_in
        self.d_sae = cfg.width(d_in)
        self.is_transcoder = cfg.hook_out is not None
        g = torch.Generator().manual_seed(cfg.seed)
        W_dec = torch.randn(self.d_sae, self.d_out, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        if self.is_transcoder:
            W_enc = torch.randn(self.d_in, self.d_sae, generator=g) / self.d_in**0.5
        else:
            W_enc = W_dec.T.clone()  # tied initialisation (Gao et al. 2024)
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        self.W_skip = nn.Parameter(torch.zeros(self.d_out, self.d_in)) if cfg.skip else None
        # tokens since each latent last fired: dead-latent tracking for AuxK and the metrics
        self.register_buffer("tokens_since_fired", torch.zeros(self.d_sae, dtype=torch.long))
        self.dead_after_tokens = cfg.dead_after_tokens or 10**15  # the trainer sets the run's default
        self.aux_rows = cfg.aux_rows  # AuxK rows per batch; data-parallel training gives each process a share

    # ---- inference (dense), as SAELens computes it
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, d_sae]."""
        if not self.is_transcoder:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [batch, d_sae] at inference."""
        return self.activation(self.pre_acts(x))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, d_out]; ``x`` is needed for a transcoder's skip connection."""
        out = f @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            out = out + x @ self.W_skip.T
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    # ---- training
    def training_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseCode | torch.Tensor, dict]:
        """(reconstruction, feature activations as a SparseCode or dense tensor, extra state for the loss)."""
        pre = self.pre_acts(x)
        f = self.activation(pre)
        return self.decode(f, x), f, {"pre": pre}

    def decode_code(self, code: SparseCode | torch.Tensor, x: torch.Tensor, limit: int | None = None) -> torch.Tensor:
        if isinstance(code, SparseCode):
            out = sparse_decode(code, self.W_dec, limit) + self.b_dec
        else:
            f = code if limit is None else code[:, :limit]
            out = f @ (self.W_dec if limit is None else self.W_dec[:limit]) + self.b_dec
        if self.W_skip is not None:
            out = out + x @ self.W_skip.T
        return out

    def loss(self, x: torch.Tensor, y: torch.Tensor, progress: float = 1.0) -> StepOutput:
        """Reconstruction error (squared error summed over dimensions, mean over tokens, as SAELens)
        plus the architecture's sparsity, auxiliary and extra terms. ``y`` is x for an SAE."""
        recon, code, extra = self.training_forward(x)
        mse = (recon - y).pow(2).sum(-1).mean()
        sparsity, metrics = self.sparsity_loss(code, extra, progress)
        aux = self.aux_loss(x, y, recon, extra)
        inner, inner_metrics = self.extra_loss(x, y, code, extra)
        total = mse + sparsity + aux + inner
        metrics.update(inner_metrics, aux_loss=float(aux.detach()))
        return StepOutput(total, float(mse.detach()), recon.detach(), code, metrics)

    def sparsity_loss(self, f, extra: dict, progress: float) -> tuple[torch.Tensor, dict]:
        """The architecture's penalty (zero for TopK-style SAEs) and its metrics; ``progress`` in [0, 1]."""
        return torch.zeros(()), {}

    def aux_loss(self, x: torch.Tensor, y: torch.Tensor, recon: torch.Tensor, extra: dict) -> torch.Tensor:
        return torch.zeros(())

    def extra_loss(self, x: torch.Tensor, y: torch.Tensor, code, extra: dict) -> tuple[torch.Tensor, dict]:
        return torch.zeros(()), {}

    def after_step(self, code, extra: dict) -> None:
        """Hook for state updated after each step (e.g. BatchTopK's threshold)."""

    @torch.no_grad()
    def note_fired(self, fired: torch.Tensor, n_tokens: int) -> None:
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component along each (unit) decoder row, so a step keeps the norm."""
        if self.W_dec.grad is not None:
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # ---- saving (SAELens layout)
    def saelens_architecture(self) -> str:
        """The SAELens architecture this SAE is saved as."""
        return self.architecture

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        t = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.W_skip is not None:
            t["W_skip"] = self.W_skip
        return {k: v.detach().clone() for k, v in t.items()}

    def saelens_cfg_fields(self) -> dict:
        """Architecture-specific fields of SAELens's cfg.json."""
        return {}
