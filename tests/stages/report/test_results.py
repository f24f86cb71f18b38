"""An iteration's figures as its finished stages wrote them (src/stages/report/results.py): a
stage counts as finished by its record as the one reader of records checks it."""

from __future__ import annotations

import json

from src.core.records import Finished, write_record
from src.stages.report.results import finished_stage


def test_a_stage_whose_record_was_edited_gives_no_figures_with_one_warning(tmp_path, capsys):
    stage_dir = tmp_path / "iter1" / "pairs"
    write_record(stage_dir, Finished("ab" * 32, {"pairs": 30}, {"seconds": 0.6}))
    assert finished_stage(stage_dir).values == {"pairs": 30, "seconds": 0.6}
    done = stage_dir / "done.json"
    record = json.loads(done.read_text())
    done.write_text(json.dumps({**record, "counts": {"pairs": 31}}))  # its sha256 left as it was
    assert finished_stage(stage_dir) is None
    said = f"warning: {done}: its content does not match its sha256; skipped\n"
    assert capsys.readouterr().err == said


def test_a_malformed_json_or_yaml_file_is_named_with_its_format_and_skipped(tmp_path, capsys):
    """A stage's JSON file and a saved config.yaml are read alike: absent, malformed or not a
    mapping, none, with one warning naming the file and what is wrong."""
    from src.stages.report.results import read_mapping

    assert read_mapping(tmp_path / "absent.json") is None
    cases = [("a.json", "JSON", "[1, 2]", "a JSON list, expected an object"),
             ("b.json", "JSON", '{"a": [', "malformed JSON ("),
             ("config.yaml", "YAML", "- 1\n", "YAML list, expected a mapping of config keys"),
             ("bad.yaml", "YAML", "method: [unclosed\n", "malformed YAML (")]  # fmt: skip
    for name, form, text, problem in cases:
        (tmp_path / name).write_text(text)
        assert read_mapping(tmp_path / name, form) is None
        assert capsys.readouterr().err.startswith(f"warning: {tmp_path / name}: {problem}")
    (tmp_path / "c.yaml").write_text("iter: 1\n")
    assert read_mapping(tmp_path / "c.yaml", "YAML") == {"iter": 1}
