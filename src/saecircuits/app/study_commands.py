"""``saecircuits study NAME``: the seed papers' head-level studies, each writing its folder under
circuits/results/NAME-MODEL (replaced whole) with JSON, a figure and a summary beside the paper's numbers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from saecircuits.app.command import command, console
from saecircuits.circuits.config import RetrievalConfig, ReuseConfig, TalkingHeadsConfig
from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError

study_app = typer.Typer(help="The seed papers' head-level studies (retrieval heads, talking heads, component reuse).", no_args_is_help=True)
_RETRIEVAL = RetrievalConfig()
_TALKING = TalkingHeadsConfig()
_REUSE = ReuseConfig()
_MODEL = typer.Option("smollm2-135m", "--model", help="smollm2-135m | gemma-3-270m | a TransformerLens hub name")


def _run_study(name: str, config_cls, settings: dict, model: str, out: Path | None) -> None:
    """Validate the settings, load the model, run study ``name`` (a ``circuits`` module with ``study`` and ``write``)
    and write its folder (default circuits/results/NAME-MODEL), replaced whole."""
    import importlib

    from saecircuits.circuits.prompts import WordsSplitError
    from saecircuits.core.files import check_output_dir
    from saecircuits.model import loading as m

    cfg = validate(config_cls, settings, where=name)
    target = check_output_dir(out or Path("circuits/results") / f"{name}-{model}")
    module = importlib.import_module(f"saecircuits.circuits.{name.replace('-', '_')}")
    try:
        result = module.study(m.load(model), cfg, note=lambda msg: console.print(f"[dim]{escape(msg)}[/dim]", highlight=False))
    except WordsSplitError as e:  # the studies take no --words: say what does work
        raise SaecircuitsError(e.message, "the studies build their prompts from the built-in words: run them on a model "
                                          "whose tokenizer keeps common English words whole (smollm2-135m, gemma-3-270m)")
    folder = module.write(result, target, model, cfg)
    console.print(f"written: {folder} (summary.md beside the paper's numbers)")


@command(on=study_app, name="retrieval-heads")
def retrieval_heads(
    model: str = _MODEL,
    out: Path = typer.Option(None, "--out", help="Output folder (default circuits/results/retrieval-heads-MODEL)."),
    text: str = typer.Option(_RETRIEVAL.text, "--text", help="The haystack's text: stdlib | bible | PATH | hf:NAME"),
    length: list[int] = typer.Option(list(_RETRIEVAL.lengths), "--length", help="Haystack length in tokens (repeat)."),
    depths: int = typer.Option(_RETRIEVAL.depths, "--depths", help="Needle depths from 0% to 100%."),
    top_k: int = typer.Option(_RETRIEVAL.top_k, "--top-k", help="Heads masked (0: every retrieval head)."),
    random_draws: int = typer.Option(_RETRIEVAL.random_draws, "--random", help="Random head sets masked beside them."),
    seed: int = typer.Option(_RETRIEVAL.seed, "--seed"),
) -> None:
    """Retrieval heads (Wu et al. 2024): needle-in-a-haystack retrieval scores per head on train needles, their
    share and overlap with induction heads, and the causal test on held-out needles (masked vs random heads)."""
    _run_study("retrieval-heads", RetrievalConfig, {"text": text, "lengths": tuple(length), "depths": depths, "top_k": top_k,
                                                    "random_draws": random_draws, "seed": seed}, model, out)


@command(on=study_app, name="talking-heads")
def talking_heads(
    model: str = _MODEL,
    out: Path = typer.Option(None, "--out", help="Output folder (default circuits/results/talking-heads-MODEL)."),
    size: list[int] = typer.Option(list(_TALKING.sizes), "--items", help="Laundry List length (repeat)."),
    n: int = typer.Option(_TALKING.n, "--n", help="Prompts per list length in each of the choose and test sets."),
    heads: int = typer.Option(_TALKING.heads, "--heads", help="Inhibition heads kept."),
    rank: int = typer.Option(_TALKING.rank, "--rank", help="OV components per head's inhibition subspace."),
    random_draws: int = typer.Option(_TALKING.random_draws, "--random", help="Random-component control edits."),
    seed: int = typer.Option(_TALKING.seed, "--seed"),
) -> None:
    """Talking Heads (Merullo et al. 2024): the Laundry List task's inhibition heads, the OV components carrying the
    inhibition, the items' positional index, and representation and weight edits of those components against
    random-component edits, on held-out prompts."""
    _run_study("talking-heads", TalkingHeadsConfig, {"sizes": tuple(size), "n": n, "heads": heads, "rank": rank,
                                                     "candidates": max(_TALKING.candidates, heads),
                                                     "random_draws": random_draws, "seed": seed}, model, out)


@command(on=study_app, name="component-reuse")
def component_reuse(
    model: str = _MODEL,
    out: Path = typer.Option(None, "--out", help="Output folder (default circuits/results/component-reuse-MODEL)."),
    n_train: int = typer.Option(_REUSE.n_train, "--n-train", help="Train prompts a task."),
    n_test: int = typer.Option(_REUSE.n_test, "--n-test", help="Held-out prompts a task."),
    control: str = typer.Option(_REUSE.control, "--control", help="Control task: greater_than | induction."),
    repair_heads: int = typer.Option(_REUSE.repair_heads, "--repair-heads", help="Middle-layer heads to repair."),
    random_draws: int = typer.Option(_REUSE.random_draws, "--random", help="Random head sets given the same edit."),
    seed: int = typer.Option(_REUSE.seed, "--seed"),
) -> None:
    """Circuit Component Reuse (Merullo et al. 2024): overlap of the IOI and Colored Objects circuits (EAP-IG) with a
    random null and a control task, and the repair of Colored Objects by setting middle-layer heads to their IOI
    behaviour, against random heads, on held-out prompts."""
    _run_study("component-reuse", ReuseConfig, {"n_train": n_train, "n_test": n_test, "control": control,
                                                "repair_heads": repair_heads, "random_draws": random_draws, "seed": seed},
               model, out)
