"""The typed result of an activation matching, as ``match_saes`` returns it and ``write_match`` writes it.

``to_json()`` gives the JSON-able dict (matching/match.json holds it with each pair's ``pairs``
left out; pairs/<a>__<b>/table.json holds the ``pairs``); ``from_json()`` reads one back. Keys
a partial or older file lacks read as None (a pair's ``kept`` as True), as the report always read
them; the SAE names ``a`` and ``b`` of a pair and of a matched feature pair are required.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from saecircuits.core.records import LenientRecord, json_field, optional, required


@dataclass
class MatchedPair(LenientRecord):
    """One matched feature pair: feature ids, correlation r, decoder cosine (None across spaces),
    firings, shares of firings on special/punctuation tokens, top tokens and the filter flags."""

    a: int = required()
    b: int = required()
    r: float | None
    cos: float | None
    fires_a: int | None
    fires_b: int | None
    special_share_a: float | None
    special_share_b: float | None
    top_tokens_a: list[str] = json_field(if_missing=[], empty_is_missing=True)  # null reads as []
    top_tokens_b: list[str] = json_field(if_missing=[], empty_is_missing=True)
    low_r: bool | None
    special_only: bool | None
    kept: bool = json_field(if_missing=True)


@dataclass
class PairResult(LenientRecord):
    """One (A, B) pair of SAEs: ``summary`` (counts, the distribution of r and cos, seconds; keys such as
    ``mean_r`` and ``share_r_gt_0.7``), ``similarity`` ({"decoder" | "activations": {measure: statistics}})
    and the matched feature pairs (None when read from match.json, which leaves them out)."""

    a: str = required()
    b: str = required()
    hook_a: str | None
    hook_b: str | None
    method: str | None
    summary: dict = json_field(if_missing={})
    similarity: dict | None
    pairs: list[MatchedPair] | None = optional()

    def to_json(self, with_pairs: bool = True) -> dict:
        """The JSON-able dict; ``with_pairs`` False leaves the matched feature pairs out (match.json)."""
        return super().to_json() if with_pairs else replace(self, pairs=None).to_json()


@dataclass
class SaeSummary(LenientRecord):
    """One SAE of a matching: its side, hook and width, alive features and compared tokens, the share of
    its firings on special positions, and each feature's mean activation when firing [d_sae]."""

    side: str | None
    hook: str | None
    d_sae: int | None
    architecture: str | None
    alive: int | None
    compared_tokens: int | None
    fires_special_share: float | None
    mean_active: list[float] | None  # the activation scale SAE Match folds into a TopK decoder


@dataclass
class MatchResult(LenientRecord):
    """An activation matching: ``config`` (``MatchConfig`` as JSON), ``models`` ({"a", "b"[, "aligned_to"]}:
    model names), whether both sides read one model, the SAEs by name, ``timing`` (seconds and compared
    tokens) and one result per (A, B) pair."""

    config: dict = json_field(if_missing={})
    models: dict | None
    same_model: bool | None
    saes: dict[str, SaeSummary] = json_field(if_missing={})
    timing: dict | None
    results: list[PairResult] = json_field(if_missing=[])

    def to_json(self, with_pairs: bool = True) -> dict:
        """The JSON-able dict; ``with_pairs`` False leaves each pair's matched features out (match.json)."""
        return super().to_json() if with_pairs else \
            replace(self, results=[replace(r, pairs=None) for r in self.results]).to_json()
