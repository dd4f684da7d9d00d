"""Circuits: tasks and their prompts, the head patching engine, ablation, discovery methods, validation, the study."""
