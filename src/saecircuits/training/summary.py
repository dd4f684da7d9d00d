"""What a training run reports: ``OUT/summary.json``, typed.

``TrainingSummary.to_json()`` is the file's content (same keys, same order); ``from_json`` reads it
back, and the report reads a run through ``read_summary``. Values are kept as they are: a NaN metric
is a float NaN in memory and null on disk (``write_json``), and reads back as None.

A partial summary (written by hand, or a demo stage marker, whose SAEs lack ``density_histogram``)
reads too: a missing key reads as None.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from saecircuits.core.files import read_json
from saecircuits.core.records import LenientRecord, flattened, json_field, optional, required


@dataclass
class SpliceMetrics(LenientRecord):
    """The model's next-token loss (nats) with an SAE's reconstruction spliced in, on held-out text
    (evaluated with ``eval.ce``); None where NaN (``ce_loss_recovered`` when zero-ablation costs nothing)."""

    ce_clean: float | None = None
    ce_with_sae: float | None = None
    ce_zero_ablation: float | None = None
    kl_to_clean: float | None = None
    ce_loss_recovered: float | None = None


SPLICE_KEYS = tuple(f.name for f in fields(SpliceMetrics))


@dataclass
class TrainedSAE(LenientRecord):
    """One SAE of a run: where it is saved, what it is, and its metrics on held-out text (per token:
    ``mse`` in the site's raw units, ``l0`` active latents; ``fvu`` and ``explained_variance`` None
    where NaN)."""

    path: str
    hook: str
    hook_out: str | None
    architecture: str
    d_sae: int
    k: int
    lr: float
    density_histogram: dict | None = json_field(omit_none=True)  # log10 feature densities: edges, counts, dead
    tokens: int
    mse: float
    fvu: float | None
    l0: float
    dead_latents: int
    dense_latents: int
    explained_variance: float | None
    splice: SpliceMetrics | None = flattened()  # with eval.ce; its keys sit in this SAE's object


@dataclass
class WandbOutcome(LenientRecord):
    """How the run's W&B logging ended: its mode, and the command that uploads an offline run (or None)."""

    sync: str | None
    mode: str = required()


@dataclass
class TrainingSummary(LenientRecord):
    """A finished run: the model, rows trained per SAE (``tokens``), optimiser steps, wall seconds, rows
    dropped as norm outliers, each site's normalisation scale, and every SAE by name."""

    model: str
    tokens: int
    steps: int
    seconds: float
    tokens_per_second: float
    tokens_dropped_outlier: int
    scales: dict[str, float]
    saes: dict[str, TrainedSAE] = json_field(if_missing={}, default_factory=dict)
    distributed: dict | None = optional()  # several processes: processes, parallel, ranks (and owners)
    wandb: WandbOutcome | None = flattened("wandb_")  # None until the W&B run is finished


def read_summary(out: str | Path) -> TrainingSummary:
    """The summary a run wrote into its output folder ``out``."""
    return TrainingSummary.from_json(read_json(Path(out) / "summary.json", what="training summary"))
