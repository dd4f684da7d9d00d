"""Matching SAE features across layers and models: activation correlation, weights, similarity, outputs."""
