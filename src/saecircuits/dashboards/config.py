"""What a dashboard run reads and keeps, in a light module (pydantic only, no model stack) the command
line reads its defaults from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from saecircuits.core.config import Config
from saecircuits.core.tracking import WandbConfig
from saecircuits.text.config import TextConfig


class DashboardConfig(Config):
    """What to run the SAE over and what to keep per feature."""

    sae: str = Field(..., description="SAE folder (SAELens format)")
    model: str = "smollm2-135m"
    text: TextConfig = TextConfig()
    split: Literal["train", "eval"] = "train"
    out: str
    tokens: int = Field(100_000, ge=1, description="context tokens to run (rounded up to whole contexts)")
    batch_contexts: int = Field(16, ge=1, description="contexts per forward pass")
    top_k: int = Field(20, ge=1, description="top-activating contexts kept per feature")
    n_samples: int = Field(32, ge=1, description="contexts sampled per feature for the quantile bands")
    sample_bands: int = Field(4, ge=1)
    per_band: int = Field(5, ge=1, description="examples shown per quantile band")
    window_before: int = Field(12, ge=0)
    window_after: int = Field(4, ge=0)
    n_logits: int = Field(10, ge=1)
    n_neighbours: int = Field(10, ge=1)
    bins_per_decade: int = Field(32, ge=1, description="activation histogram resolution (log-spaced bins, 1e-4 to 1e4)")
    checkpoint_every: int = Field(20, ge=1, description="batches between checkpoints of the running statistics")
    neuronpedia_batch: int = Field(128, ge=1, description="features per Neuronpedia JSON file")
    wandb: WandbConfig = WandbConfig()
    wandb_features_per_page: int = Field(64, ge=1)
    forward: Literal["auto", "transformer_lens"] = "auto"
    seed: int = 0

    def stats_fields(self) -> dict:
        """The fields that decide the statistics (a checkpoint made with others is not reused)."""
        return self.model_dump(mode="json", include={
            "model", "text", "split", "tokens", "batch_contexts", "top_k", "n_samples", "window_before",
            "window_after", "bins_per_decade", "forward", "seed"})
