"""TextConfig: which text, and how it is cut into contexts (light: the command line reads its defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from saecircuits.core.config import Config

Split = Literal["train", "eval"]  # the share of documents trained on, or the held-out share
Rule = Literal["boundary", "cover"]  # which token positions of two tokenizers are compared (text/alignment.py)


class TextConfig(Config):
    """A text source and how to cut it into contexts."""

    source: str = Field("stdlib", description="stdlib | bible | stdlib+bible | PATH | hf:NAME[:CONFIG] | tokens:PATH")
    context_size: int = Field(128, ge=2, le=1_000_000)
    seed: int = 0
    eval_fraction: float = Field(0.02, ge=0.0, lt=1.0, description="share of documents held out as the eval split")
    text_field: str = "text"
    hf_split: str = "train"

    @field_validator("source")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the text source is empty; use stdlib, bible, a path, hf:NAME or tokens:PATH")
        return v.strip()
