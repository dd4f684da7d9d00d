"""Skipping and swapping layers ("Transformer Layers as Painters", Sun et al. 2024; "Do Language
Models Use Their Depth Efficiently?", Csordás et al. 2025).

The model runs block by block in a chosen order (``run_blocks``: TransformerLens's own embedding,
blocks, final norm and unembedding, exactly what ``model(tokens)`` does when the order is
``0..n-1``). For each intervention (skip one layer, skip a range, swap two adjacent layers) and
each later block j, against the clean run, over kept tokens:

- ``resid_rel_diff[j]``: mean ||r'_j - r_j|| / ||r_j|| of the residual after block j, and its cosine;
- ``contrib_rel_diff[j]``: mean ||c'_j - c_j|| / ||c_j|| of what block j adds (c = out - in), the
  effect of the intervention on later computation (Csordás et al., Fig. 3);
- the output: mean KL(clean || intervened) per token, next-token loss, top-1 agreement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saecircuits.core.errors import SaecircuitsError
from saecircuits.layerwise.config import SkipConfig
from saecircuits.layerwise.results import Intervention, SkipHalves, SkipResult
from saecircuits.layerwise.stream import token_batches
from saecircuits.model.loading import special_token_ids
from saecircuits.model.unembed import unembed

EPS = 1e-12


def run_blocks(model: HookedTransformer, tokens: torch.Tensor, order: list[int],
               start: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[int, tuple]]:
    """Logits [batch, pos, vocab] of the model with its blocks run in ``order`` (any subset, any order,
    repeats allowed), and each block's (input, output) residuals by block index (the last run of it).
    ``start``: the residual to run ``order`` from instead of the embedding (a shared clean prefix)."""
    residual, _, shortformer, mask = model.input_to_embed(tokens.to(model.cfg.device))
    if start is not None:
        residual = start
    seen: dict[int, tuple] = {}
    for i in order:
        out = model.blocks[i](residual, shortformer_pos_embed=shortformer, attention_mask=mask)
        seen[i] = (residual, out)
        residual = out
    return unembed(model, residual), seen


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """``"7"`` -> [7]; ``"10-14"`` -> [10, 11, 12, 13, 14]; ``"3,5"`` -> [3, 5]. Checked against the depth."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise SaecircuitsError(f"layer spec '{spec}' is not a layer, a range a-b, or a comma list") from None
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad or not out:
        raise SaecircuitsError(f"layer spec '{spec}' names layer(s) {bad or '(none)'} outside 0..{n_layers - 1}")
    return sorted(set(out))


def _skip_name(layers: list[int]) -> str:
    """``skip none``, ``skip 7``, ``skip 10-14`` (a range) or ``skip [3, 5]``."""
    if not layers:
        return "skip none"
    if len(layers) == 1:
        return f"skip {layers[0]}"
    return f"skip {layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else f"skip {layers}"


class _Effect:
    """Running sums of one intervention's effect."""

    def __init__(self, name: str, kind: str, layers: list[int], order: list[int], n: int):
        self.name, self.kind, self.layers, self.order = name, kind, layers, order
        self.first_later = max(layers) + 1 if layers else 0
        z = lambda: torch.zeros(n, dtype=torch.float64)  # noqa: E731
        self.resid_rel, self.resid_cos, self.contrib_rel = z(), z(), z()
        self.kl = self.loss = self.agree = 0.0
        self.n_tok = 0
        self.n_pred = 0

    def add(self, model: HookedTransformer, tokens: torch.Tensor, clean: dict[int, tuple], logp: torch.Tensor,
            target: torch.Tensor, keep: torch.Tensor, pred: torch.Tensor, top: torch.Tensor) -> None:
        """One batch of this intervention against the clean run: ``clean`` holds each block's (input,
        output) residuals, ``logp`` [batch, pos, vocab] the clean log-probabilities and ``top`` their argmax;
        ``keep`` marks the compared tokens, ``pred`` the positions whose next token (``target``) is text."""
        # blocks before the first changed one run as in the clean pass: start from its input
        first = next((k for k, i in enumerate(self.order) if i != k), len(self.order))
        if first < len(self.order):
            start = clean[first][0]
        else:  # the order is a prefix of the clean one: start from the output of its last block
            start = clean[first - 1][1] if first else None
        lg, seen = run_blocks(model, tokens, self.order[first:], start)
        seen = {**{i: clean[i] for i in self.order[:first]}, **seen}
        lq = F.log_softmax(lg.float(), -1)
        self.kl += float((logp.exp() * (logp - lq)).sum(-1)[keep].sum())
        self.loss += float((-lq[:, :-1].gather(-1, target[..., None])[..., 0])[pred].sum())
        self.agree += float((lq.argmax(-1) == top)[keep].sum())
        self.n_tok += int(keep.sum())
        self.n_pred += int(pred.sum())
        for j in range(self.first_later, len(self.resid_rel)):
            (c_in, c_out), (x_in, x_out) = clean[j], seen[j]
            r, r2 = c_out[keep].float(), x_out[keep].float()
            self.resid_rel[j] += float(((r2 - r).norm(dim=-1) / r.norm(dim=-1).clamp_min(EPS)).sum())
            self.resid_cos[j] += float(F.cosine_similarity(r2, r, dim=-1, eps=EPS).sum())
            c, c2 = r - c_in[keep].float(), r2 - x_in[keep].float()
            self.contrib_rel[j] += float(((c2 - c).norm(dim=-1) / c.norm(dim=-1).clamp_min(EPS)).sum())

    def result(self, labels: list[int]) -> Intervention:
        def later(v: torch.Tensor) -> list[float | None]:
            return [float(v[j]) / self.n_tok if j >= self.first_later and self.n_tok else None for j in labels]

        return Intervention(
            name=self.name, kind=self.kind, layers=self.layers,
            kl=self.kl / max(self.n_tok, 1), loss=self.loss / max(self.n_pred, 1),
            top1_agreement=self.agree / max(self.n_tok, 1),
            resid_rel_diff=later(self.resid_rel), resid_cos=later(self.resid_cos),
            contrib_rel_diff=later(self.contrib_rel),
        )


def _effects(n: int, cfg: SkipConfig) -> list[_Effect]:
    """The interventions ``cfg`` asks for, in order: the skips (every single layer by default), then the swaps."""
    effects: list[_Effect] = []
    for s in cfg.skips if cfg.skips is not None else [[i] for i in range(n)]:
        bad = [x for x in s if not 0 <= x < n]
        if bad:
            raise SaecircuitsError(f"skip {s} names layer(s) {bad} outside 0..{n - 1}")
        s = sorted(set(s))
        effects.append(_Effect(_skip_name(s), "skip", s, [i for i in range(n) if i not in s], n))
    if cfg.swap_adjacent:
        for i in range(n - 1):
            order = list(range(n))
            order[i], order[i + 1] = i + 1, i
            effects.append(_Effect(f"swap {i},{i + 1}", "swap", [i, i + 1], order, n))
    return effects


def _halves(results: list[Intervention], n: int) -> SkipHalves:
    """Mean and median KL of the single-layer skips in the first and the second half of the ``n`` layers."""
    skips = [r for r in results if r.kind == "skip" and len(r.layers) == 1]
    half = n // 2

    def mean_kl(rs: list[Intervention]) -> float | None:
        return sum(r.kl for r in rs) / len(rs) if rs else None

    def median_kl(rs: list[Intervention]) -> float | None:
        return float(torch.tensor([r.kl for r in rs]).median()) if rs else None

    first, second = [r for r in skips if r.layers[0] < half], [r for r in skips if r.layers[0] >= half]
    return SkipHalves(skip_kl_first_half=mean_kl(first), skip_kl_second_half=mean_kl(second),
                      skip_kl_first_half_median=median_kl(first), skip_kl_second_half_median=median_kl(second))


@torch.no_grad()
def measure(model: HookedTransformer, cfg: SkipConfig) -> dict:
    """Effects of skipping each layer (or ``cfg.skips``) and of swapping adjacent layers (``SkipResult``'s JSON)."""
    n = model.cfg.n_layers
    effects = _effects(n, cfg)
    special = torch.tensor(special_token_ids(model), dtype=torch.long)
    clean_loss, clean_pred, n_tok = 0.0, 0, 0
    for tokens in token_batches(model, cfg.stream):
        keep = ~torch.isin(tokens, special)
        keep[:, 0] = False
        pred = keep[:, :-1] & ~torch.isin(tokens[:, 1:], special)  # positions whose next token is text
        logits, clean = run_blocks(model, tokens, list(range(n)))
        logp = F.log_softmax(logits.float(), -1)
        target = tokens[:, 1:].to(logp.device)
        nll = -logp[:, :-1].gather(-1, target[..., None])[..., 0]
        clean_loss += float(nll[pred].sum())
        clean_pred += int(pred.sum())
        n_tok += int(keep.sum())
        top = logp.argmax(-1)
        for e in effects:
            e.add(model, tokens, clean, logp, target, keep, pred, top)
    labels = list(range(n))
    results = [e.result(labels) for e in effects]
    return SkipResult(model=model.cfg.model_name, layers=labels, tokens=n_tok, text=cfg.stream.text.model_dump(mode="json"),
                      clean_loss=clean_loss / max(clean_pred, 1), interventions=results, halves=_halves(results, n)).to_json()
