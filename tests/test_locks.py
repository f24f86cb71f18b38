"""One writer per stage folder (src/core/locks.py), with real processes: a holder in a process of
its own, refused writers, shards side by side, a holder killed with -9; then two real
`python -m src.main stage=generate` on one run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from src.config import REPO_ROOT
from src.core.locks import Locked, lock_path, writing
from tests.helpers import SMALL, one_line_failure, run_main

HOLD = """
import sys, time
from pathlib import Path
from src.core.locks import writing
shard = sys.argv[2] if sys.argv[2] != "-" else None
with writing(Path(sys.argv[1]), "python -m src.main holder", shard):
    print("held", flush=True)
    time.sleep(600)
"""


def holder(stage_dir: Path, shard: str | None = None) -> subprocess.Popen:
    """A process that holds `stage_dir` (or its `shard`) until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(stage_dir), shard or "-"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def stage_dir(tmp_path) -> Path:
    return tmp_path / "iter1" / "generate"


def refusal(stage_dir: Path, shard: str | None = None) -> str:
    with pytest.raises(Locked) as refused, writing(stage_dir, "python -m src.main second", shard):
        pytest.fail("a second writer got the lock")
    return str(refused.value)


def test_a_second_writer_of_a_stage_is_refused_naming_the_holder(stage_dir):
    proc = holder(stage_dir)
    try:
        message = refusal(stage_dir)
        assert message.startswith(f"{stage_dir} is being written by pid {proc.pid} on ")
        assert "`python -m src.main holder`" in message
        assert refusal(stage_dir, "shard000-of-002").startswith(f"{stage_dir} is being written")
    finally:
        proc.kill()
        proc.wait()
    signed = json.loads(lock_path(stage_dir).read_text())
    assert signed["pid"] == proc.pid and signed["command"] == "python -m src.main holder"


def test_shards_are_written_side_by_side_but_each_by_one_process(stage_dir):
    first = holder(stage_dir, "shard000-of-002")
    try:
        with writing(stage_dir, "python -m src.main shard 1", "shard001-of-002"):
            pass  # another shard: allowed, as a SLURM array needs
        message = refusal(stage_dir, "shard000-of-002")
        assert message.startswith(f"{stage_dir}/shard000-of-002 is being written by pid ")
        assert f"pid {first.pid} " in message
        # the whole stage (a redo would delete the folder) waits for no shard: refused, naming it
        whole = refusal(stage_dir)
        assert f"pid {first.pid} " in whole and "generate-shard000-of-002.lock" in whole
    finally:
        first.kill()
        first.wait()


def test_a_holder_killed_with_minus_9_leaves_nothing_that_stops_the_next_writer(stage_dir):
    proc = holder(stage_dir, "shard000-of-001")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with writing(stage_dir, "python -m src.main next", "shard000-of-001"):
        pass
    with writing(stage_dir, "python -m src.main next"):
        pass


# A generate stage on the tiny model, slow enough to be caught between two chunks
GENERATE = [
    "stage=generate",
    *SMALL,
    "data.max_prompts=40",
    "generation.chunk_size=2",
    "generation.max_new_tokens=24",
]


def start_main(root: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "SELFPLAY_RUNS": str(root)}
    command = [sys.executable, "-m", "src.main", *overrides]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)


def stopped_after_a_chunk(root: Path, proc: subprocess.Popen) -> None:
    """Stop (SIGSTOP) the stage once it has sealed a chunk: it holds its lock from then on."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(root.rglob("chunk*.sealed.json")):
            psutil.Process(proc.pid).suspend()
            return
        time.sleep(0.01)
    pytest.fail(f"the stage ended before a chunk was sealed (exit {proc.poll()})")


@pytest.mark.slow
def test_a_second_generate_on_the_same_run_directory_stops_at_once_and_mixes_nothing(tmp_path):
    """The first writer stopped mid-stage; a second with another temperature, and a redo of the
    stage, are refused with one line naming it (exit 3); shard 1 of 2 of the same stage may run
    beside shard 0; the first killed -9, a new writer takes over at once and ends with the rows
    of an uninterrupted run, every one sampled at the first writer's temperature."""
    first = start_main(tmp_path / "runs", *GENERATE, "generation.num_shards=2")
    try:
        stopped_after_a_chunk(tmp_path / "runs", first)
        for other in ("generation.temperature=0.9", "pipeline.redo=[generate]"):
            second = run_main(tmp_path / "runs", *GENERATE, "generation.num_shards=2", other)
            line = one_line_failure(second, 3)
            assert line.startswith("error: ") and f"is being written by pid {first.pid} " in line
            assert "stage=generate" in line, "the holder's command"
        beside = run_main(tmp_path / "runs", *GENERATE, "generation.num_shards=2",
                          "generation.shard=1")  # fmt: skip
        assert beside.returncode == 0, beside.stderr[-2000:]
    finally:
        first.kill()
        first.communicate()
    rest = run_main(tmp_path / "runs", *GENERATE, "generation.num_shards=2")
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert "rows kept from an earlier run" in rest.stderr

    for shard in (0, 1):
        alone = run_main(tmp_path / "alone", *GENERATE, "generation.num_shards=2",
                         f"generation.shard={shard}")  # fmt: skip
        assert alone.returncode == 0, alone.stderr[-2000:]
    for shard in ("000", "001"):
        name = f"responses-shard{shard}-of-002.jsonl"
        mixed, uninterrupted = (
            next((tmp_path / r).rglob(name)).read_text() for r in ("runs", "alone")
        )
        assert mixed == uninterrupted


def test_a_cache_reader_waits_for_the_writer_then_takes_over(stage_dir, capsys):
    """`wait=True` (the eval answers' cache, shared by the runs of a sweep): the second process
    waits, saying for whom, and writes once the first is gone."""
    proc, killed = holder(stage_dir), threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    threading.Timer(1.0, kill).start()
    with writing(stage_dir, "python -m src.main second", wait=True):
        assert killed.is_set(), "entered while the holder still held it"
    proc.wait()
    assert f"is being written by pid {proc.pid} " in capsys.readouterr().err
