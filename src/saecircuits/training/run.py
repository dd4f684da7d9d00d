"""A training run end to end: the activation stream, the trainer, the saved SAEs, evaluation,
``summary.json`` / ``history.json`` and W&B. Under torchrun every process calls ``train``."""

from __future__ import annotations

import math
from pathlib import Path

from saecircuits.activations.cache import ActivationCache, build_cache
from saecircuits.activations.site import Site, expand_sites
from saecircuits.activations.store import ActivationStore, site_widths
from saecircuits.core import distributed
from saecircuits.core.files import ensure_dir, write_json
from saecircuits.core.tracking import Run
from saecircuits.model import loading as models
from saecircuits.sae import SAEConfig
from saecircuits.text.source import TextSource
from saecircuits.training.config import TrainConfig
from saecircuits.training.evaluation import density_histogram
from saecircuits.training.summary import SPLICE_KEYS, SpliceMetrics, TrainedSAE, TrainingSummary, WandbOutcome
from saecircuits.training.trainer import Trainer


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
    widths = site_widths(model, expand_sites(model, _sites(cfg.saes)))
    return [float(c.width(widths[c.hook]) * (widths[c.hook] + widths[c.hook_out or c.hook])) for c in cfg.saes]


def _load_model(cfg: TrainConfig, main: bool):
    """The run's model (every process calls this)."""
    if not main:
        distributed.barrier()  # rank 0 converts an offline model once; the others then read its cache
    model = models.load(cfg.model, device="cuda" if cfg.n_devices > 1 else "cpu", n_devices=cfg.n_devices)
    if main:
        distributed.barrier()
    return model


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, model=None, run: Run | None = None) -> dict:
    """Run a training config end to end: stream, train, save SAEs, evaluate, log to W&B. Returns the summary
    (``TrainingSummary.to_json()``, what ``summary.json`` holds).

    ``run``: log into this W&B run (left open, for a job of several stages) instead of starting one.

    Under torchrun with several processes (see ``saecircuits.core.distributed``) every process calls this;
    rank 0 writes the files and returns the summary, the others return {}.
    """
    distributed.init(cfg.store.device)
    rank, world = distributed.rank(), distributed.world()
    main = rank == 0
    out = ensure_dir(cfg.out) if main else Path(cfg.out)
    if world > 1 and cfg.parallel == "data":
        distributed.check_divisible(cfg.store.batch_size_tokens, world)
    if model is None:
        model = _load_model(cfg, main)
    owners = distributed.split_saes(_sae_costs(cfg, model), world) if world > 1 and cfg.parallel == "saes" else None
    mine = [c for c, r in zip(cfg.saes, owners, strict=True) if r == rank] if owners else None
    store, text = make_store(cfg, model, progress and main, saes=mine, shard=(rank, world) if world > 1 and owners is None else (0, 1))
    if main:  # the text has a train context and held-out evaluation text: refused now, not after training
        text.take(1, "train")
        text.take(1, "eval")
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
    summary = _summary(trainer, paths, results, ranks, owners)
    _write_results(summary, trainer, paths, results, run, own_run)
    return summary.to_json()


def _summary(trainer: Trainer, paths: list[Path], results: dict[str, dict], ranks: list[dict],
             owners: list[int] | None) -> TrainingSummary:
    """The run's summary (rank 0) from the saved SAEs, their ``evaluate`` results and every process's facts;
    ``owners``: the process of each SAE with ``parallel: saes``."""
    cfg = trainer.cfg
    scales = {k: v for f in ranks for k, v in f["scales"].items()}
    dropped = sum(f["tokens_dropped_outlier"] for f in ranks) if owners is None else max(f["tokens_dropped_outlier"] for f in ranks)
    tokens = trainer.tokens_emitted
    summary = TrainingSummary(trainer.model.cfg.model_name, tokens, trainer.step, trainer.seconds,
                              tokens / max(trainer.seconds, 1e-9), dropped, scales)
    if trainer.world > 1:
        summary.distributed = {"processes": trainer.world, "parallel": cfg.parallel, "ranks": ranks,
                               **({"owners": dict(zip(trainer.all_names, owners, strict=True))} if owners else {})}
    for name, path, c in zip(trainer.all_names, paths, cfg.saes, strict=True):
        summary.saes[name] = _trained_sae(path, c, results[name])
    return summary


def _trained_sae(path: Path, c: SAEConfig, r: dict) -> TrainedSAE:
    """An SAE's summary entry from its config and its ``evaluate`` result ``r``."""
    return TrainedSAE(path=str(path), hook=c.hook, hook_out=c.hook_out, architecture=c.architecture,
                      d_sae=len(r["density"]), k=c.k, lr=c.lr, density_histogram=density_histogram(r["density"]),
                      tokens=r["tokens"], mse=r["mse"], fvu=r["fvu"], l0=r["l0"], dead_latents=r["dead_latents"],
                      dense_latents=r["dense_latents"], explained_variance=r["explained_variance"],
                      splice=SpliceMetrics.from_json(r) if any(k in r for k in SPLICE_KEYS) else None)


def _write_results(summary: TrainingSummary, trainer: Trainer, paths: list[Path], results: dict[str, dict],
                   run: Run, own_run: bool) -> None:
    """``summary.json`` and ``history.json``, and the metrics, density histograms and SAEs to W&B; the
    summary is written again with the W&B outcome once the run is finished (when it is this job's own)."""
    out = trainer.out
    for name in summary.saes:
        run.histogram(f"{name}/eval/log10_feature_density", [math.log10(d) for d in results[name]["density"] if d > 0])
    write_json(out / "summary.json", summary.to_json())
    write_json(out / "history.json", trainer.history)
    saes = summary.to_json()["saes"]
    run.summary({f"{n}/{k}": v for n, s in saes.items() for k, v in s.items() if isinstance(v, (int, float))})
    run.artifact(f"saes-{out.name}", "sae", paths, {"model": trainer.model.cfg.model_name})
    summary.wandb = WandbOutcome(run.finish() if own_run else None, run.mode)
    write_json(out / "summary.json", summary.to_json())
