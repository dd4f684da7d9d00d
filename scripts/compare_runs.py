"""Compare two demo run folders: every JSON file, numbers exact, with timing keys masked and each run's own folder
path replaced; then report.md line by line with timings masked. Prints each file that differs, with its largest
numeric difference and its first non-numeric differences.

Usage: python scripts/compare_runs.py RUN_A RUN_B   (e.g. runs/demo of two checkouts run with the same settings)
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from pathlib import Path

TIME_KEYS = re.compile(r"(seconds|^time$|timing|tokens_per_second|^date$|elapsed|tok_s|^sync$)", re.I)
TIMES_IN_TEXT = re.compile(r"\d+(\.\d+)? ?(s|min|seconds|tok/s|tokens/s)\b")


def differences(a, b, where: str, runs: tuple[Path, Path], out: list) -> None:
    """Append (where, kind, detail) for every place the JSON values a and b differ (timing keys skipped)."""
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.replace(str(runs[0]), "<RUN>"), b.replace(str(runs[1]), "<RUN>")
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            out.append((where, "keys", sorted(set(a) ^ set(b))))
        for k in a:
            if k in b and not TIME_KEYS.search(str(k)):
                differences(a[k], b[k], f"{where}.{k}", runs, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append((where, "length", (len(a), len(b))))
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{where}[{i}]", runs, out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))):
            out.append((where, "number", abs(a - b)))
    elif a != b:
        out.append((where, "value", (str(a)[:80], str(b)[:80])))


def main(run_a: Path, run_b: Path) -> None:
    compared = 0
    for fa in sorted(run_a.rglob("*.json")):
        rel = fa.relative_to(run_a)
        if "wandb" in rel.parts:
            continue
        fb = run_b / rel
        if not fb.exists():
            print(f"only in {run_a}: {rel}")
            continue
        found: list = []
        differences(json.loads(fa.read_text()), json.loads(fb.read_text()), "", (run_a, run_b), found)
        compared += 1
        if found:
            numbers = [d for _, kind, d in found if kind == "number"]
            other = [f for f in found if f[1] != "number"]
            print(f"{rel}: {len(found)} differences; largest numeric {max(numbers, default=0):.3g}; other {len(other)}")
            for f in other[:5]:
                print("    ", f)
    for fb in sorted(run_b.rglob("*.json")):
        if "wandb" not in fb.parts and not (run_a / fb.relative_to(run_b)).exists():
            print(f"only in {run_b}: {fb.relative_to(run_b)}")
    print(f"{compared} JSON files compared")
    lines = [TIMES_IN_TEXT.sub("<T>", (run / "report" / "report.md").read_text()).splitlines() for run in (run_a, run_b)]
    changed = [line for line in difflib.unified_diff(*lines, lineterm="", n=0)
               if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    print(f"report.md: {len(lines[0])} vs {len(lines[1])} lines, {len(changed)} differing lines after masking timings")
    for line in changed[:40]:
        print("   ", line[:200])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
