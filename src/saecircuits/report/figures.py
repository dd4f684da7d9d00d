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
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from saecircuits.core.files import ensure_dir, save_figure  # noqa: E402
from saecircuits.layerwise import figures as layer_figs  # noqa: E402
from saecircuits.matching.outputs import draw_heatmap  # noqa: E402

KIND_COLORS = {"Q": "#1f77b4", "K": "#ff7f0e", "V": "#2ca02c"}
EAP_COLOR = "#7b3294"
_RC = {"font.size": 9, "axes.titlesize": 10, "svg.hashsalt": "saecircuits", "pdf.fonttype": 42}


def _ok(section: dict | None) -> bool:
    return bool(section) and "missing" not in section


def _ci_err(value: float, ci: list | None) -> list[float]:
    if not ci or ci[0] is None or ci[1] is None:
        return [0.0, 0.0]
    return [max(0.0, value - ci[0]), max(0.0, ci[1] - value)]


def _layer_of(h: str) -> int:
    return int(h.split(".")[0])


# --- circuit --------------------------------------------------------------------------------------

def circuit_graph(results: dict, max_eap: int = 20):
    """Circuit heads at (layer, head); weight-graph composition edges coloured by Q/K/V, the ``max_eap`` strongest
    EAP edges between circuit heads (and into the logits) in purple."""
    c = results.get("circuit")
    if not _ok(c) or not c["heads"]:
        return None
    g = nx.MultiDiGraph()
    pos = {}
    effect = {r["head"]: r["patching_effect"] or 0.0 for r in c["head_rows"]}
    for h in c["heads"]:
        g.add_node(h)
        pos[h] = (_layer_of(h), int(h.split(".")[1]))
    data = [e for e in c["edges"]["circuit"] if e["sender"] in pos and (e["receiver"] in pos or e["receiver"] == "logits")]
    data = sorted(data, key=lambda e: -abs(e["score"]))[:max_eap]
    if any(e["receiver"] == "logits" for e in data):
        g.add_node("logits")
        pos["logits"] = (c["n_layers"], (c["n_heads"] - 1) / 2)
    comp = [e for e in (c.get("composition") or {}).get("edges", []) if e["sender"] in pos and e["receiver"] in pos]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.28 * c["n_layers"] + 3), max(3.8, 0.42 * c["n_heads"] + 1.6)))
    vmax = max([abs(v) for v in effect.values()] + [1e-9])
    heads = [h for h in g.nodes if h != "logits"]
    nodes = nx.draw_networkx_nodes(g, pos, nodelist=heads, node_color=[effect[h] for h in heads], cmap="RdBu_r",
                                   vmin=-vmax, vmax=vmax, node_size=520, edgecolors="black", linewidths=0.8, ax=ax)
    if "logits" in g:
        nx.draw_networkx_nodes(g, pos, nodelist=["logits"], node_color="#dddddd", node_shape="s", node_size=900,
                               edgecolors="black", ax=ax)
    for h in heads:  # white text on the darkest nodes
        ax.text(*pos[h], h, ha="center", va="center", fontsize=7, zorder=5,
                color="white" if abs(effect[h]) > 0.6 * vmax else "black")
    if "logits" in g:
        ax.text(*pos["logits"], "logits", ha="center", va="center", fontsize=7, zorder=5)
    zmax = max([e["z"] for e in comp] + [1e-9])
    for kind, color in KIND_COLORS.items():
        es = [e for e in comp if e["type"] == kind]
        if es:
            nx.draw_networkx_edges(g, pos, edgelist=[(e["sender"], e["receiver"]) for e in es], edge_color=color,
                                   width=[0.8 + 3.2 * e["z"] / zmax for e in es], arrowsize=12, node_size=520,
                                   connectionstyle="arc3,rad=0.18", ax=ax, alpha=0.85)
    smax = max([abs(e["score"]) for e in data] + [1e-9])
    if data:
        nx.draw_networkx_edges(g, pos, edgelist=[(e["sender"], e["receiver"]) for e in data], edge_color=EAP_COLOR,
                               width=[0.6 + 3.4 * abs(e["score"]) / smax for e in data], style="dashed", arrowsize=10,
                               node_size=520, connectionstyle="arc3,rad=-0.18", ax=ax, alpha=0.8)
    _layer_head_axes(ax, pos, c["n_layers"], c["n_heads"])
    fig.colorbar(nodes, ax=ax, label="patching effect (node colour)", shrink=0.8)
    handles = [Line2D([], [], color=KIND_COLORS[k], lw=2.5, label=f"{k}-composition (weights)") for k in KIND_COLORS]
    handles.append(Line2D([], [], color=EAP_COLOR, lw=2, ls="--", label="EAP edge (data)"))
    ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False, ncol=2)
    ax.set_title(f"{c['model']} {c['task']} circuit: {c['size']} heads ({c['rule']} by {c['selected_by']}); "
                 f"edge width: z (weights) or |EAP score| (top {len(data)} EAP edges)", fontsize=9)
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


def patching_heatmap(results: dict):
    """Layer x head effects of activation patching and of ablation, diverging colour map centred at 0."""
    c = results.get("circuit")
    if not _ok(c):
        return None
    panels = [("patching_effect", "activation patching (corrupted -> clean)"),
              ("ablation_effect", f"{c.get('ablation') or 'mean'} ablation")]
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.3 * c["n_layers"] + 2), 2 * (0.3 * c["n_heads"] + 1.4)),
                             constrained_layout=True)
    inside = [(_layer_of(h), int(h.split(".")[1])) for h in c["heads"]]
    for ax, (key, title) in zip(axes, panels):
        m = np.array([[np.nan if v is None else v for v in row] for row in c[key]], dtype=float).T  # [head, layer]
        vmax = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
        im = ax.imshow(m, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -max(vmax, 1e-9), max(vmax, 1e-9)), aspect="auto",
                       interpolation="nearest")
        for L, h in inside:
            ax.add_patch(plt.Rectangle((L - 0.5, h - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
        ax.set_xticks(range(0, c["n_layers"], max(1, c["n_layers"] // 15)))
        ax.set_yticks(range(c["n_heads"]))
        ax.set_xlabel("layer")
        ax.set_ylabel("head")
        ax.set_title(f"{title}: normalised effect on {c['metric']} (boxes: circuit heads)")
        fig.colorbar(im, ax=ax, shrink=0.9)
    return fig


def ablation_bars(results: dict):
    """Faithfulness of the circuit, the circuit knocked out and random circuits (95% CIs); the metric under each."""
    c = results.get("circuit")
    if not _ok(c) or not c.get("validation"):
        return None
    v = c["validation"]
    bars = [(label, v[key]["value"], v[key].get("ci"), color) for key, label, color in
            (("faithfulness", "circuit\n(rest ablated)", "#2b6cb0"), ("knockout", "circuit\nknocked out", "#c05621"))
            if v.get(key)]
    if v.get("random"):
        r = v["random"]
        bars.append((f"random circuits\n(n={r['n_circuits']})", r["faithfulness_mean"], r.get("ci"), "#718096"))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"wspace": 0.3})
    xs = range(len(bars))
    a.bar(xs, [x[1] for x in bars], yerr=np.array([_ci_err(x[1], x[2]) for x in bars]).T, color=[x[3] for x in bars],
          capsize=5)
    a.set_xticks(list(xs), [x[0] for x in bars])
    a.axhline(0, color="black", lw=0.6)
    a.axhline(1, color="grey", lw=0.6, ls="--")
    a.set_ylabel("faithfulness (share of full-model metric)")
    a.set_title(f"{c['size']} heads, {c.get('ablation') or 'mean'} ablation, 95% CI")
    metric = v.get("metric") or {}
    labels = {"full": "full model", "circuit": "circuit only", "knockout": "circuit\nknocked out", "all_ablated": "all ablated"}
    rows = [(labels[k], metric[k]["mean"], metric[k].get("ci")) for k in labels if k in metric]
    b.bar(range(len(rows)), [x[1] for x in rows], yerr=np.array([_ci_err(x[1], x[2]) for x in rows]).T.reshape(2, -1),
          color="#4a5568", capsize=5)
    b.set_xticks(range(len(rows)), [x[0] for x in rows])
    b.axhline(0, color="black", lw=0.6)
    b.set_ylabel(c["metric"] or "metric")
    b.set_title(f"task metric over {v.get('n_prompts')} prompts, 95% CI")
    return fig


def faithfulness_by_size(results: dict):
    """Faithfulness and knockout of the top-k heads (by the selection score) against k."""
    c = results.get("circuit")
    if not _ok(c) or not c.get("faithfulness_by_size"):
        return None
    rows = c["faithfulness_by_size"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["size"] for r in rows], [r["faithfulness"] for r in rows], marker="o", label="top-k kept, rest ablated")
    ax.plot([r["size"] for r in rows], [r["knockout"] for r in rows], marker="s", label="top-k knocked out")
    ax.axvline(c["size"], color="grey", ls=":", label=f"circuit ({c['size']} heads)")
    r = (c.get("validation") or {}).get("random")
    if r and r.get("ci"):
        ax.axhspan(r["ci"][0], r["ci"][1], color="#718096", alpha=0.25, label="random circuits (95% CI)")
    ax.axhline(0, color="black", lw=0.6)
    ax.axhline(1, color="grey", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel(f"heads (top-k by {c['selected_by']} effect)")
    ax.set_ylabel("faithfulness")
    ax.legend(fontsize=7)
    ax.set_title("faithfulness by circuit size")
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
    effect = {r["head"]: r["patching_effect"] for r in (results.get("circuit") or {}).get("head_rows", [])}
    for ax, h in zip(axes.flat, att["heads"]):
        im = ax.imshow(np.array(h["pattern"], dtype=float), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
        e = effect.get(h["head"])
        ax.set_title(f"head {h['head']}" + (f" (patching {e:+.2f})" if e is not None else ""), fontsize=8)
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
    "circuit_graph": circuit_graph, "patching_heatmap": patching_heatmap, "ablation_bars": ablation_bars,
    "faithfulness_by_size": faithfulness_by_size, "attention_patterns": attention_patterns,
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
