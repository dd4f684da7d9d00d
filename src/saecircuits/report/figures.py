"""The report's figures (matplotlib, Agg), each a function of the results dict alone, written as PNG + PDF.

Each ``FIGURES`` entry returns a matplotlib figure, or None when its section has no data. The layer
analyses are drawn by ``saecircuits.layerwise.figures`` from their typed results (their JSON is carried in the results).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from saecircuits.circuits.comparison_files import draw_curves  # noqa: E402
from saecircuits.core.files import ensure_dir, save_figure  # noqa: E402
from saecircuits.layerwise import figures as layer_figs  # noqa: E402
from saecircuits.matching.outputs import draw_heatmap  # noqa: E402

KIND_COLORS = {"Q": "#1f77b4", "K": "#ff7f0e", "V": "#2ca02c"}
EAP_COLOR = "#7b3294"
_RC = {"font.size": 9, "axes.titlesize": 10, "svg.hashsalt": "saecircuits", "pdf.fonttype": 42}


def _ok(section: dict | None) -> bool:
    return bool(section) and "missing" not in section


def _layer_of(h: str) -> int:
    return int(h.split(".")[0])


# --- circuit --------------------------------------------------------------------------------------

def circuit_graph(results: dict):
    """The head circuit at (layer, head), its MLPs in a row above the heads; weight-graph composition edges
    coloured by Q/K/V, the edge circuit's edges between circuit nodes (and into the logits) dashed."""
    c = results.get("circuit")
    if not _ok(c) or not (c["heads"] or c["mlps"]):
        return None
    g = nx.MultiDiGraph()
    pos = {h: (_layer_of(h), int(h.split(".")[1])) for h in c["heads"]}
    pos.update({m: (int(m[3:]), c["n_heads"]) for m in c["mlps"]})
    g.add_nodes_from(pos)
    data = [e for e in c["edges"]["circuit"] if e["sender"] in pos and (e["receiver"] in pos or e["receiver"] == "logits")]
    if any(e["receiver"] == "logits" for e in data):
        g.add_node("logits")
        pos["logits"] = (c["n_layers"], c["n_heads"] / 2)
    comp = [e for e in (c.get("composition") or {}).get("edges", []) if e["sender"] in pos and e["receiver"] in pos]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.28 * c["n_layers"] + 3), max(3.8, 0.42 * c["n_heads"] + 2.0)))
    for names, color, shape in ((c["heads"], "#9ecae1", "o"), (c["mlps"], "#fdd0a2", "s"),
                                (["logits"] if "logits" in g else [], "#dddddd", "s")):
        if names:
            nx.draw_networkx_nodes(g, pos, nodelist=names, node_color=color, node_shape=shape, node_size=560,
                                   edgecolors="black", linewidths=0.8, ax=ax)
    for n in g.nodes:
        ax.text(*pos[n], n, ha="center", va="center", fontsize=6.5, zorder=5)
    zmax = max([e["z"] for e in comp] + [1e-9])
    for kind, color in KIND_COLORS.items():
        es = [e for e in comp if e["type"] == kind]
        if es:
            nx.draw_networkx_edges(g, pos, edgelist=[(e["sender"], e["receiver"]) for e in es], edge_color=color,
                                   width=[0.8 + 3.2 * e["z"] / zmax for e in es], arrowsize=12, node_size=560,
                                   connectionstyle="arc3,rad=0.18", ax=ax, alpha=0.85)
    if data:
        nx.draw_networkx_edges(g, pos, edgelist=[(e["sender"], e["receiver"]) for e in data], edge_color=EAP_COLOR,
                               width=1.0, style="dashed", arrowsize=9, node_size=560,
                               connectionstyle="arc3,rad=-0.18", ax=ax, alpha=0.6)
    _layer_head_axes(ax, pos, c["n_layers"], c["n_heads"] + 1)
    ax.set_yticks(range(c["n_heads"] + 1), [str(h) for h in range(c["n_heads"])] + ["MLP"])
    handles = [Line2D([], [], color=KIND_COLORS[k], lw=2.5, label=f"{k}-composition (weights)") for k in KIND_COLORS]
    handles.append(Line2D([], [], color=EAP_COLOR, lw=1.5, ls="--", label="edge-circuit edge (data)"))
    ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False, ncol=2)
    f = ((c["test"].get("counterfactual") or {}).get("task") or {}).get("f")
    ax.set_title(f"{c['model']} {c['task']}: {len(c['heads'])} heads, {len(c['mlps'])} MLPs from {c['selected_by']} "
                 f"(sized on validation); test f {f:.2f} (counterfactual)" if f is not None else "", fontsize=9)
    return fig


def _layer_head_axes(ax, pos: dict[str, tuple], n_layers: int, n_heads: int) -> None:
    """Axes of a graph drawn at (layer, head) positions: layer ticks where there are nodes (``out`` past the
    last layer), every head on the y axis, no top and right frame."""
    ax.set_axis_on()
    ax.tick_params(left=True, bottom=True, labelleft=True, labelbottom=True)
    layers = sorted({p[0] for p in pos.values()})
    ax.set_xticks(layers, [str(x) if x < n_layers else "out" for x in layers])
    ax.set_yticks(range(n_heads))
    ax.set_xlim(min(layers) - 1, max(layers) + 1)
    ax.set_ylim(-0.8, n_heads - 0.2)
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)


def node_scores(results: dict):
    """Each head's (and MLP's) score from the discovery method that scores nodes, layer x head, diverging colour
    map centred at 0; boxes: the circuit's nodes."""
    c = results.get("circuit")
    if not _ok(c) or not c.get("node_scores"):
        return None
    s = c["node_scores"]
    m = np.array([[np.nan if v is None else v for v in row] for row in s["heads"]], dtype=float).T  # [head, layer]
    m = np.vstack([m, np.array([np.nan if v is None else v for v in s["mlps"]], dtype=float)[None]])
    vmax = max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0, 1e-9)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.3 * c["n_layers"] + 2), 0.3 * (c["n_heads"] + 1) + 1.6),
                           constrained_layout=True)
    im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    boxes = [(_layer_of(h), int(h.split(".")[1])) for h in c["heads"]] + [(int(x[3:]), c["n_heads"]) for x in c["mlps"]]
    for L, h in boxes:
        ax.add_patch(plt.Rectangle((L - 0.5, h - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
    ax.set_xticks(range(0, c["n_layers"], max(1, c["n_layers"] // 15)))
    ax.set_yticks(range(c["n_heads"] + 1), [str(h) for h in range(c["n_heads"])] + ["MLP"])
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    ax.set_title(f"{s['method']} score of each node on the train prompts (boxes: the circuit)")
    fig.colorbar(im, ax=ax, shrink=0.9)
    return fig


def faithfulness_curves(results: dict):
    """f(k) of every method on test under the primary ablation, with 95% intervals (the comparison's figure)."""
    c = results.get("circuit")
    if not _ok(c) or not c.get("methods"):
        return None
    return draw_curves(c["methods"], c["methods"][0]["ablation"])


def circuit_faithfulness(results: dict):
    """The reported head circuit's f on test under every ablation (task metric), beside the mean and the best of
    random circuits of its size; the band |1 - f| <= 0.1 is the verdict."""
    c = results.get("circuit")
    if not _ok(c):
        return None
    rows = [(a, cell["task"]) for a, cell in c["test"].items() if "task" in cell and "f" in cell["task"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["f"] for _, r in rows], 0.4, color="#2b6cb0", label=f"circuit ({c['size']} nodes)")
    if all("random_mean" in r for _, r in rows):
        ax.bar(xs + 0.2, [r["random_mean"] for _, r in rows], 0.4, color="#a0aec0", label="random circuits, mean")
        ax.scatter(xs + 0.2, [r["random_max"] for _, r in rows], color="black", marker="_", s=200, zorder=3,
                   label="random circuits, best")
    ax.axhspan(0.9, 1.1, color="0.88", zorder=0)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(xs, [a for a, _ in rows])
    ax.set_ylabel("faithfulness f (test)")
    ax.legend(fontsize=7)
    ax.set_title("the head circuit under every ablation (grey band: |1 - f| <= 0.1)")
    return fig


def attention_patterns(results: dict):
    """Attention of the circuit's key heads on the example prompt (query rows, key columns)."""
    att = results.get("attention")
    if not _ok(att) or not att.get("heads"):
        return None
    tokens = [_visible(t) for t in att["tokens"]]
    n = len(att["heads"])
    cols = min(3, n)
    rows = math.ceil(n / cols)
    side = max(3.2, 0.22 * len(tokens) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False, constrained_layout=True)
    for ax, h in zip(axes.flat, att["heads"]):
        im = ax.imshow(np.array(h["pattern"], dtype=float), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
        ax.set_title(f"head {h['head']}", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight")
    return fig


def _visible(token: str) -> str:
    """A token as a tick label: newlines and tabs shown as escapes, a lone space as a visible mark."""
    t = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace("$", r"\$")
    return t if t.strip() else repr(token)


# --- matching, training ---------------------------------------------------------------------------

def similarity_heatmap(results: dict):
    """Layer x layer similarity of the SAEs' features (one panel per measure)."""
    m = results.get("matching")
    if not _ok(m) or not m.get("similarity"):
        return None
    mats = list(m["similarity"].items())
    n_cols = max(len(x["cols"]) for _, x in mats)
    n_rows = max(len(x["rows"]) for _, x in mats)
    fig, axes = plt.subplots(1, len(mats), figsize=(len(mats) * (1.6 + 0.8 * n_cols), 1.6 + 0.6 * n_rows), squeeze=False,
                             constrained_layout=True)
    for ax, (value, mat) in zip(axes[0], mats):
        draw_heatmap(ax, mat, f"{value} ({mat['source']})" if mat.get("p_values") else value)
    return fig


def _short_count(x: float, _pos=None) -> str:
    """Tick labels 50k, 1.2M: long token counts overlapped on a narrow axis."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def training_curves(results: dict):
    """Training loss and explained variance against tokens, one line per SAE."""
    t = results.get("training")
    if not _ok(t) or not t["curves"]["tokens"]:
        return None
    xs = t["curves"]["tokens"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"wspace": 0.3})
    labels = {s["name"]: s["label"] for s in t["saes"]}
    for name, cur in t["curves"]["saes"].items():
        pts = [(x, y) for x, y in zip(xs, cur["loss"]) if y is not None]
        a.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=labels.get(name, name))
        pts = [(x, y) for x, y in zip(xs, cur["explained_variance"]) if y is not None]
        b.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=labels.get(name, name))
    a.set_yscale("log")
    a.set_ylabel("training loss")
    b.set_ylabel("explained variance (training batch)")
    for ax in (a, b):
        ax.set_xlabel("training tokens")
        ax.xaxis.set_major_formatter(FuncFormatter(_short_count))
        ax.legend(fontsize=7)
    a.set_title("SAE training loss")
    b.set_title("explained variance")
    return fig


def frontier(results: dict):
    """L0 against explained variance for every SAE (held-out evaluation)."""
    t = results.get("training")
    if not _ok(t):
        return None
    pts = [s for s in t["saes"] if s.get("l0") is not None and s.get("explained_variance") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sc = ax.scatter([s["l0"] for s in pts], [s["explained_variance"] for s in pts], s=50, zorder=3,
                    c=[s.get("ce_loss_recovered") if s.get("ce_loss_recovered") is not None else np.nan for s in pts],
                    cmap="viridis", edgecolors="black", linewidths=0.5)
    for s in pts:
        ax.annotate(s["label"], (s["l0"], s["explained_variance"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    if any(s.get("ce_loss_recovered") is not None for s in pts):
        fig.colorbar(sc, ax=ax, label="CE loss recovered")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("explained variance")
    ax.set_title("sparsity / reconstruction frontier")
    ax.grid(alpha=0.3)
    return fig


FIGURES = {
    "circuit_graph": circuit_graph, "node_scores": node_scores, "faithfulness_curves": faithfulness_curves,
    "circuit_faithfulness": circuit_faithfulness, "attention_patterns": attention_patterns,
    "similarity_heatmap": similarity_heatmap, "training_curves": training_curves, "frontier": frontier,
}


def layer_figures(results: dict) -> dict:
    """The layer analyses' own figures, drawn by ``saecircuits.layerwise.figures`` from their typed results."""
    layers = results.get("layers")
    if not _ok(layers):
        return {}
    return {f"layers_{name}": (lambda r=r: layer_figs.draw(r)) for name, r in layers["analyses"].items()}


def write_figures(results: dict, out: str | Path) -> dict[str, list[Path]]:
    """Every figure the results support, as ``out/<name>.png`` and ``.pdf``; returns {name: [png, pdf]}."""
    out = ensure_dir(out)
    written = {}
    makers = {**FIGURES, **layer_figures(results)}
    for name, make in makers.items():
        with plt.rc_context(_RC):
            fig = make(results) if name in FIGURES else make()
            if fig is not None:
                written[name] = save_figure(fig, out / name)
    return written
