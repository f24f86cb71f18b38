"""MT-Bench's single-answer grading (`src.evaluation.mt_bench`) against FastChat's llm_judge.

Tested, on files written in FastChat's own schemas (two of its real questions, its GPT-4
reference answer to one, its four single-answer judge prompts copied verbatim from
fastchat/llm_judge/data/judge_prompts.jsonl): FastChat's constants; the questions read with
their reference answers (from reference_answer/gpt-4.jsonl, not question.jsonl's own
"reference"); the exact judge requests of turn 1, turn 2 and the reference-guided prompts, as
common.run_judge_single formats them; the ratings read with its two patterns, including where
it finds several; the score as show_result.py averages it, unrated turns counted; and one-line
errors naming the file for a missing reference answer, a missing judge prompt and malformed
lines.
"""

from __future__ import annotations

import json

import pytest

from src.core.errors import StageError
from src.evaluation.errors import EvalError
from src.evaluation.mt_bench import (
    JUDGE_MAX_TOKENS,
    MAX_NEW_TOKENS,
    NEED_REFERENCE,
    TEMPERATURES,
    Question,
    answer_temperature,
    judge_requests,
    load_judge_prompts,
    load_questions,
    parse_rating,
    summarize,
)
from tests.support.fastchat import (
    COMPARE,
    CONVERSATION,
    GENERAL_CRITERIA,
    INSTRUCTION,
    MATH,
    MATH_CRITERIA,
    MATH_MULTI_TURN_SYSTEM,
    MATH_REFERENCE,
    MULTI_TURN_SYSTEM,
    RATE,
    REFERENCE_CONVERSATION,
    SINGLE_MATH_V1,
    SINGLE_PROMPTS,
    WRITING,
    judge_prompt_row,
)

ANSWERS = {
    81: ("Aloha! My trip to Hawaii ...", "A trip to Hawaii is always amazing ..."),
    111: ("The area is 3.", "The circle's area is 5*pi."),
}


def write_lines(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def single_prompts(tmp_path):
    """FastChat's four single-answer judge prompts, read from a judge_prompts.jsonl."""
    write_lines(tmp_path / "judge_prompts.jsonl", [judge_prompt_row(*p) for p in SINGLE_PROMPTS])
    return load_judge_prompts(tmp_path / "judge_prompts.jsonl")


@pytest.fixture
def bench(tmp_path):
    """(questions, judge prompts) read from FastChat's files written in tmp_path."""
    write_lines(tmp_path / "question.jsonl", [WRITING, MATH])
    write_lines(tmp_path / "gpt-4.jsonl", [MATH_REFERENCE])
    questions = load_questions(tmp_path / "question.jsonl", tmp_path / "gpt-4.jsonl")
    return questions, single_prompts(tmp_path)


def requests_by_key(bench, judge="gpt-4"):
    questions, prompts = bench
    return {r.key: r for r in judge_requests(questions, ANSWERS, prompts, judge)}


# --- FastChat's constants --------------------------------------------------------------------


def test_answer_temperatures_and_reference_categories_are_fastchats():
    # common.py's temperature_config and NEED_REF_CATS; gen_model_answer.py's defaults
    assert TEMPERATURES == {
        "writing": 0.7,
        "roleplay": 0.7,
        "extraction": 0.0,
        "math": 0.0,
        "coding": 0.0,
        "reasoning": 0.0,
        "stem": 0.1,
        "humanities": 0.1,
        "arena-hard-200": 0.0,
    }
    assert NEED_REFERENCE == ("math", "reasoning", "coding", "arena-hard-200")
    assert answer_temperature("stem") == 0.1
    assert answer_temperature("a category FastChat does not know") == 0.7
    assert (MAX_NEW_TOKENS, JUDGE_MAX_TOKENS) == (1024, 2048)


# --- the questions ---------------------------------------------------------------------------


def test_questions_are_read_with_the_reference_answer_files_turns_not_the_question_files(bench):
    writing, math = bench[0]
    assert writing == Question(81, "writing", tuple(WRITING["turns"]), None)
    assert math.turns == tuple(MATH["turns"])
    # gen_judgment.py grades against reference_answer/gpt-4.jsonl; question.jsonl's own
    # "reference" ("Area is 3") is never read
    assert math.reference == tuple(MATH_REFERENCE["choices"][0]["turns"])


def test_a_reference_answer_is_attached_only_to_the_categories_that_need_one(tmp_path):
    write_lines(tmp_path / "question.jsonl", [WRITING])
    write_lines(tmp_path / "gpt-4.jsonl", [{**MATH_REFERENCE, "question_id": 81}])
    (writing,) = load_questions(tmp_path / "question.jsonl", tmp_path / "gpt-4.jsonl")
    assert writing.reference is None


# --- the judge's requests --------------------------------------------------------------------


def test_turn_one_is_graded_alone_with_fastchats_general_prompt(bench):
    request = requests_by_key(bench)["mt_bench/81/turn1/single-v1"]
    expected = (
        INSTRUCTION
        + GENERAL_CRITERIA
        + "Begin your evaluation by providing a short explanation. "
        + RATE
        + "\n\n[Question]\n"
        + WRITING["turns"][0]
        + "\n\n[The Start of Assistant's Answer]\n"
        + ANSWERS[81][0]
        + "\n[The End of Assistant's Answer]"
    )
    assert request.messages == (("system", "You are a helpful assistant."), ("user", expected))
    assert (request.temperature, request.max_tokens) == (0.0, 2048)


def test_turn_two_is_graded_on_the_whole_conversation_with_the_multi_turn_prompt(bench):
    request = requests_by_key(bench)["mt_bench/81/turn2/single-v1-multi-turn"]
    expected = (
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n"
        + WRITING["turns"][0]
        + "\n\n### Assistant A:\n"
        + ANSWERS[81][0]
        + "\n\n### User:\n"
        + WRITING["turns"][1]
        + "\n\n### Assistant A:\n"
        + ANSWERS[81][1]
        + "\n\n<|The End of Assistant A's Conversation with User|>"
    )
    # the instruction is the system message here, its two trailing newlines kept
    assert request.messages == (("system", MULTI_TURN_SYSTEM), ("user", expected))
    assert MULTI_TURN_SYSTEM.endswith('"Rating: [[5]]".\n\n')


def test_a_math_turn_one_is_graded_against_the_reference_answer(bench):
    request = requests_by_key(bench)["mt_bench/111/turn1/single-math-v1"]
    reference = MATH_REFERENCE["choices"][0]["turns"]
    expected = (
        INSTRUCTION
        + MATH_CRITERIA
        + COMPARE
        + RATE
        + "\n\n[Question]\n"
        + MATH["turns"][0]
        + "\n\n[The Start of Reference Answer]\n"
        + reference[0]
        + "\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n"
        + ANSWERS[111][0]
        + "\n[The End of Assistant's Answer]"
    )
    assert request.messages == (("system", "You are a helpful assistant."), ("user", expected))


def test_a_math_turn_two_shows_the_reference_conversation_before_the_assistants(bench):
    request = requests_by_key(bench)["mt_bench/111/turn2/single-math-v1-multi-turn"]
    (system, user) = request.messages
    assert system == ("system", MATH_MULTI_TURN_SYSTEM)
    q1, q2 = MATH["turns"]
    r1, r2 = MATH_REFERENCE["choices"][0]["turns"]
    a1, a2 = ANSWERS[111]
    pieces = [
        "<|The Start of Reference Answer|>",
        q1,
        r1,
        q2,
        r2,
        "<|The End of Reference Answer|>",
        "<|The Start of Assistant A's Conversation with User|>",
        q1,
        a1,
        q2,
        a2,
        "<|The End of Assistant A's Conversation with User|>",
    ]
    at = 0
    for piece in pieces:  # each found after the one before it
        at = user[1].index(piece, at) + len(piece)
    assert user[1] == (REFERENCE_CONVERSATION + CONVERSATION).format(
        question_1=q1, question_2=q2, ref_answer_1=r1, ref_answer_2=r2, answer_1=a1, answer_2=a2
    )


@pytest.mark.parametrize(
    ("category", "template"),
    [
        ("math", "single-math-v1"),
        ("reasoning", "single-math-v1"),
        ("coding", "single-math-v1"),
        ("arena-hard-200", "single-math-v1"),
        ("extraction", "single-v1"),  # some of its rows carry a "reference" FastChat never reads
        ("stem", "single-v1"),
    ],
)
def test_reasoning_and_coding_are_graded_against_a_reference_as_math_is(
    tmp_path, category, template
):
    write_lines(tmp_path / "question.jsonl", [{**MATH, "category": category}])
    write_lines(tmp_path / "gpt-4.jsonl", [MATH_REFERENCE])
    questions = load_questions(tmp_path / "question.jsonl", tmp_path / "gpt-4.jsonl")
    requests = judge_requests(questions, ANSWERS, single_prompts(tmp_path), "gpt-4")
    assert [r.key for r in requests] == [
        f"mt_bench/111/turn1/{template}",
        f"mt_bench/111/turn2/{template.replace('-v1', '-v1-multi-turn')}",
    ]
    graded_against_reference = (
        MATH_REFERENCE["choices"][0]["turns"][0] in requests[0].messages[1][1]
    )
    assert graded_against_reference == (template == "single-math-v1")


def test_every_turn_of_every_answered_question_gets_one_request_and_unanswered_ones_none(bench):
    questions, prompts = bench
    keys = [r.key for r in judge_requests(questions, {111: ANSWERS[111]}, prompts, "gpt-4")]
    assert keys == [
        "mt_bench/111/turn1/single-math-v1",
        "mt_bench/111/turn2/single-math-v1-multi-turn",
    ]
    assert len(requests_by_key(bench)) == 4


def test_a_question_without_exactly_two_turns_is_graded_on_turn_one_only(bench):
    # gen_judgment.make_match_single: the multi-turn judge skips len(q["turns"]) != 2
    _, prompts = bench
    one = Question(900, "writing", ("Write a haiku.",), None)
    three = Question(901, "writing", ("Write a haiku.", "Shorter.", "Longer."), None)
    answers = {900: ("Leaves fall.",), 901: ("Leaves fall.", "Leaves.", "Leaves fall, slowly.")}
    requests = judge_requests([one, three], answers, prompts, "gpt-4")
    assert [r.key for r in requests] == [
        "mt_bench/900/turn1/single-v1",
        "mt_bench/901/turn1/single-v1",
    ]


def test_braces_in_an_answer_are_sent_as_written(bench):
    questions, prompts = bench
    answers = {81: ("def f(): return {question}", "{answer_2} {}")}
    requests = judge_requests(questions[:1], answers, prompts, "gpt-4")
    assert (
        "\ndef f(): return {question}\n[The End of Assistant's Answer]"
        in requests[0].messages[1][1]
    )
    assert "### Assistant A:\n{answer_2} {}\n\n<|The End" in requests[1].messages[1][1]


def test_an_anthropic_judge_may_write_the_1024_tokens_fastchat_gives_it(bench):
    questions, prompts = bench
    requests = judge_requests(questions, ANSWERS, prompts, "claude-2")
    assert {r.max_tokens for r in requests} == {1024}
    assert {r.temperature for r in requests} == {0.0}


# --- the ratings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("judgment", "rating"),
    [
        ("The answer is helpful and accurate.\n\nRating: [[7]]", 7.0),
        ("Rating: [[8.5]]", 8.5),
        ("Rating: [[10.]]", 10.0),
        ("I would rate it [7] out of 10.", 7.0),  # one_score_pattern_backup
        ("Overall a fine answer, no rating given.", None),
        ("$ERROR$", None),  # what chat_completion_openai returns when every retry failed
        ("Rating: [[7/10]]", None),  # neither pattern takes a fraction: FastChat's -1
        ("Rating: [[-3]]", None),  # nor a sign
        # several: re.search takes the first match of the first pattern that matches anywhere
        ("First I thought [[3]], but on reflection, Rating: [[8]]", 3.0),
        ("Step [2] is wrong; the reference says [4]. Rating: [[6]]", 6.0),
        ("Step [2] is wrong; the reference says [4].", 2.0),
    ],
)
def test_a_rating_is_read_as_fastchats_patterns_read_it(judgment, rating):
    assert parse_rating(judgment) == rating


# --- the score -------------------------------------------------------------------------------

HUMANITIES = Question(151, "humanities", ("Explain GDP.", "Now like I'm five."), None)


def test_the_score_pools_every_rated_turn_and_counts_the_unrated(bench):
    questions = [*bench[0], HUMANITIES]
    ratings = {(81, 1): 8, (81, 2): 6.0, (111, 1): 3.0, (111, 2): None, (151, 1): 9.0}
    ratings[151, 2] = 10.0
    summary = summarize(questions, ratings)
    assert json.loads(json.dumps(summary)) == summary
    assert summary.pop("per_category") == pytest.approx(
        {"writing": 7.0, "math": 3.0, "humanities": 9.5}
    )
    assert summary == pytest.approx(
        {
            # (8 + 6 + 3 + 9 + 10) / 5, not the mean of the turns' means (7.33)
            "mt_bench": 36 / 5,
            "turn_1": (8 + 3 + 9) / 3,
            "turn_2": (6 + 10) / 2,
            "rated": 5,
            "unrated": 1,
            "questions": 3,
        }
    )


def test_a_turn_without_a_rating_is_counted_not_fatal(bench):
    questions, _ = bench
    summary = summarize(questions, {(81, 1): None, (111, 1): None})
    assert summary["mt_bench"] is None and summary["turn_1"] is None
    assert summary["per_category"] == {"writing": None, "math": None}
    assert (summary["rated"], summary["unrated"], summary["questions"]) == (0, 2, 2)


def test_a_rating_of_a_turn_the_questions_do_not_have_is_refused(bench):
    with pytest.raises(ValueError, match="question 81 turn 3"):
        summarize(bench[0], {(81, 3): 5.0})
    with pytest.raises(ValueError, match="question 7 turn 1"):
        summarize(bench[0], {(7, 1): 5.0})


# --- errors a user can cause -----------------------------------------------------------------


def one_line(excinfo) -> str:
    assert isinstance(excinfo.value, StageError)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_math_question_without_a_reference_answer_is_refused_naming_file_and_question(tmp_path):
    write_lines(tmp_path / "question.jsonl", [WRITING, MATH])
    write_lines(tmp_path / "gpt-4.jsonl", [{**MATH_REFERENCE, "question_id": 112}])
    with pytest.raises(EvalError) as excinfo:
        load_questions(tmp_path / "question.jsonl", tmp_path / "gpt-4.jsonl")
    message = one_line(excinfo)
    assert str(tmp_path / "gpt-4.jsonl") in message and "question 111" in message

    with pytest.raises(EvalError) as excinfo:
        load_questions(tmp_path / "question.jsonl")
    message = one_line(excinfo)
    assert str(tmp_path / "question.jsonl") in message and "question 111" in message


def test_a_reference_answer_with_fewer_turns_than_its_question_is_refused(tmp_path):
    short = {**MATH_REFERENCE, "choices": [{"index": 0, "turns": ["The area is 0."]}]}
    write_lines(tmp_path / "question.jsonl", [MATH])
    write_lines(tmp_path / "gpt-4.jsonl", [short])
    with pytest.raises(EvalError, match=r"question 111 .* has 1 turn\(s\), the question 2"):
        load_questions(tmp_path / "question.jsonl", tmp_path / "gpt-4.jsonl")


def test_missing_judge_prompts_are_named_with_the_file(tmp_path):
    path = tmp_path / "judge_prompts.jsonl"
    write_lines(path, [judge_prompt_row(*p) for p in SINGLE_PROMPTS[:2]])
    with pytest.raises(EvalError) as excinfo:
        load_judge_prompts(path)
    assert one_line(excinfo) == (
        f"{path}: no judge prompt named single-v1-multi-turn, single-math-v1-multi-turn"
    )


def test_a_judge_prompt_fastchat_could_not_use_is_refused(tmp_path):
    path = tmp_path / "judge_prompts.jsonl"
    rows = [judge_prompt_row(*p) for p in SINGLE_PROMPTS]
    write_lines(path, [*rows[:3], {**rows[3], "output_format": "[[A]]"}])
    with pytest.raises(
        EvalError, match="single-math-v1-multi-turn has output_format '\\[\\[A\\]\\]'"
    ):
        load_judge_prompts(path)
    # the general turn-1 prompt is given no reference answer to show
    write_lines(path, [{**rows[0], "prompt_template": SINGLE_MATH_V1}, *rows[1:]])
    with pytest.raises(EvalError, match="single-v1's template asks for ref_answer_1"):
        load_judge_prompts(path)


@pytest.mark.parametrize(
    ("name", "second_line", "expected"),
    [
        (
            "question.jsonl",
            '{"question_id": 82, "category": "writing", "turns": [',
            "malformed JSON line",
        ),
        (
            "question.jsonl",
            '{"question_id": "82", "category": "writing", "turns": ["x"]}',
            "expected a question",
        ),
        (
            "question.jsonl",
            '{"question_id": 82, "category": "writing", "turns": "x"}',
            "expected a question",
        ),
        ("question.jsonl", '["a list"]', "row is a JSON list, expected an object like"),
        ("question.jsonl", json.dumps(WRITING), "question 81 appears twice"),
        ("gpt-4.jsonl", '{"question_id": 112, "choices": []}', "expected a model answer"),
        ("judge_prompts.jsonl", '{"name": "single-v1"}', "expected a judge prompt"),
    ],
)
def test_a_malformed_line_is_named_with_its_file_and_line_number(
    tmp_path, name, second_line, expected
):
    first = {
        "question.jsonl": WRITING,
        "gpt-4.jsonl": MATH_REFERENCE,
        "judge_prompts.jsonl": judge_prompt_row(*SINGLE_PROMPTS[0]),
    }[name]
    path = tmp_path / name
    path.write_text(json.dumps(first) + "\n" + second_line + "\n", encoding="utf-8")
    write_lines(tmp_path / "q.jsonl", [MATH])
    load = {
        "question.jsonl": lambda: load_questions(path),
        "gpt-4.jsonl": lambda: load_questions(tmp_path / "q.jsonl", path),
        "judge_prompts.jsonl": lambda: load_judge_prompts(path),
    }[name]
    with pytest.raises(EvalError) as excinfo:
        load()
    message = one_line(excinfo)
    assert message.startswith(f"{path}:2: ") and expected in message


@pytest.mark.parametrize("blank", ["", " \t\n"], ids=["empty", "whitespace"])
@pytest.mark.parametrize("turn", [1, 2])
def test_a_question_with_a_blank_turn_is_refused_naming_file_line_and_question(
    tmp_path, turn, blank
):
    """A damaged copy whose two turns are both there, one of them blank: answered and judged,
    it would count as MT-Bench whole ("80 of 80 questions scored"); refused as the questions
    are read, before any model."""
    turns = list(WRITING["turns"])
    turns[turn - 1] = blank
    path = tmp_path / "question.jsonl"
    write_lines(path, [{**WRITING, "question_id": 82}, {**WRITING, "turns": turns}])
    with pytest.raises(EvalError) as excinfo:
        load_questions(path)
    assert one_line(excinfo) == (
        f"data.mt_bench: {path}:2: question 81's turn {turn} is blank; copy FastChat's "
        "fastchat/llm_judge/data/mt_bench/question.jsonl whole"
    )


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(EvalError) as excinfo:
        load_questions(tmp_path / "question.jsonl")
    assert one_line(excinfo) == f"{tmp_path / 'question.jsonl'} does not exist"


def test_a_question_holding_a_line_separator_is_one_line(tmp_path):
    write_lines(tmp_path / "question.jsonl", [{**WRITING, "turns": ["one\u2028two", "three"]}])
    (question,) = load_questions(tmp_path / "question.jsonl")
    assert question.turns == ("one\u2028two", "three")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_bytes(json.dumps(WRITING).encode() + b"\n\xff\n")
    with pytest.raises(EvalError) as excinfo:
        load_questions(path)
    assert one_line(excinfo).startswith(f"{path}: not UTF-8 text")
