"""A model card is made to be pushed to the Hub: it names hub ids, and paths relative to the run
root, the repository or the tiny models' folder, never a local absolute path (src/stages/cards.py,
`card_value` and `card_text`); the data's dataset card, pushed beside it, neither."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from src.config import REPO_ROOT, PathsConfig
from src.stages.cards import card_text, card_value, model_card
from tests.helpers import compose_cfg

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
    text = model_card(cfg, metrics, evaluation, command)
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
