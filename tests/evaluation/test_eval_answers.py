"""The eval's answer cache (src/evaluation/answers.py): keyed by what the answers depend on, the
model by the content of the files it is loaded from (src/core/policy.py `weights_signature`),
not by where its folder lies nor by when they were written."""

from __future__ import annotations

import json
import os

from src.core.policy import TINY_BUILD, weights_signature
from src.evaluation.answers import Answerer, identity
from src.generation.prompts import Prompt
from tests.support.helpers import compose_cfg


def test_the_answers_key_follows_the_models_content_not_its_folder_or_its_times(tmp_path):
    """A tiny model in a clone's .cache/tiny: the clone renamed (its build record rewritten with
    the new folder, as a moved build's is) or its record touched keeps the key; a weight byte
    changed makes another."""
    cfg = compose_cfg("model=tiny-mistral", "logger=none")
    instructions = [Prompt("p0", "Name a colour.")]

    def key(folder) -> str:
        who = Answerer("tiny-mistral", str(folder), weights_signature(str(folder), None))
        return identity(cfg, who, instructions)

    def built(folder) -> None:
        record = {"folder": str(folder), "seed": 0}
        (folder / TINY_BUILD).write_text(json.dumps(record))

    model = tmp_path / "clone" / ".cache" / "tiny" / "tiny-mistral"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"\x00\x01weights")
    (model / "config.json").write_text('{"model_type": "mistral"}')
    built(model)
    first = key(model)

    (tmp_path / "clone").rename(tmp_path / "renamed")
    model = tmp_path / "renamed" / ".cache" / "tiny" / "tiny-mistral"
    built(model)
    assert key(model) == first
    os.utime(model / TINY_BUILD, (0, 0))
    assert key(model) == first
    (model / "model.safetensors").write_bytes(b"\x00\x02weights")
    assert key(model) != first
