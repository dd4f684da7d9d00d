"""The text streams activation matching reads: batches of SAE inputs at every site, and the rows to compare.

Same model: one forward pass per batch for every site, compared at the rows the SAEs were trained
on. Two models: the same text through both, compared at character-aligned positions
(``saecircuits.text.alignment``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from saecircuits.activations.site import Site, expand_sites
from saecircuits.activations.store import ModelActivations
from saecircuits.core.errors import SaecircuitsError
from saecircuits.text.alignment import Side, aligned_batches
from saecircuits.text.config import Rule, TextConfig
from saecircuits.text.source import TextSource, iter_documents

SIDES = ("a", "b")


@dataclass
class Batch:
    """One step of a matching stream: SAE inputs of every site, and which rows to compare.

    ``acts[side][site]`` [n_side, d]; ``tokens[side]`` [n_side]; ``valid[side]`` real tokens (not
    padding); ``special[side]`` BOS / special positions; ``rows[side]`` [n] aligned row indices.
    """

    acts: dict[str, dict[str, torch.Tensor]]
    tokens: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    special: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]

    def side_a_on_both(self) -> Batch:
        """Side A's model on both sides, at side A's aligned rows (same-model pairs on a cross-model token set)."""
        return Batch(*({s: part["a"] for s in SIDES} for part in (self.acts, self.tokens, self.valid, self.special, self.rows)))


def model_batches(model, sites: list[str], text_cfg: TextConfig, tokens: int | None, batch_contexts: int) -> Iterator[Batch]:
    """Same-model stream: ONE forward pass per batch for every site; compared rows are the rows
    the SAEs were trained on (not BOS/special, not position 0)."""
    site_objs = expand_sites(model, sorted(set(sites)))
    ma = ModelActivations(model, site_objs)
    src = TextSource.for_model(text_cfg, model)
    done = 0
    for toks in src.batches(batch_contexts):
        acts = ma.activations(toks)
        keep = ma.keep_mask(toks)
        rows = keep.nonzero().squeeze(1)
        if tokens is not None and done + len(rows) > tokens:
            rows = rows[: tokens - done]
        flat = toks.reshape(-1)
        valid = torch.ones(len(flat), dtype=torch.bool)
        acts_by_key = {Site.parse(s).key: acts[Site.parse(s).key] for s in sites}
        yield Batch({"a": acts_by_key, "b": acts_by_key}, {"a": flat, "b": flat}, {"a": valid, "b": valid},
                    {"a": ~keep, "b": ~keep}, {"a": rows, "b": rows})
        done += len(rows)
        if tokens is not None and done >= tokens:
            return


def aligned_model_batches(model_a, sites_a: list[str], model_b, sites_b: list[str], text_cfg: TextConfig,
                          tokens: int | None, batch_contexts: int, rule: Rule = "boundary") -> Iterator[Batch]:
    """Two-model stream: the same text through both models, compared at character-aligned positions
    (``saecircuits.text.alignment``); one forward pass per model per batch."""
    if text_cfg.source.startswith("tokens:"):
        raise SaecircuitsError("cross-model matching needs raw text; a tokens: source has no characters to align",
                               "use stdlib, bible, a text file or hf:NAME")
    mas = {}  # a side without sites is only tokenized, never run (its positions align the other side)
    for side, model, sites in (("a", model_a, sites_a), ("b", model_b, sites_b)):
        mas[side] = ModelActivations(model, expand_sites(model, sorted(set(sites)))) if sites else None
    sa, sb = Side.for_model(model_a), Side.for_model(model_b)
    texts = (t for _, t in iter_documents(text_cfg, "train"))
    done = 0
    for ab in aligned_batches(texts, sa, sb, text_cfg.context_size, batch_contexts, rule, limit_pairs=tokens):
        rows = {"a": ab.rows_a, "b": ab.rows_b}
        if tokens is not None and done + len(ab.rows_a) > tokens:
            rows = {k: v[: tokens - done] for k, v in rows.items()}
        acts, toks, valid, special = {}, {}, {}, {}
        for side, t, v, sites in (("a", ab.tokens_a, ab.valid_a, sites_a), ("b", ab.tokens_b, ab.valid_b, sites_b)):
            toks[side] = t.reshape(-1)
            valid[side] = v
            if mas[side] is None:
                acts[side], special[side] = {}, torch.zeros_like(v)
                continue
            out = mas[side].activations(t)
            acts[side] = {Site.parse(s).key: out[Site.parse(s).key] for s in sites}
            special[side] = v & ~mas[side].keep_mask(t)
        yield Batch(acts, toks, valid, special, rows)
        done += len(rows["a"])
        if tokens is not None and done >= tokens:
            return
