"""The whole circuit-method comparison on one task and model, timed against its FLOP floor.

- sweep: ``saecircuits.circuits.comparison.compare`` with the default settings (every method, nodes and
  edges, every MIB size, the test set evaluated under counterfactual and clean-mean ablation, each
  method's circuit under every ablation), IOI on SmolLM2 by default. Loading the model is not timed.
- matmul: the machine's float32 matmul rate (2048 x 2048 x 2048, the same threads), the peak a
  forward pass could reach.

The floor is the FLOPs of the forward (and backward) passes the sweep ran, counted by
``MaskedForward.work`` in token positions, at that peak: per token 2 x the model's non-embedding
parameters plus attention's 4 x positions x d_model a layer, plus, for an edge-masked run, 2 x edges x
d_model for mixing every receiver's input; a backward pass counts twice a forward. The ratio
measured / floor is what the implementation loses to memory traffic, Python and small matmuls.

Run:   nice -n 19 python benchmarks/circuit_sweep.py                  (about an hour on 2 quiet cores)
Smoke: python benchmarks/circuit_sweep.py --smoke
Also a result: ... --task greater_than --pruning-steps 15 --pruning-batch 8 --out circuits/results/greater_than-smollm2-135m                     (tiny sizes, a few minutes)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness


def side_matmul(args: dict) -> dict:
    """Median float32 GFLOP/s of an n x n x n matmul over ``reps`` runs (after one warm-up)."""
    import statistics

    import torch

    n, reps = args.get("n", 2048), args.get("reps", 7)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return {"gflops": statistics.median(rates), "all": rates, "threads": torch.get_num_threads()}


def side_sweep(args: dict) -> dict:
    """The comparison with ``args["config"]`` (ComparisonConfig fields) on ``args["model"]``: seconds and work."""
    import torch

    from saecircuits.circuits.comparison import compare
    from saecircuits.circuits.config import ComparisonConfig
    from saecircuits.model.loading import load

    model = load(args["model"])
    cfg = ComparisonConfig(**args["config"])
    t = time.perf_counter()
    result = compare(model, cfg)
    seconds = time.perf_counter() - t
    if args.get("out"):  # the run is also a result: written as `saecircuits circuit-methods` writes it
        from saecircuits.circuits.comparison_files import write_comparison
        from saecircuits.report.comparison import render

        result["config"] = {**cfg.model_dump(), "model": args["model"], "seconds": seconds, "processes": 1}
        write_comparison(result, args["out"], markdown=render)
    c = model.cfg
    params = sum(p.numel() for p in model.blocks.parameters())  # the unembedding runs at 1-2 positions: left out
    per_token = 2 * params + c.n_layers * 4 * 16 * c.d_model  # ~16 positions a prompt
    edge_extra = 2 * result["graph"]["n_edges"] * c.d_model
    w = result["work"]
    flops = (w["tokens"] + w["edge_tokens"]) * per_token + w["edge_tokens"] * edge_extra
    flops += 2 * w["backward_tokens"] * per_token  # backward ~ twice the forward (edge mixing's share ignored)
    methods = {}
    for m in result["methods"]:
        key = f"{m['name']}/{m['granularity']}"
        methods.setdefault(key, {"discovery_s": m["seconds"], "eval_s": 0.0})["eval_s"] += m["eval_seconds"]
    return {"seconds": seconds, "flops": flops, "work": w, "methods": methods, "threads": torch.get_num_threads(),
            "n_edges": result["graph"]["n_edges"], "n_nodes": result["graph"]["n_nodes"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="ioi")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--pruning-steps", type=int, default=None, help="edge-pruning steps per target (default: the config's)")
    p.add_argument("--pruning-batch", type=int, default=None, help="edge-pruning prompts per step")
    p.add_argument("--out", default=None, help="also write the comparison folder here (the last repeat's)")
    a = p.parse_args()
    config = {"task": a.task}
    pruning = {k: v for k, v in (("steps", a.pruning_steps), ("batch_size", a.pruning_batch)) if v is not None}
    if pruning:
        config["pruning"] = pruning
    name = f"circuit_sweep_{a.task}_{a.model}"
    if a.smoke:
        config.update(n_train=4, n_val=4, n_test=4, random_draws=2, greedy_pool=3,
                      pruning={"targets": (0.5, 0.05), "steps": 2, "batch_size": 4})
        name += "_smoke"
    runs = [("matmul", "matmul", {}), ("sweep", "sweep", {"model": a.model, "config": config, "out": a.out})]
    out = harness.interleaved(__file__, runs, a.repeats)
    peak = harness.median(out["matmul"], "gflops")
    sweep = harness.median(out["sweep"], "seconds")
    flops = harness.median(out["sweep"], "flops")
    floor = flops / (peak * 1e9)
    last = out["sweep"][-1]
    rows = [[k, f"{v['discovery_s']:.0f}", f"{v['eval_s']:.0f}"] for k, v in sorted(last["methods"].items())]
    md = [f"# Circuit-method sweep: {a.task} on {a.model}", "",
          f"{harness.machine()}; {a.repeats} run(s), medians.", "",
          f"- whole sweep: {sweep:.0f} s ({sweep / 60:.1f} min; target 15 min)",
          f"- work: {last['work']} token positions; {flops / 1e12:.2f} TFLOP",
          f"- matmul peak: {peak:.1f} GFLOP/s -> floor {floor:.0f} s; measured / floor = {sweep / floor:.1f}x",
          f"- peak memory: {harness.median(out['sweep'], 'peak_rss_mb'):.0f} MB", "",
          harness.md_table(["method/granularity", "discovery s", "evaluation s (test curves)"], rows)]
    harness.write(name, {"runs": out, "peak_gflops": peak, "floor_s": floor, "sweep_s": sweep, "config": config,
                         "machine": harness.machine()}, "\n".join(md))


if __name__ == "__main__":
    if not harness.side_main({"matmul": side_matmul, "sweep": side_sweep}):
        main()
