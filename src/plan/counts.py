"""How many prompts a source of prompts holds (`data.prompts`, `data.eval_prompts`), read without
the network, and where the figure comes from: a local file's rows; a hub dataset's split in the
Hub cache (`python -m src.assets fetch` puts it there), the rows of the files `datasets` reads
for the split; else the split's rows as its dataset card gives them (DATASET_CARD_ROWS). Rows,
not prompts: the generate stage drops a row that repeats an earlier one exactly."""

from __future__ import annotations

import json
from pathlib import Path

from src.core.hub import HUB_ID, snapshot_folder, split_files
from src.core.rows import count_rows

# (dataset, split): rows, as the `dataset_info` of the dataset's card on the Hub gives them
# (HuggingFaceH4/ultrafeedback_binarized at its main branch, the preset data=ultrafeedback)
DATASET_CARD_ROWS = {
    ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs"): 61_135,
    ("HuggingFaceH4/ultrafeedback_binarized", "test_prefs"): 2_000,
}


def source_rows(source: str, split: str, hub_cache: str) -> tuple[int, str] | None:
    """(rows, what they were read from) of `source`: a local file, a hub dataset's `split` in
    the Hub cache `hub_cache`, else its dataset card's count; None when none of these knows it."""
    rows = file_rows(Path(source).expanduser())
    if rows is not None:
        return rows, source
    rows = cached_split_rows(source, split, hub_cache)
    if rows is not None:
        return rows, f"{source} [{split}] in the Hub cache"
    if (source, split) in DATASET_CARD_ROWS:
        return DATASET_CARD_ROWS[source, split], f"{source} [{split}], by its dataset card"
    return None


def file_rows(path: Path) -> int | None:
    """A local file's rows (`count_rows`), a `.json` file's too: the elements of its one JSON
    array (AlpacaEval's alpaca_eval.json), else its non-blank lines, as the prompts are read."""
    if path.suffix != ".json":
        return count_rows(path)
    try:
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            rows = json.loads(text)
            return len(rows) if isinstance(rows, list) else None
    except (OSError, ValueError):  # not there, or not read as prompts are: not counted
        return None
    return sum(1 for line in text.splitlines() if line.strip())


def cached_split_rows(source: str, split: str, hub_cache: str) -> int | None:
    """The rows of the files `datasets` resolves for `split` of the hub dataset `source`'s
    snapshot in the Hub cache, from their metadata; None when it is not there or not counted."""
    if not HUB_ID.match(source):
        return None
    folder = snapshot_folder(source, "dataset", hub_cache=hub_cache)
    if folder is None:
        return None
    try:
        files = split_files(folder)
    except Exception:  # datasets raises many kinds: a folder it cannot read is not counted
        return None
    counts = [count_rows(f) for f in files.get(split, [])]
    return sum(counts) if counts and None not in counts else None
