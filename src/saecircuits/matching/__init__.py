"""Matching SAE features across layers and models: activation correlation, weights, similarity, outputs.

    config.py       MatchConfig and the assignment methods (light: the command line reads its defaults)
    codes.py        sparse codes and the streaming feature x feature correlation
    firing.py       token classes and per-feature firing statistics of a stream
    assignment.py   Hungarian, best-partner and greedy assignment
    scores.py       cosine of directions, the distribution of matched scores
    weights.py      weight matching of folded decoders (SAE Match) and feature chains
    flow.py         feature flow across residual, attention and MLP SAEs
    stream.py       the text streams: one model, or two at character-aligned positions
    matcher.py      one pass over a stream, updating every pair's sums
    activations.py  activation matching of every (A, B) pair: ``match_saes``
    result.py       the typed result (``MatchResult``) and its JSON
    similarity.py   SVCCA, RSA, CKA with permutation nulls; SAE x SAE matrices
    outputs.py      the tables, graphs and figures a matching writes

The public names below are imported from their modules on first use (PEP 562), so importing one
light module (``matching.config``) does not load the model, SAE and scipy code of the others.
"""

import importlib

_HOMES = {
    "MatchConfig": "config", "Method": "config",
    "CorrelationAccumulator": "codes", "dense_from_code": "codes", "sparse_code": "codes",
    "FiringStats": "firing", "TokenClasses": "firing",
    "assign": "assignment",
    "cosine_matrix": "scores", "distribution": "scores",
    "feature_chains": "weights", "weight_match": "weights",
    "Place": "flow", "feature_flow": "flow", "flow_directions": "flow", "place_of": "flow",
    "Batch": "stream", "aligned_model_batches": "stream", "model_batches": "stream",
    "ActivationMatcher": "matcher",
    "match_pair": "activations", "match_saes": "activations", "pair_result": "activations", "pair_table": "activations",
    "sae_names": "activations",
    "MatchResult": "result", "MatchedPair": "result", "PairResult": "result", "SaeSummary": "result",
    "read_match": "outputs", "write_match": "outputs",
    "fold_scale": "saecircuits.sae.directions", "folded_decoder": "saecircuits.sae.directions",
    "folded_encoder": "saecircuits.sae.directions",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """A public name, from its home module (imported here, lazily: see the module docstring)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = _HOMES[name]
    return getattr(importlib.import_module(home if "." in home else f"{__name__}.{home}"), name)
