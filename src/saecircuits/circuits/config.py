"""The circuit study's settings, in a light module (pydantic only) the command line reads its defaults from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from saecircuits.circuits.task_names import TASKS, task_key
from saecircuits.core.config import Config


class SAECodeConfig(Config):
    """Per-head SAEs for code scoring."""

    d_sae: int = Field(16, ge=2, description="latents per head SAE")
    k: int = Field(1, ge=1, description="active latents per example; the code is the set of their ids")
    steps: int = Field(150, ge=1)
    lr: float = Field(2e-2, gt=0)
    position: Literal["answer", "all"] = Field("answer", description="the position the metric reads, or every position")
    seed: int = 0


class CircuitConfig(Config):
    """How to find and validate a circuit."""

    task: str = Field("ioi", description="one of " + ", ".join(TASKS))
    prompts: int = Field(64, ge=2, description="prompts (clean/corrupted pairs)")
    seed: int = 0
    size: int | None = Field(None, ge=1, description="heads in the circuit; None: every head above threshold")
    threshold: float = Field(0.05, gt=0, description="|normalised patching effect| a head needs when size is None")
    select_by: Literal["patching", "ablation"] = "patching"
    ablation: Literal["mean", "zero", "resample"] = "mean"
    random_circuits: int = Field(20, ge=0)
    bootstrap: int = Field(1000, ge=10)
    edges: bool = Field(True, description="edge attribution patching over every edge")
    ig_steps: int = Field(0, ge=0, description="EAP-IG interpolation steps (0: plain EAP)")
    confirm_edges: int = Field(20, ge=0, description="top EAP edges re-measured by exact edge patching")
    graph_edges: int = Field(200, ge=0, description="top edges written into the graph")
    sae_codes: SAECodeConfig | None = Field(default_factory=SAECodeConfig)
    batch_size: int = Field(16, ge=1)
    max_rows: int = Field(256, ge=1, description="sequences per batched forward")
    task_options: dict = Field(default_factory=dict, description="extra arguments of the task builder")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        key = task_key(v)
        if key not in TASKS:
            raise ValueError(f"unknown task '{v}', choose one of: {', '.join(TASKS)}")
        return key
