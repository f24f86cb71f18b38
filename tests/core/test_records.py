"""Stage records across a moved run root or clone: fingerprints hash the paths inside the run, its
root and the clone relative to them, so a root copied or moved elsewhere, a clone renamed or a run
copied to another clone keeps its finished stages (docs/design.md §5)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from itertools import chain
from pathlib import Path

import pytest

from src.config import REPO_ROOT, Config, Stage, to_yaml
from src.core import fingerprints, saved
from src.core.artifacts import atomic_write_json
from src.core.diff import Why
from src.core.errors import StageError
from src.core.fingerprints import CLONE_ABSOLUTE, fingerprint_form, lookup
from src.core.identity import chunk_identity, stage_key
from src.core.migrate import legacy_fingerprint
from src.core.records import RECORD_FORMAT, Finished, read_record, record_sha256, write_record
from src.core.registry import BENCHMARK_INPUTS, STAGES
from src.core.saved import save_config
from src.core.state import saved_state, state_of
from tests.support.helpers import compose_cfg


def at_root(monkeypatch, root: Path, *overrides: str) -> Config:
    """The config `python -m src.main` composes with SELFPLAY_RUNS=root."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(root))
    return compose_cfg("model=tiny-mistral", "logger=none", *overrides)


def finish(cfg: Config, fingerprint=None, fmt: int | None = None) -> None:
    """Every stage of cfg's iteration recorded as finished, with its saved config, as a run
    leaves it, its key `fingerprint(cfg, stage)` (default: `stage_key`); `fmt`: a record of that
    earlier format, its fingerprint (default: `legacy_fingerprint`) and the contents it hashed,
    as that version wrote it."""
    for stage in STAGES:
        stage_dir = cfg.stage_dir(stage)
        stage_dir.mkdir(parents=True, exist_ok=True)
        save_config(stage_dir, to_yaml(cfg), f"python -m src.main iter={cfg.iter}")
        if fmt is None:
            made = fingerprint(cfg, stage) if fingerprint else stage_key(cfg.as_tree(), stage)
            write_record(stage_dir, Finished(made, {}, {}))
            continue
        made = fingerprint(cfg, stage) if fingerprint else legacy_fingerprint(cfg.as_tree(), stage)
        record = {"format": fmt, "fingerprint": str(made), "counts": {}, "timings": {},
                  "finished_at": "2026-11-01T00:00:00+0000"}  # fmt: skip
        if getattr(made, "contents", None):
            record["contents"] = made.contents
        atomic_write_json(stage_dir / "done.json", {**record, "sha256": record_sha256(record)})


def move(old: Path, new: Path) -> None:
    """`cp -r old new` (new modification times), and the old place gone."""
    shutil.copytree(old, new, copy_function=shutil.copy)
    shutil.rmtree(old)


def test_a_moved_run_root_keeps_its_finished_stages_and_their_chunks(tmp_path, monkeypatch):
    here, there = tmp_path / "here" / "runs", tmp_path / "there" / "runs"
    made = {}
    for t in (1, 2):
        made[t] = at_root(monkeypatch, here, f"iter={t}")
        finish(made[t])
    fingerprints = {t: {s: stage_key(made[t].as_tree(), s) for s in STAGES} for t in (1, 2)}
    chunks = {
        t: (
            chunk_identity(made[t].as_tree(), Stage.generate),
            chunk_identity(made[t].as_tree(), Stage.rank, responses="sha", external=None),
        )
        for t in (1, 2)
    }
    move(here, there)

    for t in (1, 2):
        cfg = at_root(monkeypatch, there, f"iter={t}")
        assert Path(cfg.run.dir).is_relative_to(there)
        assert {s: state_of(cfg.as_tree(), s).status for s in STAGES} == dict.fromkeys(
            STAGES, "done"
        ), t
        assert {s: stage_key(cfg.as_tree(), s) for s in STAGES} == fingerprints[t]
        assert (
            chunk_identity(cfg.as_tree(), Stage.generate),
            chunk_identity(cfg.as_tree(), Stage.rank, responses="sha", external=None),
        ) == chunks[t], "an interrupted stage's chunks are reused after a move"


def test_what_changed_is_named_relative_to_the_run(tmp_path, monkeypatch):
    here, there = tmp_path / "here" / "runs", tmp_path / "there" / "runs"
    finish(at_root(monkeypatch, here))
    move(here, there)
    other = at_root(monkeypatch, there).run.dir + "/iter1/pairs/other.parquet"
    name = at_root(monkeypatch, there).run_name  # the lineage the file sits in, not its own
    cfg = at_root(monkeypatch, there, f"training.pairs={other}", f"run_name={name}")

    assert state_of(cfg.as_tree(), Stage.pairs).status == "done"
    train = state_of(cfg.as_tree(), Stage.train)
    assert (train.status, train.earlier_version) == ("stale", False)
    assert train.changed == [
        "training.pairs: '<run>/iter1/pairs/pairs.parquet' -> '<run>/iter1/pairs/other.parquet'"
    ]


def test_paths_in_the_run_its_root_and_the_clone_are_written_relative_to_them(
    tmp_path, monkeypatch
):
    root = tmp_path / "runs"
    cfg = at_root(monkeypatch, root, "iter=2")
    tree = cfg.as_tree()
    assert fingerprint_form(cfg.run.init_policy, tree) == "<run>/iter1/train/checkpoint"
    assert fingerprint_form({"pairs": [cfg.training.pairs, 3, None]}, tree) == {
        "pairs": ["<run>/iter2/pairs/pairs.parquet", 3, None]
    }
    # another lineage's checkpoint, a pool kept beside the runs: under the root
    lineage = str(root / "tiny-mistral" / "sppo" / "other" / "iter1" / "train" / "checkpoint")
    assert (
        fingerprint_form(lineage, tree) == "<root>/tiny-mistral/sppo/other/iter1/train/checkpoint"
    )
    # the clone's prompts and tiny models (`${repo:...}`)
    assert [fingerprint_form(v, tree) for v in (cfg.data.prompts, cfg.model.path)] == [
        "<repo>/data/prompts/iter2.jsonl",
        "<repo>/.cache/tiny/tiny-mistral",
    ]
    # outside all three: the user's own file, a folder named like the root or the clone
    outside = [str(tmp_path / "runs2" / "x"), f"{REPO_ROOT}2/data", "org/model", ""]
    assert [fingerprint_form(v, tree) for v in outside] == outside
    # a root inside the clone (its runs/, the default): the deepest folder that holds a path
    inside = {"run": {"dir": f"{REPO_ROOT}/runs/m/sppo/x"}, "paths": {"root": f"{REPO_ROOT}/runs"}}
    assert [fingerprint_form(f"{REPO_ROOT}/runs/{p}", inside) for p in ("m/sppo/x/a", "b")] == [
        "<run>/a",
        "<root>/b",
    ]
    # records before format 7 hashed the clone's paths absolute
    assert fingerprint_form(cfg.model.path, tree, CLONE_ABSOLUTE) == cfg.model.path


def in_clone(monkeypatch, clone: Path, *overrides: str) -> Config:
    """The config `python -m src.main` composes in a clone at `clone` (its data/ and .cache/tiny,
    its runs/), and this code run from there: its records and saved configs name that clone."""
    for module in (fingerprints, saved):
        monkeypatch.setattr(module, "REPO_ROOT", clone)
    return at_root(monkeypatch, clone / "runs", f"paths.data_dir={clone}/data",
                   f"paths.tiny_dir={clone}/.cache/tiny", *overrides)  # fmt: skip


def test_a_renamed_clone_keeps_its_finished_stages_unless_a_file_they_read_differs(
    tmp_path, monkeypatch
):
    """The tiny models, the prompts and the runs in the clone, the clone renamed (copied, the
    old name gone): every stage of both iterations is finished and a changed key is named alone,
    no path among the changes; a prompts file whose content differs there is named, for
    iteration 1 and, through its saved config moved to this clone, for iteration 2."""
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(REPO_ROOT / "data" / "prompts", here / "data" / "prompts")
    for t in (1, 2):
        finish(in_clone(monkeypatch, here, f"iter={t}"))
    made = read_record(in_clone(monkeypatch, here).stage_dir(Stage.generate))
    assert made["manifest"]["files"]["data.prompts"]["path"] == "<repo>/data/prompts/iter1.jsonl"
    move(here, there)

    for t in (1, 2):
        tree = in_clone(monkeypatch, there, f"iter={t}").as_tree()
        assert {s: state_of(tree, s).status for s in STAGES} == dict.fromkeys(STAGES, "done"), t
        assert saved_state(tree, Stage.train).status == "done", t
    other = in_clone(monkeypatch, there, "ranker.self_term=false").as_tree()
    assert state_of(other, Stage.rank).changed == ["ranker.self_term: True -> False"]

    prompts = there / "data" / "prompts" / "iter1.jsonl"
    prompts.write_text(prompts.read_text().replace("a", "b", 1))
    said = "data.prompts: <repo>/data/prompts/iter1.jsonl changed since this stage read it"
    assert state_of(in_clone(monkeypatch, there).as_tree(), Stage.generate).changed == [said]
    (two,) = state_of(in_clone(monkeypatch, there, "iter=2").as_tree(), Stage.generate).changed
    assert (two.kind, two.cause) == (Why.ancestor, Why.content) and said in two


def test_a_record_made_before_the_clones_paths_were_relative_is_checked_as_it_was_made(
    tmp_path, monkeypatch
):
    """Format 6 hashed the clone's paths absolute: a record made in this clone is finished (its
    prompts by the rows it read, which it names by that path), a file it read changed is named
    by the path it kept; in a renamed clone it is stale, as it was."""
    from src.generation.prompts import load_prompts

    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(REPO_ROOT / "data" / "prompts", here / "data" / "prompts")
    cfg = in_clone(monkeypatch, here, "data.max_prompts=2")
    prompts = here / "data" / "prompts" / "iter1.jsonl"
    read = {"data.prompts": load_prompts(str(prompts), max_prompts=2).bytes_read}
    finish(cfg, lambda c, s: legacy_fingerprint(c.as_tree(), s, CLONE_ABSOLUTE, read=read), fmt=6)
    kept = read_record(cfg.stage_dir(Stage.generate))["contents"]["data.prompts"]
    assert (kept["path"], kept["read"]) == (str(prompts), read["data.prompts"])
    assert {s: state_of(cfg.as_tree(), s).status for s in STAGES} == dict.fromkeys(STAGES, "done")
    rank = in_clone(monkeypatch, here, "data.max_prompts=2", "ranker.self_term=false").as_tree()
    assert state_of(rank, Stage.rank).changed == ["ranker.self_term: True -> False"]

    move(here, there)
    tree = in_clone(monkeypatch, there, "data.max_prompts=2").as_tree()
    assert {state_of(tree, s).status for s in STAGES} == {"stale"}
    move(there, here)
    prompts.write_text(prompts.read_text().replace("a", "b", 1))
    tree = in_clone(monkeypatch, here, "data.max_prompts=2").as_tree()
    assert state_of(tree, Stage.generate).changed == [
        f"data.prompts: {prompts} changed since this stage read it"
    ]


def format2_fingerprint(cfg: Config, stage: Stage) -> str:
    """What records of format 2 hold: the inputs hashed as they are, absolute paths included."""
    spec = STAGES[stage]
    if spec.consumes is not None:
        upstream = format2_fingerprint(cfg, spec.consumes)
    elif cfg.iter > 1:
        upstream = read_record(Path(cfg.run.dir) / f"iter{cfg.iter - 1}" / "train")["fingerprint"]
    else:
        upstream = None
    # format 2 predates AlpacaEval's and the benchmarks' keys in the eval's inputs, and its engine's
    newer_eval = {
        "eval.alpaca_eval",
        "eval.benchmarks",
        "eval.backend",
        *chain(*BENCHMARK_INPUTS.values()),
    }
    inputs = {key: lookup(cfg.as_tree(), key) for key in spec.inputs if key not in newer_eval}
    if "training" in inputs:  # format 2 predates these keys
        newer = ("peft", "lora", "record_memory_phases", "weight_updates")
        inputs["training"] = {k: v for k, v in inputs["training"].items() if k not in newer}
    payload = {"stage": stage.value, "inputs": inputs, "upstream": upstream}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def test_records_of_the_absolute_path_format_are_still_recognised_moved_or_not(
    tmp_path, monkeypatch
):
    here, there = tmp_path / "here" / "runs", tmp_path / "there" / "runs"
    for t in (1, 2):
        finish(at_root(monkeypatch, here, f"iter={t}"), format2_fingerprint, fmt=2)
    assert (
        json.loads((at_root(monkeypatch, here).stage_dir(Stage.train) / "done.json").read_text())[
            "format"
        ]
        == 2
    )
    for root in (here, there):
        if root == there:
            move(here, there)
        for t in (1, 2):
            cfg = at_root(monkeypatch, root, f"iter={t}")
            assert {s: state_of(cfg.as_tree(), s).status for s in STAGES} == dict.fromkeys(
                STAGES, "done"
            )

    # a changed input is still named, for the stages after it as their upstream's
    cfg = at_root(monkeypatch, there, "ranker.self_term=false")
    rank, pairs = state_of(cfg.as_tree(), Stage.rank), state_of(cfg.as_tree(), Stage.pairs)
    assert (rank.status, rank.changed, rank.earlier_version) == (
        "stale",
        ["ranker.self_term: True -> False"],
        False,
    )
    assert (pairs.status, pairs.changed, pairs.earlier_version) == (
        "stale",
        ["rank's ranker.self_term: True -> False"],
        False,
    )


def test_adapter_settings_enter_the_training_fingerprint_only_when_an_adapter_trains():
    """A full-weight run's records do not depend on training.lora (nor on training.peft's
    existence: records made before it stay valid); a LoRA run's depend on both."""

    def train_fingerprint(*overrides: str) -> str:
        return stage_key(compose_cfg("model=tiny-mistral", *overrides).as_tree(), Stage.train)

    full = train_fingerprint()
    assert train_fingerprint("training.lora.rank=4") == full
    lora = train_fingerprint("training.peft=lora")
    assert lora != full
    assert train_fingerprint("training.peft=lora", "training.lora.rank=4") != lora
    generate = compose_cfg("model=tiny-mistral", "training.peft=lora")
    assert stage_key(generate.as_tree(), Stage.generate) == stage_key(
        compose_cfg("model=tiny-mistral").as_tree(), Stage.generate
    )


def test_weight_updates_enter_the_training_fingerprint_only_where_bf16_weights_train():
    """training.weight_updates acts on full weights in 16 bits: a run that trains in fp32 (the
    tiny models, every CPU run so far) or an adapter keeps its records whatever it says."""

    def train_fingerprint(*overrides: str) -> str:
        return stage_key(compose_cfg("model=tiny-mistral", *overrides).as_tree(), Stage.train)

    assert train_fingerprint("training.weight_updates=fp32") == train_fingerprint()
    bf16 = ["training.precision=bfloat16"]
    assert train_fingerprint(*bf16, "training.weight_updates=fp32") != train_fingerprint(*bf16)
    lora = [*bf16, "training.peft=lora"]
    assert train_fingerprint(*lora, "training.weight_updates=fp32") == train_fingerprint(*lora)
    gpu = ["model=mistral-7b-instruct-v0.2"]  # precision auto on a GPU: bf16
    assert train_fingerprint(*gpu, "training.weight_updates=fp32") != train_fingerprint(*gpu)


def test_alpaca_eval_and_the_benchmarks_enter_the_eval_fingerprint_only_while_they_run():
    """An eval asked for AlpacaEval 2 or another benchmark is not the eval made without it; a
    benchmark's own settings count only while it runs, so an eval without benchmarks keeps its
    record whatever they say."""

    def eval_fingerprint(*overrides: str) -> str:
        return stage_key(compose_cfg("model=tiny-mistral", *overrides).as_tree(), Stage.eval)

    plain = eval_fingerprint()
    assert eval_fingerprint("eval.leaderboard_limit=2", "eval.arena_hard_baseline=x") == plain
    assert eval_fingerprint("eval.alpaca_eval=true") != plain
    board = ["eval.benchmarks=[leaderboard]"]
    assert eval_fingerprint(*board) != plain
    assert eval_fingerprint(*board, "eval.leaderboard_limit=2") != eval_fingerprint(*board)
    assert eval_fingerprint(*board, "eval.arena_hard_baseline=x") == eval_fingerprint(*board)
    arena = ["eval.benchmarks=[arena_hard]"]
    assert eval_fingerprint(*arena, "eval.arena_hard_baseline=x") != eval_fingerprint(*arena)
    assert eval_fingerprint(*arena, "eval.llm_judge.serve=/j") != eval_fingerprint(*arena)


def test_the_eval_backend_enters_the_eval_fingerprint_only_when_it_names_another_engine():
    """eval.backend null answers with generation.backend's engine, as every eval did before the
    key: such records stay valid, and that engine written out is the same eval; another engine
    is the one that answers and counts."""
    from src.evaluation.answers import eval_generation

    def eval_fingerprint(*overrides: str) -> str:
        return stage_key(compose_cfg("model=tiny-mistral", *overrides).as_tree(), Stage.eval)

    plain = eval_fingerprint()
    assert eval_fingerprint("eval.backend=hf") == plain
    assert eval_fingerprint("generation=vllm", "eval.backend=vllm") == eval_fingerprint(
        "generation=vllm"
    )
    assert eval_fingerprint("eval.backend=vllm") != plain
    assert eval_fingerprint("generation=vllm", "eval.backend=hf") != eval_fingerprint(
        "generation=vllm"
    )
    for overrides, engine in (
        ((), "hf"),
        (("generation=vllm",), "vllm"),
        (("generation=vllm", "eval.backend=hf"), "hf"),
        (("eval.backend=vllm",), "vllm"),
    ):
        cfg = compose_cfg("model=tiny-mistral", *overrides)
        assert eval_generation(cfg).backend.value == engine, overrides


def test_an_eval_recorded_with_its_default_engine_written_out_is_finished_either_way(
    tmp_path, monkeypatch
):
    """Records made while eval.backend entered the fingerprint whenever set (set to hf, the
    engine null resolves to here) are finished whether that engine is written out or not;
    another engine is stale, named."""
    written = at_root(monkeypatch, tmp_path, "eval.backend=hf")
    finish(written, lambda c, s: legacy_fingerprint(c.as_tree(), s, backend_written=True), fmt=7)
    for asked in (["eval.backend=hf"], []):
        cfg = at_root(monkeypatch, tmp_path, *asked)
        assert state_of(cfg.as_tree(), Stage.eval).status == "done", asked
    other = state_of(at_root(monkeypatch, tmp_path, "eval.backend=vllm").as_tree(), Stage.eval)
    assert (other.status, other.changed) == ("stale", ["eval.backend: 'hf' -> 'vllm'"])


def test_an_eval_asked_for_a_benchmark_it_was_made_without_is_stale_naming_it(
    tmp_path, monkeypatch
):
    cfg = at_root(monkeypatch, tmp_path, "eval.benchmarks=[leaderboard]")
    finish(cfg)
    assert state_of(cfg.as_tree(), Stage.eval).status == "done"
    more = at_root(
        monkeypatch, tmp_path, "eval.benchmarks=[leaderboard,mt_bench]", "eval.alpaca_eval=true"
    )
    state = state_of(more.as_tree(), Stage.eval)
    assert (state.status, state.changed) == (
        "stale",
        [
            "eval.alpaca_eval: False -> True",
            "eval.benchmarks: ['leaderboard'] -> ['leaderboard', 'mt_bench']",
        ],
    )
    # recorded before the benchmarks entered the fingerprint: finished where its saved config
    # asked for what is asked now, stale (naming what changed) where not
    finish(cfg, lambda c, stage: legacy_fingerprint(c.as_tree(), stage, extras=False), fmt=7)
    assert state_of(cfg.as_tree(), Stage.eval).status == "done"
    assert state_of(more.as_tree(), Stage.eval).changed == state.changed


def test_an_eval_made_with_more_benchmarks_than_asked_is_finished_for_a_request_without_them(
    tmp_path, monkeypatch
):
    """A sweep's point on the lineage of an eval made with the benchmarks asks for the win rate
    alone: that eval answers it. A benchmark asked for counts as asked (its settings, the same
    or not), and a request for more than was made is stale."""
    made = ["eval.benchmarks=[leaderboard,mt_bench]", "eval.leaderboard_limit=2"]
    finish(at_root(monkeypatch, tmp_path, *made))

    def status(*asked: str) -> str:
        return state_of(at_root(monkeypatch, tmp_path, *asked).as_tree(), Stage.eval).status

    assert status() == "done"  # the win rate alone
    assert status("eval.benchmarks=[mt_bench]") == "done"
    assert status("eval.benchmarks=[leaderboard]", "eval.leaderboard_limit=2") == "done"
    assert status("eval.benchmarks=[leaderboard]", "eval.leaderboard_limit=3") == "stale"
    assert status("eval.benchmarks=[arena_hard]") == "stale"
    assert status("eval.alpaca_eval=true") == "stale"
    assert status("eval.temperature=0.5") == "stale"  # the win rate itself asked otherwise


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda r: {**r, "counts": {**r["counts"], "shards": 0}}, "does not match its sha256"),
        (lambda r: [], "holds a JSON list, not the object"),
        (lambda r: {k: v for k, v in r.items() if k != "counts"}, "its 'counts' is null"),
        (None, "is not valid JSON"),
    ],
)
def test_a_record_that_was_edited_or_damaged_is_refused_naming_it_and_the_redo(
    tmp_path, monkeypatch, edit, said
):
    """Never believed (0 shards: nothing to rank, a record written over it), never read as
    'unfinished' and redone silently: one error that names the file and the command, which the
    plan of that command redoes."""
    cfg = at_root(monkeypatch, tmp_path / "runs", "stage=rank")
    stage_dir = cfg.stage_dir(Stage.generate)
    write_record(stage_dir, Finished("fp", {"shards": 1}, {"seconds": 1.0}, {}))
    path = stage_dir / "done.json"
    path.write_text("{x" if edit is None else json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(StageError) as refused:
        read_record(stage_dir)
    assert str(refused.value).startswith(f"{path}") and said in str(refused.value)
    fix = "stage=generate iter=1 pipeline.redo=[generate]"
    assert refused.value.overrides(str(cfg.stage)) == fix
    state = state_of(cfg.as_tree(), Stage.generate)  # stale: redone by a redo, refused otherwise
    assert state.status == "stale" and str(state.unread) == str(refused.value)


@pytest.mark.parametrize(
    ("overrides", "folder"),
    [
        ((), "eval"),
        (("eval.reference=base",), "eval"),
        (("eval.reference=iter1",), "eval/vs-iter1"),
        (("eval.reference=iter01",), "eval/vs-iter1"),  # the same iteration: the same folder
        (("eval.reference_outputs=/data/gpt4 turbo.json",), "eval/vs-gpt4-turbo.json"),
        (("eval.reference=iter1", "eval.reference_outputs=/data/ref.jsonl"), "eval/vs-ref.jsonl"),
        # answers read from a file named as an iteration are not that iteration's
        (("eval.reference_outputs=/data/iter1.json",), "eval/vs-iter1.json"),
    ],
)
def test_evals_against_other_references_each_have_a_folder_inside_the_eval(
    tmp_path, monkeypatch, overrides, folder
):
    """The config's, the records' and W&B's view of where an eval writes agree; every other
    stage keeps its folder whatever the eval's reference."""
    cfg = at_root(monkeypatch, tmp_path, "iter=2", *overrides)
    iteration = Path(cfg.run.iter_dir)
    assert cfg.stage_dir(Stage.eval) == iteration / folder
    assert state_of(cfg.as_tree(), Stage.eval).status == "todo"
    assert cfg.stage_run_name(Stage.eval).endswith(f"-it2-{folder.replace('/', '-')}")
    for stage in (Stage.generate, Stage.train):
        assert cfg.stage_dir(stage) == iteration / stage.value


def unread(cfg: Config, stage: Stage) -> StageError:
    """The error of `stage`'s record, which does not read: the stage stale, never finished."""
    state = state_of(cfg.as_tree(), stage)
    assert state.status == "stale" and state.unread is not None, state
    return state.unread


def test_a_damaged_record_beside_the_base_eval_names_its_own_redo(tmp_path, monkeypatch):
    cfg = at_root(monkeypatch, tmp_path, "iter=2", "eval.reference=iter1")
    side = cfg.stage_dir(Stage.eval)
    side.mkdir(parents=True)
    (side / "done.json").write_text("{")
    err = unread(cfg, Stage.eval)
    assert str(side / "done.json") in str(err)
    assert err.overrides(str(cfg.stage)) == "iter=2 pipeline.redo=[eval]"


def test_a_finished_stage_is_stale_when_a_file_it_read_is_edited_in_place(tmp_path, monkeypatch):
    """data.prompts, training.pairs, eval.reference_outputs...: the record keeps each local
    file's content, so an edit that keeps the name is named; a file touched but the same, or a
    record made before contents entered (format 4, by name), stays finished."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n')
    cfg = at_root(monkeypatch, tmp_path / "runs", f"data.prompts={prompts}")
    finish(cfg)
    tree = cfg.as_tree()
    assert read_record(cfg.stage_dir(Stage.generate))["manifest"]["files"]["data.prompts"][
        "path"
    ] == str(prompts)
    prompts.write_text('{"prompt": "a cat"}\n')  # rewritten, the same: new times
    assert [state_of(tree, s).status for s in STAGES] == ["done"] * len(STAGES)

    prompts.write_text('{"prompt": "a DOG"}\n')
    state = state_of(tree, Stage.generate)
    assert (state.status, state.changed) == (
        "stale",
        [f"data.prompts: {prompts} changed since this stage read it"],
    )
    assert state_of(tree, Stage.rank).changed == [
        f"generate's data.prompts: {prompts} changed since this stage read it"
    ]
    assert not read_record(cfg.stage_dir(Stage.pairs))["manifest"]["files"], "read no local file"

    finish(cfg, lambda c, s: legacy_fingerprint(c.as_tree(), s, CLONE_ABSOLUTE, contents=False),
           fmt=4)  # fmt: skip
    prompts.write_text('{"prompt": "a cow"}\n')
    assert state_of(tree, Stage.generate).status == "done", "format 4 is checked by name"


def test_a_folder_input_is_read_by_its_files_but_its_hidden_ones(tmp_path, monkeypatch):
    """data.leaderboard, a folder of dataset copies: a file changed in it makes the eval stale;
    the `.cache/` that `hf download --local-dir` rewrites beside each copy does not."""
    from src.core.fingerprints import input_contents

    copies = tmp_path / "leaderboard"
    (copies / "allenai/ai2_arc/.cache/huggingface").mkdir(parents=True)
    data = copies / "allenai/ai2_arc/test.jsonl"
    data.write_text('{"question": "Why?"}\n')
    metadata = copies / "allenai/ai2_arc/.cache/huggingface/test.jsonl.metadata"
    metadata.write_text("etag 1\n")
    cfg = at_root(monkeypatch, tmp_path / "runs", "eval.benchmarks=[leaderboard]",
                  "eval.leaderboard_tasks=[arc_challenge]", f"data.leaderboard={copies}")  # fmt: skip
    tree = cfg.as_tree()
    read = input_contents(tree, Stage.eval)["data.leaderboard"]["sha256"]
    metadata.write_text("etag 2, downloaded again\n")
    assert input_contents(tree, Stage.eval)["data.leaderboard"]["sha256"] == read
    data.write_text('{"question": "Why not?"}\n')
    assert input_contents(tree, Stage.eval)["data.leaderboard"]["sha256"] != read


def test_a_file_rewritten_with_its_size_inode_and_mtime_is_read_again(tmp_path, monkeypatch):
    """`cp -p`, `rsync --inplace -t`: new bytes in the same inode, the size and mtime put back.
    The record's stat holds the ctime, which every write changes, so the file is hashed again."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n')
    cfg = at_root(monkeypatch, tmp_path / "runs", f"data.prompts={prompts}")
    finish(cfg)
    made = prompts.stat()
    with prompts.open("r+") as f:  # in place: the inode kept
        f.write('{"prompt": "a bat"}\n')
    os.utime(prompts, ns=(made.st_atime_ns, made.st_mtime_ns))
    now = prompts.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (
        made.st_ino,
        made.st_size,
        made.st_mtime_ns,
    )
    state = state_of(cfg.as_tree(), Stage.generate)
    assert (state.status, [c.kind for c in state.changed]) == ("stale", [Why.content])


def test_a_file_it_read_that_is_gone_or_a_folder_is_named_as_such(tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n')
    cfg = at_root(monkeypatch, tmp_path / "runs", f"data.prompts={prompts}")
    finish(cfg)
    prompts.unlink()
    assert state_of(cfg.as_tree(), Stage.rank).changed == [
        f"generate's data.prompts: {prompts} is gone (this stage read it)"
    ]
    prompts.mkdir()
    (state,) = [state_of(cfg.as_tree(), Stage.generate)]
    assert state.changed == [f"data.prompts: {prompts} is now a folder (this stage read it)"]
    assert state.changed[0].kind == Why.gone


@pytest.mark.parametrize("made_as", ["5", 5.0, True, [6]])
def test_a_record_whose_format_is_not_a_whole_number_is_damaged(tmp_path, monkeypatch, made_as):
    cfg = at_root(monkeypatch, tmp_path / "runs")
    finish(cfg)
    done = cfg.stage_dir(Stage.train) / "done.json"
    atomic_write_json(done, {**json.loads(done.read_text()), "format": made_as})
    assert re.search("its 'format' is .*, not a whole number", str(unread(cfg, Stage.train)))


def test_a_record_of_an_unknown_format_is_refused_though_its_fingerprint_matches(
    tmp_path, monkeypatch
):
    """format 99, the rest as written: its checks cannot be made, so it is never believed."""
    cfg = at_root(monkeypatch, tmp_path / "runs")
    finish(cfg, fmt=99)
    state = state_of(cfg.as_tree(), Stage.train)
    assert (state.status, state.earlier_version) == ("stale", True)
    assert "recorded by a later version of selfplay-lab (record format 99" in state.changed[0]


def test_a_record_that_is_a_folder_is_named_before_any_work(tmp_path, monkeypatch):
    cfg = at_root(monkeypatch, tmp_path / "runs")
    (cfg.stage_dir(Stage.generate) / "done.json").mkdir(parents=True)
    assert "done.json is a folder, not the record" in str(unread(cfg, Stage.generate))


def finish_lineage(monkeypatch, root: Path, iterations: int, *overrides: str) -> list[Config]:
    """Iterations 1..`iterations` of one lineage finished, each with its saved config."""
    configs = [
        at_root(monkeypatch, root, f"iter={t}", *overrides) for t in range(1, iterations + 1)
    ]
    for cfg in configs:
        finish(cfg)
    return configs


def test_a_later_iteration_is_stale_when_an_earlier_one_read_a_file_changed_since(
    tmp_path, monkeypatch
):
    """Iteration 1's prompts edited in place: iteration 2's stages, whose records hold iteration
    1's recorded training, are stale too, named by the first stale iteration, from the config
    each was made with (what src.compare, the card and src.export read)."""
    for t in (1, 2, 3):
        (tmp_path / f"p{t}.jsonl").write_text(f'{{"prompt": "prompt {t}"}}\n')
    one, two, three = finish_lineage(
        monkeypatch, tmp_path / "runs", 3, f"data.prompts={tmp_path}/p${{iter}}.jsonl"
    )
    assert {state_of(three.as_tree(), s).status for s in STAGES} == {"done"}
    (tmp_path / "p1.jsonl").write_text('{"prompt": "another"}\n')
    for cfg in (two, three):
        state = state_of(cfg.as_tree(), Stage.eval)
        assert state.status == "stale" and [c.kind for c in state.changed] == [Why.ancestor]
        assert state.changed[0].startswith("iteration 1's training, which this iteration")
        assert state.changed[0].cause == Why.content
        assert saved_state(cfg.as_tree(), Stage.train).changed == state.changed
    (tmp_path / "p1.jsonl").write_text('{"prompt": "prompt 1"}\n')
    assert {state_of(three.as_tree(), s).status for s in STAGES} == {"done"}


def test_a_training_on_a_pairs_file_of_its_own_reads_that_file_and_its_policy(
    tmp_path, monkeypatch
):
    """Keys of generate, rank and pairs leave it finished; its file and its starting policy do
    not; stage=all runs the training (and eval) alone."""
    pairs = tmp_path / "mine.jsonl"
    pairs.write_text('{"prompt_id": "a"}\n')
    own = (f"training.pairs={pairs}", "stage=train")
    cfg = at_root(monkeypatch, tmp_path / "runs", *own)
    finish(cfg)
    for other in ("generation.temperature=0.5", "ranker.ties=drop", "data.max_prompts=4"):
        assert state_of(at_root(monkeypatch, tmp_path / "runs", *own, other).as_tree(),
                        Stage.train).status == "done", other  # fmt: skip
    moved = at_root(monkeypatch, tmp_path / "runs", *own, "model.revision=other")
    assert state_of(moved.as_tree(), Stage.train).changed == ["model.revision: None -> 'other'"]
    assert at_root(monkeypatch, tmp_path / "runs", *own, "stage=all").stages() == [Stage.train]
    with_eval = at_root(monkeypatch, tmp_path / "runs", *own, "stage=all", "eval.enabled=true")
    assert with_eval.stages() == [Stage.train, Stage.eval]
    assert at_root(monkeypatch, tmp_path / "runs", "stage=all").stages() == [
        s for s in STAGES if not STAGES[s].optional
    ]


def test_a_folder_input_enters_by_the_files_its_stage_read(tmp_path, monkeypatch):
    """The files the stage named as it finished (`read`), kept in the record: another file or
    dataset beside them leaves it finished; one of them changed or gone makes it stale."""
    from src.core.fingerprints import input_contents

    copies = tmp_path / "leaderboard"
    (copies / "allenai/ai2_arc").mkdir(parents=True)
    data = copies / "allenai/ai2_arc/test.jsonl"
    data.write_text('{"question": "Why?"}\n')
    cfg = at_root(monkeypatch, tmp_path / "runs", "eval.benchmarks=[leaderboard]",
                  "eval.leaderboard_tasks=[arc_challenge]", f"data.leaderboard={copies}")  # fmt: skip
    finish(cfg, lambda c, s: stage_key(
        c.as_tree(), s, read={"data.leaderboard": ["allenai/ai2_arc"]}
    ))  # fmt: skip
    tree = cfg.as_tree()
    read = read_record(cfg.stage_dir(Stage.eval))["manifest"]["files"]["data.leaderboard"]
    assert read["read"] == ["allenai/ai2_arc"]
    (copies / "someone/else").mkdir(parents=True)
    (copies / "someone/else/x.jsonl").write_text('{"a": 1}\n')
    (copies / "NOTES.txt").write_text("notes\n")
    assert state_of(tree, Stage.eval).status == "done"
    assert input_contents(tree, Stage.eval)["data.leaderboard"]["sha256"] == read["sha256"]
    data.write_text('{"question": "Why not?"}\n')
    assert [c.kind for c in state_of(tree, Stage.eval).changed] == [Why.content]
    shutil.rmtree(copies / "allenai")
    assert [c.kind for c in state_of(tree, Stage.eval).changed] == [Why.gone]


def test_a_prompts_file_enters_by_the_rows_its_stage_read(tmp_path, monkeypatch):
    """data.max_prompts=2 reads the first two rows only: a row appended (or any row after them
    changed) leaves generate finished; one of the two changed makes it stale."""
    from src.generation.prompts import load_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "prompt {n}"}}\n' for n in range(3)))
    cfg = at_root(monkeypatch, tmp_path / "runs", f"data.prompts={prompts}", "data.max_prompts=2")
    read = load_prompts(str(prompts), max_prompts=2).bytes_read
    assert read == len('{"prompt": "prompt 0"}\n{"prompt": "prompt 1"}\n')
    assert load_prompts(str(prompts)).bytes_read is None, "read to its end"
    finish(cfg, lambda c, s: stage_key(c.as_tree(), s, read={"data.prompts": read}))
    tree = cfg.as_tree()
    with prompts.open("a") as f:
        f.write('{"prompt": "appended"}\n')
    assert {state_of(tree, s).status for s in STAGES} == {"done"}
    prompts.write_text(prompts.read_text().replace("prompt 1", "prompt one"))
    assert [c.kind for c in state_of(tree, Stage.generate).changed] == [Why.content]


@pytest.mark.parametrize("saved", ["", "a: [", "- a list\n"])
def test_an_earlier_iterations_damaged_saved_config_is_passed_over_by_the_walk(
    tmp_path, monkeypatch, saved
):
    """Iteration 1's training's config.yaml emptied, broken or not a config: iteration 2 is
    judged by its own record, with no traceback (a damaged config stands: it says what was run,
    the record decides)."""
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n')
    _, two = finish_lineage(monkeypatch, tmp_path / "runs", 2, f"data.prompts={tmp_path}/p.jsonl")
    (two.layout.stage_dir_in(1, Stage.train) / "config.yaml").write_text(saved)
    assert {state_of(two.as_tree(), s).status for s in STAGES} == {"done"}


@pytest.mark.parametrize("fmt", [2, 4, 6, 7])
def test_a_finished_record_of_an_earlier_format_is_rewritten_once_by_the_command_that_skips_it(
    tmp_path, monkeypatch, fmt
):
    """src.main skips each finished stage recorded by an earlier version and rewrites its record
    as this version writes it (its manifest, key and outputs' identity), the old one kept beside
    it, one line each; the stages stay finished, and a second run rewrites nothing."""
    from tests.support.helpers import entry

    fingerprint = {
        2: format2_fingerprint,
        4: lambda c, s: legacy_fingerprint(c.as_tree(), s, CLONE_ABSOLUTE, contents=False),
        6: lambda c, s: legacy_fingerprint(c.as_tree(), s, CLONE_ABSOLUTE),
        7: None,
    }[fmt]
    cfg = at_root(monkeypatch, tmp_path / "runs")
    finish(cfg, fingerprint, fmt=fmt)
    stages = [s for s in STAGES if not STAGES[s].optional]
    env = {"SELFPLAY_RUNS": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}
    ran = entry("src.main", "model=tiny-mistral", "logger=none", "iter=1", env=env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    for stage in stages:
        folder = cfg.stage_dir(stage)
        said = f"[main] {folder}: its record of format {fmt} rewritten as format {RECORD_FORMAT}"
        assert said in ran.stderr, stage
        assert read_record(folder)["format"] == RECORD_FORMAT
        assert json.loads((folder / f"done.v{fmt}.json").read_text())["format"] == fmt
        assert state_of(cfg.as_tree(), stage).status == "done", stage
    again = entry("src.main", "model=tiny-mistral", "logger=none", "iter=1", env=env)
    assert again.returncode == 0 and "rewritten" not in again.stderr, again.stderr[-3000:]
