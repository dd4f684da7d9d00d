"""Circuits: tasks, activation patching, ablation, discovery and validation."""
