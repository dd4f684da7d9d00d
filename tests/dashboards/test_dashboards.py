"""Feature dashboards against brute-force computations on a tiny model; escaping, no network, W&B, resume."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.tensors import load_tensors
from saecircuits.dashboards import build as dash_build
from saecircuits.dashboards import build_dashboards
from saecircuits.dashboards.html import visible
from saecircuits.dashboards.stats import FeatureStats
from saecircuits.dashboards.weights import nearest_features
from saecircuits.model.loading import special_token_ids
from saecircuits.sae import SAEConfig, build
from saecircuits.sae import format as sae_format
from saecircuits.sae.directions import residual_directions
from saecircuits.text.config import TextConfig
from saecircuits.text.source import TextSource

HOOK = "blocks.1.hook_resid_post"
D_SAE, DEAD = 24, 5
CTX, N_CONTEXTS, BATCH = 32, 40, 4
SETTINGS = dict(batch_contexts=BATCH, top_k=5, n_samples=8, text={"context_size": CTX}, checkpoint_every=2)
MALICIOUS = "<script>alert(1)</script>"


def _save_sae(folder, d_in: int = 32, arch: str = "standard"):
    """A small SAE with varied feature densities and one feature that can never fire."""
    torch.manual_seed(0)
    sae = build(SAEConfig(architecture=arch, hook=HOOK, d_sae=D_SAE, k=6), d_in)
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
        sae.b_enc.copy_(torch.linspace(-1.5, 0.5, D_SAE))
        sae.b_enc[DEAD] = -1e4
    return sae_format.save(sae, folder, model_name="tiny")


def _run(model, sae_dir, out, **kw):
    return build_dashboards(sae_dir, "tiny", "bible", out, N_CONTEXTS * CTX, loaded_model=model, progress=False,
                            **{"wandb": "off", **SETTINGS, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """One dashboards run (W&B offline) shared by the read-only tests."""
    root = tmp_path_factory.mktemp("dash")
    sae_dir = _save_sae(root / "sae")
    summary = _run(tiny_model, sae_dir, root / "out", wandb="offline")
    return {"sae_dir": sae_dir, "out": root / "out", "summary": summary}


def _reference(model, sae_dir):
    """Brute force: every context's activations from run_with_cache, the SAE on all of them."""
    sae = sae_format.load(sae_dir)
    tokens = TextSource.for_model(TextConfig(source="bible", context_size=CTX), model).take(N_CONTEXTS)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    f = sae.encode(cache[HOOK].reshape(-1, sae.d_in)).detach().view(N_CONTEXTS, CTX, -1)
    keep = ~torch.isin(tokens, torch.tensor(special_token_ids(model)))
    keep[:, 0] = False
    return tokens, f * keep[:, :, None], keep, sae


def test_top_examples_and_stats_equal_brute_force(built, tiny_model):
    tokens, f, keep, _ = _reference(tiny_model, built["sae_dir"])
    s = load_tensors(built["out"] / "stats.safetensors")
    assert built["summary"]["tokens"] == int(keep.sum()) and built["summary"]["contexts"] == N_CONTEXTS
    fired = (f > 0).sum(dim=(0, 1))
    torch.testing.assert_close(s["fired"], fired)
    torch.testing.assert_close(s["density"], fired.double() / keep.sum())
    torch.testing.assert_close(s["max_act"], f.amax(dim=(0, 1)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s["hist"].sum(1), fired)  # every firing token is in the histogram once
    cmax = f.amax(dim=1)  # [contexts, d]: one example per context, at its maximum
    before = 12
    checked = 0
    for j in range(D_SAE):
        n_fire = int((cmax[:, j] > 0).sum())
        ref_v = cmax[:, j].topk(min(5, n_fire)).values
        valid = s["top_ctx"][j] >= 0
        ctx = s["top_ctx"][j][valid]
        assert len(ctx) == len(ref_v) and len(set(ctx.tolist())) == len(ctx), j
        torch.testing.assert_close(s["top_val"][j][valid], ref_v, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cmax[ctx, j], ref_v, atol=1e-5, rtol=1e-5)  # the right contexts (ties either way)
        for r, c in enumerate(ctx.tolist()):  # the window: tokens and activations around the maximum
            p = int(s["top_pos"][j, r])
            assert float(f[c, p, j]) == pytest.approx(float(ref_v[r]), abs=1e-5)
            lo, hi = max(p - before, 0), min(p + 5, CTX)
            win_tok, win_act = s["top_win_tok"][j, r], s["top_win_act"][j, r]
            assert win_tok[before - (p - lo) : before + hi - p].tolist() == tokens[c, lo:hi].tolist()
            assert (win_tok[: before - (p - lo)] == -1).all() and (win_tok[before + hi - p :] == -1).all()
            torch.testing.assert_close(win_act[before - (p - lo) : before + hi - p], f[c, lo:hi, j], atol=1e-5, rtol=1e-5)
            checked += 1
    assert checked > 3 * D_SAE // 2


def test_quantile_samples_are_firing_contexts(built, tiny_model):
    _, f, _, _ = _reference(tiny_model, built["sae_dir"])
    cmax = f.amax(dim=1)
    ck = FeatureStats(D_SAE, 5, 8)
    ck.load_state_dict(load_tensors(built["out"] / "checkpoint" / "stats.safetensors"))
    summ = ck.summary()
    for j in range(D_SAE):
        n_fire = int((cmax[:, j] > 0).sum())
        valid = summ["smp_ctx"][j] >= 0
        assert int(valid.sum()) == min(8, n_fire)  # a sample without replacement of the firing contexts
        ctx = summ["smp_ctx"][j][valid]
        assert len(set(ctx.tolist())) == len(ctx)
        torch.testing.assert_close(summ["smp_val"][j][valid], cmax[ctx, j], atol=1e-5, rtol=1e-5)
        assert (summ["smp_val"][j][valid].diff() <= 0).all()  # sorted for the quantile bands


def test_weight_stats_equal_brute_force(built, tiny_model):
    s = load_tensors(built["out"] / "stats.safetensors")
    sae = sae_format.load(built["sae_dir"])
    logits = (sae.W_dec @ tiny_model.W_U).detach()
    logits -= logits.mean(dim=1, keepdim=True)
    assert torch.equal(s["pos_ids"], logits.topk(10).indices)
    assert torch.equal(s["neg_ids"], logits.topk(10, largest=False).indices)
    torch.testing.assert_close(s["pos_vals"], logits.topk(10).values, atol=1e-5, rtol=1e-4)
    W = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    cos = W @ W.T
    cos.fill_diagonal_(-2)
    assert torch.equal(s["nb_ids"], cos.topk(10).indices)
    torch.testing.assert_close(s["nb_cos"], cos.topk(10).values)


def test_dead_feature_is_reported_as_dead(built):
    out = built["out"]
    stats = json.loads((out / "stats.json").read_text())
    dead = [f["id"] for f in stats["features"] if f["dead"]]
    assert DEAD in dead and built["summary"]["n_dead"] == len(dead) < D_SAE
    page = (out / "features" / f"{DEAD}.html").read_text()
    assert "never fired" in page and "Top activations" not in page and "Logits raised" in page
    live = next(f["id"] for f in stats["features"] if not f["dead"])
    assert "Top activations" in (out / "features" / f"{live}.html").read_text()
    index = (out / "index.html").read_text()
    assert re.search(rf'<tr class=deadrow><td class="n" data-v="{DEAD}">', index)
    exported = [f["feature_index"] for p in (out / "neuronpedia").glob("batch-*.json")
                for f in json.loads(p.read_text())["features"]]
    assert DEAD not in exported and live in exported


def test_html_has_no_external_url(built):
    pages = [built["out"] / "index.html", *sorted((built["out"] / "features").glob("*.html"))]
    assert len(pages) == D_SAE + 1
    for p in pages:
        text = p.read_text()
        assert "http://" not in text and "https://" not in text, p
        assert not re.search(r"""(src|href)\s*=\s*["']?//""", text), p
        assert text.count("<script") == (1 if p.name == "index.html" else 0)  # only our own inline script


def test_neuronpedia_layout(built):
    batch = json.loads((built["out"] / "neuronpedia" / "batch-0.json").read_text())
    assert {"model_id", "layer", "sae_set", "features"} <= batch.keys() and batch["layer"] == 1
    feat = batch["features"][0]
    for key in ("feature_index", "pos_str", "pos_values", "neg_str", "neg_values", "frac_nonzero",
                "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
                "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt", "dataset", "activations"):
        assert key in feat, key
    top = feat["activations"][0]
    assert top["bin_min"] == -1 and len(top["tokens"]) == len(top["values"]) > 0
    assert max(top["values"]) == pytest.approx(top["bin_max"], abs=1e-3)
    assert sum(feat["freq_hist_data_bar_heights"]) == round(feat["frac_nonzero"] * built["summary"]["tokens"])


def test_wandb_offline_run_holds_table_and_pages(built):
    s = built["summary"]
    assert s["wandb_mode"] == "offline" and s["wandb_sync"].startswith("wandb sync ")
    runs = list((built["out"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"dashboards/features" in log and b"dashboards/log10_density" in log
    tables = list((runs[0] / "files" / "media" / "table").rglob("*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:4] == ["feature", "dead", "density", "max_act"] and len(table["data"]) == D_SAE
    assert [r[1] for r in table["data"]].count(True) == s["n_dead"]
    pages = list((runs[0] / "files" / "media" / "html").rglob("*.html"))
    assert len(pages) == 1 and 'id="f0"' in pages[0].read_text() and f'id="f{D_SAE - 1}"' in pages[0].read_text()


def test_tokens_are_escaped_and_whitespace_visible(tmp_path, tiny_model, monkeypatch):
    real = dash_build.token_strings

    def malicious(tokenizer, summ, weights):
        return {i: MALICIOUS if i % 3 == 0 else s for i, s in real(tokenizer, summ, weights).items()}

    monkeypatch.setattr(dash_build, "token_strings", malicious)
    out = tmp_path / "out"
    _run(tiny_model, _save_sae(tmp_path / "sae"), out)
    pages = [out / "index.html", *(out / "features").glob("*.html")]
    texts = [p.read_text() for p in pages]
    assert not any("<script>alert" in t for t in texts)
    assert sum("&lt;script&gt;alert(1)&lt;/script&gt;" in t for t in texts) > D_SAE // 2
    exported = (out / "neuronpedia" / "batch-0.json").read_text()
    assert MALICIOUS in json.loads(exported)["features"][0]["pos_str"] + sum(
        (a["tokens"] for f in json.loads(exported)["features"] for a in f["activations"]), [])
    assert visible("\n") == '<span class="w">↵</span>' and visible("  ") == '<span class="w">··</span>'
    assert visible("a\tb") == 'a<span class="w">⇥</span>b' and "U+000B" in visible("\x0b")
    assert visible('"&') == "&quot;&amp;"


def test_resume_after_interruption_equals_uninterrupted(tmp_path, tiny_model, monkeypatch):
    sae_dir = _save_sae(tmp_path / "sae")
    full = _run(tiny_model, sae_dir, tmp_path / "full")
    calls = {"n": 0}
    real_update = FeatureStats.update

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # killed in batch 6: batches 1-4 are checkpointed (every 2)
            raise KeyboardInterrupt
        return real_update(self, *a, **kw)

    monkeypatch.setattr(FeatureStats, "update", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model, sae_dir, tmp_path / "resumed")
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["batches"] == 4 and not state["done"]

    calls["n"] = -100  # counts the batches the resumed run computes
    resumed = _run(tiny_model, sae_dir, tmp_path / "resumed")
    assert resumed["resumed_from_batch"] == 4
    assert calls["n"] + 100 == N_CONTEXTS // BATCH - 4  # finished batches are not redone
    for name in ("checkpoint/stats.safetensors", "stats.safetensors"):
        a, b = load_tensors(tmp_path / "full" / name), load_tensors(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert (tmp_path / "full" / "index.html").read_text() == (tmp_path / "resumed" / "index.html").read_text()
    assert full["tokens"] == resumed["tokens"]

    again = _run(tiny_model, sae_dir, tmp_path / "resumed")  # a finished pass is reused, not rerun
    assert calls["n"] + 100 == N_CONTEXTS // BATCH - 4 and again["n_dead"] == full["n_dead"]
    with pytest.raises(SaecircuitsError, match="another run"):
        _run(tiny_model, sae_dir, tmp_path / "resumed", top_k=3)


def test_streaming_stats_equal_one_batch(tiny_model):
    """Merging many small batches gives the same top examples as one pass over everything."""
    g = torch.Generator().manual_seed(0)
    B, T, d = 24, 16, 10
    f = torch.relu(torch.randn(B, T, d, generator=g) - 1.0)
    f[:, :, 3] = 0  # a dead feature
    tokens = torch.randint(0, 100, (B, T), generator=g)
    one = FeatureStats(d, top_k=4, n_samples=5, before=3, after=2)
    one.update(f, tokens, B * T, 0, 0)
    many = FeatureStats(d, top_k=4, n_samples=5, before=3, after=2)
    for i in range(0, B, 5):
        many.update(f[i : i + 5], tokens[i : i + 5], f[i : i + 5].numel() // d, i, i)
    a, b = one.summary(), many.summary()
    for k in ("fired", "max_act", "top_val", "top_ctx", "top_pos", "top_win_tok", "top_win_act", "hist"):
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert b["dead"].tolist() == [j == 3 for j in range(d)]
    ref = f.amax(dim=1).T.topk(4, dim=1)
    live = torch.arange(d) != 3
    torch.testing.assert_close(b["top_val"][live], ref.values[live])
    assert torch.equal(b["top_ctx"][live], ref.indices[live]) and (b["top_ctx"][3] == -1).all()


def test_hook_z_directions_go_through_W_O(tiny_model):
    W_dec = torch.randn(7, tiny_model.cfg.n_heads * tiny_model.cfg.d_head)
    dirs = residual_directions(W_dec, "blocks.1.attn.hook_z", tiny_model)
    ref = torch.einsum("fhd,hdm->fm", W_dec.view(7, tiny_model.cfg.n_heads, -1), tiny_model.blocks[1].attn.W_O.detach())
    torch.testing.assert_close(dirs, ref)
    head = residual_directions(W_dec[:, : tiny_model.cfg.d_head], "blocks.1.attn.hook_z:2", tiny_model)
    torch.testing.assert_close(head, W_dec[:, : tiny_model.cfg.d_head] @ tiny_model.blocks[1].attn.W_O[2].detach())
    assert residual_directions(W_dec, "blocks.1.attn.hook_q", tiny_model) is None
    ids, cos = nearest_features(torch.eye(3)[[0, 0, 1]])
    assert ids[0, 0] == 1 and math.isclose(float(cos[0, 0]), 1.0)


def test_wrong_model_for_sae_is_one_clear_error(tmp_path, tiny_model):
    sae_dir = _save_sae(tmp_path / "sae", d_in=48)
    with pytest.raises(SaecircuitsError, match="width 48"):
        _run(tiny_model, sae_dir, tmp_path / "out")
    from typer.testing import CliRunner

    from saecircuits.app.cli import app

    res = CliRunner().invoke(app, ["dashboards", "--sae", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--wandb", "off"])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.real_model
def test_smollm2_dashboards(tmp_path, smollm2):
    torch.manual_seed(0)
    sae = build(SAEConfig(architecture="topk", hook="blocks.6.hook_resid_post", d_sae=64, k=8), 576)
    sae_dir = sae_format.save(sae, tmp_path / "sae", model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    s = build_dashboards(sae_dir, "smollm2-135m", "stdlib", tmp_path / "out", 512, loaded_model=smollm2,
                         progress=False, wandb="off", batch_contexts=2)
    assert s["n_features"] == 64 and s["n_live"] > 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    live = next(f for f in stats["features"] if not f["dead"])
    assert live["top_tokens"] and all(isinstance(t, str) for t in live["top_tokens"])
    assert "Ġ" not in "".join(t for f in stats["features"] for t, _ in f["pos_logits"])  # decoded text, not BPE symbols


def test_outputs_written_in_chunks_equal_one_chunk(tmp_path, tiny_model, monkeypatch):
    sae_dir = _save_sae(tmp_path / "sae")
    _run(tiny_model, sae_dir, tmp_path / "one", neuronpedia_batch=5)
    import functools

    monkeypatch.setattr(dash_build, "write_outputs", functools.partial(dash_build.write_outputs, chunk=8))
    _run(tiny_model, sae_dir, tmp_path / "chunked", neuronpedia_batch=5, wandb_features_per_page=4)
    names = ["index.html", "stats.json", *(f"features/{i}.html" for i in range(D_SAE)),
             *(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one" / "neuronpedia").glob("*.json"))]
    assert len(names) > D_SAE + 4
    for name in names:
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "chunked" / name).read_text(), name
