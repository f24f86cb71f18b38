"""Each iteration's checkpoint carries a model card the Hub's own library parses: metadata that
round-trips, the eval results as model-index once the iteration's eval ran, and a recipe that is
the run's resolved config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from src.core.policy import seal_checkpoint
from tests.helpers import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, tiny_dir) -> Path:
    root = tmp_path_factory.mktemp("cards")
    result = cli(root, "eval.enabled=true", "iter=2", "training.seed=7")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (root / "tiny-mistral" / "sppo").iterdir()
    return run


def table(text: str, heading: str) -> dict[str, str]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", section, re.M)[1:])


@pytest.mark.parametrize("t", [1, 2])
def test_the_card_parses_and_round_trips(lineage, t):
    checkpoint = lineage / f"iter{t}" / "train" / "checkpoint"
    card = ModelCard.load(checkpoint / "README.md")
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert set(data["tags"]) == {"selfplay-lab", "sppo", f"iter{t}"}
    assert "README.md" not in "".join(seal_checkpoint(checkpoint)), "the card is never sealed"


@pytest.mark.parametrize("t", [1, 2])
def test_the_eval_results_are_the_model_index(lineage, t):
    evaluation = json.loads((lineage / f"iter{t}" / "eval" / "eval.json").read_text())
    card = ModelCard.load(lineage / f"iter{t}" / "train" / "checkpoint" / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {
        "win_rate": round(evaluation["win_rate"], 4),
        "lc_win_rate": round(evaluation["lc_win_rate"], 4),
    }
    assert f"[{evaluation['win_rate_low']:.3f}, {evaluation['win_rate_high']:.3f}]" in card.text


@pytest.mark.parametrize("t", [1, 2])
def test_the_recipe_is_the_runs_resolved_config(lineage, t):
    stage = lineage / f"iter{t}" / "train"
    config = OmegaConf.load(stage / "config.yaml")
    text = (stage / "checkpoint" / "README.md").read_text()
    recipe = table(text, "Recipe")
    tr = config.training
    assert recipe["method.K"] == str(config.method.K) == "3"
    assert recipe["method.eta / method.beta"] == f"{config.method.eta:g} / {config.method.beta:g}"
    assert recipe["method.loss"] == config.method.loss
    assert recipe["training.learning_rate"] == f"{tr.learning_rate:g}"
    assert recipe["training.seed"] == str(tr.seed) == "7"
    assert recipe["training.global_batch_size"].startswith(f"{tr.global_batch_size} = ")
    assert recipe["training.max_length / max_prompt_length"] == (
        f"{tr.max_length} / {tr.max_prompt_length}"
    )
    assert recipe["data.prompts"] == config.data.prompts
    summary = json.loads((stage / "metrics.json").read_text())["summary"]
    training = table(text, "Training")
    assert training["steps"] == str(summary["steps"])
    assert training["train_loss (mean over steps)"] == f"{summary['train_loss']:.4f}"
    command = (stage / "config.yaml").read_text().splitlines()[0].removeprefix("# ")
    assert f"```bash\n{command}\n```" in text
    if t == 2:
        assert str(lineage / "iter1" / "train" / "checkpoint") in text
