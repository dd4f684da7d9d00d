"""The command line and the main job's pipeline (the only place that prints tables and colours)."""
