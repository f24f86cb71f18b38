"""A pairs file the train stage cannot use stops it before any training with one line naming
the file, the row (counted from 1, as every input error does: `file.jsonl:7`,
`file.parquet: row 7`), the prompt_id and the key; never with a traceback (src/training/data.py).
A file the user wrote (training.pairs) gets no command to run, the pairs stage's own output the
one that makes it again."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.config import REPO_ROOT
from src.core.errors import as_typed
from src.stages.train import run
from src.training.data import PairsError
from tests.support.helpers import SMALL, cli, compose_cfg, one_line_failure

FIXTURE = REPO_ROOT / "tests" / "data" / "pairs_tiny.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines()]  # fx00 ... fx11
REMAKE = "stage=pairs iter=1 pipeline.redo=[pairs]"  # the stage's output, training alone
REMAKE_TYPED = as_typed(REMAKE)  # as the refusal's command writes it


pytestmark = pytest.mark.usefixtures("runs_in_tmp", "tiny_dir")  # tests/conftest.py


def rows_with(row: int, **changes) -> list[dict]:
    """The fixture's rows, row `row` (from 0) with `changes`."""
    rows = [dict(r) for r in ROWS]
    rows[row].update(changes)
    return rows


def rows_without(row: int, *columns: str) -> list[dict]:
    rows = [dict(r) for r in ROWS]
    for column in columns:
        del rows[row][column]
    return rows


def jsonl(rows: list) -> Callable[[Path], None]:
    return lambda path: path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def parquet(rows: list[dict]) -> Callable[[Path], None]:
    return lambda path: pq.write_table(pa.Table.from_pylist(rows), path)


def truncated_parquet(path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@dataclass
class Bad:
    """A bad pairs file: its name, how to write it, the message it must give (`{path}` stands
    for the file) and the overrides of the method it is trained with (the default: SPPO)."""

    file: str
    write: Callable[[Path], None]
    message: str
    method: tuple[str, ...] = ()


CASES = {
    # a column missing from a later row only (columns used to be checked on row 0 alone)
    "a-later-row-lacks-a-column": Bad(
        "p.jsonl",
        jsonl(rows_without(5, "rejected")),
        r"{path}:6 \(prompt_id 'fx05'\): lacks column\(s\) rejected needed by loss 'sppo'",
    ),
    "every-row-lacks-the-sppo-targets": Bad(
        "p.jsonl",
        jsonl([{k: v for k, v in r.items() if not k.startswith("chosen_probs")} for r in ROWS]),
        r"{path}:1 \(prompt_id 'fx00'\): lacks column\(s\) chosen_probs_win, chosen_probs_lose "
        r"needed by loss 'sppo'",
    ),
    "no-prompt-id": Bad(
        "p.jsonl",
        jsonl([{"prompt": "hi", "chosen": "a", "rejected": "b"}]),
        r"{path}:1: lacks column\(s\) prompt_id needed by loss 'sigmoid'",
        method=("method=dpo",),
    ),
    # text the chat template would fail on, deep inside jinja
    "a-null-chosen": Bad(
        "p.jsonl",
        jsonl(rows_with(2, chosen=None)),
        r"{path}:3 \(prompt_id 'fx02'\): 'chosen' is null, expected a string$",
    ),
    "a-number-as-rejected": Bad(
        "p.jsonl",
        jsonl(rows_with(7, rejected=3)),
        r"{path}:8 \(prompt_id 'fx07'\): 'rejected' is 3, expected a string$",
        method=("method=dpo",),
    ),
    "a-chat-as-prompt": Bad(
        "p.jsonl",
        jsonl(rows_with(1, prompt=[{"role": "user", "content": "hi"}])),
        r"{path}:2 \(prompt_id 'fx01'\): 'prompt' is a list \(.*\), expected a string$",
    ),
    "a-number-as-prompt-id": Bad(
        "p.jsonl",
        jsonl(rows_with(4, prompt_id=4)),
        r"{path}:5: 'prompt_id' is 4, expected a string$",
    ),
    # the SPPO targets: a NaN or an infinity would reach the loss, and the weights
    "a-nan-probability": Bad(
        "p.jsonl",
        jsonl(rows_with(3, chosen_probs_win=float("nan"))),
        r"{path}:4 \(prompt_id 'fx03'\): 'chosen_probs_win' is nan, expected a probability "
        r"in \[0, 1\]$",
    ),
    "an-infinite-probability": Bad(
        "p.jsonl",
        jsonl(rows_with(9, chosen_probs_lose=float("inf"))),
        r"{path}:10 \(prompt_id 'fx09'\): 'chosen_probs_lose' is inf, expected a probability",
    ),
    "a-probability-above-one": Bad(
        "p.jsonl",
        jsonl(rows_with(10, chosen_probs=1.5)),
        r"{path}:11 \(prompt_id 'fx10'\): 'chosen_probs' is 1.5, expected a probability",
        method=("method.loss=sppo_single",),
    ),
    "a-negative-probability": Bad(
        "p.jsonl",
        jsonl(rows_with(11, chosen_probs_win=-0.1)),
        r"{path}:12 \(prompt_id 'fx11'\): 'chosen_probs_win' is -0.1, expected a probability",
    ),
    "a-probability-as-text": Bad(
        "p.jsonl",
        jsonl(rows_with(0, chosen_probs_win="0.8")),
        r"{path}:1 \(prompt_id 'fx00'\): 'chosen_probs_win' is a str \('0.8'\), expected a "
        r"probability",
    ),
    "a-null-probability": Bad(
        "p.jsonl",
        jsonl(rows_with(6, chosen_probs_lose=None)),
        r"{path}:7 \(prompt_id 'fx06'\): 'chosen_probs_lose' is null, expected a probability",
    ),
    # text a loss cannot learn from: the chat template renders it, so it would be trained on
    "an-empty-prompt": Bad(
        "p.jsonl",
        jsonl(rows_with(2, prompt="")),
        r"{path}:3 \(prompt_id 'fx02'\): 'prompt' is empty, expected text$",
    ),
    "an-empty-rejected": Bad(
        "p.jsonl",
        jsonl(rows_with(5, rejected="")),
        r"{path}:6 \(prompt_id 'fx05'\): 'rejected' is empty, expected text$",
        method=("method=dpo",),
    ),
    "a-whitespace-only-chosen": Bad(
        "p.jsonl",
        jsonl(rows_with(8, chosen=" \n\t ")),
        r"{path}:9 \(prompt_id 'fx08'\): 'chosen' is only whitespace, expected text$",
    ),
    "a-lone-surrogate-in-chosen": Bad(
        "p.jsonl",
        jsonl(rows_with(3, chosen="ok \ud800")),
        r"{path}:4 \(prompt_id 'fx03'\): 'chosen' holds '\\ud800' at character 3, a lone "
        r"surrogate that UTF-8 cannot encode",
    ),
    "a-blank-prompt-id": Bad(
        "p.jsonl",
        jsonl(rows_with(1, prompt_id="  ")),
        r"{path}:2: 'prompt_id' is only whitespace, expected text$",
    ),
    # columns of the contract a loss does not read are still the contract's: a file holding a
    # NaN score or a probability of 1.7 is not what its author meant
    "a-nan-score": Bad(
        "p.jsonl",
        jsonl(rows_with(4, chosen_score=float("nan"))),
        r"{path}:5 \(prompt_id 'fx04'\): 'chosen_score' is nan, expected a finite number$",
        method=("method=dpo",),
    ),
    "an-infinite-score": Bad(
        "p.jsonl",
        jsonl(rows_with(7, rejected_score=float("-inf"))),
        r"{path}:8 \(prompt_id 'fx07'\): 'rejected_score' is -inf, expected a finite number$",
    ),
    "a-probability-the-loss-does-not-read-above-one": Bad(
        "p.jsonl",
        jsonl(rows_with(3, chosen_probs=1.7)),
        r"{path}:4 \(prompt_id 'fx03'\): 'chosen_probs' is 1.7, expected a probability "
        r"in \[0, 1\]$",
    ),
    "a-fractional-index": Bad(
        "p.jsonl",
        jsonl(rows_with(0, chosen_index=1.5, rejected_index=0)),
        r"{path}:1 \(prompt_id 'fx00'\): 'chosen_index' is 1.5, expected a response index",
    ),
    "a-negative-index": Bad(
        "p.jsonl",
        jsonl(rows_with(0, chosen_index=2, rejected_index=-1)),
        r"{path}:1 \(prompt_id 'fx00'\): 'rejected_index' is -1, expected a response index",
    ),
    # the same checks on parquet, whose rows are named "file: row N"
    "parquet-an-empty-prompt": Bad(
        "p.parquet",
        parquet(rows_with(9, prompt="")),
        r"{path}: row 10 \(prompt_id 'fx09'\): 'prompt' is empty, expected text$",
    ),
    "parquet-an-empty-rejected": Bad(
        "p.parquet",
        parquet(rows_with(3, rejected="")),
        r"{path}: row 4 \(prompt_id 'fx03'\): 'rejected' is empty, expected text$",
    ),
    "parquet-a-whitespace-only-chosen": Bad(
        "p.parquet",
        parquet(rows_with(11, chosen="\n\n")),
        r"{path}: row 12 \(prompt_id 'fx11'\): 'chosen' is only whitespace, expected text$",
    ),
    "parquet-a-probability-the-loss-does-not-read-above-one": Bad(
        "p.parquet",
        parquet(rows_with(2, chosen_probs=1.7)),
        r"{path}: row 3 \(prompt_id 'fx02'\): 'chosen_probs' is 1.7, expected a "
        r"probability in \[0, 1\]$",
    ),
    "parquet-a-nan-score": Bad(
        "p.parquet",
        parquet(rows_with(6, rejected_score=float("nan"))),
        r"{path}: row 7 \(prompt_id 'fx06'\): 'rejected_score' is nan, expected a finite number$",
        method=("method=dpo", "method.loss=ipo"),
    ),
    "parquet-a-null-chosen": Bad(
        "p.parquet",
        parquet(rows_with(4, chosen=None)),
        r"{path}: row 5 \(prompt_id 'fx04'\): 'chosen' is null, expected a string$",
    ),
    "parquet-a-nan-probability": Bad(
        "p.parquet",
        parquet(rows_with(6, chosen_probs_win=float("nan"))),
        r"{path}: row 7 \(prompt_id 'fx06'\): 'chosen_probs_win' is nan, expected a probability",
    ),
    # read a batch at a time (TOKENISE_BATCH rows): a row in a later batch keeps its number
    "parquet-a-bad-row-in-a-later-batch": Bad(
        "p.parquet",
        parquet(
            [dict(ROWS[i % len(ROWS)], prompt_id=f"r{i}") for i in range(299)]
            + [dict(ROWS[0], prompt_id="r299", rejected=None)]
        ),
        r"{path}: row 300 \(prompt_id 'r299'\): 'rejected' is null, expected a string$",
    ),
    "parquet-lacks-a-column": Bad(
        "p.parquet",
        parquet([{k: v for k, v in r.items() if k != "rejected"} for r in ROWS]),
        r"{path}: row 1 \(prompt_id 'fx00'\): lacks column\(s\) rejected needed by loss 'sppo'",
    ),
    # files that are not pairs at all
    "random-bytes-as-parquet": Bad(
        "p.parquet",
        lambda path: path.write_bytes(bytes(range(256)) * 4),
        r"{path}: cannot read as parquet \(.*\)$",
    ),
    "a-truncated-parquet": Bad(
        "p.parquet", truncated_parquet, r"{path}: cannot read as parquet \(.*\)$"
    ),
    "a-line-that-is-not-an-object": Bad(
        "p.jsonl",
        lambda path: path.write_text(json.dumps(ROWS[0]) + "\n3\n"),
        r"{path}:2: row is a JSON int, expected an object",
    ),
    "malformed-json": Bad(
        "p.jsonl",
        lambda path: path.write_text(json.dumps(ROWS[0]) + '\n\n{"prompt_id": "fx01",\n'),
        r"{path}:3: malformed JSON line",
    ),
    "not-utf8": Bad(
        "p.jsonl",
        lambda path: path.write_bytes(b'{"prompt_id": "caf\xe9"}\n'),
        r"{path}: not UTF-8 text",
    ),
    "an-empty-file": Bad("p.jsonl", lambda path: path.write_text("\n"), r"{path} holds no pairs$"),
    "an-empty-parquet": Bad("p.parquet", parquet([]), r"{path} holds no pairs$"),
    "a-missing-file": Bad("p.parquet", lambda path: None, r"pairs file not found: {path} "),
    "a-folder": Bad("p.jsonl", Path.mkdir, r"{path} is not a file"),
    "a-csv-file": Bad(
        "p.csv",
        lambda path: path.write_text("prompt_id,prompt\n"),
        r"{path}: pairs must be \.parquet or \.jsonl, got '\.csv'$",
    ),
}


def expected(bad: Bad, path: Path) -> str:
    return bad.message.replace("{path}", re.escape(str(path)))


@pytest.mark.parametrize("bad", CASES.values(), ids=CASES.keys())
def test_a_bad_pairs_file_is_one_line_naming_file_row_and_key(tmp_path, bad):
    path = tmp_path.resolve() / bad.file
    bad.write(path)
    cfg = compose_cfg(
        "stage=train", "logger=none", "model=tiny-mistral", *bad.method, f"training.pairs={path}"
    )
    with pytest.raises(PairsError) as raised:
        run(cfg)
    message = str(raised.value)
    assert "\n" not in message
    assert re.match(expected(bad, path), message), message
    assert raised.value.fix is None  # the user's own file: what to correct is in the message
    assert not (cfg.stage_dir("train") / "done.json").exists()


@pytest.mark.parametrize(
    "case",
    [
        "a-missing-file",
        "random-bytes-as-parquet",
        "parquet-a-null-chosen",
        "an-empty-parquet",
        "parquet-an-empty-prompt",
        "parquet-an-empty-rejected",
        "parquet-a-whitespace-only-chosen",
        "parquet-a-probability-the-loss-does-not-read-above-one",
    ],
)
@pytest.mark.parametrize("stage, fix", [("train", REMAKE), ("all", "iter=1 pipeline.redo=[pairs]")])
def test_a_bad_pairs_stage_output_names_the_command_that_makes_it_again(case, stage, fix):
    """Run alone, train needs the pairs stage run first; under stage=all, redoing pairs trains
    again after it."""
    cfg = compose_cfg(f"stage={stage}", "logger=none", "model=tiny-mistral")
    path = cfg.stage_dir("pairs").resolve() / "pairs.parquet"
    assert Path(cfg.training.pairs).resolve() == path
    path.parent.mkdir(parents=True)
    CASES[case].write(path)
    with pytest.raises(PairsError) as raised:
        run(cfg)
    assert re.match(expected(CASES[case], path), str(raised.value)), str(raised.value)
    assert raised.value.overrides(stage) == fix


def error_line(result) -> str:
    """The one line the command ended with, checked to be the only error and no traceback."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_the_command_line_ends_a_user_file_with_one_line_and_trains_nothing(tmp_path):
    path = tmp_path.resolve() / "p.jsonl"
    CASES["a-later-row-lacks-a-column"].write(path)
    result = cli(tmp_path / "runs", "stage=train", f"training.pairs={path}")
    line = error_line(result)
    assert re.fullmatch("error: " + expected(CASES["a-later-row-lacks-a-column"], path), line)
    assert not list((tmp_path / "runs").rglob("train/done.json"))


@pytest.mark.slow
def test_the_command_line_ends_a_bad_stage_output_with_the_command_that_remakes_it(tmp_path):
    cfg = compose_cfg(*SMALL, "stage=train")  # the run dir the command below trains in
    path = cfg.stage_dir("pairs").resolve() / "pairs.parquet"
    path.parent.mkdir(parents=True)
    CASES["random-bytes-as-parquet"].write(path)
    result = cli(tmp_path / "runs", "stage=train")
    line = error_line(result)
    assert line.startswith(f"error: {path}: cannot read as parquet (")
    assert line.endswith(f"; run `python -m src.main {' '.join(SMALL)} {REMAKE_TYPED}`")
    assert not (cfg.stage_dir("train") / "done.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, own",
    [("a-whitespace-only-chosen", True), ("parquet-an-empty-rejected", False)],
)
def test_the_command_line_refuses_blank_text_with_one_line(tmp_path, case, own):
    """A user's file: the line says what to correct and offers no command; the pairs stage's
    output: the command that makes it again."""
    cfg = compose_cfg(*SMALL, "stage=train")  # the run dir the command below trains in
    if own:
        path = tmp_path.resolve() / CASES[case].file
        args = ("stage=train", f"training.pairs={path}")
    else:
        path = cfg.stage_dir("pairs").resolve() / "pairs.parquet"
        path.parent.mkdir(parents=True)
        args = ("stage=train",)
    CASES[case].write(path)
    result = cli(tmp_path / "runs", *args)
    line = error_line(result)
    if own:
        assert re.fullmatch("error: " + expected(CASES[case], path), line), line
    else:
        assert re.match("error: " + expected(CASES[case], path).rstrip("$"), line), line
        assert line.endswith(f"; run `python -m src.main {' '.join(SMALL)} {REMAKE_TYPED}`"), line
    assert not list((tmp_path / "runs").rglob("train/done.json"))


NAMES = "training.pairs names a .parquet or .jsonl file of pairs"
NOT_READ = {  # training.pairs (given tmp_path), how it is made, and what the refusal says of it
    "missing": (lambda tmp: str(tmp / "nosuch.jsonl"), None, f"no such file; {NAMES}"),
    "missing-relative": (
        lambda tmp: "nosuch.jsonl",
        None,
        f"no such file ({Path.cwd() / 'nosuch.jsonl'}); {NAMES}",
    ),
    "a-folder": (lambda tmp: str(tmp / "pairs.jsonl"), Path.mkdir, f"not a file; {NAMES}"),
    "a-csv-file": (lambda tmp: str(tmp / "p.csv"), Path.touch, f"a '.csv' file; {NAMES}"),
    "a-url": (
        lambda tmp: "https://example.org/pairs.jsonl",
        None,
        "a URL; training.pairs names a local file (a .parquet or .jsonl file of pairs): "
        "download it first",
    ),
}


@pytest.mark.parametrize("stage", ["train", "all"])
@pytest.mark.parametrize("case", NOT_READ)
def test_a_pairs_file_the_training_cannot_read_is_refused_before_any_stage_or_folder(
    tmp_path, stage, case
):
    """Before the stages (under stage=all, generate, rank and pairs would run first), and
    before the lineage's folder, named after the file, is made: one line naming training.pairs
    and the path, exit 1."""
    value, make, said = NOT_READ[case]
    pairs = value(tmp_path)
    if make is not None:
        make(Path(pairs))
    result = cli(tmp_path / "runs", f"stage={stage}", f"training.pairs={pairs}")
    assert one_line_failure(result, 1) == f"error: training.pairs={pairs}: {said}"
    assert not (tmp_path / "runs").exists()
