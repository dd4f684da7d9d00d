"""``edge-pruning`` (Bhaskar et al. 2024): learn which edges (or nodes) to keep with hard-concrete masks.

Every edge gets a mask z in [0, 1] drawn from a hard-concrete distribution with a learnable location
log_alpha (Louizos et al. 2018: temperature 2/3, stretched to (-0.1, 1.1) and clipped). The model's
weights stay frozen; a cut edge reads the counterfactual run (``MaskedForward``). The loss is the KL
divergence from the full model's next-token distribution (or minus the task metric) plus a penalty
pulling the expected share of kept edges to a target, ``lambda * (density - target)^2``. One
training walks a schedule of falling targets; after each stage the edges are ranked by log_alpha, and
a circuit of size k keeps the top k of the stage whose target is the smallest one at or above k.
At ``nodes`` granularity the masks sit on heads and MLPs instead; at ``heads``, on heads (every MLP kept).

Under torchrun every process draws the same batch and masks, runs its share of the batch's prompts,
and the mask gradients are averaged: the masks follow the single-process run (to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from saecircuits.circuits.config import PruningConfig
from saecircuits.circuits.evaluation import kl_to_full
from saecircuits.circuits.masked_forward import MaskedForward
from saecircuits.circuits.task import Task
from saecircuits.core import distributed
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.frozen import frozen

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def sample_mask(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A hard-concrete draw per entry of ``log_alpha``, in [0, 1] (exact zeros and ones)."""
    u = torch.rand(log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def expected_kept(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(mask > 0) per entry: the expected L0 is its sum."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


@dataclass
class PruningResult:
    """log_alpha after each stage ([n_units] each, in ``targets`` order) and the training's log."""

    granularity: str
    targets: tuple[float, ...]
    stages: list[torch.Tensor]
    log: list[dict] = field(default_factory=list)

    def ranking(self, share: float) -> torch.Tensor:
        """Scores to rank units by for a circuit keeping ``share`` of them: log_alpha of the stage whose
        target is the smallest at or above ``share`` (the first stage above all targets)."""
        above = [i for i, t in enumerate(self.targets) if t >= share - 1e-12]
        return self.stages[above[-1] if above else 0]


def edge_pruning(forward: MaskedForward, task: Task, config: PruningConfig, granularity: str = "edges",
                 progress: Callable[[dict], None] | None = None) -> PruningResult:
    """Train hard-concrete masks on ``task`` (its counterfactuals are the ablation) through ``config.targets``."""
    if granularity not in ("edges", "nodes", "heads"):
        raise SaecircuitsError(f"unknown granularity '{granularity}'", "choose edges, nodes or heads")
    g = forward.graph
    n_units = g.n_units(granularity)
    pos = list(task.positions)
    with torch.no_grad():
        ablated = forward.sender_outputs(task.corrupted, config.batch_size)
        full = torch.cat([forward.run(task.clean[i: i + config.batch_size], pos)[0]
                          for i in range(0, len(task), config.batch_size)]).log_softmax(-1)
    log_alpha = torch.full((n_units,), config.init, requires_grad=True)
    opt = torch.optim.Adam([log_alpha], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    stages, log = [], []
    step = 0
    rank, world = distributed.rank(), distributed.world()
    with frozen(forward.model):
        for target in config.targets:
            for _ in range(config.steps):
                batch = torch.randint(len(task), (min(config.batch_size, len(task)),), generator=gen)
                z = sample_mask(log_alpha, gen)
                idx = batch[rank::world]  # this process's share of the batch (all of it on one process)
                sub = task.subset(idx)
                if granularity == "edges":
                    logits = forward.run(sub.clean, pos, ablated[:, idx], edges=g.edges_unflat(z, 0.0)[None])[0]
                else:
                    logits = forward.run(sub.clean, pos, ablated[:, idx], nodes=g.node_masks(granularity, z)[None])[0]
                if config.objective == "kl":
                    per_prompt = kl_to_full(full[idx], logits)
                else:
                    per_prompt = -sub.metric(logits)
                fit = per_prompt.sum() * world / len(batch)  # averaged over processes below: the batch mean
                density = expected_kept(log_alpha).mean()
                loss = fit + config.penalty * (density - target) ** 2
                opt.zero_grad()
                loss.backward()
                if world > 1:
                    distributed.all_reduce_grads([log_alpha])
                opt.step()
                step += 1
                entry = {"step": step, "target": target, "fit": float(fit.detach()), "density": float(density.detach())}
                log.append(entry)
                if progress is not None:
                    progress(entry)
            stages.append(log_alpha.detach().clone())
    return PruningResult(granularity, tuple(config.targets), stages, log)
