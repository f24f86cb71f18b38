"""`python -m src.explain`: every config key's documentation, read from its one home in
src/config/."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from src.config import REPO_ROOT, Config
from src.core.fingerprints import flatten
from src.explain import choices, field_docs, main, schema_keys
from tests.support.helpers import compose_cfg


def test_every_config_key_is_documented_in_its_dataclass():
    undocumented = [key for key, kind, _, doc in schema_keys() if kind != "section" and not doc]
    assert undocumented == []


def test_the_keys_are_the_composed_configs():
    listed = {key for key, kind, *_ in schema_keys() if kind != "section"}
    composed = set(flatten(compose_cfg("model=tiny-mistral", "hardware=slurm-cpu").as_tree()))
    assert composed <= listed and len(listed) > 150


@dataclass
class Example:
    # two lines
    # above a field
    above: int = 1
    beside: str = "x"  # at the end of its line
    plain: bool = True
    spanning: list[int] | None = None  # fmt: skip


def test_a_comment_above_or_beside_a_field_is_its_documentation():
    assert field_docs(Example) == {
        "above": "two lines above a field",
        "beside": "at the end of its line",
        "plain": "",
        "spanning": "",
    }


def test_a_choice_lists_what_each_of_its_names_means(capsys):
    assert set(choices("ranker.win_prob")) == {"bt", "direct"}
    assert choices("training.learning_rate") == {}
    assert main(["generation.long_prompts"]) == 0
    out = capsys.readouterr().out
    assert "generation.long_prompts: skip | truncate = skip" in out
    assert "truncate: keep the end of the prompt" in out


def test_a_section_lists_its_keys_with_defaults(capsys):
    assert main(["training.lora"]) == 0
    out = capsys.readouterr().out
    assert "training.lora.rank: int = 16" in out and "training.learning_rate" not in out
    assert Config.__doc__ is not None


def test_an_unknown_key_is_one_line_and_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "src.explain", "trainin.lr"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no config key starts with trainin.lr; run `python -m src.explain` for every key"
    ]


def test_the_entry_points_help_names_it():
    result = subprocess.run(
        [sys.executable, "-m", "src.main", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "python -m src.explain" in result.stdout
