"""The head graph's settings, in a light module (pydantic only) the command line reads its defaults from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from saecircuits.core.config import Config


class HeadGraphConfig(Config):
    """Which edges the graph keeps (all scores are kept in the score arrays regardless)."""

    top_per_receiver: int | None = Field(3, ge=1, description="keep the n best edges of each type into each receiver (None: no limit)")
    min_z: float | None = Field(None, description="keep only edges with z-score at least this")
    min_score: float | None = Field(None, ge=0, le=1, description="keep only edges with composition score at least this")
    rank_by: Literal["z", "z_senders", "score"] = Field("z", description="what top_per_receiver ranks by")
    null_draws: int = Field(128, ge=2, le=1024, description="random same-spectrum senders per pair for the z-scores")
    top_channels: int = Field(3, ge=1, description="channels listed on each edge")
    seed: int = 0
