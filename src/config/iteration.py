"""`run`, `plan` and `pipeline`: this run's derived locations, what `python -m src.slurm` checks
before it queues, and how `stage=all` chains iterations."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import SI

from src.config.checks import (
    NAME_MAX,
    SLURM_LOG_NAME,
    ConfigError,
    _bytes,
    _check,
    _positive,
    _shown,
    check_numbers,
    check_one_line,
    check_path_component,
    check_shell_word,
)
from src.config.training import pairs_lineage
from src.core.registry import Stage


@dataclass
class RunConfig:
    """Derived locations of this run (docs/design.md §5); override only to point at another
    lineage's checkpoint."""

    # one run directory per hyper-parameter lineage; its iterations share it
    dir: str = SI("${paths.root}/${model.name}/${method.name}/${run_name}")
    # this iteration's folder: one per stage in it (src/core/layout.py)
    iter_dir: str = SI("${run.dir}/${iteration_name:${iter}}")
    # generator, initial weights and reference of this iteration: pi_{iter-1}
    init_policy: str = SI("${previous_policy:${iter},${model.path},${run.dir}}")


@dataclass
class PlanConfig:
    """What `python -m src.slurm` checks before it queues (`python -m src.plan` shows it)."""

    # false: queue even a stage the memory model says does not fit hardware.gpu_memory_gb
    check: bool = True
    # prompts of an iteration; null: data.max_prompts where the split has more, else the
    # previous iteration's, else the source's rows (a local file, the Hub cache, its dataset
    # card: src/plan/counts.py), else the SPPO recipe's 20,000
    prompts: int | None = None
    gpu_tflops: float = 989.0  # each GPU's dense bf16 peak: H100 SXM 989 (A100: 312)
    # an assumption: the share of that peak training reaches, and ranking with a judge other than
    # PairRM (whose comparisons/s are measured: src/plan/hours.py)
    mfu: float = 0.3
    # generation per GPU; null: HF measured on an H100 for the real models, vLLM a share of the
    # decode bound (src/plan/hours.py)
    generate_tokens_per_s: float | None = None
    gpu_memory_tbs: float = 3.35  # each GPU's memory bandwidth, TB/s: H100 SXM 3.35 (A100: 2.0)
    # the share of the decode bound vLLM reaches (each step reads the weights once and the KV
    # cache of the sequences in it); null: the share measured for the model with vLLM 0.26 on 640
    # samples of the recipe-like spread (Mistral-7B 0.22 on an H200, Gemma-2-9B 0.32 on an H100:
    # src/plan/hours.py cites the results files), for other models Mistral-7B's, assumed
    vllm_bound_share: float | None = None

    def __post_init__(self) -> None:
        check_numbers(self, "plan.")
        if self.prompts is not None:
            _positive("plan.prompts", self.prompts)
        _positive("plan.gpu_tflops", self.gpu_tflops)
        _check(0 < self.mfu <= 1, "plan.mfu", self.mfu, "must be in (0, 1]")
        if self.generate_tokens_per_s is not None:
            _positive("plan.generate_tokens_per_s", self.generate_tokens_per_s)
        _positive("plan.gpu_memory_tbs", self.gpu_memory_tbs)
        _check(
            self.vllm_bound_share is None or 0 < self.vllm_bound_share <= 1,
            "plan.vllm_bound_share",
            self.vllm_bound_share,
            "must be in (0, 1]",
        )


@dataclass
class PipelineConfig:
    """How `stage=all` chains iterations and treats finished stages (their records: each
    stage's done.json)."""

    # false: iteration t with iterations < t not done runs them first, saying so; true: refuse
    # instead, naming the missing checkpoint and the command that makes it
    require_previous: bool = False
    # stages of THIS iteration to redo although they were finished under another config (the
    # later stages of the iteration are redone with them): a list, e.g. pipeline.redo=[rank], or
    # one stage bare (pipeline.redo=rank); typed Any, as Hydra refuses a bare name for a list
    redo: Any = field(default_factory=list)
    # true: every stage of this iteration and of the earlier ones `stage=all` runs first that was
    # made under another config, or from a checkpoint trained again since, is redone (with the
    # stages after it) instead of refused: the one command after a redo of an early iteration
    redo_stale: bool = False
    # true: a stage that would read what a finished stage of the same iteration in another
    # lineage under paths.root read (the same key: params, files by content, the outputs of the
    # stages it reads) takes that stage's outputs instead of computing them (a sweep's points
    # share their first iteration's generate and rank); false: every stage computes its own
    reuse: bool = True
    # with stage=all: the last stage of the iteration this command runs (pipeline.until=pairs:
    # its data, not its training; src.sweep makes a sweep's shared stages so, in one process);
    # null: every stage
    until: Stage | None = None

    def __post_init__(self) -> None:
        _check(self.until != Stage.all, "pipeline.until", "all", "names a stage: null runs all")
        given = self.redo if isinstance(self.redo, list | tuple) else [self.redo]
        given = [str(s) for s in given if s is not None]
        names = [s.value for s in Stage if s != Stage.all]
        _check(
            all(s in names for s in given),
            "pipeline.redo",
            given,
            f"names stages of an iteration: {', '.join(names)} (e.g. pipeline.redo=[rank]: rank "
            "and the stages after it)",
        )
        self.redo = [Stage(s) for s in given]


def cross_checks(cfg: Any) -> None:  # cfg: the composed Config (root.py)
    """The rules of `iter`, `run_name` and `run.dir`, which read other sections (hardware,
    paths) and the names of the stages' SLURM jobs (`Config.stage_run_name`)."""
    _check(cfg.iter >= 0, "iter", cfg.iter, "must be >= 0 (iterations count from 1)")
    _check(
        cfg.iter > 0 or cfg.stage == Stage.eval,
        "iter",
        cfg.iter,
        f"iteration 0 is the base policy (run.init_policy) itself, which only stage=eval "
        f"evaluates, not stage={cfg.stage.value}; iterations count from 1",
    )
    # its longest file name, a SLURM log, sets its limit (its folder's, NAME_MAX, is looser)
    longest = max((s for s in Stage if s != Stage.all), key=lambda s: len(s.value))
    log = SLURM_LOG_NAME.format(job=cfg.stage_run_name(longest))
    if _bytes(log) > NAME_MAX:
        tail = _bytes(log) - _bytes(cfg.run_name)
        why = (
            f"the SLURM logs of its jobs are named `<run_name>-it{cfg.iter}-{longest.value}_"
            f"<job id>_<task id>.out`, {tail} bytes more, and a file system takes names of "
            f"at most {NAME_MAX} bytes: run_name can be {NAME_MAX - tail} bytes long"
        )
        if not cfg.run_name.endswith(f"-{pairs_lineage(cfg.training.pairs)}"):
            raise ConfigError(
                f"run_name={_shown(cfg.run_name)} is {_bytes(cfg.run_name)} bytes long; {why}"
            )
        # named after a pairs file of the user's own: its name is what makes it long
        raise ConfigError(
            f"training.pairs: its file name {_shown(Path(cfg.training.pairs).name)} makes "
            f"run_name (`<method.tag>-lr<learning rate>-pairs-<file name>`: "
            f"{_shown(cfg.run_name)}) {_bytes(cfg.run_name)} bytes long; {why}; give the "
            f"file a name {_bytes(log) - NAME_MAX} bytes shorter, or set run_name= to a name "
            "of your own"
        )
    check_path_component("run_name", cfg.run_name)
    if cfg.hardware.slurm is not None:  # the SLURM jobs are named after it
        check_shell_word("run_name", cfg.run_name)
    check_one_line("run.dir", cfg.run.dir)
    # lexically, not through symlinks: a root whose folders link to scratch space is fine,
    # a run.dir override that climbs out of the root is not
    root, run_dir = os.path.abspath(cfg.paths.root), os.path.abspath(cfg.run.dir)
    _check(
        run_dir.startswith(root.rstrip("/") + "/"),
        "run.dir",
        cfg.run.dir,
        f"lies outside paths.root={cfg.paths.root!r}: a run's files go under the root; "
        "move them with paths.root",
    )
