"""Size limits of the library (issue 20): no module over 500 lines, no function over 60, no class over 250.

Usage: python scripts/sizes.py [ROOT]   (ROOT defaults to src/saecircuits). Prints every breach and the
largest module, function and class, and exits 1 when a limit is broken. Lines are physical lines,
docstrings and comments included, as `wc -l` counts them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMITS = {"module": 500, "function": 60, "class": 250}


def measure(root: Path) -> list[tuple[str, str, int]]:
    """Every module, function and class under root as (kind, name, lines)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(root.parent)
        found.append(("module", str(rel), len(text.splitlines())))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                found.append((kind, f"{rel}:{node.lineno} {node.name}", node.end_lineno - start + 1))
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "src/saecircuits")
    found = measure(root)
    breaches = [(k, n, size) for k, n, size in found if size > LIMITS[k]]
    for kind in LIMITS:
        sizes = [(size, n) for k, n, size in found if k == kind]
        count = len(sizes)
        size, name = max(sizes) if sizes else (0, "-")
        over = sum(1 for s, _ in sizes if s > LIMITS[kind])
        print(f"{kind:8s} {count:4d} measured, {over:3d} over {LIMITS[kind]} lines; largest {size} ({name})")
    top = [p for p in root.glob("*.py")]
    print(f"modules directly in {root}: {len(top)} ({', '.join(sorted(p.name for p in top))})")
    for kind, name, size in sorted(breaches):
        print(f"  over: {kind} {name} {size} lines")
    return 1 if breaches or len(top) > 6 else 0


if __name__ == "__main__":
    sys.exit(main())
