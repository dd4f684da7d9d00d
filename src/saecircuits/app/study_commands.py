"""``saecircuits study NAME``: the seed papers' head-level studies, each writing its folder under
circuits/results/NAME-MODEL (replaced whole) with JSON, a figure and a summary beside the paper's numbers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from saecircuits.app.command import command, console
from saecircuits.circuits.config import RetrievalConfig
from saecircuits.core.config import validate

study_app = typer.Typer(help="The seed papers' head-level studies (retrieval heads).", no_args_is_help=True)
_RETRIEVAL = RetrievalConfig()


@command(on=study_app, name="retrieval-heads")
def retrieval_heads(
    model: str = typer.Option("smollm2-135m", "--model", help="smollm2-135m | gemma-3-270m | a TransformerLens hub name"),
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
    from saecircuits.circuits import retrieval_heads as rh
    from saecircuits.core.files import check_output_dir
    from saecircuits.model import loading as m

    cfg = validate(RetrievalConfig, {"text": text, "lengths": tuple(length), "depths": depths, "top_k": top_k,
                                     "random_draws": random_draws, "seed": seed}, where="retrieval-heads")
    target = check_output_dir(out or Path("circuits/results") / f"retrieval-heads-{model}")
    lm = m.load(model)
    result = rh.study(lm, cfg, note=lambda msg: console.print(f"[dim]{escape(msg)}[/dim]", highlight=False))
    folder = rh.write(result, target, model, cfg)
    console.print(f"written: {folder} (summary.md beside the paper's numbers)")
