"""Static HTML for feature dashboards: an index page and one page per feature, no network needed.

Styles and the index's search/sort script are inline; histograms are inline SVG. Every string that
comes from a tokenizer, a text or a file name goes through ``html.escape`` (``visible`` for tokens,
which also shows whitespace: a newline as ↵, a tab as ⇥, a token of spaces as ·). The same feature
sections are used for the W&B pages (``group_page``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

SHADES = 10
_WS = {"\n": "↵", "\t": "⇥", "\r": "␍", " ": "·", "\u00a0": "⍽"}
# other invisible characters (controls, zero-width, bidi marks) are shown as their code point
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em 2em;color:#1d1d1f;background:#fff}
h1{font-size:1.45em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em;border-bottom:1px solid #ddd}
a{color:#0a58ca;text-decoration:none}a:hover{text-decoration:underline}
.meta{color:#666}.dead{color:#b00020;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:2em}.grid>div{min-width:16em}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f5;cursor:pointer;user-select:none;position:sticky;top:0}
tr:nth-child(even) td{background:#fafafa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.tok,.ex{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre}
.ex{display:block;overflow-x:auto;padding:2px 0;border-bottom:1px solid #f0f0f0}
.ex .v{display:inline-block;width:5.5em;color:#555;text-align:right;margin-right:.8em}
.w{color:#999}.m{outline:1.5px solid #c43;border-radius:2px}
""" + "".join(f".s{i}{{background:rgba(255,110,0,{0.08 + 0.8 * i / SHADES:.2f})}}" for i in range(1, SHADES + 1)) + """
.pos{color:#0b7a3b}.neg{color:#b00020}svg text{font-size:10px;fill:#555}
input[type=search]{font-size:1em;padding:4px 8px;width:24em}
"""

INDEX_JS = """
const tb=document.querySelector('#features tbody');const rows=[...tb.rows];
const q=document.getElementById('q');const hide=document.getElementById('hidedead');
const count=document.getElementById('count');
function filt(){const s=q.value.toLowerCase();let n=0;for(const r of rows){
 const ok=(!hide.checked||!r.classList.contains('deadrow'))&&(!s||r.textContent.toLowerCase().includes(s));
 r.style.display=ok?'':'none';if(ok)n++;}count.textContent=n;}
q.addEventListener('input',filt);hide.addEventListener('change',filt);
let sortCol=-1,asc=true;
document.querySelectorAll('#features th').forEach((th,i)=>th.addEventListener('click',()=>{
 asc=(sortCol===i)?!asc:(th.dataset.type!=='num');sortCol=i;
 const key=r=>{const c=r.cells[i];return th.dataset.type==='num'?parseFloat(c.dataset.v):c.textContent.toLowerCase();};
 rows.sort((a,b)=>{const x=key(a),y=key(b);return (x<y?-1:x>y?1:0)*(asc?1:-1);});
 for(const r of rows)tb.appendChild(r);}));
filt();
"""


def esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def visible(s: str) -> str:
    """A token string as HTML: escaped, with whitespace made visible."""
    if s == "":
        return '<span class="w">∅</span>'
    if not s.strip() and not _INVISIBLE.search(s):
        return '<span class="w">' + "".join(_WS.get(ch, "·") for ch in s) + "</span>"
    out = esc(s)
    for ch in "\n\t\r":
        out = out.replace(ch, f'<span class="w">{_WS[ch]}</span>')
    return _INVISIBLE.sub(lambda m: f'<span class="w">&lt;U+{ord(m.group()):04X}&gt;</span>', out)


def fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) >= 0.01 else f"{x:.2e}"


def document(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}{f'<script>{script}</script>' if script else ''}</body></html>\n")


# ---------------------------------------------------------------- pieces


def example(value: float, ids: Sequence[int], acts: Sequence[float], center: int, label: str, scale: float,
            vis: dict[int, str]) -> str:
    """One context window: its maximum (``label`` on hover), then each token shaded by activation / ``scale``.
    ``vis`` maps token ids to their HTML (``visible``); ids missing from it (padding) are skipped."""
    parts = [f'<span class="ex"><span class="v" title="{esc(label)}">{fmt(value)}</span>']
    k = SHADES / scale
    for j, (t, a) in enumerate(zip(ids, acts, strict=True)):
        tok = vis.get(t)
        if tok is None:
            continue
        if a > 0:
            cls = f"s{min(SHADES, int(a * k) + 1)} m" if j == center else f"s{min(SHADES, int(a * k) + 1)}"
            parts.append(f'<span class="{cls}" title="{a:.3g}">{tok}</span>')
        elif j == center:
            parts.append(f'<span class="m" title="0">{tok}</span>')
        else:
            parts.append(tok)
    parts.append("</span>")
    return "".join(parts)


def histogram_svg(counts: Sequence[int], edges: Sequence[float], width: int = 420, height: int = 110) -> str:
    """Bars for ``counts`` between ``edges`` (len(counts) + 1, log-spaced), with hover titles."""
    if not counts or max(counts) == 0:
        return '<p class="meta">no activations</p>'
    top = max(counts)
    n = len(counts)
    bw = width / n
    bars = []
    for i, c in enumerate(counts):
        h = (height - 20) * c / top
        bars.append(f'<rect x="{i * bw:.1f}" y="{height - 14 - h:.1f}" width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}" '
                    f'fill="#f08030"><title>{fmt(edges[i])} to {fmt(edges[i + 1])}: {c:,}</title></rect>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="activation histogram">{"".join(bars)}'
            f'<text x="0" y="{height - 2}">{fmt(edges[0])}</text>'
            f'<text x="{width}" y="{height - 2}" text-anchor="end">{fmt(edges[-1])}</text>'
            f'<text x="{width / 2}" y="{height - 2}" text-anchor="middle">activation (log scale)</text>'
            f'<text x="2" y="10">max count {top:,}</text></svg>')


def logit_table(rows: Sequence[tuple[int, float]], cls: str, vis: dict[int, str]) -> str:
    if not rows:
        return '<p class="meta">no linear path from this site to the logits</p>'
    body = "".join(f'<tr><td class="tok">{vis[t]}</td><td class="n {cls}">{v:+.3f}</td></tr>' for t, v in rows)
    return f"<table>{body}</table>"


# ---------------------------------------------------------------- a feature


def feature_section(fv: dict, vis: dict[int, str], link: str = "{}.html") -> str:
    """A feature's dashboard as an HTML fragment. ``fv`` is a feature view (see ``build.feature_view``),
    ``vis`` the HTML of each token id; ``link`` formats another feature's id into its address."""
    i = fv["id"]
    out = [f'<section id="f{i}"><h1>Feature {i}']
    if fv["dead"]:
        out.append(' <span class="dead">dead</span>')
    out.append("</h1>")
    if fv["dead"]:
        out.append(f'<p class="dead">Dead: it never fired in {fv["n_tokens"]:,} tokens. The weight-based views below '
                   "still describe its decoder direction.</p>")
    else:
        out.append(f'<p class="meta">density {fv["density"]:.3e} ({fv["fired"]:,} of {fv["n_tokens"]:,} tokens; '
                   f'1 in {fv["n_tokens"] / max(fv["fired"], 1):,.0f}) &middot; max activation {fmt(fv["max_act"])} '
                   f'&middot; mean when firing {fmt(fv["mean_act"])}</p>')
    out.append('<div class="grid">')
    if not fv["dead"]:
        out.append(f'<div><h2>Activation histogram</h2>{histogram_svg(fv["hist_counts"], fv["hist_edges"])}</div>')
    out.append(f'<div><h2>Logits raised</h2>{logit_table(fv["pos_logits"], "pos", vis)}</div>')
    out.append(f'<div><h2>Logits lowered</h2>{logit_table(fv["neg_logits"], "neg", vis)}</div>')
    nb = "".join(f'<tr><td><a href="{esc(link.format(j))}">{j}</a>{" <span class=dead>dead</span>" if dead else ""}</td>'
                 f'<td class="n">{c:.3f}</td></tr>' for j, c, dead in fv["neighbours"])
    out.append(f"<div><h2>Nearest features (decoder cosine)</h2><table>{nb}</table></div></div>")
    if not fv["dead"]:
        scale = fv["max_act"] or 1.0
        out.append('<h2>Top activations</h2><p class="meta">one example per context, centred on its maximum</p>')
        out.extend(example(*ex, scale=scale, vis=vis) for ex in fv["top"])
        for band in fv["bands"]:
            out.append(f"<h2>{esc(band['label'])}</h2>")
            out.extend(example(*ex, scale=scale, vis=vis) for ex in band["examples"])
    out.append("</section>")
    return "".join(out)


def feature_page(fv: dict, vis: dict[int, str], meta: dict, n_features: int) -> str:
    i = fv["id"]
    nav = ['<p class="meta"><a href="../index.html">all features</a>']
    if i > 0:
        nav.append(f' &middot; <a href="{i - 1}.html">&larr; {i - 1}</a>')
    if i + 1 < n_features:
        nav.append(f' &middot; <a href="{i + 1}.html">{i + 1} &rarr;</a>')
    nav.append(f' &middot; {esc(meta["sae_name"])} on {esc(meta["hook"])} of {esc(meta["model"])}</p>')
    return document(f"Feature {i} · {meta['sae_name']}", "".join(nav) + feature_section(fv, vis))


def group_page(fvs: Sequence[dict], vis: dict[int, str], meta: dict) -> str:
    """Several features on one page (for W&B), links within the page."""
    body = [f'<p class="meta">{esc(meta["sae_name"])} on {esc(meta["hook"])} of {esc(meta["model"])}: features '
            f'{fvs[0]["id"]} to {fvs[-1]["id"]}</p>']
    body.extend(feature_section(fv, vis, link="#f{}") for fv in fvs)
    return document(f"Features {fvs[0]['id']}-{fvs[-1]['id']}", "".join(body))


# ---------------------------------------------------------------- the index


def index_page(rows: Sequence[dict], vis: dict[int, str], meta: dict) -> str:
    """The searchable, sortable table of all features. A row: id, dead, density, max_act, mean_act,
    top_tokens (token ids) and pos_logits ((token id, value) pairs)."""
    n_dead = sum(r["dead"] for r in rows)
    head = ("<tr><th data-type=num>feature</th><th data-type=num>density</th><th data-type=num>max act.</th>"
            "<th data-type=num>mean act.</th><th>top tokens</th><th>logits raised</th></tr>")
    body = []
    for r in rows:
        toks = " ".join(f'<span class="tok">{vis[t]}</span>' for t in r["top_tokens"])
        logits = " ".join(f'<span class="tok">{vis[t]}</span>' for t, _ in r["pos_logits"][:5])
        dead = '<span class="dead">dead</span> ' if r["dead"] else ""
        body.append(
            f'<tr{" class=deadrow" if r["dead"] else ""}><td class="n" data-v="{r["id"]}"><a href="features/{r["id"]}.html">{r["id"]}</a></td>'
            f'<td class="n" data-v="{r["density"]:.6e}">{dead}{r["density"]:.2e}</td>'
            f'<td class="n" data-v="{r["max_act"]:.6g}">{fmt(r["max_act"])}</td>'
            f'<td class="n" data-v="{r["mean_act"]:.6g}">{fmt(r["mean_act"])}</td><td>{toks}</td><td>{logits}</td></tr>')
    info = " &middot; ".join(f"{esc(k)}: {esc(v)}" for k, v in meta.items() if k in ("model", "hook", "text", "tokens", "architecture"))
    top = (f'<h1>{esc(meta["sae_name"])}</h1><p class="meta">{info}</p>'
           f'<p>{len(rows):,} features, {len(rows) - n_dead:,} live, <span class="dead">{n_dead:,} dead</span> '
           f'(never fired in {meta["tokens"]:,} tokens). Click a column to sort.</p>'
           '<p><input type="search" id="q" placeholder="search features, tokens..."> '
           '<label><input type="checkbox" id="hidedead"> hide dead</label> &middot; <span id="count"></span> shown</p>')
    return document(f"Features of {meta['sae_name']}", f'{top}<table id="features"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>',
                    INDEX_JS)

