"""The prompts of a generation run: load them, give each a stable id, split them into shards.

A prompt source is either a local file (JSON Lines: `.jsonl` / `.json`; a `.json` holding one
JSON array, as AlpacaEval's `alpaca_eval.json`; or `.parquet`) or a
Hugging Face dataset id (`owner/name`, e.g. the SPPO iteration splits). Either way the result
is the same list of `Prompt(prompt_id, prompt)` in the source's own order, so that the same
config always sees the same prompts in the same order (docs/design.md §5: rows are keyed by
`prompt_id` from here to the trainer).

Every bad input raises `PromptsError` (a `StageError`) whose one-line message says what is
wrong and where: the file and line / row, and the prompt_id when there is one. Nothing is
skipped silently; the only rows left out are exact duplicates, and those are counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.core.artifacts import read_jsonl, require_encodable
from src.core.contracts import derive_prompt_id
from src.core.errors import EnvironmentFailure, StageError, causes, shown
from src.core.hub import HUB_ID

# Suffixes read as JSON Lines / parquet. A source with one of them is always a path, never a
# hub id, so a typo in a file name says "not found" instead of trying the network.
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
# `owner/name` as the Hub spells repository ids (letters, digits, '-', '_', '.').
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


class PromptsError(StageError):
    """A prompt source that cannot be used; the message names the file, row and prompt_id."""


class PromptsUnreachable(PromptsError, EnvironmentFailure):
    """A hub dataset that cannot be fetched: the Hub is offline or unreachable."""


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    prompt: str  # the raw user text; the chat template is applied later, by the backend
    dataset: str | None = None  # a row's `dataset` value (AlpacaEval's subsets), when it has one
    # the conversation before `prompt`, (user, assistant) turns: MT-Bench's second turn follows
    # the model's own first answer
    history: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PromptSet:
    """What `load_prompts` returns: the prompts plus what the completion record should count.

    `duplicates_dropped` counts rows that repeated an earlier (prompt_id, prompt) exactly;
    real datasets repeat prompts and generating twice for one id would break the
    one-row-per-prompt_id contract downstream. `source` is the source as given.
    """

    prompts: list[Prompt]
    duplicates_dropped: int = 0
    source: str = ""
    # of a JSON Lines file read only in part (max_prompts): the bytes read from its start, what
    # the stage's record vouches for (rows after them neither read nor validated)
    bytes_read: int | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)


# ---------------------------------------------------------------------------------------------
# Loading


def load_prompts(
    source: str,
    *,
    split: str = "train",
    prompt_column: str = "prompt",
    id_column: str | None = None,
    max_prompts: int | None = None,
) -> PromptSet:
    """Read the prompts of `source`, validated, de-duplicated, in the source's order.

    `source`: an existing local file (.jsonl / .json as JSON Lines, or .parquet), or else a
    Hugging Face dataset id `owner/name` read with `datasets.load_dataset(source, split=split)`
    (a dataset already in the local cache also loads offline).
    `id_column`: the column holding each prompt's id (coerced to str); None derives the id from
    the text (`derive_prompt_id`).
    `max_prompts`: keep only the first N unique prompts (smoke runs); rows after them are
    neither read nor validated.
    """
    if max_prompts is not None and max_prompts < 1:
        raise PromptsError(f"max_prompts must be >= 1 or None, got {max_prompts}")
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            rows = _json_array_rows(path) if _is_json_array(path) else _jsonl_rows(path)
        elif suffix in PARQUET_SUFFIXES:
            rows = _parquet_rows(path, [prompt_column, id_column])
        else:
            raise PromptsError(
                f"unsupported prompt file type {suffix or '(no suffix)'!r}: {source} "
                "(use .jsonl / .json with one JSON object per line, or .parquet)"
            )
    elif path.exists():
        raise PromptsError(f"prompt source is not a file: {source} (pass a .jsonl or .parquet)")
    elif _looks_like_hub_id(source):
        rows = _hub_rows(source, split, [prompt_column, id_column])
    else:
        raise PromptsError(
            f"prompt file not found: {source} (nor is it a Hugging Face dataset id 'owner/name')"
        )
    prompts, duplicates, last = _collect(rows, source, prompt_column, id_column, max_prompts)
    line = last.rpartition(":")[2] if last is not None else ""  # a JSON Lines row's `file:line`
    read = _bytes_of_lines(path, int(line)) if path.is_file() and line.isdigit() else None
    return PromptSet(prompts, duplicates, source, read)


def _bytes_of_lines(path: Path, lines: int) -> int:
    """The length in bytes of the first `lines` lines of `path`, their line ends included."""
    with path.open("rb") as f:
        return sum(len(line) for _, line in zip(range(lines), f, strict=False))


def _looks_like_hub_id(source: str) -> bool:
    # A relative path like "prompts/x" matches owner/name too; it only reaches here when no
    # such file exists, and then trying the Hub is the right guess.
    return bool(HUB_ID.match(source)) and not source.lower().endswith(
        JSONL_SUFFIXES + PARQUET_SUFFIXES
    )


# A row source yields (where, row): `where` locates the row in messages ("file.jsonl:7").
Rows = Iterator[tuple[str, Mapping[str, Any]]]


def _jsonl_rows(path: Path) -> Rows:
    return read_jsonl(path, PromptsError, example='{"prompt_id": ..., "prompt": ...}')


def _is_json_array(path: Path) -> bool:
    """A `.json` file holding one JSON array (AlpacaEval's `alpaca_eval.json`)."""
    if path.suffix.lower() != ".json":
        return False
    with path.open("rb") as f:
        return f.read(4096).lstrip().startswith(b"[")


def _json_array_rows(path: Path) -> Rows:
    import json

    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise PromptsError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise PromptsError(
            f"{path}: malformed JSON array: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    if not isinstance(rows, list):
        raise PromptsError(f"{path}: a JSON {type(rows).__name__}, expected an array of objects")
    for index, row in enumerate(rows):
        where = f"{path}[{index}]"
        if not isinstance(row, dict):
            raise PromptsError(f"{where}: a JSON {type(row).__name__}, expected an object")
        yield where, row


def _parquet_rows(path: Path, wanted: list[str | None]) -> Rows:
    import pyarrow  # lazy: a JSONL run never needs it
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise PromptsError(f"{path}: cannot read as parquet: {err}") from None
    names = parquet.schema_arrow.names
    columns = _check_columns(wanted, names, str(path)) + _dataset_column(names)
    # Read only the two columns we need, batch by batch: a preference dataset's other columns
    # (full conversations) are most of its size.
    row_number = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=columns):
        for row in batch.to_pylist():
            row_number += 1
            yield f"{path} row {row_number}", row


def _hub_rows(source: str, split: str, wanted: list[str | None]) -> Rows:
    import datasets  # lazy: only hub ids need it, and importing it costs about a second
    from huggingface_hub import constants

    from src.core.hub import datasets_config, snapshot_folder

    datasets_config()
    # Offline, `datasets` reads a hub id only from its own Arrow cache of an earlier load; a
    # dataset fetched into the Hub cache (python -m src.assets fetch) is read from its snapshot
    folder = snapshot_folder(source, "dataset") if constants.is_offline_mode() else None
    try:
        dataset = datasets.load_dataset(str(folder) if folder else source, split=split)
    except Exception as err:
        translated = _hub_error(source, split, err)
        if translated is None:
            raise
        raise translated from None  # the message carries the cause; no ConnectionError trace
    where = f"dataset {source!r} split {split!r}"
    names = list(dataset.column_names)
    columns = _check_columns(wanted, names, where) + _dataset_column(names)
    row_number = 0
    for batch in dataset.select_columns(columns).iter(batch_size=4096):
        for values in zip(*(batch[c] for c in columns), strict=True):
            row_number += 1
            yield f"{where} row {row_number}", dict(zip(columns, values, strict=True))


def _check_columns(wanted: list[str | None], names: list[str], where: str) -> list[str]:
    """Columnar sources share one schema: a missing column is missing from every row."""
    columns = [c for c in wanted if c is not None]
    for column in columns:
        if column not in names:
            raise PromptsError(f"{where}: no column {column!r} (its columns: {_names(names)})")
    return list(dict.fromkeys(columns))  # prompt_column may equal id_column


def _dataset_column(names: Sequence[str]) -> list[str]:
    return ["dataset"] if "dataset" in names else []


def _hub_error(source: str, split: str, err: Exception) -> PromptsError | None:
    """One line for the ways a hub load fails on bad input; None: a bug, keep its traceback."""
    what = f"Hugging Face dataset {source!r} (split {split!r})"
    if isinstance(err, ValueError) and "split" in str(err).lower():
        return PromptsError(f"{what}: {err}")  # e.g. 'Unknown split "iter9"'
    offline = [v for v in _OFFLINE_VARS if os.environ.get(v, "").strip().lower() in _TRUE]
    # offline, a dataset missing from the cache surfaces as a connection or a not-found error
    if _is_network_error(err) or (offline and isinstance(err, FileNotFoundError)):
        reason = (
            f"{', '.join(offline)} set"
            if offline
            else f"the Hub is unreachable: {type(err).__name__}: {err}"
        )
        return PromptsUnreachable(
            f"{what} cannot be fetched offline ({reason}) and is not in the local cache: "
            "fetch it where the Hub is reachable (python -m src.assets fetch with this "
            "command's overrides), or pass a local .jsonl or .parquet prompt file instead"
        )
    if _is_a(err, "DatasetNotFoundError"):
        return PromptsError(f"{what} not found on the Hub (or it is private / gated): {err}")
    return None


def _is_a(err: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(err).__mro__)


def _is_network_error(err: BaseException | None) -> bool:
    # The HF clients wrap requests / httpx errors in their own; match by class name along the
    # cause chain rather than import every HTTP library that might be underneath.
    network = (
        "ConnectionError",
        "TimeoutError",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
    )
    return any(_is_a(inner, *network) for inner in causes(err))


def _names(names: Sequence[str] | Any) -> str:
    return ", ".join(repr(str(n)) for n in names) or "none"


def _collect(
    rows: Rows,
    source: str,
    prompt_column: str,
    id_column: str | None,
    max_prompts: int | None,
) -> tuple[list[Prompt], int, str | None]:
    """The prompts, the duplicates dropped, and where the last row read was, when `max_prompts`
    stopped the reading before the end (None: every row was read)."""
    prompts: list[Prompt] = []
    first_seen: dict[str, tuple[str, str]] = {}  # prompt_id -> (prompt, where it was first)
    duplicates = 0
    for where, row in rows:
        prompt = _prompt_of(where, row, prompt_column, id_column)
        earlier = first_seen.get(prompt.prompt_id)
        if earlier is not None:
            text, first_where = earlier
            if text != prompt.prompt:
                raise PromptsError(
                    f"{where}: prompt_id {prompt.prompt_id!r} is also used at {first_where} "
                    "with a different prompt text (ids must identify one prompt)"
                )
            duplicates += 1  # same id, same text: a repeat, keep the first
            continue
        first_seen[prompt.prompt_id] = (prompt.prompt, where)
        prompts.append(prompt)
        if max_prompts is not None and len(prompts) >= max_prompts:
            return prompts, duplicates, where  # the rows after it are not read
    if not prompts:
        raise PromptsError(f"{source} holds no prompts")
    return prompts, duplicates, None


def _prompt_of(
    where: str, row: Mapping[str, Any], prompt_column: str, id_column: str | None
) -> Prompt:
    # The id first, so every later message about this row can name it.
    if id_column is not None:
        if id_column not in row:
            raise PromptsError(
                f"{where}: row has no id column {id_column!r} (its columns: {_names(row)})"
            )
        raw_id = row[id_column]
        # ints are common ids (and parquet keeps them as ints); anything else is a mistake
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise PromptsError(
                f"{where}: {id_column!r} is {shown(raw_id)}, expected a string or an integer id"
            )
        prompt_id = str(raw_id)
        if not prompt_id.strip():
            raise PromptsError(f"{where}: {id_column!r} is empty")
        require_encodable(where, repr(id_column), prompt_id, PromptsError)
        named = f"{where} (prompt_id {prompt_id!r})"
    else:
        prompt_id = None
        named = where
    if prompt_column not in row:
        raise PromptsError(
            f"{named}: row has no column {prompt_column!r} (its columns: {_names(row)})"
        )
    text = row[prompt_column]
    if not isinstance(text, str):
        # e.g. a chat-format column (a list of messages) picked by mistake, or a null
        raise PromptsError(f"{named}: {prompt_column!r} is {shown(text)}, expected a string")
    if not text.strip():
        raise PromptsError(f"{named}: the prompt is empty or only whitespace")
    require_encodable(named, "the prompt", text, PromptsError)
    dataset = row.get("dataset")
    if isinstance(dataset, str):  # written back in the eval's exports
        require_encodable(named, "'dataset'", dataset, PromptsError)
    return Prompt(
        prompt_id if prompt_id is not None else derive_prompt_id(text),
        text,
        dataset if isinstance(dataset, str) else None,
    )
