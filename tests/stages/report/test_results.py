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
