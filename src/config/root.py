"""`Config`, the whole configuration of one invocation, made of one section per config group:
Hydra's base schema (registered at import), and its plain data (`plain_data`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import SI

from src.config.checks import (
    NAME_MAX,
    SLURM_LOG_NAME,
    ConfigError,
    _bytes,
    _check,
    _shown,
    check_numbers,
    check_one_line,
    check_path_component,
    check_shell_word,
)
from src.config.choices import Backend, Device, Distributed, Dtype, LongPrompts, Peft
from src.config.data import DataConfig
from src.config.eval import BENCHMARK_DATA, BENCHMARK_DATA_HINT, EvalConfig
from src.config.generation import GenerationConfig
from src.config.hardware import HardwareConfig
from src.config.iteration import PipelineConfig, PlanConfig, RunConfig
from src.config.logger import LoggerConfig
from src.config.method import MethodConfig
from src.config.model import ModelConfig
from src.config.paths import PathsConfig
from src.config.ranker import RankerConfig
from src.config.training import TrainingConfig
from src.core.registry import STAGES, Stage, stage_folder


@dataclass(kw_only=True)
class Config:
    """The whole composed configuration of one invocation."""

    # iteration t (1-based): generator, initial weights and reference are iteration t-1's policy
    iter: int = 1
    # the stage of iteration `iter` to run; all: every stage in order (eval with eval.enabled=true)
    stage: Stage = Stage.all
    # one run directory per hyper-parameter lineage; iterations of a lineage share it. Its last
    # part: K<K>, or pairs-<file name> when training.pairs names a file of your own
    run_name: str = SI(
        "${method.tag}-lr${num:${training.learning_rate}}-${pairs_source:K${method.K}}"
    )
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig
    method: MethodConfig
    data: DataConfig
    generation: GenerationConfig
    ranker: RankerConfig
    training: TrainingConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    hardware: HardwareConfig
    logger: LoggerConfig
    paths: PathsConfig = field(default_factory=PathsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    # What a preset says about itself in every model card it makes: how it departs from the
    # published recipe it reproduces (src/stages/cards.py)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_numbers(self)  # every key, a section's own included, before the rules below
        self.ranker.check("ranker")
        if self.eval.judge is not None:
            self.eval.judge.check("eval.judge")
        for benchmark, key in BENCHMARK_DATA.items():
            _check(
                benchmark not in self.eval.benchmarks or getattr(self.data, key) is not None,
                f"data.{key}",
                None,
                f"eval.benchmarks names {benchmark.value}: point data.{key} at its data "
                f"({BENCHMARK_DATA_HINT[benchmark]})",
            )
        _check(self.iter >= 1, "iter", self.iter, "must be >= 1 (iterations count from 1)")
        # its longest file name, a SLURM log, sets its limit (its folder's, NAME_MAX, is looser)
        longest = max((s for s in Stage if s != Stage.all), key=lambda s: len(s.value))
        log = SLURM_LOG_NAME.format(job=self.stage_run_name(longest))
        if _bytes(log) > NAME_MAX:
            tail = _bytes(log) - _bytes(self.run_name)
            raise ConfigError(
                f"run_name={_shown(self.run_name)} is {_bytes(self.run_name)} bytes long; the "
                f"SLURM logs of its jobs are named `<run_name>-it{self.iter}-{longest.value}_"
                f"<job id>_<task id>.out`, {tail} bytes more, and a file system takes names of "
                f"at most {NAME_MAX} bytes: run_name can be {NAME_MAX - tail} bytes long"
            )
        check_path_component("run_name", self.run_name)
        if self.hardware.slurm is not None:  # the SLURM jobs are named after it
            check_shell_word("run_name", self.run_name)
        check_one_line("run.dir", self.run.dir)
        # lexically, not through symlinks: a root whose folders link to scratch space is fine,
        # a run.dir override that climbs out of the root is not
        root, run_dir = os.path.abspath(self.paths.root), os.path.abspath(self.run.dir)
        _check(
            run_dir.startswith(root.rstrip("/") + "/"),
            "run.dir",
            self.run.dir,
            f"lies outside paths.root={self.paths.root!r}: a run's files go under the root; "
            "move them with paths.root",
        )
        if self.generation.seeds is not None:
            _check(
                len(self.generation.seeds) == self.method.K,
                "generation.seeds",
                self.generation.seeds,
                f"needs one seed per sample: method.K={self.method.K} seeds",
            )
            repeated = sorted(
                {s for s in self.generation.seeds if self.generation.seeds.count(s) > 1}
            )
            _check(
                not repeated,
                "generation.seeds",
                self.generation.seeds,
                f"repeats {repeated}: samples with the same seed are the same response, "
                "and a pair of equal responses teaches nothing; give each sample its own seed",
            )
        _check(
            self.generation.temperature > 0,
            "generation.temperature",
            self.generation.temperature,
            f"0 decodes greedily: the method.K={self.method.K} responses to a prompt would all be "
            "the same, and no pair could be preferred; sample with a temperature > 0 (e.g. 0.7)",
        )
        if self.training.peft == Peft.qlora:
            _check(
                self.hardware.device == Device.cuda,
                "training.peft",
                "qlora",
                f"a 4-bit base needs a CUDA GPU (bitsandbytes), and hardware={self.hardware.name} "
                "trains on the CPU; train a LoRA adapter on full weights there: training.peft=lora",
            )
            _check(
                self.hardware.distributed != Distributed.deepspeed,
                "training.peft",
                "qlora",
                "DeepSpeed cannot shard a 4-bit base; QLoRA trains on one GPU or under DDP "
                "(hardware.distributed=ddp), or use training.peft=lora with ZeRO-3",
            )
        if (
            self.hardware.device == Device.cpu
            and self.hardware.distributed == Distributed.deepspeed
        ):
            _check(
                self.training.precision in (Dtype.auto, Dtype.float32),
                "training.precision",
                self.training.precision.value,
                "DeepSpeed on CPU trains in fp32 only (the HF Trainer takes 16 bits under "
                "DeepSpeed on a GPU alone): use training.precision=float32, or "
                "hardware.distributed=ddp or none",
            )
        if self.training.precision == Dtype.float16 and self.training.peft == Peft.none:
            _check(
                self.hardware.distributed == Distributed.deepspeed,
                "training.precision",
                "float16",
                "full weights in fp16 need loss scaling over fp32 master weights, which DeepSpeed "
                "keeps: add hardware.distributed=deepspeed, or train in bf16 "
                "(training.precision=bfloat16)",
            )
        per_step = self.training.per_device_batch_size * self.hardware.world_size
        _check(
            self.training.global_batch_size % per_step == 0,
            "training.global_batch_size",
            self.training.global_batch_size,
            f"must be a multiple of per_device_batch_size x world size "
            f"= {self.training.per_device_batch_size} x {self.hardware.world_size} = {per_step}",
        )
        _check(
            self.generation.max_prompt_length <= self.training.max_prompt_length
            or self.generation.long_prompts == LongPrompts.skip,
            "generation.max_prompt_length",
            self.generation.max_prompt_length,
            f"truncating to more than training.max_prompt_length={self.training.max_prompt_length} "
            "would be truncated again in training",
        )

        earlier = re.fullmatch(r"iter(\d+)", self.eval.reference)
        if earlier:
            _check(
                int(earlier[1]) <= self.iter,
                "eval.reference",
                self.eval.reference,
                f"must be an iteration up to iter={self.iter} (a later one is not trained yet)",
            )

    @property
    def gradient_accumulation_steps(self) -> int:
        per_step = self.training.per_device_batch_size * self.hardware.world_size
        return self.training.global_batch_size // per_step

    @property
    def eval_backend(self) -> Backend:
        """The engine that answers the eval: eval.backend, else the generate stage's."""
        return self.eval.backend or self.generation.backend

    @property
    def sample_seeds(self) -> list[int]:
        """The seed of each of the K samples (50*k by default, as the SPPO reference)."""
        if self.generation.seeds is not None:
            return list(self.generation.seeds)
        return [50 * k for k in range(self.method.K)]

    def stage_dir(self, stage: Stage | str) -> Path:
        """Where `stage` of this iteration writes (an eval against another reference than the
        base model: a folder of its own inside the eval's, `src.core.registry.stage_folder`)."""
        return Path(self.run.iter_dir) / self.stage_folder(stage)

    def stage_folder(self, stage: Stage | str) -> str:
        return stage_folder(Stage(stage), self.eval.reference, self.eval.reference_outputs)

    def shard_section(self, stage: Stage) -> GenerationConfig | RankerConfig | None:
        """The section whose `shard`, `num_shards` and `chunk_size` split `stage`
        (`generation`, `ranker`), or None for a stage that is not sharded."""
        section = STAGES[stage].sharded_by
        return getattr(self, section) if section else None

    def as_tree(self) -> dict[str, Any]:
        """The config as plain, resolved data (enums as their names), as config.yaml stores it:
        what stage records, fingerprints and W&B receive."""
        return plain_data(self)

    def stage_run_name(self, stage: Stage | str) -> str:
        """A stage's name wherever it runs: its SLURM job, its W&B run, the Trainer's run_name:
        `<run_name>-it<t>-<stage>`, an eval against another reference `...-eval-vs-<name>`."""
        return f"{self.run_name}-it{self.iter}-{self.stage_folder(stage).replace('/', '-')}"


def plain_data(value: Any) -> Any:
    """A validated config node as plain data: what OmegaConf's `to_container(structured(value),
    resolve=True, enum_to_str=True)` gives, key for key and type for type (tests/test_config.py
    holds the two equal for every composition), read straight off the dataclasses, which hold
    resolved values already. OmegaConf's way builds a typed node tree first: 70 ms a call, and a
    command asks for the tree of each stage it considers (the scheduler, every fingerprint)."""
    if is_dataclass(value):
        return {f.name: plain_data(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, dict):
        return {(k.name if isinstance(k, Enum) else k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(v) for v in value]
    return value


def register_schema() -> None:
    """Hydra composes conf/ onto `Config`: conf/config.yaml's defaults list starts with
    `base_config`, so each default above is the config's default, a typo in a key or a value of
    the wrong type fails as it is composed, and a config file holds only what it chooses or
    changes (tests/test_config.py checks that none repeats what it would get anyway)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


register_schema()
