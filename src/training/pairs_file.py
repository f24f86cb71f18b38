"""What a pairs file is, without torch: the suffixes the training reads (data.py: parquet, or
JSON Lines) and `own_pairs_problem`, the check of a file of the user's own (training.pairs) that
`python -m src.main` makes before any stage (src/assets/preflight.py)."""

from __future__ import annotations

from pathlib import Path

from src.config import PAIRS_FILE, is_http_url

PARQUET = ".parquet"
JSON_LINES = (".jsonl", ".json")  # .json: JSON Lines too, one pair a line
PAIRS_SUFFIXES = (PARQUET, *JSON_LINES)


def own_pairs_problem(pairs: str) -> str | None:
    """Why `pairs` (training.pairs as the config resolves it) is no file the training can read:
    a URL, nothing there, a folder, a file of another kind; None when it is one."""
    path = Path(pairs)  # as the training reads it: `~` is a folder's name there
    if is_http_url(pairs):
        return f"a URL; training.pairs names a local file ({PAIRS_FILE}): download it first"
    shown = "" if str(path.absolute()) == pairs else f" ({path.absolute()})"
    if not path.exists():
        return f"no such file{shown}; training.pairs names {PAIRS_FILE}"
    if not path.is_file():
        return f"not a file{shown}; training.pairs names {PAIRS_FILE}"
    if path.suffix not in PAIRS_SUFFIXES:
        return f"a '{path.suffix}' file; training.pairs names {PAIRS_FILE}"
    return None
