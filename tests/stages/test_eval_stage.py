"""Stage `eval` on the tiny models, through the command line: iteration 1 trained and evaluated by
`stage=all eval.enabled=true`; the policy against the base model, against itself, against a
file of reference answers; the AlpacaEval export; bad input refused with nothing written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from src.config import REPO_ROOT
from src.core.diff import TRAINED_AFTER
from src.evaluation.winrate import GLM
from tests.support.helpers import (
    SMALL,
    alpaca_eval_annotations,
    cli,
    one_line_failure,
    run_main_process,
)

EVAL_SET = REPO_ROOT / "data" / "prompts" / "eval.json"
# why an eval of iteration 1's checkpoint trained again since is stale, in every command's words
TRAINED = f"iteration 1's checkpoint {TRAINED_AFTER}"
EXPORT_KEYS = {"instruction", "output", "generator", "dataset"}


def eval_dir(root: Path, t: int = 1, side: str = "") -> Path:
    """The eval folder of iteration t: against the base model, or `side` (`vs-<name>`)."""
    return next(root.glob("tiny-mistral/sppo/*")) / f"iter{t}" / "eval" / side


def report(root: Path, side: str = "") -> dict:
    return json.loads((eval_dir(root, side=side) / "eval.json").read_text())


def judgements(root: Path, side: str = "") -> list[dict]:
    lines = (eval_dir(root, side=side) / "judgements.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_dir):
    """Iteration 1 of SPPO, trained then evaluated against the base model by `stage=all`, in a
    private run (umask 077). Made here, in a process of its own: the umask is read once by a
    process, and the eval's answers are cached by where the policy's weights are (a copy of a
    lineage made elsewhere, tests/support/lineages.py, would answer anew)."""
    root = tmp_path_factory.mktemp("eval")
    mask = os.umask(0o077)  # inherited by the run's process
    try:
        result = run_main_process(root, *SMALL, "iter=1", "eval.enabled=true")
    finally:
        os.umask(mask)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result.stderr


@pytest.mark.slow
def test_stage_all_evaluates_the_trained_iteration_against_the_base_model(evaluated):
    root, stderr = evaluated
    assert "[main] stage eval ->" in stderr
    r = report(root)
    instructions = json.loads(EVAL_SET.read_text())
    assert r["reference"] == "tiny-mistral" and r["policy"].endswith("-iter1")
    assert r["policy_path"].endswith("iter1/train/checkpoint")
    assert r["instructions"] == r["compared"] == len(instructions) and r["left_out"] == 0
    for key in ("win_rate", "lc_win_rate", "discrete_win_rate", "probability_win_rate"):
        assert 0.0 <= r[key] <= 1.0, key
    for key in ("win_rate", "lc_win_rate"):
        assert 0.0 <= r[f"{key}_low"] <= r[f"{key}_high"] <= 1.0, key
    assert r["wins"] + r["losses"] + r["ties"] == r["compared"]
    assert (eval_dir(root) / "done.json").is_file()
    assert json.loads((eval_dir(root) / "metrics.json").read_text()) == r


@pytest.mark.slow
def test_a_private_runs_results_are_readable_by_no_one_else(evaluated):
    """Under umask 077 every file of the stage is 0600: no file of a private run others can
    read."""
    root, _ = evaluated
    mode = {f.name: stat.S_IMODE(f.stat().st_mode) for f in eval_dir(root).iterdir() if f.is_file()}
    assert set(mode.values()) == {0o600}, mode


@pytest.mark.slow
def test_the_reported_rates_follow_from_the_judgements(evaluated):
    """Recomputed from the per-instruction records: the raw rate and the average lengths."""
    root, _ = evaluated
    r, rows = report(root), judgements(root)
    outcome = np.array([j["outcome"] for j in rows])
    preference = np.array([j["preference"] for j in rows])
    assert set(outcome) <= {0.0, 0.5, 1.0}  # discrete outcomes: ties count half
    assert np.array_equal(
        outcome, np.where(preference > 0.5, 1.0, np.where(preference < 0.5, 0.0, 0.5))
    )
    assert r["win_rate"] == pytest.approx(outcome.mean(), abs=1e-12)
    ours = np.array([len(j["output"]) for j in rows])
    theirs = np.array([len(j["reference_output"]) for j in rows])
    assert r["avg_length"] == pytest.approx(ours.mean())
    assert r["reference_avg_length"] == pytest.approx(theirs.mean())
    assert r["probability_win_rate"] == pytest.approx(preference.mean(), abs=1e-12)


@pytest.mark.slow
def test_the_alpaca_eval_exports_round_trip_with_the_expected_keys(evaluated):
    root, _ = evaluated
    eval_set = json.loads(EVAL_SET.read_text())
    instructions = [row["instruction"] for row in eval_set]
    rows = judgements(root)
    for name, column, generator in (
        ("model_outputs.json", "output", report(root)["policy"]),
        ("reference_outputs.json", "reference_output", "tiny-mistral"),
    ):
        exported = json.loads((eval_dir(root) / name).read_text())
        assert isinstance(exported, list) and all(set(e) == EXPORT_KEYS for e in exported)
        assert [e["instruction"] for e in exported] == instructions  # the eval set's order
        assert [e["output"] for e in exported] == [j[column] for j in rows]
        assert {e["generator"] for e in exported} == {generator}
        assert [e["dataset"] for e in exported] == [r["dataset"] for r in eval_set]  # its own
        assert json.loads(json.dumps(exported)) == exported


@pytest.mark.slow
def test_the_policy_against_itself_is_exactly_one_half_beside_the_base_eval(evaluated):
    """The same model, greedy: identical answers, every one a tie, raw and LC exactly 0.5. The
    eval against iteration 1 sits beside the one against the base model (eval/vs-iter1/), which
    it leaves alone, and the card shows both; the answers come from the cache."""
    root, _ = evaluated
    first = report(root)
    result = cli(root, "iter=1", "stage=eval", "eval.reference=iter1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[main] stage eval -> {eval_dir(root, side='vs-iter1')}" in result.stderr
    assert result.stderr.count("reused from") == 2, "both sides' answers were cached"
    assert report(root) == first, "the eval against the base model is left as it was"
    r = report(root, "vs-iter1")
    assert (
        r["reference"].endswith("-iter1")
        and (eval_dir(root, side="vs-iter1") / "done.json").is_file()
    )
    assert r["win_rate"] == 0.5 and r["lc_win_rate"] == 0.5
    assert r["win_rate_low"] == r["win_rate_high"] == 0.5
    assert (
        r["ties"]
        == r["identical_answers"]
        == r["compared"]
        == len(json.loads(EVAL_SET.read_text()))
    )
    assert r["length_coefficient"] == 0.0
    card = (eval_dir(root).parent / "train" / "checkpoint" / "README.md").read_text()
    assert "Against `tiny-mistral`" in card and f"Against `{r['reference']}`" in card
    assert f"win_rate vs {r['reference']}" in card and "win_rate vs tiny-mistral" in card

    again = cli(root, "iter=1", "stage=eval", "eval.reference=iter1")
    assert "stage eval: finished with this config, skipped" in again.stderr
    # a redo of the eval against the base model keeps the one beside it
    redone = cli(root, "iter=1", "stage=eval", "pipeline.redo=[eval]")
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert report(root) == {**first, "seconds": report(root)["seconds"]}
    assert report(root, "vs-iter1") == r


@pytest.mark.slow
def test_a_second_judge_is_offered_a_folder_beside_the_first_and_compare_shows_both(
    evaluated, tmp_path
):
    """The eval judged by the tiny preset's tiny-judge, asked for with tiny-pairrm: refused, the
    fix judging the checkpoint in eval/vs-base@tiny-pairrm/ instead of replacing the first
    judge's figures; that command answers from the cache, leaves the first eval as it was, and
    src.compare shows both judges' win rates."""
    from tests.support.helpers import entry

    root, _ = evaluated
    first = report(root)
    asked = ("iter=1", "stage=eval", "ranker@eval.judge=tiny-pairrm")
    line = one_line_failure(cli(root, *asked), 1)
    assert line.startswith(f"error: {eval_dir(root)} was judged by other judges (eval.judge."), line
    assert line.endswith(" eval.judged_by=tiny-pairrm`"), line
    judged = cli(root, *asked, "eval.judged_by=tiny-pairrm")
    assert judged.returncode == 0, judged.stderr[-3000:]
    assert judged.stderr.count("reused from") == 2, "both sides' answers were cached"
    assert report(root) == first, "the first judge's eval is left as it was"
    second = report(root, "vs-base@tiny-pairrm")
    assert (first["judge"], second["judge"]) == ("tiny-judge", "tiny-pairrm")
    assert second["reference"] == first["reference"] and second["policy"] == first["policy"]

    compared = entry("src.compare", "--root", str(root), "--out", str(tmp_path / "compare"))
    assert compared.returncode == 0, compared.stderr[-3000:]
    with (tmp_path / "compare" / "compare.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert float(row["eval_win_rate"]) == first["win_rate"]
    assert float(row["eval_win_rate[vs-base@tiny-pairrm]"]) == second["win_rate"]


@pytest.mark.slow
def test_the_base_model_is_evaluated_as_iteration_0_and_compared_as_such(evaluated, tmp_path):
    """`stage=eval iter=0`: the base model's own eval, in iter0/eval/ (its answers the cache's,
    made as iteration 1's reference), against itself by default: every answer a tie. src.compare
    shows it as iteration 0, beside iteration 1; any other stage at iteration 0 is refused. On a
    copy of the lineage: the module's last test counts the evals of the lineage it reads."""
    from tests.support.helpers import entry

    root, _ = evaluated
    copy = tmp_path / "runs"
    shutil.copytree(root, copy, symlinks=True)
    made = cli(copy, "iter=0", "stage=eval")
    assert made.returncode == 0, made.stderr[-3000:]
    assert f"[main] stage eval -> {eval_dir(copy, 0)}" in made.stderr
    assert made.stderr.count("reused from") == 2, "both sides' answers were cached"
    base = json.loads((eval_dir(copy, 0) / "eval.json").read_text())
    assert base["policy"] == base["reference"] == "tiny-mistral"
    assert base["win_rate"] == base["lc_win_rate"] == 0.5 and base["ties"] == base["compared"]
    assert sorted(p.name for p in eval_dir(copy, 0).parent.parent.iterdir()) == ["iter0", "iter1"]
    stages = [p.name for p in eval_dir(copy, 0).parent.iterdir() if p.name != ".locks"]
    assert stages == ["eval"], "no stage but the eval at iteration 0"

    out = tmp_path / "compare"
    compared = entry("src.compare", "--root", str(copy), "--out", str(out))
    assert compared.returncode == 0, compared.stderr[-3000:]
    with (out / "compare.csv").open() as f:
        rows = {int(r["iter"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [0, 1] and rows[0]["stages_done"] == "eval"
    assert (float(rows[0]["eval_win_rate"]), float(rows[1]["eval_win_rate"])) == (
        0.5,
        report(root)["win_rate"],
    )
    assert ": iter0 0.500 [0.500, 0.500] LC 0.500 | iter1 " in compared.stdout

    refused = cli(copy, "iter=0", "stage=generate")
    assert refused.returncode == 2 and refused.stderr.startswith(
        "config error: iter=0: iteration 0 is the base policy (run.init_policy) itself"
    ), refused.stderr


@pytest.mark.slow
def test_the_length_controlled_rate_is_alpaca_evals_own(evaluated, alpaca_eval_offline, tmp_path):
    """Against reference answers of varied lengths (the base model's, some cut to their first
    sentence, some said twice): eval.json's lc_win_rate and standard error are what alpaca_eval's
    own code computes from the stage's judgements.jsonl."""
    root, _ = evaluated
    rows = json.loads((eval_dir(root) / "reference_outputs.json").read_text())
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["output"] = row["output"].split(". ")[0] + "."
        elif i % 3 == 1:
            row["output"] = f"{row['output']} {row['output']}"
    varied = tmp_path / "varied.json"
    varied.write_text(json.dumps(rows))
    result = cli(root, "iter=1", "stage=eval", f"eval.reference_outputs={varied}")
    assert result.returncode == 0, result.stderr[-3000:]
    r, judged = report(root, "vs-varied.json"), judgements(root, "vs-varied.json")
    outcome = np.array([j["outcome"] for j in judged])
    ours = np.array([len(j["output"]) for j in judged])
    theirs = np.array([len(j["reference_output"]) for j in judged])
    assert len(set(outcome)) > 1 and np.std(ours - theirs) > 0, "a set with a length signal"
    expected = alpaca_eval_offline.get_length_controlled_winrate(
        alpaca_eval_annotations(outcome, ours, theirs), glm_name=GLM, save_weights_dir=None
    )
    assert r["lc_win_rate"] == pytest.approx(expected["length_controlled_winrate"] / 100, abs=1e-6)
    assert r["win_rate"] == pytest.approx(expected["win_rate"] / 100, abs=1e-6)
    assert r["standard_error"] == pytest.approx(expected["standard_error"] / 100, abs=1e-6)
    assert r["lc_win_rate_low"] <= r["lc_win_rate"] <= r["lc_win_rate_high"]


@pytest.mark.slow
def test_a_file_of_reference_answers_gives_the_same_result_as_generating_them(evaluated, tmp_path):
    """eval.reference_outputs reads AlpacaEval's format: the base model's exported answers give
    the judge's verdicts of the base-model evaluation again."""
    root, _ = evaluated
    base = tmp_path / "base-answers.json"
    expected = report(root)
    base.write_text((eval_dir(root) / "reference_outputs.json").read_text())
    result = cli(root, "iter=1", "stage=eval", f"eval.reference_outputs={base}")
    assert result.returncode == 0, result.stderr[-3000:]
    got = report(root, "vs-base-answers.json")
    for key in ("win_rate", "lc_win_rate", "wins", "losses", "ties", "reference_avg_length"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key

    short = tmp_path / "short.json"
    short.write_text(json.dumps(json.loads(base.read_text())[1:]))
    missing = cli(root, "iter=1", "stage=eval", f"eval.reference_outputs={short}")
    assert missing.returncode == 1
    assert f"error: {short}: no reference output for 1 instruction(s)" in missing.stderr
    assert not (eval_dir(root, side="vs-short.json") / "done.json").exists(), "nothing to trust"
    assert not (eval_dir(root, side="vs-short.json") / "eval.json").exists()
    assert report(root) == expected and report(root, "vs-base-answers.json") == got  # left alone


@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_no_evaluation(tmp_path, evaluated):
    root, _ = evaluated
    untrained = cli(root, "iter=2", "stage=eval")
    assert untrained.returncode == 1
    assert "error: iteration 2 is not trained" in untrained.stderr
    # the user's own command, running the whole iteration 2 instead of its eval
    assert f"run `python -m src.main {' '.join(SMALL)} iter=2 stage=all`" in untrained.stderr
    assert not eval_dir(root, 2).joinpath("eval.json").exists()

    bad = tmp_path / "eval.json"
    bad.write_text('[{"instruction": "fine"}, {"instruction": ""}]')
    result = cli(tmp_path / "runs", "iter=1", "stage=eval", f"data.eval_prompts={bad}")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {bad}[1]: the prompt is empty")

    later = cli(root, "iter=1", "stage=eval", "eval.reference=iter3")
    assert later.returncode == 2
    assert "eval.reference='iter3': must be an iteration up to iter=1" in later.stderr

    # a reference that cannot load fails before any answer is made, naming the key
    for reference, code, said in [
        (f"{tmp_path}/no-model", 1, f"eval.reference={tmp_path}/no-model: no such model folder"),
        ("some-org/not-cached", 3, "model some-org/not-cached (eval.reference: iteration 1 eval)"),
    ]:
        refused = cli(root, "iter=1", "stage=eval", f"eval.reference={reference}")
        assert one_line_failure(refused, code).startswith(f"error: {said}"), refused.stderr
        assert "[eval] answers of" not in refused.stderr


def test_an_unset_eval_set_is_refused_with_where_to_get_one():
    from src.evaluation.errors import EvalError
    from src.stages import eval as eval_stage
    from tests.support.helpers import compose_cfg

    cfg = compose_cfg("stage=eval", "iter=2", "logger=none")  # the SPPO recipe: no eval set
    with pytest.raises(EvalError, match=r"data\.eval_prompts is not set: .*alpaca_eval\.json"):
        eval_stage.run(cfg)
    assert not cfg.stage_dir("eval").exists()


@pytest.mark.slow
def test_a_redo_that_fails_puts_the_finished_eval_back(evaluated, tmp_path):
    """A redo the eval cannot finish (here its prompts are not JSON) ends with its error and the
    eval's finished results back in their folder, byte for byte: what it set aside, never
    deleted before the redo ended well. The eval beside it is left alone throughout."""
    root, _ = evaluated
    folder = eval_dir(root)

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
                if p.is_file() and ".locks" not in p.parts}  # fmt: skip

    before = files()
    assert "eval.json" in before and "done.json" in before
    broken = tmp_path / "prompts.json"
    broken.write_text('[{"instruction": "unfinished')
    failed = cli(
        root, "iter=1", "stage=eval", "pipeline.redo=[eval]", f"data.eval_prompts={broken}"
    )
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert f"stage eval: the redo failed; its earlier results are back in {folder}" in failed.stderr
    assert files() == before
    assert not list(folder.parent.glob(".*before-redo")), "nothing left aside"


@pytest.mark.slow
def test_the_evals_of_a_checkpoint_trained_again_are_stale_and_redo_stale_remakes_each(
    evaluated, tmp_path
):
    """Answers read from a file named iter1.json sit apart from the eval against iteration 1
    (vs-iter1.json beside vs-iter1). Iteration 1 trained again with another seed (other bytes:
    a training made again with the same bytes leaves its evals as they are, tests/core/
    test_state.py): every eval of the checkpoint before it (the base one and both beside it) is
    stale — `stage=eval`
    refuses it naming its redo, the card and src.compare leave them out — and
    `pipeline.redo_stale=true` makes each of the three again, and leaves, naming it, one whose
    saved settings no longer compose. Last in the module: it retrains the lineage the tests above
    read.

    Slow: a training and four evals, in-process (~40 s on one CPU)."""
    from tests.support.helpers import entry

    root, _ = evaluated
    answers = tmp_path / "iter1.json"
    answers.write_text((eval_dir(root) / "reference_outputs.json").read_text())
    for reference in ("eval.reference=iter1", f"eval.reference_outputs={answers}"):
        made = cli(root, "iter=1", "stage=eval", reference)
        assert made.returncode == 0, made.stderr[-3000:]
    sides = [eval_dir(root, side=s) for s in ("vs-iter1", "vs-iter1.json")]
    assert report(root, "vs-iter1")["reference"].endswith("-iter1")
    assert report(root, "vs-iter1.json")["reference"] != report(root, "vs-iter1")["reference"]
    # the reference answers edited in place: src.compare leaves out the eval made against them
    # (its win rate had been shown under the file's name), and shows it again once restored
    written = answers.read_text()
    answers.write_text(written.replace('"output": "', '"output": "Well, ', 1))
    compared = entry("src.compare", "--root", str(root), "--out", str(tmp_path / "compare"))
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert f"[compare] {sides[1]}: eval.reference_outputs: " in compared.stderr
    assert "changed since this stage read it, left out" in compared.stderr
    answers.write_text(written)
    compared = entry("src.compare", "--root", str(root), "--out", str(tmp_path / "compare"))
    assert "[compare]" not in compared.stderr, compared.stderr[-3000:]

    seed = "training.seed=7"
    retrained = cli(root, "iter=1", "stage=train", "pipeline.redo=[train]", seed)
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    refused = cli(root, "iter=1", "stage=eval", seed)
    line = one_line_failure(refused, 1)
    assert line.startswith(f"error: {eval_dir(root)} is stale ({TRAINED}); to evaluate"), line
    assert "pipeline.redo=[eval]" in line
    card = eval_dir(root).parent / "train" / "checkpoint" / "README.md"
    assert "Against `" not in card.read_text(), "no eval of the checkpoint as it is now"
    compared = entry("src.compare", "--root", str(root), "--out", str(tmp_path / "compare"))
    assert compared.returncode == 0, compared.stderr[-3000:]
    for stale in (eval_dir(root), *sides):  # the base eval too
        assert f"[compare] {stale}: {TRAINED}, left out" in compared.stderr
    header = (tmp_path / "compare" / "compare.csv").read_text().splitlines()[0]
    assert "[vs-" not in header and "eval_win_rate" not in header

    # two more, left as they are: one whose saved eval settings no longer compose (named), one
    # that today's naming puts elsewhere (its own command redoes it)
    broken, renamed = eval_dir(root, side="vs-broken"), eval_dir(root, side="vs-renamed")
    for copy in (broken, renamed):
        shutil.copytree(sides[0], copy)
    saved = OmegaConf.load(broken / "config.yaml")
    saved.eval.no_such_key = 1
    OmegaConf.save(saved, broken / "config.yaml")
    kept = {copy: (copy / "done.json").read_bytes() for copy in (broken, renamed)}

    redone = cli(root, "iter=1", "stage=eval", "pipeline.redo_stale=true", seed)
    assert redone.returncode == 0, redone.stderr[-3000:]
    for side in sides:
        assert f"[main] {side}: stale ({TRAINED}): redoing it" in redone.stderr
    assert (f"[main] {broken}: its eval settings do not compose now (unknown config key "
            "'eval.no_such_key'") in redone.stderr  # fmt: skip
    assert f"[main] {renamed}" not in redone.stderr
    # the card the base eval rewrites leaves out, naming it, what is still stale
    assert f"[card] {broken}: stale (" in redone.stderr
    assert {copy: (copy / "done.json").read_bytes() for copy in kept} == kept
    assert cli(root, "iter=1", "stage=eval", seed).returncode == 0
    assert report(root, "vs-iter1")["win_rate"] == 0.5  # against itself, as trained now
    references = {report(root, side)["reference"] for side in ("", "vs-iter1", "vs-iter1.json")}
    assert all(f"Against `{r}`" in card.read_text() for r in references), "the three, made again"
