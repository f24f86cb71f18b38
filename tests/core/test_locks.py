"""One writer per stage folder (src/core/locks.py), with real processes: a holder in a process of
its own, refused writers, shards side by side and never of two shard counts at once, a holder
killed with -9, a redo that takes every lock it needs before it deletes anything, a lock file
deleted under its holder; then real `python -m src.main` commands on one run directory."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from src.config import REPO_ROOT, Stage
from src.core import locks
from src.core.chunks import Shard, chunk_by_chunk, run_chunks
from src.core.locks import Locked, is_held, lock_path, writing
from src.schedule.run import rewriting
from tests.support.helpers import SMALL, compose_cfg, holder, one_line_failure, run_main


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


def suspended_once(proc: subprocess.Popen, ready, what: str) -> None:
    """Stop (SIGSTOP) `proc` once `ready()` holds; fail naming `what` if it ends first."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ready():
            psutil.Process(proc.pid).suspend()
            return
        time.sleep(0.01)
    pytest.fail(f"the process ended before {what} (exit {proc.poll()})")


def stopped_after_a_chunk(root: Path, proc: subprocess.Popen) -> None:
    """Stop the stage once it has sealed a chunk: it holds its lock from then on."""
    suspended_once(proc, lambda: any(root.rglob("chunk*.sealed.json")), "a chunk was sealed")


@pytest.mark.slow
def test_a_second_generate_on_the_same_run_directory_stops_at_once_and_mixes_nothing(tmp_path):
    """The first writer stopped mid-stage; a second with another temperature, a redo of the
    stage and a writer of 3 shards are refused with one line naming it (exit 3); shard 1 of 2
    of the same stage may run beside shard 0; the first killed -9, a new writer takes over at
    once and ends with the rows of an uninterrupted run, every one sampled at the first
    writer's temperature."""
    first = start_main(tmp_path / "runs", *GENERATE, "generation.num_shards=2")
    try:
        stopped_after_a_chunk(tmp_path / "runs", first)
        for other in ("generation.temperature=0.9", "pipeline.redo=[generate]"):
            second = run_main(tmp_path / "runs", *GENERATE, "generation.num_shards=2", other)
            line = one_line_failure(second, 3)
            assert line.startswith("error: ") and f"is being written by pid {first.pid} " in line
            assert "stage=generate" in line, "the holder's command"
        # another shard count splits the prompts otherwise: its shards would overlap the first's
        thirds = run_main(tmp_path / "runs", *GENERATE, "generation.num_shards=3")
        line = one_line_failure(thirds, 3)
        assert f"is being written in 2 shards by pid {first.pid} " in line
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


def test_writers_of_two_shard_counts_never_write_one_stage_at_once(stage_dir):
    """Shards of 2 and shards of 3 split the prompts otherwise: while a shard of one count is
    written, a shard of the other is refused, naming its holder; one of the same count is not."""
    first = holder(stage_dir, "shard000-of-002")
    try:
        for shard in ("shard001-of-003", "shard000-of-003"):
            message = refusal(stage_dir, shard)
            assert message.startswith(
                f"{stage_dir} is being written in 2 shards by pid {first.pid} "
            )
            assert "generate-shard000-of-002.lock" in message and "\n" not in message
        with writing(stage_dir, "python -m src.main shard 1", "shard001-of-002"):
            pass
    finally:
        first.kill()
        first.wait()
    with writing(stage_dir, "python -m src.main thirds", "shard002-of-003"):
        message = refusal(stage_dir, "shard000-of-002")  # and the other way round
        assert f"is being written in 3 shards by pid {os.getpid()} " in message


def test_a_rewrite_takes_all_its_locks_before_anything_or_none(tmp_path):
    """A redo holds every stage it rewrites and every stage that reads them, all taken before it
    starts: one held by another process and the rewrite is refused naming it, holding none."""
    iteration = tmp_path / "iter1"
    rank, pairs, train = (iteration / s for s in ("rank", "pairs", "train"))
    proc = holder(train)
    try:
        with pytest.raises(Locked) as refused, locks.rewriting([rank, pairs, train]):
            pytest.fail("a rewrite got in while a stage that reads it runs")
        assert str(refused.value).startswith(f"{train} is being written by pid {proc.pid} ")
        assert not any(is_held(lock_path(d)) for d in (rank, pairs)), "all or none"
        with writing(rank, "python -m src.main rank"):
            pass
    finally:
        proc.kill()
        proc.wait()
    with locks.rewriting([rank, pairs, train]):
        with writing(pairs), writing(rank, shard="shard000-of-001"):  # its own: taken again
            pass
        assert all(is_held(lock_path(d)) for d in (rank, pairs, train))


def test_a_redo_locks_the_later_stages_and_after_the_training_the_next_iteration(
    tmp_path, monkeypatch
):
    """What a redo of iteration 1 takes (src/schedule/run.py): its stage and every later one of the
    iteration; a redo of the training also iteration 2's stages, which start from its
    checkpoint. A shard of iteration 2's generate running refuses the one, not the other."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path))
    cfg = compose_cfg(*SMALL, "stage=all", "iter=1")
    following = Path(cfg.run.dir) / "iter2" / "generate"
    proc = holder(following, "shard000-of-001")
    try:
        with rewriting(cfg, [Stage.pairs], "python -m src.main stage=pairs"):
            taken = [d.name for d in Path(cfg.run.iter_dir).iterdir() if d.name != ".locks"]
            held = [s for s in Stage if s != Stage.all and is_held(lock_path(cfg.stage_dir(s)))]
        assert taken == [] and held == [Stage.pairs, Stage.train, Stage.eval]
        with (
            pytest.raises(Locked) as refused,
            rewriting(cfg, [Stage.train], "python -m src.main stage=train"),
        ):
            pytest.fail("a redo of the training got in while iteration 2 reads its checkpoint")
        assert str(refused.value).startswith(f"{following} is being written by pid {proc.pid} ")
    finally:
        proc.kill()
        proc.wait()


def test_a_holder_whose_lock_file_is_deleted_stops_before_it_writes_a_chunk(stage_dir):
    """`rm -r .locks` under a holder: a new writer locks a new file at the same path, and the
    holder, checking before each chunk, stops with one line (`LockLost`, exit 3) writing none."""
    shard = Shard(stage_dir, "responses", 0, 1)
    rows = chunk_by_chunk(lambda chunk: [{"prompt_id": p} for p in chunk])
    with writing(stage_dir, "python -m src.main first", shard.name):
        locks.require_held()
        shutil.rmtree(stage_dir.parent / locks.LOCKS)
        second = holder(stage_dir, shard.name)  # the lock is a new file: nothing refuses it
        try:
            with pytest.raises(locks.LockLost) as lost:
                run_chunks(shard, ["a", "b", "c"], 1, rows, "identity")
        finally:
            second.kill()
            second.wait()
    message = str(lost.value)
    assert message.startswith(f"{lock_path(stage_dir)} was deleted while this process held it, ")
    assert "\n" not in message and lost.value.exit_code == 3
    assert not list(stage_dir.rglob("chunk*")), "a chunk written beside the other writer"
    assert locks.HELD == {}


def test_a_lock_file_replaced_between_its_open_and_its_lock_is_locked_anew(stage_dir, monkeypatch):
    """The file at the lock's path replaced while a writer opens it (another process clearing
    "stale" locks): the writer locks the file the path names, not the one it opened first."""
    flock, replaced = fcntl.flock, []

    def replace_first(fd, operation):
        if not replaced:
            replaced.append(True)
            fresh = lock_path(stage_dir).with_suffix(".new")
            fresh.write_text("")
            os.replace(fresh, lock_path(stage_dir))
        return flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", replace_first)
    with writing(stage_dir, "python -m src.main first"):
        monkeypatch.setattr(fcntl, "flock", flock)
        assert replaced and is_held(lock_path(stage_dir)), "it locks a file no path names"
        locks.require_held()


def test_a_lock_a_full_disk_cannot_sign_is_named(stage_dir, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write says it: of no file

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError) as refused, writing(stage_dir, "python -m src.main first"):
        pytest.fail("a lock held unsigned")
    assert refused.value.errno == errno.ENOSPC
    assert refused.value.filename == str(lock_path(stage_dir))
    assert locks.HELD == {}


def file_states(*folders: Path) -> dict[str, tuple[int, str]]:
    """Each file under `folders`: its mtime (ns) and sha256."""
    return {
        str(p): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def holding(proc: subprocess.Popen, path: Path) -> None:
    """Stop `proc` once it holds the lock `path`."""
    suspended_once(proc, lambda: path.exists() and is_held(path), f"it held {path}")


@pytest.mark.slow
def test_a_redo_stops_before_rewriting_what_a_running_train_reads(tmp_path):
    """A train of iteration 1 running, a redo of its ranking under another config: the redo
    takes every lock it needs first, and stops at once on train's (exit 3, one line naming it),
    the ranked rows and pairs the train reads left as they were."""
    runs = tmp_path / "runs"
    for stage in ("generate", "rank", "pairs"):
        made = run_main(runs, *SMALL, f"stage={stage}")
        assert made.returncode == 0, made.stderr[-2000:]
    iteration = next(runs.rglob("iter1"))
    train = start_main(runs, *SMALL, "stage=train")
    try:
        holding(train, lock_path(iteration / "train"))
        before = file_states(*(iteration / s for s in ("generate", "rank", "pairs")))
        redo = run_main(runs, *SMALL, "stage=all", "pipeline.redo=[rank]", "ranker.self_term=false")
        line = one_line_failure(redo, 3)
        assert line.startswith(f"error: {iteration / 'train'} is being written by pid {train.pid} ")
        assert "stage=train" in line, "the holder's command"
        assert file_states(*(iteration / s for s in ("generate", "rank", "pairs"))) == before
        assert "redoing" not in redo.stderr
    finally:
        train.kill()
        train.communicate()


def claimed_by_another(root: Path, first: str) -> None:
    """Wait until another writer has claimed the shard whose identity.txt said `first`."""
    marker, deadline = next(root.rglob("identity.txt")), time.time() + 300
    while marker.read_text() == first:
        assert time.time() < deadline, "the second writer never claimed the shard"
        time.sleep(0.01)


@pytest.mark.slow
def test_deleting_the_locks_of_a_running_stage_never_seals_rows_of_two_writers(tmp_path):
    """The first writer stopped after claiming its shard; `.locks` deleted; a second writer
    with another temperature comes in and claims the shard. The first, let go, stops before its
    first chunk with one line (exit 3); the second ends with the rows of an uninterrupted run at
    its temperature, and a re-run under the first's config is refused, not skipped."""
    runs = tmp_path / "runs"
    first, second = start_main(runs, *GENERATE), None
    try:
        deadline = time.time() + 300
        while not any(runs.rglob("identity.txt")):
            assert time.time() < deadline and first.poll() is None, "the shard was never claimed"
            time.sleep(0.005)
        psutil.Process(first.pid).suspend()
        marker = next(runs.rglob("identity.txt"))
        claimed = marker.read_text()
        assert not any(runs.rglob("chunk*")), "stopped too late: a chunk is already written"
        shutil.rmtree(marker.parents[2] / locks.LOCKS)
        second = start_main(runs, *GENERATE, "generation.temperature=0.9")
        claimed_by_another(runs, claimed)
        psutil.Process(first.pid).resume()
        _, err = first.communicate(timeout=300)
        _, second_err = second.communicate(timeout=300)
    finally:
        for proc in filter(None, (first, second)):
            proc.kill()
            proc.communicate()
    assert first.returncode == 3, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "was deleted while this process held it" in last
    assert second.returncode == 0, second_err[-2000:]

    alone = run_main(tmp_path / "alone", *GENERATE, "generation.temperature=0.9")
    assert alone.returncode == 0, alone.stderr[-2000:]
    name = "responses-shard000-of-001.jsonl"
    assert next(runs.rglob(name)).read_text() == next((tmp_path / "alone").rglob(name)).read_text()
    again = run_main(runs, *GENERATE)
    assert "different configuration" in one_line_failure(again, 1)


def test_the_writers_of_a_stage_are_seen_without_taking_a_lock(stage_dir, monkeypatch):
    """What a status reads: the whole stage's holder and each shard's, by probing no lock (a
    probe would refuse a writer trying the lock in that instant); a shared hold is a shard's
    writer's too and unsigned, so it counts through the shard's own lock."""
    assert locks.writers(stage_dir) == [], "nothing is locked, or created, where nothing ran"
    assert not stage_dir.parent.exists()

    def no_lock(*args):
        raise AssertionError("a lock was taken to look")

    whole = holder(stage_dir)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(locks.fcntl, "flock", no_lock)
            assert locks.writers(stage_dir) == [lock_path(stage_dir)]
    finally:
        whole.kill()
        whole.wait()
    shards = [holder(stage_dir, f"shard00{i}-of-002") for i in (0, 1)]
    try:
        with monkeypatch.context() as patched:
            patched.setattr(locks.fcntl, "flock", no_lock)
            assert locks.writers(stage_dir) == [
                lock_path(stage_dir, f"shard00{i}-of-002") for i in (0, 1)
            ]
    finally:
        for proc in shards:
            proc.kill()
            proc.wait()
    assert locks.writers(stage_dir) == []


def test_a_writer_whose_lock_is_a_whole_file_byte_range_lock_is_seen(stage_dir):
    """The form NFS gives a `flock` (a byte-range lock on the whole file, of any client), which
    /proc/locks of this machine would not list for another machine's writer."""
    path = lock_path(stage_dir)
    path.parent.mkdir(parents=True)
    path.touch()
    hold = "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); fcntl.lockf(f, fcntl.LOCK_EX); "
    proc = subprocess.Popen(
        [sys.executable, "-c", hold + "print('held', flush=True); time.sleep(600)", str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        assert locks.writers(stage_dir) == [path]
    finally:
        proc.kill()
        proc.wait()
    assert locks.writers(stage_dir) == []
