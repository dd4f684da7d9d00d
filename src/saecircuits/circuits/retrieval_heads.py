"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality").

A needle sentence is inserted at a depth of a haystack of the toolkit's own text and asked back
("Based on the content of the book, Question: ...\\nAnswer:"). At each answer token the model predicts
(teacher-forced: the answer follows the prompt, and a token counts when it is the model's top-1), a head
*retrieves* it when its most-attended position lies in the needle and holds that same token. A head's
retrieval score is the share of the needle's tokens it retrieves, averaged over the trials the model
answers (token recall above ``min_recall``, the paper's ROUGE-1 filter); heads above 0.1 are retrieval
heads (the paper: under 5% of heads). Teacher forcing replaces the paper's greedy decoding: the two agree
up to the first wrong token, after which the paper's trial would follow the model's own continuation.

Causal test on held-out needles and haystack: the top retrieval heads masked as the paper masks
(query zeroed, so the head attends uniformly) and by mean ablation (its output replaced by its mean), against
as many random non-retrieval heads; scored by needle token recall and on a short factual task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits.config import RetrievalConfig
from saecircuits.circuits.study_common import mean_ci, rank_correlation
from saecircuits.core.errors import SaecircuitsError

# (needle, question): train needles choose the heads, test needles (and another haystack) score the masking
NEEDLES = {
    "train": [
        ("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
         "What is the best thing to do in San Francisco?"),
        ("The secret ingredient of the old baker's bread is a spoon of honey from the northern hills.",
         "What is the secret ingredient of the old baker's bread?"),
        ("The lost key of the lighthouse was hidden under the third stone of the garden wall.",
         "Where was the lost key of the lighthouse hidden?"),
    ],
    "test": [
        ("The favourite colour of the quiet librarian is a deep shade of forest green.",
         "What is the favourite colour of the quiet librarian?"),
        ("The captain of the small red boat always sails north when the moon is full.",
         "Where does the captain of the small red boat sail when the moon is full?"),
        ("The password to the museum's back door is the name of the first painting sold there.",
         "What is the password to the museum's back door?"),
    ],
}
FACTS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
         ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("England", "London"), ("China", "Beijing"),
         ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Norway", "Oslo"), ("Poland", "Warsaw"), ("Ireland", "Dublin"),
         ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Sweden", "Stockholm")]
QUESTION = "\n\nBased on the content of the book, Question: {q}\nAnswer:"


@dataclass
class Trial:
    """One needle at one depth of one haystack: ``tokens`` [pos]; the needle occupies ``needle`` (start, stop);
    the answer (the needle's tokens again) ends the prompt, predicted from ``queries`` [n_answer]."""

    tokens: torch.Tensor
    needle: tuple[int, int]
    queries: torch.Tensor
    answer: torch.Tensor
    length: int
    depth: float


def _ids(model: HookedTransformer, text: str) -> list[int]:
    return model.to_tokens(text, prepend_bos=False)[0].tolist()


def haystack_ids(model: HookedTransformer, text: str, split: str, n_tokens: int, seed: int) -> list[int]:
    """``n_tokens`` token ids of the text source's documents of ``split``, concatenated in its seeded order."""
    from saecircuits.text.config import TextConfig
    from saecircuits.text.source import iter_documents

    ids: list[int] = []
    for _, doc in iter_documents(TextConfig(source=text, seed=seed, eval_fraction=0.5), split):
        ids += _ids(model, doc + "\n")
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise SaecircuitsError(f"text source '{text}' holds {len(ids)} tokens in its {split} half, fewer than the "
                           f"{n_tokens} a haystack needs", "use a larger text or shorter --length")


def build_trials(model: HookedTransformer, needles: list[tuple[str, str]], haystack: list[int],
                 lengths: tuple[int, ...], depths: int) -> list[Trial]:
    """Every needle at every depth of the first ``length`` tokens of ``haystack``, for each length."""
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    trials = []
    for needle, question in needles:
        n_ids, q_ids = _ids(model, " " + needle), _ids(model, QUESTION.format(q=question))
        for length in lengths:
            hay = haystack[:length]
            for d in range(depths):
                depth = d / max(1, depths - 1)
                cut = round(depth * len(hay))
                prompt = bos + hay[:cut] + n_ids + hay[cut:] + q_ids
                tokens = torch.tensor(prompt + n_ids)
                if len(tokens) > model.cfg.n_ctx:
                    raise SaecircuitsError(f"a haystack of {length} tokens makes prompts of {len(tokens)} tokens, longer "
                                           f"than {model.cfg.model_name}'s {model.cfg.n_ctx}",
                                           f"use lengths under {model.cfg.n_ctx - len(tokens) + length}")
                start = len(bos) + cut
                trials.append(Trial(tokens, (start, start + len(n_ids)),
                                    torch.arange(len(prompt) - 1, len(prompt) + len(n_ids) - 1),
                                    torch.tensor(n_ids), length, depth))
    return trials


def _masking_hooks(heads: list[tuple[int, int]], how: str, means: dict[int, torch.Tensor] | None) -> list:
    """Hooks masking ``heads`` [(layer, head)]: ``uniform`` zeroes their queries (uniform attention, as the paper
    masks), ``mean`` sets their outputs (hook_z) to ``means[layer]`` [n_heads, d_head]."""
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)
    hooks = []
    for layer, hs in by_layer.items():
        if how == "uniform":
            def zero_q(q, hook, hs=hs):
                q[:, :, hs] = 0.0
                return q
            hooks.append((f"blocks.{layer}.attn.hook_q", zero_q))
        elif how == "mean":
            def mean_z(z, hook, hs=hs, layer=layer):
                z[:, :, hs] = means[layer][hs].to(z.dtype)
                return z
            hooks.append((f"blocks.{layer}.attn.hook_z", mean_z))
        else:
            raise SaecircuitsError(f"unknown masking '{how}'", "choose uniform or mean")
    return hooks


@torch.no_grad()
def run_trial(model: HookedTransformer, trial: Trial, hooks: list | None = None, attention: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Top-1 predictions at the answer's positions [n_answer] and, with ``attention``, each head's most-attended
    position there [n_layers, n_heads, n_answer]."""
    top: dict[int, torch.Tensor] = {}

    def keep(pattern, hook):
        top[hook.layer()] = pattern[0][:, trial.queries].argmax(-1)  # [heads, n_answer]
    fwd = list(hooks or [])
    if attention:
        fwd.append((lambda name: name.endswith("attn.hook_pattern"), keep))
    logits = model.run_with_hooks(trial.tokens[None], fwd_hooks=fwd)[0, trial.queries]
    return logits.argmax(-1), torch.stack([top[i] for i in range(model.cfg.n_layers)]) if attention else None


def token_recall(pred: torch.Tensor, answer: torch.Tensor) -> float:
    """ROUGE-1 recall over tokens: the share of the answer's tokens (as a multiset) that the prediction holds."""
    left = pred.tolist()
    hit = 0
    for t in answer.tolist():
        if t in left:
            left.remove(t)
            hit += 1
    return hit / len(answer)


def retrieval_scores(model: HookedTransformer, trials: list[Trial], min_recall: float = 0.5
                     ) -> tuple[torch.Tensor, list[float]]:
    """Each head's retrieval score [n_layers, n_heads] over the trials the model answers, and every trial's recall."""
    total = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    counted, recalls = 0, []
    for t in trials:
        pred, top = run_trial(model, t, attention=True)
        recall = token_recall(pred, t.answer)
        recalls.append(recall)
        if recall <= min_recall:
            continue
        counted += 1
        in_needle = (top >= t.needle[0]) & (top < t.needle[1])
        copied = t.tokens[top] == t.answer  # the attended token is the answer token (broadcast over heads)
        generated = (pred == t.answer)[None, None]
        total += (in_needle & copied & generated).sum(-1) / (t.needle[1] - t.needle[0])
    return total / max(counted, 1), recalls


@torch.no_grad()
def induction_scores(model: HookedTransformer, n: int = 16, half: int = 24, seed: int = 0) -> torch.Tensor:
    """Mean attention from each position of a repeated random sequence's second copy to the token after its
    first occurrence: [n_layers, n_heads]."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(100, model.cfg.d_vocab - 100, (n, half), generator=g)
    tokens = torch.cat([first, first], 1)
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)

    def keep(pattern, hook):
        q = torch.arange(half, 2 * half)
        scores[hook.layer()] = pattern[:, :, q, q - half + 1].mean((0, 2))
    model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), keep)])
    return scores


@torch.no_grad()
def mean_outputs(model: HookedTransformer, trials: list[Trial]) -> dict[int, torch.Tensor]:
    """Each layer's mean head output (hook_z) over every position of ``trials``: {layer: [n_heads, d_head]}."""
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for t in trials:
        def keep(z, hook):
            sums[hook.layer()] = sums.get(hook.layer(), 0) + z[0].sum(0)
        model.run_with_hooks(t.tokens[None], fwd_hooks=[(lambda name: name.endswith("attn.hook_z"), keep)])
        count += len(t.tokens)
    return {layer: s / count for layer, s in sums.items()}


def fact_prompts(model: HookedTransformer) -> list[tuple[torch.Tensor, int]]:
    """"The capital of X is" with the capital's first token, for the factual task."""
    return [(model.to_tokens(f"The capital of {country} is"), _ids(model, " " + city)[0]) for country, city in FACTS]


def scored(model: HookedTransformer, trials: list[Trial], facts: list, hooks: list) -> dict[str, torch.Tensor]:
    """Per-trial needle token recall [n_trials] and per-fact top-1 correctness [n_facts] under ``hooks``."""
    recall = torch.tensor([token_recall(run_trial(model, t, hooks)[0], t.answer) for t in trials])
    with torch.no_grad():
        facts_ok = torch.tensor([float(model.run_with_hooks(p, fwd_hooks=hooks)[0, -1].argmax() == a) for p, a in facts])
    return {"needle_recall": recall, "fact_accuracy": facts_ok}


def study(model: HookedTransformer, cfg: RetrievalConfig, note: Callable[[str], None] = lambda s: None) -> dict:
    """Scores on train needles and haystack, their stability on test, and the causal test on test."""
    n_hay = max(cfg.lengths)
    trials = {split: build_trials(model, NEEDLES[split], haystack_ids(model, cfg.text, split_name, n_hay, cfg.seed),
                                  cfg.lengths, cfg.depths)
              for split, split_name in (("train", "train"), ("test", "eval"))}
    note(f"{len(trials['train'])} train and {len(trials['test'])} test trials, haystacks of {list(cfg.lengths)} tokens")
    scores, recalls = retrieval_scores(model, trials["train"], cfg.min_recall)
    test_scores, test_recalls = retrieval_scores(model, trials["test"], cfg.min_recall)
    L, H = scores.shape
    order = [(int(i) // H, int(i) % H) for i in scores.flatten().argsort(descending=True)]
    retrieval = [lh for lh in order if scores[lh] > cfg.threshold]
    k = cfg.top_k or len(retrieval)
    note(f"{len(retrieval)} of {L * H} heads score above {cfg.threshold}; the model answers "
         f"{sum(r > cfg.min_recall for r in recalls)} of {len(recalls)} train trials")
    result = {"scores": scores.tolist(), "test_scores": test_scores.tolist(), "retrieval_heads": [f"{a}.{b}" for a, b in retrieval],
              "share": len(retrieval) / (L * H), "answered": {"train": sum(r > cfg.min_recall for r in recalls),
                                                              "test": sum(r > cfg.min_recall for r in test_recalls),
                                                              "of": len(recalls)},
              "stability": rank_correlation(scores.flatten(), test_scores.flatten())[0], "context": model.cfg.n_ctx}
    ind = induction_scores(model, seed=cfg.seed)
    top_ind = {(int(i) // H, int(i) % H) for i in ind.flatten().argsort(descending=True)[:max(k, 1)]}
    result["induction"] = {"scores": ind.tolist(), "overlap": len(top_ind & set(retrieval[:k])), "k": k,
                           "chance": k * k / (L * H)}
    if k == 0:
        result["masking"] = {"skipped": "no head scores above the threshold: nothing to mask"}
        return result
    means = mean_outputs(model, trials["train"][:: max(1, len(trials["train"]) // 12)])
    facts = fact_prompts(model)
    others = [lh for lh in order if lh not in set(retrieval[:k])]
    g = torch.Generator().manual_seed(cfg.seed)
    draws = [[others[int(i)] for i in torch.randperm(len(others), generator=g)[:k]] for _ in range(cfg.random_draws)]
    masking = {"none": scored(model, trials["test"], facts, [])}
    for how in ("uniform", "mean"):
        masking[f"retrieval-{how}"] = scored(model, trials["test"], facts, _masking_hooks(retrieval[:k], how, means))
        per_draw = [scored(model, trials["test"], facts, _masking_hooks(d, how, means)) for d in draws]
        masking[f"random-{how}"] = {m: torch.stack([p[m] for p in per_draw]).mean(0) for m in per_draw[0]}
        note(f"masked by {how}: needle recall {masking[f'retrieval-{how}']['needle_recall'].mean():.3f} (retrieval heads) "
             f"vs {masking[f'random-{how}']['needle_recall'].mean():.3f} (random)")
    result["masking"] = {cond: {m: mean_ci(v, cfg.n_boot, cfg.seed) for m, v in vals.items()}
                         for cond, vals in masking.items()}
    result["masked_heads"] = {"retrieval": [f"{a}.{b}" for a, b in retrieval[:k]],
                              "random": [[f"{a}.{b}" for a, b in d] for d in draws]}
    return result


PAPER = {"share": "under 5% of heads (3.2% of Llama-2-7B-80K's; 2.1-6.2% across 7 models, from the released scores)",
         "masking": "masking the top retrieval heads makes needle retrieval fail; masking random heads does not "
                    "(the paper gives no table of these numbers)"}


def summary_markdown(result: dict, model_name: str, cfg: RetrievalConfig) -> str:
    """Our numbers beside the paper's."""
    a = result["answered"]
    ind = result["induction"]
    stability = "n/a" if result["stability"] is None else f"{result['stability']:.2f}"
    lines = [f"# Retrieval heads on {model_name}", "",
             f"Needles inserted at {cfg.depths} depths of haystacks of {list(cfg.lengths)} tokens ({cfg.text}); "
             f"3 train needles choose the heads, 3 test needles on another haystack score them. Teacher-forced: "
             f"the answer follows the prompt and counts where it is the model's top-1.", "",
             f"- Trials answered (token recall > {cfg.min_recall}): {a['train']} of {a['of']} train, {a['test']} of "
             f"{a['of']} test.",
             f"- Retrieval heads (score > {cfg.threshold} on train): {len(result['retrieval_heads'])}, "
             f"{100 * result['share']:.1f}% of heads ({', '.join(result['retrieval_heads'][:12]) or 'none'}). "
             f"Paper: {PAPER['share']}.",
             f"- Train and test scores, rank correlation over heads: {stability}.",
             f"- Overlap with the {ind['k']} strongest induction heads: {ind['overlap']} (chance {ind['chance']:.1f}).",
             f"- Haystack: at most {max(cfg.lengths)} tokens, against a context of {result.get('context', '?')} tokens the model "
             "supports; this 2-core machine's time, not the context, set the length (the paper goes to 50K-100K).", ""]
    m = result["masking"]
    if "skipped" in m:
        return "\n".join(lines + [f"Causal test: {m['skipped']}.", ""])
    lines += [f"## Masking {len(result['masked_heads']['retrieval'])} heads (test needles; facts: \"The capital of X is\")",
              "", "| masked | needle token recall [95% CI] | fact accuracy [95% CI] |", "|---|---|---|"]
    for cond, row in m.items():
        cells = [f"{row[k]['mean']:.3f} [{row[k]['ci'][0]:.3f}, {row[k]['ci'][1]:.3f}]"
                 for k in ("needle_recall", "fact_accuracy")]
        lines.append(f"| {cond} | {cells[0]} | {cells[1]} |")
    lines += ["", f"Paper: {PAPER['masking']}. Random rows average {cfg.random_draws} draws of non-retrieval heads.", ""]
    return "\n".join(lines)


def write(result: dict, folder, model_name: str, cfg: RetrievalConfig):
    """``retrieval_heads.json``, ``figure.png`` (train scores, layer x head) and ``summary.md``, swapped in whole."""
    from saecircuits.circuits.study_common import write_study

    def figure(plt):
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(torch.tensor(result["scores"]).numpy(), aspect="auto", cmap="viridis")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"retrieval score, {model_name}")
        fig.colorbar(im, ax=ax)
        return fig
    return write_study(folder, "retrieval_heads.json", {**result, "model": model_name, "config": cfg.model_dump(mode="json"),
                                                        "paper": PAPER}, summary_markdown(result, model_name, cfg), figure)
