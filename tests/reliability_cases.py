"""Bad inputs for the command line and the files they run on (shared by tests/test_reliability.py and
benchmarks/reliability.py).

``make_fixtures`` builds, under one folder, a tiny Llama saved as a local Hugging Face folder, a small
UTF-8 corpus, a good training config, a finished training run, one of its SAEs, that SAE's dashboards
and an activation cache. ``bad_inputs`` lists the faults: each a command line, the error its one
error line must match, and the folder of earlier results it must leave untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

SHIM = Path(__file__).parent / "reliability_shim"
SITE = "blocks.1.hook_resid_post"


@dataclass
class Fixtures:
    root: Path
    model: Path  # tiny Llama (2 layers, d_model 32), a local Hugging Face folder
    text: Path  # a folder of .txt files (the standard library's source)
    config: Path  # a good training config on them (writes to run)
    run: Path  # the finished run of that config: checkpoint, saes/, summary.json
    sae: Path  # its SAE (SAELens format)
    dashboards: Path  # dashboards of that SAE
    cache: Path  # an activation cache of two sites

    def config_data(self, **changes) -> dict:
        data = yaml.safe_load(self.config.read_text())
        data.update(changes)
        return data


def tiny_llama(folder: Path, tokenizer, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def corpus(folder: Path, n_files: int = 40) -> Path:
    """Standard-library source files as .txt: deterministic, local, about a megabyte."""
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(root.glob("*.py"))[:n_files]:
        (folder / f"{p.stem}.txt").write_text(p.read_text(encoding="utf-8", errors="replace"), encoding="utf-8")
    return folder


def train_config(fx_root: Path, model: Path, text: Path, out: Path, **changes) -> dict:
    data = {
        "model": str(model),
        "text": {"source": str(text), "context_size": 32, "eval_fraction": 0.1},
        "store": {"batch_size_tokens": 128, "buffer_tokens": 1024, "model_batch_size": 8, "normalize": "expected_average_only_in"},
        "saes": [{"architecture": "topk", "hook": SITE, "d_sae": 64, "k": 4, "lr": 0.003}],
        "total_tokens": 128 * 20, "checkpoint_every_tokens": 128 * 5,
        "eval": {"contexts": 8, "batch_contexts": 8}, "wandb": {"mode": "off"}, "out": str(out),
    }
    data.update(changes)
    return data


def make_fixtures(root: Path, tokenizer) -> Fixtures:
    """Everything the faults run on, built in this process (a few seconds)."""
    from saecircuits.activations.cache import build_cache
    from saecircuits.activations.store import StoreConfig
    from saecircuits.core.config import validate
    from saecircuits.dashboards import build_dashboards
    from saecircuits.model.loading import load
    from saecircuits.text.config import TextConfig
    from saecircuits.text.source import TextSource
    from saecircuits.training.config import TrainConfig
    from saecircuits.training.run import train

    root.mkdir(parents=True, exist_ok=True)
    model = tiny_llama(root / "llama", tokenizer)
    text = corpus(root / "text")
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump(train_config(root, model, text, root / "run")))
    lm = load(str(model))
    summary = train(validate(TrainConfig, yaml.safe_load(config.read_text())), progress=False, model=lm)
    sae = Path(next(iter(summary["saes"].values()))["path"])
    build_dashboards(sae, str(model), str(text), root / "dashboards", 32 * 8 * 4, wandb="off", progress=False,
                     loaded_model=lm, batch_contexts=8, text={"context_size": 32})
    src = TextSource.for_model(TextConfig(source=str(text), context_size=32), lm)
    build_cache(root / "cache", lm, [SITE, "blocks.0.attn.hook_z:*"], src, StoreConfig(), 32 * 40, shard_contexts=16, progress=False)
    return Fixtures(root, model, text, config, root / "run", sae, root / "dashboards", root / "cache")


# ---------------------------------------------------------------- the faults


@dataclass
class Case:
    name: str
    what: str  # the fault, in words
    argv: list[str]  # after `saecircuits`
    expect: str  # regex the error line must match
    protect: Path | None = None  # earlier results the command must leave as they were
    env: dict[str, str] = field(default_factory=dict)
    fsize_limit: int | None = None  # bytes: RLIMIT_FSIZE in the child (a full disk, for files larger than this)
    must_not_exist: Path | None = None  # e.g. the marker a pickle payload would create if it ran
    subprocess_only: bool = False


class _Evil:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_with_payload(path: Path, marker: Path) -> Path:
    import pickle

    path.write_bytes(pickle.dumps({"tokens": _Evil(marker)}))
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def bad_inputs(fx: Fixtures, work: Path) -> list[Case]:
    """At least 20 faults, each with its own copy of whatever it must not damage."""
    work.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def cfg_file(name: str, data=None, text: str | None = None) -> Path:
        p = work / f"{name}.yaml"
        p.write_text(text if text is not None else yaml.safe_dump(data))
        return p

    def train_case(name: str, what: str, expect: str, data=None, text=None, extra=(), fresh: bool = False, **kw) -> None:
        """``--out``: a copy of the finished run (it must stay as it was), or with ``fresh`` a new folder
        (faults met while streaming, which a finished run's folder would refuse before)."""
        out = work / f"{name}-out" if fresh else _copy(fx.run, work / f"{name}-run")
        cases.append(Case(name, what, ["train", str(cfg_file(name, data, text)), "--out", str(out), *extra], expect,
                          protect=None if fresh else out, **kw))

    d = fx.config_data
    sae0 = d()["saes"][0]
    train_case("malformed_yaml", "malformed YAML", r"is not valid YAML at line \d+",
               text="model: x\nsaes: [ {hook: blocks.1.hook_resid_post\n")
    train_case("unknown_field", "unknown field", r"unknown field 'store.bufer_tokens'.*known fields",
               data={**d(), "store": {**d()["store"], "bufer_tokens": 5}})
    train_case("wrong_type", "wrong type", r"field 'total_tokens'.*valid integer", data=d(total_tokens="lots"))
    train_case("negative_tokens", "out-of-range number", r"field 'total_tokens'.*greater than or equal to 1", data=d(total_tokens=-5))
    train_case("not_a_mapping", "config is a YAML list", r"expected a mapping", text="- a\n- b\n")
    cases.append(Case("missing_config", "config file missing", ["train", str(work / "nope.yaml")], r"nope.yaml does not exist"))
    train_case("unknown_hook", "unknown hook", r"unknown hook 'blocks.1.hook_resid_pst'.*did you mean: blocks.1.hook_resid_post",
               data=d(saes=[{**sae0, "hook": "blocks.1.hook_resid_pst"}]))
    train_case("layer_out_of_range", "layer out of range", r"asks for layer 7, but llama has 2 layers",
               data=d(saes=[{**sae0, "hook": "blocks.7.hook_resid_post"}]))
    train_case("head_out_of_range", "head index out of range", r"head 9 does not exist",
               data=d(saes=[{**sae0, "hook": "blocks.0.attn.hook_z:9"}]))
    train_case("sweep_unsupported", "sweep over a field that cannot vary", r"sweep over 'adam_betas' is not supported",
               data=d(saes=[{**sae0, "sweep": {"adam_betas": [[0.9, 0.99]]}}]))
    train_case("duplicate_names", "two SAEs with one name", r"same name", data=d(saes=[sae0, sae0]))
    train_case("topk_transcoder", "an architecture SAELens cannot save as a transcoder", r"no TopK transcoder format",
               data=d(saes=[{**sae0, "hook_out": "blocks.1.hook_mlp_out"}]))
    train_case("matryoshka_too_wide", "matryoshka widths past d_sae", r"matryoshka_widths \[16, 128\] exceed d_sae 64",
               data=d(saes=[{**sae0, "architecture": "matryoshka_batchtopk", "matryoshka_widths": [16, 128]}]))
    train_case("context_too_long", "context longer than the model's positions", r"context_size 128 .* 64 positions",
               data=d(text={**d()["text"], "context_size": 128}), fresh=True)
    (work / "empty.txt").write_text("")
    train_case("empty_corpus", "empty corpus", r"gave no train context", data=d(text={**d()["text"], "source": str(work / "empty.txt")}), fresh=True)
    (work / "latin1.txt").write_bytes("caf\u00e9 na\u00efve r\u00e9sum\u00e9 ".encode("latin-1") * 50)
    train_case("non_utf8_text", "non-UTF-8 text", r"latin1.txt is not UTF-8 text \(byte 0xe9",
               data=d(text={**d()["text"], "source": str(work / "latin1.txt")}), fresh=True)
    small = work / "small-text"
    small.mkdir()
    (small / "one.txt").write_text("def f(x):\n    return x * 2\n" * 40)
    train_case("no_eval_text", "a text folder too small to hold out evaluation text (failed after training)",
               r"gave no eval context .*raise text.eval_fraction", data=d(text={**d()["text"], "source": str(small),
                                                                              "eval_fraction": 0.02}),
               fresh=True, must_not_exist=work / "no_eval_text-out" / "checkpoint")
    nan_model = _copy(fx.model, work / "nan-llama")
    _poison(nan_model)
    train_case("nan_activations", "model weights that make NaN/inf activations",
               r"activations at blocks.1.hook_resid_post hold NaN or infinite values .* step 0", data=d(model=str(nan_model)),
               fresh=True)
    train_case("hub_model_offline", "a hub model name with no hub", r"'EleutherAI/pythia-14m' needs the Hugging Face hub",
               data=d(model="EleutherAI/pythia-14m"), env={"HF_HUB_OFFLINE": "1"})
    train_case("unknown_model", "unknown model name", r"unknown model 'smollm3'.*did you mean smollm2-135m", data=d(model="smollm3"))
    (work / "a-file").write_text("not a folder")
    cases.append(Case("out_is_file", "output folder is a file", ["train", str(cfg_file("out_is_file", d())), "--out", str(work / "a-file")],
                      r"output path .*a-file is a file, not a folder", protect=None))
    marker = work / "PICKLE_RAN"
    pt = _pickle_with_payload(work / "tokens.pt", marker)
    train_case("pickle_tokens", "a pickle .pt file as pre-tokenized text", r"tokens.pt looks like a pickle file",
               data=d(text={**d()["text"], "source": f"tokens:{pt}"}), must_not_exist=marker, fresh=True)
    bin_model = work / "bin-llama"
    bin_model.mkdir()
    for f in fx.model.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, bin_model / f.name)
    _pickle_with_payload(bin_model / "pytorch_model.bin", marker)
    train_case("pickle_model_weights", "a model folder with pickled weights only", r"pickled .bin weights are refused",
               data=d(model=str(bin_model)), must_not_exist=marker)
    fresh = work / "fresh-out"
    cases.append(Case("resume_without_checkpoint", "--resume with nothing to resume",
                      ["train", str(cfg_file("resume_without_checkpoint", d())), "--out", str(fresh), "--resume"], r"--resume: no checkpoint"))
    train_case("resume_other_config", "--resume with a changed config", r"made with another config \(differs in: saes\)",
               data=d(saes=[{**sae0, "lr": 0.01}]), extra=["--resume"])
    train_case("rerun_finished_run", "a second run into a finished run's folder", r"already holds a checkpoint", data=d())
    for name, what, damage, expect in [
        ("checkpoint_json_truncated", "truncated checkpoint state.json", ("state.json", 40), r"checkpoint .*state.json is not valid JSON"),
        ("checkpoint_tensors_truncated", "truncated checkpoint safetensors", ("state.safetensors", 100),
         r"checkpoint .*state.safetensors is truncated or corrupt"),
    ]:
        out = _copy(fx.run, work / f"{name}-run")
        f = out / "checkpoint" / damage[0]
        f.write_bytes(f.read_bytes()[: damage[1]])
        cases.append(Case(name, what, ["train", str(cfg_file(name, d())), "--out", str(out), "--resume"], expect, protect=out))

    # ---- activation cache
    def cache_case(name: str, what: str, expect: str, extra: list[str], model: Path | None = None, **kw) -> None:
        out = _copy(fx.cache, work / f"{name}-cache")
        argv = ["cache", "--out", str(out), "--model", str(model or fx.model), "--text", str(fx.text), "--context-size", "32",
                "--hook", SITE, "--hook", "blocks.0.attn.hook_z:*", *extra]
        cases.append(Case(name, what, argv, expect, protect=out, **kw))

    cache_case("cache_other_model", "an activation cache reused with another model", r"made for another model",
               ["--tokens", "2560"], model=tiny_llama(work / "other-llama", _tokenizer_of(fx.model), seed=1))
    cache_case("cache_bad_dtype", "unknown dtype", r"field 'dtype'", ["--dtype", "float8"])
    cache_case("cache_bad_split", "unknown split", r"--split must be train or eval", ["--split", "test"])
    cache_case("disk_full", "no space left (file size limit below a shard's size)", r"could not write .*shard_\d+.safetensors.*File too large",
               ["--tokens", str(32 * 40 * 3)], fsize_limit=16 * 1024, subprocess_only=True)

    # ---- dashboards
    def dash_case(name: str, what: str, expect: str, sae: Path, **kw) -> None:
        out = _copy(fx.dashboards, work / f"{name}-dash")
        argv = ["dashboards", "--sae", str(sae), "--out", str(out), "--model", str(fx.model), "--text", str(fx.text),
                "--tokens", "1024", "--context-size", "32", "--batch", "8", "--wandb", "off"]
        cases.append(Case(name, what, argv, expect, protect=out, **kw))

    def sae_copy(name: str) -> Path:
        return _copy(fx.sae, work / name / "sae")

    s = sae_copy("trunc")
    w = s / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:200])
    dash_case("sae_weights_truncated", "truncated SAE safetensors", r"SAE weights .* is truncated or corrupt", s)
    s = sae_copy("garbage")
    (s / "sae_weights.safetensors").write_bytes(os.urandom(4096))
    dash_case("sae_weights_garbage", "SAE safetensors of random bytes", r"SAE weights .* is truncated or corrupt", s)
    s = sae_copy("pickled")
    _pickle_with_payload(s / "sae_weights.safetensors", marker)
    dash_case("sae_weights_pickle", "a pickle where the SAE safetensors should be", r"SAE weights .* is truncated or corrupt", s,
              must_not_exist=marker)
    s = sae_copy("gated")
    cfg = json.loads((s / "cfg.json").read_text())
    (s / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    dash_case("cfg_other_architecture", "a cfg.json of an architecture we cannot read", r"architecture 'gated' is not supported", s)
    s = sae_copy("badjson")
    (s / "cfg.json").write_text("{")
    dash_case("cfg_not_json", "a cfg.json that is not JSON", r"SAE config .*cfg.json is not valid JSON", s)
    s = sae_copy("deep")
    (s / "cfg.json").write_text(json.dumps({**cfg, "metadata": {**cfg["metadata"], "hook_name": "blocks.9.hook_resid_post"}}))
    dash_case("sae_hook_not_in_model", "an SAE whose hook the model does not have", r"reads blocks.9.hook_resid_post.*has 2 layers", s)
    dash_case("d_in_mismatch", "an SAE whose d_in is not the hook's width", r"takes inputs of width 16, but blocks.1.hook_resid_post .* width 32",
              _narrow_sae(work / "narrow"))
    dash_case("sae_missing", "an SAE folder that does not exist", r"SAE folder .* does not exist", work / "no-such-sae")
    other = _narrow_sae(work / "other-sae", d_in=32, seed=3)
    dash_case("dashboards_of_another_sae", "dashboards of another SAE into a folder with a checkpoint",
              r"holds statistics of another run", other)

    # ---- circuits: refused before the model is loaded, nothing written
    def circuit_case(name: str, what: str, expect: str, extra: list[str], command: str = "circuit") -> None:
        out = work / f"{name}-circuit"
        cases.append(Case(name, what, [command, "--model", str(fx.model), "--task", "induction", "--out", str(out),
                                       *extra], expect, must_not_exist=out))

    circuit_case("circuit_random_only", "random, the floor, as the only method", r"random is the floor",
                 ["--method", "random"], command="circuit-methods")
    circuit_case("circuit_task_without_splits", "a task with no held-out splits",
                 r"task 'list_recall' has no held-out train / val / test splits", ["--task", "list_recall"])
    circuit_case("circuit_one_test_prompt", "one test prompt (no bootstrap)", r"field 'n_test'.*greater than or equal to 2",
                 ["--test", "1"])
    circuit_case("circuit_nan_learning_rate", "a NaN pruning learning rate", r"field 'pruning.lr'.*finite number",
                 ["--pruning-lr", "nan"])
    circuit_case("circuit_unknown_granularity", "an unknown granularity", r"granularities", ["--granularity", "layers"])
    cases.append(Case("circuit_out_is_file", "a circuit's output folder is a file",
                      ["circuit", "--model", str(fx.model), "--task", "induction", "--out", str(work / "a-file")],
                      r"output path .*a-file is a file, not a folder"))
    circuit_case("circuit_negative_random", "a negative number of random circuits", r"field 'random_draws'.*greater than",
                 ["--random", "-1"])

    # ---- numeric options: NaN, out of range, malformed (one error line, before any work)
    m = str(fx.model)

    def option_case(name: str, what: str, expect: str, argv: list[str]) -> None:
        out = work / f"{name}-out"
        cases.append(Case(name, what, [a if a != "OUT" else str(out) for a in argv], expect, must_not_exist=out))

    option_case("heads_nan_min_z", "heads --min-z nan (kept every edge's NaN comparison false: an empty graph)",
                r"field 'min_z'.*finite number", ["heads", "--model", m, "--out", "OUT", "--min-z", "nan"])
    option_case("heads_negative_top", "a negative --top", r"Invalid value for '--top'.*greater than or equal to 0",
                ["heads", "--model", m, "--out", "OUT", "--top", "-1"])
    option_case("unknown_option", "a misspelt option", r"No such option: --null-drws",
                ["heads", "--model", m, "--out", "OUT", "--null-drws", "8"])
    option_case("heads_out_is_file", "the heads output folder is a file", r"a-file is a file, not a folder",
                ["heads", "--model", m, "--out", str(work / "a-file")])
    option_case("match_cosine_above_one", "match --min-cos 2 (no cosine reaches it: nothing links)",
                r"Invalid value for '--min-cos'", ["match", "--sae-a", str(fx.sae), "--sae-b", str(fx.sae), "--mode",
                                                   "chains", "--out", "OUT", "--min-cos", "2"])
    option_case("probe_nan_test_fraction", "layers probe --test-fraction nan", r"field 'test_fraction'.*finite number",
                ["layers", "probe", "--model", m, "--out", "OUT", "--test-fraction", "nan"])
    option_case("probe_sae_of_another_width", "layers probe with an SAE whose width is not the model's",
                r"takes inputs of width 16, but blocks.1.hook_resid_post .* width 32",
                ["layers", "probe", "--model", m, "--out", "OUT", "--sae", str(_narrow_sae(work / "probe-narrow"))])
    option_case("tuned_lens_zero_lr", "layers tuned-lens --lr 0", r"field 'lr'.*greater than 0",
                ["layers", "tuned-lens", "--model", m, "--out", "OUT", "--lr", "0", "--text", str(fx.text)])
    option_case("circuit_prompts_beyond_memory", "circuit --train 100000000 (ran for hours with rising memory)",
                r"100,000,\d+ prompts .* need about [\d.]+ GiB; [\d.]+ GiB is free \(lower --train, --val and --test to [\d,]+",
                ["circuit", "--model", m, "--task", "induction", "--out", "OUT", "--train", "100000000"])
    (work / "words.yaml").write_text("names: [Ann, Ann]\n")
    option_case("circuit_repeated_words", "a --words file whose names repeat", r"word list 'names' must hold distinct",
                ["circuit", "--model", m, "--task", "ioi", "--out", "OUT", "--words", str(work / "words.yaml")])
    option_case("circuit_multi_token_names", "IOI on a tokenizer that splits every name (advice must be followable)",
                r"single tokens for llama.*--words FILE", ["circuit", "--model", m, "--task", "ioi", "--out", "OUT"])
    cases.append(Case("cache_folder_not_writable", "SAECIRCUITS_CACHE under a file (an unwritable model cache)",
                      ["heads", "--model", "smollm2-135m", "--out", str(work / "heads-cache-out")],
                      r"the model cache .*a-file/cache cannot be written .*set SAECIRCUITS_CACHE to a writable folder",
                      env={"SAECIRCUITS_CACHE": str(work / "a-file" / "cache")}, must_not_exist=work / "heads-cache-out"))
    option_case("study_list_of_one_item", "study talking-heads --items 1 (a list needs two items to recall one)",
                r"lists need at least 2 items", ["study", "talking-heads", "--model", m, "--out", "OUT", "--items", "1"])
    option_case("study_control_without_splits", "study component-reuse --control ioi (the control must be a third task)",
                r"control task must be one with held-out splits", ["study", "component-reuse", "--model", m, "--out", "OUT",
                                                                   "--control", "ioi"])
    option_case("study_haystack_too_short", "study retrieval-heads --length 8 (no room for a needle)",
                r"haystack lengths must be at least 16 tokens", ["study", "retrieval-heads", "--model", m, "--out", "OUT",
                                                                 "--length", "8"])
    option_case("study_on_a_tokenizer_that_splits_words", "study talking-heads on a byte tokenizer (it takes no --words)",
                r"single tokens for llama.*run them on a model whose tokenizer keeps common English words whole",
                ["study", "talking-heads", "--model", m, "--out", "OUT"])
    option_case("circuit_text_for_a_number", "a word where a number goes", r"Invalid value for '--train'",
                ["circuit", "--model", m, "--task", "induction", "--out", "OUT", "--train", "many"])
    return cases


def _tokenizer_of(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model))


def _poison(model: Path) -> None:
    """Write an infinite value into the first layer's weights: its activations become inf/NaN."""
    from safetensors.torch import load_file, save_file

    f = next(model.glob("*.safetensors"))
    t = load_file(f)
    key = next(k for k in t if "layers.0.mlp.down_proj" in k)
    t[key][0, 0] = float("inf")
    save_file(t, f, metadata={"format": "pt"})


def _narrow_sae(folder: Path, d_in: int = 16, seed: int = 0) -> Path:
    from saecircuits.sae import SAEConfig, build
    from saecircuits.sae import format as sae_format

    cfg = SAEConfig(architecture="topk", hook=SITE, d_sae=48, k=4, seed=seed)
    return sae_format.save(build(cfg, d_in), folder, model_name="llama")


# ---------------------------------------------------------------- running and judging


def folder_hashes(folder: Path | None) -> dict[str, str]:
    if folder is None or not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Outcome:
    code: int
    stderr: str
    error_lines: list[str]
    problems: list[str]


def judge(case: Case, code: int, stderr: str, before: dict[str, str]) -> Outcome:
    """What is wrong with how a command answered a fault (nothing: problems == [])."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error:", "internal error:"))]
    problems = []
    if code == 0:
        problems.append("exit code 0")
    if "Traceback" in stderr:
        problems.append("traceback printed")
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines")
    elif errors[0].startswith("internal error"):
        problems.append("an internal error, not a clear message")
    elif not re.search(case.expect, errors[0]):
        problems.append(f"message does not match {case.expect!r}")
    after = folder_hashes(case.protect)
    damaged = [k for k, h in before.items() if after.get(k) != h]
    if damaged:
        problems.append(f"earlier files changed or lost: {damaged[:3]}")
    if case.must_not_exist is not None and case.must_not_exist.exists():
        problems.append("a pickle payload ran")
    return Outcome(code, stderr, errors, problems)


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIM), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "WANDB_MODE": "disabled", "SAECIRCUITS_DEBUG": ""}
    env.pop("SAECIRCUITS_DEBUG")
    env.update(extra or {})
    return env


def run_subprocess(case: Case, timeout: float = 300) -> Outcome:
    """The command in a fresh ``python -m saecircuits`` process (a file-size limit in the child if the case sets one)."""
    before = folder_hashes(case.protect)

    def limit() -> None:
        if case.fsize_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize_limit, case.fsize_limit))

    proc = subprocess.run([sys.executable, "-m", "saecircuits", *case.argv], capture_output=True, text=True,
                          env=subprocess_env(case.env), preexec_fn=limit, timeout=timeout)
    return judge(case, proc.returncode, proc.stderr, before)


def run_in_process(case: Case) -> Outcome:
    """The command through the same typer app in this process (no interpreter start-up: fast)."""
    from typer.testing import CliRunner

    from saecircuits.app.cli import app

    before = folder_hashes(case.protect)
    result = CliRunner().invoke(app, case.argv, env=case.env)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))  # escaped the command: as a user would see it
    return judge(case, result.exit_code, stderr, before)
