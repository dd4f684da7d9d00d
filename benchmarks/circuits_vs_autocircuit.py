"""Circuit discovery: saecircuits vs auto-circuit 1.0.1 on SmolLM2-135M, same prompts, same ablation.

- Prompts: IOI from ``saecircuits.circuits.splits.build_splits`` (seed 0), made once by the parent and saved as
  safetensors; both tools read the same train (discovery) and test (evaluation) tokens, answers and wrong tokens.
- Ablation: counterfactual. A cut edge reads its sender's output on the prompt's own corrupted prompt; the empty
  circuit is the corrupted run, the full model the clean run. auto-circuit: ``run_circuits`` with
  ``PatchType.TREE_PATCH`` (clean input; the edges outside the circuit are patched from the corrupted run) and
  ``AblationType.RESAMPLE``.
- saecircuits: ``eap`` (``edge_attribution``) and ``edge-pruning`` (hard-concrete edge masks, KL objective).
- auto-circuit: ``eap`` (``mask_gradient_prune_scores``, logit, avg_diff, mask_val 0: its EAP preset) and
  ``subnetwork-probing`` (its "Subnetwork Tree Probing" preset but for the epochs: lr 0.1, lambda 0.5, hard
  concrete, KL; auto-circuit fixes its training ablation to the token-wise mean of the corrupted train prompts).
  Its model is the same weights with GQA ungrouped (k/v edges per query head), as auto-circuit requires, and
  three import shims (two TransformerLens 3.x names, ``torch.optim.adam`` for subnetwork probing).
- Scoring: each tool's circuits at MIB's sizes of its own edge count (``int(fraction * n_edges)``), per-prompt logit
  difference on test; f, CMD and CPR come from ``saecircuits.circuits.faithfulness`` for both tools.

Timed: discovery; evaluation (full model, empty circuit and the 10 circuits on test). Not timed: loading the model,
wrapping it, one warm-up forward. Each (tool, method) runs in a fresh process, interleaved, ``--repeats`` rounds;
medians. The auto-circuit side runs in its own venv and imports nothing from saecircuits.

Run:   nice -n 19 python benchmarks/circuits_vs_autocircuit.py
Smoke: python benchmarks/circuits_vs_autocircuit.py --quick --name smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # stdlib only at top level: importable by the auto-circuit venv too

PEER_PYTHON = "/work/peers/autocircuit/bin/python"
MODEL_DIR = Path.home() / ".cache" / "saecircuits" / "models" / "smollm2-135m"
SIZES = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)  # MIB_SIZES, restated for the peer venv; checked in main()
SPLITS = ("train", "test")
FIELDS = ("clean", "corrupted", "answers", "wrong")  # Task's fields, in its order
PAIRS = (("eap", "eap"), ("edge-pruning", "subnetwork-probing"))
COSTS = ("discovery_s", "evaluation_s", "peak_rss_mb")


def prompts(n_train: int, n_test: int) -> Path:
    """The IOI train and test prompts for every side (built once with SmolLM2, saved as int64 safetensors)."""
    path = harness.WORK / f"circuits_ioi_smollm2_{n_train}_{n_test}.safetensors"
    if path.exists():
        return path
    from saecircuits.circuits.splits import build_splits
    from saecircuits.core.tensors import save_tensors
    from saecircuits.model.loading import load

    splits = build_splits("ioi", load("smollm2-135m"), n_train, 1, n_test, seed=0)
    save_tensors(path, {f"{s}_{k}": getattr(getattr(splits, s), k).long() for s in SPLITS for k in FIELDS})
    return path


def side_saecircuits(args: dict) -> dict:
    import torch

    from saecircuits.circuits.config import PruningConfig
    from saecircuits.circuits.discovery.attribution import edge_attribution
    from saecircuits.circuits.discovery.edge_pruning import edge_pruning
    from saecircuits.circuits.evaluation import Evaluator
    from saecircuits.circuits.masked_forward import MaskedForward
    from saecircuits.circuits.sweep import curve, top_k
    from saecircuits.circuits.task import Task
    from saecircuits.core.tensors import load_tensors
    from saecircuits.model.loading import load

    tok = load_tensors(args["tokens"])
    train, test = (Task("ioi", *(tok[f"{s}_{k}"] for k in FIELDS)) for s in SPLITS)
    model = load("smollm2-135m")
    forward = MaskedForward(model)
    g, bs = forward.graph, args["batch_size"]
    with torch.inference_mode():
        model(test.clean[:bs])  # warm-up
    t = time.perf_counter()
    if args["method"] == "eap":
        flat = g.edges_flat(edge_attribution(forward, train, 0, bs))
        def circuit(k: int) -> torch.Tensor:
            return top_k(flat, k)
    else:
        res = edge_pruning(forward, train, PruningConfig(**args["pruning"]), "edges")
        def circuit(k: int) -> torch.Tensor:
            return top_k(res.ranking(k / g.n_edges), k, absolute=False)
    discovery = time.perf_counter() - t
    t = time.perf_counter()
    ev = Evaluator(forward, test, train, batch_size=bs)
    full, empty = ev.full["task"], ev.empty("counterfactual")["task"]
    values = curve(ev, "counterfactual", "edges", circuit, SIZES)["task"]
    evaluation = time.perf_counter() - t
    counts = [int(s / 100 * g.n_edges) for s in SIZES]
    return {"discovery_s": discovery, "evaluation_s": evaluation, "n_edges": g.n_edges, "counts": counts,
            "kept": counts, "full": full.tolist(), "empty": empty.tolist(), "circuit": values.tolist()}


def _peer_model():
    """SmolLM2 from saecircuits' converted cache, set up as auto-circuit needs, with its import shims."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import importlib
    import types

    import torch
    import transformer_lens
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    cache = transformer_lens.TransformerLensKeyValueCache  # TL 3.x's name for HookedTransformerKeyValueCache
    transformer_lens.HookedTransformerKeyValueCache = cache  # type: ignore[attr-defined]
    stub = types.ModuleType("transformer_lens.past_key_value_caching")  # gone in 3.x; auto-circuit imports a type
    stub.HookedTransformerKeyValueCache = cache  # type: ignore[attr-defined]
    sys.modules.setdefault("transformer_lens.past_key_value_caching", stub)
    # subnetwork probing calls torch.optim.adam.Adam; torch 2.x deletes that submodule name from torch.optim
    torch.optim.adam = importlib.import_module("torch.optim.adam")  # type: ignore[attr-defined]
    data = json.loads((MODEL_DIR / "tl_config.json").read_text())
    data.update(dtype=getattr(torch, data["dtype"]), device="cpu", init_weights=False)
    data.pop("n_params", None)
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR / "tokenizer"))
    model = HookedTransformer(HookedTransformerConfig.from_dict(data), tokenizer, move_to_device=False)
    model.load_state_dict(load_file(str(MODEL_DIR / "model.safetensors")), strict=True, assign=True)
    model.eval().requires_grad_(False)  # as auto-circuit's load_tl_model
    model.set_ungroup_grouped_query_attention(True)  # GQA: auto-circuit makes k/v edges per query head
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    model.set_use_split_qkv_input(True)
    return model


def side_autocircuit(args: dict) -> dict:
    import torch
    from safetensors.torch import load_file

    model = _peer_model()
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune import run_circuits
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.prune_algos.subnetwork_probing import subnetwork_probing_prune_scores
    from auto_circuit.types import AblationType, PatchType
    from auto_circuit.utils.graph_utils import patchable_model
    from auto_circuit.utils.tensor_ops import desc_prune_scores, prune_scores_threshold

    torch.manual_seed(0)
    tok = load_file(args["tokens"])

    def loader(s: str) -> PromptDataLoader:
        n = len(tok[f"{s}_clean"])  # it drops a last partial batch: the batch size divides n
        ds = PromptDataset(tok[f"{s}_clean"], tok[f"{s}_corrupted"], list(tok[f"{s}_answers"][:, None]),
                           list(tok[f"{s}_wrong"]))
        return PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=math.gcd(n, args["batch_size"]))

    def metric(logits: torch.Tensor, batch) -> torch.Tensor:  # logits [b, vocab] at the last position
        return logits.gather(1, batch.answers)[:, 0] - logits.gather(1, batch.wrong_answers).mean(1)

    train, test = loader("train"), loader("test")
    pm = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True, device=torch.device("cpu"))
    with torch.inference_mode():
        pm(tok["test_clean"][: args["batch_size"]])  # warm-up
    t = time.perf_counter()
    if args["method"] == "eap":
        scores = mask_gradient_prune_scores(pm, train, None, grad_function="logit", answer_function="avg_diff",
                                            mask_val=0.0, ablation_type=AblationType.RESAMPLE, clean_corrupt="corrupt")
    else:
        scores = subnetwork_probing_prune_scores(pm, train, None, learning_rate=0.1, epochs=args["sp_epochs"],
                                                 regularize_lambda=0.5, mask_fn="hard_concrete", tree_optimisation=True)
    discovery = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        full = torch.cat([metric(pm(b.clean)[pm.out_slice], b) for b in test])
        empty = torch.cat([metric(pm(b.corrupt)[pm.out_slice], b) for b in test])
    counts = [int(s / 100 * pm.n_edges) for s in SIZES]
    outs = run_circuits(pm, test, counts, scores, patch_type=PatchType.TREE_PATCH, ablation_type=AblationType.RESAMPLE)
    evaluation = time.perf_counter() - t
    desc = desc_prune_scores(scores)  # run_circuits keys its outputs by the edges it kept (ties keep them all)
    kept = [int((desc >= prune_scores_threshold(desc, k)).sum()) for k in counts]
    values = [torch.cat([metric(outs[k][b.key], b) for b in test]).tolist() for k in kept]
    return {"discovery_s": discovery, "evaluation_s": evaluation, "n_edges": pm.n_edges, "counts": counts,
            "kept": kept, "full": full.tolist(), "empty": empty.tolist(), "circuit": values}


def score(run: dict) -> dict:
    """f at each size, CMD and CPR of one side's run (saecircuits.circuits.faithfulness, float64)."""
    import torch

    from saecircuits.circuits.faithfulness import MIB_SIZES, cmd, cpr, faithfulness

    f = faithfulness(*(torch.tensor(run[k], dtype=torch.float64) for k in ("circuit", "empty", "full")))
    return {"f": f.tolist(), "cmd": cmd(MIB_SIZES, f), "cpr": cpr(MIB_SIZES, f)}


def main() -> None:
    if harness.side_main({"saecircuits": side_saecircuits, "autocircuit": side_autocircuit}):
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=None, help="train prompts (16; --quick 4)")
    p.add_argument("--test", type=int, default=None, help="test prompts (16; --quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (3; --quick 1)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward, both tools")
    p.add_argument("--pruning-steps", type=int, default=None, help="edge-pruning steps per target (30; --quick 2)")
    p.add_argument("--sp-epochs", type=int, default=None, help="subnetwork-probing epochs (default: as many "
                   "optimizer steps as edge pruning, batch-size prompts each; --quick 1)")
    p.add_argument("--timeout", type=float, default=12, help="hours per side process")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    p.add_argument("--name", default="circuits_vs_autocircuit", help="results file name")
    a = p.parse_args()
    q = a.quick
    n_train, n_test = a.train or (4 if q else 16), a.test or (4 if q else 16)
    repeats = a.repeats or (1 if q else 3)
    pruning = {"steps": a.pruning_steps or (2 if q else 30), "batch_size": a.batch_size}
    if q:
        pruning["targets"] = (0.05,)

    from saecircuits.circuits.config import PruningConfig
    from saecircuits.circuits.faithfulness import MIB_SIZES

    steps = len(PruningConfig(**pruning).targets) * pruning["steps"]
    sp_epochs = a.sp_epochs or (1 if q else math.ceil(steps / (n_train // math.gcd(n_train, a.batch_size))))

    assert tuple(MIB_SIZES) == SIZES, "SIZES must restate saecircuits.circuits.faithfulness.MIB_SIZES"
    harness.WORK.mkdir(parents=True, exist_ok=True)
    tokens = prompts(n_train, n_test)
    base = {"tokens": str(tokens), "batch_size": a.batch_size}
    runs = [("saecircuits eap", "saecircuits", {**base, "method": "eap"}),
            ("saecircuits edge-pruning", "saecircuits", {**base, "method": "edge-pruning", "pruning": pruning}),
            ("auto-circuit eap", "autocircuit", {**base, "method": "eap"}, PEER_PYTHON),
            ("auto-circuit subnetwork-probing", "autocircuit", {**base, "method": "sp", "sp_epochs": sp_epochs},
             PEER_PYTHON)]
    run_side = harness.run_side

    def safe_side(module: str, side: str, args: dict, timeout: float = 0, python: str | None = None) -> dict:
        """harness.run_side, with a failed side recorded (the exact error) instead of ending the benchmark."""
        try:
            return run_side(module, side, args, timeout=a.timeout * 3600, python=python)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError) as e:  # crashed, timed out, no JSON
            print(f"  {side} FAILED: {e}", flush=True)
            return {"error": f"{type(e).__name__}: {e}"}

    harness.run_side = safe_side  # type: ignore[assignment]  (interleaved calls it through the module)
    raw = harness.interleaved(__file__, runs, repeats)

    from saecircuits.core.errors import SaecircuitsError
    from saecircuits.core.tensors import load_tensors

    tok = load_tensors(tokens)
    summary, failures = {}, {}
    for label, *_ in runs:
        tool, method = label.split(" ")
        ok = [r for r in raw[label] if "error" not in r]
        failures.update({f"{label} #{i + 1}": r["error"] for i, r in enumerate(raw[label]) if "error" in r})
        try:
            scored = [score(r) for r in ok]
        except SaecircuitsError as e:  # e.g. the full model and the empty circuit score the same
            failures[f"{label} scoring"], ok = f"{type(e).__name__}: {e}", []
        if not ok:
            summary[label] = {"tool": tool, "method": method, "failed": True}
            continue
        summary[label] = {"tool": tool, "method": method, "n_edges": ok[0]["n_edges"], "kept": ok[0]["kept"],
                          "f": scored[0]["f"], **{k: harness.median(scored, k) for k in ("cmd", "cpr")},
                          "cmd_all": [s["cmd"] for s in scored], "cpr_all": [s["cpr"] for s in scored],
                          **{k: harness.median(ok, k) for k in COSTS}}
    ratios = {}
    for ours, theirs in PAIRS:
        o, t = summary[f"saecircuits {ours}"], summary[f"auto-circuit {theirs}"]
        if not (o.get("failed") or t.get("failed")):
            ratios[f"{ours} / {theirs}"] = {k: o[k] / t[k] for k in COSTS}
    settings = {"model": "smollm2-135m", "task": "ioi (build_splits seed 0)", "train": n_train, "test": n_test,
                "train_tokens": tok["train_clean"].shape[1], "test_tokens": tok["test_clean"].shape[1],
                "batch_size": a.batch_size, "repeats": repeats, "sizes_percent": list(SIZES),
                "pruning": PruningConfig(**pruning).model_dump(mode="json"), "sp_epochs": sp_epochs,
                "ablation": "counterfactual", "metric": "logit difference, last position"}
    data = {"settings": settings, "machine": harness.machine(), "summary": summary, "ratios_ours_over_theirs": ratios,
            "failures": failures, "raw": raw}
    rows = []
    for s in summary.values():
        if s.get("failed"):
            rows.append([s["tool"], s["method"], "", "failed", "", "", "", ""])
            continue
        rows.append([s["tool"], s["method"], f"{s['n_edges']:,}", f"{s['cmd']:.3f}", f"{s['cpr']:.3f}",
                     f"{s['discovery_s']:.1f}", f"{s['evaluation_s']:.1f}", f"{s['peak_rss_mb']:.0f}"])
    m = data["machine"]
    intro = (f"{n_train} train / {n_test} test IOI prompts ({settings['train_tokens']} / {settings['test_tokens']} "
             f"tokens), counterfactual ablation, logit difference; CMD and CPR over MIB's sizes "
             f"({', '.join(map(str, SIZES))} % of each tool's own edges). Medians of {repeats} interleaved round(s), "
             f"each side in a fresh process ({m['cpus']} CPUs, torch {m['torch']}, {m['date']}).")
    notes = (f"Settings: batch {a.batch_size} prompts; edge pruning targets {settings['pruning']['targets']} x "
             f"{pruning['steps']} steps (KL, batch {a.batch_size}); subnetwork probing {sp_epochs} epoch(s) of "
             f"{n_train} prompts (auto-circuit's tree-probing preset: lr 0.1, lambda 0.5, hard concrete, KL; its "
             "training ablation is the token-wise mean of the corrupted train prompts, fixed by auto-circuit). "
             "Edge counts differ: saecircuits keeps SmolLM2's grouped key/value heads (one k and one v receiver per "
             "key/value head); auto-circuit needs GQA ungrouped, so its k/v edges are per query head. "
             "auto-circuit's run_circuits keeps every edge tied at a size's threshold (kept counts in the JSON). "
             "ACDC (auto-circuit) is not run: on SmolLM2 it takes hours on this machine.")
    header = ["tool", "method", "edges in graph", "CMD", "CPR", "discovery s", "evaluation s", "peak MB"]
    ratio_rows = [[k, *(f"{v[x]:.2f}" for x in COSTS)] for k, v in ratios.items()]
    md = ["# Circuit discovery: saecircuits vs auto-circuit 1.0.1 (SmolLM2-135M, IOI)", "", intro, "",
          harness.md_table(header, rows), "",
          harness.md_table(["ours / theirs", "discovery s", "evaluation s", "peak MB"], ratio_rows), "", notes]
    if failures:
        md += ["", "## Failures", ""] + [f"{k}:\n\n```\n{v}\n```\n" for k, v in failures.items()]
    harness.write(a.name, data, "\n".join(md))


if __name__ == "__main__":
    main()
