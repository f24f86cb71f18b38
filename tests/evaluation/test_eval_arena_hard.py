"""Arena-Hard-Auto's judging and scoring (`src.evaluation.arena_hard`), offline.

Tested: questions and baseline answers read from fixture files in both of the benchmark's
schemas (v0.1's question_id / turns / choices, v2.0's uid / prompt / messages) and malformed ones
refused with one line naming the file and line; the two games' messages (the judge's system
prompt, the template filled in, A and B swapped in game 2, v2.0's creative-writing prompt and
judge settings, a question without both answers skipped); the verdicts read from the benchmark's
forms, v0.1 refusing several different ones and asking once more for a missing one, v2.0 taking
the last; the win rate: every game won, lost or tied, ">>" counting three battles, v0.1's value
checked against show_result's own Bradley-Terry fit (compute_mle_elo's logistic regression, run
here step by step) and the two-player closed form, v2.0's mean of bootstrap means, the intervals
holding the point and fixed by the seed, games without a verdict counted and left out (v2.0
leaving out their question whole), each category scored on its own.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from src.evaluation.arena_hard import (
    FOLLOW_UP,
    JUDGE_MAX_TOKENS,
    PROMPT_TEMPLATE,
    SYSTEM_PROMPT,
    V01,
    V2,
    Question,
    has_verdict,
    judge_requests,
    load_answers,
    load_questions,
    parse_verdict,
    retry_request,
    score,
)
from src.evaluation.errors import EvalError

# --- the benchmark's files, in its schemas -------------------------------------------------------

V01_UIDS = ["328c149ed45a41c0b9d6f14659e63599", "b43c07656ead4150b360294ee932b410"]
PROMPTS = ["Use ABC notation to write a melody in the style of a folk tune.", "Sort {x} in C++."]
V2_ROWS = [
    {
        "uid": "2edbb5f36f5b42be",
        "category": "hard_prompt",
        "subcategory": "coding",
        "prompt": "Zig?",
    },
    {"uid": "0253f09025cc40cd", "category": "hard_prompt", "subcategory": "math", "prompt": "2+2?"},
    {
        "uid": "c7f1a1e5b0c44d1a",
        "category": "creative_writing",
        "subcategory": "creative_writing",
        "prompt": "A poem about rain.",
    },
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def v01_question(uid, prompt):  # data/arena-hard-v0.1/question.jsonl before 900183d
    return {
        "question_id": uid,
        "category": "arena-hard-v0.1",
        "cluster": "ABC Sequence Puzzles & Groups",
        "turns": [{"content": prompt}],
    }


def v01_answer(uid, text, model="gpt-4-0314"):  # data/arena-hard-v0.1/model_answer/*.jsonl
    return {
        "question_id": uid,
        "answer_id": "ndKLaFQXbU4eujaZBGjGZJ",
        "model_id": model,
        "choices": [{"index": 0, "turns": [{"content": text, "token_len": 953}]}],
        "tstamp": 1711397284.101236,
    }


def v2_answer(uid, prompt, text, model="o3-mini-2025-01-31"):  # v2.0's model_answer/*.jsonl
    return {
        "uid": uid,
        "ans_id": "dgYCTvj3bz42JVPxnkZNB2",
        "model": model,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": {"answer": text}},
        ],
        "tstamp": 1744155079.1383834,
        "metadata": {"token_len": 179, "header_count": {"h1": 0}, "list_count": {"ordered": 0}},
    }


def test_questions_are_read_from_either_schema_of_either_version(tmp_path):
    old = write_jsonl(tmp_path / "old.jsonl", map(v01_question, V01_UIDS, PROMPTS))
    new = write_jsonl(
        tmp_path / "new.jsonl",  # v0.1's questions as 900183d rewrote them
        [
            {"uid": u, "category": "arena-hard-v0.1", "cluster": "c", "prompt": p}
            for u, p in zip(V01_UIDS, PROMPTS, strict=True)
        ],
    )
    expected = [Question(u, "arena-hard-v0.1", p) for u, p in zip(V01_UIDS, PROMPTS, strict=True)]
    assert load_questions(old) == load_questions(new) == expected
    v2 = load_questions(write_jsonl(tmp_path / "v2.jsonl", V2_ROWS))
    assert v2 == [Question(r["uid"], r["category"], r["prompt"]) for r in V2_ROWS]


def test_answers_are_read_from_either_schema_with_the_models_name(tmp_path):
    old = write_jsonl(tmp_path / "gpt-4-0314.jsonl", map(v01_answer, V01_UIDS, ["one", "two"]))
    assert load_answers(old) == ("gpt-4-0314", dict(zip(V01_UIDS, ["one", "two"], strict=True)))
    rows = [v2_answer(r["uid"], r["prompt"], f"answer {i}") for i, r in enumerate(V2_ROWS)]
    rows.append(v2_answer(V2_ROWS[0]["uid"], "Zig?", "answered again"))  # the last one is kept
    name, answers = load_answers(write_jsonl(tmp_path / "o3-mini.jsonl", rows))
    assert name == "o3-mini-2025-01-31"
    assert answers == {
        V2_ROWS[0]["uid"]: "answered again",
        V2_ROWS[1]["uid"]: "answer 1",
        V2_ROWS[2]["uid"]: "answer 2",
    }


def test_a_json_line_holding_a_line_separator_is_one_line(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [v01_question(V01_UIDS[0], "one\u2028two")])
    assert load_questions(path)[0].prompt == "one\u2028two"


GOOD_QUESTION = json.dumps(v01_question(V01_UIDS[0], PROMPTS[0]))
BAD_QUESTIONS = {
    "malformed JSON line": "{uid",
    "row is a JSON list, expected an object like": "[1, 2]",
    "no 'uid' (v2.0) or 'question_id' (v0.1)": '{"category": "hard_prompt", "prompt": "p"}',
    "no string at prompt": '{"uid": "u", "category": "hard_prompt"}',
    "no string at turns[0].content": '{"question_id": "u", "category": "math", "turns": []}',
    "no string at uid": '{"uid": 7, "category": "hard_prompt", "prompt": "p"}',
    "category 'writing' is none of Arena-Hard's": '{"uid": "u", "category": "writing", "prompt": "p"}',
    "question 328c149ed45a41c0b9d6f14659e63599 again (first at {path}:1)": GOOD_QUESTION,
}


@pytest.mark.parametrize("what", list(BAD_QUESTIONS))
def test_a_malformed_question_is_one_line_naming_file_and_line(tmp_path, what):
    path = tmp_path / "question.jsonl"
    path.write_text(f"{GOOD_QUESTION}\n\n{BAD_QUESTIONS[what]}\n", "utf-8")
    with pytest.raises(EvalError) as err:
        load_questions(path)
    assert str(err.value).startswith(f"{path}:3: {what.format(path=path)}")
    assert "\n" not in str(err.value)


GOOD_ANSWER = json.dumps(v2_answer("u1", "p", "a"))
BAD_ANSWERS = {
    "no string at model": '{"uid": "u2", "messages": [{"content": {"answer": "a"}}]}',
    "no string at messages[-1].content.answer": json.dumps(
        {"uid": "u2", "model": "o3-mini-2025-01-31", "messages": [{"content": "a"}]}
    ),
    "no string at choices[0].turns[0].content": json.dumps(
        {"question_id": "u2", "model_id": "gpt-4-0314", "choices": [{"turns": []}]}
    ),
    "answers of 'gpt-4.1' among those of 'o3-mini-2025-01-31'": json.dumps(
        v2_answer("u2", "p", "a", model="gpt-4.1")
    ),
}


@pytest.mark.parametrize("what", list(BAD_ANSWERS))
def test_a_malformed_answer_is_one_line_naming_file_and_line(tmp_path, what):
    path = tmp_path / "o3-mini.jsonl"
    path.write_text(f"{GOOD_ANSWER}\n{BAD_ANSWERS[what]}\n", "utf-8")
    with pytest.raises(EvalError) as err:
        load_answers(path)
    assert str(err.value) == f"{path}:2: {what}"


def test_a_missing_or_empty_file_is_one_line(tmp_path):
    with pytest.raises(EvalError, match=r"question\.jsonl does not exist$"):
        load_questions(tmp_path / "question.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", "utf-8")
    with pytest.raises(EvalError, match=r"empty\.jsonl: no answers$"):
        load_answers(empty)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [v01_question("a", "p"), V2_ROWS[0]])
    with pytest.raises(EvalError, match=r"mixed\.jsonl: mixes Arena-Hard v0\.1's and v2\.0's"):
        load_questions(mixed)


# --- the judge's messages ------------------------------------------------------------------------


def expected_user(question, a, b):  # config/judge_config.yaml's prompt_template, written out
    return (
        f"<|User Prompt|>\n{question}\n\n<|The Start of Assistant A's Answer|>\n{a}\n"
        f"<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n{b}\n"
        "<|The End of Assistant B's Answer|>"
    )


def test_both_games_send_the_benchmarks_prompt_with_a_and_b_swapped(tmp_path):
    questions = load_questions(
        write_jsonl(tmp_path / "q.jsonl", map(v01_question, V01_UIDS, PROMPTS))
    )
    model = {V01_UIDS[0]: "mine {ANSWER_B}", V01_UIDS[1]: "mine 2"}
    baseline = {V01_UIDS[0]: "theirs", V01_UIDS[1]: "theirs 2"}
    requests = judge_requests(questions, model, baseline, judge="gpt-4-1106-preview")
    assert [r.key for r in requests] == [
        f"arena_hard/{uid}/game{g}" for uid in V01_UIDS for g in (1, 2)
    ]
    game1, game2 = requests[:2]
    assert game1.messages == (
        ("system", SYSTEM_PROMPT),
        ("user", expected_user(PROMPTS[0], "theirs", "mine {ANSWER_B}")),
    )
    assert game2.messages == (
        ("system", SYSTEM_PROMPT),
        ("user", expected_user(PROMPTS[0], "mine {ANSWER_B}", "theirs")),
    )
    assert requests[3].messages[1][1] == expected_user("Sort {x} in C++.", "mine 2", "theirs 2")
    assert {(r.temperature, r.max_tokens) for r in requests} == {(0.0, 4096)}
    assert JUDGE_MAX_TOKENS == 4096


def test_the_system_prompt_asks_for_the_judges_own_answer_and_one_of_five_labels():
    assert SYSTEM_PROMPT.startswith(
        "Please act as an impartial judge and evaluate the quality of the responses provided by "
        "two AI assistants to the user prompt displayed below."
    )
    assert "\n\nBegin your evaluation by generating your own answer to the prompt." in SYSTEM_PROMPT
    labels = [
        line for line in SYSTEM_PROMPT.split("\n") if line[:2] in {"1.", "2.", "3.", "4.", "5."}
    ]
    assert labels == [
        "1. Assistant A is significantly better: [[A>>B]]",
        "2. Assistant A is slightly better: [[A>B]]",
        "3. Tie, relatively the same: [[A=B]]",
        "4. Assistant B is slightly better: [[B>A]]",
        "5. Assistant B is significantly better: [[B>>A]]",
    ]
    assert SYSTEM_PROMPT.endswith('\n\nExample output: "My final verdict is tie: [[A=B]]".')
    assert PROMPT_TEMPLATE.format(QUESTION="q", ANSWER_A="a", ANSWER_B="b") == expected_user(
        "q", "a", "b"
    )


def test_v2_judges_creative_writing_without_its_own_answer_and_with_its_judges_settings():
    questions = [Question(r["uid"], r["category"], r["prompt"]) for r in V2_ROWS]
    answers = {q.uid: "x" for q in questions}
    by_judge = {
        j: judge_requests(questions, answers, answers, j) for j in ("gpt-4.1", "gemini-2.5", "qwen")
    }
    hard, creative = by_judge["gpt-4.1"][0], by_judge["gpt-4.1"][4]
    assert hard.messages[0] == ("system", SYSTEM_PROMPT)
    system = creative.messages[0][1]
    assert creative.key == f"arena_hard/{V2_ROWS[2]['uid']}/game1"
    assert "generating your own answer" not in system
    assert "compare both assistants' answers. You must identify" in system
    assert system.endswith(SYSTEM_PROMPT[SYSTEM_PROMPT.index("\n\nThen consider if") :])
    settings = {j: {(r.temperature, r.max_tokens) for r in rs} for j, rs in by_judge.items()}
    assert settings == {
        "gpt-4.1": {(0.0, 16000)},
        "gemini-2.5": {(1.0, 32000)},
        "qwen": {(0.0, 16000)},
    }


def test_a_question_missing_from_either_answer_set_is_skipped():
    questions = [Question(u, "arena-hard-v0.1", "p") for u in ("a", "b", "c")]
    requests = judge_requests(questions, {"a": "1", "b": "2"}, {"b": "3", "c": "4"}, "gpt-4.1")
    assert [r.key for r in requests] == ["arena_hard/b/game1", "arena_hard/b/game2"]


# --- verdicts ------------------------------------------------------------------------------------

JUDGMENT = "My own answer: ...\n\nAssistant A is more accurate.\n\nMy final verdict is {}"


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("[[A>>B]]", "A>>B"),
        ("[[A>B]]", "A>B"),
        ("tie: [[A=B]]", "A=B"),
        ("[[B>A]]", "B>A"),
        ("[[B>>A]]", "B>>A"),
        ("that A is better.", None),
        ("[[A>B]], or rather [[B>A]]", None),  # several different: none
        ("[[A>B]]; again, [[A>B]]", "A>B"),
        ("[[a>b]]", None),  # case as written
        ("[A>B]", None),  # double brackets only
        ("[[A<B]]", "A<B"),  # read as written; the scoring does not know it
    ],
)
def test_v01_reads_one_distinct_double_bracketed_verdict(label, expected):
    assert parse_verdict(JUDGMENT.format(label)) == expected
    assert parse_verdict(JUDGMENT.format(label), V01) == expected


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("[[A>>B]]", "A>>B"),
        ("[[B>A]]", "B>A"),
        ("[[A=B]]", "A=B"),
        ("that A is better.", None),
        ("[[A>B]], or rather [[B>A]]", "B>A"),  # the last
        ("[[b>>a]]", "B>>A"),  # upper-cased first
        ("[B>A]", "B>A"),  # single brackets when there are no double ones
        ("[[A>B]] despite its [B] point", "A>B"),  # double brackets first
        ("see point [B]", "B"),
    ],
)
def test_v2_reads_the_last_verdict_of_the_first_pattern_that_matches(label, expected):
    assert parse_verdict(JUDGMENT.format(label), V2) == expected


def test_v01_asks_once_more_for_a_judgment_without_any_verdict():
    (request, _) = judge_requests(
        [Question("u", "arena-hard-v0.1", "p")], {"u": "a"}, {"u": "b"}, "gpt-4-1106-preview"
    )
    first = "Both answers are fine, B is clearer."
    retry = retry_request(request, first)
    assert retry.key == "arena_hard/u/game1/attempt2"
    assert retry.messages == (*request.messages, ("assistant", first), ("user", FOLLOW_UP))
    assert (retry.temperature, retry.max_tokens) == (0.0, 4096)
    second = "My final verdict is [[B>A]]"
    assert parse_verdict("\n" + first + "\n" + second) == parse_verdict(second) == "B>A"
    assert retry_request(request, "[[A>B]] or [[B>A]]") is None  # several: no second ask
    assert retry_request(request, "[[A>B]]") is None
    assert retry_request(request, first, V2) is None
    # a judgment the cache holds is final where it says a verdict at all: v0.1 any label (several
    # count for nothing, not asked again), v2.0 one it reads
    assert not has_verdict(first) and not has_verdict(first, V2)
    assert has_verdict("[[A>B]] or [[B>A]]") and has_verdict(second)
    assert has_verdict("[B>A]", V2) and not has_verdict("[B>A]")


# --- scores --------------------------------------------------------------------------------------


def v01_questions(n):
    return [Question(f"q{i}", "arena-hard-v0.1", "p") for i in range(n)]


def v2_questions(n, category="hard_prompt"):
    return [Question(f"q{i}", category, "p") for i in range(n)]


def every_game(questions, game1, game2):
    return {(q.uid, g): verdict for q in questions for g, verdict in ((1, game1), (2, game2))}


@pytest.mark.parametrize("make", [v01_questions, v2_questions])
def test_winning_every_game_is_near_one_losing_near_zero_tying_one_half(make):
    questions = make(20)
    won = score(questions, every_game(questions, "B>A", "A>>B"))  # the model: B, then A
    lost = score(questions, every_game(questions, "A>>B", "B>A"))
    tied = score(questions, every_game(questions, "A=B", "A=B"))
    assert won["win_rate"] > 0.99 and won["lower"] > 0.99
    assert lost["win_rate"] < 0.01 and lost["upper"] < 0.01
    assert (tied["win_rate"], tied["lower"], tied["upper"]) == (0.5, 0.5, 0.5)
    assert won["games"] == {
        "game1": {"wins": 20, "ties": 0, "losses": 0},
        "game2": {"wins": 20, "ties": 0, "losses": 0},
    }
    assert tied["games"]["game2"] == {"wins": 0, "ties": 20, "losses": 0}
    assert (won["questions"], won["battles"], won["unjudged"]) == (20, 20 + 60, 0)


# q1: the model wins much (3 battles), then ties; q2: loses, then wins (it is A in game 2);
# q3: wins, then loses much (3 battles) -> 5 battles won, 1 tied, 4 lost of 10
HAND = {
    ("q0", 1): "B>>A",
    ("q0", 2): "A=B",
    ("q1", 1): "A>B",
    ("q1", 2): "A>B",
    ("q2", 1): "B>A",
    ("q2", 2): "B>>A",
}


@pytest.mark.parametrize("make", [v01_questions, v2_questions])
def test_a_significantly_better_verdict_counts_as_three_battles(make):
    result = score(make(3), HAND, bootstrap=2000)
    assert result["battles"] == 10
    assert result["games"] == {
        "game1": {"wins": 2, "ties": 0, "losses": 1},
        "game2": {"wins": 1, "ties": 1, "losses": 1},
    }
    share = (5 + 0.5) / 10  # ties half; with every verdict one battle it would be 3.5 / 6
    if make is v01_questions:
        assert result["win_rate"] == pytest.approx(share, abs=1e-12)
    else:  # the mean of 2000 bootstrap means
        assert result["win_rate"] == pytest.approx(share, abs=0.01)
    assert abs(result["win_rate"] - 3.5 / 6) > 0.02


def show_result_v01(verdicts, questions, weight=3, baseline="gpt-4-0314", model="mine"):
    """v0.1's show_result, step by step: get_battles_from_row, compute_mle_elo (its logistic
    regression; C=inf is scikit-learn 1.9's spelling of its penalty=None) and
    get_win_rate_column (predict_win_rate against the baseline)."""
    rows = []
    for q in questions:
        for game in (1, 2):
            verdict = verdicts[(q.uid, game)]
            a_wins, b_wins = ("model_a", "model_b") if game == 1 else ("model_b", "model_a")
            winner, times = {
                "A=B": ("tie", 1),
                "A>B": (a_wins, 1),
                "A>>B": (a_wins, weight),
                "B>A": (b_wins, 1),
                "B>>A": (b_wins, weight),
            }.get(verdict, (None, 0))
            rows += [{"model_a": baseline, "model_b": model, "winner": winner}] * times
    df = pd.DataFrame(rows)

    from sklearn.linear_model import LogisticRegression

    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    n, p = df.shape[0], len(models.index)
    x = np.zeros([n, p])
    x[np.arange(n), models[df["model_a"]]] = +math.log(10)
    x[np.arange(n), models[df["model_b"]]] = -math.log(10)
    y = np.zeros(n)
    y[df["winner"] == "model_a"] = 1.0
    tie_idx = df["winner"] == "tie"
    tie_idx[len(tie_idx) // 2 :] = False
    y[tie_idx] = 1.0
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8)
    lr.fit(x, y)
    elo = 400 * lr.coef_[0] + 1000
    elo += 1000 - elo[models[baseline]]
    return 1 / (1 + 10 ** ((elo[models[baseline]] - elo[models[model]]) / 400))


def test_v01_win_rate_is_show_results_bradley_terry_fit():
    rng = np.random.default_rng(7)
    questions = v01_questions(150)
    labels = ["A>>B", "A>B", "A=B", "B>A", "B>>A", None]
    verdicts = {
        (q.uid, g): labels[rng.choice(6, p=[0.1, 0.25, 0.15, 0.25, 0.2, 0.05])]
        for q in questions
        for g in (1, 2)
    }
    expected = show_result_v01(verdicts, questions)
    assert score(questions, verdicts)["win_rate"] == pytest.approx(expected, abs=1e-6)
    assert show_result_v01(HAND, v01_questions(3)) == pytest.approx(0.55, abs=1e-6)


def random_verdicts(questions, seed=3):
    rng = np.random.default_rng(seed)
    labels = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]
    return {(q.uid, g): labels[rng.integers(5)] for q in questions for g in (1, 2)}


def test_the_bootstrap_interval_holds_the_point_and_is_fixed_by_the_seed():
    v01, v2 = v01_questions(60), v2_questions(60)
    verdicts = random_verdicts(v01)
    for questions, level in ((v01, 0.95), (v2, 0.90)):
        result = score(questions, verdicts, seed=11)
        assert result["lower"] < result["win_rate"] < result["upper"]
        assert result["level"] == level
        assert score(questions, verdicts, seed=11) == result
        assert score(questions, verdicts, seed=12)["lower"] != result["lower"]
    # the same resamples: v0.1's 95% interval (percentiles of Elo) holds v2.0's 90% one
    wide, narrow = score(v01, verdicts, seed=5), score(v2, verdicts, seed=5)
    assert wide["lower"] < narrow["lower"] < narrow["upper"] < wide["upper"]
    assert json.loads(json.dumps(wide)) == wide


def test_a_game_without_a_verdict_is_counted_not_fatal():
    questions = v01_questions(4)
    verdicts = {
        ("q0", 1): None,
        ("q0", 2): "A>B",  # the model, A, wins
        ("q1", 1): "A<B",  # a label v0.1's scoring does not know
        ("q1", 2): "B>A",
        ("q2", 1): "A>B",  # q2's game 2 is absent
        # q3: never judged (skipped before the judge)
    }
    result = score(questions, verdicts)
    assert result["unjudged"] == 3
    assert result["questions"] == 3 and result["battles"] == 3
    assert result["games"] == {
        "game1": {"wins": 0, "ties": 0, "losses": 1},
        "game2": {"wins": 1, "ties": 0, "losses": 1},
    }
    assert result["win_rate"] == pytest.approx(1 / 3)
    nothing = score(questions, {("q0", 1): None, ("q0", 2): None})
    assert (nothing["win_rate"], nothing["lower"], nothing["unjudged"]) == (None, None, 2)


def test_v2_leaves_out_a_question_whole_where_v01_leaves_out_the_game():
    verdicts = {("q0", 1): "B>A", ("q0", 2): None, ("q1", 1): "A>B", ("q1", 2): "B>A"}
    v01 = score(v01_questions(2), verdicts)
    assert v01["win_rate"] == pytest.approx(1 / 3)  # q0's won game counts
    v2 = score(v2_questions(2), verdicts)
    assert (v2["win_rate"], v2["upper"]) == (0.0, 0.0)  # q1's two lost games only
    assert (v2["questions"], v2["unjudged"]) == (1, 1)
    assert v2["games"]["game1"] == {"wins": 0, "ties": 0, "losses": 1}
    # v2.0 scores the reversed labels v0.1 does not know
    reversed_labels = {("q0", 1): "A<B", ("q0", 2): "B<<A"}
    assert score(v2_questions(1), reversed_labels)["battles"] == 4
    assert score(v2_questions(1), reversed_labels)["win_rate"] == 1.0


def test_each_category_is_scored_on_its_own():
    """v2.0's show_result scores each category on its own battles, against its own baseline."""
    hard, creative = v2_questions(4), v2_questions(6, "creative_writing")
    creative = [Question(f"c{i}", q.category, q.prompt) for i, q in enumerate(creative)]
    verdicts = every_game(hard, "B>A", "A>B") | every_game(creative, "A>B", "B>A")
    result = score(hard + creative, verdicts)
    assert result["categories"]["hard_prompt"]["questions"] == 4
    assert result["categories"]["hard_prompt"]["win_rate"] == 1.0
    assert result["categories"]["creative_writing"]["win_rate"] == 0.0
    # never pooled: the figure is hard_prompt's (show_result's default category), else the first
    assert (result["category"], result["win_rate"], result["questions"]) == ("hard_prompt", 1.0, 4)
    assert result["games"]["game1"] == {"wins": 4, "ties": 0, "losses": 0}
    alone = score(creative, verdicts)
    assert (alone["category"], alone["win_rate"]) == ("creative_writing", 0.0)
    assert score(hard + creative, verdicts, lengths={"q0": 100, "q1": 301})["avg_tokens"] == 200
    assert result["avg_tokens"] is None
    with pytest.raises(EvalError, match="v0.1 and v2.0"):
        score(hard + v01_questions(1), verdicts)
