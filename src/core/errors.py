"""The failures a user can cause or meet, and the exit code each ends `python -m src.main` with.

Each ends the process with one line on stderr that says what and where, followed by the user's
own command with what changes when a command fixes it, and its exit code:

    1    bad input or state (`StageError`): a missing, malformed or damaged file or checkpoint
    2    a bad configuration (`src.config.ConfigError`, Hydra's composition errors)
    3    the environment (`EnvironmentFailure`, any `OSError`): the file system (not a folder,
         read-only, permission denied, no space left), the Hugging Face Hub or W&B unreachable
    4    preempted (`src.core.preemption.Preempted`): a re-run resumes
    130  interrupted (Ctrl-C)

Any other exception is a bug and keeps its traceback; `HYDRA_FULL_ERROR=1` shows the traceback
of every failure.
"""

from __future__ import annotations

import errno
import re

EXIT_STAGE_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_ENVIRONMENT = 3
EXIT_PREEMPTED = 4
EXIT_INTERRUPTED = 130


class StageError(RuntimeError):
    """Bad input or state a stage cannot work with (a missing file, a malformed row, ...).

    `fix`: the overrides (`key=value ...`) that, set on the user's own command, fix it — e.g.
    `iter=1 pipeline.redo=[train]`; the entry point prints that command after the message.
    """

    exit_code = EXIT_STAGE_ERROR
    label = "error"  # the word the line starts with

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


class EnvironmentFailure(StageError):
    """The machine, not the input: the file system, the Hub or W&B cannot do what is needed."""

    exit_code = EXIT_ENVIRONMENT


def with_overrides(command: str, overrides: str) -> str:
    """`command` with each `key=value` of `overrides` set: in place of the same key's value where
    the command already sets it, else appended."""
    words = command.split()  # as the entry point joined them: one word per override
    for override in overrides.split():
        key = override.split("=", 1)[0]
        same = [i for i, w in enumerate(words) if re.match(rf"[+~]*{re.escape(key)}=", w)]
        if same:
            words[same[0]] = override
        else:
            words.append(override)
    return " ".join(words)


def shown(value: object) -> str:
    """A value as an error message shows it: null, a number as itself, else its type and start."""
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return f"a {type(value).__name__} ({str(value)[:40]!r})"


def describe(exc: StageError, command: str) -> str:
    """The one line a failure ends with."""
    line = f"{exc.label}: " + str(exc).strip().replace("\n", " ")
    return f"{line}; run `{with_overrides(command, exc.fix)}`" if exc.fix else line


# What the file system's refusals mean for a run, by errno.
OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space (or point paths.root elsewhere) and re-run; "
    "finished chunks and Trainer checkpoints are kept",
    errno.EDQUOT: "the disk quota is used up: free space (or point paths.root elsewhere) and re-run",
    errno.EROFS: "the file system is read-only: point paths.root at a writable folder",
    errno.EACCES: "permission denied: point paths.root at a folder you can write to",
    errno.EPERM: "permission denied: point paths.root at a folder you can write to",
    errno.ENOTDIR: "a path on the way is a file, not a folder: check paths.root",
    errno.EEXIST: "a file is in the way of a folder: check paths.root",
}


def describe_os_error(exc: OSError) -> str:
    """An OSError as one line: what the system said, the file, and what to do about it."""
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    said = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    advice = OS_ADVICE.get(exc.errno or -1)
    return "; ".join(filter(None, [f"{said}: {where}" if where else said, advice]))
