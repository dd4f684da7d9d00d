"""Ctrl-C (SIGINT) and SIGTERM during every command that writes an output folder and does not resume:
afterwards the folder holds either the previous complete run, unchanged, or the new complete run, and
nothing of the attempt is left beside it (no staged or swapped-out folder).

Each command first runs to the end into a folder; then, on fresh copies of that folder, it is run again
and signalled at three moments: early (while it loads and computes), while it writes its files
("write": the first file is being renamed into place) and while the finished folder is swapped in
("swap"; layer analyses, which write into a shared folder, are signalled while writing instead). Every
rename is slowed by the test shim (tests/reliability_shim) so those moments last; the test checks each signal
reached the command while it ran.
Across the commands each signal meets each moment.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reliability_cases as rc

MOMENTS = (("early", signal.SIGINT), ("write", signal.SIGTERM), ("swap", signal.SIGINT))
# layer analyses write MODE.json and its figures into a folder other analyses share: no folder is swapped in,
# the files are written together with the signals held (core.files.uninterrupted)
WRITE_IN_PLACE = {"layers lens", "layers contributions", "layers skip", "layers probe", "layers linearity"}
OTHER = tuple((m, signal.SIGTERM if s == signal.SIGINT else signal.SIGINT) for m, s in MOMENTS)


def _report_run(folder: Path) -> Path:
    """A demo-like run folder for ``report`` (the report tests' hand-made one)."""
    spec = importlib.util.spec_from_file_location("report_fixture", Path(__file__).parents[1] / "report" / "test_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_run(folder)


def commands(fx: rc.Fixtures, work: Path) -> dict[str, list[str]]:
    """Each writing command that does not resume, on the tiny fixtures; ``OUT`` is its output folder."""
    m, small = str(fx.model), ["--train", "8", "--val", "8", "--test", "8", "--random", "2"]
    return {
        "heads": ["heads", "--model", m, "--out", "OUT", "--null-draws", "8"],
        "circuit": ["circuit", "--model", m, "--task", "induction", "--method", "eap", "--out", "OUT", *small],
        "circuit-methods": ["circuit-methods", "--model", m, "--task", "induction", "--method", "eap", "--method",
                            "random", "--out", "OUT", *small],
        "match": ["match", "--sae-a", str(fx.sae), "--sae-b", str(fx.sae), "--mode", "weights", "--out", "OUT"],
        "report": ["report", str(_report_run(work / "demo-run")), "--out", "OUT", "--no-attention"],
        "layers lens": ["layers", "lens", "--model", m, "--prompt", "abc abc ab", "--answer", "c", "--out", "OUT"],
        "layers contributions": ["layers", "contributions", "--model", m, "--text", str(fx.text), "--tokens", "256",
                                 "--context-size", "32", "--out", "OUT"],
        "layers skip": ["layers", "skip", "--model", m, "--text", str(fx.text), "--tokens", "128", "--context-size", "32",
                        "--out", "OUT"],
        "layers probe": ["layers", "probe", "--model", m, "--n-per-class", "8", "--n-tokens", "8", "--repeats", "1",
                         "--out", "OUT"],
        "layers linearity": ["layers", "linearity", "--model", m, "--text", str(fx.text), "--tokens", "256",
                             "--eval-tokens", "64", "--context-size", "32", "--out", "OUT"],
        "layers tuned-lens": ["layers", "tuned-lens", "--model", m, "--text", str(fx.text), "--tokens", "512",
                              "--context-size", "32", "--batch-tokens", "128", "--eval-tokens", "64", "--out", "OUT"],
    }


def _run(argv: list[str], out: Path, marks: Path, moment: str | None = None, sig: int | None = None
         ) -> tuple[int, str]:
    argv = [str(out) if a == "OUT" else a for a in argv]
    env = rc.subprocess_env({"RELIABILITY_WRITE_DELAY": "0.3" if moment else "0", "RELIABILITY_MARKS": str(marks)})
    marks.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "saecircuits", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if moment is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return proc.returncode, err
    deadline = time.monotonic() + 600
    start = time.monotonic()
    sent = False
    while proc.poll() is None:
        ready = time.monotonic() - start > 1.0 if moment == "early" else (marks / moment).exists()
        if ready:
            proc.send_signal(sig)
            sent = True
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    _, err = proc.communicate(timeout=600)
    # the run was signalled while it ran, at that moment: else the test would only compare two whole runs
    assert sent, f"{argv[:2]} ended before the {moment} moment ({proc.returncode}): {err[-1500:]}"
    return proc.returncode, err


def _debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}"))


@pytest.mark.parametrize("i,name", list(enumerate(["heads", "circuit", "circuit-methods", "match", "report",
                                                   "layers lens", "layers contributions", "layers skip", "layers probe",
                                                   "layers linearity", "layers tuned-lens"])))
def test_an_interrupted_command_leaves_the_old_run_or_the_new_one(fx, tmp_path, i, name):
    argv = commands(fx, tmp_path)[name]
    old = tmp_path / "old"
    _run(argv, old, tmp_path / "marks-old")
    before = rc.folder_hashes(old)
    assert before, f"{name} wrote nothing"
    moments = MOMENTS if i % 2 == 0 else OTHER
    if name in WRITE_IN_PLACE:  # no folder swap: the second signal meets the writing instead
        moments = tuple((m if m != "swap" else "write", s) for m, s in moments)
    for j, (moment, sig) in enumerate(moments):
        out = tmp_path / f"run{j}"
        shutil.copytree(old, out)
        code, err = _run(argv, out, tmp_path / f"marks{j}", moment, sig)
        after = rc.folder_hashes(out)
        where = f"{name}, {signal.Signals(sig).name} at {moment} (exit {code}): {err[-1500:]}"
        assert "Traceback" not in err, where
        if after != before:  # then it must be the whole new run: the same files, every JSON readable
            assert sorted(after) == sorted(before), where
            for f in after:
                if f.endswith(".json"):
                    json.loads((out / f).read_text())
        assert _debris(out) == [], where
        if code != 0:  # -SIGINT: CPython 3.11 exits by SIGINT after a Ctrl-C met in code that C ran (the shell's 130)
            assert code in (130, 143, -signal.SIGINT), where
            assert "does not resume: rerun it from the start" in err, where
