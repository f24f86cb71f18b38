"""Atomic writes: a file either has its complete new content or does not exist (and the JSONL
rows read back, each text checked to be one UTF-8 can write again).

A stage killed half-way must never leave a file that a re-run would trust, so everything is
written to a temporary name in the same directory (same filesystem, so the rename is atomic),
flushed to disk, then renamed over the final name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from src.core.errors import Redo, StageError, naming


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` to write to; flushed to disk and renamed over `path`
    when the block ends, removed if it raises. For writers that want a path (parquet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with naming(path):  # a write that failed (a full disk): say which file it was
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            # mkstemp makes the file 0600: give it the mode an ordinary file gets (0644 under umask
            # 022), so that the rest of a team can read a run, and no more than the umask allows
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
            sync_directory(path.parent)  # the rename itself survives a crash of the node
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The random part of a temporary's name as mkstemp makes it (CPython's tempfile): 8 characters
RANDOM_PART = re.compile(r"[a-z0-9_]{8}")


def temporaries(path: Path) -> list[Path]:
    """The temporaries `atomic_path(path)` made beside `path` (a killed writer leaves its own), by
    an exact test on each name, `.<path's name>.<mkstemp's random part>.tmp`: `path`'s name is
    never a pattern (a `*` in it would match other files' temporaries)."""
    prefix, suffix = f".{path.name}.", ".tmp"
    return [
        p
        for p in sorted(path.parent.iterdir())
        if p.name.startswith(prefix)
        and p.name.endswith(suffix)
        and RANDOM_PART.fullmatch(p.name[len(prefix) : -len(suffix)])
    ]


@functools.cache
def umask() -> int:
    """The process's umask, read once (reading it means setting it)."""
    current = os.umask(0o022)
    os.umask(current)
    return current


def share(folder: str | os.PathLike[str]) -> None:
    """Give every file and folder under `folder` the mode the umask gives a new one (0644 and
    0755 under umask 022). Libraries save some files through a private temporary file (0600):
    a checkpoint the rest of a team cannot read is not shared."""
    files, dirs = 0o666 & ~umask(), 0o777 & ~umask()
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, dirs if path.is_dir() else files)


def sync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_files(folder: Path, pattern: str = "*") -> list[Path]:
    """The files under `folder` (matching `pattern`) that a reader of it reads, sorted: hidden
    ones left out, and those under a hidden folder (the `.cache/` of `hf download --local-dir`,
    rewritten by each download)."""
    return sorted(
        f
        for f in folder.rglob(pattern)
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts)
    )


def files_sha256(paths: Iterable[Path]) -> dict[Path, str]:
    """sha256 of each file, several files at once (hashlib releases the GIL on large blocks, so
    a sharded checkpoint hashes at the disk's speed rather than one core's, ~2 GB/s). A file
    hashed before by this process and unchanged since (the same size, inode, mtime and ctime:
    any write changes ctime) is not read again: stages run one after another each check pi_{t-1}."""
    from src.core.threads import allowed_cpus

    stats = {Path(p): _identity(Path(p)) for p in paths}
    todo = [p for p, key in stats.items() if key not in _HASHED]
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(len(todo), len(allowed_cpus())))) as pool:
            for path, digest in zip(todo, pool.map(file_sha256, todo), strict=True):
                _HASHED[stats[path]] = digest
    return {p: _HASHED[key] for p, key in stats.items()}


_HASHED: dict[tuple, str] = {}


def _identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def read_json(
    path: str | os.PathLike[str],
    error: type[StageError],
    fix: str | Redo | None = None,
    again: str = "make it again",
) -> dict[str, Any]:
    """The JSON object in `path`, which this project wrote; a file that is not one (edited, or
    damaged) raises `error` naming it, with `fix`, the overrides that `again` makes it."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}; edited or damaged?); {again}", fix) from None
    if not isinstance(obj, dict):
        raise error(
            f"{path} holds a JSON {type(obj).__name__}, not the object this project writes "
            f"(edited or damaged?); {again}",
            fix,
        )
    return obj


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


WRITTEN = ".written"  # write_once's stamp


def write_once(folder: Path, source: str, write: Callable[[Path], Any]) -> Path:
    """`write(folder)`, unless it already finished there for this `source` (the file of the code
    that writes it): its stamp, written after it, holds the source's sha256, so a write cut off,
    or one by other code, is done again and a finished one is not redone under a reader."""
    stamp, version = folder / WRITTEN, file_sha256(source)
    if not stamp.is_file() or stamp.read_text(encoding="utf-8") != version:
        write(folder)
        atomic_write_text(stamp, version)
    return folder


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """`obj` as JSON; a NaN or infinity in it is a bug upstream, never written (JSON has none)."""
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    )


def read_jsonl(
    path: str | os.PathLike[str], error: type[StageError] = StageError, example: str = "{...}"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for each JSON object line of `path`; `where` is "file.jsonl:7" for messages.

    Blank lines are skipped; a malformed line, a non-object row or non-UTF-8 text raises
    `error` naming the file and line. `example` shows the expected row shape in the message.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():  # blank lines (a trailing newline, say) are not rows
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    hint = (
                        " (the file looks like one JSON array; write one object per line)"
                        if lineno == 1 and line.lstrip().startswith("[")
                        else ""
                    )
                    raise error(
                        f"{where}: malformed JSON line: {err.msg} (column {err.colno}){hint}"
                    ) from None
                if not isinstance(row, dict):
                    raise error(
                        f"{where}: row is a JSON {type(row).__name__}, expected an object "
                        f"like {example}"
                    )
                yield where, row
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def require_encodable(named: str, what: str, text: str, error: type[StageError]) -> None:
    """Refuse a lone surrogate: JSON may escape one (`"\\ud800"`: half of a UTF-16 pair, as
    text cut in the middle of an emoji leaves it) and Python's json reads it, but it is no
    character UTF-8 can encode, so every tokenizer and every file write after this would fail
    on it. Refused, not skipped, like any other malformed row: the file is what is wrong, and a
    prompt quietly missing from every later stage would be harder to notice than this line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise error(
            f"{named}: {what} holds {text[err.start]!r} at character {err.start}, a lone "
            "surrogate (half of a UTF-16 pair, escaped in the JSON) that UTF-8 cannot encode; "
            "replace it (with the character it was half of, or U+FFFD) or remove the row"
        ) from None


def remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a folder; nothing where none is."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
