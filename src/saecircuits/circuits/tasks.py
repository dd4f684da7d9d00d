"""The circuit tasks by name, and how well a model does one.

``BUILDERS`` maps each name of ``task_names.TASKS`` to its prompt builder (``prompts``, the function
named like the task); ``build(name, model)`` makes the ``Task`` for a model. ``evaluate(model,
task)`` reports clean and corrupted metrics and accuracy, and flags a task the model cannot do
(accuracy not above chance) instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from scipy.stats import binomtest
from transformer_lens import HookedTransformer

from saecircuits.circuits import prompts
from saecircuits.circuits.task import Task
from saecircuits.circuits.task_names import TASKS, task_key
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.unembed import unembed

# each task's builder is the function of ``prompts`` named like the task
BUILDERS: dict[str, Callable[..., Task]] = {name: getattr(prompts, name) for name in TASKS}


def build(name: str, model: HookedTransformer, n: int = 64, seed: int = 0, **kw) -> Task:
    """A task by name (one of ``TASKS``) for this model."""
    key = task_key(name)
    if key not in BUILDERS:
        raise SaecircuitsError(f"unknown task '{name}'", f"choose one of: {', '.join(TASKS)}")
    if n < 1:
        raise SaecircuitsError(f"the number of prompts must be at least 1, got {n}")
    return BUILDERS[key](model, n=n, seed=seed, **kw)


# --- running a task -----------------------------------------------------------------------------

def logits_at(model: HookedTransformer, tokens: torch.Tensor, positions: Sequence[int] = (-1,), hooks: Sequence = ()
              ) -> torch.Tensor:
    """Logits at ``positions`` [batch, len(positions), vocab] under ``hooks``; only those positions are unembedded
    (the final norm's hooks see them alone). Gradients flow unless the caller turns them off."""
    with model.hooks(fwd_hooks=list(hooks)):
        resid = model(tokens.to(model.cfg.device), stop_at_layer=model.cfg.n_layers)
        return unembed(model, resid[:, list(positions)])


@torch.no_grad()
def task_logits(model: HookedTransformer, tokens: torch.Tensor, positions: Sequence[int],
                batch_size: int = 32) -> torch.Tensor:
    """Logits at ``positions`` for every prompt: [n, len(positions), vocab] (only those positions are unembedded)."""
    return torch.cat([logits_at(model, tokens[i: i + batch_size], positions) for i in range(0, len(tokens), batch_size)])


def evaluate(model: HookedTransformer, task: Task, batch_size: int = 32) -> dict:
    """Clean and corrupted metric and accuracy, and whether the model can do the task at all.

    ``can_do`` is False (and ``warning`` says why) when clean accuracy is not above chance (one-sided
    binomial test, p < 0.01) or the mean clean metric is not above the corrupted one.
    """
    clean = task_logits(model, task.clean, task.positions, batch_size)
    corr = task_logits(model, task.corrupted, task.positions, batch_size)
    return evaluate_logits(task, clean, corr, model.cfg.model_name)


def evaluate_logits(task: Task, clean: torch.Tensor, corr: torch.Tensor, model_name: str = "the model") -> dict:
    """``evaluate`` from logits already computed at the task's positions ([n, len(positions), vocab] each)."""
    m_clean, m_corr = task.metric(clean), task.metric(corr)
    acc = task.correct(clean).float()
    k = int(acc.sum())
    p = float(binomtest(k, len(task), task.chance, alternative="greater").pvalue)
    can_do = p < 0.01 and float(m_clean.mean()) > float(m_corr.mean())
    out = {
        "task": task.name, "metric": task.metric_name, "n_prompts": len(task), "prompt_tokens": task.clean.shape[1],
        "clean_metric": float(m_clean.mean()), "clean_metric_std": float(m_clean.std()) if len(task) > 1 else 0.0,
        "corrupted_metric": float(m_corr.mean()), "clean_accuracy": float(acc.mean()),
        "corrupted_accuracy": float(task.correct(corr).float().mean()), "chance": task.chance,
        "p_above_chance": p, "can_do": bool(can_do), "share_metric_positive": float((m_clean > 0).float().mean()),
    }
    if not can_do:
        out["warning"] = (f"{model_name} cannot do {task.name}: clean accuracy {out['clean_accuracy']:.2f} "
                          f"vs chance {task.chance:.2f} (p={p:.2g}), metric clean {out['clean_metric']:.3f} vs "
                          f"corrupted {out['corrupted_metric']:.3f}; circuit results for it mean little")
    return out


def list_recall_sweep(model: HookedTransformer, sizes: Sequence[int] = (2, 3, 4, 5, 6), n: int = 32,
                      seed: int = 0, batch_size: int = 32) -> list[dict]:
    """Accuracy and logit difference of list recall as the list grows, by where the answer stands,
    with the repeated items in list order or shuffled (Merullo et al.'s order sensitivity).

    Every variant of one list size has the same prompt length, so they run as one batch of prompts."""
    rows = []
    for size in sizes:
        variants = [(k, reorder) for reorder in (False, True) for k in range(size)]
        built = [prompts.list_recall(model, n=n, seed=seed, n_items=size, answer_index=k, reorder=reorder) for k, reorder in variants]
        lengths = {t.clean.shape[1] for t in built}
        if len(lengths) > 1:  # tokenization made variants differ in length: run them apart
            logits = [(task_logits(model, t.clean, t.positions, batch_size), task_logits(model, t.corrupted, t.positions, batch_size))
                      for t in built]
        else:
            both = torch.cat([torch.cat([t.clean, t.corrupted]) for t in built])
            flat = task_logits(model, both, built[0].positions, batch_size)
            logits, i = [], 0
            for t in built:
                logits.append((flat[i: i + len(t)], flat[i + len(t): i + 2 * len(t)]))
                i += 2 * len(t)
        for (k, reorder), t, (lc, lx) in zip(variants, built, logits):
            r = evaluate_logits(t, lc, lx, model.cfg.model_name)
            rows.append({"n_items": size, "answer_index": k, "reorder": reorder,
                         **{key: r[key] for key in ("clean_accuracy", "clean_metric", "chance", "can_do")}})
    return rows
