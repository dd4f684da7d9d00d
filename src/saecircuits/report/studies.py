"""The report's section on the seed papers' studies (``saecircuits study ...``): each study folder's summary (our
numbers beside the paper's), gathered from a results folder such as ``circuits/results``."""

from __future__ import annotations

from pathlib import Path

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import read_json

STUDIES = {"talking_heads.json": "Talking Heads (Merullo et al. 2024)",
           "component_reuse.json": "Circuit component reuse (Merullo et al. 2024)",
           "retrieval_heads.json": "Retrieval heads (Wu et al. 2024)"}


def collect_studies(folder: str | Path | None) -> dict:
    """``{"studies": [{"study", "folder", "model", "summary"}]}`` for every study folder directly under ``folder``,
    ordered by study then model; ``{"missing": why}`` when there is none."""
    if folder is None:
        return {"missing": "no studies folder was given (saecircuits report RUN --studies circuits/results)"}
    root = Path(folder)
    if not root.is_dir():
        raise SaecircuitsError(f"studies folder {folder} does not exist",
                               "pass the folder the saecircuits study commands wrote into (circuits/results)")
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for name, title in STUDIES.items():
            if (sub / name).is_file() and (sub / "summary.md").is_file():
                data = read_json(sub / name, what=f"{title} results")
                found.append({"study": title, "folder": sub.name, "model": data.get("model"),
                              "summary": (sub / "summary.md").read_text(encoding="utf-8")})
    if not found:
        return {"missing": f"{folder} holds no study folder (run saecircuits study talking-heads | component-reuse | "
                           "retrieval-heads)"}
    order = list(STUDIES.values())
    return {"studies": sorted(found, key=lambda s: (order.index(s["study"]), s["folder"]))}


def studies_section(results: dict) -> dict:
    """The report's studies section; a results.json written before the section existed has none."""
    return results.get("studies") or {"missing": "this report was written before studies were reported"}


def _demoted(summary: str) -> str:
    """A study summary's headings two levels down, to sit under the report's section heading."""
    return "\n".join("##" + line if line.startswith("#") else line for line in summary.splitlines())


def studies_markdown(section: dict) -> list[str]:
    """The summaries as Markdown, angle brackets escaped (a Markdown viewer would pass raw HTML through)."""
    return [_demoted(s["summary"]).replace("<", "&lt;").replace(">", "&gt;") + "\n" for s in section["studies"]]


def studies_html(section: dict) -> str:
    """The summaries rendered from Markdown (tables on, raw HTML off, so prompt text is escaped)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return "".join(f"<article>{md.render(_demoted(s['summary']))}</article>" for s in section["studies"])
