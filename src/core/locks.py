"""One writer per stage folder: a lock held for as long as a process writes there.

Two processes writing one stage mix their rows (a resubmitted job while the old one still runs, a
sweep and a hand-run on the same names): the second would sample into the first one's chunks, or
`pipeline.redo` would delete them under it. So a stage takes, before it touches a file,

    <iteration>/.locks/<stage>.lock                       shared by its shards, or exclusive
    <iteration>/.locks/<stage>-shardSSS-of-NNN.lock       exclusive: one writer per shard
    <iteration>/.locks/<stage>.shards.lock                an instant, to take a shard's lock

A sharded stage's process holds the stage's lock shared and its shard's exclusively, so the
shards of a SLURM array run at once; a whole-stage writer (an unsharded stage, or
`pipeline.redo`, which deletes the folder) holds the stage's lock exclusively. The locks live
beside the stage folders, not in them: a redo deletes the folder, never the lock.

One sharding at a time: the shards of `num_shards=2` and of `num_shards=3` split the prompts
differently, so their writers would make overlapping rows in one folder. A shard's writer takes
its shard's lock under `<stage>.shards.lock`, after checking under it that no shard lock of
another count (`-of-MMM`) is held; every shard's writer checks and locks under that one lock, so
two of different counts never both get in: the later is refused, naming a holder of the other.

What a running stage reads is protected by its own lock. A finished stage is rewritten only by
`pipeline.redo` (a finished stage is skipped, one made under another config refused), and a
redo takes, before it deletes anything and until it ends, the locks of the stages it rewrites,
of every later stage of the iteration (each reads what the one before it made) and, when it
rewrites the training, of every stage of the next iteration (which starts from its checkpoint):
all of them or none (`rewriting`, src/schedule/run.py). So a redo refuses at once while a stage that
reads what it would rewrite runs, and none of those stages starts while it runs. (Readers taking
their inputs' locks shared would need no more locks, but a shared hold is a shard writer's too,
and unsigned: the refusal could not name who reads.) A lock this process holds is taken again
at no cost where asked as strong or weaker: a redo's stages run under the locks it took first.

Deleted lock files: `flock` locks a file, not a path. A lock file deleted while held (`rm -r
<iteration>/.locks` to clear "stale" locks) leaves its holder locking a file no path names, and
the next writer creates and locks a new one at the same path. So a writer that has locked a file
checks that the path still names it (a file removed or replaced between its open and its lock:
it locks the one the path names now), and a holder checks the same of every lock it holds
(`require_held`) before each file of a shard that a re-run trusts — its identity, each chunk,
its rows, done.json — and once its stage returns. Finding one gone, it stops with one line
(`LockLost`, exit 3) before writing more there; a stage that returned loses its done.json
(src/schedule/run.py). The writer that came in keeps its own rows only, and nothing two processes
wrote at once is sealed as finished. Locking folders instead, which deleting `.locks` would not
touch, fails over NFS: there `flock` on a folder is local to one client, and an exclusive lock
needs a file open for writing.

They are `flock` locks: the kernel releases them when the process ends, however it ends, so a
kill -9 leaves nothing stale and the next writer takes over at once. The holder of an exclusive
lock writes who it is into the file (host, pid, start time, command); a writer that finds the lock
taken stops at once naming it (`Locked`, exit 3). `flock` works on local file systems, NFSv4
(Linux maps it onto NFS's byte-range locks) and Lustre mounted with `-o flock`; where a file
system ignores it (Lustre with `-o localflock` across nodes, some FUSE mounts) two nodes do not
see each other's locks (docs/runs.md, "One writer per stage").
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from src.core.errors import EnvironmentFailure, naming
from src.core.layout import LOCKS


class Locked(EnvironmentFailure):
    """Another process is writing what this one would write."""


class LockLost(Locked):
    """A lock this process holds was deleted or replaced: another process may be writing too."""


@dataclass(frozen=True)
class Held:
    path: Path
    fd: int
    shared: bool
    what: Path  # what it guards, as the messages name it


# The locks this process holds, by absolute path: one is taken again at no cost (flock locks an
# open file, so a second open of the same file would conflict with this process's own lock).
HELD: dict[str, Held] = {}


def lock_path(stage_dir: Path, shard: str | None = None) -> Path:
    """The lock on `stage_dir` as a whole, or on its shard `shard` (`shardSSS-of-NNN`)."""
    name = stage_dir.name if shard is None else f"{stage_dir.name}-{shard}"
    return stage_dir.parent / LOCKS / f"{name}.lock"


def shards_lock_path(stage_dir: Path) -> Path:
    """The lock under which a shard's writer takes its shard's lock (one sharding at a time)."""
    return stage_dir.parent / LOCKS / f"{stage_dir.name}.shards.lock"


@contextmanager
def writing(
    stage_dir: Path, command: str | None = None, shard: str | None = None, wait: bool = False
) -> Iterator[None]:
    """Hold the right to write `stage_dir` (`shard` None: all of it) while the block runs; raise
    `Locked` at once if another process holds it (`wait`: wait for it to let go, as a cache's
    reader does). `command`: the holder's, as the lock names it (None: this process's)."""
    command = command or shlex.join(sys.orig_argv)
    whole = lock_path(stage_dir)
    if shard is None:

        def holders() -> list[Path]:  # the shards hold it shared and do not sign it: one of them
            if not shards_lock_path(stage_dir).exists():  # no shard was ever written
                return [whole]
            with _instant(shards_lock_path(stage_dir)):  # no shard's writer mid-way meanwhile
                return [*held_shards(stage_dir), whole]

        with _hold(whole, command, False, stage_dir, holders, wait):
            yield
        return
    with ExitStack() as stack:
        stack.enter_context(_hold(whole, command, True, stage_dir, lambda: [whole], wait))
        part = lock_path(stage_dir, shard)
        with _instant(shards_lock_path(stage_dir)):
            other = other_sharding(stage_dir, shard)
            if other is not None:
                count = other.stem.rpartition("-of-")[2]
                raise Locked(
                    f"{stage_dir} is being written in {int(count)} shards by {described(other)}, "
                    f"which split the prompts otherwise than {shard}; wait for them to end or "
                    "stop them, or run with their num_shards"
                )
            stack.enter_context(
                _hold(part, command, False, stage_dir / shard, lambda: [part], wait)
            )
        yield


@contextmanager
def rewriting(stage_dirs: Sequence[Path], command: str | None = None) -> Iterator[None]:
    """Hold every one of `stage_dirs` exclusively while the block runs, all taken before it
    starts: another process holding any of them raises `Locked` naming it, and none is held."""
    command = command or shlex.join(sys.orig_argv)
    with ExitStack() as stack:
        for stage_dir in stage_dirs:
            stack.enter_context(writing(stage_dir, command))
        yield


def require_held() -> None:
    """Raise `LockLost` if a lock this process holds is no longer the file its path names
    (deleted, or replaced): another process may have taken it and be writing beside this one.
    Called before each file a re-run trusts is written."""
    for held in list(HELD.values()):
        if not names(held.path, held.fd):
            raise LockLost(
                f"{held.path} was deleted while this process held it, so another process may be "
                f"writing {held.what} too: stopped before writing more there; once no other "
                "process writes there, re-run the same command"
            )


@contextmanager
def _hold(
    path: Path,
    command: str,
    shared: bool,
    what: Path,
    holders: Callable[[], list[Path]],
    wait: bool,
) -> Iterator[None]:
    key = os.path.abspath(path)
    mine = HELD.get(key)
    if mine is not None:  # held by this process already
        if mine.shared and not shared:
            raise RuntimeError(f"{path} is held shared by this process, which asks it exclusive")
        yield
        return
    kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fd = _lock(path, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = described(holders()[0])
        if not wait:
            raise Locked(
                f"{what} is being written by {holder}; wait for it to end or stop it, then "
                "re-run (the lock goes with its process)"
            ) from None
        print(f"[lock] {what} is being written by {holder}: waiting", file=sys.stderr)
        fd = _lock(path, kind)
    try:
        if not shared:  # a shared lock has several holders: only an exclusive one signs it
            with naming(path):  # a full disk refuses the signature of a new lock file
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(signature(command)) + "\n").encode(), 0)
        HELD[key] = Held(path, fd, shared, what)
        yield
    finally:
        HELD.pop(key, None)
        os.close(fd)  # releases the lock


def _lock(path: Path, kind: int) -> int:
    """An open descriptor of the file at `path`, locked `kind` (`BlockingIOError`: taken, with
    LOCK_NB). A file deleted or replaced between its open and its lock is let go, and the one
    the path names then is locked instead: a lock counts only on the file its path names."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # its folder deleted meanwhile
            continue
        try:
            fcntl.flock(fd, kind)
            if names(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextmanager
def _instant(path: Path) -> Iterator[None]:
    """`path` locked exclusively for a few system calls, waiting for another holder's."""
    fd = _lock(path, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def names(path: Path, fd: int) -> bool:
    """Whether `path` names the file open as `fd`, which is still linked somewhere."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return mine.st_nlink > 0 and (at_path.st_dev, at_path.st_ino) == (mine.st_dev, mine.st_ino)


def signature(command: str) -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
    }


def held_shards(stage_dir: Path) -> list[Path]:
    pattern = lock_path(stage_dir, "shard*")
    return [p for p in sorted(pattern.parent.glob(pattern.name)) if is_held(p)]


def other_sharding(stage_dir: Path, shard: str) -> Path | None:
    """A held shard lock of `stage_dir` whose shard count is not that of `shard`."""
    count = shard.rpartition("-of-")[2]
    return next((p for p in held_shards(stage_dir) if not p.stem.endswith(f"-of-{count}")), None)


def is_held(path: Path) -> bool:
    """Whether a process holds `path` exclusively (probed with a shared lock, let go at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def writers(stage_dir: Path) -> list[Path]:
    """The locks on `stage_dir`, its own and its shards', that a process holds exclusively now,
    seen without taking one: a probe with a lock (`is_held`) would, for its instant, refuse a
    writer that tries the lock then, so a reader that only looks (`python -m src.status`) never
    probes. Seen are this machine's `flock` locks (/proc/locks) and whole-file byte-range locks,
    the form NFS gives a `flock`, of any machine (`F_GETLK`, which tests without locking)."""
    folder = stage_dir.parent / LOCKS
    if not folder.is_dir():
        return []
    mine = [lock_path(stage_dir), *sorted(folder.glob(f"{stage_dir.name}-shard*.lock"))]
    flocks = _flocked()
    return [path for path in mine if _written(path, flocks)]


def _flocked() -> set[tuple[int, int, int]]:
    """(major, minor, inode) of each file a process of this machine holds a `flock` on
    exclusively (/proc/locks: `1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> ...`, the
    device in hex; `->` marks one waiting for it); none where there is no /proc/locks."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return set()
    found = set()
    for fields in (line.split() for line in lines):
        if len(fields) > 5 and fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"]:
            with suppress(ValueError):  # a line of another form: not one of these
                major, minor, inode = fields[5].split(":")
                found.add((int(major, 16), int(minor, 16), int(inode)))
    return found


def _written(path: Path, flocks: set[tuple[int, int, int]]) -> bool:
    """Whether a process holds `path` exclusively: by a `flock` of this machine (`flocks`), or a
    whole-file write lock `F_GETLK` finds (a shared test lock is refused by it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in flocks:
            return True
        asked = struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        found = fcntl.fcntl(fd, fcntl.F_GETLK, asked)
        return struct.unpack(_FLOCK, found)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


# struct flock: l_type, l_whence, l_start, l_len, l_pid
_FLOCK = "hhqqi"


def described(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        return (
            f"pid {who['pid']} on {who['host']} since {who['started']} "
            f"(`{who['command']}`, {path.name})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process ({path} names none)"
