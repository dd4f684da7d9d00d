"""The masked forward pass, the evaluator and the discovery methods on tiny models built here.

Exactness: no mask is the model; every edge kept is the model; every edge cut under counterfactual
ablation is the counterfactual run; node masks equal their edge form. Planted circuit: the trained
induction model (previous-token head -> induction heads' keys) is found by every method.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from saecircuits.circuits import prompts
from saecircuits.circuits.computation_graph import ComputationGraph
from saecircuits.circuits.config import PruningConfig
from saecircuits.circuits.discovery.attribution import edge_attribution, node_attribution
from saecircuits.circuits.discovery.edge_pruning import edge_pruning, expected_kept
from saecircuits.circuits.discovery.greedy import greedy_circuits
from saecircuits.circuits.discovery.node_patching import node_patching
from saecircuits.circuits.evaluation import ABLATIONS, Evaluator, derangement
from saecircuits.circuits.faithfulness import faithfulness
from saecircuits.circuits.masked_forward import MaskedForward
from saecircuits.circuits.sweep import top_k
from saecircuits.core.errors import SaecircuitsError

SHAPES = {
    "layernorm": {},
    "grouped-query": {"n_kv": 2},
    "attention-only": {"attn_only": True},
    "parallel": {"parallel_attn_mlp": True},
    "post-norm RMS": {"normalization_type": "RMS", "use_normalization_before_and_after": True},
}


@pytest.fixture(scope="module", params=list(SHAPES))
def shaped(request, byte_tokenizer):
    model = make_tiny_model(tokenizer=byte_tokenizer, **SHAPES[request.param])
    g = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randint(3, 250, (5, 9), generator=g), torch.randint(3, 250, (5, 9), generator=g)
    return model, MaskedForward(model), clean, corrupted


def test_graph_counts_mib_edges_and_grouped_key_value_receivers(byte_tokenizer):
    g = ComputationGraph.of(make_tiny_model(n_layers=2, n_heads=4, n_kv=2, tokenizer=byte_tokenizer))
    # senders: input + 2 x (4 heads + mlp); receivers: 2 x (4 q + 2 k + 2 v + mlp) + logits
    assert len(g.senders) == 11 and len(g.receivers) == 19
    assert g.receivers[4:8] == ("0.0:k", "0.1:k", "0.0:v", "0.1:v")
    # layer 0 attention reads the input only; its MLP the input and the 4 heads; layer 1 all before it
    per_layer = 1 * 8 + 5 * 1 + 6 * 8 + 10 * 1
    assert g.n_edges == per_layer + 11  # + every sender -> logits
    assert not g.valid[g.head_senders(0), g.receiver_block(0)][:, :8].any()  # no head feeds its own layer
    assert g.valid[g.head_senders(0), g.receiver_block(0).stop - 1].all()  # ... but its MLP
    names = g.edge_names()
    assert len(names) == g.n_edges and "0.3->1.1:k" in names and "mlp1->logits" in names


@torch.no_grad()
def test_masked_runs_are_exact_at_both_ends(shaped):
    model, f, clean, corrupted = shaped
    g, pos = f.graph, (-2, -1)
    ablated = f.sender_outputs(corrupted)
    want, want_corrupted = model(clean)[:, list(pos)], model(corrupted)[:, list(pos)]
    torch.testing.assert_close(f.run(clean, pos)[0], want, atol=1e-4, rtol=0)
    torch.testing.assert_close(f.run(clean, pos, ablated, edges=g.valid[None])[0], want, atol=1e-4, rtol=0)
    none = torch.zeros(1, *g.valid.shape, dtype=torch.bool)
    torch.testing.assert_close(f.run(clean, pos, ablated, edges=none)[0], want_corrupted, atol=1e-4, rtol=0)
    # the senders' outputs add up to the stream: their sum through the final norm gives the logits
    nodes = torch.rand(3, g.n_nodes, generator=torch.Generator().manual_seed(0)) > 0.5
    by_nodes = f.run(clean, pos, ablated, nodes=nodes)
    torch.testing.assert_close(by_nodes, f.run(clean, pos, ablated, edges=g.edge_mask_of_nodes(nodes)), atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(by_nodes[1], f.run(clean, pos, ablated, nodes=nodes[1:2])[0], atol=1e-5, rtol=0)
    # a cut that changes something changes the output
    assert (by_nodes[0] - want).abs().max() > 1e-3


@torch.no_grad()
def test_a_single_cut_edge_changes_only_its_receiver(byte_tokenizer):
    model = make_tiny_model(n_layers=2, attn_only=True, tokenizer=byte_tokenizer)
    f = MaskedForward(model)
    g = f.graph
    clean, corrupted = torch.randint(3, 250, (2, 7)), torch.randint(3, 250, (2, 7))
    ablated = f.sender_outputs(corrupted)
    # cutting input -> logits alone = clean logits with the embeddings' change subtracted before the final norm
    m = g.valid.clone()
    m[0, -1] = False
    got = f.run(clean, (-1,), ablated, edges=m[None])[0]
    stream = f.sender_outputs(clean).sum(0)
    from saecircuits.model.unembed import unembed

    want = unembed(model, (stream - (f.sender_outputs(clean)[0] - ablated[0]))[:, [-1]])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_masks_refuse_mixed_or_missing_inputs(shaped):
    _, f, clean, _ = shaped
    g = f.graph
    with pytest.raises(SaecircuitsError, match="not both"):
        f.run(clean, (-1,), torch.zeros(1), edges=g.valid[None], nodes=torch.ones(1, g.n_nodes))
    with pytest.raises(SaecircuitsError, match="ablated run"):
        f.run(clean, (-1,), edges=g.valid[None])


def test_head_granularity_keeps_every_mlp(byte_tokenizer):
    g = ComputationGraph.of(make_tiny_model(tokenizer=byte_tokenizer))  # 3 layers of 4 heads and an MLP
    assert (g.n_units("heads"), g.n_units("nodes"), g.n_units("edges")) == (12, 15, g.n_edges)
    assert g.unit_names("heads") == [n for n in g.nodes if not n.startswith("mlp")] and len(g.unit_names("nodes")) == 15
    heads = torch.zeros(2, 12, dtype=torch.bool)
    heads[0, 5] = True
    nodes = g.node_masks("heads", heads)
    assert nodes.shape == (2, 15) and nodes[:, ~g.head_nodes()].all()  # every MLP kept
    assert nodes[:, g.head_nodes()].equal(heads)
    z = torch.rand(12, requires_grad=True)  # edge pruning's masks: gradients reach the head entries only
    g.node_masks("heads", z).sum().backward()
    assert torch.equal(z.grad, torch.ones(12))
    assert g.node_masks("nodes", nodes) is nodes


def test_derangement_moves_every_prompt():
    for n in (2, 3, 7, 64):
        for seed in range(5):
            p = derangement(n, seed)
            assert sorted(p.tolist()) == list(range(n)) and not bool((p == torch.arange(n)).any())


# --- the trained induction model: a planted circuit -------------------------------------------------

@pytest.fixture(scope="module")
def planted(induction_model):
    model, facts = induction_model
    task = prompts.induction(model, n=48, half=10, seed=0)
    f = MaskedForward(model)
    test = Evaluator(f, task.subset(torch.arange(24, 48)), task.subset(torch.arange(24)), batch_size=24)
    # sender indices (attention-only: input, then 4 heads a layer)
    inductors = [f.graph.head_senders(1).start + h for h, s in enumerate(facts["induction_scores"]) if s > 0.5]
    prev = f.graph.head_senders(0).start + facts["prev_token_head"][1]
    return model, facts, task.subset(torch.arange(24)), f, test, prev, inductors


@pytest.mark.parametrize("kind", ABLATIONS)
def test_empty_circuit_is_0_and_full_model_is_1_exactly(planted, kind):
    _, _, _, f, test, _, _ = planted
    g = f.graph
    vals = test.run(kind, edges=torch.stack([torch.zeros_like(g.valid), g.valid]))
    for metric, v in vals.items():
        if metric == "accuracy" and float(test.full[metric].mean()) == float(test.empty(kind)[metric].mean()):
            continue
        fv = faithfulness(v, test.empty(kind)[metric], test.full[metric])
        assert float(fv[0]) == 0.0 and abs(float(fv[1]) - 1.0) < 1e-6, metric


def test_counterfactual_ablation_of_everything_is_the_counterfactual_run(planted):
    model, _, _, _, test, _, _ = planted
    with torch.no_grad():
        logits = model(test.test.corrupted)[:, list(test.test.positions)]
    torch.testing.assert_close(test.empty("counterfactual")["task"], test.test.metric(logits), atol=1e-4, rtol=0)


def test_mean_ablation_needs_prompts_of_one_length(planted):
    model, _, task, f, _, _, _ = planted
    longer = prompts.induction(model, n=4, half=12, seed=1)
    if longer.clean.shape[1] == task.clean.shape[1]:
        pytest.skip("same length")
    ev = Evaluator(f, longer, task, batch_size=4)
    with pytest.raises(SaecircuitsError, match="one length"):
        ev.ablated("mean-clean")


def test_eap_is_the_mask_gradient(planted):
    _, _, task, f, _, prev, inductors = planted
    g = f.graph
    sub = task.subset(torch.arange(8))
    scores = edge_attribution(f, sub)
    # a first-order estimate: cutting an edge by a small step eps changes the metric by about -eps * score
    ablated = f.sender_outputs(sub.corrupted)
    r = g.receivers.index(g.senders[inductors[0]] + ":k")
    eps = 1e-3
    m = g.valid.float().clone()
    m[prev, r] = 1 - eps
    with torch.no_grad():
        base = sub.metric(f.run(sub.clean, sub.positions)[0]).mean()
        moved = sub.metric(f.run(sub.clean, sub.positions, ablated, edges=m[None])[0]).mean()
    assert abs(float(base - moved) / eps - float(scores[prev, r])) < 0.05 * abs(float(scores[prev, r])) + 1e-3


def test_every_method_finds_the_planted_circuit(planted):
    _, _, task, f, test, prev, inductors = planted
    g = f.graph
    # nodes: the previous-token head and the induction heads lead each ranking
    want = {prev - 1, *(i - 1 for i in inductors)}  # node index = sender index - 1
    patching = node_patching(f, task, batch_size=24)
    eap = edge_attribution(f, task, ig_steps=5)
    for scores in (patching, node_attribution(eap)):
        assert set(top_k(scores, len(want)).nonzero()[:, 0].tolist()) == want
    # edges: previous-token head -> each induction head's key is among the top edges of EAP-IG
    top = top_k(g.edges_flat(eap), 3 * len(want) + 2)
    names = [n for n, keep in zip(g.edge_names(), top) if keep]
    for i in inductors:
        assert f"{g.senders[prev]}->{g.senders[i]}:k" in names
    # edge pruning at node granularity keeps the planted heads first
    res = edge_pruning(f, task, PruningConfig(targets=(0.4,), steps=60, batch_size=12, lr=0.1), "nodes")
    assert set(top_k(res.ranking(0.4), len(want), absolute=False).nonzero()[:, 0].tolist()) == want
    # greedy from the patching ranking: its circuit of that size is faithful on the test prompts
    found = greedy_circuits(test, patching, max_size=len(want), pool=6)
    mask = found[len(want)]
    v = test.run("counterfactual", nodes=mask[None])["task"]
    assert float(faithfulness(v, test.empty("counterfactual")["task"], test.full["task"])[0]) > 0.8


def test_greedy_keeps_fixed_nodes_and_does_not_count_them(planted):
    _, _, task, f, test, prev, inductors = planted
    want = {prev - 1, *(i - 1 for i in inductors)}
    other = next(n for n in range(f.graph.n_nodes) if n not in want)
    fixed = torch.zeros(f.graph.n_nodes, dtype=torch.bool)
    fixed[other] = True
    found = greedy_circuits(test, node_patching(f, task, batch_size=24), max_size=len(want), pool=6, fixed=fixed)
    assert min(found) == 0 and max(found) <= len(want)
    for size, mask in found.items():
        assert bool(mask[other]) and int(mask.sum()) == size + 1  # the fixed node: in every circuit, never counted


def test_greedy_under_several_ablations_minimises_the_largest_gap(planted):
    """With two ablations, each size's circuit is the one met whose larger |1 - f| is least: never worse on that
    number than the circuit greedy finds for the counterfactual alone."""
    _, _, task, f, test, prev, inductors = planted
    want = {prev - 1, *(i - 1 for i in inductors)}
    patching = node_patching(f, task, batch_size=24)
    both = ("counterfactual", "mean-clean")

    def worst(mask: torch.Tensor) -> float:
        return max(abs(1 - float(faithfulness(test.run(a, nodes=mask[None])["task"], test.empty(a)["task"],
                                              test.full["task"])[0])) for a in both)

    one = greedy_circuits(test, patching, max_size=len(want), pool=6)
    two = greedy_circuits(test, patching, max_size=len(want), pool=6, ablations=both)
    assert set(two) == set(one)
    assert worst(two[len(want)]) <= worst(one[len(want)]) + 1e-6


def test_pruning_without_a_penalty_keeps_every_edge_and_the_full_model(planted):
    _, _, task, f, test, _, _ = planted
    res = edge_pruning(f, task, PruningConfig(targets=(1.0,), steps=10, penalty=0.0, batch_size=8, init=3.0), "edges")
    # the masks trained (most moved) and, with only the KL to the full model to lower, rose on average
    moved = res.stages[-1] - 3.0
    assert float((moved != 0).float().mean()) > 0.5 and float(moved.mean()) > 0.02
    kept = expected_kept(res.stages[-1])
    assert float(kept.min()) > 0.9
    # the deterministic mask at these log_alphas is 1 everywhere: the full model
    z = (torch.sigmoid(res.stages[-1]) * 1.2 - 0.1).clamp(0, 1)
    assert bool((z == 1).all())
    v = test.run("counterfactual", edges=f.graph.edges_unflat(z > 0.5, False)[None])["task"]
    torch.testing.assert_close(v[0], test.full["task"], atol=1e-4, rtol=0)


def test_a_run_from_a_circuits_stream_equals_the_whole_run(planted):
    _, _, _, f, test, prev, inductors = planted
    g = f.graph
    current = torch.zeros(g.n_nodes, dtype=torch.bool)
    current[[prev - 1, inductors[0] - 1]] = True
    streams = test.streams("counterfactual", current)
    assert streams.shape == (g.n_layers, len(test.test), test.test.clean.shape[1], f.model.cfg.d_model)
    flipped = current[None].repeat(2, 1)
    flipped[0, inductors[0] - 1] = False  # a layer-1 head dropped: the run agrees with `current` before block 1
    flipped[1, prev - 1] = False  # the previous-token head dropped: it does not
    whole = test.run("counterfactual", nodes=flipped[:1])["task"]
    torch.testing.assert_close(test.run("counterfactual", nodes=flipped[:1], start=(1, streams[1]))["task"], whole,
                               atol=1e-5, rtol=0)
    # a circuit that differs before the block does not: the stream is the contract
    differs = test.run("counterfactual", nodes=flipped[1:], start=(1, streams[1]))["task"]
    assert (differs - test.run("counterfactual", nodes=flipped[1:])["task"]).abs().max() > 1e-3
