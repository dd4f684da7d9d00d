import pytest
import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.model import loading as models

IOI = "When Mary and John went to the store, John gave a drink to"


def _ioi_check(model, hf, tok):
    tokens = model.to_tokens(IOI)
    with torch.no_grad():
        tl_logits = model(tokens)[0, -1]
        hf_logits = hf(tokens).logits[0, -1]
    mary = model.to_single_token(" Mary")
    john = model.to_single_token(" John")
    assert tl_logits[mary] > tl_logits[john]
    assert (tl_logits - hf_logits).abs().max() < 1e-3


def _gqa_heads_check(model):
    c = model.cfg
    assert model.W_Q.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    assert model.W_O.shape == (c.n_layers, c.n_heads, c.d_head, c.d_model)
    assert model.W_K.shape == model.W_V.shape == model.W_Q.shape  # expanded per query head
    group = c.n_heads // c.n_key_value_heads
    assert torch.equal(model.W_K[0, 0], model.W_K[0, group - 1])  # heads of one group share K
    if c.n_key_value_heads > 1:
        assert not torch.equal(model.W_K[0, 0], model.W_K[0, group])


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_offline_models_match_hugging_face_and_know_ioi(name):
    model = models.load(name)
    hf, tok = models.load_hf(name)
    _ioi_check(model, hf, tok)
    _gqa_heads_check(model)
    assert model.cfg.model_name == name
    assert len(models.fingerprint(model)) == 16


@pytest.mark.real_model
def test_second_load_reads_cache_without_converting(monkeypatch, smollm2):
    def boom(*a, **k):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(models, "_convert_offline", boom)
    again = models.load("SmolLM2-135M-Instruct")  # an alias
    assert models.fingerprint(again) == models.fingerprint(smollm2)
    sep = models.doc_separator_id(smollm2)
    assert smollm2.tokenizer.convert_ids_to_tokens(sep) == "<|endoftext|>"
    assert {0, 1, 2} <= set(models.special_token_ids(smollm2))


def test_local_hugging_face_folder_converts(tmp_path, byte_tokenizer):
    """Any HF causal LM folder (here a tiny grouped-query Llama) converts with logits equal to HF's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(byte_tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "llama")
    byte_tokenizer.save_pretrained(tmp_path / "llama")
    model = models.load(str(tmp_path / "llama"))
    tokens = torch.randint(3, len(byte_tokenizer), (2, 20))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() < 1e-4
    _gqa_heads_check(model)


def test_pickled_only_folder_is_refused(tmp_path, byte_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(byte_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=16)
    folder = tmp_path / "m"
    cfg.save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    torch.save(LlamaForCausalLM(cfg).state_dict(), folder / "pytorch_model.bin")  # a pickle
    with pytest.raises(SaecircuitsError, match="pickled .bin weights are refused"):
        models.load(str(folder))


def test_unknown_model_name():
    with pytest.raises(SaecircuitsError, match="unknown model 'smollm3'.*did you mean smollm2-135m"):
        models.load("smollm3")


def test_hub_model_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SaecircuitsError, match="'EleutherAI/pythia-14m' needs the Hugging Face hub.*smollm2-135m"):
        models.load("EleutherAI/pythia-14m")
