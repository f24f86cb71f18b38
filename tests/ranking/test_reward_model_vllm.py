"""`ranker.backend=vllm`: a reward model scored by vLLM's pooling engine, equal to transformers'
forward (the hf backend) within SCORE_ATOL, and ranking every prompt's K responses the same.

- The token scored is transformers' own by construction, whatever the model's pad token
  (`scored_tokens`), without an engine.
- What vLLM cannot serve is refused before an engine starts (exit 2): PairRM, tensor
  parallelism without vLLM, a model that is no one-label sequence classifier.
- The backend is an input of the rank and eval stages (their scores are another engine's), the
  engine's tensor parallelism none.
- An engine that dies while scoring is one line naming the model, what is kept and its log.
- One engine for the module (`python -m src.main stage=rank ... ranker=tiny-reward-model-vllm`,
  in this process): the stage's rows against the hf judge's scores of the same conversations.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch

from src.config import ConfigError, Stage
from src.core.artifacts import atomic_write_text, read_jsonl
from src.core.errors import EnvironmentFailure
from src.core.identity import stage_key
from src.core.records import Finished, write_record
from src.generation.vllm_processes import new_children
from src.ranking.reward_model import load_reward_model_judge, pooled_pad_id
from src.ranking.reward_model_vllm import VLLMRewardJudge, load_vllm_reward_judge, scored_tokens
from src.tiny import toy
from tests.support.helpers import compose_cfg, run_main

# vLLM's score against the hf forward's for the same conversation, tiny-rm32 in fp32 on CPU: the
# largest difference measured over the test's 96 conversations was 1.3e-6 (scores within +-4.4;
# the closest two responses of a prompt 1.4e-3 apart); docs/stages.md states this tolerance
SCORE_ATOL = 1e-5
K = 4


def tiny_classifier(pad_token_id: int):
    """A random one-label MistralForSequenceClassification, EOS 2, of a few dims."""
    from transformers import MistralConfig, MistralForSequenceClassification

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_labels=1,
        eos_token_id=2, pad_token_id=pad_token_id,
    )  # fmt: skip
    return MistralForSequenceClassification(config).eval()


def last_token_score(model, ids: list[int]) -> float:
    """The head on the last token's hidden state: what vLLM's pooler scores."""
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[:, -1]
        return float(model.score(hidden)[0, 0])


@pytest.mark.parametrize("pad", [2, 5], ids=["pad-is-eos", "pad-of-its-own"])
def test_the_token_vllm_scores_is_the_one_transformers_scores(pad):
    """A conversation that ends with the EOS (a chat template's end of turn), in a padded batch
    row as the hf judge pads it: transformers scores its last token that is not the pad token;
    vLLM, handed `scored_tokens`, its last, the same. Where the pad token is the EOS, handing vLLM
    the whole conversation would score another token."""
    model = tiny_classifier(pad)
    conversation = [1, 7, 9, 11, 2]
    row = torch.tensor([conversation + [pad] * 3])
    with torch.no_grad():
        hf = float(model(input_ids=row, attention_mask=(row != pad).long()).logits[0, 0])
    cut = scored_tokens(conversation, pad)
    assert cut == (conversation[:-1] if pad == 2 else conversation)
    assert last_token_score(model, cut) == pytest.approx(hf, abs=1e-6)
    if pad == 2:
        assert last_token_score(model, conversation) != pytest.approx(hf, abs=1e-3)


def test_the_pad_token_scored_against_is_the_models_else_the_tokenizers_else_the_eos():
    def config(pad):
        return SimpleNamespace(get_text_config=lambda: SimpleNamespace(pad_token_id=pad))

    def tokenizer(pad):
        return SimpleNamespace(pad_token_id=pad, eos_token_id=2)

    assert pooled_pad_id(config(7), tokenizer(5)) == 7
    assert pooled_pad_id(config(None), tokenizer(5)) == 5
    assert pooled_pad_id(config(None), tokenizer(None)) == 2
    assert scored_tokens([2, 2], 2) == [2], "a row of pad tokens: transformers reads its first"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ranker=tiny-pairrm", "ranker.backend=vllm"],
         r"^ranker\.backend='vllm': vLLM serves reward models .*PairRM has no vLLM engine"),
        (["ranker@eval.judge=tiny-pairrm", "eval.judge.backend=vllm"],
         r"^eval\.judge\.backend='vllm': vLLM serves reward models"),
        (["ranker=tiny-reward-model", "ranker.tensor_parallel_size=2"],
         r"^ranker\.tensor_parallel_size=2: splits vLLM's engine .*ranker\.backend=vllm\)$"),
    ],
)  # fmt: skip
def test_what_vllm_cannot_serve_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_cfg("model=tiny-mistral", *overrides)


@pytest.mark.parametrize(
    ("model", "override", "message"),
    [
        ("tiny-mistral", [], r"^ranker\.backend=vllm: vLLM serves a reward model that is a "
         r"\*ForSequenceClassification with one label; .* is a MistralForCausalLM: use "
         r"ranker\.backend=hf$"),
        ("tiny-rm", ["ranker.source_max_length=4000"], r"^ranker\.source_max_length \+ "
         r"ranker\.candidate_max_length \+ \d+ for the chat template = \d+ tokens is more than "
         r".*tiny-rm takes \(max_position_embeddings=4096\): lower them$"),
    ],
    ids=["a-causal-lm", "longer-than-its-positions"],
)  # fmt: skip
def test_what_the_engine_cannot_serve_is_refused_before_it_starts(
    tiny_dir, model, override, message
):
    cfg = compose_cfg("model=tiny-mistral", "ranker=tiny-reward-model-vllm",
                      f"ranker.model={tiny_dir / model}", *override)  # fmt: skip
    before = psutil.Process().children()
    with pytest.raises(ConfigError, match=message):
        load_vllm_reward_judge(cfg.ranker, "ranker", cfg.generation, torch.device("cpu"), None, "")
    assert psutil.Process().children() == before, "no engine was started"


def test_the_backend_is_an_input_of_the_judges_stages_its_tensor_parallelism_none():
    def fingerprint(stage: Stage, *overrides: str) -> str:
        cfg = compose_cfg("model=tiny-mistral", "ranker=tiny-reward-model", *overrides)
        return stage_key(cfg.as_tree(), stage)

    for stage in (Stage.rank, Stage.eval):
        assert fingerprint(stage) != fingerprint(stage, "ranker.backend=vllm")
        served = fingerprint(stage, "ranker.backend=vllm")
        assert served == fingerprint(stage, "ranker.backend=vllm", "ranker.tensor_parallel_size=2")


def test_an_engine_that_dies_while_scoring_names_the_model_what_is_kept_and_its_log(tmp_path):
    """The engine's step, waited for with a look at its processes (src/generation/vllm_client.py,
    which the generate stage's tests drive through every way an engine ends): here its core
    already gone."""
    pytest.importorskip("vllm", reason="vLLM is not installed here (make install-vllm adds it)")
    core = subprocess.Popen([sys.executable, "-c", "pass"])
    core.wait()
    judge = VLLMRewardJudge.__new__(VLLMRewardJudge)
    engine = SimpleNamespace(engine_core=SimpleNamespace(outputs_queue=queue.Queue()))
    judge.llm, judge.engine_pids, judge.path = SimpleNamespace(llm_engine=engine), [core.pid], "rm"
    judge.log, judge.doing, judge.after_death = tmp_path / "vllm.log", "scoring", "kept, resume"
    with pytest.raises(EnvironmentFailure) as raised:
        judge.step()
    assert str(raised.value) == (
        f"vLLM's engine process (pid {core.pid}) ended while scoring with rm (killed, or out of "
        f"memory: see the system log); kept, resume; vLLM's log: {tmp_path / 'vllm.log'}"
    )


# --- the one engine: the rank stage through the command line ----------------------------------


def generation_rows(n: int) -> list[dict]:
    """n prompts, K toy answers each (every share of helpful sentences: the judge has an order
    to find)."""
    import random

    rng = random.Random("vllm-reward-model")
    prompts = toy.training_prompts()
    rows = []
    for p in range(n):
        answers = [toy.judged_answer(rng).text for _ in range(K)]
        rows.append({
            "prompt_id": f"q{p:03d}", "prompt": prompts[p % len(prompts)], "responses": answers,
            "finish_reasons": ["stop"] * K, "num_tokens": [len(a.split()) for a in answers],
            "seeds": [50 * k for k in range(K)],
        })  # fmt: skip
    return rows


@pytest.mark.slow
@pytest.mark.vllm
def test_rank_with_vllm_through_the_command_line_equals_the_hf_forward(
    tmp_path, tiny_dir, monkeypatch
):
    """`python -m src.main stage=rank ... ranker=tiny-reward-model-vllm` (in this process):
    every row's scores equal the hf judge's for the same conversations within SCORE_ATOL, every
    prompt's K responses ranked the same; the engine's output in vllm.log beside the chunks, and
    none of its processes left once the command ends.

    Slow: vLLM's engine starts once (20-60 s on 2 CPU cores), then scores 3 chunks."""
    pytest.importorskip("vllm", reason="vLLM is not installed here (make install-vllm adds it)")
    root = tmp_path / "runs"
    monkeypatch.setenv("SELFPLAY_RUNS", str(root))
    command = ["stage=rank", "model=tiny-mistral", "logger=none", f"method.K={K}",
               "ranker=tiny-reward-model-vllm", "ranker.chunk_size=8",
               "generation.enforce_eager=true"]  # fmt: skip
    cfg = compose_cfg(*command)
    rows = generation_rows(24)
    generated = cfg.stage_dir(Stage.generate)
    atomic_write_text(generated / "responses-shard000-of-001.jsonl",
                      "".join(json.dumps(r) + "\n" for r in rows))  # fmt: skip
    write_record(generated, Finished(stage_key(cfg.as_tree(), Stage.generate),
                                     {"shards": 1}, {}))  # fmt: skip
    before = {p.pid for p in psutil.Process().children()}

    result = run_main(root, *command)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "[vllm] engine started" in result.stderr
    ranked_dir = cfg.stage_dir(Stage.rank)
    log = ranked_dir / "shard000-of-001" / "vllm.log"
    assert f"its log: {log}" in result.stderr and log.read_text().startswith("--- vLLM starts")
    left = new_children(before)  # multiprocessing's resource tracker aside: it lives on
    assert not psutil.wait_procs(left, timeout=30)[1], [p.cmdline() for p in left]
    ranked = [row for _, row in read_jsonl(ranked_dir / "ranked-shard000-of-001.jsonl")]
    assert [r["prompt_id"] for r in ranked] == [r["prompt_id"] for r in rows]
    assert {r["judge"] for r in ranked} == {"tiny-reward-model-vllm"}

    hf = load_reward_model_judge(
        cfg.ranker.model, cfg.ranker.source_max_length, cfg.ranker.candidate_max_length,
        cfg.ranker.batch_size, False, torch.device("cpu"),
    )  # fmt: skip
    expected = np.array(hf.score([r["prompt"] for r in ranked], [r["responses"] for r in ranked]))
    served = np.array([r["scores"] for r in ranked])
    assert np.abs(served - expected).max() <= SCORE_ATOL, np.abs(served - expected).max()
    gaps = np.diff(np.sort(expected, axis=1), axis=1)
    assert gaps.min() > 2 * SCORE_ATOL, (
        "an order to find in every prompt, no tie within the tolerance"
    )
    order = np.argsort(-served, axis=1, kind="stable")
    assert (order == np.argsort(-expected, axis=1, kind="stable")).all()
