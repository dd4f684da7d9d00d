"""Scoring circuits on held-out prompts: every standard ablation, every standard metric, one interface.

An ablation says what a cut edge (or node) reads instead of its sender's output on the prompt:

- ``counterfactual``: the sender's output on the prompt's own counterfactual (MIB's default);
- ``mean-clean``: its mean over the clean train prompts, position by position;
- ``mean-counterfactual``: its mean over the counterfactual train prompts, position by position;
- ``zero``: zeros;
- ``resample``: its output on another clean prompt of the same set (a fixed derangement, seeded).

Under torchrun each process runs a contiguous share of the prompts and the per-prompt metrics are
gathered, so every process holds every number.

Means come from the train split, so a test score never sees a test prompt's own average; they need
train and test prompts of one length (positions are matched one by one).

Metrics, each per prompt and higher = more of the behaviour, so faithfulness
f = (m(C) - m(empty)) / (m(N) - m(empty)) reads the same way for all: ``task`` (the task's metric:
logit difference for IOI, P(greater) - P(not greater) for greater-than), ``kl`` (minus the KL divergence
from the full model's next-token distribution to the circuit's, summed over the metric's positions),
``prob`` (the answer's probability) and ``accuracy`` (the answer beats every wrong token).
The empty circuit cuts every edge, the embeddings' too: it is the ablated run itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saecircuits.circuits.config import ABLATIONS
from saecircuits.circuits.masked_forward import MaskedForward
from saecircuits.circuits.task import Task
from saecircuits.core import distributed
from saecircuits.core.errors import SaecircuitsError

METRICS = ("task", "kl", "prob", "accuracy")


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of range(n) with no fixed point (n >= 2): each prompt goes to the next one in a
    random cyclic order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


def kl_to_full(full_logprobs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(full model || circuit) of next-token distributions, summed over the metric's positions.

    ``full_logprobs`` [n, len(positions), vocab]; ``logits`` [..., n, len(positions), vocab] (broadcast). [..., n]."""
    return (full_logprobs.exp() * (full_logprobs - logits.log_softmax(-1))).sum(-1).sum(-1)


def metrics(task: Task, logits: torch.Tensor, full_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of M circuits' logits [M, n, len(positions), vocab] against the full model's log-probs
    [n, len(positions), vocab]: [M, n] each."""
    M, n = logits.shape[:2]
    flat = logits.flatten(0, 1)
    many = task.subset(torch.arange(n).repeat(M)) if M > 1 else task
    return {"task": many.metric(flat).view(M, n), "kl": -kl_to_full(full_logprobs, logits),
            "prob": many.answer_prob(flat).view(M, n), "accuracy": many.correct(flat).float().view(M, n)}


@dataclass
class Evaluator:
    """Runs circuits on one prompt set (``test``) under any ablation; means from ``train``.

    ``batch_size``: prompts per forward; ``max_rows``: sequences per forward (masks x prompts).
    Ablated sender outputs are computed once per ablation and kept ([S, n or 1, pos, d_model]).
    """

    forward: MaskedForward
    test: Task
    train: Task
    batch_size: int = 32
    max_rows: int = 64
    seed: int = 0
    _ablated: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _full: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _empty: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.positions = list(self.test.positions)
        with torch.no_grad():
            logits = self._logits(self.test.clean)
        self.full_logprobs = logits.log_softmax(-1)
        self._full = {k: v[0] for k, v in metrics(self.test, logits[None], self.full_logprobs).items()}

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.forward.run(tokens[i: i + self.batch_size], self.positions)[0]
                          for i in range(0, len(tokens), self.batch_size)])

    def ablated(self, kind: str) -> torch.Tensor:
        """The senders' outputs a cut edge reads under ablation ``kind``: [S, n or 1, pos, d_model]."""
        if kind not in ABLATIONS:
            raise SaecircuitsError(f"unknown ablation '{kind}'", f"choose one of: {', '.join(ABLATIONS)}")
        if kind not in self._ablated:
            self._ablated[kind] = self._make_ablated(kind)
        return self._ablated[kind]

    def _make_ablated(self, kind: str) -> torch.Tensor:
        f, test = self.forward, self.test
        if kind.startswith("mean") and self.train.clean.shape[1] != test.clean.shape[1]:
            raise SaecircuitsError(
                f"{kind} ablation needs train and test prompts of one length (positions are matched one by one); "
                f"train has {self.train.clean.shape[1]} tokens, test {test.clean.shape[1]}",
                "use counterfactual, zero or resample ablation for this task and model")
        if kind == "counterfactual":
            return f.sender_outputs(test.corrupted, self.batch_size)
        if kind == "mean-clean":
            return f.sender_outputs(self.train.clean, self.batch_size).mean(1, keepdim=True)
        if kind == "mean-counterfactual":
            return f.sender_outputs(self.train.corrupted, self.batch_size).mean(1, keepdim=True)
        if kind == "resample":
            if len(test) < 2:
                raise SaecircuitsError("resample ablation needs at least 2 prompts")
            return f.sender_outputs(test.clean, self.batch_size)[:, derangement(len(test), self.seed)]
        d = self.forward.model.cfg.d_model
        return torch.zeros(len(self.forward.graph.senders), 1, test.clean.shape[1], d)

    @property
    def full(self) -> dict[str, torch.Tensor]:
        """Every metric of the full model, [n] each."""
        assert self._full is not None
        return self._full

    def empty(self, kind: str) -> dict[str, torch.Tensor]:
        """Every metric of the empty circuit (the ablated run), [n] each."""
        if kind not in self._empty:
            g = self.forward.graph
            self._empty[kind] = {k: v[0] for k, v in self.run(kind, edges=torch.zeros(1, *g.valid.shape,
                                                                                       dtype=torch.bool)).items()}
        return self._empty[kind]

    @torch.no_grad()
    def streams(self, kind: str, nodes: torch.Tensor) -> torch.Tensor:
        """The stream entering every block in the run of one node circuit ([n_nodes]): [n_layers, n, pos, d_model]."""
        abl = self.ablated(kind)
        out = []
        for i in range(0, len(self.test), self.batch_size):
            sl = slice(i, min(i + self.batch_size, len(self.test)))
            kept: list[torch.Tensor] = []
            self.forward.run(self.test.clean[sl], self.positions, abl[:, sl] if abl.shape[1] != 1 else abl,
                             nodes=nodes[None], streams=kept)
            out.append(torch.stack(kept))
        return torch.cat(out, 1)

    @torch.no_grad()
    def run(self, kind: str, edges: torch.Tensor | None = None, nodes: torch.Tensor | None = None,
            start: tuple[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Every metric of M circuits (``edges`` [M, S, R] or ``nodes`` [M, n_nodes], True = kept): [M, n] each.

        ``start`` (layer, streams [n, pos, d_model]): node circuits that agree before that block begin there from
        ``streams`` (see ``streams``)."""
        masks = edges if edges is not None else nodes
        if masks is None:
            raise SaecircuitsError("give the circuits as edge masks or node masks")
        abl = self.ablated(kind)
        n = len(self.test)
        share = -(-n // distributed.world())
        mine = range(distributed.rank() * share, min(n, (distributed.rank() + 1) * share))
        b = max(1, min(self.batch_size, self.max_rows))
        per_prompt = abl.shape[1] != 1
        rows: dict[str, list[torch.Tensor]] = {k: [torch.zeros(len(masks), 0)] for k in METRICS}
        for i in range(mine.start, mine.stop, b):
            sl = slice(i, min(i + b, mine.stop))
            sub = self.test.subset(torch.arange(sl.start, sl.stop))
            a = abl[:, sl] if per_prompt else abl
            step = max(1, self.max_rows // (sl.stop - sl.start))
            chunk: dict[str, list[torch.Tensor]] = {k: [] for k in METRICS}
            for j in range(0, len(masks), step):
                m = masks[j: j + step]
                logits = self.forward.run(sub.clean, self.positions, a, edges=m if edges is not None else None,
                                          nodes=m if nodes is not None else None,
                                          start=None if start is None else (start[0], start[1][sl]))
                vals = metrics(sub, logits, self.full_logprobs[sl])
                for k in METRICS:
                    chunk[k].append(vals[k])
            for k in METRICS:
                rows[k].append(torch.cat(chunk[k], 0))
        out = {k: torch.cat(rows[k], 1) for k in METRICS}
        if distributed.world() > 1:  # every process's prompts, in prompt order
            out = {k: distributed.all_gather_varlen(v.T.contiguous()).T for k, v in out.items()}
        return out
