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


METHODS = ("topk-patching", "eap", "eap-ig", "edge-pruning", "greedy", "random")
# what a cut edge reads (circuits/evaluation.py says what each means)
ABLATIONS = ("counterfactual", "mean-clean", "mean-counterfactual", "zero", "resample")


class PruningConfig(Config):
    """Edge pruning: the falling kept-share targets it trains through, ``steps`` each."""

    targets: tuple[float, ...] = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002)
    steps: int = Field(30, ge=1, description="optimizer steps per target")
    lr: float = Field(0.1, gt=0)
    penalty: float = Field(100.0, ge=0, description="weight of (expected kept share - target)^2")
    batch_size: int = Field(16, ge=1)
    objective: Literal["kl", "task"] = "kl"
    init: float = Field(3.0, description="initial log_alpha (3: every mask starts near 1)")
    seed: int = 0

    @field_validator("targets")
    @classmethod
    def _falling_shares(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < t <= 1 for t in v) or list(v) != sorted(v, reverse=True):
            raise ValueError(f"targets must be falling shares in (0, 1], got {v}")
        return v


class ComparisonConfig(Config):
    """The comparison of discovery methods on one task: split sizes, methods and their settings."""

    task: str = Field("ioi", description="ioi, greater_than or induction (tasks with held-out splits)")
    n_train: int = Field(32, ge=1)
    n_val: int = Field(32, ge=1)
    n_test: int = Field(64, ge=2)
    methods: tuple[str, ...] = METHODS
    granularities: tuple[Literal["nodes", "edges"], ...] = ("nodes", "edges")
    curve_ablations: tuple[str, ...] = Field(("counterfactual", "mean-clean"),
                                             description="ablations the curves are scored under (the first is primary)")
    ig_steps: int = Field(5, ge=1)
    random_draws: int = Field(20, ge=1)
    greedy_pool: int = Field(16, ge=1, description="candidates greedy adds from: the base ranking's top nodes")
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    batch_size: int = Field(16, ge=1)
    n_boot: int = Field(1000, ge=10)
    seed: int = 0

    @field_validator("methods", "curve_ablations")
    @classmethod
    def _known_names(cls, v: tuple[str, ...], info) -> tuple[str, ...]:
        what, allowed = {"methods": ("method", METHODS), "curve_ablations": ("ablation", ABLATIONS)}[info.field_name]
        unknown = [x for x in v if x not in allowed]
        if unknown or not v:
            raise ValueError(f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
        return v
