"""`python -m src.compare`: the table, the CSV and the plots from run directories written here
by hand in the exact formats the stages write (config.yaml, done.json, metrics.json), plus
every refusal: no runs, malformed files, an unknown --metric, an unreachable W&B server; the
iterations with no finished stage left out, --only and --where (eta SPPO's alone, beta DPO's
and WPO's), the hyper-parameter plot's metric and panels (each method against its own eta or
beta), the plots' colours, styles and legends (off the data), the evals against other
references; and a W&B project faked in the client's shape.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from src.compare import main
from src.config import REPO_ROOT, to_yaml
from src.core.identity import stage_key
from src.core.records import Finished, write_record
from src.core.registry import STAGES
from src.stages.report.results import read_iteration
from tests.support.helpers import compose_cfg

# eval/eval.json of SPPO eta=5000, iteration 2 (the stage writes more keys; these are read)
EVAL = {"win_rate": 0.31, "lc_win_rate": 0.27, "win_rate_low": 0.22, "win_rate_high": 0.4,
        "lc_win_rate_low": 0.18, "lc_win_rate_high": 0.37,
        "alpaca_eval": {"lc_win_rate": 0.5397, "win_rate": 0.4823, "avg_length": 1803}}  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("training_curves.png", "win_rate_by_iteration.png", "final_vs_hparams.png")
MODEL = "tiny-mistral"
SPPO_1000, SPPO_5000, WPO = "eta1000-lr5e-07-K5", "eta5000-lr5e-07-K5", "beta0.01-lr1e-06-K3"
DPO = "beta0.1-lr1e-06-K3"
# run_name: (method, eta, lr, K, loss); beta is 1/eta (conf/method)
LINEAGES = {
    SPPO_1000: ("sppo", 1000.0, 5e-07, 5, "sppo"),
    SPPO_5000: ("sppo", 5000.0, 5e-07, 5, "sppo"),
    WPO: ("wpo", 100.0, 1e-06, 3, "sigmoid"),
    DPO: ("dpo", 10.0, 1e-06, 3, "sigmoid"),
}
# lineages of SPPO eta=5000 at other seeds (training.seed), and one sampled otherwise
SEEDS = tuple(f"{SPPO_5000}-s{n}" for n in (1, 2, 3))
HOTTER = f"{SPPO_5000}-t0.9"
LINEAGES.update(dict.fromkeys((*SEEDS, HOTTER), LINEAGES[SPPO_5000]))


# --- the files the stages write ---


def config_text(root: Path, run_name: str, t: int, stage: str) -> str:
    method, eta, lr, k, loss = LINEAGES[run_name]
    run_dir = f"{root}/{MODEL}/{method}/{run_name}"
    cfg = {
        "iter": t,
        "stage": stage,
        "run_name": run_name,
        "run": {"dir": run_dir, "iter_dir": f"{run_dir}/iter{t}", "init_policy": "base"},
        "model": {"name": MODEL, "path": "/cache/tiny/tiny-mistral", "family": "mistral"},
        "method": {
            "name": method,
            "loss": loss,
            "K": k,
            "eta": eta,
            "beta": 1 / eta,
            "wpo_weight": method == "wpo",
            "tag": run_name.split("-")[0],
        },  # fmt: skip
        "training": {"optimizer": "rmsprop", "learning_rate": lr, "global_batch_size": 8},
        "logger": {"backend": "none", "project": "selfplay-lab", "entity": None},
        "paths": {"root": str(root)},
    }
    return f"# python -m src.main model={MODEL} iter={t} stage={stage}\n" + yaml.safe_dump(cfg)


def done_record(counts: dict, seconds: float) -> dict:
    return {
        "fingerprint": "ab" * 32,
        "counts": counts,
        "timings": {"seconds": seconds},
        "versions": {"torch": "2.13.0+cpu", "transformers": "5.23.0"},
        "finished_at": "2026-11-21T09:14:05+0000",
    }


def log_history(first_loss: float, steps: int, wpo: bool) -> list[dict]:
    """The Trainer's log_history: one entry per step, then its end-of-training summary."""
    history = []
    for step in range(1, steps + 1):
        entry = {"epoch": step / steps, "step": step, "loss": first_loss * (1 - 0.1 * step),
                 "learning_rate": 5e-07, "grad_norm": 1.5, "rewards/accuracies": step / 10,
                 "rewards/margins": 0.01 * step, "rewards/chosen": 0.0, "rewards/rejected": -0.01,
                 "logps/chosen": -440.0, "logps/rejected": -450.0,
                 "tokens_per_second": 150.0}  # fmt: skip
        if wpo:
            entry.update({"wpo/weight_mean": 0.97, "wpo/weight_min": 0.95, "wpo/weight_max": 0.99})
        history.append(entry)
    history.append({"epoch": 1.0, "step": steps, "train_loss": first_loss * 0.8,
                    "train_runtime": 25.7, "total_flos": 9.9e9})  # fmt: skip
    return history


def write_stage(iter_dir: Path, root: Path, run_name: str, t: int, stage: str, **files) -> None:
    stage_dir = iter_dir / stage
    stage_dir.mkdir(parents=True)
    (stage_dir / "config.yaml").write_text(config_text(root, run_name, t, stage))
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        (stage_dir / name.replace("_", ".")).write_text(text)


def write_iteration(root: Path, run_name: str, t: int, train_done: bool = True, eval_=None):
    """An iteration whose numbers all derive from (lineage, t), so tests can recompute them."""
    method = LINEAGES[run_name][0]
    iter_dir = root / MODEL / method / run_name / f"iter{t}"
    seed = list(LINEAGES).index(run_name) + t
    generate = {"generated": 39, "tokens": 9000 + 100 * seed, "seconds": 80.0 + seed,
                "prompts_in_split": 40, "duplicates_dropped": 0}  # fmt: skip
    rank = {"ranked": 39, "comparisons": 772, "all_tied": 0, "empty_responses_dropped": 1}
    pairs = {"pairs": 30 + seed, "prompts": 39, "ties_dropped": 0, "ties_kept": 0,
             "chosen_external": 0, "rejected_external": 0, "mean_chosen_probs": 0.5 + 0.01 * seed,
             "mean_chosen_win_rate": 0.52 + 0.01 * seed, "mean_rejected_win_rate": 0.46,
             "mean_score_margin": 0.3 + 0.02 * seed}  # fmt: skip
    write_stage(iter_dir, root, run_name, t, "generate", done_json=done_record(generate, 88.4))
    write_stage(iter_dir, root, run_name, t, "rank", done_json=done_record(rank, 18.3))
    write_stage(iter_dir, root, run_name, t, "pairs", done_json=done_record(pairs, 0.6))
    history = log_history(1000.0 * seed if method == "sppo" else 0.7, 5, wpo=method == "wpo")
    summary = {"train_loss": history[-1]["train_loss"], "pairs_trained": 30, "steps": 5}
    metrics = {"log_history": history, "summary": summary}
    if train_done:
        counts = {"pairs_in_file": 30, "pairs_trained": 30, "steps": 5}
        write_stage(iter_dir, root, run_name, t, "train", metrics_json=metrics,
                    done_json=done_record(counts, 26.6))  # fmt: skip
    else:  # crashed: a leftover metrics.json from an earlier attempt, no done.json
        write_stage(iter_dir, root, run_name, t, "train", metrics_json=metrics)
    if eval_ is not None:
        write_stage(iter_dir, root, run_name, t, "eval", eval_json=eval_,
                    done_json=done_record({"prompts": 805}, 300.0))  # fmt: skip
    return iter_dir, generate, pairs, history


def build_runs(root: Path) -> dict:
    """Two SPPO lineages (eta 1000 and 5000) x 2 iterations, the eta=1000 one's second training
    unfinished and the eta=5000 one's evaluated; one WPO iteration whose generate stage already
    writes its own metrics.json."""
    written = {
        (SPPO_1000, 1): write_iteration(root, SPPO_1000, 1),
        (SPPO_1000, 2): write_iteration(root, SPPO_1000, 2, train_done=False),
        (SPPO_5000, 1): write_iteration(root, SPPO_5000, 1),
        (SPPO_5000, 2): write_iteration(root, SPPO_5000, 2, eval_=EVAL),
        (WPO, 1): write_iteration(root, WPO, 1),
    }
    wpo_generate = written[(WPO, 1)][0] / "generate"
    (wpo_generate / "metrics.json").write_text(json.dumps({"tokens": 12000, "seconds": 40.0}))
    (root / "wandb").mkdir()  # other folders under the root are not runs
    (root / "multirun" / "20261121-091405" / "0").mkdir(parents=True)
    return written


def run_main(argv: list[str]) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main(argv)
    return out.getvalue(), err.getvalue()


def read_csv(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    with path.open(newline="") as f:
        return {(r["run_name"], int(r["iter"])): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison of the runs above (drawing plots takes a second; the tests share it)."""
    root = tmp_path_factory.mktemp("runs")
    written = build_runs(root)
    stdout, stderr = run_main(["--root", str(root)])
    rows = read_csv(root / "compare" / "compare.csv")
    return SimpleNamespace(root=root, written=written, stdout=stdout, stderr=stderr, rows=rows)


# --- what a comparison shows ---


def test_every_run_and_iteration_is_listed_with_its_hyper_parameters(compared):
    written, rows = compared.written, compared.rows
    assert sorted(rows) == sorted(written)
    for (run_name, t), row in rows.items():
        method, eta, lr, k, loss = LINEAGES[run_name]
        assert (row["model"], row["method"], row["iter"]) == (MODEL, method, str(t))
        assert (float(row["lr"]), int(row["K"])) == (lr, k)
        # the one its loss reads, the other blank
        if method == "sppo":
            assert (float(row["eta"]), row["beta"]) == (eta, "")
        else:
            assert (row["eta"], float(row["beta"])) == ("", pytest.approx(1 / eta))
        assert row["loss_type"] == loss
    assert compared.stderr == ""  # nothing malformed, nothing to warn about


def test_values_match_the_files(compared):
    written, rows = compared.written, compared.rows
    for key, (_, generate, pairs, history) in written.items():
        row = rows[key]
        for column in ("pairs", "mean_chosen_probs", "mean_chosen_win_rate", "mean_score_margin"):
            assert float(row[column]) == pytest.approx(pairs[column]), (key, column)
        if key != (WPO, 1):
            tokens_per_s = generate["tokens"] / generate["seconds"]
            assert float(row["gen_tokens_per_s"]) == pytest.approx(tokens_per_s)
        if key == (SPPO_1000, 2):
            continue  # unfinished training: checked below
        steps = history[:-1]
        accuracies = [e["rewards/accuracies"] for e in steps]
        margins = [e["rewards/margins"] for e in steps]
        evaluated = "+eval" if key == (SPPO_5000, 2) else ""
        assert row["stages_done"] == "generate+rank+pairs+train" + evaluated
        assert float(row["train_loss_final"]) == pytest.approx(steps[-1]["loss"])
        assert float(row["accuracy_last"]) == pytest.approx(accuracies[-1])
        assert float(row["accuracy_mean"]) == pytest.approx(sum(accuracies) / len(accuracies))
        assert float(row["margin_last"]) == pytest.approx(margins[-1])
        assert float(row["margin_mean"]) == pytest.approx(sum(margins) / len(margins))


def test_an_unfinished_stage_shows_as_not_done_and_its_leftovers_are_not_read(compared):
    row = compared.rows[(SPPO_1000, 2)]
    assert row["stages_done"] == "generate+rank+pairs"
    for column in ("train_loss_final", "accuracy_last", "margin_mean"):
        assert row[column] == ""


def test_a_stage_metrics_json_wins_over_its_done_json_counts(compared):
    assert float(compared.rows[(WPO, 1)]["gen_tokens_per_s"]) == pytest.approx(12000 / 40.0)


def test_eval_win_rates_are_shown_where_present(compared):
    for key, row in compared.rows.items():
        evaluated = key == (SPPO_5000, 2)
        for name in ("win_rate", "lc_win_rate"):
            value = EVAL[name] if evaluated else None
            assert (float(row[f"eval_{name}"]) if row[f"eval_{name}"] else None) == value
        for column, name in (("alpaca_eval_lc", "lc_win_rate"), ("alpaca_eval_wr", "win_rate")):
            value = EVAL["alpaca_eval"][name] if evaluated else None
            assert (float(row[column]) if row[column] else None) == value


def test_the_win_rate_curve_is_printed_with_its_intervals(compared):
    curve = compared.stdout.split("eval win rate by iteration")[1].splitlines()
    lineage = f"{MODEL}/sppo/{SPPO_5000}"
    assert [line.strip() for line in curve[1:] if line.strip().startswith(MODEL)] == [
        f"{lineage}: iter2 0.310 [0.220, 0.400] LC 0.270"
    ]


def test_eval_columns_are_left_out_when_no_run_was_evaluated(tmp_path):
    write_iteration(tmp_path, WPO, 1)
    run_main(["--root", str(tmp_path)])
    header = (tmp_path / "compare" / "compare.md").read_text().splitlines()[0]
    assert "mean_chosen_win_rate" in header and "eval_win_rate" not in header
    assert "alpaca_eval_lc" not in header and "[vs-" not in header


def test_markdown_table_is_written_and_printed_with_the_output_paths(compared):
    root, written, stdout = compared.root, compared.written, compared.stdout
    table = (root / "compare" / "compare.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| model | method | run_name | iter | eta |")
    assert len(lines) == 2 + len(written)
    assert f"| {MODEL} | sppo | {SPPO_5000} | 2 | 5000 |" in table
    assert table in stdout
    for name in ("compare.md", "compare.csv", *PLOTS):
        assert f"wrote {root / 'compare' / name}" in stdout


def test_the_three_plots_are_valid_pngs(compared):
    out = compared.root / "compare"
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 1024, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_metric_picks_the_training_curve_and_an_unknown_one_is_refused(tmp_path, capsys):
    write_iteration(tmp_path, WPO, 1)
    run_main(["--root", str(tmp_path), "--metric", "wpo/weight_mean"])
    assert (tmp_path / "compare" / "training_curves.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(tmp_path), "--out", str(tmp_path / "other"), "--metric", "los"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --metric los: no training log has it; logged keys:")
    assert "rewards/margins" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "other").exists()  # refused before writing anything


def test_root_and_out_default_to_selfplay_runs(tmp_path, monkeypatch):
    write_iteration(tmp_path, SPPO_1000, 1)
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path))
    run_main([])
    assert read_csv(tmp_path / "compare" / "compare.csv").keys() == {(SPPO_1000, 1)}


# --- refusals ---


def test_no_runs_names_the_root(tmp_path, capsys):
    (tmp_path / "wandb").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(tmp_path)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        f"error: no runs found under {tmp_path}: expected <model>/<method>/<run_name>/iter<t>/"
        "<stage>/ directories there (set --root or $SELFPLAY_RUNS)\n"
    )
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path / "missing")])
    assert f"{tmp_path / 'missing'} is not a directory" in capsys.readouterr().err


def test_no_runs_from_the_command_line_is_one_line_and_exit_1(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "src.compare", "--root", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: no runs found under {tmp_path}")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("stage", "name", "text", "problem"),
    [
        ("train", "metrics.json", '{"log_history": [', "malformed JSON"),
        ("train", "done.json", "[1, 2]", "a JSON list, expected an object"),
        ("pairs", "done.json", "", "malformed JSON"),
        ("train", "config.yaml", "method: [unclosed\n", "malformed YAML"),
    ],
)
def test_a_malformed_file_is_named_and_skipped(tmp_path, stage, name, text, problem):
    iter_dir = write_iteration(tmp_path, SPPO_1000, 1)[0]
    write_iteration(tmp_path, SPPO_5000, 1)
    bad = iter_dir / stage / name
    bad.write_text(text)
    _, stderr = run_main(["--root", str(tmp_path)])
    assert stderr.startswith(f"warning: {bad}: {problem}")
    assert stderr.rstrip().endswith("; skipped") and len(stderr.splitlines()) == 1
    rows = read_csv(tmp_path / "compare" / "compare.csv")
    assert float(rows[(SPPO_5000, 1)]["train_loss_final"]) > 0  # the other run is whole
    row = rows[(SPPO_1000, 1)]
    if name == "done.json":  # the stage no longer counts as finished
        assert stage not in row["stages_done"].split("+")
    if stage == "train" and name != "config.yaml":
        assert row["train_loss_final"] == ""
    if name == "config.yaml":  # the hyper-parameters come from the next stage's copy
        assert float(row["eta"]) == 1000.0


def test_a_value_of_the_wrong_type_is_blanked_with_one_warning_naming_file_key_and_value(
    tmp_path,
):
    evaluated = {**EVAL, "win_rate": "0.31", "lc_win_rate_high": True,
                 "alpaca_eval": {**EVAL["alpaca_eval"], "lc_win_rate": [0.54]}}  # fmt: skip
    iter_dir, _, pairs, history = write_iteration(tmp_path, SPPO_5000, 2, eval_=evaluated)
    pairs_done = iter_dir / "pairs" / "done.json"
    pairs_done.write_text(json.dumps(done_record({**pairs, "mean_score_margin": "n/a"}, 0.6)))
    train_metrics = iter_dir / "train" / "metrics.json"
    metrics = json.loads(train_metrics.read_text())
    metrics["log_history"][2]["loss"] = "nan"
    train_metrics.write_text(json.dumps(metrics))
    other = write_iteration(tmp_path, SPPO_1000, 1, eval_={**EVAL, "alpaca_eval": "skipped"})[0]
    result = subprocess.run(
        [sys.executable, "-m", "src.compare", "--root", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "compare" / "compare.md").read_text() in result.stdout
    evaluation = iter_dir / "eval" / "eval.json"
    assert sorted(result.stderr.splitlines()) == sorted(
        f"warning: {where}: {key} is {value}, not {expected}; left blank"
        for where, key, value, expected in [
            (evaluation, "win_rate", "'0.31'", "a finite number"),
            (evaluation, "lc_win_rate_high", "True", "a finite number"),
            (evaluation, "alpaca_eval.lc_win_rate", "[0.54]", "a finite number"),
            (pairs_done, "counts.mean_score_margin", "'n/a'", "a finite number"),
            (train_metrics, "log_history[2].loss", "'nan'", "a finite number"),
            (other / "eval" / "eval.json", "alpaca_eval", "'skipped'", "an object"),
        ]
    )
    row = read_csv(tmp_path / "compare" / "compare.csv")[(SPPO_5000, 2)]
    blank = ("eval_win_rate", "alpaca_eval_lc", "mean_score_margin")
    assert [row.get(c, "") for c in blank] == ["", "", ""]  # a column all blank is left out
    assert float(row["eval_lc_win_rate"]) == EVAL["lc_win_rate"]  # the rest is read as before
    assert float(row["alpaca_eval_wr"]) == EVAL["alpaca_eval"]["win_rate"]
    assert float(row["pairs"]) == pairs["pairs"]
    assert float(row["train_loss_final"]) == pytest.approx(history[-2]["loss"])


# --- W&B ---


def test_wandb_without_a_reachable_server_fails_fast_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(tmp_path), "--wandb", "my-team/selfplay-lab"])
    assert exit_.value.code == 3  # the environment
    err = capsys.readouterr().err
    assert err.startswith("error: --wandb: cannot reach the W&B server at http://127.0.0.1:9 (")
    assert err.rstrip().endswith("compare the local run directories with --root instead")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "compare").exists()


def test_wandb_at_a_server_that_answers_a_web_page_names_the_url_not_the_page(
    tmp_path, monkeypatch, capsys
):
    """A proxy's or a login page (HTTP 404 with HTML, as a misconfigured WANDB_BASE_URL gets):
    one line naming the URL; the page itself is not printed."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def answer(self):
            body = b"<!DOCTYPE html><html><body>" + b"x" * 2000 + b"</body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["--root", str(tmp_path), "--wandb", "my-team/selfplay-lab"])
    finally:
        server.shutdown()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "<" not in err and "xxx" not in err, err
    assert err.rstrip().endswith(f"a web page came back, not W&B's API (WANDB_BASE_URL={url})")


def test_wandb_path_must_be_entity_slash_project(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--wandb", "selfplay-lab"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: --wandb 'selfplay-lab': expected ENTITY/PROJECT\n"


def test_a_judged_benchmark_gets_a_column_per_judge(tmp_path):
    """MT-Bench by GPT-4 and by a local judge are two figures, never one column."""
    for run_name, judge, score in ((SPPO_1000, "gpt-4", 7.21), (SPPO_5000, "judge@local", 6.5)):
        mt_bench = {"judge": judge, "mt_bench": score, "turn_1": score, "turn_2": score}
        arena = {"judge": judge, "win_rate": 0.25, "lower": 0.2, "upper": 0.3}
        write_iteration(
            tmp_path, run_name, 1, eval_={**EVAL, "mt_bench": mt_bench, "arena_hard": arena}
        )
    run_main(["--root", str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "compare" / "compare.csv").open()))
    by_run = {r["run_name"]: r for r in rows}
    assert float(by_run[SPPO_1000]["mt_bench[gpt-4]"]) == 7.21
    assert by_run[SPPO_1000]["mt_bench[judge@local]"] == ""
    assert float(by_run[SPPO_5000]["mt_bench[judge@local]"]) == 6.5
    assert float(by_run[SPPO_5000]["arena_hard[judge@local]"]) == 0.25
    header = (tmp_path / "compare" / "compare.md").read_text().splitlines()[0]
    assert "mt_bench[gpt-4]" in header and "arena_hard[gpt-4]" in header


def test_the_audit_names_the_machine_each_lineage_trained_on(tmp_path, capsys):
    """A record names the machine that made it; the audit (the demo's last table) says where each
    lineage trained, since another CPU or thread count moves a curve's digits."""
    import torch

    from src.core.machine import machine
    from src.core.records import Finished, read_record, write_record
    from src.tiny.audit import main as audit

    train = tmp_path / "tiny-mistral" / "sppo" / "r" / "iter1" / "train"
    train.mkdir(parents=True)
    write_record(train, Finished("0" * 64, {}, {}))
    here = machine()
    assert read_record(train)["machine"] == here and here["cpu"]
    audit(["--root", str(tmp_path)])
    sets = ", ".join(here["vector_sets"]) or "no vector sets"
    assert here["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert capsys.readouterr().out.splitlines()[0] == (
        f"tiny-mistral/sppo/r (trained on {here['cpu']}: {sets}; {here['cpu_kernels']} kernels; "
        f"{here['torch_threads']} torch threads)"
    )


def test_the_audit_and_compare_read_the_runs_where_selfplay_runs_points(
    tmp_path, monkeypatch, capsys
):
    """Without --root, both read $SELFPLAY_RUNS, as paths.root does (the audit read ./runs)."""
    from src.tiny.audit import main as audit

    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(SystemExit) as stopped:
        audit([])
    assert stopped.value.code == 1
    assert capsys.readouterr().err == f"no runs of the tiny models under {tmp_path / 'elsewhere'}\n"


# --- iterations with no finished stage ---


def refused(root: Path, run_name: str, t: int, stage: str = "generate") -> Path:
    """What a refused or interrupted command leaves: the stage's folder and its config, no
    done.json."""
    method = LINEAGES[run_name][0]
    iter_dir = root / MODEL / method / run_name / f"iter{t}"
    write_stage(iter_dir, root, run_name, t, stage)
    return iter_dir


def drawn_lineages(monkeypatch) -> list:
    """The (lineage, iteration) pairs the plots are drawn from, once main has run."""
    from src.compare import plots

    seen, draw_all = [], plots.draw_all

    def recording(iterations, *args):
        seen.extend((it.lineage, it.row["iter"]) for it in iterations)
        return draw_all(iterations, *args)

    monkeypatch.setattr(plots, "draw_all", recording)
    return seen


def test_an_iteration_with_no_finished_stage_is_left_out_with_one_line(tmp_path, monkeypatch):
    write_iteration(tmp_path, SPPO_1000, 1)
    refused(tmp_path, SPPO_1000, 2)  # the next iteration, interrupted in its first stage
    refused(tmp_path, SPPO_5000, 1, "train")  # a lineage whose first command was refused
    drawn = drawn_lineages(monkeypatch)
    stdout, stderr = run_main(["--root", str(tmp_path)])

    assert stderr == (
        f"left out 2 iterations with no finished stage: {MODEL}/sppo/{SPPO_1000} iter2, "
        f"{MODEL}/sppo/{SPPO_5000} iter1\n"
    )
    assert read_csv(tmp_path / "compare" / "compare.csv").keys() == {(SPPO_1000, 1)}
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert len(table.splitlines()) == 3 and "| none |" not in table and SPPO_5000 not in stdout
    assert drawn == [(f"{MODEL}/sppo/{SPPO_1000}", 1)]


def test_nothing_finished_is_no_runs_found_naming_what_is_there(tmp_path):
    refused(tmp_path, SPPO_5000, 1)
    result = subprocess.run(
        [sys.executable, "-m", "src.compare", "--root", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        f"error: no runs found under {tmp_path}: 1 iteration, none with a finished stage yet "
        f"({MODEL}/sppo/{SPPO_5000} iter1)\n"
    )
    assert not (tmp_path / "compare").exists()


# --- --only and --where ---


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The runs of build_runs, plus a refused lineage, compared by each test into its own --out."""
    root = tmp_path_factory.mktemp("built")
    build_runs(root)
    refused(root, WPO, 2)
    return root


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--only", f"{MODEL}/sppo/*"],
         {(SPPO_1000, 1), (SPPO_1000, 2), (SPPO_5000, 1), (SPPO_5000, 2)}),
        (["--only", "*/wpo/*", "--only", f"*/{SPPO_5000}"],  # either
         {(WPO, 1), (SPPO_5000, 1), (SPPO_5000, 2)}),
        (["--where", "eta=5000"], {(SPPO_5000, 1), (SPPO_5000, 2)}),  # 5000.0 in the config
        (["--where", "eta=5e3"], {(SPPO_5000, 1), (SPPO_5000, 2)}),
        (["--where", "lr=1e-06"], {(WPO, 1)}),
        (["--where", "beta=0.01"], {(WPO, 1)}),
        (["--where", "method=sppo", "--where", "iter=2"], {(SPPO_1000, 2), (SPPO_5000, 2)}),
        (["--only", "*/sppo/*", "--where", "K=5", "--where", "stages_done=generate+rank+pairs"],
         {(SPPO_1000, 2)}),
    ],
)  # fmt: skip
def test_only_and_where_pick_the_rows(built, tmp_path, monkeypatch, filters, expected):
    drawn = drawn_lineages(monkeypatch)
    _, stderr = run_main(["--root", str(built), "--out", str(tmp_path), *filters])
    assert read_csv(tmp_path / "compare.csv").keys() == expected
    assert sorted(drawn) == sorted(
        (f"{MODEL}/{LINEAGES[run_name][0]}/{run_name}", t) for run_name, t in expected
    )
    # the refused WPO iteration is named only where the filters would have kept it
    wpo_kept = any(run_name == WPO for run_name, _ in expected)
    assert stderr == (
        f"left out 1 iteration with no finished stage: {MODEL}/wpo/{WPO} iter2\n"
        if wpo_kept
        else ""
    )


@pytest.mark.parametrize(
    ("filters", "said"),
    [
        (["--only", f"{MODEL}/dpo/*"],
         f"--only '{MODEL}/dpo/*' matches no lineage with a finished stage; lineages: "
         f"{MODEL}/sppo/{SPPO_1000}, {MODEL}/sppo/{SPPO_5000}, {MODEL}/wpo/{WPO}"),
        (["--only", "*/wpo/*", "--only", "*/sppo/eta10-*"],  # one of two, mistyped
         "--only '*/sppo/eta10-*' matches no lineage with a finished stage; lineages: "),
        # WPO's eta (1/beta) is not its hyper-parameter: blank in its rows
        (["--where", "eta=100"], "--where eta=100 matches no run; eta there: 1000, 5000, (blank)"),
        (["--where", "method=dpo"], "--where method=dpo matches no run; method there: sppo, wpo"),
        (["--where", "method=sppo", "--where", "lr=1e-06"],
         "--where lr=1e-06 matches no run of those the filters before it select; lr there: 5e-07"),
        (["--where", "temperature=0.7"], "--where temperature=0.7: no column 'temperature'; "
                                         "columns: K, accuracy_last, accuracy_mean, alpaca_eval_lc, "),
    ],
)  # fmt: skip
def test_a_filter_that_matches_nothing_is_one_line_naming_it_and_what_there_is(
    built, tmp_path, capsys, filters, said
):
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(built), "--out", str(tmp_path / "out"), *filters])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["eta", "=10", ""])
def test_where_without_key_equals_value_is_a_bad_option(built, capsys, where):
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(built), "--where", where])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "config error: python -m src.compare: argument --where: expected KEY=VALUE (a column "
        f"and its value), not {where!r}; see `python -m src.compare --help`\n"
    )


def test_eta_is_sppos_and_beta_dpos_and_wpos(tmp_path):
    """A config holds both (beta = 1/eta), but DPO at beta 0.1 is no run at eta 10."""
    from src.compare.runs import CompareError, choose, discover

    for run_name in (SPPO_1000, DPO, WPO):
        write_iteration(tmp_path, run_name, 1)
    found = discover(tmp_path)

    def picked(key: str, value: str) -> set[str]:
        return {it.row["run_name"] for it in choose(found, "here", where=[(key, value)])}

    assert picked("eta", "1000") == {SPPO_1000}
    assert picked("beta", "0.1") == {DPO}
    assert picked("beta", "0.01") == {WPO}
    with pytest.raises(CompareError, match=r"eta=10 matches no run; eta there: 1000, \(blank\)"):
        picked("eta", "10")
    with pytest.raises(CompareError, match=r"beta there: 0\.01, 0\.1, \(blank\)$"):
        picked("beta", "0.001")  # SPPO's beta at eta 1000


# --- final_vs_hparams.png: the sweep's metric, not the training loss ---


def evaluated(win_rate: float) -> dict:
    return {**EVAL, "win_rate": win_rate, "win_rate_low": win_rate - 0.1,
            "win_rate_high": win_rate + 0.05}  # fmt: skip


def plotted(fig) -> dict[str, dict]:
    """Each panel of a figure by its x label: its y label and the points of its error bars."""
    panels = {}
    for ax in fig.axes:
        points = sorted(tuple(p) for bars in ax.containers for p in bars.lines[0].get_xydata())
        panels[ax.get_xlabel()] = {"ylabel": ax.get_ylabel(), "points": points,
                                   "has_yerr": all(bars.has_yerr for bars in ax.containers)}  # fmt: skip
    return panels


def test_the_hparam_plot_shows_each_lineages_last_evaluated_win_rate(tmp_path):
    from src.compare.plots import final_vs_hparams
    from src.compare.runs import discover

    write_iteration(tmp_path, SPPO_1000, 1, eval_=evaluated(0.2))
    write_iteration(tmp_path, SPPO_1000, 2, eval_=evaluated(0.6))  # its last evaluated
    write_iteration(tmp_path, SPPO_5000, 1, eval_=evaluated(0.45))  # its last evaluated
    write_iteration(tmp_path, SPPO_5000, 2)  # trained, not evaluated
    fig = final_vs_hparams(discover(tmp_path), "eval_win_rate")

    # eta is the one hyper-parameter that varies (lr and K are the same in both lineages)
    assert plotted(fig) == {
        "eta": {"ylabel": "eval_win_rate", "points": [(1000.0, 0.6), (5000.0, 0.45)],
                "has_yerr": True},
    }  # fmt: skip
    title = fig._suptitle
    assert " ".join(title.get_text().split()).startswith(
        "eval_win_rate at each lineage's last iteration"
    )
    fig.canvas.draw()  # wrapped to the one panel's width: not cut at either end
    inside = fig.bbox.extents
    left, bottom, right, top = title.get_window_extent().extents
    assert inside[0] <= left and right <= inside[2] and top <= inside[3], (left, right, inside)


def test_a_panel_spanning_orders_of_magnitude_gets_a_log_axis():
    """SPPO's loss at eta = 1000 beside eta = 1 on a linear axis flattens the smaller to 0."""
    import matplotlib.pyplot as plt

    from src.compare.plots import spread_axis

    for values, scale in (([0.5, 2000.0], "log"), ([1.0, 50.0], "linear"), ([0.0, 1e6], "linear")):
        fig, ax = plt.subplots()
        spread_axis(ax, values)
        assert ax.get_yscale() == scale, values
        plt.close(fig)


def test_the_hparam_plot_falls_back_to_the_final_loss_only_where_nothing_was_evaluated(tmp_path):
    from src.compare.plots import final_vs_hparams
    from src.compare.runs import discover

    runs = (SPPO_1000, WPO)
    final = {run_name: write_iteration(tmp_path, run_name, 1)[3][-2]["loss"] for run_name in runs}
    panels = plotted(final_vs_hparams(discover(tmp_path), "eval_win_rate"))

    def at(run_name: str, x_key: str) -> float:
        _, eta, lr, k, _ = LINEAGES[run_name]
        return {"eta": eta, "beta": 1 / eta, "lr": lr, "K": k}[x_key]

    # each method's own eta or beta, then lr and K, which vary
    on = {"eta": [SPPO_1000], "beta": [WPO], "lr": runs, "K": runs}
    assert list(panels) == list(on)
    for x_key, drawn in on.items():
        assert panels[x_key]["ylabel"] == "final train loss (no run has eval_win_rate)"
        expected = sorted((at(run_name, x_key), final[run_name]) for run_name in drawn)
        got = panels[x_key]["points"]
        assert [v for p in got for v in p] == pytest.approx([v for p in expected for v in p])


def test_each_method_is_drawn_against_its_own_hyper_parameter(tmp_path):
    """SPPO's lineages against eta, DPO's and WPO's against beta: DPO at beta 0.1 is not drawn
    at eta 10 among SPPO's points, nor WPO at beta 0.01 at eta 100."""
    from src.compare.plots import final_vs_hparams
    from src.compare.runs import discover

    rates = {SPPO_1000: 0.6, SPPO_5000: 0.45, WPO: 0.7, DPO: 0.55}
    for run_name, rate in rates.items():
        write_iteration(tmp_path, run_name, 1, eval_=evaluated(rate))
    panels = plotted(final_vs_hparams(discover(tmp_path), "eval_win_rate"))

    assert list(panels) == ["eta", "beta", "lr", "K"]  # lr and K vary between the methods
    assert panels["eta"]["points"] == [(1000.0, 0.6), (5000.0, 0.45)]
    assert panels["beta"]["points"] == [(0.01, 0.7), (0.1, 0.55)]
    for shared in ("lr", "K"):  # every method's lineages
        assert sorted(y for _, y in panels[shared]["points"]) == sorted(rates.values())


def test_hparam_metric_picks_the_column_and_an_unknown_one_is_refused(
    tmp_path, monkeypatch, capsys
):
    from src.compare import plots

    write_iteration(tmp_path, SPPO_1000, 1)
    write_iteration(tmp_path, SPPO_5000, 1)
    figures, draw = [], plots.final_vs_hparams

    def recording(*args):
        figures.append(draw(*args))
        return figures[-1]

    monkeypatch.setattr(plots, "final_vs_hparams", recording)
    run_main(["--root", str(tmp_path), "--hparam-metric", "mean_chosen_win_rate"])
    (panel,) = plotted(figures[0]).values()
    assert panel["ylabel"] == "mean_chosen_win_rate"
    rows = read_csv(tmp_path / "compare" / "compare.csv")
    assert sorted(y for _, y in panel["points"]) == sorted(
        float(rows[key]["mean_chosen_win_rate"]) for key in ((SPPO_1000, 1), (SPPO_5000, 1))
    )
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(tmp_path), "--out", str(tmp_path / "o"), "--hparam-metric", "wr"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --hparam-metric wr: not a column; columns: model, method,")
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


# --- the plots' colours, styles and legends ---


def in_memory(sppo: int, iterations: int) -> list:
    """`sppo` SPPO lineages (eta 1, 2, ...), a DPO and a WPO one, `iterations` iterations each, as
    src.compare.runs gives them, with every figure the plots draw: lineage i's training loss is
    100 i + t at iteration t and its eval win rate 0.5 + 0.01 i + 0.1 t, so that a line or a
    point says whose it is."""
    from src.stages.report.results import Iteration

    lineages = [("sppo", f"eta{i}-lr5e-07-K5", {"eta": float(i), "beta": None, "loss_type": "sppo"})
                for i in range(1, sppo + 1)]  # fmt: skip
    lineages += [("dpo", DPO, {"eta": None, "beta": 0.1, "loss_type": "sigmoid"}),
                 ("wpo", WPO, {"eta": None, "beta": 0.01, "loss_type": "sigmoid"})]  # fmt: skip
    found = []
    for i, (method, run_name, hparams) in enumerate(lineages):
        for t in range(1, iterations + 1):
            rate = 0.5 + 0.01 * i + 0.1 * t
            row = {"model": MODEL, "method": method, "run_name": run_name, "iter": t, **hparams,
                   "lr": 5e-07, "K": 5, "eval_win_rate": rate,
                   "eval_win_rate_ci": (rate - 0.1, rate + 0.05), "eval_lc_win_rate": rate - 0.05,
                   "mean_chosen_win_rate": 0.7 - 0.02 * t}  # fmt: skip
            found.append(Iteration(row, [{"step": s, "loss": 100.0 * i + t} for s in (1, 2, 3)]))
    return found


def legend_colours(fig, lineages: set[str]) -> dict[str, str]:
    """Each of `lineages` the figure's one legend names, with its colour there."""
    from matplotlib.colors import to_hex

    (legend,) = fig.legends
    entries = zip(legend.get_texts(), legend.legend_handles, strict=True)
    return {t.get_text(): to_hex(h.get_color()) for t, h in entries if t.get_text() in lineages}


def test_a_lineage_has_a_colour_of_its_own_and_an_iteration_a_style_in_every_plot():
    """14 lineages, more than tab10's 10 colours; two iterations each."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from src.compare import plots

    iterations = in_memory(sppo=12, iterations=2)
    lineages = {it.lineage for it in iterations}
    whose = {it.history[0]["loss"]: (it.lineage, it.row["iter"]) for it in iterations}
    curves = plots.training_curves(iterations, "loss")
    colour = legend_colours(curves, lineages)
    assert colour.keys() == lineages and len(set(colour.values())) == len(lineages)
    colours, styles = defaultdict(set), defaultdict(set)
    for line in (line for ax in curves.axes for line in ax.lines):
        lineage, t = whose[line.get_ydata()[0]]
        colours[lineage].add(to_hex(line.get_color()))
        styles[t].add((line.get_linestyle(), line.get_marker()))
    assert colours == {lineage: {colour[lineage]} for lineage in lineages}
    assert len(styles[1]) == len(styles[2]) == 1 and styles[1] != styles[2]
    marker = {t: next(iter(style))[1] for t, style in styles.items()}

    # the same colours and iteration markers in the other two plots
    win = plots.win_rate_by_iteration(iterations)
    assert legend_colours(win, lineages) == colour
    caps = {cap for ax in win.axes for bars in ax.containers for cap in bars.lines[1]}
    markers = defaultdict(set)  # by iteration: the points (the lines through them have none)
    for ax in win.axes:
        for line in ax.lines:
            if line.get_linestyle() == "None" and line not in caps:
                markers[round(line.get_xdata()[0])].add(line.get_marker())
    assert markers == {t: {marker[t]} for t in (1, 2)}
    final = plots.final_vs_hparams(iterations)
    assert legend_colours(final, lineages) == colour
    last = {it.row["eval_win_rate"]: it.lineage for it in iterations if it.row["iter"] == 2}
    points = [bars.lines[0] for ax in final.axes for bars in ax.containers]
    assert len(points) == len(lineages)  # each on its own method's panel alone
    for point in points:
        assert to_hex(point.get_color()) == colour[last[point.get_ydata()[0]]]
        assert point.get_marker() == marker[2]
    plt.close("all")


@pytest.mark.parametrize("plot", ["training_curves", "win_rate_by_iteration", "final_vs_hparams"])
def test_each_legend_lies_off_the_panels_and_inside_the_picture(plot):
    """Six lineages of three iterations (the win rates' legend once had 12 entries over the
    points of iteration 2), then fourteen: a longer legend makes the picture taller, and leaves
    the panels as they were."""
    import matplotlib.pyplot as plt

    from src.compare import plots

    heights = []
    for sppo in (4, 12):
        args = ("loss",) if plot == "training_curves" else ()  # the metric it draws
        fig = getattr(plots, plot)(in_memory(sppo=sppo, iterations=3), *args)
        fig.canvas.draw()
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        assert legends
        picture = fig.bbox
        for legend in legends:
            box = legend.get_window_extent()
            assert picture.x0 <= box.x0 and box.x1 <= picture.x1, (box, picture)  # not cut
            assert picture.y0 <= box.y0 and box.y1 <= picture.y1, (box, picture)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent()), (box, ax.get_window_extent())
        heights.append([ax.get_window_extent().height for ax in fig.axes])
        plt.close(fig)
    # within 2 %: the title's margin is a fraction of the picture's height (without the
    # picture growing, the legend of fourteen takes 12 % off the panels)
    assert heights[1] == pytest.approx(heights[0], rel=0.02)


# --- evals against other references: iter<t>/eval/vs-<name>/ ---


def side_eval(iter_dir: Path, root: Path, run_name: str, name: str, evaluation, done=True):
    """An eval against another reference, beside the one against the base model."""
    folder = iter_dir / "eval" / name
    folder.mkdir(parents=True)
    t = int(iter_dir.name.removeprefix("iter"))
    (folder / "config.yaml").write_text(config_text(root, run_name, t, "eval"))
    for file in ("eval.json", "metrics.json"):
        (folder / file).write_text(json.dumps(evaluation))
    if done:
        (folder / "done.json").write_text(json.dumps(done_record({"prompts": 805}, 120.0)))


GPT4 = "vs-alpaca_eval_gpt4_baseline.json"  # eval.reference_outputs=alpaca_eval_gpt4_baseline.json


def test_evals_against_other_references_get_columns_and_curves_of_their_own(tmp_path):
    first = write_iteration(tmp_path, SPPO_5000, 1)[0]  # no eval against the base model
    second = write_iteration(tmp_path, SPPO_5000, 2, eval_=EVAL)[0]
    side_eval(first, tmp_path, SPPO_5000, GPT4, evaluated(0.12))
    side_eval(second, tmp_path, SPPO_5000, GPT4, evaluated(0.2))
    side_eval(second, tmp_path, SPPO_5000, "vs-iter1", evaluated(0.55))
    side_eval(second, tmp_path, SPPO_5000, "vs-zephyr", evaluated(0.9), done=False)  # unfinished
    write_iteration(tmp_path, WPO, 1)
    stdout, stderr = run_main(["--root", str(tmp_path)])

    header = (tmp_path / "compare" / "compare.csv").read_text().splitlines()[0].split(",")
    side = [c for c in header if "[vs-" in c]
    assert side == [f"eval_win_rate[{GPT4}]", f"eval_lc_win_rate[{GPT4}]",
                    "eval_win_rate[vs-iter1]", "eval_lc_win_rate[vs-iter1]"]  # fmt: skip
    rows = read_csv(tmp_path / "compare" / "compare.csv")
    assert [rows[(SPPO_5000, t)][f"eval_win_rate[{GPT4}]"] for t in (1, 2)] == ["0.12", "0.2"]
    assert float(rows[(SPPO_5000, 2)]["eval_lc_win_rate[vs-iter1]"]) == EVAL["lc_win_rate"]
    assert rows[(SPPO_5000, 1)]["eval_win_rate[vs-iter1]"] == rows[(WPO, 1)][side[0]] == ""
    assert rows[(SPPO_5000, 1)]["stages_done"] == "generate+rank+pairs+train"
    assert float(rows[(SPPO_5000, 2)]["eval_win_rate"]) == EVAL["win_rate"]  # the base one's
    lineage = f"{MODEL}/sppo/{SPPO_5000}"
    curve = stdout.split("eval win rate by iteration")[1].splitlines()
    assert [line.strip() for line in curve[1:] if line.strip().startswith(MODEL)] == [
        f"{lineage}: iter2 0.310 [0.220, 0.400] LC 0.270",
        f"{lineage} vs alpaca_eval_gpt4_baseline.json: iter1 0.120 [0.020, 0.170] LC 0.270 | "
        "iter2 0.200 [0.100, 0.250] LC 0.270",
        f"{lineage} vs iter1: iter2 0.550 [0.450, 0.600] LC 0.270",
    ]
    assert stderr == ""


def judged(win_rate: float, judge: str, mt_bench: float, arena_hard: float) -> dict:
    """An eval.json whose MT-Bench and Arena-Hard `judge` graded."""
    return {**evaluated(win_rate),
            "mt_bench": {"judge": judge, "mt_bench": mt_bench, "turn_1": 1.0, "turn_2": 1.0},
            "arena_hard": {"judge": judge, "win_rate": arena_hard, "lower": 0.0, "upper": 1.0}}  # fmt: skip


def test_a_second_judges_figures_sit_beside_the_firsts(tmp_path):
    """eval.judged_by: the checkpoint judged again by other judges, in eval/vs-base@<name>/: its
    win rate has columns of its own, its MT-Bench and Arena-Hard figures columns by its judge
    beside the first judge's, which stand as they were (an eval by the same judge beside them
    adds no figure of that judge's)."""
    iter_dir = write_iteration(tmp_path, SPPO_5000, 1, eval_=judged(0.31, "gpt-4", 7.25, 0.5))[0]
    side_eval(iter_dir, tmp_path, SPPO_5000, "vs-base@gpt-4o", judged(0.4, "gpt-4o", 8.5, 0.75))
    side_eval(iter_dir, tmp_path, SPPO_5000, "vs-iter1", judged(0.5, "gpt-4", 9.0, 0.9))
    stdout, stderr = run_main(["--root", str(tmp_path)])

    row = read_csv(tmp_path / "compare" / "compare.csv")[(SPPO_5000, 1)]
    assert (row["mt_bench[gpt-4]"], row["mt_bench[gpt-4o]"]) == ("7.25", "8.5")
    assert (row["arena_hard[gpt-4]"], row["arena_hard[gpt-4o]"]) == ("0.5", "0.75")
    assert (row["eval_win_rate"], row["eval_win_rate[vs-base@gpt-4o]"]) == ("0.31", "0.4")
    lineage = f"{MODEL}/sppo/{SPPO_5000}"
    assert f"{lineage} vs base@gpt-4o: iter1 0.400 [0.300, 0.450] LC 0.270" in stdout
    header = (tmp_path / "compare" / "compare.md").read_text().splitlines()[0]
    assert "| mt_bench[gpt-4] |" in header and "| mt_bench[gpt-4o] |" in header
    assert stderr == ""


# --- lineages pooled by seed (--by seed) ---


def set_saved(iter_dir: Path, key: str, value) -> None:
    """`key` (dotted) set to `value` in the config.yaml each stage of `iter_dir` saved."""
    for saved in iter_dir.glob("*/config.yaml"):
        head, body = saved.read_text().split("\n", 1)
        cfg = yaml.safe_load(body)
        *sections, last = key.split(".")
        node = cfg
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
        saved.write_text(f"{head}\n{yaml.safe_dump(cfg)}")


def test_by_seed_pools_the_lineages_that_differ_by_their_seeds_alone(tmp_path):
    """Three lineages at training.seed 1, 2, 3, otherwise alike, and one sampled at another
    temperature: --by seed makes the three one, named in brace form, each figure their mean with
    their min-max (the table, the CSV, the printed curve, the plots' error bars and training
    band); the fourth is never pooled and keeps its bootstrap interval."""
    from src.compare.plots import training_curves, win_rate_by_iteration
    from src.compare.pool import by_seed
    from src.compare.runs import discover

    for n, run_name in enumerate(SEEDS, start=1):
        for t in (1, 2):
            win_rate = round(0.2 * t + 0.1 * n, 10)
            iter_dir = write_iteration(tmp_path, run_name, t, eval_=evaluated(win_rate))[0]
            set_saved(iter_dir, "training.seed", n)
    hotter = write_iteration(tmp_path, HOTTER, 1, eval_=evaluated(0.9))[0]
    set_saved(hotter, "generation.temperature", 0.9)
    alone = {(r, t): row for (r, t), row in compare_rows(tmp_path, []).items()}
    stdout, _ = run_main(["--root", str(tmp_path), "--by", "seed"])

    pool = f"{SPPO_5000}-s{{1,2,3}}"
    rows = read_csv(tmp_path / "compare" / "compare.csv")
    assert sorted(rows) == [(pool, 1), (pool, 2), (HOTTER, 1)]
    first = rows[(pool, 1)]
    assert first["seeds"] == "3" and rows[(HOTTER, 1)]["seeds"] == ""
    assert float(first["eval_win_rate"]) == pytest.approx(0.4, abs=1e-12)
    assert (float(first["eval_win_rate_min"]), float(first["eval_win_rate_max"])) == (0.3, 0.5)
    losses = [float(alone[(r, 1)]["train_loss_final"]) for r in SEEDS]
    assert float(first["train_loss_final"]) == pytest.approx(sum(losses) / 3, rel=1e-12)
    assert float(first["train_loss_final_max"]) == max(losses)
    assert rows[(HOTTER, 1)]["eval_win_rate_min"] == "", "a lineage alone: no spread"
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert f"| {pool} | 1 |" in table and "| 0.4 [0.3, 0.5] |" in table
    assert (f"{MODEL}/sppo/{pool}: iter1 0.400 [0.300, 0.500] LC 0.270 | "
            "iter2 0.600 [0.500, 0.700] LC 0.270") in stdout  # fmt: skip
    assert f"{MODEL}/sppo/{HOTTER}: iter1 0.900 [0.800, 0.950] LC 0.270" in stdout

    pooled = by_seed(discover(tmp_path))
    (ev, _) = win_rate_by_iteration(pooled).axes[:2]
    # the win rate's bars (left of each iteration; the LC's are right of it): low to high
    bars = sorted((x, *np.round(segment[:, 1], 12)) for bar in ev.containers
                  for segment in bar.lines[2][0].get_segments() if (x := segment[0, 0]) % 1 > 0.5)  # fmt: skip
    assert bars == [(0.97, 0.3, 0.5), (0.97, 0.8, 0.95), (1.97, 0.5, 0.7)]
    (curves,) = training_curves(pooled, "loss").axes[:1]
    assert len(curves.collections) == 2, "a band around each of the pool's two curves alone"


def test_lineages_alike_but_for_their_seeds_and_names_share_a_setting():
    """What --by seed compares, on composed configs: every stage's inputs, where each lineage's
    own folder is its run's, less the seeds; any other input set otherwise parts them."""
    from src.stages.report.results import setting

    def of(*overrides: str) -> str | None:
        return setting(compose_cfg("model=tiny-mistral", "logger=none", "iter=2", *overrides)
                       .as_tree())  # fmt: skip

    first = of("run_name=a", "training.seed=1")
    assert of("run_name=b", "training.seed=2", "eval.seed=3", "generation.seeds=[1,2,3,4,5]") == (
        first
    )
    assert of("run_name=c", "generation.temperature=0.9") != first
    assert of("run_name=d", "iter=3") != first, "another iteration"


def test_lineages_whose_configs_are_not_known_are_never_pooled():
    """A lineage only a W&B curve run holds has no setting to compare: it stays as it is."""
    from src.compare.pool import by_seed
    from src.stages.report.results import Iteration

    alone = [Iteration({"model": MODEL, "method": "sppo", "run_name": name, "iter": 1,
                        "stages_done": "curves", "eval_win_rate": 0.5}) for name in SEEDS]  # fmt: skip
    assert by_seed(alone) == alone


def compare_rows(root: Path, args: list[str]) -> dict[tuple[str, int], dict[str, str]]:
    run_main(["--root", str(root), "--out", str(root / "unpooled"), *args])
    return read_csv(root / "unpooled" / "compare.csv")


# --- W&B, faked in the client's shape (wandb.Api().runs(project)) ---


def wandb_run(run_name: str, t: int, job_type: str, summary=None, state="finished", **config):
    method, eta, lr, k, loss = LINEAGES[run_name]
    cfg = {"run_name": run_name, "iter": t, "method": method, "model": MODEL, "stage": job_type,
           "eta": eta, "beta": 1 / eta, "lr": lr, "K": k, "loss": loss, **config}  # fmt: skip
    history = [{"train/loss": 10.0 - s, "train/global_step": s} for s in (1, 2)]
    return SimpleNamespace(
        id=f"{run_name}-it{t}-{job_type}{config.get('eval_folder', '')}",
        group=f"{MODEL}/{method}/{run_name}", name=f"{run_name}-it{t}-{job_type}",
        job_type=job_type, config=cfg, summary=summary or {}, state=state,
        scan_history=lambda: history if job_type == "train" else [],
    )  # fmt: skip


@pytest.fixture
def wandb_project(monkeypatch):
    """The runs a fake W&B project holds: the test appends them."""
    from src.compare import runs as compare_runs

    project: list = []
    monkeypatch.setattr(compare_runs, "probe_server", lambda url, timeout: None)
    api = SimpleNamespace(runs=lambda path: project)
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Api=lambda timeout: api))
    return project


def test_wandb_runs_are_filtered_side_evals_read_and_unfinished_ones_left_out(
    wandb_project, tmp_path
):
    flat = {k: v for k, v in EVAL.items() if k != "alpaca_eval"}  # the summary, flattened
    wandb_project += [
        wandb_run(SPPO_5000, 2, "pairs", {"pairs": 33, "mean_chosen_win_rate": 0.6}),
        wandb_run(SPPO_5000, 2, "train"),
        wandb_run(SPPO_5000, 2, "eval", flat),
        wandb_run(SPPO_5000, 2, "eval", {**flat, "win_rate": 0.55}, eval_folder="vs-iter1"),
        wandb_run(SPPO_1000, 1, "generate", {"tokens": 9000}, state="crashed"),
        wandb_run(WPO, 1, "pairs", {"pairs": 31}),
    ]
    out = tmp_path / "out"
    stdout, stderr = run_main(["--wandb", "team/selfplay-lab", "--out", str(out),
                               "--only", f"{MODEL}/sppo/*"])  # fmt: skip

    assert (
        stderr == f"left out 1 iteration with no finished stage: {MODEL}/sppo/{SPPO_1000} iter1\n"
    )
    rows = read_csv(out / "compare.csv")
    assert rows.keys() == {(SPPO_5000, 2)}  # the run name, not the whole group
    row = rows[(SPPO_5000, 2)]
    assert row["stages_done"] == "pairs+train+eval"  # the side eval is no stage of its own
    assert float(row["train_loss_final"]) == 8.0
    assert (float(row["eval_win_rate"]), float(row["eval_win_rate[vs-iter1]"])) == (0.31, 0.55)
    assert f"{MODEL}/sppo/{SPPO_5000} vs iter1: iter2 0.550 [0.220, 0.400] LC 0.270" in stdout

    run_main(["--wandb", "team/selfplay-lab", "--out", str(out), "--where", "pairs=31"])
    rows = read_csv(out / "compare.csv")
    assert rows.keys() == {(WPO, 1)}
    assert (rows[(WPO, 1)]["eta"], float(rows[(WPO, 1)]["beta"])) == ("", 0.01)  # its loss's


def test_wandb_with_no_finished_run_is_no_runs_found(wandb_project, tmp_path, capsys):
    wandb_project.append(wandb_run(SPPO_1000, 1, "generate", state="failed"))
    with pytest.raises(SystemExit) as exit_:
        main(["--wandb", "team/selfplay-lab", "--out", str(tmp_path)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        "error: no runs found in W&B project team/selfplay-lab: 1 iteration, none with a "
        f"finished stage yet ({MODEL}/sppo/{SPPO_1000} iter1)\n"
    )


def curve_run(run_name: str, rows: list[dict], state: str = "finished"):
    """A lineage's curve run (src/stages/report/curves.py), as W&B's client gives it."""
    method, eta, lr, k, loss = LINEAGES[run_name]
    cfg = {"lineage": f"{MODEL}/{method}/{run_name}", "run_name": run_name, "method": method,
           "loss": loss, "model": MODEL, "stage": "curves", "eta": eta, "beta": 1 / eta,
           "lr": lr, "K": k, "sweep": "eta", "method.eta": eta}  # fmt: skip
    history = [{"_step": i, **row} for i, row in enumerate(rows)]
    return SimpleNamespace(
        id=f"{run_name}-curves", group="eta", name=run_name, job_type="curves", config=cfg,
        summary={}, state=state, scan_history=lambda: history,
    )  # fmt: skip


def test_wandb_rows_come_from_each_lineages_curve_run(wandb_project, tmp_path):
    """The curve run's history gives every iteration's figures and intervals, in the sweep's
    group; the stage runs add what is finished and the training's step curve."""
    wandb_project += [
        wandb_run(SPPO_5000, 1, "train"),
        curve_run(SPPO_5000, [
            {"iteration": 1, "eval_win_rate": 0.6, "eval_win_rate_low": 0.5,
             "eval_win_rate_high": 0.7, "pairs": 30, "eval_win_rate[vs-iter1]": 0.5},
            {"iteration": 2, "eval_win_rate": 0.8, "mean_chosen_probs": 0.9},
        ]),
        curve_run(SPPO_1000, [{"iteration": 1, "eval_win_rate": 0.4}], state="running"),
    ]  # fmt: skip
    out = tmp_path / "out"
    stdout, _ = run_main(["--wandb", "team/selfplay-lab", "--out", str(out)])
    rows = read_csv(out / "compare.csv")
    assert rows.keys() == {(SPPO_5000, 1), (SPPO_5000, 2)}, "a curve run still running: none"
    first, second = rows[(SPPO_5000, 1)], rows[(SPPO_5000, 2)]
    assert (first["stages_done"], second["stages_done"]) == ("train", "curves")
    assert (float(first["eval_win_rate"]), float(second["eval_win_rate"])) == (0.6, 0.8)
    assert float(first["pairs"]) == 30 and float(first["eval_win_rate[vs-iter1]"]) == 0.5
    assert float(first["train_loss_final"]) == 8.0  # from the train run's history
    assert (float(second["eta"]), second["beta"], second["method"]) == (5000, "", "sppo")
    assert f"{MODEL}/sppo/{SPPO_5000}: iter1 0.600 [0.500, 0.700] | iter2 0.800" in stdout


def test_a_stale_iterations_figures_are_left_out_each_stage_named(tmp_path, monkeypatch):
    """Iteration 1's prompts edited after iteration 2 was made from it (real records, as the
    stages write them): iteration 2's figures, its training's as its eval's, are left out, each
    stage named on stderr with the reason src.main gives, and none of them counted as done."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))
    for t in (1, 2):
        (tmp_path / f"p{t}.jsonl").write_text(f'{{"prompt": "prompt {t}"}}\n')
    for t in (1, 2):
        cfg = compose_cfg("model=tiny-mistral", "logger=none", f"iter={t}",
                          f"data.prompts={tmp_path}/p${{iter}}.jsonl")  # fmt: skip
        for stage in STAGES:
            cfg.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            (cfg.stage_dir(stage) / "config.yaml").write_text(to_yaml(cfg))
            made = Finished(stage_key(cfg.as_tree(), stage), {}, {})
            write_record(cfg.stage_dir(stage), made)
        (cfg.stage_dir("eval") / "eval.json").write_text(json.dumps({"win_rate": 0.625}))
        (cfg.stage_dir("train") / "metrics.json").write_text(
            json.dumps({"log_history": log_history(1.0, 2, wpo=False)})
        )
        (cfg.stage_dir("pairs") / "metrics.json").write_text(json.dumps({"pairs": 3}))
        generated = {"tokens": 900, "seconds": 9.0}
        (cfg.stage_dir("generate") / "metrics.json").write_text(json.dumps(generated))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        before = read_iteration(cfg.layout, 2)
    assert err.getvalue() == "" and before.row["train_loss_final"] == 0.8
    (tmp_path / "p1.jsonl").write_text('{"prompt": "another"}\n')
    with contextlib.redirect_stderr(err):
        it = read_iteration(cfg.layout, 2)
    said = err.getvalue()
    assert "eval_win_rate" not in it.row and it.history == [], said
    for column in ("train_loss_final", "accuracy_mean", "pairs", "gen_tokens_per_s"):
        assert before.row[column] is not None and it.row[column] is None, column
    assert before.row["stages_done"] == "generate+rank+pairs+train+eval"
    assert it.row["stages_done"] == "none"
    for stage in STAGES:
        folder = cfg.layout.stage_dir_in(2, stage)
        assert f"[compare] {folder}: iteration 1's training, which this iteration " in said
    assert said.count(", left out (pipeline.redo_stale=true makes it again)\n") == 5, said
    assert "generate's data.prompts" in said and "changed since this stage read it" in said
