"""One harness for every benchmark: a benchmark declares what to run, the harness runs it.

A benchmark is a module of benchmarks/ holding `BENCHMARK = Benchmark(...)` (benchmarks/__main__.py
lists them): its `cases(args)` (plain values: the peer, the workload, the environment, the busy
processes beside it), `measure(case)` (one case in a fresh interpreter, on the real code of src/),
`summarise(runs, args)` (medians and ratios, kept in the results file) and `tables(result)`. The
harness parses the arguments, runs every case `--repeats` times interleaved, waits for a quiet
machine and redoes a disturbed run (`--max-load`), and writes the results file (command, commit,
machine and load, every run, the summary, the blocks); `render(result)` makes every file's
Markdown from its JSON alone. What several benchmarks build or run (a real architecture with
random weights, the corpus's prompts, a stage's process, a peer comparison table) is here too.
How to read the results: benchmarks/README.md.
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
from types import SimpleNamespace
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
    tables: Callable[[dict], list[dict]]
    # the summary and ratios kept in the results file (none: the runs are the result)
    summarise: Callable[[list[dict], argparse.Namespace], dict] = lambda runs, args: {}
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
                if busy <= args.max_load or attempt == args.retries:
                    break
                print(f"    others took {busy:.0%} of the CPUs: measuring again", flush=True)
            if tries:
                best = min(tries, key=lambda r: r["other_cpu_share"])
                best["contended"] = best["other_cpu_share"] > args.max_load
                runs.append(best)
            on_run(runs, failures, waited)
    return runs, failures, waited


def run_stage(
    overrides: Iterable[str],
    env: dict | None = None,
    timeout: float = 3600,
    log: Path | None = None,
    check: bool = True,
) -> tuple[int | str, list[str]]:
    """`python -m src.main *overrides` in a fresh process, as a user runs it, its output (the
    command first) in `log`. A command still running after `timeout` s is stopped as a
    scheduler's limit stops it (SIGTERM, then SIGKILL), so that what it finished stays. Returns
    (its exit code, or why it stopped; its output's lines); `check`: raises with the last lines
    unless it ended 0. What a stage measured is in its record (`record`)."""
    command = [sys.executable, "-m", "src.main", *overrides]
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        path = log or Path(tmp) / "stage.log"
        with path.open("w") as f:
            f.write(" ".join(command) + "\n")
            f.flush()
            proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})  # fmt: skip
            try:
                code: int | str = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()  # src.main ends its stage as a scheduler's limit would
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = f"stopped at {timeout:.0f} s"
        lines = path.read_text(errors="replace").splitlines()
    if check and code != 0:
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"python -m src.main {' '.join(overrides)} ended {code}:\n{tail}")
    return code, lines


def record(stage_dir: Path) -> dict:
    """A finished stage's done.json, read and checked by the project's own reader."""
    from src.core.records import read_record

    found = read_record(stage_dir)
    if found is None:
        raise RuntimeError(f"{stage_dir} has no done.json: the stage did not finish")
    return found


# --- what several benchmarks build -----------------------------------------------------------

CACHE = REPO_ROOT / ".cache" / "bench"
# a tokenizer for prompts given as ids (the real tokenizers need the Hub): a sample's text is its ids
IDS_ONLY = SimpleNamespace(pad_token_id=0, decode=lambda ids, **_: " ".join(map(str, ids)))


def as_entry_point(pin_mmap: bool = True) -> None:
    """What every entry point does before torch loads (src/core/threads.py), and what
    `python -m src.main` does before any work (glibc's mmap threshold pinned)."""
    from src.core import memory, threads

    threads.configure()
    if pin_mmap:
        memory.pin_mmap_threshold()


def trim() -> None:
    """Freed memory back to the system: garbage of the setup must not stand in for a peak."""
    import gc

    from src.core.memory import glibc

    gc.collect()
    if (libc := glibc()) is not None:
        libc.malloc_trim(0)


# --scale cpu: a real model's config class at 2 layers of width 128 (heads of 32 dims, which
# vLLM's CPU attention serves): a GPU run rehearsed on a CPU
CPU_SCALE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}  # fmt: skip


def real_config(model: str, **changes):
    """A real model's transformers config from its config class (src/core/shapes.py: nothing is
    downloaded); `model`: a conf/model/ option or a hub id; `changes`: its fields changed."""
    import transformers

    from src.core.shapes import REAL_MODELS

    if model not in REAL_MODELS:
        from src.config import compose

        model = compose([f"model={model}"]).model.path
    config_class, _, kwargs, attention = REAL_MODELS[model]
    return getattr(transformers, config_class)(**{**kwargs, **changes},
                                               attn_implementation=attention)  # fmt: skip


def random_model(config, device=None, dtype=None, auto: str = "AutoModelForCausalLM"):
    """`config`'s model (transformers' `auto` class picks it) with random weights (seed 0) in
    `dtype` (default bf16), made on `device` (default: the GPU where there is one: seconds there
    where a CPU takes minutes)."""
    import torch
    import transformers

    torch.manual_seed(0)
    with torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")):
        return getattr(transformers, auto).from_config(config, dtype=dtype or torch.bfloat16)


def stage_prompts(cfg):
    """(rendered prompts, tokenizer, end-of-turn ids, the policy's path, prompts skipped as too
    long): the generate stage's prompts for `cfg`, read and rendered as the stage does."""
    from src.generation.prompts import load_prompts
    from src.generation.sampling import SampleCounts, rendered_prompts
    from src.stages.common import require_previous_policy

    d, counts, path = cfg.data, SampleCounts(), require_previous_policy(cfg)
    loaded = load_prompts(d.prompts, split=d.split, prompt_column=d.prompt_column,
                          id_column=d.id_column, max_prompts=d.max_prompts)  # fmt: skip
    tokenizer, eos_ids, rendered = rendered_prompts(
        cfg.generation, path, cfg.model.revision, loaded.prompts, counts, loaded, d.prompts
    )
    return rendered, tokenizer, eos_ids, path, counts.skipped_too_long


def open_stage_generator(cfg, path: str, tokenizer, eos_ids, engine: dict, log: Path | None,
                         generation=None):  # fmt: skip
    """The generate stage's generator for `cfg` (`open_generator`; `generation`: other settings
    than cfg's), vLLM's engine given `engine` beyond the stage's arguments; `log`: vLLM's whole
    log (its kernels are said at INFO)."""
    from src.generation import vllm_engine
    from src.generation.sampling import open_generator

    stage_args = vllm_engine.engine_args
    vllm_engine.engine_args = lambda *a: {**stage_args(*a), **engine}
    if log is not None:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        log.parent.mkdir(parents=True, exist_ok=True)
    return open_generator(generation or cfg.generation, path, tokenizer, eos_ids, cfg.model,
                          cfg.hardware, log=log)  # fmt: skip


def corpus_words() -> list[str]:
    return (REPO_ROOT / "data" / "tiny" / "corpus.txt").read_text(encoding="utf-8").split()


def cut(rng, words: list[str], n: int) -> str:
    """`n` consecutive words of `words` from a place `rng` draws."""
    start = rng.randrange(len(words) - n)
    return " ".join(words[start : start + n])


def written_prompts() -> list[str]:
    """The hand-written prompts of data/prompts/iter*.jsonl (src/tiny/data.py generates the rest)."""
    from src.tiny.data import FIRST_GENERATED_ID

    files = sorted((REPO_ROOT / "data" / "prompts").glob("iter*.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows if int(r["prompt_id"][1:]) < FIRST_GENERATED_ID]


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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

    def share(self, seconds: float, own_elsewhere: float = 0.0) -> float:
        """`own_elsewhere`: CPU seconds of this work outside the tree (a SLURM array's tasks)."""
        machine = machine_busy_s() - self.machine
        own = tree_cpu_seconds() - self.own + own_elsewhere
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


def medians(group: list[dict], keys: Iterable[str]) -> dict:
    """Each `key`'s median over a case's runs, and the range of the first key's."""
    keys = list(keys)
    first = [r[keys[0]] for r in group if r.get(keys[0]) is not None]
    return {**{k: median(r.get(k) for r in group) for k in keys},
            f"{keys[0]}_range": [min(first), max(first)] if first else None}  # fmt: skip


# --- results files ----------------------------------------------------------------------------

YES = {True: "yes", False: "**no**", None: "–"}


def setting(result: dict, *paragraph: str) -> dict:
    """The results' first block: when, on what (the device, the versions measured), then how."""
    m = result["machine"]
    versions = " · ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    where = f"{m['date_utc']} · {m['gpu'] or m['cpu_model']} · {m['cpu_affinity']} cores"
    return text(f"{where} · {versions}", "", *paragraph)


def ratio_table(ratios: list[dict], labels: dict[str, Callable[[dict], Any]]) -> dict:
    """The peer comparison, one row a ratio (`harness.ratio`): its `labels` columns, the ratio of
    the medians, its range repeat by repeat, the target and whether it is met."""
    rows = [[*(label(r) for label in labels.values()), fmt(r["median"], 2),
             f"{min(per):.2f}–{max(per):.2f}" if (per := r["per_repeat"]) else "–",
             r["target"] or "–", YES[r.get("met")]] for r in ratios]  # fmt: skip
    header = [*labels, "ratio of medians", "per-repeat range", "target", "met"]
    return table(header, rows, ["---"] * len(labels) + ["---:", "---", "---", "---"])


def verdict(ratios: list[dict], name: Callable[[dict], str], *more: str) -> dict:
    """How many of the ratios with a target meet it, and which do not."""
    judged = [r for r in ratios if r.get("met") is not None]
    missed = [f"{name(r)} ({r['median']:.2f})" for r in judged if not r["met"]]
    said = f"{len(judged) - len(missed)} of {len(judged)} targets met"
    return text(said + (f"; not met: {'; '.join(missed)}." if missed else "."), *more)


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
