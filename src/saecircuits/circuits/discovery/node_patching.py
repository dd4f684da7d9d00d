"""``topk-patching``: exact activation patching of every node (head or MLP) alone, batched.

A node's score is the metric's drop, averaged over prompts, when only that node's output is
replaced by its output on the prompt's counterfactual: metric(full) - metric(node cut). Each
block's nodes run as one batch of masks that starts at the block from the cached clean stream.
(Exact patching of every single edge, MIB's edge-level variant, needs one run per edge: ~70,000
for SmolLM2, out of reach on a CPU; edge circuits use the attribution and pruning methods.)
"""

from __future__ import annotations

import torch

from saecircuits.circuits.masked_forward import MaskedForward
from saecircuits.circuits.task import Task


@torch.no_grad()
def node_patching(forward: MaskedForward, task: Task, batch_size: int = 16) -> torch.Tensor:
    """Each node's exact patching effect (metric drop when it alone reads the counterfactual), [n_nodes]."""
    g = forward.graph
    pos = list(task.positions)
    total = torch.zeros(g.n_nodes, dtype=torch.float64)
    for i in range(0, len(task), batch_size):
        sub = task.subset(torch.arange(i, min(i + batch_size, len(task))))
        clean = forward.sender_outputs(sub.clean, batch_size)  # [S, b, p, d]
        corrupted = forward.sender_outputs(sub.corrupted, batch_size)
        base = sub.metric(forward.run(sub.clean, pos)[0])
        prefix = clean.cumsum(0)  # the clean stream after each sender
        for L in range(g.n_layers):
            first = g.senders_before(L)
            layer_nodes = list(range(first - 1, first - 1 + g.per_layer_senders))  # node index = sender - 1
            masks = torch.ones(len(layer_nodes), g.n_nodes, dtype=torch.bool)
            masks[torch.arange(len(layer_nodes)), layer_nodes] = False
            logits = forward.run(sub.clean, pos, corrupted, nodes=masks, start=(L, prefix[first - 1]))
            m = sub.subset(torch.arange(len(sub)).repeat(len(masks))).metric(logits.flatten(0, 1))
            total[layer_nodes] += (base.repeat(len(masks)) - m).view(len(masks), -1).sum(1).double()
    return (total / len(task)).float()
