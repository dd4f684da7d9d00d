"""The ``saecircuits`` command line: one command a stage, errors as one line (tracebacks with --debug).

The ``layers`` group lives in ``layers_commands``. Option defaults are the stages' config defaults. A
command imports the stage it runs only when it runs: most stages import TransformerLens (seconds),
which ``--help`` and option errors should not wait for.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from saecircuits.app.command import app, command, console
from saecircuits.app.demo import QUICK, DemoConfig
from saecircuits.app.demo import run as run_demo
from saecircuits.app.layers_commands import layers_app
from saecircuits.app.study_commands import study_app
from saecircuits.circuits.config import ABLATIONS, METHODS, REPORTED, ComparisonConfig
from saecircuits.core.config import read_yaml, validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.dashboards.config import DashboardConfig
from saecircuits.heads.config import HeadGraphConfig
from saecircuits.matching.config import MatchConfig
from saecircuits.text.config import TextConfig


@command
def models(
    load: str = typer.Option(None, "--load", help="Load (and on first use convert and cache) this model, then report it."),
) -> None:
    """List the models that work offline, or load one and show its shape."""
    from saecircuits.model import loading as m

    if load:
        model = m.load(load)
        c = model.cfg
        console.print(
            f"{c.model_name}: {c.n_layers} layers, {c.n_heads} heads ({c.n_key_value_heads or c.n_heads} key/value), "
            f"d_model {c.d_model}, d_head {c.d_head}, d_mlp {c.d_mlp}, vocab {c.d_vocab}"
        )
        return
    t = Table(title="models that load offline")
    for col in ("name", "hub name", "package", "installed"):
        t.add_column(col)
    for spec in m.OFFLINE_MODELS.values():
        try:
            importlib.metadata.distribution(spec.distribution)
            ok = "yes"
        except importlib.metadata.PackageNotFoundError:
            ok = f"no: {spec.install}"
        t.add_row(spec.name, spec.hf_name, spec.distribution, ok)
    Console().print(t)
    console.print(f"cache: {m.cache_root() / 'models'}; any TransformerLens model name also works where the hub is reachable")


_TEXT = TextConfig()  # the cache command's text defaults


@command(resumes=True)
def cache(
    out: Path = typer.Option(..., "--out", help="Cache folder (created, or resumed if it holds a partial cache)."),
    hook: list[str] = typer.Option(..., "--hook", help="Hook site, e.g. blocks.6.hook_resid_post or blocks.3.attn.hook_z:* (repeatable)."),
    model: str = typer.Option("smollm2-135m", "--model"),
    text: str = typer.Option(_TEXT.source, "--text", help="stdlib | bible | PATH | hf:NAME | tokens:PATH"),
    tokens: int = typer.Option(200_000, "--tokens", min=1, help="Context tokens to run through the model."),
    context_size: int = typer.Option(_TEXT.context_size, "--context-size", min=2),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    split: str = typer.Option("train", "--split", help="train | eval"),
) -> None:
    """Run the model over text once and cache activations of many hook sites as safetensors shards."""
    from saecircuits.activations.cache import build_cache, cache_size_bytes
    from saecircuits.activations.store import StoreConfig
    from saecircuits.core.config import validate
    from saecircuits.model import loading as m
    from saecircuits.text.config import TextConfig
    from saecircuits.text.source import TextSource

    if split not in ("train", "eval"):
        raise SaecircuitsError(f"--split must be train or eval, got '{split}'")
    store_cfg = validate(StoreConfig, {"dtype": dtype}, where="--dtype")
    text_cfg = validate(TextConfig, {"source": text, "context_size": context_size}, where="--text")
    lm = m.load(model)
    c = build_cache(out, lm, hook, TextSource.for_model(text_cfg, lm), store_cfg, tokens, split=split)  # type: ignore[arg-type]
    console.print(
        f"cache {out}: {c.manifest['n_rows']:,} rows from {c.n_contexts:,} contexts, {len(c.shards)} shards, "
        f"{cache_size_bytes(out) / 2**20:,.0f} MB" + (" (text source exhausted)" if c.manifest["source_exhausted"] else "")
    )


_DASHBOARDS = {name: f.default for name, f in DashboardConfig.model_fields.items()}  # the dashboards command's defaults


@command(resumes=True)
def dashboards(
    sae: Path = typer.Option(..., "--sae", help="SAE folder (SAELens format: cfg.json + sae_weights.safetensors)."),
    out: Path = typer.Option(..., "--out", help="Output folder: index.html, features/<id>.html, stats, Neuronpedia JSON."),
    model: str = typer.Option(_DASHBOARDS["model"], "--model", help="The model the SAE reads (an offline name, a folder or a hub name)."),
    text: str = typer.Option(_DASHBOARDS["text"].source, "--text", help="stdlib | bible | PATH | hf:NAME | tokens:PATH"),
    tokens: int = typer.Option(_DASHBOARDS["tokens"], "--tokens", min=1, help="Context tokens to run through the model and the SAE."),
    context_size: int = typer.Option(_DASHBOARDS["text"].context_size, "--context-size", min=2),
    batch: int = typer.Option(_DASHBOARDS["batch_contexts"], "--batch", min=1, help="Contexts per forward pass."),
    wandb: str = typer.Option(_DASHBOARDS["wandb"].mode, "--wandb", help="auto | online | offline | off"),
    restart: bool = typer.Option(False, "--restart", help="Discard statistics checkpointed in --out by an earlier run."),
) -> None:
    """Feature dashboards: one pass over text, then an offline HTML site, Neuronpedia JSON and W&B pages.

    A rerun with the same arguments resumes after the last checkpointed batch.
    """
    from saecircuits.dashboards.build import build_dashboards

    s = build_dashboards(sae, model, text, out, tokens, wandb=wandb, restart=restart, batch_contexts=batch,
                         text={"context_size": context_size})
    console.print(
        f"{s['n_features']:,} features ({s['n_live']:,} live, {s['n_dead']:,} dead) over {s['tokens']:,} tokens "
        f"in {s['seconds']['total']:.0f} s; open {s['index']}"
    )
    if s.get("wandb_sync"):
        console.print(f"W&B ran offline; upload later with: {s['wandb_sync']}")


@command(resumes=True)
def train(
    config: Path = typer.Argument(..., help="Training config (YAML): model, text, store, saes, total_tokens, ..."),
    out: str = typer.Option(None, "--out", help="Output folder (overrides the config's out)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in the output folder."),
    wandb: str = typer.Option(None, "--wandb", help="auto | online | offline | off (overrides the config)."),
    tokens: int = typer.Option(None, "--tokens", min=1, help="Training tokens (overrides total_tokens)."),
) -> None:
    """Train SAEs (and transcoders) from one activation stream; write them in SAELens's format."""
    from saecircuits.core.config import read_yaml, validate
    from saecircuits.training.config import TrainConfig
    from saecircuits.training.run import train as run_training

    data = read_yaml(config)
    if not isinstance(data, dict):
        raise SaecircuitsError(f"{config}: expected a mapping of fields, got {type(data).__name__}")
    if out:
        data["out"] = out
    if tokens:
        data["total_tokens"] = tokens
    if wandb:
        data.setdefault("wandb", {})["mode"] = wandb
    cfg = validate(TrainConfig, data, where=str(config))
    summary = run_training(cfg, resume=resume)
    if summary:  # under torchrun, rank 0 reports
        print_train_summary(summary, cfg.out)


_DEMO = DemoConfig()  # the defaults the demo command's help names


@command(resumes=True)
def demo(
    out: str = typer.Option(None, "--out", help=f"Output folder (default {_DEMO.out}; reused on a rerun: finished stages are skipped)."),
    model: str = typer.Option(None, "--model", help="smollm2-135m | gemma-3-270m | a TransformerLens hub name"),
    text: str = typer.Option(None, "--text", help="stdlib | bible | PATH | hf:NAME | tokens:PATH"),
    layers: str = typer.Option(None, "--layers",
                               help=f"Comma-separated residual-stream layers for SAEs (default {','.join(map(str, _DEMO.layers))})."),
    tokens: int = typer.Option(None, "--tokens", help=f"Training tokens per SAE (default {_DEMO.tokens:,})."),
    eval_fraction: float = typer.Option(None, "--eval-fraction",
                                        help=f"Share of the text's documents held out for evaluation (default {_DEMO.eval_fraction}); "
                                             "raise it for a small text folder."),
    wandb: str = typer.Option(None, "--wandb", help="auto | online | offline | off"),
    config: Path = typer.Option(None, "--config", help="A YAML file of demo settings (see saecircuits.app.demo.DemoConfig)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes everywhere: checks the whole flow in a few minutes."),
) -> None:
    """The main job on the embedded default model: the whole flow under one output folder."""
    data = read_yaml(config) if config else {}
    if not isinstance(data, dict):
        raise SaecircuitsError(f"{config}: expected a mapping of demo settings, got {type(data).__name__}")
    if quick:
        data = {**QUICK, **data}
    if layers is not None:
        try:
            data["layers"] = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise SaecircuitsError(f"--layers must be comma-separated integers, got '{layers}'") from None
    given = {"out": out, "model": model, "text": text, "tokens": tokens, "eval_fraction": eval_fraction}
    data.update({k: v for k, v in given.items() if v is not None})
    if wandb is not None:
        data["wandb"] = {**data.get("wandb", {}), "mode": wandb}
    cfg = validate(DemoConfig, data, where=str(config) if config else "demo")
    results = run_demo(cfg)
    print_train_summary(results["train"], str(Path(cfg.out) / "train"))
    for line in results.get("closing", []):
        console.print(line)


_MATCH = {name: f.default for name, f in MatchConfig.model_fields.items()}  # the match command's defaults


@command
def match(
    sae_a: list[Path] = typer.Option(..., "--sae-a", help="SAE folder (SAELens format) on side A; repeatable (chains: in layer order)."),
    sae_b: list[Path] = typer.Option(None, "--sae-b", help="SAE folder on side B; repeatable. Every A x B pair is matched."),
    out: Path = typer.Option(..., "--out", help="Output folder for tables, graphs and figures."),
    mode: str = typer.Option("activations", "--mode", help="activations | weights | chains | flow"),
    model: str = typer.Option(None, "--model", help="Model of the A SAEs (default: the model named in the SAE's cfg.json)."),
    model_b: str = typer.Option(None, "--model-b", help="Model of the B SAEs, if another: text is aligned by character offsets."),
    align_to: str = typer.Option(None, "--align-to", help="Same-model pairs: compare only at the positions a match with this model's tokenizer compares (so the numbers sit beside a --model-b run)."),
    text: str = typer.Option(_MATCH["text"].source, "--text", help="stdlib | bible | PATH | hf:NAME"),
    tokens: int = typer.Option(_MATCH["tokens"], "--tokens", min=1, help="Compared tokens (aligned positions across models)."),
    context_size: int = typer.Option(_MATCH["text"].context_size, "--context-size", min=2),
    method: str = typer.Option(_MATCH["method"], "--method", help="hungarian (one-to-one) | best (many-to-one) | greedy"),
    min_r: float = typer.Option(_MATCH["min_r"], "--min-r", help="Pairs below this correlation are flagged low_r."),
    null: int = typer.Option(_MATCH["null"], "--null", min=0, help="Shuffled pairings per similarity null (0: skip SVCCA/RSA/CKA)."),
    random_subsets: int = typer.Option(_MATCH["random_subsets"], "--random-subsets", min=0, help="Draws of the random-subset baseline."),
    sample_tokens: int = typer.Option(_MATCH["sample_tokens"], "--sample-tokens", min=0, help="Tokens kept for activation-space similarity."),
    alignment: str = typer.Option(_MATCH["alignment"], "--alignment", help="boundary | cover (cross-model token alignment rule)"),
    drop_outlier_norm: float = typer.Option(_MATCH["drop_outlier_norm"], "--drop-outlier-norm", help="Leave out tokens whose input norm is this many times the median (0: keep all)."),
    min_cos: float = typer.Option(0.5, "--min-cos", min=-1.0, max=1.0, help="chains / flow: weakest decoder cosine that links two features."),
    flow_direction: str = typer.Option("decoder", "--flow-direction", help="flow: compare each feature's decoder or encoder direction"),
    batch_contexts: int = typer.Option(_MATCH["batch_contexts"], "--batch-contexts", min=1),
    seed: int = typer.Option(_MATCH["seed"], "--seed"),
) -> None:
    """Match SAE features across layers or models: tables, graphs, similarity statistics and heatmaps."""
    from saecircuits.app.match import run_match_command  # lazy: loads the model and SAE code (transformer_lens)

    written = run_match_command(
        [str(p) for p in sae_a], [str(p) for p in sae_b or []], str(out), mode=mode, model=model, model_b=model_b, align_to=align_to,
        settings={"text": {"source": text, "context_size": context_size}, "tokens": tokens, "method": method,
                  "min_r": min_r, "null": null, "random_subsets": random_subsets, "sample_tokens": sample_tokens,
                  "alignment": alignment, "batch_contexts": batch_contexts, "seed": seed,
                  "drop_outlier_norm": drop_outlier_norm or None},
        min_cos=min_cos, flow_direction=flow_direction, console=Console(),
    )
    console.print(f"written: {out} ({', '.join(sorted(written))})")


_HEADS = HeadGraphConfig()  # the heads command's defaults


@command
def heads(
    model: str = typer.Option("smollm2-135m", "--model", help="smollm2-135m | gemma-3-270m | a local HF folder | a TransformerLens hub name"),
    out: str = typer.Option(..., "--out", help="Output folder: heads.graphml, heads.json, scores.safetensors, summary.json."),
    top: int = typer.Option(_HEADS.top_per_receiver, "--top", min=0, help="Edges of each type kept into each receiver head (0: no limit)."),
    min_z: float = typer.Option(_HEADS.min_z, "--min-z", help="Keep only edges with at least this z-score."),
    min_score: float = typer.Option(_HEADS.min_score, "--min-score", help="Keep only edges with at least this composition score."),
    rank_by: str = typer.Option(_HEADS.rank_by, "--rank-by", help="z (same-spectrum null) | z_senders (vs the receiver's other senders) | score: what --top ranks by."),
    null_draws: int = typer.Option(_HEADS.null_draws, "--null-draws", help="Random same-spectrum senders per pair for the z-scores."),
    seed: int = typer.Option(_HEADS.seed, "--seed"),
) -> None:
    """Head weight graph: Q/K/V composition of every head pair, SVD channels, z-scores against a null."""
    from saecircuits.heads.graph import run

    cfg = validate(HeadGraphConfig, {"top_per_receiver": top or None, "min_z": min_z, "min_score": min_score,
                                     "rank_by": rank_by, "null_draws": null_draws, "seed": seed}, where="heads")
    s = run(model, out, cfg)
    t = Table(title=f"{s['model']}: {s['pairs']:,} head pairs, {s['edges']:,} edges kept, {s['seconds']:.1f} s")
    for col in ("type", "sender", "receiver", "score", "z"):
        t.add_column(col)
    for kind, rows in s["top_edges"].items():
        for e in rows[:5]:
            t.add_row(kind, e["sender"], e["receiver"], f"{e['score']:.3f}", f"{e['z']:.1f}")
    Console().print(t)
    console.print(f"wrote {out}")


def print_train_summary(summary: dict, out: str) -> None:
    t = Table(title=f"{len(summary['saes'])} SAE(s), {summary['tokens']:,} tokens, {summary['tokens_per_second']:,.0f} tok/s")
    for col in ("SAE", "d_sae", "L0", "expl. var.", "dead", "CE recovered", "KL"):
        t.add_column(col, justify="left" if col == "SAE" else "right")
    for name, r in summary["saes"].items():
        t.add_row(name, str(r["d_sae"]), f"{r['l0']:.1f}", f"{r['explained_variance']:.3f}", str(r["dead_latents"]),
                  f"{r.get('ce_loss_recovered', float('nan')):.3f}", f"{r.get('kl_to_clean', float('nan')):.4f}")
    Console().print(t)
    console.print(f"SAEs (SAELens format): {Path(out) / 'saes'}; summary: {Path(out) / 'summary.json'}")
    if summary.get("wandb_sync"):
        console.print(f"W&B ran offline; upload later with: {summary['wandb_sync']}")


app.add_typer(layers_app, name="layers")  # saecircuits layers MODE: layer-wise analysis (layers_commands)
app.add_typer(study_app, name="study")  # saecircuits study NAME: the seed papers' head-level studies (study_commands)


# ---------------------------------------------------------------- circuit: a task's head circuit, validated by ablation

_COMPARE = ComparisonConfig()  # the circuit and circuit-methods commands' defaults


def _comparison(model: str, data: dict, out: Path | None, where: str) -> None:
    """Validate the settings, run the comparison, write its folder and print its table."""
    import time

    from saecircuits.circuits.comparison import compare
    from saecircuits.circuits.comparison_files import write_comparison
    from saecircuits.core import distributed
    from saecircuits.core.files import check_output_dir
    from saecircuits.model import loading as m
    from saecircuits.report.comparison import render

    cfg = validate(ComparisonConfig, data, where=where)
    target = check_output_dir(out or Path("circuits/results") / f"{cfg.task}-{model}")  # before minutes of work
    distributed.init()  # under torchrun: edge pruning and the evaluations split their prompts across processes
    main = distributed.is_main()
    if distributed.active() and not main:
        distributed.barrier()  # rank 0 converts an offline model once; the others then read its cache
    lm = m.load(model)
    if distributed.active() and main:
        distributed.barrier()
    t0 = time.perf_counter()
    result = compare(lm, cfg, note=lambda msg: console.print(f"[dim]{escape(msg)}[/dim]", highlight=False) if main
                     else None)
    if not main:
        return
    result["config"] = {**cfg.model_dump(), "model": model, "seconds": time.perf_counter() - t0,
                        "processes": distributed.world()}
    folder = write_comparison(result, target, markdown=render)
    t = Table(title=f"{cfg.task} on {model}: faithfulness on {cfg.n_test} test prompts")
    for col in ("method", "granularity", "ablation", "CPR", "CMD", "k* (%)", "seconds"):
        t.add_column(col)
    for r in result["methods"]:
        t.add_row(r["name"], r["granularity"], r["ablation"], f"{r['cpr']:.3f}", f"{r['cmd']:.3f}",
                  str(r["k_star"]), f"{r['seconds']:.0f}")
    Console().print(t)
    for key in REPORTED.values():
        c = result["circuit"].get(key)
        if c:
            cells = ", ".join(f"{a} {row['task']['f']:.2f}" for a, row in c["test"].items() if "task" in row)
            console.print(f"{key.replace('_', ' ')}: {c['count']} from {c['method']} (validation f {c['val_f']:.3f}); "
                          f"test f: {cells}")
    console.print(f"written: {folder}")


# the options circuit and circuit-methods share
_GRANULARITIES = "nodes (heads and MLPs) | heads (every MLP kept) | edges"
_OUT = typer.Option(None, "--out", help="Output folder (default circuits/results/TASK-MODEL), replaced whole.")
_TASK = typer.Option(_COMPARE.task, "--task", help="ioi | greater_than | induction")
_MODEL = typer.Option("smollm2-135m", "--model", help="smollm2-135m | gemma-3-270m | a TransformerLens hub name")
_TRAIN = typer.Option(_COMPARE.n_train, "--train", help="Train prompts (discovery).")
_VAL = typer.Option(_COMPARE.n_val, "--val", help="Validation prompts (choosing the size; greedy).")
_TEST = typer.Option(_COMPARE.n_test, "--test", help="Test prompts (every reported number).")
_PRUNING_STEPS = typer.Option(_COMPARE.pruning.steps, "--pruning-steps", help="Edge-pruning steps per target.")
_PRUNING_BATCH = typer.Option(_COMPARE.pruning.batch_size, "--pruning-batch", help="Edge-pruning prompts per step.")
_PRUNING_LR = typer.Option(_COMPARE.pruning.lr, "--pruning-lr", help="Edge-pruning learning rate of the mask logits.")
_PRUNING_OBJECTIVE = typer.Option(_COMPARE.pruning.objective, "--pruning-objective",
                                  help="kl (to the full model) | task (maximise the task metric)")
_RANDOM = typer.Option(_COMPARE.random_draws, "--random", help="Random circuits per size (the floor).")
_SEED = typer.Option(_COMPARE.seed, "--seed")
_GREEDY_POOL = typer.Option(_COMPARE.greedy_pool, "--greedy-pool", help="Nodes greedy may add: the base ranking's top.")
_CHOOSE_ON = typer.Option(list(_COMPARE.choose_on), "--choose-on",
                          help="Ablations a circuit must hold under on validation: greedy's objective and each method's "
                               "chosen size take the largest |1 - f| among them (repeat for several).")
_WORDS = typer.Option(None, "--words", help="YAML or JSON file of word lists replacing the built-in ones, for tokenizers "
                                            "that split them: names, places, objects (ioi), year_nouns (greater_than).")


def _shared(task: str, n_train: int, n_val: int, n_test: int, pruning_steps: int, pruning_batch: int,
            pruning_lr: float, pruning_objective: str, random_draws: int, greedy_pool: int, seed: int,
            words: Path | None, choose_on: list[str]) -> dict:
    """The ComparisonConfig settings that circuit and circuit-methods take from the same options."""
    return {"task": task, "n_train": n_train, "n_val": n_val, "n_test": n_test, "random_draws": random_draws,
            "greedy_pool": greedy_pool, "seed": seed, "words": read_yaml(words) if words else None,
            "choose_on": tuple(choose_on),
            "pruning": {"steps": pruning_steps, "batch_size": pruning_batch, "lr": pruning_lr,
                        "objective": pruning_objective}}


@command(name="circuit")
def circuit_cmd(
    out: Path = _OUT,
    task: str = _TASK,
    model: str = _MODEL,
    method: str = typer.Option("eap-ig", "--method", help=" | ".join(m for m in METHODS if m != "random")),
    ablation: str = typer.Option(_COMPARE.curve_ablations[0], "--ablation", help=" | ".join(ABLATIONS)),
    granularity: str = typer.Option("nodes", "--granularity", help=_GRANULARITIES),
    n_train: int = _TRAIN,
    n_val: int = _VAL,
    n_test: int = _TEST,
    pruning_steps: int = _PRUNING_STEPS,
    pruning_batch: int = _PRUNING_BATCH,
    pruning_lr: float = _PRUNING_LR,
    pruning_objective: str = _PRUNING_OBJECTIVE,
    random_draws: int = _RANDOM,
    greedy_pool: int = _GREEDY_POOL,
    choose_on: list[str] = _CHOOSE_ON,
    seed: int = _SEED,
    words: Path = _WORDS,
) -> None:
    """Find a task's circuit with one method on train prompts, choose its size on validation prompts, and score it on
    test prompts: its f(k) curve under --ablation beside random circuits, and the chosen circuit under every ablation."""
    methods = ("topk-patching", "greedy") if method == "greedy" else (method,)  # greedy refines patching's ranking
    shared = _shared(task, n_train, n_val, n_test, pruning_steps, pruning_batch, pruning_lr, pruning_objective,
                     random_draws, greedy_pool, seed, words, choose_on)
    _comparison(model, {**shared, "methods": (*methods, "random"), "granularities": (granularity,),
                        "curve_ablations": (ablation,)}, out, "circuit")


@command(name="circuit-methods")
def circuit_methods_cmd(
    out: Path = _OUT,
    task: str = _TASK,
    model: str = _MODEL,
    method: list[str] = typer.Option(list(_COMPARE.methods), "--method", help=" | ".join(METHODS) + " (repeat for several)"),
    granularity: list[str] = typer.Option(list(_COMPARE.granularities), "--granularity",
                                          help=_GRANULARITIES + " (repeat for several)"),
    n_train: int = _TRAIN,
    n_val: int = _VAL,
    n_test: int = _TEST,
    pruning_steps: int = _PRUNING_STEPS,
    pruning_batch: int = _PRUNING_BATCH,
    pruning_lr: float = _PRUNING_LR,
    pruning_objective: str = _PRUNING_OBJECTIVE,
    random_draws: int = _RANDOM,
    greedy_pool: int = _GREEDY_POOL,
    choose_on: list[str] = _CHOOSE_ON,
    seed: int = _SEED,
    words: Path = _WORDS,
) -> None:
    """Compare circuit-discovery methods on held-out prompts: MIB curves (CPR, CMD, k*) under counterfactual and mean
    ablation, each method's circuit under every ablation and metric, and the reported head and edge circuits."""
    shared = _shared(task, n_train, n_val, n_test, pruning_steps, pruning_batch, pruning_lr, pruning_objective,
                     random_draws, greedy_pool, seed, words, choose_on)
    _comparison(model, {**shared, "methods": tuple(method), "granularities": tuple(granularity)}, out,
                "circuit-methods")


@command
def report(
    run_dir: Path = typer.Argument(None, help="A run folder (what saecircuits demo --out wrote)."),
    from_json: Path = typer.Option(None, "--from", help="Regenerate every table and figure from a report's results.json alone."),
    out: Path = typer.Option(None, "--out", help="Report folder (default RUN_DIR/report, or the folder holding --from's results.json)."),
    attention: bool = typer.Option(True, "--attention/--no-attention",
                                   help="Load the model to draw the circuit heads' attention patterns (when the circuit results lack them)."),
    studies: Path = typer.Option(None, "--studies", help="A folder of seed-paper study outputs (saecircuits study ...), "
                                 "e.g. circuits/results: their summaries become the report's studies section."),
) -> None:
    """The circuit report of a run: index.html (self-contained), report.md, figures (PDF+PNG), LaTeX tables, results.json."""
    from saecircuits.core.files import read_json
    from saecircuits.report import regenerate, report_run

    if (run_dir is None) == (from_json is None):
        raise SaecircuitsError("give either RUN_DIR or --from results.json (exactly one)",
                               "saecircuits report runs/demo, or saecircuits report --from runs/demo/report/results.json --out DIR")
    if from_json and studies:
        raise SaecircuitsError("--studies applies to a report of a run folder; --from regenerates a report as it was",
                               "drop --studies, or give RUN_DIR instead of --from")
    paths = regenerate(from_json, out) if from_json else report_run(run_dir, out, attention=attention, studies=studies)
    results = read_json(paths["results"], what="report results")
    for section, value in results.items():  # say what the report leaves out, and why, not only in the HTML
        if isinstance(value, dict) and "missing" in value:
            console.print(f"[yellow]left out:[/yellow] {section}: {escape(str(value['missing']))}", highlight=False)
    console.print(f"report: {paths['html']} (also {paths['markdown'].name}, figures/ with {len(paths['figures'])} "
                  f"figures, tables/ with {len(paths['tables'])} LaTeX tables, {paths['results'].name})")


def main() -> None:
    """Console-script entry point."""
    if "--debug" in sys.argv[2:]:  # accept --debug anywhere, not only before the command
        sys.argv.remove("--debug")
        sys.argv.insert(1, "--debug")
    try:
        app()
    except KeyboardInterrupt:  # a Ctrl-C outside any command (while starting up or exiting): no traceback
        sys.exit(130)

