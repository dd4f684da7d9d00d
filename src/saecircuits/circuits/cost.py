"""What a comparison will cost, said before it runs: the memory of its cached activations and its time.

Time is planned as ``MaskedForward.work`` counts it (token positions through every block: plain or
node-masked runs, edge-masked runs, and the positions that also ran backward), so a finished run's
``forward.work`` checks the plan; the plan times the rates of one node-masked and one edge-masked
evaluation measured on this machine (a backward pass counted as two forward passes). Greedy's rounds
depend on what it finds: planned at their most, each flip run from mid-depth.
"""

from __future__ import annotations

import time

import torch

from saecircuits.circuits.computation_graph import ComputationGraph
from saecircuits.circuits.config import ABLATIONS, ComparisonConfig
from saecircuits.circuits.evaluation import Evaluator
from saecircuits.circuits.faithfulness import MIB_SIZES
from saecircuits.circuits.masked_forward import MaskedForward
from saecircuits.circuits.splits import TaskSplits, build_splits
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.memory import check_fits

CALIBRATION_MASKS = 4  # masks per calibration run: evaluation runs several masks per forward too


def check_prompts_fit(forward: MaskedForward, cfg: ComparisonConfig) -> float:
    """Refuse split sizes whose cached activations (every sender's output at every position of each prompt and
    its counterfactual, float32) cannot fit in free memory, before any prompt is built; returns the bytes."""
    try:  # a prompt's length, from a few prompts of the task
        length = build_splits(cfg.task, forward.model, 2, 2, 8, cfg.seed, cfg.words).test.clean.shape[1]
    except SaecircuitsError:
        return 0.0  # the task cannot make even these: building the real splits says why
    per_prompt = 2 * (forward.graph.n_nodes + 1) * length * forward.model.cfg.d_model * 4
    return check_fits("prompts (--train + --val + --test)", cfg.n_train + cfg.n_val + cfg.n_test, per_prompt,
                      "--train, --val and --test")


def planned_work(cfg: ComparisonConfig, graph: ComputationGraph, splits: TaskSplits, n_candidates: dict[str, int]
                 ) -> dict[str, float]:
    """Token positions the comparison will run on ``splits``, by ``MaskedForward.work``'s kinds;
    ``n_candidates[granularity]``: the sizes ``choose_size`` tries there."""
    g = graph
    tr, va, te = (t.clean.numel() for t in (splits.train, splits.val, splits.test))
    length = splits.train.clean.shape[1]
    w = {"tokens": 0.0, "edge_tokens": 0.0, "backward_tokens": 0.0}

    def add(granularity: str, positions: float, backward: bool = False) -> None:
        w["edge_tokens" if granularity == "edges" else "tokens"] += positions
        w["backward_tokens"] += positions if backward else 0.0

    add("nodes", te + va)  # each evaluator's full model
    add("nodes", CALIBRATION_MASKS * va), add("edges", CALIBRATION_MASKS * va)
    ablated = {"counterfactual": te, "mean-clean": tr, "mean-counterfactual": tr, "resample": te, "zero": 0}
    used = {"counterfactual"} | set(cfg.curve_ablations) | (set(ABLATIONS) if set(cfg.methods) - {"random"} else set())
    for abl in used:  # each ablation's sender outputs and its empty circuit, once on test
        add("nodes", ablated[abl]), add("edges", te)
    add("nodes", va)  # validation's counterfactual run (the calibration's ablation)
    for abl in cfg.choose_on:  # validation's other ablations, and each one's empty circuit
        add("nodes", {"counterfactual": 0, "resample": va}.get(abl, ablated[abl])), add("edges", va)
    for method in cfg.methods:
        if method == "topk-patching":
            add("nodes", tr * (3 + g.per_layer_senders * (g.n_layers + 1) / 2))  # each block's nodes from that block
        elif method in ("eap", "eap-ig"):
            add("nodes", 2 * tr)
            add("edges", tr * (max(1, cfg.ig_steps) if method == "eap-ig" else 1), backward=True)
        elif method == "edge-pruning":
            p = cfg.pruning
            for gran in cfg.granularities:
                add("nodes", 2 * tr)
                add(gran, len(p.targets) * p.steps * min(p.batch_size, cfg.n_train) * length, backward=True)
        elif method == "greedy":
            for gran in {"nodes", "heads"} & set(cfg.granularities):
                rounds = min(cfg.greedy_pool, max(1, int(0.1 * g.n_units(gran))))
                add("nodes", len(cfg.choose_on) * va * (1 + rounds * (2 + 0.5 * cfg.greedy_pool)))
    for method in cfg.methods:
        for gran in cfg.granularities:
            if gran == "edges" and method in ("topk-patching", "greedy"):  # they rank nodes only
                continue
            if method == "random":
                add(gran, cfg.random_draws * len(MIB_SIZES) * te)
                continue
            add(gran, len(cfg.curve_ablations) * len(MIB_SIZES) * te)  # the curves
            add(gran, len(cfg.choose_on) * n_candidates[gran] * va)  # choosing the size on validation
            add(gran, len(ABLATIONS) * te)  # its circuit under every ablation
    if set(cfg.methods) - {"random"}:
        for gran in cfg.granularities:  # the reported circuits beside random ones of their size
            add(gran, len(ABLATIONS) * (1 + cfg.random_draws) * te)
    return w


def measured_rates(val: Evaluator) -> dict[str, float]:
    """Seconds per token position of a node-masked and an edge-masked evaluation on ``val`` (every node or edge
    kept, ``CALIBRATION_MASKS`` masks at once)."""
    g = val.forward.graph
    positions = CALIBRATION_MASKS * len(val.test) * val.test.clean.shape[1]
    rates = {}
    for kind, masks in (("tokens", {"nodes": torch.ones(CALIBRATION_MASKS, g.n_nodes, dtype=torch.bool)}),
                        ("edge_tokens", {"edges": g.valid[None].repeat(CALIBRATION_MASKS, 1, 1)})):
        t = time.perf_counter()
        val.run("counterfactual", **masks)
        rates[kind] = (time.perf_counter() - t) / positions
    return rates


def estimate_seconds(work: dict, rates: dict[str, float]) -> float:
    """The time of ``work`` at ``rates``; a backward pass costs two forward passes of the edge-masked kind."""
    return (work["tokens"] * rates["tokens"] + work["edge_tokens"] * rates["edge_tokens"]
            + 2 * work["backward_tokens"] * rates["edge_tokens"])
