"""Head weight graph: saecircuits vs TransformerLens's ``all_composition_scores``, same model, same weights.

- saecircuits: ``weight_graph(model)`` — Q-, K- and V-composition of every head pair, the null
  model's z-scores (128 same-spectrum draws per pair), the SVD channels of the kept edges and the
  networkx graph (the whole ``saecircuits heads`` computation, files excluded); also the scores alone
  (``composition_scores``, with the null).
- TransformerLens 3.x: ``model.all_composition_scores(kind)`` for Q, K and V (scores only: no null,
  no channels), the tool a user would reach for. It materialises [L, H, L, H, d_head, d_model]
  operands (about 22 GB for SmolLM2, 7 GB for Gemma-3-270M), so past 2 GB the side calls
  TransformerLens's ``composition_scores`` once per receiver layer (senders of all earlier layers at
  once) instead; the results record which.

Both read the model as ``saecircuits.model.loading.load`` gives it (norms folded); loading is not timed.
Each side runs in a fresh process, interleaved, ``--repeats`` rounds; medians, every raw value,
peak memory, and the largest difference between the two sides' scores are recorded in
``benchmarks/results/heads_vs_transformerlens_{model}.{json,md}``.

Run:   nice -n 19 python benchmarks/heads_vs_transformerlens.py --model smollm2-135m
       nice -n 19 python benchmarks/heads_vs_transformerlens.py --model gemma-3-270m
Smoke: python benchmarks/heads_vs_transformerlens.py --smoke      (a random 4-layer GQA model, seconds)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

KINDS = ("Q", "K", "V")


def _model(name: str):
    if name == "tiny":  # smoke test: a random grouped-query model, no tokenizer needed
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(n_layers=4, d_model=128, n_heads=8, d_head=16, n_key_value_heads=4, d_mlp=None,
                                      attn_only=True, n_ctx=64, d_vocab=100, act_fn="gelu", normalization_type=None,
                                      seed=0, model_name="tiny-gqa")
        return HookedTransformer(cfg).eval()
    from saecircuits.model.loading import load

    return load(name)


def side_saecircuits(args: dict) -> dict:
    import torch

    from saecircuits.core.tensors import save_tensors
    from saecircuits.heads.config import HeadGraphConfig
    from saecircuits.heads.graph import HeadCircuits, composition_scores, weight_graph

    model = _model(args["model"])
    cfg = HeadGraphConfig()
    start = time.perf_counter()
    graph, scores = weight_graph(model, cfg)
    total = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        composition_scores(HeadCircuits.from_model(model), cfg.null_draws, cfg.seed)
    only_scores = time.perf_counter() - start
    save_tensors(args["scores"], {k: scores[k] for k in KINDS})
    return {"seconds": total, "scores_seconds": only_scores, "edges": graph.number_of_edges(),
            "pairs": int((~scores["Q"].isnan()).sum())}


def side_transformerlens(args: dict) -> dict:
    import torch
    from transformer_lens.utils import composition_scores

    from saecircuits.core.tensors import save_tensors

    model = _model(args["model"])
    L, H, d, dh = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_head
    # all_composition_scores broadcasts [L, H, L, H, d_head, d_model] operands (torch materialises them):
    # 2 x 11 GB for SmolLM2, 2 x 3.4 GB for Gemma. Past 2 GB, call TransformerLens's composition_scores
    # once per receiver layer instead (all earlier layers' senders at once), as a user would have to.
    whole = 2 * (L * H) ** 2 * dh * d * 4 <= 2 * 2**30
    out = {}
    start = time.perf_counter()
    with torch.no_grad():
        for kind in KINDS:
            if whole:
                out[kind] = model.all_composition_scores(kind).reshape(L * H, L * H)
                continue
            right = {"Q": model.QK, "K": model.QK.T, "V": model.OV}[kind]
            scores = torch.zeros(L, H, L, H)
            for lr in range(1, L):
                scores[:lr, :, lr] = composition_scores(model.OV[:lr], right[lr], broadcast_dims=True)
            out[kind] = scores.reshape(L * H, L * H)
    seconds = time.perf_counter() - start
    save_tensors(args["scores"], out)
    return {"seconds": seconds, "mode": "all_composition_scores" if whole else "composition_scores per receiver layer"}


def main() -> None:
    if harness.side_main({"saecircuits": side_saecircuits, "transformerlens": side_transformerlens}):
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    model = "tiny" if a.smoke else a.model
    harness.WORK.mkdir(parents=True, exist_ok=True)
    files = {side: str(harness.WORK / f"heads_{side}_{model}.safetensors") for side in ("saecircuits", "transformerlens")}
    runs = [(side, side, {"model": model, "scores": files[side]}) for side in files]
    res = harness.interleaved(__file__, runs, 1 if a.smoke else a.repeats)

    from saecircuits.core.tensors import load_tensors

    ours, theirs = load_tensors(files["saecircuits"]), load_tensors(files["transformerlens"])
    diff = {}
    for kind in KINDS:
        causal = ~ours[kind].isnan()
        diff[kind] = float((ours[kind][causal] - theirs[kind][causal]).abs().max())
    sc, tl = res["saecircuits"], res["transformerlens"]
    med = {"saecircuits_graph_s": harness.median(sc, "seconds"), "saecircuits_scores_s": harness.median(sc, "scores_seconds"),
           "transformerlens_scores_s": harness.median(tl, "seconds"),
           "saecircuits_peak_mb": harness.median(sc, "peak_rss_mb"), "transformerlens_peak_mb": harness.median(tl, "peak_rss_mb")}
    data = {"model": model, "machine": harness.machine(), "medians": med,
            "ratio_tl_over_saecircuits_graph": med["transformerlens_scores_s"] / med["saecircuits_graph_s"],
            "max_abs_score_difference": diff, "pairs": sc[0]["pairs"], "edges": sc[0]["edges"], "raw": res}
    md = "\n".join([
        f"# Head weight graph: saecircuits vs TransformerLens ({model})", "",
        f"{sc[0]['pairs']:,} head pairs x Q/K/V; medians of {len(sc)} interleaved round(s), each side in a fresh process "
        f"({data['machine']['cpus']} CPUs, torch {data['machine']['torch']}, {data['machine']['date']}).", "",
        harness.md_table(["side", "what", "seconds", "peak MB"], [
            ["saecircuits", "scores + null z (128 draws) + channels + graph", f"{med['saecircuits_graph_s']:.2f}", f"{med['saecircuits_peak_mb']:.0f}"],
            ["saecircuits", "scores + null z only", f"{med['saecircuits_scores_s']:.2f}", ""],
            ["TransformerLens", f"{tl[0]['mode']}, Q, K, V (scores only)", f"{med['transformerlens_scores_s']:.2f}", f"{med['transformerlens_peak_mb']:.0f}"],
        ]), "",
        f"TransformerLens time / saecircuits full graph time: {data['ratio_tl_over_saecircuits_graph']:.2f}. "
        f"Largest score difference between the two: " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()) + ".",
    ])
    harness.write(f"heads_vs_transformerlens_{model}", data, md)


if __name__ == "__main__":
    main()
