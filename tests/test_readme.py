"""The README's library examples run as written, and what they say they print is what they print.

Every ```python block of README.md runs, in order, in one namespace. A line ``print(...)  # TEXT``
must print exactly TEXT, so an example whose API or numbers drift fails here instead of rotting.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
CLAIM = re.compile(r"^print\(.*\)\s+#\s*(.+?)\s*$")


def blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


def test_the_readme_has_library_examples():
    found = blocks()
    assert found, "README.md has no ```python example"
    assert any(CLAIM.match(line) for b in found for line in b.splitlines()), "no example states what it prints"


@pytest.mark.real_model
def test_readme_examples_run_and_print_what_they_say(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": "readme"}
    for i, code in enumerate(blocks()):
        claims = [m.group(1) for m in map(CLAIM.match, code.splitlines()) if m]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        printed = [line.strip() for line in out.getvalue().splitlines()]
        assert printed == claims, f"README python block {i + 1} printed {printed}, its comments say {claims}"
