"""Find a task's circuit of attention heads, validate it by ablation, and write it as a graph.

``find_and_validate(model, task, cfg)`` runs, on one cached clean and corrupted run (``HeadPatcher``):

1. the task's evaluation (and a clear flag when the model cannot do it);
2. a single-head activation-patching sweep (corrupted -> clean) and a single-head ablation sweep
   (``discovery.head_patching``);
3. circuit selection: the ``size`` heads with the largest |effect|, or every head above ``threshold``;
4. validation by ablation (``validation.validate_circuit``): faithfulness, knockout, random circuits;
5. edge attribution patching over every edge (``discovery.edge_attribution``), the top edges
   confirmed by exact edge patching (``discovery.edge_patching``);
6. the SAE-code head scores (``discovery.sae_codes``), compared with patching;

and returns a ``CircuitResult`` (its JSON is ``results.json``) with a networkx graph (heads as ``L.H``
nodes). ``head_overlap`` compares two tasks' circuits ("Circuit Component Reuse").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import torch
from scipy.stats import hypergeom, pearsonr, spearmanr
from transformer_lens import HookedTransformer

from saecircuits.circuits import tasks
from saecircuits.circuits.ablation import ablation_values
from saecircuits.circuits.config import CircuitConfig, SAECodeConfig
from saecircuits.circuits.discovery.edge_attribution import edge_attribution
from saecircuits.circuits.discovery.edge_patching import patch_edges
from saecircuits.circuits.discovery.edges import EdgeScores
from saecircuits.circuits.discovery.head_patching import circuit_heads, head_effects, select_circuit
from saecircuits.circuits.discovery.sae_codes import compare_scores, score_heads
from saecircuits.circuits.graph import build_graph
from saecircuits.circuits.patching import HeadPatcher
from saecircuits.circuits.results import Circuit, CircuitResult, EdgeResults, HeadEffects, SAECodeResults
from saecircuits.circuits.task import Task
from saecircuits.circuits.validation import faithfulness_by_size, validate_circuit
from saecircuits.core.files import ensure_dir, write_json, write_text
from saecircuits.core.tensors import save_tensors
from saecircuits.model.hooks import head_name

Say = Callable[[str], None]


def _table(t: torch.Tensor) -> list[list[float]]:
    """A per-head table [n_layers, n_heads] as JSON rows, rounded to 6 decimals."""
    return [[round(float(v), 6) for v in row] for row in t]


def find_and_validate(model: HookedTransformer, task: Task | str | None = None,
                      cfg: CircuitConfig | None = None, progress: Say | None = None) -> CircuitResult:
    """Everything about one task's circuit on one model (``graph``: a networkx DiGraph, ``edge_scores``: the
    EdgeScores, both written to their own files by ``write_results``)."""
    cfg = cfg or CircuitConfig()
    say = progress or (lambda msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if task is None or isinstance(task, str):
        task = tasks.build(task or cfg.task, model, n=cfg.prompts, seed=cfg.seed, **cfg.task_options)
    evaluation = tasks.evaluate(model, task, cfg.batch_size)
    if not evaluation["can_do"]:
        say(f"warning: {evaluation['warning']}")
    timings["task"] = time.perf_counter() - t0

    t = time.perf_counter()
    patcher = HeadPatcher(model, task, batch_size=cfg.batch_size, max_rows=cfg.max_rows)
    timings["cache"] = time.perf_counter() - t
    L, H = patcher.n_layers, patcher.n_heads
    say(f"patching {L * H} heads one at a time on {len(task)} prompts")
    patch_effect, timings["patching_sweep"] = head_effects(patcher, ablation_values(patcher, "patch", cfg.seed))
    say(f"{cfg.ablation}-ablating {L * H} heads one at a time")
    values = ablation_values(patcher, cfg.ablation, cfg.seed)
    ablate_effect, timings["ablation_sweep"] = head_effects(patcher, values)

    select_scores = patch_effect if cfg.select_by == "patching" else ablate_effect
    mask, fell_back = select_circuit(select_scores, cfg.size, cfg.threshold)
    if fell_back:
        say("no head passed the threshold; the circuit is the single strongest head")
    validation, by_size = _validate(patcher, mask, select_scores, values, cfg, timings, say)
    edge_scores, edges = _edges(model, task, mask, cfg, timings, say) if cfg.edges else (None, None)
    top = max(1, int(mask.sum()))
    codes = None if cfg.sae_codes is None else _sae_codes(patcher, cfg.sae_codes, patch_effect, ablate_effect, top,
                                                           timings, say)
    agreement = compare_scores(patch_effect.abs().nan_to_num(0.0), ablate_effect.abs().nan_to_num(0.0), top)
    timings["total"] = time.perf_counter() - t0
    result = CircuitResult(
        model=model.cfg.model_name, task=task.name, config=cfg.model_dump(), evaluation=evaluation,
        task_info=task.info, n_layers=L, n_heads=H, clean_metric=float(patcher.clean_metric.mean()),
        corrupted_metric=float(patcher.corrupted_metric.mean()),
        heads=HeadEffects(_table(patch_effect), _table(ablate_effect), cfg.ablation),
        circuit=Circuit(circuit_heads(mask), int(mask.sum()), cfg.select_by,
                        f"top {cfg.size}" if cfg.size else f"|effect| >= {cfg.threshold}"),
        validation=validation, faithfulness_by_size=by_size, edges=edges, sae_codes=codes,
        patching_vs_ablation=agreement, seconds=timings, edge_scores=edge_scores)
    result.graph = build_graph(result, edge_scores, mask, cfg.graph_edges)
    return result


def _validate(patcher: HeadPatcher, mask: torch.Tensor, scores: torch.Tensor, values: torch.Tensor,
              cfg: CircuitConfig, timings: dict[str, float], say: Say) -> tuple[dict, list[dict]]:
    """The circuit validated by ablation, and the faithfulness of the top-k heads by |scores| for a few k."""
    L, H = patcher.n_layers, patcher.n_heads
    say(f"validating a circuit of {int(mask.sum())} heads ({cfg.random_circuits} random circuits as baseline)")
    t = time.perf_counter()
    validation = validate_circuit(patcher, mask, values, n_random=cfg.random_circuits, n_boot=cfg.bootstrap,
                                  seed=cfg.seed)
    sizes = sorted({1, 2, 5, 10, 20, 40, 80, L * H // 2, int(mask.sum())} & set(range(1, L * H + 1)))
    by_size = faithfulness_by_size(patcher, scores, sizes, values)
    timings["validation"] = time.perf_counter() - t
    return validation, by_size


def _edges(model: HookedTransformer, task: Task, mask: torch.Tensor, cfg: CircuitConfig, timings: dict[str, float],
           say: Say) -> tuple[EdgeScores, EdgeResults]:
    """Edge attribution over every edge: the top edges, the ones inside the circuit, and the exact
    re-measurement of the top EAP edges."""
    say("edge attribution patching over every edge" + (f" (EAP-IG, {cfg.ig_steps} steps)" if cfg.ig_steps else ""))
    t = time.perf_counter()
    edge_scores = edge_attribution(model, task, batch_size=max(1, cfg.batch_size // 2), ig_steps=cfg.ig_steps)
    timings["edge_attribution"] = time.perf_counter() - t
    ranked = edge_scores.top(edge_scores.scores.numel())
    circuit_edges = _inside(ranked, set(circuit_heads(mask)))
    out = EdgeResults(method=edge_scores.method, n_edges=int(torch.isfinite(edge_scores.scores).sum()),
                      top=[list(e) for e in ranked[:50]], circuit_edges=[list(e) for e in circuit_edges[: cfg.graph_edges]])
    if cfg.confirm_edges:
        out.confirmed, out.eap_vs_exact = _confirm(model, task, ranked[: cfg.confirm_edges], cfg, timings, say)
    return edge_scores, out


def _inside(ranked: list[tuple[str, str, float]], in_circuit: set[str]) -> list[tuple[str, str, float]]:
    """The edges that touch a circuit head and otherwise only circuit heads, the input, MLPs or the logits."""

    def node(name: str) -> str:
        return name.split(":")[0]

    def inside(s: str, r: str) -> bool:
        return all(n in in_circuit or not n[0].isdigit() for n in (node(s), node(r)))

    return [(s, r, v) for s, r, v in ranked if inside(s, r) and (s[0].isdigit() or r[0].isdigit())]


def _confirm(model: HookedTransformer, task: Task, top: list[tuple[str, str, float]], cfg: CircuitConfig,
             timings: dict[str, float], say: Say) -> tuple[list[dict], dict | None]:
    """The ``top`` EAP edges re-measured by exact edge patching, and EAP's agreement with it (more than two edges)."""
    say(f"exact edge patching of the top {len(top)} edges")
    t = time.perf_counter()
    exact = patch_edges(model, task, [(s, r) for s, r, _ in top], batch_size=cfg.batch_size, max_rows=cfg.max_rows)
    timings["edge_patching"] = time.perf_counter() - t
    approx = torch.tensor([v for *_, v in top])
    ex = exact.mean(1)
    confirmed = [{"sender": s, "receiver": r, "eap": v, "exact": float(e)} for (s, r, v), e in zip(top, ex)]
    if len(top) <= 2:
        return confirmed, None
    return confirmed, {"pearson": float(pearsonr(approx.numpy(), ex.numpy()).statistic),
                       "spearman": float(spearmanr(approx.numpy(), ex.numpy()).statistic),
                       "same_sign": float((approx.sign() == ex.sign()).float().mean())}


def _sae_codes(patcher: HeadPatcher, cfg: SAECodeConfig, patch_effect: torch.Tensor, ablate_effect: torch.Tensor,
               top: int, timings: dict[str, float], say: Say) -> SAECodeResults:
    """The SAE-code head scores and their agreement with the patching and ablation effects (``top`` heads)."""
    say("SAE-code head scores")
    codes = score_heads(patcher, cfg)
    timings["sae_codes"] = codes["seconds"]
    return SAECodeResults(scores=_table(codes["scores"]), config=codes["config"], seconds=codes["seconds"],
                          vs_patching=compare_scores(codes["scores"], patch_effect.abs().nan_to_num(0.0), top),
                          vs_ablation=compare_scores(codes["scores"], ablate_effect.abs().nan_to_num(0.0), top))


def weights_vs_edges(weight_scores: dict, edges: EdgeScores, n_heads: int, top: int = 20, key: str = "z") -> dict:
    """Agreement of the weight graph (``heads.weight_graph`` scores: ``Q``/``K``/``V`` [sender, receiver]
    over flat head indices, ``_z`` their null z-scores) with edge attribution between the same heads,
    per composition kind: Spearman over every head pair, and the overlap of the ``top`` pairs."""
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


def summary_lines(result: CircuitResult) -> list[str]:
    """A few plain lines for a terminal: the task, the circuit, its validation, agreement and timings."""
    ev, val = result.evaluation, result.validation

    def ci(d: dict) -> str:
        return f"{d['value']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"

    lines = [f"{result.model} / {result.task}: clean {ev['metric']} {ev['clean_metric']:.3f} "
             f"(corrupted {ev['corrupted_metric']:.3f}), accuracy {ev['clean_accuracy']:.2f} vs chance {ev['chance']:.2f}"]
    if not ev["can_do"]:
        lines.append(f"WARNING: {ev['warning']}")
    c = result.circuit
    lines.append(f"circuit ({c.size} heads, {c.rule} by {c.selected_by}): {' '.join(c.heads)}")
    lines.append(f"faithfulness {ci(val['faithfulness'])}; circuit knocked out {ci(val['knockout'])} "
                 f"({result.config['ablation']} ablation, 95% bootstrap CI over {val['n_prompts']} prompts)")
    lines.append("faithfulness of the top-k heads: " + ", ".join(
        f"{d['size']}: {d['faithfulness']:.2f}" for d in result.faithfulness_by_size))
    if "random" in val:
        r = val["random"]
        lines.append(f"random circuits of {c.size} heads: faithfulness {r['faithfulness_mean']:.3f} "
                     f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}], {r['share_at_least_circuit']:.0%} of {r['n_circuits']} "
                     "at least as faithful")
    if result.sae_codes is not None:
        a = result.sae_codes.vs_patching
        lines.append(f"SAE codes vs patching: Spearman {a['spearman']:.3f}, top-{a['top']} overlap {a['top_overlap']}")
    if result.edges is not None and result.edges.eap_vs_exact is not None:
        e = result.edges.eap_vs_exact
        lines.append(f"EAP vs exact edge patching (top {len(result.edges.confirmed)} edges): "
                     f"Pearson {e['pearson']:.3f}, same sign {e['same_sign']:.0%}")
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return lines


def write_results(result: CircuitResult, out: str | Path) -> dict[str, Path]:
    """Write results.json (every number), circuit.json, graph.graphml, graph.json and edge_scores.safetensors."""
    out = ensure_dir(out)
    paths = {"results": out / "results.json", "circuit": out / "circuit.json", "graphml": out / "graph.graphml",
             "graph_json": out / "graph.json"}
    write_json(paths["results"], result.to_json())
    write_json(paths["circuit"], {"model": result.model, "task": result.task, **result.circuit.to_json(),
                                  "edges": result.edges.circuit_edges if result.edges is not None else [],
                                  "faithfulness": result.validation["faithfulness"]})
    lines = nx.generate_graphml(result.graph)
    write_text(paths["graphml"], "\n".join(lines) + "\n")
    write_json(paths["graph_json"], nx.node_link_data(result.graph, edges="edges"))
    es = result.edge_scores
    if es is not None:
        paths["edge_scores"] = out / "edge_scores.safetensors"
        save_tensors(paths["edge_scores"], {"scores": es.scores.contiguous()},
                     metadata={"senders": json.dumps(es.senders), "receivers": json.dumps(es.receivers),
                               "method": es.method})
    return paths
