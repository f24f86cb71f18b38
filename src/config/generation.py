"""`generation`: sampling K responses per prompt (conf/generation/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import SI

from src.config.checks import _check, _check_shard, _positive, check_numbers
from src.config.choices import Backend, LongPrompts


@dataclass
class GenerationConfig:
    """Sampling K responses per prompt (conf/generation/)."""

    backend: Backend  # hf: transformers' generate; vllm: vLLM's engine (make install-vllm)
    temperature: float = 0.7  # > 0: the K samples of a prompt must differ
    top_p: float = 0.9  # nucleus sampling: the smallest set of tokens with this much probability
    max_new_tokens: int = 2048  # a longer response is cut (finish_reason: length)
    # one seed per sample k; null: 50*k, the SPPO reference's choice
    seeds: list[int] | None = None
    batch_size: int = 8  # prompts per HF generate call (each expands to K sequences)
    chunk_size: int = 64  # prompts per file written: the unit of resume
    # in policy tokens, after the chat template: by default what training keeps
    max_prompt_length: int = SI("${training.max_prompt_length}")
    long_prompts: LongPrompts = LongPrompts.skip  # a prompt longer than max_prompt_length
    shard: int | None = None  # null: SLURM_ARRAY_TASK_ID when set, else 0
    num_shards: int | None = None  # null: SLURM_ARRAY_TASK_COUNT when set, else 1
    tensor_parallel_size: int = 1  # vLLM only
    gpu_memory_utilization: float = 0.9  # vLLM only: its share of the GPU (weights + KV cache)
    # vLLM only: the KV cache's size in GB; null: what gpu_memory_utilization leaves on a GPU,
    # 1 GB on CPU (where vLLM would read the utilisation as a share of the machine's memory)
    kv_cache_gb: float | None = None
    # vLLM only: skip torch.compile (and CUDA graphs): on CPU the engine starts in ~30 s
    # instead of ~60 s, and decodes more slowly
    enforce_eager: bool = False
    # vLLM only: the sequences its engine decodes in one step at most; null: vLLM's default
    # (the KV cache may hold fewer: generation.kv_cache_gb, gpu_memory_utilization)
    max_num_seqs: int | None = None
    # vLLM only: samples handed to the engine ahead of those that have ended, read from the
    # shard's prompts as samples end (a stream: a slot that frees is refilled at the next step,
    # and memory stays flat at any shard size); null: twice the engine's max_num_seqs
    in_flight: int | None = None

    def __post_init__(self) -> None:
        check_numbers(self, "generation.")
        _check(self.temperature >= 0, "generation.temperature", self.temperature, "must be >= 0")
        _check(0 < self.top_p <= 1, "generation.top_p", self.top_p, "must be in (0, 1]")
        _positive("generation.max_new_tokens", self.max_new_tokens)
        _positive("generation.batch_size", self.batch_size)
        _positive("generation.chunk_size", self.chunk_size)
        _positive("generation.max_prompt_length", self.max_prompt_length)
        _positive("generation.tensor_parallel_size", self.tensor_parallel_size)
        _check(
            0 < self.gpu_memory_utilization <= 1,
            "generation.gpu_memory_utilization",
            self.gpu_memory_utilization,
            "must be in (0, 1]",
        )
        _check(
            self.kv_cache_gb is None or self.kv_cache_gb > 0,
            "generation.kv_cache_gb",
            self.kv_cache_gb,
            "must be > 0 or null",
        )
        for key in ("max_num_seqs", "in_flight"):
            if getattr(self, key) is not None:
                _positive(f"generation.{key}", getattr(self, key))
        _check_shard("generation", self.shard, self.num_shards)


def cross_checks(cfg: Any) -> None:  # cfg: the composed Config (root.py)
    """The rules of `generation` keys that read other sections (method). The temperature's
    `> 0` stays here, not in `GenerationConfig`'s `>= 0`: its message names method.K."""
    if cfg.generation.seeds is not None:
        _check(
            len(cfg.generation.seeds) == cfg.method.K,
            "generation.seeds",
            cfg.generation.seeds,
            f"needs one seed per sample: method.K={cfg.method.K} seeds",
        )
        repeated = sorted({s for s in cfg.generation.seeds if cfg.generation.seeds.count(s) > 1})
        _check(
            not repeated,
            "generation.seeds",
            cfg.generation.seeds,
            f"repeats {repeated}: samples with the same seed are the same response, "
            "and a pair of equal responses teaches nothing; give each sample its own seed",
        )
    _check(
        cfg.generation.temperature > 0,
        "generation.temperature",
        cfg.generation.temperature,
        f"0 decodes greedily: the method.K={cfg.method.K} responses to a prompt would all be "
        "the same, and no pair could be preferred; sample with a temperature > 0 (e.g. 0.7)",
    )


def prompt_length_check(cfg: Any) -> None:  # cfg: the composed Config (root.py)
    """generation.max_prompt_length against training's: `Config` runs it after training's
    rules, where it ran before, so a config both refuse keeps its first message."""
    _check(
        cfg.generation.max_prompt_length <= cfg.training.max_prompt_length
        or cfg.generation.long_prompts == LongPrompts.skip,
        "generation.max_prompt_length",
        cfg.generation.max_prompt_length,
        f"truncating to more than training.max_prompt_length={cfg.training.max_prompt_length} "
        "would be truncated again in training",
    )
