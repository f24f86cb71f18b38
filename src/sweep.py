"""Sweeps: one YAML in W&B's sweep format with Hydra keys -> grid points -> ONE SLURM array.

    python -m src.sweep sweeps/eta.yaml --dry-run model=tiny-mistral hardware=slurm-cpu
    python -m src.sweep sweeps/grid.yaml --iterations 3 --parallel 4 hardware=slurm-node-8gpu
    python -m src.sweep sweeps/eta-tiny.yaml --local --iterations 3   # here, one after another

The same file drives W&B agents (`wandb sweep sweeps/eta.yaml`) when a server is reachable.
Here its grid is expanded into a points file (one line of `key=value` overrides per point)
and one array task per point runs the whole pipeline for that point — iterations 1..N with
`python -m src.main ... iter=N`, which runs the earlier iterations first. Each point has its
own run lineage (the swept values are in the default run_name) and so its own W&B group, which
`python -m src.compare` ranks. `--parallel N` throttles the array (`%N`). A grid of more points
than one SLURM array takes (`src.slurm.MAX_ARRAY_TASKS`) is refused before any is composed.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.config import (
    REPO_ROOT,
    Config,
    ConfigError,
    Device,
    at_iteration,
    check_path_component,
    check_shell_word,
    compose_tree,
)
from src.config.cli import ArgumentParser, failures
from src.config.grid import grid_points, load_sweep, positive_int
from src.core.artifacts import atomic_write_text
from src.core.errors import StageError, command_line, override_key, set_overrides, without_keys
from src.core.registry import STAGES, Stage
from src.plan.sweep import read_chain
from src.slurm import (
    MAX_ARRAY_TASKS,
    WARNING_SIGNAL_S,
    SubmitError,
    counted,
    fill,
    node_values,
    require_job_assets,
    require_sbatch,
    require_shared_file_systems,
    resource_lines,
    sbatch_value,
    shell_line,
    shell_word,
)


def sweep_name(path: Path) -> str:
    """The sweep's name, its file's stem: the folder of its points and script under paths.root
    (`sweeps/<name>`), and its SLURM job's name."""
    check_path_component("sweep name", path.stem)
    check_shell_word("sweep name", path.stem)
    return path.stem


def check_array_size(path: Path, grid: dict[str, list[Any]]) -> None:
    """One array task per point: a grid of more points than a SLURM array takes is refused
    before its points are expanded or composed."""
    count = math.prod(len(values) for values in grid.values())
    if count > MAX_ARRAY_TASKS:
        shape = " x ".join(str(len(values)) for values in grid.values())
        raise ConfigError(
            f"{path}: {count} points ({shape} values) is more than one SLURM array takes "
            f"({MAX_ARRAY_TASKS} tasks, SLURM's default MaxArraySize): split the grid over "
            "several sweep files"
        )


def tracked_as(name: str, grid: dict[str, list[Any]]) -> list[str]:
    """The overrides that make every point's W&B curve run one of the sweep's: its group, and the
    keys the sweep varies, whose values W&B colours the points by (src/stages/report/curves.py)."""
    swept = [key for key, values in grid.items() if len(values) > 1]
    return [f"logger.sweep={name}", f"logger.swept=[{','.join(swept)}]"]


def composed(points: list[list[str]], base: list[str]) -> list[DictConfig]:
    """Each point's config as composed, before its iteration is set (`at`)."""
    return [
        compose_tree(set_overrides(base, p)) for p in counted(points, "[sweep] points composed")
    ]


def check_points(
    points: list[list[str]],
    base: list[str],
    iterations: int,
    slurm: bool = True,
    trees: list[DictConfig] | None = None,
) -> list[Config]:
    """Every point composes and validates before anything is submitted (`trees`: as `composed`
    made them); lineages are distinct; for a SLURM array (`slurm`), the hardware has SLURM
    resources and one node."""
    configs = [at_iteration(tree, iterations) for tree in trees or composed(points, base)]
    dirs = [c.run.dir for c in configs]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(
            "two points of the sweep share a run directory (their run_name is the same): "
            "put the swept keys in run_name, e.g. run_name='sweep-${method.eta}-${method.K}'"
        )
    if not slurm:
        return configs
    if configs[0].hardware.slurm is None:
        raise ConfigError(
            f"hardware={configs[0].hardware.name} has no SLURM resources: choose a hardware=slurm-* option"
        )
    if configs[0].hardware.num_nodes > 1:
        raise ConfigError(
            "a sweep array task runs on one node; for multi-node training submit each point "
            "with python -m src.slurm"
        )
    return configs


# The config groups whose keys change what a run reads (src/assets/listing.py): a sweep over one
# of them reads other assets at each point
ASSET_GROUPS = frozenset({"model", "data", "ranker", "eval", "experiment"})


def require_sweep_assets(
    points: list[list[str]],
    base: list[str],
    trees: list[DictConfig],
    configs: list[Config],
    iterations: int,
    online: bool | None = None,
) -> None:
    """What every point reads in every iteration is in the Hub cache the points read (or can be
    downloaded there: `online`, by default where the array's tasks may,
    `hardware.slurm.offline=false`), before any point starts or anything is queued. `trees`: the
    points as composed (`composed`); `configs`: at their last iteration; the earlier iterations
    are read for the first point alone unless the grid sweeps a key of `ASSET_GROUPS`."""
    swept = {override_key(w).split("@")[-1].split(".")[0] for point in points for w in point}
    each = trees if swept & ASSET_GROUPS else trees[:1]
    earlier = [at_iteration(tree, t) for tree in each for t in range(1, iterations)]
    fetch_args = ["--iterations", str(iterations), *base]
    require_job_assets([*earlier, *configs], configs[0], fetch_args, online)


def render(
    name: str,
    cfg: Config,
    points_file: Path,
    base: list[str],
    count: int,
    iterations: int,
    parallel: int | None,
    submit_line: list[str],
    shared: str,
) -> str:
    s, hw = cfg.hardware.slurm, cfg.hardware
    values = {
        "description": f"sweep {name}: {count} points, iterations 1..{iterations}",
        "job_name": sbatch_value(f"sweep-{name}"),
        "output": sbatch_value(f"{points_file.parent / 'logs'}/%x_%A_%a.out"),
        "last_task": str(count - 1),
        "throttle": f"%{parallel}" if parallel else "",
        "time": str(s.time_min),
        "cpus": str(s.cpus_per_task),
        "mem": str(s.mem_gb),
        "signal_s": str(WARNING_SIGNAL_S),
        "resource_lines": "\n".join(
            resource_lines(cfg, hw.processes_per_node if hw.device == Device.cuda else 0)
        ),
        "repo": shell_word(str(REPO_ROOT)),
        "python": shell_word(sys.executable),
        **node_values(cfg),
        "script": shell_word(submit_line[-1]),  # sbatch's last argument: the script's path
        "points": shell_word(str(points_file)),
        "overrides": shell_line(base),
        "iterations": str(iterations),
        "submit_line": shell_line(submit_line),
        "shared": shared,
    }
    return fill("sweep-array.sbatch", values)


def run_local(path: Path, overrides: list[str], iterations: int) -> None:
    """Every point of the sweep on this machine, one after another: iterations 1..N of its
    lineage with `python -m src.main`, as an array task runs it (finished stages are skipped, so
    a re-run resumes). A point that fails does not stop the others, as an array's task does not;
    the failures are named at the end. Compare the points with `python -m src.compare`."""
    grid = load_sweep(path)
    base = set_overrides(
        without_keys(overrides, "iter", "stage"), tracked_as(sweep_name(path), grid)
    )
    points = grid_points(grid)
    trees = composed(points, base)
    configs = check_points(points, base, iterations, slurm=False, trees=trees)
    from huggingface_hub import constants

    # every point's assets before the first starts: not each point failing after its start-up
    online = not constants.is_offline_mode()
    require_sweep_assets(points, base, trees, configs, iterations, online)
    failed = []
    for i, point in enumerate(points, 1):
        print(f"[sweep] {path.stem}: point {i}/{len(points)}: {shell_line(point)}", flush=True)
        run = set_overrides(base, [*point, f"iter={iterations}"])
        done = subprocess.run([sys.executable, "-m", "src.main", *run], cwd=REPO_ROOT)
        if done.returncode != 0:
            failed.append(f"point {i} ({shell_line(point)}) exit {done.returncode}")
            print(f"[sweep] {path.stem}: {failed[-1]}; going on", file=sys.stderr, flush=True)
    if failed:
        again = ["python", "-m", "src.sweep", str(path), "--local", "--iterations",
                 str(iterations), *overrides]  # fmt: skip
        raise StageError(
            f"{len(failed)} of {len(points)} points failed: {'; '.join(failed)}; the others "
            "are done. Do what each failure's message above says, then re-run (finished stages "
            f"are skipped): {shell_line(again)}"
        )
    root = [o.split("=", 1)[1] for o in base if o.startswith("paths.root=")]
    compare = shell_line(["python", "-m", "src.compare", *(["--root", root[-1]] if root else [])])
    print(f"[sweep] {path.stem}: {len(points)} points done; compare: {compare}")


def submit_sweep(
    path: Path, overrides: list[str], iterations: int, parallel: int | None, dry_run: bool
) -> str | None:
    """Expand, validate, write and submit the sweep's array; returns its SLURM job id."""
    # an array task here is a whole point, not a shard: its SLURM_ARRAY_* must not shard stages
    base = set_overrides(
        without_keys(overrides, "iter", "stage"),
        [
            f"{s}.{k}={v}"
            for s in ("generation", "ranker")
            for k, v in (("shard", 0), ("num_shards", 1))
        ],
    )
    name = sweep_name(path)
    grid = load_sweep(path)
    check_array_size(path, grid)
    points = grid_points(grid)
    trees = composed(points, base)
    configs = check_points(points, base, iterations, trees=trees)
    require_sweep_assets(points, base, trees, configs, iterations)
    sweep_dir = Path(configs[0].paths.root) / "sweeps" / name
    points_file = sweep_dir / "points.txt"
    script_path = sweep_dir / f"{name}.sbatch"
    shared = shared_stages(trees) if all(c.pipeline.reuse for c in configs) else []
    first = [shared_line(name, i, stages, script_path) for i, stages in shared]
    line = ["sbatch", "--parsable", *(["--dependency=afterok:<shared>"] if first else []),
            str(script_path)]  # fmt: skip
    tracked = set_overrides(base, tracked_as(name, grid))
    said = shared_said(points, shared)
    script = render(
        name, configs[0], points_file, tracked, len(points), iterations, parallel, line, said
    )
    text = "".join(shell_line(p) + "\n" for p in points)
    if dry_run:
        before = "".join(f"# $ {shell_line(f)}\n" for f in first)
        print(
            f"# ---- {points_file}\n{text}\n# ---- {line[-1]}\n{script}\n{before}# $ {shell_line(line)}"
        )
        return None
    require_shared_file_systems(configs[0])
    (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)
    require_sbatch()
    atomic_write_text(points_file, text)
    atomic_write_text(script_path, script)
    jobs = [submitted(f) for f in first]
    if jobs:
        line[2] = f"--dependency=afterok:{':'.join(jobs)}"
        print(f"[sweep] {name}: what several points share first, once: job(s) {', '.join(jobs)}")
    job = submitted(line)
    print(f"[sweep] {name}: {len(points)} points, array job {job}; logs in {sweep_dir / 'logs'}")
    return job


def submitted(line: list[str]) -> str:
    done = subprocess.run(line, capture_output=True, text=True)
    if done.returncode != 0:
        raise SubmitError(f"sbatch refused {line[-1]}: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def shared_stages(trees: list[DictConfig]) -> list[tuple[int, list[Stage]]]:
    """The stages of iteration 1 that several points read the same (what they and every stage
    before them read: src/plan/sweep.py's `read_chain`), each as the points' first that makes
    them and the stages it makes, in order: the array then takes them from that lineage
    (src/core/reuse.py) instead of making them side by side, or waiting for each other."""
    made = [[at_iteration(tree, 1)] for tree in trees]
    order = [s for s in STAGES if s != Stage.eval]
    chains = [[read_chain(cfgs, s) for s in order] for cfgs in made]
    shared: dict[str, tuple[int, list[Stage]]] = {}
    for i, mine in enumerate(chains):
        deepest = [k for k, chain in enumerate(mine)
                   if sum(other[k] == chain for other in chains) > 1]  # fmt: skip
        if deepest:
            shared.setdefault(mine[deepest[-1]], (i, order[: deepest[-1] + 1]))
    return list(shared.values())


def shared_line(name: str, point: int, stages: list[Stage], script: Path) -> list[str]:
    """The sbatch line of the job that makes `stages` of iteration 1 once, as point `point`
    (task `point` of the sweep's own script, SWEEP_SHARED naming the last of them)."""
    return ["sbatch", "--parsable", f"--array={point}", f"--job-name=sweep-{name}-shared",
            f"--export=ALL,SWEEP_SHARED={stages[-1].value}", str(script)]  # fmt: skip


def shared_said(points: list[list[str]], shared: list[tuple[int, list[Stage]]]) -> str:
    if not shared:
        return "No stage is read the same by several points: each task makes its own."
    made = "; ".join(f"{', '.join(s.value for s in stages)} as point {i} ({shell_line(points[i])})"
                     for i, stages in shared)  # fmt: skip
    return f"Made once before the array (SWEEP_SHARED), which waits for it: iteration 1's {made}."


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="python -m src.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweeps/*.yaml file")
    parser.add_argument("--iterations", type=int, default=1, help="iterations per point")
    parser.add_argument(
        "--parallel", type=positive_int, default=None, help="at most N tasks at once (N >= 1)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the points and the script")
    parser.add_argument(
        "--local", action="store_true", help="run the points here, one after another (no SLURM)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by every point")
    with failures(command_line("python -m src.sweep", words)):
        args = parser.parse_intermixed_args(words)
        if args.local and (args.dry_run or args.parallel):
            parser.error(
                "--local runs the points here, one after another: no --dry-run, no --parallel"
            )
        if args.local:
            run_local(args.sweep, args.overrides, args.iterations)
        else:
            submit_sweep(args.sweep, args.overrides, args.iterations, args.parallel, args.dry_run)


if __name__ == "__main__":
    main()
