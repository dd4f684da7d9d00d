"""Shared fixtures: a byte-level tokenizer and tiny TransformerLens models built here, and the real default model."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_byte_tokenizer():
    """A real fast tokenizer over bytes (259 ids: <bos>, <eos>, <pad>, then the 256 bytes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<bos>", "<eos>", "<pad>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    # TransformerLens reloads tokenizers by name, so give it one saved in a folder
    folder = tempfile.mkdtemp(prefix="byte-tokenizer-")
    fast.save_pretrained(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def make_tiny_model(n_layers: int = 3, d_model: int = 32, n_heads: int = 4, n_kv: int | None = None,
                    attn_only: bool = False, seed: int = 0, tokenizer=None, **kw) -> HookedTransformer:
    """A small random TransformerLens model; ``n_kv`` < ``n_heads`` makes it grouped-query."""
    tokenizer = tokenizer or make_byte_tokenizer()
    settings = dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
        d_mlp=None if attn_only else 4 * d_model, attn_only=attn_only, n_ctx=64, d_vocab=len(tokenizer),
        act_fn="gelu", normalization_type="LN", seed=seed, n_key_value_heads=n_kv,
        model_name=f"tiny-{n_layers}l{'-gqa' if n_kv else ''}", tokenizer_prepends_bos=False,
    )
    settings.update(kw)
    cfg = HookedTransformerConfig(**settings)
    model = HookedTransformer(cfg, tokenizer)
    model.eval()
    return model


@pytest.fixture(scope="session")
def byte_tokenizer():
    return make_byte_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(byte_tokenizer):
    return make_tiny_model(tokenizer=byte_tokenizer)


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (converted once per machine, then read from the cache)."""
    from saecircuits.models import load

    return load("smollm2-135m")
