"""vLLM's engine processes, watched from the stage that started them.

vLLM runs its engine in processes of its own and does not watch them for its client: an engine
process that dies after the handshake, or stops, leaves the client waiting forever, and a stage
killed with SIGKILL leaves the engine running, holding its memory. So the stage watches them
(src/generation/vllm_backend.py uses each):

- while vLLM starts, `engine_deaths_raised`: an engine process that dies interrupts the wait;
- at each step, `Waiting`: one of its processes stopped (SIGSTOP: state T) for ENGINE_STOPPED_S,
  or no output for ENGINE_SILENT_S (a hung driver, a deadlock), ends the step;
- for the engine's life, a watchdog process (src/generation/vllm_watchdog.py, started by
  `watch`) that kills the engine's processes once the stage is gone;
- its output: appended to the stage's vLLM log while it starts (`output_to`), whose first
  exception says why a start failed (`start_failure`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

LIVENESS_EVERY_S = 0.5  # how often a loop waiting for the engine checks that it still runs
# An engine that keeps a step waiting ends the stage once one of its processes has been stopped
# (state T: SIGSTOP, a frozen node) for ENGINE_STOPPED_S, which a healthy engine never is (the
# bound lets a debugger's or a profiler's brief stop pass), or once it has sent nothing at all for
# ENGINE_SILENT_S: an engine stuck without being stopped (a hung driver, a deadlock). A step
# takes seconds on a loaded 2-core CPU (the first one after the start too), well under a second
# on a GPU: the silence bound is far beyond a slow step, not a measure of one.
ENGINE_STOPPED_S = 10.0
ENGINE_SILENT_S = 1800.0
# Between two looks at the engine no more than this counts: the stage stopped too (Ctrl-Z, a
# suspended job) waited for nothing while it was stopped.
LOOK_GAP_S = 5.0
START_WATCH_SIGNAL = signal.SIGUSR2  # interrupts a start whose engine died (SIGUSR1: preemption)
# the program `watch` runs, by its path: it imports nothing of the project, so it starts
# wherever the stage runs (whatever its working directory or PYTHONSAFEPATH)
WATCHDOG = Path(__file__).with_name("vllm_watchdog.py")


def running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def new_children(before: set[int]) -> list[psutil.Process]:
    """This process's children that are not in `before`, less multiprocessing's resource
    tracker (it stays for the process's lifetime and ends with it by itself)."""
    children = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.pid not in before and "resource_tracker" not in " ".join(child.cmdline()):
                children.append(child)
    return children


def ended(pid: int) -> str:
    """'vLLM's engine process (pid N) ended (signal 9)': how, where the kernel still says."""
    try:  # a zombie's exit status, as waitpid would report it: field 52 of /proc/PID/stat
        status = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[49])
        how = f" (signal {status & 0x7F})" if status & 0x7F else f" (exit code {status >> 8})"
    except (OSError, IndexError, ValueError):
        how = ""
    return f"vLLM's engine process (pid {pid}) ended{how}"


def engine_processes(pids: list[int]) -> list[psutil.Process]:
    """The engine's processes (`pids`) and theirs (its workers), those that still exist."""
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            processes += [process, *process.children(recursive=True)]
    return processes


class Waiting:
    """How long a step has waited for the engine, and which of its processes were seen stopped
    since when, in the time this process ran to look (`LOOK_GAP_S` at most between two looks)."""

    def __init__(self, engine_pids: list[int]):
        self.pids, self.waited, self.last = engine_pids, 0.0, time.monotonic()
        self.stopped_at: dict[int, float] = {}  # pid -> self.waited when first seen stopped

    def stalled(self) -> str | None:
        """'vLLM's engine process NAME (pid N) is stopped (state T) and has not answered for
        S s' once a process of the engine has been stopped for ENGINE_STOPPED_S, or '... (pid
        N, sleeping) has not answered for S s' once the step has waited ENGINE_SILENT_S."""
        now = time.monotonic()
        self.waited += min(now - self.last, LOOK_GAP_S)
        self.last = now
        states = []
        for process in engine_processes(self.pids):
            with contextlib.suppress(psutil.Error):
                states.append((process, process.name(), process.status()))
        stopped = [s for s in states if s[2] == psutil.STATUS_STOPPED]
        self.stopped_at = {p.pid: self.stopped_at.get(p.pid, self.waited) for p, *_ in stopped}
        for process, name, _ in stopped:
            if self.waited - self.stopped_at[process.pid] >= ENGINE_STOPPED_S:
                return (
                    f"vLLM's engine process {name} (pid {process.pid}) is stopped (state T) "
                    f"and has not answered for {self.waited:.0f} s"
                )
        if self.waited < ENGINE_SILENT_S:
            return None
        if not states:  # none of its processes left to name
            return f"vLLM's engine has not answered for {self.waited:.0f} s"
        process, name, status = states[0]
        return (
            f"vLLM's engine process {name} (pid {process.pid}, {status}) has not answered for "
            f"{self.waited:.0f} s"
        )


class EngineGone(Exception):
    """An engine process died while vLLM started: its client would wait for it forever."""


class StartWatch:
    """vLLM's engine processes (those it names `VLLM::`), as they appear while it starts."""

    def __init__(self, before: set[int]):
        self.before, self.seen = before, set()
        self.endings: dict[int, str] = {}  # how each one that ended did, read as it was seen

    def ended(self) -> list[str]:
        """How the engine's processes seen so far that have ended did, first seen first."""
        for child in new_children(self.before):
            with contextlib.suppress(psutil.Error):
                if child.name().startswith("VLLM"):
                    self.seen.add(child.pid)
        for pid in sorted(self.seen - set(self.endings)):
            if not running(pid):  # its exit status is readable until vLLM reaps it
                self.endings[pid] = ended(pid)
        return list(self.endings.values())


@contextmanager
def engine_deaths_raised(before: set[int]) -> Iterator[StartWatch]:
    """Raise `EngineGone` in this (main) thread when one of vLLM's engine processes, started
    inside the block, dies before the block ends.

    vLLM's client notices an engine core that dies before its handshake, but after it, it waits
    for the answer to a call (`call_utility`) with no timeout: a core killed then leaves the
    stage waiting forever. A thread watches the engine's processes and interrupts the wait with
    a signal, whose handler raises here."""
    watch = StartWatch(before)
    if threading.current_thread() is not threading.main_thread():
        yield watch
        return
    main, stop = threading.main_thread().ident, threading.Event()

    def poll() -> None:
        while not stop.wait(LIVENESS_EVERY_S):
            if watch.ended():
                signal.pthread_kill(main, START_WATCH_SIGNAL)
                return

    def on_death(signum, frame) -> None:
        gone = watch.ended()
        if gone:
            raise EngineGone(gone[0])

    previous = signal.signal(START_WATCH_SIGNAL, on_death)
    watcher = threading.Thread(target=poll, name="vllm-start-watch", daemon=True)
    watcher.start()
    try:
        yield watch
    finally:
        stop.set()
        watcher.join()
        signal.signal(START_WATCH_SIGNAL, previous)


@contextmanager
def output_to(log: Path | None) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2) appended to `log` while the
    block runs: the engine's processes, started inside it, keep writing there for their lives
    (its tracebacks, warnings and progress bars), and the console keeps the stage's lines."""
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "ab") as out:
        out.write(f"{LOG_HEADER}{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        out.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in enumerate(saved, start=1):
            os.dup2(copy, fd)
            os.close(copy)


LOG_HEADER = "--- vLLM starts, "  # each start's part of the log begins with it
# an exception's line in a traceback or in vLLM's log, after its prefix
# "(EngineCore pid=N) ERROR 11-25 00:04:30 [core.py:1510] "
EXCEPTION_LINE = re.compile(r"^(?:\(.*?\) ERROR .*?\] )?((?:\w+\.)*\w*(?:Error|Exception)): (.+)$")


def start_failure(exc: BaseException, log: Path | None, gone: list[str]) -> str:
    """What made vLLM's start fail, in one line: how an engine process ended (`gone`), and the
    first exception its log holds since the start (the root cause: what follows wraps it), else
    the exception raised here."""
    cause = first_exception(log) if log is not None and log.is_file() else None
    if gone:
        return f"{gone[0]}: {cause}" if cause else gone[0]
    if cause:
        return cause
    if hasattr(exc, "errors"):  # pydantic's ValidationError: the first error's message
        return str(exc.errors()[0].get("msg", exc)).removeprefix("Value error, ")
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def first_exception(log: Path) -> str | None:
    text = log.read_text(errors="replace").rpartition(LOG_HEADER)[2]
    for line in text.splitlines():
        match = EXCEPTION_LINE.match(line.strip())
        if match:
            return f"{match[1]}: {match[2]}"
    return None


def watchdog_command(stage_pid: int, engine_pids: list[int]) -> list[str]:
    """The command of a watchdog that kills `engine_pids` once `stage_pid` is gone."""
    return [sys.executable, str(WATCHDOG), str(stage_pid), *map(str, engine_pids)]


def watch(engine_pids: list[int], env: dict[str, str]) -> subprocess.Popen:
    """A watchdog for the engine's processes (their pids): they end when this process does.
    In a session of its own, so that the terminal's Ctrl-C reaches the stage, not it."""
    return subprocess.Popen(
        watchdog_command(os.getpid(), engine_pids),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
