"""The committed benchmark results are what the harness renders from their JSON: each results
file's Markdown comes out of `benchmarks.harness.render` as committed, and names the command and
the commit that made it. A results file edited by hand, or a renderer change not re-rendered
into benchmarks/results/ (`python -m benchmarks --render`), fails here."""

from __future__ import annotations

import json

import pytest

from benchmarks.harness import RESULTS, render, table, text


@pytest.mark.parametrize("result", sorted(RESULTS.glob("*.json")), ids=lambda p: p.stem)
def test_a_results_file_renders_as_committed_and_names_its_command_and_commit(result):
    data = json.loads(result.read_text())
    assert result.with_suffix(".md").read_text() == render(data), f"run --render on {result}"
    assert data["command"].startswith("python -m benchmarks")
    assert len(data["commit"]) == 40 and int(data["commit"], 16) >= 0


def test_render_writes_tables_from_data():
    result = {
        "title": "T",
        "command": "python -m benchmarks x",
        "commit": "a" * 40,
        "dirty": True,
        "blocks": [text("one", "two"), table(["a", "b"], [[1, 2.5]], rule=["---", "---:"])],
    }
    assert render(result) == (
        "# T\n\nMade by `python -m benchmarks x` at commit aaaaaaaaaaaa (with uncommitted "
        "changes).\n\none\ntwo\n\n| a | b |\n|---|---:|\n| 1 | 2.5 |\n"
    )


def test_a_scale_run_merged_into_an_earlier_result_replaces_only_the_rows_it_measured():
    from benchmarks.scale import merged

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


def test_render_names_a_missing_or_malformed_file_in_one_line_and_renders_the_others(
    tmp_path, capsys
):
    from benchmarks.__main__ import main

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"title": "T", "command": "c", "commit": "0" * 40, "blocks": []}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"title": "T"}))
    missing = tmp_path / "missing.json"
    assert main(["--render", str(missing), str(broken), str(partial), str(good)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith(f"error: {missing}: No such file")
    assert errors[1].startswith(f"error: {broken}: not a results file the harness wrote")
    assert errors[2] == f"error: {partial}: not a results file the harness wrote (no 'command')"
    assert good.with_suffix(".md").read_text().startswith("# T\n")
    assert not broken.with_suffix(".md").exists() and not partial.with_suffix(".md").exists()


@pytest.mark.parametrize("repeats", ["-1", "0"])
def test_a_run_count_below_one_is_refused_before_anything_runs(repeats, tmp_path, capsys):
    """`--repeats -1` exited 0 with an empty results file."""
    from benchmarks.stream import BENCHMARK

    out = tmp_path / "stream.json"
    with pytest.raises(SystemExit) as exit_:
        BENCHMARK.main(["--repeats", repeats, "--out", str(out)])
    assert exit_.value.code == 2
    assert f"argument --repeats: must be 1 or more, not {repeats}" in capsys.readouterr().err
    assert not out.exists()


def test_a_one_command_log_is_cut_into_each_stage_s_own_lines():
    """`python -m benchmarks iteration --one-command` reads each stage's figures (its engine's
    starts, its peak) from its own lines of stage=all's log: an eval's engine start is not
    generate's."""
    from benchmarks.iteration import by_stage

    log = [
        "python -m src.main ... stage=all",
        "[main] iteration 1 of runs/x",
        "[main] stage generate -> runs/x/iter1/generate",
        "[vllm] engine started in 90 s: policy",
        "[main] stage rank -> runs/x/iter1/rank",
        "[main] stage rank: finished with this config, skipped",
        "[main] stage eval -> runs/x/iter1/eval",
        "[vllm] engine started in 80 s: checkpoint",
        "[vllm] engine started in 70 s: policy",
    ]
    parts = by_stage(log)
    assert parts[""] == log[:2]
    assert parts["generate"] == log[2:4]
    assert parts["rank"] == log[4:6], "a line naming the stage without ' -> ' does not cut"
    assert [line for line in parts["eval"] if "engine started" in line] == log[7:]
