"""The markdown page of a circuit-method comparison (``saecircuits circuit-methods``): MIB curves, the
reported circuits against random ones, and the robustness matrix with the cells where the verdict flips."""

from __future__ import annotations

ABLATION_ORDER = ("counterfactual", "mean-clean", "mean-counterfactual", "zero", "resample")
METRIC_NAMES = {"task": "task metric", "kl": "-KL to the full model", "prob": "answer probability",
                "accuracy": "accuracy"}


def _ci(ci: list | None) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def _f_at(method: dict, k: float) -> str:
    point = next((p for p in method["curve"] if p["k"] == k), None)
    return "" if point is None else f"{point['f']:.2f}"


def curves_table(methods: list[dict], ablation: str) -> list[str]:
    rows = [m for m in methods if m["ablation"] == ablation]
    if not rows:
        return []
    lines = [f"### {ablation} ablation", "",
             "| method | granularity | CPR | CMD | k* (%) | f at 1% | f at 5% | f at 10% | discovery s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in sorted(rows, key=lambda r: (r["granularity"], r["cmd"])):
        lines.append(f"| {m['name']} | {m['granularity']} | {m['cpr']:.3f} {_ci(m.get('cpr_ci'))} | "
                     f"{m['cmd']:.3f} {_ci(m.get('cmd_ci'))} | {m['k_star'] if m['k_star'] is not None else 'never'} | "
                     f"{_f_at(m, 1)} | {_f_at(m, 5)} | {_f_at(m, 10)} | {m['seconds']:.0f} |")
    return lines + [""]


def _cell(c: dict) -> str:
    if "unavailable" in c:
        return "n/a"
    mark = " ✓" if c["faithful"] else ""
    rand = f" (random {c['random_mean']:.2f}, max {c['random_max']:.2f})" if "random_mean" in c else ""
    return f"{c['f']:.2f}{mark}{rand}"


def circuit_section(name: str, c: dict) -> list[str]:
    unit = {"Head circuit": "nodes", "Edge circuit": "edges"}.get(name, "heads, every MLP kept")
    lines = [f"### {name}: {c['count']} {unit} from {c['method']} (validation f {c['val_f']:.3f})", ""]
    ablations = [a for a in ABLATION_ORDER if a in c["test"]]
    lines += ["| metric | " + " | ".join(ablations) + " |", "|---|" + "---|" * len(ablations)]
    for metric, label in METRIC_NAMES.items():
        cells = []
        for a in ablations:
            row = c["test"][a]
            cells.append("n/a" if "unavailable" in row or metric not in row else _cell(row[metric]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if c.get("verdict_flips"):
        lines += ["", "The verdict (|1 - f| <= 0.1, marked ✓) depends on the ablation or the metric."]
    return lines + [""]


def robustness_table(robustness: list[dict]) -> list[str]:
    lines = ["| method | granularity | size | " + " | ".join(ABLATION_ORDER) + " | verdict flips |",
             "|---|---|---|" + "---|" * (len(ABLATION_ORDER) + 1)]
    for r in robustness:
        cells = []
        for a in ABLATION_ORDER:
            row = r["cells"].get(a, {})
            cells.append("n/a" if "unavailable" in row or "task" not in row else _cell(row["task"]))
        lines.append(f"| {r['name']} | {r['granularity']} | {r['count']} | " + " | ".join(cells) +
                     f" | {'yes' if r['verdict_flips'] else 'no'} |")
    return lines + [""]


def render(result: dict, figures: list[str]) -> str:
    c = result["circuit"]
    g = result.get("graph", {})
    lines = [f"# Circuit discovery: {c['task']} on {c['model']}", "",
             f"Prompts: {c['splits']['train']} train (discovery), {c['splits']['val']} validation (sizes, greedy), "
             f"{c['splits']['test']} test (every number below). Test holds a template train lacks: "
             f"{'; '.join(c.get('held_out_templates', []))}.",
             f"Graph: {g.get('n_nodes')} nodes (heads and MLPs), {g.get('n_edges')} edges.",
             "Faithfulness f = (m(C) - m(empty)) / (m(N) - m(empty)), 95% bootstrap intervals over test prompts; CPR and "
             "CMD as MIB computes them; k* the smallest size with |1 - f| <= 0.1.", "", "## Faithfulness curves", ""]
    for a in ABLATION_ORDER:
        lines += curves_table(result["methods"], a)
    lines += [f"![f(k)]({f})" for f in figures] + [""]
    choose_on = result.get("config", {}).get("choose_on") or ["counterfactual"]
    lines += ["## Reported circuits (chosen on validation, scored on test)", "",
              f"Each size was chosen (and greedy refined) on validation prompts to hold under: {', '.join(choose_on)} "
              "(the largest |1 - f| among them); validation f is under the first.", ""]
    for key, name in (("head_circuit", "Head circuit"), ("head_circuit_mlps_kept", "Head circuit, MLPs kept"),
                      ("edge_circuit", "Edge circuit")):
        if key in c:
            lines += circuit_section(name, c[key])
    if c.get("heads") is not None:
        lines += [f"Heads ({len(c['heads'])}): {', '.join(c['heads'])}" + (f"; MLPs: {', '.join(c['mlps'])}"
                                                                          if c.get("mlps") else ""), ""]
    lines += ["## Robustness: each method's chosen circuit, task metric, every ablation", "",
              *robustness_table(result["robustness"])]
    flips = [f"{r['name']} ({r['granularity']})" for r in result["robustness"] if r["verdict_flips"]]
    lines.append("Verdicts that depend on the ablation or metric: " + (", ".join(flips) if flips else "none") + ".")
    return "\n".join(lines) + "\n"
