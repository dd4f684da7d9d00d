"""The tuned lens (Belrose et al. 2023): one learned affine translator per depth before the unembedding.

Stream index ``s`` (see ``stream``) is decoded as ``unembed(ln_final(h + h @ W[s] + b[s]))``; the
translators start at the identity (W = 0, b = 0), so an untrained tuned lens is the logit lens.
They are fit on the activation store's shuffled token stream to minimise KL(final logits || lens
logits), every depth at once, with the model frozen. The last depth (the model's own output) has
no translator. Saved as ``tuned_lens.safetensors`` (``weight`` [n_layers, d, d], ``bias``
[n_layers, d]) plus ``tuned_lens.json`` (the model it belongs to and the fit's held-out KL).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saecircuits.activations.store import ActivationStore, StoreConfig
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import ensure_dir, read_json, write_json
from saecircuits.core.progress import note
from saecircuits.core.tensors import load_tensors, save_tensors
from saecircuits.layerwise.config import TunedLensConfig
from saecircuits.layerwise.results import TunedLensEval, TunedLensSummary
from saecircuits.layerwise.stream import stream_hooks, stream_labels
from saecircuits.model.frozen import frozen
from saecircuits.model.loading import fingerprint
from saecircuits.model.unembed import unembed
from saecircuits.text.config import TextConfig
from saecircuits.text.source import TextSource

WEIGHTS, META = "tuned_lens.safetensors", "tuned_lens.json"


class TunedLens(torch.nn.Module):
    """Affine translators for stream indices 0..n_layers-1 (the last one is the model's output)."""

    def __init__(self, n_layers: int, d_model: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = torch.nn.Parameter(torch.zeros(n_layers, d_model))

    def translate(self, s: int, h: torch.Tensor) -> torch.Tensor:
        """The translated residual of stream index ``s`` ([..., d_model])."""
        if s >= self.weight.shape[0]:
            return h
        return h + h @ self.weight[s] + self.bias[s]

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """[n_layers + 1, ..., d_model] residuals at every depth -> translated, same shape."""
        return torch.stack([self.translate(s, stack[s]) for s in range(stack.shape[0])])


def decode(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """Logits of residual vectors [..., d_model] read through the final norm and unembedding (and soft-cap)."""
    shape = resid.shape
    logits = unembed(model, resid.reshape(-1, 1, shape[-1]))  # the norm modules expect [batch, pos, d_model]
    return logits.reshape(*shape[:-1], logits.shape[-1])


def _kl(target_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(target || softmax(logits)), in nats."""
    return F.kl_div(F.log_softmax(logits, -1), target_logp, log_target=True, reduction="batchmean")


def _store(model: HookedTransformer, text: TextConfig, batch: int, seed: int, split: str) -> ActivationStore:
    cfg = StoreConfig(batch_size_tokens=batch, buffer_tokens=max(batch * 8, 8192), normalize="none", seed=seed)
    return ActivationStore.from_model(model, stream_hooks(model), TextSource.for_model(text, model), cfg,
                                      split=split, repeat=split == "train")  # type: ignore[arg-type]


def train(model: HookedTransformer, cfg: TunedLensConfig) -> tuple[TunedLens, dict]:
    """Fit a tuned lens on ``cfg.tokens`` rows; returns it and its summary (``TunedLensSummary``'s JSON: held-out KL per depth)."""
    hooks = stream_hooks(model)
    n, d = model.cfg.n_layers, model.cfg.d_model
    torch.manual_seed(cfg.seed)
    lens = TunedLens(n, d)
    opt = torch.optim.Adam(lens.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_steps = max(1, math.ceil(cfg.tokens / cfg.batch_size_tokens))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, n_steps // 10)) * (1 - i / n_steps))
    store = _store(model, cfg.text, cfg.batch_size_tokens, cfg.seed, "train")
    start, losses = time.perf_counter(), []
    with frozen(model):  # no gradients into the model's own weights while the lens trains
        for step, batch in enumerate(store.batches(max_tokens=cfg.tokens)):
            with torch.no_grad():
                target = F.log_softmax(decode(model, batch[hooks[-1]]), -1)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for s in range(n):  # one backward per depth: only one [batch, vocab] graph alive at a time
                loss = _kl(target, decode(model, lens.translate(s, batch[hooks[s]])))
                loss.backward()
                total += loss.item()
            opt.step()
            sched.step()
            losses.append(total / n)
            if step % 20 == 0 or step == n_steps - 1:
                note(f"tuned lens step {step + 1}/{n_steps}: mean KL over depths {losses[-1]:.4f}", dim=False)
    summary = TunedLensSummary(
        model=model.cfg.model_name, fingerprint=fingerprint(model), n_layers=n, d_model=d,
        config=cfg.model_dump(mode="json"), steps=len(losses), train_kl_first=losses[0], train_kl_last=losses[-1],
        seconds=time.perf_counter() - start,
    )
    if cfg.eval_tokens:
        summary.eval = evaluate(model, lens, cfg.text, cfg.eval_tokens, cfg.batch_size_tokens)
    return lens, summary.to_json()


@torch.no_grad()
def evaluate(model: HookedTransformer, lens: TunedLens, text: TextConfig, tokens: int, batch: int = 256) -> TunedLensEval:
    """Mean KL(final || lens) per depth on held-out text, for the tuned lens and the plain logit lens."""
    hooks = stream_hooks(model)
    n = model.cfg.n_layers
    split = "eval" if text.eval_fraction > 0 else "train"
    store = _store(model, text, batch, 12345, split)
    kl_tuned, kl_logit, rows = torch.zeros(n + 1, dtype=torch.float64), torch.zeros(n + 1, dtype=torch.float64), 0
    for b in store.batches(max_tokens=tokens, drop_last=False):
        target = F.log_softmax(decode(model, b[hooks[-1]]), -1)
        m = len(target)
        for s in range(n + 1):
            kl_logit[s] += float(_kl(target, decode(model, b[hooks[s]]))) * m
            kl_tuned[s] += float(_kl(target, decode(model, lens.translate(s, b[hooks[s]])))) * m
        rows += m
    if rows == 0:
        raise SaecircuitsError("no held-out tokens to evaluate the tuned lens on", "use a longer text or set eval_tokens to 0")
    return TunedLensEval(layers=stream_labels(model), tokens=rows, kl_logit_lens=(kl_logit / rows).tolist(),
                         kl_tuned_lens=(kl_tuned / rows).tolist())


def save(lens: TunedLens, folder: str | Path, summary: dict) -> Path:
    folder = ensure_dir(folder)
    save_tensors(folder / WEIGHTS, {"weight": lens.weight.detach(), "bias": lens.bias.detach()},
                 metadata={"model": summary["model"], "fingerprint": summary["fingerprint"]})
    write_json(folder / META, summary)
    return folder


def load(folder: str | Path, model: HookedTransformer) -> TunedLens:
    """A saved tuned lens; a clear error when it was trained for another model."""
    folder = Path(folder)
    meta = read_json(folder / META, what="tuned lens description")
    if meta.get("fingerprint") != fingerprint(model):
        raise SaecircuitsError(
            f"tuned lens {folder} was trained on {meta.get('model')} (fingerprint {meta.get('fingerprint')}), "
            f"not on this {model.cfg.model_name}", "train one for this model with: saecircuits layers tuned-lens")
    t = load_tensors(folder / WEIGHTS, what="tuned lens weights")
    n, d = model.cfg.n_layers, model.cfg.d_model
    if tuple(t.get("weight", torch.empty(0)).shape) != (n, d, d) or tuple(t.get("bias", torch.empty(0)).shape) != (n, d):
        raise SaecircuitsError(f"{folder / WEIGHTS} does not hold weight [{n}, {d}, {d}] and bias [{n}, {d}]")
    lens = TunedLens(n, d)
    with torch.no_grad():
        lens.weight.copy_(t["weight"])
        lens.bias.copy_(t["bias"])
    return lens
