"""Edge pruning and circuit evaluation on two processes (torch.distributed, gloo on CPU) give what one process gives."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

CONFIG = {"targets": (0.5, 0.2), "steps": 6, "batch_size": 8, "lr": 0.1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: str | None) -> dict[str, torch.Tensor]:
    """Prune edges and evaluate circuits of a tiny model on induction prompts (the same in every process)."""
    from conftest import make_tiny_model

    from saecircuits.circuits import prompts
    from saecircuits.circuits.config import PruningConfig
    from saecircuits.circuits.discovery.edge_pruning import edge_pruning
    from saecircuits.circuits.evaluation import Evaluator
    from saecircuits.circuits.masked_forward import MaskedForward

    torch.manual_seed(0)
    model = make_tiny_model(n_layers=2, n_kv=2)
    task = prompts.induction(model, n=20, half=6, seed=0)
    f = MaskedForward(model)
    res = edge_pruning(f, task.subset(torch.arange(12)), PruningConfig(**CONFIG), "edges")
    ev = Evaluator(f, task.subset(torch.arange(12, 20)), task.subset(torch.arange(12)), batch_size=3)
    masks = torch.stack([f.graph.edges_unflat(res.stages[-1] > q, False) for q in (2.0, 3.0)])
    vals = ev.run("resample", edges=masks)
    return {"stage0": res.stages[0], "stage1": res.stages[1], **{f"eval_{k}": v for k, v in vals.items()}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from saecircuits.core import distributed

    distributed.init()
    got = _run(out)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in got.items()}, out)


def test_two_processes_learn_the_same_masks_and_scores_as_one(tmp_path):
    out = str(tmp_path / "two.safetensors")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    two = load_file(out)
    one = _run(None)
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-4, rtol=1e-4, msg=k)
    # the masks moved: the test compares training, not two copies of the initial value
    assert float((one["stage1"] - 3.0).abs().max()) > 0.1
