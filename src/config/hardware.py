"""`hardware`: where the work runs (conf/hardware/), and the SLURM node and each stage's request
(`hardware.slurm`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from src.config.checks import (
    CONSTRAINT_OPERATORS,
    _check,
    _positive,
    check_numbers,
    check_sbatch_option,
    check_setup_line,
    check_shell_word,
)
from src.config.choices import Device, Distributed


@dataclass
class StageRequest:
    """What one task of a stage asks SLURM for (`hardware.slurm.stages.<stage>.*`); null: derived
    from the node by `src/slurm.py` (a GPU task its GPUs' share of the node's CPUs and memory,
    pairs a small CPU job, training the whole node)."""

    cpus_per_task: int | None = None  # CPUs of one task
    mem_gb: int | None = None  # memory of one task, in GB
    time_min: int | None = None  # the task's time limit, in minutes


@dataclass
class StageRequests:
    """One request per stage of an iteration (`hardware.slurm.stages`)."""

    generate: StageRequest = field(default_factory=StageRequest)
    rank: StageRequest = field(default_factory=StageRequest)
    pairs: StageRequest = field(default_factory=StageRequest)
    train: StageRequest = field(default_factory=StageRequest)
    eval: StageRequest = field(default_factory=StageRequest)


@dataclass
class SlurmConfig:
    """The SLURM node a hardware runs on (conf/hardware/slurm/node.yaml): what a whole-node job
    asks for, and what each stage's share is cut from (`stages`). The sbatch templates and the
    submitit launcher read these."""

    partition: str | None = None  # sbatch --partition; null: the cluster's default
    account: str | None = None  # sbatch --account; null: yours by default
    qos: str | None = None  # sbatch --qos; null: the default
    time_min: int = 240  # every stage's time limit, unless its own is set (pairs: at most 60)
    cpus_per_task: int = 8  # the node's CPUs
    mem_gb: int = 64  # the node's memory
    constraint: str | None = None  # sbatch --constraint (node features, e.g. a GPU type)
    stages: StageRequests = field(default_factory=StageRequests)
    # shell lines every job runs on its node before its stage, after the exports (e.g. `module
    # load cuda/12.4`, `export NCCL_SOCKET_IFNAME=ib0`): one command per item (the stage runs the
    # clone's .venv/bin/python, so activating another environment changes nothing)
    setup: list[str] = field(default_factory=list)
    # more sbatch options, each `--name` or `--name=value` (e.g. `--reservation=maint`,
    # `--mail-type=FAIL`), each checked as the option sbatch reads (a prefix of one option is
    # that option, `--exclus` --exclusive; one of several, or of none, is refused); those the
    # scripts set themselves are refused, naming their key, and so are `--wrap` and those that ask
    # for a node's share (`--gres=gpu:8`, `--exclusive`, `--mincpus`, a cpu or gres/gpu
    # `--tres-per-task`): the scripts ask for each stage's own, and these would give every
    # one-GPU shard and the CPU pairs job a node
    sbatch: list[str] = field(default_factory=list)
    # the jobs read models and datasets from the Hugging Face cache only (HF_HUB_OFFLINE=1,
    # HF_DATASETS_OFFLINE=1, TRANSFORMERS_OFFLINE=1); false for nodes that reach the Hub
    offline: bool = True

    def __post_init__(self) -> None:
        check_numbers(self, "hardware.slurm.")
        for key in ("partition", "account", "qos"):
            check_shell_word(f"hardware.slurm.{key}", getattr(self, key))
        check_shell_word("hardware.slurm.constraint", self.constraint, CONSTRAINT_OPERATORS)
        for i, line in enumerate(self.setup):
            check_setup_line(f"hardware.slurm.setup[{i}]", line)
        for i, option in enumerate(self.sbatch):
            check_sbatch_option(f"hardware.slurm.sbatch[{i}]", option)
        _positive("hardware.slurm.time_min", self.time_min)
        _positive("hardware.slurm.cpus_per_task", self.cpus_per_task)
        _positive("hardware.slurm.mem_gb", self.mem_gb)
        for stage in fields(StageRequests):
            request, key = getattr(self.stages, stage.name), f"hardware.slurm.stages.{stage.name}"
            for name, node in (("cpus_per_task", self.cpus_per_task), ("mem_gb", self.mem_gb)):
                value = getattr(request, name)
                if value is not None:
                    _positive(f"{key}.{name}", value)
                    _check(
                        value <= node,
                        f"{key}.{name}",
                        value,
                        f"is more than a node has (hardware.slurm.{name}={node}): one task "
                        "runs on one node",
                    )
            if request.time_min is not None:
                _positive(f"{key}.time_min", request.time_min)


@dataclass
class HardwareConfig:
    """Where the work runs (conf/hardware/)."""

    name: str  # the hardware option's name, as messages show it
    device: Device  # cuda: one process per GPU; cpu: gloo processes
    num_nodes: int = 1  # nodes that train together (through SLURM)
    processes_per_node: int = 1  # GPUs per node; on CPU, gloo processes
    distributed: Distributed = Distributed.none  # how training processes share the work
    zero_stage: int = 3  # DeepSpeed only
    # each GPU's memory, what `python -m src.plan` checks every stage against (A100 / H100:
    # 80); null: not known (CPU), the plan shows the memory without checking it
    gpu_memory_gb: float | None = 80.0
    slurm: SlurmConfig | None = None

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.processes_per_node

    def __post_init__(self) -> None:
        check_numbers(self, "hardware.")
        _positive("hardware.num_nodes", self.num_nodes)
        _positive("hardware.processes_per_node", self.processes_per_node)
        _check(
            self.zero_stage in (0, 1, 2, 3), "hardware.zero_stage", self.zero_stage, "must be 0-3"
        )
        _check(
            self.gpu_memory_gb is None or self.gpu_memory_gb > 0,
            "hardware.gpu_memory_gb",
            self.gpu_memory_gb,
            "must be > 0 or null",
        )
        _check(
            self.distributed != Distributed.none or self.world_size == 1,
            "hardware.distributed",
            self.distributed.value,
            f"'none' needs exactly one process, but num_nodes x processes_per_node = {self.world_size}",
        )
