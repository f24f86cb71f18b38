"""What a researcher compares in W&B, read back from real offline runs by wandb's own reader
(`wandb leet inspect`): the lineage's curve run (src/stages/report/curves.py) holds each
iteration's figures once, equal to the stages' files, also across a command stopped mid-iteration
and resumed; the stages' tables hold the rows they wrote (src/stages/report/tables.py); the
artifacts link iteration 2's checkpoint to iteration 1's (src/stages/report/chain.py). (A sweep's
points as curve runs of one group: tests/pipeline/test_pipeline.py's local sweep.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from src.stages.report.curves import JOB_TYPE, unlogged
from src.stages.report.tables import EVAL_COLUMNS, PAIR_COLUMNS
from tests.support.helpers import cli
from tests.support.wandb_runs import offline_runs

TRACKED = ("logger=wandb", "logger.mode=offline", "eval.enabled=true")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Iterations 1 and 2, then iteration 3 stopped after its generate and resumed by a second
    command (as a run killed mid-iteration is), every stage tracked offline."""
    root = tmp_path_factory.mktemp("tracked")
    for step in (("iter=2",), ("iter=3", "stage=generate"), ("iter=3",)):
        result = cli(root, *TRACKED, *step)
        assert result.returncode == 0, result.stderr[-3000:]
    return root, offline_runs(root)


def iteration_dir(root: Path, t: int) -> Path:
    return next(root.glob("tiny-mistral/sppo/*")) / f"iter{t}"


@pytest.mark.slow
def test_the_curve_run_holds_each_iterations_figures_once_equal_to_the_files(tracked):
    """One curve run per lineage, its figures once per iteration, equal to the files.

    Slow: whichever test of this module runs first pays the `tracked` lineage (three tracked
    commands making iterations 1-3, each a fresh process with W&B offline, ~60 s)."""
    root, runs = tracked
    segments = [r for r in runs if r.stage == JOB_TYPE]
    assert len(segments) == 4, "one per command, and one more where iteration 2 ran first"
    assert len({s.summary["run_id"] for s in segments}) == 1, "one run per lineage"
    header = segments[-1].header
    assert (
        header["job_type"] == JOB_TYPE
        and header["run_group"] == "tiny-mistral/sppo/" + (segments[-1].summary["name"])
    )
    metric = [r["metric"] for r in segments[-1].records if r["type"] == "metric"]
    assert {"glob_name": "*", "options": {"defined": True, "step_sync": True},
            "step_metric": "iteration"} in metric  # fmt: skip

    # the command that stopped after iteration 3's generate: its figures, none of its eval's
    stopped = {row["iteration"]: row for row in segments[-2].history()}
    assert "gen_tokens_per_s" in stopped[3] and "eval_win_rate" not in stopped[3]

    rows = segments[-1].history()
    assert [row["iteration"] for row in rows] == [1, 2, 3], "each iteration once, in order"
    for t, row in enumerate(rows, 1):
        folder = iteration_dir(root, t)
        evaluated = json.loads((folder / "eval" / "eval.json").read_text())
        for key in ("win_rate", "lc_win_rate", "win_rate_low", "lc_win_rate_high", "avg_length"):
            assert row[f"eval_{key}"] == pytest.approx(evaluated[key]), (t, key)
        pairs = json.loads((folder / "pairs" / "metrics.json").read_text())
        for key in ("mean_chosen_probs", "mean_score_margin"):
            assert row[key] == pytest.approx(pairs[key]), (t, key)
        trained = json.loads((folder / "train" / "metrics.json").read_text())["log_history"]
        losses = [e["loss"] for e in trained if "loss" in e]
        assert row["train_loss_final"] == pytest.approx(losses[-1])
        generated = json.loads((folder / "generate" / "metrics.json").read_text())
        assert row["gen_mean_response_tokens"] == pytest.approx(
            generated["tokens"] / (generated["generated"] * 3)  # K = 3
        )


@pytest.mark.slow
def test_the_eval_and_pairs_runs_hold_their_rows_as_tables(tracked):
    """The eval and pairs runs hold their rows as W&B tables, equal to the files.

    Slow: whichever test of this module runs first pays the `tracked` lineage (three tracked
    commands making iterations 1-3, each a fresh process with W&B offline, ~60 s)."""
    root, runs = tracked
    eval_run = next(r for r in runs if r.stage == "eval" and r.iteration == 2)
    table = eval_run.table("answers_table")
    judged = (iteration_dir(root, 2) / "eval" / "judgements.jsonl").read_text().splitlines()
    expected = [json.loads(line) for line in judged][:200]  # logger.table_rows
    assert table["columns"] == EVAL_COLUMNS and len(table["data"]) == len(expected)
    for row, j in zip(table["data"], expected, strict=True):
        assert row[:6] == [j["prompt_id"], j["instruction"], j["output"], j["reference_output"],
                           j["preference"], j["outcome"]]  # fmt: skip
        assert row[6:] == [len(j["output"]), len(j["reference_output"])]
    pairs_run = next(r for r in runs if r.stage == "pairs" and r.iteration == 2)
    table = pairs_run.table("pairs_table")
    written = pq.read_table(iteration_dir(root, 2) / "pairs" / "pairs.parquet").to_pylist()
    assert table["columns"] == PAIR_COLUMNS
    assert table["data"] == [[p[c] for c in PAIR_COLUMNS] for p in written]


@pytest.mark.slow
def test_iteration_2s_checkpoint_is_made_from_iteration_1s_in_the_artifacts(tracked):
    """W&B's artifacts chain iteration 2's training to iteration 1's checkpoint and its own
    pairs, and its generate and eval to the checkpoints they read; no weights uploaded.

    Slow: whichever test of this module runs first pays the `tracked` lineage (three tracked
    commands making iterations 1-3, each a fresh process with W&B offline, ~60 s)."""
    _, runs = tracked
    stage = {(r.stage, r.iteration): r for r in runs if r.stage != JOB_TYPE}
    lineage = stage["train", 1].header["run_group"].replace("/", "-")  # model/method/run_name
    first = stage["train", 1].artifacts(used=False)
    second = stage["train", 2].artifacts(used=False)
    assert set(first) == {f"{lineage}-iter1-checkpoint"}
    checkpoint = first[f"{lineage}-iter1-checkpoint"]
    # iteration 2's training started from it, on iteration 2's pairs, and made iteration 2's
    assert stage["train", 2].artifacts(used=True) == {
        f"{lineage}-iter1-checkpoint": checkpoint,
        f"{lineage}-iter2-pairs": stage["pairs", 2].artifacts(used=False)[f"{lineage}-iter2-pairs"],
    }
    assert set(second) == {f"{lineage}-iter2-checkpoint"} and second != first
    assert stage["generate", 2].artifacts(used=True) == {f"{lineage}-iter1-checkpoint": checkpoint}
    assert stage["eval", 2].artifacts(used=True) == second
    # a reference to the checkpoint's folder, and its record: no weights uploaded
    logged = next(
        r["artifact"] for r in stage["train", 1].records
        if r["type"] == "artifact" and r["artifact"]["name"].endswith("-checkpoint")
    )  # fmt: skip
    entries = logged["manifest"]["contents"]
    uploaded = [e["path"] for e in entries if "local_path" in e]
    assert uploaded == ["record/done.json"]
    assert all(e["ref"].startswith("file://") for e in entries if "local_path" not in e)


def test_a_resumed_curve_run_logs_only_what_it_does_not_hold():
    """Online, W&B gives a resumed run its summary back, where the curve run keeps what it
    logged: a figure logged with the same value is not logged again."""
    held = {"1": {"eval_win_rate": 0.6, "pairs": 4.0}, "2": {"pairs": 4.0}}
    points = {
        1: {"eval_win_rate": 0.6, "pairs": 4.0},  # all held
        2: {"pairs": 4.0, "eval_win_rate": 0.7},  # its eval is new
        3: {"pairs": 4.0},  # new
    }
    assert unlogged(held, points) == [(2, {"eval_win_rate": 0.7}), (3, {"pairs": 4.0})]
    assert unlogged(held, {1: {"eval_win_rate": 0.65}}) == [(1, {"eval_win_rate": 0.65})]
    assert unlogged({}, points) == list(points.items())


def test_a_lineage_a_sweep_ran_keeps_its_curve_run_in_the_sweeps_group(tmp_path, monkeypatch):
    """`make sweep-tiny`'s η = 10: the sweep's command (logger.sweep, set by src.sweep) writes a
    segment of the lineage's curve run in the sweep's group, and the next command on the
    lineage, which names no sweep, one in the same group with the same swept values, so that a
    sync keeps the point in the sweep (a sync of a segment sets the run's group). A lineage no
    sweep ran keeps its own group. Real offline runs, read back by wandb's reader."""
    from src.stages.report import tracking
    from src.stages.report.curves import log_curve
    from tests.support.helpers import compose_cfg
    from tests.support.wandb_runs import ended_records, offline_runs

    for var in ("WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", *tracking.RUN_VARS):
        monkeypatch.setenv(var, "")  # set first: monkeypatch removes again what was absent
        monkeypatch.delenv(var)
    tracked = ("model=tiny-mistral", "logger=wandb", "logger.mode=offline",
               f"paths.root={tmp_path}")  # fmt: skip
    log_curve(compose_cfg(*tracked, "logger.sweep=eta-tiny", "logger.swept=[method.eta]"))
    log_curve(compose_cfg(*tracked))
    log_curve(compose_cfg(*tracked, "run_name=alone"))
    for run_file in (tmp_path / "wandb").rglob("run-*.wandb"):
        ended_records(run_file.parent)
    # the runs' folders are named by the second they started: three runs of one second are in
    # no order
    segments = sorted(((r.header["run_group"], r.summary["config"], r.summary["name"])
                       for r in offline_runs(tmp_path)), key=lambda segment: segment[0])  # fmt: skip
    lineage = "tiny-mistral/sppo/" + segments[0][1]["run_name"]
    # named by what the sweep varies, the lineage no sweep ran by its run_name
    assert [(group, config["sweep"], config.get("method.eta"), name)
            for group, config, name in segments] == [
        ("eta-tiny", "eta-tiny", 10, "method.eta=10"),
        ("eta-tiny", "eta-tiny", 10, "method.eta=10"),
        ("tiny-mistral/sppo/alone", None, None, "alone"),
    ]  # fmt: skip
    assert segments[0][1]["lineage"] == segments[1][1]["lineage"] == lineage


def test_a_sweeps_point_is_named_by_the_values_it_sweeps_as_its_overrides_write_them():
    """W&B's run list names a sweep's curve runs by what varies between them, each value as the
    sweep's override writes it (a number as in the run's directory name, a config group by the
    option chosen); a lineage no sweep varies keeps its run_name."""
    from src.stages.report.curves import curve_name
    from tests.support.helpers import compose_cfg

    cfg = compose_cfg("model=tiny-mistral", "method.eta=10", "training.learning_rate=2.5e-7")
    assert curve_name(cfg, ["method.eta"]) == "method.eta=10"
    assert (curve_name(cfg, ["training.learning_rate", "method.K", "model"])
            == "training.learning_rate=2.5e-07 method.K=5 model=tiny-mistral")  # fmt: skip
    assert curve_name(cfg, []) == cfg.run_name == "eta10-lr2.5e-07-K5"


@pytest.mark.parametrize("text", ["{not json", '["eta-tiny"]', '{"sweep": "", "swept": []}',
                                  '{"sweep": "eta-tiny", "swept": "method.eta"}'])  # fmt: skip
def test_a_damaged_sweep_record_is_one_line_naming_it_and_what_records_it_again(tmp_path, text):
    from src.core.errors import StageError
    from src.core.layout import SWEEP_RECORD
    from src.stages.report.curves import sweep_of
    from tests.support.helpers import compose_cfg

    cfg = compose_cfg("model=tiny-mistral", f"paths.root={tmp_path}")
    record = Path(cfg.run.dir) / SWEEP_RECORD
    record.parent.mkdir(parents=True)
    record.write_text(text)
    with pytest.raises(StageError) as refused:
        sweep_of(cfg)
    said = str(refused.value)
    assert said.startswith(f"{record} ") and "\n" not in said
    assert said.endswith("(logger.sweep=<name> 'logger.swept=[<keys>]')")
    # the sweep's own command records it anew
    again = compose_cfg("model=tiny-mistral", f"paths.root={tmp_path}", "logger.sweep=eta-tiny")
    assert sweep_of(again) == ("eta-tiny", []) == sweep_of(cfg)


def test_the_runs_of_one_command_open_without_wandbs_note_of_changed_variables(
    tmp_path, monkeypatch, capfd
):
    """The stages of one command open a W&B run each, and then the curve run, in one process:
    none of them has wandb say that variables changed since its first run are ignored (every
    run takes its settings as arguments; the variables name the open run to the Trainer's
    callback and the child processes, and do while it is open)."""
    import wandb

    from src.config import Stage
    from src.stages.report import tracking
    from src.stages.report.curves import log_curve
    from tests.support.helpers import compose_cfg

    for var in ("WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", *tracking.RUN_VARS):
        monkeypatch.setenv(var, "")  # set first: monkeypatch removes again what was absent
        monkeypatch.delenv(var)
    wandb.teardown()  # W&B as a command's process starts it: no run opened before
    cfg = compose_cfg("model=tiny-mistral", "logger=wandb", "logger.mode=offline",
                      f"paths.root={tmp_path}")  # fmt: skip
    for stage in (Stage.generate, Stage.rank):
        tracking.start(cfg, stage)
        assert os.environ["WANDB_RUN_ID"] == tracking.run_id(cfg, stage)
        assert os.environ["WANDB_JOB_TYPE"] == stage.value
        tracking.finish(cfg, stage, {"seconds": 1.0})
        assert not any(var in os.environ for var in tracking.RUN_VARS)
    log_curve(cfg)
    said = capfd.readouterr().err
    assert "wandb" in said  # W&B's own lines: the offline runs it made
    assert "environment variables will be ignored" not in said, said
