"""`stage=all` across iterations on the tiny models, through the command line: iteration t
starts from iteration t-1's checkpoint, finished stages are skipped, work made under another
config is refused unless redone, a killed training resumes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.config import REPO_ROOT
from src.stages.report.curves import JOB_TYPE
from src.tiny.names import PIPELINE_NAMES
from src.training.checkpoints import checkpoints
from tests.support import lineages
from tests.support.helpers import OFFLINE, SMALL, cli, entry, one_line_failure, run_main
from tests.support.wandb_runs import offline_runs


def run_dir(root: Path) -> Path:
    return next(root.glob("tiny-mistral/sppo/*"))


def records(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("done.json")}


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory, tiny_dir):
    """`cli(root, "iter=2")` on an empty root (tests/support/lineages.py): (the root, its stderr)."""
    return lineages.copy("two-iterations", tiny_dir, tmp_path_factory.mktemp("pipeline") / "runs")


@pytest.mark.slow
def test_iteration_two_runs_iteration_one_first_and_starts_from_its_checkpoint(two_iterations):
    root, stderr, made_in = two_iterations
    assert "[main] iteration 1 is not done: running it first" in stderr
    lineage = run_dir(root)
    for t in (1, 2):
        for stage in ("generate", "rank", "pairs", "train"):
            assert (lineage / f"iter{t}" / stage / "done.json").is_file(), (t, stage)
    # the saved configs name the root the run was made in
    checkpoint = str(made_in / lineage.relative_to(root) / "iter1" / "train" / "checkpoint")
    # the generator, the initial weights and the reference of iteration 2: iteration 1's model
    for stage in ("generate", "train"):
        saved = (lineage / "iter2" / stage / "config.yaml").read_text()
        assert f"init_policy: {checkpoint}" in saved, stage
        assert (
            saved.splitlines()[0].startswith("# python -m src.main")
            and "iter=2" in saved.splitlines()[0]
        )
    assert "iter=1" in (lineage / "iter1" / "train" / "config.yaml").read_text().splitlines()[0]
    reference = json.loads((lineage / "iter2" / "train" / "reference_logps.json").read_text())
    # named relative to the run, so that a moved run resumes its training too
    assert reference["identity"]["reference"] == "<run>/iter1/train/checkpoint"
    # each stage's counts are also in metrics.json
    for stage in ("generate", "rank", "pairs", "train"):
        assert json.loads((lineage / "iter2" / stage / "metrics.json").read_text())


@pytest.mark.slow
def test_a_second_invocation_does_no_work(two_iterations):
    root = two_iterations.root
    before = records(root)
    again = cli(root, "iter=2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[main] iteration 1: finished with this config" in again.stderr
    assert again.stderr.count("finished with this config, skipped") == 4  # iteration 2's stages
    assert "running it first" not in again.stderr
    assert records(root) == before, "no stage rewrote its record"


@pytest.mark.slow
def test_a_changed_hyper_parameter_is_refused_unless_redone(two_iterations):
    root = two_iterations.root
    before = records(root)
    refused = cli(root, "iter=2", "ranker.self_term=false")
    assert refused.returncode == 1
    line = refused.stderr.strip().splitlines()[-1]
    # both iterations were ranked with the old judge config: one refusal, one command for both
    assert line.startswith(
        "error: iteration 1's rank and iteration 2's rank were made with a different "
        "configuration (ranker.self_term: True -> False); "
    ), line
    assert line.endswith("iter=2 ranker.self_term=false pipeline.redo_stale=true`"), line
    assert records(root) == before, "nothing ran"

    # a change in a later stage's input: only that stage is named, in each iteration
    refused = cli(root, "iter=2", "training.warmup_ratio=0.2")
    assert refused.returncode == 1
    assert (
        "iteration 1's train and iteration 2's train were made with a different configuration "
        "(training.warmup_ratio: 0.1 -> 0.2)" in refused.stderr
    )
    assert records(root) == before


@pytest.mark.slow
def test_an_iteration_made_from_a_checkpoint_trained_again_since_is_named_so(lineage, tmp_path):
    """Iteration 1 trained again under another config after iteration 2 was made from it:
    iteration 2 is refused naming why and every stage stale with it, and export will not ship
    it; the command src.main's refusal gives (pipeline.redo_stale=true) and the one export's
    names (src.status's: iteration 2 made again as it was made) each redo it."""
    runs = lineage("two-iterations").root
    redone = cli(runs, "iter=1", "training.warmup_ratio=0.2", "pipeline.redo=[train]")
    assert redone.returncode == 0, redone.stderr[-3000:]
    line = one_line_failure(cli(runs, "iter=2", "training.warmup_ratio=0.2"), 1)
    assert (
        "iter2/generate was made with a different configuration (iteration 1's checkpoint, " in line
    )
    assert "which this iteration's generate started from, was trained again since)" in line
    assert "redo it (and so rank, pairs, train after it); every later iteration" in line
    assert line.endswith("iter=2 training.warmup_ratio=0.2 pipeline.redo_stale=true`"), line
    export = [*SMALL, f"paths.root={runs}", "iter=2", "--out", str(tmp_path / "out")]
    line = one_line_failure(entry("src.export", *export), 1)
    assert "iter2/train is stale (iteration 1's checkpoint, which this iteration's generate" in line
    # the command src.status names, not a redo built from the export's overrides: pasted, it
    # makes iteration 2 again as it was made, and nothing of iteration 1
    redo = f"iter=2 paths.root={runs} pipeline.require_previous=true 'pipeline.redo=[generate]'`"
    assert line.endswith(redo), line
    assert not (tmp_path / "out").exists()  # neither the model nor the data

    before = records(runs)
    again = run_main(runs, *shlex.split(line.rsplit("; run `", 1)[1].removesuffix("`"))[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("redoing (pipeline.redo)") == 4, "iteration 2's four stages"
    after = records(runs)
    assert all(after[k] == v for k, v in before.items() if "/iter1/" in k), "iteration 1 kept"
    assert all(after[k] != v for k, v in before.items() if "/iter2/" in k), "iteration 2 redone"
    exported = entry("src.export", *export)
    assert exported.returncode == 0, exported.stderr[-3000:]


@pytest.mark.slow
def test_a_copied_run_root_keeps_its_finished_stages_and_goes_on(lineage, tmp_path):
    here, there = tmp_path / "here", tmp_path / "elsewhere" / "runs"
    lineage("one-iteration", here)  # `cli(here, "iter=1")`
    shutil.copytree(here, there, copy_function=shutil.copy)  # as `cp -r`: new modification times
    shutil.rmtree(here)  # nothing may be read from where the run was made
    before = records(there)

    again = cli(there, "iter=1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("finished with this config, skipped") == 4
    assert records(there) == before, "no stage of the copy was made again"

    on = cli(there, "iter=2")
    assert on.returncode == 0, on.stderr[-2000:]
    assert "[main] iteration 1: finished with this config" in on.stderr
    assert "running it first" not in on.stderr
    lineage = run_dir(there)
    for stage in ("generate", "rank", "pairs", "train"):
        assert (lineage / "iter2" / stage / "done.json").is_file(), stage
    saved = (lineage / "iter2" / "generate" / "config.yaml").read_text()
    assert f"init_policy: {lineage / 'iter1' / 'train' / 'checkpoint'}" in saved
    assert records(there).items() >= before.items(), "iteration 1 untouched"


@pytest.mark.slow
def test_a_run_copied_to_another_clone_keeps_every_stage(lineage, tmp_path, tiny_dir):
    """Another clone (its own src/, conf/, data/ and tiny models) holding a copy of the runs:
    `python -m src.main` run from it finds every stage of both iterations finished; there, a
    prompts file whose content differs is named, and nothing runs."""
    clone, caches = tmp_path / "clone", shutil.ignore_patterns("__pycache__")
    for part in lineages.MADE_FROM:
        shutil.copytree(REPO_ROOT / part, clone / part, ignore=caches)
    for name in PIPELINE_NAMES:
        shutil.copytree(tiny_dir / name, clone / ".cache" / "tiny" / name)
    runs = lineage("two-iterations", clone / "runs").root  # `cli(runs, "iter=2")` in this clone
    before = records(runs)

    def from_clone(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "SELFPLAY_TINY_DIR"}
        return subprocess.run(
            [sys.executable, "-m", "src.main", *SMALL, *args],
            cwd=clone,
            env={**env, **OFFLINE, "SELFPLAY_RUNS": str(runs)},
            capture_output=True,
            text=True,
            timeout=600,
        )

    again = from_clone("iter=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[main] iteration 1: finished with this config" in again.stderr
    assert again.stderr.count("finished with this config, skipped") == 4
    assert records(runs) == before, "no stage was made again"

    prompts = clone / "data" / "prompts" / "iter1.jsonl"
    prompts.write_text(prompts.read_text().replace("a", "b", 1))
    line = one_line_failure(from_clone("iter=2"), 1)
    assert "data.prompts: <repo>/data/prompts/iter1.jsonl changed since this stage read it" in line
    assert records(runs) == before


@pytest.mark.slow
def test_require_previous_refuses_and_names_the_command(tmp_path):
    refused = cli(tmp_path, "iter=2", "pipeline.require_previous=true")
    assert refused.returncode == 1
    line = refused.stderr.strip().splitlines()[-1]
    assert "iteration 2 starts from iteration 1's checkpoint" in line
    # the user's own command, with only the iteration changed (model, sizes and root kept)
    assert (
        f"run `python -m src.main {' '.join(SMALL)} iter=1 pipeline.require_previous=true`" in line
    )
    assert not list(tmp_path.rglob("done.json"))


@pytest.mark.slow
def test_redo_reruns_the_named_stage_and_those_after_it(lineage):
    runs = lineage("one-iteration").root  # `cli(runs, "iter=1")`
    before = records(runs)
    redo = cli(runs, "iter=1", "ranker.self_term=false", "pipeline.redo=[rank]")
    assert redo.returncode == 0, redo.stderr[-2000:]
    after = records(runs)
    changed = {k.split("/")[-2] for k in after if after[k] != before[k]}
    assert changed == {"rank", "pairs", "train"}
    assert "stage generate: finished with this config, skipped" in redo.stderr
    # a stage folder linked elsewhere (scratch space): a redo deletes no folder through the link
    pairs = next(runs.glob("*/*/*/iter1/pairs"))
    elsewhere = runs / "scratch" / "pairs"
    elsewhere.parent.mkdir()
    pairs.rename(elsewhere)
    pairs.symlink_to(elsewhere)
    kept = sorted(p.name for p in elsewhere.iterdir())
    redone = cli(runs, "iter=1", "ranker.self_term=false", "pipeline.redo=[pairs]")
    line = one_line_failure(redone, 1)
    assert line.startswith(f"error: {pairs} is a symbolic link (to {elsewhere}): a redo deletes")
    assert sorted(p.name for p in elsewhere.iterdir()) == kept and pairs.is_symlink()


@pytest.mark.slow
@pytest.mark.parametrize("damaged", [False, True])
def test_a_killed_training_resumes_from_its_last_whole_checkpoint(tmp_path, damaged):
    """Killed after a checkpoint; with `damaged`, that checkpoint's optimizer state is then cut
    short: the re-run names it, resumes from the one before it (or from the start) and ends
    with the weights of a run never interrupted."""
    args = [
        "iter=1",
        "training.num_epochs=4",  # 8 steps: time to kill it after the first checkpoint
        "training.save_steps=1",
        "training.global_batch_size=2",
        "training.per_device_batch_size=1",
    ]
    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.main", *SMALL, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        # the first whole checkpoint seen, whichever it is: save_total_limit=2 removes the older
        # ones while training goes on, so checkpoint-1 may be gone before a poll sees it
        if list(tmp_path.rglob("train/trainer/checkpoint-*/seal.json")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "training should still be running after a checkpoint"
    assert not list(tmp_path.rglob("train/done.json"))
    if damaged:
        (trainer,) = tmp_path.rglob("train/trainer")
        newest = next(d for d in checkpoints(trainer) if (d / "seal.json").is_file())
        os.truncate(newest / "optimizer.pt", 1000)

    rerun = cli(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    if damaged:
        said = f"[train] {newest} cannot be resumed from: optimizer.pt has 1000 bytes where"
        assert said in rerun.stderr, rerun.stderr[-2000:]
        clean = cli(tmp_path / "clean", *args)
        assert clean.returncode == 0, clean.stderr[-2000:]
        weights = [
            next(root.glob("tiny-mistral/*/*/iter1/train/checkpoint/model.safetensors"))
            for root in (tmp_path, tmp_path / "clean")
        ]
        assert weights[0].read_bytes() == weights[1].read_bytes()
    else:
        assert "[train] resuming from" in rerun.stderr
    assert "stage pairs: finished with this config, skipped" in rerun.stderr
    done = json.loads(next(tmp_path.glob("tiny-mistral/*/*/iter1/train/done.json")).read_text())
    assert done["counts"]["steps"] == 8  # 4 pairs, 2 per step, 4 epochs: the resumed run finished


@pytest.mark.slow
def test_each_stage_is_an_offline_wandb_run_with_the_config_and_its_metrics(tmp_path, monkeypatch):
    from src.config import Stage
    from src.stages.report import tracking
    from tests.support.helpers import compose_cfg

    result = cli(tmp_path, "iter=1", "logger=wandb", "logger.mode=offline", "eval.enabled=true")
    assert result.returncode == 0, result.stderr[-3000:]
    wandb_cli = Path(sys.executable).with_name("wandb")
    runs = {}
    for run_file in (tmp_path / "wandb").rglob("run-*.wandb"):
        shown = subprocess.run(
            [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_file.parent)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        run = json.loads(shown.stdout)
        runs[run["config"]["stage"]] = run
    assert set(runs) == {"generate", "rank", "pairs", "train", "eval", "curves"}
    del runs["curves"]  # the lineage's (tests/stages/report/test_tracking_curves.py)

    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path))  # the run directory the command line used
    cfg = compose_cfg(*SMALL, "iter=1", "logger=wandb", "logger.mode=offline", "eval.enabled=true")
    for stage, run in runs.items():
        assert run["state"] == "finished" and run["exit_code"] == 0
        assert run["run_id"] == tracking.run_id(cfg, Stage(stage)), (
            "deterministic id: a requeue resumes it"
        )
        assert run["name"] == f"eta10-lr0.0001-K3-it1-{stage}"
        config = run["config"]
        expected = {
            "eta": 10,  # the tiny models' SPPO (conf/model_method/tiny-mistral_sppo.yaml)
            "beta": 0.1,
            "lr": 0.0001,
            "K": 3,
            "iter": 1,
            "method": "sppo",
            "model": "tiny-mistral",
        }
        assert {k: config[k] for k in expected} == expected
        assert config["ranker"]["name"] == "tiny-pairrm", "the resolved config is there too"
    assert runs["generate"]["summary"]["tokens_per_second"] > 0
    assert runs["rank"]["summary"]["comparisons"] == 4 * 3 * 2
    assert (
        runs["pairs"]["summary"]["pairs"] == 4
        and "mean_chosen_win_rate" in runs["pairs"]["summary"]
    )
    train = runs["train"]["summary"]
    assert {"train/loss", "train/rewards/margins", "train_loss", "pairs_trained"} <= set(train)
    evaluated = json.loads(next(tmp_path.rglob("iter1/eval/eval.json")).read_text())
    for key in ("win_rate", "lc_win_rate", "win_rate_low", "lc_win_rate_high", "avg_length"):
        assert runs["eval"]["summary"][key] == pytest.approx(evaluated[key]), key


def test_online_wandb_without_an_api_key_is_one_clear_line(tmp_path, monkeypatch):
    from src.config import Stage
    from src.core.errors import StageError
    from src.stages.report import tracking
    from tests.support.helpers import compose_cfg

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc holding a key
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))
    cfg = compose_cfg("model=tiny-mistral", "logger=wandb", "logger.mode=online")
    with pytest.raises(
        StageError, match=r"W&B \(logger\.mode=online\): .*API key.*logger=none"
    ) as e:
        tracking.start(cfg, Stage.generate)
    assert e.value.exit_code == 3  # the environment, not the input
    assert e.value.fix == "logger.mode=offline"


@pytest.mark.slow
def test_the_compare_tool_lists_the_real_iterations_and_writes_its_plots(two_iterations, tmp_path):
    import csv

    from src.compare import main as compare

    root = two_iterations.root
    compare(["--root", str(root), "--out", str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert [(r["method"], r["iter"], r["K"], float(r["eta"])) for r in rows] == [
        ("sppo", "1", "3", 10.0),
        ("sppo", "2", "3", 10.0),
    ]
    assert all(
        r["stages_done"] == "generate+rank+pairs+train" and r["train_loss_final"] for r in rows
    )
    for plot in ("training_curves.png", "win_rate_by_iteration.png", "final_vs_hparams.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sigusr1_makes_training_save_a_checkpoint_and_stop_then_the_rerun_resumes(tmp_path):
    # no periodic checkpoints: whatever is saved, the signal made it be saved
    args = [
        "iter=1",
        "training.num_epochs=20",
        "training.save_steps=1000",
        "training.global_batch_size=2",
        "training.per_device_batch_size=1",
    ]
    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.main", *SMALL, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if list(tmp_path.rglob("train/trainer/identity.txt")):  # training has started
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4, stderr[-2000:]
    assert (
        "preempted: stopped on request after saving checkpoint-" in stderr.strip().splitlines()[-1]
    )
    (saved,) = tmp_path.rglob("train/trainer/checkpoint-*")
    assert (saved / "seal.json").is_file() and int(saved.name.split("-")[1]) < 40
    assert not list(tmp_path.rglob("train/done.json")), "a preempted stage is not finished"

    rerun = cli(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"[train] resuming from {saved}" in rerun.stderr
    done = json.loads(next(tmp_path.rglob("train/done.json")).read_text())
    assert done["counts"]["steps"] == 40


def test_the_eval_judge_is_an_input_of_the_eval_stage_only():
    from src.config import Stage
    from src.core.identity import stage_key
    from tests.support.helpers import compose_cfg

    a = compose_cfg("model=tiny-mistral")
    b = compose_cfg("model=tiny-mistral", "eval.judge.model=/judges/another")
    a, b = a.as_tree(), b.as_tree()
    assert stage_key(a, Stage.train) == stage_key(b, Stage.train)
    assert stage_key(a, Stage.eval) != stage_key(b, Stage.eval)


def test_a_local_sweep_whose_points_miss_an_asset_is_refused_before_any_point_starts(
    tmp_path, monkeypatch
):
    """Offline, a policy the Hub cache lacks: one line naming it and the fetch (exit 3) before
    the first point, not each point failing after its start-up."""
    from huggingface_hub import constants

    from src import sweep as sweep_module
    from src.assets.check import AssetsMissing

    sweep = tmp_path / "two.yaml"
    sweep.write_text("method: grid\nparameters:\n  method.eta:\n    values: [1, 10]\n")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = []
    monkeypatch.setattr(sweep_module.subprocess, "run", lambda *a, **k: started.append(a))
    overrides = [*SMALL, "model.path=acme/absent-policy", f"paths.root={tmp_path / 'runs'}",
                 f"paths.hub_cache={tmp_path / 'hub'}"]  # fmt: skip
    with pytest.raises(AssetsMissing) as refused:
        sweep_module.run_local(sweep, overrides, 1)
    said = str(refused.value)
    assert said.startswith("model acme/absent-policy (") and "python -m src.assets fetch" in said
    assert refused.value.exit_code == 3 and not started


@pytest.mark.slow
def test_a_local_sweep_runs_every_point_here(tmp_path):
    """Each point runs here, a failing one does not stop the next, and the points are W&B curve
    runs of one group (the sweep's name) coloured by the swept value, a point finished before
    the sweep too.

    Slow: two whole iterations, each stage of them a W&B run, read back by wandb's reader."""
    sweep = tmp_path / "two.yaml"
    sweep.write_text("method: grid\nparameters:\n  method.eta:\n    values: [1, 10]\n")
    env = {"SELFPLAY_RUNS": str(tmp_path / "elsewhere")}
    root = f"paths.root={tmp_path / 'runs'}"  # the hints keep it
    tracked = [*(o for o in SMALL if o != "logger=none"), "logger=wandb", "logger.mode=offline"]
    command = [str(sweep), "--local", *tracked, root]
    # point 1 lands in a lineage whose generate record was damaged by hand: it fails, and
    # point 2 runs all the same, as an array's next task would
    damaged = tmp_path / "runs/tiny-mistral/sppo/eta1-lr0.0001-K3/iter1/generate/done.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("{not json")
    failed = entry("src.sweep", *command, env=env)
    assert failed.returncode == 1, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 points failed: point 1 (method.eta=1) exit "), last
    assert last.endswith(f"are skipped): python -m src.sweep {sweep} --local --iterations 1 "
                         f"{' '.join(tracked)} {root}"), last  # fmt: skip
    assert "point 2/2: method.eta=10" in failed.stdout
    shutil.rmtree(damaged.parent)
    done = entry("src.sweep", *command, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # point 1 takes point 2's generate, rank and pairs (eta is read by the training alone)
    assert done.stderr.count("reused from") == 3, done.stderr[-3000:]
    for eta in (1, 10):
        assert (
            tmp_path
            / "runs"
            / "tiny-mistral"
            / "sppo"
            / f"eta{eta}-lr0.0001-K3"
            / "iter1"
            / "train"
            / "done.json"
        ).is_file()
    assert "point 2/2: method.eta=10" in done.stdout
    assert done.stdout.strip().endswith(
        f"compare: python -m src.compare --root {tmp_path / 'runs'}"
    )
    curves = [r for r in offline_runs(tmp_path / "runs") if r.stage == JOB_TYPE]
    assert len({r.summary["run_id"] for r in curves}) == 2
    assert {r.header["run_group"] for r in curves} == {"two"}
    assert {r.summary["config"]["sweep"] for r in curves} == {"two"}
    # point 2, finished before the second sweep, in the group all the same: from its records
    assert sorted(r.summary["config"]["method.eta"] for r in curves) == [1, 10, 10]
    (reused,) = [r for r in curves if "reused" in r.header["tags"]]
    (made,) = [r for r in curves if r.summary["config"]["method.eta"] == 10 and r is not reused]
    figures = [[{k: v for k, v in row.items() if not k.startswith("_")} for row in r.history()]
               for r in (reused, made)]  # fmt: skip
    assert figures[0] == figures[1] and "train_loss_final" in figures[0][0]

    refused = entry("src.sweep", *command, "--dry-run", env=env)
    assert refused.returncode == 2 and "--local runs the points here" in refused.stderr
