"""Layer-wise analysis: what each layer of a model does.

One module an analysis, each a ``measure``-style function returning a JSON-able dict:

- ``lens``: the logit lens (and a tuned lens, ``tuned``) on prompts with answer tokens;
- ``contributions``: sublayer output norms and cosines relative to the residual stream;
- ``skipping``: skip or swap layers, effect on later layers and on the output;
- ``probes``: logistic-regression probes on each layer's residual (and on SAE features);
- ``linearity``: R^2 of one affine map between consecutive layers.

``figures.write(out, name, result)`` writes a result as JSON plus a PNG and PDF figure; the command
line is ``saecircuits layers MODE``; ``section`` gathers the analyses a circuit report shows.
"""

from __future__ import annotations

from transformer_lens import HookedTransformer

from saecircuits.layerwise import contributions, linearity, probes, skipping
from saecircuits.layerwise.lens import logit_lens
from saecircuits.layerwise.stream import StreamConfig

__all__ = ["contributions", "linearity", "logit_lens", "probes", "section", "skipping", "StreamConfig"]


def section(model: HookedTransformer, prompts: list[str] | None = None, answers: list[str] | None = None,
            stream: StreamConfig | None = None, skip_tokens: int = 1024, labelled: probes.Labelled | None = None,
            out: str | None = None) -> dict:
    """The layer-analysis section of a circuit report: logit lens on the circuit's prompts (when
    given), sublayer contributions, skip effects, and probes (when labelled texts are given).
    With ``out``, each result is also written there as JSON and figures."""
    from saecircuits.layerwise import figures

    stream = stream or StreamConfig(tokens=8192)
    results: dict[str, dict] = {}
    if prompts:
        results["logit_lens"] = logit_lens(model, prompts, answers or [])
    results["contributions"] = contributions.measure(model, stream)
    skip_stream = stream.model_copy(update={"tokens": skip_tokens, "batch_size": min(stream.batch_size, 4)})
    results["skipping"] = skipping.measure(model, skipping.SkipConfig(stream=skip_stream))
    if labelled is not None:
        results["probes"] = probes.measure(model, labelled, probes.ProbeConfig())
    if out:
        for name, r in results.items():
            r["files"] = figures.write(out, name, r)
    return results
