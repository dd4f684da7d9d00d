"""Activation store throughput: saecircuits vs SAELens's ActivationsStore on SmolLM2, same tokens.

Cases (all on the same pre-packed stdlib contexts, 128 tokens, 8 contexts a forward pass,
4,096-token batches, a 16,384-token shuffle buffer, the same excluded special tokens):

- single: blocks.6.hook_resid_post; plus a bare forward pass to layer 7 as the floor;
- six: six residual hooks at six depths (layers 4, 9, 14, 19, 24, 29) from one saecircuits store,
  vs six SAELens stores (one per hook, as SAELens users train one SAE per run), and also vs
  SAELens 6.54's own multi-hook store for reference.

Every side streams every context once and emits all kept rows. Run: python benchmarks/store_vs_saelens.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

CONTEXT = 128
MODEL_BATCH = 8
TRAIN_BATCH = 4096
BUFFER_TOKENS = 16384
SINGLE = ["blocks.6.hook_resid_post"]
SIX = [f"blocks.{L}.hook_resid_post" for L in (4, 9, 14, 19, 24, 29)]


def _model():
    return harness.smollm2(MODEL_BATCH, CONTEXT)


def _tokens(args):
    from saecircuits.core.tensors import load_tensors

    return load_tensors(args["tokens"])["tokens"]


def side_ours(args: dict) -> dict:
    from saecircuits.activations.store import ActivationStore, StoreConfig
    from saecircuits.text.config import TextConfig
    from saecircuits.text.source import TextSource

    model = _model()
    text = TextSource(TextConfig(source=f"tokens:{args['tokens']}", context_size=CONTEXT, eval_fraction=0),
                      model.tokenizer, None, None)
    cfg = StoreConfig(batch_size_tokens=TRAIN_BATCH, model_batch_size=MODEL_BATCH, buffer_tokens=BUFFER_TOKENS)
    store = ActivationStore.from_model(model, args["hooks"], text, cfg, repeat=False)
    t = time.perf_counter()
    rows = 0
    for b in store.batches(drop_last=False):
        rows += len(next(iter(b.values())))
    seconds = time.perf_counter() - t
    acts = store.model_activations
    return {"seconds": seconds, "tokens": acts.tokens_seen, "rows": rows, "forward_seconds": acts.forward_seconds}


def side_cache_read(args: dict) -> dict:
    """Stream a cache of the same contexts (built beforehand, not timed) through the store, shuffled."""
    from saecircuits.activations.cache import ActivationCache
    from saecircuits.activations.store import StoreConfig

    cache = ActivationCache(args["cache"])
    cfg = StoreConfig(batch_size_tokens=TRAIN_BATCH, model_batch_size=MODEL_BATCH, buffer_tokens=BUFFER_TOKENS)
    store = cache.store(cfg, repeat=False)
    t = time.perf_counter()
    rows = 0
    for b in store.batches(drop_last=False):
        rows += len(next(iter(b.values())))
    return {"seconds": time.perf_counter() - t, "tokens": cache.n_contexts * cache.context_size, "rows": rows}


def build_cache(tokens: str, hooks: list[str]) -> str:
    """The cache the cache-read side streams (built once per token file and hook set)."""
    from saecircuits.activations.cache import build_cache as build
    from saecircuits.activations.store import StoreConfig
    from saecircuits.text.config import TextConfig
    from saecircuits.text.source import TextSource

    folder = harness.WORK / f"cache_{Path(tokens).stem}_{len(hooks)}hooks"
    model = _model()
    text = TextSource(TextConfig(source=f"tokens:{tokens}", context_size=CONTEXT, eval_fraction=0), model.tokenizer, None, None)
    n = len(_tokens({"tokens": tokens})) * CONTEXT
    build(folder, model, hooks, text, StoreConfig(model_batch_size=MODEL_BATCH), n, progress=False)
    return str(folder)


def _saelens_store(model, ds, hooks, n_tokens, special):
    import torch
    from sae_lens.training.activations_store import ActivationsStore

    common = dict(dataset=ds, streaming=False, context_size=CONTEXT, n_batches_in_buffer=BUFFER_TOKENS // CONTEXT,
                  total_training_tokens=n_tokens, store_batch_size_prompts=MODEL_BATCH, train_batch_size_tokens=TRAIN_BATCH,
                  prepend_bos=False, normalize_activations="none", device=torch.device("cpu"), dtype="float32",
                  exclude_special_tokens=special)
    d = model.cfg.d_model
    if len(hooks) == 1:
        return ActivationsStore(model=model, hook_name=hooks[0], hook_head_index=None, d_in=d, **common)
    return ActivationsStore.from_config_multi_hook(model, hook_names=hooks, hook_d_ins={h: d for h in hooks}, **common)


def _drain_saelens(store, multi: bool) -> int:
    """Every context once through SAELens's own filter + mixing buffer (its loader, minus the endless epoch loop)."""
    from sae_lens.training.mixing_buffer import mixing_buffer, multi_hook_concat_split_iter

    def finite():
        while True:
            try:
                yield (store._get_filtered_multi_hook_llm_batch if multi else store.get_filtered_llm_batch)(raise_on_epoch_end=True)
            except StopIteration:
                return

    size = store.n_batches_in_buffer * store.training_context_size
    it = (multi_hook_concat_split_iter(size, store.train_batch_size_tokens, finite(), list(store._hook_names))
          if multi else mixing_buffer(size, store.train_batch_size_tokens, finite()))
    rows = 0
    for b in it:
        rows += len(next(iter(b.values()))) if multi else len(b)
    return rows


def side_saelens(args: dict) -> dict:
    """One SAELens store per hook, run one after another (one SAELens training run per SAE)."""
    import datasets
    import torch

    from saecircuits.model.loading import special_token_ids

    model, tokens = _model(), _tokens(args)
    ds = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})
    special = torch.tensor(special_token_ids(model))
    multi = args.get("multi", False)
    t = time.perf_counter()
    rows = 0
    groups = [args["hooks"]] if multi else [[h] for h in args["hooks"]]
    for hooks in groups:
        store = _saelens_store(model, ds, hooks, tokens.numel(), special)
        rows += _drain_saelens(store, multi)
    return {"seconds": time.perf_counter() - t, "tokens": tokens.numel() * (1 if multi else len(args["hooks"])), "rows": rows}


SIDES = {"bare": harness.side_bare, "ours": side_ours, "cache_read": side_cache_read, "saelens": side_saelens}


PARTS = ("single", "six")


def measure(part: str, a) -> dict:
    """One part's interleaved runs: label -> results."""
    mod = __file__
    if part == "single":
        tok1 = str(harness.shared_tokens("smollm2-135m", a.contexts_single, CONTEXT))
        cache1 = build_cache(tok1, SINGLE)
        return harness.interleaved(mod, [
            ("bare forward to layer 7", "bare", {"tokens": tok1, "hooks": SINGLE}),
            ("saecircuits store", "ours", {"tokens": tok1, "hooks": SINGLE}),
            ("saecircuits store reading its cache", "cache_read", {"cache": cache1}),
            ("SAELens ActivationsStore", "saelens", {"tokens": tok1, "hooks": SINGLE}),
        ], a.repeats)
    tok6 = str(harness.shared_tokens("smollm2-135m", a.contexts_six, CONTEXT))
    return harness.interleaved(mod, [
        ("bare forward to layer 30", "bare", {"tokens": tok6, "hooks": SIX}),
        ("saecircuits store, 6 hooks", "ours", {"tokens": tok6, "hooks": SIX}),
        ("SAELens, 6 stores", "saelens", {"tokens": tok6, "hooks": SIX}),
        ("SAELens multi-hook store", "saelens", {"tokens": tok6, "hooks": SIX, "multi": True}),
    ], a.repeats)


def _tps(res: list[dict], n_hooks: int = 1) -> float:
    return harness.median([{"v": r["tokens"] / n_hooks / r["seconds"]} for r in res], "v")


def _row(label: str, res: list[dict], n_hooks: int = 1) -> list[str]:
    return [label, f"{_tps(res, n_hooks):,.0f}", f"{harness.median(res, 'seconds'):.1f}",
            f"{harness.median(res, 'peak_rss_mb'):,.0f}"]


def _header(part: dict, what: str) -> str:
    a = part["args"]
    return (f"{what}; {MODEL_BATCH} contexts a forward pass, {TRAIN_BATCH}-token batches, {BUFFER_TOKENS:,}-token shuffle "
            f"buffer. Medians of {a['repeats']} interleaved runs, each in its own process. Machine: {part['machine']}.")


def summarise(part_name: str, part: dict) -> tuple[dict, list[str]]:
    """The part's ratios and its markdown section."""
    res = part["results"]
    if part_name == "single":
        bare, ours, cache, sl = (res[k] for k in res)
        s = {"single_vs_bare_forward": _tps(ours) / _tps(bare), "single_vs_saelens": _tps(ours) / _tps(sl),
             "cache_read_vs_generation": _tps(cache) / _tps(ours), "saelens_single_vs_bare_forward": _tps(sl) / _tps(bare)}
        return s, [
            "## One hook: blocks.6.hook_resid_post", "",
            _header(part, f"{part['args']['contexts_single']} stdlib contexts x {CONTEXT} tokens"), "",
            harness.md_table(["side", "context tokens/s", "seconds", "peak MB"], [
                _row("bare forward to layer 7", bare), _row("saecircuits store", ours),
                _row("saecircuits store reading its cache", cache), _row("SAELens ActivationsStore", sl)]),
            "",
            f"- saecircuits / bare forward: **{s['single_vs_bare_forward']:.3f}** (target >= 0.95)",
            f"- saecircuits / SAELens: **{s['single_vs_saelens']:.2f}x**; SAELens / bare forward: {s['saelens_single_vs_bare_forward']:.3f}",
            f"- reading the on-disk cache (shuffled) / generating: **{s['cache_read_vs_generation']:.1f}x** (target >= 1)", ""]
    bare, ours, sl, slm = (res[k] for k in res)
    t_ours, t_sl, t_slm = (harness.median(x, "seconds") for x in (ours, sl, slm))
    rounds = [x["seconds"] / y["seconds"] for x, y in zip(sl, ours, strict=True)]
    s = {"six_hooks_vs_six_saelens_stores": t_sl / t_ours, "six_hooks_vs_saelens_multi_hook_store": t_slm / t_ours,
         "six_hooks_vs_bare_forward": harness.median(bare, "seconds") / t_ours, "six_hooks_per_round": rounds}
    return s, [
        "## Six hooks at six depths: layers 4, 9, 14, 19, 24, 29 (resid_post)", "",
        _header(part, f"{part['args']['contexts_six']} stdlib contexts x {CONTEXT} tokens"), "",
        harness.md_table(["side", "context tokens/s per hook", "seconds", "peak MB"], [
            _row("bare forward to layer 30", bare), _row("saecircuits store, 6 hooks, one pass", ours),
            _row("SAELens, 6 stores (one per hook)", sl, 6), _row("SAELens 6.54 multi-hook store", slm)]),
        "",
        f"- six SAELens stores / saecircuits (time, ratio of medians): **{s['six_hooks_vs_six_saelens_stores']:.2f}x** (target >= 4); "
        f"per round: {', '.join(f'{r:.2f}' for r in rounds)}",
        f"- SAELens multi-hook store / saecircuits (time): {s['six_hooks_vs_saelens_multi_hook_store']:.2f}x",
        "- Bound: one pass to layer 30 against passes to layers 5+10+15+20+25+30 = 105 layer-blocks is at most "
        "105/30 = 3.5x from sharing the forward pass alone; the rest is the lean forward pass's speed over "
        "TransformerLens's, and the store's own overhead.", ""]


def main() -> None:
    """Each part updates its own entry of results/store_vs_saelens.json; the markdown is rebuilt from all parts."""
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=PARTS, action="append", help="default: both, in order")
    p.add_argument("--contexts-single", type=int, default=800)  # 102,400 tokens
    p.add_argument("--contexts-six", type=int, default=256)  # 32,768 tokens
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    path = harness.RESULTS / "store_vs_saelens.json"
    data: dict = json.loads(path.read_text()) if path.exists() else {}
    for part in a.part or PARTS:
        data[part] = {"machine": harness.machine(), "args": vars(a), "results": measure(part, a)}
        summary: dict = {}
        md = ["# Activation store: saecircuits vs SAELens", ""]
        for name in PARTS:
            if name in data:
                s, lines = summarise(name, data[name])
                summary.update(s)
                md += lines
        data["summary"] = summary
        harness.write("store_vs_saelens", data, "\n".join(md))


if __name__ == "__main__":
    if not harness.side_main(SIDES):
        main()
