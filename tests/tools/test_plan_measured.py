"""The plan against the memory the stages measure on CPU: the tiny models of both architectures,
trained with full weights and with a LoRA adapter, and generating, each stage run for real
(`python -m src.main`) at a size where its tensors, not the interpreter, make its memory. The
stage prints its peak resident memory above its start (the train stage also keeps it in
done.json); the plan's figure for the same overrides must be within 20 % of it.

The sizes differ from those the CPU terms of src/plan/memory.py were measured at
(docs/memory.md, "Checked on CPU: the plan against the stages")."""

from __future__ import annotations

import json
import random
import re

import pytest

from src.config import Stage
from src.plan.memory import GIB
from src.plan.stages import plan
from tests.support.helpers import compose_cfg, run_main_process

WORDS = [
    "the", "model", "learns", "from", "pairs", "of", "answers", "which", "one", "people",
    "prefer", "and", "why", "it", "matters", "for", "a", "chat", "assistant", "to", "be",
    "helpful", "honest", "clear", "about", "what", "knows",
]  # fmt: skip
NEW_TOKENS = 16
TOLERANCE = 0.20  # the plan within 20 % of the measured peak
PEAK = re.compile(r"\[(\w+)\] peak memory ([\d.]+) GiB .*; the plan: ([\d.]+) GiB")

# each test trains or generates at the measured shapes in a fresh process (~10 s)
pytestmark = pytest.mark.slow


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def measured_and_planned(result, stage: Stage) -> tuple[float, float]:
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [m for m in PEAK.finditer(result.stderr) if m.group(1) == stage.value]
    assert len(lines) == 1, result.stderr[-3000:]
    return float(lines[0].group(2)) * GIB, float(lines[0].group(3)) * GIB


@pytest.mark.parametrize("peft", ["none", "lora"])
@pytest.mark.parametrize(
    "model, pairs_per_step, tokens", [("tiny-gemma2", 3, 768), ("tiny-mistral", 4, 1536)]
)
def test_training_peak_is_the_plans(model, pairs_per_step, tokens, peft, tmp_path, tiny_dir):
    """A step of `pairs_per_step` pairs of `tokens` tokens each (every response cut to fit),
    fp32, no checkpointing, the streamed head (the tiny models' training config): the step's
    peak, with the precomputed reference pass before it. Gemma-2's eager attention makes its
    memory quadratic in the length; Mistral's is linear, hence its longer pairs."""
    rng = random.Random(0)
    pairs = tmp_path / "pairs.jsonl"
    with pairs.open("w") as f:
        for i in range(2 * pairs_per_step):
            row = {"prompt_id": f"m{i}", "prompt": text(rng, 60), "chosen": text(rng, 2000)}
            row |= {"rejected": text(rng, 1900), "chosen_probs": 0.8, "chosen_probs_win": 0.7}
            f.write(json.dumps(row | {"chosen_probs_lose": 0.3}) + "\n")
    overrides = [
        f"model={model}",
        "hardware=cpu",
        "logger=none",
        "stage=train",
        f"training.pairs={pairs}",
        f"training.peft={peft}",
        f"training.per_device_batch_size={pairs_per_step}",
        f"training.global_batch_size={pairs_per_step}",
        f"training.max_length={tokens}",
    ]
    result = run_main_process(tmp_path / "runs", *overrides)
    measured, printed = measured_and_planned(result, Stage.train)
    planned = next(p for p in plan(compose_cfg(*overrides)) if p.stage == "train").memory
    assert printed == pytest.approx(planned.footprint, abs=0.0005 * GIB)
    record = json.loads(next((tmp_path / "runs").glob("**/train/done.json")).read_text())
    counts = record["counts"]
    assert counts["truncated_responses"] == counts["pairs_trained"]  # every pair the plan's length
    assert record["timings"]["peak_memory_gib"] * GIB == pytest.approx(measured, abs=0.0005 * GIB)
    assert planned.context < measured / 3  # the tensors make it, not the process's buffers
    print(f"{model}: measured {measured / 2**20:.1f} MiB, plan {planned.footprint / 2**20:.1f}")
    assert abs(planned.footprint - measured) <= TOLERANCE * measured, (
        f"plan {planned.footprint / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB: "
        f"{planned.terms()}"
    )


@pytest.mark.parametrize(
    "model, prompts, prompt_tokens", [("tiny-gemma2", 12, 768), ("tiny-mistral", 24, 1024)]
)
def test_generation_peak_is_the_plans(model, prompts, prompt_tokens, tmp_path, tiny_dir):
    """`prompts` prompts a call, each cut to `prompt_tokens`, 5 samples of up to 16 tokens (a
    batch decodes until its longest sample ends, which reaches the limit): the prefill (Gemma-2's
    eager scores, quadratic in the prompt) or the sampling (the KV cache) makes the peak."""
    rng = random.Random(1)
    prompt_file = tmp_path / "prompts.jsonl"
    with prompt_file.open("w") as f:
        for i in range(prompts):
            f.write(json.dumps({"prompt_id": f"q{i}", "prompt": text(rng, 900)}) + "\n")
    overrides = [
        f"model={model}",
        "hardware=cpu",
        "logger=none",
        "stage=generate",
        f"data.prompts={prompt_file}",
        "method.K=5",
        f"generation.batch_size={prompts}",
        f"generation.chunk_size={prompts}",
        f"generation.max_new_tokens={NEW_TOKENS}",
        "generation.long_prompts=truncate",
        f"training.max_prompt_length={prompt_tokens}",
        f"training.max_length={prompt_tokens + 256}",
    ]
    result = run_main_process(tmp_path / "runs", *overrides)
    measured, printed = measured_and_planned(result, Stage.generate)
    rows = [json.loads(r) for r in next((tmp_path / "runs").glob("**/responses-*.jsonl")).open()]
    assert max(n for r in rows for n in r["num_tokens"]) == NEW_TOKENS  # the plan's length
    planned = next(p for p in plan(compose_cfg(*overrides)) if p.stage == "generate").memory
    assert printed == pytest.approx(planned.footprint, abs=0.0005 * GIB)
    assert planned.context < measured / 3
    print(f"{model}: measured {measured / 2**20:.1f} MiB, plan {planned.footprint / 2**20:.1f}")
    assert abs(planned.footprint - measured) <= TOLERANCE * measured, (
        f"plan {planned.footprint / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB: "
        f"{planned.terms()}"
    )
