"""The trainer: many SAEs (and transcoders) trained at once from one activation stream.

One forward pass of the model (or one read of the activation cache) feeds every SAE in the run,
whatever its layer, site, width, k, sparsity coefficient or learning rate, so a sweep or an
all-layer suite costs one forward pass per batch. Each SAE has its own Adam optimiser with
linear warm-up and a linear decay to zero at the end; decoder rows stay at unit norm.

Checkpoints (``saecircuits.training.checkpoint``: SAE weights and buffers, Adam state, the stream
position) are written atomically every ``checkpoint_every_tokens``; ``resume`` continues from the
last one and, on a CPU, ends with exactly the weights an uninterrupted run would have.

Under torchrun with several processes (``saecircuits.core.distributed``), ``parallel: data`` trains every
SAE on each process's share of the text with gradients averaged (``store.batch_size_tokens`` is the
global batch), and ``parallel: saes`` splits the SAEs across processes. Only rank 0 writes files;
checkpoints hold every process's stream position and resume with the same number of processes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from saecircuits.activations.store import ActivationStore
from saecircuits.core import distributed
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import ensure_dir, recover_dir
from saecircuits.core.progress import TokenBar
from saecircuits.core.tracking import Run
from saecircuits.sae import SparseAutoencoder, build
from saecircuits.sae import format as sae_format
from saecircuits.sae.topk import fired_latents
from saecircuits.text.source import TextSource
from saecircuits.training import checkpoint
from saecircuits.training.config import TrainConfig
from saecircuits.training.evaluation import SAEUnderTest, evaluate
from saecircuits.training.metrics import bar_info, log_row
from saecircuits.training.schedule import geometric_median, lr_factor


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

    # ---- state on disk (saecircuits.training.checkpoint)
    def save_checkpoint(self) -> None:
        checkpoint.save(self)

    def load_checkpoint(self) -> bool:
        return checkpoint.load(self)

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

    def start(self, resume: bool = False) -> None:
        """Load the checkpoint to resume from, or make sure there is none to overwrite (nothing is written)."""
        if self.rank == 0:
            recover_dir(checkpoint.checkpoint_dir(self.out))  # a kill during the last checkpoint's swap
        distributed.barrier()
        if resume and not self.load_checkpoint():
            raise SaecircuitsError(f"--resume: no checkpoint in {checkpoint.checkpoint_dir(self.out)}", "start without --resume")
        if not resume and checkpoint.checkpoint_dir(self.out).exists():
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
                    row = log_row(self, logs, tokens, tokens / self.seconds)
                    # only the main process shows a bar; there the row holds every SAE, also with parallel: saes
                    bar.update(tokens, bar_info(row, self.all_names[0]) if bar.enabled else None)
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
                extra_metadata={"model_path": str(Path(self.cfg.model).resolve())} if Path(self.cfg.model).is_dir() else None,
            ))
        return out
