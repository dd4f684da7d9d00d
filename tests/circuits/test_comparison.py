"""The circuit-methods command on the real default model, at a size a test can afford."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
    for args, message in ((["--granularity", "heads"], "granularities"), (["--method", "acdc"], "unknown method"),
                          (["--test", "1"], "n_test")):
        run = subprocess.run([sys.executable, "-m", "saecircuits", "circuit-methods", "--out", str(out), *args],
                             capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not out.exists()


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
