"""Feature dashboards: streaming per-feature statistics, a static HTML site, Neuronpedia JSON and W&B.

    config.py       DashboardConfig: what a run reads and keeps
    stats.py        one pass over text: density, top examples, quantile samples, histograms (bounded memory)
    weights.py      logit effects through the unembedding, nearest features by decoder cosine
    html.py         the index and feature pages (escaped, no network)
    neuronpedia.py  the JSON layout of Neuronpedia's bulk import
    build.py        the whole flow, checkpointed and resumable, and W&B logging
"""

from __future__ import annotations

import importlib

from saecircuits.dashboards.config import DashboardConfig

__all__ = ["DashboardConfig", "build_dashboards", "run"]


def __getattr__(name: str):
    """``build_dashboards`` and ``run`` on first use: ``build`` imports the model stack (TransformerLens,
    seconds), which the command line does not need to read ``DashboardConfig`` (a heavy import kept lazy)."""
    if name in ("build_dashboards", "run"):
        return getattr(importlib.import_module(f"{__name__}.build"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
