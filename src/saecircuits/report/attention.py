"""Attention patterns for the report: the circuit's key heads on the task's first clean prompt.

The one part of collecting a report that runs the model (loaded here when the caller has none).
"""

from __future__ import annotations

import torch

from saecircuits.core.errors import SaecircuitsError


def key_heads(circuit: dict, n: int) -> list[str]:
    """The circuit's ``n`` heads with the largest |patching effect|."""
    rows = sorted(circuit.get("head_rows", []), key=lambda r: -abs(r["patching_effect"] or 0.0))
    return [r["head"] for r in rows[:n]]


@torch.no_grad()
def attention_patterns(model, tokens: torch.Tensor, heads: list[str]) -> dict:
    """Attention patterns of ``heads`` (``L.H``) on one prompt ``tokens`` [1, pos]: {tokens, heads: [{head, pattern [q][k]}]}."""
    layers = sorted({int(h.split(".")[0]) for h in heads})
    names = {f"blocks.{L}.attn.hook_pattern" for L in layers}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=max(layers) + 1)
    out = []
    for h in heads:
        L, i = (int(x) for x in h.split("."))
        out.append({"head": h, "pattern": [[round(float(v), 5) for v in row] for row in cache[f"blocks.{L}.attn.hook_pattern"][0, i]]})
    return {"tokens": model.to_str_tokens(tokens[0]), "heads": out}


def attention_section(results: dict, model, enabled: bool, n: int) -> dict:
    """The report's attention section: the key heads' patterns on the task's first clean prompt (the
    circuit's own, if it has them), or ``{missing: reason}``; takes ``attention`` out of the circuit section."""
    circuit = results["circuit"]
    if "missing" in circuit:
        return {"missing": "no circuit"}
    if circuit.get("attention"):
        return circuit.pop("attention")
    circuit.pop("attention", None)
    if not enabled:
        return {"missing": "attention patterns were not computed (--no-attention)"}
    heads = key_heads(circuit, n)
    # lazy: both import TransformerLens, which a report from a run whose circuit has its patterns never needs
    from saecircuits.circuits import tasks
    from saecircuits.model import loading as models

    if model is None:
        try:
            model = models.load(circuit["model"])
        except SaecircuitsError as e:
            return {"missing": f"the model {circuit['model']} could not be loaded for attention patterns: {e}"}
    cfg = circuit.get("config", {})
    task = tasks.build(circuit["task"], model, n=cfg.get("prompts", 16), seed=cfg.get("seed", 0),
                       **(cfg.get("task_options") or {}))
    result = attention_patterns(model, task.clean[:1], heads)
    result["prompt"] = model.to_string(task.clean[0])
    examples = circuit.get("examples") or []
    if examples and not result["prompt"].endswith(examples[0]):
        result["warning"] = f"the rebuilt task's first prompt differs from the circuit's first example {examples[0]!r}"
    result["selection"] = f"the circuit's {len(heads)} heads with the largest |patching effect|, on the task's first clean prompt"
    return result
