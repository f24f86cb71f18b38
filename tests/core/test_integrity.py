"""What the stages trust: sealed chunks and rows files, file modes, no NaN in the data path."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from src.core.artifacts import atomic_write_json, atomic_write_text, umask
from src.core.chunks import Shard, chunk_by_chunk, finish_shard, run_chunks, seal_of
from src.core.errors import Redo, StageError
from src.core.records import Finished, write_record
from src.core.rows import finished_rows
from tests.support.helpers import compose_cfg, run_recorded

ITEMS = [f"q{i:02d}" for i in range(10)]  # chunks of 3: [0-2] [3-5] [6-8] [9]


def process(made: list[list[str]]):
    def rows_of(chunk: list[str]) -> list[dict]:
        made.append(chunk)
        return [
            {"prompt_id": q, "text": f"answer to {q}\u2028with a line separator"} for q in chunk
        ]

    return rows_of


def run_shard(stage_dir, made: list[list[str]]) -> bytes:
    shard = Shard(stage_dir, "rows", 0, 1)
    tally = run_chunks(shard, ITEMS, 3, chunk_by_chunk(process(made)), "identity")
    write_record(stage_dir, finish_shard(shard, tally.chunks, {"seconds": 0.0}, "fingerprint"))
    return shard.output.read_bytes()


def damage_empty(path):
    path.write_bytes(b"")


def damage_truncated(path):
    path.write_bytes(path.read_bytes()[:-20])


def damage_spliced(path):  # a valid line of another chunk in place of one of its own
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[0] + lines[2])


def damage_extra_row(path):
    path.write_bytes(path.read_bytes() + b'{"prompt_id": "q99"}\n')


def damage_unsealed(path):  # killed between the chunk's write and its seal's
    seal_of(path).unlink()


@pytest.mark.parametrize(
    "damage",
    [damage_empty, damage_truncated, damage_spliced, damage_extra_row, damage_unsealed],
)
def test_a_damaged_chunk_is_made_again_and_the_output_is_byte_identical(tmp_path, damage, capsys):
    clean = run_shard(tmp_path / "clean", [])

    stage_dir = tmp_path / "damaged"
    run_shard(stage_dir, [])
    (stage_dir / "done.json").unlink()
    (stage_dir / "rows-shard000-of-001.jsonl").unlink()
    chunk = stage_dir / "shard000-of-001" / "chunk00001.jsonl"
    damage(chunk)
    made: list[list[str]] = []
    assert run_shard(stage_dir, made) == clean
    assert made == [ITEMS[3:6]], "only the damaged chunk is made again"
    assert f"[chunks] {chunk}: " in capsys.readouterr().err, "the console says which and why"


def test_a_chunk_damaged_while_later_ones_are_made_never_reaches_the_rows_file(tmp_path):
    """A stream writes chunks while another hand truncates one it already sealed: finishing the
    shard refuses with one line naming the chunk, writes no rows file; the re-run makes that
    chunk again and ends with the clean rows."""
    clean = run_shard(tmp_path / "clean", [])
    shard = Shard(tmp_path / "damaged", "rows", 0, 1)
    first = shard.work / "chunk00000.jsonl"
    rows_of = process([])

    def damaging(chunk: list[str]) -> list[dict]:
        if first.exists():
            first.write_bytes(first.read_bytes()[:-20])
        return rows_of(chunk)

    tally = run_chunks(shard, ITEMS, 3, chunk_by_chunk(damaging), "identity")
    with pytest.raises(StageError, match=r"chunk00000\.jsonl changed after it was written"):
        finish_shard(shard, tally.chunks, {"seconds": 0.0}, "fingerprint")
    assert not shard.output.exists()
    made: list[list[str]] = []
    assert run_shard(shard.stage_dir, made) == clean
    assert made == [ITEMS[:3]]


def test_shards_finishing_at_the_same_time_leave_one_complete_record(tmp_path):
    """Two array tasks: shard 1 finishes while shard 0 is still writing its rows file (present,
    not yet sealed). Shard 1 must leave the stage unfinished, not read half of shard 0; shard 0,
    finishing last, hands back the record over both."""
    shards = [Shard(tmp_path, "rows", i, 2) for i in range(2)]
    tallies = [
        run_chunks(s, ITEMS[s.index :: 2], 3, chunk_by_chunk(process([])), "identity")
        for s in shards
    ]
    shards[0].output.write_text("")  # its write begun: no seal, no counts yet
    assert finish_shard(shards[1], tallies[1].chunks, {"seconds": 1.0}, "fingerprint") is None
    finished = finish_shard(shards[0], tallies[0].chunks, {"seconds": 2.0}, "fingerprint")
    assert finished.counts == {"seconds": 3.0, "shards": 2}
    assert set(finished.outputs) == {s.output.name for s in shards}
    write_record(tmp_path, finished)
    rows = finished_rows(tmp_path, "rows", StageError, "stage=x")
    assert sorted(row["prompt_id"] for _, row in rows) == ITEMS


@pytest.mark.parametrize(("folder", "fix"), [("iter2/rank", Redo("rank", 2)), ("cache", None)])
def test_a_rows_file_that_differs_from_its_record_is_never_read(tmp_path, folder, fix):
    """Refused with what makes the stage again, read from the folder's place in a run (a cache
    outside that layout: deleting it is the remedy, said in the message)."""
    stage_dir = tmp_path / folder
    run_shard(stage_dir, [])
    output = stage_dir / "rows-shard000-of-001.jsonl"
    assert len(list(finished_rows(stage_dir, "rows", StageError, "stage=x"))) == 10
    output.write_bytes(output.read_bytes()[:-30])
    with pytest.raises(
        StageError, match=r"rows-shard000-of-001\.jsonl is not the file .*done\.json"
    ) as refused:
        finished_rows(stage_dir, "rows", StageError, "stage=x")
    assert refused.value.fix == fix
    assert ("redo the stage" in str(refused.value)) == (fix is not None)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_files_get_the_mode_an_ordinary_file_gets(tmp_path, mask, mode):
    previous = os.umask(mask)
    umask.cache_clear()  # the process's umask is read once; this test changes it
    try:
        written = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
        umask.cache_clear()
    assert stat.S_IMODE(written.stat().st_mode) == mode


def test_json_files_never_hold_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "metrics.json", {"mean": float("nan")})
    assert not (tmp_path / "metrics.json").exists()


def test_the_pairs_stage_stops_on_a_nan_score_naming_the_row(tmp_path, monkeypatch):
    from src.stages import pairs

    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))
    cfg = compose_cfg("model=tiny-mistral", "logger=none", "method.K=3", "stage=pairs")
    P = np.full((3, 3), 0.5).tolist()
    row = {
        "prompt_id": "q1",
        "prompt": "a question",
        "responses": ["a", "bb", "ccc"],
        "sources": ["policy"] * 3,
        "scores": [0.5, float("nan"), -0.5],
        "win_matrix": P,
        "win_rate": [0.5] * 3,
    }
    rank_dir = cfg.stage_dir("rank")
    atomic_write_text(rank_dir / "ranked-shard000-of-001.jsonl", json.dumps(row) + "\n")
    write_record(rank_dir, Finished("test", {"shards": 1}, {}))
    with pytest.raises(
        StageError, match=r"ranked-shard000-of-001\.jsonl:1: prompt_id 'q1': .*NaN"
    ) as stopped:
        pairs.run(cfg)
    assert (
        stopped.value.overrides(str(cfg.stage)) == "stage=rank iter=1 pipeline.redo=[rank]"
    )  # then pairs again
    assert not cfg.stage_dir("pairs").exists(), "nothing a re-run would trust"


def test_a_pairs_file_that_differs_from_its_record_is_never_trained_on(
    tmp_path, monkeypatch, tiny_dir
):
    from src.stages import common, train

    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))
    cfg = compose_cfg("model=tiny-mistral", "logger=none", "method.K=3", "stage=train")
    row = {
        "prompt_id": "q1",
        "prompt": "a question",
        "responses": ["a", "bb", "ccc"],
        "sources": ["policy"] * 3,
        "scores": [0.5, 0.1, -0.5],
        "win_matrix": np.full((3, 3), 0.5).tolist(),
        "win_rate": [0.5] * 3,
    }
    rank_dir = cfg.stage_dir("rank")
    atomic_write_text(rank_dir / "ranked-shard000-of-001.jsonl", json.dumps(row) + "\n")
    write_record(rank_dir, Finished("test", {"shards": 1}, {}))
    run_recorded(cfg, "pairs")
    train.require_inputs(cfg)
    _, rows = common.read_pairs_rows(cfg)
    assert [r["prompt_id"] for r in rows] == ["q1"]

    parquet = cfg.stage_dir("pairs") / "pairs.parquet"
    parquet.write_bytes(parquet.read_bytes() + b"\0")  # still readable: only the seal tells
    with pytest.raises(StageError, match=r"pairs\.parquet is not the file .*done\.json") as refused:
        train.require_inputs(cfg)
    assert refused.value.overrides(str(cfg.stage)) == "stage=pairs iter=1 pipeline.redo=[pairs]"


def test_a_chunk_copied_over_another_with_its_seal_is_made_again(tmp_path, capsys):
    """The same identity, another place: the shard would hold one range twice, lose another."""
    clean = run_shard(tmp_path / "clean", [])
    stage_dir = tmp_path / "copied"
    run_shard(stage_dir, [])
    for made in ("done.json", "rows-shard000-of-001.jsonl"):
        (stage_dir / made).unlink()
    work = stage_dir / "shard000-of-001"
    for suffix in (".jsonl", ".sealed.json"):
        (work / f"chunk00001{suffix}").write_bytes((work / f"chunk00000{suffix}").read_bytes())
    made: list[list[str]] = []
    assert run_shard(stage_dir, made) == clean
    assert made == [ITEMS[3:6]]
    assert "made for another place (chunk 0)" in capsys.readouterr().err


def test_chunks_of_another_identity_are_refused_even_without_their_identity_file(tmp_path):
    from src.core.chunks import claim

    shard = Shard(tmp_path, "rows", 0, 1)
    claim(shard.work, "made at temperature 0.7", StageError, "rows of another config")
    run_chunks(shard, ITEMS[:6], 3, chunk_by_chunk(process([])), "made at temperature 0.7")
    (shard.work / "identity.txt").unlink()  # lost: the chunks' seals still say what made them
    with pytest.raises(StageError, match=r"rows of another config, as chunk00000\.sealed\.json"):
        claim(shard.work, "made at temperature 0.9", StageError, "rows of another config")
    claim(shard.work, "made at temperature 0.7", StageError, "rows of another config")
    assert (shard.work / "identity.txt").read_text() == "made at temperature 0.7\n"


def test_a_resume_continues_with_what_any_shards_kept_chunks_were_made_with(tmp_path, capsys):
    """What changes rows by float rounding only (a judge's batch size) is no part of the
    identity; a resume asked for another value goes on with the kept chunks' own, said in one
    line, so that the stage's rows are one run's."""
    from src.core.chunks import continued

    first, second = Shard(tmp_path, "rows", 0, 2), Shard(tmp_path, "rows", 1, 2)
    made_at_1 = {"x.batch_size": 1, "x.attention": "eager"}
    run_chunks(first, ITEMS[:6], 3, chunk_by_chunk(process([])), "identity", made_with=made_at_1)
    assert (
        json.loads(seal_of(first.work / "chunk00001.jsonl").read_text())["made_with"] == made_at_1
    )
    asked = {"x.batch_size": 4, "x.attention": "eager"}
    assert continued(second, "identity", asked, "x") == made_at_1  # another shard's chunks too
    assert capsys.readouterr().err.splitlines() == [
        "[x] x.batch_size=4 asked; the kept rows were made at 1: continuing at 1 so that the rows "
        "are one run's"
    ]
    # chunks of another identity or another shard count, or none: as asked, silently
    assert continued(first, "another identity", asked, "x") == asked
    assert continued(Shard(tmp_path, "rows", 0, 3), "identity", asked, "x") == asked
    assert continued(Shard(tmp_path / "new", "rows", 0, 2), "identity", asked, "x") == asked
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("mask", "files", "dirs"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_a_folder_saved_private_by_a_library_is_given_the_umasks_modes(tmp_path, mask, files, dirs):
    from src.core.artifacts import share

    (tmp_path / "model" / "sub").mkdir(parents=True, mode=0o700)
    for name in ("model/model.safetensors", "model/sub/rng_state_1.pth"):
        (tmp_path / name).write_bytes(b"x")
        (tmp_path / name).chmod(0o600)  # as safetensors writes it, through a private temp file
    previous = os.umask(mask)
    umask.cache_clear()
    try:
        share(tmp_path / "model")
    finally:
        os.umask(previous)
        umask.cache_clear()
    for path in (tmp_path / "model").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (dirs if path.is_dir() else files), path
