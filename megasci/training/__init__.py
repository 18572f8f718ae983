"""Pretraining: config, the training loop, checkpoints, metrics."""
