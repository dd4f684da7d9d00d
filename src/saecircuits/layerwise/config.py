"""The settings of every layer analysis, in one light module (pydantic only, no model stack), so the
command line can take its defaults from them without importing TransformerLens."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from saecircuits.core.config import Config
from saecircuits.text.config import Split, TextConfig


class StreamConfig(Config):
    """Which text a layer analysis reads, and how much of it."""

    text: TextConfig = TextConfig(source="stdlib", context_size=128)
    tokens: int = Field(16_384, ge=2, description="context tokens to run through the model (all positions)")
    batch_size: int = Field(8, ge=1, description="contexts per forward pass")
    split: Split = "train"


class SkipConfig(Config):
    """Which interventions to run, over which text."""

    stream: StreamConfig = StreamConfig(tokens=2048, batch_size=4)
    skips: list[list[int]] | None = Field(
        None, description="each a list of layers skipped together ([]: skip nothing, a control); None: every single layer")
    swap_adjacent: bool = True


class LinearityConfig(Config):
    stream: StreamConfig = StreamConfig(tokens=16_384)
    eval_tokens: int = Field(4096, ge=2, description="held-out tokens (the text's eval split)")
    normalize: Literal["token", "none"] = "token"
    ridge: float = Field(1e-6, ge=0, description="ridge, relative to the mean diagonal of X^T X")
    top_tokens: int = Field(15, ge=0, description="most and least linear token strings to report")


class ProbeConfig(Config):
    """How probes are fit."""

    pool: Literal["last", "mean"] = "last"
    test_fraction: float = Field(0.3, gt=0, lt=1)
    repeats: int = Field(3, ge=1, description="random train/test splits averaged")
    C: float = Field(1.0, gt=0, description="inverse L2 strength, as scikit-learn's LogisticRegression")
    max_iter: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0


class TunedLensConfig(Config):
    """How a tuned lens is trained."""

    text: TextConfig = TextConfig(source="stdlib", context_size=128)
    tokens: int = Field(65_536, ge=1, description="training tokens (rows of the store)")
    batch_size_tokens: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_tokens: int = Field(4096, ge=0, description="held-out tokens for the KL report (0: none)")
    seed: int = 0
