"""The logit lens (nostalgebraist 2020; "Do Llamas Work in English?"), and the tuned lens applied.

For each prompt and its answer token: the residual at every depth and position is read through the
model's final norm and unembedding (TransformerLens's ``accumulated_resid`` stack and
``apply_ln_to_stack(recompute_ln=True)``: the norm's statistics are recomputed per depth, and with
``fold_ln`` its weight already sits in ``W_U``). Reported per prompt: the answer's rank (0 = top-1)
and probability at every [depth, position]; at the last position, the top-1 token per depth, the
first depth where the answer is top-1, and the first depth from which it stays top-1.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits import tasks
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import read_csv_rows
from saecircuits.layerwise.results import DepthSummary, LensByLayer, LensResult, PromptReading
from saecircuits.layerwise.stream import stream_labels
from saecircuits.layerwise.tuned import TunedLens
from saecircuits.model.unembed import unembed_normed


def answer_ids(model: HookedTransformer, answer: str) -> list[int]:
    """Every token id of an answer's text (the lens follows the first)."""
    return model.to_tokens(answer, prepend_bos=False)[0].tolist()


def answer_token(model: HookedTransformer, answer: str | int) -> tuple[int, str]:
    """The answer's token id (its first token when it splits into several) and that token's text."""
    if isinstance(answer, int):
        return answer, model.tokenizer.decode([answer])
    ids = answer_ids(model, answer)
    if not ids:
        raise SaecircuitsError(f"answer {answer!r} is empty after tokenization")
    return ids[0], model.tokenizer.decode(ids[:1])


def _first(flags: list[bool]) -> int | None:
    return next((i for i, f in enumerate(flags) if f), None)


def _first_stable(flags: list[bool]) -> int | None:
    """First index from which every flag is true (None when the last is false)."""
    if not flags or not flags[-1]:
        return None
    i = len(flags) - 1
    while i > 0 and flags[i - 1]:
        i -= 1
    return i


@torch.no_grad()
def read_prompt(model: HookedTransformer, prompt: str | torch.Tensor, answer: str | int,
                lens: TunedLens | None = None, wrong: list[int] | None = None, layer_chunk: int = 8) -> PromptReading:
    """Logit-lens (or tuned-lens) readings of one prompt; see the module docstring.

    ``prompt``: text (BOS prepended as the model does by default) or a [pos] / [1, pos] token tensor.
    Depths are stream indices (``embed``, then after each block); ranks count tokens with a larger logit.
    ``wrong``: competing token ids (e.g. IOI's subject): adds ``logit_diff`` per depth at the last
    position, the answer's logit minus the mean of theirs.
    """
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else prompt.reshape(1, -1)
    ans, ans_text = answer_token(model, answer)
    n = model.cfg.n_layers
    names = {f"blocks.{layer}.hook_resid_pre" for layer in range(n)} | {f"blocks.{n - 1}.hook_resid_post"}
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names, return_type=None)
    stack = cache.accumulated_resid()  # [n + 1, 1, pos, d]: embed, then after each block
    if lens is not None:
        stack = lens(stack)
    stack = cache.apply_ln_to_stack(stack, recompute_ln=True)
    ranks, probs, top1, diffs = [], [], [], []
    for lo in range(0, n + 1, layer_chunk):  # bounded memory: [chunk, pos, vocab] logits at a time
        part = stack[lo : lo + layer_chunk, 0]
        logits = unembed_normed(model, part)  # the stack went through the final norm above
        ranks.append((logits > logits[..., ans : ans + 1]).sum(-1))
        probs.append(logits.softmax(-1)[..., ans])
        top1.append(logits[:, -1].argmax(-1))
        if wrong:
            diffs.append(logits[:, -1, ans] - logits[:, -1, wrong].mean(-1))
    rank, prob, top = torch.cat(ranks), torch.cat(probs), torch.cat(top1)  # [n + 1, pos], [n + 1, pos], [n + 1]
    is_top = (rank[:, -1] == 0).tolist()
    first, stable = _first(is_top), _first_stable(is_top)
    labels = stream_labels(model)
    return PromptReading(
        prompt=model.tokenizer.decode(tokens[0]) if not isinstance(prompt, str) else prompt,
        tokens=[model.tokenizer.decode([t]) for t in tokens[0].tolist()],
        answer=ans_text, answer_id=ans,
        rank=rank.tolist(), prob=prob.tolist(),
        top1_last=[model.tokenizer.decode([t]) for t in top.tolist()],
        final_correct=bool(is_top[-1]),
        first_top1=labels[first] if first is not None else None,
        stable_top1=labels[stable] if stable is not None else None,
        first_top1_index=first, stable_top1_index=stable,
        logit_diff=torch.cat(diffs).tolist() if wrong else None,
        wrong=[model.tokenizer.decode([w]) for w in wrong] if wrong else None,
    )


def lens_prompt(model: HookedTransformer, prompt: str | torch.Tensor, answer: str | int,
                lens: TunedLens | None = None, wrong: list[int] | None = None, layer_chunk: int = 8) -> dict:
    """``read_prompt``'s reading as JSON (a ``PromptReading``)."""
    return read_prompt(model, prompt, answer, lens, wrong, layer_chunk).to_json()


def logit_lens(model: HookedTransformer, prompts: list[str] | list[torch.Tensor], answers: list[str | int],
               lens: TunedLens | None = None, wrong: list[list[int]] | None = None, source: str | None = None) -> dict:
    """The lens over a prompt set: per-prompt readings and, at the last position, per-depth summaries
    (``LensResult``'s JSON).

    ``prompts``: texts or token tensors; ``answers``: texts or token ids; ``wrong``: per prompt, the
    competing token ids (adds the mean logit difference per depth)."""
    if len(prompts) != len(answers) or (wrong is not None and len(wrong) != len(prompts)):
        raise SaecircuitsError(f"{len(prompts)} prompts but {len(answers)} answers; give one answer per prompt")
    if not len(prompts):
        raise SaecircuitsError("no prompts for the logit lens", "pass --prompt/--answer, a CSV of prompt,answer, or a task")
    per = [read_prompt(model, p, a, lens, wrong[i] if wrong else None) for i, (p, a) in enumerate(zip(prompts, answers))]
    labels = stream_labels(model)
    last_rank = torch.tensor([[r[-1] for r in p.rank] for p in per], dtype=torch.float64)  # [prompts, depth]
    last_prob = torch.tensor([[q[-1] for q in p.prob] for p in per], dtype=torch.float64)
    firsts = [p.first_top1_index for p in per if p.first_top1_index is not None]
    stables = [p.stable_top1_index for p in per if p.stable_top1_index is not None]
    return LensResult(
        analysis="tuned_lens" if lens is not None else "logit_lens",
        model=model.cfg.model_name, layers=labels, n_prompts=len(per), source=source,
        final_accuracy=sum(p.final_correct for p in per) / len(per),
        by_layer=LensByLayer(
            mean_prob=last_prob.mean(0).tolist(),
            median_rank=last_rank.median(0).values.tolist(),
            mean_log_rank=torch.log1p(last_rank).mean(0).tolist(),
            top1_fraction=(last_rank == 0).double().mean(0).tolist(),
            mean_logit_diff=torch.tensor([p.logit_diff for p in per]).mean(0).tolist() if wrong else None,
        ),
        first_top1=_index_summary(firsts, labels, len(per)),
        stable_top1=_index_summary(stables, labels, len(per)),
        prompts=per,
    ).to_json()


def _index_summary(idx: list[int], labels: list[str], n: int) -> DepthSummary:
    """Where the answer became top-1: median depth and a histogram, over prompts where it did."""
    if not idx:
        return DepthSummary(n=0, of=n, median=None, median_label=None, histogram={})
    med = int(torch.tensor(idx, dtype=torch.float64).median())
    hist: dict[str, int] = {}
    for i in idx:
        hist[labels[i]] = hist.get(labels[i], 0) + 1
    return DepthSummary(n=len(idx), of=n, median=med, median_label=labels[med], mean=sum(idx) / len(idx), histogram=hist)


def read_prompts(path: str) -> tuple[list[str], list[str]]:
    """Prompts and answers from a CSV with a header and columns ``prompt`` and ``answer``."""
    rows = read_csv_rows(path, ("prompt", "answer"), what="prompt CSV")
    return [r["prompt"] for r in rows], [r["answer"] for r in rows]


def task_prompts(model: HookedTransformer, name: str, n: int = 32, seed: int = 0) -> dict:
    """Clean prompts of a circuit task (``saecircuits.circuits.tasks``) as ``logit_lens`` arguments."""
    task = tasks.build(name, model, n=n, seed=seed)
    if task.positions != (-1,):
        raise SaecircuitsError(f"task {name} reads more than the last position; the lens needs one answer token per prompt")
    return {"prompts": list(task.clean), "answers": task.answers.tolist(), "wrong": task.wrong.tolist(),
            "source": f"task:{task.name}"}
