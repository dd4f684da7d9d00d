"""The lean forward pass against TransformerLens's run_with_cache, on every model family it covers."""

import pytest
import torch

from saecircuits.activations.site import Site
from saecircuits.activations.store import ModelActivations
from saecircuits.model.forward import BLOCK_HOOKS, LeanForward, covers, unsupported

from conftest import make_tiny_model

FAMILIES = {
    "gpt2-like (LayerNorm, learned positions, GELU, biases)": {},
    "grouped-query": {"n_kv": 2},
    "attention-only": {"attn_only": True},
    "llama-like (RMSNorm, rotary, gated SiLU, GQA)": {"positional_embedding_type": "rotary", "rotary_dim": 8,
                                                      "normalization_type": "RMS", "gated_mlp": True, "act_fn": "silu", "n_kv": 2},
    "neox-like (parallel attention and MLP, partial rotary)": {"parallel_attn_mlp": True, "positional_embedding_type": "rotary", "rotary_dim": 4},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_lean_forward_matches_run_with_cache(byte_tokenizer, family):
    model = make_tiny_model(tokenizer=byte_tokenizer, **FAMILIES[family])
    with torch.no_grad():  # biases are zero at init; make them count
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.normal_(0, 0.1)
    assert unsupported(model) is None
    names = [f"blocks.{L}.{h}" for L in range(model.cfg.n_layers) for h in sorted(BLOCK_HOOKS)] + ["hook_embed"]
    names = [n for n in names if covers(model, [n])]
    tokens = torch.randint(3, 250, (3, 40))
    got = LeanForward(model).run(tokens, names, None)
    _, cache = model.run_with_cache(tokens)
    assert set(got) == set(names)
    for n in names:
        assert got[n].shape == cache[n].shape, n
        torch.testing.assert_close(got[n], cache[n], rtol=1e-5, atol=1e-5 * float(cache[n].abs().max()), msg=n)


def test_stops_after_the_deepest_layer(tiny_model):
    got = LeanForward(tiny_model).run(torch.randint(3, 250, (2, 10)), ["blocks.0.hook_resid_post"], 1)
    assert list(got) == ["blocks.0.hook_resid_post"]


def test_uncovered_hooks_and_models_use_transformer_lens(byte_tokenizer, tiny_model):
    assert not covers(tiny_model, ["blocks.0.attn.hook_pattern"])
    acts = ModelActivations(tiny_model, [Site("blocks.1.attn.hook_pattern")], exclude_special_tokens=False)
    assert acts.lean is None  # the pattern is not produced by the lean pass: exact TransformerLens forward
    local = make_tiny_model(tokenizer=byte_tokenizer, use_local_attn=True, window_size=4, attn_types=["local"] * 3)
    assert unsupported(local) == "local attention windows"
    assert ModelActivations(local, [Site("blocks.1.hook_resid_post")]).lean is None
    assert ModelActivations(tiny_model, [Site("blocks.1.hook_resid_post")]).lean is not None
