"""Activation matching of SAEs over one stream of text: which features of one layer or model
correspond to which of another.

Both SAEs run over the same text; the Pearson r of every feature pair comes from running sums
(``codes``), features that fire fewer than ``min_fires`` times are dead and masked, and the alive
ones are assigned (``assignment``). Each pair result carries the matched feature pairs with filter
flags, the distribution of r (and of the decoder cosine when both decoders share a space), and
similarity statistics of the kept pairs against a null (``similarity``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.progress import TokenBar
from saecircuits.matching import similarity
from saecircuits.matching.assignment import assign
from saecircuits.matching.config import MatchConfig
from saecircuits.matching.firing import FiringStats, TokenClasses
from saecircuits.matching.matcher import ActivationMatcher, Entry
from saecircuits.matching.result import MatchedPair, MatchResult, PairResult, SaeSummary
from saecircuits.matching.scores import cosine_matrix, distribution
from saecircuits.matching.stream import Batch, aligned_model_batches, model_batches
from saecircuits.model.loading import hf_name, special_token_ids
from saecircuits.sae import SparseAutoencoder


def pair_table(r: torch.Tensor, ia: np.ndarray, ib: np.ndarray, stats_a: FiringStats, stats_b: FiringStats,
               cfg: MatchConfig, cos: torch.Tensor | None, classes_a: TokenClasses | None,
               classes_b: TokenClasses | None) -> list[MatchedPair]:
    """One row per matched pair: ids, r, decoder cosine, firing counts, special shares, top tokens, flags."""
    share_a, share_b = stats_a.special_share(), stats_b.special_share()
    rv = r[ia, ib].numpy() if len(ia) else np.zeros(0)
    cv = cos[ia, ib].numpy() if cos is not None and len(ia) else None
    rows = []
    for k, (i, j) in enumerate(zip(ia.tolist(), ib.tolist(), strict=True)):
        top_a = stats_a.top_token_ids(i, cfg.top_tokens)
        top_b = stats_b.top_token_ids(j, cfg.top_tokens)
        low = not (rv[k] >= cfg.min_r)
        spec = bool(share_a[i] >= cfg.max_special_share or share_b[j] >= cfg.max_special_share)
        rows.append(MatchedPair(
            a=i, b=j, r=float(rv[k]),
            cos=float(cv[k]) if cv is not None else None,
            fires_a=int(stats_a.fires[i]), fires_b=int(stats_b.fires[j]),
            special_share_a=float(share_a[i]), special_share_b=float(share_b[j]),
            top_tokens_a=(classes_a.text(top_a) if classes_a else [str(t) for t in top_a]),
            top_tokens_b=(classes_b.text(top_b) if classes_b else [str(t) for t in top_b]),
            low_r=low, special_only=spec, kept=not low and not spec,
        ))
    return rows


def match_pair(matcher: ActivationMatcher, a: str, b: str, cfg: MatchConfig, same_space: bool,
               classes: dict[str, TokenClasses]) -> PairResult:
    """Match one (A, B) pair from the accumulated sums: pairs table, summary, similarity statistics."""
    ea, eb = matcher.entries[a], matcher.entries[b]
    r = matcher.acc[(a, b)].correlation()
    alive_a = (ea.stats.fires >= cfg.min_fires).numpy()
    alive_b = (eb.stats.fires >= cfg.min_fires).numpy()
    alive_a &= ~np.isnan(r.numpy()).all(1)
    alive_b &= ~np.isnan(r.numpy()).all(0)
    start = time.perf_counter()
    ia, ib = assign(r.numpy(), cfg.method, alive_a, alive_b)
    assign_seconds = time.perf_counter() - start
    cos = cosine_matrix(ea.sae.W_dec.detach(), eb.sae.W_dec.detach()) if same_space and ea.sae.d_out == eb.sae.d_out else None
    rows = pair_table(r, ia, ib, ea.stats, eb.stats, cfg, cos, classes.get(ea.side), classes.get(eb.side))
    rv = np.array([p.r for p in rows]) if rows else np.zeros(0)
    kept = np.array([p.kept for p in rows], dtype=bool) if rows else np.zeros(0, dtype=bool)
    summary = {
        "tokens": matcher.acc[(a, b)].n, "d_sae_a": ea.sae.d_sae, "d_sae_b": eb.sae.d_sae,
        "alive_a": int(alive_a.sum()), "alive_b": int(alive_b.sum()), "n_pairs": len(rows), "n_kept": int(kept.sum()),
        "n_low_r": int(sum(p.low_r for p in rows)), "n_special_only": int(sum(p.special_only for p in rows)),
        "unique_b": int(len(np.unique(ib))),
        **distribution(rv, "r", total=int(alive_a.sum())),
        "kept": distribution(rv[kept], "r") if kept.any() else {},
        "correlation_seconds": matcher.acc[(a, b)].seconds, "assign_seconds": assign_seconds,
    }
    if cos is not None and len(rows):
        summary.update(distribution(np.array([p.cos for p in rows]), "cos"))
    sim = _similarity(matcher, a, b, cfg, ia[kept], ib[kept], alive_a, alive_b) if cfg.null > 0 and kept.sum() >= 4 else {}
    return PairResult(a=a, b=b, hook_a=ea.sae.cfg.hook, hook_b=eb.sae.cfg.hook, method=cfg.method,
                      summary=summary, similarity=sim, pairs=rows)


def _similarity(matcher: ActivationMatcher, a: str, b: str, cfg: MatchConfig, ka: np.ndarray, kb: np.ndarray,
                alive_a: np.ndarray, alive_b: np.ndarray) -> dict:
    """Similarity statistics of the kept pairs (features ``ka`` of A with ``kb`` of B) against a null drawn from
    the alive features: of the decoder rows, and of the sampled activations when there are enough."""
    ea, eb = matcher.entries[a], matcher.entries[b]
    da, db = ea.sae.W_dec.detach().double(), eb.sae.W_dec.detach().double()
    pool_a, pool_b = np.nonzero(alive_a)[0], np.nonzero(alive_b)[0]
    sim = {"decoder": similarity.compare(
        da[ka], db[kb], cfg.measures, n_null=cfg.null, seed=cfg.seed, pool=(da[pool_a], db[pool_b]),
        n_subsets=cfg.random_subsets, rsa_max_points=cfg.rsa_max_points,
    )}
    sa, sb = matcher.sample_acts(a), matcher.sample_acts(b)
    if cfg.sample_tokens > 0 and len(sa) >= 8:
        sim["activations"] = similarity.compare(
            sa[:, ka].double(), sb[:, kb].double(), cfg.measures, n_null=cfg.null, seed=cfg.seed,
            pool=(sa[:, pool_a].double(), sb[:, pool_b].double()), pool_axis="columns",
            n_subsets=cfg.random_subsets, rsa_max_points=cfg.rsa_max_points,
            max_dims=min(cfg.activation_svcca_dims, max(len(sa) // 4, 1)),
        )
    return sim


def pair_result(matcher: ActivationMatcher, a: str, b: str, cfg: MatchConfig, same_space: bool,
                classes: dict[str, TokenClasses]) -> dict:
    """``match_pair`` as JSON: one entry of ``match_saes(...)["results"]``."""
    return match_pair(matcher, a, b, cfg, same_space, classes).to_json()


def match_saes(saes_a: dict[str, SparseAutoencoder], saes_b: dict[str, SparseAutoencoder], model_a, model_b=None,
               cfg: MatchConfig | None = None, pairs: list[tuple[str, str]] | None = None, progress: bool = True,
               align_to=None) -> dict:
    """Activation matching of every (A, B) pair of SAEs over one stream of text. JSON-able result.

    ``model_b`` None: both sides read the same model (one forward pass for every hook); else the
    text is aligned across the two tokenizers by character offsets (``saecircuits.text.alignment``).
    ``align_to`` (a second model, with ``model_b`` None): same-model pairs are compared only at the
    character-aligned positions a comparison of ``model_a`` with ``align_to`` uses (only its tokenizer is used), so
    same-model and cross-model numbers are measured on one token set.
    Returns ``MatchResult.to_json()``: {"config", "models", "same_model", "saes", "timing", "results": [pair_result ...]}.
    """
    cfg = cfg or MatchConfig()
    same = model_b is None or model_b is model_a
    if align_to is not None and not same:
        raise SaecircuitsError("align_to is for same-model pairs; with model_b the text is aligned to model_b already")
    classes = {"a": TokenClasses(model_a.tokenizer, special_token_ids(model_a))}
    classes["b"] = classes["a"] if same else TokenClasses(model_b.tokenizer, special_token_ids(model_b))
    matcher = ActivationMatcher(saes_a, saes_b, pairs, cfg.top_m, cfg.sample_tokens, classes, cfg.drop_outlier_norm,
                                limit=cfg.tokens)
    sites_a = [s.cfg.hook for s in saes_a.values()]
    sites_b = [s.cfg.hook for s in saes_b.values()]
    stream_seconds = _read_stream(matcher, _stream(model_a, sites_a, None if same else model_b, sites_b, align_to, cfg),
                                  cfg, progress)
    results = []
    t0 = time.perf_counter()
    for a, b in matcher.pairs:
        results.append(match_pair(matcher, a, b, cfg, same, classes))
        del matcher.acc[(a, b)].cross  # free d_a·d_b float64 as soon as a pair is done
    corr = sum(acc.seconds for acc in matcher.acc.values())
    models = {"a": hf_name(model_a), "b": hf_name(model_b if not same else model_a),
              **({"aligned_to": hf_name(align_to)} if align_to is not None else {})}
    saes = {n: _sae_summary(e, cfg.min_fires) for n, e in matcher.entries.items()}
    timing = {"stream_seconds": stream_seconds, "encode_seconds": matcher.encode_seconds, "correlation_seconds": corr,
              "forward_seconds": stream_seconds - matcher.encode_seconds - corr,
              "results_seconds": time.perf_counter() - t0, "tokens": matcher.compared,
              "dropped_outlier_tokens": matcher.dropped_outliers}
    return MatchResult(config=cfg.model_dump(mode="json"), models=models, same_model=same, saes=saes, timing=timing,
                       results=results).to_json()


def _stream(model_a, sites_a: list[str], model_b, sites_b: list[str], align_to, cfg: MatchConfig) -> Iterator[Batch]:
    """The batches to compare: one model's (at every position the SAEs were trained on, or only at the
    positions aligned to ``align_to``'s tokens), or two models' at character-aligned positions."""
    if model_b is None and align_to is None:
        return model_batches(model_a, sites_a + sites_b, cfg.text, None, cfg.batch_contexts)
    if model_b is None:
        return (b.side_a_on_both() for b in aligned_model_batches(model_a, sites_a + sites_b, align_to, [], cfg.text,
                                                                  None, cfg.batch_contexts, cfg.alignment))
    return aligned_model_batches(model_a, sites_a, model_b, sites_b, cfg.text, None, cfg.batch_contexts, cfg.alignment)


def _read_stream(matcher: ActivationMatcher, stream: Iterator[Batch], cfg: MatchConfig, progress: bool) -> float:
    """Feed ``stream`` to ``matcher`` until ``cfg.tokens`` rows are compared; returns the seconds it took."""
    start = time.perf_counter()
    with TokenBar("match", cfg.tokens, enabled=progress, transient=True) as bar:
        for batch in stream:
            matcher.update(batch)
            bar.update(matcher.compared)
            if matcher.compared >= cfg.tokens:
                break
    stream_seconds = time.perf_counter() - start
    if matcher.compared == 0:
        raise SaecircuitsError(f"text source '{cfg.text.source}' gave no tokens to compare")
    return stream_seconds


def _sae_summary(e: Entry, min_fires: int) -> SaeSummary:
    """What the result records of one SAE after the stream."""
    return SaeSummary(
        side=e.side, hook=e.sae.cfg.hook, d_sae=e.sae.d_sae, architecture=e.sae.architecture,
        alive=int((e.stats.fires >= min_fires).sum()), compared_tokens=e.stats.rows,
        fires_special_share=float(e.stats.fires_special.sum() / max(int((e.stats.fires + e.stats.fires_special).sum()), 1)),
        mean_active=e.stats.mean_active().float().tolist(),
    )


def sae_names(folders: list[str | Path]) -> list[str]:
    """Distinct short names for SAE folders (the folder name, made unique with a suffix)."""
    names: list[str] = []
    for f in folders:
        base = Path(f).name or str(f)
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}~{k}"
        names.append(name)
    return names
