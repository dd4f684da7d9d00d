"""Feature dashboards: streaming per-feature statistics, a static HTML site, Neuronpedia JSON and W&B.

    stats.py        one pass over text: density, top examples, quantile samples, histograms (bounded memory)
    weights.py      logit effects through the unembedding, nearest features by decoder cosine
    html.py         the index and feature pages (escaped, no network)
    neuronpedia.py  the JSON layout of Neuronpedia's bulk import
    build.py        the whole flow, checkpointed and resumable, and W&B logging
"""

from saecircuits.dashboards.build import DashboardConfig, build_dashboards, run

__all__ = ["DashboardConfig", "build_dashboards", "run"]
