"""The Open LLM Leaderboard through lm-evaluation-harness (`src.evaluation.leaderboard`), offline.

Tested: the normalisation against the worked examples of the leaderboard's documentation and
hand computations (a BBH subtask of 3 choices, MuSR, GPQA, MMLU-Pro, IFEval's mean of two
accuracies, scores below the random baseline clipped to 0), and its tables against lm-eval's own
task definitions; unknown tasks, tasks asked twice and a backend that cannot run refused in one
line; lm-eval run in this process on tiny-mistral with the chat template over the tiny copies of
every dataset the leaderboard reads (v2's six benchmarks, v1's ARC and TruthfulQA;
src/tiny/leaderboard.py, in each dataset's schema as `hf download --local-dir` lays a dataset
repository out), through
lm-eval's task code and scoring: the results file, every task's metrics and shots, the
normalised scores from the raw ones, IFEval's prompts that cannot be scored without NLTK's data
named and counted; a dataset fetched into the Hub cache found there, and one an earlier load
left in the datasets cache read from there (without the chat template); a dataset that is
nowhere (or only in part) named, with the command that fetches it, and offline the run ended
before any model loads.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import re
import shutil
from pathlib import Path

import pytest

from src.core.errors import EnvironmentFailure
from src.evaluation import leaderboard
from src.evaluation.errors import EvalError
from src.evaluation.leaderboard import (
    BBH_CHOICES,
    BENCHMARKS,
    GPQA_SUBTASKS,
    MATH_SUBTASKS,
    MUSR_CHOICES,
    RESULTS_FILE,
    V2,
    missing_datasets,
    normalise,
    prepared,
    raw_scores,
    run_leaderboard,
    scaled,
    seeded_documents,
)
from src.tiny.leaderboard import (
    IFEVAL,
    arc_rows,
    bbh_repo,
    gpqa_rows,
    ifeval_row,
    mmlu_pro_rows,
    write_datasets,
    write_repo,
)
from src.tiny.models import DEFAULT_CACHE_DIR, ensure


def row(**metrics: float) -> dict:
    """A task's row of lm-eval's results: metric -> value under lm-eval's filter "none"."""
    return {f"{name},none": value for name, value in metrics.items()}


# --- the normalisation --------------------------------------------------------------------------


def test_gpqa_normalises_as_the_leaderboards_worked_example():
    # huggingface/leaderboards, docs/source/en/open_llm_leaderboard/normalization.md, "Example:
    # Normalizing GPQA Scores": raw 0.6, 4 choices -> "Normalized GPQA score: 46.67"
    assert round(normalise({"leaderboard_gpqa": row(acc_norm=0.6)})["gpqa"], 2) == 46.67


def test_musr_normalises_each_subtask_then_averages_as_the_worked_example():
    # normalization.md, "Example: Normalizing MUSR Scores": 0.7 (2 choices), 0.4 (5), 0.6 (3)
    # -> 40.00, 25.00, 40.00, "Overall normalized MUSR score: 35.00". (The page's code writes the
    # third baseline as 0.333, which would print 40.03 and 35.01; its printed output is 1/3's.)
    results = {
        "leaderboard_musr_murder_mysteries": row(acc_norm=0.7),
        "leaderboard_musr_object_placements": row(acc_norm=0.4),
        "leaderboard_musr_team_allocation": row(acc_norm=0.6),
    }
    assert [round(scaled(0.7, 2), 2), round(scaled(0.4, 5), 2), round(scaled(0.6, 3), 2)] == [
        40.0,
        25.0,
        40.0,
    ]
    assert round(normalise(results)["musr"], 2) == 35.0


def test_every_benchmark_normalises_as_computed_by_hand_and_the_average_is_their_mean():
    results = {
        # BBH: disambiguation_qa has 3 choices, navigate 2; lm-eval's group row is not what BBH
        # normalises (each subtask is, then they are averaged)
        "leaderboard_bbh": row(acc_norm=0.55),
        "leaderboard_bbh_disambiguation_qa": row(acc_norm=0.6),  # (0.6 - 1/3) / (2/3) = 40
        "leaderboard_bbh_navigate": row(acc_norm=0.4),  # below 1/2: 0
        "leaderboard_musr_team_allocation": row(acc_norm=0.5),  # (0.5 - 1/3) / (2/3) = 25
        "leaderboard_gpqa": row(acc_norm=0.2),  # below 1/4: 0
        "leaderboard_gpqa_main": row(acc_norm=0.9),  # the group's score is what GPQA normalises
        "leaderboard_mmlu_pro": row(acc=0.28),  # (0.28 - 0.1) / 0.9 = 20
        "leaderboard_math_hard": row(exact_match=0.12),  # generative: 12
        "leaderboard_ifeval": row(prompt_level_strict_acc=0.5, inst_level_strict_acc=0.7),  # 60
        "arc_challenge": row(acc_norm=0.42),  # v1: raw only
    }
    got = normalise(results)
    expected = {"bbh": 20.0, "musr": 25.0, "gpqa": 0.0, "mmlu_pro": 20.0, "math_hard": 12.0}
    expected["ifeval"] = 60.0
    assert set(got) == {*V2, "average"}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name
    assert got["average"] == pytest.approx(sum(expected.values()) / 6)
    assert raw_scores(results) == pytest.approx(
        {
            "bbh": 0.55,
            "musr": 0.5,
            "gpqa": 0.2,
            "mmlu_pro": 0.28,
            "math_hard": 0.12,
            "ifeval": 0.6,
            "arc_challenge": 0.42,
        }
    )


def test_only_the_benchmarks_present_are_scored_and_subtasks_stand_in_for_a_missing_group():
    results = {
        "leaderboard_gpqa_diamond": row(acc_norm=0.3),
        "leaderboard_gpqa_main": row(acc_norm=0.5),
        "truthfulqa_mc2": row(acc=0.45),
    }
    assert raw_scores(results) == pytest.approx({"gpqa": 0.4, "truthfulqa_mc2": 0.45})
    assert normalise(results) == pytest.approx({"gpqa": 20.0, "average": 20.0})
    assert normalise({"truthfulqa_mc2": row(acc=0.45)}) == {}


def test_a_results_row_without_the_metric_the_leaderboard_reads_is_refused_in_one_line():
    with pytest.raises(EvalError, match=r"^lm-eval results: leaderboard_mmlu_pro has no acc,none$"):
        normalise({"leaderboard_mmlu_pro": row(acc_norm=0.3)})


def test_the_tables_match_lm_evals_own_task_definitions():
    index, groups = leaderboard._stock_index()
    members = {g: index[g].cfg["task"] for g in groups}
    assert sorted(members["leaderboard"]) == sorted(f"leaderboard_{b}" for b in V2)
    assert sorted(members["leaderboard_bbh"]) == sorted(BBH_CHOICES)
    assert members["leaderboard_gpqa"] == list(GPQA_SUBTASKS)
    assert members["leaderboard_math_hard"] == list(MATH_SUBTASKS)
    assert members["leaderboard_musr"] == list(MUSR_CHOICES)
    # BBH's numbers of choices (the leaderboard's about.md) are its tasks' choices in lm-eval
    assert {t: len(index[t].cfg["doc_to_choice"]) for t in BBH_CHOICES} == BBH_CHOICES
    for bench in BENCHMARKS.values():
        for task in bench.subtasks or (bench.task,):
            metrics = {m["metric"] for m in index[task].cfg["metric_list"]}
            assert set(bench.metrics) <= metrics, task


def test_unknown_tasks_and_tasks_asked_twice_are_refused_in_one_line():
    with pytest.raises(
        EvalError, match=r"^eval\.leaderboard_tasks: unknown 'hellaswag', 'arc_easy'; "
    ):
        leaderboard.lm_eval_names(["bbh", "hellaswag", "arc_easy"])
    twice = "leaderboard_mmlu_pro, leaderboard_musr_team_allocation asked for more than once"
    with pytest.raises(EvalError, match=rf"^eval\.leaderboard_tasks: {twice}$"):
        leaderboard.lm_eval_names(["leaderboard", "mmlu_pro", "leaderboard_musr_team_allocation"])
    asked = ["leaderboard_bbh", "ifeval", "leaderboard_musr_team_allocation", "arc_challenge"]
    assert leaderboard.lm_eval_names(asked) == [
        "leaderboard_bbh",
        "leaderboard_ifeval",
        "leaderboard_musr_team_allocation",
        "arc_challenge",
    ]


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty Hub and datasets caches: only what a test puts there is there."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    return tmp_path


# --- datasets: here, in the caches, or named with the command that fetches them -----------------


def test_a_dataset_in_neither_data_dir_nor_the_caches_is_named_with_its_fetch_command(caches):
    data = caches / "data"
    write_datasets(data)
    assert missing_datasets(["leaderboard", *leaderboard.V1], data) == []
    shutil.rmtree(data / "Idavidrein/gpqa")
    # copies that lack a config or a split the tasks read are no copies: BBH's without its
    # configs, MuSR's without the README that names its splits (its files become one "train")
    (data / "SaylorTwift/bbh/README.md").write_text("---\nconfigs: []\n---\n")
    (data / "TAUR-Lab/MuSR/README.md").unlink()
    lines = missing_datasets(["leaderboard"], data)
    assert [line.split(" ")[2] for line in lines] == [
        "SaylorTwift/bbh",
        "Idavidrein/gpqa",
        "TAUR-Lab/MuSR",
    ]
    assert lines[1] == (
        "the dataset Idavidrein/gpqa (read by leaderboard_gpqa_diamond and 2 more) is neither in "
        f"{data / 'Idavidrein/gpqa'} nor in the Hugging Face caches: fetch it with `hf download "
        f"Idavidrein/gpqa --repo-type dataset --local-dir {data / 'Idavidrein/gpqa'}`"
    )
    # a copy there but not what its tasks read is said so, with what it lacks
    assert lines[2] == (
        "the dataset TAUR-Lab/MuSR (read by leaderboard_musr_murder_mysteries and 2 more) is "
        f"in {data / 'TAUR-Lab/MuSR'}, whose config default has no split murder_mysteries, and "
        "not in the Hugging Face caches: fetch it with `hf download TAUR-Lab/MuSR --repo-type "
        f"dataset --local-dir {data / 'TAUR-Lab/MuSR'}`"
    )
    (data / "SaylorTwift/bbh/README.md").write_text("---\nconfigs: [\n---\n")
    (broken,) = missing_datasets(["bbh"], data)
    assert (
        f"is in {data / 'SaylorTwift/bbh'}, whose config boolean_expressions cannot be " in broken
    )
    assert "(ParserError: while parsing a flow node" in broken
    assert missing_datasets(["mmlu_pro"], None) == [
        "the dataset TIGER-Lab/MMLU-Pro (read by leaderboard_mmlu_pro) is not in the Hugging "
        "Face caches: fetch it with `hf download TIGER-Lab/MMLU-Pro --repo-type dataset`"
    ]


def test_a_dataset_fetched_into_the_hub_cache_is_found_there(caches):
    # `hf download TIGER-Lab/MMLU-Pro --repo-type dataset` without --local-dir: the Hub cache's
    # datasets--<namespace>--<name>/{refs/main, snapshots/<commit>/}
    commit = "0123456789abcdef0123456789abcdef01234567"
    stored = caches / "hub" / "datasets--TIGER-Lab--MMLU-Pro"
    mmlu_pro = {"test": mmlu_pro_rows(2, "math"), "validation": mmlu_pro_rows(5, "math")}
    write_repo(stored / "snapshots" / commit, "", {None: mmlu_pro})
    (stored / "refs").mkdir()
    (stored / "refs" / "main").write_text(commit)
    assert missing_datasets(["mmlu_pro"], None) == []
    assert leaderboard.local_copy(
        "TIGER-Lab/MMLU-Pro", {None: ["leaderboard_mmlu_pro"]}, caches / "no-data"
    ) == (stored / "snapshots" / commit)


def arc_copy(data: Path) -> Path:
    """A copy of ARC-Challenge alone (the test split's 2 rows), as `hf download` lays it out."""
    arc = {"train": arc_rows(3, "train"), "validation": arc_rows(1, "val"),
           "test": arc_rows(2, "test")}  # fmt: skip
    write_repo(data, "allenai/ai2_arc", {"ARC-Challenge": arc})
    return data / "allenai/ai2_arc"


def test_a_copy_changed_since_an_earlier_load_is_read_anew_not_from_that_loads_tables(caches):
    """datasets keys the tables it builds from a folder by the folder's name: a copy cut to one
    row read back two (the earlier load's). Each content has its own cache."""
    from src.evaluation.leaderboard import require_loadable

    folder = arc_copy(caches / "data")
    first = require_loadable("allenai/ai2_arc", folder, ["arc_challenge"], caches / "data")
    test = folder / "ARC-Challenge" / "test.jsonl"
    test.write_text(test.read_text().splitlines(keepends=True)[0])
    second = require_loadable("allenai/ai2_arc", folder, ["arc_challenge"], caches / "data")
    assert second != first and second.parent == first.parent
    from datasets import load_dataset

    rows = load_dataset(str(folder), "ARC-Challenge", cache_dir=str(second))
    assert rows["test"].num_rows == 1


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("a row cut short", r"ARC-Challenge/test\.jsonl:2: malformed JSON line: "),
        ("bytes that are not UTF-8", r"ARC-Challenge/test\.jsonl: not UTF-8 text \("),
        ("a README that is not YAML", r"config ARC-Challenge cannot be loaded \("),
        ("an empty split", r"config ARC-Challenge cannot be loaded \("),
    ],
    ids=["cut", "not UTF-8", "README", "empty split"],
)
def test_a_damaged_copy_is_one_line_naming_the_dataset_and_the_file_before_any_model_loads(
    caches, damage, said
):
    from src.evaluation.leaderboard import require_loadable

    folder = arc_copy(caches / "data")
    test = folder / "ARC-Challenge" / "test.jsonl"
    if damage == "a row cut short":
        test.write_text(test.read_text()[:-40])
    elif damage == "bytes that are not UTF-8":
        test.write_bytes(b"\xff\xfe" + test.read_bytes())
    elif damage == "a README that is not YAML":
        (folder / "README.md").write_text("---\nconfigs: [\n---\n")
    else:
        test.write_text("")
    with pytest.raises(EvalError, match=said) as refused:
        require_loadable("allenai/ai2_arc", folder, ["arc_challenge"], caches / "data")
    message = str(refused.value)
    assert message.startswith("the leaderboard's copy of allenai/ai2_arc (") and "\n" not in message
    assert "arc_challenge" in message


@pytest.mark.parametrize("rows", ["every", "the second"])
def test_a_row_without_a_column_its_task_reads_is_one_line_before_any_model_loads(caches, rows):
    """A copy whose rows lack `question` had stopped lm-eval with a traceback once the model was
    loaded (no row has it: lm-eval reads one as it builds the task), or read the row's question
    as None (datasets fills a key some rows lack with None)."""
    folder = arc_copy(caches / "data")
    for split in ("train", "validation", "test") if rows == "every" else ("test",):
        path = folder / "ARC-Challenge" / f"{split}.jsonl"
        docs = [json.loads(line) for line in path.read_text().splitlines()]
        for doc in docs if rows == "every" else docs[1:]:
            del doc["question"]
        path.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    said = (
        r"arc_challenge cannot be built from it \(UndefinedError: 'question' is undefined\)"
        if rows == "every"
        else r"test row 2 cannot be read as arc_challenge reads it \(no 'question'\)"
    )
    with pytest.raises(EvalError, match=said) as refused:
        leaderboard.verify(["arc_challenge"], caches / "data")
    message = str(refused.value)
    assert message.startswith(f"the leaderboard's copy of allenai/ai2_arc ({folder}, read by ")
    assert message.endswith(f"`{leaderboard.fetch_command('allenai/ai2_arc', caches / 'data')}`")


def test_offline_a_missing_dataset_ends_the_run_before_any_model_loads(caches):
    data = caches / "data"
    mmlu_pro = {"test": mmlu_pro_rows(2, "math"), "validation": mmlu_pro_rows(5, "math")}
    write_repo(data, "TIGER-Lab/MMLU-Pro", {None: mmlu_pro})
    with pytest.raises(EnvironmentFailure) as failure:
        run_leaderboard(
            str(caches / "no-model-here"),
            ["mmlu_pro", "gpqa"],
            data_dir=data,
            output=caches / "out",
        )
    assert str(failure.value).startswith(
        "1 of the leaderboard's datasets: the dataset Idavidrein/gpqa"
    )
    assert "\n" not in str(failure.value)
    assert not (caches / "out").exists()


def test_a_backend_that_cannot_run_here_is_refused_before_anything_loads(tmp_path, monkeypatch):
    find_spec = leaderboard.importlib.util.find_spec
    monkeypatch.setattr(
        leaderboard.importlib.util, "find_spec", lambda n: None if n == "vllm" else find_spec(n)
    )
    common = {"data_dir": None, "output": tmp_path}
    with pytest.raises(EnvironmentFailure, match=r"^the leaderboard's vllm backend needs vLLM, "):
        run_leaderboard("model", ["mmlu_pro"], backend="vllm", **common)
    with pytest.raises(EvalError, match=r"^leaderboard backend 'sglang': choose hf or vllm$"):
        run_leaderboard("model", ["mmlu_pro"], backend="sglang", **common)


# --- IFEval without NLTK's data -----------------------------------------------------------------


@pytest.fixture
def no_punkt(tmp_path, monkeypatch):
    """NLTK's data path with nothing on it, as on a machine that never downloaded punkt_tab."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])


def test_ifeval_instructions_that_need_nltk_data_are_found_by_running_lm_evals_checks(no_punkt):
    assert leaderboard.punkt_missing()
    found = [leaderboard.unscorable_instructions(doc) for doc in IFEVAL]
    assert found == [[], [], ["length_constraints:number_sentences"]]
    capitals = ifeval_row(4, "Use capitals.", {"change_case:capital_word_frequency": {}})
    capitals["kwargs"] = [{"capital_frequency": 2, "capital_relation": "at least"}]
    assert leaderboard.unscorable_instructions(capitals) == ["change_case:capital_word_frequency"]


def test_lm_evals_ifeval_modules_load_fetching_nothing_and_claiming_nothing(
    no_punkt, capsys, monkeypatch
):
    """lm-eval's IFEval module, loaded where NLTK's data is missing, as a task build loads it:
    no download tried, no "Downloaded punkt_tab" line; what else is printed passes through."""
    import importlib
    import sys

    import nltk

    tried = []
    monkeypatch.setattr(nltk, "download", lambda *args, **kwargs: tried.append(args))
    module = "lm_eval.tasks.ifeval.instructions_util"
    monkeypatch.delitem(sys.modules, module, raising=False)  # imported afresh: it runs again
    with leaderboard.nltk_never_downloads():
        importlib.import_module(module)
        print("a line of its own")
    said = capsys.readouterr()
    assert said.out == "a line of its own\n" and "punkt" not in said.err and tried == []


# --- lm-eval in this process on tiny-mistral -----------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every leaderboard task (v2's group, v1's two) on tiny-mistral over the tiny copies of their
    datasets, 2 documents each, answers of at most 8 tokens; NLTK's data absent. Returns what
    the run returned, lm-eval's results file, and what the run said: its lines on stderr and
    the messages of lm-eval's log records."""
    import datasets
    import huggingface_hub
    import nltk

    root = tmp_path_factory.mktemp("leaderboard")
    write_datasets(root / "data")
    model = ensure("tiny-mistral", DEFAULT_CACHE_DIR)
    logged = Records()
    logging.getLogger("lm_eval").addHandler(logged)
    with (
        pytest.MonkeyPatch.context() as patch,
        contextlib.redirect_stderr(io.StringIO()) as printed,
    ):
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "datasets"))
        patch.setattr(nltk.data, "path", [str(root / "nltk_data")])
        returned = run_leaderboard(
            str(model),
            ["leaderboard", "arc_challenge", "truthfulqa_mc2"],
            data_dir=root / "data",
            limit=2,
            dtype="float32",
            output=root / "out",
            max_gen_toks=8,
        )
    logging.getLogger("lm_eval").removeHandler(logged)
    written = json.loads((root / "out" / RESULTS_FILE).read_text(encoding="utf-8"))
    return returned, written, (printed.getvalue().splitlines(), logged.messages)


@pytest.mark.slow
def test_the_run_writes_lm_evals_results_with_every_task_and_its_metrics(ran):
    _, written, _ = ran
    results = written["results"]
    leaves = [*BBH_CHOICES, *GPQA_SUBTASKS, *MATH_SUBTASKS, *MUSR_CHOICES]
    leaves += ["leaderboard_ifeval", "leaderboard_mmlu_pro", "arc_challenge", "truthfulqa_mc2"]
    groups = ["leaderboard", *(b.task for b in BENCHMARKS.values() if b.subtasks)]
    assert set(results) == {*leaves, *groups}
    for name, bench in BENCHMARKS.items():
        for task in (bench.task, *bench.subtasks):
            for metric in bench.metrics:
                assert 0 <= results[task][f"{metric},none"] <= 1, (name, task, metric)
    assert 0 <= results["arc_challenge"]["acc_norm,none"] <= 1
    assert 0 <= results["truthfulqa_mc2"]["acc,none"] <= 1
    # what ran: the leaderboard's shots, the chat template, the tiny copies
    shots = written["n-shot"]
    assert [
        shots[t]
        for t in (
            "leaderboard_bbh_navigate",
            "leaderboard_mmlu_pro",
            "leaderboard_math_algebra_hard",
        )
    ] == [3, 5, 4]
    assert [shots[t] for t in ("leaderboard_gpqa_main", "leaderboard_ifeval", "arc_challenge")] == [
        0,
        0,
        25,
    ]
    assert written["config"]["model_args"]["dtype"] == "float32"
    assert written["configs"]["leaderboard_mmlu_pro"]["dataset_path"].endswith(
        "data/TIGER-Lab/MMLU-Pro"
    )
    assert written["chat_template"] is not None and written["fewshot_as_multiturn"] is True
    # MATH keeps Level 5: of each fixture's 3 rows, 2
    assert written["n-samples"]["leaderboard_math_algebra_hard"] == {"original": 2, "effective": 2}


@pytest.mark.slow
def test_the_normalised_scores_follow_from_the_raw_ones(ran):
    returned, written, _ = ran
    results = written["results"]
    assert returned["raw"] == pytest.approx(raw_scores(results))
    assert returned["normalised"] == pytest.approx(normalise(results))
    raw, got = returned["raw"], returned["normalised"]
    assert set(got) == {*V2, "average"} and set(raw) == {*V2, *leaderboard.V1}
    assert got["gpqa"] == pytest.approx(max(raw["gpqa"] - 0.25, 0) / 0.75 * 100)
    assert got["mmlu_pro"] == pytest.approx(max(raw["mmlu_pro"] - 0.1, 0) / 0.9 * 100)
    assert got["math_hard"] == pytest.approx(raw["math_hard"] * 100)
    ifeval = results["leaderboard_ifeval"]
    strict = (ifeval["prompt_level_strict_acc,none"] + ifeval["inst_level_strict_acc,none"]) / 2
    assert got["ifeval"] == pytest.approx(strict * 100)
    bbh = [scaled(results[t]["acc_norm,none"], n) for t, n in BBH_CHOICES.items()]
    assert got["bbh"] == pytest.approx(sum(bbh) / len(bbh))
    musr = [scaled(results[t]["acc_norm,none"], n) for t, n in MUSR_CHOICES.items()]
    assert got["musr"] == pytest.approx(sum(musr) / 3)
    assert got["average"] == pytest.approx(sum(got[b] for b in V2) / 6)
    assert all(0 <= v <= 100 for v in got.values())


@pytest.mark.slow
def test_without_nltk_data_ifeval_scores_the_other_prompts_and_counts_those_left_out(ran):
    returned, written, _ = ran
    assert returned["unscored"] == {
        "leaderboard_ifeval": {
            "prompts": 1,
            "of": 3,
            "instructions": {"length_constraints:number_sentences": 1},
            "why": "NLTK's punkt_tab is not installed "
            "(python -m nltk.downloader punkt_tab installs it)",
        }
    }
    assert written["n-samples"]["leaderboard_ifeval"] == {"original": 2, "effective": 2}


@pytest.mark.slow
def test_lm_evals_warnings_that_every_run_meets_are_said_once_or_not_at_all(ran):
    """Of lm-eval's warnings, the leaderboard group's notes of the metrics most of its tasks lack
    (seven a run) are not said, and a note for each prompt that tiny-mistral's chat template
    refused its system turn is said once, counted, by the run."""
    _, _, (lines, messages) = ran
    assert not [m for m in messages if m.startswith(("Group 'leaderboard'", "Failed to apply"))]
    dropped = [line for line in lines if "chat template takes no system turn" in line]
    assert len(dropped) == 1, lines
    assert re.fullmatch(
        r"\[leaderboard\] the chat template takes no system turn: lm-eval left the task's "
        r"description out of [1-9]\d* prompts",
        dropped[0],
    )


@pytest.mark.slow
def test_a_dataset_an_earlier_load_left_in_the_datasets_cache_is_read_from_there_offline(caches):
    import datasets
    from datasets.packaged_modules.json.json import Json

    rows = caches / "navigate.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in bbh_repo()["navigate"]["test"]))
    # what `load_dataset("SaylorTwift/bbh", "navigate")` online leaves in the datasets cache:
    # <cache>/SaylorTwift___bbh/navigate/<version>/<hash>/{bbh-test.arrow, dataset_info.json}
    built = caches / "build"
    Json(
        cache_dir=str(built),
        dataset_name="bbh",
        config_name="navigate",
        config_id="navigate",
        data_files={"test": str(rows)},
        hash="0123456789abcdef",
    ).download_and_prepare()
    shutil.move(built / "bbh", Path(datasets.config.HF_DATASETS_CACHE) / "SaylorTwift___bbh")
    assert missing_datasets(["leaderboard_bbh_navigate"], caches / "no-data") == []
    assert missing_datasets(["leaderboard_bbh_snarks"], None) != []
    model = ensure("tiny-mistral", DEFAULT_CACHE_DIR)
    returned = run_leaderboard(
        str(model),
        ["leaderboard_bbh_navigate"],
        data_dir=None,
        chat_template=False,
        dtype="float32",
        output=caches / "out",
    )
    written = json.loads((caches / "out" / RESULTS_FILE).read_text(encoding="utf-8"))
    assert written["configs"]["leaderboard_bbh_navigate"]["dataset_path"] == "SaylorTwift/bbh"
    assert written["chat_template"] is None and written["fewshot_as_multiturn"] is False
    assert written["n-samples"]["leaderboard_bbh_navigate"]["original"] == 2
    assert returned["normalised"] == pytest.approx(normalise(written["results"]))


# --- GPQA's shuffled choices, drawn by the seed ---------------------------------------------------

GPQA_ROWS = 16  # per subtask: two shuffles of their choices are never alike


def write_gpqa(data: Path) -> None:
    configs = ("gpqa_diamond", "gpqa_extended", "gpqa_main")
    write_repo(data, "Idavidrein/gpqa", {c: {"train": gpqa_rows(c, GPQA_ROWS)} for c in configs})


def gpqa_answers(data: Path) -> dict[str, list[str]]:
    """Each GPQA subtask's right answers, in order, as its documents are read."""
    with prepared(list(GPQA_SUBTASKS), data) as (_, loaded):
        tasks = {leaf: t for built in loaded.values() for leaf, t in built["tasks"].items()}
        return {leaf: [doc["answer"] for doc in task.eval_docs] for leaf, task in tasks.items()}


def test_gpqa_shuffles_its_choices_by_the_seed_whatever_random_held_and_the_cache_kept(caches):
    """lm-eval shuffles each GPQA question's choices with Python's `random` as it reads the
    documents, and datasets keeps the first shuffle in its cache: read under the seed, the
    answers are the seed's, whatever state `random` was in and whatever shuffle an earlier
    load left in the cache; another seed, other answers."""
    data = caches / "data"
    write_gpqa(data)
    random.seed(1)  # two processes' `random` are never in the same state
    with seeded_documents(0):
        first = gpqa_answers(data)
    random.seed(2)
    unseeded = gpqa_answers(data)  # an earlier load, kept in the datasets cache
    assert unseeded != first
    with seeded_documents(0):
        assert gpqa_answers(data) == first
    with seeded_documents(1):
        assert gpqa_answers(data) != first
    assert gpqa_answers(data) == unseeded, "outside, lm-eval reads its documents as it would"


@pytest.mark.slow
def test_two_evaluations_of_a_checkpoint_with_the_same_seed_score_gpqa_alike(caches, monkeypatch):
    """tiny-mistral on GPQA twice with seed 0, as two machines would run it: each with its own
    datasets cache and its `random` in a state of its own; lm-eval's results for GPQA are the
    same, digit for digit."""
    import datasets

    data = caches / "data"
    write_gpqa(data)
    model = ensure("tiny-mistral", DEFAULT_CACHE_DIR)

    def gpqa_results(machine: str, state: int) -> dict:
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(caches / machine))
        random.seed(state)
        run_leaderboard(
            str(model), ["gpqa"], data_dir=data, dtype="float32", output=caches / machine, seed=0
        )
        written = json.loads((caches / machine / RESULTS_FILE).read_text(encoding="utf-8"))
        return {t: row for t, row in written["results"].items() if t.startswith("leaderboard_gpqa")}

    first = gpqa_results("first", 1)
    assert set(first) == {"leaderboard_gpqa", *GPQA_SUBTASKS}
    assert gpqa_results("second", 2) == first


# --- in the eval stage (eval.benchmarks=[leaderboard]) -------------------------------------------


def test_the_stage_names_an_unknown_task_and_every_missing_dataset_before_any_answer(caches):
    from src.evaluation import benchmarks
    from tests.support.helpers import SMALL, compose_cfg

    data = caches / "data"
    write_datasets(data)
    shutil.rmtree(data / "Idavidrein/gpqa")
    shutil.rmtree(data / "TIGER-Lab/MMLU-Pro")
    lb = ("eval.benchmarks=[leaderboard]", f"data.leaderboard={data}")
    cfg = compose_cfg(*SMALL, *lb, "eval.leaderboard_tasks=[gpqa,arc_challenge,mmlu_pro]")
    with pytest.raises(EnvironmentFailure) as failure:
        benchmarks.check(cfg)
    assert str(failure.value).startswith("2 of the leaderboard's datasets: the dataset ")
    assert "Idavidrein/gpqa" in str(failure.value) and "TIGER-Lab/MMLU-Pro" in str(failure.value)
    cfg = compose_cfg(*SMALL, *lb, "eval.leaderboard_tasks=[arc_challenge,winogrande]")
    with pytest.raises(
        EvalError, match=r"^eval\.leaderboard_tasks: unknown 'winogrande'; choose among"
    ):
        benchmarks.check(cfg)
    assert benchmarks.check(compose_cfg(*SMALL, *lb, "eval.leaderboard_tasks=[arc_challenge]")) == {
        benchmarks.Benchmark.leaderboard: ["arc_challenge"]
    }


@pytest.mark.slow
def test_the_stage_runs_the_leaderboard_on_its_policy_and_writes_lm_evals_results(caches):
    from src.evaluation import benchmarks
    from src.stages.eval import answerer
    from tests.support.helpers import SMALL, compose_cfg

    write_datasets(caches / "data")
    cfg = compose_cfg(
        *SMALL,
        "eval.benchmarks=[leaderboard]",
        f"data.leaderboard={caches / 'data'}",
        "eval.leaderboard_tasks=[gpqa,arc_challenge]",
        "eval.leaderboard_limit=2",
    )
    result = benchmarks.run(cfg, answerer(cfg, "base"), benchmarks.check(cfg), caches / "eval")
    written = json.loads((caches / "eval" / "leaderboard" / RESULTS_FILE).read_text())
    assert written["config"]["model_args"]["pretrained"] == answerer(cfg, "base").path
    assert written["chat_template"] is not None  # the policy's own, as for chat models
    assert written["n-samples"]["arc_challenge"]["effective"] == 2
    scores = result["leaderboard"]
    assert set(scores["raw"]) == {"gpqa", "arc_challenge"}
    assert scores["normalised"] == pytest.approx(normalise(written["results"]))
    assert set(scores["normalised"]) == {"gpqa", "average"} and scores["seconds"] > 0
    assert scores["limit"] == 2  # the card shows no leaderboard figure of a run this short
