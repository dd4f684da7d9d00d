"""The layer-analysis section of a circuit report: the analyses the demo's ``layers`` stage runs."""

from __future__ import annotations

from transformer_lens import HookedTransformer

from saecircuits.layerwise import contributions, figures, probes, skipping
from saecircuits.layerwise.config import ProbeConfig, SkipConfig, StreamConfig
from saecircuits.layerwise.lens import logit_lens


def section(model: HookedTransformer, prompts: list[str] | None = None, answers: list[str] | None = None,
            stream: StreamConfig | None = None, skip_tokens: int = 1024, labelled: probes.Labelled | None = None,
            out: str | None = None) -> dict:
    """The layer-analysis section of a circuit report: logit lens on the circuit's prompts (when
    given), sublayer contributions, skip effects, and probes (when labelled texts are given).
    With ``out``, each result is also written there as JSON and figures."""
    stream = stream or StreamConfig(tokens=8192)
    results: dict[str, dict] = {}
    if prompts:
        results["logit_lens"] = logit_lens(model, prompts, answers or [])
    results["contributions"] = contributions.measure(model, stream)
    skip_stream = stream.model_copy(update={"tokens": skip_tokens, "batch_size": min(stream.batch_size, 4)})
    results["skipping"] = skipping.measure(model, SkipConfig(stream=skip_stream))
    if labelled is not None:
        results["probes"] = probes.measure(model, labelled, ProbeConfig())
    if out:
        for name, r in results.items():
            r["files"] = figures.write(out, name, r)
    return results
