"""A circuit task for one model: clean and corrupted prompt tokens, answer tokens and a differentiable metric.

A ``Task`` holds token tensors, never strings to re-tokenize: every prompt of a task (clean and
corrupted) has the same token count, so positions align across the batch and across each
clean/corrupted pair, and answers are single tokens of the model's own tokenizer. The prompts are
built in ``prompts``; the tasks by name, and how a model does on one, are in ``tasks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from saecircuits.core.errors import SaecircuitsError


@dataclass
class Task:
    """Prompts and answers of one task for one model.

    ``clean``/``corrupted``: [n, pos] int64 token ids (same shape). ``answers``: [n] the correct
    next token. ``wrong``: [n, w] the competing tokens. ``positions``: which positions' logits the
    metric reads (negative indices from the end); ``metric(logits)`` takes [n, len(positions),
    vocab] and returns [n] (differentiable). ``chance``: accuracy of guessing among answer + wrong.
    """

    name: str
    clean: torch.Tensor
    corrupted: torch.Tensor
    answers: torch.Tensor
    wrong: torch.Tensor
    positions: tuple[int, ...] = (-1,)
    metric_name: str = "logit_diff"
    chance: float = 0.5
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape:
            raise SaecircuitsError(f"task {self.name}: clean {tuple(self.clean.shape)} and corrupted "
                                   f"{tuple(self.corrupted.shape)} prompts differ in shape")
        if len(self.answers) != len(self.clean) or len(self.wrong) != len(self.clean):
            raise SaecircuitsError(f"task {self.name}: {len(self.clean)} prompts but {len(self.answers)} answers")

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, idx: torch.Tensor | Sequence[int] | slice) -> Task:
        """The same task on a subset of prompts."""
        return replace(self, clean=self.clean[idx], corrupted=self.corrupted[idx], answers=self.answers[idx],
                       wrong=self.wrong[idx], info=dict(self.info))

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Logit difference: the answer's logit minus the mean logit of the wrong tokens, [n]."""
        last = logits[:, -1]
        right = last.gather(1, self.answers[:, None].to(last.device))[:, 0]
        return right - last.gather(1, self.wrong.to(last.device)).mean(1)

    def answer_prob(self, logits: torch.Tensor) -> torch.Tensor:
        """The answer's probability at the last position, [n]."""
        return logits[:, -1].softmax(-1).gather(1, self.answers[:, None].to(logits.device))[:, 0]

    def correct(self, logits: torch.Tensor) -> torch.Tensor:
        """Whether the answer beats every wrong token, [n] bool."""
        last = logits[:, -1]
        right = last.gather(1, self.answers[:, None].to(last.device))[:, 0]
        return right > last.gather(1, self.wrong.to(last.device)).max(1).values


@dataclass
class GreaterThanTask(Task):
    """Greater-than (Hanna et al.): P(year > YY) - P(year <= YY) over two-digit continuations.

    ``threshold``: [n] YY. ``digit_ids``: the token ids of the 100 two-digit strings "00".."99"
    (tokenizers with two-digit tokens, ``positions == (-1,)``) or of the ten digits (digit
    tokenizers: the prompt ends with the tens digit of YY appended, ``positions == (-2, -1)``;
    position -2 gives P(tens digit), position -1 gives P(units digit | tens digit of YY), so
    P(year > YY) = P(D > d1) + P(D = d1) P(U > d2) exactly).
    """

    threshold: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    digit_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def subset(self, idx) -> GreaterThanTask:
        t = super().subset(idx)
        t.threshold = self.threshold[idx]
        return t  # type: ignore[return-value]

    def _p_greater(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P(year > YY) and P(year <= YY) over the two-digit continuations, [n] each."""
        yy = self.threshold.to(logits.device)
        ids = self.digit_ids.to(logits.device)
        if len(self.positions) == 1:  # one token per two-digit year
            p = logits[:, -1].softmax(-1)[:, ids]  # [n, 100]
            above = torch.arange(100, device=logits.device)[None, :] > yy[:, None]
            return (p * above).sum(1), (p * ~above).sum(1)
        tens, units = yy // 10, yy % 10
        digits = torch.arange(10, device=logits.device)[None, :]
        p1 = logits[:, -2].softmax(-1)[:, ids]  # P(tens digit)
        p2 = logits[:, -1].softmax(-1)[:, ids]  # P(units digit | tens digit of YY)
        p_tie = p1.gather(1, tens[:, None])[:, 0]
        greater = (p1 * (digits > tens[:, None])).sum(1) + p_tie * (p2 * (digits > units[:, None])).sum(1)
        not_greater = (p1 * (digits < tens[:, None])).sum(1) + p_tie * (p2 * (digits <= units[:, None])).sum(1)
        return greater, not_greater

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        greater, not_greater = self._p_greater(logits)
        return greater - not_greater

    def answer_prob(self, logits: torch.Tensor) -> torch.Tensor:
        """P(year > YY), [n]."""
        return self._p_greater(logits)[0]

    def correct(self, logits: torch.Tensor) -> torch.Tensor:
        return self.metric(logits) > 0
