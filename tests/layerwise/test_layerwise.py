"""Layer-wise analysis: each measurement against a reference computed another way."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from saecircuits.core.errors import SaecircuitsError
from saecircuits.layerwise import contributions, figures, lens, linearity, probes, results, skipping, tuned
from saecircuits.layerwise.config import StreamConfig
from saecircuits.text.config import TextConfig

from conftest import make_tiny_model


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A few varied documents for the byte-level tiny model (train and eval splits both non-empty)."""
    folder = tmp_path_factory.mktemp("text")
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly boxing frogs".split()
    g = torch.Generator().manual_seed(0)
    for i in range(60):
        idx = torch.randint(len(words), (80,), generator=g).tolist()
        (folder / f"doc{i:02d}.txt").write_text(" ".join(words[j] for j in idx) + f" {i}.\n")
    return folder


def _stream(text_file, tokens=512, batch=4, ctx=32) -> StreamConfig:
    return StreamConfig(text=TextConfig(source=str(text_file), context_size=ctx, eval_fraction=0.2), tokens=tokens,
                        batch_size=batch)


# ---------------------------------------------------------------- running blocks by hand


@pytest.mark.parametrize("kw", [{}, {"n_heads": 4, "n_kv": 2}])
def test_running_all_blocks_in_order_equals_the_model(byte_tokenizer, kw):
    m = make_tiny_model(tokenizer=byte_tokenizer, **kw)
    toks = m.to_tokens(["the cat sat on the mat", "a dog ran far away!!!"])
    logits, seen = skipping.run_blocks(m, toks, list(range(m.cfg.n_layers)))
    torch.testing.assert_close(logits, m(toks), rtol=0, atol=1e-6)
    _, cache = m.run_with_cache(toks)
    for i, (x_in, x_out) in seen.items():
        torch.testing.assert_close(x_in, cache[f"blocks.{i}.hook_resid_pre"], rtol=0, atol=1e-6)
        torch.testing.assert_close(x_out, cache[f"blocks.{i}.hook_resid_post"], rtol=0, atol=1e-6)


def test_skipping_no_layer_changes_nothing(tiny_model, text_file):
    r = skipping.measure(tiny_model, skipping.SkipConfig(stream=_stream(text_file), skips=[[]], swap_adjacent=False))
    (none,) = r["interventions"]
    assert none["name"] == "skip none"
    assert none["kl"] == pytest.approx(0.0, abs=1e-9)
    assert none["loss"] == pytest.approx(r["clean_loss"], abs=1e-9)
    assert none["top1_agreement"] == 1.0
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in none["resid_rel_diff"])
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in none["resid_cos"])


def test_skipping_a_layer_matches_a_hooked_reference(tiny_model, text_file):
    """Skipping block 1 == TransformerLens forward with blocks.1's output replaced by its input."""
    cfg = skipping.SkipConfig(stream=_stream(text_file, tokens=128, batch=4), skips=[[1]], swap_adjacent=False)
    r = skipping.measure(tiny_model, cfg)
    (eff,) = r["interventions"]
    from saecircuits.layerwise.stream import token_batches
    from saecircuits.model.loading import special_token_ids

    (toks,) = list(token_batches(tiny_model, cfg.stream))
    store: dict = {}
    hooks = [("blocks.1.hook_resid_pre", lambda x, hook: store.__setitem__("pre", x)),
             ("blocks.1.hook_resid_post", lambda x, hook: store["pre"])]
    with torch.no_grad():
        clean = F.log_softmax(tiny_model(toks), -1)
        skipped = F.log_softmax(tiny_model.run_with_hooks(toks, fwd_hooks=hooks), -1)
    keep = ~torch.isin(toks, torch.tensor(special_token_ids(tiny_model)))
    keep[:, 0] = False
    kl = (clean.exp() * (clean - skipped)).sum(-1)[keep].mean()
    assert eff["kl"] == pytest.approx(float(kl), rel=1e-4)
    assert eff["kl"] > 1e-4
    assert eff["resid_rel_diff"][:2] == [None, None]  # only later layers are compared
    assert eff["resid_rel_diff"][2] > 0


def test_swaps_and_ranges_are_named_and_bounded(tiny_model, text_file):
    r = skipping.measure(tiny_model, skipping.SkipConfig(stream=_stream(text_file, tokens=128), skips=[[0, 1], [2]]))
    names = [x["name"] for x in r["interventions"]]
    assert names == ["skip 0-1", "skip 2", "swap 0,1", "swap 1,2"]
    assert r["interventions"][1]["resid_rel_diff"] == [None, None, None] and r["interventions"][1]["kl"] > 0
    assert all(x["kl"] >= 0 and 0 <= x["top1_agreement"] <= 1 for x in r["interventions"])
    assert skipping.parse_layers("10-12,3", 30) == [3, 10, 11, 12]
    with pytest.raises(SaecircuitsError, match="outside"):
        skipping.parse_layers("2-40", 30)


# ---------------------------------------------------------------- logit lens


def test_logit_lens_last_layer_equals_model_logits(tiny_model):
    prompt = "hello there, general"
    r = lens.lens_prompt(tiny_model, prompt, " k")
    logits = tiny_model(prompt)[0]  # [pos, vocab]
    ans = r["answer_id"]
    ref_rank = (logits > logits[:, ans : ans + 1]).sum(-1)
    assert r["rank"][-1] == ref_rank.tolist()
    torch.testing.assert_close(torch.tensor(r["prob"][-1]), logits.softmax(-1)[:, ans], rtol=1e-5, atol=1e-7)
    top = logits[-1].argmax().item()
    assert r["top1_last"][-1] == tiny_model.tokenizer.decode([top])


def test_logit_lens_intermediate_layer_is_ln_final_then_unembed(tiny_model):
    prompt = "abc abc abc"
    r = lens.lens_prompt(tiny_model, prompt, "a")
    _, cache = tiny_model.run_with_cache(prompt)
    resid = cache["blocks.0.hook_resid_post"]
    logits = tiny_model.unembed(tiny_model.ln_final(resid))[0]
    probs = logits.softmax(-1)[:, r["answer_id"]]
    torch.testing.assert_close(torch.tensor(r["prob"][1]), probs, rtol=1e-5, atol=1e-7)


def test_first_top1_and_stable_top1():
    assert lens._first([False, True, False, True, True]) == 1
    assert lens._first_stable([False, True, False, True, True]) == 3
    assert lens._first_stable([True, True]) == 0
    assert lens._first_stable([True, False]) is None


def test_logit_lens_summary_and_files(tiny_model, tmp_path):
    r = lens.logit_lens(tiny_model, ["one two", "three four five"], [" x", " y"])
    assert r["n_prompts"] == 2 and len(r["by_layer"]["mean_prob"]) == tiny_model.cfg.n_layers + 1
    files = figures.write(tmp_path, "lens", r)
    assert json.loads((tmp_path / "lens.json").read_text())["analysis"] == "logit_lens"
    assert all((tmp_path / f"lens.{e}").stat().st_size > 1000 for e in ("png", "pdf")) and len(files["figures"]) == 2
    with pytest.raises(SaecircuitsError, match="answers"):
        lens.logit_lens(tiny_model, ["a"], [])
    with pytest.raises(SaecircuitsError, match="does not exist"):
        lens.read_prompts(str(tmp_path / "missing.csv"))


# ---------------------------------------------------------------- tuned lens


def test_tuned_lens_beats_the_logit_lens_and_round_trips(tiny_model, text_file, tmp_path):
    cfg = tuned.TunedLensConfig(text=TextConfig(source=str(text_file), context_size=32, eval_fraction=0.2),
                                tokens=256 * 40, batch_size_tokens=256, lr=3e-3, eval_tokens=512)
    lens_, summary = tuned.train(tiny_model, cfg)
    ev = summary["eval"]
    n = tiny_model.cfg.n_layers
    assert sum(ev["kl_tuned_lens"][:n]) < 0.8 * sum(ev["kl_logit_lens"][:n])
    assert ev["kl_tuned_lens"][n] == pytest.approx(0.0, abs=1e-5) and ev["kl_logit_lens"][n] == pytest.approx(0.0, abs=1e-5)
    tuned.save(lens_, tmp_path / "tl", summary)
    back = tuned.load(tmp_path / "tl", tiny_model)
    torch.testing.assert_close(back.weight, lens_.weight.detach())
    r = lens.logit_lens(tiny_model, ["one two"], [" x"], back)
    assert r["analysis"] == "tuned_lens"
    other = make_tiny_model(seed=1, tokenizer=tiny_model.tokenizer)
    with pytest.raises(SaecircuitsError, match="trained on"):
        tuned.load(tmp_path / "tl", other)


# ---------------------------------------------------------------- sublayer contributions


def test_contributions_match_a_cache_reference(tiny_model, text_file):
    stream = _stream(text_file, tokens=128, batch=4)
    r = contributions.measure(tiny_model, stream)
    from saecircuits.layerwise.stream import token_batches

    (toks,) = list(token_batches(tiny_model, stream))
    _, cache = tiny_model.run_with_cache(toks)
    keep = torch.ones_like(toks, dtype=torch.bool)
    keep[:, 0] = False
    keep &= ~torch.isin(toks, torch.tensor([0, 1, 2]))
    for layer in range(tiny_model.cfg.n_layers):
        pre = cache[f"blocks.{layer}.hook_resid_pre"][keep]
        mlp = cache[f"blocks.{layer}.hook_mlp_out"][keep]
        attn = cache[f"blocks.{layer}.hook_attn_out"][keep]
        assert r["by_layer"]["mlp_rel_norm"][layer] == pytest.approx(float((mlp.norm(dim=-1) / pre.norm(dim=-1)).mean()), rel=1e-4)
        assert r["by_layer"]["attn_cos"][layer] == pytest.approx(float(F.cosine_similarity(attn, pre, dim=-1).mean()), abs=1e-5)
    assert r["tokens"] == int(keep.sum())


# ---------------------------------------------------------------- probes


def _planted(n=300, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.rand(d, generator=g) * 5 + 3  # unequal scales and offsets
    w = torch.randn(d, generator=g)
    y = ((x - 3) @ w > 0).long()
    return x, y, g


def test_probe_finds_a_planted_linear_signal_and_not_shuffled_labels():
    x, y, g = _planted()
    cfg = probes.ProbeConfig(C=100.0)
    assert probes.probe_accuracy(x, y, 2, cfg)["test_accuracy"] > 0.9
    shuffled = y[torch.randperm(len(y), generator=g)]
    res = probes.probe_accuracy(x, shuffled, 2, cfg)
    assert abs(res["test_accuracy"] - 0.5) < 0.15
    assert res["chance"] == pytest.approx(0.5, abs=0.05)


def test_batched_probes_equal_separate_probes():
    x, y, _ = _planted(n=120, d=10)
    x2 = torch.stack([x, x.flip(-1) * 2, torch.randn_like(x)])
    cfg = probes.ProbeConfig(repeats=1)
    together = probes.probe_accuracy(x2, y, 2, cfg)["test_accuracy"]
    alone = [probes.probe_accuracy(x2[i], y, 2, cfg)["test_accuracy"] for i in range(3)]
    assert together == pytest.approx(alone, abs=1e-9)


def test_split_is_stratified_and_disjoint():
    y = torch.tensor([0] * 10 + [1] * 4 + [2] * 2)
    tr, te = probes.split(y, 0.3, seed=0)
    assert set(tr.tolist()).isdisjoint(te.tolist()) and len(tr) + len(te) == len(y)
    for c in range(3):
        assert (y[te] == c).any() and (y[tr] == c).any()


def test_probes_on_a_csv_task_through_the_model(tiny_model, tmp_path):
    rows = ["text,label"]
    g = torch.Generator().manual_seed(1)
    for i in range(40):
        k = int(torch.randint(3, 9, (1,), generator=g))
        rows.append(f"{'x' * k} {i},zzz" if i % 2 else f"{'q' * k} {i},aaa")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    data = probes.load(tiny_model, str(tmp_path / "d.csv"))
    assert data.classes == ["aaa", "zzz"] and len(data.tokens) == 40
    r = probes.measure(tiny_model, data, probes.ProbeConfig(pool="mean"))
    assert len(r["by_layer"]["test_accuracy"]) == tiny_model.cfg.n_layers + 1
    assert min(r["by_layer"]["test_accuracy"]) > 0.9  # the letter is visible at every depth
    (tmp_path / "bad.csv").write_text("words,label\nhi,1\n")
    with pytest.raises(SaecircuitsError, match="columns text and label"):
        probes.load(tiny_model, str(tmp_path / "bad.csv"))


def test_probes_on_sae_features(tiny_model):
    """SAE features are encoded per token and mean-pooled over text tokens, then probed like a layer."""
    from saecircuits.sae import SAEConfig, build

    sae = build(SAEConfig(architecture="topk", hook="blocks.1.hook_resid_post", d_sae=64, k=8), tiny_model.cfg.d_model)
    texts = [f"{c * 5} {i}" for i in range(20) for c in "ab"]
    data = probes.Labelled([tiny_model.to_tokens(t)[0] for t in texts], [i % 2 for i in range(40)], ["a", "b"], "planted")
    cfg = probes.ProbeConfig(pool="mean", repeats=1)
    r = probes.measure(tiny_model, data, cfg, {"tiny-sae": sae})
    (s,) = r["saes"]
    assert s["hook"] == "blocks.1.hook_resid_post" and s["d_sae"] == 64
    assert s["residual_test_accuracy"] == r["by_layer"]["test_accuracy"][2]
    ref = []
    with torch.no_grad():
        for t in data.tokens:
            _, cache = tiny_model.run_with_cache(t[None])
            ref.append(sae.encode(cache["blocks.1.hook_resid_post"][0, 1:]).mean(0))  # BOS dropped
    expect = probes.probe_accuracy(torch.stack(ref), torch.tensor(data.labels), 2, cfg)
    assert s["test_accuracy"] == pytest.approx(expect["test_accuracy"])
    assert s["train_accuracy"] == pytest.approx(expect["train_accuracy"])


# ---------------------------------------------------------------- linearity


def test_linearity_is_one_for_an_exact_affine_map():
    g = torch.Generator().manual_seed(0)
    d = 16
    x = torch.randn(500, d, generator=g)
    a = torch.randn(d, d, generator=g)
    y = x @ a + torch.randn(d, generator=g)
    fit = linearity.LinearFit(d, d)
    fit.add(x[:300], y[:300])
    fit.solve(ridge=0)
    assert fit.r2_in_sample() == pytest.approx(1.0, abs=1e-9)
    held = linearity.HeldOut(d)
    held.add(fit.errors(x[300:], y[300:]), y[300:])
    assert held.r2() == pytest.approx(1.0, abs=1e-9)
    # an orthogonal map keeps norms, so it stays exactly linear after per-token normalisation
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    fit2 = linearity.LinearFit(d, d)
    fit2.add(linearity._norm(x, "token"), linearity._norm(x @ q, "token"))
    assert fit2.r2_in_sample() == pytest.approx(1.0, abs=1e-9)
    # unrelated targets: nothing to explain out of sample
    noise = linearity.LinearFit(d, d)
    z = torch.randn(500, d, generator=g)
    noise.add(x[:300], z[:300])
    held2 = linearity.HeldOut(d)
    held2.add(noise.errors(x[300:], z[300:]), z[300:])
    assert held2.r2() < 0.1


def test_linearity_on_a_model(tiny_model, text_file, tmp_path):
    cfg = linearity.LinearityConfig(stream=_stream(text_file, tokens=1024, batch=8), eval_tokens=256, top_tokens=3)
    r = linearity.measure(tiny_model, cfg)
    n = tiny_model.cfg.n_layers
    assert len(r["r2_in_sample"]) == n and r["pairs"][0] == "embed->0"
    assert all(-1 < v <= 1 + 1e-9 for v in r["r2_in_sample"] + r["r2_held_out"])
    assert r["eval_tokens"] > 0 and len(r["tokens"]["most_nonlinear"]) <= 3
    figures.write(tmp_path, "linearity", r)
    assert (tmp_path / "linearity.pdf").exists()


# ---------------------------------------------------------------- real model


@pytest.mark.real_model
def test_smollm2_blocks_and_lens(smollm2):
    toks = smollm2.to_tokens("When Mary and John went to the store, John gave a drink to")
    logits, _ = skipping.run_blocks(smollm2, toks, list(range(smollm2.cfg.n_layers)))
    ref = smollm2(toks)
    assert (logits - ref).abs().max() < 1e-3
    r = lens.lens_prompt(smollm2, "When Mary and John went to the store, John gave a drink to", " Mary")
    assert r["final_correct"] and r["rank"][-1][-1] == 0
    ref_p = ref[0, -1].detach().softmax(-1)[r["answer_id"]]
    assert r["prob"][-1][-1] == pytest.approx(float(ref_p), rel=1e-4)
    assert math.isfinite(r["prob"][10][-1])


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "saecircuits", "layers", *args], capture_output=True, text=True)


def test_cli_lists_modes_and_errors_in_one_line(tmp_path):
    out = _cli("--help")
    assert out.returncode == 0
    for mode in ("lens", "tuned-lens", "contributions", "skip", "probe", "linearity"):
        assert mode in out.stdout
    bad = _cli("lens", "--out", str(tmp_path), "--prompt", "a b c")
    assert bad.returncode == 2 and "1 prompt(s) and 0 answer(s)" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.real_model
def test_cli_lens_on_smollm2(tmp_path):
    (tmp_path / "p.csv").write_text('prompt,answer\n"When Mary and John went to the store, John gave a drink to", Mary\n')
    out = _cli("lens", "--out", str(tmp_path / "o"), "--prompts", str(tmp_path / "p.csv"))
    assert out.returncode == 0, out.stderr
    r = json.loads((tmp_path / "o" / "logit_lens.json").read_text())
    assert r["final_accuracy"] == 1.0 and r["prompts"][0]["answer"] == " Mary"
    assert (tmp_path / "o" / "logit_lens.png").exists() and (tmp_path / "o" / "logit_lens.pdf").exists()


def test_task_hookup_for_lens_and_probes(tiny_model):
    pytest.importorskip("saecircuits.circuits.tasks")
    args = lens.task_prompts(tiny_model, "induction", n=4)
    r = lens.logit_lens(tiny_model, **args)
    assert r["source"] == "task:induction" and r["n_prompts"] == 4
    assert len(r["by_layer"]["mean_logit_diff"]) == tiny_model.cfg.n_layers + 1
    p0 = r["prompts"][0]
    with torch.no_grad():
        logits = tiny_model(args["prompts"][0][None])[0, -1]
    ref = logits[args["answers"][0]] - logits[args["wrong"][0]].mean()
    assert p0["logit_diff"][-1] == pytest.approx(float(ref), abs=1e-4)
    data = probes.load(tiny_model, "task:induction", n_per_class=10)
    assert data.classes == ["clean", "corrupted"] and data.labels.count(0) == data.labels.count(1) == 10
    with pytest.raises(SaecircuitsError, match="unknown task labels"):
        probes.load(tiny_model, "task:induction:nope")


def test_report_section_writes_each_analysis(tiny_model, text_file, tmp_path):
    from saecircuits.layerwise import section

    data = probes.Labelled([tiny_model.to_tokens(f"{c * 4} {i}")[0] for i in range(6) for c in "ab"],
                           [i % 2 for i in range(12)], ["a", "b"], "planted")
    r = section(tiny_model, ["one two"], [" x"], stream=_stream(text_file, tokens=128), skip_tokens=128, labelled=data,
                out=str(tmp_path))
    assert set(r) == {"logit_lens", "contributions", "skipping", "probes"}
    for name in r:
        assert json.loads((tmp_path / f"{name}.json").read_text())["model"] == tiny_model.cfg.model_name
        assert (tmp_path / f"{name}.png").exists()


def test_skipping_shares_the_clean_prefix_exactly(tiny_model):
    """A skip run that starts from the clean prefix equals the same order run from the embedding."""
    toks = tiny_model.to_tokens(["abc def ghi", "xyz uvw rst"])
    with torch.no_grad():
        full, _ = skipping.run_blocks(tiny_model, toks, [0, 2])
        _, clean = skipping.run_blocks(tiny_model, toks, [0, 1, 2])
        part, _ = skipping.run_blocks(tiny_model, toks, [2], clean[1][0])
        last_only, _ = skipping.run_blocks(tiny_model, toks, [0, 1])
        from_prefix, _ = skipping.run_blocks(tiny_model, toks, [], clean[1][1])
    torch.testing.assert_close(full, part, rtol=0, atol=1e-6)
    torch.testing.assert_close(last_only, from_prefix, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- typed results


def _round_trips(d: dict) -> None:
    """The typed result gives back exactly the analysis's JSON: same keys, same order, same values."""
    typed = results.parse(d)
    assert type(typed) is results.RESULTS[d["analysis"]]
    assert json.dumps(typed.to_json()) == json.dumps(d)


def test_every_analysis_result_round_trips_through_its_type(tiny_model, text_file, tmp_path):
    from saecircuits.core.files import plain_json
    from saecircuits.sae import SAEConfig, build

    stream = _stream(text_file, tokens=128)
    text = TextConfig(source=str(text_file), context_size=32, eval_fraction=0.2)
    sae = build(SAEConfig(architecture="topk", hook="blocks.1.hook_resid_post", d_sae=16, k=4), tiny_model.cfg.d_model)
    labelled = probes.Labelled([tiny_model.to_tokens(f"{c * 4} {i}")[0] for i in range(6) for c in "ab"],
                               [i % 2 for i in range(12)], ["a", "b"], "planted")
    made = {
        "logit_lens": lens.logit_lens(tiny_model, ["one two", "three four five"], [" x", " y"]),
        "lens_task": lens.logit_lens(tiny_model, **lens.task_prompts(tiny_model, "induction", n=4)),  # with wrong tokens
        "contributions": contributions.measure(tiny_model, stream),
        "skip": skipping.measure(tiny_model, skipping.SkipConfig(stream=stream, skips=[[0, 1], [2], []])),
        "probe": probes.measure(tiny_model, labelled, probes.ProbeConfig(repeats=1), {"tiny-sae": sae}),
        "linearity": linearity.measure(tiny_model, linearity.LinearityConfig(stream=stream, eval_tokens=64, top_tokens=2)),
        "tuned": tuned.train(tiny_model, tuned.TunedLensConfig(text=text, tokens=256, eval_tokens=64))[1],
        "tuned_no_eval": tuned.train(tiny_model, tuned.TunedLensConfig(text=text, tokens=256, eval_tokens=0))[1],
    }
    assert "mean_logit_diff" in made["lens_task"]["by_layer"] and "eval" not in made["tuned_no_eval"]
    assert "warning" in made["linearity"]  # 128 tokens for 33 coefficients: the optional first key
    for name, r in made.items():
        _round_trips(r)
        files = figures.write(tmp_path, name, r)
        assert (tmp_path / f"{name}.json").read_text() == json.dumps(plain_json(r), indent=2, allow_nan=False) + "\n"
        assert len(files["figures"]) == 2


def test_typed_results_keep_missing_keys_missing_and_refuse_unknown_ones():
    partial = {"analysis": "layer_skipping", "model": "m", "halves": {"skip_kl_first_half_median": 0.1},
               "interventions": [{"name": "skip 0", "kind": "skip", "layers": [0], "kl": 0.2}]}
    typed = results.parse(partial)
    assert typed.interventions[0].kl == 0.2 and typed.halves.skip_kl_first_half_median == 0.1
    assert typed.clean_loss is results.ABSENT
    assert typed.to_json() == partial
    with pytest.raises(TypeError, match="unknown field"):
        results.parse({**partial, "clean_los": 1.0})
    no_top1 = {"n": 0, "of": 3, "median": None, "median_label": None, "histogram": {}}
    assert results.DepthSummary.from_json(no_top1).to_json() == no_top1  # no "mean" when no prompt reached top-1
