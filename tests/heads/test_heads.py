"""The head weight graph against explicit matrix products, a trained induction model, and its files."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
from typer.testing import CliRunner

from saecircuits.app.cli import app
from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.tensors import load_tensors
from saecircuits.heads.config import HeadGraphConfig
from saecircuits.heads.graph import (
    KINDS,
    HeadCircuits,
    composition_scores,
    edge_channels,
    head_name,
    save,
    weight_graph,
)

from conftest import make_byte_tokenizer, make_tiny_model, save_tiny_llama


def direct_scores(model) -> dict[str, torch.Tensor]:
    """Elhage et al.'s definitions, pair by pair, with full d_model x d_model products (row-vector
    convention: OV = W_V W_O, QK = W_Q W_K^T; W_K/W_V are TransformerLens's repeated per-query-head views)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    OV = (model.W_V @ model.W_O).detach().double()
    QK = (model.W_Q @ model.W_K.transpose(-1, -2)).detach().double()
    out = {kind: torch.full((L * H, L * H), float("nan"), dtype=torch.float64) for kind in KINDS}
    for s in range(L * H):
        for r in range(L * H):
            ls, hs, lr, hr = *divmod(s, H), *divmod(r, H)
            if ls >= lr:
                continue
            sender = OV[ls, hs]
            for kind, receiver in (("Q", QK[lr, hr]), ("K", QK[lr, hr].T), ("V", OV[lr, hr])):
                out[kind][s, r] = (sender @ receiver).norm() / (sender.norm() * receiver.norm())
    return out


@pytest.fixture(scope="module")
def gqa_model(byte_tokenizer):
    return make_tiny_model(n_layers=3, d_model=32, n_heads=4, n_kv=2, attn_only=True, seed=1, tokenizer=byte_tokenizer)


@pytest.mark.parametrize("n_kv", [None, 2])
def test_scores_equal_direct_products(byte_tokenizer, n_kv):
    model = make_tiny_model(n_layers=3, d_model=32, n_heads=4, n_kv=n_kv, seed=3, tokenizer=byte_tokenizer)
    got = composition_scores(HeadCircuits.from_model(model), null_draws=8)
    want = direct_scores(model)
    for kind in KINDS:
        assert torch.equal(got[kind].isnan(), want[kind].isnan()), kind  # only senders in earlier layers
        ok = ~want[kind].isnan()
        assert ok.sum() == 3 * 16  # layer pairs (0,1), (0,2), (1,2) x 4 x 4 heads
        torch.testing.assert_close(got[kind][ok].double(), want[kind][ok], rtol=1e-4, atol=1e-6)


def test_gqa_scores_are_per_query_head(gqa_model):
    attn = gqa_model.blocks[1].attn
    assert attn._W_K.shape[0] == 2 and gqa_model.W_K.shape[1] == 4  # two key/value heads behind four query heads
    scores = composition_scores(HeadCircuits.from_model(gqa_model), null_draws=8)
    torch.testing.assert_close(scores["K"].double(), direct_scores(gqa_model)["K"], rtol=1e-4, atol=1e-6, equal_nan=True)
    # query heads 1.0 and 1.1 share key head 0 but not W_Q, so their K- and Q-composition differ
    H = 4
    for kind in ("Q", "K"):
        assert not torch.allclose(scores[kind][:H, H + 0], scores[kind][:H, H + 1])
    assert scores["kv_group"].tolist() == [0, 0, 1, 1] * 3
    graph, _ = weight_graph(gqa_model, HeadGraphConfig(null_draws=8))
    assert [graph.nodes[head_name(1, h)]["kv_group"] for h in range(4)] == [0, 0, 1, 1]


def test_channels_are_the_svd_terms_and_sum_to_the_score(gqa_model):
    circuits = HeadCircuits.from_model(gqa_model)
    scores = composition_scores(circuits, null_draws=8)
    H = 4
    senders, receivers = torch.tensor([0, 1, 2, 5, 6]), torch.tensor([H + 1, 2 * H, 2 * H + 3, 2 * H + 2, 2 * H])
    OV = (gqa_model.W_V @ gqa_model.W_O).detach().double()
    QK = (gqa_model.W_Q @ gqa_model.W_K.transpose(-1, -2)).detach().double()
    for kind in KINDS:
        energy = edge_channels(circuits, kind, senders, receivers).double()  # [n, r]
        for j, (s, r) in enumerate(zip(senders.tolist(), receivers.tolist())):
            sender, (lr, hr) = OV[divmod(s, H)], divmod(r, H)
            receiver = {"Q": QK[lr, hr], "K": QK[lr, hr].T, "V": OV[lr, hr]}[kind]
            # rank-one channels u_i s_i v_i^T from a plain SVD of the d_model x d_model OV matrix
            U, S, Vh = torch.linalg.svd(sender)
            for i in range(energy.shape[1]):
                channel = S[i] * torch.outer(U[:, i], Vh[i])
                torch.testing.assert_close(energy[j, i], (channel @ receiver).norm().square(), rtol=1e-3, atol=1e-7)
            # the channels add back up to the whole composition score
            full = energy[j].sum().sqrt() / (sender.norm() * receiver.norm())
            torch.testing.assert_close(full, scores[kind][s, r].double(), rtol=1e-4, atol=1e-6)


def test_edge_channel_shares_sum_to_one(gqa_model):
    graph, scores = weight_graph(gqa_model, HeadGraphConfig(null_draws=8, top_channels=8))
    for kind in KINDS:
        torch.testing.assert_close(scores[f"{kind}_edge_channels"].sum(-1), torch.ones(len(scores[f"{kind}_edges"])))
    for _, _, data in graph.edges(data=True):
        assert sum(c["share"] for c in data["channels"]) == pytest.approx(1.0, abs=1e-4)  # d_head 8 = all channels


def test_null_z_scores_are_standard_for_a_random_model(byte_tokenizer):
    # Gaussian-initialised heads are themselves draws from the null (Haar-random write directions)
    model = make_tiny_model(n_layers=4, d_model=64, n_heads=8, attn_only=True, seed=5, tokenizer=byte_tokenizer)
    scores = composition_scores(HeadCircuits.from_model(model), null_draws=256)
    for kind in KINDS:
        z = scores[f"{kind}_z"][~scores[f"{kind}_z"].isnan()]
        assert len(z) == 6 * 64
        assert abs(z.mean()) < 0.35, (kind, z.mean())
        assert 0.7 < z.std() < 1.4, (kind, z.std())
        assert (z.abs() > 4).float().mean() < 0.01


def test_z_senders_standardise_each_receiver_against_its_senders(gqa_model):
    scores = composition_scores(HeadCircuits.from_model(gqa_model), null_draws=8)
    for kind in KINDS:
        for r in range(4, 12):
            col = scores[kind][:, r]
            ok = ~col.isnan()
            assert ok.sum() == (4 if r < 8 else 8)
            want = (col[ok] - col[ok].mean()) / col[ok].std()
            torch.testing.assert_close(scores[f"{kind}_z_senders"][ok, r], want)
            assert scores[f"{kind}_z_senders"][~ok, r].isnan().all()


def test_induction_model_previous_token_to_induction_k_edge_ranks_first(induction_model):
    model, facts = induction_model
    prev, ind = head_name(*facts["prev_token_head"]), head_name(*facts["induction_head"])
    graph, scores = weight_graph(model, HeadGraphConfig(top_per_receiver=None))
    edge = graph.edges[prev, ind]
    assert edge["type"] == "K"  # of its Q/K/V compositions, K stands out most
    # first among the K edges into the induction head, by z-score and by score
    into = {s: d for s, _, d in graph.in_edges(ind, data=True)}
    assert max(into, key=lambda s: into[s]["K_z"]) == prev
    assert max(into, key=lambda s: into[s]["K_score"]) == prev
    # and the strongest edge of the whole graph, with a z-score far outside the null
    assert max(graph.edges(data=True), key=lambda e: e[2]["z"])[0] == prev
    assert edge["z"] > 10
    others = [d["K_z"] for s, d in into.items() if s != prev]
    assert edge["z"] > 2 * max(others)


def test_selection_thresholds_and_top_n(gqa_model):
    full, scores = weight_graph(gqa_model, HeadGraphConfig(null_draws=16, top_per_receiver=None))
    assert full.number_of_edges() == int((~scores["Q"].isnan()).sum())  # every causal pair, nothing else
    assert all(graph_layer(full, s) < graph_layer(full, r) for s, r in full.edges)
    for rank_by in ("z", "z_senders", "score"):
        top1, _ = weight_graph(gqa_model, HeadGraphConfig(null_draws=16, top_per_receiver=1, rank_by=rank_by))
        for node in top1:
            if top1.nodes[node]["layer"] > 0:
                into = [(k, s, d) for s, _, d in top1.in_edges(node, data=True) for k in d["types"].split(",")]
                assert sorted(k for k, _, _ in into) == ["K", "Q", "V"]  # one edge of each kind into each receiver
                receiver = top1.nodes[node]["layer"] * 4 + top1.nodes[node]["head"]
                for kind, sender, _ in into:  # and it is that kind's best sender by the ranking
                    column = scores[kind if rank_by == "score" else f"{kind}_{rank_by}"][:, receiver]
                    assert head_name(*divmod(int(column.nan_to_num(-1e9).argmax()), 4)) == sender
    strong, _ = weight_graph(gqa_model, HeadGraphConfig(null_draws=16, top_per_receiver=None, min_z=1.0))
    for _, _, d in strong.edges(data=True):
        assert all(d[f"{k}_z"] >= 1.0 for k in d["types"].split(","))
    assert strong.number_of_edges() < full.number_of_edges()
    with pytest.raises(SaecircuitsError, match="top_per_receiver"):
        validate(HeadGraphConfig, {"top_per_receiver": 0}, where="heads")


def graph_layer(graph, node):
    return graph.nodes[node]["layer"]


def test_files_round_trip(gqa_model, tmp_path):
    graph, scores = weight_graph(gqa_model, HeadGraphConfig(null_draws=16))
    paths = save(graph, scores, tmp_path / "out")
    back = nx.read_graphml(paths["graphml"])
    assert set(back.edges) == set(graph.edges) and set(back.nodes) == set(graph.nodes)
    for s, r, d in graph.edges(data=True):
        assert back.edges[s, r]["type"] == d["type"]
        assert back.edges[s, r]["score"] == pytest.approx(d["score"])
        assert json.loads(back.edges[s, r]["channels"]) == d["channels"]
    data = json.loads(paths["json"].read_text())
    assert len(data["edges"]) == graph.number_of_edges() and len(data["nodes"]) == 12
    arrays = load_tensors(paths["scores"])
    for kind in KINDS:
        torch.testing.assert_close(arrays[kind], scores[kind], equal_nan=True)
        assert arrays[f"{kind}_z"].shape == (12, 12)
    assert not list(tmp_path.glob("out/.*"))  # no temporary files left behind


def test_cli_on_a_local_grouped_query_model(tmp_path, byte_tokenizer):
    folder = save_tiny_llama(tmp_path / "tiny-llama", make_byte_tokenizer(), n_layers=3)
    out = tmp_path / "graph"
    runner = CliRunner()
    run = runner.invoke(app, ["heads", "--model", str(folder), "--out", str(out), "--top", "2", "--null-draws", "16"])
    assert run.exit_code == 0, run.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 48 and summary["n_key_value_heads"] == 2
    graph = nx.read_graphml(out / "heads.graphml")
    assert graph.number_of_nodes() == 12 and 0 < graph.number_of_edges() <= 48
    bad = runner.invoke(app, ["heads", "--model", str(folder), "--out", str(out), "--rank-by", "bogus"])
    assert bad.exit_code == 2 and "rank_by" in bad.output and "Traceback" not in bad.output


@pytest.mark.real_model
def test_smollm2_weight_graph(smollm2):
    graph, scores = weight_graph(smollm2)
    assert graph.number_of_nodes() == 270
    assert int((~scores["K"].isnan()).sum()) == 9 * 9 * 30 * 29 // 2
    assert {graph.nodes[head_name(5, h)]["kv_group"] for h in range(9)} == {0, 1, 2}
    z = scores["K_z"][~scores["K_z"].isnan()]
    assert z.max() > 20  # real models have edges far outside the same-spectrum null
