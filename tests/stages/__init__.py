"""src/stages: each stage through its own code, its cards and its W&B tracking."""
