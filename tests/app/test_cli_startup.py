"""The command line starts without torch or TransformerLens: its signal handlers are in place within a fraction of
a second, so an early Ctrl-C or SIGTERM ends as a clean interrupt (a study command once imported torch at start-up,
and an early SIGTERM then killed the process before its handler existed)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_command_line_loads_no_heavy_library():
    code = "import sys, saecircuits.app.cli; print(sorted(m for m in ('torch', 'transformer_lens', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
