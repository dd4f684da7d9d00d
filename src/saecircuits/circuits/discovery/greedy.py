"""``greedy``: refine a ranking of nodes on validation prompts, adding or dropping one node at a time.

Forward selection from the empty circuit over a pool of candidates (the top ``pool`` nodes of a
base ranking by |score|): each step tries every candidate added (one batch of node masks) and keeps
the one whose validation faithfulness is closest to 1; then tries dropping each member and drops one
when that comes closer still. The circuit met at each size that came closest to f = 1 is kept, so a
size's circuit is ``circuits[size]``; sizes not reached fall back to the base ranking's top k.
"""

from __future__ import annotations

import torch

from saecircuits.circuits.evaluation import Evaluator
from saecircuits.circuits.faithfulness import normalised


def greedy_circuits(val: Evaluator, base: torch.Tensor, max_size: int, pool: int = 24, ablation: str = "counterfactual",
                    metric: str = "task") -> dict[int, torch.Tensor]:
    """Node circuits by size ([n_nodes] bool each), refined on ``val`` from the ranking ``base`` [n_nodes]."""
    n = len(base)
    candidates = base.abs().argsort(descending=True)[:pool].tolist()
    full, empty = val.full[metric], val.empty(ablation)[metric]
    current = torch.zeros(n, dtype=torch.bool)
    best: dict[int, tuple[float, torch.Tensor]] = {}

    def gaps(masks: torch.Tensor) -> torch.Tensor:
        f = normalised(val.run(ablation, nodes=masks)[metric], full[None], empty[None])
        return (1 - f).abs()

    def record(mask: torch.Tensor, gap: float) -> None:
        size = int(mask.sum())
        if size not in best or gap < best[size][0]:
            best[size] = (gap, mask.clone())

    gap_now = float(gaps(current[None])[0])
    record(current, gap_now)
    for _ in range(2 * max_size):
        outside = [c for c in candidates if not current[c]]
        if not outside or int(current.sum()) >= max_size:
            break
        adds = current[None].repeat(len(outside), 1)
        adds[torch.arange(len(outside)), outside] = True
        g_add = gaps(adds)
        i = int(g_add.argmin())
        current, gap_now = adds[i], float(g_add[i])
        record(current, gap_now)
        members = current.nonzero()[:, 0].tolist()
        if len(members) > 1:
            drops = current[None].repeat(len(members), 1)
            drops[torch.arange(len(members)), members] = False
            g_drop = gaps(drops)
            j = int(g_drop.argmin())
            if float(g_drop[j]) < gap_now:
                current, gap_now = drops[j], float(g_drop[j])
                record(current, gap_now)
    return {size: mask for size, (_, mask) in sorted(best.items())}
