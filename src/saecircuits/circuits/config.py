"""The circuit comparison's settings, in a light module (pydantic only) the command line reads its defaults from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from saecircuits.circuits.task_names import split_task
from saecircuits.core.config import Config

METHODS = ("topk-patching", "eap", "eap-ig", "edge-pruning", "greedy", "random")
GREEDY_BASES = ("topk-patching", "eap-ig", "eap")  # the rankings greedy refines, in order of preference
# circuit.json's key of each granularity's reported circuit
REPORTED = {"nodes": "head_circuit", "heads": "head_circuit_mlps_kept", "edges": "edge_circuit"}
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
    granularities: tuple[Literal["nodes", "heads", "edges"], ...] = Field(
        ("nodes", "edges"), description="nodes: heads and MLPs; heads: heads, every MLP kept; edges: MIB's edges")
    curve_ablations: tuple[str, ...] = Field(("counterfactual", "mean-clean"),
                                             description="ablations the curves are scored under (the first is primary)")
    ig_steps: int = Field(5, ge=1)
    random_draws: int = Field(20, ge=1)
    greedy_pool: int = Field(16, ge=1, description="candidates greedy adds from: the base ranking's top nodes")
    choose_on: tuple[str, ...] = Field(("counterfactual",), description=(
        "ablations a circuit must hold under on validation: greedy's objective and each method's chosen size take "
        "the largest |1 - f| among them (the first is the validation f reported)"))
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    batch_size: int = Field(16, ge=1)
    n_boot: int = Field(1000, ge=10)
    seed: int = 0
    words: dict[Literal["names", "places", "objects", "year_nouns"], tuple[str, ...]] | None = Field(
        None, description="word lists replacing the built-in ones (only their single-token words are used)")

    @field_validator("words")
    @classmethod
    def _word_lists(cls, v: dict | None) -> dict | None:
        for kind, ws in (v or {}).items():
            if not ws or any(not w.strip() for w in ws) or len(set(ws)) != len(ws):
                raise ValueError(f"word list '{kind}' must hold distinct, non-blank words")
        return v

    @field_validator("task")
    @classmethod
    def _split_task(cls, v: str) -> str:
        return split_task(v)

    @field_validator("methods", "curve_ablations", "choose_on")
    @classmethod
    def _known_names(cls, v: tuple[str, ...], info) -> tuple[str, ...]:
        what, allowed = {"methods": ("method", METHODS), "curve_ablations": ("ablation", ABLATIONS),
                         "choose_on": ("ablation", ABLATIONS)}[info.field_name]
        unknown = [x for x in v if x not in allowed]
        if unknown or not v:
            raise ValueError(f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
        return v

    @model_validator(mode="after")
    def _greedy_has_a_base(self) -> ComparisonConfig:
        if "greedy" in self.methods and not set(self.methods) & set(GREEDY_BASES):
            raise ValueError(f"greedy refines a ranking: add one of {', '.join(GREEDY_BASES)} to the methods")
        if set(self.methods) <= {"random"}:
            raise ValueError("random is the floor, not a method: add a discovery method")
        return self


class RetrievalConfig(Config):
    """The needle-in-a-haystack study's sizes."""

    text: str = Field("bible", description="the haystack's text source (stdlib | bible | PATH | hf:NAME)")
    lengths: tuple[int, ...] = Field((256, 512, 1024), min_length=1, description="haystack lengths in tokens")
    depths: int = Field(10, ge=1, description="needle depths, evenly from 0% to 100% of the haystack")
    threshold: float = Field(0.1, ge=0, le=1, description="retrieval heads score above this (the paper's 0.1)")
    min_recall: float = Field(0.5, ge=0, le=1, description="trials count when the answer's token recall exceeds this")
    top_k: int = Field(0, ge=0, description="heads masked in the causal test (0: every retrieval head)")
    random_draws: int = Field(5, ge=1, description="random head sets masked beside them")
    n_boot: int = Field(1000, ge=10)
    seed: int = 0

    @field_validator("lengths")
    @classmethod
    def _positive_lengths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 16 for n in v):
            raise ValueError("haystack lengths must be at least 16 tokens")
        return tuple(sorted(set(v)))


class TalkingHeadsConfig(Config):
    """The Talking Heads study's sizes (circuits/talking_heads.py says what each step does)."""

    sizes: tuple[int, ...] = Field((3, 4, 5, 6), min_length=1, description="list lengths of the Laundry List prompts")
    n: int = Field(64, ge=8, description="prompts per list length, in each of the choose and test sets")
    heads: int = Field(3, ge=1, description="inhibition heads kept")
    candidates: int = Field(12, ge=1, description="heads measured by real ablation after the attribution ranking")
    rank: int = Field(3, ge=1, description="OV components spanning each head's inhibition subspace")
    alphas: tuple[float, ...] = Field((0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0), min_length=1,
                                      description="weight-edit scales tried on the choose prompts")
    random_draws: int = Field(5, ge=1, description="random-component control edits")
    n_boot: int = Field(1000, ge=10)
    seed: int = 0

    @field_validator("sizes")
    @classmethod
    def _list_lengths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 2 for n in v):
            raise ValueError("lists need at least 2 items")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _candidates_cover_heads(self) -> TalkingHeadsConfig:
        if self.candidates < self.heads:
            raise ValueError(f"candidates ({self.candidates}) must be at least heads ({self.heads})")
        return self


class ReuseConfig(Config):
    """The Circuit Component Reuse study's sizes (circuits/component_reuse.py says what each step does)."""

    n_train: int = Field(32, ge=4, description="train prompts a task (circuits, heads to repair)")
    n_test: int = Field(64, ge=8, description="held-out prompts a task (accuracies, the repair)")
    control: str = Field("greater_than", description="the control task whose circuit the two are compared with")
    ig_steps: int = Field(5, ge=1)
    percents: tuple[float, ...] = Field((2.0, 5.0, 10.0, 20.0), min_length=1, description="circuit sizes, % of heads")
    repair_heads: int = Field(4, ge=1, description="middle-layer heads set to their IOI behaviour (the paper: 4)")
    random_draws: int = Field(5, ge=1)
    n_boot: int = Field(1000, ge=10)
    seed: int = 0

    @field_validator("percents")
    @classmethod
    def _percent_range(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < p <= 100 for p in v):
            raise ValueError("circuit sizes are percents in (0, 100]")
        return tuple(sorted(set(v)))

    @field_validator("control")
    @classmethod
    def _control_has_splits(cls, v: str) -> str:
        if v not in ("greater_than", "induction"):
            raise ValueError("the control task must be one with held-out splits: greater_than or induction")
        return v
