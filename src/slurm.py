"""Submit iterations of the pipeline to SLURM as sbatch jobs chained with `afterok`.

    python -m src.slurm --iterations 3 --dry-run experiment=gemma-2-9b-it-sppo hardware=slurm-node-8gpu
    python -m src.slurm --iterations 2 model=tiny-mistral hardware=slurm-cpu

For each iteration t: a generation array (one task per `generation.num_shards` shard) ->
a ranking array (`ranker.num_shards`) -> pairs -> training (one node, or `hardware.num_nodes`
nodes with one srun task each) -> iteration t+1's generation; with `eval.enabled=true`, iteration
t's eval after its training, beside the chain. Every job carries
`--kill-on-invalid-dep=yes`, so a failed stage cancels its dependents instead of leaving them
pending; `--requeue` and a warning signal before the time limit let a preempted stage resume
(stages resume from their chunks and Trainer checkpoints).

`hardware.slurm` describes the node; each stage asks for its part of it (`request`): a
generation, ranking or eval task its GPUs' share of the node's CPUs and memory (so the 8
one-GPU shards of an 8-GPU node run side by side on it), pairs a small CPU job, training the
whole node(s); any value can be set per stage (`hardware.slurm.stages.<stage>.cpus_per_task`,
`.mem_gb`, `.time_min`). The scripts come from `slurm/templates/`, filled from the resolved
config, and are written to `<run.dir>/slurm/` (logs `<run.dir>/slurm/logs/%x_%A_%a.out`).
`--dry-run` prints the requests, the scripts and the sbatch lines only.

Unlike `python -m src.main -m ... hardware=slurm-*` (Hydra's submitit launcher, which waits
until the array ends), this returns as soon as the jobs are queued.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from fractions import Fraction
from operator import attrgetter
from pathlib import Path

from src import config
from src.cli import ArgumentParser, failures
from src.config import REPO_ROOT, SHELL_WORD, Config, ConfigError, Device, Stage, StageRequest
from src.core.errors import EnvironmentFailure, StageError, set_overrides, without_keys
from src.core.registry import STAGES, iteration_stages

TEMPLATES = REPO_ROOT / "slurm" / "templates"
WARNING_SIGNAL_S = 300  # seconds before the time limit at which the job requeues itself
# A stage that takes no slot (pairs: seconds of CPU work on the ranked rows, whose memory is a
# few GB at most) asks for this, capped at the node's
SMALL_JOB = StageRequest(cpus_per_task=2, mem_gb=8, time_min=60)


class SubmitError(StageError):
    """sbatch refused a job; the message says which, why and what is queued already."""


@dataclass
class Job:
    name: str  # <run_name>-it<t>-<stage>
    stage: Stage
    iteration: int
    script: str
    array: int | None  # number of array tasks, None for a single job
    after: str | None = None  # name of the job this one waits for (afterok)


def fill(template: str, values: dict[str, str]) -> str:
    text = (TEMPLATES / template).read_text()
    # A value on a comment or #SBATCH line is outside any shell quoting: a line break in it would
    # start a line that bash runs. The config refuses such values; this keeps a script that
    # slipped past it from being written at all.
    for line in text.splitlines():
        for key in re.findall(r"@(\w+)@", line) if line.startswith("#") else ():
            if key in values and not values[key].isprintable():
                raise ValueError(f"{template}: @{key}@={values[key]!r} would break its line")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def sbatch_value(value: str) -> str:
    """`value` as one argument of an #SBATCH line: sbatch splits the line at blanks and ends it at
    an unquoted '#', and takes double quotes (backslash escapes inside) to group characters."""
    if SHELL_WORD.fullmatch(value.replace("/", "")):  # a path of plain names needs no quotes
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Request:
    """What one job (one array task) of a stage asks SLURM for."""

    tasks: int  # array tasks; 1: a single job
    nodes: int
    gpus: int  # per node
    cpus: int  # per node task (one task per node)
    mem_gb: int  # per node
    time_min: int
    share: Fraction  # the largest part of one node's GPUs, CPUs or memory it takes

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}" if self.gpus else "no GPU"
        if self.nodes > 1:
            where = f"per node, on {self.nodes} whole nodes"
        else:
            where = "(a whole node)" if self.share == 1 else f"({self.share} of a node)"
        tasks = f"; so does each of its {self.tasks} array tasks" if self.tasks > 1 else ""
        return f"{gpus}, {self.cpus} CPUs, {self.mem_gb} GB {where}, {self.time_min} min{tasks}"


def request(cfg: Config, stage: Stage) -> Request:
    """The resources of one task of `stage`: its share of the node (`StageSpec.slots` of
    `hardware.processes_per_node`), or SMALL_JOB for a stage that takes no slot; values set in
    `hardware.slurm.stages.<stage>` win. Raises ConfigError when a task needs more than a node."""
    s, hw, spec = cfg.hardware.slurm, cfg.hardware, STAGES[stage]
    slots = spec.slots if isinstance(spec.slots, int) else attrgetter(spec.slots)(cfg)
    if slots > hw.processes_per_node:
        raise ConfigError(
            f"{stage.value}: one task takes {slots} GPUs ({spec.slots}) but a "
            f"node has hardware.processes_per_node={hw.processes_per_node}; a task runs on one node"
        )
    if slots:
        share = Fraction(slots, hw.processes_per_node)
        derived = StageRequest(
            cpus_per_task=max(1, int(s.cpus_per_task * share)),
            mem_gb=max(1, int(s.mem_gb * share)),
            time_min=s.time_min,
        )
    else:
        derived = StageRequest(
            cpus_per_task=min(SMALL_JOB.cpus_per_task, s.cpus_per_task),
            mem_gb=min(SMALL_JOB.mem_gb, s.mem_gb),
            time_min=min(SMALL_JOB.time_min, s.time_min),
        )
    own = getattr(s.stages, stage.value)
    cpus = own.cpus_per_task or derived.cpus_per_task
    mem_gb = own.mem_gb or derived.mem_gb
    tasks = 1
    if spec.sharded_by:  # unset shard counts: one shard per task's worth of the allocation
        tasks = cfg.shard_section(stage).num_shards or max(1, hw.world_size // max(slots, 1))
    return Request(
        tasks=tasks,
        nodes=hw.num_nodes if stage == Stage.train else 1,
        gpus=slots if hw.device == Device.cuda else 0,
        cpus=cpus,
        mem_gb=mem_gb,
        time_min=own.time_min or derived.time_min,
        # the largest part of a node it takes: of its GPUs (slots), CPUs or memory
        share=max(
            Fraction(slots, hw.processes_per_node),
            Fraction(cpus, s.cpus_per_task),
            Fraction(mem_gb, s.mem_gb),
        ),
    )


def requests_table(cfg: Config) -> str:
    """A markdown table of what each stage of an iteration asks for (the dry run prints it; the
    slurm/README.md shows it for every slurm-* hardware)."""
    s, hw = cfg.hardware.slurm, cfg.hardware
    rows = [
        f"hardware={hw.name}, per node: {'GPUs' if hw.device == Device.cuda else 'processes'} "
        f"{hw.processes_per_node}, CPUs {s.cpus_per_task}, memory {s.mem_gb} GB; training on "
        f"{hw.num_nodes} node{'s' if hw.num_nodes > 1 else ''}",
        "",
        "| stage | tasks | nodes | GPUs per node | CPUs | memory (GB) | time (min) | of a node |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in iteration_stages(Stage.all, cfg.eval.enabled):
        r = request(cfg, stage)
        rows.append(
            f"| {stage.value} | {r.tasks} | {r.nodes} | {r.gpus} | {r.cpus} | {r.mem_gb} "
            f"| {r.time_min} | {'whole' if r.share == 1 else r.share} |"
        )
    return "\n".join(rows)


def resource_lines(cfg: Config, gpus: int) -> str:
    s = cfg.hardware.slurm
    lines = [f"#SBATCH --gpus-per-node={gpus}"] if gpus else []
    for option, value in (
        ("partition", s.partition),
        ("account", s.account),
        ("qos", s.qos),
        ("constraint", s.constraint),
    ):
        if value:
            lines.append(f"#SBATCH --{option}={sbatch_value(value)}")
    return "\n".join(lines)


def stage_job(cfg: Config, stage: Stage, overrides: list[str], after: str | None) -> Job:
    name = cfg.stage_run_name(stage)
    spec = STAGES[stage]
    need = request(cfg, stage)
    own = [f"stage={stage.value}", f"iter={cfg.iter}"]
    array = None
    if spec.sharded_by:  # the shard comes from SLURM_ARRAY_TASK_ID, the count from here
        array = need.tasks
        own.append(f"{spec.sharded_by}.num_shards={array}")
    args = set_overrides(overrides, own)
    log_dir = Path(cfg.run.dir) / "slurm" / "logs"
    values = {
        "description": f"iteration {cfg.iter}, stage {stage.value} of {cfg.run.dir}",
        "request": need.describe(),
        "job_name": sbatch_value(name),
        "output": sbatch_value(f"{log_dir}/%x_%A_%a.out"),
        "time": str(need.time_min),
        "cpus": str(need.cpus),
        "mem": str(need.mem_gb),
        "signal_s": str(WARNING_SIGNAL_S),
        "resource_lines": resource_lines(cfg, need.gpus),
        "repo": shlex.quote(str(REPO_ROOT)),
        "python": shlex.quote(sys.executable),
        "overrides": " ".join(shlex.quote(a) for a in args),
        "nodes": str(need.nodes),
    }
    multinode = need.nodes > 1
    script = fill("train-multinode.sbatch" if multinode else "stage.sbatch", values)
    if array is not None:
        script = script.replace(
            "#SBATCH --time=", f"#SBATCH --array=0-{array - 1}\n#SBATCH --time=", 1
        )
    return Job(name, stage, cfg.iter, script, array, after)


def chain(configs: list[Config], overrides: list[str]) -> list[Job]:
    """The jobs of consecutive iterations, each waiting for the one before it; with
    `eval.enabled`, iteration t's eval waits for its training, off the chain's critical path
    (iteration t+1 does not wait for it)."""
    jobs: list[Job] = []
    previous_policy = None  # the job that trains the iteration's policy pi_{t-1}
    for cfg in configs:
        names: dict[Stage, str] = {}
        for stage in iteration_stages(cfg.stage, cfg.eval.enabled):
            consumes = STAGES[stage].consumes
            after = names[consumes] if consumes else previous_policy
            jobs.append(stage_job(cfg, stage, overrides, after))
            names[stage] = jobs[-1].name
        previous_policy = names[Stage.train]
    return jobs


def sbatch_line(job: Job, script_path: Path, ids: dict[str, str]) -> list[str]:
    cmd = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
    if job.after:
        cmd.append(f"--dependency=afterok:{ids.get(job.after, '<' + job.after + '>')}")
    return [*cmd, str(script_path)]


def submit(jobs: list[Job], script_dir: Path, dry_run: bool) -> dict[str, str]:
    """Write the scripts into `script_dir` (made, with its logs/, unless `dry_run`), sbatch them
    in order; returns job name -> SLURM job id."""
    ids: dict[str, str] = {}
    for job in jobs:
        path = script_dir / f"{job.name}.sbatch"
        line = sbatch_line(job, path, ids)
        job.script = job.script.replace("@submit_line@", shlex.join(line))
        if dry_run:
            print(f"# ---- {path}\n{job.script}\n# $ {shlex.join(line)}\n")
            ids[job.name] = f"<{job.name}>"
            continue
        path.write_text(job.script)
        done = subprocess.run(line, capture_output=True, text=True)
        if done.returncode != 0:
            raise SubmitError(
                f"sbatch refused {path}: {done.stderr.strip() or done.stdout.strip()} "
                f"(jobs already queued: {', '.join(f'{n}={i}' for n, i in ids.items()) or 'none'})"
            )
        ids[job.name] = done.stdout.strip().split(";")[0]
        print(f"[slurm] {job.name}: job {ids[job.name]}", file=sys.stderr)
    return ids


def require_sbatch() -> None:
    """sbatch on this machine, before anything is written or said: the environment's failure."""
    if shutil.which("sbatch") is None:
        raise EnvironmentFailure(
            "sbatch: no such command on this machine; submit from a SLURM login node, or print "
            "the scripts with --dry-run"
        )


def compose(overrides: list[str], iteration: int) -> Config:
    return config.compose(set_overrides(overrides, [f"iter={iteration}"]))


def submit_chain(
    overrides: list[str], iterations: int, from_iter: int = 1, dry_run: bool = False
) -> dict[str, str]:
    """Render and submit iterations from_iter..iterations; returns job name -> SLURM job id."""
    overrides = without_keys(overrides, "iter", "stage")
    configs = [compose(overrides, t) for t in range(from_iter, iterations + 1)]
    if not configs:
        raise ConfigError(
            f"no iterations to submit: --from-iter {from_iter} > --iterations {iterations}"
        )
    if configs[0].hardware.slurm is None:
        raise ConfigError(
            f"hardware={configs[0].hardware.name} has no SLURM resources: choose one of the "
            "hardware=slurm-* options (partition, account, time, GPUs in hardware.slurm.*)"
        )
    configs = [replace(c, stage=Stage.all) for c in configs]
    from src.plan.stages import plan_text, require_fit

    if configs[0].plan.check:  # a chain that cannot fit must not spend hours before it fails
        require_fit(configs[0], overrides)
    jobs = chain(configs, overrides)  # every request checked before anything is written
    script_dir = Path(configs[0].run.dir) / "slurm"
    if not dry_run:  # a folder the scripts cannot go to, or no sbatch: before anything is said
        (script_dir / "logs").mkdir(parents=True, exist_ok=True)
        require_sbatch()
    print(
        f"{plan_text(configs[0])}\n\n"
        "What each stage asks for (set one with hardware.slurm.stages.<stage>.cpus_per_task, "
        f".mem_gb, .time_min):\n{requests_table(configs[0])}\n",
        file=sys.stdout if dry_run else sys.stderr,
    )
    return submit(jobs, script_dir, dry_run)


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="python -m src.slurm", description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=1, help="submit iterations 1..N")
    parser.add_argument("--from-iter", type=int, default=1, help="first iteration to submit")
    parser.add_argument("--dry-run", action="store_true", help="print scripts and sbatch lines")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m src.main")
    with failures(" ".join(["python -m src.slurm", *words])):
        args = parser.parse_intermixed_args(words)
        submit_chain(args.overrides, args.iterations, args.from_iter, args.dry_run)


if __name__ == "__main__":
    main()
