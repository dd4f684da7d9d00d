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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.~" else "_" for c in name)


def _pair_folder(out: Path, a: str, b: str) -> Path:
    return out / "pairs" / f"{_safe(a)}__{_safe(b)}"


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
    import matplotlib

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
    import matplotlib

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
    """Write an activation-matching result (``matching.match_saes``); returns {what: path}."""
    from saecircuits.matching.similarity import similarity_matrix

    out = ensure_dir(out)
    written: dict = {"pairs": {}}
    for r in result["results"]:
        folder = _pair_folder(out, r["a"], r["b"])
        write_table(r["pairs"], folder / "table")
        write_json(folder / "summary.json", {k: v for k, v in r.items() if k != "pairs"})
        histogram_figure([p["r"] for p in r["pairs"] if p["kept"]], folder / "r_hist",
                         f"{r['a']} vs {r['b']}: {r['method']}, kept pairs")
        written["pairs"][f"{r['a']}__{r['b']}"] = str(folder)
    brief = {k: v for k, v in result.items() if k != "results"}
    brief["results"] = [{k: v for k, v in r.items() if k != "pairs"} for r in result["results"]]
    written["match"] = str(write_json(out / "match.json", brief))
    if len(result["results"]) > 1:
        for value in heatmaps:
            m = similarity_matrix(result["results"], value=value)
            if any(v is not None for row in m["values"] for v in row):
                write_json(out / f"similarity_{value}.json", m)
                heatmap_figure(m, out / f"similarity_{value}", f"{value} ({m['source']})" if m["p_values"] else value)
                written[f"similarity_{value}"] = str(out / f"similarity_{value}.png")
    return written


def read_match(out: str | Path) -> dict:
    """The matching result ``write_match`` wrote to ``out``: match.json with each pair's table put back."""
    out = Path(out)
    result = read_json(out / "match.json", "matching result")
    for r in result["results"]:
        r["pairs"] = read_table(_pair_folder(out, r["a"], r["b"]) / "table.json")
    return result


def write_weight_match(result: dict, out: str | Path, name: str) -> dict:
    out = ensure_dir(out)
    write_table(result["pairs"], out / f"{name}_table")
    write_json(out / f"{name}_summary.json", {k: v for k, v in result.items() if k != "pairs"})
    histogram_figure([p["cos"] for p in result["pairs"]], out / f"{name}_cos_hist", f"{name}: decoder cosine", "decoder cosine")
    return {"table": str(out / f"{name}_table.csv")}


def write_chains(result: dict, out: str | Path) -> dict:
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


# ------------------------------------------------------------------ the `saecircuits match` command


def _load_saes(folders: list[str]) -> dict:
    from saecircuits.matching.features import sae_names
    from saecircuits.sae import format as sae_format

    return {n: sae_format.load(f) for n, f in zip(sae_names(folders), folders, strict=True)}


def _model_name(saes: dict, given: str | None, side: str) -> str:
    if given:
        return given
    names = {(s.metadata or {}).get("model_name") for s in saes.values()}
    names.discard(None)
    if len(names) != 1:
        from saecircuits.core.errors import SaecircuitsError

        raise SaecircuitsError(f"cannot tell the model of the {side} SAEs from their cfg.json ({sorted(names) or 'none named'})",
                               f"pass --model{'' if side == 'A' else '-b'} NAME")
    return names.pop()


def run_match_command(sae_a: list[str], sae_b: list[str], out: str, mode: str = "activations", model: str | None = None,
                      model_b: str | None = None, settings: dict | None = None, min_cos: float = 0.5,
                      flow_direction: str = "decoder", console=None, align_to: str | None = None) -> dict:
    """What ``saecircuits match`` does: load SAE folders (and models when needed), match, write, print."""
    from rich.console import Console
    from rich.table import Table

    from saecircuits.matching import features as matching
    from saecircuits.core.config import validate
    from saecircuits.core.errors import SaecircuitsError

    console = console or Console()
    modes = ("activations", "weights", "chains", "flow")
    if mode not in modes:
        raise SaecircuitsError(f"--mode must be one of {', '.join(modes)}, got {mode!r}")
    cfg = validate(matching.MatchConfig, settings or {}, where="match")
    if flow_direction not in ("decoder", "encoder"):
        raise SaecircuitsError(f"--flow-direction must be decoder or encoder, got {flow_direction!r}")
    saes_a = _load_saes(sae_a)
    saes_b = _load_saes(sae_b) if sae_b else {}
    if mode in ("activations", "weights") and not saes_b:
        raise SaecircuitsError(f"--mode {mode} compares two sides: give at least one --sae-b")
    if set(saes_a) & set(saes_b):
        saes_b = {f"{n}(b)" if n in saes_a else n: s for n, s in saes_b.items()}
    out_dir = ensure_dir(out)
    written: dict = {}
    if mode == "activations":
        from saecircuits.model import loading as models

        name_a = _model_name(saes_a, model, "A")
        name_b = model_b or (name_a if model else _model_name(saes_b, None, "B"))
        spec_a, spec_b = models.offline_model(name_a), models.offline_model(name_b)
        same = (spec_a is not None and spec_a == spec_b) or name_a == name_b
        if align_to and not same:
            raise SaecircuitsError("--align-to is for same-model pairs; with --model-b the text is aligned to that model already",
                                   "drop --align-to, or give SAEs of one model on both sides")
        lm_a = models.load(name_a)
        lm_b = None if same else models.load(name_b)
        result = matching.match_saes(saes_a, saes_b, lm_a, lm_b, cfg, align_to=models.load(align_to) if align_to else None)
        written = write_match(result, out_dir)
        t = Table(title=f"activation matching ({cfg.method}), {result['timing']['tokens']:,} tokens")
        for col in ("A", "B", "alive A/B", "pairs", "mean r", "r>0.7", "kept", "SVCCA (p)", "CKA (p)"):
            t.add_column(col, justify="left" if col in ("A", "B") else "right")
        for r in result["results"]:
            s, dec = r["summary"], r["similarity"].get("decoder", {})

            def fmt(m):
                return f"{dec[m]['score']:.3f} ({dec[m]['p_value']:.3g})" if m in dec else "-"

            t.add_row(r["a"], r["b"], f"{s['alive_a']}/{s['alive_b']}", str(s["n_pairs"]), f"{s['mean_r']:.3f}",
                      f"{s['share_r_gt_0.7']:.3f}", str(s["n_kept"]), fmt("svcca"), fmt("cka"))
        console.print(t)
    elif mode == "weights":
        rows = []
        for a, sa in saes_a.items():
            for b, sb in saes_b.items():
                res = matching.weight_match(sa, sb, cfg.method)
                write_weight_match(res, out_dir, f"{_safe(a)}__{_safe(b)}")
                rows.append({"a": a, "b": b, "summary": res["summary"]})
        write_json(out_dir / "weights.json", rows)
        written["weights"] = str(out_dir / "weights.json")
        if len(rows) > 1:
            from saecircuits.matching.similarity import similarity_matrix

            m = similarity_matrix(rows, value="mean_cos")
            write_json(out_dir / "similarity_mean_cos.json", m)
            heatmap_figure(m, out_dir / "similarity_mean_cos", "mean matched decoder cosine")
        t = Table(title=f"weight matching ({cfg.method}, folded decoders)")
        for col in ("A", "B", "pairs", "mean cos", "cos>0.7", "cos>0.9"):
            t.add_column(col)
        for r in rows:
            s = r["summary"]
            t.add_row(r["a"], r["b"], str(s["n_pairs"]), f"{s['mean_cos']:.3f}", f"{s['share_cos_gt_0.7']:.3f}", f"{s['share_cos_gt_0.9']:.3f}")
        console.print(t)
    elif mode == "chains":
        suite = {**saes_a, **saes_b}
        res = matching.feature_chains(list(suite.values()), list(suite), min_cos=min_cos, method=cfg.method)
        written = write_chains(res, out_dir)
        console.print("chain survival (share of features still linked after s steps): "
                      + ", ".join(f"{s}: {v:.3f}" for s, v in enumerate(res["survival"])))
    else:
        suite = {**saes_a, **saes_b}
        lm = None
        if any(s.cfg.hook.split(":")[0].endswith("attn.hook_z") for s in suite.values()):
            from saecircuits.model import loading as models

            lm = models.load(_model_name(suite, model, "A"))
        res = matching.feature_flow(suite, lm, flow_direction, min_cos)
        written = write_flow(res, out_dir)
        t = Table(title=f"feature flow ({flow_direction} directions, min cos {min_cos})")
        kinds = sorted({k for s in res["origin_shares"].values() for k in s if k != "sources"})
        for col in ["SAE", *kinds]:
            t.add_column(col)
        for name, s in res["origin_shares"].items():
            t.add_row(name, *[f"{s.get(k, 0.0):.3f}" for k in kinds])
        console.print(t)
    return written
