"""Activations cached on disk: safetensors shards of kept rows plus a JSON manifest.

Layout of a cache folder::

    manifest.json           model, fingerprint, sites, dtype, text source, shards done, complete
    shard_00000.safetensors {site key: [rows, d], "tokens": [rows], "context_rows": [contexts]}

Shards hold contexts in text order; ``context_rows`` (kept rows per context) lets a reader cut
windows at any context boundary, so a store reading the cache yields exactly the batches a store
running the model would (first epoch). Each shard is written atomically and then listed in the
manifest (also atomic): an interrupted build leaves only whole, listed shards and resumes after the
last one. One writer at a time (a lock file); any number of readers.
"""

from __future__ import annotations

import fcntl
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from saecircuits.activations.site import Site, expand_sites
from saecircuits.activations.store import DTYPES, ActivationStore, ModelActivations, Rows, StoreConfig
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import ensure_dir, read_json, write_json
from saecircuits.core.progress import TokenBar
from saecircuits.core.tensors import save_tensors
from saecircuits.model.loading import fingerprint
from saecircuits.text.config import Split
from saecircuits.text.source import TextSource

FORMAT = 1
MANIFEST = "manifest.json"


def _content_settings(model, sites: list[Site], text: TextSource, cfg: StoreConfig, split: str) -> dict:
    """What determines a cache's rows: two builds with equal settings write equal shards."""
    return {
        "format": FORMAT,
        "model": model.cfg.model_name,
        "fingerprint": fingerprint(model),
        "sites": [s.key for s in sites],
        "dtype": cfg.dtype,
        "exclude_special_tokens": cfg.exclude_special_tokens,
        "exclude_first_position": cfg.exclude_first_position,
        "forward": cfg.forward,
        "text": text.describe(),
        "split": split,
    }


@contextmanager
def _writer_lock(folder: Path):
    f = open(folder / ".writer.lock", "w")  # noqa: SIM115 - held for the whole build
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SaecircuitsError(f"another process is writing the activation cache {folder}", "wait for it to finish") from None
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def build_cache(
    path: str | Path,
    model,
    site_specs: list[str],
    text: TextSource,
    cfg: StoreConfig,
    n_tokens: int,
    shard_contexts: int = 256,
    split: Split = "train",
    progress: bool = True,
) -> ActivationCache:
    """Write (or finish, or reuse) a cache of ``n_tokens`` context tokens' activations."""
    folder = ensure_dir(path)
    sites = expand_sites(model, site_specs)
    settings = _content_settings(model, sites, text, cfg, split)
    n_target = math.ceil(n_tokens / text.cfg.context_size)
    with _writer_lock(folder):
        for stale in folder.glob(".shard_*.tmp"):
            stale.unlink()
        manifest = _open_manifest(folder, settings, shard_contexts, text.cfg.context_size, n_target)
        todo = manifest["n_contexts_target"] - manifest["n_contexts"]
        if todo <= 0 or manifest["source_exhausted"]:
            manifest["complete"] = True
            write_json(folder / MANIFEST, manifest)
            return ActivationCache(folder)
        acts = ModelActivations(model, sites, exclude_special_tokens=cfg.exclude_special_tokens,
                                exclude_first_position=cfg.exclude_first_position, dtype=DTYPES[cfg.dtype], forward=cfg.forward)
        contexts = text.contexts(split)
        for _ in range(manifest["n_contexts"]):
            next(contexts, None)
        bar = TokenBar("caching activations", manifest["n_contexts_target"] * text.cfg.context_size, manifest["n_contexts"] * text.cfg.context_size, enabled=progress)
        try:
            while manifest["n_contexts"] < manifest["n_contexts_target"]:
                want = min(manifest["shard_contexts"], manifest["n_contexts_target"] - manifest["n_contexts"])
                shard = _compute_shard(acts, contexts, want, cfg.model_batch_size)
                if shard is None:
                    manifest["source_exhausted"] = True
                    break
                rows, context_rows = shard
                name = f"shard_{len(manifest['shards']):05d}.safetensors"
                save_tensors(folder / name, {**rows.acts, "tokens": rows.tokens, "context_rows": context_rows})
                manifest["widths"] = {k: v.shape[1] for k, v in rows.acts.items()}
                manifest["shards"].append({"file": name, "contexts": len(context_rows), "rows": len(rows)})
                manifest["n_contexts"] += len(context_rows)
                manifest["n_rows"] += len(rows)
                write_json(folder / MANIFEST, manifest)
                bar.advance(len(context_rows) * text.cfg.context_size)
                if len(context_rows) < want:
                    manifest["source_exhausted"] = True
                    break
        finally:
            bar.close()
        manifest["complete"] = True
        write_json(folder / MANIFEST, manifest)
    return ActivationCache(folder)


def _open_manifest(folder: Path, settings: dict, shard_contexts: int, context_size: int, n_target: int) -> dict:
    """The manifest to build on: the folder's own (made with the same settings; its target raised to
    ``n_target`` contexts if that is more), or a new one for an empty folder."""
    if (folder / MANIFEST).exists():
        manifest = _read_manifest(folder)
        _check_same(manifest, settings, folder)
        manifest["n_contexts_target"] = max(manifest["n_contexts_target"], n_target)
        return manifest
    return {**settings, "shard_contexts": shard_contexts, "context_size": context_size,
            "widths": {}, "shards": [], "n_contexts": 0, "n_rows": 0, "n_contexts_target": n_target,
            "complete": False, "source_exhausted": False}


def _compute_shard(acts: ModelActivations, contexts: Iterator[np.ndarray], want: int, batch: int):
    parts: list[Rows] = []
    per_context: list[torch.Tensor] = []
    taken = 0
    while taken < want:
        chunk = [c for _, c in zip(range(min(batch, want - taken)), contexts, strict=False)]
        if not chunk:
            break
        tokens = torch.as_tensor(np.stack(chunk))
        per_context.append(acts.keep_mask(tokens).reshape(len(chunk), -1).sum(1).to(torch.int32))
        parts.append(acts.rows(tokens))
        taken += len(chunk)
    if not parts:
        return None
    return Rows.cat(parts), torch.cat(per_context)


def _read_manifest(folder: Path) -> dict:
    m = read_json(folder / MANIFEST, what="activation cache manifest")
    if not isinstance(m, dict) or m.get("format") != FORMAT or "shards" not in m:
        raise SaecircuitsError(f"{folder} is not an activation cache of format {FORMAT}", "delete it and build again")
    return m


def _check_same(manifest: dict, settings: dict, folder: Path) -> None:
    for key in ("fingerprint", "sites", "dtype", "exclude_special_tokens", "exclude_first_position", "forward", "text", "split"):
        if manifest.get(key) != settings[key]:
            what = "another model" if key == "fingerprint" else f"other settings ({key})"
            raise SaecircuitsError(
                f"the activation cache {folder} was made for {what}: {manifest.get(key)!r} != {settings[key]!r}",
                "choose another cache folder or delete this one",
            )


class ActivationCache:
    """Read access to a cache folder: any number of processes may read one at a time."""

    def __init__(self, path: str | Path):
        self.folder = Path(path)
        if not (self.folder / MANIFEST).exists():
            raise SaecircuitsError(f"{self.folder} is not an activation cache (no {MANIFEST})", "build one with `saecircuits cache`")
        self.manifest = _read_manifest(self.folder)
        self.sites = [Site.parse(k) for k in self.manifest["sites"]]
        self.shards = self.manifest["shards"]
        starts = np.cumsum([0] + [s["contexts"] for s in self.shards])
        self._shard_start = starts  # first context of each shard

    @property
    def n_contexts(self) -> int:
        return self.manifest["n_contexts"]

    @property
    def context_size(self) -> int:
        return self.manifest["context_size"]

    def check(self, model=None, site_keys: list[str] | None = None) -> None:
        """A clear error when the cache was made for another model or lacks a site."""
        if model is not None and fingerprint(model) != self.manifest["fingerprint"]:
            raise SaecircuitsError(
                f"the activation cache {self.folder} was made for {self.manifest['model']}, not {model.cfg.model_name}",
                "use a cache built for this model or build one",
            )
        missing = [k for k in site_keys or [] if k not in self.manifest["sites"]]
        if missing:
            raise SaecircuitsError(f"the activation cache {self.folder} has no site {missing[0]}",
                                   f"it has: {', '.join(self.manifest['sites'])}")

    def _open(self, i: int):
        path = self.folder / self.shards[i]["file"]
        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as e:
            raise SaecircuitsError(f"activation cache shard {path} is missing or corrupt ({e})",
                                   "delete the cache folder and build it again") from None

    def _shard_rows(self, i: int, keys: list[str], c0: int, c1: int) -> Rows:
        """Rows of contexts [c0, c1) (indices within shard i)."""
        with self._open(i) as f:
            try:
                per = f.get_tensor("context_rows")
                bounds = torch.cat([torch.zeros(1, dtype=torch.long), per.long().cumsum(0)])
                a, b = int(bounds[c0]), int(bounds[c1])
                acts = {k: f.get_slice(k)[a:b] for k in keys}
                tokens = f.get_slice("tokens")[a:b]
            except (SafetensorError, RuntimeError, KeyError) as e:
                raise SaecircuitsError(f"activation cache shard {self.shards[i]['file']} is corrupt ({e})",
                                       "delete the cache folder and build it again") from None
        if int(bounds[-1]) != self.shards[i]["rows"]:
            raise SaecircuitsError(f"activation cache shard {self.shards[i]['file']} does not match its manifest entry",
                                   "delete the cache folder and build it again")
        return Rows(acts, tokens)

    def windows(self, keys: list[str], window_contexts: int, start_window: int = 0,
                shard: tuple[int, int] = (0, 1)) -> Iterator[Rows]:
        """Rows of consecutive windows of ``window_contexts`` contexts, from ``start_window`` on.

        ``shard`` (rank, world): this process's windows of a data-parallel run, the cache's windows
        rank, rank + world, rank + 2·world, ... (``start_window`` counts this process's windows)."""
        rank, world = shard
        w = start_window
        while (w * world + rank) * window_contexts < self.n_contexts:
            g = w * world + rank
            c0, c1 = g * window_contexts, min((g + 1) * window_contexts, self.n_contexts)
            parts = []
            i = int(np.searchsorted(self._shard_start, c0, side="right")) - 1
            while i < len(self.shards) and self._shard_start[i] < c1:
                s0 = self._shard_start[i]
                parts.append(self._shard_rows(i, keys, max(c0, s0) - s0, min(c1, self._shard_start[i + 1]) - s0))
                i += 1
            yield Rows.cat(parts)
            w += 1

    def store(self, cfg: StoreConfig, site_keys: list[str] | None = None, repeat: bool = True,
              total_rows: int | None = None, shard: tuple[int, int] = (0, 1)) -> ActivationStore:
        """An ActivationStore streaming this cache (the same batches as the model store, first epoch).

        ``shard`` (rank, world): this process's share of a data-parallel run (every world-th window)."""
        keys = site_keys or self.manifest["sites"]
        self.check(site_keys=keys)
        if self.manifest["dtype"] != cfg.dtype:
            raise SaecircuitsError(f"the activation cache holds {self.manifest['dtype']}, the store asks for {cfg.dtype}",
                                   f"set store.dtype to {self.manifest['dtype']}")
        widths = {k: self.manifest["widths"][k] for k in keys}
        row_bytes = sum(widths.values()) * torch.finfo(DTYPES[cfg.dtype]).bits // 8
        wc = cfg.window_contexts(self.context_size, row_bytes, total_rows)

        def windows(epoch: int, start: int) -> Iterator[Rows]:
            return self.windows(keys, wc, start, shard)

        store = ActivationStore(cfg, windows, [Site.parse(k) for k in keys], self.context_size, repeat,
                                describe={"cache": str(self.folder), "window_contexts": wc})
        store.widths = widths
        store.shard = shard
        return store



def cache_size_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("shard_*.safetensors"))
