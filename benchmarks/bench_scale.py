"""An iteration at the recipe's size: generate -> rank -> pairs -> train on the tiny models, at
1,000 / 5,000 / 20,000 prompts (K = 5), as one shard and as eight SLURM array tasks.

Every stage runs as `python -m src.main model=tiny-mistral data=scale data.max_prompts=N
stage=<stage>`, exactly as a user runs it, inside a measuring wrapper that records its wall time,
the peak resident memory of its whole process tree (the sum of every process's RSS, sampled
every 50 ms) and the kernel's high-water mark of its largest process (VmHWM), and the bytes the
stage left on disk. Eight shards run as one `sbatch --array=0-7` per sharded stage on a SLURM
cluster (`slurm/cluster.sh`; one is started here when SLURM_CONF is not set), the wrapper inside
each task. What the targets ask: time per prompt and peak memory at the largest size within
1.2x and 1.25x of the smallest, per stage and per task.

    python -m src.tiny.data --scale 20000          # the prompts (.cache/scale), once
    python -m benchmarks.bench_scale --sizes 1000 5000 20000 --shards 1 8
    # after a change to one stage: that stage again on the kept runs, merged into the results
    python -m benchmarks.bench_scale --sizes 20000 --shards 1 --stages train --keep --merge
    python -m benchmarks.bench_scale --render benchmarks/results/scale_cpu.json
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    add_common_args,
    command_line,
    machine_info,
    other_load,
    write_results,
)

STAGES = ("generate", "rank", "pairs", "train")
SHARDED = ("generate", "rank")  # split into array tasks; the others are one task each
BENCH_DIR = REPO_ROOT / ".cache" / "bench-scale"
SCALE_DIR = REPO_ROOT / ".cache" / "scale"
# The tiny recipe as `model=tiny-mistral` sets it, at K = 5; no tracking, no eval
OVERRIDES = ("model=tiny-mistral", "data=scale", "logger=none", "method.K=5", "hardware=cpu")
TARGETS = {"time_per_prompt": 1.2, "peak_memory": 1.25}  # largest size / smallest, at most
SAMPLE_S = 0.05


# --- the measuring wrapper ----------------------------------------------------------------------


def tree_rss_kb(root: int) -> tuple[int, dict[int, int]]:
    """(the summed RSS of `root` and its descendants, {pid: VmHWM}) in kB, from /proc."""
    import psutil

    total, hwm = 0, {}
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return 0, {}
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError, ValueError, KeyError):  # KeyError: a zombie
            status = Path(f"/proc/{proc.pid}/status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            total += int(fields["VmRSS"].split()[0])
            hwm[proc.pid] = int(fields["VmHWM"].split()[0])
    return total, hwm


def measure(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (its output appended to `log`) and measure it."""
    started = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        peak, hwm = 0, {}
        while proc.poll() is None:
            total, marks = tree_rss_kb(proc.pid)
            peak = max(peak, total)
            for pid, mark in marks.items():
                hwm[pid] = max(hwm.get(pid, 0), mark)
            time.sleep(SAMPLE_S)
    return {
        "returncode": proc.returncode,
        "wall_s": round(time.monotonic() - started, 2),
        "peak_tree_rss_mb": round(peak / 1024, 1),
        "peak_process_hwm_mb": round(max(hwm.values(), default=0) / 1024, 1),
        "processes": len(hwm),
    }


def worker_main(argv: list[str]) -> None:
    """`--worker OUT -- CMD...`: measure CMD, write the measurement to OUT (an array task's)."""
    out, cmd = Path(argv[0].replace("%a", os.environ.get("SLURM_ARRAY_TASK_ID", "0"))), argv[2:]
    result = measure(cmd, out.with_suffix(".log"))
    result["task"] = os.environ.get("SLURM_ARRAY_TASK_ID")
    out.write_text(json.dumps(result))
    sys.exit(result["returncode"])


# --- one iteration, stage by stage ---------------------------------------------------------------


def du_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def stage_command(size: int, root: Path, stage: str) -> list[str]:
    overrides = [*OVERRIDES, f"data.max_prompts={size}", f"paths.root={root}", f"stage={stage}"]
    return [sys.executable, "-m", "src.main", *overrides, "iter=1"]


def run_local(size: int, root: Path, stage: str) -> list[dict]:
    return [measure(stage_command(size, root, stage), root / f"{stage}.log")]


def array_submit(root: Path, stage: str, shards: int, cmd: list[str]) -> list[str]:
    """`sbatch --wait` of `cmd` as an array of `shards` tasks, the CPUs shared among them."""
    cpus = max(1, len(os.sched_getaffinity(0)) // shards)
    return [
        "sbatch", "--parsable", "--wait", f"--array=0-{shards - 1}", f"--cpus-per-task={cpus}",
        "--mem=1G", f"--output={root}/{stage}-slurm-%a.out", f"--chdir={REPO_ROOT}",
        "--wrap", " ".join(cmd),
    ]  # fmt: skip


def run_array(size: int, root: Path, stage: str, shards: int, env: dict) -> list[dict]:
    """The stage as one SLURM array of `shards` tasks, the wrapper inside each task."""
    out = root / f"{stage}-task%a.json"
    wrapped = [sys.executable, "-m", "benchmarks.bench_scale", "--worker", str(out), "--"]
    submit = array_submit(root, stage, shards, [*wrapped, *stage_command(size, root, stage)])
    started = time.monotonic()
    done = subprocess.run(submit, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    tasks = [json.loads(p.read_text()) for p in sorted(root.glob(f"{stage}-task*.json"))]
    if done.returncode != 0 or len(tasks) != shards:
        raise RuntimeError(f"{stage}: the array failed ({done.stderr.strip()}); see {root}")
    for task in tasks:
        task["array_wall_s"] = round(wall, 2)
    return tasks


def kill_midway(proc: subprocess.Popen, work: Path, chunks: int, victims) -> None:
    """Once `work` holds half of its `chunks`, kill -9 the processes `victims()` names and
    their children; then wait for `proc` to end."""
    import psutil

    while proc.poll() is None and len(list(work.glob("chunk*.jsonl"))) < chunks // 2:
        time.sleep(0.2)
    for pid in victims():
        with contextlib.suppress(psutil.Error):
            tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            for victim in tree:
                with contextlib.suppress(psutil.Error):
                    victim.kill()
    proc.wait()


def array_task_pids(root: Path, task: int) -> list[int]:
    """The stage processes (`python -m src.main ... paths.root=<root>`) of one array task."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        with contextlib.suppress(psutil.Error):
            mine = "src.main" in cmdline and f"paths.root={root}" in cmdline
            if mine and proc.environ().get("SLURM_ARRAY_TASK_ID") == str(task):
                found.append(proc.pid)
    return found


def resume_check(size: int, root: Path, stage: str, shards: int, env: dict | None) -> dict:
    """The stage killed (-9) halfway and run again, in a copy of the run made before it; of an
    array, one task (the middle one) killed halfway through its shard and the whole array
    submitted again, as a user would. Are the rows the uninterrupted run's, byte for byte, and
    how many rows of the killed shard did the re-run make?"""
    again = root.with_name(root.name + "-resumed")
    shutil.rmtree(again, ignore_errors=True)
    ignore = shutil.ignore_patterns(stage, f"{stage}*.log", f"{stage}-*")
    shutil.copytree(root, again, ignore=ignore)
    stage_dir = next(root.rglob(f"iter1/{stage}"))
    resumed_dir = again / stage_dir.relative_to(root)
    task = shards // 2
    work = resumed_dir / f"shard{task:03d}-of-{shards:03d}"
    shard_rows = len(range(task, size, shards))  # round-robin shards (src/core/chunks.py)
    chunks = -(-shard_rows // 64)  # generation.chunk_size and ranker.chunk_size: 64
    cmd, log = stage_command(size, again, stage), again / f"{stage}.log"
    with open(log, "ab") as out:
        if shards == 1:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
            kill_midway(proc, work, chunks, lambda: [proc.pid])
        else:
            submit = array_submit(again, stage, shards, cmd)
            proc = subprocess.Popen(submit, env=env, stdout=out, stderr=subprocess.STDOUT)
            kill_midway(proc, work, chunks, lambda: array_task_pids(again, task))
    left = len(list(work.glob("chunk*.jsonl")))
    if shards == 1:
        rerun = measure(cmd, log)["wall_s"]
    else:
        rerun = run_array(size, again, stage, shards, env)[0]["array_wall_s"]
    kept = json.loads((work / "counts.json").read_text())["reused_from_earlier_run"]
    rows = sorted(p.name for p in stage_dir.glob("*-shard*.jsonl"))
    same = all(
        (stage_dir / name).read_bytes() == (resumed_dir / name).read_bytes() for name in rows
    )
    return {
        "killed": work.name,
        "chunks": chunks,
        "chunks_left_by_the_killed_run": left,
        "rows_kept": kept,
        "rows_made_again": shard_rows - kept,
        "rows_identical": same and len(rows) == shards,
        "rerun_wall_s": rerun,
    }


def run_iteration(
    size: int, shards: int, stages: list[str], env: dict | None, resume: bool, keep: bool
) -> list[dict]:
    """`stages` of one iteration at `size` prompts, in a new run folder, or (`keep`) in the
    last one made at this size and layout: its other stages' outputs kept, these made again."""
    root = BENCH_DIR / f"{size}-{shards}"
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage in stages:
        for earlier in root.rglob(f"iter1/{stage}"):
            shutil.rmtree(earlier)
        load = other_load(0.5)
        if shards > 1 and stage in SHARDED:
            tasks = run_array(size, root, stage, shards, env)
        else:
            tasks = run_local(size, root, stage)
            if tasks[0]["returncode"] != 0:
                raise RuntimeError(f"{stage} failed at {size} prompts; see {root}/{stage}.log")
        stage_dir = next(root.rglob(f"iter1/{stage}"))
        # the stage's own seconds (its record): its work, without the process's start-up
        work = json.loads((stage_dir / "done.json").read_text())["timings"]["seconds"]
        wall = max(t.get("array_wall_s", t["wall_s"]) for t in tasks)
        rows.append(
            {
                "size": size,
                "layout": shards,  # the run's shard count; a stage not sharded runs as one task
                "shards": shards if stage in SHARDED else 1,
                "stage": stage,
                "wall_s": wall,
                "ms_per_prompt": round(1000 * wall / size, 3),
                "task_ms_per_prompt": round(
                    1000 * max(t["wall_s"] for t in tasks) / (size / len(tasks)), 3
                ),
                # summed over a sharded stage's tasks: a task's time per prompt of its share
                "work_s": round(work, 2),
                "work_ms_per_prompt": round(1000 * work / size, 3),
                "peak_tree_rss_mb": max(t["peak_tree_rss_mb"] for t in tasks),
                "peak_process_hwm_mb": max(t["peak_process_hwm_mb"] for t in tasks),
                "bytes_written": du_bytes(stage_dir),
                "other_load_before": round(load, 3),
                "tasks": tasks,
            }
        )
        if resume and stage in SHARDED:
            rows[-1]["resume"] = resume_check(size, root, stage, shards, env)
            print(f"  resumed after kill -9: {rows[-1]['resume']}", flush=True)
        print(
            f"  {size:>6} prompts, {rows[-1]['shards']} task(s), {stage:>8}: {wall:8.1f} s "
            f"({rows[-1]['ms_per_prompt']:.2f} ms/prompt), peak {rows[-1]['peak_tree_rss_mb']:.0f}"
            f" MB, {rows[-1]['bytes_written'] / 1e6:.1f} MB written",
            flush=True,
        )
    return rows


# --- results ------------------------------------------------------------------------------------


def growth(rows: list[dict]) -> list[dict]:
    """Per stage and layout: the largest size over the smallest, in time per prompt (the stage's
    own seconds, without start-up) and in peak memory, against the targets."""
    out = []
    for layout in sorted({r["layout"] for r in rows}):
        for stage in STAGES:
            mine = sorted(
                (r for r in rows if r["stage"] == stage and r["layout"] == layout),
                key=lambda r: r["size"],
            )
            if len(mine) < 2:
                continue
            small, large = mine[0], mine[-1]
            time_ratio = large["work_ms_per_prompt"] / small["work_ms_per_prompt"]
            memory_ratio = large["peak_tree_rss_mb"] / small["peak_tree_rss_mb"]
            out.append(
                {
                    "stage": stage,
                    "layout": layout,
                    "shards": large["shards"],
                    "sizes": [small["size"], large["size"]],
                    "time_per_prompt": round(time_ratio, 3),
                    "peak_memory": round(memory_ratio, 3),
                    # of a task: an array task's peak over the prompts it adds
                    "memory_per_prompt_kb": round(
                        1024
                        * (large["peak_tree_rss_mb"] - small["peak_tree_rss_mb"])
                        / ((large["size"] - small["size"]) / large["shards"]),
                        2,
                    ),
                    "met": time_ratio <= TARGETS["time_per_prompt"]
                    and memory_ratio <= TARGETS["peak_memory"],
                }
            )
    return out


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"# {result['benchmark']}", ""]
    for i, run in enumerate(result["runs"]):
        m = run["machine"]
        lines.append(
            f"- run {i}: {m['cpu_model']} · {m['cpu_affinity']} CPUs · {m['memory_gib']} GiB · "
            f"commit {m['git_commit'][:10]}{' (dirty)' if m['git_dirty'] else ''} · "
            f"{m['date_utc']} · `{run['command']}`"
        )
    lines += [
        "",
        f"`{' '.join(s['overrides'])}`; peak = the summed RSS of the stage's process tree "
        f"(sampled every {int(SAMPLE_S * 1000)} ms), of the largest task for an array; work = the "
        "stage's own seconds (its record, summed over tasks), without the start-up; ms/prompt of "
        "a task = its wall time over its prompts; other load = the share of the CPUs other "
        "processes used just before the stage.",
        "",
        "| run | prompts | tasks | stage | wall s | work s | work ms/prompt | ms/prompt of a task "
        "| peak MB | largest process MB | MB written | other load |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['run']} | {r['size']:,} | {r['shards']} | {r['stage']} | {r['wall_s']:.1f} | "
            f"{r['work_s']:.1f} | {r['work_ms_per_prompt']:.2f} | {r['task_ms_per_prompt']:.2f} | "
            f"{r['peak_tree_rss_mb']:.0f} | {r['peak_process_hwm_mb']:.0f} | "
            f"{r['bytes_written'] / 1e6:.1f} | {r['other_load_before']:.0%} |"
        )
    resumed = [r for r in result["rows"] if "resume" in r]
    if resumed:
        lines += [
            "",
            "Killed (-9) halfway and run again (a copy of the run made before the stage):",
            "",
            "| prompts | tasks | stage | killed | its chunks | left by the killed run | rows kept "
            "| rows made again | rows identical to the uninterrupted run's |",
            "|---:|---:|---|---|---:|---:|---:|---:|---|",
        ]
        for r in resumed:
            c = r["resume"]
            lines.append(
                f"| {r['size']:,} | {r['shards']} | {r['stage']} | "
                f"{c['killed']} | {c['chunks']} | "
                f"{c['chunks_left_by_the_killed_run']} | {c['rows_kept']:,} | "
                f"{c['rows_made_again']:,} | {'yes' if c['rows_identical'] else 'NO'} |"
            )
    lines += [
        "",
        f"Growth, largest size over smallest (targets: time per prompt <= "
        f"{TARGETS['time_per_prompt']}, peak memory <= {TARGETS['peak_memory']}):",
        "",
        "| run as | stage | tasks | sizes | time per prompt | peak memory "
        "| memory per prompt a task adds (kB) | met |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for g in result["growth"]:
        layout = "one shard" if g["layout"] == 1 else f"{g['layout']} array tasks"
        lines.append(
            f"| {layout} | {g['stage']} | {g['shards']} | "
            f"{g['sizes'][0]:,} -> {g['sizes'][1]:,} | "
            f"{g['time_per_prompt']:.2f}x | {g['peak_memory']:.2f}x | "
            f"{g['memory_per_prompt_kb']:.2f} | {'yes' if g['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def slurm_cluster():
    """SLURM_CONF's cluster, or one started here (slurm/cluster.sh) and stopped after."""
    if os.environ.get("SLURM_CONF"):
        yield dict(os.environ)
        return
    state = Path(tempfile.mkdtemp(prefix="bench-scale-slurm-"))
    state.chmod(0o755)
    cluster = str(REPO_ROOT / "slurm" / "cluster.sh")
    subprocess.run([cluster, "start", str(state)], check=True)
    try:
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run([cluster, "stop", str(state)], check=False)


def main(argv: list[str] | None = None) -> None:
    started = command_line(argv, worker_main, "benchmarks.bench_scale", __doc__)
    if started is None:
        return
    argv, parser = started
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 5000, 20000])
    parser.add_argument("--shards", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument(
        "--resume-check",
        action="store_true",
        help="also kill -9 each generate and rank halfway (of an array, one task), run it again",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of --out at the sizes, layouts and stages this run does not measure",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="run --stages in the last run folder of each size and layout, on its earlier "
        "stages' outputs (e.g. --stages train after a change to training)",
    )
    add_common_args(parser, out=REPO_ROOT / "benchmarks/results/scale_cpu.json", timeout=0)
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(result))
        return
    import pyarrow.parquet as pq

    from src import tiny
    from src.tiny import data

    made = SCALE_DIR / "iter1.parquet"
    if not made.exists() or pq.ParquetFile(made).metadata.num_rows < max(args.sizes):
        data.write_scale(max(args.sizes), SCALE_DIR)
    # built before any stage is measured: a stage that found them stale (their builder's code
    # changed) would rebuild them inside its own time and memory
    for name in tiny.TINY_NAMES:
        tiny.ensure(name, tiny.DEFAULT_CACHE_DIR)
    started = time.time()
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        env = stack.enter_context(slurm_cluster()) if max(args.shards) > 1 else None
        for shards in args.shards:
            for size in args.sizes:
                rows += run_iteration(size, shards, args.stages, env, args.resume_check, args.keep)
    run = {
        "command": "python -m benchmarks.bench_scale " + " ".join(argv),
        "machine": machine_info(("torch", "transformers", "datasets", "llm-blender"), {}),
        "wall_s": round(time.time() - started, 1),
    }
    earlier = json.loads(args.out.read_text()) if args.merge and args.out.exists() else None
    write_results(args.out, merged(earlier, run, rows), markdown)


def merged(earlier: dict | None, run: dict, rows: list[dict]) -> dict:
    """The result of this run, with the rows of an earlier result at the sizes, layouts and
    stages this run did not measure (each row names the run, its commit and date, that measured it)."""
    runs, kept = [], []
    if earlier is not None:
        runs = earlier["runs"]
        measured = {(r["size"], r["layout"], r["stage"]) for r in rows}
        kept = [r for r in earlier["rows"] if (r["size"], r["layout"], r["stage"]) not in measured]
        used = sorted({r["run"] for r in kept})
        runs = [runs[i] for i in used]
        kept = [{**r, "run": used.index(r["run"])} for r in kept]
    rows = [*kept, *({**r, "run": len(runs)} for r in rows)]
    runs.append(run)
    rows.sort(key=lambda r: (r["layout"], r["size"], STAGES.index(r["stage"])))
    return {
        "benchmark": "one tiny-model iteration at 1k-20k prompts, K = 5, one shard and SLURM "
        "arrays, CPU",
        "settings": {"overrides": list(OVERRIDES)},
        "runs": runs,
        "rows": rows,
        "growth": growth(rows),
        "wall_s": run["wall_s"],
    }


if __name__ == "__main__":
    main()
