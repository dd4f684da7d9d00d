"""``saecircuits layers MODE``: the layer-wise analyses on the command line, each writing MODE.json and
its figure (MODE.png / .pdf) to --out and printing one line of its headline numbers.

Option defaults are the analyses' config defaults (``saecircuits.layerwise.config``). Each command
imports the analysis it runs only when it runs: those modules import TransformerLens (seconds), which
``--help`` and option errors should not wait for.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from saecircuits.app.command import command, console
from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.layerwise.config import LinearityConfig, ProbeConfig, SkipConfig, StreamConfig, TunedLensConfig
from saecircuits.layerwise.results import (
    ContributionsResult,
    LayerResult,
    LensResult,
    LinearityResult,
    ProbeResult,
    SkipResult,
    TunedLensSummary,
)

layers_app = typer.Typer(help="Layer-wise analysis: logit/tuned lens, sublayer contributions, layer skipping, "
                              "probes per layer, linearity between layers. Each writes MODE.json + MODE.png/.pdf to --out.",
                         no_args_is_help=True)

# each analysis's default settings: the options' defaults
_STREAM, _SKIP, _LINEARITY, _PROBE, _TUNED = StreamConfig(), SkipConfig(), LinearityConfig(), ProbeConfig(), TunedLensConfig()
_TEXT_HELP = "stdlib | bible | stdlib+bible | PATH | hf:NAME | tokens:PATH"
_MODEL_OPT = typer.Option("smollm2-135m", "--model", help="smollm2-135m | gemma-3-270m | a TransformerLens hub name")
_OUT_OPT = typer.Option(..., "--out", help="Output folder for the JSON and figures.")
_TEXT_OPT = typer.Option(_STREAM.text.source, "--text", help=_TEXT_HELP)


def _layers_stream(text: str, tokens: int, context_size: int, batch_size: int) -> StreamConfig:
    return validate(StreamConfig, {"text": {"source": text, "context_size": context_size}, "tokens": tokens,
                                   "batch_size": batch_size}, where="layers")


def _layers_write(out: Path, name: str, result: LayerResult) -> None:
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
    from saecircuits.layerwise import lens as lenslib
    from saecircuits.layerwise import tuned as tunedlib
    from saecircuits.model import loading as m

    if prompts:
        more_p, more_a = lenslib.read_prompts(str(prompts))
        ps, ans = ps + more_p, ans + more_a
    lm = m.load(model)
    for a in ans:  # the lens follows one token: say so when an answer is several
        ids = lenslib.answer_ids(lm, a)
        if len(ids) > 1:
            console.print(f"[yellow]note:[/yellow] answer {escape(repr(a))} is {len(ids)} tokens; the lens follows its "
                          f"first, {escape(repr(lm.tokenizer.decode(ids[:1])))}", highlight=False)
    lens = tunedlib.load(tuned, lm) if tuned else None
    if task:
        r = LensResult.from_json(lenslib.logit_lens(lm, lens=lens, **lenslib.task_prompts(lm, task, n)))
    else:
        r = LensResult.from_json(lenslib.logit_lens(lm, ps, ans, lens))
    console.print(f"{r.analysis} on {r.n_prompts} prompt(s): final top-1 accuracy {r.final_accuracy:.2f}; answer first top-1 "
                  f"at layer {r.first_top1.median_label} (median, {r.first_top1.n}/{r.n_prompts} prompts), "
                  f"stays top-1 from {r.stable_top1.median_label}")
    _layers_write(out, r.analysis, r)


@command(on=layers_app, name="tuned-lens")
def layers_tuned_lens(
    out: Path = typer.Option(..., "--out", help="Folder for the tuned lens (safetensors + JSON) and its KL figure."),
    model: str = _MODEL_OPT,
    text: str = typer.Option(_TUNED.text.source, "--text", help=_TEXT_HELP),
    tokens: int = typer.Option(_TUNED.tokens, "--tokens", min=1, help="Training tokens."),
    context_size: int = typer.Option(_TUNED.text.context_size, "--context-size", min=2),
    batch_tokens: int = typer.Option(_TUNED.batch_size_tokens, "--batch-tokens", min=1),
    lr: float = typer.Option(_TUNED.lr, "--lr"),
    eval_tokens: int = typer.Option(_TUNED.eval_tokens, "--eval-tokens", min=0),
) -> None:
    """Train a tuned lens (an affine translator per layer, KL to the final logits) on the activation stream."""
    from saecircuits.layerwise import tuned as tunedlib
    from saecircuits.model import loading as m

    cfg = validate(TunedLensConfig, {"text": {"source": text, "context_size": context_size}, "tokens": tokens,
                                     "batch_size_tokens": batch_tokens, "lr": lr, "eval_tokens": eval_tokens},
                   where="tuned-lens")
    from saecircuits.core.files import check_output_dir, staged_dir
    from saecircuits.layerwise.figures import write

    target = check_output_dir(out)  # before the training
    lm = m.load(model)
    lens, summary = tunedlib.train(lm, cfg)
    s = TunedLensSummary.from_json(summary)
    if s.eval is not None:
        ev = s.eval
        mid = len(ev.layers) // 2
        console.print(f"held-out KL at layer {ev.layers[mid]}: logit lens {ev.kl_logit_lens[mid]:.3f}, "
                      f"tuned lens {ev.kl_tuned_lens[mid]:.3f} nats")
    with staged_dir(target) as tmp:  # the lens folder is one whole lens, even when interrupted
        tunedlib.save(lens, tmp, summary)
        write(tmp, "tuned_lens_training", s)
    console.print(f"wrote {target} (tuned lens weights, {tunedlib.META}, tuned_lens_training.json and its figure)")


@command(on=layers_app, name="contributions")
def layers_contributions(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    text: str = _TEXT_OPT,
    tokens: int = typer.Option(_STREAM.tokens, "--tokens", min=2),
    context_size: int = typer.Option(_STREAM.text.context_size, "--context-size", min=2),
    batch_size: int = typer.Option(_STREAM.batch_size, "--batch-size", min=1),
) -> None:
    """Norm of each attention / MLP output relative to the residual stream, and its cosine with it, per layer."""
    from saecircuits.layerwise import contributions
    from saecircuits.model import loading as m

    stream = _layers_stream(text, tokens, context_size, batch_size)
    r = ContributionsResult.from_json(contributions.measure(m.load(model), stream))
    h = r.halves["block_rel_norm"]
    console.print(f"{r.tokens:,} tokens: mean ||block out|| / ||resid|| first half {h.first_half:.3f}, "
                  f"second half {h.second_half:.3f}")
    _layers_write(out, "contributions", r)


def _or_nan(x: float | None) -> float:
    return x if x is not None else float("nan")


@command(on=layers_app, name="skip")
def layers_skip(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    text: str = _TEXT_OPT,
    tokens: int = typer.Option(_SKIP.stream.tokens, "--tokens", min=2, help="Tokens per intervention (each is a full forward pass)."),
    context_size: int = typer.Option(_SKIP.stream.text.context_size, "--context-size", min=2),
    batch_size: int = typer.Option(_SKIP.stream.batch_size, "--batch-size", min=1),
    skip: list[str] = typer.Option(None, "--skip", help="Layers skipped together: 7, 10-14 or 3,5 (repeatable); default every single layer."),
    swap: bool = typer.Option(_SKIP.swap_adjacent, "--swap/--no-swap", help="Also swap each pair of adjacent layers."),
) -> None:
    """Skip layers (or ranges) and swap adjacent ones: change in later residuals and in the output (KL, loss)."""
    from saecircuits.layerwise import skipping
    from saecircuits.model import loading as m

    lm = m.load(model)
    skips = [skipping.parse_layers(s, lm.cfg.n_layers) for s in skip] if skip else None
    cfg = validate(SkipConfig, {"stream": _layers_stream(text, tokens, context_size, batch_size).model_dump(),
                                "skips": skips, "swap_adjacent": swap}, where="skip")
    r = SkipResult.from_json(skipping.measure(lm, cfg))
    h = r.halves
    worst = max(r.interventions, key=lambda x: x.kl)
    console.print(f"clean loss {r.clean_loss:.3f}; mean KL of skipping one layer: first half "
                  f"{_or_nan(h.skip_kl_first_half):.4f}, second half {_or_nan(h.skip_kl_second_half):.4f}; "
                  f"largest: {worst.name} (KL {worst.kl:.3f})")
    _layers_write(out, "skip", r)


@command(on=layers_app, name="probe")
def layers_probe(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    data: str = typer.Option("code-vs-prose", "--data",
                             help="code-vs-prose | old-vs-new-testament | task:NAME[:clean-vs-corrupted|order] | a CSV of text,label"),
    pool: str = typer.Option(_PROBE.pool, "--pool", help="last | mean (over the text's tokens)"),
    n_per_class: int = typer.Option(100, "--n-per-class", min=2, help="Built-in sets: texts per class (tasks: prompts)."),
    n_tokens: int = typer.Option(32, "--n-tokens", min=1, help="Built-in sets: tokens per text."),
    sae: list[Path] = typer.Option(None, "--sae", help="An SAE folder whose features are probed too (repeatable)."),
    test_fraction: float = typer.Option(_PROBE.test_fraction, "--test-fraction"),
    repeats: int = typer.Option(_PROBE.repeats, "--repeats", min=1),
    c: float = typer.Option(_PROBE.C, "--C", help="Inverse L2 strength (as scikit-learn)."),
    seed: int = typer.Option(_PROBE.seed, "--seed"),
) -> None:
    """Logistic-regression probes on every layer's residual (and SAE features): held-out accuracy by layer."""
    from saecircuits.layerwise import probes
    from saecircuits.model import loading as m
    from saecircuits.sae import format as sae_format

    cfg = validate(ProbeConfig, {"pool": pool, "test_fraction": test_fraction, "repeats": repeats, "C": c,
                                 "seed": seed}, where="probe")
    lm = m.load(model)
    labelled = probes.load(lm, data, n_per_class, n_tokens, seed)
    saes = {p.name: sae_format.load(p) for p in (sae or [])}
    for p in sae or []:
        sae_format.check_fits(saes[p.name], lm, p)
    r = ProbeResult.from_json(probes.measure(lm, labelled, cfg, saes))
    console.print(f"{r.n_examples} texts ({', '.join(r.classes)}): best held-out accuracy {r.best_accuracy:.3f} "
                  f"at layer {r.best_layer}; within 0.02 of it from layer {r.concept_depth}")
    for s in r.saes:
        console.print(f"SAE {s.name} ({s.hook}): held-out accuracy {s.test_accuracy:.3f}")
    _layers_write(out, "probe", r)


@command(on=layers_app, name="linearity")
def layers_linearity(
    out: Path = _OUT_OPT,
    model: str = _MODEL_OPT,
    text: str = _TEXT_OPT,
    tokens: int = typer.Option(_LINEARITY.stream.tokens, "--tokens", min=2, help="Tokens to fit the maps on."),
    eval_tokens: int = typer.Option(_LINEARITY.eval_tokens, "--eval-tokens", min=2, help="Held-out tokens (the text's eval split)."),
    context_size: int = typer.Option(_LINEARITY.stream.text.context_size, "--context-size", min=2),
    batch_size: int = typer.Option(_LINEARITY.stream.batch_size, "--batch-size", min=1),
    normalize: str = typer.Option(_LINEARITY.normalize, "--normalize", help="token (each residual to unit norm) | none"),
) -> None:
    """R^2 of the best affine map from each layer's residual to the next (in-sample and held out)."""
    from saecircuits.layerwise import linearity
    from saecircuits.model import loading as m

    cfg = validate(LinearityConfig, {"stream": _layers_stream(text, tokens, context_size, batch_size).model_dump(),
                                     "eval_tokens": eval_tokens, "normalize": normalize}, where="linearity")
    r = LinearityResult.from_json(linearity.measure(m.load(model), cfg))
    worst = min(range(len(r.r2_held_out)), key=lambda i: r.r2_held_out[i])
    console.print(f"held-out R^2 of one affine map per block: min {r.r2_held_out[worst]:.3f} (block {r.layers[worst]}), "
                  f"mean {sum(r.r2_held_out) / len(r.r2_held_out):.3f}")
    if r.warning:
        console.print(f"[yellow]warning:[/yellow] {r.warning}")
    _layers_write(out, "linearity", r)
