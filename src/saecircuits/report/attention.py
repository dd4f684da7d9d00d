"""Attention patterns for the report: the circuit's key heads on its first test prompt.

The one part of collecting a report that runs the model (loaded here when the caller has none).
"""

from __future__ import annotations

import torch

from saecircuits.core.errors import SaecircuitsError


def key_heads(circuit: dict, n: int) -> list[str]:
    """The circuit's ``n`` heads with the most edges of the edge circuit between circuit nodes (ties, or no edge
    circuit: the largest |node score|, then the later layer)."""
    rows = sorted(circuit.get("head_rows", []), key=lambda r: (-((r["edges_in"] or 0) + (r["edges_out"] or 0)),
                                                              -abs(r.get("score") or 0.0), -r["layer"], r["index"]))
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
    """The report's attention section: the key heads' patterns on the circuit's first test prompt, or
    ``{missing: reason}``."""
    circuit = results["circuit"]
    if "missing" in circuit:
        return {"missing": "no circuit"}
    if not enabled:
        return {"missing": "attention patterns were not computed (--no-attention)"}
    heads = key_heads(circuit, n)
    if not heads or not circuit.get("example_tokens"):
        return {"missing": "the circuit has no heads or no example prompt"}
    from saecircuits.model import loading as models  # lazy: TransformerLens, which a regenerated report never needs

    if model is None:
        name = (circuit.get("config") or {}).get("model") or circuit["model"]  # the name the run was given
        try:
            model = models.load(name)
        except SaecircuitsError as e:
            return {"missing": f"the model {name} could not be loaded for attention patterns: {e}"}
    tokens = torch.tensor([circuit["example_tokens"]])
    result = attention_patterns(model, tokens, heads)
    result["prompt"] = model.to_string(tokens[0])
    result["selection"] = (f"the circuit's {len(heads)} heads with the most edge-circuit edges (else the largest "
                           "node scores), on the first test prompt")
    return result
