"""Several training processes under torchrun (torch.distributed): the few collectives training needs.

Launch: ``torchrun --nproc_per_node N -m saecircuits train CONFIG.yaml``. torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``init`` joins the process group
from them (gloo for CPU tensors, NCCL for CUDA ones). Without torchrun, or with one process, nothing
here runs a collective and training is exactly the single-process code path.

Two ways to use N processes (``TrainConfig.parallel``):

- ``data``: every process trains every SAE on its own share of the text; gradients are averaged
  before each step, and everything else that depends on data (b_dec initialisation, normalisation
  scales, outlier limits, dead latents, BatchTopK's selection and threshold, logged metrics) is
  computed over the global batch, so the run equals one process fed the concatenation of the
  processes' batches (to float rounding).
- ``saes``: the SAEs are split across processes (balanced by parameter count); each streams the
  full text for its own SAEs' sites only, and no gradients are exchanged.

Only rank 0 writes files and logs to W&B.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from saecircuits.core.errors import SaecircuitsError

# collectives wait this long for the slowest process (rank 0 may be building an activation cache)
TIMEOUT = timedelta(hours=6)
# at exit, how long a process waits for the others before leaving the group
EXIT_WAIT = timedelta(minutes=10)


def launched() -> bool:
    """Started by torchrun (or an equivalent launcher) with more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(device: str = "cpu") -> bool:
    """Join torchrun's process group when launched with several processes; True when distributed."""
    if active():
        return True
    if not launched():
        return False
    if not dist.is_available():
        raise SaecircuitsError("this torch build has no torch.distributed", "install a torch with distributed support")
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    atexit.register(_finish)
    return True


def _finish() -> None:
    """At exit: wait for the other processes (rank 0 may still be writing), then leave the group.

    Leaving while a peer is still connected aborts gloo ("terminate called without an active
    exception"); a peer that already failed is waited for at most ``EXIT_WAIT``."""
    if not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=EXIT_WAIT)
        else:
            dist.barrier()
    except RuntimeError:
        pass  # a peer is gone: nothing left to wait for
    dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


# ---------------------------------------------------------------- tensors


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all processes, in one flat all-reduce.

    A parameter without a gradient takes part with zeros (so every process sends the same layout)."""
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    i = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[i : i + n].view_as(p)
        i += n


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` (same shape everywhere), concatenated along dim 0 in rank order."""
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_varlen(x: torch.Tensor) -> torch.Tensor:
    """Like ``all_gather_cat`` for tensors whose first dimension differs between processes."""
    n = torch.tensor([len(x)], dtype=torch.long, device=x.device)
    sizes = all_gather_cat(n).tolist()
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = all_gather_cat(padded).split(max(sizes))
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


def any_across(mask: torch.Tensor) -> torch.Tensor:
    """Elementwise OR of a bool tensor over all processes (e.g. latents that fired anywhere)."""
    m = mask.to(torch.uint8)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m.bool()


def min_across(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t)


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """Elementwise mean over all processes (float64)."""
    t = values.double().clone()
    dist.all_reduce(t)
    return t / world()


# ---------------------------------------------------------------- Python objects (small state, SAEs handed to rank 0)


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every process's ``obj`` on rank 0 (a list in rank order); None on the others.

    Objects travel pickled between these processes only (never to or from files); tensors go as CPU tensors."""
    out = [None] * world() if is_main() else None
    dist.gather_object(_cpu(obj), out, dst=0)
    return out


def send_to_main(obj: Any) -> None:
    dist.send_object_list([_cpu(obj)], dst=0)


def receive_from(src: int) -> Any:
    box = [None]
    dist.recv_object_list(box, src=src)
    return box[0]


def _cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def split_saes(costs: list[float], n: int) -> list[int]:
    """The process each SAE goes to: largest first onto the least-loaded process (ties: lowest rank)."""
    if len(costs) < n:
        raise SaecircuitsError(f"parallel: saes splits {len(costs)} SAE(s) across {n} processes; each process needs one",
                               "use fewer processes, or parallel: data")
    load = [0.0] * n
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(n), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


def check_divisible(batch_size_tokens: int, n: int) -> int:
    """Rows per process of a global batch of ``batch_size_tokens`` (data-parallel)."""
    if batch_size_tokens % n:
        lo = batch_size_tokens // n * n
        raise SaecircuitsError(
            f"store.batch_size_tokens {batch_size_tokens} (the global batch) does not split evenly over {n} processes",
            f"use a multiple of {n}, e.g. {lo or n} or {lo + n}",
        )
    return batch_size_tokens // n

