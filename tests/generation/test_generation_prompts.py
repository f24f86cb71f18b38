"""Prompt loading, ids and bad-input messages (src/generation/prompts.py). Offline."""

import json
import re
from pathlib import Path

import pytest

from src.core.contracts import derive_prompt_id
from src.core.errors import StageError
from src.generation import prompts as P
from src.generation.prompts import Prompt, PromptsError, load_prompts

ITER1 = Path(__file__).resolve().parents[2] / "data" / "prompts" / "iter1.jsonl"


def _file_rows(path=ITER1):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------------------------------------
# The project's own prompts


def test_iter1_loads_120_prompts_with_the_file_ids_in_file_order():
    loaded = load_prompts(str(ITER1), id_column="prompt_id")
    rows = _file_rows()
    assert len(rows) == 120
    assert loaded.prompts == [Prompt(r["prompt_id"], r["prompt"]) for r in rows]
    assert len(loaded) == 120 and list(loaded) == loaded.prompts
    assert loaded.duplicates_dropped == 0
    assert loaded.source == str(ITER1)


def test_derived_ids_are_stable_distinct_and_depend_only_on_the_text():
    first = load_prompts(str(ITER1))
    second = load_prompts(str(ITER1))
    assert first.prompts == second.prompts
    ids = [p.prompt_id for p in first.prompts]
    assert len(set(ids)) == 120
    for p in first.prompts:
        assert p.prompt_id == derive_prompt_id(p.prompt)
        assert p.prompt_id.startswith("p") and len(p.prompt_id) == 17
        int(p.prompt_id[1:], 16)  # hex
    # a fixed value: the id must not change between versions or machines
    assert derive_prompt_id("hello") == "p2cf24dba5fb0a30e"
    assert derive_prompt_id("hello") != derive_prompt_id("hello ")


def test_parquet_round_trip_gives_the_same_prompts(tmp_path):
    parquet = _write_parquet(tmp_path / "iter1.parquet", _file_rows())
    for id_column in ("prompt_id", None):
        from_jsonl = load_prompts(str(ITER1), id_column=id_column)
        from_parquet = load_prompts(str(parquet), id_column=id_column)
        assert from_parquet.prompts == from_jsonl.prompts


def test_json_suffix_is_read_as_json_lines_and_integer_ids_become_strings(tmp_path):
    path = _write_jsonl(tmp_path / "p.json", [{"id": 7, "text": "a"}, {"id": 8, "text": "b"}])
    loaded = load_prompts(str(path), prompt_column="text", id_column="id")
    assert loaded.prompts == [Prompt("7", "a"), Prompt("8", "b")]
    parquet = _write_parquet(tmp_path / "p.parquet", [{"id": 7, "text": "a"}])
    assert load_prompts(str(parquet), prompt_column="text", id_column="id").prompts == [
        Prompt("7", "a")
    ]


def test_blank_lines_are_not_rows_and_line_numbers_stay_the_files(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(PromptsError, match=r"p\.jsonl:3: the prompt is empty"):
        load_prompts(str(path))


# ---------------------------------------------------------------------------------------------
# Sources that cannot be read


def test_hub_id_offline_says_so_and_suggests_a_local_file():
    with pytest.raises(PromptsError) as info:
        load_prompts("UCLA-AGI/data-mistral-7b-instruct-sppo-iter1", split="train")
    message = str(info.value)
    assert "UCLA-AGI/data-mistral-7b-instruct-sppo-iter1" in message
    assert "offline" in message and ".jsonl" in message and "\n" not in message
    assert isinstance(info.value, StageError)


def test_hub_unreachable_without_offline_flags_is_the_same_clear_error(monkeypatch):
    import datasets

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'owner/name' on the Hub (ConnectTimeout)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(PromptsError, match=r"'owner/name'.*cannot be fetched offline.*\.jsonl"):
        load_prompts("owner/name")


def test_hub_errors_that_are_not_bad_input_keep_their_traceback(monkeypatch):
    import datasets

    def broken(*args, **kwargs):
        raise RuntimeError("a bug inside the loader")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(RuntimeError, match="a bug inside the loader"):
        load_prompts("owner/name")


@pytest.mark.parametrize(
    ("offline", "error", "pattern"),
    [
        (False, "not_found", r"'owner/name' \(split 'train'\) not found on the Hub"),
        (True, "not_found", r"cannot be fetched offline \(HF_HUB_OFFLINE set\)"),
        (True, "split", r"'owner/name' \(split 'train'\): Unknown split"),
    ],
)
def test_hub_bad_input_is_one_line_without_the_loaders_traceback(
    monkeypatch, offline, error, pattern
):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def failing(*args, **kwargs):
        if error == "split":
            raise ValueError("Unknown split \"train\". Should be one of ['iter1'].")
        raise DatasetNotFoundError("Dataset 'owner/name' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(PromptsError, match=pattern) as info:
        load_prompts("owner/name")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_hub_dataset_rows_are_validated_like_file_rows(monkeypatch):
    import datasets

    rows = [
        {"prompt_id": "x1", "prompt": "a", "chosen": [{"role": "user", "content": "a"}]},
        {"prompt_id": "x2", "prompt": "b", "chosen": []},
        {"prompt_id": "x1", "prompt": "a", "chosen": []},
    ]
    calls = []

    def fake_load(source, split):
        calls.append((source, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    loaded = load_prompts("owner/name", split="iter1", id_column="prompt_id")
    assert calls == [("owner/name", "iter1")]
    assert loaded.prompts == [Prompt("x1", "a"), Prompt("x2", "b")]
    assert loaded.duplicates_dropped == 1
    with pytest.raises(
        PromptsError, match=r"dataset 'owner/name' split 'iter1': no column 'text'.*'chosen'"
    ):
        load_prompts("owner/name", split="iter1", prompt_column="text")
    with pytest.raises(PromptsError, match=r"row 1 \(prompt_id 'x1'\): 'chosen' is a list"):
        load_prompts("owner/name", split="iter1", prompt_column="chosen", id_column="prompt_id")


@pytest.mark.parametrize("source", ["missing/prompts.jsonl", "nope.parquet", "imdb", "./a/b"])
def test_a_local_path_that_does_not_exist_is_not_found(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PromptsError, match=rf"^prompt file not found: {source}"):
        load_prompts(source)


def test_unsupported_file_type_and_directory(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\nhello\n")
    with pytest.raises(PromptsError, match=r"unsupported prompt file type '\.csv'"):
        load_prompts(str(csv))
    with pytest.raises(PromptsError, match="not a file"):
        load_prompts(str(tmp_path))


def test_a_corrupt_parquet_file(tmp_path):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(PromptsError, match=r"p\.parquet: cannot read as parquet"):
        load_prompts(str(path))


# ---------------------------------------------------------------------------------------------
# Bad rows: one message each, naming file, row and prompt_id


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_file_holds_no_prompts(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(PromptsError, match=r"empty\.jsonl holds no prompts"):
        load_prompts(str(path))


def test_an_empty_parquet_file_holds_no_prompts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    with pytest.raises(PromptsError, match="holds no prompts"):
        load_prompts(str(path))


def test_a_row_without_the_prompt_column_names_the_row_and_its_columns(tmp_path):
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "b", "instruction": "y"}],
    )
    with pytest.raises(PromptsError) as info:
        load_prompts(str(path), id_column="prompt_id")
    message = str(info.value)
    assert f"{path}:2" in message and "prompt_id 'b'" in message
    assert "no column 'prompt'" in message and "'prompt_id', 'instruction'" in message


def test_a_parquet_file_without_the_column_names_its_columns(tmp_path):
    path = _write_parquet(tmp_path / "p.parquet", [{"instruction": "x", "id": "1"}])
    with pytest.raises(
        PromptsError, match=r"no column 'prompt' \(its columns: 'instruction', 'id'"
    ):
        load_prompts(str(path))
    with pytest.raises(PromptsError, match=r"no column 'prompt_id'"):
        load_prompts(str(path), prompt_column="instruction", id_column="prompt_id")


def test_a_row_without_the_id_column(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt_id": "a", "prompt": "x"}, {"prompt": "y"}])
    with pytest.raises(PromptsError, match=r"p\.jsonl:2: row has no id column 'prompt_id'"):
        load_prompts(str(path), id_column="prompt_id")


@pytest.mark.parametrize("bad_id", [None, "", "  ", [1], 1.5, True])
def test_an_unusable_id(tmp_path, bad_id):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt_id": bad_id, "prompt": "x"}])
    with pytest.raises(PromptsError, match=r"p\.jsonl:1: 'prompt_id' is"):
        load_prompts(str(path), id_column="prompt_id")


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_an_empty_or_whitespace_prompt_names_row_and_id(tmp_path, text):
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "b", "prompt": text}],
    )
    with pytest.raises(PromptsError, match=r"p\.jsonl:2 \(prompt_id 'b'\): the prompt is empty"):
        load_prompts(str(path), id_column="prompt_id")
    # derived ids: no id to name, the row still is
    with pytest.raises(PromptsError, match=r"p\.jsonl:2: the prompt is empty"):
        load_prompts(str(path))


@pytest.mark.parametrize(
    ("value", "kind"),
    [(None, "null"), (42, "42"), ([{"role": "user", "content": "hi"}], "a list")],
)
def test_a_non_string_prompt_names_row_id_and_type(tmp_path, value, kind):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt_id": "q7", "prompt": value}])
    with pytest.raises(PromptsError) as info:
        load_prompts(str(path), id_column="prompt_id")
    message = str(info.value)
    assert f"{path}:1 (prompt_id 'q7')" in message
    assert f"'prompt' is {kind}" in message and "expected a string" in message


def test_a_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",}\n', encoding="utf-8")
    with pytest.raises(PromptsError, match=rf"^{path}:3: malformed JSON line"):
        load_prompts(str(path))
    path.write_text('{"prompt": "a"}\n{"prompt": "b', encoding="utf-8")  # cut short
    with pytest.raises(PromptsError) as cut:
        load_prompts(str(path))
    assert str(cut.value) == (
        f"{path}:2: malformed JSON line: Unterminated string starting at (column 12)"
    )


def test_a_json_array_in_a_jsonl_file_or_a_non_object_row_is_explained(tmp_path):
    array = tmp_path / "a.jsonl"
    array.write_text('[\n{"prompt": "a"}\n]\n')
    with pytest.raises(PromptsError, match=r"a\.jsonl:1: malformed JSON line.*JSON array"):
        load_prompts(str(array))
    scalar = tmp_path / "s.jsonl"
    scalar.write_text('{"prompt": "a"}\n"just a string"\n')
    with pytest.raises(PromptsError, match=r"s\.jsonl:2: row is a JSON str, expected an object"):
        load_prompts(str(scalar))


def test_a_json_array_file_in_alpaca_evals_format_is_read_with_its_datasets(tmp_path):
    path = tmp_path / "alpaca_eval.json"
    rows = [
        {"instruction": "Say hi.", "output": "", "generator": "x", "dataset": "helpful_base"},
        {"instruction": "Name a colour.", "generator": "x"},
    ]
    path.write_text(json.dumps(rows))
    got = load_prompts(str(path), prompt_column="instruction")
    assert [(p.prompt, p.dataset) for p in got] == [
        ("Say hi.", "helpful_base"),
        ("Name a colour.", None),
    ]
    assert got.prompts[0].prompt_id == derive_prompt_id("Say hi.")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"instruction": "a"}, 3]', r"bad\.json\[1\]: a JSON int, expected an object"),
        ('[{"instruction": "a"},', r"bad\.json: malformed JSON array"),
        ('[{"prompt": "a"}]', r"bad\.json\[0\]: row has no column 'instruction'"),
    ],
)
def test_a_bad_json_array_names_the_file_and_the_row(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PromptsError, match=message):
        load_prompts(str(path), prompt_column="instruction")


def test_not_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(PromptsError, match=r"p\.jsonl: not UTF-8"):
        load_prompts(str(path))


LONE = "\ud800"  # half of a UTF-16 surrogate pair: valid JSON escaped, not encodable text


@pytest.mark.parametrize(
    ("row", "id_column", "said"),
    [
        (
            {"prompt_id": "b", "prompt": f"bad {LONE} text"},
            "prompt_id",
            r" \(prompt_id 'b'\): the prompt",
        ),
        ({"prompt": f"bad {LONE} text"}, None, r": the prompt"),  # the derived id hashes UTF-8
        ({"prompt_id": f"b{LONE}", "prompt": "fine"}, "prompt_id", r": 'prompt_id'"),
        ({"prompt": "fine", "dataset": f"d{LONE}"}, None, r": 'dataset'"),
    ],
)
def test_a_lone_surrogate_is_refused_naming_the_row_and_where_it_is(tmp_path, row, id_column, said):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt_id": "a", "prompt": "x"}, row])
    assert "\\ud800" in path.read_text(), "json.dumps escapes it, as a file in the wild does"
    with pytest.raises(PromptsError) as refused:
        load_prompts(str(path), id_column=id_column)
    message = str(refused.value)
    assert re.match(
        rf"^{re.escape(str(path))}:2{said} holds '\\ud800' at character \d+, a lone surrogate",
        message,
    ), message
    assert "replace it" in message


def test_a_lone_surrogate_in_a_json_array_names_its_index_and_a_pair_is_one_character(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text('[{"instruction": "smile \\ud83d\\ude00"}, {"instruction": "cut \\ud83d"}]')
    with pytest.raises(
        PromptsError, match=r"eval\.json\[1\]: the prompt holds '\\ud83d' at character 4"
    ):
        load_prompts(str(path), prompt_column="instruction")
    path.write_text('[{"instruction": "smile \\ud83d\\ude00"}]')
    assert (
        load_prompts(str(path), prompt_column="instruction").prompts[0].prompt == "smile \U0001f600"
    )


# ---------------------------------------------------------------------------------------------
# Duplicates and max_prompts


def test_the_same_id_with_different_text_is_an_error_naming_both_rows(tmp_path):
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt_id": "a", "prompt": "x"},
            {"prompt_id": "b", "prompt": "y"},
            {"prompt_id": "a", "prompt": "z"},
        ],
    )
    with pytest.raises(PromptsError) as info:
        load_prompts(str(path), id_column="prompt_id")
    message = str(info.value)
    assert f"{path}:3" in message and "prompt_id 'a'" in message and f"{path}:1" in message


def test_same_text_duplicates_are_dropped_keeping_the_first_and_counted(tmp_path):
    rows = [
        {"prompt_id": "a", "prompt": "x"},
        {"prompt_id": "b", "prompt": "y"},
        {"prompt_id": "a", "prompt": "x"},
        {"prompt_id": "c", "prompt": "x"},  # same text, other id: a different prompt
        {"prompt_id": "b", "prompt": "y"},
    ]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    loaded = load_prompts(str(path), id_column="prompt_id")
    assert [p.prompt_id for p in loaded.prompts] == ["a", "b", "c"]
    assert loaded.duplicates_dropped == 2
    # with derived ids, the same text is the same prompt
    derived = load_prompts(str(path))
    assert [p.prompt for p in derived.prompts] == ["x", "y"]
    assert derived.duplicates_dropped == 3


def test_max_prompts_keeps_the_first_unique_prompts_and_reads_no_further(tmp_path):
    rows = [{"prompt": "x"}, {"prompt": "x"}, {"prompt": "y"}, {"prompt": "z"}, {"prompt": ""}]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    loaded = load_prompts(str(path), max_prompts=2)
    assert [p.prompt for p in loaded.prompts] == ["x", "y"]
    assert loaded.duplicates_dropped == 1
    assert len(load_prompts(str(ITER1), max_prompts=5)) == 5
    assert load_prompts(str(ITER1), max_prompts=5).prompts == load_prompts(str(ITER1)).prompts[:5]
    with pytest.raises(PromptsError, match="max_prompts must be >= 1"):
        load_prompts(str(ITER1), max_prompts=0)


def test_every_error_is_a_stage_error():
    assert issubclass(P.PromptsError, StageError)
