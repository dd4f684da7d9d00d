"""The comparison of circuit-discovery methods on one task and model (issue 21's study).

Discovery sees the train prompts only; choosing each method's circuit size sees the validation
prompts only; every reported number is on test. For each method and granularity: the faithfulness
curve over MIB's sizes under counterfactual ablation (primary) and clean-mean ablation, with 95%
bootstrap intervals, CPR, CMD and k*; the circuit each method would report (the smallest size whose
validation f is within 0.1 of 1, else the size closest to 1) under every ablation and metric on test
(the robustness matrix); and the reported head and edge circuits, with random circuits of their size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits.config import GREEDY_BASES, REPORTED, ComparisonConfig
from saecircuits.circuits.cost import check_prompts_fit, estimate_seconds, measured_rates, planned_work
from saecircuits.circuits.discovery.attribution import edge_attribution, node_attribution
from saecircuits.circuits.discovery.edge_pruning import edge_pruning
from saecircuits.circuits.discovery.greedy import greedy_circuits
from saecircuits.circuits.discovery.node_patching import node_patching
from saecircuits.circuits.evaluation import ABLATIONS, METRICS, Evaluator
from saecircuits.circuits.faithfulness import MIB_SIZES, faithfulness, mib_counts
from saecircuits.circuits.masked_forward import MaskedForward
from saecircuits.circuits.splits import build_splits
from saecircuits.circuits.sweep import random_masks, run_masks, summarise, top_k
from saecircuits.core.errors import SaecircuitsError

TOLERANCE = 0.1


def _circuit_fns(forward: MaskedForward, train, val: Evaluator, cfg: ComparisonConfig, note: Callable[[str], None]
                 ) -> tuple[dict[tuple[str, str], Callable[[int], torch.Tensor]], dict[tuple[str, str], float],
                            dict[str, torch.Tensor]]:
    """Each (method, granularity)'s circuit of a given count, the seconds its discovery took, and the node
    scores of the methods that score nodes (topk-patching, eap, eap-ig: [n_nodes])."""
    g = forward.graph
    heads = g.head_nodes()
    fns: dict[tuple[str, str], Callable[[int], torch.Tensor]] = {}
    seconds: dict[tuple[str, str], float] = {}
    node_scores: dict[str, torch.Tensor] = {}
    for method in cfg.methods:
        t = time.perf_counter()
        if method in ("eap", "eap-ig", "topk-patching"):
            if method == "topk-patching":
                nodes, ranked = node_patching(forward, train, cfg.batch_size), {}
            else:
                s = edge_attribution(forward, train, cfg.ig_steps if method == "eap-ig" else 0, cfg.batch_size)
                nodes, ranked = node_attribution(s), {"edges": g.edges_flat(s)}
            node_scores[method] = nodes
            ranked.update(nodes=nodes, heads=nodes[heads])
            for gran, scores in ranked.items():
                fns[method, gran] = lambda k, scores=scores: top_k(scores, k)
                seconds[method, gran] = time.perf_counter() - t
        elif method == "edge-pruning":
            for gran in cfg.granularities:
                t = time.perf_counter()
                res, n = edge_pruning(forward, train, cfg.pruning, gran), g.n_units(gran)
                fns[method, gran] = lambda k, res=res, n=n: top_k(res.ranking(k / n), k, absolute=False)
                seconds[method, gran] = time.perf_counter() - t
        note(f"{method}: discovered")
    if "greedy" in cfg.methods:
        base_name = next(m for m in GREEDY_BASES if m in node_scores)  # the config has one
        base = node_scores[base_name]
        for gran in {"nodes", "heads"} & set(cfg.granularities):
            t = time.perf_counter()
            fixed = ~heads if gran == "heads" else None  # head circuits keep every MLP
            found = greedy_circuits(val, base, max_size=max(1, int(0.1 * g.n_units(gran))), pool=cfg.greedy_pool,
                                    ablations=cfg.choose_on, fixed=fixed)
            units = heads if gran == "heads" else torch.ones(g.n_nodes, dtype=torch.bool)
            fns["greedy", gran] = lambda k, f=found, b=base[units], u=units: f[k][u] if k in f else top_k(b, k)
            seconds["greedy", gran] = time.perf_counter() - t + seconds.get((base_name, gran), 0.0)
        note("greedy: refined on validation")
    return {k: v for k, v in fns.items() if k[1] in cfg.granularities}, seconds, node_scores


def candidate_counts(n_units: int, granularity: str) -> list[int]:
    """The sizes a reported circuit is chosen from: MIB's, plus every count up to 10% of the units (node and head
    circuits) or 24 log-spaced counts from 0.1% to 10% of the edges (edge circuits)."""
    counts = set(mib_counts(n_units))
    top = max(1, int(0.1 * n_units))
    if granularity != "edges":
        counts |= set(range(1, top + 1))
    else:
        counts |= {round(float(x)) for x in torch.logspace(math.log10(max(1.0, 0.001 * n_units)), math.log10(top), 24)}
    return sorted(c for c in counts if c >= 1)


def choose_size(val: Evaluator, gran: str, circuit: Callable[[int], torch.Tensor],
                ablations: Sequence[str] = ("counterfactual",)) -> tuple[int, float, float]:
    """The count to report: the smallest candidate size whose validation f is within 0.1 of 1 under every one of
    ``ablations``, else the size whose largest |1 - f| is least. Returns (count, validation f under the first
    ablation, that largest |1 - f|)."""
    g = val.forward.graph
    counts = candidate_counts(g.n_units(gran), gran)
    masks = torch.stack([circuit(k) for k in counts])
    fs = [faithfulness(run_masks(val, a, gran, masks)["task"], val.empty(a)["task"], val.full["task"])
          for a in ablations]
    gap = torch.stack([(1 - f).abs() for f in fs]).amax(0)
    ok = (gap <= TOLERANCE).nonzero()
    i = int(ok[0, 0]) if len(ok) else int(gap.argmin())
    return counts[i], float(fs[0][i]), float(gap[i])


def robustness(test: Evaluator, gran: str, mask: torch.Tensor, draws: int = 0, seed: int = 0) -> dict:
    """f of one circuit under every ablation x metric on test (and of ``draws`` random circuits of its size)."""
    rand = random_masks(len(mask), int(mask.sum()), draws, seed)
    cells = {}
    for abl in ABLATIONS:
        try:
            vals = run_masks(test, abl, gran, torch.cat([mask[None], rand]))
        except SaecircuitsError as e:
            cells[abl] = {"unavailable": e.message if hasattr(e, "message") else str(e)}
            continue
        empty, full = test.empty(abl), test.full
        row = {}
        for metric in METRICS:
            try:
                f = faithfulness(vals[metric], empty[metric], full[metric])
            except SaecircuitsError as e:
                row[metric] = {"unavailable": str(e)}
                continue
            row[metric] = {"f": float(f[0]), "faithful": bool(abs(1 - float(f[0])) <= TOLERANCE)}
            if draws:
                row[metric].update(random_mean=float(f[1:].mean()), random_max=float(f[1:].max()))
        cells[abl] = row
    verdicts = [c["faithful"] for row in cells.values() if "unavailable" not in row
                for c in row.values() if "f" in c]
    return {"cells": cells, "verdict_flips": len(set(verdicts)) > 1}


def reported(test: Evaluator, chosen: dict, cfg: ComparisonConfig) -> dict:
    """The reported circuits: per granularity, of the circuits each method chose on validation, the smallest within
    0.1 of f = 1 (else the closest), scored on test under every ablation beside random ones. ``heads`` and ``mlps``
    list the head circuit's nodes (of ``nodes`` granularity when it ran, else of ``heads``: every MLP)."""
    g = test.forward.graph
    out: dict = {}
    for gran in cfg.granularities:
        options = [(v[2] > TOLERANCE, v[0], v[2], m) for (m, gg), v in chosen.items() if gg == gran]
        if not options:
            continue
        _, count, _, method = min(options)
        _, f_val, _, mask = chosen[method, gran]
        units = g.unit_names(gran)
        rob = robustness(test, gran, mask, cfg.random_draws, cfg.seed)
        members = [units[i] for i in mask.nonzero()[:, 0].tolist()]
        out[REPORTED[gran]] = {"method": method, "count": count, "val_f": f_val, "members": members,
                               "test": rob["cells"], "verdict_flips": rob["verdict_flips"]}
        if gran == "heads":
            out[REPORTED[gran]]["kept_always"] = [n for n in g.nodes if n.startswith("mlp")]
        if gran == "nodes" or (gran == "heads" and "nodes" not in cfg.granularities):
            nodes = members + out[REPORTED[gran]].get("kept_always", [])
            out["heads"] = [m for m in nodes if not m.startswith("mlp")]
            out["mlps"] = [m for m in nodes if m.startswith("mlp")]
    return out


def compare(model: HookedTransformer, cfg: ComparisonConfig, note: Callable[[str], None] = lambda s: None) -> dict:
    """The whole comparison for one task and model: {"methods": [...], "circuit": {...}, "robustness": [...]}."""
    forward = MaskedForward(model)
    need = check_prompts_fit(forward, cfg)
    if need:
        note(f"{cfg.n_train + cfg.n_val + cfg.n_test:,} prompts: about {need / 2**30:.2f} GiB of cached activations")
    splits = build_splits(cfg.task, model, cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed, cfg.words)
    g = forward.graph
    test = Evaluator(forward, splits.test, splits.train, batch_size=cfg.batch_size, seed=cfg.seed)
    val = Evaluator(forward, splits.val, splits.train, batch_size=cfg.batch_size, seed=cfg.seed)
    cost = {"rates": measured_rates(val), "planned_work": planned_work(
        cfg, g, splits, {gr: len(candidate_counts(g.n_units(gr), gr)) for gr in cfg.granularities})}
    cost["estimate_seconds"] = estimate_seconds(cost["planned_work"], cost["rates"])
    note(f"planned: about {cost['estimate_seconds'] / 60:,.0f} min on this machine "
         f"({sum(cost['planned_work'].values()) / 1e6:,.2f} M token positions through the model)")
    fns, seconds, node_scores = _circuit_fns(forward, splits.train, val, cfg, note)
    for gran in cfg.granularities:
        if "random" in cfg.methods:
            fns["random", gran] = None  # type: ignore[assignment]  # drawn per size below
            seconds["random", gran] = 0.0
    methods, robust, chosen = [], [], {}
    for (method, gran), fn in fns.items():
        n = g.n_units(gran)
        counts = mib_counts(n)
        for abl in cfg.curve_ablations if fn is not None else cfg.curve_ablations[:1]:  # random: the primary one
            t = time.perf_counter()
            try:
                if fn is None:  # random: draws x sizes
                    masks = torch.stack([random_masks(n, k, cfg.random_draws, cfg.seed + i) for i, k in enumerate(counts)],
                                        1)  # [draws, sizes, n]
                    vals = run_masks(test, abl, gran, masks.flatten(0, 1))
                    vals = {k: v.view(cfg.random_draws, len(counts), -1) for k, v in vals.items()}
                else:
                    vals = run_masks(test, abl, gran, torch.stack([fn(k) for k in counts]))
            except SaecircuitsError as e:
                note(f"{method} {gran} {abl}: {e}")
                continue
            summary = summarise(vals["task"], test.empty(abl)["task"], test.full["task"], MIB_SIZES, counts,
                                cfg.n_boot, cfg.seed)
            methods.append({"name": method, "granularity": gran, "ablation": abl, **summary,
                            "seconds": seconds[method, gran], "eval_seconds": time.perf_counter() - t})
            note(f"{method} {gran} {abl}: CPR {summary['cpr']:.3f} CMD {summary['cmd']:.3f} k* {summary['k_star']}")
        if fn is None:
            continue
        count, f_val, gap = choose_size(val, gran, fn, cfg.choose_on)
        mask = fn(count)
        chosen[method, gran] = (count, f_val, gap, mask)
        robust.append({"name": method, "granularity": gran, "count": count, "val_f": f_val,
                       **robustness(test, gran, mask)})
        note(f"{method} {gran}: chose {count} on validation (f {f_val:.3f})")
    circuit = {"task": cfg.task, "model": model.cfg.model_name, "splits": {s: len(t) for s, t in splits.tasks().items()},
               "held_out_templates": list(splits.held_out), **reported(test, chosen, cfg),
               "examples": [model.to_string(t) for t in splits.test.clean[:3]],
               "corrupted_examples": [model.to_string(t) for t in splits.test.corrupted[:3]],
               "example_tokens": splits.test.clean[0].tolist()}
    cost["work"] = dict(forward.work)  # what ran, beside what was planned
    return {"methods": methods, "circuit": circuit, "robustness": robust, "work": dict(forward.work), "cost": cost,
            "graph": {"n_nodes": g.n_nodes, "n_edges": g.n_edges, "n_heads": g.n_layers * g.n_heads,
                      "n_layers": g.n_layers, "heads_per_layer": g.n_heads},
            "node_scores": {m: dict(zip(g.nodes, s.tolist())) for m, s in node_scores.items()}}
