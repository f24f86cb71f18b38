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
    "train_memory_gpu": "bench_train_memory_gpu",
    "generation": "bench_generation",
    "ranking": "bench_ranking",
    "trainer": "bench_trainer",
    "scale": "bench_scale",
    "stream": "bench_stream",
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


def test_a_scale_run_merged_into_an_earlier_result_replaces_only_the_rows_it_measured():
    from benchmarks.bench_scale import merged

    def row(size, layout, stage, **extra):
        return {"size": size, "layout": layout, "shards": layout if stage == "rank" else 1,
                "stage": stage, "work_ms_per_prompt": 1.0, "peak_tree_rss_mb": 100.0, **extra}  # fmt: skip

    def run(command):
        return {"command": command, "wall_s": 1.0}

    first = merged(None, run("a"), [row(1000, 1, "rank"), row(5000, 1, "rank")])
    second = merged(first, run("b"), [row(5000, 1, "rank", redone=True)])
    third = merged(second, run("c"), [row(1000, 8, "rank"), row(1000, 8, "pairs")])
    assert [r["command"] for r in third["runs"]] == ["a", "b", "c"]
    assert [(r["size"], r["layout"], r["stage"], r["run"]) for r in third["rows"]] == [
        (1000, 1, "rank", 0),
        (5000, 1, "rank", 1),
        (1000, 8, "rank", 2),
        (1000, 8, "pairs", 2),
    ]
    assert third["rows"][1]["redone"]
    # a run whose every row was measured again is dropped, and the rows' run numbers follow
    fourth = merged(third, run("d"), [row(1000, 1, "rank")])
    assert [r["command"] for r in fourth["runs"]] == ["b", "c", "d"]
    assert [(r["size"], r["layout"], r["run"]) for r in fourth["rows"]] == [
        (1000, 1, 2), (5000, 1, 0), (1000, 8, 1), (1000, 8, 1),
    ]  # fmt: skip
    assert [(g["stage"], g["sizes"]) for g in fourth["growth"]] == [("rank", [1000, 5000])]
    # one stage measured again (--keep --stages pairs): the other stages' rows stay
    fifth = merged(fourth, run("e"), [row(1000, 8, "pairs", again=True)])
    assert [(r["layout"], r["stage"], r["run"]) for r in fifth["rows"]][2:] == [
        (8, "rank", 1), (8, "pairs", 3),
    ]  # fmt: skip
    assert fifth["rows"][3]["again"]
