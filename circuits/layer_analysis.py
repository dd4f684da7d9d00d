"""Layer-wise analysis of SmolLM2-135M and Gemma-3-270M over built-in text.

For each model: how much each sublayer writes into the residual stream and what skipping or swapping
a layer does ("Do Language Models Use Their Depth Efficiently?": does the second half contribute
less?), where the logit lens first reads the IOI answer as top-1, probe accuracy by layer (the
concept-depth curve) on Python-vs-English text and on IOI clean-vs-corrupted prompts, and the
linearity of each block. Writes JSON + PNG/PDF per analysis under OUT/MODEL/ and OUT/summary.json
and OUT/summary.md with the headline numbers.

    nice -n 19 .venv/bin/python circuits/layer_analysis.py --out runs/layer_analysis
    nice -n 19 .venv/bin/python circuits/layer_analysis.py --out /tmp/la --models smollm2-135m --tokens 2048 \
        --skip-tokens 256 --n-prompts 8 --n-per-class 40      # a quick look
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from saecircuits.core.files import ensure_dir, write_json, write_text
from saecircuits.layerwise import contributions, figures, lens, linearity, probes, skipping, tuned
from saecircuits.layerwise.config import StreamConfig
from saecircuits.model.loading import load
from saecircuits.text.config import TextConfig

CANONICAL = ("When Mary and John went to the store, John gave a drink to", " Mary")


def run_model(name: str, args: argparse.Namespace, out: Path) -> dict:
    t0 = time.perf_counter()
    model = load(name)
    text = TextConfig(source=args.text, context_size=args.context_size)
    stream = StreamConfig(text=text, tokens=args.tokens, batch_size=args.batch_size)
    summary: dict = {"model": name, "n_layers": model.cfg.n_layers, "seconds": {}}

    def timed(key: str, fn):
        start = time.perf_counter()
        r = fn()
        summary["seconds"][key] = round(time.perf_counter() - start, 1)
        print(f"[{name}] {key}: {summary['seconds'][key]} s", flush=True)
        return r

    with torch.no_grad():  # running the blocks by hand must be the model itself
        toks = model.to_tokens(CANONICAL[0])
        manual, _ = skipping.run_blocks(model, toks, list(range(model.cfg.n_layers)))
        summary["run_blocks_max_abs_diff"] = float((manual - model(toks)).abs().max())

    c = timed("contributions", lambda: contributions.measure(model, stream))
    figures.write(out, "contributions", c)
    summary["contributions"] = {"tokens": c["tokens"], "halves": c["halves"],
                                "second_half_contributes_less": c["second_half_contributes_less"]}

    skip_stream = stream.model_copy(update={"tokens": args.skip_tokens, "batch_size": min(args.batch_size, 4)})
    s = timed("skip", lambda: skipping.measure(model, skipping.SkipConfig(stream=skip_stream)))
    figures.write(out, "skip", s)
    singles = [x for x in s["interventions"] if x["kind"] == "skip"]
    swaps = [x for x in s["interventions"] if x["kind"] == "swap"]
    summary["skip"] = {"tokens": s["tokens"], "clean_loss": s["clean_loss"], **s["halves"],
                       "kl_by_skipped_layer": [x["kl"] for x in singles],
                       "loss_by_skipped_layer": [x["loss"] for x in singles],
                       "kl_by_swap": [x["kl"] for x in swaps]}

    canon = timed("lens_canonical", lambda: lens.logit_lens(model, [CANONICAL[0]], [CANONICAL[1]]))
    figures.write(out, "lens_canonical", canon)
    summary["lens_canonical"] = {k: canon["prompts"][0][k] for k in ("first_top1", "stable_top1", "final_correct")}
    summary["lens_canonical"]["answer_rank_by_layer"] = [row[-1] for row in canon["prompts"][0]["rank"]]
    try:
        ioi = lens.task_prompts(model, "ioi", args.n_prompts)
    except ImportError:
        ioi = None
    if ioi is not None:
        lr = timed("lens_ioi", lambda: lens.logit_lens(model, **ioi))
        figures.write(out, "lens_ioi", lr)
        summary["lens_ioi"] = {"n": lr["n_prompts"], "final_accuracy": lr["final_accuracy"],
                               "first_top1": lr["first_top1"], "stable_top1": lr["stable_top1"],
                               "top1_fraction": lr["by_layer"]["top1_fraction"],
                               "mean_logit_diff": lr["by_layer"].get("mean_logit_diff")}

    cfg = probes.ProbeConfig(pool="last", repeats=3)
    specs = ["code-vs-prose"] + (["task:ioi"] if ioi is not None else [])
    summary["probes"] = {}
    for spec in specs:
        data = probes.load(model, spec, n_per_class=args.n_per_class, n_tokens=32)
        p = timed(f"probe {spec}", lambda: probes.measure(model, data, cfg))
        figures.write(out, "probe_" + spec.replace(":", "_"), p)
        summary["probes"][spec] = {"n": p["n_examples"], "test_accuracy": p["by_layer"]["test_accuracy"],
                                   "best_layer": p["best_layer"], "best_accuracy": p["best_accuracy"],
                                   "concept_depth": p["concept_depth"]}

    lin_cfg = linearity.LinearityConfig(stream=stream, eval_tokens=max(2, args.tokens // 4))
    li = timed("linearity", lambda: linearity.measure(model, lin_cfg))
    figures.write(out, "linearity", li)
    summary["linearity"] = {"r2_held_out": li["r2_held_out"], "r2_in_sample": li["r2_in_sample"],
                            "most_nonlinear_tokens": [t["token"] for t in li["tokens"]["most_nonlinear"][:8]]}

    if args.tuned_tokens:
        tcfg = tuned.TunedLensConfig(text=text, tokens=args.tuned_tokens, eval_tokens=2048)
        lens_, tsum = timed("tuned_lens", lambda: tuned.train(model, tcfg))
        tuned.save(lens_, out / "tuned_lens", tsum)
        figures.write(out, "tuned_lens_training", tsum)
        summary["tuned_lens"] = tsum.get("eval")
        if ioi is not None:
            tl = lens.logit_lens(model, lens=lens_, **ioi)
            figures.write(out, "tuned_lens_ioi", tl)
            summary["tuned_lens_ioi"] = {"first_top1": tl["first_top1"], "top1_fraction": tl["by_layer"]["top1_fraction"]}
    summary["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    del model
    return summary


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = ["# Layer analysis", "", f"Text: {args.text}, {args.tokens:,} tokens (skip: {args.skip_tokens:,} per "
             f"intervention), IOI prompts: {args.n_prompts}, probe texts per class: {args.n_per_class}.", "",
             "Halves: mean (median) over the layers of each half.", "",
             "| model | block rel. norm 1st / 2nd half | skip KL 1st / 2nd half | IOI first top-1 (median) | "
             "canonical first / stable top-1 | code-vs-prose probe best (depth) | IOI clean-vs-corrupted probe best (depth) "
             "| min held-out R^2 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        h = r["contributions"]["halves"]["block_rel_norm"]
        sk = r["skip"]
        ioi = r.get("lens_ioi", {}).get("first_top1", {})
        pr = r["probes"]
        cp, ti = pr.get("code-vs-prose", {}), pr.get("task:ioi", {})
        lines.append(
            f"| {r['model']} | {h['first_half']:.3f} ({h['first_half_median']:.3f}) / {h['second_half']:.3f} "
            f"({h['second_half_median']:.3f}) | {sk['skip_kl_first_half']:.3f} ({sk['skip_kl_first_half_median']:.3f}) / "
            f"{sk['skip_kl_second_half']:.3f} ({sk['skip_kl_second_half_median']:.3f}) | {ioi.get('median_label')} ({ioi.get('n')}/{ioi.get('of')}) | "
            f"{r['lens_canonical']['first_top1']} / {r['lens_canonical']['stable_top1']} | "
            f"{cp.get('best_accuracy', float('nan')):.3f} ({cp.get('concept_depth')}) | "
            f"{ti.get('best_accuracy', float('nan')):.3f} ({ti.get('concept_depth')}) | {min(r['linearity']['r2_held_out']):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/layer_analysis")
    ap.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    ap.add_argument("--text", default="stdlib")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens for contributions and linearity")
    ap.add_argument("--skip-tokens", type=int, default=1024, help="tokens per skip/swap intervention")
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-prompts", type=int, default=32, help="IOI prompts for the logit lens")
    ap.add_argument("--n-per-class", type=int, default=100, help="probe texts per class")
    ap.add_argument("--tuned-tokens", type=int, default=0, help="train a tuned lens on this many tokens (0: no)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = ensure_dir(args.out)
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results.append(run_model(name, args, ensure_dir(root / name)))
        write_json(root / "summary.json", {"args": vars(args), "models": results})
    md = markdown(results, args)
    write_text(root / "summary.md", md)
    print(md)


if __name__ == "__main__":
    main()
