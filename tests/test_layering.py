"""The package layout holds: the import-linter contract of pyproject.toml (which does catch an upward
import) and the size limits of scripts/sizes.py.

`make test` runs lint-imports on the tree itself; this test also shows the contract is not vacuous:
on a copy of the package with one upward import added (core importing app), it breaks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def copy_tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "src"


def test_the_layers_contract_is_kept(tmp_path):
    src = copy_tree(tmp_path)
    done = lint(src, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    src = copy_tree(tmp_path)
    errors = src / "saecircuits" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom saecircuits.app import cli  # noqa: E402,F401  (upward: core -> app)\n")
    done = lint(src, tmp_path)
    assert done.returncode != 0
    assert "saecircuits.core is not allowed to import saecircuits.app" in done.stdout


def test_size_limits_hold():
    """scripts/sizes.py: no module over 500 lines, function over 60, class over 250; at most six top-level modules."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sizes.py"), str(ROOT / "src" / "saecircuits")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
