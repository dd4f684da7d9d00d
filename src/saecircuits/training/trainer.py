"""Train many SAEs (and transcoders) at once from one activation stream.

One forward pass of the model (or one read of the activation cache) feeds every SAE in the run,
whatever its layer, site, width, k, sparsity coefficient or learning rate, so a sweep or an
all-layer suite costs one forward pass per batch. Each SAE has its own Adam optimiser with
linear warm-up and a linear decay to zero at the end; decoder rows stay at unit norm.

Checkpoints (SAE weights and buffers, Adam state, the stream position) are written atomically
every ``checkpoint_every_tokens``; ``resume`` continues from the last one and, on a CPU, ends
with exactly the weights an uninterrupted run would have.

Under torchrun with several processes (``saecircuits.core.distributed``), ``parallel: data`` trains every
SAE on each process's share of the text with gradients averaged (``store.batch_size_tokens`` is the
global batch), and ``parallel: saes`` splits the SAEs across processes. Only rank 0 writes files;
checkpoints hold every process's stream position and resume with the same number of processes.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from saecircuits.core import distributed
from saecircuits.core.config import Config
from saecircuits.core.errors import SaecircuitsError
from saecircuits.training.evaluation import SAEUnderTest, density_histogram, evaluate
from saecircuits.core.files import ensure_dir, load_tensors, read_json, recover_dir, replace_dir, save_tensors, write_json
from saecircuits.core.progress import TokenBar
from saecircuits.sae import SAEConfig, SparseAutoencoder, build
from saecircuits.sae import format as sae_format
from saecircuits.sae.topk import fired_latents
from saecircuits.activations.store import ActivationStore, Site, StoreConfig
from saecircuits.text.source import TextConfig, TextSource
from saecircuits.core.tracking import Run, WandbConfig

MAX_SAES = 1024  # a sweep past this is almost surely a typo (and would not fit in memory)
SWEEPABLE = {"hook", "hook_out", "architecture", "d_sae", "expansion", "k", "lr", "l1_coefficient", "l0_coefficient", "seed", "aux_coefficient"}


class EvalConfig(Config):
    contexts: int = Field(64, ge=1, description="held-out contexts for evaluation")
    batch_contexts: int = Field(8, ge=1)
    every_tokens: int | None = Field(None, ge=1, description="also evaluate (without CE) during training")
    ce: bool = Field(True, description="splice SAEs into the model: CE loss recovered and KL")
    dense_threshold: float = Field(0.1, gt=0, le=1)


class TrainConfig(Config):
    """A training run: where activations come from, which SAEs, how long."""

    model: str = "smollm2-135m"
    text: TextConfig = TextConfig()
    store: StoreConfig = StoreConfig(normalize="expected_average_only_in")
    saes: list[SAEConfig]
    total_tokens: int = Field(200_000, ge=1, description="training rows (tokens) per SAE")
    activation_cache: str | None = Field(None, description="folder: cache activations there once, train from it")
    checkpoint_every_tokens: int | None = Field(None, ge=1)
    log_every_steps: int = Field(10, ge=1)
    eval: EvalConfig = EvalConfig()
    wandb: WandbConfig = WandbConfig()
    out: str = "runs/train"
    parallel: Literal["data", "saes"] = Field(
        "data", description="under torchrun with several processes: data (each process streams its share of the text, "
        "gradients are averaged) or saes (the SAEs are split across processes, each streams its SAEs' sites)")
    n_devices: int = Field(1, ge=1, description="TransformerLens n_devices: spread the model's layers over this many "
                           "CUDA devices (of each process)")

    @field_validator("saes", mode="before")
    @classmethod
    def _expand_sweeps(cls, v: Any) -> Any:
        """An entry's ``sweep: {k: [16, 32], lr: [1e-3, 3e-3]}`` becomes one SAE per combination."""
        if not isinstance(v, list):
            return v
        out = []
        for entry in v:
            if not isinstance(entry, dict) or "sweep" not in entry:
                out.append(entry)
                continue
            base = {k: val for k, val in entry.items() if k != "sweep"}
            sweep = entry["sweep"]
            if not isinstance(sweep, dict) or not sweep:
                raise ValueError("sweep must map field names to lists of values")
            bad = sorted((k for k in sweep if k not in SWEEPABLE), key=str)
            if bad:
                raise ValueError(f"sweep over {bad[0]!r} is not supported; sweepable: {', '.join(sorted(SWEEPABLE))}")
            keys = list(sweep)
            lists = [val if isinstance(val, list) else [val] for val in sweep.values()]
            n = math.prod(len(x) for x in lists)
            if len(out) + n > MAX_SAES:
                raise ValueError(f"the sweep makes {n:,} SAEs; one run trains at most {MAX_SAES:,} from one stream")
            out.extend({**base, **dict(zip(keys, combo, strict=True))} for combo in itertools.product(*lists))
        return out

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.saes:
            raise ValueError("saes is empty: list at least one SAE")
        names = [s.name or s.default_name() for s in self.saes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"two SAEs would be saved under the same name {sorted(dup)[0]!r}; set name or vary a field")
        return self


def geometric_median(x: torch.Tensor, iters: int = 50, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to the rows of x."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * m.norm().clamp_min(1e-8):
            return new
        m = new
    return m


def lr_factor(step: int, total_steps: int, warmup: float, decay: float) -> float:
    """Linear warm-up over the first ``warmup`` share of steps, linear decay to 0 over the last ``decay`` share."""
    w = max(1, int(warmup * total_steps)) if warmup > 0 else 0
    f = min(1.0, (step + 1) / w) if w else 1.0
    d0 = int((1 - decay) * total_steps)
    if decay > 0 and step >= d0:
        f *= max(0.0, (total_steps - step) / max(1, total_steps - d0))
    return f


# fields that do not change the trained weights: a checkpoint made with other values resumes
NOT_IN_CHECKPOINT = {"out", "wandb", "checkpoint_every_tokens", "parallel", "n_devices"}


class Trainer:
    """Trains every SAE of a ``TrainConfig`` on one ``ActivationStore``.

    Under torchrun (``saecircuits.core.distributed``): with ``parallel: data`` every process trains every
    SAE on its own stream (batches of ``batch_size_tokens / processes`` rows) and the steps use the
    global batch; with ``parallel: saes``, ``owners[i]`` is the process that trains SAE i.
    """

    def __init__(self, cfg: TrainConfig, model, store: ActivationStore, out: str | Path, text: TextSource | None = None,
                 run: Run | None = None, progress: bool = True, owners: list[int] | None = None):
        self.cfg, self.model, self.store, self.text = cfg, model, store, text
        self.rank, self.world = distributed.rank(), distributed.world()
        self.data_parallel = self.world > 1 and owners is None
        self.owners = owners or [self.rank] * len(cfg.saes)
        self.index = [i for i, r in enumerate(self.owners) if r == self.rank]  # the SAEs of cfg.saes trained here
        self.out = ensure_dir(out) if self.rank == 0 else Path(out)
        self.run = run
        self.progress = progress
        widths = store.widths
        self.saes: list[SparseAutoencoder] = []
        for c in (cfg.saes[i] for i in self.index):
            for key in filter(None, (c.hook, c.hook_out)):
                if key not in widths:
                    raise SaecircuitsError(f"SAE {c.name or c.default_name()}: site {key} is not in the activation stream",
                                           f"the stream has: {', '.join(widths)}")
            torch.manual_seed(c.seed)
            self.saes.append(build(c, widths[c.hook], widths[c.hook_out] if c.hook_out else None))
        self.all_names = [c.name or c.default_name() for c in cfg.saes]
        self.names = [self.all_names[i] for i in self.index]
        # rows per step: the global batch (data-parallel: every process's batch together)
        bs = self.batch_tokens = store.cfg.batch_size_tokens * (self.world if self.data_parallel else 1)
        self.total_steps = max(1, math.ceil(cfg.total_tokens / bs))
        for sae in self.saes:
            if sae.cfg.dead_after_tokens is None:
                sae.dead_after_tokens = max(cfg.total_tokens // 10, 10 * bs)
            if self.data_parallel:
                sae.aux_rows = math.ceil(sae.cfg.aux_rows / self.world)
                sae.across_processes = True  # BatchTopK: select over the global batch
        self.opts = [torch.optim.Adam(s.parameters(), lr=s.cfg.lr, betas=s.cfg.adam_betas) for s in self.saes]
        self.step = 0
        self.history: list[dict] = []  # logged metrics, also kept for reports
        self.seconds = 0.0
        self.started = False

    @property
    def tokens_emitted(self) -> int:
        """Rows trained on so far (data-parallel: by all processes together)."""
        return self.store.tokens_emitted * (self.world if self.data_parallel else 1)

    # ---- state on disk
    def _checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def save_checkpoint(self) -> None:
        """Every SAE, its Adam state and the stream position, written by rank 0 into a fresh folder swapped in whole.

        Several processes: ``state.safetensors`` holds rank 0's part, ``rank{r}.safetensors`` rank r's (its
        stream position; with ``parallel: saes`` also its SAEs), ``state.json`` every rank's stream position."""
        tensors: dict[str, torch.Tensor] = {}
        opt_meta = {}
        for i, sae, opt in zip(self.index, self.saes, self.opts, strict=True):
            for k, v in sae.state_dict().items():
                tensors[f"sae{i}/{k}"] = v
            sd = opt.state_dict()
            for pid, st in sd["state"].items():
                for k, v in st.items():
                    tensors[f"opt{i}/{pid}/{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
            opt_meta[i] = sd["param_groups"]
        store_json, store_tensors = self.store.state()
        tensors.update({f"store/{k}": v for k, v in store_tensors.items()})
        if self.rank != 0:  # hand this rank's part to rank 0, which writes it
            if self.data_parallel:  # the SAEs are rank 0's
                tensors, opt_meta = {k: v for k, v in tensors.items() if k.startswith("store/")}, {}
            distributed.send_to_main((tensors, opt_meta, {"store": store_json, "tokens_emitted": self.store.tokens_emitted}))
            return
        state = {"step": self.step, "tokens_emitted": self.store.tokens_emitted, "names": self.all_names,
                 "config": self.cfg.model_dump(mode="json", exclude=NOT_IN_CHECKPOINT),
                 "optimizer_param_groups": None, "store": store_json, "history": self.history, "seconds": self.seconds}
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=self.out))
        try:
            save_tensors(tmp / "state.safetensors", tensors)
            if self.world > 1:
                state.update(world_size=self.world, parallel="data" if self.data_parallel else "saes",
                             ranks=[{"store": store_json, "tokens_emitted": self.store.tokens_emitted}])
                for r in range(1, self.world):  # one rank's part in memory at a time
                    part, metas, info = distributed.receive_from(r)
                    save_tensors(tmp / f"rank{r}.safetensors", part)
                    opt_meta.update(metas)
                    state["ranks"].append(info)
            state["optimizer_param_groups"] = [opt_meta[i] for i in sorted(opt_meta)]
            write_json(tmp / "state.json", state)
            replace_dir(tmp, self._checkpoint_dir())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load_checkpoint(self) -> bool:
        folder = self._checkpoint_dir()
        if not (folder / "state.json").exists():
            return False
        state = read_json(folder / "state.json", what="checkpoint")
        mine = self.cfg.model_dump(mode="json", exclude=NOT_IN_CHECKPOINT)
        if state["config"] != mine:
            diff = sorted(k for k in mine if mine.get(k) != state["config"].get(k))
            raise SaecircuitsError(f"the checkpoint in {folder} was made with another config (differs in: {', '.join(diff)})",
                                   "resume with the same config, or choose another --out")
        made_by = state.get("world_size", 1)
        if made_by != self.world:
            how = f"torchrun --nproc_per_node {made_by} ..." if made_by > 1 else "one process (without torchrun)"
            raise SaecircuitsError(f"the checkpoint in {folder} was made by {made_by} process(es), this run has {self.world}",
                                   f"resume it with {how}, or choose another --out")
        parallel = "data" if self.data_parallel else "saes"
        if self.world > 1 and state.get("parallel") != parallel:
            raise SaecircuitsError(f"the checkpoint in {folder} was made with parallel: {state.get('parallel')}, this run "
                                   f"has parallel: {parallel}", "resume with the same parallel setting")
        tensors = load_tensors(folder / "state.safetensors", what="checkpoint")
        if self.rank != 0:  # this rank's stream position (and, with parallel: saes, its SAEs)
            own = load_tensors(folder / f"rank{self.rank}.safetensors", what="checkpoint")
            tensors = {**{k: v for k, v in tensors.items() if not k.startswith("store/")}, **own} if self.data_parallel else own
        for i, sae, opt in zip(self.index, self.saes, self.opts, strict=True):
            sae.load_state_dict({k[len(f"sae{i}/"):]: v for k, v in tensors.items() if k.startswith(f"sae{i}/")})
            opt_state: dict[int, dict] = {}
            for k, v in tensors.items():
                if k.startswith(f"opt{i}/"):
                    _, pid, name = k.split("/", 2)
                    opt_state.setdefault(int(pid), {})[name] = v
            opt.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"][i]})
        position = state["ranks"][self.rank] if self.world > 1 else state
        self.store.load_state(position["store"], {k[len("store/"):]: v for k, v in tensors.items() if k.startswith("store/")})
        self.store.tokens_emitted = position["tokens_emitted"]
        self.step = state["step"]
        self.history = state["history"]
        self.seconds = state["seconds"]
        return True

    # ---- training
    def _init_b_dec(self, batch: dict[str, torch.Tensor]) -> None:
        for sae in self.saes:
            y = batch[sae.cfg.hook_out or sae.cfg.hook]
            if self.data_parallel:  # from the global first batch
                y = distributed.all_gather_cat(y)
            with torch.no_grad():
                if sae.cfg.b_dec_init == "geometric_median" and not sae.is_transcoder:
                    sae.b_dec.copy_(geometric_median(y.float()))
                elif sae.cfg.b_dec_init != "zeros":
                    sae.b_dec.copy_(y.float().mean(0))

    def _not_finite(self, batch: dict[str, torch.Tensor], name: str) -> SaecircuitsError:
        """The error for a NaN or infinite loss: which site's activations were not finite, or a diverged SAE."""
        for key, x in batch.items():
            bad = int((~torch.isfinite(x)).any(-1).sum())
            if bad:
                return SaecircuitsError(
                    f"activations at {key} hold NaN or infinite values ({bad} of {len(x)} rows) in the batch of step {self.step}",
                    "the model or its input produces non-finite values: check the model weights, the dtype "
                    "(float16 overflows) and the text; the last checkpoint is intact")
        return SaecircuitsError(f"the loss of SAE {name} became NaN or infinite at step {self.step} (its inputs are finite)",
                                "the training diverged: lower its lr; the last checkpoint is intact")

    def train_step(self, batch: dict[str, torch.Tensor]) -> list[dict]:
        progress = self.step / self.total_steps
        logs = []
        for sae, opt in zip(self.saes, self.opts, strict=True):
            x = batch[sae.cfg.hook]
            y = batch[sae.cfg.hook_out] if sae.cfg.hook_out else x
            f = lr_factor(self.step, self.total_steps, sae.cfg.lr_warmup_fraction, sae.cfg.lr_decay_fraction)
            for group in opt.param_groups:
                group["lr"] = sae.cfg.lr * f
            out = sae.loss(x, y, progress)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.data_parallel:
                distributed.all_reduce_grads(sae.parameters())
            sae.project_decoder_grad()
            opt.step()
            sae.normalize_decoder()
            fired = fired_latents(out.code, sae.d_sae)
            if self.data_parallel:
                sae.note_fired(distributed.any_across(fired), len(x) * self.world)
            else:
                sae.note_fired(fired, len(x))
            sae.after_step(out.code, {})
            loss = float(out.loss.detach())
            if not math.isfinite(loss):  # never train on (or checkpoint) NaN: say where it came from
                raise self._not_finite(batch, sae.cfg.name or sae.cfg.default_name())
            logs.append({"loss": loss, "mse": out.mse, "lr": sae.cfg.lr * f, "out": out, "y": y})
        self.step += 1
        return logs

    def _log(self, logs: list[dict], tokens: int, rate: float) -> dict:
        row: dict[str, Any] = {"step": self.step, "tokens": tokens, "tokens_per_second": rate}
        for name, sae, lg in zip(self.names, self.saes, logs, strict=True):
            y = lg["y"]
            sst = float((y - y.mean(0)).pow(2).sum(-1).mean())
            code = lg["out"].code
            l0 = code.l0() if hasattr(code, "l0") else float((code > 0).float().sum(-1).mean())
            row[name] = {"loss": lg["loss"], "mse": lg["mse"], "explained_variance": 1 - lg["mse"] / sst if sst else float("nan"),
                         "l0": l0, "lr": lg["lr"], "dead": int((sae.tokens_since_fired >= sae.dead_after_tokens).sum()),
                         **{k: v for k, v in lg["out"].metrics.items() if isinstance(v, float)}}
        if self.data_parallel:
            self._global_metrics(row, logs)
        elif self.world > 1:  # parallel: saes: rank 0 logs every process's SAEs
            rows = distributed.gather_to_main({n: row[n] for n in self.names})
            if rows is None:
                return row
            for part in rows:
                row.update(part)
            row = {k: row[k] for k in ("step", "tokens", "tokens_per_second", *self.all_names)}
        if self.rank != 0:
            return row
        self.history.append(row)
        if self.run:
            flat = {"tokens": tokens, "tokens_per_second": rate}
            for name in self.all_names:
                flat.update({f"{name}/train/{k}": v for k, v in row[name].items()})
            self.run.log(flat, step=self.step)
        return row

    def _global_metrics(self, row: dict, logs: list[dict]) -> None:
        """Data-parallel: the metrics of the global batch (means over processes; explained variance from
        the global mean and second moment of y)."""
        keys = {n: [k for k in row[n] if k not in ("explained_variance", "dead", "lr")] for n in self.names}
        parts = []
        for name, lg in zip(self.names, logs, strict=True):
            y = lg["y"].double()
            parts += [torch.tensor([float(row[name][k]) for k in keys[name]] + [float(y.pow(2).sum(-1).mean())], dtype=torch.float64),
                      y.mean(0)]
        flat = distributed.mean_across(torch.cat(parts))
        i = 0
        for name, lg in zip(self.names, logs, strict=True):
            n, d = len(keys[name]), lg["y"].shape[1]
            vals, second, mean = flat[i : i + n].tolist(), float(flat[i + n]), flat[i + n + 1 : i + n + 1 + d]
            i += n + 1 + d
            row[name].update(zip(keys[name], vals, strict=True))
            sst = second - float(mean.pow(2).sum())
            row[name]["explained_variance"] = 1 - row[name]["mse"] / sst if sst else float("nan")

    def start(self, resume: bool = False) -> None:
        """Load the checkpoint to resume from, or make sure there is none to overwrite (nothing is written)."""
        if self.rank == 0:
            recover_dir(self._checkpoint_dir())  # a kill during the last checkpoint's swap
        distributed.barrier()
        if resume and not self.load_checkpoint():
            raise SaecircuitsError(f"--resume: no checkpoint in {self._checkpoint_dir()}", "start without --resume")
        if not resume and self._checkpoint_dir().exists():
            raise SaecircuitsError(f"{self.out} already holds a checkpoint of a run", "pass --resume to continue it, or choose another --out")
        self.started = True

    def fit(self, resume: bool = False) -> None:
        """Train to ``total_tokens``, checkpointing as configured; resumes from a checkpoint if asked."""
        if not self.started:
            self.start(resume)
        bs = self.batch_tokens
        total = self.total_steps * bs
        ckpt_every = self.cfg.checkpoint_every_tokens
        eval_every = self.cfg.eval.every_tokens
        bar = TokenBar("training", total, self.step * bs, enabled=self.progress)
        start = time.perf_counter() - self.seconds
        last_ckpt = self.step * bs
        per_process = self.total_steps * self.store.cfg.batch_size_tokens
        try:
            for batch in self.store.batches(max_tokens=per_process) if self.step < self.total_steps else ():
                if self.step == 0:
                    self._init_b_dec(batch)
                logs = self.train_step(batch)
                tokens = self.step * bs
                self.seconds = time.perf_counter() - start
                if self.step % self.cfg.log_every_steps == 0 or self.step == self.total_steps:
                    row = self._log(logs, tokens, tokens / self.seconds)
                    # only the main process shows a bar; there the row holds every SAE, also with parallel: saes
                    bar.update(tokens, _bar_info(row, self.all_names[0]) if bar.enabled else None)
                else:
                    bar.update(tokens)
                if eval_every and tokens // eval_every > (tokens - bs) // eval_every and self.text is not None:
                    self.evaluate(ce=False, prefix="eval_during")
                if ckpt_every and tokens - last_ckpt >= ckpt_every and self.step < self.total_steps:
                    self.save_checkpoint()
                    last_ckpt = tokens
                if self.step >= self.total_steps:
                    break
        finally:
            bar.close()
        self.save_checkpoint()

    # ---- results
    def under_test(self) -> list[SAEUnderTest]:
        scales = self.store.scales
        return [SAEUnderTest(n, s, scales.get(s.cfg.hook, 1.0), scales.get(s.cfg.hook_out or s.cfg.hook, 1.0))
                for n, s in zip(self.names, self.saes, strict=True)]

    def evaluate(self, ce: bool | None = None, prefix: str = "eval") -> dict[str, dict]:
        """Held-out metrics of every SAE (several processes: on rank 0, {} elsewhere)."""
        if self.text is None:
            raise SaecircuitsError("evaluation needs the text source (held-out split)")
        if self.data_parallel and self.rank != 0:  # the SAEs are the same everywhere: rank 0 evaluates
            return {}
        e = self.cfg.eval
        tokens = self.text.take(e.contexts, "eval")
        for sae in self.saes:
            sae.eval()
        res = evaluate(self.model, self.under_test(), tokens, e.batch_contexts, e.ce if ce is None else ce,
                       self.store.cfg.exclude_special_tokens, self.store.cfg.exclude_first_position, e.dense_threshold)
        for sae in self.saes:
            sae.train()
        if self.world > 1 and not self.data_parallel:  # parallel: saes: each process evaluated its own SAEs
            parts = distributed.gather_to_main(res)
            if parts is None:
                return {}
            merged = {k: v for p in parts for k, v in p.items()}
            res = {n: merged[n] for n in self.all_names}
        if self.run:
            flat = {f"{n}/{prefix}/{k}": v for n, r in res.items() for k, v in r.items() if isinstance(v, (int, float))}
            self.run.log(flat, step=self.step)
        return res

    def save_saes(self, folder: Path) -> list[Path]:
        """Every SAE in SAELens's format under ``folder``, scales folded in (several processes: rank 0 writes
        them, receiving each SAE from the process that trained it; [] elsewhere)."""
        if self.data_parallel and self.rank != 0:  # the SAEs are the same everywhere: rank 0 saves them
            return []
        out = []
        meta = self.store.describe
        text = meta.get("text", {})
        mine = {self.index[j]: u for j, u in enumerate(self.under_test())}
        for i, owner in enumerate(self.owners):
            if owner != 0 and self.rank == owner:
                u = mine[i]
                distributed.send_to_main((u.sae.state_dict(), u.sae.d_in, u.sae.d_out, u.scale_in, u.scale_out))
            if self.rank != 0:
                continue
            if owner == 0:
                u = mine[i]
            else:
                state, d_in, d_out, scale_in, scale_out = distributed.receive_from(owner)
                sae = build(self.cfg.saes[i], d_in, d_out if self.cfg.saes[i].hook_out else None)
                sae.load_state_dict(state)
                u = SAEUnderTest(self.all_names[i], sae, scale_in, scale_out)
            out.append(sae_format.save(
                u.sae, folder / u.name, model_name=self.model.cfg.model_name, scale_in=u.scale_in, scale_out=u.scale_out,
                context_size=self.store.context_size, dataset=text.get("source") or meta.get("cache"),
                exclude_special_tokens=None, training_tokens=self.tokens_emitted,
            ))
        return out


def _bar_info(row: dict, first: str) -> str:
    """The first SAE's latest explained variance and L0, for the progress bar; short, so the bar fits an
    80-column terminal."""
    r = row[first]
    return f"EV {r['explained_variance']:.3f} L0 {r['l0']:.1f}"


def _sites(saes: list[SAEConfig]) -> list[str]:
    sites: list[str] = []
    for c in saes:
        for key in filter(None, (c.hook, c.hook_out)):
            if key not in sites:
                sites.append(key)
    return sites


def make_store(cfg: TrainConfig, model, progress: bool = True, saes: list[SAEConfig] | None = None,
               shard: tuple[int, int] = (0, 1)) -> tuple[ActivationStore, TextSource]:
    """The run's activation stream: from the activation cache (built first if missing) or from the model.

    ``saes``: stream only these SAEs' sites (default: all). ``shard`` (rank, world): this process's share
    of a data-parallel run, in batches of ``batch_size_tokens / world`` rows. Only rank 0 builds the
    activation cache (with every site of the run); the other processes wait for it, then read it.
    """
    sites = _sites(saes or cfg.saes)
    text = TextSource.for_model(cfg.text, model)
    world = shard[1]
    store_cfg = cfg.store
    if world > 1:
        store_cfg = cfg.store.model_copy(update={"batch_size_tokens": distributed.check_divisible(cfg.store.batch_size_tokens, world)})
    total_rows = cfg.total_tokens // world
    if cfg.activation_cache:
        from saecircuits.activations.cache import ActivationCache, build_cache

        if distributed.is_main():
            cache = build_cache(cfg.activation_cache, model, _sites(cfg.saes), text, cfg.store,
                                cfg.total_tokens + cfg.total_tokens // 20 + cfg.text.context_size * 8, progress=progress)
        distributed.barrier()
        if not distributed.is_main():
            cache = ActivationCache(cfg.activation_cache)
        cache.check(model=model, site_keys=[Site.parse(s).key for s in sites])
        return cache.store(store_cfg, [Site.parse(s).key for s in sites], total_rows=total_rows, shard=shard), text
    return ActivationStore.from_model(model, sites, text, store_cfg, total_rows=total_rows, shard=shard), text


def _sae_costs(cfg: TrainConfig, model) -> list[float]:
    """Parameters of each SAE (what ``parallel: saes`` balances across processes)."""
    from saecircuits.activations.store import expand_sites, site_widths

    widths = site_widths(model, expand_sites(model, _sites(cfg.saes)))
    return [float(c.width(widths[c.hook]) * (widths[c.hook] + widths[c.hook_out or c.hook])) for c in cfg.saes]


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, model=None, run: Run | None = None) -> dict:
    """Run a training config end to end: stream, train, save SAEs, evaluate, log to W&B. Returns the summary.

    ``run``: log into this W&B run (left open, for a job of several stages) instead of starting one.

    Under torchrun with several processes (see ``saecircuits.core.distributed``) every process calls this;
    rank 0 writes the files and returns the summary, the others return {}.
    """
    from saecircuits.model import loading as models

    distributed.init(cfg.store.device)
    rank, world = distributed.rank(), distributed.world()
    main = rank == 0
    out = ensure_dir(cfg.out) if main else Path(cfg.out)
    if world > 1 and cfg.parallel == "data":
        distributed.check_divisible(cfg.store.batch_size_tokens, world)
    if model is None:
        if not main:
            distributed.barrier()  # rank 0 converts an offline model once; the others then read its cache
        model = models.load(cfg.model, device="cuda" if cfg.n_devices > 1 else "cpu", n_devices=cfg.n_devices)
        if main:
            distributed.barrier()
    owners = distributed.split_saes(_sae_costs(cfg, model), world) if world > 1 and cfg.parallel == "saes" else None
    mine = [c for c, r in zip(cfg.saes, owners, strict=True) if r == rank] if owners else None
    store, text = make_store(cfg, model, progress and main, saes=mine, shard=(rank, world) if world > 1 and owners is None else (0, 1))
    trainer = Trainer(cfg, model, store, out, text, None, progress and main, owners)
    trainer.start(resume)  # a config mismatch or a run already there is refused before anything is written
    if main:
        write_json(out / "config.json", cfg.model_dump(mode="json"))
    own_run = run is None
    if not main:
        run = None
    elif own_run:
        run = Run(cfg.wandb, out, cfg.model_dump(mode="json"), job="train")
    trainer.run = run
    trainer.fit()
    paths = trainer.save_saes(out / "saes")
    results = trainer.evaluate()
    facts = {"tokens_emitted": store.tokens_emitted, "tokens_dropped_outlier": store.tokens_dropped_outlier,
             "scales": store.scales, "seconds": trainer.seconds}
    ranks = distributed.gather_to_main(facts) if world > 1 else [facts]
    if not main:
        return {}
    scales = {k: v for f in ranks for k, v in f["scales"].items()}
    dropped = sum(f["tokens_dropped_outlier"] for f in ranks) if owners is None else max(f["tokens_dropped_outlier"] for f in ranks)
    tokens = trainer.tokens_emitted
    summary = {"model": model.cfg.model_name, "tokens": tokens, "steps": trainer.step,
               "seconds": trainer.seconds, "tokens_per_second": tokens / max(trainer.seconds, 1e-9),
               "tokens_dropped_outlier": dropped, "scales": scales, "saes": {}}
    if world > 1:
        summary["distributed"] = {"processes": world, "parallel": cfg.parallel, "ranks": ranks,
                                  **({"owners": dict(zip(trainer.all_names, owners, strict=True))} if owners else {})}
    for name, path, c in zip(trainer.all_names, paths, cfg.saes, strict=True):
        r = results[name]
        summary["saes"][name] = {"path": str(path), "hook": c.hook, "hook_out": c.hook_out,
                                 "architecture": c.architecture, "d_sae": len(r["density"]), "k": c.k, "lr": c.lr,
                                 "density_histogram": density_histogram(r["density"]),
                                 **{k: v for k, v in r.items() if k != "density"}}
        run.histogram(f"{name}/eval/log10_feature_density", [math.log10(d) for d in r["density"] if d > 0])
    write_json(out / "summary.json", summary)
    write_json(out / "history.json", trainer.history)
    run.summary({f"{n}/{k}": v for n, s in summary["saes"].items() for k, v in s.items() if isinstance(v, (int, float))})
    run.artifact(f"saes-{out.name}", "sae", paths, {"model": model.cfg.model_name})
    summary["wandb_sync"] = run.finish() if own_run else None
    summary["wandb_mode"] = run.mode
    write_json(out / "summary.json", summary)
    return summary


def read_summary(out: str | Path) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())
