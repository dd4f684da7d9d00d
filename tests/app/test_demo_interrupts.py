"""Ctrl-C (SIGINT) and SIGTERM during the main job (``saecircuits demo``), in four of its stages.

The demo resumes by stage: a stage is done when its folder holds a ``stage.json`` marker with the same
settings, and an interrupted stage is redone (training and dashboards from their own checkpoints). So after
an interrupt, every marker on disk must belong to a whole stage and the interrupted stage must have none;
the promised resume must then give the same run as one that was never interrupted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reliability_cases as rc
import yaml

from saecircuits.app.demo import Stage

STAGES = ("train", "dashboards", "matching", "heads", "circuit", "layers", "report")
MOMENTS = (("train", signal.SIGTERM), ("dashboards", signal.SIGINT), ("circuit", signal.SIGTERM),
           ("report", signal.SIGINT))


def _config(tmp: Path) -> Path:
    """The demo at toy sizes on the tiny fixture model (2 layers, 64 positions), induction as its task."""
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump({
        "task": "induction", "prompts": 8, "circuit_methods": ["eap"], "layers": [0, 1], "context_size": 32,
        "tokens": 8192, "dashboard_tokens": 1024, "match_tokens": 1024, "match_null": 10, "layer_tokens": 256,
        "eval_fraction": 0.2}))
    return path


def _argv(fx: rc.Fixtures, config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "saecircuits", "demo", "--model", str(fx.model), "--text", str(fx.text),
            "--config", str(config), "--wandb", "off", "--out", str(out)]


def _finish(argv: list[str]) -> str:
    p = subprocess.run(argv, env=rc.subprocess_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stderr


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(fx, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("demo")
    config = _config(tmp)
    _finish(_argv(fx, config, tmp / "whole"))
    return config, tmp / "whole"


@pytest.mark.parametrize("stage,sig", MOMENTS, ids=[m for m, _ in MOMENTS])
def test_an_interrupted_demo_keeps_whole_stages_and_resumes_to_the_same_run(fx, tmp_path, uninterrupted, stage, sig):
    config, whole = uninterrupted
    out = tmp_path / "run"
    env = rc.subprocess_env({"RELIABILITY_WRITE_DELAY": "0.05", "RELIABILITY_MARKS": str(tmp_path / "marks")})
    (tmp_path / "marks").mkdir()
    proc = subprocess.Popen(_argv(fx, config, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None and not (out / stage).exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert proc.poll() is None, f"the demo ended before its {stage} stage began: {proc.stderr.read()[-2000:]}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    where = f"{signal.Signals(sig).name} in {stage} (exit {proc.returncode}): {err[-2000:]}"
    assert proc.returncode in (130, 143, -signal.SIGINT), where
    assert "finished work is kept, rerun to resume" in err and "Traceback" not in err, where

    # every marker left belongs to a whole stage before the interrupted one; the interrupted one has none
    before = STAGES[:STAGES.index(stage)]
    assert {s for s in STAGES if (out / s / "stage.json").exists()} == set(before), where
    for s in before:
        json.loads((out / s / "stage.json").read_text())

    err = _finish(_argv(fx, config, out))
    for s in before:
        assert f"{s}: reusing" in err, s
    assert _files(out) == _files(whole)
    hidden = [{str(p.relative_to(d)) for p in d.rglob(".*")} for d in (out, whole)]  # e.g. the cache's writer lock
    assert hidden[0] == hidden[1], "staged or temporary files were left"
    for sae in (whole / "train" / "saes").iterdir():  # the same weights and metadata (but the cache's path)
        weights = [(d / sae.name / "sae_weights.safetensors").read_bytes() for d in (out / "train" / "saes", sae.parent)]
        assert weights[0] == weights[1], sae.name
        a, b = (json.loads((d / sae.name / "cfg.json").read_text()) for d in (out / "train" / "saes", sae.parent))
        a["metadata"].pop("dataset_path"), b["metadata"].pop("dataset_path")
        assert a == b
    for name, key in (("circuit/circuit.json", "heads"), ("heads/summary.json", "top_edges")):
        a, b = (json.loads((d / name).read_text())[key] for d in (out, whole))
        assert a and a == b, name


def test_a_stage_rerun_with_new_settings_drops_its_old_marker_first(tmp_path):
    """Else a rerun interrupted while rewriting the folder leaves the old marker beside new files, and a later run
    with the old settings would take the half-rewritten folder as done."""
    Stage(tmp_path, "s", {"v": 1}).run(lambda folder: (folder / "a.txt").write_text("1") and {})
    assert Stage(tmp_path, "s", {"v": 1}).done()

    def interrupted(folder: Path) -> dict:
        (folder / "a.txt").write_text("2")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Stage(tmp_path, "s", {"v": 2}).run(interrupted)
    assert not Stage(tmp_path, "s", {"v": 1}).done() and not Stage(tmp_path, "s", {"v": 2}).done()
