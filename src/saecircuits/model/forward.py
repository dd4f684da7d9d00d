"""A leaner forward pass for harvesting activations from a ``HookedTransformer``.

TransformerLens's forward is written for inspection: per-head einsums, key/value heads repeated for
grouped-query attention, the [query, key] score matrix materialised and masked, and MLP weights
transposed and copied on every call. Streaming activations into SAE trainers needs only the hooked
values, so this runs the same model with TransformerLens's own embedding, norm, rotary and
activation modules, and does the attention with one fused QKV matmul and PyTorch's
scaled-dot-product attention, and the MLP with plain matmuls on the stored weights.

Values agree with ``run_with_cache`` to float rounding (relative error ~1e-6, tested). Hooks it does
not produce (attention patterns, per-head results, ...) and architectures it does not cover (local
attention, soft-capping, post-norms, mixtures of experts, ...) use the TransformerLens forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

# hook names (after "blocks.{L}.") the lean pass produces
BLOCK_HOOKS = {
    "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z",
    "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_pre_linear",
    "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
}
TOP_HOOKS = {"hook_embed", "hook_pos_embed"}
# hooks fired by the TransformerLens modules the lean pass calls (norms, embeddings)
_TL_FIRED = {"ln1.hook_normalized", "ln2.hook_normalized", "hook_embed", "hook_pos_embed"}


def unsupported(model: HookedTransformer) -> str | None:
    """Why the lean pass cannot run this model (None: it can)."""
    c = model.cfg
    checks = [
        (c.attention_dir != "causal", "bidirectional attention"),
        (c.positional_embedding_type not in ("standard", "rotary"), f"{c.positional_embedding_type} positions"),
        (bool(c.use_local_attn), "local attention windows"),
        (c.attn_scores_soft_cap is not None and c.attn_scores_soft_cap > 0, "attention soft-capping"),
        (bool(c.use_attention_sinks), "attention sinks"),
        (bool(c.use_logn_attn), "log-n attention scaling"),
        (c.clip_qkv is not None, "clipped QKV"),
        (bool(c.use_split_qkv_input or c.use_attn_in), "split QKV inputs"),
        (bool(c.use_qk_norm) or "Olmo" in (c.original_architecture or ""), "query/key norms"),
        (bool(c.use_normalization_before_and_after), "post-sublayer norms"),
        (bool(c.num_experts), "mixture of experts"),
        (c.is_layer_norm_activation(), "layer-norm activations"),
        (bool(c.ungroup_grouped_query_attention), "ungrouped GQA hooks"),
        (c.n_devices > 1, "a model split across devices"),
        (bool(c.use_hook_mlp_in), "hook_mlp_in"),
        (bool(c.use_dynamic_ntk_rope), "dynamic NTK rotary"),
    ]
    try:
        from transformer_lens.HookedTransformer import POST_NORM_ARCHITECTURES

        checks.append((c.original_architecture in POST_NORM_ARCHITECTURES, "post-norm blocks"))
    except ImportError:
        pass
    for bad, why in checks:
        if bad:
            return why
    return None


def covers(model: HookedTransformer, hook_names: list[str]) -> bool:
    """Whether the lean pass produces every one of these hooks for this model."""
    c = model.cfg
    absent = set()
    if c.attn_only:
        absent |= {"hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out"}
    if c.parallel_attn_mlp:
        absent.add("hook_resid_mid")
    if not c.gated_mlp:
        absent.add("mlp.hook_pre_linear")
    if c.positional_embedding_type != "standard":
        absent.add("hook_pos_embed")
    for name in hook_names:
        if name in TOP_HOOKS and name not in absent:
            continue
        parts = name.split(".", 2)
        if len(parts) < 3 or parts[0] != "blocks" or parts[2] not in BLOCK_HOOKS or parts[2] in absent:
            return False
    return True


class LeanForward:
    """Runs a model to ``stop_at_layer`` and returns the named activations, TransformerLens shapes.

    Weights are kept once more per layer used, transposed to [out, in] and fused (QKV; gate and up
    projections): on a CPU, matmuls against that layout run faster than against TransformerLens's
    [in, out] layout, and TransformerLens itself transposes and copies them on every call.
    """

    def __init__(self, model: HookedTransformer):
        self.model = model
        self._weights: dict[int, dict[str, torch.Tensor | None]] = {}

    def _layer(self, layer: int) -> dict[str, torch.Tensor | None]:
        if layer in self._weights:
            return self._weights[layer]
        blk = self.model.blocks[layer]
        a = blk.attn
        wk = a._W_K if hasattr(a, "_W_K") else a.W_K
        wv = a._W_V if hasattr(a, "_W_V") else a.W_V
        bk = a._b_K if hasattr(a, "_b_K") else a.b_K
        bv = a._b_V if hasattr(a, "_b_V") else a.b_V
        d = self.model.cfg.d_model
        with torch.no_grad():
            qkv = torch.cat([t.permute(1, 0, 2).reshape(d, -1) for t in (a.W_Q, wk, wv)], 1).T.contiguous()
            b_qkv = torch.cat([t.reshape(-1) for t in (a.b_Q, bk, bv)])
            w: dict[str, torch.Tensor | None] = {
                "qkv": qkv, "b_qkv": _nonzero(b_qkv), "o": a.W_O.reshape(-1, d).T.contiguous(), "b_o": _nonzero(a.b_O),
            }
            c = self.model.cfg
            if c.positional_embedding_type == "rotary" and not c.rotary_adjacent_pairs:
                half = c.rotary_dim // 2
                w["cos"] = a.rotary_cos.clone()
                w["sin"] = torch.cat([-a.rotary_sin[:, :half], a.rotary_sin[:, half:]], 1)  # the sign of rotate_every_two
            if not c.attn_only:
                mlp = blk.mlp
                ins = [mlp.W_gate, mlp.W_in] if hasattr(mlp, "W_gate") else [mlp.W_in]
                w["in"] = torch.cat(ins, 1).T.contiguous()
                w["b_in"] = _nonzero(mlp.b_in)
                w["out"] = mlp.W_out.T.contiguous()
                w["b_out"] = _nonzero(mlp.b_out)
        self._weights[layer] = w
        return w

    @torch.inference_mode()
    def run(self, tokens: torch.Tensor, hook_names: list[str], stop_at_layer: int | None) -> dict[str, torch.Tensor]:
        m = self.model
        want = set(hook_names)
        out: dict[str, torch.Tensor] = {}

        def keep(name: str, value: torch.Tensor) -> None:
            if name in want:
                out[name] = value

        tl_hooks = [(n, _saver(out)) for n in want if n.split(".", 2)[-1] in _TL_FIRED or n in TOP_HOOKS]
        stop = m.cfg.n_layers if stop_at_layer is None else stop_at_layer
        with m.hooks(fwd_hooks=tl_hooks):
            resid, _, _, _ = m.input_to_embed(tokens.to(m.cfg.device))
            for layer in range(stop):
                resid = self.block(layer, resid, keep, want)
        return out

    def block(self, layer: int, resid: torch.Tensor, keep, want: frozenset[str] | set[str] = frozenset()) -> torch.Tensor:
        """Block ``layer`` on ``resid`` [batch, pos, d_model]; every activation is handed to ``keep(name, value)``
        (editing a value in place intervenes); ``want``: the hooks asked for (norm hooks go through TransformerLens)."""
        m, c = self.model, self.model.cfg
        blk = m.blocks[layer]
        p = f"blocks.{layer}."
        keep(p + "hook_resid_pre", resid)
        attn_out = self._attention(layer, _norm(blk.ln1, resid, p + "ln1.hook_normalized" in want), keep, p)
        keep(p + "hook_attn_out", attn_out)
        if c.attn_only:
            resid = resid + attn_out
        elif c.parallel_attn_mlp:
            resid = resid + attn_out + self._mlp(blk, _norm(blk.ln2, resid, p + "ln2.hook_normalized" in want), keep, p)
        else:
            resid = resid + attn_out
            keep(p + "hook_resid_mid", resid)
            resid = resid + self._mlp(blk, _norm(blk.ln2, resid, p + "ln2.hook_normalized" in want), keep, p)
        keep(p + "hook_resid_post", resid)
        return resid

    def _attention(self, layer: int, h: torch.Tensor, keep, p: str) -> torch.Tensor:
        a = self.model.blocks[layer].attn
        c = self.model.cfg
        w = self._layer(layer)
        b, t, _ = h.shape
        n_q, n_kv, dh = c.n_heads, c.n_key_value_heads or c.n_heads, c.d_head
        qk, v = F.linear(h, w["qkv"], w["b_qkv"]).split([(n_q + n_kv) * dh, n_kv * dh], dim=-1)
        qk, v = qk.view(b, t, n_q + n_kv, dh), v.view(b, t, n_kv, dh)
        keep(p + "attn.hook_q", qk[:, :, :n_q])
        keep(p + "attn.hook_k", qk[:, :, n_q:])
        keep(p + "attn.hook_v", v)
        if "cos" in w and t <= len(w["cos"]):  # queries and keys rotated together, in three passes
            qk = _rotate(qk, w["cos"][:t, None], w["sin"][:t, None], c.rotary_dim)
        elif c.positional_embedding_type == "rotary":
            qk = torch.cat([a.apply_rotary(qk[:, :, :n_q], 0, None), a.apply_rotary(qk[:, :, n_q:], 0, None)], 2)
        q, k = qk[:, :, :n_q], qk[:, :, n_q:]
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            scale=1.0 / float(a.attn_scale), enable_gqa=n_kv != n_q,
        ).transpose(1, 2)  # [batch, pos, head, d_head]
        keep(p + "attn.hook_z", z)
        return F.linear(z.reshape(b, t, n_q * dh), w["o"], w["b_o"])

    def _mlp(self, blk, h: torch.Tensor, keep, p: str) -> torch.Tensor:
        mlp = blk.mlp
        w = self._layer(int(p.split(".")[1]))
        if hasattr(mlp, "W_gate"):
            pre, lin = F.linear(h, w["in"]).chunk(2, dim=-1)
            keep(p + "mlp.hook_pre", pre)
            keep(p + "mlp.hook_pre_linear", lin)
            post = mlp.act_fn(pre).mul_(lin)
            if w["b_in"] is not None:
                post = post + w["b_in"]
        else:
            pre = F.linear(h, w["in"], w["b_in"])
            keep(p + "mlp.hook_pre", pre)
            post = mlp.act_fn(pre)
        keep(p + "mlp.hook_post", post)
        out = F.linear(post, w["out"], w["b_out"])
        keep(p + "hook_mlp_out", out)
        return out


def _nonzero(bias: torch.Tensor) -> torch.Tensor | None:
    """None for an all-zero bias (SmolLM2 and Gemma have none), so the matmul skips adding it."""
    return bias if bool(bias.any()) else None


_FUSED_NORMS = {"LayerNorm", "LayerNormPre", "RMSNorm", "RMSNormPre"}


def _norm(ln, x: torch.Tensor, hooked: bool) -> torch.Tensor:
    """TransformerLens's norm module as one fused op (``F.layer_norm`` / ``F.rms_norm``: the same math in
    one pass instead of five); through the module itself when its hooks are asked for, or when it would
    round-trip a low-precision input through float32."""
    kind = type(ln).__name__
    if hooked or kind not in _FUSED_NORMS or x.dtype not in (torch.float32, torch.float64):
        return ln(x)
    d = (x.shape[-1],)
    weight, bias = getattr(ln, "w", None), getattr(ln, "b", None)
    if kind.startswith("RMS"):
        return F.rms_norm(x, d, weight, ln.eps)
    return F.layer_norm(x, d, weight, bias, ln.eps)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotary embedding of x [batch, pos, head, d_head] as TransformerLens applies it (halves, not adjacent
    pairs): x * cos + rotate_every_two(x) * sin, with the sign of rotate_every_two folded into ``signed_sin``."""
    half = rotary_dim // 2
    xr = x[..., :rotary_dim]
    out = torch.addcmul(xr * cos, torch.cat([xr[..., half:], xr[..., :half]], -1), signed_sin)
    return out if rotary_dim == x.shape[-1] else torch.cat([out, x[..., rotary_dim:]], -1)


def _saver(out: dict):
    def save(act: torch.Tensor, hook) -> None:
        out[hook.name] = act

    return save
