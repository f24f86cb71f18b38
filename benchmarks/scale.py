"""An iteration at the recipe's size: generate -> rank -> pairs -> train on the tiny models at
1,000 / 5,000 / 20,000 prompts (K = 5), as one shard and as eight SLURM array tasks; targets: time
per prompt and peak memory at the largest size within 1.2x and 1.25x of the smallest. Commands
(a SLURM cluster for --shards 8: `slurm/cluster.sh start`) and tables: benchmarks/README.md, Scale.

Each stage runs as `python -m src.main model=tiny-mistral data=scale data.max_prompts=N
stage=<stage>` (`harness.run_stage`) while a thread samples its process tree every 50 ms (the
peak summed RSS, the largest VmHWM); its own seconds, without the start-up, are its record's.
An array is one `sbatch --array --wait` per sharded stage, the sampler in each task (`python -m
benchmarks.scale OUT OVERRIDES...`). `--resume-check` kills (-9) generate and rank halfway (of an
array, the middle task) in a copy of the run made before them, re-runs them (the whole array, as
a user would) and compares the rows with the uninterrupted run's, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Benchmark, Case, median, table, text
from src.core import registry
from src.core.registry import Stage, iteration_stages

ROOT = harness.REPO_ROOT
# an iteration without its eval, as the registry orders it; the sharded stages are split into
# array tasks, the others are one task each
STAGES = tuple(s.value for s in iteration_stages(Stage.all, with_eval=False))
SHARDED = tuple(s for s in STAGES if registry.STAGES[Stage(s)].sharded_by is not None)
BENCH_DIR = ROOT / ".cache" / "bench-scale"
OVERRIDES = ("model=tiny-mistral", "data=scale", "logger=none", "method.K=5", "hardware=cpu")
OVERRIDES += ("iter=1",)  # the tiny recipe at K = 5 on the CPU, without tracking
TARGETS = {"time_per_prompt": 1.2, "peak_memory": 1.25}  # largest size / smallest, at most
SAMPLE_S, CHUNK = 0.05, 64  # CHUNK: generation.chunk_size and ranker.chunk_size


def add_args(parser) -> None:
    arg = parser.add_argument
    arg("--sizes", nargs="+", type=int, default=[1000, 5000, 20000])
    arg("--shards", nargs="+", type=int, default=[1, 8])
    arg("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    arg("--resume-check", action="store_true", help="kill generate and rank halfway, re-run")
    arg("--merge", action="store_true", help="keep the rows of --out this run does not measure")
    arg("--keep", action="store_true", help="--stages on the last run folders' earlier stages")


def cases(args) -> list[Case]:
    import pyarrow.parquet as pq

    from src.tiny import models as tiny
    from src.tiny.data import SCALE_DIR, write_scale

    made = SCALE_DIR / "iter1.parquet"  # the prompts and models first, not in a stage's time
    if not made.exists() or pq.ParquetFile(made).metadata.num_rows < max(args.sizes):
        write_scale(max(args.sizes), SCALE_DIR)
    for name in tiny.TINY_NAMES:
        tiny.ensure(name, tiny.DEFAULT_CACHE_DIR)
    if max(args.shards) > 1 and not os.environ.get("SLURM_CONF"):
        raise SystemExit("--shards above 1 needs a SLURM cluster: `slurm/cluster.sh start /tmp/s`, "
                         'then `eval "$(slurm/cluster.sh env /tmp/s)"` (SLURM_CONF)')  # fmt: skip
    common = {"stages": args.stages, "resume": args.resume_check, "keep": args.keep}
    return [Case(f"{size}-{shards}", params={"size": size, "shards": shards, **common})
            for shards in args.shards for size in args.sizes]  # fmt: skip


def measured(overrides: list[str]) -> dict:
    """`python -m src.main *overrides`: its wall time, and the peak summed RSS (and largest
    VmHWM) of its process tree (this process's children: the stage and what it starts)."""
    import psutil

    me, done, peak, hwm = psutil.Process(), threading.Event(), [0], {}

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            total = 0
            for proc in me.children(recursive=True):
                with contextlib.suppress(OSError, ValueError, KeyError):  # gone, or a zombie
                    lines = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                    kb = {k: int(v.split()[0]) for k, v in (x.split(":", 1) for x in lines)
                          if k in ("VmRSS", "VmHWM")}  # fmt: skip
                    total += kb["VmRSS"]
                    hwm[proc.pid] = max(hwm.get(proc.pid, 0), kb["VmHWM"])
            peak[0] = max(peak[0], total)

    sampler, started = threading.Thread(target=sample, daemon=True), time.monotonic()
    sampler.start()
    try:
        harness.run_stage(overrides, timeout=24 * 3600)
    finally:
        done.set()
        sampler.join()
    wall, largest = round(time.monotonic() - started, 2), max(hwm.values(), default=0)
    return {"wall_s": wall, "peak_tree_rss_mb": round(peak[0] / 1024, 1),
            "peak_process_hwm_mb": round(largest / 1024, 1)}  # fmt: skip


def stage_overrides(size: int, root: Path, stage: str) -> list[str]:
    return [*OVERRIDES, f"data.max_prompts={size}", f"paths.root={root}", f"stage={stage}"]


def array_submit(root: Path, stage: str, shards: int, cmd: list[str]) -> list[str]:
    """`sbatch --wait` of `cmd` as an array of `shards` tasks, the CPUs shared among them."""
    cpus = max(1, len(os.sched_getaffinity(0)) // shards)
    return [
        "sbatch", "--parsable", "--wait", f"--array=0-{shards - 1}", f"--cpus-per-task={cpus}",
        "--mem=1G", f"--output={root}/{stage}-slurm-%a.out", f"--chdir={ROOT}",
        "--wrap", " ".join(cmd),
    ]  # fmt: skip


def stage_tasks(size: int, root: Path, stage: str, shards: int) -> tuple[list[dict], float]:
    """The stage in one process, or (sharded, `shards` > 1) as a SLURM array: (its tasks, wall)."""
    if shards == 1 or stage not in SHARDED:
        return [task := measured(stage_overrides(size, root, stage))], task["wall_s"]
    task = [sys.executable, "-m", "benchmarks.scale", str(root / f"{stage}-task%a.json")]
    submit = array_submit(root, stage, shards, [*task, *stage_overrides(size, root, stage)])
    started = time.monotonic()
    done = subprocess.run(submit, capture_output=True, text=True)
    wall = round(time.monotonic() - started, 2)
    tasks = [json.loads(p.read_text()) for p in sorted(root.glob(f"{stage}-task*.json"))]
    if done.returncode != 0 or len(tasks) != shards:
        raise RuntimeError(f"{stage}: the array failed ({done.stderr.strip()}); see {root}")
    return tasks, wall


def resume_check(size: int, root: Path, stage: str, shards: int) -> dict:
    """The stage killed (-9) halfway and run again in a copy of the run made before it."""
    import psutil

    again = root.with_name(root.name + "-resumed")
    shutil.rmtree(again, ignore_errors=True)
    shutil.copytree(root, again, ignore=shutil.ignore_patterns(stage, f"{stage}-*"))
    stage_dir = next(root.rglob(f"iter1/{stage}"))
    resumed, task = again / stage_dir.relative_to(root), shards // 2
    work = resumed / f"shard{task:03d}-of-{shards:03d}"
    shard_rows = len(range(task, size, shards))  # round-robin shards (src/core/chunks.py)
    chunks, quiet = -(-shard_rows // CHUNK), subprocess.DEVNULL
    cmd = [sys.executable, "-m", "src.main", *stage_overrides(size, again, stage)]
    cmd = cmd if shards == 1 else array_submit(again, stage, shards, cmd)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=quiet, stderr=quiet)
    while proc.poll() is None and len(list(work.glob("chunk*.jsonl"))) < chunks // 2:
        time.sleep(0.2)
    for victim in psutil.process_iter(["cmdline"]):  # the stage of task `task` (0: one shard)
        with contextlib.suppress(psutil.Error):
            cmdline = victim.info["cmdline"] or []
            ours = "src.main" in cmdline and f"paths.root={again}" in cmdline
            if ours and victim.environ().get("SLURM_ARRAY_TASK_ID", "0") == str(task):
                for p in [*victim.children(recursive=True), victim]:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
    proc.wait()
    left = len(list(work.glob("chunk*.jsonl")))
    rerun = stage_tasks(size, again, stage, shards)[1]
    kept = json.loads((work / "counts.json").read_text())["reused_from_earlier_run"]
    rows = sorted(p.name for p in stage_dir.glob("*-shard*.jsonl"))
    same = all((stage_dir / n).read_bytes() == (resumed / n).read_bytes() for n in rows)
    return {"killed": work.name, "chunks": chunks, "chunks_left_by_the_killed_run": left,
            "rows_kept": kept, "rows_made_again": shard_rows - kept,
            "rows_identical": same and len(rows) == shards, "rerun_wall_s": rerun}  # fmt: skip


def measure(case: Case) -> dict:
    """`stages` of one iteration, in a new run folder or (`keep`) in the last one made."""
    p, root = case.params, BENCH_DIR / case.name
    size, shards, rows = p["size"], p["shards"], []
    if not p["keep"]:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    for stage in p["stages"]:
        for earlier in root.rglob(f"iter1/{stage}"):
            shutil.rmtree(earlier)
        others = harness.OtherCpu()
        others.start()
        tasks, wall = stage_tasks(size, root, stage, shards)
        # others: the machine's busy time less this tree's and the array tasks'
        others = others.share(wall, own_elsewhere=sum(t.get("cpu_s", 0) for t in tasks))
        stage_dir, slowest = next(root.rglob(f"iter1/{stage}")), max(t["wall_s"] for t in tasks)
        work = harness.record(stage_dir)["timings"]["seconds"]  # summed over the shards
        rows.append({
            "size": size, "stage": stage, "wall_s": wall, "tasks": tasks,
            "layout": shards,  # the run's shard count; a stage not sharded runs as one task
            "shards": shards if stage in SHARDED else 1,
            "task_ms_per_prompt": round(1000 * slowest / (size / len(tasks)), 3),
            "work_s": round(work, 2), "work_ms_per_prompt": round(1000 * work / size, 3),
            "peak_tree_rss_mb": max(t["peak_tree_rss_mb"] for t in tasks),
            "peak_process_hwm_mb": max(t["peak_process_hwm_mb"] for t in tasks),
            "bytes_written": sum(f.stat().st_size for f in stage_dir.rglob("*") if f.is_file()),
            "other_cpu_share": round(others, 3),
        })  # fmt: skip
        if p["resume"] and stage in SHARDED:
            rows[-1]["resume"] = resume_check(size, root, stage, shards)
    weighted = sum(r["other_cpu_share"] * r["wall_s"] for r in rows)
    return {"rows": rows, "other_cpu_share": weighted / sum(r["wall_s"] for r in rows)}


def growth(rows: list[dict]) -> list[dict]:
    """Per stage and layout: work per prompt and peak memory, largest size over smallest."""
    out, (most_time, most_memory) = [], TARGETS.values()
    for layout in sorted({r["layout"] for r in rows}):
        for stage in STAGES:
            mine = [r for r in rows if r["stage"] == stage and r["layout"] == layout]
            sizes = sorted({r["size"] for r in mine})
            if len(sizes) < 2:
                continue
            (small, large), shards = (sizes[0], sizes[-1]), mine[0]["shards"]
            work, peak = ([median(r[k] for r in mine if r["size"] == s) for s in (small, large)]
                          for k in ("work_ms_per_prompt", "peak_tree_rss_mb"))  # fmt: skip
            time_ratio, memory_ratio = work[1] / work[0], peak[1] / peak[0]
            out.append({
                "stage": stage, "layout": layout, "shards": shards, "sizes": [small, large],
                "time_per_prompt": round(time_ratio, 3), "peak_memory": round(memory_ratio, 3),
                # of a task: an array task's peak over the prompts it adds
                "memory_per_prompt_kb": round(1024 * (peak[1] - peak[0]) * shards / (large - small), 2),
                "met": time_ratio <= most_time and memory_ratio <= most_memory,
            })  # fmt: skip
    return out


def merged(earlier: dict | None, run: dict, rows: list[dict]) -> dict:
    """This run's rows, with those of an earlier result at the sizes, layouts and stages this
    run did not measure; `runs`: the invocations that measured them (a row's `run`)."""
    runs, kept = [], []
    if earlier is not None:
        measured = {(r["size"], r["layout"], r["stage"]) for r in rows}
        kept = [r for r in earlier["rows"] if (r["size"], r["layout"], r["stage"]) not in measured]
        used = sorted({r["run"] for r in kept})
        runs = [earlier["runs"][i] for i in used]
        kept = [{**r, "run": used.index(r["run"])} for r in kept]
    rows = [*kept, *({**r, "run": len(runs)} for r in rows)]
    runs.append(run)
    rows.sort(key=lambda r: (r["layout"], r["size"], STAGES.index(r["stage"])))
    return {"runs": runs, "rows": rows, "growth": growth(rows)}


def summarise(runs: list[dict], args) -> dict:
    """The cases' rows, merged (`--merge`) into --out's; `runs`: the invocations that made them."""
    made = harness.provenance((), ())
    machine = {**made["machine"], "git_commit": made["commit"], "git_dirty": made["dirty"]}
    command = " ".join(["python -m benchmarks", *sys.argv[1:]])
    cases = [{k: v for k, v in r.items() if k != "rows"} for r in runs]  # the harness's runs
    invocation = {"command": command, "machine": machine, "cases": cases}
    rows = [{**row, "repeat": r["repeat"]} for r in runs for row in r["rows"]]
    earlier = json.loads(args.out.read_text()) if args.merge and args.out.exists() else None
    result = merged(earlier, invocation, rows)
    if earlier is not None:  # the file's rows come from every invocation still named
        result["command"] = "; ".join(r["command"] for r in result["runs"])
    return result


def tables(result: dict) -> list[dict]:
    g, rows = result["growth"], result["rows"]
    unmet = [f"{x['stage']} ({x['layout']} shards)" for x in g if not x["met"]]
    blocks = [
        text(*(
            f"- run {i}: {m['cpu_model']} · {m['cpu_affinity']} CPUs · {m['memory_gib']} GiB · "
            f"commit {m['git_commit'][:10]}{' (dirty)' if m['git_dirty'] else ''} · "
            f"{m['date_utc']} · `{run['command']}`"
            for i, run in enumerate(result["runs"]) for m in [run["machine"]]
        )),
        text(
            f"`{' '.join(OVERRIDES)}`; peak = the summed RSS of the stage's process tree (sampled "
            f"every {SAMPLE_S * 1000:.0f} ms), of the largest task for an array; work = the "
            "stage's own seconds (its record, summed over tasks), without the start-up; "
            "ms/prompt of a task = its wall time over its prompts; other CPU = the share of the "
            "CPUs other processes took during the stage (in rows before the harness: before it)."
        ),
        table(
            ["run", "prompts", "tasks", "stage", "wall s", "work s", "work ms/prompt",
             "ms/prompt of a task", "peak MB", "largest process MB", "MB written", "other CPU"],
            ([r["run"], f"{r['size']:,}", r["shards"], r["stage"], f"{r['wall_s']:.1f}",
              f"{r['work_s']:.1f}", f"{r['work_ms_per_prompt']:.2f}",
              f"{r['task_ms_per_prompt']:.2f}", f"{r['peak_tree_rss_mb']:.0f}",
              f"{r['peak_process_hwm_mb']:.0f}", f"{r['bytes_written'] / 1e6:.1f}",
              f"{r.get('other_cpu_share', r.get('other_load_before')):.0%}"] for r in rows),
            ["---:"] * 3 + ["---"] + ["---:"] * 8,
        ),
    ]  # fmt: skip
    if any("resume" in r for r in rows):
        blocks += [
            text("Killed (-9) halfway and run again (a copy of the run made before the stage):"),
            table(
                ["prompts", "tasks", "stage", "killed", "its chunks", "left by the killed run",
                 "rows kept", "rows made again", "rows identical to the uninterrupted run's"],
                ([f"{r['size']:,}", r["shards"], r["stage"], c["killed"], c["chunks"],
                  c["chunks_left_by_the_killed_run"], f"{c['rows_kept']:,}",
                  f"{c['rows_made_again']:,}", "yes" if c["rows_identical"] else "NO"]
                 for r in rows if "resume" in r for c in [r["resume"]]),
                ["---:", "---:", "---", "---"] + ["---:"] * 4 + ["---"],
            ),
        ]  # fmt: skip
    if g:
        blocks += [
            text(f"Growth, largest size over smallest (targets: time per prompt <= "
                 f"{TARGETS['time_per_prompt']}, peak memory <= {TARGETS['peak_memory']}):"),
            table(
                ["run as", "stage", "tasks", "sizes", "time per prompt", "peak memory",
                 "memory per prompt a task adds (kB)", "met"],
                (["one shard" if x["layout"] == 1 else f"{x['layout']} array tasks", x["stage"],
                  x["shards"], f"{x['sizes'][0]:,} -> {x['sizes'][1]:,}",
                  f"{x['time_per_prompt']:.2f}x", f"{x['peak_memory']:.2f}x",
                  f"{x['memory_per_prompt_kb']:.2f}", "yes" if x["met"] else "no"] for x in g),
                ["---", "---", "---:", "---", "---:", "---:", "---:", "---"],
            ),
            text(f"{len(g) - len(unmet)} of {len(g)} stages and layouts meet both targets"
                 + (f"; not met: {', '.join(unmet)}." if unmet else ".")),
        ]  # fmt: skip
    return blocks


BENCHMARK = Benchmark(
    name="scale", results="scale_cpu", repeats=1, timeout=24 * 3600,
    title="one tiny-model iteration at 1k-20k prompts, K = 5, one shard and SLURM arrays, CPU",
    cases=cases, measure=measure, summarise=summarise, tables=tables, add_args=add_args,
    packages=("torch", "transformers", "datasets", "llm-blender"),
    code=("src/core/chunks.py", "src/stages/generate.py", "src/stages/rank.py"),
)  # fmt: skip

if __name__ == "__main__":  # an array task: `python -m benchmarks.scale OUT OVERRIDES...`
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    result = {**measured(sys.argv[2:]), "task": task, "cpu_s": harness.tree_cpu_seconds()}
    Path(sys.argv[1].replace("%a", task)).write_text(json.dumps(result))  # %a: the task
