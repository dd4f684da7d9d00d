"""The main job's circuit stage on the real default model: the comparison pipeline's files, read back by the
report (collect, figures, tables, head pages), at a size a test can afford."""

from __future__ import annotations

import json

import pytest

from saecircuits.app.demo import DemoConfig, circuit_stage
from saecircuits.core.files import write_json


@pytest.mark.slow
@pytest.mark.real_model
def test_demo_circuit_stage_feeds_the_report(tmp_path, smollm2):
    from saecircuits.report import write_report
    from saecircuits.report.collect import collect

    run = tmp_path / "run"
    (run / "circuit").mkdir(parents=True)
    (run / "circuit" / "results.json").write_text("{}")  # an earlier run's file: the stage replaces the folder whole
    cfg = DemoConfig(prompts=4, out=str(run))
    result = circuit_stage(cfg, smollm2, run)
    files = sorted(p.name for p in (run / "circuit").iterdir())
    assert files == ["circuit.json", "curves-counterfactual.png", "curves-mean-clean.png", "methods.json", "report.md",
                     "robustness.json", "stage.json"]
    circuit = json.loads((run / "circuit" / "circuit.json").read_text())
    assert circuit["splits"] == {"train": 2, "val": 2, "test": 4} and result["method"] == "eap-ig"
    assert result["heads"] == circuit["heads"] and result["count"] == len(circuit["head_circuit"]["members"])
    assert smollm2.to_string(circuit["example_tokens"]) == circuit["examples"][0]
    assert circuit_stage(cfg, smollm2, run) == result  # a rerun with the same settings reuses the stage

    write_json(run / "demo_config.json", cfg.model_dump(mode="json"))
    r = collect(run, model=smollm2, attention_heads=2)
    c = r["circuit"]
    assert (c["size"], c["heads"], c["n_layers"], c["n_heads"]) == (result["count"], result["heads"], 30, 9)
    assert c["test"]["counterfactual"]["task"]["f"] == pytest.approx(result["test_f"]["counterfactual"])
    assert len(r["attention"]["heads"]) == min(2, len(c["heads"]))
    paths = write_report(r, run / "report")
    assert {"circuit_graph", "circuit_faithfulness", "faithfulness_curves"} <= set(paths["figures"])
    assert {"circuit_heads", "circuit_faithfulness", "circuit_methods"} <= set(paths["tables"])
    page = (run / "report" / "index.html").read_text()
    assert f"{c['size']} nodes" in page and "Not available" in page  # the stages this test did not run say so


def test_demo_config_refuses_bad_circuit_settings():
    from pydantic import ValidationError

    for data, message in (({"circuit_methods": ["random"]}, "random is the floor"),
                          ({"circuit_methods": ["greedy"]}, "greedy refines a ranking"),
                          ({"circuit_methods": ["acdc"]}, "unknown method"),
                          ({"task": "list_recall"}, "no held-out")):
        with pytest.raises(ValidationError, match=message):
            DemoConfig(**data)
