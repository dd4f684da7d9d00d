"""The report as a self-contained ``index.html`` (figures embedded, CSS inline, no external URL), as
``report.md`` (figures as ``figures/*.png``), and one small page a head (``heads/<L.H>.html``).

Every number shown is read from the results dict (through the tables, or formatted here with
``tables.num``); every piece of text is escaped (``html.escape``, ``tables.md_escape``).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from saecircuits.core.files import ensure_dir, write_text
from saecircuits.report.studies import studies_html, studies_markdown, studies_section
from saecircuits.report.tables import Table, href, md_escape, num, to_html, to_markdown

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fff}
main{max-width:1200px;margin:0 auto;padding:1em 2em 4em}
nav{position:sticky;top:0;background:#f6f7f9;border-bottom:1px solid #ddd;padding:.5em 2em;font-size:.9em;z-index:2}
nav a{margin-right:1.1em}
h1{font-size:1.6em;margin:.6em 0 .2em}h2{font-size:1.3em;margin:1.8em 0 .5em;border-bottom:2px solid #e3e3e8}
h3{font-size:1.05em;margin:1.3em 0 .4em}
a{color:#0a58ca;text-decoration:none}a:hover{text-decoration:underline}
.meta{color:#666}.missing{color:#8a6d3b;background:#fcf8e3;padding:.4em .8em;border-radius:4px}
.cards{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:12em;background:#fafbfc}
.card .v{font-size:1.35em;font-weight:600}.card .l{color:#555;font-size:.85em}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
caption{caption-side:top;text-align:left;color:#444;padding:.3em 0;max-width:60em}
th,td{padding:3px 9px;border-bottom:1px solid #eee;vertical-align:top}th{background:#f3f3f5;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em}
code,.tok{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.att td{width:1.6em;height:1.6em;padding:0;border:1px solid #fff}.att th{font-weight:normal;font-size:.75em;white-space:pre}
"""

SECTIONS = [("summary", "Summary"), ("training", "SAE training"), ("dashboards", "Feature dashboards"),
            ("matching", "Feature matching"), ("heads", "Head graph"), ("circuit", "Circuit"),
            ("layers", "Layer analysis"), ("studies", "Seed-paper studies"), ("reproducibility", "Reproducibility")]

FIGURE_CAPTIONS = {
    "training_curves": "SAE training loss and explained variance against training tokens.",
    "frontier": "L0 against explained variance of every SAE (held-out evaluation); colour: CE loss recovered.",
    "similarity_heatmap": "Layer x layer similarity of the SAEs' features (mean matched r, share r > 0.7, decoder SVCCA and CKA; * p < 0.01 against the shuffled null).",
    "circuit_graph": "The head circuit: heads placed by layer and head, MLPs above; edges from the weight graph (Q/K/V composition) and from the edge circuit found on the task.",
    "node_scores": "Each head's and MLP's score from the discovery method that scores nodes, on the train prompts (boxes: the circuit's nodes).",
    "faithfulness_curves": "Faithfulness f(k) on held-out test prompts of every discovery method against circuit size (MIB's grid), with 95% bootstrap intervals; grey band: |1 - f| <= 0.1.",
    "circuit_faithfulness": "The reported head circuit under every ablation (task metric, test prompts), beside random circuits of its size.",
    "attention_patterns": "Attention patterns of the circuit's key heads on its first test prompt (rows: query, columns: key).",
    "layers_logit_lens": "Logit lens on the circuit's prompts: probability of the answer and share of prompts where it is the top token, by depth (last position); rank of the answer per prompt.",
    "layers_contributions": "Sublayer contributions: norm of each attention / MLP / block output relative to the residual stream it reads, and its cosine with it.",
    "layers_skipping": "Layer skipping: output KL from skipping each layer (or swapping it with the next), and the change of every later block's contribution.",
}


def _e(x) -> str:
    return html.escape(str(x))


def _missing(section: dict) -> str:
    return f'<p class="missing">Not available: {_e(section["missing"])}</p>'


def _ok(section) -> bool:
    return bool(section) and "missing" not in section


def _img(figures: dict[str, Path], name: str) -> str:
    if name not in figures:
        return ""
    png = next(p for p in figures[name] if p.suffix == ".png")
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    cap = FIGURE_CAPTIONS.get(name, name.replace("_", " "))
    return (f'<figure id="fig-{_e(name)}"><img alt="{_e(cap)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(cap)} (figures/{_e(name)}.pdf)</figcaption></figure>")


def _card(value: str, label: str) -> str:
    return f'<div class="card"><div class="v">{_e(value)}</div><div class="l">{_e(label)}</div></div>'


# --- the headline ---------------------------------------------------------------------------------

def headline(results: dict) -> list[tuple[str, str]]:
    """The summary's (value, label) pairs, read from the results."""
    out = []
    c = results.get("circuit")
    if _ok(c):
        out.append((str(c["size"]), f"circuit nodes: {len(c['heads'])} heads, {len(c['mlps'])} MLPs ({c['selected_by']}, "
                                    "sized on validation)"))
        for abl in ("counterfactual", "mean-clean"):
            cell = (c["test"].get(abl) or {}).get("task")
            if cell and "f" in cell:
                rand = f"; random {num(cell['random_mean'])}" if "random_mean" in cell else ""
                out.append((num(cell["f"]), f"test faithfulness, {abl} ablation{rand}"))
    t = results.get("training")
    if _ok(t) and t["saes"]:
        evs = [s["explained_variance"] for s in t["saes"] if s.get("explained_variance") is not None]
        out.append((str(len(t["saes"])), f"SAEs trained on {num(t.get('tokens'))} tokens"))
        if evs:
            out.append((f"{num(min(evs))} - {num(max(evs))}", "explained variance (held out)"))
    m = results.get("matching")
    if _ok(m) and m["pairs"]:
        p = max(m["pairs"], key=lambda p: p["mean_r"] or 0)
        out.append((num(p["mean_r"]), f"best mean matched r ({p['a']} / {p['b']})"))
    h = results.get("heads")
    if _ok(h):
        out.append((num(h["n_edges"]), f"composition edges kept of {num(h.get('pairs'))} head pairs"))
    return out


# --- HTML sections --------------------------------------------------------------------------------

# sections drawn from a stage's results: a missing or failed stage shows why instead
DATA_SECTIONS = {"training", "dashboards", "matching", "heads", "circuit", "layers"}


def _section_html(key: str, results: dict, tables: dict[str, Table], figures: dict[str, Path]) -> str:
    T = lambda name: to_html(tables[name]) if name in tables else ""  # noqa: E731
    F = lambda name: _img(figures, name)  # noqa: E731
    if key == "summary":
        cards = "".join(_card(v, label) for v, label in headline(results))
        c = results.get("circuit")
        lead = ""
        if _ok(c):
            lead = (f"<p>Circuit heads: {', '.join(_head_link(results, h) for h in c['heads'])}"
                    f"{'; MLPs: ' + _e(', '.join(c['mlps'])) if c['mlps'] else ''}.</p>"
                    f"<p class=meta>Example test prompt: <code>{_e((c.get('examples') or [''])[0])}</code></p>")
        return f'<div class="cards">{cards}</div>{lead}'
    if key in DATA_SECTIONS and not _ok(results[key]):
        return _missing(results[key])
    if key == "training":
        t = results["training"]
        return (f"<p>{num(len(t['saes']))} SAEs on {_e(t.get('model'))}, {num(t.get('tokens'))} tokens, "
                f"{num(t.get('steps'))} steps, {num(t.get('seconds'), 1)} s ({num(t.get('tokens_per_second'), 0)} tokens/s).</p>"
                + T("sae_metrics") + F("training_curves") + F("frontier"))
    if key == "dashboards":
        d = results["dashboards"]
        items = "".join(f'<li><a href="{_e(href(s["href"]))}">{_e(s["label"])}: {_e(s["name"])}</a> '
                        f"({num(s['n_live'])} live / {num(s['n_dead'])} dead of {num(s['n_features'])} features, "
                        f"{num(s['tokens'])} tokens)</li>" for s in d["saes"])
        return f"<ul>{items}</ul>" + T("dashboard_features")
    if key == "matching":
        m = results["matching"]
        return (f"<p>Features matched by {_e(m.get('method'))} assignment of activation correlations over "
                f"{num(m.get('tokens'))} tokens; similarity p-values from {num(m.get('null'))} shuffled pairings.</p>"
                + T("matching_pairs") + F("similarity_heatmap") + T("matched_features"))
    if key == "heads":
        h = results["heads"]
        kinds = ", ".join(f"{k} {num(v)}" for k, v in h["edge_kinds"].items())
        return (f"<p>Weight graph of {_e(h.get('model'))}: {num(h['n_nodes'])} heads, {num(h['n_edges'])} edges kept "
                f"({kinds}) of {num(h.get('pairs'))} sender/receiver pairs, {num(h.get('seconds'), 1)} s. "
                f"{_e(h.get('note') or '')}</p>" + T("composition_edges"))
    if key == "circuit":
        return _circuit_html(results, T, F)
    if key == "layers":
        lay = results["layers"]
        return T("layer_numbers") + "".join(F(f"layers_{n}") for n in lay["analyses"])
    if key == "studies":
        st = studies_section(results)
        return _missing(st) if not _ok(st) else studies_html(st)
    if key == "reproducibility":
        return _repro_html(results)
    raise KeyError(key)


def _head_link(results: dict, h: str) -> str:
    page = results.get("head_pages", {}).get(h)
    return f'<a href="{_e(href(page["href"]))}">{_e(h)}</a>' if page else _e(h)


def _circuit_lead(c: dict) -> list[str]:
    """The circuit section's opening sentences (plain text), shared by the HTML and the Markdown."""
    sp = c.get("splits") or {}
    lead = [f"Task {c['task']} on {c['model']}. Discovery saw {sp.get('train')} train prompts, the circuit's size was "
            f"chosen on {sp.get('val')} validation prompts, and every number below is on {sp.get('test')} test prompts "
            f"(test holds templates train lacks: {'; '.join(c.get('held_out_templates') or []) or 'none'}).",
            f"The head circuit: {c['size']} {'heads (every MLP kept)' if c.get('mlps_kept') else 'nodes'} "
            f"({len(c['heads'])} heads, {len(c['mlps'])} MLPs) from {c['selected_by']}, validation f {num(c['val_f'])} "
            "under counterfactual ablation."]
    flips = c.get("verdict_flips")
    lead.append("Its verdict (|1 - f| <= 0.1) depends on the ablation or the metric: read the table before the "
                "number." if flips else "Its verdict is the same under every ablation and metric.")
    e = c.get("edge_circuit")
    if e:
        f = ((e["test"].get("counterfactual") or {}).get("task") or {}).get("f")
        lead.append(f"The edge circuit: {e['count']} edges from {e['method']}, test f {num(f)} (counterfactual).")
    return lead


def _circuit_html(results: dict, T, F) -> str:
    c = results["circuit"]
    parts = ["<p>" + " ".join(_e(x) for x in _circuit_lead(c)) + "</p>"]
    if c.get("examples"):
        ex = "".join(f"<li><code>{_e(a)}</code> / <code>{_e(b)}</code></li>"
                     for a, b in zip(c["examples"], c.get("corrupted_examples") or c["examples"]))
        parts.append(f"<p class=meta>Test prompts / their counterfactuals:</p><ul>{ex}</ul>")
    parts += [F("circuit_graph"), F("node_scores"), T("circuit_heads"), F("circuit_faithfulness"), T("circuit_faithfulness"),
              F("faithfulness_curves"), T("circuit_methods"), T("circuit_robustness")]
    att = results.get("attention") or {}
    if _ok(att):
        parts.append(f"<p class=meta>Prompt: <code>{_e(att.get('prompt', ''))}</code>; {_e(att.get('selection', ''))}.</p>")
        parts.append(F("attention_patterns"))
    else:
        parts.append(_missing(att))
    comp = c.get("composition") or {}
    if comp.get("rule"):
        parts.append(f"<p class=meta>Composition edges in the graph: {_e(comp['rule'])}.</p>")
    return "".join(parts)


def _repro_html(results: dict) -> str:
    meta = results["meta"]
    versions = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in meta["versions"].items())
    seeds = "".join(f"<tr><td>{_e(k)}</td><td class=n>{_e(v)}</td></tr>" for k, v in meta["seeds"].items())
    secs = "".join(f"<tr><td>{_e(k)}</td><td class=n>{num(v.get('seconds'), 1)}</td></tr>" for k, v in meta["stages"].items())
    return (f"<p>Regenerate every table and figure from <code>results.json</code> alone: "
            f"<code>{_e(meta['command'])}</code>. Model {_e(meta.get('model'))} ({_e(meta.get('hub_name'))}); "
            f"report written {_e(meta['date'])}.</p>"
            f"<h3>Package versions</h3><table>{versions}</table>"
            f"<h3>Seeds</h3><table>{seeds}</table>"
            f"<h3>Stage times (s)</h3><table>{secs}</table>"
            f"<h3>Configuration</h3><pre>{_e(json.dumps(meta.get('config'), indent=2))}</pre>")


def render_html(results: dict, tables: list[Table], figures: dict[str, Path]) -> str:
    tabs = {t.name: t for t in tables}
    nav = "".join(f'<a href="#{k}">{_e(title)}</a>' for k, title in SECTIONS)
    body = "".join(f'<section id="{k}"><h2>{_e(title)}</h2>{_section_html(k, results, tabs, figures)}</section>'
                   for k, title in SECTIONS)
    meta = results["meta"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_e(meta['title'])}</title>"
            f"<style>{CSS}</style></head><body><nav>{nav}</nav><main><h1>{_e(meta['title'])}</h1>"
            f"<p class=meta>run {_e(meta.get('run'))}, model {_e(meta.get('model'))}, written {_e(meta['date'])}</p>"
            f"{body}</main></body></html>\n")


# --- Markdown -------------------------------------------------------------------------------------

def render_markdown(results: dict, tables: list[Table], figures: dict[str, Path]) -> str:
    tabs = {t.name: t for t in tables}
    meta = results["meta"]

    def T(name: str) -> str:
        return to_markdown(tabs[name], with_links=True) + "\n" if name in tabs else ""

    def F(name: str) -> str:
        if name not in figures:
            return ""
        cap = FIGURE_CAPTIONS.get(name, name.replace("_", " "))
        return f"![{md_escape(cap)}](figures/{name}.png)\n\n*{md_escape(cap)}* ([PDF](figures/{name}.pdf))\n\n"

    out = [f"# {md_escape(meta['title'])}\n", f"run {md_escape(meta.get('run'))}, model {md_escape(meta.get('model'))}, "
           f"written {md_escape(meta['date'])}\n"]
    out += _md_summary(results)
    out += _md_stages(results, T, F)
    out += _md_circuit(results, T, F)
    lay = results["layers"]
    out.append("## Layer analysis\n")
    out.append(_md_missing(lay) if not _ok(lay) else T("layer_numbers") + "".join(F(f"layers_{n}") for n in lay["analyses"]))
    st = studies_section(results)
    out.append("## Seed-paper studies\n")
    out += [_md_missing(st)] if not _ok(st) else studies_markdown(st)
    out += _md_reproducibility(meta)
    return "\n".join(out)


def _md_missing(section: dict) -> str:
    return f"*Not available: {md_escape(section['missing'])}*\n\n"


def _md_summary(results: dict) -> list[str]:
    """The summary's lines: the headline numbers and the circuit's heads (linked to their pages)."""
    out = ["## Summary\n"]
    out += [f"- **{md_escape(v)}** {md_escape(label)}" for v, label in headline(results)]
    c = results.get("circuit")
    if _ok(c):
        heads = ", ".join(f"[{h}]({href(results['head_pages'][h]['href'])})" if h in results.get("head_pages", {}) else h
                          for h in c["heads"])
        out.append(f"- circuit heads: {heads}")
    out.append("")
    return out


def _md_stages(results: dict, T, F) -> list[str]:
    """The SAE training, dashboards, matching and head graph sections (``T`` / ``F``: a table / figure by name)."""
    out = []
    t = results["training"]
    out.append("## SAE training\n")
    out.append(_md_missing(t) if not _ok(t) else T("sae_metrics") + F("training_curves") + F("frontier"))
    d = results["dashboards"]
    out.append("## Feature dashboards\n")
    if _ok(d):
        out += [f"- [{md_escape(s['label'])}: {md_escape(s['name'])}]({href(s['href'])}) ({num(s['n_live'])} live / "
                f"{num(s['n_dead'])} dead of {num(s['n_features'])} features)" for s in d["saes"]]
        out.append("\n" + T("dashboard_features"))
    else:
        out.append(_md_missing(d))
    m = results["matching"]
    out.append("## Feature matching\n")
    out.append(_md_missing(m) if not _ok(m) else T("matching_pairs") + F("similarity_heatmap") + T("matched_features"))
    h = results["heads"]
    out.append("## Head graph\n")
    out.append(_md_missing(h) if not _ok(h) else
               f"{num(h['n_nodes'])} heads, {num(h['n_edges'])} composition edges kept of {num(h.get('pairs'))} pairs.\n\n"
               + T("composition_edges"))
    return out


def _md_circuit(results: dict, T, F) -> list[str]:
    """The circuit section: task and metric, the circuit's figures and tables, the attention patterns."""
    out = ["## Circuit\n"]
    c = results.get("circuit")
    if not _ok(c):
        return out + [_md_missing(c)]
    out.append(" ".join(md_escape(x) for x in _circuit_lead(c)) + "\n")
    out += [F("circuit_graph"), F("node_scores"), T("circuit_heads"), F("circuit_faithfulness"), T("circuit_faithfulness"),
            F("faithfulness_curves"), T("circuit_methods"), T("circuit_robustness")]
    att = results.get("attention") or {}
    if _ok(att):
        out.append(f"Prompt: `{md_escape(att.get('prompt', ''))}`\n\n" + F("attention_patterns"))
    else:
        out.append(_md_missing(att))
    return out


def _md_reproducibility(meta: dict) -> list[str]:
    """How to regenerate the report, the package versions, the seeds and the run's configuration."""
    out = ["## Reproducibility\n"]
    out.append(f"Regenerate every table and figure from `results.json` alone: `{meta['command']}`\n")
    out += [f"- {md_escape(k)}: {md_escape(v)}" for k, v in meta["versions"].items()]
    out.append("\nSeeds: " + ", ".join(f"{md_escape(k)} = {md_escape(v)}" for k, v in meta["seeds"].items()) + "\n")
    out.append("```json\n" + json.dumps(meta.get("config"), indent=2).replace("```", "'''") + "\n```\n")
    return out


# --- per-head pages -------------------------------------------------------------------------------

def _edge_rows(edges: list[dict], other: str) -> str:
    if not edges:
        return "<p class=meta>none kept</p>"
    rows = "".join(f"<tr><td>{_e(e['type'])}</td><td>{_e(e[other])}</td><td class=n>{num(e['score'])}</td>"
                   f"<td class=n>{num(e['z'], 1)}</td></tr>" for e in edges)
    return f"<table><thead><tr><th>kind</th><th>{_e(other)}</th><th>score</th><th>z</th></tr></thead><tbody>{rows}</tbody></table>"


def _attention_table(tokens: list[str], pattern: list[list[float]]) -> str:
    head = "".join(f"<th>{_e(json.dumps(t, ensure_ascii=False))}</th>" for t in tokens)
    rows = []
    for t, row in zip(tokens, pattern):
        cells = "".join(f'<td title="{num(v)}" style="background:rgba(33,102,172,{min(1.0, max(0.0, v)):.3f})"></td>'
                        for v in row)
        rows.append(f"<tr><th>{_e(json.dumps(t, ensure_ascii=False))}</th>{cells}</tr>")
    return f'<table class="att"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_head_page(results: dict, head: str) -> str:
    p = results["head_pages"][head]
    c = results["circuit"]
    parts = [f'<p class=meta><a href="../index.html#circuit">report</a> &middot; {_e(c["model"])} &middot; task '
             f"{_e(c['task'])}</p><h1>Head {_e(head)}</h1>",
             f"<p>{'In the circuit' if p['in_circuit'] else 'Not in the circuit'} of {c['size']} nodes "
             f"({_e(c['selected_by'])}, sized on validation)."
             + (f" Its {_e(c['node_scores']['method'])} score: <b>{num(p['score'])}</b>." if p.get("score") is not None
                else "") + "</p>",
             "<h2>Composition into this head (weights)</h2>", _edge_rows(p["composition_in"], "sender"),
             "<h2>Composition from this head (weights)</h2>", _edge_rows(p["composition_out"], "receiver")]
    if p["circuit_edges"]:
        rows = "".join(f"<tr><td>{_e(e['sender'])}</td><td>{_e(e['receiver'])}{':' + _e(e['input']) if e.get('input') else ''}"
                       "</td></tr>" for e in p["circuit_edges"])
        parts.append("<h2>Edges of the edge circuit between circuit nodes</h2><table><thead><tr><th>sender</th>"
                     f"<th>receiver</th></tr></thead><tbody>{rows}</tbody></table>")
    att = results.get("attention") or {}
    for h in att.get("heads", []) if _ok(att) else []:
        if h["head"] == head:
            parts.append(f"<h2>Attention pattern</h2><p class=meta>Prompt <code>{_e(att.get('prompt', ''))}</code>; "
                         "rows: query token, columns: key token.</p>" + _attention_table(att["tokens"], h["pattern"]))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Head {_e(head)}</title><style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n")


def write_pages(results: dict, tables: list[Table], figures: dict[str, Path], out: Path) -> dict:
    """index.html, report.md and heads/<L.H>.html under ``out``."""
    paths = {"html": write_text(out / "index.html", render_html(results, tables, figures)),
             "markdown": write_text(out / "report.md", render_markdown(results, tables, figures)), "heads": []}
    if results.get("head_pages"):
        ensure_dir(out / "heads")
        for h in results["head_pages"]:
            paths["heads"].append(write_text(out / "heads" / f"{h}.html", render_head_page(results, h)))
    return paths
