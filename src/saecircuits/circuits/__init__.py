"""Circuits: tasks and their held-out splits, the computation graph and the masked forward, evaluation under
every ablation, discovery methods, and the comparison of methods over MIB's sizes."""
