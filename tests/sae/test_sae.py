"""Each architecture against a direct computation; sparse kernels against dense; SAELens files both ways."""

import pytest
import torch

from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.sae import SAEConfig, build
from saecircuits.sae import format as sae_format
from saecircuits.sae.sparse import SparseCode, select_batch_topk, sparse_decode

D_IN, D_SAE, B = 12, 40, 16


def _sae(arch, **kw):
    cfg = SAEConfig(architecture=arch, hook="blocks.0.hook_resid_post", d_sae=D_SAE, **kw)
    torch.manual_seed(0)
    sae = build(cfg, D_IN, kw.get("d_out"))
    with torch.no_grad():  # move away from the tied init so every term is exercised
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        sae.normalize_decoder()
    return sae


def _x(n=B, d=D_IN, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2


def _grads(sae, loss):
    sae.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


def test_standard_against_reference():
    sae = _sae("standard", l1_coefficient=0.3, l1_warmup_fraction=0)
    x = _x()
    out = sae.loss(x, x)
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    ref = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean() + 0.3 * (f * W_dec.norm(dim=1)).sum(-1).mean()
    torch.testing.assert_close(out.loss, ref)
    g1 = _grads(sae, out.loss)
    g2 = _grads(sae, ref)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k])


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_sparse_kernels_equal_dense_path(arch):
    kw = {"k": 5, "matryoshka_widths": [8, 20, D_SAE]} if arch == "matryoshka_batchtopk" else {"k": 5}
    sparse = _sae(arch, **kw)
    dense = _sae(arch, sparse_kernels=False, **kw)
    dense.load_state_dict(sparse.state_dict())
    x = _x()
    sparse.tokens_since_fired[:10] = 10**9  # some dead latents, so AuxK is on
    dense.tokens_since_fired[:10] = 10**9
    sparse.dead_after_tokens = dense.dead_after_tokens = 100
    a, b = sparse.loss(x, x), dense.loss(x, x)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.recon, b.recon)
    ga, gb = _grads(sparse, a.loss), _grads(dense, b.loss)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], atol=1e-5, rtol=1e-4, msg=k)


def test_topk_against_reference_and_l0_exactly_k():
    sae = _sae("topk", k=7, aux_coefficient=0)
    x = _x(64)
    recon, code, _ = sae.training_forward(x)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    vals, idx = pre.topk(7, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    torch.testing.assert_close(recon, f @ sae.W_dec + sae.b_dec)
    torch.testing.assert_close(code.dense(D_SAE), f)
    assert (pre.topk(7).values > 0).all()  # with positive pre-activations, L0 is exactly k ...
    assert ((code.dense(D_SAE) > 0).sum(-1) == 7).all()  # ... on every row
    assert ((sae.encode(x) > 0).sum(-1) == 7).all()


def test_batchtopk_selects_k_times_batch_overall():
    pre = torch.randn(10, 30).abs() + 0.01
    code = select_batch_topk(4)(pre)
    dense = code.dense(30)
    assert int((dense > 0).sum()) == 40
    assert float(dense[dense > 0].min()) >= float(pre.reshape(-1).topk(40).values.min())
    torch.testing.assert_close(dense[dense > 0].sort().values, pre.reshape(-1).topk(40).values.sort().values)


def test_sparse_decode_equals_dense_decode():
    W = torch.randn(D_SAE, D_IN)
    idx = torch.randint(0, D_SAE, (B, 6))
    vals = torch.rand(B, 6)
    code = SparseCode(idx, vals)
    torch.testing.assert_close(sparse_decode(code, W), code.dense(D_SAE) @ W)
    torch.testing.assert_close(sparse_decode(code, W, limit=20), (code.dense(D_SAE) * (torch.arange(D_SAE) < 20)) @ W)
    flat = select_batch_topk(3)(torch.randn(B, D_SAE))
    torch.testing.assert_close(sparse_decode(flat, W), flat.dense(D_SAE) @ W)


def test_jumprelu_forward_and_ste_gradients():
    sae = _sae("jumprelu", l0_coefficient=0.5, jumprelu_bandwidth=0.5)
    x = _x()
    pre = sae.pre_acts(x).detach()
    theta = sae.threshold.detach()
    torch.testing.assert_close(sae.encode(x), pre.relu() * (pre > theta))
    out = sae.loss(x, x)
    out.loss.backward()
    # d loss / d log θ by hand: the JumpReLU term through the reconstruction, and the L0 term
    eps = 0.5
    f = pre.relu() * (pre > theta)
    recon = f @ sae.W_dec + sae.b_dec
    g_f = (2 * (recon - x) @ sae.W_dec.T / B).detach()  # dMSE/df
    rect = (((pre.relu() - theta) / eps).abs() < 0.5).float()
    d_theta_recon = (-(theta / eps) * rect * g_f).sum(0)
    rect_l0 = (((pre - theta) / eps).abs() < 0.5).float()
    d_theta_l0 = 0.5 * (-(1 / eps) * rect_l0 / B).sum(0)
    torch.testing.assert_close(sae.log_threshold.grad, (d_theta_recon + d_theta_l0) * theta, atol=1e-5, rtol=1e-4)


def test_matryoshka_loss_is_sum_of_prefix_reconstructions():
    sae = _sae("matryoshka_batchtopk", k=6, matryoshka_widths=[10, 25, D_SAE], aux_coefficient=0)
    x = _x()
    out = sae.loss(x, x)
    f = out.code.dense(D_SAE)
    ref = sum(((f[:, :w] @ sae.W_dec[:w] + sae.b_dec - x) ** 2).sum(-1).mean() for w in (10, 25, D_SAE))
    torch.testing.assert_close(out.loss, ref)


def test_skip_transcoder_reference():
    cfg = SAEConfig(architecture="standard", hook="blocks.0.ln2.hook_normalized", hook_out="blocks.0.hook_mlp_out",
                    skip=True, d_sae=D_SAE, l1_coefficient=0)
    sae = build(cfg, D_IN, 7)
    with torch.no_grad():
        sae.W_skip.normal_()
    x = _x()
    f = torch.relu(x @ sae.W_enc + sae.b_enc)  # a transcoder does not subtract b_dec
    torch.testing.assert_close(sae(x), f @ sae.W_dec + sae.b_dec + x @ sae.W_skip.T)


SAVE_CASES = [
    ("standard", {}, None, False),
    ("topk", {"k": 6}, None, False),
    ("batchtopk", {"k": 6}, None, False),
    ("jumprelu", {}, None, False),
    ("matryoshka_batchtopk", {"k": 6, "matryoshka_widths": [10, D_SAE]}, None, False),
    ("standard", {}, 9, False),
    ("standard", {}, 9, True),
    ("batchtopk", {"k": 6}, 9, True),
    ("jumprelu", {}, 9, False),
]


@pytest.mark.parametrize("arch,kw,d_out,skip", SAVE_CASES)
def test_save_then_saelens_loads_same_outputs(tmp_path, arch, kw, d_out, skip):
    from sae_lens import SAE

    hook_out = "blocks.0.hook_mlp_out" if d_out else None
    cfg = SAEConfig(architecture=arch, hook="blocks.0.hook_resid_post" if not d_out else "blocks.0.ln2.hook_normalized",
                    hook_out=hook_out, skip=skip, d_sae=D_SAE, **kw)
    sae = build(cfg, D_IN, d_out)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        sae.normalize_decoder()
        if arch in ("batchtopk", "matryoshka_batchtopk"):
            sae.threshold.fill_(0.3)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.rand(D_SAE).log() - 1)
    s_in, s_out = 2.5, (0.7 if d_out else 2.5)
    sae_format.save(sae, tmp_path / "sae", model_name="tiny", scale_in=s_in, scale_out=s_out)
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    x = _x(32, D_IN)
    with torch.no_grad():
        ours = sae(x * s_in) / s_out  # trained on scaled activations
        theirs = loaded(x)
        mine = sae_format.load(tmp_path / "sae")(x)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine, ours, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,kw,transcoder,skip", [
    ("standard", {}, False, False), ("topk", {"k": 6}, False, False), ("batchtopk", {"k": 6}, False, False),
    ("jumprelu", {}, False, False), ("matryoshka_batchtopk", {"k": 6, "matryoshka_widths": [10, D_SAE]}, False, False),
    ("standard", {}, True, False), ("standard", {}, True, True), ("jumprelu", {}, True, False)])
def test_saelens_consumers_use_our_saes(tmp_path, arch, kw, transcoder, skip):
    """Through SAELens's own consumers: load_from_disk reads every metadata field back, and HookedSAETransformer
    splices the SAE (or transcoder) in exactly where and how a hand-written hook does."""
    from sae_lens import SAE, HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedSAETransformer(HookedTransformerConfig(n_layers=1, d_model=D_IN, n_heads=2, d_head=6, d_mlp=24,
                                                         n_ctx=16, d_vocab=40, act_fn="gelu"))
    hook, hook_out = ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out") if transcoder else \
        ("blocks.0.hook_resid_post", None)
    sae = build(SAEConfig(architecture=arch, hook=hook, hook_out=hook_out, skip=skip, d_sae=D_SAE, **kw), D_IN,
                D_IN if transcoder else None)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.1)
    sae_format.save(sae, tmp_path / "sae", model_name="tiny-model", context_size=16, dataset="stdlib",
                    exclude_special_tokens=[0], training_tokens=1000)
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    md = loaded.cfg.metadata
    assert (md.model_name, md.hook_name, md.hook_head_index, md.context_size, md.prepend_bos, md.dataset_path,
            md.exclude_special_tokens) == ("tiny-model", hook, None, 16, True, "stdlib", [0])
    assert md.hook_name_out == hook_out and md.sae_lens_version and md.trained_with.startswith("saecircuits")
    tokens = torch.randint(0, 40, (2, 8))
    captured = {}

    def keep(x, hook):
        captured["x"] = x

    def splice(x, hook):
        x_in = captured["x"] if transcoder else x
        out = sae(x_in)
        if skip:  # SAELens 6.54's HookedSAETransformer splices decode(encode(x)): its own skip transcoders lose W_skip too
            out = out - x_in @ sae.W_skip.T
        return out.to(x.dtype)

    with torch.no_grad():
        hooks = ([(hook, keep)] if transcoder else []) + [(hook_out or hook, splice)]
        want = model.run_with_hooks(tokens, fwd_hooks=hooks)
        got = model.run_with_saes(tokens, saes=[loaded])
        model.add_sae(loaded)
        attached = model(tokens)
        model.reset_saes()
        plain = model(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attached, want, atol=1e-5, rtol=1e-4)
    assert (plain - want).abs().max() > 1e-3  # the SAE changed the run


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "transcoder", "skip_transcoder", "jumprelu_transcoder"])
def test_saelens_saes_load_here(tmp_path, arch):
    from sae_lens import SAE
    from sae_lens.registry import get_sae_class

    cls, cfg_cls = get_sae_class(arch)
    kw = {"d_in": D_IN, "d_sae": D_SAE}
    if "transcoder" in arch:
        kw["d_out"] = 9
        kw["apply_b_dec_to_input"] = False
    if arch == "topk":
        kw["k"] = 5
    theirs = cls(cfg_cls(**kw))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        if hasattr(theirs, "threshold"):
            theirs.threshold.copy_(torch.rand(D_SAE) * 0.3)
    theirs.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    theirs.save_model(str(tmp_path / "s"))
    ours = sae_format.load(tmp_path / "s")
    x = _x(32, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), SAE.load_from_disk(str(tmp_path / "s"))(x), atol=1e-5, rtol=1e-4)


def test_bad_sae_files(tmp_path):
    sae = _sae("topk", k=4)
    sae_format.save(sae, tmp_path / "ok", model_name="tiny")
    with pytest.raises(SaecircuitsError, match="does not exist"):
        sae_format.load(tmp_path / "missing")
    cfg = (tmp_path / "ok" / "cfg.json").read_text()
    (tmp_path / "ok" / "cfg.json").write_text(cfg.replace('"topk"', '"gated"', 1))
    with pytest.raises(SaecircuitsError, match="architecture 'gated' is not supported"):
        sae_format.load(tmp_path / "ok")
    (tmp_path / "ok" / "cfg.json").write_text(cfg.replace(f'"d_in": {D_IN}', '"d_in": 99'))
    with pytest.raises(SaecircuitsError, match="W_enc has shape"):
        sae_format.load(tmp_path / "ok")
    (tmp_path / "ok" / "cfg.json").write_text(cfg)
    w = tmp_path / "ok" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:50])
    with pytest.raises(SaecircuitsError, match="truncated or corrupt"):
        sae_format.load(tmp_path / "ok")


@pytest.mark.parametrize("data,msg", [
    ({"architecture": "gated", "hook": "h"}, "architecture"),
    ({"architecture": "matryoshka_batchtopk", "hook": "h"}, "needs matryoshka_widths"),
    ({"architecture": "topk", "hook": "h", "hook_out": "o"}, "no TopK transcoder"),
    ({"architecture": "topk", "hook": "h", "d_sae": 10, "expansion": 4}, "not both"),
    ({"architecture": "topk", "hook": "h", "k": 0}, "field 'k'"),
    ({"architecture": "topk"}, "field 'hook' is required"),
])
def test_bad_sae_configs(data, msg):
    with pytest.raises(SaecircuitsError, match=msg):
        validate(SAEConfig, data)
