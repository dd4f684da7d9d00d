"""The language model: loading (offline packages, cache, hub), TransformerLens hook names, the lean forward,
unembedding, and freezing its weights."""
