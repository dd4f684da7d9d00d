"""The IOI circuit of SmolLM2 (or Gemma-3-270M): found by patching, validated by ablation.

Reports the circuit found and its size, its faithfulness with a bootstrap CI, the knockout and the
random-circuit baseline, agreement between activation patching and the SAE-code method (and
ablation), EAP against exact edge patching, the weight graph (``heads``) against EAP, and the time of a full single-head ablation sweep
(every head x every prompt, batched), next to a naive loop (one full forward per head) timed on a
few heads. ``--overlap colored_objects`` also finds the colored-objects circuit (as many heads as
the IOI circuit) and reports the head overlap ("Circuit Component Reuse").

    nice -n 19 .venv/bin/python circuits/ioi.py                          # SmolLM2, 64 prompts
    nice -n 19 .venv/bin/python circuits/ioi.py --model gemma-3-270m
    nice -n 19 .venv/bin/python circuits/ioi.py --prompts 4 --random 2 --no-edges --naive-heads 2   # smoke test

Writes results.json, circuit.json, graph.graphml/.json, edge_scores.safetensors and report.md to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from saecircuits.circuits import tasks
from saecircuits.circuits.ablation import ablation_values
from saecircuits.circuits.config import CircuitConfig
from saecircuits.circuits.patching import HeadPatcher
from saecircuits.circuits.study import find_and_validate, head_overlap, summary_lines, weights_vs_edges, write_results
from saecircuits.core.config import validate
from saecircuits.core.files import write_json, write_text
from saecircuits.heads.graph import weight_graph
from saecircuits.model import loading as models


def naive_sweep_seconds(model, task, values, heads: list[tuple[int, int]]) -> float:
    """Seconds per head of the unbatched way: one full forward over every prompt per head."""
    t = time.perf_counter()
    with torch.inference_mode():
        for layer, h in heads:
            def hook(z, hook, layer=layer, h=h):
                z = z.clone()
                z[:, :, h] = values[layer][:, :, h]
                return z

            for i in range(0, len(task), 16):
                model.run_with_hooks(task.clean[i: i + 16], fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
    return (time.perf_counter() - t) / max(1, len(heads))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--size", type=int, default=None, help="heads in the circuit (default: by --threshold)")
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--ablation", default="mean", choices=["mean", "zero", "resample"])
    ap.add_argument("--random", type=int, default=20, help="random circuits of the same size")
    ap.add_argument("--ig-steps", type=int, default=0)
    ap.add_argument("--no-edges", action="store_true")
    ap.add_argument("--no-sae-codes", action="store_true")
    ap.add_argument("--naive-heads", type=int, default=3, help="heads timed the naive way (0: skip)")
    ap.add_argument("--overlap", default=None, help="a second task whose circuit is compared, e.g. colored_objects")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", default=None, help="default: circuits/results/head-patching/ioi-MODEL")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    out = Path(args.out or f"circuits/results/head-patching/ioi-{args.model}")
    base = {"prompts": args.prompts, "size": args.size, "threshold": args.threshold, "ablation": args.ablation,
            "random_circuits": args.random, "ig_steps": args.ig_steps, "edges": not args.no_edges, "seed": args.seed}
    if args.no_sae_codes:
        base["sae_codes"] = None
    cfg = validate(CircuitConfig, {**base, "task": "ioi"}, where="circuits/ioi.py")
    model = models.load(args.model, dtype=getattr(torch, args.dtype))
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    task = tasks.build("ioi", model, n=args.prompts, seed=args.seed)
    results = find_and_validate(model, task, cfg, progress=say)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sweep = {"heads": L * H, "prompts": len(task), "prompt_tokens": task.clean.shape[1], "dtype": args.dtype,
             "batched_seconds": results.seconds["ablation_sweep"], "torch_threads": torch.get_num_threads()}
    sweep["batched_seconds_per_head"] = sweep["batched_seconds"] / (L * H)
    if args.naive_heads:
        say(f"timing the naive loop on {args.naive_heads} heads")
        patcher = HeadPatcher(model, task)
        g = torch.Generator().manual_seed(args.seed)
        picks = torch.randperm(L * H, generator=g)[: args.naive_heads]
        heads = [(int(i) // H, int(i) % H) for i in picks]
        per_head = naive_sweep_seconds(model, task, ablation_values(patcher, args.ablation, args.seed), heads)
        sweep.update(naive_heads_timed=[f"{a}.{b}" for a, b in heads], naive_seconds_per_head=per_head,
                     batched_speedup=per_head / sweep["batched_seconds_per_head"])
    results.extras["ablation_sweep_timing"] = sweep

    if results.edge_scores is not None:
        say("weight graph (heads.weight_graph) against edge attribution")
        t = time.perf_counter()
        _, weight_scores = weight_graph(model)
        results.extras["weights_vs_edges"] = {"weight_graph_seconds": time.perf_counter() - t,
                                              **weights_vs_edges(weight_scores, results.edge_scores, H)}

    if args.overlap:
        say(f"finding the {args.overlap} circuit for the overlap")
        # the same number of heads as the IOI circuit, so the overlap compares sets of one size
        other_cfg = validate(CircuitConfig, {**base, "task": args.overlap, "edges": False, "sae_codes": None,
                                             "size": results.circuit.size}, where="--overlap")
        other = find_and_validate(model, None, other_cfg, progress=say)
        results.extras["overlap"] = {"task": other.task, "evaluation": other.evaluation, "circuit": other.circuit.to_json(),
                                     "faithfulness": other.validation["faithfulness"],
                                     **head_overlap(results.circuit.heads, other.circuit.heads, L * H)}
        write_results(other, out / args.overlap)

    paths = write_results(results, out)
    lines = summary_lines(results)
    lines.append(f"single-head {args.ablation}-ablation sweep: {L * H} heads x {len(task)} prompts "
                 f"({task.clean.shape[1]} tokens) in {sweep['batched_seconds']:.1f} s batched, {args.dtype}, "
                 f"{sweep['torch_threads']} threads")
    if "naive_seconds_per_head" in sweep:
        lines.append(f"naive loop: {sweep['naive_seconds_per_head']:.2f} s per head vs {sweep['batched_seconds_per_head']:.2f} "
                     f"s batched ({sweep['batched_speedup']:.1f}x), timed on {len(sweep['naive_heads_timed'])} heads")
    if "weights_vs_edges" in results.extras:
        w = results.extras["weights_vs_edges"]
        lines.append(f"weight graph ({w['weight_graph_seconds']:.1f} s) vs edge attribution, Spearman over head pairs: "
                     + ", ".join(f"{k} {w[k]['spearman']:.3f} (top-{w[k]['top']} overlap {w[k]['top_overlap']})"
                                 for k in "QKV" if k in w))
    if "overlap" in results.extras:
        o = results.extras["overlap"]
        lines.append(f"overlap with {o['task']} (circuit of {o['circuit']['size']}, can_do={o['evaluation']['can_do']}): "
                     f"{o['n_shared']} shared heads {o['shared']}, overlap coefficient {o['overlap_coefficient']:.2f}, "
                     f"Jaccard {o['jaccard']:.2f}, hypergeometric p {o['p_value']:.3g}")
    write_json(out / "sweep_timing.json", sweep)
    write_text(out / "report.md", f"# IOI circuit, {args.model}\n\n" + "\n".join(f"- {x}" for x in lines) + "\n")
    if "overlap" in results.extras:
        write_json(out / "overlap.json", results.extras["overlap"])
    print("\n".join(lines))
    print(f"written: {out} ({', '.join(p.name for p in paths.values())}, report.md, sweep_timing.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
