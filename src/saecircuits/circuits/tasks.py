"""Circuit tasks: clean and corrupted prompts, answer tokens and a differentiable metric.

A ``Task`` holds token tensors, never strings to re-tokenize: every prompt of a task (clean and
corrupted) has the same token count, so positions align across the batch and across each
clean/corrupted pair, and answers are single tokens of the model's own tokenizer (candidate
words are filtered per tokenizer; a template whose prompts tokenize to another length is dropped
and recorded in ``Task.info``).

Tasks:

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

``evaluate(model, task)`` reports clean and corrupted metrics and accuracy, and flags a task the
model cannot do (accuracy not above chance) instead of failing.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from transformer_lens import HookedTransformer

from saecircuits.core.errors import SaecircuitsError

TASKS = ("ioi", "induction", "greater_than", "list_recall", "colored_objects")


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

    def _p_greater(self, logits: torch.Tensor) -> torch.Tensor:
        yy = self.threshold.to(logits.device)
        ids = self.digit_ids.to(logits.device)
        if len(self.positions) == 1:  # one token per two-digit year
            p = logits[:, -1].softmax(-1)[:, ids]  # [n, 100]
            above = torch.arange(100, device=logits.device)[None, :] > yy[:, None]
            return (p * above).sum(1) - (p * ~above).sum(1)
        tens, units = yy // 10, yy % 10
        digits = torch.arange(10, device=logits.device)[None, :]
        p1 = logits[:, -2].softmax(-1)[:, ids]  # P(tens digit)
        p2 = logits[:, -1].softmax(-1)[:, ids]  # P(units digit | tens digit of YY)
        p_tie = p1.gather(1, tens[:, None])[:, 0]
        greater = (p1 * (digits > tens[:, None])).sum(1) + p_tie * (p2 * (digits > units[:, None])).sum(1)
        not_greater = (p1 * (digits < tens[:, None])).sum(1) + p_tie * (p2 * (digits <= units[:, None])).sum(1)
        return greater - not_greater

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        return self._p_greater(logits)

    def correct(self, logits: torch.Tensor) -> torch.Tensor:
        return self._p_greater(logits) > 0


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


def _need(model: HookedTransformer, what: str, found: dict, k: int) -> None:
    if len(found) < k:
        raise SaecircuitsError(f"only {len(found)} of the candidate {what} are single tokens for "
                               f"{model.cfg.model_name}; the task needs at least {k}",
                               "this tokenizer splits common words; pass your own word lists")


def _tokenize_pairs(model: HookedTransformer, name: str, clean: list[str], corrupted: list[str],
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


def _check_in_prompt(name: str, tokens: torch.Tensor, ids: torch.Tensor, what: str) -> None:
    """Every id must occur in its prompt (a tokenization check: the word was written as that token)."""
    present = (tokens[:, :, None] == ids[:, None, :]).any(1).all(1) if ids.dim() == 2 else (tokens == ids[:, None]).any(1)
    if not bool(present.all()):
        bad = int((~present).nonzero()[0, 0])
        raise SaecircuitsError(f"task {name}: the {what} of prompt {bad} is not one of its tokens (tokenization differs "
                               "in context)")


# --- the tasks ----------------------------------------------------------------------------------

def ioi(model: HookedTransformer, n: int = 64, seed: int = 0, templates: Sequence[str] = IOI_TEMPLATES) -> Task:
    """Indirect object identification; corrupted with a third name in place of the repeated subject (ABC)."""
    rng = random.Random(seed)
    names = single_token_words(model, NAMES)
    places = single_token_words(model, IOI_PLACES)
    objects = single_token_words(model, IOI_OBJECTS)
    _need(model, "names", names, 3)
    _need(model, "places", places, 1)
    _need(model, "objects", objects, 1)
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
    tc, tx, keep, info = _tokenize_pairs(model, "ioi", clean, corrupted, groups)
    keep = keep[:n]
    tc, tx = tc[:n], tx[:n]
    answers = torch.tensor([ans[i][0] for i in keep])
    wrong = torch.tensor([[ans[i][1]] for i in keep])
    _check_in_prompt("ioi", tc, answers, "indirect object")
    _check_in_prompt("ioi", tc, wrong, "subject")
    info.update(n=len(keep), names=len(names), examples=[clean[i] for i in keep[:3]],
                corrupted_examples=[corrupted[i] for i in keep[:3]])
    return Task("ioi", tc, tx, answers, wrong, metric_name="logit_diff IO-S", chance=0.5, info=info)


def induction(model: HookedTransformer, n: int = 64, seed: int = 0, half: int = 10,
              vocab: Sequence[int] | None = None, bos: bool | None = None) -> Task:
    """Repeated random tokens ``x1..xh x1..x(h-1)`` -> ``xh``; corrupted: the first copy is fresh tokens.

    ``vocab``: token ids to draw from (default: every non-special id). Wrong answer: the fresh
    token at the same place in the corrupted copy (what induction would predict there).
    """
    from saecircuits.model.loading import special_token_ids

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


def greater_than(model: HookedTransformer, n: int = 64, seed: int = 0) -> GreaterThanTask:
    """Greater-than on years; corrupted: the start year's last two digits become 01."""
    rng = random.Random(seed)
    two_digit = [single_token(model, f"{i:02d}") for i in range(100)]
    digits = [single_token(model, str(i)) for i in range(10)]
    if all(t is not None for t in two_digit):
        digit_ids, positions, digit_mode = torch.tensor(two_digit), (-1,), "two-digit tokens"
    elif all(t is not None for t in digits):
        digit_ids, positions, digit_mode = torch.tensor(digits), (-2, -1), "one token a digit"
    else:
        raise SaecircuitsError(f"greater_than: {model.cfg.model_name}'s tokenizer writes neither every two-digit "
                               "number nor every digit as one token")
    nouns = sorted(single_token_words(model, YEAR_NOUNS))
    _need(model, "year nouns", dict.fromkeys(nouns), 1)
    clean, corrupted, groups, yys = [], [], [], []
    for _ in range(n * 3):
        noun, century, yy = rng.choice(nouns), rng.randrange(11, 18), rng.randrange(2, 99)
        tail = "" if len(positions) == 1 else str(yy // 10)  # digit tokenizers: append the tens digit
        clean.append(f"The {noun} lasted from the year {century}{yy:02d} to the year {century}{tail}")
        corrupted.append(f"The {noun} lasted from the year {century}01 to the year {century}{tail}")
        groups.append(noun)
        yys.append(yy)
    tc, tx, keep, info = _tokenize_pairs(model, "greater_than", clean, corrupted, groups)
    keep, tc, tx = keep[:n], tc[:n], tx[:n]
    yy = torch.tensor([yys[i] for i in keep])
    if len(positions) == 2 and not bool((tc[:, -1] == digit_ids[yy // 10]).all()):
        raise SaecircuitsError("greater_than: the appended tens digit is not its own token at the end of the prompt")
    info.update(n=len(keep), digits=digit_mode, examples=[clean[i] for i in keep[:3]])
    # answers/wrong are unused by the metric; keep the tens digits so the interface stays uniform
    return GreaterThanTask("greater_than", tc, tx, digit_ids[yy // 10 if len(positions) == 2 else yy],
                           digit_ids[None, :].expand(len(keep), -1).clone(), positions=positions,
                           metric_name="P(>YY)-P(<=YY)", chance=0.5, info=info, threshold=yy, digit_ids=digit_ids)


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
    _need(model, "list items", items, 2 * n_items)
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
    tc, tx, keep, info = _tokenize_pairs(model, "list_recall", clean, corrupted, groups)
    keep, tc, tx = keep[:n], tc[:n], tx[:n]
    answers = torch.tensor([ans[i][0] for i in keep])
    wrong = torch.tensor([ans[i][1] for i in keep])
    _check_in_prompt("list_recall", tc, answers, "answer item")
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
    _need(model, "colors", colors, 6)
    _need(model, "objects", objects, 3)
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
    tc, tx, keep, info = _tokenize_pairs(model, "colored_objects", clean, corrupted, groups)
    keep, tc, tx = keep[:n], tc[:n], tx[:n]
    answers = torch.tensor([ans[i][0] for i in keep])
    wrong = torch.tensor([ans[i][1] for i in keep])
    _check_in_prompt("colored_objects", tc, answers, "answer color")
    info.update(n=len(keep), examples=[clean[i] for i in keep[:3]])
    return Task("colored_objects", tc, tx, answers, wrong, metric_name="logit_diff answer-other colors",
                chance=1.0 / 3, info=info)


BUILDERS: dict[str, Callable[..., Task]] = {
    "ioi": ioi, "induction": induction, "greater_than": greater_than, "list_recall": list_recall,
    "colored_objects": colored_objects,
}


def build(name: str, model: HookedTransformer, n: int = 64, seed: int = 0, **kw) -> Task:
    """A task by name (one of ``TASKS``) for this model."""
    key = name.replace("-", "_").lower()
    if key not in BUILDERS:
        raise SaecircuitsError(f"unknown task '{name}'", f"choose one of: {', '.join(TASKS)}")
    if n < 1:
        raise SaecircuitsError(f"the number of prompts must be at least 1, got {n}")
    return BUILDERS[key](model, n=n, seed=seed, **kw)


# --- running a task -----------------------------------------------------------------------------

@torch.no_grad()
def task_logits(model: HookedTransformer, tokens: torch.Tensor, positions: Sequence[int],
                batch_size: int = 32) -> torch.Tensor:
    """Logits at ``positions`` for every prompt: [n, len(positions), vocab] (only those positions are unembedded)."""
    out = []
    pos = list(positions)
    for i in range(0, len(tokens), batch_size):
        resid = model(tokens[i: i + batch_size].to(model.cfg.device), stop_at_layer=model.cfg.n_layers)
        out.append(unembed(model, resid[:, pos]))
    return torch.cat(out)


def unembed(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """Final norm and unembedding of residual vectors [..., d_model] -> [..., vocab]."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return apply_softcap(model.unembed(resid), model.cfg.output_logits_soft_cap)


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
    from scipy.stats import binomtest

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
        built = [list_recall(model, n=n, seed=seed, n_items=size, answer_index=k, reorder=reorder) for k, reorder in variants]
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
