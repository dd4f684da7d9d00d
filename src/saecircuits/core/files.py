"""Atomic writes and safe reads: safetensors and JSON only, never pickles.

A write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target, so a reader never sees a half-written file and a crash leaves the old file intact.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saecircuits.core.errors import SaecircuitsError

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def ensure_dir(path: str | Path) -> Path:
    """Create a folder (and parents); a clear error if a file is in the way or it cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SaecircuitsError(f"output path {path} is a file, not a folder", "choose another --out folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaecircuitsError(f"cannot create folder {path}: {e.strerror}", "check the path and permissions") from e
    return path


def check_output_dir(target: str | Path) -> Path:
    """Fail now, before any work, when ``target`` cannot become a staged output folder: a file is in the way, or
    its parent cannot be created or written."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise SaecircuitsError(f"output path {target} is a file, not a folder", "choose another --out folder")
    ensure_dir(target.parent)
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=f".{target.name}-check-", dir=target.parent))
    except OSError as e:
        raise SaecircuitsError(f"cannot write beside {target}: {e.strerror}", "choose a writable --out folder") from e
    return target


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``."""
    target = Path(target)
    ensure_dir(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise SaecircuitsError(
            f"could not write {target}: {e.strerror or e}", "free disk space or choose another folder; nothing was replaced"
        ) from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json(target: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Strict JSON (see ``plain_json``): NaN and infinities are written as null."""
    return write_text(target, json.dumps(plain_json(obj), indent=indent, allow_nan=False) + "\n")


def plain_json(obj: Any) -> Any:
    """A copy made of JSON types only: NaN / inf floats become None, tensors and arrays lists, numpy
    scalars Python numbers, paths and dtypes strings, networkx graphs node-link data, dict keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if type(obj).__module__ == "torch" and type(obj).__name__ == "dtype":  # torch.dtype, without importing torch
        return str(obj).removeprefix("torch.")
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__module__.startswith("networkx"):
        import networkx as nx

        return plain_json(nx.node_link_data(obj, edges="edges"))
    if hasattr(obj, "tolist"):  # tensors, arrays and numpy scalars
        return plain_json(obj.tolist())
    if hasattr(obj, "item"):
        return plain_json(obj.item())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_csv_rows(path: str | Path, columns: tuple[str, ...], what: str = "CSV") -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV whose header holds ``columns``; a missing, unreadable or wrong file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise SaecircuitsError(f"{what} {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise SaecircuitsError(f"{path} is not a readable UTF-8 CSV ({e})") from None
    if not rows or not set(columns) <= set(rows[0]):
        have = ", ".join(rows[0]) if rows else "no rows"
        raise SaecircuitsError(f"{path} needs a header with columns {' and '.join(columns)} (it has: {have})")
    return rows


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise SaecircuitsError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SaecircuitsError(f"{what} {path} is not valid JSON: {e}", "the file is corrupt; regenerate it") from e


def refuse_pickle(path: str | Path) -> None:
    """Refuse file types that are pickles: loading them can run arbitrary code."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise SaecircuitsError(
            f"{path} looks like a pickle file ({path.suffix}); saecircuits never loads pickles because they can run code",
            "convert it to safetensors (safetensors.torch.save_file) and pass that instead",
        )


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (main thread only), so a short group of writes (a folder
    swap, a result's JSON and its figures) happens whole; a signal that came meanwhile is acted on after.

    The Python-level handlers are swapped for one that notes the signal (masking the signal in this thread
    alone would not do: the kernel hands it to another thread, and Python still runs the handler here)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    received: list[tuple[int, Any]] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append((signum, frame))) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if received:
            signum, frame = received[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler in (signal.SIG_DFL, None):
                signal.raise_signal(signum)


def replace_dir(tmp_dir: Path, target: Path) -> None:
    """Move a fully written folder into place; an existing target is swapped out, then removed.
    The two renames are not split by Ctrl-C or SIGTERM (``uninterrupted``)."""
    target = Path(target)
    with uninterrupted():
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp_dir, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, target)
        _fsync_dir(target.parent)


@contextlib.contextmanager
def staged_dir(target: str | Path, prefix: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target`` (its name starts with ``prefix``, by default
    ``.{target's name}-``) to write into.

    When the block ends normally the folder is swapped into place whole (``replace_dir``); on any
    exception, KeyboardInterrupt included, it is removed and ``target`` is left as it was. The
    parent of ``target`` must exist."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def moved_paths(obj: Any, old: Path, new: Path) -> Any:
    """``obj`` (dicts and lists of paths, as ``str`` or ``Path``) with every path under ``old`` moved under ``new``:
    what a writer into a ``staged_dir`` returns, as it is once the folder is swapped into place."""
    if isinstance(obj, dict):
        return {k: moved_paths(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [moved_paths(v, old, new) for v in obj]
    if isinstance(obj, (str, Path)) and Path(obj).is_relative_to(old):
        return type(obj)(Path(new) / Path(obj).relative_to(old))
    return obj


def recover_dir(target: str | Path) -> Path:
    """Undo a ``replace_dir`` killed between its two renames: the previous folder is put back in place."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        os.replace(old, target)
    return target


# the PDF without its creation date, so the same figure always gives the same bytes
_FIGURE_METADATA = {"pdf": {"CreationDate": None}}


def save_figure(fig, stem: str | Path, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write a matplotlib figure as ``stem.png`` and ``stem.pdf`` (vector), each atomically, then close it.

    The extension is appended to ``stem``, never substituted (``similarity_share_r_gt_0.7`` keeps its ``.7``)."""
    import matplotlib.pyplot as plt

    stem = Path(stem)
    paths = []
    try:
        for ext in formats:
            target = stem.parent / f"{stem.name}.{ext}"
            with atomic_path(target, suffix=f".{ext}") as tmp:
                fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight", metadata=_FIGURE_METADATA.get(ext))
            paths.append(target)
    finally:
        plt.close(fig)
    return paths
