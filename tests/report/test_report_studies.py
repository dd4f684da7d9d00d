"""The report's seed-paper studies section: gathered from study folders, rendered escaped, absent when not given."""

from __future__ import annotations

import json

import pytest

from saecircuits.core.errors import SaecircuitsError
from saecircuits.report.studies import collect_studies, studies_html, studies_markdown


def _study(folder, name: str, model: str, summary: str) -> None:
    folder.mkdir(parents=True)
    (folder / name).write_text(json.dumps({"model": model}))
    (folder / "summary.md").write_text(summary)


def test_study_summaries_become_the_section_in_order_and_escaped(tmp_path):
    _study(tmp_path / "retrieval-heads-m", "retrieval_heads.json", "m", "# Retrieval heads on m\n\n- share 4%\n")
    _study(tmp_path / "talking-heads-m", "talking_heads.json", "m",
           "# Talking Heads on m\n\n| head | effect |\n|---|---|\n| 23.3 | +0.2 |\n\nprompt: <script>alert(1)</script>\n")
    (tmp_path / "ioi-m").mkdir()  # a folder of another kind is passed over
    section = collect_studies(tmp_path)
    assert [s["folder"] for s in section["studies"]] == ["talking-heads-m", "retrieval-heads-m"]
    md = "\n".join(studies_markdown(section))
    assert "### Talking Heads on m" in md and "### Retrieval heads on m" in md
    html = studies_html(section)
    assert "<table>" in html and "<td>23.3</td>" in html and "<h3>Talking Heads on m</h3>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_no_studies_folder_is_a_missing_section_and_a_wrong_one_an_error(tmp_path):
    assert "missing" in collect_studies(None)
    assert "holds no study folder" in collect_studies(tmp_path)["missing"]
    with pytest.raises(SaecircuitsError, match="does not exist"):
        collect_studies(tmp_path / "nope")
