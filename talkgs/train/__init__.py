"""Training: configs, stages, the generic trainer, checkpoints."""
