"""Sharding (src/core/chunks.py): a stage's rows split across SLURM array tasks, from the config
or from SLURM's environment. Offline."""

from pathlib import Path

import pytest

from src.core.chunks import take_shard
from src.core.errors import StageError
from src.generation.prompts import Prompt, load_prompts
from src.stages.common import resolve_shard

ITER1 = Path(__file__).resolve().parents[2] / "data" / "prompts" / "iter1.jsonl"


@pytest.mark.parametrize("total", [40, 7, 1])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 5])
def test_shards_partition_the_prompts_evenly_and_stably(total, num_shards):
    prompts = load_prompts(str(ITER1), id_column="prompt_id").prompts[:total]
    shards = [take_shard(prompts, s, num_shards) for s in range(num_shards)]
    ids = [[p.prompt_id for p in shard] for shard in shards]
    flat = [i for shard in ids for i in shard]
    assert sorted(flat) == sorted(p.prompt_id for p in prompts)  # covering
    assert len(flat) == len(set(flat))  # disjoint
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    assert shards == [take_shard(prompts, s, num_shards) for s in range(num_shards)]
    for shard in shards:  # each shard keeps the loaded order
        positions = [prompts.index(p) for p in shard]
        assert positions == sorted(positions)


def test_shard_membership_is_round_robin_on_the_loaded_order():
    loaded = load_prompts(str(ITER1), id_column="prompt_id")
    assert [p.prompt_id for p in take_shard(loaded, 1, 4)][:3] == ["p0002", "p0006", "p0010"]
    # more prompts later (a larger max_prompts) never moves an earlier prompt to another shard
    small = take_shard(loaded.prompts[:10], 2, 3)
    assert take_shard(loaded.prompts, 2, 3)[: len(small)] == small


@pytest.mark.parametrize(("shard", "num_shards"), [(3, 3), (-1, 2), (0, 0)])
def test_shard_prompts_rejects_out_of_range(shard, num_shards):
    with pytest.raises(StageError, match="out of range"):
        take_shard([Prompt("a", "x")], shard, num_shards)


def test_resolve_shard_names_the_section_it_is_for():
    with pytest.raises(StageError, match=r"ranker\.num_shards"):
        resolve_shard(None, None, env={"SLURM_ARRAY_TASK_ID": "1"}, section="ranker")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 1)),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, (3, 8)),
        (
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "8",
            },
            (4, 8),
        ),
        (  # --array=0-14:2
            {
                "SLURM_ARRAY_TASK_ID": "6",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_COUNT": "8",
            },
            (3, 8),
        ),
        ({"SLURM_JOB_ID": "123", "SLURM_ARRAY_TASK_COUNT": "8"}, (0, 1)),  # not an array task
    ],
)
def test_resolve_shard_from_the_environment(env, expected):
    assert resolve_shard(None, None, env=env) == expected


def test_explicit_shard_values_win_over_slurm():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert resolve_shard(1, 2, env=env) == (1, 2)
    assert resolve_shard(5, None, env=env) == (5, 8)  # each value on its own
    assert resolve_shard(None, 4, env=env) == (3, 4)
    assert resolve_shard(2, 3, env={}) == (2, 3)


def test_resolve_shard_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_STEP", raising=False)
    assert resolve_shard(None, None) == (2, 4)


@pytest.mark.parametrize(
    ("shard", "num_shards", "env", "pattern"),
    [
        (2, 2, {}, r"shard 2 is out of range for num_shards=2"),
        (-1, 2, {}, r"shard -1 is out of range"),
        (0, 0, {}, r"num_shards must be >= 1"),
        # ids 1..4 without MIN: shard 4 of 4, and the message says where it came from
        (
            None,
            None,
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"},
            r"shard 4 .*num_shards=4 \(from SLURM_ARRAY_TASK_COUNT=4; SLURM_ARRAY_TASK_ID=4, "
            r"SLURM_ARRAY_TASK_MIN=0\).*generation\.shard",
        ),
        # a list of ids that is not a range: --array=0,2,5 has 3 tasks
        (
            None,
            None,
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_COUNT": "3",
            },
            r"shard 5 is out of range for num_shards=3",
        ),
        (None, None, {"SLURM_ARRAY_TASK_ID": "1"}, r"SLURM_ARRAY_TASK_COUNT is not"),
        (None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, r"'x' is not"),
    ],
)
def test_resolve_shard_rejects_what_would_leave_prompts_out(shard, num_shards, env, pattern):
    with pytest.raises(StageError, match=pattern):
        resolve_shard(shard, num_shards, env=env)


def test_the_progress_line_says_done_in_flight_rate_and_time_left(monkeypatch):
    """Prompts done (kept from an earlier run included) of the shard's, the samples in flight
    only where a stream reports them, the rate over the last minute, the time left at this
    run's own pace; the last line says how long it took."""
    from src.core import progress

    clock = iter([0.0, 30.0, 90.0, 100.0, 100.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    line = progress.ProgressLine("[generate] shard000-of-001", total=100, unit="tokens")  # t = 0
    line.reused(20)
    line.update(done=10, work=3000.0, in_flight=40)  # t = 30
    line.update(done=40, work=9000.0)  # t = 90: the window starts at t = 30
    assert line.line(100.0) == (
        "[generate] shard000-of-001: 60/100 prompts (60%), 40 samples in flight, "
        "86 tokens/s, 0:01:40 left"
    )  # (9000 - 3000) / (100 - 30) tokens/s; 40 prompts in 100 s, 40 left
    line.in_flight = None
    assert line.line(100.0, final=True).endswith(
        "60/100 prompts (60%), 86 tokens/s, done in 0:01:40"
    )


def test_the_progress_line_speaks_the_stages_words():
    """A stage names what it counts: the eval's answers count instructions, not prompts."""
    from src.core.progress import ProgressLine

    line = ProgressLine("[eval base] shard000-of-001", 8, "tokens", "instructions", "answers")
    line.update(done=2, work=0.0, in_flight=3)
    text = line.line(line.started)
    assert "2/8 instructions (25%), 3 answers in flight" in text and "prompts" not in text
