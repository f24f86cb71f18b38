"""What the suite costs, per test: setup + call + teardown, written to a file at the end of every
run and summed up in the terminal (the slowest tests, each module's share, each worker's).

Loaded by tests/conftest.py. Under pytest-xdist it runs in the controller, which sees every
worker's reports, so the file covers the whole run. The file is JSON lines, one test a line:
`{"test": nodeid, "module": file, "seconds": s, "cpu": s, "worker": gwN, "outcome": ...}` (cpu:
the CPU seconds of the test's process and the processes it waited for; far below seconds, the
test waits on what it does not count: a SLURM job, a daemon, a sleep) and a last line
`{"total": wall seconds, "tests": n, "workers": {gwN: busy seconds}}`. Render it as the table in
docs/testing.md with

    .venv/bin/python -m tests.support.durations [FILE]      # FILE: .cache/test-durations.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# where `make test` leaves it; SELFPLAY_TEST_DURATIONS=<file> puts it elsewhere
DEFAULT_FILE = REPO_ROOT / ".cache" / "test-durations.jsonl"
SHOWN = 25  # the slowest tests printed at the end of a run
# A test that takes longer than this says why in its docstring, in a sentence that begins with
# WHY (the end of a run lists those that do not; a list, not a failure: seconds vary by machine)
LONG_S = 60.0
WHY = "Slow:"
# The fast tier (`make test-fast`: the Makefile's FAST) is the tests marked none of these; one of
# them over FAST_S is listed at the end of a run, to be marked slow or made cheaper: the tier's
# budget (3 minutes on 2 cores) holds only tests of a few seconds
SLOW_MARKERS = ("slow", "distributed", "slurm")
FAST_S = 5.0


def durations_file() -> Path:
    return Path(os.environ.get("SELFPLAY_TEST_DURATIONS") or DEFAULT_FILE)


class Durations:
    """Sums each test's phases as their reports arrive; writes and prints them at the end."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = defaultdict(float)
        self.worker: dict[str, str] = {}
        self.outcome: dict[str, str] = {}
        self.says_why: set[str] = set()
        self.fast_tier: set[str] = set()
        self.cpu: dict[str, float] = defaultdict(float)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration
        properties = dict(report.user_properties)
        if properties.get("says_why_slow"):
            self.says_why.add(report.nodeid)
        if properties.get("fast_tier"):
            self.fast_tier.add(report.nodeid)
        if report.when == "teardown":
            self.cpu[report.nodeid] = properties.get("cpu_seconds", 0.0)
        node = getattr(report, "node", None)  # xdist's worker, on the controller
        self.worker[report.nodeid] = getattr(getattr(node, "gateway", None), "id", "main")
        if report.when == "call" or report.outcome != "passed":
            self.outcome[report.nodeid] = report.outcome

    def rows(self) -> list[dict]:
        return [
            {
                "test": test,
                "module": test.partition("::")[0],
                "seconds": round(seconds, 2),
                "cpu": round(self.cpu[test], 2),
                "worker": self.worker[test],
                "outcome": self.outcome.get(test, "passed"),
            }
            for test, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1])
        ]

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.seconds:
            return
        wall = time.monotonic() - self.started
        rows = self.rows()
        busy: dict[str, float] = defaultdict(float)
        for row in rows:
            busy[row["worker"]] += row["seconds"]
        total = {"total": round(wall, 1), "tests": len(rows), "workers": dict(sorted(busy.items()))}
        path = durations_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(json.dumps(r) + "\n" for r in [*rows, total]))
        partial.replace(path)
        write = terminalreporter.write_line
        terminalreporter.section(
            f"the {min(SHOWN, len(rows))} slowest tests (setup + call + teardown)"
        )
        for row in rows[:SHOWN]:
            write(f"{row['seconds']:8.1f} s  {row['worker']:>4}  {row['test']}")
        workers = ", ".join(f"{w} {s:,.0f} s" for w, s in total["workers"].items())
        shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        write(
            f"{len(rows)} tests in {wall:,.0f} s of wall time; busy: {workers}; "
            f"every test's time: {shown}"
        )
        unsaid = [
            r["test"] for r in rows if r["seconds"] > LONG_S and r["test"] not in self.says_why
        ]
        if unsaid:
            write(f"over {LONG_S:.0f} s with no '{WHY} ...' in the docstring: {', '.join(unsaid)}")
        heavy = [r["test"] for r in rows if r["seconds"] > FAST_S and r["test"] in self.fast_tier]
        if heavy:
            write(f"in the fast tier and over {FAST_S:.0f} s (mark slow, or make cheaper): "
                  f"{', '.join(heavy)}")  # fmt: skip


CPU_AT_START = pytest.StashKey[float]()


def cpu_seconds() -> float:
    """This process's CPU seconds and those of the children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@pytest.hookimpl(tryfirst=True)  # before the fixtures' set-up, which the test's cost includes
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[CPU_AT_START] = cpu_seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Each report says whether its test's docstring gives the reason it is slow (WHY), and the
    teardown's what the test cost in CPU: the controller of a run on workers sees the reports,
    not the tests."""
    outcome = yield
    report = outcome.get_result()
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    if WHY in doc:
        report.user_properties.append(("says_why_slow", True))
    if call.when == "call" and not any(item.get_closest_marker(m) for m in SLOW_MARKERS):
        report.user_properties.append(("fast_tier", True))
    if call.when == "teardown" and CPU_AT_START in item.stash:
        report.user_properties.append(("cpu_seconds", cpu_seconds() - item.stash[CPU_AT_START]))


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller (or a run without workers)
        config.pluginmanager.register(Durations(), "selfplay-durations")


def table(path: Path, modules_shown: int = 15) -> str:
    """The file as docs/testing.md shows it: the modules with the most seconds (the rest summed
    in one row), then the SHOWN slowest tests."""
    *rows, _ = [json.loads(line) for line in path.read_text().splitlines() if line]
    modules: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        modules[row["module"]].append(row["seconds"])
    ranked = sorted(modules.items(), key=lambda kv: -sum(kv[1]))
    out = ["| module | tests | seconds | slowest test |", "| --- | ---: | ---: | ---: |"]
    for module, seconds in ranked[:modules_shown]:
        out.append(f"| `{module}` | {len(seconds)} | {sum(seconds):,.0f} | {max(seconds):,.0f} |")
    rest = [s for _, seconds in ranked[modules_shown:] for s in seconds]
    if rest:
        label = f"the other {len(ranked) - modules_shown} modules"
        out.append(f"| {label} | {len(rest)} | {sum(rest):,.0f} | {max(rest):,.0f} |")
    out += ["", "| seconds | test |", "| ---: | --- |"]
    out += [f"| {r['seconds']:.0f} | `{r['test'].split('@')[0]}` |" for r in rows[:SHOWN]]
    return "\n".join(out)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else durations_file()))
