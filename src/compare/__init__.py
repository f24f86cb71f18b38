"""Compare runs: a table row per (lineage, iteration), and three plots (`python -m src.compare`).

runs.py reads the runs (local run directories or W&B), pool.py pools lineages by seed (`--by
seed`), table.py writes the table and the CSV and holds the command line (its docstring is the
usage), plots.py draws the plots.
"""

from src.compare.runs import CompareError, discover, fetch_wandb
from src.compare.table import main
from src.stages.report.results import Iteration

__all__ = ["CompareError", "Iteration", "discover", "fetch_wandb", "main"]
