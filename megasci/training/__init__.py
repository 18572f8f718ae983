"""Pretraining as components: config, datasets, parallelize (policy applied to the model), train_step,
guard, validator, checkpoint, metrics, stop; trainer.py's `Trainer.train()` calls them in order."""
