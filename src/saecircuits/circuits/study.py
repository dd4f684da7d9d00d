"""Find a task's circuit of attention heads, validate it by ablation, and write it as a graph.

``find_and_validate(model, task, cfg)`` runs, on one cached clean and corrupted run:

1. the task's evaluation (and a clear flag when the model cannot do it);
2. a single-head activation-patching sweep (corrupted -> clean) and a single-head ablation sweep;
3. circuit selection: the ``size`` heads with the largest |effect|, or every head above ``threshold``;
4. validation by ablation (``ablation.validate_circuit``): faithfulness, knockout, random circuits;
5. edge attribution patching over every edge, the top edges confirmed by exact edge patching;
6. the SAE-code head scores (``sae_codes``), compared with patching;

and returns one JSON-able results dict plus a networkx graph (heads as ``L.H`` nodes).
``head_overlap`` compares two tasks' circuits ("Circuit Component Reuse").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import networkx as nx
import torch
from pydantic import Field, field_validator
from transformer_lens import HookedTransformer

from saecircuits.circuits import tasks as tasklib
from saecircuits.circuits.ablation import ablation_values, faithfulness_by_size, validate_circuit
from saecircuits.core.config import Config
from saecircuits.core.errors import SaecircuitsError
from saecircuits.circuits.patching import EdgeScores, HeadPatcher, edge_attribution, head_name, patch_edges
from saecircuits.circuits.discovery.sae_codes import SAECodeConfig, compare_scores, score_heads


class CircuitConfig(Config):
    """How to find and validate a circuit."""

    task: str = Field("ioi", description="one of " + ", ".join(tasklib.TASKS))
    prompts: int = Field(64, ge=2, description="prompts (clean/corrupted pairs)")
    seed: int = 0
    size: int | None = Field(None, ge=1, description="heads in the circuit; None: every head above threshold")
    threshold: float = Field(0.05, gt=0, description="|normalised patching effect| a head needs when size is None")
    select_by: Literal["patching", "ablation"] = "patching"
    ablation: Literal["mean", "zero", "resample"] = "mean"
    random_circuits: int = Field(20, ge=0)
    bootstrap: int = Field(1000, ge=10)
    edges: bool = Field(True, description="edge attribution patching over every edge")
    ig_steps: int = Field(0, ge=0, description="EAP-IG interpolation steps (0: plain EAP)")
    confirm_edges: int = Field(20, ge=0, description="top EAP edges re-measured by exact edge patching")
    graph_edges: int = Field(200, ge=0, description="top edges written into the graph")
    sae_codes: SAECodeConfig | None = Field(default_factory=SAECodeConfig)
    batch_size: int = Field(16, ge=1)
    max_rows: int = Field(256, ge=1, description="sequences per batched forward")
    task_options: dict = Field(default_factory=dict, description="extra arguments of the task builder")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        key = v.replace("-", "_").lower()
        if key not in tasklib.TASKS:
            raise ValueError(f"unknown task '{v}', choose one of: {', '.join(tasklib.TASKS)}")
        return key


def _table(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in t]


def select_heads(scores: torch.Tensor, size: int | None = None, threshold: float | None = None) -> torch.Tensor:
    """A circuit mask [n_layers, n_heads] (True = in): the ``size`` largest |scores|, or |scores| >= threshold."""
    a = scores.abs().nan_to_num(0.0)
    mask = torch.zeros_like(a, dtype=torch.bool)
    if size is not None:
        mask.view(-1)[a.flatten().argsort(descending=True)[: min(size, a.numel())]] = True
    elif threshold is not None:
        mask = a >= threshold
    else:
        raise SaecircuitsError("select a circuit by size or by threshold")
    return mask


def circuit_heads(mask: torch.Tensor) -> list[str]:
    return [head_name(int(L), int(h)) for L, h in mask.nonzero()]


def find_and_validate(model: HookedTransformer, task: tasklib.Task | str | None = None,
                      cfg: CircuitConfig | None = None, progress=None) -> dict:
    """Everything about one task's circuit on one model, as a JSON-able dict (``graph``: a networkx DiGraph,
    ``edge_scores``: the EdgeScores, both left out of the JSON by ``write_results``)."""
    cfg = cfg or CircuitConfig()
    say = progress or (lambda msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if task is None or isinstance(task, str):
        task = tasklib.build(task or cfg.task, model, n=cfg.prompts, seed=cfg.seed, **cfg.task_options)
    evaluation = tasklib.evaluate(model, task, cfg.batch_size)
    if not evaluation["can_do"]:
        say(f"warning: {evaluation['warning']}")
    timings["task"] = time.perf_counter() - t0

    t = time.perf_counter()
    patcher = HeadPatcher(model, task, batch_size=cfg.batch_size, max_rows=cfg.max_rows)
    timings["cache"] = time.perf_counter() - t
    L, H = patcher.n_layers, patcher.n_heads

    say(f"patching {L * H} heads one at a time on {len(task)} prompts")
    t = time.perf_counter()
    patch_metric = patcher.sweep(ablation_values(patcher, "patch", cfg.seed))
    timings["patching_sweep"] = time.perf_counter() - t
    patch_effect = patcher.normalized_effect(patch_metric)

    say(f"{cfg.ablation}-ablating {L * H} heads one at a time")
    values = ablation_values(patcher, cfg.ablation, cfg.seed)
    t = time.perf_counter()
    ablate_metric = patcher.sweep(values)
    timings["ablation_sweep"] = time.perf_counter() - t
    ablate_effect = patcher.normalized_effect(ablate_metric)

    select_scores = patch_effect if cfg.select_by == "patching" else ablate_effect
    mask = select_heads(select_scores, cfg.size, None if cfg.size else cfg.threshold)
    if not bool(mask.any()):
        mask = select_heads(select_scores, size=1)
        say("no head passed the threshold; the circuit is the single strongest head")
    say(f"validating a circuit of {int(mask.sum())} heads ({cfg.random_circuits} random circuits as baseline)")
    t = time.perf_counter()
    validation = validate_circuit(patcher, mask, values, n_random=cfg.random_circuits, n_boot=cfg.bootstrap,
                                  seed=cfg.seed)
    sizes = sorted({1, 2, 5, 10, 20, 40, 80, L * H // 2, int(mask.sum())} & set(range(1, L * H + 1)))
    by_size = faithfulness_by_size(patcher, select_scores, sizes, values)
    timings["validation"] = time.perf_counter() - t

    results: dict = {
        "model": model.cfg.model_name, "task": task.name, "config": cfg.model_dump(), "evaluation": evaluation,
        "task_info": task.info, "n_layers": L, "n_heads": H,
        "clean_metric": float(patcher.clean_metric.mean()), "corrupted_metric": float(patcher.corrupted_metric.mean()),
        "heads": {"patching_effect": _table(patch_effect), "ablation_effect": _table(ablate_effect),
                  "ablation": cfg.ablation},
        "circuit": {"heads": circuit_heads(mask), "size": int(mask.sum()), "selected_by": cfg.select_by,
                    "rule": f"top {cfg.size}" if cfg.size else f"|effect| >= {cfg.threshold}"},
        "validation": validation,
        "faithfulness_by_size": by_size,
    }

    edge_scores = None
    if cfg.edges:
        say("edge attribution patching over every edge" + (f" (EAP-IG, {cfg.ig_steps} steps)" if cfg.ig_steps else ""))
        t = time.perf_counter()
        edge_scores = edge_attribution(model, task, batch_size=max(1, cfg.batch_size // 2), ig_steps=cfg.ig_steps)
        timings["edge_attribution"] = time.perf_counter() - t
        results["edges"] = _edge_results(model, task, edge_scores, mask, cfg, timings, say)

    if cfg.sae_codes is not None:
        say("SAE-code head scores")
        codes = score_heads(patcher, cfg.sae_codes)
        timings["sae_codes"] = codes["seconds"]
        top = max(1, int(mask.sum()))
        results["sae_codes"] = {
            "scores": _table(codes["scores"]), "config": codes["config"], "seconds": codes["seconds"],
            "vs_patching": compare_scores(codes["scores"], patch_effect.abs().nan_to_num(0.0), top),
            "vs_ablation": compare_scores(codes["scores"], ablate_effect.abs().nan_to_num(0.0), top),
        }
    results["patching_vs_ablation"] = compare_scores(patch_effect.abs().nan_to_num(0.0),
                                                     ablate_effect.abs().nan_to_num(0.0), max(1, int(mask.sum())))
    timings["total"] = time.perf_counter() - t0
    results["seconds"] = timings
    results["graph"] = build_graph(results, edge_scores, mask, cfg.graph_edges)
    results["edge_scores"] = edge_scores
    return results


def _edge_results(model, task, edge_scores: EdgeScores, mask, cfg: CircuitConfig, timings, say) -> dict:
    """Top edges, the ones inside the circuit, and the exact re-measurement of the top EAP edges."""
    in_circuit = set(circuit_heads(mask))

    def node(name: str) -> str:
        return name.split(":")[0]

    def inside(s: str, r: str) -> bool:
        return all(n in in_circuit or not n[0].isdigit() for n in (node(s), node(r)))

    ranked = edge_scores.top(edge_scores.scores.numel())
    circuit_edges = [(s, r, v) for s, r, v in ranked if inside(s, r) and (s[0].isdigit() or r[0].isdigit())]
    out: dict = {"method": edge_scores.method, "n_edges": int(torch.isfinite(edge_scores.scores).sum()),
                 "top": [list(e) for e in ranked[:50]],
                 "circuit_edges": [list(e) for e in circuit_edges[: cfg.graph_edges]]}
    if cfg.confirm_edges:
        top = ranked[: cfg.confirm_edges]
        say(f"exact edge patching of the top {len(top)} edges")
        t = time.perf_counter()
        exact = patch_edges(model, task, [(s, r) for s, r, _ in top], batch_size=cfg.batch_size, max_rows=cfg.max_rows)
        timings["edge_patching"] = time.perf_counter() - t
        approx = torch.tensor([v for *_, v in top])
        ex = exact.mean(1)
        from scipy.stats import pearsonr, spearmanr

        out["confirmed"] = [{"sender": s, "receiver": r, "eap": v, "exact": float(e)} for (s, r, v), e in zip(top, ex)]
        if len(top) > 2:
            out["eap_vs_exact"] = {"pearson": float(pearsonr(approx.numpy(), ex.numpy()).statistic),
                                   "spearman": float(spearmanr(approx.numpy(), ex.numpy()).statistic),
                                   "same_sign": float((approx.sign() == ex.sign()).float().mean())}
    return out


def build_graph(results: dict, edge_scores: EdgeScores | None, mask: torch.Tensor, n_edges: int) -> nx.DiGraph:
    """Heads as ``L.H`` nodes (effects, SAE-code score, membership) and the top edges by |EAP score|.

    A receiver head's q/k/v inputs fold into one edge: ``score`` and ``type`` are those of the input with
    the largest |score|; ``score_q``/``score_k``/``score_v`` keep each. Edges to MLPs and logits are ``direct``.
    """
    g = nx.DiGraph(model=results["model"], task=results["task"], metric=results["evaluation"]["metric"],
                   faithfulness=results["validation"]["faithfulness"]["value"])
    pe, ae = results["heads"]["patching_effect"], results["heads"]["ablation_effect"]
    sae = results.get("sae_codes", {}).get("scores")
    for L in range(results["n_layers"]):
        for h in range(results["n_heads"]):
            attrs = {"kind": "head", "layer": L, "head": h, "patching_effect": pe[L][h], "ablation_effect": ae[L][h],
                     "in_circuit": bool(mask[L, h])}
            if sae is not None:
                attrs["sae_code_score"] = sae[L][h]
            g.add_node(head_name(L, h), **attrs)
    if edge_scores is None:
        return g
    confirmed = {(c["sender"], c["receiver"]): c["exact"] for c in results.get("edges", {}).get("confirmed", [])}
    for s, r, v in edge_scores.top(n_edges):
        node, _, kind = r.partition(":")
        for n in (s, node):
            if n not in g:
                g.add_node(n, kind="input" if n == "input" else "logits" if n == "logits" else "mlp", in_circuit=True)
        attrs = g.edges[s, node] if g.has_edge(s, node) else {}
        attrs[f"score_{kind or 'direct'}"] = v
        if (s, r) in confirmed:
            attrs[f"exact_{kind or 'direct'}"] = confirmed[(s, r)]
        if abs(v) > abs(attrs.get("score", 0.0)):
            attrs.update(score=v, type=kind or "direct")
        attrs["in_circuit"] = bool(g.nodes[s].get("in_circuit") and g.nodes[node].get("in_circuit"))
        g.add_edge(s, node, **attrs)
    return g


def weights_vs_edges(weight_scores: dict, edges: EdgeScores, n_heads: int, top: int = 20, key: str = "z") -> dict:
    """Agreement of the weight graph (``heads.weight_graph`` scores: ``Q``/``K``/``V`` [sender, receiver]
    over flat head indices, ``_z`` their null z-scores) with edge attribution between the same heads,
    per composition kind: Spearman over every head pair, and the overlap of the ``top`` pairs."""
    from scipy.stats import spearmanr

    out = {}
    for kind in ("Q", "K", "V"):
        w = weight_scores[f"{kind}_z" if key == "z" else kind]
        names = [head_name(i // n_heads, i % n_heads) for i in range(w.shape[0])]
        s_idx = torch.tensor([edges.senders.index(n) for n in names])
        r_idx = torch.tensor([edges.receivers.index(f"{n}:{kind.lower()}") for n in names])
        data = edges.scores[s_idx][:, r_idx].abs()  # [sender head, receiver head]
        ok = torch.isfinite(w) & torch.isfinite(data)
        if int(ok.sum()) < 3:
            continue
        a, b = w[ok].double(), data[ok].double()
        k = min(top, len(a))
        pairs = ok.nonzero()
        top_w = {tuple(p) for p in pairs[a.argsort(descending=True)[:k]].tolist()}
        top_d = {tuple(p) for p in pairs[b.argsort(descending=True)[:k]].tolist()}
        best_w, best_d = pairs[a.argmax()].tolist(), pairs[b.argmax()].tolist()
        out[kind] = {"spearman": float(spearmanr(a.numpy(), b.numpy()).statistic), "pairs": len(a), "top": k,
                     "top_overlap": len(top_w & top_d),
                     "top_pair_weights": f"{names[best_w[0]]}->{names[best_w[1]]}",
                     "top_pair_edges": f"{names[best_d[0]]}->{names[best_d[1]]}"}
    return out


def head_overlap(a: list[str], b: list[str], n_heads_total: int) -> dict:
    """Overlap of two circuits' heads: shared heads, Jaccard, overlap coefficient |A&B| / min(|A|, |B|),
    and the hypergeometric chance of sharing at least as many heads at random."""
    from scipy.stats import hypergeom

    sa, sb = set(a), set(b)
    shared = sorted(sa & sb, key=lambda n: tuple(int(x) for x in n.split(".")))
    k = len(shared)
    return {
        "size_a": len(sa), "size_b": len(sb), "shared": shared, "n_shared": k,
        "jaccard": k / len(sa | sb) if sa | sb else float("nan"),
        "overlap_coefficient": k / min(len(sa), len(sb)) if sa and sb else float("nan"),
        "expected_shared_at_random": len(sa) * len(sb) / n_heads_total,
        "p_value": float(hypergeom.sf(k - 1, n_heads_total, len(sa), len(sb))),
    }


def summary_lines(results: dict) -> list[str]:
    """A few plain lines for a terminal: the task, the circuit, its validation, agreement and timings."""
    ev, val = results["evaluation"], results["validation"]

    def ci(d: dict) -> str:
        return f"{d['value']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"

    lines = [f"{results['model']} / {results['task']}: clean {ev['metric']} {ev['clean_metric']:.3f} "
             f"(corrupted {ev['corrupted_metric']:.3f}), accuracy {ev['clean_accuracy']:.2f} vs chance {ev['chance']:.2f}"]
    if not ev["can_do"]:
        lines.append(f"WARNING: {ev['warning']}")
    c = results["circuit"]
    lines.append(f"circuit ({c['size']} heads, {c['rule']} by {c['selected_by']}): {' '.join(c['heads'])}")
    lines.append(f"faithfulness {ci(val['faithfulness'])}; circuit knocked out {ci(val['knockout'])} "
                 f"({results['config']['ablation']} ablation, 95% bootstrap CI over {val['n_prompts']} prompts)")
    lines.append("faithfulness of the top-k heads: " + ", ".join(
        f"{d['size']}: {d['faithfulness']:.2f}" for d in results.get("faithfulness_by_size", [])))
    if "random" in val:
        r = val["random"]
        lines.append(f"random circuits of {c['size']} heads: faithfulness {r['faithfulness_mean']:.3f} "
                     f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}], {r['share_at_least_circuit']:.0%} of {r['n_circuits']} "
                     "at least as faithful")
    if "sae_codes" in results:
        a = results["sae_codes"]["vs_patching"]
        lines.append(f"SAE codes vs patching: Spearman {a['spearman']:.3f}, top-{a['top']} overlap {a['top_overlap']}")
    if "eap_vs_exact" in results.get("edges", {}):
        e = results["edges"]["eap_vs_exact"]
        lines.append(f"EAP vs exact edge patching (top {len(results['edges']['confirmed'])} edges): "
                     f"Pearson {e['pearson']:.3f}, same sign {e['same_sign']:.0%}")
    sec = results["seconds"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sec.items()))
    return lines


def write_results(results: dict, out: str | Path) -> dict[str, Path]:
    """Write results.json (every number), circuit.json, graph.graphml, graph.json and edge_scores.safetensors."""
    import json

    from saecircuits.core.files import ensure_dir, save_tensors, write_json, write_text

    out = ensure_dir(out)
    paths = {"results": out / "results.json", "circuit": out / "circuit.json", "graphml": out / "graph.graphml",
             "graph_json": out / "graph.json"}
    graph: nx.DiGraph = results["graph"]
    write_json(paths["results"], {k: v for k, v in results.items() if k not in ("graph", "edge_scores")})
    write_json(paths["circuit"], {"model": results["model"], "task": results["task"], **results["circuit"],
                                  "edges": results.get("edges", {}).get("circuit_edges", []),
                                  "faithfulness": results["validation"]["faithfulness"]})
    lines = nx.generate_graphml(graph)
    write_text(paths["graphml"], "\n".join(lines) + "\n")
    write_json(paths["graph_json"], nx.node_link_data(graph, edges="edges"))
    es: EdgeScores | None = results.get("edge_scores")
    if es is not None:
        paths["edge_scores"] = out / "edge_scores.safetensors"
        save_tensors(paths["edge_scores"], {"scores": es.scores.contiguous()},
                     metadata={"senders": json.dumps(es.senders), "receivers": json.dumps(es.receivers),
                               "method": es.method})
    return paths
