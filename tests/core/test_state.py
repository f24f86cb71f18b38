"""A stage is what it read (src/core/identity.py, src/core/state.py): every stage's record names
its params, the files it read and the outputs of the stages it read by their identity; a stage
made again with the same bytes leaves the stages that read it finished, one made again with
other bytes makes them stale in every command, and so do a base model replaced in place and a
checkpoint that lost or changed a file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from src.config import Config, Stage
from src.core.diff import Why
from src.core.fingerprints import stage_inputs
from src.core.identity import key_of, out_id, stage_key
from src.core.records import RECORD_FORMAT, Finished, read_record, write_record
from src.core.registry import STAGES
from src.core.state import state_of
from src.status import status
from tests.support.helpers import SMALL, cli, compose_cfg, entry, one_line_failure


def records(root: Path, t: int) -> dict[Stage, dict]:
    cfg = compose_cfg(*SMALL, f"paths.root={root}", f"iter={t}")
    return {s: read_record(cfg.stage_dir(s)) for s in STAGES if cfg.stage_dir(s).is_dir()}


def test_every_stage_keeps_a_manifest_of_what_it_read(lineage):
    """Two iterations as src.main leaves them: each record's params are its stage's inputs, its
    upstream the identity of each stage output it read (the stage it consumes, the checkpoint it
    starts from), the base model by its files at iteration 1, and its key the hash of all that."""
    root = lineage("two-iterations").root
    made = {t: records(root, t) for t in (1, 2)}
    expected = {
        (Stage.generate, 1): [],
        (Stage.rank, 1): [(Stage.generate, 1)],
        (Stage.pairs, 1): [(Stage.rank, 1)],
        (Stage.train, 1): [(Stage.pairs, 1)],
        (Stage.generate, 2): [(Stage.train, 1)],
        (Stage.rank, 2): [(Stage.generate, 2)],
        (Stage.pairs, 2): [(Stage.rank, 2)],
        (Stage.train, 2): [(Stage.pairs, 2), (Stage.train, 1)],
    }
    for (stage, t), reads in expected.items():
        record = made[t][stage]
        tree = compose_cfg(*SMALL, f"paths.root={root}", f"iter={t}").as_tree()
        assert record["format"] == RECORD_FORMAT
        manifest = record["manifest"]
        assert manifest["params"] == stage_inputs(tree, stage), (stage, t)
        assert manifest["upstream"] == {f"{s.value}@{u}": out_id(made[u][s]) for s, u in reads}, (
            stage,
            t,
        )
        base = {"model.path"} if t == 1 and stage in (Stage.generate, Stage.train) else set()
        judge = {"ranker.model"} if stage == Stage.rank else set()
        prompts = {"data.prompts"} if stage == Stage.generate else set()
        assert set(manifest["files"]) == prompts | base | judge, (stage, t)
        assert record["key"] == key_of(stage, manifest), (stage, t)
        assert record["out_id"] == out_id(record)
        assert state_of(tree, stage).status == "done"


def status_at(root: Path, monkeypatch):
    """src.status's lineages under the runs root `root` (every lineage, none asked for)."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(root))
    return status([]).lineages


def shifted_seeds(monkeypatch) -> None:
    """Generation made to give other bytes under the same config, in this process alone: each
    sample's seed one more (as vLLM on a GPU, or another GPU model, gives other bytes)."""
    seeds = Config.sample_seeds.fget
    monkeypatch.setattr(Config, "sample_seeds", property(lambda cfg: [s + 1 for s in seeds(cfg)]))


@pytest.mark.slow
def test_a_generate_made_again_keeps_its_readers_with_the_same_bytes_and_not_with_others(
    lineage, tmp_path, monkeypatch
):
    """`pipeline.redo=[generate]` under the same config: its rows are the same bytes, and rank,
    pairs and train stay finished in src.main and src.status. Made again with other bytes
    (`shifted_seeds`): each is stale in src.main (refused, with the redo from rank), src.status,
    src.compare (left out) and src.export (refused), said as the stage it read made again.

    Slow: two generations and the commands reading the lineage, in-process (~30 s)."""
    root = lineage("one-iteration").root
    again = cli(root, "iter=1", "stage=generate", "pipeline.redo=[generate]")
    assert again.returncode == 0, again.stderr[-3000:]
    (found,) = status_at(root, monkeypatch)
    assert {c.state for c in found.iterations[0].stages.values()} == {"finished"}
    skipped = cli(root, "iter=1")
    assert skipped.returncode == 0 and skipped.stderr.count("skipped") == 4, skipped.stderr

    shifted_seeds(monkeypatch)
    other = cli(root, "iter=1", "stage=generate", "pipeline.redo=[generate]")
    assert other.returncode == 0, other.stderr[-3000:]
    said = "generate was made again since rank read it"
    refused = one_line_failure(cli(root, "iter=1"), 1)
    assert f"iter1/rank is stale ({said})" in refused and "pipeline.redo=[rank]" in refused
    (found,) = status_at(root, monkeypatch)
    cells = found.iterations[0].stages
    assert cells["generate"].state == "finished"
    assert {cells[s].state for s in ("rank", "pairs", "train")} == {"stale"}
    assert {cells[s].why for s in ("rank", "pairs", "train")} == {said}
    compared = entry("src.compare", "--root", str(root), "--out", str(tmp_path / "compare"))
    assert compared.returncode == 0 and f"{said}, left out" in compared.stderr, compared.stderr
    exported = entry("src.export", *SMALL, f"paths.root={root}", "iter=1", "--what", "model")
    assert exported.returncode != 0 and said in exported.stderr, exported.stderr[-2000:]


def test_a_checkpoint_that_lost_or_changed_a_file_is_stale_with_its_readers(lineage, monkeypatch):
    """The training's own outputs are checked against its seals: a file gone, or rewritten with
    other bytes of the same size, makes the training stale (named), src.main refuses it with its
    redo, and src.status says so; put back, it is finished again."""
    root = lineage("one-iteration").root
    cfg = compose_cfg(*SMALL, f"paths.root={root}", "iter=1")
    tokenizer = cfg.layout.checkpoint(1) / "tokenizer.json"
    kept = tokenizer.read_bytes()
    tokenizer.unlink()
    state = state_of(cfg.as_tree(), Stage.train)
    assert (state.status, state.changed) == ("stale", ["checkpoint/tokenizer.json is missing"])
    assert state.changed[0].kind == Why.damaged
    refused = one_line_failure(cli(root, "iter=1"), 1)
    assert "iter1/train is stale (checkpoint/tokenizer.json is missing)" in refused
    assert "pipeline.redo=[train]" in refused
    (found,) = status_at(root, monkeypatch)
    assert found.iterations[0].stages["train"].state == "stale"

    tokenizer.write_bytes(kept.replace(b'"', b"'", 1))  # the same size, other bytes
    (change,) = state_of(cfg.as_tree(), Stage.train).changed
    assert (
        change == "checkpoint/tokenizer.json is not the file this stage made (its content changed)"
    )
    tokenizer.write_bytes(kept)
    assert state_of(cfg.as_tree(), Stage.train).status == "done"


def finished(cfg: Config) -> None:
    """Every stage of `cfg`'s iteration recorded as finished under it, its outputs none."""
    for stage in STAGES:
        cfg.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        write_record(cfg.stage_dir(stage), Finished(stage_key(cfg.as_tree(), stage), {}, {}, {}))


def test_a_base_model_replaced_in_place_makes_what_was_made_from_it_stale(tmp_path, tiny_dir):
    """pi_0 enters by the content of its files, not its path: its weights written again in place
    make generate and train of iteration 1 stale, naming it, and iteration 2 descends from a stale
    iteration; the same bytes written again (new times) leave every stage finished."""
    model = tmp_path / "base"
    shutil.copytree(tiny_dir / "tiny-mistral", model)
    at = [*SMALL, f"paths.root={tmp_path / 'runs'}", f"model.path={model}"]
    one, two = (compose_cfg(*at, f"iter={t}") for t in (1, 2))
    finished(one)
    finished(two)
    config = model / "config.json"
    config.write_text(config.read_text())  # the same bytes, new times
    assert {state_of(t.as_tree(), s).status for t in (one, two) for s in STAGES} == {"done"}

    config.write_text(config.read_text().replace('"hidden_act"', '"hidden_act" ', 1))
    said = f"model.path: {model} changed since this stage read it"
    for stage in (Stage.generate, Stage.train):
        assert state_of(one.as_tree(), stage).changed == [said], stage
    assert state_of(one.as_tree(), Stage.rank).changed == [f"generate's {said}"]
    (ancestor,) = state_of(two.as_tree(), Stage.generate).changed
    assert (ancestor.kind, ancestor.cause) == (Why.ancestor, Why.content) and said in ancestor


def test_a_damaged_record_leaves_no_stage_that_read_it_trusted_in_any_command(
    lineage, tmp_path, monkeypatch
):
    """Iteration 1's rank record garbled: every stage that read it, iteration 2's too, is not
    finished in src.status (unknown, naming the record), src.main refuses iteration 2, src.export
    refuses it and src.compare leaves its figures out, each naming the damaged record."""
    root = lineage("two-iterations").root
    damaged = stage_dirs_of(root, 1)[Stage.rank] / "done.json"
    damaged.write_text("garbage\n")
    (found,) = status_at(root, monkeypatch)
    one, two = found.iterations[0].stages, found.iterations[1].stages
    assert one["rank"].state == "damaged" and one["generate"].state == "finished"
    for cell in (one["pairs"], one["train"], *two.values()):
        assert cell.state == "unknown" and str(damaged) in cell.why, cell
    refused = one_line_failure(cli(root, "iter=2"), 1)
    assert str(damaged) in refused
    exported = entry("src.export", *SMALL, f"paths.root={root}", "iter=2", "--what", "model")
    assert exported.returncode == 1 and str(damaged) in exported.stderr, exported.stderr[-2000:]
    compared = entry("src.compare", "--root", str(root), "--out", str(tmp_path / "compare"))
    iteration2 = stage_dirs_of(root, 2)[Stage.train]
    assert f"[compare] {iteration2}: " in compared.stderr, compared.stderr[-3000:]


def stage_dirs_of(root: Path, t: int) -> dict[Stage, Path]:
    cfg = compose_cfg(*SMALL, f"paths.root={root}", f"iter={t}")
    return {stage: cfg.stage_dir(stage) for stage in STAGES}
