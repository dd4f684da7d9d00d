"""An SAE's feature directions: decoder rows and encoder columns, folded with an activation scale,
and mapped into the model's residual stream.

Folding (Balagansky et al. 2024, "Mechanistic Permutability", SAE Match): a JumpReLU feature with
threshold θ fires at θ or above, so its unit decoder row is scaled by θ (and its encoder column by
1/θ, which leaves the SAE's function unchanged) to make features' activation scales comparable;
SAEs without a threshold take a per-feature scale from data, or stay unit norm.

Residual directions follow the direct path: a direction at an attention-output site (``attn.hook_z``)
goes through W_O, one at the MLP neurons (``mlp.hook_post``) through W_out; residual-stream sites
need no map; other sites (queries, keys, ...) have no linear path into the stream.
"""

from __future__ import annotations

from typing import Literal

import torch

from saecircuits.activations.site import Site
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.hooks import layer_of
from saecircuits.sae.base import SparseAutoencoder

Which = Literal["decoder", "encoder"]
ZOrder = Literal["head_major", "dim_major"]
RESIDUAL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def feature_directions(sae: SparseAutoencoder, which: Which = "decoder") -> torch.Tensor:
    """[d_sae, d] float32, detached: decoder rows (d = d_out) or encoder columns (d = d_in)."""
    return sae.W_dec.detach().float() if which == "decoder" else sae.W_enc.detach().float().T


def fold_scale(sae: SparseAutoencoder, scale: torch.Tensor | None = None) -> torch.Tensor:
    """[d_sae] activation scale folded into the decoder: the JumpReLU threshold θ, else ``scale``
    (e.g. ``matching.firing.FiringStats.mean_active()``), else ones."""
    if scale is not None:
        s = torch.as_tensor(scale, dtype=torch.float32)
    elif hasattr(sae, "threshold") and torch.is_tensor(sae.threshold) and sae.threshold.numel() > 1:
        s = sae.threshold.detach().float()
    elif hasattr(sae, "threshold") and torch.is_tensor(sae.threshold) and sae.threshold.numel() == 1:
        s = torch.full((sae.d_sae,), float(sae.threshold))
    else:
        s = torch.ones(sae.d_sae)
    if s.shape != (sae.d_sae,):
        raise SaecircuitsError(f"activation scale has shape {tuple(s.shape)}, the SAE has {sae.d_sae} features")
    return s.clamp_min(1e-12)


def folded_decoder(sae: SparseAutoencoder, scale: torch.Tensor | None = None) -> torch.Tensor:
    """[d_sae, d_out] decoder rows times each feature's activation scale (SAE Match's folding)."""
    W = feature_directions(sae, "decoder")
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12) * fold_scale(sae, scale)[:, None]


def folded_encoder(sae: SparseAutoencoder, scale: torch.Tensor | None = None) -> torch.Tensor:
    """[d_sae, d_in] encoder columns divided by the activation scale (the other half of the fold)."""
    return feature_directions(sae, "encoder") / fold_scale(sae, scale)[:, None]


@torch.no_grad()
def residual_directions(W: torch.Tensor, site: str, model=None, z_order: ZOrder = "head_major") -> torch.Tensor | None:
    """[d_sae, d_model] directions ``W`` [d_sae, d_site] of ``site`` in the residual stream, or None where the
    site has no linear path into it (e.g. queries, keys) or ``W`` does not fit the site's width.

    ``model`` (a HookedTransformer) is needed for ``attn.hook_z`` (W_O) and ``mlp.hook_post`` (W_out);
    without it a residual-stream site's ``W`` is returned unchecked. ``z_order``: the order of the
    (head, d_head) sum for an all-heads ``attn.hook_z`` site, ``head_major`` (``W @ W_O`` flattened
    head by head) or ``dim_major`` (``torch.einsum``'s order). The two are equal in exact arithmetic
    and differ in the last bits; the dashboards use the first, feature flow the second.
    """
    s = Site.parse(site)
    if s.hook.endswith(RESIDUAL_HOOKS) or s.hook in ("hook_embed", "hook_pos_embed"):
        return W if model is None or W.shape[1] == model.cfg.d_model else None
    layer = layer_of(s.hook)
    if layer is None:
        return None
    if s.hook.endswith("attn.hook_z"):
        if model is None:
            raise SaecircuitsError(f"SAE on {site}: projecting hook_z directions to the residual stream needs the model (W_O)")
        return _through_w_o(W, model.blocks[layer].attn.W_O.detach().to(W.dtype), s.head, z_order)
    if s.hook.endswith("mlp.hook_post") and model is not None and hasattr(model.blocks[layer].mlp, "W_out"):
        W_out = model.blocks[layer].mlp.W_out.detach()
        return W @ W_out if W.shape[1] == W_out.shape[0] else None
    return None


def _through_w_o(W: torch.Tensor, W_O: torch.Tensor, head: int | None, z_order: ZOrder) -> torch.Tensor | None:
    """[d_sae, d_model] hook_z directions W [d_sae, d_head] (one head) or [d_sae, n_heads·d_head] through
    W_O [n_heads, d_head, d_model]; None if the width does not fit."""
    n_heads, d_head, d_model = W_O.shape
    if head is not None:
        return W @ W_O[head] if W.shape[1] == d_head else None
    if W.shape[1] != n_heads * d_head:
        return None
    if z_order == "dim_major":
        return torch.einsum("fhd,hdm->fm", W.reshape(W.shape[0], n_heads, d_head), W_O)
    return W @ W_O.reshape(-1, d_model)
