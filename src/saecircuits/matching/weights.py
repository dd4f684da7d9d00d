"""Weight matching, no data (Balagansky et al. 2024, "Mechanistic Permutability", SAE Match).

The decoders of two SAEs in the same residual basis are matched by Hungarian on the squared
distance of *folded* decoder rows (``saecircuits.sae.directions``: each unit row scaled by the
feature's activation scale, the JumpReLU threshold or a per-feature scale from data; without one
the rows stay unit norm and the squared distance is 2 - 2·cos). Matchings of adjacent layers
compose into feature chains.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch

from saecircuits.core.errors import SaecircuitsError
from saecircuits.matching.assignment import assign
from saecircuits.matching.config import Method
from saecircuits.matching.scores import cosine_matrix, distribution
from saecircuits.sae import SparseAutoencoder
from saecircuits.sae.directions import folded_decoder, folded_encoder


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[n_x, n_y] squared Euclidean distance of the rows of x and y."""
    return (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2 * x @ y.T).clamp_min(0)


def weight_match(sae_a: SparseAutoencoder, sae_b: SparseAutoencoder, method: Method = "hungarian",
                 scale_a: torch.Tensor | None = None, scale_b: torch.Tensor | None = None,
                 include_encoder: bool = False) -> dict:
    """Match features by folded decoder weights (no data). Returns JSON-able pairs and a summary.

    Cost: squared distance of folded decoder rows (plus folded encoder columns if
    ``include_encoder``), minimised; every pair also carries the cosine of its raw decoder rows.
    """
    if sae_a.d_out != sae_b.d_out:
        raise SaecircuitsError(
            f"weight matching needs decoders in the same space, got widths {sae_a.d_out} and {sae_b.d_out}",
            "use activation matching (saecircuits match without --mode weights) across models or sites",
        )
    with torch.no_grad():
        da, db = folded_decoder(sae_a, scale_a), folded_decoder(sae_b, scale_b)
        cost = _sq_dist(da, db)
        if include_encoder:
            if sae_a.d_in != sae_b.d_in:
                raise SaecircuitsError("include_encoder needs SAEs with the same input width")
            cost = cost + _sq_dist(folded_encoder(sae_a, scale_a), folded_encoder(sae_b, scale_b))
        cos = cosine_matrix(sae_a.W_dec.detach(), sae_b.W_dec.detach())
    ia, ib = assign(-cost.double().numpy(), method)
    c = cos[ia, ib].numpy()
    mse = (cost[ia, ib] / da.shape[1]).numpy()
    pairs = [{"a": int(i), "b": int(j), "cos": float(x), "folded_mse": float(m)} for i, j, x, m in zip(ia, ib, c, mse, strict=True)]
    return {"method": method, "pairs": pairs, "summary": {**distribution(c, "cos"), "n_pairs": len(pairs)}}


def feature_chains(saes: list[SparseAutoencoder], names: list[str] | None = None, min_cos: float = 0.5,
                   method: Method = "hungarian", scales: list[torch.Tensor | None] | None = None) -> dict:
    """Compose adjacent-layer weight matchings into chains (SAE Match's composition).

    ``saes`` in layer order. Chain f starts at feature f of the first SAE and follows the matched
    feature at each next SAE while the matched decoder cosine stays >= ``min_cos``.
    Returns ``chains`` [[feature or -1 per SAE]], ``cos`` [[cosine per step]], survival (share of
    chains still alive after s steps) and a DiGraph of every matched edge above ``min_cos``.
    """
    if len(saes) < 2:
        raise SaecircuitsError("feature chains need at least two SAEs, in layer order")
    names = names or [f"sae{i}" for i in range(len(saes))]
    scales = scales or [None] * len(saes)
    steps = []
    for i in range(len(saes) - 1):
        m = weight_match(saes[i], saes[i + 1], method, scales[i], scales[i + 1])
        nxt = np.full(saes[i].d_sae, -1, dtype=np.int64)
        cos = np.full(saes[i].d_sae, np.nan)
        for p in m["pairs"]:
            nxt[p["a"]], cos[p["a"]] = p["b"], p["cos"]
        steps.append((nxt, cos, m["summary"]))
    d0 = saes[0].d_sae
    chains = np.full((d0, len(saes)), -1, dtype=np.int64)
    chain_cos = np.full((d0, len(saes) - 1), np.nan)
    chains[:, 0] = np.arange(d0)
    alive = np.ones(d0, dtype=bool)
    for s, (nxt, cos, _) in enumerate(steps):
        cur = chains[:, s]
        ok = alive & (cur >= 0)
        c = np.where(ok, cos[np.clip(cur, 0, None)], np.nan)
        chain_cos[:, s] = c
        alive = ok & (c >= min_cos)
        chains[:, s + 1] = np.where(alive, nxt[np.clip(cur, 0, None)], -1)
    graph = nx.DiGraph(kind="feature_chains", min_cos=min_cos)
    for s, (nxt, cos, _) in enumerate(steps):
        keep = np.nonzero((nxt >= 0) & (cos >= min_cos))[0]
        for f in keep:
            u, v = f"{names[s]}:{f}", f"{names[s + 1]}:{nxt[f]}"
            graph.add_node(u, sae=names[s], feature=int(f), position=s)
            graph.add_node(v, sae=names[s + 1], feature=int(nxt[f]), position=s + 1)
            graph.add_edge(u, v, cos=float(cos[f]))
    length = (chains >= 0).sum(1) - 1
    return {
        "names": names, "min_cos": min_cos, "method": method,
        "chains": chains.tolist(), "cos": [[None if np.isnan(x) else float(x) for x in row] for row in chain_cos],
        "survival": [float((length >= s).mean()) for s in range(len(saes))],
        "steps": [{"from": names[i], "to": names[i + 1], **st[2]} for i, st in enumerate(steps)],
        "graph": graph,
    }
