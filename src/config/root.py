"""`Config`, the whole configuration of one invocation, made of one section per config group:
Hydra's base schema (registered at import), and its plain data (`plain_data`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import SI

from src.config.checks import check_numbers
from src.config.choices import Backend
from src.config.data import DataConfig
from src.config.data import cross_checks as data_rules
from src.config.eval import EvalConfig
from src.config.eval import cross_checks as eval_rules
from src.config.generation import GenerationConfig
from src.config.generation import cross_checks as generation_rules
from src.config.generation import prompt_length_check as generation_prompt_length_rule
from src.config.hardware import HardwareConfig
from src.config.iteration import PipelineConfig, PlanConfig, RunConfig
from src.config.iteration import cross_checks as iteration_rules
from src.config.logger import LoggerConfig
from src.config.method import MethodConfig
from src.config.model import ModelConfig
from src.config.paths import PathsConfig
from src.config.ranker import RankerConfig
from src.config.training import TrainingConfig
from src.config.training import cross_checks as training_rules
from src.core.fingerprints import read_upstream
from src.core.layout import RunLayout, iteration_name, stage_folder
from src.core.registry import STAGES, Stage, iteration_stages


@dataclass(kw_only=True)
class Config:
    """The whole composed configuration of one invocation."""

    # iteration t (1-based): generator, initial weights and reference are iteration t-1's policy;
    # 0 with stage=eval alone: the base policy itself evaluated (iter0/eval)
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
    # published recipe it reproduces (src/stages/report/cards.py)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_numbers(self)  # every key, a section's own included, before the rules below
        self.ranker.check("ranker")
        if self.eval.judge is not None:
            self.eval.judge.check("eval.judge")
        data_rules(self)
        iteration_rules(self)
        generation_rules(self)
        training_rules(self)
        # after training's: where both would refuse a config, the training rule speaks first
        generation_prompt_length_rule(self)
        eval_rules(self)

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

    @property
    def layout(self) -> RunLayout:
        """The folders of this run: its iterations, their stages and checkpoints."""
        return RunLayout(Path(self.run.dir))

    def stage_dir(self, stage: Stage | str) -> Path:
        """Where `stage` of this iteration writes (an eval against another reference than the
        base model, or by other judges: a folder of its own inside the eval's,
        `src.core.layout.stage_folder`); of another iteration: `layout.stage_dir_in`."""
        return self.layout.iteration_dir(self.iter) / self.stage_folder(stage)

    def stage_folder(self, stage: Stage | str) -> str:
        return stage_folder(
            Stage(stage), self.eval.reference, self.eval.reference_outputs, self.eval.judged_by
        )

    def shard_section(self, stage: Stage) -> GenerationConfig | RankerConfig | None:
        """The section whose `shard`, `num_shards` and `chunk_size` split `stage`
        (`generation`, `ranker`), or None for a stage that is not sharded."""
        section = STAGES[stage].sharded_by
        return getattr(self, section) if section else None

    def stages(self, stage: Stage | None = None) -> list[Stage]:
        """What `stage=` (or `stage`) runs in this iteration, in order, up to `pipeline.until`: a
        training on a pairs file of the user's own reads none of the stages before it, so
        `stage=all` runs none of them."""
        own_pairs = read_upstream(self.as_tree(), Stage.train) is None
        stages = iteration_stages(stage or self.stage, self.eval.enabled, own_pairs)
        until = self.pipeline.until
        return stages[: stages.index(until) + 1] if until in stages[:-1] else stages

    def as_tree(self) -> dict[str, Any]:
        """The config as plain, resolved data (enums as their names), as config.yaml stores it:
        what stage records, fingerprints and W&B receive."""
        return plain_data(self)

    def model_label(self, t: int) -> str:
        """`<model>-<method>-<run_name>-iter<t>`: iteration t's checkpoint as its card, the evals
        that answer with it and its W&B artifact name it."""
        return f"{self.model.name}-{self.method.name.value}-{self.run_name}-{iteration_name(t)}"

    def stage_run_name(self, stage: Stage | str) -> str:
        """A stage's name wherever it runs: its SLURM job, its W&B run, the Trainer's run_name:
        `<run_name>-it<t>-<stage>`, an eval against another reference `...-eval-vs-<name>`."""
        return f"{self.run_name}-it{self.iter}-{self.stage_folder(stage).replace('/', '-')}"


def plain_data(value: Any) -> Any:
    """A validated config node as plain data: what OmegaConf's `to_container(structured(value),
    resolve=True, enum_to_str=True)` gives, key for key and type for type (tests/config/test_config.py
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
    changes (tests/config/test_config.py checks that none repeats what it would get anyway)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


register_schema()
