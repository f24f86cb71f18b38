"""src/training: the train stage's trainer, losses, optimizers, adapters, launcher."""
