"""The prompts of the circuit tasks: word lists, templates, tokenization checks and one builder a task.

Candidate words are filtered per tokenizer (only single-token words are used); a template whose
prompts tokenize to another length is dropped and recorded in ``Task.info``. Each builder is named
like its task (``tasks.BUILDERS`` looks them up by the names in ``task_names.TASKS``):

- ``ioi``: indirect object identification (Wang et al. 2022), "When Mary and John went to the
  store, John gave a drink to" -> " Mary"; corrupted ABC-style (the repeated subject replaced by
  a third name); metric logit(IO) - logit(S).
- ``induction``: random tokens repeated; the last token of the repeat is predicted from the
  first copy; corrupted: the first copy replaced by fresh random tokens.
- ``greater_than``: "The war lasted from the year 1732 to the year 17" (Hanna et al. 2023);
  corrupted start year ...01; metric P(year > YY) - P(year <= YY).
- ``list_recall``: the "Laundry List" task of Merullo et al. ("Talking Heads"): a list of items,
  all but one mentioned again, the model must produce the one left; corrupted: the items
  mentioned again are replaced by items not in the list (nothing left to inhibit).
- ``colored_objects``: Ippolito & Callison-Burch / Merullo et al. ("Circuit Component Reuse"):
  "On the table, I see a red pen, a blue book, and a green cup. What color is the book? The book
  is" -> " blue"; corrupted: the three colors replaced by three others.

``splits`` builds held-out train / val / test sets of ``ioi`` and ``greater_than`` from the same word
lists, tokenization checks and task assembly (``ioi_task``, ``year_pair``, ``year_task``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits.task import GreaterThanTask, Task
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.loading import special_token_ids

# --- word lists (filtered per tokenizer: only single-token words are used) ---------------------

NAMES = [
    "Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David", "Laura", "Mark", "Emma", "Peter", "Lucy",
    "Michael", "Kate", "Robert", "Alice", "Daniel", "Jane", "Chris", "Susan", "Steven", "Lisa", "Kevin", "Amy",
    "Brian", "Helen", "George", "Linda", "Frank", "Rachel", "Jack", "Karen", "Eric", "Nancy", "Adam", "Julia",
    "Richard", "Jessica", "Andrew", "Emily", "Thomas", "Sophie", "Charles", "Ruth", "Joseph", "Grace", "Henry",
    "Anne", "Sam", "Rose", "Ben", "Claire", "Matt", "Diana", "Scott", "Victoria", "Carl", "Martin", "Sean", "Ryan",
    "Jason", "Patrick", "Simon", "Jennifer", "Elizabeth", "William", "Maria", "Bill", "Joe", "Jim", "Bob", "Max",
]
IOI_PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "park", "station", "market",
              "beach", "library", "church", "airport", "museum", "bank", "cafe", "hotel"]
IOI_OBJECTS = ["drink", "ring", "book", "bottle", "basketball", "computer", "key", "necklace", "letter", "kiss",
               "snack", "bag", "gift", "ball", "pen", "phone", "cake", "hat"]
# {A} is the indirect object, {B} the subject (named twice); Wang et al.'s BABA and ABBA orders
IOI_TEMPLATES = [
    "When {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "When {B} and {A} went to the {PLACE}, {B} gave a {OBJECT} to",
    "Then, {A} and {B} went to the {PLACE}. {B} gave a {OBJECT} to",
    "Then, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "After {B} and {A} went to the {PLACE}, {B} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "While {B} and {A} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {B} said to",
    "Then, {B} and {A} had a long argument, and afterwards {B} said to",
]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink", "purple", "orange", "gray", "silver",
          "gold"]
COLOR_OBJECTS = ["pen", "book", "cup", "key", "phone", "mug", "ball", "hat", "bag", "box", "lamp", "plate", "bowl",
                 "shoe", "clock", "chair", "card", "coin", "sock", "toy"]
COLOR_TEMPLATE = ("On the {SURFACE}, I see {A0} {C0} {O0}, {A1} {C1} {O1}, and {A2} {C2} {O2}. "
                  "What color is the {OQ}? The {OQ} is")
COLOR_SURFACES = ["table", "desk", "floor", "shelf", "counter", "bed"]
LIST_ITEMS = ["eggs", "milk", "bread", "apples", "rice", "cheese", "butter", "sugar", "coffee", "tea", "salt",
              "pasta", "beans", "fish", "chicken", "oranges", "bananas", "flour", "soap", "juice", "onions",
              "carrots", "potatoes", "tomatoes", "lemons", "honey", "oil", "cereal", "yogurt", "grapes"]
LIST_PEOPLE = [("Tom", "he"), ("Anna", "she"), ("John", "he"), ("Mary", "she"), ("Paul", "he"), ("Lucy", "she")]
# greater-than (Hanna et al.): {start} is the full start year, {end} the century (and, with one token a digit,
# the tens digit of the start year) the model continues
YEAR_TEMPLATE = "The {noun} lasted from the year {start} to the year {end}"
YEAR_CENTURIES = range(11, 18)  # the start year's century: 11xx .. 17xx
YEAR_YYS = range(2, 99)  # the start year's last two digits YY (never 00 or 01, the corruption)
YEAR_NOUNS = ["war", "expedition", "reign", "drought", "dynasty", "siege", "journey", "voyage", "famine", "campaign",
              "plague", "occupation", "rebellion", "strike", "era", "partnership", "marriage", "project"]


# --- tokenization checks ------------------------------------------------------------------------

def single_token(model: HookedTransformer, word: str) -> int | None:
    """The id of ``word`` if the model's tokenizer writes it as one token (no BOS), else None."""
    ids = model.to_tokens(word, prepend_bos=False)[0]
    return int(ids[0]) if len(ids) == 1 else None


def single_token_words(model: HookedTransformer, words: Sequence[str], prefix: str = " ") -> dict[str, int]:
    """The words (with ``prefix``) that are single tokens for this model: {word: id}."""
    out = {}
    for w in words:
        tid = single_token(model, prefix + w)
        if tid is not None:
            out[w] = tid
    return out


class WordsSplitError(SaecircuitsError):
    """The tokenizer splits too many of a task's candidate words (its hint names the --words remedy)."""


def need_words(model: HookedTransformer, what: str, found: dict, k: int) -> None:
    """Refuse a task when fewer than ``k`` of the candidate ``what`` are single tokens (``found``)."""
    if len(found) < k:
        raise WordsSplitError(f"only {len(found)} of the candidate {what} are single tokens for "
                               f"{model.cfg.model_name}; the task needs at least {k}",
                               f"this tokenizer splits common words; give your own single-token {what} to saecircuits "
                               f"circuit / circuit-methods with --words FILE (YAML or JSON: {what.replace(' ', '_')}: "
                               "[...])")


def tokenize_pairs(model: HookedTransformer, name: str, clean: list[str], corrupted: list[str],
                   groups: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int], dict]:
    """Tokenize prompt pairs and keep those at the most common length (clean == corrupted length).

    Returns clean [k, pos], corrupted [k, pos], the kept indices and a record of what was dropped.
    """
    if not clean:
        raise SaecircuitsError(f"task {name}: no prompts were generated")
    toks_c = [model.to_tokens(p)[0] for p in clean]
    toks_x = [model.to_tokens(p)[0] for p in corrupted]
    ok = [i for i in range(len(clean)) if len(toks_c[i]) == len(toks_x[i])]
    if not ok:
        raise SaecircuitsError(f"task {name}: no clean/corrupted pair tokenizes to the same length for "
                               f"{model.cfg.model_name}")
    length = Counter(len(toks_c[i]) for i in ok).most_common(1)[0][0]
    keep = [i for i in ok if len(toks_c[i]) == length]
    dropped = Counter(groups[i] for i in range(len(clean)) if i not in set(keep))
    info = {"length": length, "generated": len(clean), "kept": len(keep),
            "dropped_by_group": dict(dropped), "groups_kept": sorted({groups[i] for i in keep})}
    return (torch.stack([toks_c[i] for i in keep]), torch.stack([toks_x[i] for i in keep]), keep, info)


def check_in_prompt(name: str, tokens: torch.Tensor, ids: torch.Tensor, what: str) -> None:
    """Every id must occur in its prompt (a tokenization check: the word was written as that token)."""
    present = (tokens[:, :, None] == ids[:, None, :]).any(1).all(1) if ids.dim() == 2 else (tokens == ids[:, None]).any(1)
    if not bool(present.all()):
        bad = int((~present).nonzero()[0, 0])
        raise SaecircuitsError(f"task {name}: the {what} of prompt {bad} is not one of its tokens (tokenization differs "
                               "in context)")


# --- the builders, one a task (named like it) ---------------------------------------------------

def ioi(model: HookedTransformer, n: int = 64, seed: int = 0, templates: Sequence[str] = IOI_TEMPLATES) -> Task:
    """Indirect object identification; corrupted with a third name in place of the repeated subject (ABC)."""
    rng = random.Random(seed)
    names = single_token_words(model, NAMES)
    places = single_token_words(model, IOI_PLACES)
    objects = single_token_words(model, IOI_OBJECTS)
    need_words(model, "names", names, 3)
    need_words(model, "places", places, 1)
    need_words(model, "objects", objects, 1)
    clean, corrupted, groups, ans = [], [], [], []
    for _ in range(n * 3):  # oversample: pairs at another length are dropped
        t = rng.randrange(len(templates))
        a, b, c = rng.sample(sorted(names), 3)
        fill = {"PLACE": rng.choice(sorted(places)), "OBJECT": rng.choice(sorted(objects))}
        tmpl = templates[t]
        clean.append(tmpl.format(A=a, B=b, **fill))
        # ABC: the second mention of the subject becomes a third name; positions stay aligned
        head, _, tail = tmpl.rpartition("{B}")
        corrupted.append((head.format(A=a, B=b, **fill) + c + tail.format(**fill)))
        groups.append(f"template {t}")
        ans.append((names[a], names[b]))
    return ioi_task(model, clean, corrupted, groups, ans, n, len(names))[0]


def ioi_task(model: HookedTransformer, clean: list[str], corrupted: list[str], groups: list[str],
             ans: list[tuple[int, int]], n: int, n_names: int) -> tuple[Task, list[int]]:
    """The IOI ``Task`` from prompt pairs: the first ``n`` pairs that tokenize alike, and their indices.

    ``ans``: (indirect object id, subject id) a prompt; ``groups``: a label a prompt (kept ones are
    recorded in the info); ``n_names``: how many names the prompts were drawn from (for the info).
    """
    tc, tx, keep, info = tokenize_pairs(model, "ioi", clean, corrupted, groups)
    keep = keep[:n]
    tc, tx = tc[:n], tx[:n]
    answers = torch.tensor([ans[i][0] for i in keep])
    wrong = torch.tensor([[ans[i][1]] for i in keep])
    check_in_prompt("ioi", tc, answers, "indirect object")
    check_in_prompt("ioi", tc, wrong, "subject")
    info.update(n=len(keep), names=n_names, examples=[clean[i] for i in keep[:3]],
                corrupted_examples=[corrupted[i] for i in keep[:3]])
    return Task("ioi", tc, tx, answers, wrong, metric_name="logit_diff IO-S", chance=0.5, info=info), keep


def induction(model: HookedTransformer, n: int = 64, seed: int = 0, half: int = 10,
              vocab: Sequence[int] | None = None, bos: bool | None = None) -> Task:
    """Repeated random tokens ``x1..xh x1..x(h-1)`` -> ``xh``; corrupted: the first copy is fresh tokens.

    ``vocab``: token ids to draw from (default: every non-special id). Wrong answer: the fresh
    token at the same place in the corrupted copy (what induction would predict there).
    """
    g = torch.Generator().manual_seed(seed)
    if vocab is None:
        specials = set(special_token_ids(model)) if model.tokenizer is not None else set()
        vocab = [i for i in range(model.cfg.d_vocab) if i not in specials]
    pool = torch.as_tensor(list(vocab), dtype=torch.long)
    if len(pool) < 2 * half + 1:
        raise SaecircuitsError(f"induction needs at least {2 * half + 1} distinct tokens to draw from, got {len(pool)}")
    # without replacement per prompt, so a token occurs once per copy and induction is unambiguous
    draw = torch.stack([pool[torch.randperm(len(pool), generator=g)[: 2 * half]] for _ in range(n)])
    first, fresh = draw[:, :half], draw[:, half:]
    clean = torch.cat([first, first[:, : half - 1]], 1)
    corrupted = torch.cat([fresh, first[:, : half - 1]], 1)
    if bos is None:
        bos = bool(model.cfg.default_prepend_bos) and model.tokenizer is not None and model.tokenizer.bos_token_id is not None
    if bos:
        b = torch.full((n, 1), int(model.tokenizer.bos_token_id))
        clean, corrupted = torch.cat([b, clean], 1), torch.cat([b, corrupted], 1)
    if clean.shape[1] > model.cfg.n_ctx:
        raise SaecircuitsError(f"induction prompts of {clean.shape[1]} tokens exceed the model's context of {model.cfg.n_ctx}")
    info = {"length": clean.shape[1], "half": half, "n": n, "vocab_size": len(pool)}
    return Task("induction", clean, corrupted, first[:, -1].clone(), fresh[:, -1:].clone(),
                metric_name="logit_diff repeat-fresh", chance=0.5, info=info)


def year_digits(model: HookedTransformer) -> tuple[torch.Tensor, tuple[int, ...], str]:
    """How greater-than reads years with this tokenizer: (digit ids [100] or [10], metric positions, mode)."""
    two_digit = [single_token(model, f"{i:02d}") for i in range(100)]
    digits = [single_token(model, str(i)) for i in range(10)]
    if all(t is not None for t in two_digit):
        digit_ids, positions, digit_mode = torch.tensor(two_digit), (-1,), "two-digit tokens"
    elif all(t is not None for t in digits):
        digit_ids, positions, digit_mode = torch.tensor(digits), (-2, -1), "one token a digit"
    else:
        raise SaecircuitsError(f"greater_than: {model.cfg.model_name}'s tokenizer writes neither every two-digit "
                               "number nor every digit as one token")
    return digit_ids, positions, digit_mode


def year_pair(template: str, noun: str, century: int, yy: int, positions: tuple[int, ...]) -> tuple[str, str]:
    """A greater-than prompt and its corruption (the start year's last two digits YY become 01).

    ``template`` has the fields {noun}, {start} and {end}; with one token a digit
    (``positions == (-2, -1)``) the end year gets the tens digit of YY appended.
    """
    tail = "" if len(positions) == 1 else str(yy // 10)  # digit tokenizers: append the tens digit
    end = f"{century}{tail}"
    return (template.format(noun=noun, start=f"{century}{yy:02d}", end=end),
            template.format(noun=noun, start=f"{century}01", end=end))


def greater_than(model: HookedTransformer, n: int = 64, seed: int = 0) -> GreaterThanTask:
    """Greater-than on years; corrupted: the start year's last two digits become 01."""
    rng = random.Random(seed)
    digit_ids, positions, digit_mode = year_digits(model)
    nouns = sorted(single_token_words(model, YEAR_NOUNS))
    need_words(model, "year nouns", dict.fromkeys(nouns), 1)
    clean, corrupted, groups, yys = [], [], [], []
    for _ in range(n * 3):
        noun = rng.choice(nouns)
        century = rng.randrange(YEAR_CENTURIES.start, YEAR_CENTURIES.stop)
        yy = rng.randrange(YEAR_YYS.start, YEAR_YYS.stop)
        c, x = year_pair(YEAR_TEMPLATE, noun, century, yy, positions)
        clean.append(c)
        corrupted.append(x)
        groups.append(noun)
        yys.append(yy)
    return year_task(model, clean, corrupted, groups, yys, n, digit_ids, positions, digit_mode)[0]


def year_task(model: HookedTransformer, clean: list[str], corrupted: list[str], groups: list[str], yys: list[int],
              n: int, digit_ids: torch.Tensor, positions: tuple[int, ...],
              digit_mode: str) -> tuple[GreaterThanTask, list[int]]:
    """The greater-than ``Task`` from prompt pairs (``year_pair``): the first ``n`` that tokenize alike, and their
    indices. ``yys``: each prompt's start-year YY; the rest as ``year_digits`` returns them."""
    tc, tx, keep, info = tokenize_pairs(model, "greater_than", clean, corrupted, groups)
    keep, tc, tx = keep[:n], tc[:n], tx[:n]
    yy = torch.tensor([yys[i] for i in keep])
    if len(positions) == 2 and not bool((tc[:, -1] == digit_ids[yy // 10]).all()):
        raise SaecircuitsError("greater_than: the appended tens digit is not its own token at the end of the prompt")
    info.update(n=len(keep), digits=digit_mode, examples=[clean[i] for i in keep[:3]])
    # answers/wrong are unused by the metric; keep the tens digits so the interface stays uniform
    return GreaterThanTask("greater_than", tc, tx, digit_ids[yy // 10 if len(positions) == 2 else yy],
                           digit_ids[None, :].expand(len(keep), -1).clone(), positions=positions,
                           metric_name="P(>YY)-P(<=YY)", chance=0.5, info=info, threshold=yy,
                           digit_ids=digit_ids), keep


def list_recall(model: HookedTransformer, n: int = 64, seed: int = 0, n_items: int = 3,
                answer_index: int | None = None, reorder: bool = True) -> Task:
    """The Laundry List task: the one list item not mentioned again.

    ``answer_index``: where in the list the answer stands (None: anywhere). ``reorder``: the items
    mentioned again are shuffled (else kept in list order). Wrong answers: the other list items.
    """
    if n_items < 2:
        raise SaecircuitsError(f"list_recall needs at least 2 items, got {n_items}")
    if answer_index is not None and not 0 <= answer_index < n_items:
        raise SaecircuitsError(f"list_recall: answer_index {answer_index} is outside a list of {n_items}")
    rng = random.Random(seed)
    items = single_token_words(model, LIST_ITEMS)
    need_words(model, "list items", items, 2 * n_items)
    people = [(p, pro) for p, pro in LIST_PEOPLE if single_token(model, " " + p) is not None] or [("Tom", "he")]

    def join(ws: list[str]) -> str:
        return ws[0] if len(ws) == 1 else ", ".join(ws[:-1]) + " and " + ws[-1]

    clean, corrupted, groups, ans = [], [], [], []
    for _ in range(n * 3):
        chosen = rng.sample(sorted(items), 2 * n_items)
        lst, spare = chosen[:n_items], chosen[n_items:]
        k = answer_index if answer_index is not None else rng.randrange(n_items)
        again = [w for i, w in enumerate(lst) if i != k]
        if reorder:
            rng.shuffle(again)
        who, pro = rng.choice(people)
        head = f"{who} needs to buy {join(lst)}. {pro.capitalize()} already has "
        tail = f", so {pro} still needs to buy"
        clean.append(head + join(again) + tail)
        corrupted.append(head + join(spare[: n_items - 1]) + tail)
        groups.append(f"answer at {k}")
        ans.append((items[lst[k]], [items[w] for w in again]))
    tc, tx, keep, info = tokenize_pairs(model, "list_recall", clean, corrupted, groups)
    keep, tc, tx = keep[:n], tc[:n], tx[:n]
    answers = torch.tensor([ans[i][0] for i in keep])
    wrong = torch.tensor([ans[i][1] for i in keep])
    check_in_prompt("list_recall", tc, answers, "answer item")
    info.update(n=len(keep), n_items=n_items, answer_index=answer_index, reorder=reorder,
                examples=[clean[i] for i in keep[:3]])
    return Task("list_recall", tc, tx, answers, wrong, metric_name="logit_diff answer-others",
                chance=1.0 / n_items, info=info)


def _colors(cs: list[str]) -> dict[str, str]:
    """Template fields for three colors, each with its article ("an orange", "a red")."""
    out = {f"C{i}": c for i, c in enumerate(cs)}
    out.update({f"A{i}": "an" if c[0] in "aeiou" else "a" for i, c in enumerate(cs)})
    return out


def colored_objects(model: HookedTransformer, n: int = 64, seed: int = 0) -> Task:
    """Colored objects; corrupted: the three colors replaced by three other colors."""
    rng = random.Random(seed)
    colors = single_token_words(model, COLORS)
    objects = single_token_words(model, COLOR_OBJECTS)
    surfaces = sorted(single_token_words(model, COLOR_SURFACES)) or ["table"]
    need_words(model, "colors", colors, 6)
    need_words(model, "objects", objects, 3)
    clean, corrupted, groups, ans = [], [], [], []
    for _ in range(n * 3):
        cs = rng.sample(sorted(colors), 6)
        os_ = rng.sample(sorted(objects), 3)
        q = rng.randrange(3)
        fill = {f"O{i}": os_[i] for i in range(3)} | {"OQ": os_[q], "SURFACE": rng.choice(surfaces)}
        clean.append(COLOR_TEMPLATE.format(**fill, **_colors(cs[:3])))
        corrupted.append(COLOR_TEMPLATE.format(**fill, **_colors(cs[3:])))
        groups.append(f"asks object {q}")
        ans.append((colors[cs[q]], [colors[cs[i]] for i in range(3) if i != q]))
    tc, tx, keep, info = tokenize_pairs(model, "colored_objects", clean, corrupted, groups)
    keep, tc, tx = keep[:n], tc[:n], tx[:n]
    answers = torch.tensor([ans[i][0] for i in keep])
    wrong = torch.tensor([ans[i][1] for i in keep])
    check_in_prompt("colored_objects", tc, answers, "answer color")
    info.update(n=len(keep), examples=[clean[i] for i in keep[:3]])
    return Task("colored_objects", tc, tx, answers, wrong, metric_name="logit_diff answer-other colors",
                chance=1.0 / 3, info=info)
