"""The circuit-methods command on the real default model, at a size a test can afford."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import save_tiny_llama

from saecircuits.circuits.comparison_files import write_comparison


@pytest.mark.slow
@pytest.mark.real_model
def test_circuit_methods_command_writes_one_whole_comparison(tmp_path, smollm2):
    out = tmp_path / "ioi-smollm2"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    run = subprocess.run([sys.executable, "-m", "saecircuits", "circuit-methods", "--task", "ioi", "--method", "eap",
                          "--method", "random", "--granularity", "nodes", "--train", "4", "--val", "4", "--test", "6",
                          "--random", "2", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["circuit.json", "curves-counterfactual.png",
                                                       "curves-mean-clean.png", "methods.json", "report.md",
                                                       "robustness.json"]
    methods = json.loads((out / "methods.json").read_text())["methods"]
    names = {(m["name"], m["granularity"], m["ablation"]) for m in methods}
    assert names == {("eap", "nodes", "counterfactual"), ("eap", "nodes", "mean-clean"),
                     ("random", "nodes", "counterfactual")}
    for m in methods:
        assert [p["k"] for p in m["curve"]] == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
        assert m["curve"][-1]["f"] == pytest.approx(1.0, abs=1e-5)  # every node kept: the full model
        assert {"cpr", "cmd", "k_star", "seconds", "cpr_ci", "cmd_ci"} <= set(m)
        for p in m["curve"]:
            assert p["ci"][0] <= p["f"] + 1e-9 and p["f"] <= p["ci"][1] + 1e-9 or p["ci"][0] == p["ci"][1]
    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["splits"] == {"train": 4, "val": 4, "test": 6}
    head = circuit["head_circuit"]
    assert head["method"] == "eap" and len(head["members"]) == head["count"]
    assert set(circuit["heads"]) <= set(head["members"]) and all("." in h for h in circuit["heads"])
    assert set(head["test"]) == {"counterfactual", "mean-clean", "mean-counterfactual", "zero", "resample"}
    robustness = json.loads((out / "robustness.json").read_text())["robustness"]
    assert [r["name"] for r in robustness] == ["eap"]


def test_bad_options_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "o"
    for args, message in ((["--granularity", "layers"], "granularities"), (["--method", "acdc"], "unknown method"),
                          (["--test", "1"], "n_test"), (["--method", "random"], "random is the floor"),
                          (["--task", "list_recall"], "no held-out")):
        run = subprocess.run([sys.executable, "-m", "saecircuits", "circuit-methods", "--out", str(out), *args],
                             capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not out.exists()
    (tmp_path / "a-file").write_text("mine")  # a file in the way is refused before the model is loaded
    run = subprocess.run([sys.executable, "-m", "saecircuits", "circuit", "--out", str(tmp_path / "a-file")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "is a file, not a folder" in run.stderr
    assert (tmp_path / "a-file").read_text() == "mine"


def test_an_interrupted_write_leaves_the_old_comparison(tmp_path, monkeypatch):
    import saecircuits.circuits.comparison_files as files

    out = tmp_path / "c"
    result = {"methods": [], "graph": {}, "circuit": {"task": "ioi"}, "robustness": []}
    write_comparison(result, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        write_comparison({**result, "circuit": {"task": "other"}}, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no staging folder left behind


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


def test_head_circuits_with_every_mlp_kept_on_a_local_llama(tmp_path, byte_tokenizer):
    """``granularities=("heads",)``: every method ranks heads only, circuits keep every MLP, and the reported
    circuit says so."""
    from saecircuits.circuits.comparison import compare
    from saecircuits.circuits.config import ComparisonConfig
    from saecircuits.model.loading import load

    model = load(str(save_tiny_llama(tmp_path / "tiny-llama", byte_tokenizer, n_layers=2)))
    cfg = ComparisonConfig(task="induction", n_train=6, n_val=6, n_test=6, methods=("eap", "greedy", "edge-pruning"),
                           granularities=("heads",), random_draws=2, greedy_pool=3, n_boot=10,
                           pruning={"targets": (0.5,), "steps": 2, "batch_size": 3})
    result = compare(model, cfg)
    assert {(m["name"], m["granularity"]) for m in result["methods"]} == {
        ("eap", "heads"), ("greedy", "heads"), ("edge-pruning", "heads")}
    assert all(m["curve"][-1]["count"] == 8 for m in result["methods"])  # 2 layers x 4 heads
    c = result["circuit"]
    head = c["head_circuit_mlps_kept"]
    assert "head_circuit" not in c and head["kept_always"] == ["mlp0", "mlp1"] and c["mlps"] == ["mlp0", "mlp1"]
    assert len(head["members"]) == head["count"] and all(not m.startswith("mlp") for m in head["members"])
    assert c["heads"] == head["members"]
