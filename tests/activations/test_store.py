import resource

import pytest
import torch

from saecircuits.activations.site import Site, expand_sites
from saecircuits.activations.store import ActivationStore, ModelActivations, Rows, StoreConfig
from saecircuits.core.errors import SaecircuitsError
from saecircuits.text.config import TextConfig
from saecircuits.text.source import TextSource

from conftest import make_tiny_model

SITES = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.attn.hook_z:*",
         "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"]


def _text(tok, n_ctx=24, seed=0, source="bible"):
    return TextSource(TextConfig(source=source, context_size=n_ctx, seed=seed, eval_fraction=0), tok, tok.bos_token_id, tok.eos_token_id)


@pytest.mark.parametrize("n_kv", [None, 2])
def test_activations_equal_run_with_cache_exactly(byte_tokenizer, n_kv):
    model = make_tiny_model(n_kv=n_kv, tokenizer=byte_tokenizer)
    sites = expand_sites(model, SITES)
    acts = ModelActivations(model, sites, forward="transformer_lens")
    tokens = _text(byte_tokenizer).take(6)
    got = acts.activations(tokens)
    _, cache = model.run_with_cache(tokens)
    n = tokens.numel()
    for s in sites:
        ref = cache[s.hook]
        ref = (ref if s.head is None else ref[:, :, s.head]).reshape(n, -1)
        assert torch.equal(got[s.key], ref), s.key
    assert acts.stop == 3  # blocks.2.hook_resid_pre needs blocks 0..2


def test_special_tokens_and_first_position_are_excluded(tiny_model, byte_tokenizer):
    acts = ModelActivations(tiny_model, [Site("blocks.0.hook_resid_post")])
    tokens = _text(byte_tokenizer).take(4)
    tokens[1, 5] = byte_tokenizer.eos_token_id
    tokens[2, 9] = byte_tokenizer.pad_token_id
    keep = acts.keep_mask(tokens).reshape(tokens.shape)
    assert not keep[:, 0].any()
    assert not keep[1, 5] and not keep[2, 9]
    assert int(keep.sum()) == tokens.numel() - 4 - 2
    rows = acts.rows(tokens)
    assert len(rows) == int(keep.sum())
    specials = {byte_tokenizer.bos_token_id, byte_tokenizer.eos_token_id, byte_tokenizer.pad_token_id}
    assert not set(rows.tokens.tolist()) & specials
    full = acts.activations(tokens)["blocks.0.hook_resid_post"]
    assert torch.equal(rows.acts["blocks.0.hook_resid_post"], full[keep.reshape(-1)])


def _all_rows_unshuffled(model, tok, sites, n_contexts, n_ctx=24):
    acts = ModelActivations(model, expand_sites(model, sites))
    return acts.rows(_text(tok, n_ctx).take(n_contexts))


def test_every_token_once_per_epoch_after_shuffling(tiny_model, byte_tokenizer):
    sites = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z:1"]
    n_contexts = 96  # six windows of 16 contexts
    cfg = StoreConfig(batch_size_tokens=37, buffer_tokens=24 * 16, model_batch_size=5)
    text = TextSource(TextConfig(source="bible", context_size=24, eval_fraction=0), byte_tokenizer,
                      byte_tokenizer.bos_token_id, byte_tokenizer.eos_token_id)
    ref = _all_rows_unshuffled(tiny_model, byte_tokenizer, sites, n_contexts)
    store = ActivationStore.from_model(tiny_model, sites, text, cfg, repeat=False)
    # limit the epoch to n_contexts contexts
    store._windows = _limit_windows(store._windows, n_contexts, store.describe["window_contexts"])
    got = Rows.cat(list(store.row_batches(drop_last=False)))
    assert len(got) == len(ref)
    for k in ref.acts:  # same multiset of rows, in another order
        a, b = ref.acts[k], got.acts[k]
        assert not torch.equal(a, b)
        key = torch.randn(a.shape[1], dtype=torch.float64)
        assert torch.equal(torch.sort(a.double() @ key).values, torch.sort(b.double() @ key).values)
    # the sites stay aligned: a row of one site travels with the same token's row of the other
    k0, k1 = torch.randn(32, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def triples(r):
        return sorted(zip((r.acts[sites[0]].double() @ k0).tolist(), (r.acts[sites[1]].double() @ k1).tolist(), r.tokens.tolist()))

    assert triples(ref) == triples(got)


def _limit_windows(windows, n_contexts, wc):
    def limited(epoch, start):
        n_windows = -(-n_contexts // wc)
        for i, w in enumerate(windows(epoch, start)):
            if start + i >= n_windows:
                return
            yield w
    return limited


def test_batches_mix_many_contexts(tiny_model, byte_tokenizer):
    site = "blocks.0.hook_resid_post"
    cfg = StoreConfig(batch_size_tokens=64, buffer_tokens=24 * 32)
    store = ActivationStore.from_model(tiny_model, [site], _text(byte_tokenizer), cfg)
    batch = next(store.batches())[site]
    acts = ModelActivations(tiny_model, expand_sites(tiny_model, [site]))
    key = torch.randn(32, dtype=torch.float64)
    context_of = {}
    for i, ctx in enumerate(_text(byte_tokenizer).take(32)):
        for v in (acts.rows(ctx[None]).acts[site].double() @ key).tolist():
            context_of[round(v, 6)] = i
    sources = {context_of[round(v, 6)] for v in (batch.double() @ key).tolist()}
    assert len(sources) >= 24  # 64 rows drawn from most of the window's 32 contexts


def test_resume_gives_the_same_batches(tiny_model, byte_tokenizer):
    cfg = StoreConfig(batch_size_tokens=50, buffer_tokens=24 * 10, model_batch_size=4)
    sites = ["blocks.1.hook_resid_post"]
    full = [b["blocks.1.hook_resid_post"] for b in ActivationStore.from_model(tiny_model, sites, _text(byte_tokenizer), cfg).batches(max_tokens=50 * 40)]
    first = ActivationStore.from_model(tiny_model, sites, _text(byte_tokenizer), cfg)
    head = [b["blocks.1.hook_resid_post"] for b in first.batches(max_tokens=50 * 13)]
    state, tensors = first.state()
    second = ActivationStore.from_model(tiny_model, sites, _text(byte_tokenizer), cfg)
    second.load_state(state, tensors)
    second.tokens_emitted = first.tokens_emitted
    tail = [b["blocks.1.hook_resid_post"] for b in second.batches(max_tokens=50 * 40)]
    assert len(head) + len(tail) == len(full)
    for a, b in zip(head + tail, full):
        assert torch.equal(a, b)


def test_prefetch_gives_identical_batches(tiny_model, byte_tokenizer):
    sites = ["blocks.1.hook_resid_post"]
    runs = []
    for prefetch in (False, True):
        cfg = StoreConfig(batch_size_tokens=40, buffer_tokens=24 * 8, prefetch=prefetch)
        runs.append([b[sites[0]] for b in ActivationStore.from_model(tiny_model, sites, _text(byte_tokenizer), cfg).batches(max_tokens=40 * 30)])
    assert all(torch.equal(a, b) for a, b in zip(*runs)) and len(runs[0]) == len(runs[1]) == 30


def _synthetic_store(cfg, rows_per_window=200, d=16, n_windows=5, spike_every=50):
    def windows(epoch, start):
        for w in range(start, n_windows):
            g = torch.Generator().manual_seed(w)
            x = torch.randn(rows_per_window, d, generator=g) * 3
            x[::spike_every] *= 100  # attention-sink-like outliers
            yield Rows({"x": x}, torch.arange(rows_per_window, dtype=torch.int32) + w * rows_per_window)
    return ActivationStore(cfg, windows, [Site("x")], context_size=8, repeat=False)


def test_outlier_tokens_are_dropped_and_counted():
    store = _synthetic_store(StoreConfig(batch_size_tokens=50, drop_outlier_norm=10))
    rows = Rows.cat(list(store.row_batches(drop_last=False)))
    assert store.tokens_dropped_outlier == 5 * 4
    assert len(rows) == 5 * 200 - 20
    assert rows.acts["x"].norm(dim=1).max() < 100


def test_normalisation_scales_to_sqrt_d():
    store = _synthetic_store(StoreConfig(batch_size_tokens=50, normalize="expected_average_only_in", drop_outlier_norm=10))
    rows = Rows.cat(list(store.row_batches(drop_last=False)))
    s = store.scales["x"]
    assert s != 1.0
    assert abs(rows.acts["x"].norm(dim=1).mean().item() - 4.0) < 0.2  # sqrt(16)


def test_memory_stays_bounded_over_a_long_stream(tiny_model, byte_tokenizer):
    cfg = StoreConfig(batch_size_tokens=256, buffer_tokens=24 * 64, model_batch_size=16)
    store = ActivationStore.from_model(tiny_model, ["blocks.2.hook_resid_post", "blocks.1.attn.hook_z"],
                                       _text(byte_tokenizer, source="stdlib"), cfg)
    it = store.batches()
    for _ in range(100):  # warm up: allocator pools, tokenizer caches
        next(it)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(1000):  # ten times longer
        next(it)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert store.tokens_emitted == 1100 * 256
    assert grown_mb < 64, f"peak memory grew {grown_mb:.0f} MB over a 10x longer stream"


def test_bad_sites(tiny_model):
    with pytest.raises(SaecircuitsError, match="has 3 layers"):
        expand_sites(tiny_model, ["blocks.9.hook_resid_post"])
    with pytest.raises(SaecircuitsError, match="did you mean: blocks.1.hook_resid_post"):
        expand_sites(tiny_model, ["blocks.1.hook_resid_pst"])
    with pytest.raises(SaecircuitsError, match="head 7 does not exist"):
        expand_sites(tiny_model, ["blocks.1.attn.hook_z:7"])
    with pytest.raises(SaecircuitsError, match="no head dimension"):
        expand_sites(tiny_model, ["blocks.1.hook_resid_post:0"])


def test_empty_source_is_one_clear_error(tmp_path, tiny_model, byte_tokenizer):
    (tmp_path / "e.txt").write_text("")
    text = TextSource(TextConfig(source=str(tmp_path / "e.txt"), eval_fraction=0), byte_tokenizer, 0, 1)
    store = ActivationStore.from_model(tiny_model, ["blocks.0.hook_resid_post"], text, StoreConfig())
    with pytest.raises(SaecircuitsError, match="gave no train context"):
        next(store.batches())


@pytest.mark.real_model
def test_default_model_gqa_heads_and_attention_sink(smollm2):
    text = TextSource.for_model(TextConfig(source="stdlib", context_size=64), smollm2)
    sites = expand_sites(smollm2, ["blocks.6.hook_resid_post", "blocks.6.attn.hook_z:*", "blocks.6.attn.hook_k:*"])
    assert len(sites) == 1 + 9 + 3  # 9 query heads, 3 key/value heads
    acts = ModelActivations(smollm2, sites, forward="transformer_lens")
    tokens = text.take(2)
    got = acts.activations(tokens)
    lean = ModelActivations(smollm2, sites).activations(tokens)  # the default (lean) forward: equal to rounding
    for k in got:
        assert (lean[k] - got[k]).norm() <= 1e-5 * got[k].norm(), k
    _, cache = smollm2.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.6."))
    assert torch.equal(got["blocks.6.attn.hook_z:4"], cache["blocks.6.attn.hook_z"][:, :, 4].reshape(128, 64))
    norms = got["blocks.6.hook_resid_post"].norm(dim=1).reshape(2, 64)
    assert (norms[:, 0] > 4 * norms[:, 1:].median()).all()  # position 0 is an attention sink ...
    assert not acts.keep_mask(tokens).reshape(2, 64)[:, 0].any()  # ... and is excluded


@pytest.mark.real_model
def test_second_model_family_streams_exactly(tmp_path):
    """Gemma-3-270M (post-norms, one key/value head, its own tokenizer): the store takes TransformerLens's
    forward, rows equal run_with_cache, BOS excluded, and batches come out."""
    from saecircuits.model.loading import load

    gemma = load("gemma-3-270m")
    assert gemma.cfg.n_key_value_heads == 1 and gemma.cfg.n_heads == 4
    text = TextSource.for_model(TextConfig(source="bible", context_size=32, eval_fraction=0), gemma)
    sites = expand_sites(gemma, ["blocks.5.hook_resid_post", "blocks.5.attn.hook_z:*", "blocks.5.attn.hook_v:*"])
    assert len(sites) == 1 + 4 + 1
    acts = ModelActivations(gemma, sites)
    assert acts.lean is None and acts.stop == 6
    tokens = text.take(2)
    assert (tokens[:, 0] == gemma.tokenizer.bos_token_id).all()
    got = acts.activations(tokens)
    _, cache = gemma.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.5."))
    assert torch.equal(got["blocks.5.attn.hook_z:3"], cache["blocks.5.attn.hook_z"][:, :, 3].reshape(64, -1))
    assert torch.equal(got["blocks.5.hook_resid_post"], cache["blocks.5.hook_resid_post"].reshape(64, -1))
    assert not acts.keep_mask(tokens).reshape(2, 32)[:, 0].any()
    store = ActivationStore.from_model(gemma, ["blocks.5.hook_resid_post"], text,
                                       StoreConfig(batch_size_tokens=64, buffer_tokens=256, model_batch_size=4))
    batch = next(store.batches())
    assert batch["blocks.5.hook_resid_post"].shape == (64, 640) and torch.isfinite(batch["blocks.5.hook_resid_post"]).all()
