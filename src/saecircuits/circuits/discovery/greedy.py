"""``greedy``: refine a ranking of nodes on validation prompts, adding or dropping one node at a time.

Forward selection from the empty circuit over a pool of candidates (the top ``pool`` nodes of a
base ranking by |score|): each step tries every candidate added (batches of node masks) and keeps
the one whose validation faithfulness is closest to 1; then tries dropping each member (but the one
just added) and drops one when that comes closer still. The circuit met at each size that came
closest to f = 1 is kept, so a size's circuit is ``circuits[size]``; sizes not reached fall back to
the base ranking's top k. Candidates differ from the current circuit in one node, so each runs from
that node's block, starting from the current circuit's stream there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saecircuits.circuits.evaluation import Evaluator
from saecircuits.circuits.faithfulness import normalised


def greedy_circuits(val: Evaluator, base: torch.Tensor, max_size: int, pool: int = 24,
                    ablations: Sequence[str] = ("counterfactual",), metric: str = "task",
                    fixed: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Node circuits by size ([n_nodes] bool each), refined on ``val`` from the ranking ``base`` [n_nodes].

    A circuit's distance from f = 1 is the largest |1 - f| under ``ablations``. ``fixed`` [n_nodes] bool: nodes
    every circuit keeps (e.g. the MLPs, for head circuits); they are never candidates and not counted in a
    circuit's size."""
    g = val.forward.graph
    n = len(base)
    fixed = torch.zeros(n, dtype=torch.bool) if fixed is None else fixed
    candidates = [c for c in base.abs().argsort(descending=True).tolist() if not fixed[c]][:pool]
    full = val.full[metric]
    current = fixed.clone()
    best: dict[int, tuple[float, torch.Tensor]] = {}

    def gap(values: torch.Tensor, ablation: str) -> torch.Tensor:
        return (1 - normalised(values, full[None], val.empty(ablation)[metric][None])).abs()

    def flips(nodes: list[int]) -> torch.Tensor:
        """|1 - f| of the current circuit with each of ``nodes`` flipped, [len(nodes)]; each layer's flips run
        as one batch from that layer, on the current circuit's stream."""
        out = torch.zeros(len(nodes))
        layers = [g.sender_layer[j + 1] for j in nodes]  # node j is sender j + 1
        for ablation in ablations:
            streams = val.streams(ablation, current)
            for L in sorted(set(layers)):
                idx = [i for i, layer in enumerate(layers) if layer == L]
                masks = current[None].repeat(len(idx), 1)
                for row, i in enumerate(idx):
                    masks[row, nodes[i]] = ~masks[row, nodes[i]]
                vals = val.run(ablation, nodes=masks, start=(L, streams[L]))[metric]
                out[idx] = torch.maximum(out[idx], gap(vals, ablation))
        return out

    def record(mask: torch.Tensor, value: float) -> None:
        size = int((mask & ~fixed).sum())
        if size not in best or value < best[size][0]:
            best[size] = (value, mask.clone())

    record(current, max(float(gap(val.run(a, nodes=current[None])[metric], a)[0]) for a in ablations))
    for _ in range(pool):
        outside = [c for c in candidates if not current[c]]
        if not outside or int((current & ~fixed).sum()) >= max_size:
            break
        g_add = flips(outside)
        added = outside[int(g_add.argmin())]
        current[added] = True
        gap_now = float(g_add.min())
        record(current, gap_now)
        members = [m for m in (current & ~fixed).nonzero()[:, 0].tolist() if m != added]
        if members:
            g_drop = flips(members)
            j = int(g_drop.argmin())
            if float(g_drop[j]) < gap_now:
                current[members[j]] = False
                record(current, float(g_drop[j]))
    return {size: mask for size, (_, mask) in sorted(best.items())}
