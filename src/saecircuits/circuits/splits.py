"""Held-out train / validation / test prompt sets of a circuit task (issue 21, "circuits that hold up").

``build_splits(name, model, n_train, n_val, n_test, seed)`` builds three disjoint ``Task``s of one
task: discovery sees ``train`` only, choosing a size or threshold sees ``val`` only, every reported
number is on ``test``. The splits share no name (IOI) or start year (greater-than), and ``test``
holds a template that neither ``train`` nor ``val`` has (test uses theirs too). The builders of
``prompts`` (what ``tasks.build`` runs) are unchanged; these reuse their word lists, tokenization
checks and task assembly. Each split draws its prompts from its own random stream (seeded by
``seed`` and the split's name), so one split's prompts do not depend on the other splits' sizes.

- ``ioi``: the single-token names are shuffled and dealt to the three splits; places and objects
  are shared. Of the BABA/ABBA template pairs, those that tokenize to the most common length for
  this model are used (a ``Task`` holds prompts of one length); the last of them is held out for
  test. Counterfactual: ABC with both names replaced (Wang et al.'s ABC distribution): the
  indirect object, the subject's first mention and its second mention become three names of the
  split's pool, distinct from each other and from the clean prompt's two, at the same positions;
  the corrupted prompt then says nothing about who the IO or the subject was. (``prompts.ioi``
  instead replaces only the subject's second mention, so its corrupted prompt still holds both
  clean names.)
- ``greater_than``: the start years' last two digits YY (02..98) are shuffled and dealt to the
  splits; nouns and centuries are shared. Counterfactual: YY -> 01, as ``prompts.greater_than``.
  That builder has one phrasing (``prompts.YEAR_TEMPLATE``); test also uses a second one,
  ``YEAR_TEMPLATE_TEST`` ("ran from ... until"), which no other split sees.
- ``induction``: the model's non-special token ids are shuffled and dealt to the splits; a prompt is
  ``x1..x10 x1..x9`` -> ``x10`` (counterfactual: the first copy fresh tokens). Half of test uses the
  held-out template: two filler tokens, then ``x1..x9 x1..x8`` (the same length, the copy shifted).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits.prompts import (
    IOI_OBJECTS,
    IOI_PLACES,
    IOI_TEMPLATES,
    NAMES,
    YEAR_CENTURIES,
    YEAR_NOUNS,
    YEAR_TEMPLATE,
    YEAR_YYS,
    ioi_task,
    need_words,
    single_token_words,
    year_digits,
    year_pair,
    year_task,
)
from saecircuits.circuits.task import Task
from saecircuits.circuits.task_names import TASKS, task_key
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.loading import special_token_ids

SPLITS = ("train", "val", "test")
# greater-than's held-out phrasing, used only in test (same fields as prompts.YEAR_TEMPLATE)
YEAR_TEMPLATE_TEST = "The {noun} ran from the year {start} until the year {end}"
# the built-in word lists a user may replace (``--words FILE``): only single-token words are used
WORD_LISTS = {"names": NAMES, "places": IOI_PLACES, "objects": IOI_OBJECTS, "year_nouns": YEAR_NOUNS}
OVERSAMPLE = 3  # candidate prompts a prompt asked for (pairs tokenizing to another length are dropped)


@dataclass(frozen=True)
class SplitPart:
    """What one split draws from: ``pool``, its names (IOI) or start-year YYs (greater-than), and
    ``templates``, the templates its prompts use (in template order)."""

    pool: tuple[str | int, ...]
    templates: tuple[str, ...]


@dataclass
class TaskSplits:
    """Three disjoint prompt sets of one task and how they were split.

    ``train``/``val``/``test``: the tasks (each of one prompt length; lengths may differ between
    splits). ``parts``: per split name ("train", "val", "test") its ``SplitPart``. ``held_out``: the
    templates only test holds. ``seed``: the seed they were built with.
    """

    name: str
    train: Task
    val: Task
    test: Task
    parts: dict[str, SplitPart]
    held_out: tuple[str, ...]
    seed: int

    def tasks(self) -> dict[str, Task]:
        """The three tasks by split name, in the order train, val, test."""
        return {"train": self.train, "val": self.val, "test": self.test}


def build_splits(name: str, model: HookedTransformer, n_train: int, n_val: int, n_test: int,
                 seed: int = 0, words: dict[str, tuple[str, ...]] | None = None) -> TaskSplits:
    """Disjoint train / validation / test prompt sets of task ``name`` (one of ``SPLIT_BUILDERS``).

    ``words``: word lists that replace the built-in ones (``WORD_LISTS`` keys), for tokenizers that split
    the built-in words."""
    key = task_key(name)
    if key not in TASKS:
        raise SaecircuitsError(f"unknown task '{name}'", f"choose one of: {', '.join(TASKS)}")
    if key not in SPLIT_BUILDERS:
        raise SaecircuitsError(f"task {key} has no held-out train / val / test splits",
                               f"tasks with splits: {', '.join(SPLIT_BUILDERS)}")
    sizes = dict(zip(SPLITS, (n_train, n_val, n_test)))
    for split, n in sizes.items():
        if n < 1:
            raise SaecircuitsError(f"{key}: the {split} split needs at least 1 prompt, got {n}")
    unknown = set(words or {}) - set(WORD_LISTS)
    if unknown:
        raise SaecircuitsError(f"unknown word list(s) {', '.join(sorted(unknown))}",
                               f"word lists: {', '.join(WORD_LISTS)}")
    lists = {k: tuple((words or {}).get(k, v)) for k, v in WORD_LISTS.items()}
    return SPLIT_BUILDERS[key](model, sizes, seed, lists)


# --- shared by the tasks ------------------------------------------------------------------------

def deal(items: list, seed: int, task: str) -> dict[str, list]:
    """``items`` shuffled (by ``seed``) and dealt round-robin to train, val and test: disjoint, sizes within one."""
    shuffled = list(items)
    random.Random(f"{task}:deal:{seed}").shuffle(shuffled)
    return {split: shuffled[i::len(SPLITS)] for i, split in enumerate(SPLITS)}


def split_rng(task: str, split: str, seed: int) -> random.Random:
    """The random stream of one split (a string seed hashes the same in every run)."""
    return random.Random(f"{task}:{split}:{seed}")


def too_many(task: str, split: str, asked: int, built: int, why: str) -> SaecircuitsError:
    """The error for a split that cannot hold the prompts asked for."""
    return SaecircuitsError(f"{task}: the {split} split could build only {built} distinct prompts, {asked} were "
                            f"asked for ({why})", "ask for fewer prompts in that split")


def assemble(task: str, built: dict[str, tuple[Task, SplitPart]], held_out: list[str], seed: int) -> TaskSplits:
    """The ``TaskSplits`` from each split's task and part, checking that test holds a held-out template."""
    if not set(held_out) & set(built["test"][1].templates):
        raise SaecircuitsError(f"{task}: no test prompt of the held-out templates tokenized to the test split's "
                               "length, so test holds no template that train lacks")
    return TaskSplits(task, *(built[s][0] for s in SPLITS), parts={s: built[s][1] for s in SPLITS},
                      held_out=tuple(held_out), seed=seed)


def used_templates(templates: list[str], per_prompt: list[str], keep: list[int]) -> tuple[str, ...]:
    """The templates (in ``templates`` order) of the kept prompts."""
    used = {per_prompt[i] for i in keep}
    return tuple(t for t in templates if t in used)


# --- IOI ----------------------------------------------------------------------------------------

def ioi_template_pairs(model: HookedTransformer, fill: dict[str, str]) -> tuple[list[str], list[str]]:
    """The IOI templates all splits use and those held out for test: (shared, held out).

    Of the BABA/ABBA pairs of ``IOI_TEMPLATES``, those whose prompts (``fill``ed) tokenize to the
    most common length; the last such pair is held out. Ties between lengths go to template order.
    """
    pairs = [IOI_TEMPLATES[i: i + 2] for i in range(0, len(IOI_TEMPLATES), 2)]
    by_length: dict[int, list[list[str]]] = {}
    for pair in pairs:
        lengths = {len(model.to_tokens(t.format(**fill))[0]) for t in pair}
        if len(lengths) == 1:
            by_length.setdefault(lengths.pop(), []).append(pair)
    best = max(by_length.values(), key=len, default=[])
    if len(best) < 2:
        raise SaecircuitsError(f"ioi: no two template pairs tokenize to one length for {model.cfg.model_name}, so "
                               "none can be held out for test")
    return [t for pair in best[:-1] for t in pair], best[-1]


def ioi_prompts(rng: random.Random, templates: list[str], pool: list[str], places: list[str],
                objects: list[str], want: int) -> tuple[list[str], list[str], list[str], list[tuple[str, str]]]:
    """Up to ``want`` distinct IOI prompts and their ABC counterfactuals (both names replaced).

    Returns clean prompts, counterfactuals, each prompt's template and its (indirect object, subject).
    """
    clean, corrupted, groups, named = [], [], [], []
    seen = set()
    for _ in range(20 * want):  # distinct prompts: redraw a repeat (bounded, for pools nearly exhausted)
        if len(clean) == want:
            break
        tmpl = rng.choice(templates)
        a, b, c, d, e = rng.sample(pool, 5)  # a: IO, b: subject; c, d, e: their counterfactual names
        fill = {"PLACE": rng.choice(places), "OBJECT": rng.choice(objects)}
        prompt = tmpl.format(A=a, B=b, **fill)
        if prompt in seen:
            continue
        seen.add(prompt)
        head, _, tail = tmpl.rpartition("{B}")  # the subject's second mention becomes a third new name
        clean.append(prompt)
        corrupted.append(head.format(A=c, B=d, **fill) + e + tail.format(**fill))
        groups.append(tmpl)
        named.append((a, b))
    return clean, corrupted, groups, named


def ioi_split(model: HookedTransformer, split: str, n: int, seed: int, pool: list[str], ids: dict[str, int],
              templates: list[str], places: list[str], objects: list[str]) -> tuple[Task, SplitPart]:
    """One IOI split: ``n`` prompts on the names of ``pool`` (``ids``: every name's token id)."""
    capacity = len(templates) * len(places) * len(objects) * len(pool) * (len(pool) - 1)
    why = (f"{len(pool)} names, {len(templates)} templates, {len(places)} places and {len(objects)} objects make "
           f"{capacity} distinct prompts")
    if n > capacity:
        raise too_many("ioi", split, n, capacity, why)
    want = min(OVERSAMPLE * n, capacity)
    clean, corrupted, groups, named = ioi_prompts(split_rng("ioi", split, seed), templates, pool, places, objects,
                                                  want)
    task, keep = ioi_task(model, clean, corrupted, groups, [(ids[a], ids[b]) for a, b in named], n, len(pool))
    if len(task) < n:
        raise too_many("ioi", split, n, len(task), f"{why}; drawn {len(clean)}, of which {len(task)} tokenize alike")
    task.info.update(split=split, counterfactual="ABC, both names replaced")
    return task, SplitPart(tuple(sorted(pool)), used_templates(templates, groups, keep))


def ioi_splits(model: HookedTransformer, sizes: dict[str, int], seed: int, words: dict[str, tuple[str, ...]]
               ) -> TaskSplits:
    """IOI on disjoint names a split; test also holds a held-out template pair."""
    ids = single_token_words(model, words["names"])
    places = sorted(single_token_words(model, words["places"]))
    objects = sorted(single_token_words(model, words["objects"]))
    need_words(model, "names", ids, 5 * len(SPLITS))  # five a prompt and its counterfactual, in each split
    need_words(model, "places", dict.fromkeys(places), 1)
    need_words(model, "objects", dict.fromkeys(objects), 1)
    names = sorted(ids)
    shared, held = ioi_template_pairs(model, {"A": names[0], "B": names[1], "PLACE": places[0],
                                              "OBJECT": objects[0]})
    pools = deal(names, seed, "ioi")
    built = {s: ioi_split(model, s, sizes[s], seed, pools[s], ids, shared + held if s == "test" else shared,
                          places, objects) for s in SPLITS}
    return assemble("ioi", built, held, seed)


# --- greater-than -------------------------------------------------------------------------------

def year_split(model: HookedTransformer, split: str, n: int, seed: int, yys: list[int], templates: list[str],
               nouns: list[str], digits: tuple[torch.Tensor, tuple[int, ...], str]) -> tuple[Task, SplitPart]:
    """One greater-than split: ``n`` prompts whose start years end in the YYs of ``yys``.

    ``digits``: what ``prompts.year_digits`` returns for the model.
    """
    combos = [(t, noun, century, yy) for t in templates for noun in nouns for century in YEAR_CENTURIES
              for yy in yys]
    why = (f"{len(yys)} start years, {len(nouns)} nouns, {len(YEAR_CENTURIES)} centuries and {len(templates)} "
           f"templates make {len(combos)} distinct prompts")
    if n > len(combos):
        raise too_many("greater_than", split, n, len(combos), why)
    split_rng("greater_than", split, seed).shuffle(combos)
    combos = combos[: OVERSAMPLE * n]
    pairs = [year_pair(t, noun, century, yy, digits[1]) for t, noun, century, yy in combos]
    groups = [c[0] for c in combos]
    task, keep = year_task(model, [p[0] for p in pairs], [p[1] for p in pairs], groups, [c[3] for c in combos], n,
                           *digits)
    if len(task) < n:
        raise too_many("greater_than", split, n, len(task), f"{why}; drawn {len(combos)}, of which {len(task)} "
                       "tokenize alike")
    task.info.update(split=split, counterfactual="YY -> 01")
    return task, SplitPart(tuple(sorted(yys)), used_templates(templates, groups, keep))


def greater_than_splits(model: HookedTransformer, sizes: dict[str, int], seed: int,
                        words: dict[str, tuple[str, ...]]) -> TaskSplits:
    """Greater-than on disjoint start-year YYs a split; test also holds ``YEAR_TEMPLATE_TEST``."""
    digits = year_digits(model)
    nouns = sorted(single_token_words(model, words["year_nouns"]))
    need_words(model, "year nouns", dict.fromkeys(nouns), 1)
    pools = deal(list(YEAR_YYS), seed, "greater_than")
    built = {s: year_split(model, s, sizes[s], seed, pools[s],
                           [YEAR_TEMPLATE, YEAR_TEMPLATE_TEST] if s == "test" else [YEAR_TEMPLATE], nouns, digits)
             for s in SPLITS}
    return assemble("greater_than", built, [YEAR_TEMPLATE_TEST], seed)


# --- induction ----------------------------------------------------------------------------------

INDUCTION_HALF = 10
INDUCTION_TEMPLATES = ("repeat", "filler + shorter repeat")  # test also holds the second (same length)


def induction_rows(pool: torch.Tensor, n: int, half: int, filler: int, g: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` prompts ``f1..f_filler x1..xh x1..x(h-1)`` -> ``xh`` (counterfactual: the first copy fresh), tokens drawn
    without replacement per prompt from ``pool``. Returns clean, corrupted [n, filler + 2h - 1], answers [n], wrong [n, 1]."""
    draw = torch.stack([pool[torch.randperm(len(pool), generator=g)[: 2 * half + filler]] for _ in range(n)])
    pad, first, fresh = draw[:, :filler], draw[:, filler: filler + half], draw[:, filler + half:]
    clean = torch.cat([pad, first, first[:, : half - 1]], 1)
    corrupted = torch.cat([pad, fresh, first[:, : half - 1]], 1)
    return clean, corrupted, first[:, -1].clone(), fresh[:, -1:].clone()


def induction_split(model: HookedTransformer, split: str, n: int, seed: int, pool: list[int]) -> tuple[Task, SplitPart]:
    """One induction split on the token ids of ``pool``; test's second half uses the held-out template
    (two filler tokens, then a repeat one token shorter: the same length, the copy elsewhere)."""
    g = torch.Generator().manual_seed(hash_seed("induction", split, seed))
    ids = torch.tensor(pool)
    if len(ids) < 2 * INDUCTION_HALF + 1:
        raise too_many("induction", split, n, 0, f"its token pool holds {len(ids)} ids, a prompt needs "
                       f"{2 * INDUCTION_HALF + 1}")
    n_held = n // 2 if split == "test" else 0
    parts = [induction_rows(ids, n - n_held, INDUCTION_HALF, 0, g)]
    if n_held:
        parts.append(induction_rows(ids, n_held, INDUCTION_HALF - 1, 2, g))
    clean, corrupted, answers, wrong = (torch.cat(x) for x in zip(*parts))
    tok = model.tokenizer
    if bool(model.cfg.default_prepend_bos) and tok is not None and tok.bos_token_id is not None:
        b = torch.full((n, 1), int(tok.bos_token_id))
        clean, corrupted = torch.cat([b, clean], 1), torch.cat([b, corrupted], 1)
    templates = INDUCTION_TEMPLATES if n_held else INDUCTION_TEMPLATES[:1]
    task = Task("induction", clean, corrupted, answers, wrong, metric_name="logit_diff repeat-fresh", chance=0.5,
                info={"split": split, "length": clean.shape[1], "half": INDUCTION_HALF, "vocab_size": len(pool),
                      "counterfactual": "the first copy replaced by fresh tokens"})
    return task, SplitPart(tuple(sorted(pool)), templates)


def induction_splits(model: HookedTransformer, sizes: dict[str, int], seed: int,
                     words: dict[str, tuple[str, ...]] | None = None) -> TaskSplits:
    """Induction on disjoint token ids a split (no word lists); test also holds a held-out template."""
    specials = set(special_token_ids(model)) if model.tokenizer is not None else set()
    vocab = [i for i in range(model.cfg.d_vocab) if i not in specials]
    pools = deal(vocab, seed, "induction")
    built = {s: induction_split(model, s, sizes[s], seed, pools[s]) for s in SPLITS}
    return assemble("induction", built, [INDUCTION_TEMPLATES[1]], seed)


def hash_seed(task: str, split: str, seed: int) -> int:
    """A torch seed from a split's name (stable across runs, like ``split_rng``)."""
    return split_rng(task, split, seed).randrange(2**62)


# each task with splits, by its name in task_names.TASKS
SPLIT_BUILDERS: dict[str, Callable[[HookedTransformer, dict[str, int], int, dict], TaskSplits]] = {
    "ioi": ioi_splits, "greater_than": greater_than_splits, "induction": induction_splits}
