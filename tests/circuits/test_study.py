"""Circuits: selection, validation by ablation against a direct computation, SAE codes, overlap, files."""

from __future__ import annotations

import json
import math

import networkx as nx
import pytest
import torch
from conftest import make_tiny_model, save_tiny_llama

from saecircuits.circuits import ablation, patching, prompts, tasks, validation
from saecircuits.circuits import study as circuit
from saecircuits.circuits.config import CircuitConfig, SAECodeConfig
from saecircuits.circuits.discovery import head_patching, sae_codes
from saecircuits.circuits.discovery.edge_attribution import edge_attribution
from saecircuits.circuits.discovery.edge_patching import patch_edges
from saecircuits.circuits.results import CircuitResult
from saecircuits.core.files import plain_json

BYTES = range(3, 259)


def _layer_norm(x, ln, eps):
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * ln.w + ln.b


@torch.no_grad()
def _circuit_alone(model, tokens, keep, values):
    """A hand-written forward of an attention-only model in which only the circuit's heads compute;
    every other head's output is its replacement value. Returns logits [n, pos, vocab]."""
    c = model.cfg
    n, P = tokens.shape
    x = model.W_E[tokens] + model.W_pos[:P]
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    for L in range(c.n_layers):
        a = model.blocks[L].attn
        h = _layer_norm(x, model.blocks[L].ln1, c.eps)
        q = torch.einsum("npm,hmd->nphd", h, a.W_Q) + a.b_Q
        k = torch.einsum("npm,hmd->nphd", h, a.W_K) + a.b_K
        v = torch.einsum("npm,hmd->nphd", h, a.W_V) + a.b_V
        scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / c.d_head ** 0.5
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("nhqk,nkhd->nqhd", pattern, v)
        z = torch.where(keep[L][None, None, :, None], z, values[L].expand_as(z))
        x = x + torch.einsum("nphd,hdm->npm", z, a.W_O) + a.b_O
    return _layer_norm(x, model.ln_final, c.eps) @ model.W_U + model.b_U


@pytest.mark.parametrize("kind", ["mean", "zero", "resample"])
def test_ablating_everything_outside_a_circuit_equals_running_the_circuit_alone(kind):
    model = make_tiny_model(n_layers=3, attn_only=True, seed=4)
    task = prompts.induction(model, n=12, half=6, vocab=BYTES)
    patcher = patching.HeadPatcher(model, task, batch_size=5, max_rows=11)
    values = ablation.ablation_values(patcher, kind, seed=2)
    keep = torch.tensor([[True, False, False, True], [False, True, False, False], [False, False, True, True]])
    got = patcher.run(keep[None], values)[0]
    want = task.metric(_circuit_alone(model, task.clean, keep, values)[:, -1:])
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # and the same hand-written forward with every head kept is the model itself
    with torch.no_grad():
        assert torch.allclose(_circuit_alone(model, task.clean, torch.ones(3, 4, dtype=torch.bool), values),
                              model(task.clean), atol=1e-4)


def test_validation_of_the_whole_model_and_of_nothing():
    model = make_tiny_model(n_layers=2, seed=5)
    task = prompts.induction(model, n=10, half=6, vocab=BYTES)
    patcher = patching.HeadPatcher(model, task)
    values = ablation.ablation_values(patcher, "mean")
    everything = torch.ones(2, 4, dtype=torch.bool)
    r = validation.validate_circuit(patcher, everything, values, n_random=3, n_boot=50)
    assert r["faithfulness"]["value"] == pytest.approx(1.0) and r["knockout"]["value"] == pytest.approx(0.0, abs=1e-6)
    lo, hi = r["faithfulness"]["ci"]
    assert lo == pytest.approx(1.0, abs=1e-4) and hi == pytest.approx(1.0, abs=1e-4)  # 1 on every resample
    assert r["random"]["faithfulness_mean"] == pytest.approx(1.0)  # a random circuit of every head is the model
    half = torch.zeros(2, 4, dtype=torch.bool)
    half[0] = True
    r = validation.validate_circuit(patcher, half, values, n_random=4, n_boot=200)
    m = r["metric"]
    want = (m["circuit"]["mean"] - m["all_ablated"]["mean"]) / (m["full"]["mean"] - m["all_ablated"]["mean"])
    assert r["faithfulness"]["value"] == pytest.approx(want, rel=1e-5)
    assert r["faithfulness"]["ci"][0] <= r["faithfulness"]["value"] <= r["faithfulness"]["ci"][1]
    assert len(r["random"]["faithfulness_per_circuit"]) == 4


def test_random_circuits_have_the_size_asked():
    masks = validation.random_circuits(5, 4, size=6, count=30, seed=1)
    assert masks.shape == (30, 5, 4) and (masks.flatten(1).sum(1) == 6).all()
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 20


def test_select_heads_and_overlap():
    scores = torch.tensor([[0.1, -0.9, 0.0], [0.3, 0.05, -0.4]])
    assert head_patching.circuit_heads(head_patching.select_heads(scores, size=2)) == ["0.1", "1.2"]
    assert head_patching.circuit_heads(head_patching.select_heads(scores, threshold=0.25)) == ["0.1", "1.0", "1.2"]
    o = circuit.head_overlap(["0.1", "1.2", "3.4"], ["1.2", "3.4", "5.5", "6.6"], n_heads_total=100)
    assert o["shared"] == ["1.2", "3.4"] and o["jaccard"] == pytest.approx(2 / 5)
    assert o["overlap_coefficient"] == pytest.approx(2 / 3)
    from scipy.stats import hypergeom

    assert o["p_value"] == pytest.approx(sum(hypergeom.pmf(k, 100, 3, 4) for k in (2, 3)))


def test_sae_codes_score_a_head_that_separates_positives_highest():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 8
    noise = torch.randn(3, 2 * n, d, generator=g)
    informative = noise[0].clone()
    informative[:n, 0] += 6.0  # positives sit in their own cluster
    x = torch.stack([informative, noise[1], noise[2]])
    labels = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    codes = sae_codes.train_codes(x, SAECodeConfig(d_sae=8, k=1, steps=200))
    share = sae_codes.unique_code_share(codes, labels)
    assert share[0] > 0.8 and share[0] > share[1:].max() + 0.3
    cmp = sae_codes.compare_scores(torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([30.0, 20.0, 10.0, 5.0]), top=2)
    assert cmp["spearman"] == pytest.approx(1.0) and cmp["top_overlap"] == 2


def test_find_and_validate_writes_the_graph_circuit_and_numbers(tmp_path):
    model = make_tiny_model(n_layers=2, n_kv=2, seed=6)
    task = prompts.induction(model, n=8, half=5, vocab=BYTES)
    cfg = CircuitConfig(size=3, random_circuits=3, bootstrap=50, confirm_edges=5, graph_edges=30,
                        sae_codes=SAECodeConfig(steps=20))
    r = circuit.find_and_validate(model, task, cfg)
    assert r.circuit.size == 3 and len(r.circuit.heads) == 3
    assert r.evaluation["can_do"] is False  # a random model: flagged, and everything still runs
    paths = circuit.write_results(r, tmp_path / "out")
    data = json.loads(paths["results"].read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert data["validation"]["faithfulness"]["value"] == pytest.approx(r.validation["faithfulness"]["value"])
    assert len(data["heads"]["patching_effect"]) == 2 and len(data["heads"]["patching_effect"][0]) == 4
    g = nx.read_graphml(paths["graphml"])
    assert {f"{L}.{h}" for L in range(2) for h in range(4)} <= set(g.nodes)
    assert {n for n, a in g.nodes(data=True) if a.get("kind") == "head" and a["in_circuit"]} == set(r.circuit.heads)
    assert g.number_of_edges() > 0
    for s, t, a in g.edges(data=True):
        assert math.isfinite(a["score"]) and a["type"] in ("q", "k", "v", "direct")
    confirmed = data["edges"]["confirmed"]
    assert len(confirmed) == 5 and all(set(c) == {"sender", "receiver", "eap", "exact"} for c in confirmed)
    assert json.loads(paths["circuit"].read_text())["heads"] == r.circuit.heads
    assert nx.node_link_graph(json.loads(paths["graph_json"].read_text()), edges="edges").number_of_nodes() == g.number_of_nodes()
    # the typed result is its JSON: results.json is to_json() as written, and reads back to the same keys in order
    assert paths["results"].read_text() == json.dumps(plain_json(r.to_json()), indent=2, allow_nan=False) + "\n"
    back = CircuitResult.from_json(data)
    assert json.dumps(back.to_json()) == json.dumps(data)
    assert back.circuit == r.circuit and back.heads == r.heads and back.edges == r.edges and back.sae_codes == r.sae_codes


def test_circuit_command_on_a_local_grouped_query_llama(tmp_path, byte_tokenizer):
    """``saecircuits circuit --method M --ablation A`` on a model folder: one method's curve beside random circuits,
    and its circuit chosen on validation, scored on test under every ablation."""
    import subprocess
    import sys

    folder = save_tiny_llama(tmp_path / "tiny-llama", byte_tokenizer, n_layers=2)
    out = tmp_path / "circuit"
    run = subprocess.run([sys.executable, "-m", "saecircuits", "circuit", "--model", str(folder), "--task", "induction",
                          "--method", "edge-pruning", "--ablation", "resample", "--granularity", "edges",
                          "--train", "8", "--val", "6", "--test", "8", "--random", "3", "--pruning-steps", "2",
                          "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "edge circuit:" in run.stderr and "written:" in run.stderr and "CMD" in run.stdout  # notes, then the table
    methods = json.loads((out / "methods.json").read_text())["methods"]
    assert {(m["name"], m["granularity"], m["ablation"]) for m in methods} == {
        ("edge-pruning", "edges", "resample"), ("random", "edges", "resample")}
    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["edge_circuit"]["method"] == "edge-pruning" and "head_circuit" not in circuit
    assert len(circuit["edge_circuit"]["members"]) == circuit["edge_circuit"]["count"]
    assert all("->" in e for e in circuit["edge_circuit"]["members"])
    assert (out / "report.md").read_text().startswith("# Circuit discovery: induction on ")
    bad = subprocess.run([sys.executable, "-m", "saecircuits", "circuit", "--out", str(tmp_path / "o"), "--ablation",
                          "mean"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown ablation(s) mean" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written


# --- the trained induction model (tests/conftest.py: induction_model) ------------------------------

@pytest.fixture(scope="module")
def induction(induction_model):
    model, facts = induction_model
    task = prompts.induction(model, n=64, half=10, seed=0)
    inductors = [(1, h) for h, s in enumerate(facts["induction_scores"]) if s > 0.5]
    return model, facts, task, patching.HeadPatcher(model, task), inductors


def _mask(heads):
    m = torch.zeros(2, 4, dtype=torch.bool)
    for L, h in heads:
        m[L, h] = True
    return m


def test_the_trained_model_does_the_induction_task(induction):
    model, _, task, _, inductors = induction
    r = tasks.evaluate(model, task)
    assert r["can_do"] and r["clean_accuracy"] > 0.9 and inductors


@pytest.mark.parametrize("kind", ["mean", "zero", "resample"])
def test_ablation_confirms_the_previous_token_to_induction_path(induction, kind):
    model, facts, task, patcher, inductors = induction
    prev, ind = facts["prev_token_head"], facts["induction_head"]
    values = ablation.ablation_values(patcher, kind)
    effect = patcher.normalized_effect(patcher.sweep(values))  # 0: no effect, 1: as if corrupted
    # ablating the previous-token head alone breaks induction; nothing else matters as much
    assert effect[prev] > 0.5 and effect[prev] == effect.max()
    others0 = [effect[0, h] for h in range(4) if (0, h) != prev]
    # each induction head carries part of it (the layer-1 heads are redundant copies of one another) ...
    assert effect[ind] > 0.1 and all(effect[ind] > 3 * abs(o) for o in others0)
    # ... and ablating them together breaks it
    assert patcher.normalized_effect(patcher.run(~_mask(inductors)[None], values))[0] > 0.5
    # the circuit previous-token head + induction heads is faithful; knocking it out breaks the task
    v = validation.validate_circuit(patcher, _mask([prev, *inductors]), values, n_random=20, n_boot=300)
    assert v["faithfulness"]["value"] > 0.9 and v["faithfulness"]["ci"][0] > 0.85
    assert abs(v["knockout"]["value"]) < 0.1
    assert v["random"]["faithfulness_mean"] < v["faithfulness"]["value"] - 0.3
    # without the previous-token head the induction heads alone are not
    alone = validation.validate_circuit(patcher, _mask(inductors), values, n_random=0, n_boot=100)
    assert alone["faithfulness"]["value"] < 0.5


def test_edges_find_the_k_composition_and_exact_patching_confirms_it(induction):
    model, facts, task, patcher, inductors = induction
    prev = "{}.{}".format(*facts["prev_token_head"])
    eap = edge_attribution(model, task)
    span = float(patcher.corrupted_metric.mean() - patcher.clean_metric.mean())
    for L, h in inductors:
        into_k = {s: abs(eap.edge(s, f"{L}.{h}:k")) for s in eap.senders if s != "logits"}
        into_k = {s: v for s, v in into_k.items() if math.isfinite(v)}
        assert max(into_k, key=into_k.get) == prev  # the previous-token head writes the keys
        assert into_k[prev] > abs(eap.edge(prev, f"{L}.{h}:q")) and into_k[prev] > abs(eap.edge(prev, f"{L}.{h}:v"))
    # the weight graph (heads.weight_graph) and the data agree: the top K pairs are previous-token -> induction
    from saecircuits.heads.graph import weight_graph

    _, weights = weight_graph(model)
    agree = circuit.weights_vs_edges(weights, eap, n_heads=4, top=len(inductors))
    assert agree["K"]["top_overlap"] == len(inductors)
    assert agree["K"]["top_pair_weights"].startswith(prev + "->") and agree["K"]["top_pair_edges"].startswith(prev + "->")
    senders = [s for s in eap.senders if s.startswith("0.") or s == "input"]
    L, h = facts["induction_head"]
    exact = patch_edges(model, task, [(s, f"{L}.{h}:k") for s in senders]).mean(1)
    by = dict(zip(senders, exact.tolist()))
    assert by[prev] / span > 0.1  # the edge alone moves the metric a tenth of the way to corrupted
    assert abs(by[prev]) > 10 * max(abs(v) for s, v in by.items() if s != prev)


def test_find_and_validate_finds_the_induction_circuit(induction, tmp_path):
    model, facts, task, _, inductors = induction
    cfg = CircuitConfig(threshold=0.1, random_circuits=10, bootstrap=200, confirm_edges=10,
                        sae_codes=SAECodeConfig(steps=30))
    r = circuit.find_and_validate(model, task, cfg)
    want = {"{}.{}".format(*facts["prev_token_head"])} | {f"{L}.{h}" for L, h in inductors}
    assert set(r.circuit.heads) == want
    assert r.validation["faithfulness"]["value"] > 0.9
    assert r.edges.eap_vs_exact["pearson"] > 0.9
    g = r.graph
    L, h = facts["induction_head"]
    prev = "{}.{}".format(*facts["prev_token_head"])
    assert g.has_edge(prev, f"{L}.{h}") and g.edges[prev, f"{L}.{h}"]["type"] == "k"
    assert g.edges[prev, f"{L}.{h}"]["in_circuit"]


def test_faithfulness_by_size_matches_validation():
    model = make_tiny_model(n_layers=2, seed=7)
    task = prompts.induction(model, n=8, half=5, vocab=BYTES)
    patcher = patching.HeadPatcher(model, task)
    values = ablation.ablation_values(patcher, "zero")
    scores = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    curve = validation.faithfulness_by_size(patcher, scores, [3, 1, 8, 3], values)
    assert [d["size"] for d in curve] == [1, 3, 8]
    assert curve[-1]["faithfulness"] == pytest.approx(1.0) and curve[-1]["knockout"] == pytest.approx(0.0, abs=1e-6)
    v = validation.validate_circuit(patcher, head_patching.select_heads(scores, size=3), values, n_random=0, n_boot=20)
    assert curve[1]["faithfulness"] == pytest.approx(v["faithfulness"]["value"], rel=1e-5)
    assert curve[1]["knockout"] == pytest.approx(v["knockout"]["value"], rel=1e-5, abs=1e-6)
