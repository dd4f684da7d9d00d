"""Training SAEs and transcoders from one activation stream: configs, the trainer, evaluation."""
