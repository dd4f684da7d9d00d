"""Reliability on the real default model (the long half of tests/test_reliability.py).

On SmolLM2-135M and stdlib text, each through the command line as a user runs it:

- training, activation caching and dashboards are each killed with SIGKILL several times, at a
  random moment after each new checkpoint (seeded), and resumed until done; every checkpoint left
  behind must load, and the final files must equal an uninterrupted run's;
- peak memory (VmHWM) of a streaming training run, and of the same run over a 10x longer stream.

Run: python benchmarks/reliability_long.py [--kills 3] [--tokens 40960]
Writes benchmarks/results/reliability_long.json and .md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

MODEL = "smollm2-135m"
HOOK = "blocks.6.hook_resid_post"
CONTEXT = 128


def train_config(out: Path, tokens: int, checkpoint_every: int | None) -> dict:
    return {
        "model": MODEL, "text": {"source": "stdlib", "context_size": CONTEXT, "eval_fraction": 0.05},
        "store": {"batch_size_tokens": 1024, "buffer_tokens": 8192, "model_batch_size": 8},
        "saes": [{"architecture": "topk", "hook": HOOK, "d_sae": 2304, "k": 32, "lr": 0.002}],
        "total_tokens": tokens, "checkpoint_every_tokens": checkpoint_every,
        "eval": {"contexts": 8, "batch_contexts": 8}, "wandb": {"mode": "off"}, "out": str(out),
    }


def saecircuits(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "saecircuits", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "saecircuits", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"saecircuits {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def kill_cycles(argv: list[str], progress, kills: int, rng: random.Random, check) -> list[dict]:
    """Start ``argv`` ``kills`` times; each time, wait until ``progress()`` passes what it was, sleep a
    random 0-3 s and SIGKILL. ``check()`` then verifies what is on disk. Returns one row per kill."""
    rows = []
    for _ in range(kills):
        before = progress()
        proc = saecircuits(argv)
        while proc.poll() is None and progress() <= before:
            time.sleep(0.05)
        if proc.poll() is None:
            time.sleep(rng.uniform(0, 3))
        if proc.poll() is not None:  # it finished first: nothing left to kill
            rows.append({"killed": False, "returncode": proc.returncode})
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        rows.append({"killed": True, "progress_at_kill": progress(), "on_disk": check()})
    return rows


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def same_tensors(a: Path, b: Path, pattern: str) -> dict:
    """Files matching ``pattern`` under both folders: every tensor equal (safetensors) or bytes equal."""
    from safetensors.torch import load_file

    fa = sorted(p.relative_to(a) for p in a.glob(pattern) if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.glob(pattern) if p.is_file())
    if fa != fb or not fa:
        return {"files": len(fa), "equal": False, "why": f"file lists differ: {fa[:3]} vs {fb[:3]}"}
    worst = 0.0
    for f in fa:
        if f.suffix == ".safetensors":
            x, y = load_file(a / f), load_file(b / f)
            if x.keys() != y.keys():
                return {"files": len(fa), "equal": False, "why": f"{f}: tensor names differ"}
            worst = max([worst] + [float((x[k].double() - y[k].double()).abs().max()) for k in x if x[k].numel()])
        elif (a / f).read_bytes() != (b / f).read_bytes():
            return {"files": len(fa), "equal": False, "why": f"{f}: bytes differ"}
    return {"files": len(fa), "equal": worst == 0.0, "max_abs_diff": worst}


def case_training(work: Path, tokens: int, kills: int, rng: random.Random) -> dict:
    from saecircuits.core.files import read_json
    from saecircuits.core.tensors import load_tensors

    cfgs = {}
    for name in ("killed", "uninterrupted"):
        cfgs[name] = work / f"train_{name}.yaml"
        cfgs[name].write_text(yaml.safe_dump(train_config(work / f"train_{name}", tokens, tokens // 8)))
    state = work / "train_killed" / "checkpoint" / "state.json"

    def step() -> int:
        s = _json(state)
        return s["step"] if s else -1

    def check() -> dict:
        s = read_json(state, what="checkpoint")
        n = len(load_tensors(state.parent / "state.safetensors"))
        return {"step": s["step"], "tensors": n}

    first = ["train", str(cfgs["killed"])]
    rows = kill_cycles(first, step, 1, rng, check)
    rows += kill_cycles(first + ["--resume"], step, kills - 1, rng, check)
    resume_s = finish(first + ["--resume"])
    clean_s = finish(["train", str(cfgs["uninterrupted"])])
    a, b = (json.loads((work / f"train_{n}" / "summary.json").read_text())["saes"] for n in ("killed", "uninterrupted"))
    metrics = {k: [next(iter(a.values()))[k], next(iter(b.values()))[k]]
               for k in ("explained_variance", "l0", "dead_latents", "ce_loss_recovered")}
    return {"kills": rows, "final_resume_seconds": resume_s, "uninterrupted_seconds": clean_s,
            "weights": same_tensors(work / "train_killed" / "saes", work / "train_uninterrupted" / "saes", "*/sae_weights.safetensors"),
            "metrics_killed_vs_uninterrupted": metrics,
            "metrics_equal": all(x == y for x, y in metrics.values())}


def case_cache(work: Path, tokens: int, kills: int, rng: random.Random) -> dict:
    from safetensors.torch import load_file

    argv = ["--model", MODEL, "--text", "stdlib", "--context-size", str(CONTEXT), "--tokens", str(tokens),
            "--hook", HOOK, "--hook", "blocks.3.attn.hook_z:*"]
    manifest = work / "cache_killed" / "manifest.json"

    def shards() -> int:
        m = _json(manifest)
        return len(m["shards"]) if m else 0

    def check() -> dict:
        m = json.loads(manifest.read_text())
        whole = all(len(load_file(work / "cache_killed" / s["file"])["tokens"]) == s["rows"] for s in m["shards"])
        return {"shards": len(m["shards"]), "complete": m["complete"], "every_listed_shard_whole": whole}

    rows = kill_cycles(["cache", "--out", str(work / "cache_killed"), *argv], shards, kills, rng, check)
    finish(["cache", "--out", str(work / "cache_killed"), *argv])
    finish(["cache", "--out", str(work / "cache_uninterrupted"), *argv])
    a, b = (json.loads((work / f"cache_{n}" / "manifest.json").read_text()) for n in ("killed", "uninterrupted"))
    return {"kills": rows, "manifest_shards_equal": a["shards"] == b["shards"], "complete": a["complete"],
            "shards": same_tensors(work / "cache_killed", work / "cache_uninterrupted", "shard_*.safetensors"),
            "leftover_temporary_files": len([f for f in (work / "cache_killed").glob(".*") if f.name != ".writer.lock"])}


def case_dashboards(work: Path, sae: Path, tokens: int, kills: int, rng: random.Random) -> dict:
    from saecircuits.core.files import read_json
    from saecircuits.core.tensors import load_tensors

    argv = ["--sae", str(sae), "--model", MODEL, "--text", "stdlib", "--tokens", str(tokens), "--context-size",
            str(CONTEXT), "--batch", "8", "--wandb", "off"]
    state = work / "dash_killed" / "checkpoint" / "state.json"

    def batches() -> int:
        s = _json(state)
        return s["batches"] if s else -1

    def check() -> dict:
        s = read_json(state, what="dashboard checkpoint")
        load_tensors(state.parent / "stats.safetensors")
        return {"batches": s["batches"], "done": s["done"]}

    rows = kill_cycles(["dashboards", "--out", str(work / "dash_killed"), *argv], batches, kills, rng, check)
    finish(["dashboards", "--out", str(work / "dash_killed"), *argv])
    finish(["dashboards", "--out", str(work / "dash_uninterrupted"), *argv])
    out = {"kills": rows}
    for pattern in ("stats.safetensors", "index.html", "features/*.html", "neuronpedia/*.json"):
        out[pattern] = same_tensors(work / "dash_killed", work / "dash_uninterrupted", pattern)
    return out


def side_stream(args: dict) -> dict:
    """A streaming training run (no cache, no checkpoints) in this process; the harness adds VmHWM."""
    from saecircuits.core.config import validate
    from saecircuits.training.config import TrainConfig
    from saecircuits.training.run import train

    cfg = validate(TrainConfig, train_config(Path(args["out"]), args["tokens"], None))
    t = time.perf_counter()
    summary = train(cfg, progress=False)
    return {"tokens": summary["tokens"], "seconds": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--tokens", type=int, default=40960, help="training tokens of the kill case (the cache and "
                   "dashboards cases take enough for a checkpoint per kill); the memory case streams this and 10x this")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    work = harness.WORK / "reliability_long"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    results = {"machine": harness.machine(), "args": vars(a)}
    print("training: kill -9 and resume", flush=True)
    results["training"] = case_training(work, a.tokens, a.kills, rng)
    print("activation cache: kill -9 and resume", flush=True)
    results["cache"] = case_cache(work, max(a.tokens, (a.kills + 2) * 256 * CONTEXT), a.kills, rng)  # 256-context shards
    print("dashboards: kill -9 and resume", flush=True)
    sae = next((work / "train_uninterrupted" / "saes").iterdir())
    results["dashboards"] = case_dashboards(work, sae, max(a.tokens, (a.kills + 2) * 20 * 8 * CONTEXT), a.kills, rng)  # 20-batch checkpoints
    print("memory: 1x and 10x stream", flush=True)
    results["memory"] = {f"x{n}": harness.run_side(__file__, "stream", {"out": str(work / f"stream_x{n}"), "tokens": a.tokens * n})
                         for n in (1, 10)}
    results["seconds"] = time.perf_counter() - t0
    harness.write("reliability_long", results, markdown(results))


def markdown(r: dict) -> str:
    tr, ca, da, me = r["training"], r["cache"], r["dashboards"], r["memory"]

    def kills(rows, key):
        return ", ".join(str(x["on_disk"][key]) if x["killed"] else "finished first" for x in rows)

    lines = [
        "# Reliability on SmolLM2-135M (kill -9, resume, memory)", "",
        f"`python benchmarks/reliability_long.py --kills {r['args']['kills']} --tokens {r['args']['tokens']}`; "
        f"{r['seconds'] / 60:.0f} min. Machine: {r['machine']}.", "",
        "| fault | killed at (checkpoint on disk) | after resume vs uninterrupted |", "|---|---|---|",
        f"| kill -9 during training | steps {kills(tr['kills'], 'step')} | weights equal: {tr['weights']['equal']} "
        f"(max abs diff {tr['weights'].get('max_abs_diff')}); EV/L0/dead/CE equal: {tr['metrics_equal']} |",
        f"| kill -9 during activation caching | shards {kills(ca['kills'], 'shards')} | manifest equal: {ca['manifest_shards_equal']}; "
        f"{ca['shards']['files']} shards equal: {ca['shards']['equal']}; temporary files left: {ca['leftover_temporary_files']} |",
        f"| kill -9 during dashboards | batches {kills(da['kills'], 'batches')} | "
        + "; ".join(f"{k} equal: {v['equal']} ({v['files']} files)" for k, v in da.items() if k != "kills") + " |",
        "", "| streaming run | tokens | peak RSS MB | seconds |", "|---|---|---|---|",
    ]
    for k, v in me.items():
        lines.append(f"| {k} | {v['tokens']:,} | {v['peak_rss_mb']:,.0f} | {v['seconds']:.0f} |")
    lines.append(f"\nPeak memory, 10x stream minus 1x: {me['x10']['peak_rss_mb'] - me['x1']['peak_rss_mb']:+.0f} MB.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if not harness.side_main({"stream": side_stream}):
        main()
