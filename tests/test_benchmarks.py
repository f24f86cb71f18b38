"""The committed benchmark results are what the benchmark scripts make of their runs: each
results file, re-rendered by its script (`--render`: ratios recomputed from the runs, tables
rewritten), comes out as committed. A change to a script's ratios or tables that is not
re-rendered into benchmarks/results/ fails here."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.common import rerender
from src.config import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results"
SCRIPT = {  # results file prefix -> the script that measures it
    "generation_gpu": "bench_generation_gpu",
    "generation": "bench_generation",
    "ranking": "bench_ranking",
    "trainer": "bench_trainer",
    "scale": "bench_scale",
}


def script_of(result: Path) -> str:
    return next(s for prefix, s in SCRIPT.items() if result.stem.startswith(prefix))


@pytest.mark.parametrize("result", sorted(RESULTS.glob("*.json")), ids=lambda p: p.stem)
def test_a_results_file_rerenders_as_committed(result, tmp_path, capsys):
    script = importlib.import_module(f"benchmarks.{script_of(result)}")
    copy = tmp_path / result.name
    shutil.copy(result, copy)
    if hasattr(script, "ratios"):
        rerender(copy, script.ratios, script.markdown)
    else:  # a script that measures no ratios renders its tables alone
        copy.with_suffix(".md").write_text(script.markdown(json.loads(copy.read_text())))
    assert copy.read_text() == result.read_text(), f"run --render on {result}"
    assert copy.with_suffix(".md").read_text() == result.with_suffix(".md").read_text()
