"""The main job: the whole flow on one model, under one output folder, re-runnable.

Stages, each writing its own subfolder and skipped on a rerun whose settings are unchanged (a
stage that was interrupted resumes where its own checkpoints allow):

    activations/  one forward pass per batch, cached as safetensors shards (shared by the SAEs)
    train/        TopK SAEs on the residual stream of a few layers, all from that one stream
    dashboards/   one static site per SAE (and the Neuronpedia export)
    matching/     the SAEs' features matched across layers, with similarity statistics
    heads/        the weight graph of head-to-head composition
    circuit/      the task's head circuit: found on train prompts, sized on validation, scored on test under
                  every ablation beside random circuits (as saecircuits circuit-methods writes it)
    layers/       logit lens on the circuit's prompts, sublayer contributions, layer skipping
    report/       the circuit report (HTML, Markdown, PDF/PNG figures, LaTeX tables, results.json)
    wandb/        one W&B run of the whole job (offline unless logged in and reachable)

Defaults run on the embedded SmolLM2 with the Python standard library as text; options scale it
up (more tokens and layers, the Gemma model, a hub model and dataset where a hub is reachable).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from rich.console import Console

from saecircuits.circuits.config import ComparisonConfig
from saecircuits.circuits.task_names import split_task
from saecircuits.core.config import Config
from saecircuits.core.files import ensure_dir, read_json, write_json
from saecircuits.core.tracking import Run, WandbConfig

console = Console(stderr=True)


class DemoConfig(Config):
    """What the main job runs on and how big each stage is."""

    model: str = "smollm2-135m"
    text: str = Field("stdlib", description="stdlib | bible | PATH | hf:NAME | tokens:PATH")
    eval_fraction: float = Field(0.02, gt=0, lt=1, description="share of the text's documents held out for evaluation")
    layers: list[int] = Field([3, 6, 9], min_length=1, description="residual-stream layers to train SAEs on")
    context_size: int = Field(128, ge=2, description="tokens per context of the text the SAEs and layer analyses read")
    tokens: int = Field(200_000, ge=4096, description="training tokens per SAE")
    expansion: float = Field(8, gt=0)
    k: int = Field(32, ge=1)
    lr: float = Field(4e-3, gt=0)
    dashboard_tokens: int = Field(32_768, ge=128, description="tokens each SAE's dashboards read")
    match_tokens: int = Field(32_768, ge=128, description="tokens the feature matching compares")
    match_null: int = Field(200, ge=0, description="shuffled pairings in each similarity null")
    task: str = Field("ioi", description="the circuit task")
    prompts: int = Field(64, ge=4, description="clean/corrupted prompt pairs of the circuit task")
    circuit_methods: tuple[str, ...] = Field(("eap-ig",), description="discovery methods the circuit is chosen among "
                                             "(see saecircuits circuit-methods; greedy and edge-pruning take longer)")
    layer_tokens: int = Field(4096, ge=128, description="tokens the layer analyses read")
    out: str = "runs/demo"
    wandb: WandbConfig = WandbConfig()

    @field_validator("task")
    @classmethod
    def _split_task(cls, v: str) -> str:
        return split_task(v)

    @model_validator(mode="after")
    def _circuit_settings(self) -> DemoConfig:
        self.circuit_config()  # a bad method list fails here, before the stages run
        return self

    def circuit_config(self) -> ComparisonConfig:
        """The circuit stage's comparison: half the prompts for train and for validation, all of them for test."""
        half = max(1, self.prompts // 2)
        return ComparisonConfig(task=self.task, n_train=half, n_val=half, n_test=self.prompts,
                                methods=self.circuit_methods, granularities=("nodes",))

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(x < 0 for x in v):
            raise ValueError("layers must be distinct non-negative layer indices")
        return sorted(v)


# ``saecircuits demo --quick``: the whole flow at toy sizes, to check an installation in minutes
QUICK = {"tokens": 16_384, "dashboard_tokens": 4096, "match_tokens": 4096, "match_null": 50, "prompts": 16,
         "layer_tokens": 1024, "out": "runs/demo_quick"}


class Stage:
    """A stage's folder and its marker: done when the marker holds the same settings."""

    def __init__(self, out: Path, name: str, settings: dict):
        self.name, self.folder, self.settings = name, out / name, settings

    def done(self) -> bool:
        marker = self.folder / "stage.json"
        return marker.exists() and read_json(marker, what="stage marker").get("settings") == self.settings

    def run(self, fn: Callable[[Path], dict]) -> dict:
        """``fn(folder)`` once; later calls with the same settings read its saved result."""
        if self.done():
            console.print(f"[dim]{self.name}: reusing {self.folder}[/dim]")
            return read_json(self.folder / "stage.json", what="stage marker")["result"]
        console.rule(f"[bold]{self.name}")
        # a marker of other settings goes first: else a run interrupted while it rewrites this folder would leave
        # that marker beside the half-rewritten files, and a rerun with those settings would take them as done
        (self.folder / "stage.json").unlink(missing_ok=True)
        start = time.perf_counter()
        result = fn(ensure_dir(self.folder))
        seconds = time.perf_counter() - start
        write_json(self.folder / "stage.json", {"settings": self.settings, "seconds": seconds, "result": result})
        console.print(f"[dim]{self.name}: {seconds:,.0f} s[/dim]")
        return result


def _sites(cfg: DemoConfig) -> list[str]:
    return [f"blocks.{layer}.hook_resid_post" for layer in cfg.layers]


def train_stage(cfg: DemoConfig, model, out: Path, run: Run) -> dict:
    """TopK SAEs on ``blocks.{L}.hook_resid_post`` for every demo layer, one cached stream."""
    from saecircuits.core.config import validate
    from saecircuits.model import hooks
    from saecircuits.training.config import TrainConfig
    from saecircuits.training.run import train

    sites = _sites(cfg)
    for s in sites:
        hooks.validate(model, s)
    tc = validate(TrainConfig, {
        "model": cfg.model,
        "text": {"source": cfg.text, "context_size": cfg.context_size, "eval_fraction": cfg.eval_fraction},
        "store": {"batch_size_tokens": 4096, "model_batch_size": 8, "buffer_tokens": 65536,
                  "normalize": "expected_average_only_in"},
        "saes": [{"architecture": "topk", "expansion": cfg.expansion, "k": cfg.k, "lr": cfg.lr, "sweep": {"hook": sites}}],
        "total_tokens": cfg.tokens,
        "activation_cache": str(out / "activations"),
        "checkpoint_every_tokens": max(cfg.tokens // 5, 4096),
        "eval": {"contexts": 32},
        "wandb": cfg.wandb.model_dump(),
        "out": str(out / "train"),
    }, where="demo")

    def fn(folder: Path) -> dict:
        resume = (folder / "checkpoint" / "state.json").exists()
        summary = train(tc, resume=resume, model=model, run=run)
        for s in summary["saes"].values():
            s.pop("density_histogram", None)
        return summary

    return Stage(out, "train", tc.model_dump(mode="json", exclude={"wandb"})).run(fn)


def dashboards_stage(cfg: DemoConfig, model, out: Path, trained: dict, run: Run) -> dict:
    from saecircuits.dashboards import build_dashboards

    def fn(folder: Path) -> dict:
        result = {}
        for name, s in trained["saes"].items():
            summary = build_dashboards(s["path"], cfg.model, cfg.text, folder / name, cfg.dashboard_tokens,
                                       wandb="off", loaded_model=model, wandb_run=run,
                                       text={"context_size": cfg.context_size})
            result[name] = {k: summary[k] for k in ("index", "n_features", "n_live", "n_dead", "tokens", "seconds")}
        return result

    return Stage(out, "dashboards", {"saes": sorted(trained["saes"]), "tokens": cfg.dashboard_tokens,
                                     "text": cfg.text, "context_size": cfg.context_size}).run(fn)


def matching_stage(cfg: DemoConfig, model, out: Path, trained: dict) -> dict:
    """Every pair of the demo's SAEs, matched by activations over the same text (one forward pass)."""
    from saecircuits.core.files import plain_json
    from saecircuits.matching.activations import match_saes
    from saecircuits.matching.config import MatchConfig
    from saecircuits.matching.outputs import write_match
    from saecircuits.matching.result import MatchResult
    from saecircuits.model.hooks import layer_of
    from saecircuits.sae import format as sae_format

    def fn(folder: Path) -> dict:
        saes = {f"L{layer_of(s['hook'])}": sae_format.load(s["path"]) for s in trained["saes"].values()}
        names = list(saes)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        if not pairs:
            return {"skipped": "one layer only: nothing to match"}
        mc = MatchConfig(text={"source": cfg.text, "seed": 1, "context_size": cfg.context_size}, tokens=cfg.match_tokens, null=cfg.match_null,
                         random_subsets=0)  # the shuffled-pairing null is the test; subsets would triple the time
        result = match_saes(saes, saes, model, cfg=mc, pairs=pairs)  # one suite: every SAE on both sides
        written = write_match(result, folder)
        match = MatchResult.from_json(result)
        return {"files": plain_json(written), "results": plain_json([r.to_json(with_pairs=False) for r in match.results]),
                "timing": match.timing}

    return Stage(out, "matching", {"saes": sorted(trained["saes"]), "tokens": cfg.match_tokens, "null": cfg.match_null,
                                   "text": cfg.text, "context_size": cfg.context_size}).run(fn)


def heads_stage(cfg: DemoConfig, model, out: Path) -> dict:
    from saecircuits.heads import graph as heads

    return Stage(out, "heads", {"model": cfg.model}).run(lambda folder: heads.run(model, folder))


def circuit_stage(cfg: DemoConfig, model, out: Path) -> dict:
    """The task's circuit by ``saecircuits circuit-methods``'s pipeline: discovered on train prompts, its size
    chosen on validation, scored on held-out test prompts under every ablation beside random circuits."""
    from saecircuits.circuits.comparison import compare
    from saecircuits.circuits.comparison_files import write_comparison
    from saecircuits.report.comparison import render

    cc = cfg.circuit_config()

    def fn(folder: Path) -> dict:
        start = time.perf_counter()
        result = compare(model, cc, note=lambda msg: console.print(f"  {msg}", highlight=False))
        result["config"] = {**cc.model_dump(mode="json"), "model": cfg.model, "seconds": time.perf_counter() - start,
                            "processes": 1}
        write_comparison(result, folder, markdown=render)  # the folder is replaced whole
        c = result["circuit"]["head_circuit"]
        f = {a: row["task"]["f"] for a, row in c["test"].items() if "task" in row}
        console.print(f"  head circuit: {c['count']} nodes from {c['method']}; test f " +
                      ", ".join(f"{a} {v:.3f}" for a, v in f.items()))
        return {"files": sorted(p.name for p in folder.iterdir()), "method": c["method"], "count": c["count"],
                "heads": result["circuit"]["heads"], "mlps": result["circuit"]["mlps"], "test_f": f,
                "seconds": result["config"]["seconds"]}

    return Stage(out, "circuit", {"model": cfg.model, **cc.model_dump(mode="json")}).run(fn)


def layers_stage(cfg: DemoConfig, model, out: Path) -> dict:
    from saecircuits import layerwise as layers
    from saecircuits.layerwise.lens import task_prompts

    def fn(folder: Path) -> dict:
        prompts = task_prompts(model, cfg.task, n=min(cfg.prompts, 32))
        stream = layers.StreamConfig(text={"source": cfg.text, "context_size": cfg.context_size, "eval_fraction": cfg.eval_fraction},
                                     tokens=cfg.layer_tokens)
        result = layers.section(model, prompts["prompts"], prompts["answers"], stream=stream,
                                skip_tokens=min(cfg.layer_tokens, 1024), out=str(folder))
        return {name: {"files": [str(p) for p in r.get("files", [])]} for name, r in result.items()}

    return Stage(out, "layers", {"model": cfg.model, "task": cfg.task, "tokens": cfg.layer_tokens,
                                 "text": cfg.text, "context_size": cfg.context_size}).run(fn)


def report_stage(cfg: DemoConfig, model, out: Path, run: Run) -> dict:
    """The report from every earlier stage's files; redone whenever any of their results changed."""
    import hashlib

    from saecircuits.report import report_run
    from saecircuits.report.collect import SCHEMA

    stages = ("train", "dashboards", "matching", "heads", "circuit", "layers")
    digest = hashlib.sha256(b"".join((out / s / "stage.json").read_bytes() for s in stages
                                     if (out / s / "stage.json").exists())).hexdigest()

    def fn(folder: Path) -> dict:
        paths = report_run(out, folder, model=model, run=run)
        return {"html": str(paths["html"]), "markdown": str(paths["markdown"]), "results": str(paths["results"]),
                "figures": sorted(paths["figures"]), "tables": sorted(paths["tables"])}

    return Stage(out, "report", {"stages": digest, "schema": SCHEMA}).run(fn)


def run(cfg: DemoConfig) -> dict:
    """Run every stage; returns {stage: its result}."""
    from saecircuits.model import loading as models

    out = ensure_dir(cfg.out)
    write_json(out / "demo_config.json", cfg.model_dump(mode="json"))
    console.print(f"[bold]saecircuits demo[/bold]: {cfg.model}, text {cfg.text}, layers {cfg.layers}, "
                  f"{cfg.tokens:,} tokens per SAE -> {out}")
    model = models.load(cfg.model)
    run = Run(cfg.wandb, out, cfg.model_dump(mode="json"), job="demo")
    results: dict = {}
    try:
        results["train"] = train_stage(cfg, model, out, run)
        results["dashboards"] = dashboards_stage(cfg, model, out, results["train"], run)
        results["matching"] = matching_stage(cfg, model, out, results["train"])
        results["heads"] = heads_stage(cfg, model, out)
        results["circuit"] = circuit_stage(cfg, model, out)
        results["layers"] = layers_stage(cfg, model, out)
        results["report"] = report_stage(cfg, model, out, run)
    finally:
        results["wandb_sync"] = run.finish()
    results["closing"] = closing_lines(out, results)
    return results


def closing_lines(out: Path, results: dict) -> list[str]:
    """Where to look, for the end of the run."""
    lines = [f"[bold green]done[/bold green]: everything is under {out}"]
    if (out / "report" / "index.html").exists():
        lines.append(f"  report:      {out / 'report' / 'index.html'} (also report.md, figures/, tables/, results.json)")
    for name, d in results.get("dashboards", {}).items():
        lines.append(f"  dashboards:  {d['index']}  ({d['n_live']:,} live / {d['n_features']:,} features of {name})")
    for stage in ("matching", "heads", "circuit", "layers"):
        if stage in results:
            lines.append(f"  {stage + ':':<12} {out / stage}")
    if results.get("wandb_sync"):
        lines.append(f"  W&B ran offline; upload it with: {results['wandb_sync']}")
    return lines
