"""EAP and EAP-IG (Syed et al. 2023; Hanna et al. 2024) on the computation graph, through ``MaskedForward``.

The score of edge s -> r estimates the metric's change when that edge alone is cut, to first order:
(clean output of s - counterfactual output of s) . d metric / d input_r. It is the gradient of the
metric with respect to the edge's mask at m = 1, with the differences held fixed (``delta``), so one
backward pass scores every edge. EAP-IG (``ig_steps`` > 0) averages that gradient over inputs whose
embeddings are interpolated from the counterfactual's to the clean prompt's (alpha = 1/steps ... 1),
the "EAP-IG-inputs" variant MIB evaluates. A node's score is the sum over its outgoing edges (the
gradient at its output). Scores are means over prompts, signed; circuits keep the largest |score|.
"""

from __future__ import annotations

import torch

from saecircuits.circuits.masked_forward import MaskedForward
from saecircuits.circuits.task import Task
from saecircuits.model.frozen import frozen


def edge_attribution(forward: MaskedForward, task: Task, ig_steps: int = 0, batch_size: int = 16) -> torch.Tensor:
    """EAP (``ig_steps`` = 0) or EAP-IG scores of every edge: [S, R], 0 where no edge exists."""
    g, model = forward.graph, forward.model
    scores = torch.zeros(g.valid.shape, dtype=torch.float64)
    alphas = [1.0] if ig_steps <= 0 else [(k + 1) / ig_steps for k in range(ig_steps)]
    pos = list(task.positions)
    with frozen(model):
        for i in range(0, len(task), batch_size):
            sub = task.subset(torch.arange(i, min(i + batch_size, len(task))))
            with torch.no_grad():
                clean = forward.sender_outputs(sub.clean, batch_size)
                corrupted = forward.sender_outputs(sub.corrupted, batch_size)
                delta = clean - corrupted  # [S, b, p, d]
                x_clean, x_corr = clean[0], corrupted[0]  # the embeddings entering block 0
            for alpha in alphas:
                mask = g.valid.float()[None].requires_grad_(True)
                x0 = x_corr + alpha * (x_clean - x_corr)
                with torch.enable_grad():
                    logits = forward.run(sub.clean, pos, edges=mask, delta=delta, embeddings=x0)[0]
                    sub.metric(logits).sum().backward()
                scores += mask.grad[0].double() / len(alphas)
    scores = scores / len(task)
    return (scores * g.valid).float()


def node_attribution(edge_scores: torch.Tensor) -> torch.Tensor:
    """A node's score from its edges' ([S, R]): their sum, [n_nodes] (the embeddings' row dropped)."""
    return edge_scores.sum(1)[1:]
