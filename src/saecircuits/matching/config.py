"""What an activation matching runs on and how: ``MatchConfig``, and the assignment methods.

Kept light (no model or SAE code), so the command line can read its defaults when it starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from saecircuits.core.config import Config
from saecircuits.text.config import Rule, TextConfig

Method = Literal["hungarian", "best", "greedy"]


class MatchConfig(Config):
    """Activation matching over a text: how much text, how to match, what to filter, which statistics."""

    text: TextConfig = TextConfig()
    tokens: int = Field(100_000, ge=1, description="compared tokens (aligned positions across models)")
    batch_contexts: int = Field(8, ge=1, description="contexts per forward pass")
    method: Method = "hungarian"
    min_fires: int = Field(5, ge=1, description="a feature firing on fewer compared tokens is dead and unmatched")
    min_r: float = Field(0.1, ge=-1, le=1, description="pairs with lower r are flagged low_r and left out of the statistics")
    max_special_share: float = Field(0.9, ge=0, le=1, description="features with at least this share of firings on BOS/special/punctuation tokens are flagged")
    top_tokens: int = Field(5, ge=1)
    top_m: int = Field(20, ge=1, description="highest activations kept per feature to find its top tokens")
    alignment: Rule = "boundary"
    drop_outlier_norm: float | None = Field(
        10.0, gt=1, description="tokens whose SAE input norm exceeds this many times the median (massive-activation / "
        "attention-sink tokens, ~100x the median in SmolLM2) are not compared; they would dominate r and CKA. None: keep all")
    null: int = Field(1000, ge=0, description="shuffled pairings in each similarity null (0: skip the statistics)")
    random_subsets: int = Field(100, ge=0, description="random-subset baseline draws")
    sample_tokens: int = Field(2048, ge=0, description="tokens whose activations are kept for activation-space similarity (0: decoders only)")
    activation_svcca_dims: int = Field(128, ge=1, description="SVCCA on activations keeps at most this many directions per side")
    rsa_max_points: int = Field(2000, ge=10, description="RSA on at most this many (random) points")
    measures: list[Literal["svcca", "rsa", "cka"]] = ["svcca", "rsa", "cka"]
    seed: int = 0
