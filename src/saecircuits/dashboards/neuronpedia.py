"""Feature dashboards as JSON in the layout of Neuronpedia's bulk import (SAEDashboard's batch files).

A file ``batch-<n>.json`` holds ``{"model_id", "layer", "sae_set", "features": [...]}``; a feature
carries its logit tables (``pos_str``/``pos_values``, ``neg_str``/``neg_values``), density
(``frac_nonzero``), the activation and logit histograms (``*_hist_data_bar_values`` = bin centres,
``*_bar_heights`` = counts) and ``activations``: examples with ``tokens`` and per-token ``values``.
Top examples have ``bin_min`` -1 and ``bin_max`` = the feature's maximum; quantile-band samples
carry the band's activation range and the share of firing contexts it covers (``bin_contains``).
Examples are the token windows around each maximum, not whole contexts. Dead features are left out.
"""

from __future__ import annotations

import math
from pathlib import Path

from saecircuits.core.files import ensure_dir, write_json
from saecircuits.model.hooks import layer_of


def _r(xs, nd: int = 3) -> list[float]:
    return [round(float(x), nd) for x in xs]


def feature_json(fv: dict, strings: dict[int, str], meta: dict) -> dict:
    """One feature view (``build.feature_view``) as a Neuronpedia feature; ``strings`` decodes token ids."""

    def example(ids, vals, lo, hi, contains) -> dict:
        inside = [j for j, t in enumerate(ids) if t in strings]
        return {"bin_min": lo, "bin_max": hi, "bin_contains": contains, "tokens": [strings[ids[j]] for j in inside],
                "values": [vals[j] for j in inside]}  # already rounded to 3 decimals in the views

    acts = [example(ids, vals, -1, round(fv["max_act"], 3), -1) for _, ids, vals, _, _ in fv["top"]]
    for band in fv["bands"]:
        acts.extend(example(ids, vals, round(band["min"], 3), round(band["max"], 3), round(band["q"][1] - band["q"][0], 4))
                    for _, ids, vals, _, _ in band["examples"])
    edges = fv["hist_edges"]
    centres = [math.sqrt(a * b) if a > 0 else b / 2 for a, b in zip(edges, edges[1:], strict=False)]
    logit_values, logit_heights = [], []
    if fv["logit_hist"] is not None:
        counts, lo, hi = fv["logit_hist"]
        w = (hi - lo) / len(counts)
        logit_values = _r(lo + (j + 0.5) * w for j in range(len(counts)))
        logit_heights = [int(c) for c in counts]
    return {
        "feature_index": fv["id"],
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [strings[t] for t, _ in fv["neg_logits"]], "neg_values": _r(v for _, v in fv["neg_logits"]),
        "pos_str": [strings[t] for t, _ in fv["pos_logits"]], "pos_values": _r(v for _, v in fv["pos_logits"]),
        "frac_nonzero": fv["density"],
        "freq_hist_data_bar_values": _r(centres, 4), "freq_hist_data_bar_heights": [int(c) for c in fv["hist_counts"]],
        "logits_hist_data_bar_heights": logit_heights, "logits_hist_data_bar_values": logit_values,
        "n_prompts_total": meta["contexts"], "n_tokens_in_prompt": meta["context_size"], "dataset": meta["text"],
        "decoder_weights_dist": [],
        "activations": acts,
    }


class Exporter:
    """Writes live features to ``batch-<n>.json`` files of ``per_file`` features, as views arrive."""

    def __init__(self, folder: Path, strings: dict[int, str], meta: dict, per_file: int = 128):
        self.folder, self.strings, self.meta, self.per_file = ensure_dir(folder), strings, meta, per_file
        for old in self.folder.glob("batch-*.json"):
            old.unlink()
        layer = layer_of(meta["hook"])
        self.layer = layer if layer is not None else 0
        self.pending: list[dict] = []
        self.paths: list[Path] = []

    def add(self, views: list[dict]) -> None:
        self.pending.extend(feature_json(v, self.strings, self.meta) for v in views if not v["dead"])
        while len(self.pending) >= self.per_file:
            self._flush(self.per_file)

    def _flush(self, n: int) -> None:
        batch = {"model_id": self.meta["model"], "layer": self.layer, "sae_set": self.meta["sae_name"],
                 "features": self.pending[:n]}
        self.paths.append(write_json(self.folder / f"batch-{len(self.paths)}.json", batch, indent=None))
        self.pending = self.pending[n:]

    def close(self) -> list[Path]:
        """Write what is left; returns every file written."""
        if self.pending:
            self._flush(len(self.pending))
        return self.paths
