"""A run's folder layout (src/core/layout.py): the paths it builds, and those it reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.core.layout import (
    LOCKS,
    Place,
    RunLayout,
    iteration_name,
    iteration_number,
    side_name,
    stage_folder,
)
from src.core.registry import STAGES, Stage


def test_the_folders_of_a_run(tmp_path):
    layout = RunLayout(tmp_path / "run")
    assert layout.iteration_dir(3) == tmp_path / "run/iter3"
    assert layout.stage_dir_in(3, Stage.pairs) == tmp_path / "run/iter3/pairs"
    assert layout.stage_dir_in(3, "eval", side="iter1") == tmp_path / "run/iter3/eval/vs-iter1"
    assert layout.checkpoint(2) == tmp_path / "run/iter2/train/checkpoint"
    assert layout.export_dir(2) == tmp_path / "run/export/iter2"


@pytest.mark.parametrize(
    "place",
    [Place(1), *(Place(12, s) for s in STAGES), Place(3, Stage.eval, "gpt4_turbo.json")],
)
def test_a_folder_reads_back_as_the_place_that_built_it(tmp_path, place):
    layout = RunLayout(tmp_path)
    if place.stage is None:
        folder = layout.iteration_dir(place.iteration)
    else:
        folder = layout.stage_dir_in(place.iteration, place.stage, place.side)
    assert layout.parse(folder) == place


def test_a_file_in_a_folder_reads_as_its_folder(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.parse(layout.checkpoint(4) / "config.json") == Place(4, Stage.train)
    side = layout.stage_dir_in(2, Stage.eval, "iter1") / "eval.json"
    assert layout.parse(side) == Place(2, Stage.eval, "iter1")
    assert layout.parse(layout.stage_dir_in(2, Stage.eval) / "eval.json") == Place(2, Stage.eval)


def test_only_the_eval_has_evals_beside_it(tmp_path):
    with pytest.raises(ValueError, match="only the eval stage"):
        RunLayout(tmp_path).stage_dir_in(1, Stage.train, side="iter1")


def test_a_path_outside_the_run_is_refused_by_name(tmp_path):
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(ValueError, match=r"other/iter1/train lies outside the run .*run"):
        layout.parse(tmp_path / "other/iter1/train")
    with pytest.raises(ValueError, match="lies in no iteration's folder"):
        layout.parse(tmp_path / "run/slurm/logs")
    with pytest.raises(ValueError, match="lies in no stage's folder"):
        layout.parse(tmp_path / "run/iter1/.locks")


def test_the_iterations_begun_in_numeric_order(tmp_path):
    """An iteration is a folder holding a stage's; one holding only the locks a redo of the
    training before it took (or nothing) is none."""
    layout = RunLayout(tmp_path)
    assert layout.iterations() == []
    for t in (10, 9, 1, 2):
        layout.stage_dir_in(t, Stage.generate).mkdir(parents=True)
    (tmp_path / "iter3").write_text("a file, not an iteration's folder")
    (tmp_path / "iter4" / LOCKS).mkdir(parents=True)
    (tmp_path / "iter4" / LOCKS / "generate.lock").write_text("")
    (tmp_path / "iter5").mkdir()
    (tmp_path / "iterx").mkdir()
    (tmp_path / "export").mkdir()
    assert layout.iterations() == [1, 2, 9, 10]
    assert RunLayout(tmp_path / "absent").iterations() == []


def test_the_side_evals_present_by_name(tmp_path):
    layout = RunLayout(tmp_path)
    for side in ("iter2", "gpt4_turbo.json", "iter1"):
        layout.stage_dir_in(3, Stage.eval, side).mkdir(parents=True)
    (layout.stage_dir_in(3, Stage.eval) / "eval.json").write_text("{}")
    assert [p.name for p in layout.side_evals(3)] == ["vs-gpt4_turbo.json", "vs-iter1", "vs-iter2"]
    assert layout.side_evals(4) == []


def test_the_run_of_a_stage_folder(tmp_path):
    run = tmp_path / "model/sppo/eta1000"
    assert RunLayout.holding(run / "iter2/train") == RunLayout(run)
    assert RunLayout.holding(run / "iter2/eval/vs-iter1") == RunLayout(run)
    assert RunLayout.holding(tmp_path / "cache/train") is None
    assert RunLayout.holding(run / "iter2/checkpoints") is None


def test_the_iteration_name():
    assert iteration_name(7) == "iter7"
    assert iteration_number("iter7") == 7
    assert iteration_number("iter01") == 1  # eval.reference=iter01 is iteration 1
    assert iteration_number("iter") is None
    assert iteration_number("iter1.jsonl") is None
    assert iteration_number("base") is None


@pytest.mark.parametrize(
    "reference, outputs, judged_by, folder",
    [
        ("base", None, None, "eval"),
        (None, None, None, "eval"),
        ("iter1", None, None, "eval/vs-iter1"),
        ("/models/My Model/", None, None, "eval/vs-My-Model"),
        ("iter1", "/answers/iter1.json", None, "eval/vs-iter1.json"),  # the file wins
        # by other judges (eval.judged_by): beside the evals by the lineage's own
        ("base", None, "gpt-4o", "eval/vs-base@gpt-4o"),
        ("iter1", None, "gpt-4o", "eval/vs-iter1@gpt-4o"),
        ("iter1", "/answers/a b.json", "gpt-4o", "eval/vs-a-b.json@gpt-4o"),
    ],
)
def test_the_folder_of_an_eval_against_a_reference(reference, outputs, judged_by, folder):
    assert stage_folder(Stage.eval, reference, outputs, judged_by) == folder
    side = side_name(reference, outputs, judged_by)
    layout = RunLayout(Path("r"))
    assert layout.stage_dir_in(1, Stage.eval, side) == Path("r/iter1") / folder
    assert layout.parse(layout.stage_dir_in(1, Stage.eval, side)) == Place(1, Stage.eval, side)


def test_a_stage_other_than_eval_has_one_folder():
    assert stage_folder(Stage.train, "iter1", "/answers/a.json") == "train"
