"""Sharded, chunked, resumable row-by-row stage output: the one skeleton of `generate`, `rank`
and the eval stage's answers.

A stage that works prompt by prompt splits its input round-robin into shards (one per process
or SLURM array task), and each shard into chunks:

    <stage>/shardSSS-of-NNN/identity.txt       what the chunks were made from
    <stage>/shardSSS-of-NNN/chunkCCCCC.jsonl   one per chunk, each written atomically
    <stage>/shardSSS-of-NNN/counts.json        the shard's counts, once it is complete
    <stage>/<prefix>-shardSSS-of-NNN.jsonl     the shard's rows, once it is complete
    <stage>/metrics.json                       once every shard is complete
    <stage>/done.json                          then, last: the record the completing shard
                                               hands back, written by its caller

A re-run skips the chunks that exist, so a shard killed at any point and re-run ends with every
row exactly once. Chunks are trusted only under the identity they were made with: a changed
config is refused rather than silently mixed with the old rows. What changes rows by float
rounding only (how a judge's work is batched) is no part of the identity: each chunk's seal
records it (`made_with`), and a re-run continues with what the kept chunks were made with
(`continued`), so that the rows are one run's.

A chunked stage is `claim` (before its models load) then `process_shard`, shown by a progress
line the stage makes (src/config/cli.py); a later stage reads the rows back with `finished_rows`
(src/core/rows.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from src.core import locks, preemption
from src.core.artifacts import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_jsonl,
)
from src.core.errors import StageError
from src.core.records import Finished, redo_of

T = TypeVar("T")


def take_shard(items: Iterable[T], shard: int, num_shards: int) -> list[T]:
    """Every num_shards-th item, starting at position `shard`.

    Round-robin rather than contiguous blocks because datasets are often ordered by source,
    topic or length: blocks would give one shard all the long prompts (and the slowest job).
    Shards are disjoint, cover every item and differ in size by at most one.
    """
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise StageError(f"shard {shard} is out of range for num_shards={num_shards}")
    return [x for i, x in enumerate(items) if i % num_shards == shard]


@dataclass(frozen=True)
class Shard:
    stage_dir: Path
    prefix: str  # the rows file: <prefix>-shardSSS-of-NNN.jsonl
    index: int
    count: int

    @property
    def name(self) -> str:
        return f"shard{self.index:03d}-of-{self.count:03d}"

    @property
    def work(self) -> Path:
        return self.stage_dir / self.name

    @property
    def output(self) -> Path:
        return self.stage_dir / f"{self.prefix}-{self.name}.jsonl"

    def siblings(self) -> list[Shard]:
        return [Shard(self.stage_dir, self.prefix, i, self.count) for i in range(self.count)]


def claim(
    work: Path,
    identity: str,
    error: type[StageError],
    what: str,
    leftovers: str = "chunk*.jsonl",
    seals: str = "chunk*.sealed.json",
) -> None:
    """Refuse a work directory holding `leftovers` made from another `identity`, else mark it ours.

    Used for a shard's chunks and for the Trainer's checkpoints: what a re-run resumes from.
    What they were made from is read from the directory's `identity.txt` and from each leftover's
    seal (`seals`), so that a lost or replaced identity.txt never lets another config's work
    through. Refused with what starts the stage over (`redo_of` its folder; for a cache, none:
    deleting `work` does).
    """
    marker = work / "identity.txt"
    fix = redo_of(work.parent)
    start_over = "start the stage over" if fix else "delete that directory to redo it"
    foreign = [p for p in sorted(work.glob(seals)) if sealed_identity(p) not in (None, identity)]
    if foreign:
        raise error(
            f"{work} holds {what}, as {foreign[0].name} says; restore the config, or {start_over}",
            fix,
        )
    if marker.exists() and marker.read_text().strip() == identity:
        return
    # a run that failed before leaving anything (a judge that would not load) has nothing to protect
    if marker.exists() and any(work.glob(leftovers)):
        raise error(f"{work} holds {what}; restore the config, or {start_over}", fix)
    locks.require_held()  # the work is this process's alone (src/core/locks.py)
    atomic_write_text(marker, identity + "\n")


def continued(shard: Shard, identity: str, asked: dict[str, Any], label: str) -> dict[str, Any]:
    """The settings the stage goes on with: `asked` (config key -> value; what changes its rows
    by float rounding only, and so is no part of `identity`), except where the chunks kept under
    `identity` by any shard of the stage were made with other values (`made_with` in their
    seals): those, each said in one line, so that a resume ends with the rows of one run."""
    seals = sorted(shard.stage_dir.glob(f"shard*-of-{shard.count:03d}/chunk*.sealed.json"))
    kept = next((m for m in (sealed_made_with(p, identity) for p in seals) if m), {})
    settings = dict(asked)
    for key, value in asked.items():
        if key in kept and kept[key] != value:
            settings[key] = kept[key]
            print(
                f"[{label}] {key}={value} asked; the kept rows were made at {kept[key]}: "
                f"continuing at {kept[key]} so that the rows are one run's",
                file=sys.stderr,
                flush=True,
            )
    return settings


def sealed_made_with(seal_path: Path, identity: str) -> dict[str, Any]:
    """What a seal says its chunk was made with, where it was made under `identity` (else, or
    unreadable, or none recorded: {})."""
    try:
        seal = json.loads(seal_path.read_text())
        made_with = seal.get("made_with") if seal.get("identity") == identity else None
    except (OSError, ValueError, AttributeError):
        return {}
    return made_with if isinstance(made_with, dict) else {}


def sealed_identity(seal_path: Path) -> str | None:
    """The identity a seal says its file was made under (None: unreadable, or none recorded)."""
    try:
        made_under = json.loads(seal_path.read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return None
    return made_under if isinstance(made_under, str) else None


@dataclass
class ChunkTally:
    chunks: int = 0
    made: int = 0  # rows processed in this run
    reused: int = 0  # rows found in chunks of an earlier, interrupted run


Rows = list[dict[str, Any]]
# The chunks a run still has to make, in order: (chunk index, its items). Read lazily: a stream
# takes the next chunk when it has room for its work.
Todo = Iterator[tuple[int, list[T]]]
# A stage's work over the todo: (chunk index, its rows) for each chunk once every row of it is
# made, in any order. It may tell `progress` what it has under way between chunks.
Stream = Callable[[Todo, "Progress"], Iterable[tuple[int, Rows]]]


def chunk_by_chunk(process: Callable[[list[T]], Rows]) -> Stream:
    """The stream of a stage that makes one whole chunk at a time (`process(chunk) -> rows`)."""

    def stream(todo: Todo, progress: Progress) -> Iterator[tuple[int, Rows]]:
        for c, chunk in todo:
            yield c, process(chunk)

    return stream


def run_chunks(
    shard: Shard,
    items: Iterable[T],
    chunk_size: int,
    stream: Stream,
    identity: str,
    counts: ChunkCounts | None = None,
    progress: Progress | None = None,
    total: int | None = None,
    made_with: dict[str, Any] | None = None,
) -> ChunkTally:
    """Make the chunks of `items` that a run has not made yet, each chunk's file complete or absent.

    `items` is read a chunk at a time (a stream of `total` items, or a sequence), so a shard's
    work is never all in memory. A chunk whose file an earlier run sealed is not handed to
    `stream` again. `stream` may make several chunks at once and finish them in any order: each
    is written the moment the stream yields it. `identity`: what the shard was claimed under;
    each chunk's seal records it with the chunk's place, so a chunk is reused only under that
    identity and only in its own place; `made_with` (config key -> value), what else its rows
    were made with (`continued`). `counts.add(rows)` counts each chunk made.
    """
    total = len(items) if total is None else total  # type: ignore[arg-type]
    num_chunks = -(-total // chunk_size)
    tally = ChunkTally(chunks=num_chunks)
    progress = progress or Silent()
    counts = counts or ChunkCounts()

    def place(c: int) -> dict[str, Any]:
        return {"identity": identity, "shard": shard.name, "chunk": c}

    def todo() -> Todo:
        stream_of_items = iter(items)
        for c in range(num_chunks):
            chunk = list(itertools.islice(stream_of_items, chunk_size))
            path = chunk_path(shard, c)
            damage = chunk_damage(path, len(chunk), place(c))
            if damage is None:
                tally.reused += len(chunk)
                progress.reused(len(chunk))
                continue
            if path.exists():
                print(f"[chunks] {path}: {damage}; making it again", file=sys.stderr, flush=True)
            yield c, chunk

    for made_chunks, (c, rows) in enumerate(stream(todo(), progress), start=1):
        path = chunk_path(shard, c)
        text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
        locks.require_held()  # no chunk written beside another writer (src/core/locks.py)
        atomic_write_text(path, text)
        # the seal last: a chunk without one (a crash between the two writes) is made again
        made = {"made_with": made_with} if made_with else {}
        atomic_write_json(seal_of(path), {**seal(text), **place(c), **made})
        tally.made += len(rows)
        counts.add(rows)
        progress.update(done=tally.made, work=counts.work)
        # the stream is closed on the way out: the work it has under way is dropped, unsealed
        preemption.check(f"{made_chunks} chunk(s) of {shard.work} made in this run")
    progress.end()
    return tally


def chunk_path(shard: Shard, c: int) -> Path:
    return shard.work / f"chunk{c:05d}.jsonl"


@dataclass
class ChunkCounts:
    """What every chunked stage counts; a stage's own counts subclass it and add their fields."""

    reused_from_earlier_run: int = 0  # rows found in chunks of an earlier, interrupted run
    seconds: float = 0.0

    # what the progress line measures the stage's work in, and how much this run made
    unit = "rows"

    @property
    def work(self) -> float:
        return 0.0

    def add(self, rows: Rows) -> None:
        """Count the rows of a chunk made in this run."""

    def summarise(self, rows: Iterable[dict[str, Any]]) -> None:
        """Counts over every row of the shard, reused ones too (read only if overridden)."""


class Progress(Protocol):
    """What a shard's work tells the stage's progress display (src/core/progress.py:
    `ProgressLine`, whose words the stage chooses): items reused and made, work done, what is in
    flight."""

    def reused(self, items: int) -> None: ...

    def update(self, done: int, work: float, in_flight: int | None = None) -> None: ...

    def end(self) -> None: ...


class Silent:
    """A progress display that shows nothing."""

    def reused(self, items: int) -> None:
        pass

    def update(self, done: int, work: float, in_flight: int | None = None) -> None:
        pass

    def end(self) -> None:
        pass


def process_shard(
    shard: Shard,
    items: Iterable[T],
    chunk_size: int,
    stream: Stream,
    counts: ChunkCounts,
    fingerprint: str,
    identity: str,
    label: str,
    progress: Progress,
    shared_keys: Sequence[str] = (),
    total: int | None = None,
    made_with: dict[str, Any] | None = None,
) -> Finished | None:
    """Run a shard claimed under `identity`, shown by `progress`, then finish it.

    `items`: a sequence, or a stream of `total` items; `stream`: the stage's work over the
    chunks left to make (`chunk_by_chunk(process)` for a stage that makes one at a time);
    `made_with`: what its chunks' seals record they were made with (`continued`).
    `label`: the stage's name in its lines. Returns the stage's record once every shard is
    complete (`finish_shard`), else None.
    """
    started = time.time()
    total = len(items) if total is None else total  # type: ignore[arg-type]
    tally = run_chunks(
        shard, items, chunk_size, stream, identity, counts, progress, total, made_with
    )
    counts.reused_from_earlier_run = tally.reused
    if tally.reused:
        print(
            f"[{label}] {shard.name}: {tally.reused} of {total} rows kept from an earlier run, "
            f"{tally.made} made in this one",
            file=sys.stderr,
            flush=True,
        )
    counts.seconds = time.time() - started
    # read as JSON Lines: str.splitlines would also split a text at U+2028 and the like,
    # which JSON leaves unescaped
    counts.summarise(
        row for c in range(tally.chunks) for _, row in read_jsonl(chunk_path(shard, c), StageError)
    )
    return finish_shard(shard, tally.chunks, asdict(counts), fingerprint, shared_keys)


def seal_of(rows_file: Path) -> Path:
    """A rows file's seal: its row count and sha256, written after it."""
    return rows_file.with_suffix(".sealed.json")


def seal(text: str) -> dict[str, Any]:
    return {"rows": text.count("\n"), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def chunk_damage(path: Path, expected_rows: int, place: dict[str, Any]) -> str | None:
    """Why the chunk at `path` cannot be reused (None: it can): a chunk is trusted only whole,
    as its seal describes it, made for this `place` (the identity, shard and chunk index it is
    wanted for: a chunk copied from elsewhere is not), with one row per item of its slice."""
    if not path.exists():
        return "missing"
    try:
        seal = json.loads(seal_of(path).read_text())
        rows, sha = int(seal["rows"]), str(seal["sha256"])
        made_for = {key: seal[key] for key in place}
    except (OSError, ValueError, KeyError, TypeError):
        return "it has no valid seal (made by an interrupted write or an earlier version)"
    if made_for != place:
        wrong = ", ".join(f"{k} {made_for[k]!r}" for k in place if made_for[k] != place[k])
        return f"its seal says it was made for another place ({wrong})"
    if rows != expected_rows:
        return f"its seal says {rows} rows where its slice of the shard has {expected_rows}"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        return f"its content ({len(data)} bytes) does not match its seal (truncated or edited?)"
    return None


def finish_shard(
    shard: Shard,
    num_chunks: int,
    counts: dict[str, Any],
    fingerprint: str,
    shared_keys: Sequence[str] = (),
) -> Finished | None:
    """Write the shard's rows and counts; when every shard is complete, the stage's metrics.json.

    Returns the stage's record once it is complete (its totals over all shards, the seals of
    every shard's rows file), for its caller to write last, else None. Counts are summed over
    the shards except `shared_keys` (the same in every shard, e.g. the input's size).

    Shards run at the same time (a SLURM array): a shard's seal is written last, so a shard
    that sees every seal reads complete siblings; the last one to finish returns the record
    (two finishing together both return it, and done.json is written atomically, with the same
    content, by both).
    """
    locks.require_held()  # nothing sealed beside another writer (src/core/locks.py)
    atomic_write_json(shard.work / "counts.json", counts)
    # the chunks copied into the rows file block by block, sealed as they pass: a shard's rows
    # are never all in memory. Each chunk is checked against its seal on the way: one changed
    # since it was written (by hand, or by another process) never reaches the rows file.
    digest, rows = hashlib.sha256(), 0
    with atomic_path(shard.output) as tmp, open(tmp, "wb") as out:
        for c in range(num_chunks):
            path, own = chunk_path(shard, c), hashlib.sha256()
            with open(path, "rb") as chunk:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    own.update(block)
                    rows += block.count(b"\n")
                    out.write(block)
            sealed = read_json(seal_of(path), StageError).get("sha256")
            if own.hexdigest() != sealed:
                raise StageError(
                    f"{path} changed after it was written (it no longer matches "
                    f"{seal_of(path).name}); re-run the same command to make it again"
                )
    atomic_write_json(seal_of(shard.output), {"rows": rows, "sha256": digest.hexdigest()})
    if not all(seal_of(s.output).exists() for s in shard.siblings()):
        return None
    per_shard = [read_json(s.work / "counts.json", StageError) for s in shard.siblings()]
    totals = {
        k: (v if k in shared_keys else sum(c[k] for c in per_shard))
        for k, v in per_shard[0].items()
    }
    totals["shards"] = shard.count
    atomic_write_json(shard.stage_dir / "metrics.json", totals)
    outputs = {s.output.name: read_json(seal_of(s.output), StageError) for s in shard.siblings()}
    return Finished(fingerprint, totals, {"seconds": totals["seconds"]}, outputs)
