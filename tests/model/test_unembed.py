"""Unembedding (final norm, W_U, soft-cap) and freezing a model's parameters."""

from __future__ import annotations

import pytest
import torch

from saecircuits.model.frozen import frozen
from saecircuits.model.unembed import unembed, unembed_normed

from conftest import make_tiny_model


@pytest.mark.parametrize("kw", [{}, {"normalization_type": None}, {"normalization_type": "RMS"},
                                {"output_logits_soft_cap": 2.0}])
def test_unembedding_the_last_residual_is_the_models_own_output(kw):
    model = make_tiny_model(n_layers=2, **kw)
    tokens = torch.randint(3, 259, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
        assert torch.equal(unembed(model, resid), model(tokens))
        normed = model.ln_final(resid) if model.cfg.normalization_type is not None else resid
        assert torch.equal(unembed_normed(model, normed), model(tokens))
    if "output_logits_soft_cap" in kw:
        assert unembed(model, resid).abs().max() <= 2.0


def test_frozen_stops_gradients_into_the_model_and_restores_each_flag():
    model = make_tiny_model(n_layers=1)
    model.W_E.requires_grad_(False)  # already frozen before: must stay so
    before = [p.requires_grad for p in model.parameters()]
    x = torch.randn(1, 3, model.cfg.d_model, requires_grad=True)
    with frozen(model):
        assert not any(p.requires_grad for p in model.parameters())
        unembed(model, x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == before
    with pytest.raises(RuntimeError, match="inside"), frozen(model):
        raise RuntimeError("inside")
    assert [p.requires_grad for p in model.parameters()] == before
