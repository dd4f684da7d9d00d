"""A circuit study as a networkx graph: heads as ``L.H`` nodes, the top edges by |EAP score|."""

from __future__ import annotations

import networkx as nx
import torch

from saecircuits.circuits.discovery.edges import EdgeScores
from saecircuits.circuits.results import CircuitResult
from saecircuits.model.hooks import head_name


def build_graph(result: CircuitResult, edge_scores: EdgeScores | None, mask: torch.Tensor, n_edges: int) -> nx.DiGraph:
    """Heads as ``L.H`` nodes (effects, SAE-code score, membership) and the top edges by |EAP score|.

    A receiver head's q/k/v inputs fold into one edge: ``score`` and ``type`` are those of the input with
    the largest |score|; ``score_q``/``score_k``/``score_v`` keep each. Edges to MLPs and logits are ``direct``.
    """
    g = nx.DiGraph(model=result.model, task=result.task, metric=result.evaluation["metric"],
                   faithfulness=result.validation["faithfulness"]["value"])
    pe, ae = result.heads.patching_effect, result.heads.ablation_effect
    sae = result.sae_codes.scores if result.sae_codes is not None else None
    for L in range(result.n_layers):
        for h in range(result.n_heads):
            attrs = {"kind": "head", "layer": L, "head": h, "patching_effect": pe[L][h], "ablation_effect": ae[L][h],
                     "in_circuit": bool(mask[L, h])}
            if sae is not None:
                attrs["sae_code_score"] = sae[L][h]
            g.add_node(head_name(L, h), **attrs)
    if edge_scores is None:
        return g
    measured = result.edges.confirmed if result.edges is not None and result.edges.confirmed is not None else []
    confirmed = {(c["sender"], c["receiver"]): c["exact"] for c in measured}
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
