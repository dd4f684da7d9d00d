"""Circuit reports for papers: one folder with a self-contained HTML report, the same in Markdown,
figures (PDF + PNG), LaTeX tables (booktabs) and ``results.json`` holding every number behind them.

    collect.py   run folder -> one results dict (every number, paths relative to the report folder)
    figures.py   results -> figures/<name>.png|.pdf
    tables.py    results -> tables/<name>.tex|.md
    render.py    results + tables + figures -> index.html, report.md, heads/<L.H>.html

``report_run(run_dir)`` collects then writes; ``regenerate(results_json, out)`` rewrites every table and
figure from ``results.json`` alone (``saecircuits report --from results.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import ensure_dir, moved_paths, plain_json, staged_dir, write_json
from saecircuits.report import figures, render, tables
from saecircuits.report.collect import collect, load_results
from saecircuits.report.render import headline

__all__ = ["collect", "load_results", "log_report", "regenerate", "report_run", "write_report"]


def _plain(results: dict) -> dict:
    """The results exactly as results.json holds them (strict JSON), so a first write and a regeneration
    from the file draw the same figures."""
    return json.loads(json.dumps(plain_json(results), allow_nan=False))


def write_report(results: dict, out_dir: str | Path, run=None) -> dict:
    """Write the report of ``results`` into ``out_dir``, replaced whole (an interrupted write leaves the previous
    report as it was, and nothing of an earlier report survives a new one); returns {what: path(s)}.

    ``run``: a ``saecircuits.core.tracking.Run``; the figures (``run.image``) and tables (``run.table``) are logged to it."""
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / "results.json").is_file():
        raise SaecircuitsError(f"{out} holds files that are not a report, and a report replaces its folder whole",
                               "write the report into a new or empty folder (--out)")
    ensure_dir(out.parent)
    results = _plain(results)
    with staged_dir(out) as tmp:
        paths: dict = {"results": write_json(tmp / "results.json", results)}
        paths["figures"] = figures.write_figures(results, tmp / "figures")
        table_list = tables.build_tables(results)
        paths["tables"] = tables.write_tables(table_list, tmp / "tables")
        paths.update(render.write_pages(results, table_list, paths["figures"], tmp))
    paths = moved_paths(paths, tmp, out)
    if run is not None:
        log_report(run, results, paths["figures"], table_list)
    return paths


def log_report(run, results: dict, figure_paths: dict, table_list: list) -> None:
    """Log the report's figures (``run.image``), tables (``run.table``) and headline numbers to a W&B run."""
    for name, files in figure_paths.items():
        run.image(f"report/{name}", next(p for p in files if p.suffix == ".png"))
    for t in table_list:
        run.table(f"report/{t.name}", t.data_columns or t.columns, _typed_rows(t.data))
    run.summary({f"report/{label}": value for value, label in headline(results)})


def _typed_rows(data: list[list]) -> list[list]:
    """Rows W&B accepts: lists joined as text, and a column that mixes text and numbers all text."""
    rows = [[", ".join(map(str, v)) if isinstance(v, list) else v for v in row] for row in data]
    for j in range(len(rows[0]) if rows else 0):
        kinds = {isinstance(r[j], str) for r in rows if r[j] is not None}
        if len(kinds) > 1:
            for r in rows:
                r[j] = None if r[j] is None else str(r[j])
    return rows


def report_run(run_dir: str | Path, out_dir: str | Path | None = None, model=None, run=None,
               attention: bool = True, studies: str | Path | None = None) -> dict:
    """Collect ``run_dir`` (and the study folders under ``studies``) and write its report into ``out_dir``
    (default ``run_dir/report``)."""
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    results = collect(run_dir, out, model=model, attention=attention, studies=studies)
    return write_report(results, out, run=run)


def _rebase(obj, old: Path, new: Path):
    """Links (keys ``href`` / ``*_href``) relative to ``old`` made relative to ``new``."""
    if isinstance(obj, dict):
        return {k: (Path(os.path.relpath(old / v, new)).as_posix() if (k == "href" or k.endswith("_href")) and
                    isinstance(v, str) and not _internal(v) else _rebase(v, old, new)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, old, new) for v in obj]
    return obj


def _internal(link: str) -> bool:
    """A link to a page the report itself writes (it moves with the report)."""
    return link.startswith("heads/")


def regenerate(results_json: str | Path, out_dir: str | Path | None = None, run=None) -> dict:
    """Rewrite the report from a ``results.json`` alone (default: in its own folder); links to the run's
    dashboard pages are rebased so they still resolve from ``out_dir``."""
    src = Path(results_json)
    results = load_results(src)
    out = Path(out_dir) if out_dir is not None else src.parent
    old, new = src.parent.resolve(), ensure_dir(out).resolve()
    if old != new:
        results = _rebase(results, old, new)
    try:
        return write_report(results, out, run=run)
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as e:  # a field deeper in of the wrong shape
        raise SaecircuitsError(f"{src} does not hold what a report results.json holds ({type(e).__name__}: {e}); "
                               "the report was not written", "write it again from its run: saecircuits report RUN_DIR"
                               ) from None
