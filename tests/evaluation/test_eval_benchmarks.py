"""The eval stage's benchmarks (`src.evaluation.benchmarks`): what each reads, checked before any
answer is made.

Tested: eval.benchmarks naming a benchmark without its data is a config error naming the key;
a data folder without the files FastChat's layout has, or an Arena-Hard baseline that is not
there, is one line naming the key and the file; what each benchmark reads of its folder is named
for the eval's record; a second turn is rendered after the policy's own first. (MT-Bench through the stage's parts, graded by a judge on vLLM's OpenAI-compatible
server: tests/evaluation/test_eval_judge_client.py, beside that server's other tests.)
"""

from __future__ import annotations

import json

import pytest

from src.config import ConfigError, Stage, to_yaml
from src.core.diff import Why
from src.core.identity import stage_key
from src.core.records import Finished, write_record
from src.core.registry import STAGES
from src.core.state import state_of
from src.evaluation import benchmarks
from src.evaluation.errors import EvalError
from src.tiny.benchmarks import write as write_tiny_benchmarks
from tests.support.fastchat import fastchat_data, write_lines
from tests.support.helpers import SMALL, compose_cfg


@pytest.mark.parametrize("cut", ["3 questions", "a ninth category", "one turn"])
def test_an_mt_bench_copy_other_than_its_80_questions_is_refused_before_any_answer(tmp_path, cut):
    """A copy cut to 3 questions had been scored as "3 of 3 questions"."""
    folder, _ = write_tiny_benchmarks(tmp_path)  # MT-Bench's shape: 80 questions of 8 categories
    cfg = compose_cfg(*SMALL, "eval.benchmarks=[mt_bench]", f"data.mt_bench={folder}")
    assert len(benchmarks.read_data(cfg)[benchmarks.Benchmark.mt_bench].questions) == 80
    path = folder / "mt_bench" / "question.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if cut == "3 questions":
        rows, said = rows[:3], r"\(3 questions; questions per category: writing 3, roleplay 0, "
    elif cut == "a ninth category":
        rows[-1]["category"], said = "poetry", r"humanities 9, poetry 1\)"
    else:
        rows[5]["turns"], said = rows[5]["turns"][:1], r"question 86 has other than 2 turns\)"
    write_lines(path, rows)
    with pytest.raises(EvalError, match=said) as refused:
        benchmarks.read_data(cfg)
    assert str(refused.value).startswith(f"data.mt_bench: {path} is not MT-Bench's 80 questions")


def test_a_benchmark_without_its_data_is_a_config_error_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"^data\.arena_hard=None: eval\.benchmarks names arena_hard"
    ):
        compose_cfg(*SMALL, "eval.benchmarks=[arena_hard]", "data.arena_hard=null")
    with pytest.raises(ConfigError, match=r"eval\.benchmarks.*names a benchmark twice"):
        compose_cfg(*SMALL, "eval.benchmarks=[mt_bench,mt_bench]", "data.mt_bench=/fastchat")


def test_a_data_folder_without_fastchats_files_is_named_before_any_answer(tmp_path):
    cfg = compose_cfg(*SMALL, "eval.benchmarks=[mt_bench]", f"data.mt_bench={tmp_path}")
    with pytest.raises(
        EvalError, match=r"^data\.mt_bench: .*mt_bench/question\.jsonl does not exist"
    ):
        benchmarks.read_data(cfg)


def test_an_arena_hard_baseline_that_is_not_there_names_its_key(tmp_path):
    write_lines(
        tmp_path / "question.jsonl",
        [{"question_id": "q1", "category": "arena-hard-v0.1", "turns": [{"content": "Hi"}]}],
    )
    cfg = compose_cfg(
        *SMALL,
        "eval.benchmarks=[arena_hard]",
        f"data.arena_hard={tmp_path}",
        "eval.arena_hard_baseline=gpt-4-0314",
    )
    with pytest.raises(
        EvalError,
        match=r"^eval\.arena_hard_baseline: .*model_answer/gpt-4-0314\.jsonl does not exist",
    ):
        benchmarks.read_data(cfg)


def test_a_benchmark_without_questions_is_refused_before_any_answer(tmp_path):
    """An empty MT-Bench question.jsonl had given a result of nothing, exit 0."""
    data = fastchat_data(tmp_path)
    (data / "mt_bench" / "question.jsonl").write_text("")
    cfg = compose_cfg(*SMALL, "eval.benchmarks=[mt_bench]", f"data.mt_bench={data}")
    with pytest.raises(EvalError, match=r"mt_bench/question\.jsonl holds no question"):
        benchmarks.read_data(cfg)


def test_an_arena_hard_baseline_that_answers_part_of_the_questions_is_refused(tmp_path):
    """A baseline answering 1 of 3 questions had given a win rate on that one without a word."""
    write_lines(
        tmp_path / "question.jsonl",
        [{"uid": f"q{i}", "category": "hard_prompt", "prompt": "Hi"} for i in range(3)],
    )
    answer = {"uid": "q1", "model": "base", "messages": [{"content": {"answer": "Hello"}}]}
    write_lines(tmp_path / "model_answer" / "base.jsonl", [answer])
    cfg = compose_cfg(*SMALL, "eval.benchmarks=[arena_hard]", f"data.arena_hard={tmp_path}",
                      "eval.arena_hard_baseline=base")  # fmt: skip
    with pytest.raises(EvalError) as refused:
        benchmarks.read_data(cfg)
    said = str(refused.value)
    assert said.startswith("eval.arena_hard_baseline: ") and "base.jsonl answers 1 of the 3" in said
    assert "(not q0 and 1 more)" in said


def test_each_arena_hard_category_is_played_against_its_own_baseline(tmp_path):
    """v2.0's hard prompts against o3-mini's answers, its creative writing against
    gemini-2.0-flash's (the benchmark's JUDGE_SETTINGS), each file named where it is missing;
    eval.arena_hard_baseline=<name> plays every category against that one."""
    rows = [{"uid": "h1", "category": "hard_prompt", "prompt": "Prove it."},
            {"uid": "c1", "category": "creative_writing", "prompt": "A poem."}]  # fmt: skip
    write_lines(tmp_path / "question.jsonl", rows)

    def answers(model: str, uids: list[str]) -> None:
        write_lines(tmp_path / "model_answer" / f"{model}.jsonl", [
            {"uid": u, "model": model, "messages": [{"content": {"answer": f"{model} on {u}"}}]}
            for u in uids])  # fmt: skip

    answers("o3-mini-2025-01-31", ["h1", "c1"])
    cfg = compose_cfg(*SMALL, "eval.benchmarks=[arena_hard]", f"data.arena_hard={tmp_path}",
                      "eval.arena_hard_baseline=null")  # fmt: skip
    with pytest.raises(EvalError, match=r"model_answer/gemini-2\.0-flash-001\.jsonl does not"):
        benchmarks.read_data(cfg)
    answers("gemini-2.0-flash-001", ["c1"])
    assert [p.name for p in benchmarks.required_files(benchmarks.Benchmark.arena_hard, cfg)] == [
        "question.jsonl", "gemini-2.0-flash-001.jsonl", "o3-mini-2025-01-31.jsonl"]  # fmt: skip
    data = benchmarks.read_data(cfg)[benchmarks.Benchmark.arena_hard]
    assert data.baselines == {"hard_prompt": "o3-mini-2025-01-31",
                              "creative_writing": "gemini-2.0-flash-001"}  # fmt: skip
    assert data.baseline == {"h1": "o3-mini-2025-01-31 on h1", "c1": "gemini-2.0-flash-001 on c1"}

    one = compose_cfg(*SMALL, "eval.benchmarks=[arena_hard]", f"data.arena_hard={tmp_path}",
                      "eval.arena_hard_baseline=o3-mini-2025-01-31")  # fmt: skip
    data = benchmarks.read_data(one)[benchmarks.Benchmark.arena_hard]
    assert set(data.baselines.values()) == {"o3-mini-2025-01-31"}
    assert data.baseline["c1"] == "o3-mini-2025-01-31 on c1"


def test_a_second_turn_is_rendered_after_the_policys_own_first(tiny_dir):
    from src.generation.sampling import load_tokenizer, prompt_ids

    tokenizer, _ = load_tokenizer(str(tiny_dir / "tiny-mistral"), None)
    ids = prompt_ids(
        tokenizer, "Now shorter.", history=(("Plan my week.", "First, write down the main plan."),)
    )
    text = tokenizer.decode(ids)
    first, answer, second = (
        text.index(t) for t in ("Plan my week.", "First, write down", "Now shorter.")
    )
    assert first < answer < second
    assert text.count("[INST]") == 2  # Mistral's template: each user turn its own [INST] block


def test_what_a_benchmark_reads_is_what_the_eval_record_vouches_for(tmp_path, monkeypatch):
    """MT-Bench's copy enters the eval's record by the files its reader requires: FastChat's own
    `model_judgment/` or a note written beside them leaves the eval finished; its questions
    edited make it stale (src.core.fingerprints.input_contents)."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))
    folder, _ = write_tiny_benchmarks(tmp_path / "bench")
    cfg = compose_cfg(*SMALL, "eval.benchmarks=[mt_bench]", f"data.mt_bench={folder}")
    read = benchmarks.files_read(cfg)["data.mt_bench"]
    assert "mt_bench/question.jsonl" in read and "judge_prompts.jsonl" in read
    for stage in STAGES:
        cfg.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        (cfg.stage_dir(stage) / "config.yaml").write_text(to_yaml(cfg))
        made = stage_key(cfg.as_tree(), stage, read={"data.mt_bench": read})
        write_record(cfg.stage_dir(stage), Finished(made, {}, {}))
    (folder / "mt_bench" / "model_judgment").mkdir()
    (folder / "mt_bench" / "model_judgment" / "gpt-4_single.jsonl").write_text("{}\n")
    (folder / "NOTES.txt").write_text("notes\n")
    assert state_of(cfg.as_tree(), Stage.eval).status == "done"
    questions = folder / "mt_bench" / "question.jsonl"
    questions.write_text(questions.read_text().replace("?", "!", 1))
    assert [c.kind for c in state_of(cfg.as_tree(), Stage.eval).changed] == [Why.content]
