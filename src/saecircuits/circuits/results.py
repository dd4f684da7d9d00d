"""The typed result of a circuit study, exactly as ``circuit/results.json`` holds it.

``CircuitResult.to_json()`` is that file's content (the same keys in the same order);
``CircuitResult.from_json()`` reads one back, so the report and the command line read fields, and
a renamed one fails loudly instead of reading as missing. A section the study writes only when it
ran (``edges``, ``sae_codes``, and inside ``edges`` the exact re-measurement) is None when absent
and left out again; keys the report has always read as optional read back as None (or empty).
Sections a caller adds after the study (``extras``, e.g. ``circuits/ioi.py``'s sweep timing and
overlap) follow ``seconds`` in the order they were added. Per-head tables are [n_layers][n_heads].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from saecircuits.core.records import REQUIRED, LenientRecord, catch_all, json_field, not_in_json, optional, required

if TYPE_CHECKING:  # for annotations only: the result is read without loading torch's model stack
    import networkx as nx

    from saecircuits.circuits.discovery.edges import EdgeScores


@dataclass
class HeadEffects(LenientRecord):
    """Every head's normalised single-head effect (0 = none, 1 = as if corrupted), [n_layers][n_heads]."""

    patching_effect: list[list[float]] = required()
    ablation_effect: list[list[float]] = required()
    ablation: str | None  # the ablation behind ``ablation_effect``: mean, zero or resample


@dataclass
class Circuit(LenientRecord):
    """The circuit's heads (``L.H``), how many, which score chose them and by what rule."""

    if_missing = REQUIRED  # every key of a circuit

    heads: list[str]
    size: int
    selected_by: str  # patching or ablation
    rule: str  # "top K" or "|effect| >= T"


@dataclass
class EdgeResults(LenientRecord):
    """Edge attribution over every edge: the top edges and those inside the circuit, each ``[sender, receiver,
    score]``; ``confirmed`` (``sender``, ``receiver``, ``eap``, ``exact``) and ``eap_vs_exact`` (``pearson``,
    ``spearman``, ``same_sign``) when the top edges were re-measured by exact edge patching."""

    method: str | None  # eap or eap-ig
    n_edges: int | None
    top: list[list] = json_field(if_missing=[])
    circuit_edges: list[list] = json_field(if_missing=[])
    confirmed: list[dict] | None = optional()
    eap_vs_exact: dict | None = optional()  # needs more than two confirmed edges


@dataclass
class SAECodeResults(LenientRecord):
    """The SAE-code head scores [n_layers][n_heads], their config and seconds, and their agreement with the
    patching and the ablation effects (``discovery.sae_codes.compare_scores``)."""

    scores: list[list[float]] | None
    config: dict | None
    seconds: float | None
    vs_patching: dict | None
    vs_ablation: dict | None


@dataclass
class CircuitResult(LenientRecord):
    """Everything about one task's circuit on one model (see ``study.find_and_validate``).

    ``evaluation``: ``tasks.evaluate``'s dict; ``validation``: ``validation.validate_circuit``'s;
    ``faithfulness_by_size``: ``validation.faithfulness_by_size``'s rows; ``seconds``: per step.
    ``graph`` (the networkx DiGraph) and ``edge_scores`` are written to their own files, not to the JSON.
    """

    unknown_keys = "keep"  # in ``extras``, written after ``seconds``

    model: str | None
    task: str | None
    config: dict = json_field(if_missing={})
    evaluation: dict | None
    task_info: dict | None
    n_layers: int = required()
    n_heads: int = required()
    clean_metric: float | None
    corrupted_metric: float | None
    heads: HeadEffects = required()
    circuit: Circuit = required()
    validation: dict | None
    faithfulness_by_size: list[dict] = json_field(if_missing=[])
    edges: EdgeResults | None = json_field(omit_none=True, empty_is_missing=True)  # {} reads as None
    sae_codes: SAECodeResults | None = json_field(omit_none=True, empty_is_missing=True)
    patching_vs_ablation: dict | None
    seconds: dict[str, float] | None
    extras: dict[str, Any] = catch_all()
    graph: nx.DiGraph | None = not_in_json()
    edge_scores: EdgeScores | None = not_in_json()
