"""Feature matching: the streaming correlation against np.corrcoef, the three assignments against
references, recovery of a known permutation of a synthetic SAE by weights and by activations,
SAE Match folding, chains, feature flow, character-offset alignment, outputs and the command."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from saecircuits import matching
from saecircuits.core.errors import SaecircuitsError
from saecircuits.sae import SAEConfig, build
from saecircuits.text import alignment

# ------------------------------------------------------------------ helpers


def make_sae(d_in=16, d_sae=48, k=4, arch="topk", seed=0, hook="blocks.1.hook_resid_post"):
    sae = build(SAEConfig(architecture=arch, hook=hook, d_sae=d_sae, k=k, seed=seed), d_in)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 100)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
    return sae.eval()


def permuted_copy(sae, perm: torch.Tensor, noise: float, seed: int = 1):
    """Feature j of the copy is feature perm[j] of ``sae``, weights noised."""
    g = torch.Generator().manual_seed(seed)
    cp = build(sae.cfg, sae.d_in).eval()
    with torch.no_grad():
        cp.W_enc.copy_(sae.W_enc[:, perm] + noise * torch.randn(sae.W_enc.shape, generator=g) / sae.d_in**0.5)
        W = sae.W_dec[perm] + noise * torch.randn(sae.W_dec.shape, generator=g) / sae.d_in**0.5
        cp.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
        cp.b_enc.copy_(sae.b_enc[perm])
        cp.b_dec.copy_(sae.b_dec)
        if hasattr(sae, "log_threshold"):
            cp.log_threshold.copy_(sae.log_threshold[perm])
    return cp


def sparse_random(n, d, k, seed, dead=()):
    g = torch.Generator().manual_seed(seed)
    vals, idx = torch.randn(n, d, generator=g).topk(k, dim=1)
    vals = vals.abs()
    for f in dead:
        vals[idx == f] = 0
    return vals, idx


def synthetic_batch(x: torch.Tensor, site: str) -> matching.Batch:
    n = len(x)
    rows = torch.arange(n)
    valid = torch.ones(n, dtype=torch.bool)
    toks = torch.arange(n) % 7
    special = torch.zeros(n, dtype=torch.bool)
    return matching.Batch({"a": {site: x}, "b": {site: x}}, {"a": toks, "b": toks}, {"a": valid, "b": valid},
                          {"a": special, "b": special}, {"a": rows, "b": rows})


# ------------------------------------------------------------------ streaming correlation


@pytest.mark.parametrize("dense_ratio", [1 / 32, 0.0])
def test_streaming_correlation_equals_corrcoef(dense_ratio):
    d_a, d_b = 24, 30
    ca = sparse_random(500, d_a, 5, 0, dead=(3,))
    cb = sparse_random(500, d_b, 4, 1)
    # make some features of B depend on A so r spans a range
    cb[0][:, 0] += ca[0][:, 0]
    acc = matching.CorrelationAccumulator(d_a, d_b, chunk_rows=64, dense_ratio=dense_ratio)
    for s, e in [(0, 7), (7, 200), (200, 500)]:
        acc.update((ca[0][s:e], ca[1][s:e]), (cb[0][s:e], cb[1][s:e]))
    r = acc.correlation().numpy()
    fa = matching.dense_from_code(ca, d_a).double().numpy()
    fb = matching.dense_from_code(cb, d_b).double().numpy()
    ref = np.corrcoef(np.concatenate([fa, fb], 1).T)[:d_a, d_a:]
    assert np.isnan(r[3]).all() and np.isnan(ref[3]).all()  # the dead feature
    np.testing.assert_allclose(r[np.arange(d_a) != 3], ref[np.arange(d_a) != 3], atol=1e-12)
    assert acc.n == 500


def test_sparse_code_matches_encode():
    x = torch.randn(50, 16)
    for arch in ("topk", "jumprelu", "standard"):
        sae = make_sae(arch=arch)
        vals, idx = matching.sparse_code(sae, x)
        torch.testing.assert_close(matching.dense_from_code((vals, idx), sae.d_sae), sae.encode(x))


# ------------------------------------------------------------------ assignment


def _brute_force_max(s: np.ndarray) -> float:
    return max(sum(s[i, p[i]] for i in range(len(p))) for p in itertools.permutations(range(s.shape[1]), s.shape[0]))


def _sequential_greedy(s: np.ndarray) -> set:
    used_r, used_c, out = set(), set(), set()
    for flat in np.argsort(-s, axis=None, kind="stable"):
        i, j = divmod(int(flat), s.shape[1])
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            out.add((i, j))
    return out


def test_assignment_methods_against_references():
    rng = np.random.default_rng(0)
    for trial in range(5):
        s = rng.normal(size=(5, 6))
        ia, ib = matching.assign(s, "hungarian")
        assert len(set(ib)) == 5
        assert s[ia, ib].sum() == pytest.approx(_brute_force_max(s))
        ga, gb = matching.assign(s, "greedy")
        assert set(zip(ga.tolist(), gb.tolist())) == _sequential_greedy(s)
        ba, bb = matching.assign(s, "best")
        np.testing.assert_array_equal(bb, s.argmax(1))
    big = rng.normal(size=(60, 50))
    ga, gb = matching.assign(big, "greedy")
    assert set(zip(ga.tolist(), gb.tolist())) == _sequential_greedy(big)


def test_assignment_skips_dead_features():
    s = np.array([[0.9, 0.1, np.nan], [0.2, 0.8, np.nan], [np.nan, np.nan, np.nan]])
    ia, ib = matching.assign(s, "hungarian", np.array([True, True, False]), np.array([True, True, False]))
    assert ia.tolist() == [0, 1] and ib.tolist() == [0, 1]


# ------------------------------------------------------------------ recovering a known permutation


def test_weight_matching_recovers_permutation():
    sae = make_sae(d_in=32, d_sae=96)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(3))
    cp = permuted_copy(sae, perm, noise=0.3)
    res = matching.weight_match(sae, cp)
    got = {p["a"]: p["b"] for p in res["pairs"]}
    inv = torch.argsort(perm)
    assert all(got[i] == int(inv[i]) for i in range(96))
    assert res["summary"]["mean_cos"] > 0.8


def test_activation_matching_recovers_permutation():
    sae = make_sae(d_in=16, d_sae=48, k=6)
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(4))
    cp = permuted_copy(sae, perm, noise=0.15)
    m = matching.ActivationMatcher({"A": sae}, {"B": cp}, top_m=5)
    x = torch.randn(6000, 16, generator=torch.Generator().manual_seed(5))
    for s in range(0, 6000, 1000):
        m.update(synthetic_batch(x[s:s + 1000], sae.cfg.hook))
    cfg = matching.MatchConfig(null=0, min_fires=20)
    res = matching.pair_result(m, "A", "B", cfg, same_space=True, classes={})
    inv = torch.argsort(perm)
    alive = [p for p in res["pairs"]]
    assert len(alive) >= 40  # nearly every feature fires
    assert all(p["b"] == int(inv[p["a"]]) for p in alive)
    assert res["summary"]["mean_r"] > 0.8
    assert all(p["cos"] > 0.8 for p in alive)


def test_folding_separates_features_that_differ_only_in_scale():
    """Two features share a direction and differ by threshold: cosine alone pairs them by the small
    direction noise; SAE Match's folded decoders pair them by scale."""
    a = make_sae(d_in=8, d_sae=2, arch="jumprelu")
    b = make_sae(d_in=8, d_sae=2, arch="jumprelu")
    d = torch.zeros(8)
    d[0] = 1.0
    e1, e2 = torch.zeros(8), torch.zeros(8)
    e1[1], e2[2] = 0.05, 0.05
    with torch.no_grad():
        a.W_dec.copy_(torch.stack([d + e1, d + e2]))
        b.W_dec.copy_(torch.stack([d + e2, d + e1]))  # directions swapped ...
        a.log_threshold.copy_(torch.tensor([1.0, 5.0]).log())
        b.log_threshold.copy_(torch.tensor([1.0, 5.0]).log())  # ... scales kept
    torch.testing.assert_close(matching.folded_decoder(a), a.W_dec / a.W_dec.norm(dim=1, keepdim=True) * a.threshold[:, None])
    by_scale = {p["a"]: p["b"] for p in matching.weight_match(a, b)["pairs"]}
    assert by_scale == {0: 0, 1: 1}
    ones = torch.ones(2)
    by_direction = {p["a"]: p["b"] for p in matching.weight_match(a, b, scale_a=ones, scale_b=ones)["pairs"]}
    assert by_direction == {0: 1, 1: 0}


def test_feature_chains_compose_permutations():
    s0 = make_sae(d_in=24, d_sae=40, seed=0)
    p1 = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    p2 = torch.randperm(40, generator=torch.Generator().manual_seed(2))
    s1 = permuted_copy(s0, p1, 0.2, seed=3)
    s2 = permuted_copy(s1, p2, 0.2, seed=4)
    res = matching.feature_chains([s0, s1, s2], ["L0", "L1", "L2"], min_cos=0.5)
    inv1, inv2 = torch.argsort(p1), torch.argsort(p2)
    for f, chain in enumerate(res["chains"]):
        assert chain == [f, int(inv1[f]), int(inv2[inv1[f]])]
    assert res["survival"] == [1.0, 1.0, 1.0]
    g = res["graph"]
    assert isinstance(g, nx.DiGraph) and g.number_of_edges() == 80
    assert g.has_edge("L0:0", f"L1:{int(inv1[0])}")
    # a high threshold breaks every chain after the first step
    assert matching.feature_chains([s0, s1, s2], min_cos=0.9999)["survival"][1] == 0.0


def test_feature_flow_names_the_sublayer_a_feature_came_from():
    prev = make_sae(d_in=16, d_sae=8, hook="blocks.0.hook_resid_post", seed=1)
    mlp = make_sae(d_in=16, d_sae=8, hook="blocks.1.hook_mlp_out", seed=2)
    attn = make_sae(d_in=16, d_sae=8, hook="blocks.1.hook_attn_out", seed=3)
    tgt = make_sae(d_in=16, d_sae=4, hook="blocks.1.hook_resid_post", seed=4)
    with torch.no_grad():
        tgt.W_dec[0] = prev.W_dec[5]
        tgt.W_dec[1] = mlp.W_dec[2]
        tgt.W_dec[2] = attn.W_dec[7]
        tgt.W_dec[3] = torch.linalg.qr(torch.randn(16, 16)).Q[0]  # unrelated
    saes = {"r0": prev, "m1": mlp, "a1": attn, "r1": tgt}
    res = matching.feature_flow(saes, min_cos=0.99)
    rows = {r["feature"]: r for r in res["rows"]}
    assert (rows[0]["origin"], rows[0]["origin_feature"]) == ("resid", 5)
    assert (rows[1]["origin"], rows[1]["origin_feature"]) == ("mlp", 2)
    assert (rows[2]["origin"], rows[2]["origin_feature"]) == ("attn", 7)
    assert rows[3]["origin"] == "new"
    g = res["graph"]
    assert g.has_edge("r0:5", "r1:0") and g.edges["m1:2", "r1:1"]["kind"] == "mlp"
    assert res["origin_shares"]["r1"]["new"] == 0.25


def test_feature_flow_projects_hook_z_through_w_o(tiny_model):
    L = 1
    d_head, n_heads = tiny_model.cfg.d_head, tiny_model.cfg.n_heads
    z = make_sae(d_in=d_head * n_heads, d_sae=6, hook=f"blocks.{L}.attn.hook_z", seed=5)
    tgt = make_sae(d_in=tiny_model.cfg.d_model, d_sae=2, hook=f"blocks.{L}.hook_resid_post", seed=6)
    resid = matching.flow_directions(z, tiny_model)
    ref = torch.einsum("fhd,hdm->fm", z.W_dec.reshape(6, n_heads, d_head), tiny_model.blocks[L].attn.W_O)
    torch.testing.assert_close(resid, ref.detach())
    with torch.no_grad():
        tgt.W_dec[0] = resid[4] / resid[4].norm()
    res = matching.feature_flow({"z": z, "r": tgt}, tiny_model, min_cos=0.99)
    assert res["rows"][0]["origin"] == "attn" and res["rows"][0]["origin_feature"] == 4


def test_residual_directions_keep_each_callers_summation_order(tiny_model):
    """One home for hook_z directions in the residual stream (``sae.directions``): the dashboards' order
    (W @ W_O flattened) and feature flow's (einsum) are both reachable, bit for bit."""
    from saecircuits.sae.directions import residual_directions

    n_heads, d_head = tiny_model.cfg.n_heads, tiny_model.cfg.d_head
    W = torch.randn(9, n_heads * d_head, generator=torch.Generator().manual_seed(0))
    W_O = tiny_model.blocks[1].attn.W_O.detach()
    flat = residual_directions(W, "blocks.1.attn.hook_z", tiny_model)
    einsum = residual_directions(W, "blocks.1.attn.hook_z", tiny_model, z_order="dim_major")
    assert torch.equal(flat, W @ W_O.reshape(-1, W_O.shape[2]))
    assert torch.equal(einsum, torch.einsum("fhd,hdm->fm", W.reshape(9, n_heads, d_head), W_O))
    torch.testing.assert_close(flat, einsum)
    resid = torch.randn(3, 5)
    assert residual_directions(resid, "blocks.1.hook_resid_post") is resid  # no model: a residual site is not checked
    with pytest.raises(SaecircuitsError, match="needs the model"):
        residual_directions(W, "blocks.1.attn.hook_z")


# ------------------------------------------------------------------ per-feature statistics


def test_feature_stats_top_activations_equal_brute_force():
    d, m = 12, 3
    stats = matching.FiringStats(d, top_m=m)
    code = sparse_random(300, d, 4, 7)
    tokens = torch.arange(300) + 1000
    compared = torch.ones(300, dtype=torch.bool)
    compared[::10] = False
    special = ~compared
    for s in range(0, 300, 70):
        sl = slice(s, s + 70)
        stats.update((code[0][sl], code[1][sl]), tokens[sl], compared[sl], special[sl], torch.zeros(len(tokens[sl]), dtype=torch.bool))
    dense = matching.dense_from_code(code, d)
    for f in range(d):
        col = dense[compared, f]
        top = col.topk(m)
        np.testing.assert_allclose(stats.top_vals[f].numpy(), top.values.numpy(), rtol=1e-6)
        assert stats.top_tokens[f].tolist() == tokens[compared][top.indices].tolist()
        assert int(stats.fires[f]) == int((col > 0).sum())
        assert int(stats.fires_special[f]) == int((dense[special, f] > 0).sum())


def test_special_only_features_are_flagged():
    sae_a, sae_b = make_sae(d_in=8, d_sae=4, k=1), make_sae(d_in=8, d_sae=4, k=1, seed=1)
    m = matching.ActivationMatcher({"A": sae_a}, {"B": sae_b}, top_m=3)
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    b = synthetic_batch(x, sae_a.cfg.hook)
    code = matching.sparse_code(sae_a, x)
    f0 = code[1][:, 0] == 0  # rows where feature 0 of A fires: mark them special, compare the others
    b.special = {"a": f0, "b": f0}
    b.rows = {"a": (~f0).nonzero().squeeze(1), "b": (~f0).nonzero().squeeze(1)}
    m.update(b)
    share = m.entries["A"].stats.special_share()
    assert float(share[0]) == 1.0 and int(m.entries["A"].stats.fires[0]) == 0
    assert (share[1:] == 0).all()


def test_outlier_tokens_are_not_compared_and_the_limit_holds():
    sae_a, sae_b = make_sae(d_in=8, d_sae=6, k=2), make_sae(d_in=8, d_sae=6, k=2, seed=1)
    m = matching.ActivationMatcher({"A": sae_a}, {"B": sae_b}, drop_outlier_norm=10.0, limit=350)
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    x[[3, 50]] *= 100  # massive-activation tokens
    m.update(synthetic_batch(x, sae_a.cfg.hook))
    assert m.dropped_outliers == 2 and m.compared == 198
    code = matching.sparse_code(sae_a, x[[3, 50]])
    assert int(m.entries["A"].stats.fires_special.sum()) == int((code[0] > 0).sum())  # counted as special positions
    m.update(synthetic_batch(x, sae_a.cfg.hook))
    assert m.compared == 350  # the limit cuts the second batch


def test_token_classes_marks_punctuation(byte_tokenizer):
    tc = matching.TokenClasses(byte_tokenizer)
    ids = torch.tensor(byte_tokenizer.convert_tokens_to_ids(["a", ",", "Ġ", "Z", "("]))
    assert tc.punct(ids).tolist() == [False, True, True, False, True]


# ------------------------------------------------------------------ character-offset alignment


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<pad>", "[UNK]", "café", "au", "lait", ",", "oui"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="[UNK]")


def test_alignment_is_exact_on_a_hand_made_example(byte_tokenizer):
    text = "café au lait, oui"
    word = alignment.tokenize(_word_tokenizer(), text)
    byte = alignment.tokenize(byte_tokenizer, text)
    assert word.ends.tolist() == [4, 7, 12, 13, 17]
    # bytes: c a f Ã © ␣ a u ␣ l a i t , ␣ o u i ; é is two byte tokens, both ending at 4
    assert byte.ends.tolist() == [1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    ia, ib = alignment.align(byte, word, "boundary")
    assert ia.tolist() == [4, 7, 12, 13, 17] and ib.tolist() == [0, 1, 2, 3, 4]  # the 2nd byte of é, never the 1st
    ia, ib = alignment.align(word, byte, "cover")
    assert ia.tolist() == [0, 1, 2, 3, 4] and ib.tolist() == [4, 7, 12, 13, 17]
    ia, ib = alignment.align(byte, word, "cover")
    # every byte token but the spaces (5, 8, 14) and the first byte of é (3) lies inside a word
    assert ia.tolist() == [0, 1, 2, 4, 6, 7, 9, 10, 11, 12, 13, 15, 16, 17]
    assert ib.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 4]


def test_aligned_batches_compare_the_same_text(byte_tokenizer):
    wt = _word_tokenizer()
    a = alignment.Side(byte_tokenizer, byte_tokenizer.bos_token_id, byte_tokenizer.pad_token_id)
    b = alignment.Side(wt, wt.bos_token_id, wt.pad_token_id)
    texts = ["café au lait, oui " * 6, "oui, oui"]
    batches = list(alignment.aligned_batches(texts, a, b, context_size=16, batch_size=3))
    n_pairs = 0
    for bt in batches:
        assert bt.tokens_a.shape[1] == bt.tokens_b.shape[1] == 16
        assert (bt.tokens_a[:, 0] == a.bos_id).all() and (bt.tokens_b[:, 0] == b.bos_id).all()
        for ra, rb in zip(bt.rows_a.tolist(), bt.rows_b.tolist(), strict=True):
            (ca, pa), (cb, pb) = divmod(ra, 16), divmod(rb, 16)
            assert ca == cb and pa >= 1 and pb >= 1
            left = byte_tokenizer.decode(bt.tokens_a[ca, 1 : pa + 1].tolist()).replace(" ", "")
            right = "".join(wt.convert_ids_to_tokens(bt.tokens_b[cb, 1 : pb + 1].tolist()))
            assert left == right  # both models have read the same characters (spaces aside)
        assert bt.valid_a[bt.rows_a].all() and bt.valid_b[bt.rows_b].all()
        n_pairs += len(bt.rows_a)
    assert n_pairs == 5 * 6 + 3  # every word token is compared: its end is a byte boundary too


@pytest.mark.real_model
def test_alignment_of_smollm2_and_gemma_tokenizers_reads_the_same_text():
    import os

    from transformers import AutoTokenizer

    from saecircuits.model.loading import cache_root, load

    names = ("smollm2-135m", "gemma-3-270m")
    folders = [cache_root() / "models" / n / "tokenizer" for n in names]
    for name, folder in zip(names, folders, strict=True):
        if not folder.is_dir():  # a fresh machine: convert once (the model tests reuse the cache)
            load(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ta, tb = (AutoTokenizer.from_pretrained(str(f)) for f in folders)
    a = alignment.Side(ta, ta.bos_token_id, 0, frozenset(ta.all_special_ids))
    b = alignment.Side(tb, tb.bos_token_id, 0, frozenset(tb.all_special_ids))
    text = "def f(x):\n    return x  +  1  # héllo 世界 🙂\n\n\tclass Café:  pass\n" * 5
    n = 0
    for ids_a, ids_b, pa, pb in alignment.aligned_contexts([text], a, b, context_size=48):
        assert ids_a[0] == ta.bos_token_id and ids_b[0] == tb.bos_token_id
        for i, j in zip(pa.tolist(), pb.tolist(), strict=True):
            assert ta.decode(ids_a[1 : i + 1].tolist()) == tb.decode(ids_b[1 : j + 1].tolist())
            n += 1
    assert n > 50


def test_cross_model_matching_and_same_model_pairs_on_its_token_set(tiny_model, tmp_path):
    """Two tiny models with different tokenizers (bytes, words) over the same text: the cross-model run
    compares character-aligned positions only; ``align_to`` compares a same-model pair at exactly those
    positions (the A SAE's statistics equal the cross-model run's), and an SAE against its own copy gives r = 1."""
    from transformers import AutoTokenizer

    from saecircuits.text.config import TextConfig

    from conftest import make_tiny_model

    (tmp_path / "text").mkdir()
    for i in range(4):
        (tmp_path / "text" / f"doc{i}.txt").write_text("café au lait, oui " * (40 + i))
    _word_tokenizer().save_pretrained(tmp_path / "words")  # TransformerLens reloads a tokenizer by name
    words = make_tiny_model(tokenizer=AutoTokenizer.from_pretrained(str(tmp_path / "words")), n_layers=2, seed=3)
    x = make_sae(d_in=tiny_model.cfg.d_model, d_sae=24, k=3, hook="blocks.1.hook_resid_post", seed=0)
    y = make_sae(d_in=words.cfg.d_model, d_sae=16, k=3, hook="blocks.0.hook_resid_post", seed=1)
    twin = make_sae(d_in=tiny_model.cfg.d_model, d_sae=24, k=3, hook="blocks.1.hook_resid_post", seed=0)
    cfg = matching.MatchConfig(text=TextConfig(source=str(tmp_path / "text"), context_size=32, eval_fraction=0), tokens=300,
                               batch_contexts=4, null=0, random_subsets=0, sample_tokens=0, min_fires=1,
                               drop_outlier_norm=None)
    cross = matching.match_saes({"X": x}, {"Y": y}, tiny_model, words, cfg, progress=False)
    same = matching.match_saes({"X": x}, {"X2": twin}, tiny_model, None, cfg, progress=False, align_to=words)
    assert not cross["same_model"] and same["same_model"] and same["models"]["aligned_to"] == cross["models"]["b"]
    assert cross["timing"]["tokens"] == same["timing"]["tokens"] == 300
    assert cross["saes"]["X"] == same["saes"]["X"]  # the A SAE saw exactly the same rows in both runs
    unaligned = matching.match_saes({"X": x}, {"X2": twin}, tiny_model, None, cfg, progress=False)
    assert unaligned["saes"]["X"]["mean_active"] != same["saes"]["X"]["mean_active"]  # all byte positions differ
    pairs = same["results"][0]["pairs"]
    assert pairs and all(p["a"] == p["b"] and p["r"] > 0.999 for p in pairs)
    # only positions where a word ends are compared: the last byte of café (é's 2nd byte, '�' alone), au, lait, ',', oui
    def top_tokens(res):
        return {t for p in res["results"][0]["pairs"] for t in p["top_tokens_a"]}

    assert top_tokens(cross) | top_tokens(same) <= {"�", "u", "t", ",", "i"}
    assert {"c", "a", " "} <= top_tokens(unaligned)  # the same-model stream compares every byte
    with pytest.raises(SaecircuitsError, match="align_to"):
        matching.match_saes({"X": x}, {"Y": y}, tiny_model, words, cfg, progress=False, align_to=words)


# ------------------------------------------------------------------ end to end on the tiny model, outputs, command


def _tiny_pair(tiny_model):
    d = tiny_model.cfg.d_model
    sae = make_sae(d_in=d, d_sae=64, k=4, hook="blocks.1.hook_resid_post", seed=0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(9))
    return sae, permuted_copy(sae, perm, noise=0.1), perm


def test_match_saes_on_a_model_and_write_outputs(tiny_model, tmp_path):
    from saecircuits.matching.outputs import read_match, write_match
    from saecircuits.text.config import TextConfig

    sae, cp, perm = _tiny_pair(tiny_model)
    other = make_sae(d_in=tiny_model.cfg.d_model, d_sae=32, k=4, hook="blocks.2.hook_resid_post", seed=7)
    cfg = matching.MatchConfig(text=TextConfig(source="stdlib", context_size=32), tokens=3000, batch_contexts=8,
                               null=20, random_subsets=3, sample_tokens=200, min_fires=10)
    res = matching.match_saes({"A": sae}, {"B": cp, "C": other}, tiny_model, None, cfg, progress=False)
    assert res["timing"]["tokens"] == 3000 and res["same_model"]
    ab = next(r for r in res["results"] if r["b"] == "B")
    inv = torch.argsort(perm)
    good = [p for p in ab["pairs"] if p["r"] > 0.5]
    assert len(good) > 20 and all(p["b"] == int(inv[p["a"]]) for p in good)
    assert ab["summary"]["tokens"] == 3000 and ab["summary"]["alive_a"] <= 64
    assert ab["similarity"]["decoder"]["svcca"]["n_null"] == 20
    assert "activations" in ab["similarity"]
    assert all(len(p["top_tokens_a"]) >= 1 for p in ab["pairs"])
    written = write_match(res, tmp_path / "m")
    table = json.loads((tmp_path / "m" / "pairs" / "A__B" / "table.json").read_text())
    assert table == json.loads(json.dumps(ab["pairs"]))
    assert (tmp_path / "m" / "pairs" / "A__B" / "table.csv").read_text().startswith("a,b,r,cos,")
    assert (tmp_path / "m" / "pairs" / "A__B" / "r_hist.pdf").exists()
    assert (tmp_path / "m" / "similarity_mean_r.png").exists() and "match" in written
    brief = json.loads((tmp_path / "m" / "match.json").read_text())
    assert "pairs" not in brief["results"][0]
    assert read_match(tmp_path / "m") == json.loads(json.dumps(res))  # what a resumed recipe reuses


def test_graphs_are_written_as_graphml_and_json(tmp_path):
    from saecircuits.matching.outputs import write_chains

    s0 = make_sae(d_in=16, d_sae=10)
    s1 = permuted_copy(s0, torch.randperm(10), 0.1)
    write_chains(matching.feature_chains([s0, s1], ["x", "y"], min_cos=0.3), tmp_path)
    g = nx.read_graphml(tmp_path / "chains_graph.graphml")
    assert g.number_of_edges() == 10
    data = json.loads((tmp_path / "chains_graph.json").read_text())
    assert len(data["edges"]) == 10


def _save(sae, folder, model_name="smollm2-135m"):
    from saecircuits.sae import format as sae_format

    return str(sae_format.save(sae, folder, model_name=model_name))


class _Out:
    def __init__(self, result):
        self.returncode = result.exit_code
        self.stderr = result.output + (str(result.exception) if result.exception and result.exit_code not in (0, 2) else "")


def run_cli(*args):
    """The command in-process (a subprocess would spend its time importing torch)."""
    from typer.testing import CliRunner

    from saecircuits.app.cli import app

    return _Out(CliRunner().invoke(app, ["match", *args]))


def test_cli_weights_chains_and_flow(tmp_path):
    s0 = make_sae(d_in=16, d_sae=12, hook="blocks.0.hook_resid_post")
    s1 = permuted_copy(s0, torch.randperm(12), 0.1)
    s1.cfg = s1.cfg.model_copy(update={"hook": "blocks.1.hook_resid_post"})
    f0, f1 = _save(s0, tmp_path / "l0"), _save(s1, tmp_path / "l1")
    out = run_cli("--sae-a", f0, "--sae-b", f1, "--mode", "weights", "--out", str(tmp_path / "w"))
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "w" / "weights.json").read_text())
    assert rows[0]["summary"]["n_pairs"] == 12 and rows[0]["summary"]["mean_cos"] > 0.9
    out = run_cli("--sae-a", f0, "--sae-a", f1, "--mode", "chains", "--out", str(tmp_path / "c"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c" / "chains_graph.graphml").exists()
    out = run_cli("--sae-a", f0, "--sae-a", f1, "--mode", "flow", "--out", str(tmp_path / "f"), "--min-cos", "0.5")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "f" / "flow_summary.json").read_text())["origin_shares"]["l1"]["resid"] == 1.0


def test_cli_bad_input_is_one_line(tmp_path):
    out = run_cli("--sae-a", str(tmp_path / "missing"), "--sae-b", str(tmp_path / "x"), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    s0 = _save(make_sae(), tmp_path / "s0")
    out = run_cli("--sae-a", s0, "--sae-b", s0, "--out", str(tmp_path / "o"), "--method", "magic")
    assert out.returncode == 2 and "method" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("--sae-a", s0, "--out", str(tmp_path / "o"), "--mode", "weights")
    assert out.returncode == 2 and "--sae-b" in out.stderr
    out = run_cli("--sae-a", s0, "--sae-b", s0, "--model-b", "gemma-3-270m", "--align-to", "gemma-3-270m",
                  "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "--align-to is for same-model pairs" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.real_model
def test_cli_activation_matching_on_smollm2(tmp_path):
    d = 576
    a = make_sae(d_in=d, d_sae=64, k=8, hook="blocks.1.hook_resid_post", seed=0)
    b = permuted_copy(a, torch.randperm(64, generator=torch.Generator().manual_seed(2)), 0.1)
    fa, fb = _save(a, tmp_path / "a"), _save(b, tmp_path / "b")
    out = run_cli("--sae-a", fa, "--sae-b", fb, "--tokens", "1500", "--null", "50", "--random-subsets", "5",
                  "--sample-tokens", "200", "--out", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "m" / "match.json").read_text())
    assert res["models"]["a"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and res["same_model"]
    assert res["results"][0]["summary"]["tokens"] == 1500
    assert Path(tmp_path / "m" / "pairs" / "a__b" / "table.csv").exists()
    # the same pair on the positions a SmolLM2 x Gemma match compares
    out = run_cli("--sae-a", fa, "--sae-b", fb, "--tokens", "1500", "--null", "0", "--align-to", "gemma-3-270m",
                  "--out", str(tmp_path / "g"))
    assert out.returncode == 0, out.stderr
    res_g = json.loads((tmp_path / "g" / "match.json").read_text())
    assert res_g["models"]["aligned_to"] == "google/gemma-3-270m" and res_g["results"][0]["summary"]["tokens"] == 1500
    assert res_g["saes"]["a"]["mean_active"] != res["saes"]["a"]["mean_active"]  # other positions were compared


def test_pairs_within_one_suite_share_names_across_sides(tiny_model):
    """One suite on both sides (layer x layer within one model): the same SAE under the same name on both
    sides is encoded once, and matching it with another SAE equals the two-name form; a name that means
    two different SAEs is refused."""
    from saecircuits.text.config import TextConfig

    sae, cp, perm = _tiny_pair(tiny_model)
    cfg = matching.MatchConfig(text=TextConfig(source="stdlib", context_size=32), tokens=1000, batch_contexts=8,
                               null=0, random_subsets=0, sample_tokens=0)
    suite = {"L1": sae, "L1b": cp}
    within = matching.match_saes(suite, suite, tiny_model, None, cfg, pairs=[("L1", "L1b")], progress=False)
    apart = matching.match_saes({"L1": sae}, {"L1b": cp}, tiny_model, None, cfg, progress=False)
    assert [(p["a"], p["b"], p["r"]) for p in within["results"][0]["pairs"]] == \
           [(p["a"], p["b"], p["r"]) for p in apart["results"][0]["pairs"]]
    with pytest.raises(SaecircuitsError, match="must differ"):
        matching.match_saes({"X": sae}, {"X": cp}, tiny_model, None, cfg, progress=False)
