"""The one exception type a stage raises for bad input or state it cannot work with.

Its message says what and where; `python -m src.main` prints it as one line and exits 1,
where any other exception is a bug and keeps its traceback.
"""


class StageError(RuntimeError):
    """Bad input or state a stage cannot work with (a missing file, a malformed row, ...)."""
