"""End to end: the command line, the scheduler, iterations chained, locally and on SLURM."""
