"""Activations streamed out of a model: hook sites, the shuffling store, and the on-disk cache."""
