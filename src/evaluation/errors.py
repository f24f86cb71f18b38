"""The evaluation's own failure, apart from the modules that generate (and so import torch): a
command that only reads what an eval needs (`--cfg job`, `python -m src.assets list`) names it
without loading a model library."""

from src.core.errors import StageError


class EvalError(StageError):
    """The evaluation cannot go on; the message says what and where."""
