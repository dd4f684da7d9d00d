"""Shared fixtures: a byte-level tokenizer and tiny TransformerLens models built here, and the real default model."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))
# a suite started in the background of a script inherits SIGINT ignored (POSIX), and so would every command it starts;
# the interrupt tests need Ctrl-C to mean what it means at a terminal (a Python handler resets to default at exec)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


def save_tiny_llama(folder, tokenizer, n_layers: int = 2):
    """A random grouped-query Llama (4 query heads sharing 2 key/value heads, d_model 64) saved with ``tokenizer``
    as a local Hugging Face folder, the way a user names a model on disk; returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
    from saecircuits.model.loading import load

    return load("smollm2-135m")


INDUCTION_VOCAB, INDUCTION_LEN = 64, 32


def induction_batch(n: int, generator: torch.Generator, vocab: int = INDUCTION_VOCAB, length: int = INDUCTION_LEN):
    """Random tokens whose last ``2*half`` positions are one segment repeated, ``half`` varying per row.

    Returns ``(tokens [n, length], half [n])``. The varying ``half`` (6..length/2) keeps a model from
    predicting the repeat by position alone, so only induction (find the earlier copy, copy the next token) works.
    """
    tokens = torch.randint(0, vocab, (n, length), generator=generator)
    half = torch.randint(6, length // 2 + 1, (n,), generator=generator)
    pos = torch.arange(length)
    second = pos >= length - half[:, None]  # [n, length]: positions of the second copy
    tokens = torch.where(second, tokens.gather(1, (pos - half[:, None]).clamp(min=0)), tokens)
    return tokens, half


def induction_positions(half: torch.Tensor, length: int = INDUCTION_LEN) -> torch.Tensor:
    """[n, length] mask of the positions whose token induction predicts (the second copy after its first token)."""
    return torch.arange(length) >= length - half[:, None] + 1


def train_induction_model(seed: int = 0, steps: int = 600):
    """A 2-layer attention-only model trained (AdamW) on repeated random tokens until it does induction.

    Weight decay prunes the redundant copies, leaving one clear previous-token head in layer 0 (the
    layer-1 heads all become induction heads). Returns ``(model, facts)``; the heads in ``facts`` are
    measured from attention patterns on a held-out batch, not assumed.
    """
    import math

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=None, attn_only=True, n_ctx=64,
        d_vocab=INDUCTION_VOCAB, act_fn="gelu", normalization_type=None, positional_embedding_type="standard",
        seed=seed, model_name="tiny-induction",
    )
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.3)

    def induction_loss(logits, tokens, half):
        """Mean next-token loss (nats) over the positions induction can predict."""
        logp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
        mask = induction_positions(half)[:, 1:]
        return -(logp * mask).sum() / mask.sum()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread (and far faster on a busy machine)
    try:
        for _ in range(steps):
            tokens, half = induction_batch(32, gen)
            loss = induction_loss(model(tokens), tokens, half)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.requires_grad_(False)

    tokens, half = induction_batch(128, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    pos = torch.arange(INDUCTION_LEN)
    # previous-token attention where it matters: at the first copy, whose positions are the keys induction reads
    first = (pos >= INDUCTION_LEN - 2 * half[:, None] + 1) & (pos <= INDUCTION_LEN - half[:, None])
    rows, k = first.nonzero(as_tuple=True)
    prev = cache["pattern", 0][rows, :, k, k - 1].mean(0)  # [head]
    # induction attention: from the second copy to the token after the earlier occurrence
    rows, q = induction_positions(half).nonzero(as_tuple=True)
    induct = cache["pattern", 1][rows, :, q, q - half[rows] + 1].mean(0)  # [head]
    facts = {
        "steps": steps, "loss_repeated": induction_loss(logits, tokens, half).item(),
        "log_vocab": math.log(INDUCTION_VOCAB),
        "prev_token_head": (0, int(prev.argmax())), "induction_head": (1, int(induct.argmax())),
        "prev_token_scores": prev.tolist(), "induction_scores": induct.tolist(),
        "tokens": tokens, "half": half,
    }
    return model, facts


@pytest.fixture(scope="session")
def induction_model():
    """``(model, facts)``: a tiny attention-only 2-layer model (d_model 64, 4 heads, vocab 64, no norms)
    trained here, seeded, to do induction (about 600 AdamW steps, under a minute on 2 cores).

    facts: ``prev_token_head`` (0, h) and ``induction_head`` (1, h), each the argmax of the mean attention
    measured on a held-out batch (to the previous position at the first copy; from the second copy to the
    token after the earlier occurrence), with all heads' scores in ``prev_token_scores`` /
    ``induction_scores`` (the layer-1 heads are often all induction heads); ``tokens`` [128, 32] and
    ``half`` [128]: that batch (random tokens whose last 2*half are a segment repeated; see
    ``induction_batch``/``induction_positions``); ``loss_repeated``: held-out loss on the predictable
    positions (nats), against ``log_vocab``.
    """
    model, facts = train_induction_model()
    assert facts["loss_repeated"] < 0.25 * facts["log_vocab"], f"the induction model did not learn: {facts}"
    assert max(facts["prev_token_scores"]) > 0.5, f"no previous-token head formed: {facts}"
    return model, facts


@pytest.fixture(scope="session")
def fx(tmp_path_factory, byte_tokenizer):
    """The reliability fixtures (tests/reliability_cases.py: tiny Llama, text, a finished run, its SAE,
    dashboards, a cache), built once for the reliability and interrupt tests."""
    import reliability_cases as rc

    return rc.make_fixtures(tmp_path_factory.mktemp("reliability"), byte_tokenizer)
