"""Sparse autoencoder architectures, one small module each, and SAELens-format files.

    standard   ReLU + L1 weighted by decoder norm          (saved as standard / transcoder)
    topk       k largest per token, AuxK                    (saved as topk)
    batchtopk  k·batch largest per batch                    (saved as jumprelu, one threshold)
    jumprelu   learned thresholds, STE, L0 penalty          (saved as jumprelu)
    matryoshka_batchtopk  nested prefixes, BatchTopK        (saved as jumprelu)

Any of them is a transcoder when ``hook_out`` is set (optionally with a skip connection).
"""

from saecircuits.sae.base import SAEConfig, SparseAutoencoder, StepOutput
from saecircuits.sae.batchtopk import BatchTopKSAE
from saecircuits.sae.jumprelu import JumpReLUSAE
from saecircuits.sae.matryoshka import MatryoshkaBatchTopKSAE
from saecircuits.sae.sparse import SparseCode
from saecircuits.sae.standard import StandardSAE
from saecircuits.sae.topk import TopKSAE

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    c.architecture: c for c in (StandardSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaBatchTopKSAE)
}


def build(cfg: SAEConfig, d_in: int, d_out: int | None = None) -> SparseAutoencoder:
    """A new SAE of ``cfg.architecture`` for inputs of width d_in (outputs d_out for a transcoder)."""
    return ARCHITECTURES[cfg.architecture](cfg, d_in, d_out)


__all__ = ["ARCHITECTURES", "SAEConfig", "SparseAutoencoder", "SparseCode", "StepOutput", "build"]
