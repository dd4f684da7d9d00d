"""Training on several processes (torch.distributed, gloo on CPU): two processes on this machine.

Data-parallel runs are compared with one process fed the global batches (every rank's batch
concatenated in rank order, built here from the ranks' own streams); SAE-parallel runs with a plain
single-process run; resume after a crash with the uninterrupted run.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from saecircuits.core import distributed
from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.sae import format as sae_format
from saecircuits.training.config import TrainConfig
from saecircuits.training.run import make_store, train
from saecircuits.training.trainer import Trainer

SITE = "blocks.1.hook_resid_post"
GLOBAL_BATCH = 256
SAES = [
    # aux_rows >= the global batch: AuxK uses every row, here and in each process (aux_rows / 2 >= 128 rows)
    {"architecture": "topk", "hook": SITE, "d_sae": 256, "k": 1, "dead_after_tokens": 256, "aux_rows": 512},
    {"architecture": "batchtopk", "hook": "blocks.0.attn.hook_z:1", "d_sae": 32, "k": 2, "dead_after_tokens": 512, "aux_rows": 512},
    {"architecture": "standard", "hook": SITE, "d_sae": 48, "l1_coefficient": 0.5},
    {"architecture": "jumprelu", "hook": "blocks.0.hook_resid_post", "d_sae": 48, "l0_coefficient": 0.05},
    {"architecture": "matryoshka_batchtopk", "hook": SITE, "d_sae": 64, "k": 4, "matryoshka_widths": [16, 64], "aux_rows": 512},
]


def _cfg_data(out: Path, **kw) -> dict:
    data = {
        "model": "tiny",
        "text": {"source": "bible", "context_size": 32, "eval_fraction": 0.05},
        "store": {"batch_size_tokens": GLOBAL_BATCH, "buffer_tokens": 32 * 16, "model_batch_size": 8,
                  "normalize": "expected_average_only_in", "drop_outlier_norm": 3.0},
        "saes": SAES, "total_tokens": GLOBAL_BATCH * 24, "checkpoint_every_tokens": GLOBAL_BATCH * 7, "log_every_steps": 4,
        "eval": {"contexts": 8, "batch_contexts": 8, "ce": False}, "wandb": {"mode": "off"}, "out": str(out),
    }
    data.update(kw)
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Crash(Exception):
    pass


def _worker(rank: int, world: int, port: int, data: dict, die_at_step: int | None, resume: bool, record: str) -> None:
    """One torchrun-like process: torchrun's environment, then ``train`` (the model built from its seed)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), WANDB_MODE="disabled")
    torch.set_num_threads(1)
    from conftest import make_tiny_model

    model = make_tiny_model()
    out = Path(data["out"]).resolve()
    writes: list[str] = []
    _record_writes_under(out, writes)
    if die_at_step is not None:
        step = Trainer.train_step

        def dying(self, batch):
            if self.step == die_at_step:
                raise Crash(f"rank {rank} dies at step {die_at_step}")
            return step(self, batch)

        Trainer.train_step = dying
    try:
        train(validate(TrainConfig, data), resume=resume, progress=False, model=model)
    except Crash:
        pass
    finally:
        Path(f"{record}.rank{rank}").write_text(json.dumps(writes))


def _record_writes_under(folder: Path, writes: list[str]) -> None:
    """Note every file or folder this process creates, replaces or opens for writing under ``folder``."""

    def note(path) -> None:
        try:
            p = Path(os.fsdecode(path)).resolve()
        except TypeError:
            return
        if p == folder or folder in p.parents:
            writes.append(str(p))

    real_open, real_os_open, real_mkdir, real_replace = builtins.open, os.open, os.mkdir, os.replace

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *a, **k)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            note(path)
        return real_os_open(path, flags, *a, **k)

    def mkdir(path, *a, **k):
        note(path)
        return real_mkdir(path, *a, **k)

    def replace(src, dst, *a, **k):
        note(dst)
        return real_replace(src, dst, *a, **k)

    builtins.open, os.open, os.mkdir, os.replace = open_, os_open, mkdir, replace


def _spawn(data: dict, record: Path, die_at_step: int | None = None, resume: bool = False, timeout: float = 600) -> None:
    """Two processes running ``_worker``; a process that fails or hangs fails the test (the others are ended)."""
    ctx = mp.start_processes(_worker, args=(2, _free_port(), data, die_at_step, resume, str(record)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise AssertionError(f"the distributed run did not finish in {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


class GlobalBatches:
    """One process's view of a data-parallel run: each rank's stream, batches concatenated in rank order."""

    def __init__(self, stores):
        self.stores = stores
        s0 = stores[0]
        self.cfg = s0.cfg.model_copy(update={"batch_size_tokens": sum(s.cfg.batch_size_tokens for s in stores)})
        self.widths, self.context_size, self.describe = s0.widths, s0.context_size, s0.describe
        self.tokens_emitted = 0

    @property
    def scales(self) -> dict[str, float]:
        return self.stores[0].scales

    def batches(self, max_tokens: int | None = None):
        streams = [s.batches() for s in self.stores]
        while max_tokens is None or self.tokens_emitted < max_tokens:
            parts = [next(it) for it in streams]
            batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            self.tokens_emitted += self.cfg.batch_size_tokens
            yield batch

    def state(self):
        return {}, {}


def _calibrate_over_all(stores, factor: float) -> None:
    """The reference calibration: outlier limit and scale from every rank's first window together."""
    firsts = [next(s._windows(0, 0)) for s in stores]
    for k in firsts[0].acts:
        norms = torch.cat([f.acts[k].float().norm(dim=1) for f in firsts])
        limit = float(norms.median()) * factor
        scale = math.sqrt(firsts[0].acts[k].shape[1]) / float(norms[norms <= limit].mean())
        for s in stores:
            s.position.outlier_limits[k] = limit
            s.position.scales[k] = scale


@pytest.fixture(scope="module")
def data_parallel_run(tmp_path_factory, tiny_model):
    """A 2-process data-parallel run (checkpointing every 7 steps) and the one-process reference."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = _cfg_data(tmp / "ddp")
    _spawn(data, tmp / "writes")
    cfg = validate(TrainConfig, data)
    stores = [make_store(cfg, tiny_model, progress=False, shard=(r, 2))[0] for r in range(2)]
    _calibrate_over_all(stores, cfg.store.drop_outlier_norm)
    reference = Trainer(cfg, tiny_model, GlobalBatches(stores), tmp / "reference", progress=False)
    reference.fit()
    return tmp, data, reference


def _checkpoint_saes(out: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(out / "checkpoint" / "state.safetensors").items() if k.startswith("sae")}


def test_data_parallel_equals_one_process_with_the_global_batch(data_parallel_run):
    tmp, data, reference = data_parallel_run
    out = tmp / "ddp"
    got = _checkpoint_saes(out)
    assert reference.step == 24 and json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 24
    for i, sae in enumerate(reference.saes):
        for k, want in sae.state_dict().items():
            have = got[f"sae{i}/{k}"]
            if k == "tokens_since_fired":  # dead-latent tracking over the global batch: exact
                assert torch.equal(have, want), (i, k)
            else:
                assert torch.allclose(have.double(), want.double(), rtol=1e-4, atol=1e-5), (i, k, (have - want).abs().max())
    # the test exercises what couples rows of a batch: AuxK on dead latents, BatchTopK's threshold
    assert any(r[reference.names[0]]["aux_loss"] > 0 for r in reference.history)
    assert float(reference.saes[1].threshold) > 0
    # logged metrics are those of the global batch
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == [r["step"] for r in reference.history]
    for mine, ref in zip(history, reference.history):
        for name in reference.names:
            for key in ("mse", "l0", "explained_variance", "loss", "dead"):
                assert mine[name][key] == pytest.approx(ref[name][key], rel=1e-3, abs=1e-5), (name, key)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"] == GLOBAL_BATCH * 24 and summary["distributed"]["processes"] == 2
    assert summary["scales"] == pytest.approx(reference.store.scales, rel=1e-6)
    # the saved SAE (scales folded in) is the reference's
    scale = reference.store.scales[SITE]
    saved = sae_format.load(out / "saes" / reference.names[0])
    assert torch.allclose(saved.W_enc, reference.saes[0].W_enc.detach() * scale, rtol=1e-4, atol=1e-5)


def test_only_rank_0_writes(data_parallel_run):
    tmp, _, _ = data_parallel_run
    written = [json.loads((tmp / f"writes.rank{r}").read_text()) for r in range(2)]
    assert written[1] == []
    assert any(p.endswith("summary.json") for p in written[0]) and any("checkpoint" in p for p in written[0])


def test_data_parallel_resume_after_a_crash_equals_uninterrupted(data_parallel_run, tiny_model):
    tmp, data, _ = data_parallel_run
    part = dict(data, out=str(tmp / "crashed"))
    _spawn(part, tmp / "writes-crash", die_at_step=17)  # after the checkpoint at step 14, mid-window
    state = json.loads((tmp / "crashed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 14 and state["world_size"] == 2 and len(state["ranks"]) == 2
    carries = [load_file(tmp / "crashed" / "checkpoint" / f)["store/carry_tokens"] for f in ("state.safetensors", "rank1.safetensors")]
    assert not torch.equal(*carries)  # each rank's own stream position (the rows carried into its next window)
    _spawn(part, tmp / "writes-resume", resume=True)
    full, resumed = _checkpoint_saes(tmp / "ddp"), _checkpoint_saes(tmp / "crashed")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    # a different number of processes is refused with a clear error
    with pytest.raises(SaecircuitsError, match="made by 2 process"):
        train(validate(TrainConfig, part), resume=True, progress=False, model=tiny_model)


def test_shards_partition_the_stream(tiny_model, tmp_path):
    """Rank r's model stream reads contexts r, r + 2, ...; from a cache, windows r, r + 2, ...: together, everything once."""
    from saecircuits.activations.cache import build_cache
    from saecircuits.activations.site import expand_sites
    from saecircuits.activations.store import ModelActivations
    from saecircuits.text.source import TextSource

    cfg = validate(TrainConfig, _cfg_data(tmp_path / "x", store={"batch_size_tokens": 64, "buffer_tokens": 32 * 4}))
    text = TextSource.for_model(cfg.text, tiny_model)
    acts = ModelActivations(tiny_model, expand_sites(tiny_model, [SITE]))
    contexts = text.take(24)
    for r in range(2):
        shard = torch.cat([w.tokens for _, w in zip(range(3), acts.windows(text, 4, 4, shard=(r, 2)))])
        assert torch.equal(shard, acts.rows(contexts[r::2]).tokens)
    cache = build_cache(tmp_path / "cache", tiny_model, [SITE], text, cfg.store, n_tokens=32 * 24, shard_contexts=5, progress=False)
    windows = [w.tokens for w in cache.windows([SITE], 4)]
    for r in range(2):
        assert [w.tokens.tolist() for w in cache.windows([SITE], 4, shard=(r, 2))] == [w.tolist() for w in windows[r::2]]


def test_split_saes_and_batch_checks():
    assert distributed.split_saes([4, 1, 1, 1, 1], 2) == [0, 1, 1, 1, 1]
    assert distributed.split_saes([1, 1, 1], 2) == [0, 1, 0]
    with pytest.raises(SaecircuitsError, match="each process needs one"):
        distributed.split_saes([1], 2)
    with pytest.raises(SaecircuitsError, match="does not split evenly over 3 processes"):
        distributed.check_divisible(256, 3)
    assert not distributed.active() and distributed.world() == 1 and distributed.rank() == 0


def _local_llama(folder: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_torchrun_cli_sae_parallel_equals_one_process(tmp_path, byte_tokenizer):
    """``torchrun --nproc_per_node 2 -m saecircuits train`` with parallel: saes: each SAE trained by one
    process equals the single-process run; one summary is printed and written."""
    from saecircuits.model import loading as models

    folder = _local_llama(tmp_path / "llama", byte_tokenizer)
    saes = [{"architecture": "topk", "hook": "blocks.0.hook_resid_post", "d_sae": 64, "k": 4},
            {"architecture": "batchtopk", "hook": "blocks.1.hook_resid_post", "d_sae": 64, "k": 4},
            {"architecture": "standard", "hook": "blocks.1.hook_resid_post", "d_sae": 32, "l1_coefficient": 0.5}]
    data = _cfg_data(tmp_path / "par", model=str(folder), saes=saes, parallel="saes", total_tokens=GLOBAL_BATCH * 10,
                     checkpoint_every_tokens=None, eval={"contexts": 8, "batch_contexts": 8})
    data["store"] = {**data["store"], "drop_outlier_norm": None}
    (tmp_path / "par.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "saecircuits",
                           "train", str(tmp_path / "par.yaml")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("SAEs (SAELens format)") + proc.stderr.count("SAEs (SAELens format)") == 1
    summary = json.loads((tmp_path / "par" / "summary.json").read_text())
    assert summary["distributed"]["owners"] == dict(zip(summary["saes"], [0, 1, 0]))  # by parameter count: 4096, 4096, 2048
    single = train(validate(TrainConfig, dict(data, out=str(tmp_path / "single"), parallel="data")), progress=False,
                   model=models.load(str(folder)))
    for name in single["saes"]:
        a, b = sae_format.load(tmp_path / "par" / "saes" / name), sae_format.load(tmp_path / "single" / "saes" / name)
        for k, v in a.state_dict().items():
            assert torch.allclose(v.double(), b.state_dict()[k].double(), rtol=1e-4, atol=1e-5), (name, k)
        assert summary["saes"][name]["explained_variance"] == pytest.approx(single["saes"][name]["explained_variance"], abs=1e-4)
