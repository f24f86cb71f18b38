"""What the test folders share: command helpers, the local Hub, the tiny lineages, the SLURM
cluster, W&B's reader, FastChat's files, the durations plugin."""
