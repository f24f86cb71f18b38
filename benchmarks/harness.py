"""One harness for every benchmark: a benchmark declares what to run, the harness runs it.

A benchmark is a module of benchmarks/ holding `BENCHMARK = Benchmark(...)` (benchmarks/__main__.py
lists them). What it declares, as data and small functions:

- `cases(args)`: the configurations to measure, each a `Case` of plain values: the peer it runs
  (`ours` is the project, run as a user runs it; a peer is an adapter of a few dozen lines), the
  workload (model, sizes, stage overrides), the environment, the busy processes beside it;
- `measure(case)`: one configuration, in a fresh interpreter. It runs the product (`python -m
  src.main ...` through `run_stage`, or the stage's own generator / judge / trainer objects) and
  returns what it measured, read from the stage's record where the stage keeps it;
- `summarise(runs, args)`: the summary and ratios (plain data, kept in the results file);
- `tables(result)`: the results file's Markdown, as blocks (`text`, `table`).

The runner (`Benchmark.main`) runs every case `--repeats` times, interleaved (repeat 1 of every
case, then repeat 2) so that the machine's drift hits every case alike; waits for a quiet machine
before each run and measures a run again whose window other processes disturbed (`--max-load`);
and writes the results file: the command, the commit, the machine with its load, every run, the
summary and the blocks. Its Markdown is `render(result)`, one renderer for every file, so
`python -m benchmarks --render` re-renders every committed results file from its JSON alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"

# Set on import, before a benchmark imports transformers or huggingface_hub (they read these once).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",  # TRL's precompute progress bar
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


# --- what a benchmark declares ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One configuration: `peer` runs `params` (plain values the benchmark's `measure` reads),
    in a fresh process with `env` added to its environment and `load` busy processes beside it."""

    name: str
    peer: str = "ours"
    params: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    load: int = 0


@dataclass(frozen=True)
class Benchmark:
    name: str  # `python -m benchmarks <name>`
    title: str  # the results file's heading
    results: str  # the default results file, benchmarks/results/<results>.json
    cases: Callable[[argparse.Namespace], list[Case]]
    measure: Callable[[Case], dict]
    summarise: Callable[[list[dict], argparse.Namespace], dict]
    tables: Callable[[dict], list[dict]]
    add_args: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    packages: tuple[str, ...] = ("torch", "transformers")  # versions recorded with the machine
    code: tuple[str, ...] = ()  # the files measured, hashed into the record
    repeats: int = 3
    timeout: int = 1800  # seconds per case run

    def main(self, argv: list[str]) -> None:
        if argv[:1] == ["--worker"]:
            return worker(self, Path(argv[1]), json.loads(argv[2]))
        args = self.parser().parse_args(argv)
        started = time.time()
        cases = self.cases(args)
        head = {
            "benchmark": self.name,
            "title": self.title,
            "command": " ".join(["python -m benchmarks", self.name, *argv]),
            **provenance(self.packages, self.code),
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "cases": [asdict(c) for c in cases],
        }

        def save(runs: list[dict], failures: list[dict], waited: float, done: bool) -> None:
            """The results file as it stands: after every run, so that a run cut off (a time
            limit, a lost machine) leaves the figures of the runs it finished."""
            result = {**head, "runs": runs, "failures": failures,
                      "seconds_waited_for_quiet": round(waited, 1)}  # fmt: skip
            if not done:
                total = len(cases) * args.repeats
                result["partial"] = f"{len(runs) + len(failures)} of {total} runs so far"
            result.update(self.summarise(runs, args))
            result["wall_s"] = round(time.time() - started, 1)
            result["blocks"] = self.tables(result)
            write(args.out, result, quiet=not done)

        runs, failures, waited = measure_interleaved(
            self, cases, args, on_run=lambda *sofar: save(*sofar, done=False)
        )
        save(runs, failures, waited, done=True)
        if failures:
            sys.exit(1)

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"python -m benchmarks {self.name}")
        parser.add_argument(
            "--repeats", type=at_least_one, default=self.repeats, help="fresh-process runs per case"
        )
        parser.add_argument("--out", type=Path, default=RESULTS / f"{self.results}.json")
        parser.add_argument("--timeout", type=int, default=self.timeout, help="seconds per run")
        parser.add_argument(
            "--max-load",
            type=float,
            default=0.1,
            help="share of the CPUs other processes may take during a run before it is redone",
        )
        parser.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed run")
        parser.add_argument(
            "--max-wait", type=float, default=300, help="seconds to wait for a quiet machine"
        )
        self.add_args(parser)
        return parser


# --- running cases ----------------------------------------------------------------------------


def at_least_one(text: str) -> int:
    """An argument counting runs: a whole number, 1 or more (0 would write an empty result)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def worker(bench: Benchmark, out: Path, case: dict) -> None:
    """One case in this fresh process: `measure`, timed with what other processes took of the
    CPUs meanwhile (this process's tree excluded: a stage it starts is its own work)."""
    case = Case(**case)
    other = OtherCpu()
    other.start()
    started = time.perf_counter()
    run = bench.measure(case)
    seconds = time.perf_counter() - started
    run.setdefault("other_cpu_share", other.share(seconds))
    run = {"case": case.name, "peer": case.peer, **run}
    out.write_text(json.dumps(run))


def run_fresh(bench: Benchmark, case: Case, timeout: int) -> tuple[dict | None, str | None]:
    """`case` in a fresh interpreter (neither memory peaks nor warm caches carry over), with its
    load beside it. Returns (its measurements, None) or (None, the error's last line)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, Load(case.load) as load:
        out = Path(tmp) / "run.json"
        cmd = [sys.executable, "-m", "benchmarks", bench.name, "--worker", str(out)]
        cmd.append(json.dumps(asdict(case)))
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **case.env},
            )
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout} s"
        if proc.returncode != 0 or not out.is_file():
            sys.stderr.write(proc.stderr[-4000:])
            return None, (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        run = json.loads(out.read_text())
    if case.load:  # what others took beyond the load put on the run
        run["load_cpu_share"] = load.taken
        run["other_cpu_share"] = max(0.0, run["other_cpu_share"] - load.taken)
    return run, None


def measure_interleaved(
    bench: Benchmark,
    cases: list[Case],
    args: argparse.Namespace,
    on_run: Callable[[list[dict], list[dict], float], None] = lambda *sofar: None,
) -> tuple[list[dict], list[dict], float]:
    """Every case `args.repeats` times, interleaved. Before each run, wait for a quiet machine; a
    run whose window saw other processes take more than `args.max_load` of the CPUs is measured
    again (`args.retries` times at most) and the least disturbed attempt kept, flagged
    `contended` if even that one was. `on_run(runs, failures, waited)` after each case's run.
    Returns (runs, failures, seconds waited)."""
    runs, failures, waited = [], [], 0.0
    total = len(cases) * args.repeats
    for repeat in range(args.repeats):
        for i, case in enumerate(cases):
            n = repeat * len(cases) + i + 1
            tries = []
            for attempt in range(1 + args.retries):
                waited += wait_for_quiet(args.max_load, args.max_wait)
                loadavg = os.getloadavg()[0]
                t0 = time.time()
                run, error = run_fresh(bench, case, args.timeout)
                if run is None:
                    failures.append({"case": case.name, "repeat": repeat, "error": error})
                    print(f"[{n}/{total}] {case.name}: FAILED: {error}", flush=True)
                    break
                run.update(repeat=repeat, attempt=attempt, loadavg_1min=loadavg)
                tries.append(run)
                busy = run["other_cpu_share"]
                print(
                    f"[{n}/{total}] {case.name}: other load {busy:.0%} ({time.time() - t0:.0f} s)",
                    flush=True,
                )
                if busy <= args.max_load:
                    break
                print(f"    others took {busy:.0%} of the CPUs: measuring again", flush=True)
            if tries:
                best = min(tries, key=lambda r: r["other_cpu_share"])
                best["contended"] = best["other_cpu_share"] > args.max_load
                runs.append(best)
            on_run(runs, failures, waited)
    return runs, failures, waited


def run_stage(overrides: Iterable[str], env: dict | None = None, timeout: int = 3600) -> None:
    """`python -m src.main *overrides` in a fresh process, as a user runs it; raises with the
    stage's last lines when it fails. What it measured is in its record (`record`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "src.main", *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"python -m src.main {' '.join(overrides)} ended {proc.returncode}:\n{tail}"
        )


def record(stage_dir: Path) -> dict:
    """A finished stage's done.json, read and checked by the project's own reader."""
    from src.core.records import read_record

    found = read_record(stage_dir)
    if found is None:
        raise RuntimeError(f"{stage_dir} has no done.json: the stage did not finish")
    return found


# --- the machine ------------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_load(seconds: float) -> float:
    """Share of the machine's cores kept busy by other processes over `seconds` (this one idles)."""
    busy = machine_busy_s()
    time.sleep(seconds)
    return (machine_busy_s() - busy) / (seconds * len(os.sched_getaffinity(0)))


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and its live children (a stage, vLLM's engine)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2]) + sum(me.cpu_times()[2:4])  # + reaped children
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # exited meanwhile
            total += sum(child.cpu_times()[:2])
    return total


class OtherCpu:
    """The share of the CPUs other processes took during a window: the machine's busy time less
    this process tree's. /proc/stat sees processes `ps` may not (other containers on the VM), and
    on 2 cores one busy neighbour spoils a timing."""

    def start(self) -> None:
        self.machine, self.own = machine_busy_s(), tree_cpu_seconds()

    def share(self, seconds: float) -> float:
        machine = machine_busy_s() - self.machine
        own = tree_cpu_seconds() - self.own
        return max(machine - own, 0.0) / (seconds * len(os.sched_getaffinity(0)))


BUSY = "import time\nwhile True:\n    time.perf_counter()\n"


class Load:
    """`n` busy processes beside a run, as a neighbour's job would be; `taken`: the share of the
    CPUs they took over their lifetime, to tell the load put on a run from other disturbance."""

    def __init__(self, n: int):
        self.n, self.procs, self.taken = n, [], 0.0

    def __enter__(self) -> Load:
        self.started = time.time()
        self.procs = [
            subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL)
            for _ in range(self.n)
        ]
        return self

    def __exit__(self, *exc) -> None:
        if not self.procs:
            return
        import psutil

        busy = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                busy += sum(psutil.Process(proc.pid).cpu_times()[:2])
            proc.kill()
            proc.wait()
        self.taken = busy / ((time.time() - self.started) * len(os.sched_getaffinity(0)))


def wait_for_quiet(max_load: float, max_wait: float) -> float:
    """Wait (up to `max_wait` s) until other processes use at most `max_load` of the CPUs.
    Returns the seconds waited."""
    started = time.time()
    while (load := other_load(0.5)) > max_load and time.time() - started < max_wait:
        print(f"    waiting for a quiet machine (other load {load:.0%})", flush=True)
        time.sleep(10)
    return time.time() - started


def installed(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(packages: tuple[str, ...], code: tuple[str, ...]) -> dict:
    """The commit measured (and whether the measured tree differed from it), and the machine:
    CPU, GPU, memory, its load, the versions of `packages`, the hashes of the `code` measured."""
    from src.core.machine import machine

    cpu = machine()["cpu"]  # what a stage's record names too
    gpu = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.strip() or None  # fmt: skip
    return {
        "commit": git("rev-parse", "HEAD"),
        # uncommitted changes to what runs (earlier results files are not code)
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")),
        "machine": {
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu_model": cpu,
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "gpu": gpu,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "loadavg": os.getloadavg(),
            "python": platform.python_version(),
            "versions": {name: installed(name) for name in packages},
            "code_sha256": {
                p: hashlib.sha256((REPO_ROOT / p).read_bytes()).hexdigest()[:16] for p in code
            },
        },
    }  # fmt: skip


# --- summaries --------------------------------------------------------------------------------


def median(values: Iterable) -> float | None:
    """The median of the values that are there (None: not measured in that run)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def by_case(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs of each case, in the order the cases first ran."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["case"], []).append(run)
    return groups


def ratio(runs: list[dict], a: str, b: str, key: str, target: str | None = None) -> dict:
    """`key` of case `a` over `key` of case `b`: the ratio of the medians, and repeat i against
    repeat i for the spread; whether it meets `target` (">= 3.0" / "<= 1.0")."""
    groups = by_case(runs)
    if a not in groups or b not in groups:
        return {"a": a, "b": b, "key": key, "median": None, "per_repeat": [], "target": target}
    mine = {r["repeat"]: r[key] for r in groups[a]}
    theirs = {r["repeat"]: r[key] for r in groups[b]}
    value = median(mine.values()) / median(theirs.values())
    return {
        "a": a,
        "b": b,
        "key": key,
        "median": value,
        "per_repeat": [mine[i] / theirs[i] for i in sorted(mine) if i in theirs],
        "target": target,
        "met": target_met(value, target),
    }


def target_met(value: float, target: str | None) -> bool | None:
    if not target:
        return None
    op, bound = target.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


# --- results files ----------------------------------------------------------------------------


def text(*paragraph: str) -> dict:
    return {"text": "\n".join(paragraph)}


def table(header: list[str], rows: Iterable[Iterable[Any]], rule: list[str] | None = None) -> dict:
    """A Markdown table as data: cells as written, `rule` the alignment row's cells."""
    return {
        "table": [list(header), *([str(c) for c in row] for row in rows)],
        "rule": rule or ["---"] * len(header),
    }


def render(result: dict) -> str:
    """A results file's Markdown, from its JSON alone: the title, what made it (command, commit,
    machine) and its blocks."""
    dirty = " (with uncommitted changes)" if result.get("dirty") else ""
    made = f"Made by `{result['command']}` at commit {result['commit'][:12]}{dirty}."
    parts = [f"# {result['title']}", made]
    if result.get("partial"):
        parts.append(f"**Partial**: {result['partial']} (the command did not finish).")
    for block in result["blocks"]:
        if "text" in block:
            parts.append(block["text"])
        else:
            header, *rows = block["table"]
            lines = [row_line(header), "|" + "|".join(block["rule"]) + "|"]
            parts.append("\n".join(lines + [row_line(r) for r in rows]))
    return "\n\n".join(parts) + "\n"


def row_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write(out: Path, result: dict, quiet: bool = False) -> None:
    """The results as JSON (every run, the settings, the machine) and as Markdown beside it;
    the Markdown printed too unless `quiet`."""
    from src.core.artifacts import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), render(result))
    if quiet:
        return
    print(render(result))
    print(f"wrote {out} and {out.with_suffix('.md')} ({result['wall_s']:.0f} s)")


def fmt(x: float | None, digits: int = 1) -> str:
    """A number for a table: thousands separated, `digits` decimals; – where not measured."""
    return "–" if x is None else f"{x:,.{digits}f}"
