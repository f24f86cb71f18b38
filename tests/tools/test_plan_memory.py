"""The memory model (`src.plan.memory`, `src.core.shapes`): its parameter counts are the real
models' and peft's, its training peaks are the H200's (every configuration of
benchmarks/results/train_memory_gpu.json within 10 %), and the README's table is the one it
prints."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from src.config import REPO_ROOT
from src.core.shapes import (
    GEMMA_2_9B,
    JUDGE_PARAMS,
    MISTRAL_7B,
    REAL_MODELS,
    Shape,
    real_shape,
    shape_of,
)
from src.plan.memory import GIB, Step, table, train_memory
from src.training.adapters import add_adapter
from tests.support.helpers import compose_cfg

MEASURED = [  # one GPU: LoRA and full weights; ZeRO-3 over that one GPU (D = 1)
    REPO_ROOT / "benchmarks" / "results" / f"{name}.json"
    for name in ("train_memory_gpu", "train_memory_gpu_zero3")
]
BENCHMARK_NAMES = {  # the benchmark's names of the real models
    "mistral-7b-instruct-v0.2": "mistralai/Mistral-7B-Instruct-v0.2",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
}


@pytest.mark.parametrize("model", ["tiny-mistral", "tiny-gemma2"])
def test_parameter_and_adapter_counts_are_the_real_models(model, tiny_dir):
    """On the tiny models of both architectures, their shapes read from their config.json: the
    model's parameters (norms aside) and the trainable parameters peft adds with the default
    targets at rank 16."""
    cfg = compose_cfg(f"model={model}", "training.peft=lora")
    policy = AutoModelForCausalLM.from_pretrained(cfg.run.init_policy)
    shape = shape_of(cfg.run.init_policy)
    assert shape.tied == bool(policy.config.tie_word_embeddings)
    norms = sum(p.numel() for n, p in policy.named_parameters() if "norm" in n)
    assert shape.params == policy.num_parameters() - norms
    adapted = add_adapter(policy, cfg)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert shape.lora_params(cfg.training.lora.rank) == trainable


def test_the_real_models_shapes_give_their_published_sizes():
    assert MISTRAL_7B.params == pytest.approx(7.24e9, rel=1e-3)  # Mistral-7B: 7.24B
    assert GEMMA_2_9B.params == pytest.approx(9.24e9, rel=1e-3)  # Gemma-2-9B: 9.24B
    assert GEMMA_2_9B.tied and GEMMA_2_9B.eager_attention and GEMMA_2_9B.softcapped
    assert not (MISTRAL_7B.tied or MISTRAL_7B.eager_attention or MISTRAL_7B.softcapped)
    config = AutoConfig.for_model("mistral").to_dict()  # the library's defaults: Mistral-7B's
    assert Shape.from_config("Mistral-7B", config, "sdpa") == MISTRAL_7B


@pytest.mark.parametrize("model", list(REAL_MODELS))
def test_the_real_models_configs_build_with_their_config_classes(model):
    import transformers

    config_class, _, kwargs, attention = REAL_MODELS[model]
    config = getattr(transformers, config_class)(**kwargs, attn_implementation=attention)
    assert Shape.from_config(real_shape(model).name, config.to_dict(), attention) == real_shape(
        model
    )


# Skywork-Reward-V2's judges: their base models' published configs (Llama-3.1-8B, Qwen3-1.7B)
SKYWORK_V2 = {
    "Skywork/Skywork-Reward-V2-Llama-3.1-8B": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8)),
    "Skywork/Skywork-Reward-V2-Qwen3-1.7B": ("Qwen3Config", dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)),
}  # fmt: skip


@pytest.mark.parametrize("judge", list(SKYWORK_V2))
def test_a_skywork_judges_recorded_size_is_its_one_label_classifier(judge):
    """The plan's size of the judge: the parameters of the sequence classifier that transformers
    builds at its base model's config with one label (on the meta device: nothing allocated)."""
    import torch
    import transformers

    config_class, kwargs = SKYWORK_V2[judge]
    config = getattr(transformers, config_class)(**kwargs, num_labels=1)
    with torch.device("meta"):
        classifier = transformers.AutoModelForSequenceClassification.from_config(config)
    assert JUDGE_PARAMS[judge] == pytest.approx(classifier.num_parameters(), rel=1e-3)


def measured_rows() -> list[dict]:
    return [row for path in MEASURED for row in json.loads(path.read_text())["rows"]]


def modelled(row: dict):
    shape = real_shape(BENCHMARK_NAMES[row["model"]])
    step = Step(
        sequences=row["sequences"],
        tokens=row["tokens"],
        response_rows=row["rows_own_head"],
        chunk=256 if row["head"] == "streamed" else None,
    )
    return train_memory(shape, step, row["mode"], devices=1)


ROW_ID = "{model}-{mode}-{head}-{sequences}x{tokens}".format


@pytest.mark.parametrize("row", measured_rows(), ids=lambda r: ROW_ID(**r))
def test_a_training_steps_peak_is_the_h200s_within_ten_percent(row):
    """One SPPO step of each real model, LoRA, full weights and ZeRO-3, streamed head and the
    model's own, at 4 x 1,024 and 8 x 2,048 (torch's peak allocation of the second step)."""
    memory = modelled(row)
    measured = row["measured"]["step_2_peak"]
    assert memory.peak == pytest.approx(measured, rel=0.10), (
        f"model {memory.peak / GIB:.2f} GiB ({memory.peak_phase}), measured {measured / GIB:.2f}"
    )
    # and the phase that holds the peak is the one the GPU's peak fell in
    optimiser = row["measured"]["step_2_peak_phase"].endswith("optimiser step")
    assert (memory.peak_phase == "optimiser step") == optimiser


@pytest.mark.parametrize(
    "row", [r for r in measured_rows() if r["head"] == "streamed"], ids=lambda r: ROW_ID(**r)
)
def test_what_the_gpu_holds_is_the_h200s_within_twelve_percent(row):
    """With the streamed head (the default): the CUDA context and the allocator's reservation
    at its peak, against the footprint the plan checks a GPU's memory with."""
    memory = modelled(row)
    measured = row["measured"]["reserved_peak"] + row["measured"]["context_end"]
    assert memory.footprint == pytest.approx(measured, rel=0.12), (
        f"model {memory.footprint / GIB:.2f} GiB, measured {measured / GIB:.2f}"
    )


def test_deepspeeds_defaults_are_the_models_and_the_project_leaves_them():
    import torch
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from src.plan.memory import GATHERED, REDUCE_BUCKET, SUB_GROUP
    from src.training.arguments import deepspeed_config

    defaults = DeepSpeedZeroConfig()
    assert (defaults.max_live_parameters, defaults.reduce_bucket_size, defaults.sub_group_size) == (
        GATHERED, REDUCE_BUCKET, SUB_GROUP
    )  # fmt: skip
    zero = deepspeed_config(compose_cfg("hardware=node-8gpu"), torch.bfloat16)["zero_optimization"]
    for key in ("stage3_max_live_parameters", "reduce_bucket_size", "sub_group_size"):
        assert key not in zero


def test_the_docs_table_is_the_models():
    doc = (REPO_ROOT / "docs" / "memory.md").read_text()
    rows = table().splitlines()[2:]
    assert rows and all(row in doc for row in rows), "re-run python -m src.plan.memory"
    assert re.search(r"Gemma-2-9B \| QLoRA r=16, one GPU \| [\d.]+ \| fits", doc)


def test_the_readmes_plan_figures_are_the_plans():
    """The README's "Will it fit?" rows, from the plan of each command they name."""
    from src.plan.stages import plan

    readme = (REPO_ROOT / "README.md").read_text()
    for command, generate, train in [
        ("experiment=mistral-7b-instruct-sppo hardware=node-8gpu", 67.1, 29.0),
        ("experiment=gemma-2-9b-it-sppo hardware=node-8gpu", 67.1, 31.4),
        ("experiment=mistral-7b-instruct-sppo-qlora hardware.gpu_memory_gb=24", 18.3, 9.1),
        ("experiment=gemma-2-9b-it-sppo-qlora hardware.gpu_memory_gb=24", 28.5, 13.4),
    ]:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{command}` |"))
        planned = plan(compose_cfg(*command.split()))
        stages = {p.stage: p.memory.footprint / GIB for p in planned if p.memory is not None}
        assert (round(stages["generate"], 1), round(stages["train"], 1)) == (generate, train)
        assert f"{generate} GiB" in row and f"{train} GiB" in row
