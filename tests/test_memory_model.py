"""The memory model (benchmarks/memory_model.py) counts parameters as the real models and peft do,
and the README's table is the one it prints."""

from __future__ import annotations

import re

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from benchmarks.memory_model import GEMMA_2_9B, MISTRAL_7B, Shape, table
from src.config import REPO_ROOT
from src.training.adapters import add_adapter
from tests.helpers import compose_cfg


def shape_of(config, tied: bool) -> Shape:
    return Shape(
        config.model_type,
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        tied=tied,
        eager_attention=False,
    )


@pytest.mark.parametrize("model", ["tiny-mistral", "tiny-gemma2"])
def test_parameter_and_adapter_counts_are_the_real_models(model, tiny_dir):
    """On the tiny models of both architectures: the model's parameters (norms aside) and the
    trainable parameters peft adds with the default targets at rank 16."""
    cfg = compose_cfg(f"model={model}", "training.peft=lora")
    policy = AutoModelForCausalLM.from_pretrained(cfg.run.init_policy)
    shape = shape_of(policy.config, tied=bool(policy.config.tie_word_embeddings))
    norms = sum(p.numel() for n, p in policy.named_parameters() if "norm" in n)
    assert shape.params == policy.num_parameters() - norms
    adapted = add_adapter(policy, cfg)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert shape.lora_params(cfg.training.lora.rank) == trainable


def test_the_real_models_shapes_give_their_published_sizes():
    assert MISTRAL_7B.params == pytest.approx(7.24e9, rel=1e-3)  # Mistral-7B: 7.24B
    assert GEMMA_2_9B.params == pytest.approx(9.24e9, rel=1e-3)  # Gemma-2-9B: 9.24B
    config = AutoConfig.for_model("mistral")  # the library's defaults are Mistral-7B's shape
    assert shape_of(config, tied=False) == Shape(
        "mistral", *(getattr(MISTRAL_7B, f) for f in ("layers", "hidden", "intermediate")),
        MISTRAL_7B.vocab, MISTRAL_7B.heads, MISTRAL_7B.kv_heads, MISTRAL_7B.head_dim,
        tied=False, eager_attention=False,
    )  # fmt: skip


def test_the_readmes_table_is_the_models():
    readme = (REPO_ROOT / "README.md").read_text()
    rows = table().splitlines()[2:]
    assert rows and all(row in readme for row in rows), "re-run python -m benchmarks.memory_model"
    assert re.search(r"Gemma-2-9B \| QLoRA r=16, one GPU \| [\d.]+ \| fits", readme)
