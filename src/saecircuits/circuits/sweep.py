"""Faithfulness curves: a method's circuits at every MIB size, scored on test, with bootstrap intervals.

A method gives one circuit per size (``counts[i]`` units kept: edges, nodes or heads, as MIB counts them,
see ``faithfulness.mib_counts``); ``curve`` runs them all under one ablation and returns, for every
metric, the per-prompt values; ``summarise`` turns one metric's values into MIB's numbers: f(k) with
a 95% interval, CPR and CMD with intervals, and k*.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from saecircuits.circuits.evaluation import Evaluator
from saecircuits.circuits.faithfulness import (
    MIB_SIZES,
    bootstrap_areas,
    bootstrap_f,
    cmd,
    cpr,
    faithfulness,
    k_star,
    mib_counts,
)


def top_k(scores: torch.Tensor, k: int, absolute: bool = True) -> torch.Tensor:
    """The ``k`` units with the largest |score| (``absolute``) or score: [n] bool."""
    mask = torch.zeros(len(scores), dtype=torch.bool)
    key = scores.abs() if absolute else scores
    mask[key.nan_to_num(float("-inf")).argsort(descending=True)[:k]] = True
    return mask


def random_masks(n: int, k: int, draws: int, seed: int) -> torch.Tensor:
    """``draws`` random sets of ``k`` of ``n`` units: [draws, n] bool."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(draws, n, dtype=torch.bool)
    for i in range(draws):
        masks[i, torch.randperm(n, generator=g)[:k]] = True
    return masks


def run_masks(ev: Evaluator, ablation: str, granularity: str, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of unit masks [M, n_units] (edges flat, nodes, or heads with every MLP kept): [M, n_prompts]."""
    g = ev.forward.graph
    if granularity == "edges":
        return ev.run(ablation, edges=g.edges_unflat(masks, False))
    return ev.run(ablation, nodes=g.node_masks(granularity, masks))


def curve(ev: Evaluator, ablation: str, granularity: str, circuit: Callable[[int], torch.Tensor],
          sizes: Sequence[float] = MIB_SIZES) -> dict[str, torch.Tensor]:
    """Per-prompt metrics of ``circuit(count)`` at each size: {metric: [n_sizes, n_prompts]}."""
    masks = torch.stack([circuit(k) for k in mib_counts(ev.forward.graph.n_units(granularity), sizes)])
    return run_masks(ev, ablation, granularity, masks)


def summarise(values: torch.Tensor, empty: torch.Tensor, full: torch.Tensor, sizes: Sequence[float] = MIB_SIZES,
              counts: Sequence[int] | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """MIB's numbers of one metric's curve: values [n_sizes, n_prompts] (or [draws, n_sizes, n_prompts] for
    random circuits, averaged over draws first), empty and full [n_prompts]."""
    if values.dim() == 3:
        values = values.mean(0)
    f = faithfulness(values, empty, full)
    points = [{"k": s, "count": None if counts is None else counts[i], "f": float(f[i]),
               "ci": list(bootstrap_f(values[i], empty, full, n_boot, seed))} for i, s in enumerate(sizes)]
    areas = bootstrap_areas(sizes, values, empty, full, n_boot, seed)
    return {"cpr": cpr(sizes, f), "cmd": cmd(sizes, f), "cpr_ci": list(areas["cpr"]), "cmd_ci": list(areas["cmd"]),
            "k_star": k_star(sizes, f), "curve": points}
