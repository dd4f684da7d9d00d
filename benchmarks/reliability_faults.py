"""Every bad input of tests/reliability_cases.py, each run as a user would: a fresh
``python -m saecircuits`` process. The table records what each answered.

Run: python benchmarks/reliability_faults.py   (about 5 minutes; tiny model, no network)
Writes benchmarks/results/reliability_faults.json and .md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import harness  # noqa: E402

import reliability_cases as rc  # noqa: E402
from conftest import make_byte_tokenizer  # noqa: E402


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fx = rc.make_fixtures(Path(tmp) / "fixtures", make_byte_tokenizer())
        for case in rc.bad_inputs(fx, Path(tmp) / "cases"):
            t = time.perf_counter()
            out = rc.run_subprocess(case)
            rows.append({"name": case.name, "fault": case.what, "exit_code": out.code,
                         "error": out.error_lines[0] if len(out.error_lines) == 1 else out.error_lines,
                         "protected_files_unchanged": not any("earlier files" in p for p in out.problems),
                         "problems": out.problems, "seconds": time.perf_counter() - t})
            print(f"{case.name:<32} exit {out.code}  {'OK' if not out.problems else out.problems}", flush=True)
    md = ["# Bad input through the command line", "",
          f"{len(rows)} faults, each in a fresh `python -m saecircuits` process (tests/reliability_cases.py); "
          f"{sum(not r['problems'] for r in rows)} answered with one clear error line, a non-zero exit, no traceback, "
          "and earlier files unchanged. Machine: " + str(harness.machine()) + ".", "",
          "| fault | exit | the error line | earlier files unchanged |", "|---|---|---|---|"]
    for r in rows:
        err = r["error"] if isinstance(r["error"], str) else f"{len(r['error'])} error lines: {r['problems']}"
        md.append(f"| {r['fault']} | {r['exit_code']} | {err.replace('|', '/')} | {'yes' if r['protected_files_unchanged'] else 'NO'} |")
    harness.write("reliability_faults", {"machine": harness.machine(), "faults": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
