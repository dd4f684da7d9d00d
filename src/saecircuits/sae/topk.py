"""TopK SAE (Gao et al. 2024): the k largest pre-activations per token, with the AuxK loss that
revives dead latents by having the top dead ones reconstruct the residual error."""

from __future__ import annotations

import torch

from saecircuits.sae.base import SparseAutoencoder
from saecircuits.sae.sparse import SparseCode, select_topk, sparse_encode


class TopKSAE(SparseAutoencoder):
    architecture = "topk"
    uses_sparse_code = True

    def select(self):
        return select_topk(self.cfg.k)

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.is_transcoder else x - self.b_dec

    def training_forward(self, x: torch.Tensor):
        if not self.cfg.sparse_kernels:
            return super().training_forward(x)
        xin = self.encoder_input(x)
        code = sparse_encode(xin, self.W_enc, self.b_enc, self.select())
        return self.decode_code(code, x), code, {"x_in": xin}

    def aux_loss(self, x: torch.Tensor, y: torch.Tensor, recon: torch.Tensor, extra: dict) -> torch.Tensor:
        """AuxK: the top-k_aux dead latents (by pre-activation) reconstruct the detached residual.

        Computed on the first ``aux_rows`` rows of the batch (rows arrive shuffled): an unbiased
        estimate of the full-batch loss (data-parallel, each process takes aux_rows / processes). Dense matmuls over the dead latents only: with k_aux in the
        hundreds they beat gather/scatter kernels.
        """
        dead = (self.tokens_since_fired >= self.dead_after_tokens).nonzero().squeeze(1)
        if len(dead) == 0 or self.cfg.aux_coefficient == 0:
            return torch.zeros((), device=x.device)
        rows = slice(0, self.aux_rows)
        k_aux = min(self.cfg.aux_k or self.d_in // 2, len(dead))
        xin = extra.get("x_in", self.encoder_input(x))[rows]
        pre_dead = xin @ self.W_enc[:, dead] + self.b_enc[dead]
        vals, local = pre_dead.topk(k_aux, dim=-1, sorted=False)
        f = torch.zeros_like(pre_dead).scatter_(-1, local, vals.relu())
        e_hat = f @ self.W_dec[dead]
        e = (y[rows] - recon[rows]).detach()
        scale = min(len(dead) / k_aux, 1.0)
        return self.cfg.aux_coefficient * scale * (e_hat - e).pow(2).sum(-1).mean()

    def saelens_cfg_fields(self) -> dict:
        # decoder rows are unit norm, so rescaling by them is the identity; say so explicitly
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}


def fired_latents(code, d_sae: int) -> torch.Tensor:
    """[d_sae] bool from a SparseCode or dense activations."""
    if isinstance(code, SparseCode):
        return code.fired(d_sae)
    return (code > 0).any(0)
