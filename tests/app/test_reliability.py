"""Faults and bad input, end to end through the command line, on a tiny Llama saved as a local folder.

- kill -9 (SIGKILL), SIGTERM and Ctrl-C (SIGINT) of real ``python -m saecircuits`` processes during training, activation caching and
  dashboards, right after a checkpoint they write appears; then resume: what was written loads, and
  the final result equals an uninterrupted run;
- bad inputs (tests/reliability_cases.py) each answered by one clear error line, a non-zero exit, no
  traceback, earlier results untouched, no pickle payload run; the config loader fuzzed;
- peak memory of a streaming run flat over a 10x longer stream; no network; HTML escapes all text.

Slow forwards, network logs and peak memory come from tests/reliability_shim (test-side, on PYTHONPATH).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import reliability_cases as rc
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from typer.testing import CliRunner

from saecircuits.app.cli import app
from saecircuits.core.config import read_yaml, validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import read_json
from saecircuits.core.tensors import load_tensors, tensors_metadata
from saecircuits.training.config import SWEEPABLE, TrainConfig


def cli(*argv: str) -> None:
    """Run a command in this process; it must succeed."""
    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == 0, (result.stderr, result.exception)


def start(argv: list[str], tmp: Path, slow: float) -> tuple[subprocess.Popen, Path]:
    """``python -m saecircuits ARGV`` with each forward slowed by ``slow`` s and every network attempt logged."""
    net = tmp / f"net-{time.monotonic_ns()}.jsonl"
    env = rc.subprocess_env({"RELIABILITY_SLOW_FORWARD": str(slow), "RELIABILITY_NET_LOG": str(net)})
    return subprocess.Popen([sys.executable, "-m", "saecircuits", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True), net


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()``; the process must still have been running then. SIGINT and
    SIGTERM must end it as an interrupt that promises the resume the caller then does."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready():
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill ({proc.returncode}): {err[-2000:]}"
    else:  # -SIGINT: CPython 3.11's exit after a Ctrl-C met in code C ran (the shell's 130)
        assert proc.returncode in (130, 143, -signal.SIGINT), f"{proc.returncode}: {err[-2000:]}"
        assert "finished work is kept, rerun to resume" in err and "Traceback" not in err, err[-2000:]


def no_network(log: Path) -> None:
    attempts = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert [a for a in attempts if not a["allowed"]] == [], attempts


def same_files(a: Path, b: Path, pattern: str) -> int:
    files = sorted(p.relative_to(a) for p in a.glob(pattern) if p.is_file())
    assert files and files == sorted(p.relative_to(b) for p in b.glob(pattern) if p.is_file())
    for f in files:
        if f.suffix == ".safetensors":  # the header's metadata order varies from write to write: compare content
            x, y = load_file(a / f), load_file(b / f)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f
            assert tensors_metadata(a / f) == tensors_metadata(b / f), f
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    return len(files)


# ---------------------------------------------------------------- kill -9, SIGTERM or Ctrl-C, then resume


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_kill_during_training_then_resume_equals_uninterrupted(fx, tmp_path, sig):
    data = fx.config_data(total_tokens=128 * 200, checkpoint_every_tokens=128 * 20, out=str(tmp_path / "killed"))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    proc, net = start(["train", str(tmp_path / "cfg.yaml")], tmp_path, slow=0.05)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    kill_when(proc, state.exists, sig=sig)
    no_network(net)
    # what was written is whole: the checkpoint loads, nothing half-written replaced it
    saved = read_json(state, what="checkpoint")
    assert saved["step"] % 20 == 0 and 0 < saved["step"] < 200
    assert any(k.startswith("sae0/") for k in load_tensors(state.parent / "state.safetensors"))
    assert not (tmp_path / "killed" / "summary.json").exists()
    cli("train", str(tmp_path / "cfg.yaml"), "--resume")
    cli("train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "uninterrupted"))
    assert same_files(tmp_path / "killed" / "saes", tmp_path / "uninterrupted" / "saes", "*/sae_weights.safetensors") == 1
    a, b = (json.loads((tmp_path / f / "summary.json").read_text())["saes"] for f in ("killed", "uninterrupted"))
    name = next(iter(a))
    for key in ("explained_variance", "l0", "ce_loss_recovered", "dead_latents"):
        assert a[name][key] == b[name][key], key


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_during_activation_caching_then_resume(fx, tmp_path, sig):
    argv = ["--model", str(fx.model), "--text", str(fx.text), "--context-size", "32", "--tokens", str(32 * 256 * 5),
            "--hook", rc.SITE, "--hook", "blocks.0.attn.hook_z:*"]
    proc, net = start(["cache", "--out", str(tmp_path / "killed"), *argv], tmp_path, slow=0.02)
    manifest = tmp_path / "killed" / "manifest.json"

    def two_shards() -> bool:
        try:
            return len(json.loads(manifest.read_text())["shards"]) >= 2
        except (OSError, ValueError):  # not there yet (the manifest is replaced atomically: never half-written)
            return False

    kill_when(proc, two_shards, sig=sig)
    no_network(net)
    done = json.loads(manifest.read_text())
    assert not done["complete"] and 2 <= len(done["shards"]) < 5
    for s in done["shards"]:  # every listed shard is whole
        assert len(load_file(tmp_path / "killed" / s["file"])["tokens"]) == s["rows"]
    cli("cache", "--out", str(tmp_path / "killed"), *argv)
    cli("cache", "--out", str(tmp_path / "uninterrupted"), *argv)
    a, b = (json.loads((tmp_path / f / "manifest.json").read_text()) for f in ("killed", "uninterrupted"))
    assert a["shards"] == b["shards"] and a["complete"] and len(a["shards"]) == 5
    assert same_files(tmp_path / "killed", tmp_path / "uninterrupted", "shard_*.safetensors") == 5
    assert not list((tmp_path / "killed").glob(".shard_*"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_during_dashboards_then_resume(fx, tmp_path, sig):
    argv = ["--sae", str(fx.sae), "--model", str(fx.model), "--text", str(fx.text), "--tokens", str(32 * 8 * 100),
            "--context-size", "32", "--batch", "8", "--wandb", "off"]
    proc, net = start(["dashboards", "--out", str(tmp_path / "killed"), *argv], tmp_path, slow=0.03)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    kill_when(proc, state.exists, sig=sig)
    no_network(net)
    saved = read_json(state, what="dashboard checkpoint")
    assert saved["batches"] % 20 == 0 and not saved["done"]
    load_tensors(state.parent / "stats.safetensors")
    cli("dashboards", "--out", str(tmp_path / "killed"), *argv)
    cli("dashboards", "--out", str(tmp_path / "uninterrupted"), *argv)
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["resumed_from_batch"] == saved["batches"]
    for pattern in ("stats.safetensors", "stats.json", "index.html", "features/*.html", "neuronpedia/*.json"):
        same_files(tmp_path / "killed", tmp_path / "uninterrupted", pattern)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_each_get_one_clear_error(fx, tmp_path):
    cases = rc.bad_inputs(fx, tmp_path)
    assert len(cases) >= 20
    failures = {}
    for case in cases:
        if case.subprocess_only:
            continue
        outcome = rc.run_in_process(case)
        if outcome.problems:
            failures[case.name] = (outcome.problems, outcome.stderr[-800:])
    assert failures == {}


def test_full_disk_is_one_clear_error_and_damages_nothing(fx, tmp_path):
    """A real process with RLIMIT_FSIZE below a shard's size, extending a cache: the error names the file,
    and the cache's earlier shards and manifest are as they were."""
    case = next(c for c in rc.bad_inputs(fx, tmp_path) if c.name == "disk_full")
    outcome = rc.run_subprocess(case)
    assert outcome.problems == [], outcome.stderr[-2000:]
    assert outcome.code == 2
    assert not list(case.protect.glob(".shard_*")) and not list(case.protect.glob("*.tmp"))


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=12), st.sampled_from(["topk", "batchtopk", "jumprelu", "standard", "matryoshka_batchtopk",
                                                             "stdlib", "off", "offline", "blocks.1.hook_resid_post", "float16",
                                                             "expected_average_only_in", "data", "saes", "1e-3", "cuda", ""]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-3, 3), st.booleans()), inner, max_size=4)),
    max_leaves=20)
_SECTIONS = {"": TrainConfig, "store.": TrainConfig.model_fields["store"].annotation, "text.": TrainConfig.model_fields["text"].annotation,
             "eval.": TrainConfig.model_fields["eval"].annotation, "wandb.": TrainConfig.model_fields["wandb"].annotation,
             "saes.0.": TrainConfig.model_fields["saes"].annotation.__args__[0]}
_PATHS = sorted(f"{prefix}{name}" for prefix, cls in _SECTIONS.items() for name in cls.model_fields) + ["saes.0.sweep", "saes.1", "unknown"]
_SWEEP = st.dictionaries(st.sampled_from(sorted(SWEEPABLE)) | st.text(max_size=6) | st.integers(0, 3),
                         st.lists(_SCALARS, max_size=6) | _SCALARS, max_size=10)
_DELETE = object()


def _mutate(changes: list) -> dict:
    """A valid config with some fields set to random values (or removed)."""
    data = {"model": "tiny", "text": {"source": "stdlib", "context_size": 32}, "store": {"batch_size_tokens": 256},
            "saes": [{"architecture": "topk", "hook": "blocks.1.hook_resid_post", "d_sae": 64, "k": 4}],
            "total_tokens": 4096, "wandb": {"mode": "off"}}
    for path, value in changes:
        *parents, leaf = path.split(".")
        node = data
        for p in parents:  # follow the path while it exists (an earlier change may have replaced a section)
            if isinstance(node, list) and node:
                node = node[min(int(p), len(node) - 1)]
            elif isinstance(node, dict):
                node = node.setdefault(p, {})
            else:
                break
        else:
            if isinstance(node, list):
                node.append(value)
            elif isinstance(node, dict) and value is _DELETE:
                node.pop(leaf, None)
            elif isinstance(node, dict):
                node[leaf] = value
    return data


_CONFIGS = st.one_of(
    st.lists(st.tuples(st.sampled_from(_PATHS), st.one_of(_VALUES, st.just(_DELETE))), max_size=4).map(_mutate),
    st.lists(st.tuples(st.just("saes.0.sweep"), _SWEEP), min_size=1, max_size=1).map(_mutate),
    _VALUES,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=_CONFIGS)
def test_config_loader_fuzz_gives_a_config_or_one_clear_error(data, tmp_path):
    """Random YAML-ish data through the YAML file loader: a valid TrainConfig or a SaecircuitsError, nothing else."""
    path = tmp_path / "fuzz.yaml"
    try:
        path.write_text(yaml.safe_dump(data))
    except (yaml.YAMLError, UnicodeEncodeError):  # not representable as YAML text: the raw-text fuzz below covers text
        return
    try:
        cfg = validate(TrainConfig, read_yaml(path), where=str(path))
    except SaecircuitsError as e:
        assert "\n" not in str(e) and str(e).strip()
    else:
        assert isinstance(cfg, TrainConfig) and cfg.saes
        assert validate(TrainConfig, cfg.model_dump(mode="json")) == cfg  # what a checkpoint stores reads back the same


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.sampled_from(["{", "saes: [", "a: b: c", "- [", "\t", "!!python/object:os.system ls", "&a [*a]"]))
def test_yaml_text_fuzz_gives_a_config_or_one_clear_error(text, tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        validate(TrainConfig, read_yaml(path), where=str(path))
    except SaecircuitsError:
        pass


def test_fuzz_findings_are_clear_errors():
    """What fuzzing found: sweep keys of mixed types (a TypeError), and a sweep of millions of SAEs (hung)."""
    sae = {"hook": "blocks.1.hook_resid_post"}
    with pytest.raises(SaecircuitsError, match="sweep over 1 is not supported"):
        validate(TrainConfig, {"saes": [{**sae, "sweep": {1: [2], "bogus": [3]}}]})
    with pytest.raises(SaecircuitsError, match="the sweep makes 1,048,576 SAEs; one run trains at most 1,024"):
        validate(TrainConfig, {"saes": [{**sae, "sweep": {k: [0.1, 0.2, 0.3, 0.4] for k in ("lr", "k", "d_sae", "seed", "l1_coefficient",
                                                                                       "l0_coefficient", "aux_coefficient", "expansion", "hook", "architecture")}}]})


# ---------------------------------------------------------------- memory, network, HTML


def test_streaming_peak_memory_is_flat_over_a_10x_longer_stream(fx, tmp_path):
    peaks = {}
    for n in (1, 10):
        data = fx.config_data(total_tokens=512 * 30 * n, checkpoint_every_tokens=None, out=str(tmp_path / f"x{n}"),
                              store={"batch_size_tokens": 512, "buffer_tokens": 4096, "model_batch_size": 16,
                                     "normalize": "expected_average_only_in"},
                              saes=[{"architecture": "topk", "hook": rc.SITE, "d_sae": 256, "k": 8}])
        (tmp_path / f"x{n}.yaml").write_text(yaml.safe_dump(data))
        peak, net = tmp_path / f"peak{n}", tmp_path / f"net{n}.jsonl"
        env = rc.subprocess_env({"RELIABILITY_PEAK_LOG": str(peak), "RELIABILITY_NET_LOG": str(net)})
        proc = subprocess.run([sys.executable, "-m", "saecircuits", "train", str(tmp_path / f"x{n}.yaml")], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads((tmp_path / f"x{n}" / "summary.json").read_text())["tokens"] == 512 * 30 * n
        no_network(net)
        peaks[n] = int(peak.read_text()) / 1024  # MB
    assert peaks[10] - peaks[1] < 25, f"peak memory {peaks[1]:.0f} MB -> {peaks[10]:.0f} MB over a 10x longer stream"


def test_the_network_log_sees_a_connection():
    """The instrument the tests above rely on does record (and block) an attempt to leave the machine."""
    log = Path(f"/tmp/saecircuits-net-{time.monotonic_ns()}.jsonl")
    try:
        proc = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('198.51.100.7', 443), timeout=1)"],
                              env=rc.subprocess_env({"RELIABILITY_NET_LOG": str(log)}), capture_output=True, text=True)
        assert proc.returncode != 0 and "blocked by the reliability test" in proc.stderr
        with pytest.raises(AssertionError):
            no_network(log)
    finally:
        log.unlink(missing_ok=True)


class _Tags(HTMLParser):
    """Start tags with their attributes; text outside and inside <script> elements."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list]] = []
        self.text: list[str] = []
        self.script: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag):]

    def handle_data(self, data):
        (self.script if "script" in self.open else self.text).append(data)


def test_html_outputs_escape_all_text(fx, tmp_path):
    """Markup in the corpus and in the SAE's folder name shows as text; it never becomes a tag or an attribute."""
    from saecircuits.dashboards import build_dashboards

    evil = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "evil.txt").write_text((f"plain words {evil} more words " * 40 + "\n") * 20)
    sae = rc._copy(fx.sae, tmp_path / "sae<b onmouseover=alert(3)>")
    out = tmp_path / "dash"
    build_dashboards(sae, str(fx.model), str(tmp_path / "text"), out, 32 * 8 * 6, wandb="off", progress=False,
                     batch_contexts=8, text={"context_size": 32, "eval_fraction": 0})
    pages = [out / "index.html", *sorted((out / "features").glob("*.html"))]
    assert len(pages) > 10
    shown = ""
    for page in pages:
        parser = _Tags()
        parser.feed(page.read_text())
        for tag, attrs in parser.tags:
            assert tag != "img", page
            assert not any("alert(" in (v or "") or k.startswith("on") and "alert" in (v or "") for k, v in attrs), (page, tag, attrs)
        assert "alert(2)" not in "".join(parser.script), page
        shown += "".join(parser.text)
    assert "onmouseover=alert(3)" in shown  # the folder name, as text
    assert re.search(r"a\W*l\W*e\W*r\W*t", shown)  # the corpus's markup, as (tokenised) text


def test_lens_says_on_the_console_when_it_follows_the_first_of_several_answer_tokens(fx, tmp_path):
    result = CliRunner().invoke(app, ["layers", "lens", "--model", str(fx.model), "--prompt", "abc ab", "--answer", "cd",
                                      "--out", str(tmp_path / "lens")])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "answer 'cd' is 2 tokens; the lens follows its first, 'c'" in said


def test_match_finds_a_local_model_folder_from_the_sae_it_trained(fx, tmp_path):
    """SAEs trained from a local model folder record its path; match needs no --model, and says what to pass when
    the folder has moved."""
    cfg = json.loads((fx.sae / "cfg.json").read_text())
    assert cfg["metadata"]["model_path"] == str(fx.model.resolve())
    argv = ["match", "--sae-a", str(fx.sae), "--sae-b", str(fx.sae), "--out", str(tmp_path / "m"), "--text", str(fx.text),
            "--context-size", "32", "--tokens", "256", "--null", "0", "--random-subsets", "0"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.stderr
    moved = tmp_path / "sae"
    import shutil

    shutil.copytree(fx.sae, moved)
    cfg["metadata"]["model_path"] = str(tmp_path / "gone")
    (moved / "cfg.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(app, [a if a != str(fx.sae) else str(moved) for a in argv])
    assert result.exit_code == 2
    assert "trained on the model folder" in result.stderr and "no longer exists" in result.stderr
    assert "--model PATH" in " ".join(result.stderr.split())
