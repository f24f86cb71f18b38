"""The failures a user can cause or meet, and the exit code each ends every command with
(`python -m src.main`, `src.slurm`, `src.sweep`, `src.export`, `src.compare`).

Each ends the process at one boundary (src.config.cli) with one line on stderr that says what and
where, followed by the user's own command with what changes when a command fixes it, and its
exit code:

    1    bad input or state (`StageError`): a missing, malformed or damaged file or checkpoint
    2    a bad configuration (`src.config.ConfigError`, Hydra's composition errors)
    3    the environment (`EnvironmentFailure`, any `OSError`): the file system (not a folder,
         read-only, permission denied, no space left), the Hugging Face Hub or W&B unreachable
    4    preempted (`src.core.preemption.Preempted`): a re-run resumes
    130  interrupted (Ctrl-C)
    143  terminated (SIGTERM: what `scancel`, a job's time limit and a preemption without the
         warning signal send): a re-run resumes

Any other exception is a bug and keeps its traceback; `HYDRA_FULL_ERROR=1` shows the traceback
of every failure.
"""

from __future__ import annotations

import errno
import os
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

EXIT_STAGE_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_ENVIRONMENT = 3
EXIT_PREEMPTED = 4
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: its output's reader stopped reading (`| head`)
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process the signal ended


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP, SIGUSR1: `signal`, its name), raised where the process is, as Ctrl-C
    is: what is under way unwinds the same way (atomic writes dropped, engines shut down) and
    the boundary says what stopped it."""

    def __init__(self, signal: str = "SIGTERM") -> None:
        super().__init__(signal)
        self.signal = signal


@dataclass(frozen=True)
class Redo:
    """A failure's remedy as a fact: `stage` of `iteration` made again. What the user's command
    then sets is decided where the failure ends (`describe`), which knows the command."""

    stage: str
    iteration: int
    also: str = ""  # overrides the stage needs besides (`ranker.empty_responses=drop`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", str(self.stage))  # a Stage reads as its name

    def overrides(self, running: str = "all") -> str:
        """The overrides that make the stage again, with the stages after it that the command
        runs. `pipeline.redo` acts on the stages a command runs, so a command that runs one other
        stage (`running`: its `stage=`) is pointed at `stage` itself."""
        fix = f"iter={self.iteration} pipeline.redo=[{self.stage}]"
        fix = fix if running in ("all", self.stage) else f"stage={self.stage} {fix}"
        return f"{fix} {self.also}".rstrip()


@dataclass(frozen=True)
class RedoStale:
    """A failure's remedy where an earlier iteration is stale: every stale stage of the lineage
    made again, in order, which only `stage=all` reaches (it runs the earlier iterations first)."""

    def overrides(self, running: str = "all") -> str:
        return ("" if running == "all" else "stage=all ") + "pipeline.redo_stale=true"


class StageError(RuntimeError):
    """Bad input or state a stage cannot work with (a missing file, a malformed row, ...).

    `fix`: what fixes it — the overrides (`key=value ...`) to set on the user's own command, or a
    `Redo` of the stage that made the bad input, which `describe` turns into those overrides for
    the command at hand; the entry point prints that command after the message.
    """

    exit_code = EXIT_STAGE_ERROR
    label = "error"  # the word the line starts with

    def __init__(self, message: str, fix: str | Redo | RedoStale | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def overrides(self, running: str = "all") -> str | None:
        """`fix` as the overrides of a command that runs `running` (its `stage=`)."""
        return self.fix.overrides(running) if isinstance(self.fix, Redo | RedoStale) else self.fix


class EnvironmentFailure(StageError):
    """The machine, not the input: the file system, the Hub or W&B cannot do what is needed."""

    exit_code = EXIT_ENVIRONMENT


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or while handling, each once: under a tracer (a
    debugger, a profiler, coverage.py) OmegaConf's re-raised errors can be their own context, a
    loop that following the chain to its end would never leave."""
    seen: set[int] = set()
    inner: BaseException | None = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        yield inner
        inner = inner.__cause__ or inner.__context__


def override_key(word: str) -> str:
    """The key an override sets, adds or deletes: `key` of `key=v`, `+key=v`, `++key=v`, `~key`."""
    return word.lstrip("+~").partition("=")[0]


def set_overrides(words: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """`words` with each `key=value` of `overrides` set: in place of the first word that sets,
    adds or deletes the same key (any other such word dropped: Hydra applies them in order, so a
    later one would win over the fix), else appended."""
    out = list(words)
    for override in overrides:
        key = override_key(override)
        out = [w for w in (_less_nested(w, key) for w in out) if w is not None]
        same = [i for i, w in enumerate(out) if override_key(w) == key]
        if not same:
            out.append(override)
            continue
        out[same[0]] = override
        for i in reversed(same[1:]):
            del out[i]
    return out


def _less_nested(word: str, key: str) -> str | None:
    """`word` less what it sets of `key` when it sets a section holding it as a dict
    (`pipeline={redo:[rank]}` for `pipeline.redo`); None when nothing else is left."""
    parent, _, value = word.lstrip("+~").partition("=")
    if not (key.startswith(f"{parent}.") and value.startswith("{")):
        return word
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Override
    from hydra.errors import HydraException

    try:
        tree = OverridesParser.create().parse_override(word).value()
    except HydraException:  # not an override Hydra accepts: the command failed on it already
        return word
    *sections, leaf = key[len(parent) + 1 :].split(".")
    holder = tree
    for part in sections:
        holder = holder.get(part) if isinstance(holder, dict) else None
    if not isinstance(holder, dict) or leaf not in holder:
        return word
    del holder[leaf]
    if not tree:
        return None
    prefix = word[: len(word) - len(word.lstrip("+~"))]
    return f"{prefix}{parent}={Override._get_value_element_as_str(tree)}"


def override(key: str, value: object) -> str:
    """`key=value` as Hydra reads it back: its own rendering of the value (a blank escaped, a
    list in brackets, None as null)."""
    from hydra.core.override_parser.types import Override

    return f"{key}={Override._get_value_element_as_str(value)}"


def without_keys(words: Sequence[str], *keys: str) -> list[str]:
    """`words` less every override that sets, adds or deletes one of `keys`."""
    return [w for w in words if override_key(w) not in keys]


def with_overrides(command: str, overrides: str) -> str:
    """`command` (`command_line`) with each `key=value` of `overrides` set (`set_overrides`)."""
    return " ".join(map(held_word, set_overrides(command_words(command), overrides.split())))


def command_line(program: str, words: Sequence[str]) -> str:
    """A command as the commands hold it (what `failures` sets a fix on, a lock names, a saved
    config is headed by): `program`, then its words, each that a split at blanks would not give
    back whole (a blank, a quote, a backslash in it) shell-quoted; `command_words` reads it back."""
    return " ".join([program, *map(held_word, words)])


def held_word(word: str) -> str:
    """One word of a command as `command_line` holds it."""
    try:
        whole = shlex.split(word) == [word]
    except ValueError:  # an unclosed quote
        whole = False
    return word if whole else shlex.quote(word)


def command_words(command: str) -> list[str]:
    """The words of `command`, as `command_line` holds them; one held before words were quoted
    (the head of an older saved config) that a shell would not read (an unclosed quote), split at
    blanks, as it was written."""
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def shown(value: object) -> str:
    """A value as an error message shows it: null, a number as itself, else its type and start."""
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return f"a {type(value).__name__} ({str(value)[:40]!r})"


def running_stage(command: str) -> str:
    """The stage a command runs: its last `stage=` word, else every stage (`all`)."""
    words = [w for w in command_words(command) if override_key(w) == "stage" and "=" in w]
    return words[-1].partition("=")[2] if words else "all"


def describe(exc: StageError, command: str) -> str:
    """The one line a failure ends with: the message, and `command` with the failure's fix."""
    line = f"{exc.label}: " + str(exc).strip().replace("\n", " ")
    fix = exc.overrides(running_stage(command))
    return f"{line}; run `{as_typed(with_overrides(command, fix))}`" if fix else line


def as_typed(command: str) -> str:
    """`command` as a shell is to be given it, each word as the README writes it: one holding
    anything a shell reads as more than itself (a list's or glob's `[ ] * ?`, which zsh refuses
    unmatched, `{ }`, `$` of `${iter}` that the config resolves per iteration, a space, a
    quote) single-quoted whole, and an override's empty value as `key=''`."""
    return " ".join(typed_word(w) for w in command_words(command))


def typed_word(word: str) -> str:
    """One word of a command as a shell is to be given it (`as_typed`)."""
    if word.endswith("=") and "=" not in word[:-1]:
        return shlex.quote(word) + "''"
    return shlex.quote(word)


# What the file system's refusals mean for a run, by errno; `{where}`: the setting that places
# the files (paths.root for a run, --out for an export or a comparison).
OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space (or point {where} elsewhere) and re-run; "
    "finished chunks and Trainer checkpoints are kept",
    errno.EDQUOT: "the disk quota is used up: free space (or point {where} elsewhere) and re-run",
    errno.EROFS: "the file system is read-only: point {where} at a writable folder",
    errno.EACCES: "permission denied: point {where} at a folder you can write to",
    errno.EPERM: "permission denied: point {where} at a folder you can write to",
    errno.ENOTDIR: "a path on the way is a file, not a folder: check {where}",
    errno.EEXIST: "a file is in the way of a folder: check {where}",
}


def describe_os_error(exc: OSError, where: str = "paths.root") -> str:
    """An OSError as one line: what the system said, the file, and what to do about it."""
    path = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    said = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    advice = OS_ADVICE.get(exc.errno or -1, "").format(where=where)
    return "; ".join(filter(None, [f"{said}: {path}" if path else said, advice]))


@contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError raised inside without a file re-raised naming `path`, what was being written: a
    write's ENOSPC or EIO is said of a descriptor, and the line would say where to free space
    without saying where the disk is."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        # one of a single argument (pyarrow's, without an errno) has its words in it alone
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


@contextmanager
def blamed(key: str, folder: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError inside on `folder`, on the way to it or under it (or on no file: then named as
    `folder`) ends as the failure of `key`, the setting that places that folder: the boundary
    would tell the user to fix the command's own (paths.root, --out), which did not place it."""
    folder = Path(folder).resolve()
    try:
        with naming(folder):
            yield
    except OSError as err:
        path = Path(str(err.filename)).resolve()
        if path != folder and folder not in path.parents and path not in folder.parents:
            raise
        raise EnvironmentFailure(describe_os_error(err, key)) from err
