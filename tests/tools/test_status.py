"""`python -m src.status` (src/status.py): each lineage's stages as src.main judges them, on the
tiny lineages (tests/support/lineages.py) — finished, stale in src.main's words (a descendant of
an iteration trained again too), missing, running, damaged — the command that brings a lineage
up to date, the one src.main names, and nothing under the root changed by looking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from src.config import REPO_ROOT, Stage, to_yaml
from src.core.errors import StageError, as_typed, command_line
from src.core.identity import Key, stage_key
from src.core.records import Finished, read_record, write_record
from src.core.saved import save_config
from src.core.state import KEY_EDITED
from src.status import Cell, Iteration, Lineage, Status, as_text, main, status
from tests.support import lineages
from tests.support.helpers import SMALL, compose_cfg, entry, holder

# the tiny lineages: each made once per version of the code (~1 min)
slow = pytest.mark.slow
MAIN = "python -m src.main"
RETRAINED = "iteration 1's checkpoint, which this iteration's generate started from, was trained "


def files(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`, a file's bytes (None: a folder)."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}  # fmt: skip


def suggested(result: subprocess.CompletedProcess) -> str:
    """The command src.main's refusal ends with (`...; run `<command>``)."""
    assert result.returncode == 1, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1].rsplit("; run `", 1)[1].removesuffix("`")


def main_at(runs: Path, *args: str) -> subprocess.CompletedProcess:
    return entry("src.main", *args, env={"SELFPLAY_RUNS": str(runs), "HF_HUB_OFFLINE": "1"})


def states(row: Iteration) -> dict[str, str]:
    return {stage: cell.state for stage, cell in row.stages.items()}


def test_the_table_says_each_reason_once_under_it_within_100_columns():
    damaged = "/runs/m/sppo/r/iter1/train/done.json is not valid JSON (edited or damaged?)"
    writer = "pid 7 on node1 since 2026-01-01 00:00:00 UTC (`python -m src.main iter=2`, rank.lock)"
    again = Cell("stale", RETRAINED + "again since")
    rows = [
        Iteration(1, {"generate": Cell("finished"), "train": Cell("damaged", damaged)}),
        Iteration(2, {"generate": again, "rank": Cell("running", writer), "pairs": again,
                      "train": Cell("missing")}),
    ]  # fmt: skip
    fix = f"{MAIN} iter=1 pipeline.redo=[train]"
    text = as_text(Status("/runs", [Lineage("m/sppo/r", f"{MAIN} iter=2", rows, fix)]))
    assert text.splitlines() == [
        "paths.root: /runs",
        "",
        "m/sppo/r",
        "  iter  generate     rank         pairs        train        eval",
        "  1     finished     -            -            damaged [1]  -",
        "  2     stale [2]    running [3]  stale [2]    missing      -",
        f"  [1] {damaged}",
        "  [2] iteration 1's checkpoint, which this iteration's generate started from, was "
        "trained again",
        "      since",
        f"  [3] {writer}",
        f"  to bring it up to date (once what runs has ended): {fix}",
    ]
    assert max(len(line) for line in text.splitlines()) <= 100


def test_an_evaluated_lineage_is_judged_with_its_evals_whatever_its_newest_command_ran(tmp_path):
    """The newest command (a retrained stage's, which ran no eval) judges the lineage, and with
    its evals, where an iteration was evaluated: their stale ones are brought up to date too. A
    folder holding only the locks a redo took is no iteration."""
    from src.config.cli import last_command

    run = tmp_path / "m" / "sppo" / "r"
    for stage, head in (("eval", "iter=1 eval.enabled=true"),
                        ("train", "iter=1 pipeline.redo=[train] training.seed=3")):  # fmt: skip
        (run / "iter1" / stage).mkdir(parents=True)
        (run / "iter1" / stage / "config.yaml").write_text(f"# {MAIN} model=m {head}\n")
    os.utime(run / "iter1" / "eval" / "config.yaml", (0, 0))  # the eval's ran first
    (run / "iter2" / ".locks").mkdir(parents=True)
    newest = ["model=m", "iter=1", "training.seed=3"]
    assert last_command(run, tmp_path)[0] == [*newest, f"paths.root={tmp_path}"]
    (run / "iter1" / "eval" / "done.json").write_text("{}")
    words, _ = last_command(run, tmp_path)
    assert words == [*newest, f"paths.root={tmp_path}", "eval.enabled=true"]


def test_a_saved_command_is_read_back_word_for_word_a_value_with_a_blank_whole(tmp_path):
    """The head of a saved config is written by `command_line` and read by its inverse: a value
    holding a blank (or a quote) is one word, quoted back as one; a head written before words
    were quoted reads as it was written."""
    from src.config.cli import last_command

    run = tmp_path / "m" / "sppo" / "r"
    train = run / "iter1" / "train"
    train.mkdir(parents=True)
    words = ["model=m", "iter=1", "eval.llm_judge.system_turn=be fair", "run_name=it's"]
    save_config(train, "iter: 1\n", command_line(MAIN, words))
    assert last_command(run, tmp_path)[0] == [*words, f"paths.root={tmp_path}"]
    assert as_typed(command_line(MAIN, words)).endswith(
        " 'eval.llm_judge.system_turn=be fair' 'run_name=it'\"'\"'s'"
    )
    (train / "config.yaml").write_text(f"# {MAIN} model=m iter=1 run_name=it's\n")
    assert last_command(run, tmp_path)[0] == [*words[:2], words[3], f"paths.root={tmp_path}"]


def test_a_bad_override_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["model=nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: model=nope: no such option in config group 'model'")
    assert len(err.splitlines()) == 1


@slow
def test_a_finished_lineage_is_up_to_date_and_looking_changes_nothing(lineage):
    """The command itself, text and JSON: iteration 1's four stages finished, the eval not asked
    for; every file and folder under the root as it was, no lock file made."""
    runs = lineage("one-iteration").root
    before = files(runs)
    env = {**os.environ, "SELFPLAY_RUNS": str(runs), "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "src.status", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
        return done.stdout

    (run_dir,) = runs.glob("*/*/*")
    assert run().splitlines() == [
        f"paths.root: {runs}",
        "",
        str(run_dir.relative_to(runs)),
        "  iter  generate     rank         pairs        train        eval",
        "  1     finished     finished     finished     finished     -",
        "  up to date",
    ]
    (found,) = json.loads(run("--json"))["lineages"]
    assert found["iterations"] == [{"iter": 1, "stages": {
        s: {"state": "finished", "why": None} for s in ("generate", "rank", "pairs", "train")
    }}]  # fmt: skip
    assert found["command"] is None and found["judged_as"] is None
    assert files(runs) == before


@slow
def test_a_changed_setting_and_a_missing_iteration_as_src_main_says_them(lineage, monkeypatch):
    """Named by the command's own overrides: iteration 1's training stale naming the setting,
    iteration 2 missing, and the one command src.main's refusal gives (it redoes the training)."""
    runs = lineage("one-iteration").root
    monkeypatch.setenv("SELFPLAY_RUNS", str(runs))
    asked = [*SMALL, "iter=2", "training.warmup_ratio=0.2"]
    (found,) = status(asked).lineages
    one, two = found.iterations
    assert one.stages["train"] == Cell("stale", "training.warmup_ratio: 0.1 -> 0.2")
    assert states(one) == {"generate": "finished", "rank": "finished", "pairs": "finished",
                           "train": "stale"}  # fmt: skip
    assert two.stages == {s: Cell("missing") for s in ("generate", "rank", "pairs", "train")}
    assert found.command == suggested(main_at(runs, *asked))
    assert found.command.endswith(" iter=1 training.warmup_ratio=0.2 'pipeline.redo=[train]'")


@slow
def test_a_damaged_record_and_a_running_stage_are_shown_and_it_still_ends_0(lineage, monkeypatch):
    """Iteration 1's training record damaged: named with the records' own error; iteration 2's
    generation held by a writer: running, the writer named; the command src.main gives redoes
    the training."""
    runs = lineage("one-iteration").root
    monkeypatch.setenv("SELFPLAY_RUNS", str(runs))
    (run_dir,) = runs.glob("*/*/*")
    train = run_dir / "iter1" / Stage.train.value
    (train / "done.json").write_text("{")
    with pytest.raises(StageError) as damaged:
        read_record(train)
    proc = holder(run_dir / "iter2" / Stage.generate.value)
    try:
        (found,) = status([]).lineages
    finally:
        proc.kill()
        proc.wait()
    one, two = found.iterations
    assert one.stages["train"] == Cell("damaged", str(damaged.value))
    assert states(one)["pairs"] == "finished"
    generate = two.stages["generate"]
    assert generate.state == "running" and f"pid {proc.pid} on " in generate.why
    assert "`python -m src.main holder`" in generate.why
    assert states(two) == {"generate": "running", "rank": "missing", "pairs": "missing",
                           "train": "missing"}  # fmt: skip
    assert found.command == suggested(main_at(runs, *SMALL, "iter=2"))
    assert found.command.endswith(" iter=1 'pipeline.redo=[train]'")


def planned(command: str) -> list[tuple[int, list[str]]]:
    """What `command` (src.main's, as typed) would do, planned as src.main plans it: each
    iteration it runs and each stage's action."""
    from src.config.compose import compose_tree
    from src.schedule.plan import iterations
    from src.status import configs_of

    words = [w.strip("'") for w in command.split()[3:]]
    config_for_iter = configs_of(compose_tree(words))
    cfg = config_for_iter(compose_cfg(*words).iter)
    return [(p.cfg.iter, [s.action for s in p.steps]) for p in iterations(cfg, config_for_iter)]


@slow
def test_a_descendant_of_an_iteration_trained_again_is_stale_naming_it(lineage, monkeypatch):
    """Iteration 1 trained again under another setting after iteration 2 was made from it: each
    stage by its own record, iteration 1 finished (its training too, made at its own setting),
    every stage of iteration 2 stale because of that training; the command named remakes
    iteration 2 with the settings it was made with, running nothing of iteration 1."""
    runs = lineage("two-iterations").root
    monkeypatch.setenv("SELFPLAY_RUNS", str(runs))
    lineages.trained_again(runs, "training.warmup_ratio=0.2")
    (found,) = status([]).lineages
    one, two = found.iterations
    assert set(states(one).values()) == {"finished"}
    for stage in ("generate", "rank", "pairs", "train"):
        assert two.stages[stage] == Cell("stale", RETRAINED + "again since"), stage
    assert found.command == (f"{MAIN} {' '.join(SMALL)} iter=2 pipeline.require_previous=true "
                             "'pipeline.redo=[generate]'")  # fmt: skip
    assert planned(found.command) == [(2, ["redo"] * 4)]


@slow
def test_a_lineage_retrained_at_another_setting_keeps_its_evals_settings_and_what_is_intact(
    lineage, monkeypatch
):
    """An evaluated lineage whose iteration 1 was trained again at another setting by a command
    naming no eval settings: iteration 1's generate, rank, pairs and training finished, its eval
    stale (of the checkpoint as it was), iteration 2 stale; the command named makes that eval
    again in the settings it was made with, reading the training as it was made, and replaces
    nothing else."""
    runs = lineage("evaluated-two").root
    monkeypatch.setenv("SELFPLAY_RUNS", str(runs))
    lineages.trained_again(runs, "training.seed=7", "training.warmup_ratio=0.2")
    (found,) = status([]).lineages
    one, two = found.iterations
    assert states(one) == {**{s: "finished" for s in ("generate", "rank", "pairs", "train")},
                           "eval": "stale"}  # fmt: skip
    assert set(states(two).values()) == {"stale"}
    assert found.command == (f"{MAIN} {' '.join(SMALL)} eval.enabled=true iter=1 training.seed=7 "
                             "training.warmup_ratio=0.2 'pipeline.redo=[eval]'")  # fmt: skip
    assert planned(found.command) == [(1, ["skip"] * 4 + ["redo"])]


@slow
def test_a_lineage_whose_last_command_does_not_compose_is_judged_by_its_records(
    lineage, monkeypatch
):
    """Each stage by its own record whatever its command: finished; a stage missing, no command
    is named, and why."""
    runs = lineage("one-iteration").root
    monkeypatch.setenv("SELFPLAY_RUNS", str(runs))
    (saved,) = runs.glob("*/*/*/iter1/train/config.yaml")
    saved.write_text(f"# {MAIN} method=nope iter=1\n" + saved.read_text().split("\n", 1)[1])
    (found,) = status([]).lineages
    assert found.judged_as is None and found.command is None and found.note is None
    assert states(found.iterations[0]) == {s: "finished" for s in ("generate", "rank", "pairs",
                                                                    "train")}  # fmt: skip
    (saved.parent / "done.json").unlink()
    (found,) = status([]).lineages
    assert found.iterations[0].stages["train"] == Cell("missing")
    assert found.note.startswith(
        "its last command does not compose now: method=nope: no such option in config group"
    )
    assert found.note.endswith("; no command named") and found.command is None


def finished(command: str) -> Path:
    """Each stage `command` runs, recorded finished as it makes it (no stage runs); its run."""
    cfg = compose_cfg(*command.split()[3:])
    for stage in cfg.stages():
        save_config(cfg.stage_dir(stage), to_yaml(cfg), command)
        write_record(cfg.stage_dir(stage),
                     Finished(stage_key(cfg.as_tree(), stage), {}, {}))  # fmt: skip
    return Path(cfg.run.dir)


def test_an_eval_beside_the_base_models_shows_under_its_iteration_judged_by_its_own_record(
    tmp_path, monkeypatch
):
    """An eval by another judge (or against another reference: `eval/vs-<name>`) shows under its
    iteration, judged by its own record; one whose record's key is not its manifest's is stale,
    and the command named makes that eval again, by the command that made it, and nothing else."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path))
    command = f"{MAIN} logger=none iter=1 eval.enabled=true"
    finished(command)
    side = finished(f"{command} stage=eval eval.judged_by=other") / "iter1" / "eval"
    (folder,) = side.glob("vs-*")
    name = f"eval/{folder.name}"
    found = status([])
    (lineage,) = found.lineages
    assert lineage.iterations[0].stages[name] == Cell("finished") and lineage.command is None
    assert f"        {name}: finished" in as_text(found).splitlines()
    made = read_record(folder)["manifest"]
    write_record(folder, Finished(Key("made otherwise", made), {}, {}))
    (lineage,) = status([]).lineages
    assert lineage.iterations[0].stages[name] == Cell("stale", KEY_EDITED)
    assert lineage.command == f"{command} eval.judged_by=other 'pipeline.redo=[eval]'"


def test_the_base_models_eval_is_iteration_0_of_its_lineage_judged_as_the_others(
    tmp_path, monkeypatch
):
    """iter0/eval, the base model's own eval (`stage=eval iter=0`): a lineage with it alone is
    none to bring up to date; one with iterations shows it as iteration 0, eval alone, in text
    and JSON, by its own record: finished with the settings it was made with, whatever command
    ran last; judged as a command with other settings (named by that command's overrides), stale
    naming them, its redo the command once the iterations are up to date."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path))
    base = f"{MAIN} logger=none stage=eval iter=0 eval.temperature=0.5"
    finished(base)
    assert status([]).lineages == []
    finished(f"{MAIN} logger=none iter=1")
    finished(base)
    (lineage,) = status([]).lineages
    assert lineage.judged_as is None and lineage.command is None and lineage.note is None
    assert [row.iter for row in lineage.iterations] == [0, 1]
    assert lineage.iterations[0].stages == {"eval": Cell("finished")}, "as it was made"

    found = status(["logger=none", "iter=1"])
    (lineage,) = found.lineages
    assert lineage.judged_as == f"{MAIN} logger=none iter=1"
    stale = Cell("stale", "eval.temperature: 0.5 -> 0.0")
    assert lineage.iterations[0].stages == {"eval": stale}
    assert lineage.command == f"{MAIN} logger=none iter=0 stage=eval 'pipeline.redo=[eval]'"
    assert "  0     -            -            -            -            stale [1]" in (
        as_text(found).splitlines()
    )
    (shown,) = json.loads(json.dumps(asdict(found)))["lineages"]
    assert shown["iterations"][0] == {"iter": 0, "stages": {"eval": asdict(stale)}}
    # named by the command that made iteration 0: the same lineage, judged as that command
    assert status(["logger=none", "stage=eval", "iter=0"]).lineages == [lineage]


@slow
def test_a_saved_config_that_does_not_read_is_passed_over_as_src_main_passes_it(
    lineage, monkeypatch
):
    """A saved config that is not YAML: the stage is judged by its record alone, stale without
    the setting named, and the command is src.main's own refusal's (no traceback there)."""
    runs = lineage("one-iteration").root
    monkeypatch.setenv("SELFPLAY_RUNS", str(runs))
    (saved,) = runs.glob("*/*/*/iter1/train/config.yaml")
    saved.write_text("a: [")
    asked = [*SMALL, "training.warmup_ratio=0.2"]
    (found,) = status(asked).lineages
    train = found.iterations[0].stages["train"]
    assert train.state == "stale", train
    assert found.command == suggested(main_at(runs, *asked))
