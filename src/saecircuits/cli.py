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
from rich.table import Table

from saecircuits.errors import SaecircuitsError

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


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a command whose SaecircuitsErrors print as one line and exit with status 2."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SaecircuitsError as e:
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/bold red] {e}", highlight=False, markup=True, soft_wrap=True)
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
                f"[bold red]internal error:[/bold red] {type(e).__name__}: {e}\n"
                "rerun with --debug for the traceback and report it",
                highlight=False,
            )
            raise typer.Exit(1) from None

    return app.command()(run)


@command
def models(
    load: str = typer.Option(None, "--load", help="Load (and on first use convert and cache) this model, then report it."),
) -> None:
    """List the models that work offline, or load one and show its shape."""
    from saecircuits import models as m

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
    from saecircuits import models as m
    from saecircuits.activation_cache import build_cache, cache_size_bytes
    from saecircuits.config import validate
    from saecircuits.store import StoreConfig
    from saecircuits.text import TextConfig, TextSource

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
def train(
    config: Path = typer.Argument(..., help="Training config (YAML): model, text, store, saes, total_tokens, ..."),
    out: str = typer.Option(None, "--out", help="Output folder (overrides the config's out)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in the output folder."),
    wandb: str = typer.Option(None, "--wandb", help="auto | online | offline | off (overrides the config)."),
    tokens: int = typer.Option(None, "--tokens", min=1, help="Training tokens (overrides total_tokens)."),
) -> None:
    """Train SAEs (and transcoders) from one activation stream; write them in SAELens's format."""
    from saecircuits.config import read_yaml, validate
    from saecircuits.training import TrainConfig, train as run_training

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
    print_train_summary(summary, cfg.out)


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


def main() -> None:
    """Console-script entry point."""
    if "--debug" in sys.argv[2:]:  # accept --debug anywhere, not only before the command
        sys.argv.remove("--debug")
        sys.argv.insert(1, "--debug")
    app()

