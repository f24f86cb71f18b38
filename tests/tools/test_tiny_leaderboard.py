"""The tiny copies of the leaderboard's datasets (`src.tiny.leaderboard`): every dataset
repository the leaderboard's tasks read is there, whole, as the eval stage looks for it; written
once and kept while this module's rows stay the same, written again when its stamp is not theirs;
the tiny preset points data.leaderboard at them and `ensure_tiny_models` writes them before an
eval stage that runs the leaderboard, and only then."""

from __future__ import annotations

import errno
import os

import pytest

from src.core.artifacts import WRITTEN
from src.core.errors import EnvironmentFailure
from src.evaluation.leaderboard import V1, missing_datasets
from src.tiny import leaderboard
from src.tiny.on_demand import ensure_tiny_models
from tests.support.helpers import SMALL, compose_cfg


def test_the_copies_hold_every_dataset_the_leaderboard_reads_and_are_written_once(tmp_path):
    root = tmp_path / "leaderboard"
    assert leaderboard.ensure_datasets(root) == root
    assert missing_datasets(["leaderboard", *V1], root) == []
    stamp = root / WRITTEN
    readme = root / "allenai/ai2_arc/README.md"
    written = readme.stat().st_mtime_ns
    leaderboard.ensure_datasets(root)
    assert readme.stat().st_mtime_ns == written  # kept: the stamp is this module's
    # a write cut off before its stamp, or by other rows, is written again
    stamp.write_text("another version")
    readme.unlink()
    leaderboard.ensure_datasets(root)
    assert readme.is_file() and stamp.read_text() != "another version"


def test_the_tiny_preset_reads_them_and_an_eval_that_runs_the_leaderboard_writes_them(tmp_path):
    data = tmp_path / "benchmarks"
    cfg = compose_cfg(*SMALL, f"paths.tiny_benchmarks={data}", "eval.benchmarks=[leaderboard]")
    assert cfg.data.leaderboard == str(data / "leaderboard")
    ensure_tiny_models(cfg)  # no eval stage in this run: nothing written
    assert not data.exists()
    ensure_tiny_models(compose_cfg(*SMALL, f"paths.tiny_benchmarks={data}", "stage=eval"))
    assert not data.exists()  # an eval without the leaderboard
    evaluating = compose_cfg(
        *SMALL, f"paths.tiny_benchmarks={data}", "stage=eval", "eval.benchmarks=[leaderboard]"
    )
    ensure_tiny_models(evaluating)
    assert missing_datasets(["leaderboard", *V1], data / "leaderboard") == []
    assert not (data / "mt_bench").exists()  # the judged benchmarks' copies: not asked for


def test_both_tiny_data_commands_refuse_a_file_in_one_line(tmp_path, capsys):
    from src.tiny import benchmarks

    path = tmp_path / "a-file"
    path.write_text("kept\n")
    for command in (benchmarks.main, leaderboard.main):
        with pytest.raises(SystemExit) as ended:
            command([str(path)])
        assert ended.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith(f"{path} is a file: name a folder")
    assert path.read_text() == "kept\n"


def test_a_folder_they_cannot_be_written_to_is_named_by_its_key(tmp_path, monkeypatch):
    def read_only(folder, source, write):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))

    monkeypatch.setattr(leaderboard, "write_once", read_only)
    data = tmp_path / "benchmarks"
    evaluating = compose_cfg(
        *SMALL, f"paths.tiny_benchmarks={data}", "stage=eval", "eval.benchmarks=[leaderboard]"
    )
    with pytest.raises(EnvironmentFailure) as refused:
        ensure_tiny_models(evaluating)
    assert str(refused.value) == (
        f"{os.strerror(errno.EROFS)}: {data / 'leaderboard'}; the file system is read-only: "
        "point paths.tiny_benchmarks at a writable folder"
    )
