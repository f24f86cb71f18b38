"""The plan of one iteration: each stage's processes and per-GPU memory for a resolved config
(`src.plan.memory`'s model), checked against `hardware.gpu_memory_gb`, with the largest
per-device batch that fits, or else the GPU memory a batch of 1 needs and the override that
fits."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from src.config import (
    Backend,
    Config,
    ConfigError,
    Device,
    Distributed,
    Dtype,
    Optimizer,
    Peft,
    RefLogprobs,
    Stage,
    WeightUpdates,
    compose,
)
from src.core.errors import EXIT_CONFIG_ERROR, StageError
from src.core.install import install_line
from src.core.registry import STAGES
from src.core.shapes import Shape, judge_weights, shape_of
from src.plan.hours import hours_text
from src.plan.memory import (
    CUDA_CONTEXT,
    GIB,
    Memory,
    Step,
    checkpoint_bytes,
    fits,
    generation_memory,
    train_memory,
)

LARGEST_BATCH = 4096  # the search for the largest per-device batch stops here


class PlanError(StageError):
    """What the plan cannot know: a model's shape."""


class DoesNotFit(StageError):
    """A stage the memory model says does not fit the GPU: a configuration to change, exit 2."""

    exit_code = EXIT_CONFIG_ERROR


@dataclass
class StagePlan:
    stage: str
    processes: str  # how many, and on what
    memory: Memory | None  # per GPU; None where the stage runs on CPUs only
    batch_key: str | None = None  # the setting of the stage's per-device batch
    batch: int | None = None
    largest_batch: int | None = None  # the largest that fits; None: not checked or none fits
    least: float | None = None  # bytes at a per-device batch of 1: the least GPU memory it needs
    note: str = ""

    def fits(self, gpu_gb: float | None) -> bool | None:
        if self.memory is None or gpu_gb is None:
            return None
        return fits(self.memory.footprint, gpu_gb)


def policy_shape(cfg: Config) -> Shape:
    shape = shape_of(cfg.model.path, cfg.model.attn_implementation)
    if shape is None:
        raise PlanError(
            f"model.path={cfg.model.path}: its shape is not known here (no config.json there "
            "nor in the Hub cache, and not one of the real models this project describes): "
            "fetch it (python -m src.assets fetch with this command's overrides), or point "
            "model.path at a folder holding its config.json"
        )
    return shape


def on_gpu(cfg: Config) -> bool:
    return cfg.hardware.device == Device.cuda


def dtype_bytes(cfg: Config) -> int:
    """Bytes per element of the dtype training computes in (`training.precision`; auto: bf16 on
    a GPU, fp32 on CPU, as the stages choose)."""
    wanted = cfg.training.precision
    if wanted == Dtype.auto:
        return 2 if on_gpu(cfg) else 4
    return 4 if wanted == Dtype.float32 else 2


def sampling_bytes(cfg: Config) -> int:
    """Bytes per element generation samples in (src.generation.sampling.generation_dtype: bf16
    on a GPU, fp32 on CPU)."""
    return 2 if on_gpu(cfg) else 4


def on_device(cfg: Config, memory: Memory, stage: str) -> Memory:
    """`memory` as the configured device holds it: on CPU a process's context, no CUDA's."""
    return memory if on_gpu(cfg) else memory.on_cpu(stage)


def training_mode(cfg: Config) -> tuple[str, int]:
    """(the memory model's mode, the devices ZeRO-3 shards over)."""
    hw = cfg.hardware
    if cfg.training.peft != Peft.none:
        return cfg.training.peft.value, 1
    if hw.distributed == Distributed.deepspeed and hw.zero_stage == 3:
        return "zero3", hw.world_size
    if dtype_bytes(cfg) == 2 and hw.distributed != Distributed.deepspeed:  # bf16 weights
        return {WeightUpdates.kahan: "kahan", WeightUpdates.fp32: "master"}[
            cfg.training.weight_updates
        ], 1
    return "full", 1


def train_step(cfg: Config) -> Step:
    """The memory model's step for the config's training (one process's micro-batch)."""
    t = cfg.training
    return Step(
        sequences=2 * t.per_device_batch_size,  # chosen and rejected
        tokens=t.max_length,
        rank=t.lora.rank,
        optimizer_states=1 if t.optimizer == Optimizer.rmsprop else 2,
        chunk=t.lm_head_chunk,
        b=dtype_bytes(cfg),
        gradient_checkpointing=t.gradient_checkpointing,
    )


def trainer_checkpoint_bytes(cfg: Config, shape: Shape) -> float:
    """What one Trainer checkpoint of this training holds on disk (`checkpoint_bytes`)."""
    return checkpoint_bytes(shape, train_step(cfg), training_mode(cfg)[0])


def train_plan(cfg: Config, shape: Shape, gpu_gb: float | None) -> StagePlan:
    t, hw = cfg.training, cfg.hardware
    mode, devices = training_mode(cfg)
    step = train_step(cfg)

    def memory(pairs: int) -> Memory:
        m = train_memory(shape, replace(step, sequences=2 * pairs), mode, devices)
        if t.ref_logprobs == RefLogprobs.online and t.peft == Peft.none:
            m.kept["reference model"] = shape.params * step.b  # a second, frozen copy
        return on_device(cfg, m, "train")

    # a per-device batch the global batch divides into, over the processes
    per_process = t.global_batch_size // hw.world_size
    allowed = [n for n in range(1, per_process + 1) if per_process % n == 0]
    largest = largest_fitting(memory, gpu_gb, allowed)
    label = {
        "zero3": f"DeepSpeed ZeRO-3 over {devices}",
        "full": "full weights",
        "kahan": "full weights, Kahan-compensated bf16",
        "master": "full weights, fp32 master weights",
    }.get(mode, mode)
    return StagePlan(
        "train",
        f"{hw.world_size} ({label})",
        memory(t.per_device_batch_size),
        "training.per_device_batch_size",
        t.per_device_batch_size,
        largest,
        memory(1).footprint,
    )


def generate_plan(cfg: Config, shape: Shape, gpu_gb: float | None) -> StagePlan:
    g = cfg.generation
    shards = g.num_shards or cfg.hardware.world_size
    if g.backend == Backend.vllm:
        weights = shape.params * 2 / g.tensor_parallel_size
        if g.kv_cache_gb is not None:
            kv = g.kv_cache_gb * 1e9
        elif gpu_gb is not None:
            kv = max(g.gpu_memory_utilization * gpu_gb * 1e9 - weights - CUDA_CONTEXT, 0.0)
        else:
            kv = 0.0
        memory = Memory({"weights (bf16)": weights, "vLLM's KV cache": kv})
        return StagePlan(
            "generate", f"{shards} vLLM engines", memory, note="vLLM takes its share of the GPU"
        )

    def memory(prompts: int) -> Memory:
        m = generation_memory(
            shape, prompts, cfg.method.K, g.max_prompt_length, g.max_new_tokens, sampling_bytes(cfg)
        )
        return on_device(cfg, m, "generate")

    return StagePlan(
        "generate",
        f"{shards} (one per GPU)",
        memory(g.batch_size),
        "generation.batch_size",
        g.batch_size,
        largest_fitting(memory, gpu_gb),
        memory(1).footprint,
    )


def rank_plan(cfg: Config, shape: Shape, gpu_gb: float | None) -> StagePlan:
    r = cfg.ranker
    weights = judge_weights(r.model)
    memory = None if weights is None else Memory({f"{r.model} weights": weights})
    note = "" if memory else f"{r.model}: its size is not known here"
    shards = r.num_shards or cfg.hardware.world_size
    return StagePlan("rank", f"{shards} (one per GPU)", memory, note=note)


def eval_plan(cfg: Config, shape: Shape, gpu_gb: float | None) -> StagePlan:
    e = cfg.eval

    def memory(prompts: int) -> Memory:
        b = sampling_bytes(cfg)
        m = generation_memory(shape, prompts, 1, e.max_prompt_length, e.max_new_tokens, b)
        return on_device(cfg, m, "generate")

    return StagePlan(
        "eval",
        "1 GPU (the policy, then the reference, then the judge)",
        memory(e.batch_size),
        "eval.batch_size",
        e.batch_size,
        largest_fitting(memory, gpu_gb),
        memory(1).footprint,
    )


def largest_fitting(memory, gpu_gb: float | None, allowed: list[int] | None = None) -> int | None:
    """The largest batch (of `allowed`, ascending, if given) whose footprint fits the GPU; None
    when the GPU's memory is not known or not even the smallest fits."""
    if gpu_gb is None:
        return None
    if allowed is not None:
        fitting = [n for n in allowed if memory(n).footprint <= gpu_gb * 1e9]
        return fitting[-1] if fitting else None
    if memory(1).footprint > gpu_gb * 1e9:
        return None
    low, high = 1, 2
    while high <= LARGEST_BATCH and memory(high).footprint <= gpu_gb * 1e9:
        low, high = high, high * 2
    high = min(high, LARGEST_BATCH + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if memory(middle).footprint <= gpu_gb * 1e9 else (low, middle)
    return low


def cpu_plan(stage: Stage) -> StagePlan:
    """A stage that holds no model: one process on the CPUs."""
    return StagePlan(stage.value, "1 (CPU)", None)


# Each stage's plan that loads a model (the registry's `loads_model`), taking (cfg, the policy's
# shape, the GPU's memory in GB or None); a stage that loads none is one CPU process (cpu_plan)
PLANNERS = {
    Stage.generate: generate_plan,
    Stage.rank: rank_plan,
    Stage.train: train_plan,
    Stage.eval: eval_plan,
}


def plan(cfg: Config, stages: list[Stage] | None = None) -> list[StagePlan]:
    """The plan of each of `stages` (default: every stage of an iteration, as stage=all runs
    them, src.core.registry), in order."""
    gpu_gb = cfg.hardware.gpu_memory_gb if cfg.hardware.device == Device.cuda else None
    shape = policy_shape(cfg)
    wanted = cfg.stages(Stage.all) if stages is None else stages
    return [
        PLANNERS[s](cfg, shape, gpu_gb) if STAGES[s].loads_model else cpu_plan(s) for s in wanted
    ]


def remedies(cfg: Config, stage: StagePlan) -> list[str]:
    """Overrides that may make `stage` fit, the least departure from the recipe first."""
    if stage.largest_batch is not None:  # a smaller per-device batch (training: more accumulation)
        return [f"{stage.batch_key}={stage.largest_batch}"]
    if stage.stage == "generate" and cfg.generation.backend == Backend.hf:
        return ["generation=vllm"]  # its paged KV cache takes what the weights leave
    if stage.stage != "train":
        return []
    t, hw = cfg.training, cfg.hardware
    mode = training_mode(cfg)[0]
    out = []
    if not t.gradient_checkpointing:
        out.append("training.gradient_checkpointing=true")
    if mode == "master":  # Kahan's compensation in place of fp32 master weights and state
        out.append("training.weight_updates=kahan")
    if mode in ("full", "kahan", "master") and hw.world_size > 1:
        out.append("hardware.distributed=deepspeed hardware.zero_stage=3")
    if t.peft == Peft.none:
        out.append("training.peft=lora")
    if t.peft != Peft.qlora:
        ddp = " hardware.distributed=ddp" if hw.distributed == Distributed.deepspeed else ""
        out.append(f"training.peft=qlora{ddp}")  # DeepSpeed cannot shard a 4-bit base
    return out


def remedy_that_fits(
    cfg: Config, overrides: list[str], stage: StagePlan, gpu_gb: float
) -> tuple[str, StagePlan] | None:
    """The first of `remedies` under which `stage` fits `gpu_gb`, added to the command's
    `overrides`, and the stage's plan under it; None when none does."""
    for remedy in remedies(cfg, stage):
        try:
            tried = compose([*overrides, *remedy.split()])
        except ConfigError:  # not a combination the config allows (QLoRA under ZeRO-3)
            continue
        fixed = plan(tried, [Stage(stage.stage)])[0]
        if fixed.fits(gpu_gb):
            return remedy, fixed
    return None


def require_fit(cfg: Config, overrides: list[str], gpu: str = "hardware.gpu_memory_gb") -> None:
    """Refuse (exit 2) when a stage `cfg` runs (every stage of the iteration with stage=all) does
    not fit `hardware.gpu_memory_gb`: one line naming each such stage, what it needs and has,
    and the overrides the plan says fit. `gpu`: what the GPU's memory was read from."""
    gpu_gb = cfg.hardware.gpu_memory_gb if cfg.hardware.device == Device.cuda else None
    has = f"{gpu}={gpu_gb:g} ({gpu_gb * 1e9 / GIB:.1f} GiB)" if gpu_gb else ""
    needs, fixed_needs, fixes = [], [], []
    for stage in plan(cfg):
        if stage.fits(gpu_gb) is not False or cfg.stage.value not in ("all", stage.stage):
            continue
        needs.append(f"stage {stage.stage} needs {stage.memory.footprint / GIB:.1f} GiB per GPU")
        found = remedy_that_fits(cfg, [*overrides, *fixes], stage, gpu_gb)
        if found is None:
            raise DoesNotFit(
                f"{'; '.join(needs)} where {has}, and no smaller batch, adapter or sharding fits "
                "it: use GPUs with more memory (python -m src.plan shows every term; "
                "plan.check=false queues it anyway)"
            )
        remedy, fixed = found
        fixes += remedy.split()
        fixed_needs.append(f"{stage.stage} {fixed.memory.footprint / GIB:.1f} GiB")
    if needs:
        raise DoesNotFit(
            f"{'; '.join(needs)} where {has}; with {' '.join(fixes)}: "
            f"{', '.join(fixed_needs)} (python -m src.plan shows every term; plan.check=false "
            "queues it anyway)",
            fix=" ".join(fixes),
        )


# --- the plan as text ---------------------------------------------------------------------------


def gpu_holding(footprint: float) -> float:
    """The least GPU memory, in GB to a tenth, that holds `footprint` bytes (as `fits` says)."""
    gb = math.ceil(footprint / 1e8) / 10
    return gb if fits(footprint, gb) else round(gb + 0.1, 1)  # rounding may put it a hair under


def row(p: StagePlan, gpu_gb: float | None) -> str:
    if p.memory is None:
        memory, fitting = ("–", "CPU") if not p.note else ("?", p.note)
    else:
        memory = f"{p.memory.footprint / GIB:.1f}"
        fitting = {None: "not checked", True: "yes", False: "**no**"}[p.fits(gpu_gb)]
    batch = "" if p.batch_key is None else f"{p.batch_key}={p.batch}"
    if p.batch_key is not None and gpu_gb is not None:
        batch += (
            f" (fits up to {p.largest_batch})"
            if p.largest_batch
            else f" (none fits; at 1 it needs a GPU of {gpu_holding(p.least):.1f} GB)"
        )
    return f"| {p.stage} | {p.processes} | {memory} | {fitting} | {batch} |"


def remedy_lines(cfg: Config, stages: list[StagePlan], overrides: list[str]) -> list[str]:
    """For each stage that no per-device batch fits to the GPU: the override (`remedies`, with
    the command's `overrides`) under which it fits, or that none does."""
    gpu_gb = cfg.hardware.gpu_memory_gb
    lines = []
    for p in stages:
        if p.fits(gpu_gb) is not False or p.largest_batch is not None:
            continue
        found = remedy_that_fits(cfg, overrides, p, gpu_gb)
        lines.append(
            f"{p.stage} fits {gpu_gb:g} GB with {found[0]}: "
            f"{found[1].memory.footprint / GIB:.1f} GiB per GPU"
            if found
            else f"{p.stage}: no smaller batch, adapter or sharding fits {gpu_gb:g} GB"
        )
    return lines


def plan_text(cfg: Config, through: int | None = None, overrides: list[str] | None = None) -> str:
    """The plan as `python -m src.plan` and `python -m src.slurm --dry-run` print it, ending with
    what the nodes install (`install_line`). `through`: the last iteration of a chain from
    cfg.iter (each iteration's memory is the first one's); `overrides`: the command's, with which
    a stage that no batch fits is tried under each of `remedies` (None: not tried)."""
    hw = cfg.hardware
    gpu_gb = hw.gpu_memory_gb if hw.device.value == "cuda" else None
    stages = plan(cfg)
    gpus = f"{hw.world_size} GPU(s) of {gpu_gb:g} GB" if gpu_gb else "no GPU memory to check"
    unit, held = (
        (
            "GPU",
            "the peak allocation, the allocator's slack over the activations and the CUDA context",
        )
        if on_gpu(cfg)
        else ("process", "the tensors in fp32 and the stage's own buffers, as the resident set")
    )
    remedied = remedy_lines(cfg, stages, overrides) if gpu_gb and overrides is not None else []
    lines = [
        f"plan: {cfg.model.name}, {cfg.method.name.value}, "
        + (
            f"iteration {cfg.iter}"
            if through in (None, cfg.iter)
            else f"iterations {cfg.iter}-{through}"
        )
        + " on "
        f"hardware={hw.name} ({gpus})",
        "",
        f"| stage | processes | GiB per {unit} | fits | per-device batch |",
        "|---|---|---|---|---|",
        *(row(p, gpu_gb) for p in stages),
        *(["", *remedied] if remedied else []),
        "",
        f"GiB per {unit}: {held} (docs/memory.md). Terms at each stage's peak:",
    ]
    for p in stages:
        if p.memory is None:
            continue
        phase = f", peak in the {p.memory.peak_phase}" if p.memory.peak_phase else ""
        lines.append(f"  {p.stage}{phase}:")
        lines += [f"    {v / GIB:7.2f}  {k}" for k, v in p.memory.terms().items()]
    hours = hours_text(cfg, policy_shape(cfg), through)
    return "\n".join([*lines, "", *hours, "", install_line(hw.device.value)])


def require_fit_here(cfg: Config, overrides: list[str]) -> None:
    """`python -m src.main` on a GPU: the stages it runs checked against this GPU's memory, as
    CUDA reports it (plan.check=false: not checked)."""
    if not cfg.plan.check or cfg.hardware.device != Device.cuda:
        return
    import torch

    from src.core.devices import gpu_state

    if not torch.cuda.is_available():
        return  # no GPU here: the stage says so itself
    total = gpu_state()["total"] / 1e9  # read apart: no CUDA context in this process
    here = replace(cfg, hardware=replace(cfg.hardware, gpu_memory_gb=total))
    require_fit(here, overrides, gpu="this GPU's memory")


def peak_line(cfg: Config, stage: Stage, measured: int) -> str:
    """The console's line for a stage's measured peak memory, beside the plan's figure for it: on
    a GPU torch's peak allocation and the plan's; on CPU the resident set's peak increase and
    what the plan says the process holds."""
    where = "allocated on the GPU" if on_gpu(cfg) else "resident (RSS) above the stage's start"
    line = f"[{stage.value}] peak memory {measured / GIB:.3f} GiB {where}"
    memory = planned_memory(cfg, stage)
    if memory is None:
        return line
    planned = memory.peak if on_gpu(cfg) else memory.footprint
    return f"{line}; the plan: {planned / GIB:.3f} GiB (python -m src.plan)"


def planned_memory(cfg: Config, stage: Stage) -> Memory | None:
    """The plan's memory of `stage` per device; None for a model whose shape it does not know
    (or a stage it gives none)."""
    try:
        return plan(cfg, [stage])[0].memory
    except StageError:
        return None


def memory_terms(memory: Memory) -> dict:
    """The plan's figures as a stage's record keeps them beside what it measured (GiB): what
    stays through the step, each transient phase's terms, the peak allocation and its phase,
    the context and the footprint."""

    def gib(terms: dict[str, float]) -> dict[str, float]:
        return {k: v / GIB for k, v in terms.items()}

    return {
        "kept": gib(memory.kept),
        "phases": {phase: gib(terms) for phase, terms in memory.phases.items()},
        "peak": memory.peak / GIB,
        "peak_phase": memory.peak_phase,
        "context": memory.context / GIB,
        "footprint": memory.footprint / GIB,
    }
