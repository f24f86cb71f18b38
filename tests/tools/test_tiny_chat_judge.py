"""tiny-chat-judge (src/tiny/chat_judge.py) grades through the benchmarks' own prompts by the toy
preference: FastChat's four single-answer judge prompts (verbatim, tests/support/fastchat.py),
which it never saw while it learned, and Arena-Hard-Auto's, each request formed by the project's
MT-Bench and Arena-Hard code and read back by their rating and verdict patterns.

Tested on toy answers it never saw: its ratings rise with the share of helpful sentences (turn 1,
the second turn of a conversation, reference-guided), its verdicts name the answer the toy
prefers, in both games; it ends its turn (every judgment is read); the toy's own rating and
verdict rules; and the tiny benchmarks' files (src/tiny/benchmarks.py) read by the loaders of
MT-Bench and Arena-Hard.
"""

from __future__ import annotations

import json
import random
from statistics import mean

import pytest

from src.evaluation import arena_hard, mt_bench
from src.evaluation.judge_client import Endpoint, sent_messages
from src.tiny import benchmarks, chat_judge, toy
from tests.support.fastchat import SINGLE_PROMPTS, judge_prompt_row

# what the build's record and these tests hold it to (built from seed 0 it gives 0.95 and 0.86 in
# its record, 0.99 and 0.94 here)
MIN_RATING_CORRELATION = 0.9
MIN_VERDICT_AGREEMENT = 0.8
CASES = 48  # questions per kind of judge prompt
MERGED = Endpoint("tiny-chat-judge", "http://127.0.0.1:1/v1", None, merge_system=True)


# the tests below that grade wait for the judge's build on a fresh clone (~6 min alone, 12 beside
# another worker): marked slow, so that a worker starts it first and the benchmark test of
# tests/pipeline/test_learning.py finds it built, with room for the build in their time limit
def grading(test):
    return pytest.mark.slow(pytest.mark.timeout(1800)(test))


@pytest.fixture(scope="module")
def judge(tiny_chat_judge):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_judge)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_chat_judge)


def judged(judge, requests) -> list[str]:
    """The judge's greedy judgments of the requests, sent as the eval stage sends them to a
    template that takes no system turn."""
    conversations = []
    for request in requests:
        (user,) = sent_messages(MERGED, request)
        conversations.append(("", user["content"]))
    return chat_judge.judge(*judge, conversations)


def answer(rng: random.Random) -> toy.ToyAnswer:
    return toy.sample_answer(rng)


def test_the_toys_rating_and_verdict_rules():
    def of(helpful: int, sentences: int) -> toy.ToyAnswer:
        return toy.ToyAnswer("", helpful, sentences)

    assert [chat_judge.rating(of(h, 5)) for h in range(6)] == [1, 3, 5, 6, 8, 10]
    assert chat_judge.verdict(of(3, 3), of(1, 4)) == "A>>B"
    assert chat_judge.verdict(of(2, 4), of(1, 4)) == "A>B"
    assert chat_judge.verdict(of(1, 2), of(2, 4)) == "A=B"
    assert chat_judge.verdict(of(0, 1), of(1, 1)) == "B>>A"


@grading
def test_its_ratings_through_fastchats_own_prompts_follow_the_toy(judge, tmp_path):
    path = tmp_path / "judge_prompts.jsonl"
    path.write_text("".join(json.dumps(judge_prompt_row(*p)) + "\n" for p in SINGLE_PROMPTS))
    prompts = mt_bench.load_judge_prompts(path)
    rng = random.Random(0)
    corpus = chat_judge.corpus_lines()
    questions, answers, truth = [], {}, {}
    for i in range(CASES):
        category = "writing" if i % 2 else "math"  # every one of the four prompts
        reference = tuple(rng.sample(corpus, 2)) if category == "math" else None
        turns = (rng.choice(toy.training_prompts()), rng.choice(toy.training_prompts()))
        questions.append(mt_bench.Question(i, category, turns, reference))
        first, second = answer(rng), answer(rng)
        answers[i] = (first.text, second.text)
        truth[f"{i}/turn1"], truth[f"{i}/turn2"] = (
            chat_judge.rating(first),
            chat_judge.rating(second),
        )
    requests = mt_bench.judge_requests(questions, answers, prompts, "tiny-chat-judge")
    assert {r.key.rsplit("/", 1)[1] for r in requests} == set(prompts)
    ratings = [mt_bench.parse_rating(text) for text in judged(judge, requests)]
    assert None not in ratings, ratings  # every judgment carries a rating
    expected = [truth[r.key.split("/", 1)[1].rsplit("/", 1)[0]] for r in requests]
    by_turn = {
        turn: chat_judge.correlation(
            [
                (e, g)
                for r, e, g in zip(requests, expected, ratings, strict=True)
                if f"/turn{turn}/" in r.key
            ]
        )
        for turn in (1, 2)
    }
    assert min(by_turn.values()) >= MIN_RATING_CORRELATION, by_turn
    # and the scale is the toy's: all-helpful answers rated far above all-evasive ones
    top = [g for e, g in zip(expected, ratings, strict=True) if e == 10]
    bottom = [g for e, g in zip(expected, ratings, strict=True) if e == 1]
    assert mean(top) > mean(bottom) + 4, (top, bottom)


@grading
def test_its_verdicts_through_arena_hards_prompt_name_the_better_answer(judge):
    rng = random.Random(1)
    questions, model, baseline, truth = [], {}, {}, {}
    for i in range(CASES):
        uid = f"q{i}"
        questions.append(
            arena_hard.Question(
                uid=uid, category="arena-hard-v0.1", prompt=rng.choice(toy.training_prompts())
            )
        )
        a, b = answer(rng), answer(rng)
        model[uid], baseline[uid] = a.text, b.text
        truth[f"arena_hard/{uid}/game1"] = chat_judge.verdict(b, a)  # game 1: the baseline is A
        truth[f"arena_hard/{uid}/game2"] = chat_judge.verdict(a, b)
    requests = arena_hard.judge_requests(questions, model, baseline, "tiny-chat-judge")
    verdicts = [arena_hard.parse_verdict(text) for text in judged(judge, requests)]
    assert None not in verdicts, verdicts
    pairs = [(truth[r.key], v) for r, v in zip(requests, verdicts, strict=True)]
    agreement = chat_judge.agreement(pairs)
    assert agreement >= MIN_VERDICT_AGREEMENT, (agreement, pairs)


@grading
def test_its_build_records_what_it_learned(tiny_chat_judge):
    record = json.loads((tiny_chat_judge / "tiny_build.json").read_text())["training"]
    assert record["rating_correlation"] >= MIN_RATING_CORRELATION, record
    assert record["verdict_agreement"] >= MIN_VERDICT_AGREEMENT, record
    assert record["unread"] == 0, record


def test_the_tiny_benchmarks_are_read_by_mt_benchs_and_arena_hards_loaders(tmp_path):
    mt_folder, arena_folder = benchmarks.write(tmp_path)
    questions = mt_bench.load_questions(
        mt_folder / "mt_bench" / "question.jsonl",
        mt_folder / "mt_bench" / "reference_answer" / "gpt-4.jsonl",
    )
    assert len(questions) == len(benchmarks.CATEGORIES) * benchmarks.QUESTIONS_PER_CATEGORY
    assert {q.category for q in questions if q.reference} == set(benchmarks.REFERENCE_GUIDED)
    assert set(mt_bench.load_judge_prompts(mt_folder / "judge_prompts.jsonl")) == set(
        mt_bench.TEMPLATES.values()
    )
    questions = arena_hard.load_questions(arena_folder / "question.jsonl")
    name, answers = arena_hard.load_answers(
        arena_folder / "model_answer" / f"{benchmarks.BASELINE}.jsonl"
    )
    assert name == benchmarks.BASELINE and set(answers) == {q.uid for q in questions}
    assert arena_hard.version_of(questions) == arena_hard.V01
    # the same files every time
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl")}
    benchmarks.write(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl")} == before
