"""The ``saecircuits`` command line: one command a stage, errors as one line (tracebacks with --debug)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from saecircuits.core.errors import SaecircuitsError

app = typer.Typer(
    name="saecircuits",
    help="Train sparse autoencoders on language-model activations, match features, find and validate circuits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    _state["debug"] = debug or bool(os.environ.get("SAECIRCUITS_DEBUG"))


def command(fn: Callable[..., Any] | None = None, *, on: typer.Typer | None = None, name: str | None = None) -> Any:
    """Register a command whose SaecircuitsErrors print as one line and exit with status 2.

    ``@command`` registers on the main app; ``@command(on=group, name="x")`` on a sub-app (``saecircuits GROUP x``)."""
    if fn is None:
        return functools.partial(command, on=on, name=name)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SaecircuitsError as e:
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]; finished work is kept, rerun to resume")
            raise typer.Exit(130) from None
        except MemoryError:
            if _state["debug"]:
                raise
            console.print("[bold red]error:[/bold red] out of memory; lower the batch size or buffer size")
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - anything else is our bug: say so briefly
            if _state["debug"]:
                raise
            console.print(
                f"[bold red]internal error:[/bold red] {type(e).__name__}: {escape(str(e))}\n"
                "rerun with --debug for the traceback and report it",
                highlight=False,
            )
            raise typer.Exit(1) from None

    return (on or app).command(name=name)(run)


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
    import importlib.metadata as md

    for spec in m.OFFLINE_MODELS.values():
        try:
            md.distribution(spec.distribution)
            ok = "yes"
        except md.PackageNotFoundError:
            ok = f"no: {spec.install}"
        t.add_row(spec.name, spec.hf_name, spec.distribution, ok)
    Console().print(t)
    console.print(f"cache: {m.cache_root() / 'models'}; any TransformerLens model name also works where the hub is reachable")


@command
def cache(
    out: Path = typer.Option(..., "--out", help="Cache folder (created, or resumed if it holds a partial cache)."),
    hook: list[str] = typer.Option(..., "--hook", help="Hook site, e.g. blocks.6.hook_resid_post or blocks.3.attn.hook_z:* (repeatable)."),
    model: str = typer.Option("smollm2-135m", "--model"),
    text: str = typer.Option("stdlib", "--text", help="stdlib | bible | PATH | hf:NAME | tokens:PATH"),
    tokens: int = typer.Option(200_000, "--tokens", min=1, help="Context tokens to run through the model."),
    context_size: int = typer.Option(128, "--context-size", min=2),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    split: str = typer.Option("train", "--split", help="train | eval"),
) -> None:
    """Run the model over text once and cache activations of many hook sites as safetensors shards."""
    from saecircuits.model import loading as m
    from saecircuits.activations.cache import build_cache, cache_size_bytes
    from saecircuits.core.config import validate
    from saecircuits.activations.store import StoreConfig
    from saecircuits.text.source import TextConfig, TextSource

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


@command
def dashboards(
    sae: Path = typer.Option(..., "--sae", help="SAE folder (SAELens format: cfg.json + sae_weights.safetensors)."),
    out: Path = typer.Option(..., "--out", help="Output folder: index.html, features/<id>.html, stats, Neuronpedia JSON."),
    model: str = typer.Option("smollm2-135m", "--model", help="The model the SAE reads (an offline name, a folder or a hub name)."),
    text: str = typer.Option("stdlib", "--text", help="stdlib | bible | PATH | hf:NAME | tokens:PATH"),
    tokens: int = typer.Option(100_000, "--tokens", min=1, help="Context tokens to run through the model and the SAE."),
    context_size: int = typer.Option(128, "--context-size", min=2),
    batch: int = typer.Option(16, "--batch", min=1, help="Contexts per forward pass."),
    wandb: str = typer.Option("auto", "--wandb", help="auto | online | offline | off"),
    restart: bool = typer.Option(False, "--restart", help="Discard statistics checkpointed in --out by an earlier run."),
) -> None:
    """Feature dashboards: one pass over text, then an offline HTML site, Neuronpedia JSON and W&B pages.

    A rerun with the same arguments resumes after the last checkpointed batch.
    """
    from saecircuits.dashboards import build_dashboards

    s = build_dashboards(sae, model, text, out, tokens, wandb=wandb, restart=restart, batch_contexts=batch,
                         text={"context_size": context_size})
    console.print(
        f"{s['n_features']:,} features ({s['n_live']:,} live, {s['n_dead']:,} dead) over {s['tokens']:,} tokens "
        f"in {s['seconds']['total']:.0f} s; open {s['index']}"
    )
    if s.get("wandb_sync"):
        console.print(f"W&B ran offline; upload later with: {s['wandb_sync']}")


@command
def train(
    config: Path = typer.Argument(..., help="Training config (YAML): model, text, store, saes, total_tokens, ..."),
    out: str = typer.Option(None, "--out", help="Output folder (overrides the config's out)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in the output folder."),
    wandb: str = typer.Option(None, "--wandb", help="auto | online | offline | off (overrides the config)."),
    tokens: int = typer.Option(None, "--tokens", min=1, help="Training tokens (overrides total_tokens)."),
) -> None:
    """Train SAEs (and transcoders) from one activation stream; write them in SAELens's format."""
    from saecircuits.core.config import read_yaml, validate
    from saecircuits.training.trainer import TrainConfig, train as run_training

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


@command
def demo(
    out: str = typer.Option(None, "--out", help="Output folder (default runs/demo; reused on a rerun: finished stages are skipped)."),
    model: str = typer.Option(None, "--model", help="smollm2-135m | gemma-3-270m | a TransformerLens hub name"),
    text: str = typer.Option(None, "--text", help="stdlib | bible | PATH | hf:NAME | tokens:PATH"),
    layers: str = typer.Option(None, "--layers", help="Comma-separated residual-stream layers for SAEs (default 3,6,9)."),
    tokens: int = typer.Option(None, "--tokens", help="Training tokens per SAE (default 200,000)."),
    wandb: str = typer.Option(None, "--wandb", help="auto | online | offline | off"),
    config: Path = typer.Option(None, "--config", help="A YAML file of demo settings (see saecircuits.app.demo.DemoConfig)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes everywhere: checks the whole flow in a few minutes."),
) -> None:
    """The main job on the embedded default model: the whole flow under one output folder."""
    from saecircuits.core.config import read_yaml, validate
    from saecircuits.app.demo import QUICK, DemoConfig, run

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
    given = {"out": out, "model": model, "text": text, "tokens": tokens}
    data.update({k: v for k, v in given.items() if v is not None})
    if wandb is not None:
        data["wandb"] = {**data.get("wandb", {}), "mode": wandb}
    cfg = validate(DemoConfig, data, where=str(config) if config else "demo")
    results = run(cfg)
    print_train_summary(results["train"], str(Path(cfg.out) / "train"))
    for line in results.get("closing", []):
        console.print(line)


@command
def match(
    sae_a: list[Path] = typer.Option(..., "--sae-a", help="SAE folder (SAELens format) on side A; repeatable (chains: in layer order)."),
    sae_b: list[Path] = typer.Option(None, "--sae-b", help="SAE folder on side B; repeatable. Every A x B pair is matched."),
    out: Path = typer.Option(..., "--out", help="Output folder for tables, graphs and figures."),
    mode: str = typer.Option("activations", "--mode", help="activations | weights | chains | flow"),
    model: str = typer.Option(None, "--model", help="Model of the A SAEs (default: the model named in the SAE's cfg.json)."),
    model_b: str = typer.Option(None, "--model-b", help="Model of the B SAEs, if another: text is aligned by character offsets."),
    align_to: str = typer.Option(None, "--align-to", help="Same-model pairs: compare only at the positions a match with this model's tokenizer compares (so the numbers sit beside a --model-b run)."),
    text: str = typer.Option("stdlib", "--text", help="stdlib | bible | PATH | hf:NAME"),
    tokens: int = typer.Option(100_000, "--tokens", min=1, help="Compared tokens (aligned positions across models)."),
    context_size: int = typer.Option(128, "--context-size", min=2),
    method: str = typer.Option("hungarian", "--method", help="hungarian (one-to-one) | best (many-to-one) | greedy"),
    min_r: float = typer.Option(0.1, "--min-r", help="Pairs below this correlation are flagged low_r."),
    null: int = typer.Option(1000, "--null", min=0, help="Shuffled pairings per similarity null (0: skip SVCCA/RSA/CKA)."),
    random_subsets: int = typer.Option(100, "--random-subsets", min=0, help="Draws of the random-subset baseline."),
    sample_tokens: int = typer.Option(2048, "--sample-tokens", min=0, help="Tokens kept for activation-space similarity."),
    alignment: str = typer.Option("boundary", "--alignment", help="boundary | cover (cross-model token alignment rule)"),
    drop_outlier_norm: float = typer.Option(10.0, "--drop-outlier-norm", help="Leave out tokens whose input norm is this many times the median (0: keep all)."),
    min_cos: float = typer.Option(0.5, "--min-cos", help="chains / flow: weakest decoder cosine that links two features."),
    flow_direction: str = typer.Option("decoder", "--flow-direction", help="flow: compare each feature's decoder or encoder direction"),
    batch_contexts: int = typer.Option(8, "--batch-contexts", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Match SAE features across layers or models: tables, graphs, similarity statistics and heatmaps."""
    from saecircuits.matching.outputs import run_match_command

    written = run_match_command(
        [str(p) for p in sae_a], [str(p) for p in sae_b or []], str(out), mode=mode, model=model, model_b=model_b, align_to=align_to,
        settings={"text": {"source": text, "context_size": context_size}, "tokens": tokens, "method": method,
                  "min_r": min_r, "null": null, "random_subsets": random_subsets, "sample_tokens": sample_tokens,
                  "alignment": alignment, "batch_contexts": batch_contexts, "seed": seed,
                  "drop_outlier_norm": drop_outlier_norm or None},
        min_cos=min_cos, flow_direction=flow_direction, console=Console(),
    )
    console.print(f"written: {out} ({', '.join(sorted(written))})")


@command
def heads(
    model: str = typer.Option("smollm2-135m", "--model", help="smollm2-135m | gemma-3-270m | a local HF folder | a TransformerLens hub name"),
    out: str = typer.Option(..., "--out", help="Output folder: heads.graphml, heads.json, scores.safetensors, summary.json."),
    top: int = typer.Option(3, "--top", min=0, help="Edges of each type kept into each receiver head (0: no limit)."),
    min_z: float = typer.Option(None, "--min-z", help="Keep only edges with at least this z-score."),
    min_score: float = typer.Option(None, "--min-score", help="Keep only edges with at least this composition score."),
    rank_by: str = typer.Option("z", "--rank-by", help="z (same-spectrum null) | z_senders (vs the receiver's other senders) | score: what --top ranks by."),
    null_draws: int = typer.Option(128, "--null-draws", help="Random same-spectrum senders per pair for the z-scores."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Head weight graph: Q/K/V composition of every head pair, SVD channels, z-scores against a null."""
    from saecircuits.core.config import validate
    from saecircuits.heads.graph import HeadGraphConfig, run

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


# ---------------------------------------------------------------- layers: layer-wise analysis

layers_app = typer.Typer(help="Layer-wise analysis: logit/tuned lens, sublayer contributions, layer skipping, "
                              "probes per layer, linearity between layers. Each writes MODE.json + MODE.png/.pdf to --out.",
                         no_args_is_help=True)
app.add_typer(layers_app, name="layers")
_MODEL_OPT = typer.Option("smollm2-135m", "--model", help="smollm2-135m | gemma-3-270m | a TransformerLens hub name")
_OUT_OPT = typer.Option(..., "--out", help="Output folder for the JSON and figures.")
_TEXT_OPT = typer.Option("stdlib", "--text", help="stdlib | bible | stdlib+bible | PATH | hf:NAME | tokens:PATH")


def _layers_stream(text: str, tokens: int, context_size: int, batch_size: int) -> Any:
    from saecircuits.core.config import validate
    from saecircuits.layerwise.stream import StreamConfig

    return validate(StreamConfig, {"text": {"source": text, "context_size": context_size}, "tokens": tokens,
                                   "batch_size": batch_size}, where="layers")


def _layers_write(out: Path, name: str, result: dict) -> None:
    from saecircuits.layerwise.figures import write

    files = write(out, name, result)
    console.print(f"wrote {files['json']} and {', '.join(files['figures'])}")


@command(on=layers_app, name="lens")
def layers_lens(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    prompt: list[str] = typer.Option(None, "--prompt", help="A prompt (repeatable; pair each with an --answer)."),
    answer: list[str] = typer.Option(None, "--answer", help="The answer token's text, e.g. ' Mary' (repeatable)."),
    prompts: Path = typer.Option(None, "--prompts", help="CSV with columns prompt,answer."),
    task: str = typer.Option(None, "--task", help="A circuit task's clean prompts and answers, e.g. ioi."),
    n: int = typer.Option(32, "--n", min=1, help="With --task: number of prompts."),
    tuned: Path = typer.Option(None, "--tuned", help="A tuned lens folder (from `saecircuits layers tuned-lens`)."),
) -> None:
    """Logit lens (or tuned lens): rank and probability of the answer at every layer and position."""
    ps, ans = list(prompt or []), list(answer or [])
    if len(ps) != len(ans) or not (ps or prompts or task):
        raise SaecircuitsError(f"{len(ps)} prompt(s) and {len(ans)} answer(s)",
                               "give each --prompt an --answer, or --prompts CSV, or --task")
    if task and (ps or prompts):
        raise SaecircuitsError("--task takes its prompts from the task; leave out --prompt and --prompts")
    from saecircuits.model import loading as m
    from saecircuits.layerwise import lens as lenslib
    from saecircuits.layerwise import tuned as tunedlib

    if prompts:
        more_p, more_a = lenslib.read_prompts(str(prompts))
        ps, ans = ps + more_p, ans + more_a
    lm = m.load(model)
    lens = tunedlib.load(tuned, lm) if tuned else None
    if task:
        r = lenslib.logit_lens(lm, lens=lens, **lenslib.task_prompts(lm, task, n))
    else:
        r = lenslib.logit_lens(lm, ps, ans, lens)
    name = r["analysis"]
    console.print(f"{name} on {r['n_prompts']} prompt(s): final top-1 accuracy {r['final_accuracy']:.2f}; answer first top-1 "
                  f"at layer {r['first_top1']['median_label']} (median, {r['first_top1']['n']}/{r['n_prompts']} prompts), "
                  f"stays top-1 from {r['stable_top1']['median_label']}")
    _layers_write(out, name, r)


@command(on=layers_app, name="tuned-lens")
def layers_tuned_lens(
    out: Path = typer.Option(..., "--out", help="Folder for the tuned lens (safetensors + JSON) and its KL figure."),
    model: str = _MODEL_OPT,
    text: str = _TEXT_OPT,
    tokens: int = typer.Option(65_536, "--tokens", min=1, help="Training tokens."),
    context_size: int = typer.Option(128, "--context-size", min=2),
    batch_tokens: int = typer.Option(256, "--batch-tokens", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", min=0),
) -> None:
    """Train a tuned lens (an affine translator per layer, KL to the final logits) on the activation stream."""
    from saecircuits.model import loading as m
    from saecircuits.core.config import validate
    from saecircuits.layerwise import tuned as tunedlib

    cfg = validate(tunedlib.TunedLensConfig, {"text": {"source": text, "context_size": context_size}, "tokens": tokens,
                                              "batch_size_tokens": batch_tokens, "lr": lr, "eval_tokens": eval_tokens},
                   where="tuned-lens")
    lm = m.load(model)
    lens, summary = tunedlib.train(lm, cfg)
    tunedlib.save(lens, out, summary)
    if "eval" in summary:
        ev = summary["eval"]
        mid = len(ev["layers"]) // 2
        console.print(f"held-out KL at layer {ev['layers'][mid]}: logit lens {ev['kl_logit_lens'][mid]:.3f}, "
                      f"tuned lens {ev['kl_tuned_lens'][mid]:.3f} nats")
    _layers_write(out, "tuned_lens_training", summary)


@command(on=layers_app, name="contributions")
def layers_contributions(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    text: str = _TEXT_OPT,
    tokens: int = typer.Option(16_384, "--tokens", min=2),
    context_size: int = typer.Option(128, "--context-size", min=2),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
) -> None:
    """Norm of each attention / MLP output relative to the residual stream, and its cosine with it, per layer."""
    from saecircuits.model import loading as m
    from saecircuits.layerwise import contributions

    stream = _layers_stream(text, tokens, context_size, batch_size)
    r = contributions.measure(m.load(model), stream)
    h = r["halves"]["block_rel_norm"]
    console.print(f"{r['tokens']:,} tokens: mean ||block out|| / ||resid|| first half {h['first_half']:.3f}, "
                  f"second half {h['second_half']:.3f}")
    _layers_write(out, "contributions", r)


@command(on=layers_app, name="skip")
def layers_skip(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    text: str = _TEXT_OPT,
    tokens: int = typer.Option(2048, "--tokens", min=2, help="Tokens per intervention (each is a full forward pass)."),
    context_size: int = typer.Option(128, "--context-size", min=2),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    skip: list[str] = typer.Option(None, "--skip", help="Layers skipped together: 7, 10-14 or 3,5 (repeatable); default every single layer."),
    swap: bool = typer.Option(True, "--swap/--no-swap", help="Also swap each pair of adjacent layers."),
) -> None:
    """Skip layers (or ranges) and swap adjacent ones: change in later residuals and in the output (KL, loss)."""
    from saecircuits.model import loading as m
    from saecircuits.core.config import validate
    from saecircuits.layerwise import skipping

    lm = m.load(model)
    skips = [skipping.parse_layers(s, lm.cfg.n_layers) for s in skip] if skip else None
    cfg = validate(skipping.SkipConfig, {"stream": _layers_stream(text, tokens, context_size, batch_size).model_dump(),
                                         "skips": skips, "swap_adjacent": swap}, where="skip")
    r = skipping.measure(lm, cfg)
    h = r["halves"]
    worst = max(r["interventions"], key=lambda x: x["kl"])
    console.print(f"clean loss {r['clean_loss']:.3f}; mean KL of skipping one layer: first half "
                  f"{h['skip_kl_first_half'] if h['skip_kl_first_half'] is not None else float('nan'):.4f}, second half "
                  f"{h['skip_kl_second_half'] if h['skip_kl_second_half'] is not None else float('nan'):.4f}; "
                  f"largest: {worst['name']} (KL {worst['kl']:.3f})")
    _layers_write(out, "skip", r)


@command(on=layers_app, name="probe")
def layers_probe(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    data: str = typer.Option("code-vs-prose", "--data",
                             help="code-vs-prose | old-vs-new-testament | task:NAME[:clean-vs-corrupted|order] | a CSV of text,label"),
    pool: str = typer.Option("last", "--pool", help="last | mean (over the text's tokens)"),
    n_per_class: int = typer.Option(100, "--n-per-class", min=2, help="Built-in sets: texts per class (tasks: prompts)."),
    n_tokens: int = typer.Option(32, "--n-tokens", min=1, help="Built-in sets: tokens per text."),
    sae: list[Path] = typer.Option(None, "--sae", help="An SAE folder whose features are probed too (repeatable)."),
    test_fraction: float = typer.Option(0.3, "--test-fraction"),
    repeats: int = typer.Option(3, "--repeats", min=1),
    c: float = typer.Option(1.0, "--C", help="Inverse L2 strength (as scikit-learn)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Logistic-regression probes on every layer's residual (and SAE features): held-out accuracy by layer."""
    from saecircuits.model import loading as m
    from saecircuits.core.config import validate
    from saecircuits.layerwise import probes
    from saecircuits.sae import format as sae_format

    cfg = validate(probes.ProbeConfig, {"pool": pool, "test_fraction": test_fraction, "repeats": repeats, "C": c,
                                        "seed": seed}, where="probe")
    lm = m.load(model)
    labelled = probes.load(lm, data, n_per_class, n_tokens, seed)
    saes = {p.name: sae_format.load(p) for p in (sae or [])}
    r = probes.measure(lm, labelled, cfg, saes)
    console.print(f"{r['n_examples']} texts ({', '.join(r['classes'])}): best held-out accuracy {r['best_accuracy']:.3f} "
                  f"at layer {r['best_layer']}; within 0.02 of it from layer {r['concept_depth']}")
    for s in r["saes"]:
        console.print(f"SAE {s['name']} ({s['hook']}): held-out accuracy {s['test_accuracy']:.3f}")
    _layers_write(out, "probe", r)


@command(on=layers_app, name="linearity")
def layers_linearity(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    text: str = _TEXT_OPT,
    tokens: int = typer.Option(16_384, "--tokens", min=2, help="Tokens to fit the maps on."),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", min=2, help="Held-out tokens (the text's eval split)."),
    context_size: int = typer.Option(128, "--context-size", min=2),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    normalize: str = typer.Option("token", "--normalize", help="token (each residual to unit norm) | none"),
) -> None:
    """R^2 of the best affine map from each layer's residual to the next (in-sample and held out)."""
    from saecircuits.model import loading as m
    from saecircuits.core.config import validate
    from saecircuits.layerwise import linearity

    cfg = validate(linearity.LinearityConfig, {"stream": _layers_stream(text, tokens, context_size, batch_size).model_dump(),
                                               "eval_tokens": eval_tokens, "normalize": normalize}, where="linearity")
    r = linearity.measure(m.load(model), cfg)
    worst = min(range(len(r["r2_held_out"])), key=lambda i: r["r2_held_out"][i])
    console.print(f"held-out R^2 of one affine map per block: min {r['r2_held_out'][worst]:.3f} (block {r['layers'][worst]}), "
                  f"mean {sum(r['r2_held_out']) / len(r['r2_held_out']):.3f}")
    if r.get("warning"):
        console.print(f"[yellow]warning:[/yellow] {r['warning']}")
    _layers_write(out, "linearity", r)


# ---------------------------------------------------------------- circuit: a task's head circuit, validated by ablation

@command(name="circuit")
def circuit_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder: results.json, circuit.json, graph.graphml/.json, edge_scores.safetensors."),
    task: str = typer.Option("ioi", "--task", help="ioi | induction | greater_than | list_recall | colored_objects"),
    model: str = typer.Option("smollm2-135m", "--model", help="smollm2-135m | gemma-3-270m | a TransformerLens hub name"),
    prompts: int = typer.Option(64, "--prompts", help="Clean/corrupted prompt pairs."),
    size: int = typer.Option(None, "--size", help="Heads in the circuit (default: every head above --threshold)."),
    threshold: float = typer.Option(0.05, "--threshold", help="|normalised patching effect| a head needs when --size is not given."),
    ablation: str = typer.Option("mean", "--ablation", help="mean | zero | resample"),
    random_circuits: int = typer.Option(20, "--random", help="Random circuits of the same size (the baseline)."),
    ig_steps: int = typer.Option(0, "--ig-steps", help="EAP-IG interpolation steps (0: plain EAP)."),
    edges: bool = typer.Option(True, "--edges/--no-edges", help="Edge attribution patching over every edge."),
    sae_codes: bool = typer.Option(True, "--sae-codes/--no-sae-codes", help="Score heads with per-head SAE codes too."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Find a task's circuit of attention heads and validate it by ablation; write the graph and every number."""
    from saecircuits.model import loading as m
    from saecircuits.circuits.study import CircuitConfig, find_and_validate, summary_lines, write_results
    from saecircuits.core.config import validate

    data = {"task": task, "prompts": prompts, "size": size, "threshold": threshold, "ablation": ablation,
            "random_circuits": random_circuits, "ig_steps": ig_steps, "edges": edges, "seed": seed}
    if not sae_codes:
        data["sae_codes"] = None
    cfg = validate(CircuitConfig, data, where="circuit")
    lm = m.load(model)
    results = find_and_validate(lm, None, cfg, progress=lambda msg: console.print(f"[dim]{escape(msg)}[/dim]", highlight=False))
    paths = write_results(results, out)
    for line in summary_lines(results):
        Console().print(line, highlight=False)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}")


@command
def report(
    run_dir: Path = typer.Argument(None, help="A run folder (what saecircuits demo --out wrote)."),
    from_json: Path = typer.Option(None, "--from", help="Regenerate every table and figure from a report's results.json alone."),
    out: Path = typer.Option(None, "--out", help="Report folder (default RUN_DIR/report, or the folder holding --from's results.json)."),
    attention: bool = typer.Option(True, "--attention/--no-attention",
                                   help="Load the model to draw the circuit heads' attention patterns (when the circuit results lack them)."),
) -> None:
    """The circuit report of a run: index.html (self-contained), report.md, figures (PDF+PNG), LaTeX tables, results.json."""
    from saecircuits.report import regenerate, report_run

    if (run_dir is None) == (from_json is None):
        raise SaecircuitsError("give either RUN_DIR or --from results.json (exactly one)",
                               "saecircuits report runs/demo, or saecircuits report --from runs/demo/report/results.json --out DIR")
    paths = regenerate(from_json, out) if from_json else report_run(run_dir, out, attention=attention)
    console.print(f"report: {paths['html']} (also {paths['markdown'].name}, figures/ with {len(paths['figures'])} "
                  f"figures, tables/ with {len(paths['tables'])} LaTeX tables, {paths['results'].name})")


def main() -> None:
    """Console-script entry point."""
    if "--debug" in sys.argv[2:]:  # accept --debug anywhere, not only before the command
        sys.argv.remove("--debug")
        sys.argv.insert(1, "--debug")
    app()

