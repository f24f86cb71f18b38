"""A model card is made to be pushed to the Hub: it names hub ids, and paths relative to the run
root, the repository or the tiny models' folder, never a local absolute path
(src/stages/report/cards.py, `card_value` and `card_text`); the data's dataset card, pushed beside
it, neither."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from src.config import REPO_ROOT, PathsConfig
from src.stages.report.cards import card_text, card_value, model_card
from tests.support.helpers import ALPACA, ARENA_HARD, LEADERBOARD, MT_BENCH, compose_cfg

ROOT = "/scratch/ana/runs"
PATHS = PathsConfig(root=ROOT, tiny_dir=f"{REPO_ROOT}/.cache/tiny")
HUB_CACHE = "/home/ana/.cache/huggingface/hub"

# An absolute path (or one from the home directory) anywhere in a card: after a space, a quote,
# a bracket, `=`, `:`, `,` or a table's `|`; a lone "/" (`method.eta / method.beta`) is no path
ABSOLUTE = re.compile(r"(?<![^\s`'\"(\[=:,|])~?/[^\s`'\")\],|]+")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistralai/Mistral-7B-Instruct-v0.2"),
        ("tiny-mistral", "tiny-mistral"),
        ("data/prompts/iter1.jsonl", "data/prompts/iter1.jsonl"),  # relative: shown as it is
        (f"{ROOT}/m/sppo/r/iter1/train/checkpoint", "m/sppo/r/iter1/train/checkpoint"),
        (f"{ROOT}/m/../m/sppo/r/", "m/sppo/r"),
        (ROOT, "runs"),  # the root itself: its name
        (f"{ROOT}2/iter1.jsonl", "iter1.jsonl"),  # a sibling folder whose name starts alike
        (f"{ROOT}/../elsewhere/iter1.jsonl", "iter1.jsonl"),  # lexically outside the root
        (f"{REPO_ROOT}/data/prompts/iter1.jsonl", "data/prompts/iter1.jsonl"),
        (f"{REPO_ROOT}/.cache/tiny/tiny-pairrm", "tiny/tiny-pairrm"),  # the deeper anchor
        (f"{REPO_ROOT}/.cache/tiny", "tiny"),
        ("/home/ana/judges/my-pairrm/", "my-pairrm"),
        ("~/prompts/mine.jsonl", "mine.jsonl"),
        ("~data.external_responses", "~data.external_responses"),  # not a path
        (
            f"{HUB_CACHE}/models--mistralai--Mistral-7B-Instruct-v0.2/snapshots/3ad372f",
            "mistralai/Mistral-7B-Instruct-v0.2",
        ),
        (
            f"{HUB_CACHE}/datasets--UCLA-AGI--data-sppo-iter1/snapshots/9c1e/train.parquet",
            "UCLA-AGI/data-sppo-iter1",
        ),
        ("/", "/"),
    ],
)
def test_card_value_shows_hub_ids_and_relative_names(value, shown):
    assert card_value(value, PATHS) == shown


def test_a_run_root_inside_the_repository_is_the_deeper_anchor():
    paths = PathsConfig(root=f"{REPO_ROOT}/runs", tiny_dir=f"{REPO_ROOT}/.cache/tiny")
    assert card_value(f"{REPO_ROOT}/runs/m/sppo/r", paths) == "m/sppo/r"
    assert card_value(f"{REPO_ROOT}/runs", paths) == "runs", "named by the repository"
    everything = PathsConfig(root="/", tiny_dir="/")
    assert card_value("/home/ana/p.jsonl", everything) == "p.jsonl", "`/` shows nothing whole"


def test_card_text_shows_each_path_of_a_command_line_and_keeps_the_rest():
    command = (
        f"python -m src.main paths.root={ROOT} data.prompts='/home/ana/p.jsonl' "
        "~data.external_responses +x=[/a/b.jsonl,~/d.jsonl] ranker.model=llm-blender/PairRM "
        f"iter=2 ({REPO_ROOT}/data) see https://huggingface.co/llm-blender/PairRM"
    )
    assert card_text(command, PATHS) == (
        "python -m src.main paths.root=runs data.prompts='p.jsonl' "
        "~data.external_responses +x=[b.jsonl,d.jsonl] ranker.model=llm-blender/PairRM "
        "iter=2 (data) see https://huggingface.co/llm-blender/PairRM"
    )
    note = "learning rate 5e-6 / 5e-7, as llm-blender/PairRM's card: and/or"
    assert card_text(note, PATHS) == note


def local_config(tmp_path: Path):
    """Iteration 2 of a tiny run whose settings are local absolute paths, but for the base model,
    a hub id; and the command line that set them."""
    home = Path.home()
    overrides = [
        "model=tiny-mistral",
        "logger=none",
        "iter=2",
        "run_name=mine",
        f"paths.root={tmp_path / 'runs'}",
        "model.path=mistralai/Mistral-7B-Instruct-v0.2",
        f"data.prompts={tmp_path / 'prompts' / 'train.jsonl'}",
        f"data.eval_prompts={tmp_path / 'prompts' / 'eval.json'}",
        f"ranker.model={home / 'judges' / 'my-pairrm'}",
        f"notes=['the prompts of {tmp_path / 'prompts'}, filtered']",
    ]
    return compose_cfg(*overrides), "python -m src.main " + " ".join(overrides)


def assert_no_local_path(text: str, tmp_path: Path, cfg) -> None:
    for local in (tmp_path, cfg.paths.root, REPO_ROOT, cfg.paths.tiny_dir):
        assert str(local) not in text, local
    if Path.home() != Path("/"):
        assert str(Path.home()) not in text
    assert ABSOLUTE.findall(text) == [], ABSOLUTE.findall(text)


def test_a_later_iterations_card_shows_no_local_absolute_path(tmp_path):
    cfg, command = local_config(tmp_path)
    assert cfg.run.init_policy == str(
        tmp_path / "runs/tiny-mistral/sppo/mine/iter1/train/checkpoint"
    )
    metrics = {"log_history": [{"loss": 0.5}], "summary": {"train_loss": 0.5, "steps": 1}}
    evaluation = {
        "reference": str(tmp_path / "references" / "gpt4_turbo"), "judge": "tiny-pairrm",
        "compared": 150, "confidence": 0.95,
        "win_rate": 0.6, "win_rate_low": 0.55, "win_rate_high": 0.65,
        "lc_win_rate": 0.58, "lc_win_rate_low": 0.53, "lc_win_rate_high": 0.63,
    }  # fmt: skip
    text = model_card(cfg, metrics, [evaluation], command)
    assert_no_local_path(text, tmp_path, cfg)

    card = ModelCard(text)
    assert card.data.base_model == "mistralai/Mistral-7B-Instruct-v0.2"
    assert (
        "pi_2, trained from iteration 1's checkpoint `tiny-mistral/sppo/mine/iter1/train/"
        "checkpoint`, itself descended from `mistralai/Mistral-7B-Instruct-v0.2`;"
    ) in " ".join(card.text.split())
    assert "| data.prompts | train.jsonl |" in card.text
    assert "| ranker | pairrm: my-pairrm |" in card.text
    assert "Against `gpt4_turbo` on 150 instructions of `eval.json`, judged by" in card.text
    assert "- the prompts of prompts, filtered" in card.text
    assert (
        "python -m src.main model=tiny-mistral logger=none iter=2 run_name=mine paths.root=runs "
        "model.path=mistralai/Mistral-7B-Instruct-v0.2 data.prompts=train.jsonl "
        "data.eval_prompts=eval.json ranker.model=my-pairrm"
    ) in card.text
    results = {r.metric_type: r.metric_name for r in card.data.eval_results}
    assert results["win_rate"] == "win_rate vs gpt4_turbo (tiny-pairrm)"


def test_the_exported_dataset_card_shows_no_local_absolute_path(tmp_path):
    from src.export.folders import dataset_card

    cfg, _ = local_config(tmp_path)
    text = dataset_card(cfg, 4, {}, {"pairs": 3})
    assert_no_local_path(text, tmp_path, cfg)
    assert "pi_1 (`tiny-mistral/sppo/mine/iter1/train/checkpoint`)" in text
    assert "answered each prompt of `train.jsonl`" in text
    assert "(pairrm: `my-pairrm`)" in text


# --- eval.benchmarks in the card -------------------------------------------------------------


def card_of(evaluation: dict) -> str:
    cfg = compose_cfg("model=tiny-mistral", "logger=none")
    metrics = {"log_history": [], "summary": {"train_loss": 0.5}}
    return model_card(cfg, metrics, [evaluation], "cmd")


def test_evals_against_several_references_sit_side_by_side_in_the_card():
    """Each eval's win rates under its own reference's name; a benchmark that two evals ran
    (its figures do not depend on the reference) once."""
    cfg = compose_cfg("model=tiny-mistral", "logger=none")
    metrics = {"log_history": [], "summary": {"train_loss": 0.5}}
    base = ALPACA | {"mt_bench": MT_BENCH}
    earlier = base | {"reference": "tiny-mistral-sppo-x-iter1", "win_rate": 0.52}
    card = ModelCard(model_card(cfg, metrics, [base, earlier], "cmd"))
    names = [r.metric_name for r in card.data.eval_results]
    assert f"win_rate vs {ALPACA['reference']} ({ALPACA['judge']})" in names
    assert f"win_rate vs tiny-mistral-sppo-x-iter1 ({ALPACA['judge']})" in names
    assert names.count("MT-Bench score (gpt-4)") == 1 and len(names) == len(set(names))
    text = " ".join(card.text.split())
    assert text.index(f"Against `{ALPACA['reference']}`") < text.index(
        "Against `tiny-mistral-sppo-x-iter1`"
    )
    empty = model_card(cfg, metrics, [], "cmd")
    assert "Not evaluated yet" in empty


def test_a_checkpoint_trained_on_a_pairs_file_names_that_file_not_self_play(tmp_path):
    """What ran is what the card says: the pairs file and its sha256 (as sha256sum prints it),
    without the self-play settings that did not apply; its name, not its local path."""
    pairs = tmp_path / "hybrid.jsonl"
    pairs.write_bytes(Path("tests/data/pairs_tiny.jsonl").read_bytes())
    command = f"python -m src.main experiment=tiny-wpo-hb stage=train training.pairs={pairs}"
    cfg = compose_cfg(*command.split()[3:], "logger=none")
    metrics = {"log_history": [], "summary": {"train_loss": 0.5}}
    text = model_card(cfg, metrics, [], command)
    assert_no_local_path(text, tmp_path, cfg)
    digest = hashlib.sha256(pairs.read_bytes()).hexdigest()
    card = ModelCard(text)
    said = " ".join(card.text.split())
    assert "WPO preference optimisation of `tiny-mistral` on the pairs of `hybrid.jsonl`," in said
    assert f"| training.pairs | hybrid.jsonl (sha256 {digest}) |" in card.text
    assert "self-play" not in card.text and card.data.datasets is None
    for row in ("method.K", "ranker", "generation", "data.prompts"):
        assert f"| {row} |" not in card.text, row
    assert f"# training.pairs: the file of sha256 {digest}\npython -m src.main" in card.text


def test_the_card_carries_each_benchmark_with_its_judge_and_reads_back():
    from huggingface_hub.repocard_data import model_index_to_eval_results

    text = card_of(
        ALPACA | {"mt_bench": MT_BENCH, "arena_hard": ARENA_HARD, "leaderboard": LEADERBOARD}
    )
    card = ModelCard(text)
    results = card.data.eval_results
    by = {(r.dataset_name, r.metric_type): r for r in results}

    mt = by["MT-Bench", "mt_bench"]
    assert (mt.metric_value, mt.metric_name) == (7.12, "MT-Bench score (gpt-4)")
    assert mt.dataset_args == {"judge": "gpt-4"} and mt.task_type == "text-generation"
    assert by["MT-Bench", "turn_2"].metric_value == 6.75
    assert by["MT-Bench", "turn_2"].metric_name == "MT-Bench turn 2 (gpt-4)"

    arena = by["Arena-Hard-Auto v0.1", "win_rate"]
    assert arena.metric_value == 55.32  # percent, as its leaderboard
    assert arena.metric_name == "Arena-Hard v0.1 win rate % vs gpt-4-0314 (qwen-judge@local)"
    assert arena.dataset_args == {"judge": "qwen-judge@local", "baseline": "gpt-4-0314"}

    # the Open LLM Leaderboard's rows as its bot writes them (UCLA-AGI's SPPO cards): the same
    # YAML, but for the value and the source's ?query=
    (name,) = [entry["name"] for entry in card.data.to_dict()["model-index"]]
    _, read_back = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == card.data.model_name and len(read_back) == len(results)
    model_index = card.data.to_dict()["model-index"][0]["results"]
    ifeval = next(e for e in model_index if e["dataset"]["name"] == "IFEval (0-Shot)")
    assert ifeval == {
        "task": {"type": "text-generation", "name": "Text Generation"},
        "dataset": {"name": "IFEval (0-Shot)", "type": "HuggingFaceH4/ifeval",
                    "args": {"num_few_shot": 0}},
        "metrics": [{"type": "inst_level_strict_acc and prompt_level_strict_acc",
                     "value": 68.28, "name": "strict accuracy"}],
        "source": {"url": "https://huggingface.co/spaces/open-llm-leaderboard/open_llm_leaderboard",
                   "name": "Open LLM Leaderboard"},
    }  # fmt: skip
    mmlu_pro = next(e for e in model_index if e["dataset"]["name"] == "MMLU-PRO (5-shot)")
    assert mmlu_pro["dataset"] == {
        "name": "MMLU-PRO (5-shot)", "type": "TIGER-Lab/MMLU-Pro", "config": "main",
        "split": "test", "args": {"num_few_shot": 5},
    }  # fmt: skip
    leaderboard = {
        r.dataset_name: (r.dataset_type, r.metric_type, r.metric_name, r.metric_value)
        for r in results
        if r.source_name == "Open LLM Leaderboard"
    }
    assert leaderboard == {
        "IFEval (0-Shot)": ("HuggingFaceH4/ifeval",
                            "inst_level_strict_acc and prompt_level_strict_acc",
                            "strict accuracy", 68.28),
        "BBH (3-Shot)": ("BBH", "acc_norm", "normalized accuracy", 29.74),
        "MATH Lvl 5 (4-Shot)": ("hendrycks/competition_math", "exact_match", "exact match", 7.33),
        "GPQA (0-shot)": ("Idavidrein/gpqa", "acc_norm", "acc_norm", 2.01),
        "MuSR (0-shot)": ("TAUR-Lab/MuSR", "acc_norm", "acc_norm", 3.09),
        "MMLU-PRO (5-shot)": ("TIGER-Lab/MMLU-Pro", "acc", "accuracy", 29.38),
        # v1's, raw in percent, at v1's leaderboard
        "AI2 Reasoning Challenge (25-Shot)": ("ai2_arc", "acc_norm", "normalized accuracy", 65.19),
        "TruthfulQA (0-shot)": ("truthful_qa", "mc2", None, 58.04),
    }  # fmt: skip
    arc = by["AI2 Reasoning Challenge (25-Shot)", "acc_norm"]
    assert (arc.dataset_config, arc.dataset_split, arc.dataset_args) == (
        "ARC-Challenge",
        "test",
        {"num_few_shot": 25},
    )
    assert arc.source_url == "https://huggingface.co/spaces/HuggingFaceH4/open_llm_leaderboard"

    # the body: a line per benchmark, each judged one naming its judge
    body = " ".join(card.text.split())
    assert (
        "- MT-Bench (80 questions), judged by `gpt-4`: 7.12 (turn 1 7.50, turn 2 6.75), the mean "
        "of 159 rated turns; 1 judgments without a rating."
    ) in body
    assert (
        "- Arena-Hard-Auto v0.1 (500 questions), judged by `qwen-judge@local` against "
        "`gpt-4-0314`: win rate 55.3 % [50.1, 60.2] (95 % bootstrap interval); 2 games without "
        "a verdict."
    ) in body
    assert (
        "- Open LLM Leaderboard, by lm-evaluation-harness: v2 normalised (0-100) average 23.31 "
        "over 6 benchmarks: IFEval (0-Shot) 68.28, BBH (3-Shot) 29.74, MATH Lvl 5 (4-Shot) 7.33, "
        "GPQA (0-shot) 2.01, MuSR (0-shot) 3.09, MMLU-PRO (5-shot) 29.38; v1 (raw, in percent): "
        "AI2 Reasoning Challenge (25-Shot) 65.19, TruthfulQA (0-shot) 58.04."
    ) in body


def test_no_row_for_a_benchmark_not_run_or_a_score_that_is_none():
    unrated = MT_BENCH | {"mt_bench": None, "turn_1": None, "turn_2": None, "rated": 0}
    no_verdict = ARENA_HARD | {"win_rate": None, "lower": None, "upper": None}
    only_gpqa = {"raw": {"gpqa": 0.3}, "normalised": {"gpqa": 2.0, "average": 2.0}, "unscored": {}}
    card = ModelCard(
        card_of(ALPACA | {"mt_bench": unrated, "arena_hard": no_verdict, "leaderboard": only_gpqa})
    )
    # none of the three run: the judge's win rates' rows only, no line
    plain = ModelCard(card_of(ALPACA))
    alpaca = {r.dataset_name for r in plain.data.eval_results}
    assert alpaca and "MT-Bench" not in plain.text and "Open LLM Leaderboard" not in plain.text

    names = {r.dataset_name for r in card.data.eval_results}
    assert names == alpaca | {"GPQA (0-shot)"}
    body = " ".join(card.text.split())
    assert "judged by `gpt-4`: no turn rated; 1 judgments without a rating." in body
    assert "against `gpt-4-0314`: no win rate (no verdict counted); 2 games" in body
    assert "average 2.00 over 1 benchmarks: GPQA (0-shot) 2.00." in body


def test_a_benchmark_scored_on_fewer_questions_than_it_asked_says_so():
    """A record that holds both counts: MT-Bench's questions with a rated turn, Arena-Hard's
    counted of those asked (a record made before says its one figure, as above)."""
    partial = {"mt_bench": MT_BENCH | {"scored": 79}, "arena_hard": ARENA_HARD | {"asked": 510}}
    body = " ".join(ModelCard(card_of(ALPACA | partial)).text.split())
    assert "- MT-Bench (79 of 80 questions scored), judged by `gpt-4`: 7.12" in body
    assert "- Arena-Hard-Auto v0.1 (500 of 510 questions scored), judged by " in body
    whole = {"mt_bench": MT_BENCH | {"scored": 80}, "arena_hard": ARENA_HARD | {"asked": 500}}
    body = " ".join(ModelCard(card_of(ALPACA | whole)).text.split())
    assert "MT-Bench (80 questions)" in body and "Arena-Hard-Auto v0.1 (500 questions)" in body


def test_arena_hard_v2_shows_each_category_against_its_own_baseline():
    """v2.0 is never pooled: its hard prompts' figure first, each other category on its own line
    and model-index row, each naming its baseline."""
    hard = {"questions": 500, "win_rate": 0.3, "lower": 0.25, "upper": 0.35,
            "baseline": "o3-mini-2025-01-31"}  # fmt: skip
    creative = {"questions": 250, "win_rate": 0.6, "lower": 0.55, "upper": 0.65,
                "baseline": "gemini-2.0-flash-001"}  # fmt: skip
    v2 = ARENA_HARD | {
        "version": "v2.0", "level": 0.9, "category": "hard_prompt", "baseline": hard["baseline"],
        "categories": {"hard_prompt": hard, "creative_writing": creative}, **{
            k: hard[k] for k in ("questions", "win_rate", "lower", "upper")},
    }  # fmt: skip
    card = ModelCard(card_of(ALPACA | {"arena_hard": v2}))
    body = " ".join(card.text.split())
    assert (
        "- Arena-Hard-Auto v2.0 (500 questions), judged by `qwen-judge@local` against "
        "`o3-mini-2025-01-31`: win rate 30.0 % [25.0, 35.0] (90 % bootstrap interval)"
    ) in body
    assert ("creative_writing (250 questions scored) against `gemini-2.0-flash-001`: win rate "
            "60.0 % [55.0, 65.0] (90 % bootstrap interval).") in body  # fmt: skip
    rows = {r.metric_name: r.metric_value for r in card.data.eval_results
            if r.dataset_type == "arena_hard"}  # fmt: skip
    assert rows == {
        "Arena-Hard v2.0 hard_prompt win rate % vs o3-mini-2025-01-31 (qwen-judge@local)": 30.0,
        "Arena-Hard v2.0 creative_writing win rate % vs gemini-2.0-flash-001 (qwen-judge@local)":
            60.0,
    }  # fmt: skip


def test_a_leaderboard_run_on_its_first_documents_only_is_in_the_body_not_the_model_index():
    limited = LEADERBOARD | {"limit": 2}
    card = ModelCard(card_of(ALPACA | {"leaderboard": limited}))
    assert not [r for r in card.data.eval_results if r.source_name == "Open LLM Leaderboard"]
    body = " ".join(card.text.split())
    assert "on each task's first 2 documents only, a check of the setup, not the benchmark" in body


def test_a_judge_served_from_a_local_folder_is_not_shown_by_its_path(tmp_path):
    judge = str(tmp_path / "judges" / "qwen-72b")
    text = card_of(ALPACA | {"mt_bench": MT_BENCH | {"judge": judge}})
    assert str(tmp_path) not in text
    assert "MT-Bench score (qwen-72b)" in text


def test_every_leaderboard_benchmark_has_its_model_index_row():
    from src.evaluation.leaderboard import V1, V2
    from src.stages.report.cards import LEADERBOARD_ROWS

    assert set(LEADERBOARD_ROWS) == set(V2) | set(V1)
