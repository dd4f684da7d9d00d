"""The training log: one row of metrics per logged step, every SAE's loss, MSE, explained variance,
L0, learning rate and dead latents, kept in the trainer's history (``history.json``) and sent to W&B.

Several processes: data-parallel rows are means over the global batch; with ``parallel: saes`` rank 0
gathers every process's SAEs into its row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from saecircuits.core import distributed

if TYPE_CHECKING:  # for annotations only: the trainer imports this module
    from saecircuits.training.trainer import Trainer


def log_row(t: Trainer, logs: list[dict], tokens: int, rate: float) -> dict:
    """The row of this step (``logs``: one ``train_step`` entry per SAE here), appended to the history on rank 0."""
    row: dict[str, Any] = {"step": t.step, "tokens": tokens, "tokens_per_second": rate}
    for name, sae, lg in zip(t.names, t.saes, logs, strict=True):
        y = lg["y"]
        sst = float((y - y.mean(0)).pow(2).sum(-1).mean())
        code = lg["out"].code
        l0 = code.l0() if hasattr(code, "l0") else float((code > 0).float().sum(-1).mean())
        row[name] = {"loss": lg["loss"], "mse": lg["mse"], "explained_variance": 1 - lg["mse"] / sst if sst else float("nan"),
                     "l0": l0, "lr": lg["lr"], "dead": int((sae.tokens_since_fired >= sae.dead_after_tokens).sum()),
                     **{k: v for k, v in lg["out"].metrics.items() if isinstance(v, float)}}
    if t.data_parallel:
        _global_metrics(t, row, logs)
    elif t.world > 1:  # parallel: saes: rank 0 logs every process's SAEs
        rows = distributed.gather_to_main({n: row[n] for n in t.names})
        if rows is None:
            return row
        for part in rows:
            row.update(part)
        row = {k: row[k] for k in ("step", "tokens", "tokens_per_second", *t.all_names)}
    if t.rank != 0:
        return row
    t.history.append(row)
    if t.run:
        flat = {"tokens": tokens, "tokens_per_second": rate}
        for name in t.all_names:
            flat.update({f"{name}/train/{k}": v for k, v in row[name].items()})
        t.run.log(flat, step=t.step)
    return row


def _global_metrics(t: Trainer, row: dict, logs: list[dict]) -> None:
    """Data-parallel: the metrics of the global batch (means over processes; explained variance from
    the global mean and second moment of y)."""
    keys = {n: [k for k in row[n] if k not in ("explained_variance", "dead", "lr")] for n in t.names}
    parts = []
    for name, lg in zip(t.names, logs, strict=True):
        y = lg["y"].double()
        parts += [torch.tensor([float(row[name][k]) for k in keys[name]] + [float(y.pow(2).sum(-1).mean())], dtype=torch.float64),
                  y.mean(0)]
    flat = distributed.mean_across(torch.cat(parts))
    i = 0
    for name, lg in zip(t.names, logs, strict=True):
        n, d = len(keys[name]), lg["y"].shape[1]
        vals, second, mean = flat[i : i + n].tolist(), float(flat[i + n]), flat[i + n + 1 : i + n + 1 + d]
        i += n + 1 + d
        row[name].update(zip(keys[name], vals, strict=True))
        sst = second - float(mean.pow(2).sum())
        row[name]["explained_variance"] = 1 - row[name]["mse"] / sst if sst else float("nan")


def bar_info(row: dict, first: str) -> str:
    """The first SAE's latest explained variance and L0, for the progress bar; short, so the bar fits an
    80-column terminal."""
    r = row[first]
    return f"EV {r['explained_variance']:.3f} L0 {r['l0']:.1f}"
