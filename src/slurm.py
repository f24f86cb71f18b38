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
config, and are written to `<run.dir>/slurm/` (logs `<run.dir>/slurm/logs/%x_%j.out`, an
array's `%x_%A_%a.out`).
A site's needs are configuration (`hardware.slurm.setup`, `.sbatch`, `.offline`): each script
exports the config's paths (`environment_lines`), runs the setup lines, then the stage; the
clone, its venv, paths.root and HF_HOME must be on a file system every node shares.
`--dry-run` prints the requests, the scripts and the sbatch lines only. Every value lands in a
script as written (a value holding `@key@` is not filled in again), each word of a command
quoted onto its one line. A chain takes at most `MAX_ITERATIONS` iterations (later ones go in
with `--from-iter`), an array at most `MAX_ARRAY_TASKS` tasks (SLURM's default MaxArraySize).

Unlike `python -m src.main -m ... hardware=slurm-*` (Hydra's submitit launcher, which waits
until the array ends), this returns as soon as the jobs are queued.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

from src.config import (
    REPO_ROOT,
    SHELL_WORD,
    Config,
    ConfigError,
    Device,
    LoggerBackend,
    Stage,
    StageRequest,
    compose,
)
from src.config.cli import ArgumentParser, failures
from src.core.errors import (
    EnvironmentFailure,
    StageError,
    command_line,
    set_overrides,
    without_keys,
)
from src.core.fingerprints import read_upstream
from src.core.registry import STAGES
from src.core.state import state_of

TEMPLATES = REPO_ROOT / "slurm" / "templates"
PLACEHOLDER = re.compile(r"@(\w+)@")  # a template's @key@
WARNING_SIGNAL_S = 300  # seconds before the time limit at which the job requeues itself
# SLURM's default MaxArraySize: an array's task ids run 0..1000, and sbatch refuses a larger
# array; a chain whose later array is refused would be left half queued
MAX_ARRAY_TASKS = 1001
# The most iterations one chain submits: all its jobs (4 an iteration, 5 with eval) wait in the
# queue from the start, where per-user limits (MaxSubmitJobs) apply, and each iteration's config
# takes about 0.3 s to compose; SPPO's recipes run 3. Later ones go in with --from-iter.
MAX_ITERATIONS = 100
# Composing a config takes about 0.3 s: a chain or a sweep with more iterations or points than
# this says on stderr, after each this many, how far it is
PROGRESS_EVERY = 25
# A stage that takes no slot (pairs: seconds of CPU work on the ranked rows, whose memory is a
# few GB at most) asks for this, capped at the node's
SMALL_JOB = StageRequest(cpus_per_task=2, mem_gb=8, time_min=60)
# The placeholders whose value is lines of shell code, each filling a line of its own: the
# exports of `node_values` and the site's `hardware.slurm.setup`; every other value is one line
SHELL_LINE_KEYS = ("environment", "setup")
# What `hardware.slurm.offline` exports: the Hub's clients then read their caches only
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# File systems held in a machine's memory: what lies on one no other node sees
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})
SHARED_FILE_SYSTEM = (
    "the clone, its .venv, paths.root and HF_HOME must be on a file system every node mounts "
    "at the same path"
)

Item = TypeVar("Item")


class SubmitError(StageError):
    """sbatch refused a job; the message says which, why and what is queued already."""


@dataclass
class Job:
    name: str  # <run_name>-it<t>-<stage>
    stage: Stage
    iteration: int
    template: str  # its script's, in slurm/templates/
    # the template's values but @submit_line@'s, which names the ids of the jobs it waits for
    values: dict[str, str]
    array: int | None  # number of array tasks, None for a single job
    after: str | None = None  # name of the job this one waits for (afterok)

    def script(self, path: Path, submit_line: list[str]) -> str:
        """The job's script, to be written to `path` (which its first lines check the node sees)."""
        values = {"script": shell_word(str(path)), "submit_line": shell_line(submit_line)}
        return fill(self.template, {**self.values, **values})


def fill(template: str, values: dict[str, str]) -> str:
    """slurm/templates/<template> with each @key@ replaced by values[key] (one without a value
    stays), in one pass: a value is written as it is, never searched for placeholders itself."""
    text = (TEMPLATES / template).read_text()

    def value(found: re.Match[str]) -> str:
        if found[1] not in values:
            return found[0]
        check_lines(template, found[1], values[found[1]], fills_its_line(text, found))
        return values[found[1]]

    return PLACEHOLDER.sub(value, text)


def fills_its_line(text: str, found: re.Match[str]) -> bool:
    """Whether the placeholder `found` in `text` is the whole of its line."""
    before, after = text[found.start() - 1 : found.start()], text[found.end() : found.end() + 1]
    return before in ("", "\n") and after in ("", "\n")


def check_lines(template: str, key: str, value: str, own_line: bool) -> None:
    """A value starts no line that bash runs unless it is shell code by design: it is one line of
    printable characters (a word on a command line quoted by `shell_word`, text on a comment or
    #SBATCH line), or, filling a line of its own, lines that are all comments (#SBATCH
    directives), or printable lines of shell code for a key of SHELL_LINE_KEYS (the exports, the
    site's setup). The config refuses values that could break a line; this keeps a script that
    slipped past it from being written at all."""
    lines = value.split("\n")
    several = own_line and (key in SHELL_LINE_KEYS or all(line.startswith("#") for line in lines))
    if not all(line.isprintable() for line in lines) or (len(lines) > 1 and not several):
        raise ValueError(f"{template}: @{key}@={value!r} would break its line")


def shell_word(value: str) -> str:
    """`value` as one word of a bash command that stays on its line of the script: in single
    quotes (shlex.quote), or, holding a line break or another control character, in bash's $'...'
    with that character as the \\xHH escapes of its UTF-8 bytes (in single quotes a line break
    would carry the rest of the word onto a line of its own)."""
    if value.isprintable():
        return shlex.quote(value)
    return "$'" + "".join(_ansi_c_character(c) for c in value) + "'"


def _ansi_c_character(c: str) -> str:
    if c in "\\'":
        return "\\" + c
    if c.isprintable():
        return c
    # surrogateescape: the bytes of an argument that was not UTF-8 come back as they were
    return "".join(f"\\x{byte:02x}" for byte in c.encode("utf-8", "surrogateescape"))


def shell_line(words: Sequence[str]) -> str:
    """`words` as one line of a bash command (shlex.join's, with `shell_word`'s quoting)."""
    return " ".join(shell_word(w) for w in words)


def counted(items: Sequence[Item], what: str) -> Iterator[Item]:
    """`items` one by one; when there are more than PROGRESS_EVERY, a line on stderr after every
    PROGRESS_EVERY of them says how many of how many `what` (e.g. "[slurm] iterations composed")."""
    for done, item in enumerate(items, 1):
        yield item
        if done % PROGRESS_EVERY == 0 and done < len(items):
            print(f"{what}: {done}/{len(items)}", file=sys.stderr, flush=True)


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
    if tasks > MAX_ARRAY_TASKS:
        raise ConfigError(
            f"{spec.sharded_by}.num_shards={tasks}: is more array tasks than one SLURM array "
            f"takes ({MAX_ARRAY_TASKS}, SLURM's default MaxArraySize)"
        )
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
    for stage in cfg.stages(Stage.all):
        r = request(cfg, stage)
        rows.append(
            f"| {stage.value} | {r.tasks} | {r.nodes} | {r.gpus} | {r.cpus} | {r.mem_gb} "
            f"| {r.time_min} | {'whole' if r.share == 1 else r.share} |"
        )
    return "\n".join(rows)


def resource_lines(cfg: Config, gpus: int) -> list[str]:
    """The #SBATCH lines of the node's GPUs and of the options set in `hardware.slurm`."""
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
    for option in s.sbatch:  # the site's own, after the project's (checked by the config)
        name, equals, value = option.partition("=")
        lines.append(f"#SBATCH {name}={sbatch_value(value)}" if equals else f"#SBATCH {name}")
    return lines


def environment_lines(cfg: Config) -> list[str]:
    """What a job exports on its node before its stage, from the resolved config, so that the
    stage finds what the submitting machine's config names whatever the node's own environment
    (a login shell's profile, `sbatch --export=NONE`): the Hugging Face home and Hub cache, the
    run root, W&B's mode (with the wandb logger) and, with `hardware.slurm.offline`, the Hub's
    offline switches."""
    variables = {
        "HF_HOME": cfg.paths.hf_home,
        "HF_HUB_CACHE": cfg.paths.hub_cache,
        "SELFPLAY_RUNS": cfg.paths.root,
    }
    if cfg.logger.backend == LoggerBackend.wandb:
        variables["WANDB_MODE"] = cfg.logger.mode.value
    if cfg.hardware.slurm.offline:
        variables.update(dict.fromkeys(OFFLINE_VARIABLES, "1"))
    return [f"export {name}={shell_word(value)}" for name, value in variables.items()]


def node_values(cfg: Config) -> dict[str, str]:
    """@environment@ and @setup@ of every template: the exports, then the site's setup lines
    (`hardware.slurm.setup`), which run before the stage and may use them."""
    return {
        "environment": "\n".join(environment_lines(cfg)),
        "setup": "\n".join(cfg.hardware.slurm.setup),
    }


def memory_file_system(path: str | Path, mountinfo: str | None = None) -> str | None:
    """The type of the memory file system (MEMORY_FILE_SYSTEMS) that `path` lies on, else None.

    The rule: `path` resolved (symlinks followed as far as it exists) lies on the mount of
    /proc/self/mountinfo (or the text `mountinfo`) whose mount point is the longest that contains
    it (of equal ones, the last listed: it is mounted over the others). A tmpfs or ramfs is this
    machine's memory, which no other node sees; whether a disk is local or shared is written
    nowhere, so a local disk passes (slurm/README.md). Without /proc (not Linux): None."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = str(Path(path).resolve())
    found, longest = None, -1
    for line in mountinfo.splitlines():
        mount, _, after = line.partition(" - ")
        if len(mount.split(" ")) < 5 or not after:
            continue
        # the mount point is the 5th field, with blanks and backslashes written in octal
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), mount.split(" ")[4])
        inside = point == "/" or target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= longest:
            found, longest = after.split(" ")[0], len(point)
    return found if found in MEMORY_FILE_SYSTEMS else None


def require_shared_file_systems(cfg: Config) -> None:
    """The clone, its venv (sys.prefix), paths.root and paths.hf_home are on no memory file
    system of this machine: a job on another node would not find them (refused before any
    script is written)."""
    for what, path in (
        ("the clone", str(REPO_ROOT)),
        ("the venv (sys.prefix)", sys.prefix),
        ("paths.root", cfg.paths.root),
        ("paths.hf_home", cfg.paths.hf_home),
    ):
        kind = memory_file_system(path)
        if kind is not None:
            raise ConfigError(
                f"{what} {path} is on {kind}, this machine's memory, which the nodes do not "
                f"see: {SHARED_FILE_SYSTEM}"
            )


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
    log_dir = cfg.layout.slurm_logs()
    directives = [f"#SBATCH --array=0-{array - 1}"] if array is not None else []
    values = {
        "description": f"iteration {cfg.iter}, stage {stage.value} of {cfg.run.dir}",
        "request": need.describe(),
        "job_name": sbatch_value(name),
        # an array's task logs to <name>_<array job>_<task>.out, any other job to <name>_<job>.out
        # (SLURM gives %a a job that is no array as 4294967294)
        "output": sbatch_value(f"{log_dir}/{'%x_%A_%a' if array is not None else '%x_%j'}.out"),
        "time": str(need.time_min),
        "cpus": str(need.cpus),
        "mem": str(need.mem_gb),
        "signal_s": str(WARNING_SIGNAL_S),
        "resource_lines": "\n".join([*directives, *resource_lines(cfg, need.gpus)]),
        "repo": shell_word(str(REPO_ROOT)),
        "python": shell_word(sys.executable),
        **node_values(cfg),
        "overrides": shell_line(args),
        "nodes": str(need.nodes),
    }
    template = "train-multinode.sbatch" if need.nodes > 1 else "stage.sbatch"
    fill(template, values)  # a value that would break its line stops the chain before any sbatch
    return Job(name, stage, cfg.iter, template, values, array, after)


def chain(configs: list[Config], overrides: list[str]) -> list[Job]:
    """The jobs of consecutive iterations, each waiting for the one before it; with
    `eval.enabled`, iteration t's eval waits for its training, off the chain's critical path
    (iteration t+1 does not wait for it). A stage finished with this config, nothing before it
    queued, is not queued again (a resubmission after a failure queues what is left), and what
    would have waited for it waits for nothing."""
    jobs: list[Job] = []
    previous_policy = None  # the job that trains the iteration's policy pi_{t-1}
    for cfg in configs:
        names: dict[Stage, str | None] = {}
        tree = cfg.as_tree()
        for stage in cfg.stages():
            upstream = read_upstream(tree, stage)
            after = names.get(upstream) if upstream else previous_policy
            if after is None and state_of(tree, stage).status == "done":
                print(f"[slurm] iteration {cfg.iter}, {stage.value}: finished with this "
                      "config, not queued", file=sys.stderr)  # fmt: skip
                names[stage] = None
                continue
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
        script = job.script(path, line)
        if dry_run:
            print(f"# ---- {path}\n{script}\n# $ {shell_line(line)}\n")
            ids[job.name] = f"<{job.name}>"
            continue
        path.write_text(script)
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


def check_chain_length(iterations: int, from_iter: int) -> None:
    """At most MAX_ITERATIONS iterations in one chain, refused before any is composed."""
    if iterations - from_iter + 1 > MAX_ITERATIONS:
        last = from_iter + MAX_ITERATIONS - 1
        raise ConfigError(
            f"--iterations {iterations} --from-iter {from_iter}: one chain submits at most "
            f"{MAX_ITERATIONS} iterations (its jobs all wait in the queue from the start): "
            f"submit --iterations {last} now and --from-iter {last + 1} once they end"
        )


def require_job_assets(
    configs: list[Config], cfg: Config, fetch_args: list[str], online: bool | None = None
) -> None:
    """Every model, judge and prompt split `configs` read, whole in the Hub cache of `cfg` (the
    one the jobs read): else each missing one is named, with the command that fetches it
    (`python -m src.assets fetch <fetch_args>`). Where the jobs reach the Hub (`online`; by
    default where `hardware.slurm.offline=false`) they download what the cache lacks: then only
    local files and folders are checked."""
    from src.assets.check import listed_for, require_assets

    if online is None:
        online = not cfg.hardware.slurm.offline
    require_assets(listed_for(configs), cfg, fetch_args, online)


def require_chain_assets(
    configs: list[Config], overrides: list[str], iterations: int, from_iter: int
) -> None:
    """What the chain's iterations read, in the jobs' Hub cache before any script is written
    (`require_job_assets`); a refusal names the download on the nodes as the other way."""
    from src.assets.check import AssetsMissing

    fetch_args = ["--iterations", str(iterations), *overrides]
    if from_iter != 1:
        fetch_args[2:2] = ["--from-iter", str(from_iter)]
    try:
        require_job_assets(configs, configs[0], fetch_args)
    except AssetsMissing as err:
        raise AssetsMissing(
            f"{err}; or, where the nodes reach the Hub, let them download what the cache lacks: "
            "hardware.slurm.offline=false"
        ) from err


def submit_chain(
    overrides: list[str], iterations: int, from_iter: int = 1, dry_run: bool = False
) -> dict[str, str]:
    """Render and submit iterations from_iter..iterations; returns job name -> SLURM job id."""
    overrides = without_keys(overrides, "iter", "stage")
    check_chain_length(iterations, from_iter)
    iters = range(from_iter, iterations + 1)
    configs = [compose(overrides, t) for t in counted(iters, "[slurm] iterations composed")]
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
    from src.assets.check import AssetsMissing
    from src.core.shapes import shape_of
    from src.plan.stages import plan_text, require_fit

    cfg = configs[0]
    # the plan reads the model's shape from its config.json, itself an asset: where that is not
    # here, the assets are checked first, so that it is named with every other one missing
    planned = shape_of(cfg.model.path, cfg.model.attn_implementation) is not None
    fit = cfg.plan.check  # a chain that cannot fit must not spend hours before it fails
    if fit and planned:
        require_fit(cfg, overrides)
    missing = None
    try:
        require_chain_assets(configs, overrides, iterations, from_iter)
    except AssetsMissing as err:
        if not dry_run or not planned:  # (a dry run with no plan to show ends here too)
            raise
        missing = err  # a dry run shows the scripts first, then what a submission would refuse
    if fit and not planned:  # the nodes would download the model: still no shape here to plan
        require_fit(cfg, overrides)
    jobs = chain(configs, overrides)  # every request checked before anything is written
    if not jobs:
        if missing is not None:
            raise missing
        print(f"[slurm] iterations {from_iter}..{iterations} are finished with this config: "
              "nothing to queue", file=sys.stderr)  # fmt: skip
        return {}
    logs = configs[0].layout.slurm_logs()
    script_dir = logs.parent
    if not dry_run:  # a folder the scripts cannot go to, or no sbatch: before anything is said
        require_shared_file_systems(configs[0])
        logs.mkdir(parents=True, exist_ok=True)
        require_sbatch()
    print(
        f"{plan_text(configs[0], through=configs[-1].iter, overrides=overrides)}\n\n"
        "What each stage asks for (set one with hardware.slurm.stages.<stage>.cpus_per_task, "
        f".mem_gb, .time_min):\n{requests_table(configs[0])}\n",
        file=sys.stdout if dry_run else sys.stderr,
    )
    submitted = submit(jobs, script_dir, dry_run)
    if missing is not None:
        raise missing
    return submitted


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="python -m src.slurm", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--iterations",
        type=int,
        default=1,
        help=f"submit iterations 1..N ({MAX_ITERATIONS} at most in one chain)",
    )
    parser.add_argument("--from-iter", type=int, default=1, help="first iteration to submit")
    parser.add_argument("--dry-run", action="store_true", help="print scripts and sbatch lines")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m src.main")
    with failures(command_line("python -m src.slurm", words)):
        args = parser.parse_intermixed_args(words)
        submit_chain(args.overrides, args.iterations, args.from_iter, args.dry_run)


if __name__ == "__main__":
    main()
