"""The main job: the whole flow on one model, under one output folder, re-runnable.

Stages, each writing its own subfolder and skipped on a rerun whose settings are unchanged:

    activations/  one forward pass per batch, cached as safetensors shards (shared by every stage)
    train/        TopK SAEs on the residual stream of a few layers, from that one stream

Defaults run on the embedded SmolLM2 with the Python standard library as text; options scale it
up (more tokens and layers, the Gemma model, a hub model and dataset where a hub is reachable).
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field, field_validator
from rich.console import Console

from saecircuits.config import Config
from saecircuits.files import ensure_dir, read_json, write_json
from saecircuits.tracking import WandbConfig

console = Console(stderr=True)


class DemoConfig(Config):
    """What the main job runs on and how big it is."""

    model: str = "smollm2-135m"
    text: str = Field("stdlib", description="stdlib | bible | PATH | hf:NAME | tokens:PATH")
    layers: list[int] = Field([3, 6, 9], min_length=1, description="residual-stream layers to train SAEs on")
    tokens: int = Field(200_000, ge=4096, description="training tokens per SAE")
    expansion: float = Field(8, gt=0)
    k: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    out: str = "runs/demo"
    wandb: WandbConfig = WandbConfig()

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(x < 0 for x in v):
            raise ValueError("layers must be distinct non-negative layer indices")
        return sorted(v)


def _stage_done(folder: Path, settings: dict) -> bool:
    """A stage is done when its marker holds the same settings."""
    marker = folder / "stage.json"
    return marker.exists() and read_json(marker, what="stage marker").get("settings") == settings


def _mark_done(folder: Path, settings: dict, seconds: float) -> None:
    write_json(folder / "stage.json", {"settings": settings, "seconds": seconds})


def train_stage(cfg: DemoConfig, model, out: Path) -> dict:
    """TopK SAEs on ``blocks.{L}.hook_resid_post`` for every demo layer, one cached stream."""
    from saecircuits import hooks
    from saecircuits.config import validate
    from saecircuits.training import TrainConfig, read_summary, train

    sites = [f"blocks.{layer}.hook_resid_post" for layer in cfg.layers]
    for s in sites:
        hooks.validate(model, s)
    folder = out / "train"
    tc = validate(TrainConfig, {
        "model": cfg.model,
        "text": {"source": cfg.text, "context_size": 128},
        "store": {"batch_size_tokens": 4096, "model_batch_size": 8, "buffer_tokens": 65536,
                  "normalize": "expected_average_only_in"},
        "saes": [{"architecture": "topk", "expansion": cfg.expansion, "k": cfg.k, "lr": cfg.lr, "sweep": {"hook": sites}}],
        "total_tokens": cfg.tokens,
        "activation_cache": str(out / "activations"),
        "checkpoint_every_tokens": max(cfg.tokens // 5, 4096),
        "eval": {"contexts": 32},
        "wandb": cfg.wandb.model_dump(),
        "out": str(folder),
    }, where="demo")
    settings = tc.model_dump(mode="json", exclude={"wandb"})
    if _stage_done(folder, settings):
        console.print(f"[dim]train: reusing {folder}[/dim]")
        return read_summary(folder)
    start = time.perf_counter()
    resume = (folder / "checkpoint" / "state.json").exists()
    summary = train(tc, resume=resume, model=model)
    _mark_done(folder, settings, time.perf_counter() - start)
    return summary


def run(cfg: DemoConfig) -> dict:
    """Run every stage; returns {stage: its summary}."""
    from saecircuits import models

    out = ensure_dir(cfg.out)
    write_json(out / "demo_config.json", cfg.model_dump(mode="json"))
    console.print(f"[bold]saecircuits demo[/bold]: {cfg.model}, text {cfg.text}, layers {cfg.layers}, "
                  f"{cfg.tokens:,} tokens per SAE -> {out}")
    model = models.load(cfg.model)
    results = {"train": train_stage(cfg, model, out)}
    return results
