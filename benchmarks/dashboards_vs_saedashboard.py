"""Feature dashboards: saecircuits vs SAEDashboard (PyPI ``sae-dashboard`` 0.8), same SAE, same tokens.

Both sides build dashboards for every feature of a SmolLM2 layer-6 TopK SAE (d_sae 4,608) over
the same pre-packed stdlib contexts (782 x 128 = 100,096 tokens by default), excluding the same
tokens (special tokens 0, 1, 2 and position 0), and write their output to disk:

- saecircuits: ``build_dashboards`` (one pass: forward to layer 6, SAE, streaming statistics; then
  logit tables, neighbours, the HTML site with one page per feature, stats and Neuronpedia JSON;
  W&B off);
- SAEDashboard: ``SaeVisRunner(SaeVisConfig(...)).run`` with its default feature-centric layout
  (minibatches of 256 features and 64 prompts, activations cached on disk in a fresh ``cache_dir``
  per run so the model runs once) and ``save_feature_centric_vis`` (one HTML file).

Time excludes loading the model and the SAE on both sides. Each side runs in its own process,
interleaved, ``--repeats`` times; medians and every raw value are recorded in
``benchmarks/results/dashboards_vs_saedashboard.{json,md}``.

SAEDashboard lives in its own virtual environment (it pins transformer-lens 2.x and numpy < 2):
    python3 -m venv benchmarks/.work/saedash-venv
    benchmarks/.work/saedash-venv/bin/pip install torch==2.13.0 sae-dashboard "pyarrow<21"
    benchmarks/.work/saedash-venv/bin/pip uninstall -y torchvision torchaudio
(``--setup-venv`` runs exactly this.) It cannot download SmolLM2, so its side builds the
HookedSAETransformer from saecircuits's converted weights (safetensors + TransformerLens config
in ~/.cache/saecircuits/models/smollm2-135m), and checks that its layer-6 residual stream matches
saecircuits's on two contexts before timing.

The SAE: ``--sae DIR``; by default the layer-6, 4,608-feature SAE that
``saecircuits train configs/smollm2_layer6_topk.yaml`` writes into ``runs/smollm2_layer6_topk/saes/``
(TopK k=32, 200k tokens); if there is none, that config is trained here first (``--train-tokens``
overrides its token count), and the results say which SAE was used.

Run:   python benchmarks/dashboards_vs_saedashboard.py                  (full: 100k tokens, 3 rounds)
Smoke: python benchmarks/dashboards_vs_saedashboard.py --smoke          (random 32-feature SAE, 256 tokens)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOOK = "blocks.6.hook_resid_post"
CONTEXT = 128
SPECIAL = [0, 1, 2]  # SmolLM2: <|endoftext|>, <|im_start|>, <|im_end|>
VENV = harness.WORK / "saedash-venv"
BENCH_RUN = ROOT / "runs" / "smollm2_layer6_topk"  # the out folder of configs/smollm2_layer6_topk.yaml
SAE_NAME = "blocks.6.hook_resid_post-topk-k32-d4608-lr0.002"  # configs/smollm2_layer6_topk.yaml's SAE


# ---------------------------------------------------------------- saecircuits side (this venv)


def side_ours(args: dict) -> dict:
    import torch

    from saecircuits.dashboards import build_dashboards
    from saecircuits.model.loading import load

    torch.set_grad_enabled(False)
    model = load("smollm2-135m")
    out = Path(args["out"])
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    s = build_dashboards(args["sae"], "smollm2-135m", f"tokens:{args['tokens']}", out, args["contexts"] * CONTEXT,
                         wandb="off", progress=False, loaded_model=model,
                         text={"context_size": CONTEXT, "eval_fraction": 0.0}, batch_contexts=16)
    seconds = time.perf_counter() - t
    stats = json.loads((out / "stats.json").read_text())
    return {"seconds": seconds, "tokens": s["tokens"], "contexts": s["contexts"], "features": s["n_features"],
            "live": s["n_live"], "phases": s["seconds"], "output_mb": _size_mb(out),
            "max_act": [f["max_act"] for f in stats["features"][: args["check_features"]]]}


# ---------------------------------------------------------------- SAEDashboard side (its own venv)


def _saedash_model(folder: Path):
    """SmolLM2 as SAELens's HookedSAETransformer (TransformerLens 2.x), from saecircuits's converted cache."""
    import dataclasses

    import torch
    from sae_lens import HookedSAETransformer
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    data = json.loads((folder / "tl_config.json").read_text())
    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    data = {k: v for k, v in data.items() if k in fields and k != "n_params"}  # 3.x-only fields dropped
    data.update(dtype=getattr(torch, data["dtype"]), device="cpu", n_ctx=2048)  # 2.x builds n_ctx² masks per layer
    cfg = HookedTransformerConfig.from_dict(data)
    tc = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer" / "tokenizer.json"),
                                  **{k: tc[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")})
    tmp = tempfile.mkdtemp(prefix="smollm2-tok-")  # TransformerLens 2.x reloads tokenizers by path
    tok.save_pretrained(tmp)
    model = HookedSAETransformer(cfg, AutoTokenizer.from_pretrained(tmp), move_to_device=False)
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items()
             if not k.endswith(("attn.mask", "attn.IGNORE", "rotary_sin", "rotary_cos"))}  # buffers it builds itself
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos")) for k in missing), (missing, unexpected)
    model.eval()
    shutil.rmtree(tmp, ignore_errors=True)
    return model


def side_saedashboard(args: dict) -> dict:
    import torch
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_lens import SAE
    from safetensors.torch import load_file

    torch.set_grad_enabled(False)
    model = _saedash_model(Path(args["model_folder"]))
    sae = SAE.load_from_disk(args["sae"], device="cpu")
    # SaeVisRunner folds decoder norms into the encoder, which SAELens refuses for a TopK SAE saved without
    # rescale_acts_by_decoder_norm. saecircuits's decoder rows share one norm (1, or 1/scale when the input
    # normalisation was folded in at save time), so skipping the fold keeps the same features and the same
    # activations as the saecircuits side, which runs the SAE as saved
    norms = sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, norms.mean().expand_as(norms), rtol=1e-4), "decoder rows of unequal norm"
    sae.fold_W_dec_norm = lambda: None
    tokens = load_file(args["tokens"])["tokens"][: args["contexts"]]
    ref = load_file(args["reference"])  # saecircuits's layer-6 residual stream on two contexts
    _, cache = model.run_with_cache(ref["tokens"], names_filter=HOOK, stop_at_layer=7)
    resid_rel_diff = float((cache[HOOK] - ref["resid"]).abs().max() / ref["resid"].abs().max())
    assert resid_rel_diff < 1e-3, f"SAEDashboard's SmolLM2 differs from saecircuits's: {resid_rel_diff}"
    out = Path(args["out"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="saedash-cache-", dir=out))
    n_features = sae.cfg.d_sae
    t = time.perf_counter()
    cfg = SaeVisConfig(hook_point=HOOK, features=list(range(n_features)), minibatch_size_features=256,
                       minibatch_size_tokens=64, device="cpu", dtype="float32", cache_dir=cache_dir,
                       ignore_tokens=set(SPECIAL), ignore_positions=[0], verbose=False)
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    save_feature_centric_vis(sae_vis_data=data, filename=str(out / "saedashboard.html"))
    seconds = time.perf_counter() - t
    maxes = []
    for i in range(min(args["check_features"], n_features)):
        groups = data.feature_data_dict[i].sequence_data.seq_group_data
        title = groups[0].title if groups else ""
        maxes.append(float(title.split(" = ")[-1]) if "MAX = " in title else 0.0)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {"seconds": seconds, "tokens": tokens.numel(), "contexts": len(tokens), "features": n_features,
            "output_mb": _size_mb(out), "resid_rel_diff": resid_rel_diff, "max_act": maxes}


def _size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20, 1)


SIDES = {"ours": side_ours, "saedashboard": side_saedashboard}


# ---------------------------------------------------------------- preparation (this venv)


def setup_venv() -> Path:
    """SAEDashboard's own venv (created if missing); returns its python."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(["nice", "-n", "19", str(python), "-m", "pip", "install", "torch==2.13.0", "sae-dashboard",
                        "pyarrow<21"], check=True)
        # its torchvision wheel does not match torch 2.13 ("operator torchvision::nms does not exist")
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio"], check=True)
    return python


def prepare_sae(arg: str | None, train_tokens: int) -> tuple[Path, str]:
    """The SAE to benchmark and a note on where it came from."""
    if arg:
        return Path(arg), f"given: {arg}"
    for cfg in sorted(BENCH_RUN.glob("saes/*/cfg.json")):  # the first layer-6 SAE with 4,608 features there
        c = json.loads(cfg.read_text())
        if c.get("d_sae") == 4608 and (c.get("metadata") or {}).get("hook_name") == HOOK:
            return cfg.parent, f"the benchmark SAE {cfg.parent.relative_to(ROOT)}"
    from saecircuits.core.config import read_yaml, validate
    from saecircuits.training.config import TrainConfig
    from saecircuits.training.run import train

    data = read_yaml(ROOT / "configs" / "smollm2_layer6_topk.yaml")
    data.update(out=str(BENCH_RUN), total_tokens=train_tokens, wandb={"mode": "off"})
    train(validate(TrainConfig, data), progress=True)
    sae = BENCH_RUN / "saes" / SAE_NAME
    return sae, f"configs/smollm2_layer6_topk.yaml trained here on {train_tokens:,} tokens ({sae.relative_to(ROOT)})"


def random_sae(d_sae: int) -> Path:
    """A random TopK SAE on layer 6 (for the smoke test only)."""
    import torch

    from saecircuits.sae import SAEConfig, build
    from saecircuits.sae import format as sae_format

    folder = harness.WORK / f"random_layer6_topk_d{d_sae}"
    if not (folder / "cfg.json").exists():
        torch.manual_seed(0)
        sae = build(SAEConfig(architecture="topk", hook=HOOK, d_sae=d_sae, k=8), 576)
        sae_format.save(sae, folder, model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    return folder


def reference_resid(tokens_path: Path) -> Path:
    """saecircuits's layer-6 residual stream on the first two contexts, for SAEDashboard's model check."""
    path = harness.WORK / "reference_resid6_2x128.safetensors"
    if path.exists():
        return path
    import torch

    from saecircuits.core.tensors import load_tensors, save_tensors
    from saecircuits.model.loading import load

    tokens = load_tensors(tokens_path)["tokens"][:2]
    with torch.inference_mode():
        _, cache = load("smollm2-135m").run_with_cache(tokens, names_filter=HOOK, stop_at_layer=7)
    save_tensors(path, {"tokens": tokens, "resid": cache[HOOK]})
    return path


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sae", help="SAE folder (default: the SAE of configs/smollm2_layer6_topk.yaml, trained first if absent)")
    p.add_argument("--contexts", type=int, default=782, help="contexts of 128 tokens (782: 100,096 tokens)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-tokens", type=int, default=200_000)
    p.add_argument("--smoke", action="store_true", help="tiny: a random 32-feature SAE, 2 contexts, 1 round")
    p.add_argument("--setup-venv", action="store_true", help="create SAEDashboard's venv and exit")
    a = p.parse_args()
    python = setup_venv()
    if a.setup_venv:
        return
    from saecircuits.model.loading import cache_root, load

    if a.smoke:
        sae, sae_note, a.contexts, a.repeats = random_sae(32), "random TopK SAE, d_sae 32 (smoke test)", 2, 1
    else:
        sae, sae_note = prepare_sae(a.sae, a.train_tokens)
    load("smollm2-135m")  # converts the model once if this machine has no cache yet
    tokens = harness.shared_tokens("smollm2-135m", max(a.contexts, 2), CONTEXT)
    common = {"sae": str(sae), "tokens": str(tokens), "contexts": a.contexts, "check_features": 32}
    work = harness.WORK / ("dash_smoke" if a.smoke else "dash")
    res = harness.interleaved(__file__, [
        ("saecircuits", "ours", {**common, "out": str(work / "ours")}),
        ("SAEDashboard 0.8", "saedashboard", {**common, "out": str(work / "saedashboard"),
                                              "model_folder": str(cache_root() / "models" / "smollm2-135m"),
                                              "reference": str(reference_resid(tokens))}, str(python)),
    ], a.repeats)
    ours, theirs = res["saecircuits"], res["SAEDashboard 0.8"]
    t_ours, t_theirs = harness.median(ours, "seconds"), harness.median(theirs, "seconds")
    m_ours, m_theirs = harness.median(ours, "peak_rss_mb"), harness.median(theirs, "peak_rss_mb")
    # the same work: each feature's maximum activation agrees between the two
    diffs = [abs(x - y) / max(abs(y), 1e-6) for x, y in zip(ours[0]["max_act"], theirs[0]["max_act"], strict=True) if y > 0]
    summary = {"speedup": t_theirs / t_ours, "memory_ratio": m_theirs / m_ours,
               "tokens": ours[0]["tokens"], "context_tokens": a.contexts * CONTEXT, "features": ours[0]["features"],
               "max_act_rel_diff_first32": max(diffs) if diffs else None, "sae": sae_note}
    name = "dashboards_vs_saedashboard" + ("_smoke" if a.smoke else "")
    md = "\n".join([
        "# Feature dashboards: saecircuits vs SAEDashboard" + (" (smoke test)" if a.smoke else ""),
        "",
        f"All {summary['features']:,} features of a SmolLM2-135M layer-6 TopK SAE ({sae_note}), {a.contexts} stdlib "
        f"contexts x {CONTEXT} tokens = {summary['context_tokens']:,} tokens ({summary['tokens']:,} kept after excluding "
        f"special tokens and position 0). Time excludes loading the model and the SAE. Medians of {a.repeats} interleaved "
        f"runs, each in its own process. Machine: {harness.machine()}.",
        "",
        harness.md_table(["side", "seconds", "peak MB", "output MB"], [
            ["saecircuits (HTML site + stats + Neuronpedia JSON)", f"{t_ours:.1f}", f"{m_ours:,.0f}",
             f"{harness.median(ours, 'output_mb'):,.1f}"],
            ["SAEDashboard 0.8 (one HTML file, needs a network to display)", f"{t_theirs:.1f}", f"{m_theirs:,.0f}",
             f"{harness.median(theirs, 'output_mb'):,.1f}"]]),
        "",
        f"- SAEDashboard / saecircuits (time): **{summary['speedup']:.2f}x** (target >= 3)",
        f"- peak memory, SAEDashboard / saecircuits: {summary['memory_ratio']:.2f}x",
        f"- saecircuits phases (median run): {json.dumps({k: round(v, 1) for k, v in ours[len(ours) // 2]['phases'].items()})}",
        f"- same work: the first 32 features' maximum activations agree to a relative {summary['max_act_rel_diff_first32']}; "
        f"SAEDashboard's model matches saecircuits's layer-6 residual stream to {theirs[0]['resid_rel_diff']:.1e} (relative)",
    ])
    data = {"machine": harness.machine(), "args": vars(a), "summary": summary, "saecircuits": ours, "saedashboard": theirs}
    if a.smoke:  # a check that both sides run, not a measurement: kept out of benchmarks/results
        (harness.WORK / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        print(md)
    else:
        harness.write(name, data, md)


if __name__ == "__main__":
    if not harness.side_main(SIDES):
        os.environ.setdefault("WANDB_MODE", "disabled")
        main()
