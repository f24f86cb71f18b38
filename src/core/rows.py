"""Reading a finished stage's rows back: every rows file checked against the seal its stage's
record holds before the first row is used (src/core/chunks.py writes them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.core.artifacts import file_sha256, read_jsonl
from src.core.chunks import Shard
from src.core.errors import StageError, shown
from src.core.layout import RECORD
from src.core.records import read_record, redo_of


def finished_rows(
    stage_dir: Path, prefix: str, error: type[StageError], finish: str | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of a finished stage, shard after shard, read as they are used
    (every shard's file is checked against its seal first).

    A stage without its done.json is unfinished (or killed): its files are never read. `finish`:
    the overrides that make the stage; bad files are refused with what makes it again
    (`redo_of`: none for a cache, which the next run remakes once its folder is deleted).
    """
    record = stage_dir / RECORD
    finished = read_record(stage_dir)
    if finished is None:
        raise error(f"{stage_dir} is not finished (no done.json); make it first", finish)
    redo_it = redo_of(stage_dir)
    again = "redo the stage" if redo_it else f"delete {stage_dir} to make it again"
    num_shards = finished["counts"].get("shards", 1)
    shards = (
        Shard(stage_dir, prefix, 0, num_shards).siblings()
        if isinstance(num_shards, int) and not isinstance(num_shards, bool) and num_shards >= 1
        else []
    )
    sealed = set(finished.get("outputs", {}))
    if not shards or (sealed and sealed != {s.output.name for s in shards}):
        raise error(
            f"{record}: its shard count ({shown(num_shards)}) does not match the rows files it "
            f"sealed ({', '.join(sorted(sealed)) or 'none'}); {again}",
            redo_it,
        )
    for s in shards:  # every file checked before the first row is used
        require_sealed(s.output, error, finished)
    return (row for s in shards for row in read_jsonl(s.output, error))


def require_sealed(output: Path, error: type[StageError], finished: dict | None = None) -> None:
    """`output` as its stage's record (`finished`, else read from done.json beside it) sealed
    it: present, and the same bytes when the record holds its sha256."""
    record = output.parent / RECORD
    if finished is None:
        finished = read_record(output.parent) or {}
    redo_it = redo_of(output.parent)
    again = "redo the stage" if redo_it else f"delete {output.parent} to make it again"
    if not output.is_file():
        raise error(
            f"{output} is missing although {record} says the stage finished; {again}", redo_it
        )
    sealed = finished.get("outputs", {}).get(output.name)
    if sealed is not None and file_sha256(output) != sealed.get("sha256"):
        raise error(
            f"{output} is not the file {record} recorded (truncated or edited?); {again}", redo_it
        )


def count_rows(path: str | Path) -> int | None:
    """The rows of a local rows file, cheaply: a parquet file's from its metadata, a JSON-lines
    file's non-blank lines; None for a path that is not such a file here (a hub dataset's id)
    or cannot be read (whoever reads its rows names what is wrong)."""
    path = Path(path).expanduser()
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_metadata(path).num_rows
        if path.suffix == ".jsonl":
            with path.open("rb") as f:
                return sum(1 for line in f if line.strip())
    except (OSError, ValueError):
        return None
    return None
