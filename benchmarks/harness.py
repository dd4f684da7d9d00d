"""Side-by-side benchmark harness: each measurement runs in a fresh process (so peak memory is its
own), the sides are interleaved and repeated, and medians are reported with every raw value.

A side is a function in a benchmark module, called as ``python MODULE --side NAME --args JSON``;
it returns a dict of numbers, which is printed as the last line of its stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WORK = Path(os.environ.get("SAECIRCUITS_BENCH_WORK", Path(__file__).parent / ".work"))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    across execve, so a side started by a parent that had loaded a model would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side_main(sides: dict[str, Callable[[dict], dict]]) -> bool:
    """If this process was started as a side, run it, print its JSON and return True."""
    if "--side" not in sys.argv:
        return False
    p = argparse.ArgumentParser()
    p.add_argument("--side", required=True)
    p.add_argument("--args", default="{}")
    a, _ = p.parse_known_args()
    out = sides[a.side](json.loads(a.args))
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(out))
    return True


def run_side(module: str, side: str, args: dict, timeout: float = 7200, python: str | None = None) -> dict:
    """Run one side in a fresh process; ``python``: another interpreter (a peer tool in its own venv)."""
    cmd = [python or sys.executable, module, "--side", side, "--args", json.dumps(args)]
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"side {side} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {side:<28} {json.dumps(res)}  ({time.time() - t:.0f} s wall)", flush=True)
    return res


def interleaved(module: str, runs: list[tuple], repeats: int) -> dict[str, list[dict]]:
    """Run every (label, side, args[, python]) once per round, rounds repeated; returns label -> results."""
    out: dict[str, list[dict]] = {label: [] for label, *_ in runs}
    for r in range(repeats):
        print(f"round {r + 1}/{repeats}", flush=True)
        order = runs if r % 2 == 0 else list(reversed(runs))  # alternate who goes first
        for label, side, args, *python in order:
            out[label].append(run_side(module, side, args, python=python[0] if python else None))
    return out


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def write(name: str, data: dict, markdown: str) -> None:
    from saecircuits.core.files import write_json, write_text

    write_json(RESULTS / f"{name}.json", data)
    write_text(RESULTS / f"{name}.md", markdown.rstrip() + "\n")
    print(markdown)


def shared_tokens(model_name: str, n_contexts: int, context_size: int = 128, source: str = "stdlib", split: str = "train") -> Path:
    """The same token contexts for every side: made once with saecircuits's packing, saved as safetensors."""
    path = WORK / f"tokens_{model_name}_{source}_{split}_{n_contexts}x{context_size}.safetensors"
    if path.exists():
        return path
    from saecircuits.core.tensors import save_tensors
    from saecircuits.model.loading import load
    from saecircuits.text.config import TextConfig
    from saecircuits.text.source import TextSource

    model = load(model_name)
    src = TextSource.for_model(TextConfig(source=source, context_size=context_size), model)
    tokens = src.take(n_contexts, split)  # type: ignore[arg-type]
    assert len(tokens) == n_contexts, f"source too short: {len(tokens)} < {n_contexts}"
    save_tensors(path, {"tokens": tokens})
    return path


def smollm2(model_batch: int = 8, context: int = 128):
    """SmolLM2-135M, warmed up by one forward (outside any timing; the same for every side)."""
    import torch

    from saecircuits.model.loading import load

    model = load("smollm2-135m")
    with torch.inference_mode():
        model(torch.randint(3, 1000, (model_batch, context)), stop_at_layer=8)
    return model


def side_bare(args: dict, model_batch: int = 8) -> dict:
    """The floor: TransformerLens's forward to the deepest of ``args["hooks"]``, over ``args["tokens"]``, nothing else."""
    import torch

    from saecircuits.core.tensors import load_tensors
    from saecircuits.model.hooks import stop_at_layer

    model = smollm2(model_batch)
    tokens = load_tensors(args["tokens"])["tokens"]
    stop = stop_at_layer(model, args["hooks"])
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tokens), model_batch):
            model(tokens[i : i + model_batch], stop_at_layer=stop)
    return {"seconds": time.perf_counter() - t, "tokens": tokens.numel()}


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
