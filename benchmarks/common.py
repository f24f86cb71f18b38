"""What the benchmark scripts share: the offline environment, the machine's load, provenance,
the prompts and corpus their synthetic data is cut from, running one configuration in a fresh
interpreter, the interleaved repeats with disturbance detection and the profile pass, summary
helpers and writing the results (JSON + Markdown).

Each script keeps what is its own: what it measures (its worker), its summary fields, its ratios
and its tables. A script's `main()` then reads:

    parser = argparse.ArgumentParser(...); add_common_args(parser, out=..., timeout=...)
    if args.render: rerender(args.render, ratios, markdown); return
    runs, failures, waited = measure_interleaved(specs, args, run_one, describe)
    profiles, profile_failures, profile_waited = profile_pass(profile_specs, args, ...)
    versions = warn_if_code_changed(runs, "the files it measures")
    finish(args.out, {"benchmark": ..., "summary": ...}, markdown, runs, failures, ...)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from src.core.memory import status_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]

# Set on import, before any script imports transformers or huggingface_hub (they read these once).
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


# --- the machine and this process -------------------------------------------------------------


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    value = status_bytes(field)
    if value is None:
        raise KeyError(field)
    return value // 1024


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


class OtherCpu:
    """The share of the CPUs that other processes took during a timed window: the machine's busy
    time minus this process's CPU time. /proc/stat sees processes that `ps` here may not (other
    containers on the same VM), and on 2 cores one busy neighbour spoils a timing. `own`: this
    process's CPU seconds (default: its own threads; vLLM's client counts its engine's too)."""

    def __init__(self, own: Callable[[], float] = time.process_time):
        self.own = own

    def start(self) -> None:
        self.machine, self.process = machine_busy_s(), self.own()

    def share(self, seconds: float) -> float:
        machine = machine_busy_s() - self.machine
        own = self.own() - self.process
        return max(machine - own, 0.0) / (seconds * len(os.sched_getaffinity(0)))


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and its live children (vLLM's engine runs in its children)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # exited meanwhile
            total += sum(child.cpu_times()[:2])
    return total


# A busy process: the load of a run "under load" (`--loads`), as a neighbour's job would be.
BUSY = "import time\nwhile True:\n    time.perf_counter()\n"


class Load:
    """`n` busy processes beside a run (a context manager); `share()`: the share of the CPUs
    they took, over their lifetime, to tell the load put on a run from other disturbance."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self) -> Load:
        self.started = time.time()
        self.procs = [
            subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL)
            for _ in range(self.n)
        ]
        return self

    def share(self) -> float:
        if not self.procs:
            return 0.0
        import psutil

        busy = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                busy += sum(psutil.Process(proc.pid).cpu_times()[:2])
        return busy / ((time.time() - self.started) * len(os.sched_getaffinity(0)))

    def __exit__(self, *exc) -> None:
        self.taken = self.share()
        for proc in self.procs:
            proc.kill()
            proc.wait()


def run_under_load(n: int, run: Callable[[], tuple[dict | None, str | None]]):
    """`run()` (one configuration, `run_fresh`) with `n` busy processes beside it. The result's
    `other_cpu_share` becomes what other processes took beyond that load (the disturbance
    `measure_interleaved` re-measures), `load_cpu_share` what the load took."""
    with Load(n) as load:
        result, error = run()
    if result is not None and "other_cpu_share" in result:
        result["load_cpu_share"] = load.taken
        result["other_cpu_share_with_load"] = result["other_cpu_share"]
        result["other_cpu_share"] = max(0.0, result["other_cpu_share"] - load.taken)
    return result, error


def wait_for_quiet(max_load: float, max_wait: float) -> float:
    """Wait (up to `max_wait` s) until other processes use at most `max_load` of the CPUs: on a
    2-core machine one busy neighbour halves a measurement. Returns the seconds waited."""
    started = time.time()
    while (load := other_load(0.5)) > max_load and time.time() - started < max_wait:
        print(f"    waiting for a quiet machine (other load {load:.0%})", flush=True)
        time.sleep(10)
    return time.time() - started


def trim_heap() -> None:
    """Collect garbage and hand freed heap back to the OS, so that setup garbage does not hide
    (or stand in for) the peak of what is measured next."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> str:
    """Reset the kernel's high-water mark of this process (VmHWM); returns the method used."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM after clear_refs"
    except OSError:
        return "VmHWM since process start (clear_refs not allowed): an upper bound"


# --- provenance -------------------------------------------------------------------------------


def installed(package: str) -> str | None:
    """The version of `package`, or None where it is not installed (a peer a run leaves out)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info(packages: tuple[str, ...], code_sha256: dict) -> dict:
    """Where and what was measured: CPU, memory, versions of `packages`, git state, code hashes."""

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: installed(name) for name in packages},
        "git_commit": git("rev-parse", "HEAD"),
        # uncommitted changes to what runs; results files written by an earlier run are not code
        "git_dirty": bool(
            git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
        ),
        # the code measured, whatever git says about it (a file may be uncommitted)
        "code_sha256": code_sha256,
    }


def code_hashes(paths: list[Path]) -> dict:
    return {
        str(path.relative_to(REPO_ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for path in paths
    }


# --- the synthetic data -----------------------------------------------------------------------


def project_prompts() -> list[str]:
    """The 120 hand-written prompts of data/prompts/iter*.jsonl (p0001-p0120), in file order:
    the prompts of the benchmarks' synthetic data (the generated ones that follow them in the
    files are left out, so the data sets stay what the recorded results were measured on)."""
    from src.tiny.data import FIRST_GENERATED_ID

    rows = [
        json.loads(line)
        for path in sorted((REPO_ROOT / "data" / "prompts").glob("iter*.jsonl"))
        for line in path.read_text(encoding="utf-8").split("\n")
        if line.strip()
    ]
    return [r["prompt"] for r in rows if int(r["prompt_id"][1:]) < FIRST_GENERATED_ID]


def corpus_words() -> list[str]:
    """The words of the tiny corpus, in order: the synthetic responses are runs of them."""
    return (REPO_ROOT / "data" / "tiny" / "corpus.txt").read_text(encoding="utf-8").split()


# --- running configurations -------------------------------------------------------------------


def command_line(
    argv: list[str] | None, worker_main: Callable[[list[str]], None], module: str, doc: str
) -> tuple[list[str], argparse.ArgumentParser] | None:
    """A benchmark's command line: `--worker OUT ...` runs one configuration (`worker_main`)
    and gives None; else (the arguments, the parser of `python -m <module>`, described by the
    first line of `doc`)."""
    argv = sys.argv[1:] if argv is None else argv
    if is_worker(argv):
        worker_main(argv[1:])
        return None
    return argv, argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])


def is_worker(argv: list[str]) -> bool:
    """`python -m benchmarks.X --worker OUT ...`: one configuration, run by `run_fresh`."""
    return bool(argv) and argv[0] == "--worker"


def run_fresh(
    module: str, args: list[str], timeout: int, env: dict | None = None
) -> tuple[dict | None, str | None]:
    """One configuration in a fresh interpreter (so that neither memory peaks nor warm caches
    carry over between configurations): `python -m module --worker OUT *args`, where the worker
    writes its measurements as JSON to OUT; `env` adds to its environment (read at its start,
    e.g. by the C allocator). Returns (them, None) or (None, the error)."""
    with tempfile.TemporaryDirectory(prefix="bench-result-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", module, "--worker", str(out), *args]
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **env} if env else None,
            )
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout} s"
        if proc.returncode != 0 or not out.is_file():
            sys.stderr.write(proc.stderr[-4000:])
            return None, (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return json.loads(out.read_text()), None


def measure_interleaved(
    specs: list,
    args: argparse.Namespace,
    run_one: Callable[[object], tuple[dict | None, str | None]],
    describe: Callable[[dict], str],
) -> tuple[list[dict], list[dict], float]:
    """Every spec `args.repeats` times, interleaved (repeat 1 of everything, then repeat 2, ...)
    so that slow drift of the machine hits all configurations alike.

    Before each run: wait for a quiet machine. A run whose timed window saw other processes
    take more than `args.max_load` of the CPUs (its `other_cpu_share`) is measured again, up to
    `args.retries` times; the least disturbed attempt is kept, flagged `contended` if even that
    one was disturbed. `run_one(spec)` returns (measurements, None) or (None, error); `describe`
    gives the progress line's middle. Returns (kept runs, failures, seconds waited).
    """
    runs, failures, waited = [], [], 0.0
    total = len(specs) * args.repeats
    for repeat in range(args.repeats):
        for i, spec in enumerate(specs):
            n = repeat * len(specs) + i + 1
            tries = []
            for attempt in range(1 + args.retries):
                waited += wait_for_quiet(args.max_load, args.max_wait)
                t0 = time.time()
                run, error = run_one(spec)
                if run is None:
                    failures.append({"spec": asdict(spec), "repeat": repeat, "error": error})
                    print(f"[{n}/{total}] {spec.name}: FAILED: {error}", flush=True)
                    break
                run["repeat"], run["attempt"] = repeat, attempt
                tries.append(run)
                busy = run["other_cpu_share"]
                print(
                    f"[{n}/{total}] {spec.name}: {describe(run)}, "
                    f"other load {busy:.0%} ({time.time() - t0:.0f} s)",
                    flush=True,
                )
                if busy <= args.max_load:
                    break
                print(
                    f"    other processes took {busy:.0%} of the CPUs: measuring again", flush=True
                )
            if tries:
                best = min(tries, key=lambda r: r["other_cpu_share"])
                best["contended"] = best["other_cpu_share"] > args.max_load
                runs.append(best)
    return runs, failures, waited


def profile_pass(
    specs: list,
    args: argparse.Namespace,
    run_one: Callable[[object], tuple[dict | None, str | None]],
    describe: Callable[[dict], str],
) -> tuple[list[dict], list[dict], float]:
    """Every spec once under the profiler's timers, each after waiting for a quiet machine (a
    profile is not measured again when disturbed). `run_one(spec)` returns (profile, None) or
    (None, error); `describe` gives the progress line's end. Returns (profiles, failures, seconds
    waited), the failures marked `profile` so that they read apart from the timed runs'."""
    profiles, failures, waited = [], [], 0.0
    for spec in specs:
        waited += wait_for_quiet(args.max_load, args.max_wait)
        profile, error = run_one(spec)
        if profile is None:
            failures.append({"spec": asdict(spec), "profile": True, "error": error})
            print(f"[profile] {spec.name}: FAILED: {error}", flush=True)
            continue
        profiles.append(profile)
        print(f"[profile] {spec.name}: {describe(profile)}", flush=True)
    return profiles, failures, waited


def warn_if_code_changed(runs: list[dict], what: str) -> int:
    """How many versions of the measured code the runs imported (each records its
    `code_sha256`): more than one means an edit landed mid-benchmark and the runs measured
    different code, so say so (`what` names the files). Returns the count."""
    versions = {json.dumps(r["code_sha256"], sort_keys=True) for r in runs}
    if len(versions) > 1:
        print(
            f"WARNING: the measured code changed during the benchmark ({len(versions)} versions "
            f"of {what}): run it again",
            flush=True,
        )
    return len(versions)


# --- summaries --------------------------------------------------------------------------------


def median(values: Iterable) -> float | None:
    """The median of the values that are there (None: not measured in that run)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def group_runs(runs: list[dict], name_of: Callable[[dict], str]) -> dict[str, list[dict]]:
    """The runs of each configuration, in the order the configurations first ran."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(name_of(run), []).append(run)
    return groups


def summary_of(
    group: list[dict],
    rate: str,
    first: tuple[str, ...] = (),
    medians: tuple[str, ...] = (),
    distinct: tuple[str, ...] = (),
) -> dict:
    """The summary of one configuration's runs: its spec and number of repeats; `first`, what
    every run of it shares (the first run's); `rate`, the key it is measured by (median, and
    `_min` / `_max` over the repeats); `medians`, the median of each key (None where no run
    measured it); `distinct`, the sorted distinct values of each key (e.g. output hashes)."""
    rates = [r[rate] for r in group]
    return {
        "spec": group[0]["spec"],
        "repeats": len(group),
        **{key: group[0][key] for key in first},
        rate: median(rates),
        f"{rate}_min": min(rates),
        f"{rate}_max": max(rates),
        **{key: median(r.get(key) for r in group) for key in medians},
        **{key: sorted({r[key] for r in group}) for key in distinct},
    }


def per_repeat_ratios(
    runs: list[dict], name_of: Callable[[dict], str], a: str, b: str, key: str
) -> list[float]:
    """`key` of configuration `a` over `key` of configuration `b`, repeat i against repeat i:
    the spread of a ratio, beside the ratio of the medians."""
    by_repeat = {(name_of(r), r["repeat"]): r for r in runs}
    repeats = sorted({r["repeat"] for r in runs})
    return [
        by_repeat[a, i][key] / by_repeat[b, i][key]
        for i in repeats
        if (a, i) in by_repeat and (b, i) in by_repeat
    ]


def target_met(value: float, target: str | None) -> bool | None:
    """Whether `value` meets a target written ">= 3.0" or "<= 1.0" (None: no target)."""
    if not target:
        return None
    op, bound = target.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


# --- command line and results -----------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, out: Path, timeout: int) -> None:
    """The flags every benchmark has: repeats, output, per-run timeout, disturbance handling,
    and --render."""
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh-process runs per configuration"
    )
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument(
        "--timeout", type=int, default=timeout, help="seconds per configuration run"
    )
    parser.add_argument(
        "--max-load",
        type=float,
        default=0.1,
        help="share of the CPUs other processes may use during a run before it is measured again",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-measurements of a disturbed run")
    parser.add_argument(
        "--max-wait", type=float, default=300, help="seconds to wait for a quiet machine per run"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only rewrite the Markdown table (next to JSON) from a results file, measuring nothing",
    )


def rerender(
    path: Path,
    ratios: Callable[[dict, list[dict]], list[dict]],
    markdown: Callable[[dict], str],
) -> None:
    """--render: recompute the ratios from the summary and the runs (so that a change to how a
    script computes them reaches results measured before it), rewrite the JSON and the Markdown
    next to it, print the tables."""
    result = json.loads(path.read_text(encoding="utf-8"))
    result["ratios"] = ratios(result["summary"], result["runs"])
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def write_results(out: Path, result: dict, markdown: Callable[[dict], str]) -> None:
    """The results as JSON (every run, settings, machine) and the tables as Markdown beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    md = out.with_suffix(".md")
    md.write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"wrote {out} and {md} ({result['wall_s']:.0f} s)")


def report(
    args: argparse.Namespace,
    argv: list[str],
    module: str,
    started: float,
    markdown: Callable[[dict], str],
    measured: tuple[list[dict], list[dict], float],
    *,
    benchmark: str,
    packages: tuple[str, ...],
    code: dict,
    settings: dict,
    summary: dict,
    ratios: list[dict],
    code_versions: int | None = None,
    **extra: Any,
) -> None:
    """End a benchmark: its result (what it measured, the command, the machine with `packages`'
    versions and the hashes of the measured `code`, its `settings` with the repeats and the
    load allowed, the summary, the ratios and any `extra` parts), finished with `measured`, its
    (runs, failures, seconds waited), and written (`finish`)."""
    result = {
        "benchmark": benchmark,
        "command": f"python -m {module} " + " ".join(argv),
        "machine": machine_info(packages, code),
        "settings": {**settings, "repeats": args.repeats, "max_other_load": args.max_load},
        "summary": summary,
        "ratios": ratios,
        **extra,
    }
    runs, failures, waited = measured
    finish(args.out, result, markdown, runs, failures, waited, started, code_versions)


def finish(
    out: Path,
    result: dict,
    markdown: Callable[[dict], str],
    runs: list[dict],
    failures: list[dict],
    waited: float,
    started: float,
    code_versions: int | None = None,
) -> None:
    """End a benchmark: complete `result` (its own parts so far) with what every benchmark
    records last (failures, runs, how many stayed disturbed, the count of code versions where
    the runs record their code, the seconds spent waiting and in all since `started`), write it
    (`write_results`) and exit with 1 if any run failed, after what did run is on disk."""
    result["failures"] = failures
    result["runs"] = runs
    result["contended_runs"] = sum(r["contended"] for r in runs)
    if code_versions is not None:
        result["code_versions"] = code_versions
    result["seconds_waited_for_quiet"] = round(waited, 1)
    result["wall_s"] = round(time.time() - started, 1)
    write_results(out, result, markdown)
    if failures:
        sys.exit(1)
