"""Every bad input of tests/reliability_cases.py, each run as a user would: a fresh
``python -m saecircuits`` process. The table records what each answered.

A second table runs the tests of the behaviours a bad input cannot show (interrupts of every writing
command, kill -9 and resume, SAEs through SAELens's own consumers, sections a report leaves out, the cost
said before long work) and records each test's outcome.

Run: python benchmarks/reliability_faults.py   (about 20 minutes; tiny models, no network)
Writes benchmarks/results/reliability_faults.json and .md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import harness  # noqa: E402

import reliability_cases as rc  # noqa: E402
from conftest import make_byte_tokenizer  # noqa: E402


ROOT = Path(__file__).parents[1]
# the behaviour tests: what interrupts, kills, SAELens's consumers and long work must give
BEHAVIOURS = ["tests/app/test_interrupts.py", "tests/app/test_demo_interrupts.py",
              "tests/app/test_reliability.py::test_kill_during_training_then_resume_equals_uninterrupted",
              "tests/app/test_reliability.py::test_kill_during_activation_caching_then_resume",
              "tests/app/test_reliability.py::test_kill_during_dashboards_then_resume",
              "tests/core/test_files_signals.py", "tests/sae/test_sae.py::test_saelens_consumers_use_our_saes",
              "tests/report/test_report.py::test_the_report_command_names_each_section_it_leaves_out",
              "tests/report/test_report.py::test_report_from_a_results_json_of_the_wrong_shape_is_one_clear_error",
              "tests/circuits/test_cost.py"]


def behaviours(tmp: Path) -> list[dict]:
    """Each behaviour test's outcome (passed, failed or skipped, with the reason) and seconds."""
    xml = tmp / "behaviours.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *BEHAVIOURS],
                   cwd=ROOT, capture_output=True, text=True)
    rows = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        rows.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
                     "outcome": "passed" if bad is None else bad.tag,
                     "detail": "" if bad is None else (bad.get("message") or "")[:200],
                     "seconds": float(case.get("time", 0))})
    return rows


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
    with tempfile.TemporaryDirectory() as tmp:
        tests = behaviours(Path(tmp))
    md += ["", "## Behaviours, by their tests", "",
           f"{len(tests)} tests ({', '.join(BEHAVIOURS)}); {sum(t['outcome'] == 'passed' for t in tests)} passed.", "",
           "| test | outcome | seconds |", "|---|---|---|"]
    for t in tests:
        outcome = t["outcome"] + (f": {t['detail']}" if t["detail"] else "")
        md.append(f"| {t['test']} | {outcome.replace('|', '/')} | {t['seconds']:.1f} |")
    harness.write("reliability_faults", {"machine": harness.machine(), "faults": rows, "behaviours": tests},
                  "\n".join(md))


if __name__ == "__main__":
    main()
