"""The report's tables, built once from the results dict and written as LaTeX (booktabs) and Markdown.

A ``Table`` holds display strings (the numbers formatted once, so every rendering shows the same
text), the raw values (for W&B), and optional per-cell links (used by the HTML and Markdown reports,
never by the ``.tex`` and ``tables/*.md`` files, which therefore do not depend on where the report sits).
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from saecircuits.core.files import ensure_dir, write_text
from saecircuits.core.records import ABSENT
from saecircuits.layerwise.results import ContributionsResult, LensResult, SkipResult
from saecircuits.report.comparison import ABLATION_ORDER, METRIC_NAMES


@dataclass
class Table:
    name: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    data: list[list] = field(default_factory=list)
    links: list[list[str | None]] | None = None
    align: str | None = None  # LaTeX column spec; default: first column l, the rest r
    data_columns: list[str] | None = None  # names of the raw values' columns when they differ from ``columns``

    def spec(self) -> str:
        return self.align or "l" + "r" * (len(self.columns) - 1)


# --- formatting -----------------------------------------------------------------------------------

def num(x, digits: int = 3) -> str:
    """A number as the report prints it: ints with thousands separators, small floats in e-notation, None as n/a."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if x == 0:
        return f"{0:.{digits}f}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) < 10 ** -digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def ci(value, bounds) -> tuple[str, str]:
    lo, hi = (bounds or [None, None])[:2]
    return num(value), f"[{num(lo)}, {num(hi)}]" if lo is not None else "n/a"


def tokens(ts: list[str]) -> str:
    """Tokens as quoted strings (leading spaces and newlines visible): ``" the", "\\n"``."""
    return ", ".join(json.dumps(t, ensure_ascii=False) for t in ts)


# --- the tables -----------------------------------------------------------------------------------

def circuit_heads(results: dict) -> Table | None:
    c = results.get("circuit")
    if not c or "missing" in c:
        return None
    pages = results.get("head_pages", {})
    rows, data, links = [], [], []
    for r in sorted(c["head_rows"], key=lambda r: (r["layer"], r["index"])):
        data.append([r["head"], r["score"], r["edges_in"], r["edges_out"], r["role"]])
        rows.append([r["head"], num(r["score"]), num(r["edges_in"]), num(r["edges_out"]), r["role"] or "n/a"])
        links.append([pages.get(r["head"], {}).get("href"), None, None, None, None])
    mlps = f"; with MLPs {', '.join(c['mlps'])}" if c["mlps"] else ""
    scored = (c.get("node_scores") or {}).get("method", "no method")
    return Table("circuit_heads", f"The {len(c['heads'])} heads of the {c['task']} circuit of {c['model']} "
                 f"({c['selected_by']}, sized on validation{mlps}): each head's {scored} score on the train prompts, "
                 "edges of the edge circuit into and out of it (between circuit nodes), and its strongest composition "
                 "inside the circuit.", ["head", "score", "edges in", "edges out", "composition in circuit"], rows, data,
                 links, align="lrrrl")


def circuit_faithfulness(results: dict) -> Table | None:
    """The reported head circuit's test f under every ablation x metric, beside random circuits of its size."""
    c = results.get("circuit")
    if not c or "missing" in c:
        return None
    rows, data = [], []
    for abl, cells in c["test"].items():
        if "unavailable" in cells:
            rows.append([abl, "n/a", "", "", "", cells["unavailable"]])
            data.append([abl, None, None, None, None, cells["unavailable"]])
            continue
        for metric, cell in cells.items():
            if "f" not in cell:
                continue
            verdict = "faithful" if cell["faithful"] else "not faithful"
            rows.append([abl, METRIC_NAMES.get(metric, metric), num(cell["f"]), num(cell.get("random_mean")),
                         num(cell.get("random_max")), verdict])
            data.append([abl, metric, cell["f"], cell.get("random_mean"), cell.get("random_max"), verdict])
    flips = " The verdict depends on the ablation or the metric." if c.get("verdict_flips") else ""
    return Table("circuit_faithfulness", f"Faithfulness f of the {c['size']}-node circuit on "
                 f"{(c.get('splits') or {}).get('test')} held-out test prompts under every ablation and metric, beside "
                 f"the mean and the best of random circuits of its size; faithful: |1 - f| <= 0.1.{flips}",
                 ["ablation", "metric", "f", "random mean", "random best", "verdict"], rows, data, align="llrrrl")


def circuit_robustness(results: dict) -> Table | None:
    """The robustness matrix: each method's chosen circuit (sized on validation), task-metric f on test under every
    ablation; a verdict (|1 - f| <= 0.1) that changes with the ablation or the metric is marked."""
    c = results.get("circuit")
    if not c or "missing" in c or not c.get("robustness"):
        return None
    ablations = list(ABLATION_ORDER)
    rows, data = [], []
    for r in c["robustness"]:
        fs = [((r["cells"].get(a) or {}).get("task") or {}).get("f") for a in ablations]
        rows.append([r["name"], r["granularity"], num(r["count"]), *(num(f) for f in fs),
                     "yes" if r["verdict_flips"] else "no"])
        data.append([r["name"], r["granularity"], r["count"], *fs, r["verdict_flips"]])
    return Table("circuit_robustness", "Robustness: each method's circuit (its size chosen on validation), f of the task "
                 "metric on test under every ablation; verdict flips: whether |1 - f| <= 0.1 holds under some ablations "
                 "or metrics and not others.", ["method", "granularity", "size", *ablations, "verdict flips"], rows, data,
                 align="llr" + "r" * len(ablations) + "l")


def circuit_methods(results: dict) -> Table | None:
    """Every discovery method's curve summary on test: CPR, CMD (95% intervals) and k*."""
    c = results.get("circuit")
    if not c or "missing" in c or not c.get("methods"):
        return None
    rows, data = [], []
    for m in c["methods"]:
        k_star = "never" if m["k_star"] is None else f"{m['k_star']:g}%"
        rows.append([m["name"], m["granularity"], m["ablation"], *ci(m["cpr"], m.get("cpr_ci")),
                     *ci(m["cmd"], m.get("cmd_ci")), k_star, num(m["seconds"], 1)])
        data.append([m["name"], m["granularity"], m["ablation"], m["cpr"], m["cmd"], m["k_star"], m["seconds"]])
    return Table("circuit_methods", "Discovery methods on test: CPR (area under f) and CMD (area under |1 - f|) over "
                 "MIB's sizes with 95% bootstrap intervals; k*: the smallest size with |1 - f| <= 0.1.",
                 ["method", "granularity", "ablation", "CPR", "95% CI", "CMD", "95% CI", "k*", "discovery s"], rows,
                 data, align="lllrrrrrr",
                 data_columns=["method", "granularity", "ablation", "cpr", "cmd", "k_star", "seconds"])


def sae_metrics(results: dict) -> Table | None:
    t = results.get("training")
    if not t or "missing" in t or not t["saes"]:
        return None
    cols = ["SAE", "hook", "d_sae", "k", "L0", "explained var.", "dead", "CE recovered", "KL"]
    keys = ["d_sae", "k", "l0", "explained_variance", "dead_latents", "ce_loss_recovered", "kl_to_clean"]
    rows = [[s["label"], s["hook"] or "n/a", *(num(s.get(k)) for k in keys)] for s in t["saes"]]
    data = [[s["label"], s["hook"], *(s.get(k) for k in keys)] for s in t["saes"]]
    return Table("sae_metrics", f"SAEs trained on {num(t.get('tokens'))} tokens of {t.get('model')}: held-out L0, "
                 "explained variance, dead latents, share of cross-entropy loss recovered, KL to the clean model.",
                 cols, rows, data, align="ll" + "r" * 7)


def matched_features(results: dict) -> Table | None:
    m = results.get("matching")
    if not m or "missing" in m or not m.get("pairs"):
        return None
    rows, data, links = [], [], []
    for p in m["pairs"]:
        for x in p["top"]:
            rows.append([f"{p['a']} / {p['b']}", str(x["a"]), str(x["b"]), num(x["r"]), num(x["cos"]),
                         tokens(x["top_tokens_a"]), tokens(x["top_tokens_b"])])
            data.append([f"{p['a']}/{p['b']}", x["a"], x["b"], x["r"], x["cos"], x["top_tokens_a"], x["top_tokens_b"]])
            links.append([None, x.get("a_href"), x.get("b_href"), None, None, None, None])
    return Table("matched_features", f"Best-matched features across layers ({m.get('method')} assignment on "
                 f"{num(m.get('tokens'))} tokens): activation correlation r, decoder cosine, and each feature's top tokens.",
                 ["layers", "feature A", "feature B", "r", "cos", "top tokens A", "top tokens B"], rows, data, links,
                 align="lrrrrp{0.25\\linewidth}p{0.25\\linewidth}")


def matching_pairs(results: dict) -> Table | None:
    m = results.get("matching")
    if not m or "missing" in m or not m.get("pairs"):
        return None
    rows, data = [], []
    for p in m["pairs"]:
        dec = (p.get("similarity") or {}).get("decoder", {})
        vals = [p["n_pairs"], p["n_kept"], p["mean_r"], p["median_r"], p["share_r_gt_0.7"], p["mean_cos"],
                (dec.get("svcca") or {}).get("score"), (dec.get("cka") or {}).get("score")]
        rows.append([f"{p['a']} / {p['b']}", *(num(v) for v in vals)])
        data.append([f"{p['a']}/{p['b']}", *vals])
    return Table("matching_pairs", "Feature matching between layers: matched and kept pairs, activation correlation r, "
                 "decoder cosine, and decoder SVCCA / CKA.",
                 ["layers", "pairs", "kept", "mean r", "median r", "share r>0.7", "mean cos", "SVCCA", "CKA"], rows, data)


def composition_edges(results: dict) -> Table | None:
    h = results.get("heads")
    if not h or "missing" in h or not h.get("top_edges"):
        return None
    pages = results.get("head_pages", {})
    rows, data, links = [], [], []
    for kind, es in h["top_edges"].items():
        for e in es:
            ch = e.get("channels") or []
            top = f"{ch[0]['channel']} ({num(ch[0]['share'], 2)})" if ch else "n/a"
            rows.append([kind, e["sender"], e["receiver"], num(e["score"]), num(e["z"], 1), top])
            data.append([kind, e["sender"], e["receiver"], e["score"], e["z"], ch[0]["share"] if ch else None])
            links.append([None, pages.get(e["sender"], {}).get("href"), pages.get(e["receiver"], {}).get("href"),
                          None, None, None])
    return Table("composition_edges", f"Strongest head-to-head composition in the weights of {h.get('model')} "
                 "(by z against a same-spectrum null), with the sender's top OV channel and its share of the edge.",
                 ["kind", "sender", "receiver", "score", "z", "top channel (share)"], rows, data, links, align="lllrrr")


def dashboard_features(results: dict) -> Table | None:
    d = results.get("dashboards")
    if not d or "missing" in d or not d.get("saes"):
        return None
    rows, data, links = [], [], []
    for s in d["saes"]:
        for f in s["features"]:
            rows.append([s["label"], str(f["id"]), num(f["density"], 4), num(f["max_act"]), tokens(f["top_tokens"])])
            data.append([s["label"], f["id"], f["density"], f["max_act"], f["top_tokens"]])
            links.append([s.get("href"), f.get("href"), None, None, None])
    return Table("dashboard_features", "Features with the largest activations (live, fired at least 5 times) in each "
                 "SAE's dashboards: firing density, maximum activation, top tokens.",
                 ["SAE", "feature", "density", "max act.", "top tokens"], rows, data, links,
                 align="lrrrp{0.45\\linewidth}")


def layer_numbers(results: dict) -> Table | None:
    lay = results.get("layers")
    if not lay or "missing" in lay:
        return None
    a = lay["analyses"]
    rows, data = [], []

    def add(what, value):
        if value is None or value is ABSENT:  # an analysis file written without this number
            return
        rows.append([what, value if isinstance(value, str) else num(value)])
        data.append([what, value])

    if "logit_lens" in a:
        lens = LensResult.from_json(a["logit_lens"])
        add(f"logit lens: prompts with the answer top-1 at the output ({lens.n_prompts} prompts)", lens.final_accuracy)
        add("logit lens: depth where the answer first becomes top-1 (median)", str(lens.first_top1.median_label))
    if "contributions" in a:
        block = ContributionsResult.from_json(a["contributions"]).halves["block_rel_norm"]
        add("block output / residual norm, first half of the layers (median)", block.first_half_median)
        add("block output / residual norm, second half of the layers (median)", block.second_half_median)
    if "skipping" in a:
        skip = SkipResult.from_json(a["skipping"]).halves
        add("KL from skipping one layer, first half (median, nats/token)", skip.skip_kl_first_half_median)
        add("KL from skipping one layer, second half (median, nats/token)", skip.skip_kl_second_half_median)
    if not rows:
        return None
    return Table("layer_numbers", "Layer analyses: logit lens on the circuit's prompts, sublayer contributions, "
                 "layer skipping.", ["quantity", "value"], rows, data, align="lr")


TABLES = (circuit_heads, circuit_faithfulness, circuit_methods, circuit_robustness, sae_metrics, dashboard_features, matching_pairs, matched_features, composition_edges,
          layer_numbers)


def build_tables(results: dict) -> list[Table]:
    return [t for t in (make(results) for make in TABLES) if t is not None]


# --- LaTeX ----------------------------------------------------------------------------------------

_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
          "|": r"\textbar{}", "\n": r"\textbackslash{}n", "\t": r"\textbackslash{}t", "\r": r"\textbackslash{}r"}
_NUMBER = re.compile(r"^-[\d.,]+(e[-+]\d+)?$")


def latex_escape(text: str) -> str:
    """Text safe in a LaTeX document compiled by pdflatex: specials escaped, characters outside Latin-1 as U+XXXX."""
    out = []
    for ch in str(text):
        if ch in _LATEX:
            out.append(_LATEX[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\textbackslash{{}}x{ord(ch):02x}")
        elif ord(ch) > 255 or 127 < ord(ch) < 161:
            out.append(f"U+{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _latex_cell(text: str) -> str:
    if _NUMBER.match(text):
        return "$-$" + latex_escape(text[1:])  # a minus sign, not a hyphen
    return latex_escape(text)


def to_latex(t: Table) -> str:
    """A booktabs ``table`` environment, ready to ``\\input`` (needs ``\\usepackage{booktabs}``)."""
    lines = [f"% {t.name}: written by saecircuits report; needs \\usepackage{{booktabs}}",
             "\\begin{table}[ht]", "\\centering", "\\small",
             f"\\caption{{{latex_escape(t.caption)}}}", f"\\label{{tab:{t.name.replace('_', '-')}}}",
             f"\\begin{{tabular}}{{{t.spec()}}}", "\\toprule",
             " & ".join(latex_escape(c) for c in t.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(_latex_cell(c) for c in row) + " \\\\" for row in t.rows]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


# --- Markdown and HTML ----------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~^])")


def md_escape(text: str) -> str:
    """Text safe in a Markdown table cell: specials backslash-escaped, HTML characters as entities, no newlines."""
    text = str(text).replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return html.escape(_MD_SPECIAL.sub(r"\\\1", text), quote=False)


def href(link: str) -> str:
    """A relative link, percent-encoded (the report's links are never absolute URLs)."""
    return quote(link, safe="/.#-_~")


def to_markdown(t: Table, with_links: bool = False) -> str:
    def cell(i: int, j: int, text: str) -> str:
        link = t.links[i][j] if with_links and t.links else None
        return f"[{md_escape(text)}]({href(link)})" if link else md_escape(text)

    lines = [f"**{md_escape(t.caption)}**", "", "| " + " | ".join(md_escape(c) for c in t.columns) + " |",
             "|" + "|".join("---" if j == 0 or a == "l" else "---:" for j, a in enumerate(_simple_align(t))) + "|"]
    lines += ["| " + " | ".join(cell(i, j, c) for j, c in enumerate(row)) + " |" for i, row in enumerate(t.rows)]
    return "\n".join(lines) + "\n"


def _simple_align(t: Table) -> list[str]:
    spec = re.sub(r"p\{[^}]*\}", "l", t.spec())
    return list(spec)[: len(t.columns)]


def to_html(t: Table) -> str:
    align = _simple_align(t)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for i, row in enumerate(t.rows):
        cells = []
        for j, c in enumerate(row):
            link = t.links[i][j] if t.links else None
            text = html.escape(c)
            if link:
                text = f'<a href="{html.escape(href(link))}">{text}</a>'
            cells.append(f'<td class="{"n" if align[j] == "r" else "t"}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="table-{html.escape(t.name)}"><caption>{html.escape(t.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def write_tables(tables: list[Table], out: str | Path) -> dict[str, dict[str, Path]]:
    """``out/<name>.tex`` and ``out/<name>.md`` for every table; returns {name: {tex, md}}."""
    out = ensure_dir(out)
    return {t.name: {"tex": write_text(out / f"{t.name}.tex", to_latex(t)),
                     "md": write_text(out / f"{t.name}.md", to_markdown(t))} for t in tables}
