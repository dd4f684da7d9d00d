"""Validation of a circuit (a set of heads) by ablation, each number with a bootstrap confidence interval over prompts.

Three ways: ablating every head outside it (faithfulness, normalised between the full model and
the model with every head ablated: (m_circuit - m_all) / (m_full - m_all)); ablating the circuit
itself (the task should break: the same normalisation, near 0); and random circuits of the same
size as a baseline. ``faithfulness_by_size`` gives the curve over the top-k heads by a score.
"""

from __future__ import annotations

import torch

from saecircuits.circuits.faithfulness import bootstrap, normalised
from saecircuits.circuits.patching import HeadPatcher
from saecircuits.circuits.sweep import random_masks


def random_circuits(n_layers: int, n_heads: int, size: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` random head masks with ``size`` heads each: [count, n_layers, n_heads] bool (True = in)."""
    return random_masks(n_layers * n_heads, size, count, seed).view(count, n_layers, n_heads)


def validate_circuit(patcher: HeadPatcher, circuit: torch.Tensor, values: torch.Tensor, n_random: int = 20,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """Faithfulness of ``circuit`` ([n_layers, n_heads] bool, True = in the circuit), its knockout,
    and random circuits of the same size, each with a bootstrap CI over prompts."""
    L, H = patcher.n_layers, patcher.n_heads
    circuit = circuit.bool()
    size = int(circuit.sum())
    rand = random_circuits(L, H, size, n_random, seed=seed) if n_random > 0 else torch.zeros(0, L, H, dtype=torch.bool)
    none = torch.zeros(L, H, dtype=torch.bool)
    masks = torch.cat([none[None], circuit[None], (~circuit)[None], rand])  # keep-masks
    runs = patcher.run(masks, values)  # [3 + R, n]
    full, all_ablated, in_circuit, knocked = patcher.clean_metric, runs[0], runs[1], runs[2]
    rand_runs = runs[3:]
    span = float(full.mean() - all_ablated.mean())
    out: dict = {
        "size": size, "n_heads_total": L * H, "n_prompts": len(full),
        "metric": {name: {"mean": float(v.mean()), "ci": list(bootstrap(v, lambda x: x.mean(-1), n_boot, seed))}
                   for name, v in (("full", full), ("all_ablated", all_ablated), ("circuit", in_circuit),
                                   ("knockout", knocked))},
    }
    if abs(span) < 1e-6:
        out["warning"] = "ablating every head leaves the metric unchanged: faithfulness is undefined"
    stacked = torch.stack([full, all_ablated, in_circuit, knocked])  # [4, n]

    def stat(i):
        return lambda x: normalised(x[i], x[0], x[1])

    out["faithfulness"] = {"value": float(normalised(in_circuit, full, all_ablated)),
                           "ci": list(bootstrap(stacked, stat(2), n_boot, seed))}
    out["knockout"] = {"value": float(normalised(knocked, full, all_ablated)),
                       "ci": list(bootstrap(stacked, stat(3), n_boot, seed))}
    if len(rand_runs):
        per_draw = normalised(rand_runs, full[None], all_ablated[None])  # [R]
        with_rand = torch.cat([stacked[:2], rand_runs])  # [2 + R, n]
        out["random"] = {
            "n_circuits": len(rand_runs),
            "faithfulness_mean": float(per_draw.mean()),
            "ci": list(bootstrap(with_rand, lambda x: normalised(x[2:], x[0][None], x[1][None]).mean(0), n_boot, seed)),
            "faithfulness_per_circuit": [float(v) for v in per_draw],
            "share_at_least_circuit": float((per_draw >= out["faithfulness"]["value"]).float().mean()),
        }
    return out


def faithfulness_by_size(patcher: HeadPatcher, scores: torch.Tensor, sizes: list[int], values: torch.Tensor) -> list[dict]:
    """Faithfulness and knockout of the top-``size`` heads by |scores|, for each size: one batched run."""
    order = scores.abs().nan_to_num(0.0).flatten().argsort(descending=True)
    L, H = patcher.n_layers, patcher.n_heads
    sizes = sorted({min(max(1, s), L * H) for s in sizes})
    circuits = torch.zeros(len(sizes), L * H, dtype=torch.bool)
    for i, s in enumerate(sizes):
        circuits[i, order[:s]] = True
    circuits = circuits.view(-1, L, H)
    runs = patcher.run(torch.cat([torch.zeros(1, L, H, dtype=torch.bool), circuits, ~circuits]), values)
    full, none = patcher.clean_metric, runs[0]
    faith = normalised(runs[1: 1 + len(sizes)], full[None], none[None])
    knock = normalised(runs[1 + len(sizes):], full[None], none[None])
    return [{"size": s, "faithfulness": float(f), "knockout": float(k)} for s, f, k in zip(sizes, faith, knock)]
