"""Feature flow (Laptev et al. 2025, "Analyze Feature Flow to Enhance Interpretation and Steering in
Language Models").

For a residual-stream feature at layer L, the top cosine of its decoder (or encoder) direction
against the decoder directions of the previous residual SAE and of the attention and MLP SAEs
writing in between says which earlier feature, and which sublayer, it most likely came from; the
result is a ``networkx.DiGraph``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import networkx as nx
import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.matching.scores import cosine_matrix
from saecircuits.model import hooks as hooklib
from saecircuits.sae import SparseAutoencoder
from saecircuits.sae.directions import Which, feature_directions, residual_directions

Source = tuple[str, str]  # (kind: resid | attn | mlp, SAE name)


@dataclass(frozen=True)
class Place:
    """Where an SAE reads: a residual-stream position (layer + 0, +0.5 mid, +1 post) or a sublayer output."""

    kind: Literal["resid", "attn", "mlp"]
    layer: int
    position: float  # residual position: resid_pre L = L, resid_mid L = L + 0.5, resid_post L = L + 1


def place_of(hook: str) -> Place | None:
    """The place of a hook site, or None for sites feature flow does not use."""
    hook = hook.split(":")[0]
    layer = hooklib.layer_of(hook)
    if layer is None:
        return None
    if hook.endswith("hook_resid_pre"):
        return Place("resid", layer, layer)
    if hook.endswith("hook_resid_mid"):
        return Place("resid", layer, layer + 0.5)
    if hook.endswith("hook_resid_post"):
        return Place("resid", layer, layer + 1)
    if hook.endswith(("hook_attn_out", "attn.hook_z")):
        return Place("attn", layer, layer + 0.25)
    if hook.endswith(("hook_mlp_out",)):
        return Place("mlp", layer, layer + 0.75)
    return None


def flow_directions(sae: SparseAutoencoder, model=None, which: Which = "decoder") -> torch.Tensor:
    """[d_sae, d_model] an SAE's ``which`` directions in the residual stream (hook_z decoders through W_O,
    summed in ``torch.einsum``'s order: ``residual_directions(..., z_order="dim_major")``)."""
    hook = sae.cfg.hook_out or sae.cfg.hook
    W = residual_directions(feature_directions(sae, which), hook, model, z_order="dim_major")
    if W is None:
        raise SaecircuitsError(f"SAE on {hook}: its {which} directions have no linear path into the residual stream")
    return W


def feature_flow(saes: dict[str, SparseAutoencoder], model=None, which: Which = "decoder", min_cos: float = 0.3) -> dict:
    """Feature-flow graph over a suite of SAEs of one model (residual, attention and MLP sites).

    For every residual SAE with a predecessor — the residual SAE just before it (at most one layer
    back) and the attention / MLP SAEs writing between the two — each feature's ``which`` direction
    is compared with every predecessor's decoder directions. Its origin is the predecessor kind
    with the highest top cosine if that is >= ``min_cos``, else ``new``. Returns per-feature rows,
    per-SAE origin shares, and the DiGraph (edges: predecessor feature -> feature, with ``cos`` and
    ``kind``; nodes carry ``sae``, ``feature``, ``layer``, ``kind`` and, for targets, ``origin``).
    """
    places = {}
    for name, sae in saes.items():
        p = place_of(sae.cfg.hook_out or sae.cfg.hook)
        if p is not None:
            places[name] = p
    graph = nx.DiGraph(kind="feature_flow", which=which, min_cos=min_cos)
    rows, shares = [], {}
    resid = sorted((p.position, n) for n, p in places.items() if p.kind == "resid")
    for pos, target in resid:
        sources = _sources(places, resid, pos)
        if not sources:
            continue
        best_cos, best_idx = _best_matches(flow_directions(saes[target], model, which), sources, saes, model)
        shares[target] = _add_target(graph, rows, target, sources, places, best_cos, best_idx, min_cos)
    if not shares:
        raise SaecircuitsError(
            "feature flow needs a residual-stream SAE and at least one predecessor: the residual SAE of the layer "
            "before, or an attention / MLP SAE of the same layer"
        )
    return {"which": which, "min_cos": min_cos, "rows": rows, "origin_shares": shares, "graph": graph}


def _sources(places: dict[str, Place], resid: list[tuple[float, str]], pos: float) -> list[Source]:
    """Predecessors of the residual position ``pos``: the residual SAE at most one layer back (the last
    one), then the attention / MLP SAEs between it and ``pos``."""
    prev = [(q, n) for q, n in resid if pos - 1 <= q < pos]
    lo = prev[-1][0] if prev else pos - 1
    return ([("resid", prev[-1][1])] if prev else []) + [
        (p.kind, n) for n, p in places.items() if p.kind in ("attn", "mlp") and lo < p.position < pos
    ]


def _best_matches(target_dirs: torch.Tensor, sources: list[Source], saes: dict[str, SparseAutoencoder],
                  model) -> tuple[torch.Tensor, torch.Tensor]:
    """Top cosine [d_target, n_sources] of each target direction against each source's decoder
    directions, and the source feature [d_target, n_sources] that gives it."""
    best_cos, best_idx = [], []
    for _, s in sources:
        cos = cosine_matrix(target_dirs, flow_directions(saes[s], model, "decoder"))
        v, i = cos.max(1)
        best_cos.append(v)
        best_idx.append(i)
    return torch.stack(best_cos, 1), torch.stack(best_idx, 1)


def _add_target(graph: nx.DiGraph, rows: list[dict], target: str, sources: list[Source], places: dict[str, Place],
                bc: torch.Tensor, bi: torch.Tensor, min_cos: float) -> dict:
    """Add one target SAE's features to ``graph`` and ``rows`` (from ``_best_matches``' ``bc``, ``bi``);
    returns its origin shares {"sources": [...], origin kind: share of its features}."""
    top, arg = bc.max(1)
    counts: dict[str, int] = {}
    for f in range(bc.shape[0]):
        src = int(arg[f])
        origin = sources[src][0] if float(top[f]) >= min_cos else "new"
        counts[origin] = counts.get(origin, 0) + 1
        node = f"{target}:{f}"
        graph.add_node(node, sae=target, feature=f, layer=places[target].layer, kind="resid", origin=origin)
        row = {"sae": target, "feature": f, "origin": origin, "origin_sae": sources[src][1] if origin != "new" else None,
               "origin_feature": int(bi[f, src]) if origin != "new" else None}
        for k, (kind, s) in enumerate(sources):
            c = float(bc[f, k])
            row[f"{kind}_cos"], row[f"{kind}_feature"] = c, int(bi[f, k])
            if c >= min_cos:
                u = f"{s}:{int(bi[f, k])}"
                if u not in graph:
                    graph.add_node(u, sae=s, feature=int(bi[f, k]), layer=places[s].layer, kind=kind)
                graph.add_edge(u, node, cos=c, kind=kind)
        rows.append(row)
    n = bc.shape[0]
    return {"sources": [s for _, s in sources], **{k: v / n for k, v in sorted(counts.items())}}
