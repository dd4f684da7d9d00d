"""SAE training: saecircuits vs SAELens 6.x on SmolLM2, same tokens, side by side.

Phases (pre-packed stdlib contexts of 128 tokens, 8 contexts a forward pass, 4,096-token batches,
the same excluded special tokens, activations normalised to norm sqrt(d) on both sides):

- quality: TopK k=32, d_sae 4608 on blocks.6.hook_resid_post, 200k tokens; both tools at the same
  four learning rates (saecircuits's four from one stream; SAELens's best is the baseline). Every SAE of both tools is evaluated
  by the same code on the same held-out contexts: explained variance, L0, dead latents, CE loss
  recovered, KL. Deterministic for a seed, so timings are not taken from it.
- single: the same SAE timed, both tools at lr 2e-3, with a bare forward pass to layer 7 as the floor.
- sweep: 8 TopK SAEs (k in 16, 32, 64, 128 x lr 1e-3, 3e-3) from one saecircuits run vs eight
  SAELens runs, and vs SAELens 6.54's multi-SAE runner, for reference.
- suite: 6 TopK SAEs at layers 4, 9, 14, 19, 24, 29 from one run vs six SAELens runs.

Run: python benchmarks/train_vs_saelens.py [--phase quality --phase single ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

CONTEXT, MODEL_BATCH, TRAIN_BATCH, BUFFER = 128, 8, 4096, 65536
D_SAE = 4608
LAYER6 = "blocks.6.hook_resid_post"
SUITE = [f"blocks.{L}.hook_resid_post" for L in (4, 9, 14, 19, 24, 29)]


def _model():
    return harness.smollm2(MODEL_BATCH, CONTEXT)


def _evaluate(model, sae_dirs: dict[str, str], eval_tokens: str) -> dict:
    """The same evaluator, on the same held-out contexts, for SAEs of either tool (files in SAELens format)."""
    from saecircuits.core.tensors import load_tensors
    from saecircuits.sae import format as sae_format
    from saecircuits.training.evaluation import SAEUnderTest, evaluate

    tokens = load_tensors(eval_tokens)["tokens"]
    saes = [SAEUnderTest(name, sae_format.load(path)) for name, path in sae_dirs.items()]
    res = evaluate(model, saes, tokens, batch_contexts=8, ce=True)
    keep = ("explained_variance", "l0", "dead_latents", "dense_latents", "ce_loss_recovered", "kl_to_clean", "mse")
    return {n: {k: r[k] for k in keep} for n, r in res.items()}


def side_ours(args: dict) -> dict:
    from saecircuits.core.config import validate
    from saecircuits.training.config import TrainConfig
    from saecircuits.training.run import make_store
    from saecircuits.training.trainer import Trainer

    model = _model()
    out = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    cfg = validate(TrainConfig, {
        "model": "smollm2-135m",
        "text": {"source": f"tokens:{args['tokens']}", "context_size": CONTEXT, "eval_fraction": 0},
        "store": {"batch_size_tokens": TRAIN_BATCH, "model_batch_size": MODEL_BATCH, "buffer_tokens": BUFFER,
                  "normalize": "expected_average_only_in"},
        "saes": args["saes"], "total_tokens": args["train_tokens"], "wandb": {"mode": "off"}, "out": str(out),
    })
    store, text = make_store(cfg, model, progress=False)
    trainer = Trainer(cfg, model, store, out, text, progress=False)
    t = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t
    paths = trainer.save_saes(out / "saes")
    return {"seconds": seconds, "tokens": store.tokens_emitted, "forward_seconds": store.model_activations.forward_seconds,
            "eval": _evaluate(model, {p.name: str(p) for p in paths}, args["eval_tokens"]) if args.get("evaluate") else {}}


def _saelens_cfg(hook: str, k: int, lr: float, train_tokens: int, n_tokens_dataset: int, special: list[int]):
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAEConfig

    steps = train_tokens // TRAIN_BATCH
    return LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=576, d_sae=D_SAE, k=k, normalize_activations="expected_average_only_in"),
        model_name="smollm2-135m", hook_name=hook, dataset_path="local", is_dataset_tokenized=True, streaming=False,
        context_size=CONTEXT, prepend_bos=False, training_tokens=train_tokens, train_batch_size_tokens=TRAIN_BATCH,
        store_batch_size_prompts=MODEL_BATCH, n_batches_in_buffer=BUFFER // CONTEXT, lr=lr, lr_warm_up_steps=max(1, steps // 100),
        lr_decay_steps=steps // 5, n_batches_for_norm_estimate=10, dead_feature_window=max(10, steps // 10),
        feature_sampling_window=max(20, steps // 5), exclude_special_tokens=special, sequence_separator_token=0,
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None, device="cpu", dtype="float32",
        output_path=tempfile.mkdtemp(prefix="bench-saelens-"), seed=42, verbose=False,
    )


def side_saelens(args: dict) -> dict:
    """One SAELens training run per SAE, run one after another (timed together); saved for evaluation."""
    import datasets
    from sae_lens import LanguageModelSAETrainingRunner

    from saecircuits.core.tensors import load_tensors
    from saecircuits.model.loading import special_token_ids

    model = _model()
    tokens = load_tensors(args["tokens"])["tokens"]
    ds = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})
    special = special_token_ids(model)
    dirs, total, seconds = {}, 0, 0.0
    for spec in args["saes"]:
        cfg = _saelens_cfg(spec["hook"], spec["k"], spec["lr"], args["train_tokens"], tokens.numel(), special)
        t = time.perf_counter()
        sae = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=ds).run()
        seconds += time.perf_counter() - t
        total += args["train_tokens"]
        name = f"saelens-{spec['hook']}-k{spec['k']}-lr{spec['lr']:g}"
        d = Path(tempfile.mkdtemp(prefix="bench-saelens-sae-")) / name
        sae.save_inference_model(str(d)) if hasattr(sae, "save_inference_model") else sae.save_model(str(d))
        dirs[name] = str(d)
    return {"seconds": seconds, "tokens": total,
            "eval": _evaluate(model, dirs, args["eval_tokens"]) if args.get("evaluate") else {}}


def side_saelens_multi(args: dict) -> dict:
    """SAELens 6.54's own multi-SAE runner: every SAE from one forward pass (reference only)."""
    import datasets
    from sae_lens import LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig

    from saecircuits.core.tensors import load_tensors
    from saecircuits.model.loading import special_token_ids

    model = _model()
    tokens = load_tensors(args["tokens"])["tokens"]
    ds = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})
    steps = args["train_tokens"] // TRAIN_BATCH
    saes = {f"s{i}": TopKTrainingSAEConfig(d_in=576, d_sae=D_SAE, k=s["k"], normalize_activations="expected_average_only_in")
            for i, s in enumerate(args["saes"])}
    lrs = {s["lr"] for s in args["saes"]}  # the multi runner takes one learning rate for all SAEs: the lowest
    cfg = MultiSAETrainingRunnerConfig(
        saes=saes, hook_names={f"s{i}": s["hook"] for i, s in enumerate(args["saes"])}, model_name="smollm2-135m",
        dataset_path="local", streaming=False, context_size=CONTEXT, training_tokens=args["train_tokens"],
        store_batch_size_prompts=MODEL_BATCH, train_batch_size_tokens=TRAIN_BATCH, n_batches_in_buffer=BUFFER // CONTEXT,
        prepend_bos=False, lr=sorted(lrs)[0], lr_warm_up_steps=max(1, steps // 100), lr_decay_steps=steps // 5,
        n_batches_for_norm_estimate=10, dead_feature_window=max(10, steps // 10), feature_sampling_window=max(20, steps // 5),
        exclude_special_tokens=special_token_ids(model), sequence_separator_token=0, logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None, output_path=tempfile.mkdtemp(prefix="bench-saelens-multi-"), device="cpu",
    )
    runner = MultiSAETrainingRunner(cfg, override_model=model, override_dataset=ds)
    t = time.perf_counter()
    runner.run()
    return {"seconds": time.perf_counter() - t, "tokens": args["train_tokens"] * len(args["saes"])}


SIDES = {"bare": harness.side_bare, "ours": side_ours, "saelens": side_saelens, "saelens_multi": side_saelens_multi}


def ours_saes(specs: list[dict]) -> list[dict]:
    return [{"architecture": "topk", "hook": s["hook"], "d_sae": D_SAE, "k": s["k"], "lr": s["lr"]} for s in specs]


PHASES = ("quality", "single", "sweep", "suite")
QUALITY_LRS = (1e-3, 2e-3, 4e-3, 8e-3)
DEFAULT_LR = 4e-3  # configs/smollm2_layer6_topk.yaml: the grid's best EV with few dead latents
OURS_QUALITY = "saecircuits, 4 learning rates, one run"


def main() -> None:
    """Each phase updates its own part of results/train_vs_saelens.json; the markdown is rebuilt from all parts.

    quality: every SAE trained once and evaluated (deterministic for a seed, so it may run on a busy machine);
    single, sweep, suite: timings, interleaved and repeated (run these on a quiet machine).
    """
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=PHASES, action="append", help="default: all, in order")
    p.add_argument("--train-tokens", type=int, default=200_000)
    p.add_argument("--sweep-tokens", type=int, default=49_152)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-contexts", type=int, default=64)
    a = p.parse_args()
    mod = __file__
    n_ctx = a.train_tokens // CONTEXT + 64  # a little over: special tokens are dropped from the stream
    tok = str(harness.shared_tokens("smollm2-135m", n_ctx, CONTEXT))
    ev = str(harness.shared_tokens("smollm2-135m", a.eval_contexts, CONTEXT, split="eval"))
    path = harness.RESULTS / "train_vs_saelens.json"
    single = {"tokens": tok, "eval_tokens": ev, "train_tokens": a.train_tokens}
    for phase in a.phase or PHASES:
        if phase == "quality":
            # the same learning-rate grid for both tools; saecircuits trains its four SAEs from one stream
            saes = [{**s, "name": f"lr {s['lr']:g}"} for s in ours_saes([{"hook": LAYER6, "k": 32, "lr": lr} for lr in QUALITY_LRS])]
            runs = [(OURS_QUALITY, "ours", {**single, "evaluate": True, "saes": saes})]
            runs += [(f"SAELens lr {lr:g}", "saelens", {**single, "evaluate": True, "saes": [{"hook": LAYER6, "k": 32, "lr": lr}]})
                     for lr in QUALITY_LRS]
            res = harness.interleaved(mod, runs, 1)
        elif phase == "single":
            res = harness.interleaved(mod, [
                ("bare forward to layer 7", "bare", {"tokens": tok, "hooks": [LAYER6]}),
                ("saecircuits lr 2e-3", "ours", {**single, "saes": ours_saes([{"hook": LAYER6, "k": 32, "lr": 2e-3}])}),
                ("SAELens lr 2e-3", "saelens", {**single, "saes": [{"hook": LAYER6, "k": 32, "lr": 2e-3}]}),
            ], a.repeats)
        else:
            specs = ([{"hook": LAYER6, "k": k, "lr": lr} for k in (16, 32, 64, 128) for lr in (1e-3, 3e-3)] if phase == "sweep"
                     else [{"hook": h, "k": 32, "lr": 2e-3} for h in SUITE])
            args = {"tokens": tok, "train_tokens": a.sweep_tokens, "saes": specs}
            res = harness.interleaved(mod, [(f"saecircuits, {len(specs)} SAEs, one run", "ours", {**args, "saes": ours_saes(specs)}),
                                            (f"SAELens, {len(specs)} runs", "saelens", args),
                                            ("SAELens multi-SAE runner", "saelens_multi", args)], a.repeats)
        # re-read before writing: another phase may have finished in another process meanwhile
        data = json.loads(path.read_text()) if path.exists() else {}
        data[phase] = {"machine": harness.machine(), "args": vars(a), "results": res}
        harness.write("train_vs_saelens", data, markdown(data))


def _tps(results: list[dict]) -> float:
    return harness.median([{"v": r["tokens"] / r["seconds"]} for r in results], "v")


def markdown(data: dict) -> str:
    md = ["# SAE training: saecircuits vs SAELens", "",
          "SmolLM2-135M, stdlib contexts of 128 tokens (the same tokens for both tools), 8 contexts a forward pass, "
          "4,096-token batches, special tokens excluded, activations normalised to norm sqrt(d) on both sides. "
          "Each side runs in its own process; sides are interleaved and repeated, medians reported. "
          "tokens/s counts training tokens (rows) per SAE; run: `python benchmarks/train_vs_saelens.py`.", ""]
    if "quality" in data:
        md += _quality_md(data["quality"])
    if "single" in data:
        md += _single_md(data["single"])
    for phase, title in (("sweep", "8-SAE sweep: k in {16, 32, 64, 128} x lr {1e-3, 3e-3}, blocks.6.hook_resid_post"),
                         ("suite", "6-layer suite: TopK k=32 at layers 4, 9, 14, 19, 24, 29")):
        if phase in data:
            md += _multi_md(title, data[phase])
    return "\n".join(md)


def _quality_md(part: dict) -> list[str]:
    res, a = part["results"], part["args"]

    evals = {f"saecircuits {n}": e for n, e in res[OURS_QUALITY][0]["eval"].items()}
    evals |= {label: next(iter(r[0]["eval"].values())) for label, r in res.items() if label.startswith("SAELens")}
    sl = [k for k in evals if k.startswith("SAELens")]
    best = max(sl, key=lambda k: evals[k]["explained_variance"])
    ours = evals[f"saecircuits lr {DEFAULT_LR:g}"]
    rows = [[label + (" (best SAELens)" if label == best else " (lr of configs/smollm2_layer6_topk.yaml)" if e is ours else ""),
             f"{e['explained_variance']:.4f}", f"{e['l0']:.1f}", str(e["dead_latents"]), f"{e['ce_loss_recovered']:.4f}",
             f"{e['kl_to_clean']:.4f}"] for label, e in evals.items()]
    e_best = evals[best]
    return [f"## Quality: TopK k=32, d_sae {D_SAE}, {LAYER6}, {a['train_tokens']:,} training tokens ({part['machine']['date']})", "",
            harness.md_table(["side", "held-out expl. var.", "L0", "dead latents", "CE loss recovered", "KL to clean"], rows), "",
            f"- saecircuits at the shipped config's lr {DEFAULT_LR:g} vs SAELens's best of {len(sl)} learning rates ({best}): explained variance "
            f"**{ours['explained_variance']:.4f} vs {e_best['explained_variance']:.4f}** at L0 {ours['l0']:.1f} vs {e_best['l0']:.1f}; "
            f"dead latents **{ours['dead_latents']} vs {e_best['dead_latents']}** (target: EV >= SAELens's best, fewer dead)",
            f"- both tools on the same learning-rate grid ({', '.join(f'{lr:g}' for lr in QUALITY_LRS)}); saecircuits trains its "
            "four SAEs from one stream",
            f"- every SAE evaluated by the same code (saecircuits.training.evaluation, SAELens-format files) on {a['eval_contexts']} "
            "held-out contexts x 128 tokens", ""]


def _single_md(part: dict) -> list[str]:
    res, a = part["results"], part["args"]
    bare, ours, sl = res["bare forward to layer 7"], res["saecircuits lr 2e-3"], res["SAELens lr 2e-3"]
    rows = [[k, f"{_tps(v):,.0f}", f"{harness.median(v, 'seconds'):.0f}", f"{harness.median(v, 'peak_rss_mb'):,.0f}"] for k, v in res.items()]
    return [f"## Speed: one SAE, {a['train_tokens']:,} training tokens, {len(ours)} interleaved rounds ({part['machine']['date']})", "",
            harness.md_table(["side", "tokens/s (median)", "seconds", "peak MB"], rows), "",
            f"- saecircuits / SAELens tokens/s: **{_tps(ours) / _tps(sl):.2f}x** (target >= 1.5)",
            f"- saecircuits / bare forward pass to layer 7: **{_tps(ours) / _tps(bare):.2f}** (target >= 0.75)", ""]


def _multi_md(title: str, part: dict) -> list[str]:
    res, a = part["results"], part["args"]
    ours, sl, slm = (res[k] for k in res)
    n_saes = round(sl[0]["tokens"] / a["sweep_tokens"])  # SAELens counts every run's tokens; saecircuits's stream feeds all SAEs
    tps = {k: _tps(v) * (n_saes if v is ours else 1) for k, v in res.items()}
    rows = [[k, f"{harness.median(v, 'seconds'):.0f}", f"{tps[k]:,.0f}", f"{harness.median(v, 'peak_rss_mb'):,.0f}"] for k, v in res.items()]
    return [f"## {title}, {a['sweep_tokens']:,} tokens per SAE, {len(ours)} interleaved rounds ({part['machine']['date']})", "",
            harness.md_table(["side", "seconds", "SAE-tokens/s (all SAEs)", "peak MB"], rows), "",
            f"- SAELens separate runs / saecircuits (time): **{harness.median(sl, 'seconds') / harness.median(ours, 'seconds'):.2f}x** (target >= 4)",
            f"- SAELens multi-SAE runner / saecircuits (time): {harness.median(slm, 'seconds') / harness.median(ours, 'seconds'):.2f}x", ""]


if __name__ == "__main__":
    if not harness.side_main(SIDES):
        main()
