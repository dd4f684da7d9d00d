"""Files a matching run writes: tables (CSV + JSON), graphs (GraphML + JSON), figures (PNG + PDF).

Layout under ``out``:
    match.json                       the run: config, models, timing, one summary per pair
    pairs/<a>__<b>/table.csv|json    one row per matched pair (ids, r, cosine, top tokens, flags)
    pairs/<a>__<b>/summary.json      distribution of r, counts, similarity statistics
    pairs/<a>__<b>/r_hist.png|pdf    matched-r histogram
    similarity_<value>.png|pdf       SAE x SAE heatmaps when several pairs were matched
Weight matching, chains and flow write their own table, graph and summary files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import networkx as nx
import numpy as np

from saecircuits.core.files import ensure_dir, read_json, save_figure, write_bytes, write_json, write_text
from saecircuits.matching.result import MatchedPair, MatchResult
from saecircuits.matching.similarity import similarity_matrix


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.~" else "_" for c in name)


def pair_name(a: str, b: str) -> str:
    """``<a>__<b>``, each SAE name with characters other than letters, digits and ``-_.~`` made ``_``:
    the name of a pair's folder (pairs/<a>__<b>) and of a weight matching's files."""
    return f"{_safe(a)}__{_safe(b)}"


def pair_folder(out: Path, a: str, b: str) -> Path:
    """The folder of one (A, B) pair of an activation matching written to ``out``."""
    return out / "pairs" / pair_name(a, b)


def write_table(rows: list[dict], stem: Path) -> list[Path]:
    """``stem``.csv and ``stem``.json; list cells become ' | '-joined text in the CSV."""
    ensure_dir(stem.parent)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: " | ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()})
    return [write_text(stem.with_suffix(".csv"), buf.getvalue()), write_json(stem.with_suffix(".json"), rows, indent=None)]


def write_graph(graph: nx.DiGraph, stem: Path) -> list[Path]:
    """``stem``.graphml and ``stem``.json (networkx node-link data)."""
    ensure_dir(stem.parent)
    g = graph.copy()
    for _, d in g.nodes(data=True):
        for k in [k for k, v in d.items() if v is None]:
            del d[k]
    for key in [k for k, v in g.graph.items() if v is None]:
        del g.graph[key]
    buf = io.BytesIO()
    nx.write_graphml(g, buf)
    return [write_bytes(stem.with_suffix(".graphml"), buf.getvalue()),
            write_json(stem.with_suffix(".json"), nx.node_link_data(g, edges="edges"), indent=None)]


def histogram_figure(values: list[float], stem: Path, title: str, xlabel: str = "matched r") -> list[Path]:
    """A histogram of matched scores on [-0.2, 1] (``stem``.png and .pdf)."""
    import matplotlib  # lazy: a heavy import only figures need, and the backend must be set before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    v = np.asarray(values, dtype=float)
    ax.hist(v[np.isfinite(v)], bins=40, range=(-0.2, 1.0), color="#4472c4")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("features")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, stem)


def heatmap_figure(matrix: dict, stem: Path, title: str) -> list[Path]:
    """A heatmap of ``similarity.similarity_matrix`` output; cells show the value (and * if p < 0.01)."""
    import matplotlib  # lazy: a heavy import only figures need, and the backend must be set before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(matrix["cols"]), 1.0 + 0.5 * len(matrix["rows"])))
    draw_heatmap(ax, matrix, title)
    return save_figure(fig, stem)


def draw_heatmap(ax, matrix: dict, title: str) -> None:
    """Draw a ``similarity.similarity_matrix`` heatmap on ``ax`` (with its colour bar)."""
    vals = np.array([[np.nan if v is None else v for v in row] for row in matrix["values"]], dtype=float)
    im = ax.imshow(vals, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(matrix["cols"])), matrix["cols"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(matrix["rows"])), matrix["rows"], fontsize=7)
    pv = matrix.get("p_values")
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            if np.isfinite(vals[i, j]):
                star = "*" if pv and pv[i][j] is not None and pv[i][j] < 0.01 else ""
                ax.text(j, i, f"{vals[i, j]:.2f}{star}", ha="center", va="center", fontsize=6,
                        color="white" if vals[i, j] < np.nanmean(vals) else "black")
    ax.figure.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)


def write_match(result: dict, out: str | Path, heatmaps: tuple[str, ...] = ("mean_r", "share_r_gt_0.7", "svcca", "cka")) -> dict:
    """Write an activation-matching result (``matching.match_saes``, a ``MatchResult`` as JSON); returns {what: path}."""
    match = MatchResult.from_json(result)
    out = ensure_dir(out)
    written: dict = {"pairs": {}}
    for r in match.results:
        folder = pair_folder(out, r.a, r.b)
        write_table([p.to_json() for p in r.pairs], folder / "table")
        write_json(folder / "summary.json", r.to_json(with_pairs=False))
        histogram_figure([p.r for p in r.pairs if p.kept], folder / "r_hist", f"{r.a} vs {r.b}: {r.method}, kept pairs")
        written["pairs"][f"{r.a}__{r.b}"] = str(folder)
    brief = match.to_json(with_pairs=False)
    written["match"] = str(write_json(out / "match.json", brief))
    if len(match.results) > 1:
        for value in heatmaps:
            m = similarity_matrix(brief["results"], value=value)
            if any(v is not None for row in m["values"] for v in row):
                write_json(out / f"similarity_{value}.json", m)
                heatmap_figure(m, out / f"similarity_{value}", f"{value} ({m['source']})" if m["p_values"] else value)
                written[f"similarity_{value}"] = str(out / f"similarity_{value}.png")
    return written


def read_match(out: str | Path) -> dict:
    """The matching result ``write_match`` wrote to ``out`` (as ``match_saes`` returned it): match.json with
    each pair's table put back."""
    out = Path(out)
    match = MatchResult.from_json(read_json(out / "match.json", "matching result"))
    for r in match.results:
        r.pairs = [MatchedPair.from_json(p) for p in read_table(pair_folder(out, r.a, r.b) / "table.json")]
    return match.to_json()


def write_weight_match(result: dict, out: str | Path, name: str) -> dict:
    """One weight matching (``weights.weight_match``): ``name``_table.csv|json, _summary.json, _cos_hist.png|pdf."""
    out = ensure_dir(out)
    write_table(result["pairs"], out / f"{name}_table")
    write_json(out / f"{name}_summary.json", {k: v for k, v in result.items() if k != "pairs"})
    histogram_figure([p["cos"] for p in result["pairs"]], out / f"{name}_cos_hist", f"{name}: decoder cosine", "decoder cosine")
    return {"table": str(out / f"{name}_table.csv")}


def write_weight_summaries(rows: list[dict], out: Path) -> dict:
    """weights.json, one {"a", "b", "summary"} per weight-matched SAE pair, and with several pairs the
    SAE x SAE heatmap of the mean matched decoder cosine (similarity_mean_cos.json|png|pdf)."""
    write_json(out / "weights.json", rows)
    if len(rows) > 1:
        m = similarity_matrix(rows, value="mean_cos")
        write_json(out / "similarity_mean_cos.json", m)
        heatmap_figure(m, out / "similarity_mean_cos", "mean matched decoder cosine")
    return {"weights": str(out / "weights.json")}


def write_chains(result: dict, out: str | Path) -> dict:
    """Feature chains (``weights.feature_chains``): chains_table.csv|json, chains_graph.graphml|json, chains_summary.json."""
    out = ensure_dir(out)
    names = result["names"]
    rows = []
    for f, (chain, cos) in enumerate(zip(result["chains"], result["cos"], strict=True)):
        row = {"start": f, "length": sum(c >= 0 for c in chain) - 1}
        row.update({n: c for n, c in zip(names, chain, strict=True)})
        row.update({f"cos_{i}": c for i, c in enumerate(cos)})
        rows.append(row)
    write_table(rows, out / "chains_table")
    write_graph(result["graph"], out / "chains_graph")
    write_json(out / "chains_summary.json", {k: v for k, v in result.items() if k not in ("chains", "cos", "graph")})
    return {"table": str(out / "chains_table.csv"), "graph": str(out / "chains_graph.graphml")}


def write_flow(result: dict, out: str | Path) -> dict:
    """Feature flow (``flow.feature_flow``): flow_table, flow_graph, flow_summary.json and the origin-share heatmap."""
    out = ensure_dir(out)
    write_table(result["rows"], out / "flow_table")
    write_graph(result["graph"], out / "flow_graph")
    write_json(out / "flow_summary.json", {k: v for k, v in result.items() if k not in ("rows", "graph")})
    shares = result["origin_shares"]
    kinds = sorted({k for s in shares.values() for k in s if k != "sources"})
    m = {"rows": list(shares), "cols": kinds, "values": [[s.get(k, 0.0) for k in kinds] for s in shares.values()], "p_values": None}
    heatmap_figure(m, out / "flow_origins", "share of features by origin")
    return {"table": str(out / "flow_table.csv"), "graph": str(out / "flow_graph.graphml")}


def read_table(path: str | Path) -> list[dict]:
    """A table ``write_table`` wrote (its .json)."""
    return read_json(path, "matching table")
