"""The dispatcher: validates first, saves the config, runs the stages in the registry's order."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import src.assets.preflight as preflight
import src.schedule.run as running
from src.config import REPO_ROOT, Config, PipelineConfig, Stage, to_yaml
from src.core import locks
from src.core.diff import Change, StageState, Why
from src.core.errors import EnvironmentFailure, Redo, StageError, describe
from src.core.fingerprints import read_upstream
from src.core.identity import stage_key
from src.core.records import Finished, read_record, write_record
from src.core.registry import STAGES
from src.core.saved import save_config
from src.core.state import Judge
from src.main import run
from src.schedule import remedies
from src.schedule.plan import iterations, plan_iteration
from src.schedule.run import dispatch, stage_runners
from src.stages import StageResult
from tests.support.helpers import BUILT_ON_DEMAND, compose_cfg, same_bytes

pytestmark = pytest.mark.usefixtures("runs_in_tmp")  # tests/conftest.py


K_CHANGED = Change("method.K: 3 -> 5", Why.value, "method.K")


@pytest.fixture
def recorded(monkeypatch):
    """Every stage replaced by one that records (stage, cfg): what dispatch runs, in order; it
    returns no record (as a shard that leaves the stage to another)."""
    calls = []

    def runners(stages):
        return {
            s: (lambda cfg, s=s: calls.append((s, cfg)) or StageResult({}, None)) for s in stages
        }

    monkeypatch.setattr(running, "stage_runners", runners)
    # stages replaced so read no model or dataset: the check of what they would read is
    # tests/tools/test_assets.py's (the default config's are hub ids, not in this offline cache)
    monkeypatch.setattr(preflight, "require_assets_here", lambda plans, command: None)
    # nor run on a device: the default hardware's GPU is not asked for on this CPU machine
    monkeypatch.setattr(preflight, "require_machine", lambda plans: None)
    return calls


def test_dispatch_saves_the_resolved_config_then_runs_the_stage(recorded):
    cfg = compose_cfg("stage=rank", "iter=2", "logger=none")
    run(cfg, "python -m src.main stage=rank iter=2 logger=none", [])

    assert [s for s, _ in recorded] == [Stage.rank] and isinstance(recorded[0][1], Config)
    saved = cfg.stage_dir(Stage.rank) / "config.yaml"
    text = saved.read_text()
    assert text.splitlines()[0] == "# python -m src.main stage=rank iter=2 logger=none"
    assert OmegaConf.create(text) == OmegaConf.create(to_yaml(cfg))
    assert OmegaConf.create(text).run.init_policy.endswith("iter1/train/checkpoint")
    assert list(saved.parent.iterdir()) == [saved], "no temporary files left behind"


def test_the_record_a_stage_returns_is_written_after_it_unless_its_lock_was_lost(monkeypatch):
    """The scheduler writes the record the stage's run returns; with the stage's lock file
    deleted while it ran (`rm -r .locks`: another writer may be beside it), none: LockLost,
    and no done.json to be trusted."""
    cfg = compose_cfg("stage=pairs", "logger=none")
    command = "python -m src.main stage=pairs logger=none"
    stage_dir = cfg.stage_dir(Stage.pairs)
    lose_lock = False

    def pairs(cfg):
        if lose_lock:
            shutil.rmtree(stage_dir.parent / locks.LOCKS)
        made = Finished(stage_key(cfg.as_tree(), Stage.pairs), {"pairs": 1}, {})
        return StageResult({"pairs": 1}, made)

    monkeypatch.setattr(running, "stage_runners", lambda stages: {Stage.pairs: pairs})
    dispatch(iterations(cfg), command)
    assert read_record(stage_dir)["counts"] == {"pairs": 1}

    lose_lock = True
    with pytest.raises(locks.LockLost):
        redo = replace(cfg, pipeline=PipelineConfig(redo=[Stage.pairs]))
        dispatch(iterations(redo), command)
    assert not (stage_dir / "done.json").exists()


@pytest.mark.parametrize(
    ("evaluate", "stages"),
    [
        ("false", [Stage.generate, Stage.rank, Stage.pairs, Stage.train]),
        ("true", [Stage.generate, Stage.rank, Stage.pairs, Stage.train, Stage.eval]),
    ],
)
def test_stage_all_runs_the_pipeline_in_order(recorded, evaluate, stages):
    cfg = compose_cfg("stage=all", "logger=none", f"eval.enabled={evaluate}")
    run(cfg, "python -m src.main", [])
    assert [s for s, _ in recorded] == stages
    assert all((cfg.stage_dir(s) / "config.yaml").is_file() for s in stages)


def test_a_record_of_an_earlier_version_is_refused_with_the_redo_command(recorded):
    cfg = compose_cfg("stage=pairs", "logger=none")
    stage_dir = cfg.stage_dir(Stage.pairs)
    stage_dir.mkdir(parents=True)
    (stage_dir / "done.json").write_text(json.dumps({"fingerprint": "of-an-earlier-version"}))
    command = "python -m src.main stage=pairs logger=none"
    with pytest.raises(StageError) as refused:
        run(cfg, command, [])
    assert re.fullmatch(
        r"error: .* was recorded by an earlier version of selfplay-lab, .*; to redo it .*; "
        r"run `python -m src\.main stage=pairs logger=none iter=1 \'pipeline\.redo=\[pairs\]\'`",
        describe(refused.value, command),
    )
    assert recorded == [], "nothing runs over a record it cannot read"


def test_training_on_other_pairs_where_a_checkpoint_was_made_is_told_a_lineage_of_its_own(
    recorded,
):
    """run_name set to a finished lineage's, with a pairs file of the user's own: the fix is a
    run name of its own, never a redo that would replace the checkpoint the other pairs made."""
    first = "python -m src.main stage=train logger=none run_name=mine"
    cfg = compose_cfg(*first.split()[3:])
    run(cfg, first, [])
    write_record(
        cfg.stage_dir(Stage.train), Finished(stage_key(cfg.as_tree(), Stage.train), {}, {})
    )
    command = f"{first} training.pairs=tests/data/pairs_tiny.jsonl"
    with pytest.raises(StageError) as refused:
        run(compose_cfg(*command.split()[3:]), command, [])
    said = describe(refused.value, command)
    assert "train on these pairs in a lineage of its own" in said
    assert said.endswith(
        "run `python -m src.main stage=train logger=none run_name=mine-pairs-pairs_tiny "
        "training.pairs=tests/data/pairs_tiny.jsonl`"
    ), said
    assert [s for s, _ in recorded] == [Stage.train], "nothing ran the second time"


def test_the_lineage_offered_for_other_pairs_is_one_no_other_pairs_trained(recorded):
    """Three pairs files of one stem in turn: the name offered for the third is neither the first
    lineage nor the second's, and never the stem twice (`...-pairs-mine-pairs-mine`)."""

    def free_run_name(cfg: Config) -> str:
        return remedies.free_run_name(cfg, "training.pairs", [(cfg, Stage.train)])

    def trained(pairs: Path, run_name: str) -> Config:
        cfg = compose_cfg("stage=train", "logger=none", f"training.pairs={pairs}",
                          f"run_name={run_name}")  # fmt: skip
        save_config(cfg.stage_dir(Stage.train), to_yaml(cfg), "python -m src.main")
        made = Finished(stage_key(cfg.as_tree(), Stage.train), {}, {})
        write_record(cfg.stage_dir(Stage.train), made)
        return cfg

    folders = [Path(compose_cfg().paths.root).parent / f"p{n}" for n in range(3)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / "tests/data/pairs_tiny.jsonl", folder / "mine.jsonl")
    first = trained(folders[0] / "mine.jsonl", "mine-pairs-mine")
    asked = compose_cfg("stage=train", "logger=none", f"training.pairs={folders[1]}/mine.jsonl",
                        f"run_name={first.run_name}")  # fmt: skip
    assert free_run_name(asked) == "mine-pairs-mine-2"
    trained(folders[1] / "mine.jsonl", "mine-pairs-mine-2")
    third = replace(asked, training=replace(asked.training, pairs=f"{folders[2]}/mine.jsonl"))
    assert free_run_name(third) == "mine-pairs-mine-3"
    assert free_run_name(asked) == "mine-pairs-mine-2", "its own lineage, trained"


def finish_iterations(overrides: list[str], iterations: int) -> None:
    """Iterations 1..`iterations` of `overrides` finished: each stage's config and record."""
    for t in range(1, iterations + 1):
        cfg = compose_cfg(*overrides, f"iter={t}")
        for stage in STAGES:
            save_config(cfg.stage_dir(stage), to_yaml(cfg), "python -m src.main")
            made = Finished(stage_key(cfg.as_tree(), stage), {}, {})
            write_record(cfg.stage_dir(stage), made)


def test_other_pairs_in_several_finished_iterations_are_told_a_lineage_first(recorded):
    """Two iterations trained on the pairs stage's pairs, asked again with a file of the user's
    own under the same run_name: the fix is a run name of its own; pipeline.redo_stale=true is
    named second, with the two checkpoints it would replace."""
    made = ["logger=none", "run_name=mine"]
    finish_iterations(made, 2)
    asked = [*made, "training.pairs=tests/data/pairs_tiny.jsonl", "iter=2"]
    command = "python -m src.main " + " ".join(asked)
    with pytest.raises(StageError) as refused:
        run(compose_cfg(*asked), command, [], lambda t: compose_cfg(*asked, f"iter={t}"))
    said = describe(refused.value, command)
    assert said.endswith(
        "train on these pairs in a lineage of its own, or replace iterations 1 and 2's train in "
        "mine (pipeline.redo_stale=true); run `python -m src.main logger=none "
        "run_name=mine-pairs-pairs_tiny training.pairs=tests/data/pairs_tiny.jsonl iter=2`"
    ), said
    assert recorded == []


def test_stale_stages_of_several_iterations_are_one_refusal_made_before_any_build(
    recorded, monkeypatch, capsys
):
    """`stage=all iter=2` after both iterations finished with other eval settings: one refusal,
    before the stages' libraries load and the tiny models' build, whose fix redoes every stale
    stage of both in one command."""
    made = ["logger=none", "eval.enabled=true"]
    finish_iterations(made, 2)
    monkeypatch.setattr(preflight, "ensure_tiny_models", lambda cfg: pytest.fail("built first"))
    monkeypatch.setattr(running, "stage_runners", lambda stages: pytest.fail("imported first"))
    asked = [*made, "eval.bootstrap=10", "iter=2"]
    command = "python -m src.main " + " ".join(asked)
    with pytest.raises(StageError) as refused:
        run(compose_cfg(*asked), command, [], lambda t: compose_cfg(*asked, f"iter={t}"))
    said = describe(refused.value, command)
    assert said.startswith(
        "error: iteration 1's eval and iteration 2's eval were made with a different configuration "
        "(eval.bootstrap: 1000 -> 10); "
    ), said
    assert said.endswith(f"run `{command} pipeline.redo_stale=true`"), said
    assert "running it first" not in capsys.readouterr().err  # refused, so none runs first
    assert recorded == []


def test_evals_by_other_judges_are_offered_a_folder_beside_the_finished_ones_first(recorded):
    """Evals finished by the lineage's judge, asked for with another: the fix judges the
    checkpoint again in eval/vs-base@<judge>/, beside the finished eval, which it keeps; the redo
    that would replace that eval's figures is named second. Several iterations at once: one
    refusal, one fix, numbered where a folder of that name holds an eval made otherwise."""
    made = ["logger=none", "eval.enabled=true"]
    finish_iterations(made, 2)
    first = compose_cfg(*made, "iter=2")
    judge = ["+ranker@eval.judge=tiny-pairrm"]
    one = [*made, *judge, "stage=eval", "iter=2"]
    command = "python -m src.main " + " ".join(one)
    with pytest.raises(StageError) as refused:
        run(compose_cfg(*one), command, [])
    said = describe(refused.value, command)
    assert said.startswith(
        f"error: {first.stage_dir(Stage.eval)} was judged by other judges (eval.judge."
    ), said
    assert said.endswith(
        "; keep those figures and judge again beside them, in iter2/eval/vs-base@tiny-pairrm/ "
        f"(eval.judged_by=tiny-pairrm), or replace iteration 2's eval in {first.run_name} "
        f"(iter=2 pipeline.redo=[eval]); run `{command} eval.judged_by=tiny-pairrm`"
    ), said
    run(compose_cfg(*one, "eval.judged_by=tiny-pairrm"), command, [])
    (ran,) = [(s, c.stage_dir(s)) for s, c in recorded]
    assert ran == (Stage.eval, first.stage_dir(Stage.eval) / "vs-base@tiny-pairrm")
    assert read_record(first.stage_dir(Stage.eval)) is not None, "the first judge's eval kept"

    other = compose_cfg(*made, *judge, "eval.judged_by=tiny-pairrm", "eval.bootstrap=10")
    write_record(other.stage_dir(Stage.eval),
                 Finished(stage_key(other.as_tree(), Stage.eval), {}, {}))  # fmt: skip
    every = [*made, *judge, "iter=2"]
    command = "python -m src.main " + " ".join(every)
    with pytest.raises(StageError) as refused:
        run(compose_cfg(*every), command, [], lambda t: compose_cfg(*every, f"iter={t}"))
    said = describe(refused.value, command)
    assert said.startswith("error: iteration 1's eval and iteration 2's eval were made "), said
    assert said.endswith(
        "; keep those figures and judge again beside them, in each iteration's "
        "eval/vs-base@tiny-pairrm-2/ (eval.judged_by=tiny-pairrm-2), or replace iterations 1 "
        f"and 2's eval in {first.run_name} (pipeline.redo_stale=true); run `{command} "
        "eval.judged_by=tiny-pairrm-2`"
    ), said
    assert len(recorded) == 1


@pytest.mark.parametrize(
    ("keys", "name"),
    [
        (["eval.judge.model"], "tiny-pairrm"),  # the pairwise judge: its model's name
        (["eval.llm_judge.model"], "gpt-4o"),  # the chat judge: its name
        (
            ["eval.llm_judge.base_url", "ranker.backend", "eval.llm_judge.model"],
            "tiny-pairrm_gpt-4o",
        ),
    ],
)
def test_the_folder_offered_to_other_judges_is_named_by_the_judges_changed(keys, name):
    cfg = compose_cfg("logger=none", "stage=eval", "+ranker@eval.judge=tiny-pairrm",
                      "eval.llm_judge.model=openai/gpt-4o")  # fmt: skip
    assert remedies.judges_name(cfg, [cfg], keys) == name


def test_every_stage_input_is_a_config_key():
    """A misspelt key in a StageSpec's inputs would hash as null and never change: every one
    names a key of the composed config (eval.judge's keys: with a judge chosen, as model=tiny-* does)."""
    tree = compose_cfg("model=tiny-mistral").as_tree()
    for spec in STAGES.values():
        for key in spec.inputs:
            node = tree
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{spec.stage.value}: {key}"
                node = node[part]


def test_every_stage_has_its_run_function():
    """The registry declares every stage, and the scheduler finds the run function of each in
    src/stages/ (the real modules, imported)."""
    declared = [s for s in Stage if s != Stage.all]
    assert list(STAGES) == declared
    runners = stage_runners(declared)
    for stage, stage_run in runners.items():
        assert callable(stage_run) and stage_run.__module__ == f"src.stages.{stage.value}"


@pytest.mark.parametrize(
    ("stage", "model_code"),
    [(Stage.pairs, False), pytest.param(Stage.generate, True, marks=pytest.mark.slow)],
)
def test_a_command_imports_the_stages_it_runs_and_the_model_code_before_them(stage, model_code):
    """A fresh interpreter: pairs alone loads neither the other stages nor transformers' model
    code; a stage that loads a model has that code in before it starts (its peak excludes it)."""
    code = (
        "import sys; import src.schedule.run as s; from src.config import Stage; "
        f"s.stage_runners([Stage.{stage.value}]); "
        "print(sorted(m for m in sys.modules if m.startswith('src.stages.') and m.count('.') == 2)); "
        "print('transformers.modeling_utils' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    modules, loaded = out.stdout.split("\n")[:2]
    assert f"'src.stages.{stage.value}'" in modules
    assert not any(f"'src.stages.{o.value}'" in modules for o in (Stage.train, Stage.eval))
    assert loaded == str(model_code)


@pytest.mark.slow
def test_tiny_models_are_built_on_demand(tmp_path, monkeypatch, recorded, tiny_dir):
    """A command naming tiny models that are not cached builds what it reads, nothing else, from
    seed 0: the shared build's bytes.

    Slow: two tiny models built and taught (tiny-gemma2 and tiny-pairrm: ~45 s on one CPU)."""
    monkeypatch.setenv("SELFPLAY_TINY_DIR", str(tmp_path / "tiny"))
    cfg = compose_cfg("model=tiny-gemma2", "stage=generate")
    assert Path(cfg.model.path) == tmp_path / "tiny" / "tiny-gemma2"
    run(cfg, "python -m src.main model=tiny-gemma2 stage=generate", [])
    built = sorted(p.name for p in (tmp_path / "tiny").iterdir() if not p.name.startswith("."))
    assert built == sorted(BUILT_ON_DEMAND), "the policy and the judge it names, nothing else"
    assert (tmp_path / "tiny" / "tiny-gemma2" / "config.json").is_file()
    for name in built:  # from seed 0, as the shared build
        same_bytes(tmp_path / "tiny" / name, tiny_dir / name)


def test_training_reads_the_pairs_stage_only_through_a_pairs_file_in_its_folder():
    """The train stage's declared `consumes_via`: the pairs stage's output is what it reads unless
    training.pairs names a file of the user's own, which no record of this run covers."""
    cfg = compose_cfg("logger=none")
    assert read_upstream(cfg.as_tree(), Stage.train) == Stage.pairs
    users = compose_cfg("logger=none", "training.pairs=tests/data/pairs_tiny.jsonl")
    assert read_upstream(users.as_tree(), Stage.train) is None
    assert read_upstream(cfg.as_tree(), Stage.rank) == Stage.generate
    assert (
        read_upstream(cfg.as_tree(), Stage.generate) is None
    )  # pi_{t-1}, no stage of this iteration


def test_the_base_models_eval_reads_the_base_model_alone():
    """`stage=eval iter=0` evaluates pi_0 itself: its eval reads no stage, and its fingerprint is
    made of the base policy and the eval's own keys, so that a lineage's method and training
    settings leave it finished, and another base model does not."""
    base = ["logger=none", "stage=eval", "iter=0"]
    cfg = compose_cfg(*base)
    assert cfg.stage_dir(Stage.eval) == cfg.layout.iteration_dir(0) / "eval"
    assert read_upstream(cfg.as_tree(), Stage.eval) is None
    made = stage_key(cfg.as_tree(), Stage.eval)
    for other in ("method.K=3", "training.learning_rate=1e-6", "generation.temperature=0.5"):
        assert stage_key(compose_cfg(*base, other).as_tree(), Stage.eval) == made, other
    for other in ("model=tiny-gemma2", "eval.temperature=0.5"):
        assert stage_key(compose_cfg(*base, other).as_tree(), Stage.eval) != made, other


PIPELINE = [Stage.generate, Stage.rank, Stage.pairs, Stage.train]


@pytest.mark.parametrize(
    ("statuses", "asked", "steps"),
    [
        ("todo todo todo todo", [], "run run run run"),
        ("done done todo todo", [], "skip skip run run"),
        ("done done done done", ["pipeline.redo=[rank]"], "skip redo redo redo"),
        ("done done stale done", [], "skip skip refuse skip"),
        ("done stale stale todo", ["pipeline.redo_stale=true"], "skip redo redo redo"),
        ("done stale done done", ["pipeline.redo=[pairs]"], "skip refuse redo redo"),
        ("done done done stale", ["pipeline.redo=[rank]"], "skip redo redo redo"),
    ],
)
def test_the_plan_of_an_iteration_from_its_stages_states(statuses, asked, steps):
    """Skip what is finished under this config, refuse what is finished under another unless a
    redo reaches it, redo from the first stage asked for (or, with redo_stale, the first stale
    one) to the end, run the rest; each step says why as the console says it."""
    cfg = compose_cfg("logger=none", *asked)
    states = [
        StageState(stage, status, [K_CHANGED] if status == "stale" else [])
        for stage, status in zip(PIPELINE, statuses.split(), strict=True)
    ]
    plan = plan_iteration(states, cfg)
    assert [step.stage for step in plan] == PIPELINE
    assert [step.action for step in plan] == steps.split()
    for step in plan:
        if step.action == "skip":
            assert step.reason == "finished with this config, skipped"
        if step.action == "redo":
            assert step.reason == f"redoing ({asked[0].split('=')[0]})"
        if step.action == "refuse":
            assert step.stale.stage == step.stage and step.reason == str(step.error)
            assert "was made with a different configuration (method.K: 3 -> 5)" in step.reason
            assert step.error.fix == Redo(step.stage, cfg.iter)


def test_a_record_of_an_earlier_version_is_planned_as_a_refusal_that_says_so():
    cfg = compose_cfg("logger=none")
    earlier = Change("recorded by an earlier version of selfplay-lab", Why.version)
    states = [StageState(Stage.generate, "done"), StageState(Stage.rank, "stale", [earlier])]
    (refused,) = [step for step in plan_iteration(states, cfg) if step.action == "refuse"]
    assert refused.stage == Stage.rank and "recorded by an earlier version" in refused.reason


@pytest.mark.parametrize("asked", [[], ["pipeline.redo=[rank]"]])
def test_a_stage_run_alone_is_refused_when_what_it_reads_is_stale_even_redone(asked):
    """stage=rank over a generation made under another config: refused, redo or not (its redo
    would rank rows made under another config), naming the generation."""
    cfg = compose_cfg("logger=none", "stage=rank", *asked)
    generated = StageState(Stage.generate, "stale", [K_CHANGED])
    (step,) = plan_iteration([StageState(Stage.rank, "done")], cfg, generated)
    assert step.action == "refuse" and step.stale == generated
    assert "stage rank reads it" in step.reason and step.error.fix == Redo(Stage.generate, 1)
    (step,) = plan_iteration(
        [StageState(Stage.rank, "done")], cfg, StageState(Stage.generate, "done")
    )
    assert step.action == ("redo" if asked else "skip")


# --- remedies, chosen by kind -------------------------------------------------------------------

BACKEND = Change("generation.backend: 'hf' -> 'vllm'", Why.value, "generation.backend")
TEMPERATURE = Change("generation.temperature: 0.7 -> 0.9", Why.value, "generation.temperature")
JUDGE = Change("rank's ranker.model: 'a' -> 'b'", Why.value, "ranker.model")
EDITED = Change(
    "data.prompts: p.jsonl changed since this stage read it", Why.content, "data.prompts"
)
RETRAINED = Change("iteration 1's checkpoint ... was trained again since", Why.retrained)
ANCESTOR = Change("iteration 1's training ... is stale", Why.ancestor, "data.prompts", Why.content)
AFTER = Change("iteration 1's checkpoint was trained again after this eval", Why.trained_after)
EARLIER = Change("recorded by an earlier version of selfplay-lab", Why.version)
EVAL_JUDGE = Change("eval.judge.model: 'a' -> 'b'", Why.value, "eval.judge.model")
CHAT_JUDGE = Change("eval.llm_judge.model: 'a' -> 'b'", Why.value, "eval.llm_judge.model")
EVAL_TEMPERATURE = Change("eval.temperature: 0.0 -> 0.7", Why.value, "eval.temperature")


@pytest.mark.parametrize(
    ("stage", "changes", "kind"),
    [
        (Stage.generate, [BACKEND], "experiment"),
        (Stage.generate, [TEMPERATURE, BACKEND], "experiment"),  # any one makes it another
        (Stage.pairs, [JUDGE], "experiment"),  # the judge, said of the rank it reads
        (Stage.eval, [BACKEND], "config"),  # an eval's redo replaces that eval alone
        (Stage.generate, [TEMPERATURE], "config"),  # the same experiment, made otherwise
        (Stage.rank, [K_CHANGED], "config"),  # a setting the run name separates
        (Stage.generate, [EDITED], "files"),
        (Stage.generate, [EDITED, TEMPERATURE], "config"),
        (Stage.generate, [RETRAINED], "lineage"),
        (Stage.train, [ANCESTOR], "lineage"),
        (Stage.eval, [AFTER], "trained_after"),
        (Stage.eval, [EVAL_JUDGE, CHAT_JUDGE], "judges"),  # its judges alone: judged again
        (Stage.eval, [JUDGE], "judges"),  # the ranker, its judge where eval.judge is null
        (Stage.eval, [CHAT_JUDGE, EVAL_TEMPERATURE], "config"),  # answered otherwise too
        (Stage.rank, [JUDGE], "experiment"),
        (Stage.generate, [EARLIER], "version"),
    ],
)
def test_the_remedy_of_a_stale_stage_is_chosen_by_the_kinds_and_keys_of_its_changes(
    stage, changes, kind
):
    assert remedies.refusal_of(StageState(stage, "stale", changes)) == kind


def test_an_eval_of_a_checkpoint_trained_again_is_refused_in_the_words_every_command_uses():
    """src.main's refusal says why the eval is stale as src.status, src.compare, the card and
    src.export say it (`StageState.why`), then its redo."""
    cfg = compose_cfg("model=tiny-mistral", "logger=none", "iter=1", "stage=eval")
    state = StageState(Stage.eval, "stale", [AFTER])
    refused = remedies.refused(cfg, state)
    assert str(refused) == (
        f"{cfg.stage_dir(Stage.eval)} is stale ({state.why}); to evaluate the checkpoint as it "
        "is now"
    )
    assert refused.overrides("eval") == "iter=1 pipeline.redo=[eval]"


def test_another_experiment_is_offered_a_lineage_of_its_own_then_the_redo_it_would_make():
    """The engine set otherwise than a finished iteration's: the fix is a run name of its own,
    the redo is named second with what it replaces; a setting of the same experiment (the
    temperature) is redone, as before."""
    cfg = compose_cfg("model=tiny-mistral", "logger=none", "generation=vllm")
    finished = [StageState(s, "done") for s in PIPELINE[1:]]
    (refused, *rest) = plan_iteration(
        [StageState(Stage.generate, "stale", [BACKEND]), *finished], cfg
    )
    assert refused.action == "refuse" and [s.action for s in rest] == ["skip"] * 3
    assert refused.error.fix == f"run_name={cfg.run_name}-vllm"
    assert str(refused.error).endswith(
        "was made with a different configuration (generation.backend: 'hf' -> 'vllm'); generate "
        "with this engine in a lineage of its own, or replace iteration 1's generate, rank, "
        f"pairs and train in {cfg.run_name} (iter=1 pipeline.redo=[generate])"
    ), refused.error
    (same, *_) = plan_iteration(
        [StageState(Stage.generate, "stale", [TEMPERATURE]), *finished], cfg
    )
    assert same.error.fix == Redo(Stage.generate, 1)
    assert str(same.error).endswith(
        "restore the config, or redo it (and so rank, pairs, train after it)"
    )


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [
        ("generation.backend", "vllm", "vllm"),
        ("ranker.model", "/models/Skywork-Reward-V2", "Skywork-Reward-V2"),
        ("method.wpo_clamp", 2.0, "wpo_clamp2.0"),
        ("training.pairs", "data/my pairs.jsonl", "pairs-my_pairs"),
    ],
)
def test_a_lineage_of_its_own_is_named_by_what_makes_it_another_experiment(key, value, word):
    assert remedies.lineage_word(key, value) == word


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_finished_lineage_asked_for_another_engine_names_its_own_lineage_first(recorded):
    """`iter=3 generation=vllm` over two iterations generated by transformers: one refusal, the
    lineage of its own its fix, the redo of both iterations second; nothing written. The command
    it offers runs, in that lineage, every iteration."""
    made = ["model=tiny-mistral", "logger=none", "eval.enabled=true"]
    finish_iterations(made, 2)
    asked = [*made, "generation=vllm", "iter=3"]
    command = "python -m src.main " + " ".join(asked)
    cfg = compose_cfg(*asked)
    root = Path(cfg.paths.root)
    before = files_under(root)
    with pytest.raises(StageError) as refused:
        run(cfg, command, [], lambda t: compose_cfg(*asked, f"iter={t}"))
    said = describe(refused.value, command)
    assert said.startswith(
        "error: iteration 1's generate and iteration 2's generate were made with a different "
        "configuration (generation.backend: 'hf' -> 'vllm'); generate with this engine in a "
        "lineage of its own, or replace iterations 1 and 2's generate, rank, pairs, train and "
        f"eval in {cfg.run_name} (pipeline.redo_stale=true); run `{command} "
        f"run_name={cfg.run_name}-vllm`"
    ), said
    assert files_under(root) == before and recorded == []

    own = [*asked, f"run_name={cfg.run_name}-vllm"]
    run(compose_cfg(*own), f"{command} run_name={cfg.run_name}-vllm", [],
        lambda t: compose_cfg(*own, f"iter={t}"))  # fmt: skip
    assert {c.run_name for _, c in recorded} == {f"{cfg.run_name}-vllm"}
    assert [(c.iter, s) for s, c in recorded] == [(t, s) for t in (1, 2, 3) for s in STAGES]
    assert set(before) < set(files_under(root)), "the finished lineage kept, beside the new one"


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="CUDA is usable here: nothing to refuse"
)
def test_a_gpu_asked_for_on_a_cpu_build_is_refused_first_and_nothing_is_written(tmp_path):
    """The default recipe (hardware=gpu-1) on this CPU build of torch, its models not in the
    offline cache: the machine is named, not the assets nor the records, and no folder is made;
    so too over a finished iteration that the command's other judge settings make stale."""
    root = tmp_path / "runs"
    cfg = compose_cfg("iter=3")
    with pytest.raises(
        EnvironmentFailure, match=r"^hardware=gpu-1 asks for CUDA, but torch .* CPU build"
    ):
        run(cfg, "python -m src.main iter=3", [], lambda t: compose_cfg(f"iter={t}"))
    assert files_under(root) == []

    finish_iterations(["logger=none"], 1)
    before = files_under(root)
    asked = ["logger=none", "ranker.self_term=false"]
    with pytest.raises(EnvironmentFailure, match="asks for CUDA"):
        run(compose_cfg(*asked), "python -m src.main " + " ".join(asked), [])
    assert files_under(root) == before


def test_a_missing_key_is_named_before_a_refusal_whose_remedy_would_need_it(recorded, monkeypatch):
    """eval.alpaca_eval=true over evals made without it, and no OpenAI key: the key is named,
    with the command that needs none, before the refusal of the evals (whose redo would need
    the key), and nothing is written."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    made = ["model=tiny-mistral", "logger=none", "eval.enabled=true"]
    finish_iterations(made, 2)
    asked = [*made, "eval.alpaca_eval=true", "iter=2"]
    command = "python -m src.main " + " ".join(asked)
    cfg = compose_cfg(*asked)
    before = files_under(Path(cfg.paths.root))
    with pytest.raises(EnvironmentFailure) as refused:
        run(cfg, command, [], lambda t: compose_cfg(*asked, f"iter={t}"))
    said = describe(refused.value, command)
    assert "OPENAI_API_KEY is not set" in said, said
    assert said.endswith(f"run `{command.replace('alpaca_eval=true', 'alpaca_eval=false')}`"), said
    assert files_under(Path(cfg.paths.root)) == before and recorded == []


def test_each_stage_state_is_planned_once_and_again_only_after_an_earlier_training(
    recorded, monkeypatch
):
    """`iter=2` on an empty root: iteration 1's stages' states are read once, by the plan (none
    appeared by the time each one's lock is held); iteration 2's are planned again after
    iteration 1 trained, which its stages read."""
    counted = Counter()
    judged = Judge._state  # a stage's state made, not asked for again (`Judge.state`)

    def counting(judge, stage, folder):
        counted[judge.tree["iter"], stage] += 1
        return judged(judge, stage, folder)

    monkeypatch.setattr(Judge, "_state", counting)
    asked = ["logger=none", "iter=2"]
    run(compose_cfg(*asked), "python -m src.main " + " ".join(asked), [],
        lambda t: compose_cfg(*asked, f"iter={t}"))  # fmt: skip
    assert [(c.iter, s) for s, c in recorded] == [(t, s) for t in (1, 2) for s in PIPELINE]
    assert counted == {(t, s): t for t in (1, 2) for s in PIPELINE}
