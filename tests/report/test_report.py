"""The circuit report: every section, figure and table from a synthetic results dict; identical
tables and figures when regenerated from results.json; no external URLs; escaping; collect() on a
synthetic run folder; attention patterns; the command line; W&B logging."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from saecircuits.core.files import write_json
from saecircuits.core.tensors import save_tensors
from saecircuits.report import figures, regenerate, render, tables, write_report
from saecircuits.report.attention import attention_patterns, key_heads
from saecircuits.report.collect import SCHEMA, collect

L, H = 4, 3
MAL_TOKEN = '<script>alert("x")</script>'
MAL_PROMPT = '"><img src=x onerror=alert(1)> & the $x_1$ {50%} #1 ~a^b \\end'
LATEX_NASTY = "a_b & 50% $x$ #1 {y} ~z ^w \\cmd"
HEADS = ["1.2", "2.1", "3.0"]
SCORES = {"1.2": 0.5, "2.1": -0.3, "3.0": 0.8}


def _cells(f: float, random_mean: float) -> dict:
    return {m: {"f": f, "faithful": abs(1 - f) <= 0.1, "random_mean": random_mean, "random_max": random_mean + 0.1}
            for m in ("task", "kl", "prob", "accuracy")}


TEST_CELLS = {"counterfactual": _cells(0.62, 0.03), "mean-clean": _cells(0.97, 0.4), "zero": _cells(0.2, 0.01),
              "resample": {"unavailable": "no <other> prompt"}}
METHODS = [{"name": name, "granularity": "nodes", "ablation": "counterfactual", "cpr": cpr, "cpr_ci": [cpr - 0.1, cpr + 0.1],
            "cmd": cmd, "cmd_ci": [cmd - 0.05, cmd + 0.05], "k_star": k_star, "seconds": 2.0,
            "curve": [{"k": k, "f": min(1.0, k / 10), "ci": [min(1.0, k / 10) - 0.1, min(1.0, k / 10) + 0.1]}
                      for k in (1, 10, 100)]}
           for name, cpr, cmd, k_star in (("eap-ig", 0.8, 0.25, 10), ("random", 0.3, 0.7, None))]


def synthetic_results() -> dict:
    """A small results dict with every section, as collect() returns it."""
    saes = [{"name": f"sae{i}", "label": f"L{2 * i}", "hook": f"blocks.{2 * i}.hook_resid_post",
             "folder_href": f"../train/saes/sae{i}", "architecture": "topk", "d_sae": 64, "k": 4, "lr": 1e-3,
             "tokens": 1000, "l0": 4.0, "explained_variance": 0.6 + 0.1 * i, "fvu": 0.4 - 0.1 * i, "mse": 1.0,
             "dead_latents": i, "dense_latents": 0, "ce_clean": 2.0, "ce_with_sae": 2.5, "ce_zero_ablation": 8.0,
             "ce_loss_recovered": 0.9, "kl_to_clean": 0.2} for i in range(2)]
    curves = {"tokens": [1024, 2048, 4096],
              "saes": {s["name"]: {"loss": [3.0, 2.0, 1.5], "mse": [3.0, 2.0, 1.5], "explained_variance": [0.2, 0.5, 0.6],
                                   "l0": [4.0, 4.0, 4.0], "dead": [0, 0, 1]} for s in saes}}
    features = [{"id": 3, "density": 0.01, "fired": 40, "max_act": 2.5, "mean_act": 1.0, "top_tokens": [MAL_TOKEN, " the"],
                 "href": "../dashboards/sae0/features/3.html"},
                {"id": 9, "density": 0.002, "fired": 8, "max_act": 1.5, "mean_act": 0.9, "top_tokens": ["\n"], "href": None}]
    dashboards = {"saes": [{"name": "sae0", "label": "L0", "hook": "blocks.0.hook_resid_post", "model": "tiny",
                            "href": "../dashboards/sae0/index.html", "n_features": 64, "n_live": 60, "n_dead": 4,
                            "tokens": 1000, "text": "stdlib", "seconds": 1.0, "selection": "largest", "features": features}]}
    sim = {"score": 0.4, "null_mean": 0.3, "null_std": 0.01, "p_value": 0.02, "n_null": 10}
    matching = {"saes": {"L0": "blocks.0.hook_resid_post", "L2": "blocks.2.hook_resid_post"}, "models": {"a": "t", "b": "t"},
                "config": {"seed": 5}, "method": "hungarian", "tokens": 4096, "null": 10, "min_fires": 5, "timing": {},
                "pairs": [{"a": "L0", "b": "L2", "hook_a": "blocks.0.hook_resid_post", "hook_b": "blocks.2.hook_resid_post",
                           "sae_a": "sae0", "sae_b": "sae1", "method": "hungarian", "tokens": 4096, "alive_a": 60,
                           "alive_b": 63, "n_pairs": 60, "n_kept": 50, "n_special_only": 2, "mean_r": 0.41, "median_r": 0.4,
                           "q10_r": 0.2, "q90_r": 0.7, "share_r_gt_0.5": 0.3, "share_r_gt_0.7": 0.1, "share_r_gt_0.9": 0.01,
                           "mean_cos": 0.3, "median_cos": 0.2,
                           "similarity": {"decoder": {"svcca": sim, "cka": {**sim, "score": 0.25}}},
                           "top": [{"a": 3, "b": 5, "r": 0.93, "cos": 0.8, "fires_a": 10, "fires_b": 12,
                                    "top_tokens_a": [MAL_TOKEN], "top_tokens_b": [LATEX_NASTY],
                                    "a_href": "../dashboards/sae0/features/3.html", "b_href": None}]}],
                "similarity": {"mean_r": {"rows": ["L0"], "cols": ["L2"], "value": "mean_r", "source": "decoder",
                                          "values": [[0.41]], "p_values": None},
                               "svcca": {"rows": ["L0"], "cols": ["L2"], "value": "svcca", "source": "decoder",
                                         "values": [[0.4]], "p_values": [[0.005]]}}}
    top_edges = {k: [{"sender": "1.2", "receiver": "3.0", "type": k, "score": 0.2, "z": 5.0 + i,
                      "channels": [{"channel": 0, "share": 0.7, "singular_value": 1.0}]}] for i, k in enumerate("QKV")}
    heads = {"model": "tiny", "n_layers": L, "n_heads": H, "n_key_value_heads": H, "seconds": 0.1, "pairs": 54, "n_nodes": 12,
             "n_edges": 10, "edge_kinds": {"Q": 4, "K": 3, "V": 3}, "config": {"seed": 0}, "note": "folded norms",
             "top_edges": top_edges}
    comp = [{"sender": "1.2", "receiver": "3.0", "type": "V", "score": 0.3, "z": 10.0},
            {"sender": "2.1", "receiver": "3.0", "type": "K", "score": 0.2, "z": 6.0},
            {"sender": "1.2", "receiver": "2.1", "type": "Q", "score": 0.1, "z": 5.0}]
    data_edges = [{"sender": "1.2", "receiver": "3.0", "input": "v"},
                  {"sender": "3.0", "receiver": "logits", "input": None}]
    rows = [{"head": h, "layer": int(h[0]), "index": int(h[2]), "score": SCORES[h], "edges_in": int(h == "3.0"),
             "edges_out": int(h in ("1.2", "3.0")), "role": "V from 1.2"} for h in HEADS]
    node_scores = {"method": "eap-ig", "heads": [[SCORES.get(f"{a}.{b}", 0.0) for b in range(H)] for a in range(L)],
                   "mlps": [0.1 * a for a in range(L)]}
    circuit = {"model": "tiny", "task": "ioi", "config": {"seed": 0, "model": "tiny"}, "n_layers": L, "n_heads": H,
               "n_nodes": L * H + L, "n_edges": 300, "splits": {"train": 4, "val": 4, "test": 8},
               "held_out_templates": ["Then, {A} and {B} went"], "examples": [MAL_PROMPT], "corrupted_examples": ["x"],
               "example_tokens": [0, 1, 2], "heads": HEADS, "mlps": ["mlp0"], "size": 4, "selected_by": "eap-ig",
               "val_f": 0.95, "test": TEST_CELLS, "verdict_flips": True, "head_rows": rows,
               "edge_circuit": {"method": "eap-ig", "count": 30, "val_f": 0.9, "test": TEST_CELLS, "verdict_flips": True},
               "edges": {"circuit": data_edges}, "composition": {"rule": "top 2 per receiver", "edges": comp},
               "methods": METHODS, "seconds": 1.0, "node_scores": node_scores,
               "robustness": [{"name": "eap-ig", "granularity": "nodes", "count": 4, "val_f": 0.95, "cells": TEST_CELLS,
                               "verdict_flips": True}]}
    tokens = ["<bos>", "When", MAL_TOKEN, " gave", "$x$"]
    n = len(tokens)
    pattern = [[1.0 / (q + 1) if k <= q else 0.0 for k in range(n)] for q in range(n)]
    attention = {"tokens": tokens, "heads": [{"head": h, "pattern": pattern} for h in ("3.0", "1.2")],
                 "prompt": MAL_PROMPT, "selection": "top heads"}
    pages = {h: {"head": h, "layer": int(h[0]), "index": int(h[2]), "in_circuit": h in HEADS, "score": SCORES[h],
                 "composition_in": [c for c in comp if c["receiver"] == h],
                 "composition_out": [c for c in comp if c["sender"] == h],
                 "circuit_edges": [e for e in data_edges if h in (e["sender"], e["receiver"])], "href": f"heads/{h}.html"}
             for h in HEADS}
    depth = ["embed", 0, 1, 2, 3]
    layers = {"analyses": {
        "logit_lens": {"analysis": "logit_lens", "model": "tiny", "layers": depth, "n_prompts": 2, "final_accuracy": 0.5,
                       "by_layer": {"mean_prob": [1e-4, 1e-3, 1e-2, 0.1, 0.4], "top1_fraction": [0, 0, 0, 0.5, 0.5]},
                       "prompts": [{"rank": [[r] for r in (50, 20, 5, 0, 0)]}, {"rank": [[r] for r in (60, 30, 9, 2, 1)]}],
                       "first_top1": {"median_label": "2"}},
        "contributions": {"analysis": "sublayer_contributions", "model": "tiny", "layers": [0, 1, 2, 3],
                          "by_layer": {f"{k}_{m}": [0.1 * (i + 1) for i in range(L)] for k in ("attn", "mlp", "block")
                                       for m in ("rel_norm", "cos")},
                          "halves": {"block_rel_norm": {"first_half_median": 0.15, "second_half_median": 0.35}}},
        "skipping": {"analysis": "layer_skipping", "model": "tiny", "layers": [0, 1, 2, 3],
                     "interventions": [{"name": f"skip {i}", "kind": "skip", "layers": [i], "kl": 0.1 * (i + 1),
                                        "contrib_rel_diff": [None if j <= i else 0.1 * j for j in range(L)]} for i in range(L)]
                     + [{"name": "swap 0-1", "kind": "swap", "layers": [0, 1], "kl": 0.2, "contrib_rel_diff": [None] * L}],
                     "halves": {"skip_kl_first_half_median": 0.15, "skip_kl_second_half_median": 0.35}}}}
    meta = {"title": f"report of {MAL_TOKEN}", "run": "run", "model": "tiny", "hub_name": "tiny", "config": {"model": "tiny"},
            "stages": {"train": {"settings": {}, "seconds": 1.0}}, "seeds": {"train.store": 0},
            "versions": {"saecircuits": "0.1.0"}, "date": "2026-01-01T00:00:00+00:00",
            "command": "saecircuits report --from results.json --out DIR"}
    return {"schema": SCHEMA, "meta": meta,
            "training": {"model": "tiny", "tokens": 4096, "steps": 4, "seconds": 1.5, "tokens_per_second": 2730.0,
                         "saes": saes, "curves": curves},
            "dashboards": dashboards, "matching": matching, "heads": heads, "circuit": circuit, "attention": attention,
            "head_pages": pages, "layers": layers,
            "studies": {"studies": [{"study": "Talking Heads (Merullo et al. 2024)", "folder": "talking-heads-tiny",
                                     "model": "tiny", "summary": f"# Talking Heads on tiny\n\nprompt {MAL_TOKEN}\n"}]}}


TABLE_NAMES = {"circuit_heads", "circuit_faithfulness", "circuit_methods", "circuit_robustness", "sae_metrics", "dashboard_features", "matching_pairs", "matched_features",
               "composition_edges", "layer_numbers"}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(synthetic_results(), out)


def test_every_section_figure_and_table(written):
    out, paths = written
    expected = set(figures.FIGURES) | {"layers_logit_lens", "layers_contributions", "layers_skipping"}
    assert set(paths["figures"]) == expected
    for name in expected:
        png, pdf = out / "figures" / f"{name}.png", out / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-", name
    assert set(paths["tables"]) == TABLE_NAMES
    for name in TABLE_NAMES:
        tex = (out / "tables" / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and tex.count("\\begin{tabular}") == 1
        assert (out / "tables" / f"{name}.md").read_text().count("\n|") >= 2
    page = (out / "index.html").read_text()
    md = (out / "report.md").read_text()
    for key, title in render.SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in page
        assert f"## {title}\n" in md
    for name in expected:  # embedded in the HTML, referenced by the Markdown
        assert f'id="fig-{name}"><img' in page and f"](figures/{name}.png)" in md
    assert "Not available" not in page
    assert sorted(p.name for p in (out / "heads").iterdir()) == [f"{h}.html" for h in HEADS]
    assert json.loads((out / "results.json").read_text())["schema"] == SCHEMA


def test_numbers_in_the_report_come_from_the_results(written):
    out, _ = written
    page = (out / "index.html").read_text()
    assert "0.620" in page and "[0.700, 0.900]" in page  # test f; a method's CPR interval
    heads_tex = (out / "tables" / "circuit_heads.tex").read_text()
    body = heads_tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert [r.split(" & ")[0] for r in body] == ["1.2", "2.1", "3.0"]  # by layer
    assert body[2].split(" & ")[1:4] == ["0.800", "1", "1"] and body[1].split(" & ")[1:4] == ["$-$0.300", "0", "0"]
    faith = (out / "tables" / "circuit_faithfulness.md").read_text()
    assert "| counterfactual | task metric | 0.620 | 0.030 | 0.130 | not faithful |" in faith
    assert "| mean-clean | task metric | 0.970 | 0.400 | 0.500 | faithful |" in faith
    assert "depends on the ablation" in page
    robust = (out / "tables" / "circuit_robustness.md").read_text()
    assert "| eap-ig | nodes | 4 | 0.620 | 0.970 | n/a | 0.200 | n/a | yes |" in robust
    head_page = (out / "heads" / "3.0.html").read_text()
    assert "In the circuit of 4 nodes" in head_page and "<b>0.800</b>" in head_page and 'class="att"' in head_page


def test_regenerating_from_results_json_gives_identical_tables_and_figures(written, tmp_path):
    out, _ = written
    again = regenerate(out / "results.json", tmp_path / "again")
    for name in TABLE_NAMES:
        for ext in ("tex", "md"):
            assert (out / "tables" / f"{name}.{ext}").read_bytes() == (tmp_path / "again" / "tables" / f"{name}.{ext}").read_bytes()
    for name, files in again["figures"].items():
        for f in files:
            assert f.read_bytes() == (out / "figures" / f.name).read_bytes(), f.name
    # a link to the run's dashboards still points at the same file from the new folder
    res = json.loads((tmp_path / "again" / "results.json").read_text())
    link = res["dashboards"]["saes"][0]["features"][0]["href"]
    assert (tmp_path / "again" / link).resolve() == (out / "../dashboards/sae0/features/3.html").resolve()
    assert res["head_pages"]["3.0"]["href"] == "heads/3.0.html"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "srcset", "data") and v is not None]


def test_no_external_urls(written):
    out, _ = written
    for f in [out / "index.html", *(out / "heads").iterdir()]:
        text = f.read_text()
        p = _Links()
        p.feed(text)
        assert p.urls, f
        for url in p.urls:
            assert not re.match(r"^[a-z][a-z0-9+.-]*:", url, re.I) or url.startswith("data:image/png;base64,"), url
            assert not url.startswith("//"), url
        assert "http://" not in text and "https://" not in text
        assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
        assert all(u.startswith("data:") for u in re.findall(r'src="([^"]*)"', text))


def test_malicious_tokens_and_prompts_are_escaped(written):
    out, _ = written
    page = (out / "index.html").read_text()
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page or "&lt;script&gt;alert(\\&quot;x\\&quot;)" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    for f in (out / "heads").iterdir():
        assert "<script" not in f.read_text() and "<img src=x" not in f.read_text()
    md = (out / "report.md").read_text()
    assert "<script" not in md and "<img src=x" not in md
    tex = (out / "tables" / "matched_features.tex").read_text()
    assert "\\textless{}script\\textgreater{}" in tex and "<" not in tex.split("\\midrule")[1]


def test_latex_special_characters_are_escaped():
    esc = tables.latex_escape(LATEX_NASTY + "\n\u2192\x01")
    assert esc == ("a\\_b \\& 50\\% \\$x\\$ \\#1 \\{y\\} \\textasciitilde{}z \\textasciicircum{}w \\textbackslash{}cmd"
                   "\\textbackslash{}nU+2192\\textbackslash{}x01")
    escapes = r"\\(textbackslash|textasciitilde|textasciicircum|textless|textgreater|textbar)\{\}|\\[_%&#${}]"
    assert not re.search(r"[_%&#$^~{}\\<>|]", re.sub(escapes, "", tables.latex_escape(MAL_TOKEN + MAL_PROMPT + LATEX_NASTY)))
    tex = tables.to_latex(tables.Table("t_x", "50% of $x_1$", ["a_b", "c"], [[LATEX_NASTY, "-0.5"], ["x", "1.0"]]))
    assert "\\caption{50\\% of \\$x\\_1\\$}" in tex and "\\label{tab:t-x}" in tex and "$-$0.5" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine installed")
def test_latex_tables_compile(written, tmp_path):
    out, _ = written
    inputs = "\n".join(f"\\input{{{p}}}" for p in sorted((out / "tables").glob("*.tex")))
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                      f"{inputs}\n\\end{{document}}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_sections_missing_are_said_not_crashed(tmp_path):
    results = synthetic_results()
    for key in ("training", "dashboards", "matching", "heads", "layers", "attention"):
        results[key] = {"missing": f"no {key} <here>"}
    paths = write_report(results, tmp_path / "r")
    page = paths["html"].read_text()
    assert page.count('<p class="missing">Not available: no ') == 6 and "&lt;here&gt;" in page
    assert "similarity_heatmap" not in paths["figures"] and "attention_patterns" not in paths["figures"]
    assert "composition_edges" not in paths["tables"] and "circuit_heads" in paths["tables"]


# --- collect() on a synthetic run folder ---------------------------------------------------------

def _hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def _index(h: str) -> int:
    layer, head = (int(x) for x in h.split("."))
    return layer * H + head


def make_run(run: Path) -> Path:
    """The files collect() reads, as the demo's stages write them (small, hand-made)."""
    write_json(run / "demo_config.json", {"model": "tiny-model", "task": "ioi", "layers": [0, 2], "out": str(run)})
    for stage in ("train", "dashboards", "matching", "heads", "circuit", "layers"):
        write_json(run / stage / "stage.json", {"settings": {"stage": stage}, "seconds": 1.0, "result": {}})
    write_json(run / "train" / "stage.json", {"settings": {"store": {"seed": 7}, "saes": [{"seed": 3}],
                                                           "out": str(run / "train")}, "seconds": 2.5, "result": {}})
    metrics = {"architecture": "topk", "d_sae": 16, "k": 2, "lr": 1e-3, "tokens": 100, "l0": 2.0, "dead_latents": 1,
               "ce_loss_recovered": 0.9, "kl_to_clean": 0.1}
    write_json(run / "train" / "summary.json", {
        "model": "tiny-model", "tokens": 4096, "steps": 500, "seconds": 1.0, "tokens_per_second": 4096.0,
        "saes": {"A": {**metrics, "path": str(run / "train" / "saes" / "A"), "hook": _hook(0), "explained_variance": 0.75},
                 "B": {**metrics, "path": str(run / "train" / "saes" / "B"), "hook": _hook(2), "explained_variance": 0.5}}})
    write_json(run / "train" / "history.json",
               [{"step": i, "tokens": 8 * (i + 1), "A": {"loss": 1.0 / (i + 1), "explained_variance": i / 500},
                 "B": {"loss": 2.0 / (i + 1)}} for i in range(500)])
    for name, layer in (("A", 0), ("B", 2)):
        d = run / "dashboards" / name
        write_json(d / "summary.json", {"hook": _hook(layer), "model": "tiny-model", "n_features": 16, "n_live": 14,
                                        "n_dead": 2, "tokens": 1000, "seconds": {"total": 1.0}})
        feats = [{"id": i, "dead": i == 0, "fired": 2 if i == 5 else 10, "max_act": float(i), "density": i / 100,
                  "mean_act": 1.0, "top_tokens": [f"t{i}", "x", "y", "z", "w", "v"]} for i in range(16)]
        feats[0]["max_act"], feats[5]["max_act"] = 99.0, 100.0  # dead / rare: never shown
        write_json(d / "stats.json", {"features": feats})
        for i in (15, 14, 7):
            (d / "features").mkdir(parents=True, exist_ok=True)
            (d / "features" / f"{i}.html").write_text("<html></html>")
    m = run / "matching"
    write_json(m / "match.json", {
        "config": {"method": "hungarian", "tokens": 4096, "null": 10, "seed": 5}, "models": {"a": "t", "b": "t"},
        "saes": {"L0": {"hook": _hook(0)}, "L2": {"hook": _hook(2)}}, "timing": {},
        "results": [{"a": "L0", "b": "L2", "hook_a": _hook(0), "hook_b": _hook(2), "method": "hungarian",
                     "summary": {"mean_r": 0.4, "n_pairs": 4, "n_kept": 3, "share_r_gt_0.7": 0.25},
                     "similarity": {"decoder": {"svcca": {"score": 0.5, "null_mean": 0.3, "null_std": 0.01,
                                                          "p_value": 0.02, "n_null": 10, "seconds": 1.0}}}}]})
    write_json(m / "pairs" / "L0__L2" / "table.json", [
        {"a": 1, "b": 7, "r": 0.3, "cos": 0.1, "kept": True, "top_tokens_a": ["p"], "top_tokens_b": ["q"]},
        {"a": 15, "b": 7, "r": 0.9, "cos": 0.8, "kept": True, "top_tokens_a": ["u"], "top_tokens_b": ["v"]},
        {"a": 2, "b": 3, "r": 0.95, "cos": 0.9, "kept": False, "top_tokens_a": [], "top_tokens_b": []}])
    write_json(m / "similarity_mean_r.json", {"rows": ["L0"], "cols": ["L2"], "value": "mean_r", "source": "decoder",
                                              "values": [[0.4]], "p_values": None})
    hd = run / "heads"
    write_json(hd / "summary.json", {"model": "tiny-model", "n_layers": L, "n_heads": H, "n_key_value_heads": H,
                                     "seconds": 0.5, "pairs": 54, "config": {"seed": 9},
                                     "top_edges": {"Q": [{"sender": "0.1", "receiver": "2.0", "type": "Q", "score": 0.3, "z": 8.0}]}})
    write_json(hd / "heads.json", {"graph": {"weights": "folded"}, "nodes": [{"id": f"{a}.{b}"} for a in range(L) for b in range(H)],
                                   "edges": [{"source": "0.1", "target": "2.0", "type": "Q", "score": 0.3, "z": 8.0,
                                              "Q_channels": [{"channel": 1, "share": 0.6, "singular_value": 2.0}]},
                                             {"source": "1.2", "target": "3.0", "type": "V", "score": 0.2, "z": 4.0}]})
    scores = {}
    for k in "QKV":
        scores[k] = torch.full((L * H, L * H), 0.05)
        scores[f"{k}_z"] = torch.full((L * H, L * H), 1.0)  # below the min z everywhere but where set
    for k, s, r, z in (("V", "1.2", "3.0", 10.0), ("Q", "1.2", "3.0", 4.0), ("K", "2.1", "3.0", 6.0),
                       ("Q", "1.2", "2.1", 5.0), ("K", "3.0", "1.2", 50.0)):  # the last: sender not earlier, ignored
        scores[f"{k}_z"][_index(s), _index(r)] = z
        scores[k][_index(s), _index(r)] = z / 100
    save_tensors(hd / "scores.safetensors", scores)
    c = run / "circuit"
    write_json(c / "circuit.json", {
        "task": "ioi", "model": "tiny-model", "splits": {"train": 4, "val": 4, "test": 8}, "held_out_templates": ["t"],
        "head_circuit": {"method": "eap-ig", "count": 4, "val_f": 0.95, "test": TEST_CELLS, "verdict_flips": True,
                         "members": ["mlp0", *HEADS]},
        "heads": HEADS, "mlps": ["mlp0"],
        "edge_circuit": {"method": "eap-ig", "count": 5, "val_f": 0.9, "test": TEST_CELLS, "verdict_flips": True,
                         "members": ["1.2->3.0:v", "3.0->logits", "mlp0->3.0:q", "0.0->1.2:k", "input->1.2:q"]},
        "examples": ["a b"], "corrupted_examples": ["c d"], "example_tokens": [0, 1]})
    write_json(c / "methods.json", {"methods": METHODS, "node_scores": {"eap": {"1.2": 0.5, "3.0": -0.2, "mlp1": 0.3}},
                                    "config": {"seed": 4, "pruning": {"seed": 6}, "model": "tiny-model"},
                                    "graph": {"n_nodes": 16, "n_edges": 300, "n_heads": L * H, "n_layers": L,
                                              "heads_per_layer": H}})
    write_json(c / "robustness.json", {"robustness": []})
    write_json(run / "layers" / "contributions.json", {"analysis": "sublayer_contributions", "model": "tiny-model",
                                                      "layers": [0, 1], "by_layer": {"block_rel_norm": [0.5, 0.4],
                                                                                     "block_cos": [0.1, 0.2]},
                                                      "halves": {"block_rel_norm": {"first_half": float("nan")}},
                                                      "files": {"json": str(run / "layers" / "contributions.json")}})
    write_json(run / "layers" / "notes.json", {"not": "an analysis"})
    return run


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_collect_reads_a_run_folder(tmp_path):
    run = make_run(tmp_path / "run")
    r = collect(run, attention=False, top_features=3)
    assert r["schema"] == SCHEMA and not any(s.startswith(str(tmp_path)) for s in _strings(r))  # no absolute paths
    meta = r["meta"]
    assert meta["model"] == "tiny-model" and meta["config"]["out"] == ".." and meta["stages"]["train"]["seconds"] == 2.5
    assert meta["seeds"] == {"train.store": 7, "train.saes[0]": 3, "matching": 5, "heads": 9, "circuit": 4,
                             "circuit.pruning": 6}
    assert meta["versions"]["torch"] == torch.__version__
    t = r["training"]
    assert [(s["name"], s["label"], s["explained_variance"], s["folder_href"]) for s in t["saes"]] == [
        ("A", "L0", 0.75, "../train/saes/A"), ("B", "L2", 0.5, "../train/saes/B")]
    cur = t["curves"]
    assert len(cur["tokens"]) == 200 and cur["tokens"][0] == 8 and cur["tokens"][-1] == 4000
    assert cur["saes"]["A"]["loss"][-1] == pytest.approx(1 / 500) and cur["saes"]["B"]["explained_variance"][0] is None
    d = r["dashboards"]["saes"][0]
    assert d["href"] == "../dashboards/A/index.html" and d["n_live"] == 14
    assert [f["id"] for f in d["features"]] == [15, 14, 13]  # largest max_act among live, fired >= 5
    assert [f["href"] for f in d["features"]] == ["../dashboards/A/features/15.html", "../dashboards/A/features/14.html", None]
    assert d["features"][0]["top_tokens"] == ["t15", "x", "y", "z", "w"]
    p = r["matching"]["pairs"][0]
    assert (p["sae_a"], p["sae_b"], p["mean_r"], p["n_kept"]) == ("A", "B", 0.4, 3)
    assert [(x["a"], x["b"], x["r"]) for x in p["top"]] == [(15, 7, 0.9), (1, 7, 0.3)]  # kept only, by r
    assert p["top"][0]["a_href"] == "../dashboards/A/features/15.html" and p["top"][0]["b_href"] == "../dashboards/B/features/7.html"
    assert p["top"][1]["a_href"] is None and p["similarity"]["decoder"]["svcca"] == {
        "score": 0.5, "null_mean": 0.3, "null_std": 0.01, "p_value": 0.02, "n_null": 10}
    assert r["matching"]["similarity"]["mean_r"]["values"] == [[0.4]]
    h = r["heads"]
    assert (h["n_nodes"], h["n_edges"], h["edge_kinds"]) == (12, 2, {"Q": 1, "K": 0, "V": 1})
    assert h["top_edges"]["Q"][0]["channels"] == [{"channel": 1, "share": 0.6, "singular_value": 2.0}]
    c = r["circuit"]
    assert [(x["head"], x["score"], x["edges_in"], x["edges_out"]) for x in c["head_rows"]] == [
        ("1.2", 0.5, 0, 1), ("2.1", None, 0, 0), ("3.0", -0.2, 2, 1)]
    assert c["node_scores"]["method"] == "eap" and c["node_scores"]["mlps"] == [None, 0.3, None, None]
    assert (c["size"], c["selected_by"], c["mlps"], c["n_layers"], c["n_heads"]) == (4, "eap-ig", ["mlp0"], L, H)
    assert c["test"]["counterfactual"]["task"]["f"] == 0.62 and c["edge_circuit"]["count"] == 5
    comp = [(e["sender"], e["receiver"], e["type"], e["z"]) for e in c["composition"]["edges"]]
    assert comp == [("1.2", "2.1", "Q", 5.0), ("1.2", "3.0", "V", 10.0), ("2.1", "3.0", "K", 6.0)]
    assert c["edges"]["circuit"] == [{"sender": "1.2", "receiver": "3.0", "input": "v"},  # between circuit nodes only
                                     {"sender": "3.0", "receiver": "logits", "input": None},
                                     {"sender": "mlp0", "receiver": "3.0", "input": "q"}]
    roles = {x["head"]: x["role"] for x in c["head_rows"]}
    assert roles == {"1.2": "V into 3.0", "2.1": "Q from 1.2; K into 3.0", "3.0": "V from 1.2; direct to logits"}
    assert r["attention"] == {"missing": "attention patterns were not computed (--no-attention)"}
    assert set(r["head_pages"]) == {"1.2", "2.1", "3.0", "0.1", "2.0"}
    assert [(e["sender"], e["type"], e["z"]) for e in r["head_pages"]["3.0"]["composition_in"]] == [("1.2", "V", 4.0)]
    assert r["head_pages"]["2.0"]["composition_in"] == [{"sender": "0.1", "receiver": "2.0", "type": "Q", "types": None,
                                                          "score": 0.3, "z": 8.0}]
    lay = r["layers"]["analyses"]
    assert list(lay) == ["contributions"] and lay["contributions"]["by_layer"]["block_rel_norm"] == [0.5, 0.4]
    assert lay["contributions"]["halves"]["block_rel_norm"]["first_half"] is None  # strict JSON
    assert "files" not in lay["contributions"]


def test_collect_without_stages_is_one_clear_error(tmp_path):
    from saecircuits.core.errors import SaecircuitsError

    with pytest.raises(SaecircuitsError, match="holds no finished stage"):
        collect(tmp_path, attention=False)
    with pytest.raises(SaecircuitsError, match="does not exist"):
        collect(tmp_path / "nope", attention=False)


def test_attention_patterns_match_a_full_cache(tiny_model):
    tokens = torch.tensor([[0, 40, 41, 42, 43, 44, 45]])
    got = attention_patterns(tiny_model, tokens, ["2.1", "0.3"])
    _, cache = tiny_model.run_with_cache(tokens)
    assert [h["head"] for h in got["heads"]] == ["2.1", "0.3"] and len(got["tokens"]) == tokens.shape[1]
    for h, (layer, head) in zip(got["heads"], [(2, 1), (0, 3)]):
        ref = cache["pattern", layer][0, head]
        assert torch.allclose(torch.tensor(h["pattern"]), ref, atol=1e-5)
    rows = [{"head": h, "layer": int(h[0]), "index": 0, "edges_in": i, "edges_out": o}
            for h, i, o in (("1.0", 2, 0), ("2.0", 0, 1), ("3.0", 1, 0))]
    assert key_heads({"head_rows": rows}, 2) == ["1.0", "3.0"]  # most edges, then the later layer
    rows = [{**r, "edges_in": None, "edges_out": None, "score": s} for r, s in zip(rows, (0.1, -0.5, 0.2))]
    assert key_heads({"head_rows": rows}, 2) == ["2.0", "3.0"]  # no edge circuit: the largest |score|


def test_cli_report_and_regenerate(tmp_path):
    from typer.testing import CliRunner

    from saecircuits.app.cli import app

    run = make_run(tmp_path / "run")
    for stage in ("train", "matching", "layers"):  # fewer figures to draw; collect() is tested above
        shutil.rmtree(run / stage)
    res = CliRunner().invoke(app, ["report", str(run), "--no-attention"])
    assert res.exit_code == 0, res.output
    assert (run / "report" / "index.html").is_file() and (run / "report" / "tables" / "circuit_heads.tex").is_file()
    res = CliRunner().invoke(app, ["report", "--from", str(run / "report" / "results.json"), "--out", str(tmp_path / "copy")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "copy" / "tables" / "circuit_heads.tex").read_bytes() == (run / "report" / "tables" / "circuit_heads.tex").read_bytes()
    page = (tmp_path / "copy" / "index.html").read_text()
    link = re.search(r'href="([^"]*features/15\.html)"', page).group(1)
    assert (tmp_path / "copy" / link).resolve() == (run / "dashboards" / "A" / "features" / "15.html").resolve()
    res = CliRunner().invoke(app, ["report"])
    assert res.exit_code == 2 and "exactly one" in res.output
    (tmp_path / "bad.json").write_text("{}")
    res = CliRunner().invoke(app, ["report", "--from", str(tmp_path / "bad.json")])
    assert res.exit_code == 2 and "not a report results.json" in res.output


def test_figures_and_tables_are_logged_to_wandb(written, tmp_path, monkeypatch):
    from saecircuits.core.tracking import Run, WandbConfig
    from saecircuits.report import log_report

    out, paths = written
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = Run(WandbConfig(mode="offline", project="t"), tmp_path / "w", {}, job="report")
    results = json.loads((out / "results.json").read_text())
    log_report(run, results, paths["figures"], tables.build_tables(results))  # what write_report(..., run=run) does
    run.finish()
    folder = next((tmp_path / "w" / "wandb").glob("offline-run-*"))
    images = list((folder / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == len(paths["figures"])
    logged = list((folder / "files" / "media" / "table").rglob("*.table.json"))
    assert len(logged) == len(paths["tables"])
    heads = next(json.loads(f.read_text()) for f in logged if "circuit_heads" in str(f))
    assert heads["columns"] == ["head", "score", "edges in", "edges out", "composition in circuit"]
    assert heads["data"][2][:4] == ["3.0", 0.8, 1, 1]
    faith = next(json.loads(f.read_text()) for f in logged if "circuit_faithfulness" in str(f))
    assert faith["columns"][:3] == ["ablation", "metric", "f"] and faith["data"][0][:3] == ["counterfactual", "task", 0.62]


def test_save_figure_keeps_dotted_names_and_same_bytes(tmp_path):
    import matplotlib.pyplot as plt

    from saecircuits.core.files import save_figure

    def draw():
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return fig

    first = save_figure(draw(), tmp_path / "a" / "share_r_gt_0.7")
    assert [p.name for p in first] == ["share_r_gt_0.7.png", "share_r_gt_0.7.pdf"]
    second = save_figure(draw(), tmp_path / "b" / "share_r_gt_0.7")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_a_report_folder_always_holds_one_whole_report(tmp_path, monkeypatch):
    results = synthetic_results()
    for key in ("training", "dashboards", "matching", "layers"):  # fewer figures: the folder is what is tested
        results[key] = {"missing": "not here"}
    out = tmp_path / "report"
    write_report(results, out)
    (out / "figures" / "from_an_earlier_report.png").write_bytes(b"old")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tables, "write_tables", interrupt)
        with pytest.raises(KeyboardInterrupt):
            write_report({**results, "meta": {**results["meta"], "title": "new"}}, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging folder left
    paths = write_report(results, out)  # a finished rerun: nothing of the earlier report survives
    assert not (out / "figures" / "from_an_earlier_report.png").exists()
    assert paths["html"] == out / "index.html" and paths["html"].is_file()
    assert all(p.parent == out / "figures" for files in paths["figures"].values() for p in files)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    from saecircuits.core.errors import SaecircuitsError

    with pytest.raises(SaecircuitsError, match="not a report"):
        write_report(results, mine)
    assert (mine / "notes.txt").read_text() == "a user's file"


def test_the_report_command_names_each_section_it_leaves_out(tmp_path):
    """A run without its heads stage: the console says the section is left out, why, and how to make it."""
    import shutil

    from typer.testing import CliRunner

    from saecircuits.app.cli import app

    run = make_run(tmp_path / "run")
    shutil.rmtree(run / "heads")
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "out"), "--no-attention"])
    assert result.exit_code == 0, result.stderr
    lines = [ln for ln in result.stderr.replace("\n", " ").split("left out:")[1:]]
    said = " ".join(lines)
    assert "heads: the heads stage has not finished" in said and "saecircuits demo --out" in said
    assert "attention: attention patterns were not computed (--no-attention)" in said
    assert "training:" not in said  # present sections are not named


@pytest.mark.parametrize("change,expect", [
    (lambda r: r.update(circuit=[1, 2]), r"field 'circuit' must be an object, it is a list"),
    (lambda r: r.pop("layers"), r"field 'layers' must be an object, it is absent"),
    (lambda r: r["meta"].update(title=7), r"field 'meta.title' must be a str, it is a int"),
    (lambda r: r["training"].update(saes="not a list of SAEs"),
     r"does not hold what a report results.json holds .*the report was not written"),
])
def test_report_from_a_results_json_of_the_wrong_shape_is_one_clear_error(tmp_path, change, expect):
    from saecircuits.core.errors import SaecircuitsError
    from saecircuits.report import regenerate, report_run

    paths = report_run(make_run(tmp_path / "run"), tmp_path / "report", attention=False)
    results = json.loads(paths["results"].read_text())
    change(results)
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(results))
    with pytest.raises(SaecircuitsError, match=expect):
        regenerate(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "index.html").exists()
