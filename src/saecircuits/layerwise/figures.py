"""Figures of the layer analyses (matplotlib, PNG + PDF), each drawn from a typed result, and writing a
result with its figure."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saecircuits.core import files  # noqa: E402
from saecircuits.core.files import ensure_dir, uninterrupted, write_json  # noqa: E402
from saecircuits.layerwise.results import (  # noqa: E402
    ContributionsResult,
    LayerResult,
    LensResult,
    LinearityResult,
    ProbeResult,
    SkipResult,
    TunedLensSummary,
    parse,
)


def save_figure(fig, out: str | Path, name: str) -> list[Path]:
    return files.save_figure(fig, Path(out) / name)


def write(out: str | Path, name: str, result: LayerResult | dict) -> dict:
    """``name.json`` and ``name.png`` / ``name.pdf`` in ``out`` of an analysis's result (typed, or its JSON);
    returns the paths written."""
    out = ensure_dir(out)
    typed = _typed(result)
    figure = draw(typed)  # all the work first; then the files are written together, not split by an interrupt
    with uninterrupted():
        json_path = write_json(out / f"{name}.json", typed.to_json())
        return {"json": str(json_path), "figures": [str(p) for p in save_figure(figure, out, name)]}


def draw(result: LayerResult | dict):
    """The figure of one analysis's result (typed, or its JSON)."""
    typed = _typed(result)
    return FIGURES[typed.analysis](typed)


def _typed(result: LayerResult | dict) -> LayerResult:
    return parse(result) if isinstance(result, dict) else result


def _x(labels: list) -> tuple[list[int], list[str]]:
    return list(range(len(labels))), [str(x) for x in labels]


def _ticks(ax, labels: list) -> None:
    xs, names = _x(labels)
    step = max(1, len(xs) // 12)
    ax.set_xticks(xs[::step], names[::step], fontsize=8, rotation=45 if names and names[0] == "embed" else 0)


def _title(r: LayerResult, what: str) -> str:
    return f"{r.model}: {what}"


def lens(r: LensResult):
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"wspace": 0.45})
    xs, _ = _x(r.layers)
    bl = r.by_layer
    a.plot(xs, [max(p, 1e-30) for p in bl.mean_prob], marker="o", ms=3, label="mean P(answer)")
    a.set_yscale("log")
    a.set_ylabel("mean P(answer)")
    t = a.twinx()
    t.plot(xs, bl.top1_fraction, color="C1", marker="s", ms=3, label="answer is top-1")
    t.set_ylim(-0.02, 1.02)
    t.set_ylabel("share of prompts: answer top-1", color="C1")
    a.set_xlabel("depth (residual after block)")
    _ticks(a, r.layers)
    a.set_title(_title(r, r.analysis.replace("_", " ") + " at the last position"))
    ranks = [[math.log10(1 + p.rank[s][-1]) for s in range(len(xs))] for p in r.prompts]
    im = b.imshow(ranks, aspect="auto", cmap="viridis_r", interpolation="nearest")
    fig.colorbar(im, ax=b, label="log10(1 + rank of answer)")
    b.set_xlabel("depth")
    _ticks(b, r.layers)
    b.set_ylabel("prompt")
    b.set_yticks(range(0, len(ranks), max(1, len(ranks) // 10)))
    b.set_title(f"first top-1 (median): {r.first_top1.median_label}")
    return fig


def tuned(r: TunedLensSummary):
    fig, ax = plt.subplots(figsize=(6, 4))
    if r.eval is None:
        ax.text(0.5, 0.5, "not evaluated (eval_tokens 0)", ha="center")
        return fig
    ev = r.eval
    xs, _ = _x(ev.layers)
    ax.plot(xs, ev.kl_logit_lens, marker="o", ms=3, label="logit lens")
    ax.plot(xs, ev.kl_tuned_lens, marker="s", ms=3, label="tuned lens")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylabel("KL(final || lens), nats")
    ax.set_xlabel("depth")
    _ticks(ax, ev.layers)
    ax.legend()
    ax.set_title(_title(r, "held-out KL to the output"))
    return fig


def contributions(r: ContributionsResult):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = r.layers
    bl = r.by_layer
    for key, label in (("attn", "attention"), ("mlp", "MLP"), ("block", "whole block")):
        if f"{key}_rel_norm" in bl:
            a.plot(xs, bl[f"{key}_rel_norm"], marker="o", ms=3, label=label)
            b.plot(xs, bl[f"{key}_cos"], marker="o", ms=3, label=label)
    a.set_yscale("log")
    a.set_ylabel("||sublayer out|| / ||resid_pre||")
    b.set_ylabel("cos(sublayer out, resid_pre)")
    b.axhline(0, color="grey", lw=0.5)
    for ax in (a, b):
        ax.set_xlabel("layer")
        ax.axvline((len(xs) - 1) / 2, color="grey", ls=":", lw=0.8)
        ax.legend()
    a.set_title(_title(r, "relative contribution"))
    b.set_title("cosine with the residual")
    return fig


def skipping(r: SkipResult):
    n = len(r.layers)
    singles = [x for x in r.interventions if x.kind == "skip" and len(x.layers) == 1]
    swaps = [x for x in r.interventions if x.kind == "swap"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if singles:
        a.plot([x.layers[0] for x in singles], [x.kl for x in singles], marker="o", ms=3, label="skip layer")
    if swaps:
        a.plot([x.layers[0] + 0.5 for x in swaps], [x.kl for x in swaps], marker="s", ms=3, label="swap with next")
    a.set_yscale("log")
    a.set_xlabel("layer")
    a.set_ylabel("KL(clean || intervened), nats/token")
    a.axvline((n - 1) / 2, color="grey", ls=":", lw=0.8)
    a.legend()
    a.set_title(_title(r, "output change"))
    rows = singles or [x for x in r.interventions if x.kind == "skip"]
    if rows:
        grid = [[v if v is not None else float("nan") for v in x.contrib_rel_diff] for x in rows]
        im = b.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest", vmin=0)
        fig.colorbar(im, ax=b, label="||c' - c|| / ||c|| of later block")
        b.set_yticks(range(len(rows))[:: max(1, len(rows) // 12)], [x.name for x in rows][:: max(1, len(rows) // 12)])
        b.set_xlabel("later layer")
        b.set_title("effect on later layers' contributions")
    return fig


def probes(r: ProbeResult):
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, _ = _x(r.layers)
    bl = r.by_layer
    ax.plot(xs, bl.test_accuracy, marker="o", ms=3, label="held-out accuracy")
    ax.plot(xs, bl.train_accuracy, ls="--", lw=1, label="train accuracy")
    ax.plot(xs, bl.chance, color="grey", ls=":", label="majority class")
    for s in r.saes:
        hook = s.hook
        if ".hook_resid_post" in hook:
            x = int(hook.split(".")[1]) + 1
        elif ".hook_resid_pre" in hook:
            x = int(hook.split(".")[1])
        else:
            continue
        ax.scatter([x], [s.test_accuracy], marker="*", s=120, zorder=3, label=f"SAE {s.name}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("depth")
    _ticks(ax, r.layers)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title(_title(r, f"probes on {r.data} ({r.config['pool']} token)"))
    return fig


def linearity(r: LinearityResult):
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, _ = _x(r.layers)
    ax.plot(xs, r.r2_in_sample, marker="o", ms=3, label="in-sample")
    ax.plot(xs, r.r2_held_out, marker="s", ms=3, label="held out")
    ax.set_xlabel("block (map from its input to its output)")
    _ticks(ax, r.layers)
    ax.set_ylabel("R^2 of one affine map")
    ax.legend()
    ax.set_title(_title(r, f"linearity between layers ({r.normalize} normalisation)"))
    return fig


FIGURES = {
    "logit_lens": lens, "tuned_lens": lens, "tuned_lens_training": tuned, "sublayer_contributions": contributions,
    "layer_skipping": skipping, "linear_probes": probes, "layer_linearity": linearity,
}
