import pytest

from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.hooks import layer_of, stop_at_layer, validate


def test_layer_of():
    assert layer_of("blocks.6.hook_resid_post") == 6
    assert layer_of("blocks.12.attn.hook_z") == 12
    assert layer_of("ln_final.hook_normalized") is None


def test_layer_beyond_model_says_depth(tiny_model):
    with pytest.raises(SaecircuitsError, match="has 3 layers \\(0 to 2\\)"):
        validate(tiny_model, "blocks.7.hook_resid_post")


def test_misspelled_hook_suggests_names_at_same_depth(tiny_model):
    with pytest.raises(SaecircuitsError) as e:
        validate(tiny_model, "blocks.1.hook_resid_pots")
    assert "blocks.1.hook_resid_post" in str(e.value)


def test_stop_at_layer(tiny_model):
    assert stop_at_layer(tiny_model, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]) == 2
    assert stop_at_layer(tiny_model, ["hook_embed"]) == 0
    assert stop_at_layer(tiny_model, ["ln_final.hook_normalized"]) is None
