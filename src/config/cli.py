"""The one boundary at which every command of the project ends a failure: one line on stderr and
the exit code of src.core.errors (README, "Failures").

    with failures("python -m src.slurm --iterations 2 model=tiny-mistral", overrides):
        ...

Inside it a `ConfigError` or a composition error Hydra or OmegaConf raises ends with exit code 2,
a `StageError` with its own (and the user's command with its fix), an `OSError` with 3 and
Ctrl-C with 130, SIGTERM, SIGHUP and SIGUSR1 with 143 (`STOPPED_BY`); anything else is a bug and
keeps its traceback. `HYDRA_FULL_ERROR=1` keeps the traceback of every failure.

And what one command reads of the commands that ran before it: a lineage's newest `python -m
src.main` command (`last_command`), which src.status judges the lineage by and src.export's
refusal of a stale lineage names, with what redoes it.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import stat
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MethodType
from typing import NoReturn

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from src.config.checks import ConfigError
from src.config.compose import describe_composition_error
from src.config.paths import runs_root
from src.core import locks
from src.core.errors import (
    EXIT_CLOSED_PIPE,
    EXIT_CONFIG_ERROR,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EnvironmentFailure,
    StageError,
    Terminated,
    command_words,
    describe,
    describe_os_error,
    override_key,
    set_overrides,
    without_keys,
)
from src.core.layout import RECORD, SAVED_CONFIG, RunLayout
from src.core.registry import STAGES, Stage

# The user's own HYDRA_FULL_ERROR, kept once `hydra_raises` has set the variable for Hydra
_full_error: bool | None = None


def wants_traceback() -> bool:
    """Whether the user asked for every failure's traceback (HYDRA_FULL_ERROR=1)."""
    if _full_error is not None:
        return _full_error
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def hydra_raises() -> None:
    """Have `@hydra.main` raise its errors to the boundary: by itself it prints them over
    several lines with a hint, and exits 1."""
    global _full_error
    if _full_error is None:
        _full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"


def exit_with(message: str, code: int, exc: BaseException | None = None) -> NoReturn:
    """End the process with `message` as one line on stderr and exit code `code`."""
    if exc is not None and wants_traceback():
        raise exc
    # a progress bar the failure interrupted would be drawn again at exit, after the message
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
    print(" ".join(message.split("\n")).strip(), file=sys.stderr)
    sys.exit(code)


def failure_line(
    exc: BaseException, command: str, overrides: Sequence[str] = (), where: str = "paths.root"
) -> tuple[str, int]:
    """The line and exit code `exc` ends a command with; re-raises what is a bug."""
    if isinstance(exc, ConfigError):
        return f"config error: {exc}", EXIT_CONFIG_ERROR
    if isinstance(exc, StageError):
        return describe(exc, command), exc.exit_code
    # before OSError: Hydra's MissingConfigException (an option that does not exist) is one too
    if isinstance(exc, HydraException | OmegaConfBaseException | AssertionError):
        # an AssertionError that OmegaConf did not raise while composing is re-raised here
        return f"config error: {describe_composition_error(exc, overrides)}", EXIT_CONFIG_ERROR
    if isinstance(exc, OSError):
        return f"error: {describe_os_error(exc, where)}", EXIT_ENVIRONMENT
    raise exc


def exit_code_of(exc: BaseException) -> int:
    """The exit code a command ends with when `exc` reaches `failures` (1: a bug's traceback)."""
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    try:
        return failure_line(exc, "")[1]
    except BaseException:  # a bug: failure_line re-raises it
        return 1


@contextmanager
def failures(
    command: str,
    overrides: Sequence[str] = (),
    where: str = "paths.root",
    interrupted: str = "",
) -> Iterator[None]:
    """End any failure a user can cause or meet inside with one line and its exit code.

    `command`: the user's command, which a StageError's fix is set on; `overrides`: its Hydra
    overrides (a composition error names the one at fault); `where`: the setting that places the
    files a refused write names; `interrupted`: what Ctrl-C or SIGTERM leaves behind."""
    with terminated_as_raised():
        try:
            yield
        except Terminated as exc:
            exit_with(_stopped_line(STOPPED_BY[exc.signal], interrupted), EXIT_TERMINATED, exc)
        except KeyboardInterrupt as exc:
            exit_with(_stopped_line("Ctrl-C", interrupted), EXIT_INTERRUPTED, exc)
        except BrokenPipeError as exc:
            if not reader_gone():
                exit_with(*failure_line(exc, command, overrides, where), exc)
            # `| head` stopped reading what it wanted: nothing failed, nothing to say (and the
            # flush at exit must not fail again), the code a shell gives a process SIGPIPE ended
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_CLOSED_PIPE)
        except (
            ConfigError,
            StageError,
            OSError,
            HydraException,
            OmegaConfBaseException,
            AssertionError,
        ) as exc:
            exit_with(*failure_line(exc, command, overrides, where), exc)


def reader_gone() -> bool:
    """Whether stdout is a pipe whose reader closed it (`... | head -n 12`, its lines read)."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):  # no file descriptor (captured), or closed
        return False


def _stopped_line(by: str, leaves: str) -> str:
    return f"interrupted: stopped by {by}" + (f"; {leaves}" if leaves else "")


# The signals that end a command by default, at once, with no line and its temporary files left:
# raised as `Terminated` instead (SIGUSR1, SLURM's warning before a time limit, is the stages'
# request to stop where a re-run resumes: src/core/preemption.py takes it over while they run)
STOPPED_BY = {
    "SIGTERM": "SIGTERM (scancel, a time limit, or a preemption without warning)",
    "SIGHUP": "SIGHUP (its terminal or session closed)",
    "SIGUSR1": "SIGUSR1 (a preemption warning, where no stage was running to save its work)",
}


@contextmanager
def terminated_as_raised() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGUSR1 raised as `Terminated` inside the block (by default each ends
    the process at once, with no line in the job's log). Signals reach the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(signal.Signals(signum).name)

    previous = {
        getattr(signal, name): signal.signal(getattr(signal, name), raise_terminated)
        for name in STOPPED_BY
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose refusal of the arguments is a ConfigError: inside `failures`, one
    line and exit code 2 (argparse's own prints the usage first, over several lines)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}; see `{self.prog} --help`")


def check_hydra_arguments(args: list[str], prog: str) -> None:
    """Parse the command line of `prog` as @hydra.main will, so that a bad option is one line
    (Hydra's parser prints its usage first, over several lines)."""
    from hydra._internal.utils import get_args_parser  # the parser @hydra.main uses

    parser = get_args_parser()
    parser.prog = prog
    parser.error = MethodType(ArgumentParser.error, parser)
    parser.parse_args(args)


def launcher_failure(exc: Exception) -> EnvironmentFailure | None:
    """A multirun's SLURM launcher (Hydra's submitit plugin) that could not submit: sbatch's own
    last line, as an environment failure (exit 3). None: not the launcher's."""
    frames = traceback.extract_tb(exc.__traceback__)
    raised_in = Path(frames[-1].filename).parts if frames else ()
    if not type(exc).__module__.startswith("submitit") and "submitit" not in raised_in:
        return None
    said = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return EnvironmentFailure(
        f"the SLURM launcher could not submit the multirun: {said[-1] if said else type(exc).__name__}"
        " (hardware=slurm-* submits with sbatch: run it on the cluster's login node, or run the "
        "points here with a hardware= that is not slurm-*)"
    )


# --- a lineage's newest command ---

MAIN = "python -m src.main"
# what says how one run goes, not where a lineage stands
ONE_RUN = ("stage", "pipeline.redo", "pipeline.redo_stale", "pipeline.until")


def trained_iterations(run_dir: Path) -> list[int]:
    """The iterations of the lineage in `run_dir` begun, or whose stage a process is writing,
    but iteration 0: the base model's own eval (`stage=eval iter=0`), no iteration of the
    lineage to bring up to date."""
    layout = RunLayout(run_dir)
    begun = layout.iterations()
    writing = [t for t in set(layout.iterations(locked=True)) - set(begun)  # only locks there
               if any(locks.writers(layout.stage_dir_in(t, s)) for s in STAGES)]  # fmt: skip
    return sorted({*begun, *writing} - {0})


def last_command(run_dir: Path, root: Path) -> tuple[list[str] | None, str]:
    """The overrides of the newest command that ran in the lineage (its stages' saved configs'
    head, `saved_command`); a lineage whose iterations were evaluated with eval.enabled=true,
    even where its newest command (a retrained stage, say) ran none; else None and why."""
    layout, trained = RunLayout(run_dir), trained_iterations(run_dir)
    saved = [layout.stage_dir_in(t, s) / SAVED_CONFIG for t in trained for s in STAGES]
    saved = [path for path in saved if path.is_file()]
    if not saved:
        return None, "no stage saved the command that ran it"
    words, why = saved_command(max(saved, key=lambda path: path.stat().st_mtime), root)
    evaluated = any((layout.stage_dir_in(t, Stage.eval) / RECORD).is_file() for t in trained)
    if words is not None and evaluated and "eval.enabled" not in map(override_key, words):
        words = [*words, "eval.enabled=true"]
    return words, why


def saved_command(saved: Path, root: Path) -> tuple[list[str] | None, str]:
    """The overrides of the `python -m src.main` command that heads the saved config `saved`,
    less ONE_RUN, with paths.root where the lineage is now; else None and why."""
    try:
        with saved.open("rb") as f:
            head = f.readline().decode("utf-8", "replace").strip()
    except OSError:
        return None, f"{saved.parent} saved no command that made it"
    said = f"# {MAIN}"
    if head != said and not head.startswith(f"{said} "):
        return None, f"{saved} is headed by no `{MAIN}` command"
    # the command as `command_line` wrote it: a value holding a blank is one word
    words = without_keys(command_words(head.removeprefix(said)), *ONE_RUN)
    if root != runs_root() or any(override_key(w) == "paths.root" for w in words):
        words = set_overrides(words, [f"paths.root={root}"])
    return words, ""
