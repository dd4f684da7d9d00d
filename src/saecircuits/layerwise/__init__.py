"""Layer-wise analysis: what each layer of a model does.

One module an analysis, each a ``measure``-style function returning a JSON-able dict (the JSON of its
typed result in ``results``):

- ``lens``: the logit lens (and a tuned lens, ``tuned``) on prompts with answer tokens;
- ``contributions``: sublayer output norms and cosines relative to the residual stream;
- ``skipping``: skip or swap layers, effect on later layers and on the output;
- ``probes``: logistic-regression probes on each layer's residual (and on SAE features);
- ``linearity``: R^2 of one affine map between consecutive layers.

``config`` holds every analysis's settings; ``figures.write(out, name, result)`` writes a result as JSON
plus a PNG and PDF figure; the command line is ``saecircuits layers MODE``; ``section``
(``report_section``) gathers the analyses a circuit report shows.
"""

from __future__ import annotations

import importlib

from saecircuits.layerwise.config import StreamConfig

__all__ = ["contributions", "linearity", "logit_lens", "probes", "section", "skipping", "StreamConfig"]

_ANALYSES = {"contributions", "linearity", "probes", "skipping"}
_FUNCTIONS = {"logit_lens": "lens", "section": "report_section"}


def __getattr__(name: str):
    """The analyses on first use: they import the model stack (TransformerLens, seconds), which the
    command line does not need to read this package's configs (a heavy import kept lazy)."""
    if name in _ANALYSES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
