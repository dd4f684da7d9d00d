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
from pydantic import Field
from transformer_lens import HookedTransformer
from transformer_lens.utils import apply_softcap

from saecircuits.core.config import Config
from saecircuits.core.errors import SaecircuitsError
from saecircuits.layerwise.stream import StreamConfig, token_batches
from saecircuits.model.loading import special_token_ids

EPS = 1e-12


class SkipConfig(Config):
    """Which interventions to run, over which text."""

    stream: StreamConfig = StreamConfig(tokens=2048, batch_size=4)
    skips: list[list[int]] | None = Field(
        None, description="each a list of layers skipped together ([]: skip nothing, a control); None: every single layer")
    swap_adjacent: bool = True


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
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    return apply_softcap(model.unembed(residual), model.cfg.output_logits_soft_cap), seen


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

    def result(self, labels: list[int]) -> dict:
        def later(v: torch.Tensor) -> list[float | None]:
            return [float(v[j]) / self.n_tok if j >= self.first_later and self.n_tok else None for j in labels]

        return {
            "name": self.name, "kind": self.kind, "layers": self.layers,
            "kl": self.kl / max(self.n_tok, 1), "loss": self.loss / max(self.n_pred, 1),
            "top1_agreement": self.agree / max(self.n_tok, 1),
            "resid_rel_diff": later(self.resid_rel), "resid_cos": later(self.resid_cos),
            "contrib_rel_diff": later(self.contrib_rel),
        }


@torch.no_grad()
def measure(model: HookedTransformer, cfg: SkipConfig) -> dict:
    """Effects of skipping each layer (or ``cfg.skips``) and of swapping adjacent layers."""
    n = model.cfg.n_layers
    effects: list[_Effect] = []
    for s in cfg.skips if cfg.skips is not None else [[i] for i in range(n)]:
        bad = [x for x in s if not 0 <= x < n]
        if bad:
            raise SaecircuitsError(f"skip {s} names layer(s) {bad} outside 0..{n - 1}")
        s = sorted(set(s))
        if not s:
            name = "skip none"
        elif len(s) == 1:
            name = f"skip {s[0]}"
        else:
            name = f"skip {s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else f"skip {s}"
        effects.append(_Effect(name, "skip", s, [i for i in range(n) if i not in s], n))
    if cfg.swap_adjacent:
        for i in range(n - 1):
            order = list(range(n))
            order[i], order[i + 1] = i + 1, i
            effects.append(_Effect(f"swap {i},{i + 1}", "swap", [i, i + 1], order, n))
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
            # blocks before the first changed one run as in the clean pass: start from its input
            first = next((k for k, i in enumerate(e.order) if i != k), len(e.order))
            if first < len(e.order):
                start = clean[first][0]
            else:  # the order is a prefix of the clean one: start from the output of its last block
                start = clean[first - 1][1] if first else None
            lg, seen = run_blocks(model, tokens, e.order[first:], start)
            seen = {**{i: clean[i] for i in e.order[:first]}, **seen}
            lq = F.log_softmax(lg.float(), -1)
            e.kl += float((logp.exp() * (logp - lq)).sum(-1)[keep].sum())
            e.loss += float((-lq[:, :-1].gather(-1, target[..., None])[..., 0])[pred].sum())
            e.agree += float((lq.argmax(-1) == top)[keep].sum())
            e.n_tok += int(keep.sum())
            e.n_pred += int(pred.sum())
            for j in range(e.first_later, n):
                (c_in, c_out), (x_in, x_out) = clean[j], seen[j]
                r, r2 = c_out[keep].float(), x_out[keep].float()
                e.resid_rel[j] += float(((r2 - r).norm(dim=-1) / r.norm(dim=-1).clamp_min(EPS)).sum())
                e.resid_cos[j] += float(F.cosine_similarity(r2, r, dim=-1, eps=EPS).sum())
                c, c2 = r - c_in[keep].float(), r2 - x_in[keep].float()
                e.contrib_rel[j] += float(((c2 - c).norm(dim=-1) / c.norm(dim=-1).clamp_min(EPS)).sum())
    labels = list(range(n))
    results = [e.result(labels) for e in effects]
    skips = [r for r in results if r["kind"] == "skip" and len(r["layers"]) == 1]
    half = n // 2

    def mean_kl(rs: list[dict]) -> float | None:
        return sum(r["kl"] for r in rs) / len(rs) if rs else None

    def median_kl(rs: list[dict]) -> float | None:
        return float(torch.tensor([r["kl"] for r in rs]).median()) if rs else None

    return {
        "analysis": "layer_skipping", "model": model.cfg.model_name, "layers": labels, "tokens": n_tok,
        "text": cfg.stream.text.model_dump(mode="json"),
        "clean_loss": clean_loss / max(clean_pred, 1),
        "interventions": results,
        "halves": {
            "skip_kl_first_half": mean_kl([r for r in skips if r["layers"][0] < half]),
            "skip_kl_second_half": mean_kl([r for r in skips if r["layers"][0] >= half]),
            "skip_kl_first_half_median": median_kl([r for r in skips if r["layers"][0] < half]),
            "skip_kl_second_half_median": median_kl([r for r in skips if r["layers"][0] >= half]),
        },
    }
