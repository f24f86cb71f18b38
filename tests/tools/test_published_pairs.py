"""src/training/published_pairs.py: a published DPO-form dataset into the pairs file
training.pairs reads — both forms of its rows, and each row that is no pair refused in one line
with nothing written; one conversion at a time per --out, and only its own leftovers removed."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.training.data import read_pairs
from tests.support.helpers import entry, holder


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# HuggingFaceH4/ultrafeedback_binarized's form: the prompt's text, whole conversations
WHOLE = [
    {"prompt": "Name a prime.", "prompt_id": "p1",
     "chosen": [turn("user", "Name a prime."), turn("assistant", "7")],
     "rejected": [turn("user", "Name a prime."), turn("assistant", "8")],
     "score_chosen": 9.0, "score_rejected": 2.0},
    {"prompt": "Say hi.", "prompt_id": "",
     "chosen": [turn("user", "Say hi."), turn("assistant", "Hi!")],
     "rejected": [turn("user", "Say hi."), turn("assistant", "No.")],
     "score_chosen": 8.0, "score_rejected": 1.0},
]  # fmt: skip
# run_wpo.py's other form: the prompt's turns apart, the answers alone
APART = [{"prompt": [turn("user", "Name a colour.")], "chosen": [turn("assistant", "Blue")],
          "rejected": [turn("assistant", "Seven")], "prompt_id": 7}]  # fmt: skip


def test_both_forms_become_pairs_that_training_reads(tmp_path):
    whole = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(WHOLE), whole)
    apart = tmp_path / "apart.jsonl"
    apart.write_text("".join(json.dumps(r) + "\n" for r in APART))
    out = tmp_path / "pairs.jsonl"
    done = entry("src.training.published_pairs", str(whole), str(apart), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"3 pairs -> {out} (training.pairs={out})" in done.stdout
    pairs = list(read_pairs(out, "dpo"))
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("Name a prime.", "7", "8"), ("Say hi.", "Hi!", "No."), ("Name a colour.", "Blue", "Seven")]  # fmt: skip
    assert pairs[0]["prompt_id"] == "p1"
    assert len(pairs[1]["prompt_id"]) == 16, "an empty prompt_id: the prompt's sha256"
    assert pairs[2]["prompt_id"] == "7", "a number kept as given"


@pytest.mark.parametrize(
    ("row", "said"),
    [
        ({**WHOLE[0], "chosen": [turn("system", "Be brief."), *WHOLE[0]["chosen"]],
          "rejected": [turn("system", "Be brief."), *WHOLE[0]["rejected"]]},
         "its prompt is the turns ['system', 'user'], not one user turn"),
        ({**WHOLE[0], "rejected": [turn("user", "Other."), turn("assistant", "8")]},
         "`chosen` and `rejected` answer other prompts"),
        ({**WHOLE[0], "chosen": "7"}, "`chosen` is not a conversation"),
        ({**APART[0], "chosen": [turn("assistant", "Blue"), turn("user", "More?")]},
         "`chosen` does not end in one assistant turn"),
        ({**WHOLE[0], "chosen": [turn("user", "Name a prime."), turn("assistant", " ")]},
         "chosen"),
        ({**WHOLE[0], "chosen": WHOLE[0]["chosen"][:1]},
         "`chosen` does not end in an assistant turn"),
        ({**WHOLE[0], "chosen": [turn("user", "Name a prime."), turn("assistant", "7\ud800")]},
         "'chosen' holds '\\ud800' at character 1, a lone surrogate"),
        ({**WHOLE[0], "prompt_id": 1.5},
         "its prompt_id 1.5 is neither an integer nor a string: a prompt_id is an integer"),
    ],
    ids=["a system turn", "other prompts", "a string", "a user turn last", "an empty answer",
         "no answer", "a lone surrogate", "a float prompt_id"],
)  # fmt: skip
def test_a_row_that_is_no_pair_is_one_line_naming_it_and_nothing_is_written(tmp_path, row, said):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(WHOLE[1]) + "\n" + json.dumps(row) + "\n")
    out = tmp_path / "pairs.jsonl"
    refused = entry("src.training.published_pairs", str(data), "--out", str(out))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"error: {data}:2") and said in line, line
    assert not out.exists() and not list(tmp_path.glob(".pairs.jsonl.*")), "nothing written"


def test_what_is_not_a_dataset_is_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for argv, code, said in [
        ([str(tmp_path / "none.parquet"), "--out", str(tmp_path / "p.jsonl")], 1, "no such file"),
        ([str(tmp_path), "--out", str(tmp_path / "p.jsonl")], 1, f"{tmp_path}: is a folder; "),
        ([str(empty), "--out", str(tmp_path / "p.jsonl")], 1, "no rows"),
        ([str(empty), "--out", str(tmp_path / "p.parquet")], 2, "the pairs file is JSON lines"),
        ([str(empty), "--out", str(empty)], 2, f"--out {empty} is also an input"),
    ]:
        refused = entry("src.training.published_pairs", *argv)
        (line,) = refused.stderr.strip().splitlines()
        assert refused.returncode == code and said in line, refused.stderr


def test_a_temporary_left_by_a_killed_run_goes_with_the_next_run(tmp_path):
    data, out = tmp_path / "apart.jsonl", tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(APART[0]) + "\n")
    left = tmp_path / ".pairs.jsonl.x1y2z3_4.tmp"  # atomic_path's, as a kill -9 leaves it
    left.write_text("half a file")
    done = entry("src.training.published_pairs", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"removed {left}, left by an interrupted run" in done.stderr
    assert not left.exists() and len(out.read_text().splitlines()) == 1


def test_a_second_conversion_to_the_same_out_is_refused_and_leaves_the_first_ones_temporary(
    tmp_path,
):
    data, out = tmp_path / "apart.jsonl", tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(APART[0]) + "\n")
    live = tmp_path / ".pairs.jsonl.a1b2c3d4.tmp"  # the first conversion's, being written
    live.write_text("half a file")
    first = holder(out, command=f"python -m src.training.published_pairs x --out {out}")
    try:
        refused = entry("src.training.published_pairs", str(data), "--out", str(out))
    finally:
        first.kill()
        first.wait()
    (line,) = refused.stderr.strip().splitlines()
    assert refused.returncode == 3, refused.stderr
    assert line.startswith(f"error: {out} is being written by pid {first.pid} on "), line
    assert f"(`python -m src.training.published_pairs x --out {out}`, " in line, line
    assert live.read_text() == "half a file" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", live.name, data.name]


def test_out_is_no_pattern_another_outputs_temporary_stays(tmp_path):
    data, out = tmp_path / "apart.jsonl", tmp_path / "*.jsonl"
    data.write_text(json.dumps(APART[0]) + "\n")
    other = tmp_path / ".other.jsonl.a1b2c3d4.tmp"  # another conversion's, to other.jsonl
    other.write_text("half a file")
    done = entry("src.training.published_pairs", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "removed" not in done.stderr and other.read_text() == "half a file"
    assert len(out.read_text().splitlines()) == 1
