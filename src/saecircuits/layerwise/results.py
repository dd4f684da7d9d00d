"""The typed results of the layer analyses, exactly as ``layers/<name>.json`` holds them.

Each analysis builds one of these and returns its JSON (``to_json()``: the same keys in the same
order as the file); the figures and the report read them back with ``from_json()`` (``parse`` picks
the class from the ``analysis`` key), so a renamed field fails loudly instead of reading as missing.
Depth lists run over stream indices (``embed``, then after each block) unless a field says otherwise.

A key that a JSON (hand-written, or cut down to what a figure needs) does not hold reads back as
``ABSENT`` and is left out again by ``to_json()``; a key the class does not know is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from saecircuits.core.records import ABSENT, JsonRecord, optional


class LayerRecord(JsonRecord):
    """A layer analysis's record: a key the JSON lacks reads as ``ABSENT`` (left out again); a key the
    class does not know is an error."""

    if_missing = ABSENT


# ---------------------------------------------------------------- logit lens and tuned lens


@dataclass(kw_only=True)
class PromptReading(LayerRecord):
    """The lens on one prompt: ``rank`` / ``prob`` of the answer are [depth][position] (rank 0 = top-1)."""

    prompt: str
    tokens: list[str]
    answer: str
    answer_id: int
    rank: list[list[int]]
    prob: list[list[float]]
    top1_last: list[str]  # the top-1 token at the last position, per depth
    final_correct: bool
    first_top1: str | None  # depth label
    stable_top1: str | None
    first_top1_index: int | None
    stable_top1_index: int | None
    logit_diff: list[float] | None = optional()  # per depth, when competing tokens were given
    wrong: list[str] | None = optional()


@dataclass(kw_only=True)
class DepthSummary(LayerRecord):
    """Where the answer became top-1, over the ``n`` of ``of`` prompts where it did: median depth, histogram."""

    n: int
    of: int
    median: int | None
    median_label: str | None
    mean: float | None = optional()  # absent when no prompt reached top-1
    histogram: dict[str, int]


@dataclass(kw_only=True)
class LensByLayer(LayerRecord):
    """Per depth, at the last position, over prompts."""

    mean_prob: list[float]
    median_rank: list[float]
    mean_log_rank: list[float]
    top1_fraction: list[float]
    mean_logit_diff: list[float] | None = optional()


@dataclass(kw_only=True)
class LensResult(LayerRecord):
    """``analysis`` is ``logit_lens``, or ``tuned_lens`` when read through a tuned lens."""

    analysis: str
    model: str
    layers: list[str]
    n_prompts: int
    source: str | None
    final_accuracy: float
    by_layer: LensByLayer
    first_top1: DepthSummary
    stable_top1: DepthSummary
    prompts: list[PromptReading]


@dataclass(kw_only=True)
class TunedLensEval(LayerRecord):
    """Held-out KL(final || lens) per depth, in nats, for the plain logit lens and the tuned lens."""

    layers: list[str]
    tokens: int
    kl_logit_lens: list[float]
    kl_tuned_lens: list[float]


@dataclass(kw_only=True)
class TunedLensSummary(LayerRecord):
    """A tuned lens's training (also its ``tuned_lens.json``)."""

    analysis: str = "tuned_lens_training"
    model: str
    fingerprint: str
    n_layers: int
    d_model: int
    config: dict
    steps: int
    train_kl_first: float
    train_kl_last: float
    seconds: float
    eval: TunedLensEval | None = optional()  # absent when eval_tokens is 0


# ---------------------------------------------------------------- sublayer contributions


@dataclass(kw_only=True)
class Halves(LayerRecord):
    """A per-layer metric averaged over the first and the second half of the layers."""

    first_half: float
    second_half: float
    first_half_median: float
    second_half_median: float


@dataclass(kw_only=True)
class ContributionsResult(LayerRecord):
    """``by_layer``: per block, ``{attn,mlp,block}_rel_norm`` and ``_cos`` (no ``mlp_*`` in attention-only
    models) and ``resid_norm``; ``halves``: the same metrics (not ``resid_norm``) over each half."""

    analysis: str = "sublayer_contributions"
    model: str
    layers: list[int]
    tokens: int
    text: dict
    by_layer: dict[str, list[float]]
    halves: dict[str, Halves]
    second_half_contributes_less: bool


# ---------------------------------------------------------------- skipping and swapping layers


@dataclass(kw_only=True)
class Intervention(LayerRecord):
    """One skip or swap against the clean run: output KL (nats/token), loss, top-1 agreement, and per
    later block the relative change of its residual and of its contribution (None for earlier blocks)."""

    name: str
    kind: str  # skip | swap
    layers: list[int]
    kl: float
    loss: float
    top1_agreement: float
    resid_rel_diff: list[float | None]
    resid_cos: list[float | None]
    contrib_rel_diff: list[float | None]


@dataclass(kw_only=True)
class SkipHalves(LayerRecord):
    """KL of skipping one layer, over the layers of each half (None when no single-layer skip ran there)."""

    skip_kl_first_half: float | None
    skip_kl_second_half: float | None
    skip_kl_first_half_median: float | None
    skip_kl_second_half_median: float | None


@dataclass(kw_only=True)
class SkipResult(LayerRecord):
    analysis: str = "layer_skipping"
    model: str
    layers: list[int]
    tokens: int
    text: dict
    clean_loss: float
    interventions: list[Intervention]
    halves: SkipHalves


# ---------------------------------------------------------------- probes


@dataclass(kw_only=True)
class ProbeByLayer(LayerRecord):
    """Per depth: probe accuracy on the training and held-out texts, and the majority-class share."""

    train_accuracy: list[float]
    test_accuracy: list[float]
    chance: list[float]


@dataclass(kw_only=True)
class SaeProbe(LayerRecord):
    """A probe on one SAE's pooled features, beside the residual probe at the SAE's hook (when a stream depth)."""

    name: str
    hook: str
    d_sae: int
    train_accuracy: float
    test_accuracy: float
    chance: float
    residual_test_accuracy: float | None


@dataclass(kw_only=True)
class ProbeResult(LayerRecord):
    analysis: str = "linear_probes"
    model: str
    layers: list[str]
    data: str
    classes: list[str]
    n_examples: int
    class_counts: list[int]
    config: dict
    by_layer: ProbeByLayer
    best_layer: str
    best_accuracy: float
    concept_depth: str
    concept_depth_note: str
    saes: list[SaeProbe]


# ---------------------------------------------------------------- linearity


@dataclass(kw_only=True)
class TokenNonlinearity(LayerRecord):
    token: str
    count: int
    nonlinearity: float


@dataclass(kw_only=True)
class TokenTable(LayerRecord):
    """Mean held-out nonlinearity of every kept token, and the token strings with the highest and lowest."""

    mean_nonlinearity: float
    most_nonlinear: list[TokenNonlinearity]
    most_linear: list[TokenNonlinearity]


@dataclass(kw_only=True)
class LinearityResult(LayerRecord):
    """R^2 of one affine map per block (``layers``: the block, ``pairs``: its depths ``a->b``)."""

    warning: str | None = optional()  # too few training tokens for the fit to be trusted
    analysis: str = "layer_linearity"
    model: str
    normalize: str
    pairs: list[str]
    layers: list[str]
    train_tokens: int
    eval_tokens: int
    text: dict
    r2_in_sample: list[float]
    r2_held_out: list[float]
    tokens: TokenTable
    note: str


LayerResult = Union[LensResult, TunedLensSummary, ContributionsResult, SkipResult, ProbeResult, LinearityResult]

RESULTS: dict[str, type] = {
    "logit_lens": LensResult, "tuned_lens": LensResult, "tuned_lens_training": TunedLensSummary,
    "sublayer_contributions": ContributionsResult, "layer_skipping": SkipResult, "linear_probes": ProbeResult,
    "layer_linearity": LinearityResult,
}


def parse(data: dict) -> LayerResult:
    """A layer analysis's JSON as its typed result, by its ``analysis`` key."""
    return RESULTS[data["analysis"]].from_json(data)
