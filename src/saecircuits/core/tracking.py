"""Weights & Biases runs: online where the service answers, offline otherwise, or off.

An offline run leaves a folder (``wandb/offline-run-...``) that ``wandb sync FOLDER`` uploads later.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from saecircuits.core.config import Config

Mode = Literal["auto", "online", "offline", "off"]


class WandbConfig(Config):
    mode: Mode = Field("auto", description="auto: online if logged in and reachable, else offline; off: no W&B")
    project: str = "saecircuits"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = []

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any) -> Any:
        """YAML reads a bare ``off`` / ``on`` as a boolean."""
        if isinstance(v, bool):
            return "auto" if v else "off"
        return v


def _online_possible() -> bool:
    if not (os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists()):
        return False
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
        return True
    except OSError:
        return False


def resolve_mode(mode: Mode) -> str:
    env = os.environ.get("WANDB_MODE")
    if mode == "auto":
        if env in ("offline", "disabled", "online"):
            return "off" if env == "disabled" else env
        return "online" if _online_possible() else "offline"
    return mode


class Run:
    """A W&B run, or a stand-in that does nothing when W&B is off."""

    def __init__(self, cfg: WandbConfig, folder: str | Path, config: dict[str, Any], job: str):
        self.mode = resolve_mode(cfg.mode)
        self.run = None
        if self.mode == "off":
            return
        import wandb

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=cfg.name or folder.name, tags=cfg.tags, config=config,
            dir=str(folder), mode=self.mode, job_type=job, reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    @property
    def folder(self) -> Path | None:
        """The run's local folder (what ``wandb sync`` takes when offline)."""
        return Path(self.run.dir).parent if self.run is not None else None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def histogram(self, name: str, values, step: int | None = None, bins: int = 64) -> None:
        if self.run is not None:
            import numpy as np
            import wandb

            self.run.log({name: wandb.Histogram(np.asarray(values), num_bins=bins)}, step=step)

    def table(self, name: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def html(self, name: str, html: str, step: int | None = None) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Html(html, inject=False)}, step=step)

    def image(self, name: str, path: str | Path, step: int | None = None) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Image(str(path))}, step=step)

    def artifact(self, name: str, kind: str, folders: list[Path], metadata: dict | None = None) -> None:
        if self.run is not None:
            import wandb

            art = wandb.Artifact(name, type=kind, metadata=metadata or {})
            for f in folders:
                art.add_dir(str(f), name=Path(f).name)
            self.run.log_artifact(art)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> str | None:
        """Close the run; returns how to upload it later when offline."""
        if self.run is None:
            return None
        folder = self.folder
        self.run.finish()
        if self.mode == "offline":
            return f"wandb sync {folder}"
        return None
