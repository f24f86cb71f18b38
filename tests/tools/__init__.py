"""The commands beside the pipeline: slurm, sweep, plan, explain, export, assets, compare,
the wheelhouse, the tiny models, published pairs, the benchmarks' results."""
