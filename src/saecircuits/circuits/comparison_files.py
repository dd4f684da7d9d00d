"""The comparison's files: ``methods.json``, ``circuit.json``, ``robustness.json`` and the f(k) figure,
written into a staged folder and swapped in whole (an interrupted run leaves the old folder as it was)."""

from __future__ import annotations

from pathlib import Path

from saecircuits.core.files import save_figure, staged_dir, write_json, write_text


def draw_curves(methods: list[dict], ablation: str = "counterfactual"):
    """f(k) of every method under ``ablation``, one panel per granularity, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grans = sorted({m["granularity"] for m in methods}, reverse=True)
    fig, axes = plt.subplots(1, len(grans), figsize=(5.5 * len(grans), 4), squeeze=False)
    for ax, gran in zip(axes[0], grans):
        for m in methods:
            if m["granularity"] != gran or m["ablation"] != ablation:
                continue
            k = [p["k"] for p in m["curve"]]
            f = [p["f"] for p in m["curve"]]
            line, = ax.plot(k, f, marker="o", ms=3, label=f"{m['name']} (CMD {m['cmd']:.2f})")
            ax.fill_between(k, [p["ci"][0] for p in m["curve"]], [p["ci"][1] for p in m["curve"]],
                            color=line.get_color(), alpha=0.15)
        ax.axhline(1, color="k", lw=0.8)
        ax.axhspan(0.9, 1.1, color="0.85", zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel(f"circuit size (% of {gran})")
        ax.set_ylabel("faithfulness f (test)")
        ax.set_title(f"{gran}, {ablation} ablation")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_comparison(result: dict, folder: str | Path, markdown=None) -> Path:
    """Write one comparison into ``folder`` (replaced whole); ``markdown(result, figure_names) -> str``, when
    given, renders ``report.md`` beside the files."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(folder) as tmp:
        write_json(tmp / "methods.json", {"methods": result["methods"], "graph": result["graph"],
                                          "node_scores": result.get("node_scores", {}),
                                          "config": result.get("config", {}), "cost": result.get("cost", {})})
        write_json(tmp / "circuit.json", result["circuit"])
        write_json(tmp / "robustness.json", {"robustness": result["robustness"]})
        import matplotlib.pyplot as plt

        figures = []
        for abl in sorted({m["ablation"] for m in result["methods"]}):
            fig = draw_curves(result["methods"], abl)
            figures += [p.name for p in save_figure(fig, tmp / f"curves-{abl}", formats=("png",))]
            plt.close(fig)
        if markdown is not None:
            write_text(tmp / "report.md", markdown(result, figures))
    return folder
