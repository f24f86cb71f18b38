"""The eval stage's W&B run summary (src/stages/report/tracking.py `finish`), read back from a real
offline run with wandb's own tooling: the benchmarks' figures under keys that carry the judge
(`mt_bench[gpt-4]`, `arena_hard[<judge>]` and its interval) and the Open LLM Leaderboard's as it
shows them (`leaderboard/<benchmark>`, `leaderboard/average`), beside metrics.json's numbers
flattened; and src.compare reads the same columns from that summary as from eval.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import ALPACA, ARENA_HARD, LEADERBOARD, MT_BENCH, compose_cfg
from tests.support.wandb_runs import ended_records

ALPACA_EVAL_2 = {"lc_win_rate": 0.41, "win_rate": 0.38, "standard_error": 0.012}
EVALUATION = ALPACA | {
    "alpaca_eval": ALPACA_EVAL_2,
    "mt_bench": MT_BENCH,
    "arena_hard": ARENA_HARD,
    "leaderboard": LEADERBOARD,
}


def summary_of_offline_run(tmp_path: Path, monkeypatch, metrics: dict) -> dict:
    """The summary of the eval stage's offline W&B run that `metrics` finished, as `wandb leet
    inspect` reads it from the run's file."""
    from src.config import Stage
    from src.stages.report import tracking

    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))
    # start sets these for the process: monkeypatch puts back what was there (set first, so that
    # a variable absent before is removed again)
    for var in ("WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", *tracking.RUN_VARS):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    cfg = compose_cfg(
        "model=tiny-mistral",
        "logger=wandb",
        "logger.mode=offline",
        f"logger.dir={tmp_path / 'wandb'}",
    )
    tracking.start(cfg, Stage.eval)
    tracking.finish(cfg, Stage.eval, metrics)
    (run_file,) = (tmp_path / "wandb").rglob("run-*.wandb")
    ended_records(run_file.parent)  # the summary is read once the run's file is whole
    shown = subprocess.run(
        [
            str(Path(sys.executable).with_name("wandb")),
            *("leet", "inspect", "--summary", "--json", str(run_file.parent)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert run["state"] == "finished" and run["config"]["stage"] == "eval"
    return run["summary"]


def test_the_eval_runs_summary_holds_each_benchmark_by_its_judge(tmp_path, monkeypatch):
    summary = summary_of_offline_run(tmp_path, monkeypatch, EVALUATION)

    assert summary["mt_bench[gpt-4]"] == pytest.approx(7.1234)
    assert summary["arena_hard[qwen-judge@local]"] == pytest.approx(0.55321)
    assert summary["arena_hard[qwen-judge@local]/lower"] == pytest.approx(0.5012)
    assert summary["arena_hard[qwen-judge@local]/upper"] == pytest.approx(0.6024)
    assert not [k for k in summary if k.startswith("mt_bench[") and k != "mt_bench[gpt-4]"]
    board = {
        k[len("leaderboard/") :]: v for k, v in summary.items() if k.startswith("leaderboard/")
    }
    assert board == pytest.approx(
        LEADERBOARD["normalised"] | {"arc_challenge": 65.19, "truthfulqa_mc2": 58.041}
    )
    # metrics.json's numbers, flattened, as before
    assert summary["win_rate"] == 0.6 and summary["mt_bench.turn_2"] == pytest.approx(6.7468)
    assert summary["leaderboard.raw.gpqa"] == pytest.approx(0.3)

    # src.compare --wandb's columns from this summary are those of the local eval.json
    from src.stages.report.results import Record, eval_columns

    from_wandb = eval_columns(Record(summary, "W&B run", "summary."))
    assert from_wandb == eval_columns(Record(EVALUATION, "eval.json"))
    assert from_wandb["mt_bench[gpt-4]"] == pytest.approx(7.1234)
    assert from_wandb["arena_hard[qwen-judge@local]"] == pytest.approx(0.55321)
    assert from_wandb["leaderboard"] == pytest.approx(23.3063)
    assert from_wandb["alpaca_eval_lc"] == pytest.approx(0.41)


def test_a_figure_that_is_none_or_a_benchmark_not_run_has_no_key(tmp_path, monkeypatch):
    metrics = ALPACA | {
        "mt_bench": MT_BENCH | {"mt_bench": None, "turn_1": None, "turn_2": None},
        "arena_hard": ARENA_HARD | {"judge": "gpt-4", "upper": None},
    }
    summary = summary_of_offline_run(tmp_path, monkeypatch, metrics)
    assert "mt_bench[gpt-4]" not in summary
    assert "arena_hard[gpt-4]" in summary and "arena_hard[gpt-4]/lower" in summary
    assert "arena_hard[gpt-4]/upper" not in summary
    assert not [k for k in summary if k.startswith("leaderboard")]


@pytest.mark.parametrize(
    ("failure", "code"), [("a judge that does not answer", 3), ("a bad input", 1)]
)
def test_a_stage_that_fails_ends_its_run_with_the_commands_exit_code(
    tmp_path, monkeypatch, failure, code
):
    """A refused stage's W&B run recorded exit 1 where the command exited 3."""
    from src.config import Stage
    from src.core.errors import EnvironmentFailure, StageError
    from src.schedule.run import run_tracked
    from src.stages.report import tracking

    for var in ("WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", *tracking.RUN_VARS):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    cfg = compose_cfg("model=tiny-mistral", "logger=wandb", "logger.mode=offline",
                      f"logger.dir={tmp_path / 'wandb'}")  # fmt: skip
    error = EnvironmentFailure if code == 3 else StageError

    def refused(_cfg):
        raise error(failure)

    with pytest.raises(error):
        run_tracked(cfg, Stage.eval, refused)
    (run_file,) = (tmp_path / "wandb").rglob("run-*.wandb")
    (ended,) = [r["exit"] for r in ended_records(run_file.parent) if r["type"] == "exit"]
    assert ended.get("exitCode", ended.get("exit_code")) == code, ended
