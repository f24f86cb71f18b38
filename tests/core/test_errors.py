"""The failures' remedies (src/core/errors.py): a `Redo` is a fact until the boundary, which
turns it into the overrides of the command the user ran; a refused write in a folder that a
setting places names that setting."""

import errno
import os

import pytest

from src.core.errors import (
    EnvironmentFailure,
    Redo,
    StageError,
    as_typed,
    blamed,
    command_line,
    command_words,
    describe,
    running_stage,
    with_overrides,
)
from src.core.registry import Stage


@pytest.mark.parametrize(
    ("running", "overrides"),
    [
        ("all", "iter=2 pipeline.redo=[rank]"),  # stage=all redoes rank and what follows it
        ("rank", "iter=2 pipeline.redo=[rank]"),
        ("pairs", "stage=rank iter=2 pipeline.redo=[rank]"),  # one other stage: pointed at rank
    ],
)
def test_a_redo_is_the_overrides_of_the_command_that_runs(running, overrides):
    assert Redo(Stage.rank, 2).overrides(running) == overrides
    assert Redo("rank", 2) == Redo(Stage.rank, 2), "a Stage reads as its name"
    also = Redo(Stage.rank, 2, also="ranker.empty_responses=drop").overrides(running)
    assert also == f"{overrides} ranker.empty_responses=drop"


@pytest.mark.parametrize(
    ("command", "stage"),
    [
        ("python -m src.main model=tiny-mistral iter=2", "all"),
        ("python -m src.main stage=pairs iter=2", "pairs"),
        ("python -m src.main stage=rank iter=2 stage=pairs", "pairs"),  # Hydra: the last wins
        ("python -m src.main pipeline.stage_timeout=9 stage=train", "train"),
    ],
)
def test_the_stage_a_command_runs_is_its_last_stage_word(command, stage):
    assert running_stage(command) == stage


def test_the_line_a_failure_ends_with_sets_its_redo_on_the_users_command():
    """The same failure (a damaged ranking, met by the pairs stage) under the two commands that
    meet it: each gets the command that makes the ranking again and then goes on as it would."""
    failure = StageError("iter2/rank/done.json: its content does not match", Redo("rank", 2))
    assert describe(failure, "python -m src.main stage=pairs iter=2 logger=none") == (
        "error: iter2/rank/done.json: its content does not match; run "
        "`python -m src.main stage=rank iter=2 logger=none 'pipeline.redo=[rank]'`"
    )
    assert describe(failure, "python -m src.main iter=2") == (
        "error: iter2/rank/done.json: its content does not match; run "
        "`python -m src.main iter=2 'pipeline.redo=[rank]'`"
    )
    plain = StageError("a file of the user's own is bad", "training.pairs=good.parquet")
    assert describe(plain, "python -m src.main stage=train").endswith(
        "run `python -m src.main stage=train training.pairs=good.parquet`"
    )
    assert describe(StageError("nothing to do about it"), "python -m src.main") == (
        "error: nothing to do about it"
    )


@pytest.mark.parametrize(
    ("word", "typed"),
    [
        ("eval.benchmarks=[mt_bench,arena_hard]", "'eval.benchmarks=[mt_bench,arena_hard]'"),
        ("pipeline.redo=[rank]", "'pipeline.redo=[rank]'"),  # zsh: "no matches found" unquoted
        ("eval.llm_judge.api_key_env=", "eval.llm_judge.api_key_env=''"),  # the README's
        ("paths.root=/scratch/${iter}", "'paths.root=/scratch/${iter}'"),  # resolved per iteration
        ("data.prompts=*.jsonl", "'data.prompts=*.jsonl'"),
        ("run_name=it?", "'run_name=it?'"),
        ("+eval.extra={a:1}", "'+eval.extra={a:1}'"),
        ("~logger.sweep", "'~logger.sweep'"),
        ("run_name=it's", "'run_name=it'\"'\"'s'"),
        ("model=tiny-mistral", "model=tiny-mistral"),
        ("+training.lr=1e-05", "+training.lr=1e-05"),
        ("data.eval_prompts=/data/alpaca_eval.json", "data.eval_prompts=/data/alpaca_eval.json"),
        ("--force", "--force"),
    ],
)
def test_a_suggested_command_quotes_each_word_a_shell_would_read_as_more_than_itself(word, typed):
    """As the README types them: a shell given the line passes each word on as it was."""
    import shlex

    line = as_typed(f"python -m src.main iter=2 {word}")
    assert line == f"python -m src.main iter=2 {typed}"
    assert shlex.split(line)[-1] == word


def test_a_value_with_a_blank_stays_one_word_through_a_fix_and_the_suggested_command():
    """A command held by `command_line`: its fix set (`with_overrides`), its stage read
    (`running_stage`) and its line typed (`as_typed`) each see a value holding a blank as one
    word."""
    command = command_line("python -m src.main", ["stage=eval", "eval.llm_judge.system_turn=a b"])
    fixed = with_overrides(command, "iter=2 pipeline.redo=[eval]")
    assert command_words(fixed)[3:] == [
        "stage=eval", "eval.llm_judge.system_turn=a b", "iter=2", "pipeline.redo=[eval]"
    ]  # fmt: skip
    assert running_stage(fixed) == "eval"
    assert as_typed(fixed) == (
        "python -m src.main stage=eval 'eval.llm_judge.system_turn=a b' iter=2 "
        "'pipeline.redo=[eval]'"
    )
    plain = command_line("python -m src.main", ["iter=2", "pipeline.redo=[eval]"])
    assert plain == "python -m src.main iter=2 pipeline.redo=[eval]", "held as typed when it can"


def refused_in_tiny_dir(filename: str | None) -> None:
    with blamed("paths.tiny_dir", "/cache/tiny"):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), filename)


@pytest.mark.parametrize(
    "filename",
    [
        "/cache/tiny",  # the folder itself (a file in its place)
        "/cache/tiny/.tiny-mistral.lock",
        "/cache",  # on the way to it
        None,  # a write's, of no file: named as the folder
    ],
)
def test_an_os_error_on_a_folder_a_key_places_is_that_keys(filename):
    with pytest.raises(EnvironmentFailure) as failure:
        refused_in_tiny_dir(filename)
    assert str(failure.value) == (
        f"{os.strerror(errno.EROFS)}: {filename or '/cache/tiny'}; the file system is read-only: "
        "point paths.tiny_dir at a writable folder"
    )


@pytest.mark.parametrize("filename", ["/runs/x/done.json", "/cache/tiny-other"])
def test_an_os_error_elsewhere_is_left_to_the_boundary(filename):
    with pytest.raises(OSError) as kept:
        refused_in_tiny_dir(filename)
    assert kept.value.filename == filename
