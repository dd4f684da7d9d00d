"""What a training run is: the typed config (activation source, SAEs, length, evaluation) and sweeps.

An entry of ``saes`` with ``sweep: {k: [16, 32], lr: [1e-3, 3e-3]}`` becomes one SAE per combination.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from saecircuits.activations.store import StoreConfig
from saecircuits.core.config import Config
from saecircuits.core.tracking import WandbConfig
from saecircuits.sae import SAEConfig
from saecircuits.text.config import TextConfig

MAX_SAES = 1024  # a sweep past this is almost surely a typo (and would not fit in memory)
SWEEPABLE = {"hook", "hook_out", "architecture", "d_sae", "expansion", "k", "lr", "l1_coefficient", "l0_coefficient", "seed", "aux_coefficient"}


class EvalConfig(Config):
    contexts: int = Field(64, ge=1, description="held-out contexts for evaluation")
    batch_contexts: int = Field(8, ge=1)
    every_tokens: int | None = Field(None, ge=1, description="also evaluate (without CE) during training")
    ce: bool = Field(True, description="splice SAEs into the model: CE loss recovered and KL")
    dense_threshold: float = Field(0.1, gt=0, le=1)


class TrainConfig(Config):
    """A training run: where activations come from, which SAEs, how long."""

    model: str = "smollm2-135m"
    text: TextConfig = TextConfig()
    store: StoreConfig = StoreConfig(normalize="expected_average_only_in")
    saes: list[SAEConfig]
    total_tokens: int = Field(200_000, ge=1, description="training rows (tokens) per SAE")
    activation_cache: str | None = Field(None, description="folder: cache activations there once, train from it")
    checkpoint_every_tokens: int | None = Field(None, ge=1)
    log_every_steps: int = Field(10, ge=1)
    eval: EvalConfig = EvalConfig()
    wandb: WandbConfig = WandbConfig()
    out: str = "runs/train"
    parallel: Literal["data", "saes"] = Field(
        "data", description="under torchrun with several processes: data (each process streams its share of the text, "
        "gradients are averaged) or saes (the SAEs are split across processes, each streams its SAEs' sites)")
    n_devices: int = Field(1, ge=1, description="TransformerLens n_devices: spread the model's layers over this many "
                           "CUDA devices (of each process)")

    @field_validator("saes", mode="before")
    @classmethod
    def _expand_sweeps(cls, v: Any) -> Any:
        """An entry's ``sweep: {k: [16, 32], lr: [1e-3, 3e-3]}`` becomes one SAE per combination."""
        if not isinstance(v, list):
            return v
        out = []
        for entry in v:
            if not isinstance(entry, dict) or "sweep" not in entry:
                out.append(entry)
                continue
            base = {k: val for k, val in entry.items() if k != "sweep"}
            sweep = entry["sweep"]
            if not isinstance(sweep, dict) or not sweep:
                raise ValueError("sweep must map field names to lists of values")
            bad = sorted((k for k in sweep if k not in SWEEPABLE), key=str)
            if bad:
                raise ValueError(f"sweep over {bad[0]!r} is not supported; sweepable: {', '.join(sorted(SWEEPABLE))}")
            keys = list(sweep)
            lists = [val if isinstance(val, list) else [val] for val in sweep.values()]
            n = math.prod(len(x) for x in lists)
            if len(out) + n > MAX_SAES:
                raise ValueError(f"the sweep makes {n:,} SAEs; one run trains at most {MAX_SAES:,} from one stream")
            out.extend({**base, **dict(zip(keys, combo, strict=True))} for combo in itertools.product(*lists))
        return out

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.saes:
            raise ValueError("saes is empty: list at least one SAE")
        names = [s.name or s.default_name() for s in self.saes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"two SAEs would be saved under the same name {sorted(dup)[0]!r}; set name or vary a field")
        return self
