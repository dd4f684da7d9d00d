"""Tensors on disk: safetensors files written atomically and read with one clear error, never pickles."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import atomic_path, refuse_pickle


def save_tensors(target: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors, atomically. Tensors are made contiguous and unshared."""
    clean = {k: v.detach().contiguous().clone() if _shares_storage(v, tensors) else v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(target, suffix=".safetensors") as tmp:
        try:
            save_file(clean, str(tmp), metadata=metadata)
        except SafetensorError as e:  # an I/O error while writing (a full disk) arrives as this
            raise OSError(str(e)) from e
    return Path(target)


def _shares_storage(v: torch.Tensor, all_tensors: dict[str, torch.Tensor]) -> bool:
    ptr = v.untyped_storage().data_ptr()
    return sum(1 for w in all_tensors.values() if w.untyped_storage().data_ptr() == ptr) > 1


def load_tensors(path: str | Path, device: str | torch.device = "cpu", what: str = "weights file") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or corrupt file is one clear error."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise SaecircuitsError(f"{what} {path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SaecircuitsError(f"{what} {path} is truncated or corrupt ({e})", "regenerate it; it was not modified") from e


def tensors_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise SaecircuitsError(f"{path} is truncated or corrupt ({e})", "regenerate it") from e
