"""The activation store: many hook points from one forward pass, shuffled at the token level.

Flow: token contexts -> one model forward (stopped after the deepest hook) -> per-site rows with
special tokens removed -> windows of ``window_contexts`` contexts -> each window permuted by a seed
-> fixed-size batches. Rows left over at the end of a window (fewer than a batch) are carried into
the next window's permutation, so every kept token is emitted exactly once an epoch.

The stream's position is ``StorePosition`` (epoch, window, offset, carry rows): a run that stops
can resume the exact same batch sequence by recomputing one window.

Memory: one window holds at most ``window_contexts * context_size`` rows per site, fixed by
``StoreConfig.buffer_tokens`` (or ``buffer_mb``), plus the carried rows (< one batch).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from transformer_lens import HookedTransformer

from saecircuits.activations.site import Site, expand_sites
from saecircuits.core import distributed
from saecircuits.core.config import Config
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model import forward as lean_forward
from saecircuits.model import hooks as hooklib
from saecircuits.model.loading import special_token_ids
from saecircuits.text.config import Split
from saecircuits.text.source import TextSource

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def site_width(model: HookedTransformer, site: Site) -> int:
    """Width of a site's rows (d_in of an SAE on it), by running one token through the model."""
    return site_widths(model, [site])[site.key]


def site_widths(model: HookedTransformer, sites: list[Site]) -> dict[str, int]:
    acts = ModelActivations(model, sites, exclude_special_tokens=False, exclude_first_position=False)
    rows = acts.activations(torch.zeros(1, 2, dtype=torch.long))
    return {k: v.shape[1] for k, v in rows.items()}


def site_rows(acts: Mapping[str, torch.Tensor], sites: Iterable[Site], n: int) -> dict[str, torch.Tensor]:
    """Each site's rows [n = batch * pos, d] (key -> rows) from hook activations [batch, pos, ...] by hook
    name; a head site takes its head."""
    out = {}
    for s in sites:
        a = acts[s.hook]
        out[s.key] = (a if s.head is None else a[:, :, s.head]).reshape(n, -1)
    return out


class StoreConfig(Config):
    """How activations are produced, filtered, shuffled and batched."""

    batch_size_tokens: int = Field(4096, ge=1, description="rows per training batch")
    model_batch_size: int = Field(8, ge=1, description="contexts per forward pass")
    buffer_tokens: int = Field(65536, ge=1, description="shuffle window in tokens (all positions)")
    buffer_mb: float | None = Field(None, gt=0, description="shuffle window as memory instead of tokens")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    exclude_special_tokens: bool = True
    exclude_first_position: bool = True
    drop_outlier_norm: float | None = Field(
        None, gt=1, description="drop tokens whose norm is more than this many times the median (attention sinks)"
    )
    normalize: Literal["none", "expected_average_only_in"] = "none"
    forward: Literal["auto", "transformer_lens"] = Field(
        "auto", description="auto: the lean forward pass where it covers the model and hooks (values equal to float "
        "rounding, ~1.2x faster on CPU); transformer_lens: TransformerLens's own forward, bit-exact with run_with_cache"
    )
    prefetch: bool = Field(False, description="compute the next window in a background thread")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> StoreConfig:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device '{self.device}' is not available on this machine; use cpu")
        return self

    def window_contexts(self, context_size: int, row_bytes: int, total_rows: int | None = None) -> int:
        """Contexts per shuffle window: the budget (tokens, or MB given the bytes of one row), and for a
        run of known length, equal windows that together just cover it, so little is computed unused."""
        tokens = self.buffer_tokens if self.buffer_mb is None else int(self.buffer_mb * 2**20 / max(row_bytes, 1))
        budget = max(1, tokens // context_size)
        if not total_rows:
            return budget
        per_context = max(1, context_size - 1)  # rows a context gives, BOS excluded (a little less with special tokens)
        n_windows = math.ceil(total_rows / (budget * per_context))
        return min(budget, math.ceil(total_rows * 1.02 / (n_windows * per_context)) + 1)


@dataclass
class Rows:
    """Activation rows of several sites for the same tokens: acts[key] is [n, d]; tokens is [n]."""

    acts: dict[str, torch.Tensor]
    tokens: torch.Tensor

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, idx: torch.Tensor | slice) -> Rows:
        if isinstance(idx, slice):
            return Rows({k: v[idx] for k, v in self.acts.items()}, self.tokens[idx])
        return Rows({k: v.index_select(0, idx) for k, v in self.acts.items()}, self.tokens.index_select(0, idx))

    @staticmethod
    def cat(parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        keys = parts[0].acts
        return Rows({k: torch.cat([p.acts[k] for p in parts]) for k in keys}, torch.cat([p.tokens for p in parts]))


class ModelActivations:
    """Rows from a model forward pass: every site from one pass that stops after the deepest hook."""

    def __init__(
        self,
        model: HookedTransformer,
        sites: list[Site],
        special_ids: list[int] | None = None,
        exclude_special_tokens: bool = True,
        exclude_first_position: bool = True,
        dtype: torch.dtype = torch.float32,
        forward: str = "auto",
    ):
        if not sites:
            raise SaecircuitsError("no hook sites to record")
        self.model, self.sites, self.dtype = model, sites, dtype
        self.hook_names = sorted({s.hook for s in sites})
        self.stop = hooklib.stop_at_layer(model, self.hook_names)
        self.lean = None
        if forward == "auto" and lean_forward.unsupported(model) is None and lean_forward.covers(model, self.hook_names):
            self.lean = lean_forward.LeanForward(model)
        if special_ids is None and exclude_special_tokens:
            special_ids = special_token_ids(model)
        self.special = torch.tensor(sorted(special_ids or []), dtype=torch.long) if exclude_special_tokens else None
        self.exclude_first = exclude_first_position
        self.forward_seconds = 0.0
        self.tokens_seen = 0
        self.tokens_excluded = 0

    @torch.inference_mode()
    def activations(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every position's activations: key -> [batch * pos, d], in the model's dtype (exact)."""
        captured: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, hook) -> None:
            captured[hook.name] = act

        start = time.perf_counter()
        tokens = tokens.to(self.model.cfg.device)
        if self.lean is not None:
            captured = self.lean.run(tokens, self.hook_names, self.stop)
        else:
            self.model.run_with_hooks(
                tokens, stop_at_layer=self.stop, fwd_hooks=[(h, save) for h in self.hook_names], return_type=None
            )
        self.forward_seconds += time.perf_counter() - start
        return site_rows(captured, self.sites, tokens.numel())

    def keep_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch * pos] True where a token is trained on: not special, not the first position."""
        keep = torch.ones_like(tokens, dtype=torch.bool)
        if self.special is not None and len(self.special):
            keep &= ~torch.isin(tokens, self.special)
        if self.exclude_first:
            keep[:, 0] = False
        return keep.reshape(-1)

    def rows(self, tokens: torch.Tensor) -> Rows:
        """Kept rows of one batch of contexts [batch, pos], cast to the store dtype."""
        acts = self.activations(tokens)
        keep = self.keep_mask(tokens)
        idx = keep.nonzero().squeeze(1).to(next(iter(acts.values())).device)
        self.tokens_seen += tokens.numel()
        self.tokens_excluded += tokens.numel() - len(idx)
        return Rows(
            {k: v.index_select(0, idx).to(self.dtype) for k, v in acts.items()},
            tokens.reshape(-1).to(idx.device).index_select(0, idx).to(torch.int32),
        )

    def windows(self, text: TextSource, window_contexts: int, model_batch_size: int,
                split: Split = "train", start_context: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[Rows]:
        """Windows of kept rows, ``window_contexts`` contexts each, from context ``start_context`` on.

        ``shard`` (rank, world): only contexts i with i % world == rank (data-parallel training)."""
        contexts = text.contexts(split)
        if shard[1] > 1:
            contexts = itertools.islice(contexts, shard[0], None, shard[1])
        for _ in range(start_context):  # resuming: tokenize past what was used, no forward pass
            next(contexts, None)
        while True:
            parts: list[Rows] = []
            batch: list = []
            taken = 0
            for ctx in contexts:
                batch.append(ctx)
                taken += 1
                if len(batch) == model_batch_size or taken == window_contexts:
                    parts.append(self.rows(torch.as_tensor(_stack(batch))))
                    batch = []
                if taken == window_contexts:
                    break
            if batch:
                parts.append(self.rows(torch.as_tensor(_stack(batch))))
            if not parts:
                return
            yield Rows.cat(parts)
            if taken < window_contexts:
                return


def _generator(seed: int, epoch: int, window: int) -> torch.Generator:
    """The permutation of one window: fixed by (seed, epoch, window), whatever ran before."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + window)


def _stack(batch: list):
    return np.stack(batch)


@dataclass
class StorePosition:
    """Where a stream is: the next window to build, how many of its rows were emitted, and the carry."""

    epoch: int = 0
    window: int = 0
    offset: int = 0
    carry: Rows | None = None
    scales: dict[str, float] = field(default_factory=dict)
    outlier_limits: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "window": self.window, "offset": self.offset,
                "scales": self.scales, "outlier_limits": self.outlier_limits}

    def carry_tensors(self) -> dict[str, torch.Tensor]:
        if self.carry is None:
            return {}
        return {**{f"carry/{k}": v for k, v in self.carry.acts.items()}, "carry_tokens": self.carry.tokens}

    @classmethod
    def from_json(cls, data: dict, tensors: dict[str, torch.Tensor]) -> StorePosition:
        carry = None
        if "carry_tokens" in tensors:
            acts = {k.removeprefix("carry/"): v for k, v in tensors.items() if k.startswith("carry/")}
            carry = Rows(acts, tensors["carry_tokens"])
        return cls(data["epoch"], data["window"], data["offset"], carry, dict(data["scales"]), dict(data["outlier_limits"]))


class ActivationStore:
    """Shuffled, normalised batches of activation rows for trainers.

    ``windows(start_window)`` gives windows of rows (from a model, or from an on-disk cache) in a
    fixed order; the store permutes each with a seed from (seed, epoch, window) and cuts batches.
    """

    def __init__(self, cfg: StoreConfig, windows, sites: list[Site], context_size: int,
                 repeat: bool = True, describe: dict | None = None):
        self.cfg, self.sites, self.context_size = cfg, sites, context_size
        self._windows = windows  # callable(epoch, start_window) -> Iterator[Rows]
        self.repeat = repeat
        self.position = StorePosition()
        self.tokens_emitted = 0
        self.tokens_dropped_outlier = 0
        self.epoch_rows = 0
        self.describe = describe or {}
        self.device = torch.device(cfg.device)
        self.shard = (0, 1)  # (rank, world) of a data-parallel run: calibration then uses every process's rows

    # ---- constructors
    @classmethod
    def from_model(cls, model: HookedTransformer, site_specs: list[str] | list[Site], text: TextSource,
                   cfg: StoreConfig, split: Split = "train", repeat: bool = True,
                   total_rows: int | None = None, shard: tuple[int, int] = (0, 1)) -> ActivationStore:
        """A store running ``model`` over ``text``; ``total_rows``: the run's length, to size windows to it.

        ``shard`` (rank, world): this process's share of a data-parallel run (every world-th context)."""
        sites = expand_sites(model, [s.key if isinstance(s, Site) else s for s in site_specs])
        dtype = DTYPES[cfg.dtype]
        acts = ModelActivations(model, sites, exclude_special_tokens=cfg.exclude_special_tokens,
                                exclude_first_position=cfg.exclude_first_position, dtype=dtype, forward=cfg.forward)
        widths = site_widths(model, sites)
        row_bytes = sum(widths.values()) * torch.finfo(dtype).bits // 8
        wc = cfg.window_contexts(text.cfg.context_size, row_bytes, total_rows)

        def windows(epoch: int, start: int) -> Iterator[Rows]:
            # a new epoch reshuffles documents: the text seed moves with the epoch
            src = text if epoch == 0 else TextSource(text.cfg.model_copy(update={"seed": text.cfg.seed + epoch}),
                                                      text.tokenizer, text.bos_id, text.sep_id)
            return acts.windows(src, wc, cfg.model_batch_size, split, start_context=start * wc, shard=shard)

        store = cls(cfg, windows, sites, text.cfg.context_size, repeat,
                    describe={"text": text.describe(), "window_contexts": wc})
        store.shard = shard
        store.model_activations = acts
        store.widths = widths
        return store

    # ---- state
    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return self.position.to_json(), self.position.carry_tensors()

    def load_state(self, data: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.position = StorePosition.from_json(data, tensors)

    @property
    def scales(self) -> dict[str, float]:
        """Per-site factor the rows were multiplied by (1.0 without normalisation); fold into SAEs on save."""
        return {s.key: self.position.scales.get(s.key, 1.0) for s in self.sites}

    # ---- streaming
    def _calibrate(self, rows: Rows) -> None:
        """From the first window: normalisation scales and outlier limits (kept for the whole run).

        Data-parallel: from the first windows of all processes together (the same numbers everywhere)."""
        p = self.position
        for k, v in rows.acts.items():
            norms = v.float().norm(dim=1)
            if self.shard[1] > 1:
                norms = distributed.all_gather_varlen(norms)
            if self.cfg.drop_outlier_norm is not None and k not in p.outlier_limits:
                p.outlier_limits[k] = float(norms.median()) * self.cfg.drop_outlier_norm
            if self.cfg.normalize == "expected_average_only_in" and k not in p.scales:
                keep = norms <= p.outlier_limits.get(k, math.inf)
                p.scales[k] = math.sqrt(v.shape[1]) / float(norms[keep].mean())

    def _filter_outliers(self, rows: Rows) -> Rows:
        if not self.position.outlier_limits:
            return rows
        keep = torch.ones(len(rows), dtype=torch.bool, device=rows.tokens.device)
        for k, v in rows.acts.items():
            keep &= v.float().norm(dim=1) <= self.position.outlier_limits[k]
        self.tokens_dropped_outlier += int((~keep).sum())
        return rows if bool(keep.all()) else rows.select(keep.nonzero().squeeze(1))

    def _window_stream(self) -> Iterator[tuple[int, int, Rows]]:
        """(epoch, window index, rows) from the current position on, across epochs when repeating."""
        epoch, start = self.position.epoch, self.position.window
        pool = ThreadPoolExecutor(1) if self.cfg.prefetch else None
        try:
            while True:
                it = self._windows(epoch, start)
                nxt: Future | None = pool.submit(next, it, None) if pool else None
                w = start
                got_any = False
                while True:
                    rows = nxt.result() if nxt is not None else next(it, None)
                    if rows is None:
                        break
                    if pool is not None:
                        nxt = pool.submit(next, it, None)
                    got_any = True
                    yield epoch, w, rows
                    w += 1
                if not self.repeat:
                    return
                if not got_any and start == 0:
                    raise SaecircuitsError("the activation source gave no rows", "check the text source and the excluded tokens")
                epoch, start = epoch + 1, 0
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def batches(self, max_tokens: int | None = None, drop_last: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        """Batches {site key: [batch_size_tokens, d]} on the store device, normalised, until ``max_tokens``.

        With ``drop_last=False`` and no repeat, the final partial batch is emitted too (every token once).
        """
        for rows in self.row_batches(max_tokens, drop_last):
            yield rows.acts

    def row_batches(self, max_tokens: int | None = None, drop_last: bool = True) -> Iterator[Rows]:
        """Like ``batches`` but with the token ids of each row."""
        bs = self.cfg.batch_size_tokens
        p = self.position
        resuming = True  # the first window is the one the position points into
        for epoch, w, rows in self._window_stream():
            if not p.scales and not p.outlier_limits and (self.cfg.normalize != "none" or self.cfg.drop_outlier_norm):
                self._calibrate(rows)
            rows = self._filter_outliers(rows)
            if p.carry is not None and len(p.carry):
                rows = Rows.cat([p.carry, rows])
            perm = torch.randperm(len(rows), generator=_generator(self.cfg.seed, epoch, w)).to(rows.tokens.device)
            offset = p.offset if resuming else 0
            resuming = False
            p.epoch, p.window = epoch, w
            n_full = (len(rows) - offset) // bs
            for i in range(n_full):
                if max_tokens is not None and self.tokens_emitted >= max_tokens:
                    return
                start = offset + i * bs
                p.offset = start + bs
                yield self._emit(rows.select(perm[start : start + bs]))
            tail = perm[offset + n_full * bs :]
            p.carry = rows.select(tail) if len(tail) else None
            p.window, p.offset = w + 1, 0
        if p.carry is not None and len(p.carry) and not drop_last:
            out = self._emit(p.carry)
            p.carry = None
            yield out

    def _emit(self, rows: Rows) -> Rows:
        acts = {}
        for k, v in rows.acts.items():
            v = v.to(self.device, non_blocking=True)
            s = self.position.scales.get(k)
            acts[k] = v * s if s is not None else v
        self.tokens_emitted += len(rows)
        return Rows(acts, rows.tokens)
