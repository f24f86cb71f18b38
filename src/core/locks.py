"""One writer per stage folder: a lock held for as long as a process writes there.

Two processes writing one stage mix their rows (a resubmitted job while the old one still runs, a
sweep and a hand-run on the same names): the second would sample into the first one's chunks, or
`pipeline.redo` would delete them under it. So a stage takes, before it touches a file,

    <iteration>/.locks/<stage>.lock                       shared by its shards, or exclusive
    <iteration>/.locks/<stage>-shardSSS-of-NNN.lock       exclusive: one writer per shard

A sharded stage's process holds the stage's lock shared and its shard's exclusively, so the
shards of a SLURM array run at once; a whole-stage writer (an unsharded stage, or
`pipeline.redo`, which deletes the folder) holds the stage's lock exclusively. The locks live
beside the stage folders, not in them: a redo deletes the folder, never the lock.

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
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from src.core.errors import EnvironmentFailure

LOCKS = ".locks"  # the folder of an iteration that holds its stages' locks


class Locked(EnvironmentFailure):
    """Another process is writing what this one would write."""


def lock_path(stage_dir: Path, shard: str | None = None) -> Path:
    """The lock on `stage_dir` as a whole, or on its shard `shard` (`shardSSS-of-NNN`)."""
    name = stage_dir.name if shard is None else f"{stage_dir.name}-{shard}"
    return stage_dir.parent / LOCKS / f"{name}.lock"


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
            return [*held_shards(stage_dir), whole]

        with _hold(whole, command, False, stage_dir, holders, wait):
            yield
        return
    with _hold(whole, command, True, stage_dir, lambda: [whole], wait):
        part = lock_path(stage_dir, shard)
        with _hold(part, command, False, stage_dir / shard, lambda: [part], wait):
            yield


@contextmanager
def _hold(
    path: Path,
    command: str,
    shared: bool,
    what: Path,
    holders: Callable[[], list[Path]],
    wait: bool,
) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = described(holders()[0])
            if not wait:
                raise Locked(
                    f"{what} is being written by {holder}; wait for it to end or stop it, then "
                    "re-run (the lock goes with its process)"
                ) from None
            print(f"[lock] {what} is being written by {holder}: waiting", file=sys.stderr)
            fcntl.flock(fd, kind)
        if not shared:  # a shared lock has several holders: only an exclusive one signs it
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(signature(command)) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


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


def is_held(path: Path) -> bool:
    """Whether a process holds `path` exclusively (probed with a shared lock, let go at once)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def described(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        return (
            f"pid {who['pid']} on {who['host']} since {who['started']} "
            f"(`{who['command']}`, {path.name})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process ({path} names none)"
