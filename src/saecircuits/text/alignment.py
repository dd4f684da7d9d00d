"""Align two tokenizations of the same text through character offsets.

Two models with different tokenizers (SmolLM2 and Gemma-3) cut the same text into different
tokens, so "the activation at token i" means nothing across them. Both fast tokenizers report,
for every token, the span of characters it came from (``return_offsets_mapping=True``); the
streams are compared at positions chosen by one of two rules:

``boundary`` (the default): token i of A and token j of B are compared when both end at the same
character c, and each is the *last* token ending there. At such a pair both models have read
exactly the same text, ``text[:c]`` (a character split into several byte tokens gives all of them
the same end offset; only the last one has seen the whole character, so the earlier ones are
never compared). Positions where only one tokenization has a boundary are skipped.

``cover``: every token i of A is compared with the token j of B whose character span covers A's
last character ``text[end_i - 1]`` (again the last such token of A per end offset). Every A
position gets a partner, but B may have read a little further than A (to the end of its token).

BOS tokens (SmolLM2's ``<|im_start|>``, Gemma's ``<bos>``), padding and special tokens have no
characters and are never compared.

``aligned_batches`` turns documents into fixed-size context pairs for two models: a document is
cut into character spans short enough for both tokenizers (cut where both have a token boundary),
each span is tokenized by both, each
context is the model's BOS followed by the span's tokens, right-padded to ``context_size`` (a
causal model's activations at real positions do not depend on the padding after them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.text.config import Rule


@dataclass
class Tokenized:
    """One tokenization of a text: ids, and each token's character span [starts, ends) (int64 arrays)."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def truncate(self, n: int) -> Tokenized:
        """The first n tokens, less a trailing character left incomplete (byte tokens sharing an end offset)."""
        if n < len(self) and n > 0 and self.ends[n - 1] == self.ends[n]:
            n = int(np.searchsorted(self.ends, self.ends[n - 1], side="left"))
        return Tokenized(self.ids[:n], self.starts[:n], self.ends[:n])

    def fit_end(self, first: int, n: int) -> int:
        """The furthest character end reached by at most n tokens from index ``first`` on, whole characters only."""
        i = min(first + n, len(self)) - 1
        e = int(self.ends[i])
        if i + 1 < len(self) and self.ends[i + 1] == e:
            j = int(np.searchsorted(self.ends, e, side="left")) - 1
            if j >= first:
                e = int(self.ends[j])
        return e


def tokenize(tokenizer, text: str) -> Tokenized:
    """Token ids and character offsets of ``text`` (no special tokens added)."""
    if not getattr(tokenizer, "is_fast", False):
        raise SaecircuitsError(
            f"tokenizer {type(tokenizer).__name__} gives no character offsets",
            "cross-model alignment needs a fast (Rust) tokenizer: load it with use_fast=True",
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return Tokenized(np.asarray(enc["input_ids"], dtype=np.int64), off[:, 0], off[:, 1])


def _last_per_end(ends: np.ndarray) -> np.ndarray:
    """Indices of the tokens that are the last to end at their end offset (offsets are non-decreasing)."""
    if len(ends) == 0:
        return np.zeros(0, dtype=np.int64)
    last = np.ones(len(ends), dtype=bool)
    last[:-1] = ends[1:] != ends[:-1]
    return np.nonzero(last & (ends > 0))[0]


def align(a: Tokenized, b: Tokenized, rule: Rule = "boundary") -> tuple[np.ndarray, np.ndarray]:
    """Positions (idx_a, idx_b) to compare, ascending in A; see the module docstring for the rules."""
    ia = _last_per_end(a.ends)
    if rule == "boundary":
        ib = _last_per_end(b.ends)
        _, pa, pb = np.intersect1d(a.ends[ia], b.ends[ib], assume_unique=True, return_indices=True)
        return ia[pa], ib[pb]
    if rule == "cover":
        last_char = a.ends[ia] - 1
        # the first B token ending after last_char, i.e. ends_b > last_char; it covers it if it starts at or before it
        j = np.searchsorted(b.ends, last_char, side="right")
        ok = j < len(b)
        ok[ok] &= b.starts[j[ok]] <= last_char[ok]
        # several B tokens may share that span (byte fallback): take the last one ending where j ends
        jj = j[ok]
        if len(jj):
            jj = np.searchsorted(b.ends, b.ends[jj], side="right") - 1
        return ia[ok], jj
    raise SaecircuitsError(f"alignment rule must be 'boundary' or 'cover', got {rule!r}")


@dataclass
class AlignedBatch:
    """Contexts of the same text for two models and the rows to compare.

    ``tokens_a`` [B, T_a], ``tokens_b`` [B, T_b] (BOS first, right-padded); ``valid_a``/``valid_b``
    [B*T] True at real tokens (BOS included, padding not); ``rows_a``/``rows_b`` [n] flat indices
    into B*T of the aligned positions, pairwise.
    """

    tokens_a: torch.Tensor
    tokens_b: torch.Tensor
    valid_a: torch.Tensor
    valid_b: torch.Tensor
    rows_a: torch.Tensor
    rows_b: torch.Tensor


@dataclass
class Side:
    """One model's tokenizer, BOS and padding id, the ids never compared, and its context size."""

    tokenizer: object
    bos_id: int | None
    pad_id: int
    special_ids: frozenset[int] = frozenset()

    @classmethod
    def for_model(cls, model) -> Side:
        from saecircuits.model.loading import special_token_ids

        tok = model.tokenizer
        bos = tok.bos_token_id if model.cfg.default_prepend_bos else None
        pad = tok.pad_token_id if tok.pad_token_id is not None else (bos if bos is not None else 0)
        return cls(tok, bos, int(pad), frozenset(special_token_ids(model)))


def _spans(text: str, a: Tokenized, b: Tokenized, body: int) -> Iterator[tuple[int, int]]:
    """Character spans [c0, c1) of ``text`` holding at most ``body`` tokens of either tokenization,
    cut where both tokenizations have a boundary (so neither sees a word cut in two) when one exists."""
    common = np.intersect1d(a.ends[_last_per_end(a.ends)], b.ends[_last_per_end(b.ends)])
    c0 = 0
    while True:
        pa = int(np.searchsorted(a.ends, c0, side="right"))
        pb = int(np.searchsorted(b.ends, c0, side="right"))
        if pa >= len(a) or pb >= len(b):
            return
        c1 = min(a.fit_end(pa, body), b.fit_end(pb, body))
        k = int(np.searchsorted(common, c1, side="right")) - 1
        if k >= 0 and common[k] > c0:
            c1 = int(common[k])
        if c1 <= c0:
            return
        yield c0, c1
        c0 = c1


def aligned_contexts(texts: Iterable[str], a: Side, b: Side, context_size: int,
                     rule: Rule = "boundary", min_pairs: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(ids_a, ids_b, pos_a, pos_b) per context: BOS + tokens of one span, and the aligned positions.

    Positions count the BOS (position 0 is BOS when the model has one). Contexts hold at most
    ``context_size`` tokens; a span that re-tokenizes longer is cut, and only positions inside
    both cut streams are compared. Special tokens are never compared.
    """
    body = context_size - 1
    for text in texts:
        if not text:
            continue
        full_a, full_b = tokenize(a.tokenizer, text), tokenize(b.tokenizer, text)
        for c0, c1 in _spans(text, full_a, full_b, body):
            chunk = text[c0:c1]
            ta = tokenize(a.tokenizer, chunk).truncate(body if a.bos_id is not None else context_size)
            tb = tokenize(b.tokenizer, chunk).truncate(body if b.bos_id is not None else context_size)
            ia, ib = align(ta, tb, rule)
            if len(ia):
                keep = ~np.isin(ta.ids[ia], list(a.special_ids)) & ~np.isin(tb.ids[ib], list(b.special_ids))
                ia, ib = ia[keep], ib[keep]
            if len(ia) < min_pairs:
                continue
            off_a, off_b = int(a.bos_id is not None), int(b.bos_id is not None)
            ids_a = np.concatenate([[a.bos_id], ta.ids]) if off_a else ta.ids
            ids_b = np.concatenate([[b.bos_id], tb.ids]) if off_b else tb.ids
            yield ids_a, ids_b, ia + off_a, ib + off_b


def aligned_batches(texts: Iterable[str], a: Side, b: Side, context_size: int, batch_size: int,
                    rule: Rule = "boundary", limit_pairs: int | None = None) -> Iterator[AlignedBatch]:
    """Batches of ``batch_size`` aligned context pairs, [B, context_size] each; stops after ``limit_pairs`` pairs."""
    buf: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    done = 0
    for item in aligned_contexts(texts, a, b, context_size, rule):
        buf.append(item)
        done += len(item[2])
        if len(buf) == batch_size or (limit_pairs is not None and done >= limit_pairs):
            yield _collate(buf, a, b, context_size)
            buf = []
        if limit_pairs is not None and done >= limit_pairs:
            return
    if buf:
        yield _collate(buf, a, b, context_size)


def _collate(items, a: Side, b: Side, T: int) -> AlignedBatch:
    B = len(items)
    tok_a = np.full((B, T), a.pad_id, dtype=np.int64)
    tok_b = np.full((B, T), b.pad_id, dtype=np.int64)
    valid_a = np.zeros((B, T), dtype=bool)
    valid_b = np.zeros((B, T), dtype=bool)
    rows_a, rows_b = [], []
    for i, (ids_a, ids_b, pa, pb) in enumerate(items):
        tok_a[i, : len(ids_a)] = ids_a
        tok_b[i, : len(ids_b)] = ids_b
        valid_a[i, : len(ids_a)] = True
        valid_b[i, : len(ids_b)] = True
        rows_a.append(i * T + pa)
        rows_b.append(i * T + pb)
    return AlignedBatch(
        torch.from_numpy(tok_a), torch.from_numpy(tok_b),
        torch.from_numpy(valid_a.reshape(-1)), torch.from_numpy(valid_b.reshape(-1)),
        torch.from_numpy(np.concatenate(rows_a)), torch.from_numpy(np.concatenate(rows_b)),
    )
