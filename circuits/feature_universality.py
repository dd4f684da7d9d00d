"""Feature universality: do SAE features recur across seeds, layers and models?

Trains TopK SAEs (one stream per model, every SAE of a model from ONE forward pass per batch):

    SmolLM2-135M (30 layers): resid_post of layers 5, 11, 12, 17, 23, and layer 11 again with another seed
    Gemma-3-270M (18 layers): resid_post of layers 3, 6, 10, 13
    (every SAE has its own initialisation seed; the seed twins share the data order)

The SmolLM2 layers 5, 11, 17, 23 and the Gemma layers 3, 6, 10, 13 sit at relative depths
(L + 1) / n_layers of about 0.2, 0.4, 0.6, 0.8. Then it measures, by activation matching
(Hungarian on the feature x feature correlation over the same text) with SVCCA / RSA / CKA of the
paired decoders against shuffled-pairing nulls:

    seeds     L11 vs L11 with another seed: distribution of matched r, share with r > 0.7, SVCCA vs null;
              baseline: L11 vs an untrained SAE on layer 11 (what matching finds by chance)
    layers    L11 vs L12 (adjacent) and L11 vs L5, L17, L23 (far); also weight matching (decoder cosine)
    models    SmolLM2 {5, 11, 17, 23} x Gemma {3, 6, 10, 13}, text aligned by character offsets:
              mean r, share r > 0.7 and SVCCA matrices; which layers correspond, raw and after removing
              each matrix's row and column means (``similarity.depth_alignment``)
    controls  the SmolLM2 seed twins and untrained SAE on the cross-model token set (``align_to``), and
              SmolLM2 layers against an untrained Gemma SAE: what the cross-model numbers are comparable with
    runtime   correlation, Hungarian and statistics time for d_sae x d_sae features over the compared tokens

Writes OUT/summary.json and OUT/summary.md (headline numbers), the matching tables, heatmaps and
histograms under OUT/match_smollm2/ and OUT/match_cross/ (controls: OUT/match_smollm2_on_cross_tokens/,
OUT/match_cross_untrained/), weight-matching tables under OUT/weights/.
Finished training is reused on a rerun (delete OUT/train_* to retrain).

    # the full measurement (hours on 2 CPU cores); --stage smollm2|cross runs one part and adds it to the summary
    nice -n 19 .venv/bin/python circuits/feature_universality.py --out runs/universality
    # a smoke test (minutes, not hours)
    nice -n 19 .venv/bin/python circuits/feature_universality.py --out /tmp/univ --train-tokens 8192 \
        --match-tokens 4096 --d-sae-smol 256 --d-sae-gemma 256 --null 50 --random-subsets 5 --matrix-subsets 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from saecircuits import matching
from saecircuits.core.config import validate
from saecircuits.core.files import ensure_dir, read_json, write_json, write_text
from saecircuits.matching.outputs import read_match, write_match, write_weight_match
from saecircuits.matching.similarity import depth_alignment, similarity_matrix
from saecircuits.model import loading as models
from saecircuits.sae import build
from saecircuits.sae import format as sae_format
from saecircuits.training.config import TrainConfig
from saecircuits.training.run import train

SMOL_LAYERS = {"L5": 5, "L11": 11, "L12": 12, "L17": 17, "L23": 23}
SMOL_SEED_TWIN = "L11s1"  # layer 11 again, another initialisation seed (same data order)
GEMMA_LAYERS = {"G3": 3, "G6": 6, "G10": 10, "G13": 13}
CROSS_SMOL = ("L5", "L11", "L17", "L23")
RANDOM_BASELINE = "L11rand"  # an untrained SAE on layer 11: the matched r that chance and shared input structure give
GEMMA_BASELINE = "G3rand"  # the same across models: an untrained SAE on Gemma layer 3


def untrained_like(sae, seed: int):
    """A TopK SAE of the same shape and site at its random initialisation (tied encoder, the trained b_dec)."""
    rnd = build(sae.cfg.model_copy(update={"seed": seed}), sae.d_in).eval()
    with torch.no_grad():
        rnd.b_dec.copy_(sae.b_dec)
    rnd.metadata = {}
    return rnd


def train_suite(model_name: str, model, saes: list[dict], args, out: Path) -> dict:
    """Train every SAE of one model from one stream; reuse a finished run with the same config."""
    cfg = validate(TrainConfig, {
        "model": model_name,
        "text": {"source": args.text, "context_size": 128},
        "store": {"batch_size_tokens": 4096, "model_batch_size": 8, "buffer_tokens": 65536, "normalize": "expected_average_only_in"},
        "saes": saes,
        "total_tokens": args.train_tokens,
        "eval": {"contexts": args.eval_contexts},
        "wandb": {"mode": args.wandb},
        "out": str(out),
    }, where="feature_universality")
    done = out / "summary.json"
    if done.exists() and (out / "config.json").exists() and read_json(out / "config.json") == cfg.model_dump(mode="json"):
        print(f"[{model_name}] reusing trained SAEs in {out}", flush=True)
        return read_json(done)
    start = time.perf_counter()
    summary = train(cfg, model=model)
    summary["train_seconds"] = time.perf_counter() - start
    write_json(done, summary)
    return summary


def matched(folder: Path, cfg, names: list[str], run, **write_kw) -> dict:
    """The matching result a finished run with this config and these SAEs wrote to ``folder``, else ``run()``, written there."""
    done = folder / "match.json"
    if done.exists():
        saved = read_json(done)
        if saved["config"] == cfg.model_dump(mode="json") and sorted(saved["saes"]) == sorted(names):
            print(f"reusing the matching in {folder}", flush=True)
            return read_match(folder)
    res = run()
    write_match(res, folder, **write_kw)
    return res


def sae_entries(layers: dict[str, int], d_sae: int, k: int, lr: float, twin: tuple[str, int, int] | None = None,
                seed_base: int = 0) -> list[dict]:
    """TopK SAEs on resid_post; every SAE gets its own initialisation seed (seed_base + layer), so two
    layers' SAEs never share an initial decoder (which would inflate their weight and activation match)."""
    out = [{"architecture": "topk", "hook": f"blocks.{layer}.hook_resid_post", "d_sae": d_sae, "k": k, "lr": lr,
            "seed": seed_base + layer, "name": name} for name, layer in layers.items()]
    if twin is not None:
        name, layer, seed = twin
        out.append({"architecture": "topk", "hook": f"blocks.{layer}.hook_resid_post", "d_sae": d_sae, "k": k, "lr": lr,
                    "seed": seed, "name": name})
    return out


def load_saes(folder: Path, names: list[str]) -> dict:
    return {n: sae_format.load(folder / "saes" / n) for n in names}


def pick(result: dict, a: str, b: str) -> dict:
    return next(r for r in result["results"] if r["a"] == a and r["b"] == b)


def headline(r: dict) -> dict:
    """The numbers a reader wants from one matched pair."""
    s, dec = r["summary"], r["similarity"].get("decoder", {})
    out = {"pair": f"{r['a']} vs {r['b']}", "tokens": s["tokens"], "alive_a": s["alive_a"], "alive_b": s["alive_b"],
           "n_pairs": s["n_pairs"], "n_kept": s["n_kept"], "mean_r": s["mean_r"], "median_r": s["median_r"],
           **({"mean_r_best_n": s["mean_r_best_n"]} if "mean_r_best_n" in s else {}),
           "share_r_gt_0.7": s["share_r_gt_0.7"], "share_r_gt_0.5": s["share_r_gt_0.5"],
           "mean_decoder_cos": s.get("mean_cos"), "r_hist": s["hist_r"],
           "correlation_seconds": s["correlation_seconds"], "assign_seconds": s["assign_seconds"]}
    for m, v in dec.items():
        if isinstance(v, dict):
            out[m] = {"score": v["score"], "null_mean": v["null_mean"], "null_q99": v["null_q99"], "p_value": v["p_value"],
                      "n_null": v["n_null"], "seconds": v["seconds"],
                      "random_subset_mean": (v.get("random_subset") or {}).get("mean"),
                      "random_subset_p": (v.get("random_subset") or {}).get("p_value")}
    act = r["similarity"].get("activations", {})
    for m, v in act.items():
        if isinstance(v, dict):
            out[f"activations_{m}"] = {"score": v["score"], "null_mean": v["null_mean"], "p_value": v["p_value"]}
    return out


def fmt(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def cross_md(cm: dict) -> list[str]:
    ds, dg, n = cm["depth_smol"], cm["depth_gemma"], cm["n_best"]
    titles = {"mean_r": "mean matched r",
              "mean_r_best_n": f"mean r of the best {n:,} matched pairs (the fewest any pair has: the same count everywhere)",
              "share_r_gt_0.7": "share of the SmolLM2 SAE's alive features matched at r > 0.7",
              "svcca": "SVCCA of paired decoders (p-value against shuffled pairings)"}
    alive = ", ".join(f"{k} {v['alive']:,}/{v['d_sae']:,}" for k, v in cm["alive"].items())
    lines = ["", "## SmolLM2 vs Gemma-3-270M at relative depths (text aligned by character offsets)", "",
             f"Rows SmolLM2, columns Gemma, relative depth (layer + 1) / n_layers in brackets; {cm['aligned_tokens']:,} "
             f"aligned tokens. Alive features on them (fire on >= 5 tokens): {alive}. Hungarian pairs min(alive A, alive B) "
             "features, so mean r against an SAE with fewer alive features averages only the best-matched part of the "
             "other side; the best-n mean and the share (of all alive SmolLM2 features) do not have that bias.", ""]
    for v, title in titles.items():
        m = cm[v]
        lines += [f"{title}:", "", "| | " + " | ".join(f"{c} ({dg[c]:.2f})" for c in m["cols"]) + " |",
                  "|---|" + "---|" * len(m["cols"])]
        pvals = m.get("p_values") or [[None] * len(m["cols"])] * len(m["rows"])
        for i, row in enumerate(m["rows"]):
            cells = [fmt(x) if pv is None else f"{fmt(x)} ({fmt(pv, 3)})" for x, pv in zip(m["values"][i], pvals[i], strict=True)]
            lines.append(f"| {row} ({ds[row]:.2f}) | " + " | ".join(cells) + " |")
        lines.append("")

    def arrows(best: dict) -> str:
        return ", ".join(f"{a} -> {b}" for a, b in best.items())

    lines += ["Which layers correspond. A raw best match carries each layer's main effect (e.g. early layers of both "
              "models share more token-level features, and the alive-count bias above); the interaction is the matrix "
              "with its row and column means removed. Spearman: interaction vs -|relative depth difference|; p over "
              "all 24 orderings of the SmolLM2 layers (the smallest possible p is 1/24 = 0.042).", "",
              "| statistic | best Gemma layer per SmolLM2 layer (raw) | best SmolLM2 layer per Gemma layer (raw) | "
              "best Gemma layer per SmolLM2 layer (interaction) | Spearman with depth (p) |", "|---|---|---|---|---|"]
    for v, d in cm["depth_alignment"].items():
        lines.append(f"| {v} | {arrows(d['best_col_raw'])} | {arrows(d['best_row_raw'])} | "
                     f"{arrows(d['best_col_interaction'])} | {fmt(d['spearman_with_depth'])} ({fmt(d['p_value'])}) |")
    lines += ["", f"Controls (the same {cm['aligned_tokens']:,} aligned tokens as the matrix; Hungarian; SVCCA of paired "
              "decoders against shuffled pairings):", "",
              f"| control | pair | alive A/B | mean r | mean r, best {n:,} | share r>0.7 | SVCCA (null mean, p) |",
              "|---|---|---|---|---|---|---|"]
    for h in cm["controls"]:
        sv = h.get("svcca")
        lines.append(f"| {h['control']} | {h['pair']} | {h['alive_a']}/{h['alive_b']} | {fmt(h['mean_r'])} | "
                     f"{fmt(h['mean_r_best_n'])} | {fmt(h['share_r_gt_0.7'])} | "
                     + (f"{sv['score']:.3f} ({sv['null_mean']:.3f}, {sv['p_value']:.3g})" if sv else "-") + " |")
    return lines + [""]


def smollm2_md(summary: dict) -> list[str]:
    lines = ["## Same layer, different seeds; adjacent vs far layers (SmolLM2, layer 11)", "",
              "| pair | layer distance | alive A/B | mean r | share r>0.7 | mean decoder cos | SVCCA (null mean, p) | CKA (null mean, p) | RSA (null mean, p) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for h in summary["smollm2"]:
        def stat(m):
            v = h.get(m)
            return f"{v['score']:.3f} ({v['null_mean']:.3f}, {v['p_value']:.3g})" if v else "-"

        lines.append(f"| {h['pair']}{' (untrained SAE: baseline)' if h.get('baseline') else ''} | {h['layer_distance']} | {h['alive_a']}/{h['alive_b']} | {fmt(h['mean_r'])} | "
                     f"{fmt(h['share_r_gt_0.7'])} | {fmt(h['mean_decoder_cos'])} | {stat('svcca')} | {stat('cka')} | {stat('rsa')} |")
    lines += ["", "Weight matching (SAE Match: Hungarian on folded decoders; unit scale, or each feature's mean "
              "activation when firing folded in): mean matched decoder cosine, and the share of features the weight "
              "matching pairs as the activation matching does", ""]
    for w in summary["weights"]:
        lines.append(f"- {w['pair']} ({w['folding']}): mean cos {w['mean_cos']:.3f}, share cos > 0.7 {w['share_cos_gt_0.7']:.3f}, "
                     f"agrees with activation matching {w['agrees_with_activation_matching']:.3f}")
    return lines


def report_md(summary: dict) -> str:
    lines = ["# Feature universality (saecircuits)", "",
             f"SmolLM2-135M and Gemma-3-270M, TopK SAEs (k={summary['settings']['k']}, d_sae {summary['settings']['d_sae_smol']} / "
             f"{summary['settings']['d_sae_gemma']}), {summary['settings']['train_tokens']:,} training tokens each; "
             f"activation matching over {summary['settings']['match_tokens']:,} compared tokens of `{summary['settings']['text']}`; "
             f"Hungarian matching; nulls of {summary['settings']['null']} shuffled pairings.", ""]
    trained = {**summary.get("train_smollm2", {}), **summary.get("train_gemma", {})}
    if trained:
        lines += ["The SAEs on held-out text (explained variance, dead latents): " + ", ".join(
            f"{n} {r['explained_variance']:.2f} / {r['dead_latents']:,}" for n, r in trained.items()
            if r.get("explained_variance") is not None and r.get("dead_latents") is not None) + ".", ""]
    if summary.get("smollm2"):
        lines += smollm2_md(summary)
    if summary.get("cross_model"):
        lines += cross_md(summary["cross_model"])
    rt = summary.get("runtime")
    lines += [] if rt is None else ["## Runtime", "",
              f"- {rt['d_sae']} x {rt['d_sae']} features over {rt['tokens']:,} tokens: correlation accumulation {rt['correlation_seconds']:.1f} s, "
              f"Hungarian {rt['assign_seconds']:.1f} s, similarity statistics {rt['similarity_seconds']:.1f} s "
              f"(SAE encoding {rt['encode_seconds_per_sae']:.1f} s per SAE; model forward {rt['forward_seconds']:.1f} s for the whole stream)", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/universality")
    p.add_argument("--text", default="stdlib")
    p.add_argument("--train-tokens", type=int, default=200_000)
    p.add_argument("--match-tokens", type=int, default=100_000)
    p.add_argument("--d-sae-smol", type=int, default=4608)
    p.add_argument("--d-sae-gemma", type=int, default=5120)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--null", type=int, default=1000, help="shuffled pairings per null")
    p.add_argument("--random-subsets", type=int, default=100, help="random-subset baseline draws (SmolLM2 pairs)")
    p.add_argument("--matrix-subsets", type=int, default=20, help="random-subset draws per cross-model cell")
    p.add_argument("--eval-contexts", type=int, default=32)
    p.add_argument("--wandb", default="off")
    p.add_argument("--stage", choices=("smollm2", "cross"), action="append",
                   help="run only these stages (default both); finished training and matching are reused")
    a = p.parse_args()
    stages = a.stage or ["smollm2", "cross"]
    out = ensure_dir(a.out)
    t_all = time.perf_counter()
    settings = {"text": a.text, "train_tokens": a.train_tokens, "match_tokens": a.match_tokens, "d_sae_smol": a.d_sae_smol,
                "d_sae_gemma": a.d_sae_gemma, "k": a.k, "null": a.null, "random_subsets": a.random_subsets,
                "matrix_subsets": a.matrix_subsets}
    # a one-stage run adds its part to the summary an earlier run with the same settings wrote, never erases the other
    previous = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
    summary: dict = previous if previous.get("settings") == settings else {"settings": settings}
    summary["seconds"] = summary.get("seconds", {})

    # ---- SmolLM2: train, then seeds / adjacent / far layers from one matching stream
    smol = models.load("smollm2-135m")
    tr = train_suite("smollm2-135m", smol, sae_entries(SMOL_LAYERS, a.d_sae_smol, a.k, a.lr, (SMOL_SEED_TWIN, 11, 1011)), a, out / "train_smollm2")
    summary["seconds"]["train_smollm2"] = tr.get("train_seconds")
    summary["train_smollm2"] = train_headline(tr)
    saes = load_saes(out / "train_smollm2", [*SMOL_LAYERS, SMOL_SEED_TWIN])
    saes[RANDOM_BASELINE] = untrained_like(saes["L11"], seed=2024)  # one baseline for both stages
    base = {"text": {"source": a.text, "context_size": 128, "seed": 1}, "tokens": a.match_tokens, "null": a.null}
    if "smollm2" in stages:
        smollm2_stage(summary, saes, smol, base, a, out)
        write_summary(summary, out)
    if "cross" in stages:
        cross_stage(summary, saes, smol, base, a, out)
    summary["seconds"]["this_run"] = time.perf_counter() - t_all
    write_summary(summary, out)


def write_summary(summary: dict, out: Path) -> None:
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", report_md(summary))
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}", flush=True)


def smollm2_stage(summary: dict, saes: dict, smol, base: dict, a, out: Path) -> None:
    """Seeds, adjacent and far layers of SmolLM2 from one matching stream, and weight matching."""
    cfg = validate(matching.MatchConfig, {**base, "random_subsets": a.random_subsets}, where="feature_universality")
    others = [SMOL_SEED_TWIN, "L12", "L5", "L17", "L23", RANDOM_BASELINE]
    res = matched(out / "match_smollm2", cfg, ["L11", *others],
                  lambda: matching.match_saes({"L11": saes["L11"]}, {n: saes[n] for n in others}, smol, None, cfg))
    summary["seconds"]["match_smollm2"] = compute_seconds(res)
    summary["smollm2"] = []
    for n in others:
        h = headline(pick(res, "L11", n))
        h["layer_distance"] = abs(SMOL_LAYERS.get(n, 11) - 11)
        h["baseline"] = n == RANDOM_BASELINE
        summary["smollm2"].append(h)
    seed_pair = pick(res, "L11", SMOL_SEED_TWIN)
    sim_seconds = sum(v["seconds"] + (v.get("random_subset") or {}).get("seconds", 0.0)
                      for part in seed_pair["similarity"].values() for v in part.values() if isinstance(v, dict))
    n_sae = len(res["saes"])
    summary["runtime"] = {
        "d_sae": a.d_sae_smol, "tokens": seed_pair["summary"]["tokens"],
        "correlation_seconds": seed_pair["summary"]["correlation_seconds"],
        "assign_seconds": seed_pair["summary"]["assign_seconds"], "similarity_seconds": sim_seconds,
        "encode_seconds_per_sae": res["timing"]["encode_seconds"] / n_sae, "forward_seconds": res["timing"]["forward_seconds"],
        "stream_seconds": res["timing"]["stream_seconds"], "pairs_in_stream": len(res["results"]),
    }
    summary["weights"] = []
    scale = {n: torch.tensor(info["mean_active"]) for n, info in res["saes"].items()}
    for n in [SMOL_SEED_TWIN, "L12", "L17"]:
        for folding, sa, sb in (("unit", None, None), ("activation_scale", scale["L11"], scale[n])):
            w = matching.weight_match(saes["L11"], saes[n], scale_a=sa, scale_b=sb)
            write_weight_match(w, out / "weights", f"L11__{n}__{folding}")
            # agreement of the weight matching with the activation matching of the same pair
            act = {p["a"]: p["b"] for p in pick(res, "L11", n)["pairs"]}
            agree = float(np.mean([act.get(p["a"]) == p["b"] for p in w["pairs"]]))
            summary["weights"].append({"pair": f"L11 vs {n}", "folding": folding, "agrees_with_activation_matching": agree,
                                       **{k: v for k, v in w["summary"].items() if not k.startswith("hist")}})



def cross_stage(summary: dict, saes: dict, smol, base: dict, a, out: Path) -> None:
    """SmolLM2 x Gemma at relative depths, text aligned by character offsets."""
    gemma = models.load("gemma-3-270m")
    tr = train_suite("gemma-3-270m", gemma, sae_entries(GEMMA_LAYERS, a.d_sae_gemma, a.k, a.lr, seed_base=100), a, out / "train_gemma")
    summary["seconds"]["train_gemma"] = tr.get("train_seconds")
    summary["train_gemma"] = train_headline(tr)
    gsaes = load_saes(out / "train_gemma", list(GEMMA_LAYERS))
    cfg_x = validate(matching.MatchConfig, {**base, "random_subsets": a.matrix_subsets, "measures": ["svcca"],
                                            "sample_tokens": 0}, where="feature_universality")
    xres = matched(out / "match_cross", cfg_x, [*CROSS_SMOL, *GEMMA_LAYERS],
                   lambda: matching.match_saes({n: saes[n] for n in CROSS_SMOL}, gsaes, smol, gemma, cfg_x),
                   heatmaps=("mean_r", "share_r_gt_0.7", "svcca"))
    summary["seconds"]["match_cross"] = compute_seconds(xres)
    # controls: are cross-model numbers comparable with same-model ones, and what does chance give across models?
    # (1) the SmolLM2 seed twins and untrained SAE on exactly the positions the cross-model matching compares;
    # (2) SmolLM2 layers against an untrained SAE on Gemma layer 3 (the column every row matches best)
    same = matched(out / "match_smollm2_on_cross_tokens", cfg_x, ["L11", SMOL_SEED_TWIN, RANDOM_BASELINE],
                   lambda: matching.match_saes({"L11": saes["L11"]}, {n: saes[n] for n in (SMOL_SEED_TWIN, RANDOM_BASELINE)},
                                               smol, None, cfg_x, align_to=gemma), heatmaps=())
    chance = matched(out / "match_cross_untrained", cfg_x, ["L5", "L11", GEMMA_BASELINE],
                     lambda: matching.match_saes({n: saes[n] for n in ("L5", "L11")},
                                                 {GEMMA_BASELINE: untrained_like(gsaes["G3"], seed=2025)}, smol, gemma, cfg_x),
                     heatmaps=())
    summary["seconds"]["cross_controls"] = compute_seconds(same) + compute_seconds(chance)

    # Hungarian pairs min(alive A, alive B) features, so against an SAE with fewer alive features mean r averages
    # only the best-matched part of the other side; the mean of the best n pairs, one n for all, does not
    everything = xres["results"] + same["results"] + chance["results"]
    n_best = min(r["summary"]["n_pairs"] for r in everything)
    for r in everything:
        r["summary"]["mean_r_best_n"] = mean_best(r, n_best)
    matrices = {v: similarity_matrix(xres["results"], value=v) for v in ("mean_r", "mean_r_best_n", "share_r_gt_0.7", "svcca")}
    depth_smol = {n: (SMOL_LAYERS[n] + 1) / smol.cfg.n_layers for n in CROSS_SMOL}
    depth_gemma = {n: (GEMMA_LAYERS[n] + 1) / gemma.cfg.n_layers for n in GEMMA_LAYERS}
    summary["cross_model"] = {
        **matrices, "n_best": n_best, "depth_smol": depth_smol, "depth_gemma": depth_gemma,
        "alive": {n: {"alive": info["alive"], "d_sae": info["d_sae"]} for n, info in xres["saes"].items()},
        # raw argmaxes carry each layer's main effect; the interaction (row and column means removed) does not
        "depth_alignment": {v: depth_alignment(m, depth_smol, depth_gemma) for v, m in matrices.items()},
        "aligned_tokens": xres["timing"]["tokens"], "timing": xres["timing"],
        "controls": [{**headline(r), "control": "SmolLM2 pair on the cross-model token set"} for r in same["results"]]
                    + [{**headline(r), "control": "SmolLM2 vs an untrained Gemma SAE"} for r in chance["results"]]
                    + [{**headline(pick(xres, a, "G3")), "control": "SmolLM2 vs the trained Gemma SAE (from the matrix)"}
                       for a in ("L5", "L11")],
    }


def train_headline(tr: dict) -> dict:
    """Held-out quality of each trained SAE (from the training summary)."""
    return {n: {k: r.get(k) for k in ("explained_variance", "ce_loss_recovered", "l0", "dead_latents")} for n, r in tr["saes"].items()}


def compute_seconds(res: dict) -> float:
    """What a matching took when it ran (saved with it, so a reused matching reports its own time, not the reuse)."""
    return res["timing"]["stream_seconds"] + res["timing"]["results_seconds"]


def mean_best(r: dict, n: int) -> float:
    """Mean of the n highest matched r of one pair result."""
    v = np.array([p["r"] for p in r["pairs"]], dtype=np.float64)
    return float(np.sort(v[np.isfinite(v)])[::-1][:n].mean())

if __name__ == "__main__":
    main()
