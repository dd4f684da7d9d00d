"""Feature dashboards end to end: one pass over text, then the HTML site, the JSON exports and W&B.

    text contexts -> model forward (stopped after the SAE's layer) -> SAE encode -> FeatureStats
    (checkpointed every N batches) -> weight-based stats -> feature views -> HTML / JSON / W&B

Output folder:
    index.html                 searchable, sortable table of every feature
    features/<id>.html         one page per feature (dead ones say so, with their weight-based views)
    stats.json                 run summary and per-feature numbers (for other stages)
    stats.safetensors          per-feature arrays: density, max_act, top examples, logits, neighbours
    neuronpedia/batch-<n>.json live features in the layout of Neuronpedia's bulk import
    summary.json               what ran, counts, seconds per phase
    checkpoint/                running statistics (resume point; the finished pass is reused on a rerun)
    wandb/                     the W&B run (offline runs are uploaded later with ``wandb sync``)
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from saecircuits.activations.store import ModelActivations
from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import ensure_dir, read_json, recover_dir, staged_dir, write_json, write_text
from saecircuits.core.progress import TokenBar
from saecircuits.core.tensors import load_tensors, save_tensors
from saecircuits.core.tracking import Run
from saecircuits.dashboards import html as H
from saecircuits.dashboards import neuronpedia
from saecircuits.dashboards.config import DashboardConfig
from saecircuits.dashboards.stats import STATE_FORMAT, WINDOW_PAD, FeatureStats
from saecircuits.dashboards.weights import logit_effects, nearest_features
from saecircuits.model.loading import fingerprint
from saecircuits.model.loading import load as load_model
from saecircuits.sae import format as sae_format
from saecircuits.sae.directions import residual_directions
from saecircuits.text.config import TextConfig
from saecircuits.text.source import TextSource


def build_dashboards(sae_dir: str | Path, model: str = "smollm2-135m", text_source: str = "stdlib",
                     out_dir: str | Path = "runs/dashboards", n_tokens: int = 100_000, *, wandb: str = "auto",
                     restart: bool = False, progress: bool = True, loaded_model=None, wandb_run: Run | None = None,
                     **settings) -> dict:
    """Dashboards for every feature of the SAE in ``sae_dir``; returns the run summary.

    ``settings`` are further ``DashboardConfig`` fields (e.g. ``top_k=10``, ``text={...}``);
    ``loaded_model`` skips loading ``model`` by name; ``wandb_run`` logs into that W&B run (left open) under
    the SAE's name instead of starting one. A rerun resumes from the checkpoint in
    ``out_dir`` (``restart=True`` discards it).
    """
    text = settings.pop("text", {})
    text = {"source": text_source, **(text.model_dump() if isinstance(text, TextConfig) else text)}
    data = {"sae": str(sae_dir), "model": model, "text": text, "out": str(out_dir), "tokens": n_tokens,
            "wandb": {"mode": wandb}, **settings}
    return run(validate(DashboardConfig, data, where="dashboards"), restart=restart, progress=progress, model=loaded_model,
               wandb_run=wandb_run)


def run(cfg: DashboardConfig, restart: bool = False, progress: bool = True, model=None, wandb_run: Run | None = None) -> dict:
    started = time.perf_counter()
    sae = sae_format.load(cfg.sae)
    out = ensure_dir(cfg.out)
    model = model if model is not None else load_model(cfg.model)
    pass_result = stats_pass(cfg, sae, model, out, restart=restart, progress=progress)
    stats = pass_result["stats"]
    t_weights = time.perf_counter()
    weights = weight_stats(cfg, sae, model)
    t_render = time.perf_counter()
    meta = {"sae_name": Path(cfg.sae).resolve().name, "sae": str(cfg.sae), "model": cfg.model, "hook": sae.cfg.hook,
            "architecture": sae.cfg.architecture, "d_sae": sae.d_sae, "text": cfg.text.source,
            "context_size": cfg.text.context_size, "tokens": int(stats.t["n_tokens"]),
            "contexts": int(stats.t["n_contexts"])}
    summ = stats.summary()
    strings = token_strings(model.tokenizer, summ, weights)
    rows, wb = write_outputs(cfg, out, summ, weights, stats, strings, meta, run=wandb_run)
    done = time.perf_counter()
    n_dead = sum(r["dead"] for r in rows)
    summary = {
        **meta, "out": str(out), "index": str(out / "index.html"), "n_features": len(rows),
        "n_live": len(rows) - n_dead, "n_dead": n_dead, "neuronpedia_files": wb["neuronpedia_files"],
        "resumed_from_batch": pass_result["resumed_from_batch"], "source_exhausted": pass_result["exhausted"],
        "seconds": {"stats_pass": pass_result["seconds"], "weights": t_render - t_weights,
                    "outputs": done - t_render, "total": done - started},
        "wandb_mode": wb["mode"], "wandb_sync": wb["sync"],
    }
    summary["tokens_per_second"] = meta["tokens"] / max(pass_result["seconds"], 1e-9) if pass_result["seconds"] else None
    write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------- the pass over text


def _fingerprint(cfg: DashboardConfig, sae_dir: str, model) -> str:
    h = hashlib.sha256()
    h.update(f"{STATE_FORMAT}{sorted(cfg.stats_fields().items())}".encode())
    h.update(fingerprint(model).encode())
    for name in ("cfg.json", "sae_weights.safetensors"):
        with open(Path(sae_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:24]


def _new_stats(cfg: DashboardConfig, d_sae: int) -> FeatureStats:
    return FeatureStats(d_sae, cfg.top_k, cfg.n_samples, cfg.window_before, cfg.window_after,
                        bins_per_decade=cfg.bins_per_decade, seed=cfg.seed)


def _save_checkpoint(folder: Path, stats: FeatureStats, state: dict) -> None:
    with staged_dir(folder, ".checkpoint.") as tmp:
        save_tensors(tmp / "stats.safetensors", stats.state_dict())
        write_json(tmp / "state.json", state)


def _resume(folder: Path, fp: str, stats: FeatureStats, restart: bool) -> dict:
    """The checkpoint in ``folder`` loaded into ``stats`` (discarded first with ``restart``): its state
    (batches done, exhausted, seconds, done), or a fresh state when there is none."""
    if restart and folder.exists():
        shutil.rmtree(folder)
    if not (folder / "state.json").exists():
        return {"batches": 0, "exhausted": False, "seconds": 0.0, "done": False}
    state = read_json(folder / "state.json", what="dashboard checkpoint")
    if state.get("fingerprint") != fp:
        raise SaecircuitsError(f"{folder} holds statistics of another run (different SAE, model, text or settings)",
                               "pass --restart to discard them, or choose another --out")
    stats.load_state_dict(load_tensors(folder / "stats.safetensors", what="dashboard checkpoint"))
    return state


def stats_pass(cfg: DashboardConfig, sae, model, out: Path, restart: bool = False, progress: bool = True) -> dict:
    """Run the model and the SAE over the text once, in batches; checkpointed and resumable."""
    site = sae_format.check_fits(sae, model, cfg.sae)
    acts = ModelActivations(model, [site], forward=cfg.forward)
    stats = _new_stats(cfg, sae.d_sae)
    fp = _fingerprint(cfg, cfg.sae, model)
    folder = recover_dir(out / "checkpoint")  # a kill during the last checkpoint's swap
    resumed = _resume(folder, fp, stats, restart)
    start_batch, exhausted, seconds = resumed["batches"], resumed["exhausted"], resumed["seconds"]
    if resumed["done"]:
        return {"stats": stats, "resumed_from_batch": start_batch, "exhausted": exhausted, "seconds": seconds}

    B, T = cfg.batch_contexts, cfg.text.context_size
    n_batches = math.ceil(math.ceil(cfg.tokens / T) / B)
    contexts = TextSource.for_model(cfg.text, model).contexts(cfg.split)
    for _ in range(start_batch * B):  # resuming: tokenize past finished batches, no forward pass
        if next(contexts, None) is None:
            break
    bar = TokenBar("dashboards", n_batches * B * T, start_batch * B * T, enabled=progress)
    batch_index = start_batch
    t0 = time.perf_counter()

    def state(done: bool) -> dict:
        return {"fingerprint": fp, "batches": batch_index, "done": done, "exhausted": exhausted,
                "tokens": int(stats.t["n_tokens"]), "seconds": seconds + time.perf_counter() - t0}

    try:
        with torch.inference_mode():
            while batch_index < n_batches and not exhausted:
                batch = [c for _, c in zip(range(B), contexts, strict=False)]
                exhausted = len(batch) < B
                if not batch:
                    break
                tokens = torch.as_tensor(np.stack(batch))
                x = acts.activations(tokens)[site.key]
                keep = acts.keep_mask(tokens)
                f = sae.encode(x.to(sae.W_enc.dtype))
                f.mul_(keep[:, None])
                stats.update(f.view(len(batch), T, -1), tokens, int(keep.sum()), batch_index * B, batch_index)
                batch_index += 1
                bar.update(batch_index * B * T)
                if batch_index % cfg.checkpoint_every == 0 and batch_index < n_batches:
                    _save_checkpoint(folder, stats, state(False))
    finally:
        bar.close()
    if int(stats.t["n_contexts"]) == 0:
        raise SaecircuitsError(f"text source '{cfg.text.source}' gave no contexts", "check the text source")
    final = state(True)
    _save_checkpoint(folder, stats, final)
    return {"stats": stats, "resumed_from_batch": start_batch, "exhausted": exhausted, "seconds": final["seconds"]}


# ---------------------------------------------------------------- weights and views


def weight_stats(cfg: DashboardConfig, sae, model) -> dict[str, torch.Tensor]:
    """Logit effects (when the SAE's output site reaches the residual stream linearly) and neighbours."""
    with torch.inference_mode():
        W_dec = sae.W_dec.detach()
        out: dict[str, torch.Tensor] = {}
        dirs = residual_directions(W_dec, sae.cfg.hook_out or sae.cfg.hook, model)
        if dirs is not None:
            out.update(logit_effects(dirs, model.W_U.detach(), cfg.n_logits))
        out["nb_ids"], out["nb_cos"] = nearest_features(W_dec, cfg.n_neighbours)
        return out


def token_strings(tokenizer, summ: dict, weights: dict) -> dict[int, str]:
    """Each token id that will be shown, decoded alone."""
    parts = [summ["top_win_tok"].flatten(), summ["smp_win_tok"].flatten()]
    parts += [weights[k].flatten() for k in ("pos_ids", "neg_ids") if k in weights]
    ids = torch.unique(torch.cat([p.long() for p in parts])).tolist()
    ids = [i for i in ids if i != WINDOW_PAD]
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False) if ids else []
    return dict(zip(ids, texts, strict=True))


def feature_views(summ: dict, weights: dict, stats: FeatureStats, cfg: DashboardConfig, start: int, stop: int,
                  dead_all: list[bool]) -> list[dict]:
    """Everything the pages show about features ``start`` to ``stop`` - 1, as plain Python values (tokens as ids)."""
    # window activations to 3 decimals: what pages and exports show (the exact values stay in stats.safetensors)
    lists = {k: (v[start:stop].round(decimals=3) if k.endswith("win_act") else v[start:stop]).tolist() for k, v in summ.items()}
    w = {k: v[start:stop].tolist() for k, v in weights.items()}
    edges = stats.hist_edges().tolist()
    n_tokens = int(stats.t["n_tokens"])
    return [feature_view(i, i - start, lists, w, edges, n_tokens, dead_all, cfg) for i in range(start, stop)]


def feature_view(fid: int, i: int, s: dict, w: dict, edges: list[float], n_tokens: int, dead_all: list[bool],
                 cfg: DashboardConfig) -> dict:
    """Feature ``fid``'s view from row ``i`` of per-feature lists ``s`` (``FeatureStats.summary``) and ``w``
    (``weight_stats``); ``dead_all`` marks every feature's neighbours.

    Examples are tuples (max activation, token ids, activations, centre index, label); ids of -1 pad
    windows that run past the context.
    """
    dead = s["dead"][i]
    fv: dict = {"id": fid, "dead": dead, "density": s["density"][i], "fired": s["fired"][i], "n_tokens": n_tokens,
                "max_act": s["max_act"][i], "mean_act": s["mean_act"][i], "top": [], "bands": [], "top_tokens": [],
                "pos_logits": [], "neg_logits": [], "logit_hist": None}
    if "pos_ids" in w:
        fv["pos_logits"] = list(zip(w["pos_ids"][i], w["pos_vals"][i], strict=True))
        fv["neg_logits"] = list(zip(w["neg_ids"][i], w["neg_vals"][i], strict=True))
        fv["logit_hist"] = (w["logit_hist"][i], w["logit_min"][i], w["logit_max"][i])
    fv["neighbours"] = [(j, c, dead_all[j]) for j, c in zip(w["nb_ids"][i], w["nb_cos"][i], strict=True)]
    fv["hist_counts"], fv["hist_edges"] = _display_histogram(s["hist"][i], edges, fv["max_act"])
    if dead:
        return fv

    def examples(kind: str) -> list[tuple]:
        ctx, pos, val = s[f"{kind}_ctx"][i], s[f"{kind}_pos"][i], s[f"{kind}_val"][i]
        wtok, wact = s[f"{kind}_win_tok"][i], s[f"{kind}_win_act"][i]
        return [(val[r], wtok[r], wact[r], cfg.window_before, f"context {ctx[r]}, position {pos[r]}")
                for r in range(len(ctx)) if ctx[r] >= 0]

    fv["top"] = examples("top")
    fv["top_tokens"] = [t for t, _ in Counter(ex[1][cfg.window_before] for ex in fv["top"][:10]).most_common(4)]
    samples = examples("smp")  # sorted by activation, largest first
    top_ctx = {c for c in s["top_ctx"][i] if c >= 0}
    if all(c in top_ctx for c in s["smp_ctx"][i] if c >= 0):  # it fires in so few contexts that all are shown above
        samples = []
    n_bands = min(cfg.sample_bands, len(samples))
    for b in range(n_bands):
        lo, hi = round(b * len(samples) / n_bands), round((b + 1) * len(samples) / n_bands)
        band = samples[lo:hi]
        pick = sorted({round(j * (len(band) - 1) / max(cfg.per_band - 1, 1)) for j in range(min(cfg.per_band, len(band)))})
        q_lo, q_hi = 1 - hi / len(samples), 1 - lo / len(samples)
        fv["bands"].append({"label": f"Quantiles {q_lo:.0%} to {q_hi:.0%} of firing contexts (max activation "
                                     f"{H.fmt(band[-1][0])} to {H.fmt(band[0][0])}; a random sample of {len(samples)})",
                            "q": (q_lo, q_hi), "min": band[-1][0], "max": band[0][0],
                            "examples": [band[j] for j in pick]})
    return fv


def _display_histogram(counts: list[int], inner: list[float], max_act: float, max_bars: int = 40):
    """Fine log bins (inner edges ``inner``) cut to the range with counts, merged to at most ``max_bars``;
    returns (counts, edges)."""
    nz = [j for j, c in enumerate(counts) if c]
    if not nz:
        return [], []
    ext = [0.0, *inner, max(max_act, inner[-1])]  # bin j spans ext[j] to ext[j + 1]
    a, b = nz[0], nz[-1]
    g = math.ceil((b - a + 1) / max_bars)
    bars, edges = [], [ext[a]]
    for j in range(a, b + 1, g):
        k = min(j + g, b + 1)
        bars.append(sum(counts[j:k]))
        edges.append(ext[k])
    return bars, edges


# ---------------------------------------------------------------- outputs


def write_outputs(cfg: DashboardConfig, out: Path, summ: dict, weights: dict, stats: FeatureStats,
                  strings: dict[int, str], meta: dict, chunk: int = 1024, run: Run | None = None) -> tuple[list[dict], dict]:
    """The site, the stats files, the Neuronpedia export and W&B, features a chunk at a time (bounded memory).

    Returns one small row per feature and the W&B/export outcome. The features folder is written aside
    and swapped in whole, so a failure leaves the previous site intact.
    """
    vis = {i: H.visible(t) for i, t in strings.items()}
    d = len(summ["dead"])
    dead_all = summ["dead"].tolist()
    per_page = cfg.wandb_features_per_page
    chunk = max(per_page, chunk // per_page * per_page)  # W&B pages never straddle two chunks
    own_run = run is None
    run = run or Run(cfg.wandb, out, {**cfg.model_dump(mode="json"), **meta}, job="dashboards")
    key = "dashboards" if own_run else f"dashboards/{meta['sae_name']}"  # a shared run holds several SAEs
    exporter = neuronpedia.Exporter(out / "neuronpedia", strings, meta, cfg.neuronpedia_batch)
    rows: list[dict] = []
    try:
        with staged_dir(out / "features", ".features.") as tmp:
            for start in range(0, d, chunk):
                views = feature_views(summ, weights, stats, cfg, start, min(start + chunk, d), dead_all)
                for fv in views:
                    (tmp / f"{fv['id']}.html").write_text(H.feature_page(fv, vis, meta, d), encoding="utf-8")
                exporter.add(views)
                if run.run is not None:
                    for g in range(0, len(views), per_page):
                        group = views[g : g + per_page]
                        run.html(f"{key}/features_{group[0]['id']:05d}_{group[-1]['id']:05d}", H.group_page(group, vis, meta))
                rows.extend({k: v[k] for k in ("id", "dead", "density", "fired", "max_act", "mean_act", "top_tokens",
                                               "pos_logits", "neg_logits", "neighbours")} for v in views)
    except BaseException:
        if own_run:
            run.finish()
        raise
    np_files = exporter.close()
    write_text(out / "index.html", H.index_page(rows, vis, meta))
    write_stats(out, rows, strings, summ, weights, meta)
    result = {"mode": run.mode, "sync": None, "neuronpedia_files": len(np_files)}
    if run.run is not None:
        log_table(run, rows, strings, meta, key)
        result["sync"] = run.finish() if own_run else None
    return rows, result


def write_stats(out: Path, rows: list[dict], strings: dict[int, str], summ: dict, weights: dict, meta: dict) -> None:
    """stats.json (summary and per-feature numbers) and stats.safetensors (per-feature arrays)."""
    feats = [{"id": r["id"], "dead": r["dead"], "density": r["density"], "fired": r["fired"], "max_act": r["max_act"],
              "mean_act": r["mean_act"], "top_tokens": [strings[t] for t in r["top_tokens"]],
              "page": f"features/{r['id']}.html",
              "pos_logits": [[strings[t], round(x, 4)] for t, x in r["pos_logits"]],
              "neg_logits": [[strings[t], round(x, 4)] for t, x in r["neg_logits"]],
              "neighbours": [[j, round(c, 4)] for j, c, _ in r["neighbours"]]} for r in rows]
    write_json(out / "stats.json", {"meta": meta, "features": feats}, indent=None)
    arrays = {k: summ[k] for k in ("density", "fired", "max_act", "mean_act", "dead", "hist", "top_val", "top_ctx",
                                   "top_pos", "top_win_tok", "top_win_act")}
    arrays["dead"] = arrays["dead"].to(torch.uint8)
    arrays.update({k: weights[k] for k in ("pos_ids", "pos_vals", "neg_ids", "neg_vals", "nb_ids", "nb_cos") if k in weights})
    save_tensors(out / "stats.safetensors", arrays, metadata={k: str(v) for k, v in meta.items()})


def log_table(run: Run, rows: list[dict], strings: dict[int, str], meta: dict, key: str = "dashboards") -> None:
    """The per-feature table, the density histogram and the run summary on W&B."""

    def words(ids) -> str:
        return " ".join(repr(strings[t]) for t in ids)

    cols = ["feature", "dead", "density", "max_act", "mean_act", "top_tokens", "logits_raised", "logits_lowered"]
    data = [[r["id"], r["dead"], r["density"], r["max_act"], r["mean_act"], words(r["top_tokens"]),
             words(t for t, _ in r["pos_logits"][:5]), words(t for t, _ in r["neg_logits"][:5])] for r in rows]
    run.table(f"{key}/features", cols, data)
    run.histogram(f"{key}/log10_density", [math.log10(r["density"]) for r in rows if not r["dead"]] or [0.0])
    n_dead = sum(r["dead"] for r in rows)
    run.summary({f"{key}/n_features": len(rows), f"{key}/n_dead": n_dead, f"{key}/n_live": len(rows) - n_dead,
                 f"{key}/tokens": meta["tokens"]})
