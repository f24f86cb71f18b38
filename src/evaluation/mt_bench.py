"""MT-Bench's single-answer grading, computed as FastChat's `fastchat/llm_judge` computes it
(lm-sys/FastChat at 0e6d3e4, fastchat/llm_judge/: common.py, gen_model_answer.py,
gen_judgment.py, show_result.py and the files under data/): its facts, its files read, its judge prompts rendered, its ratings parsed and its
score summarised. Pure functions: answering, calling the judge and caching its judgments are
the caller's.

The steps, as FastChat runs them:

1. Answers (gen_model_answer.py). Each question's turns are one conversation in the policy's
   own chat template: turn 1 is answered, then turn 2 is asked after the user's turn 1 and the
   model's own turn-1 answer. One answer per question, sampled at `answer_temperature(category)`
   (FastChat decodes greedily below 1e-4), at most MAX_NEW_TOKENS new tokens per turn.
2. Judgments (gen_judgment.py, common.run_judge_single): `judge_requests`, one per turn. Turn 1
   is graded alone; turn 2 with the whole conversation, the judge told to grade the second
   answer. Questions of the NEED_REFERENCE categories are graded against a reference answer:
   FastChat's reference_answer/<judge>.jsonl (GPT-4's answers, gpt-4.jsonl, for its GPT-4
   judge), never the "reference" field some rows of question.jsonl carry. The two disagree at
   times: for question 111 gpt-4.jsonl answers that the triangle's area is 0, question.jsonl 3.
3. Ratings (common.run_judge_single): `parse_rating`; a judgment without one is FastChat's
   score -1.
4. The score (show_result.py --mode single): `summarize`, the mean of every rated turn.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from src.evaluation.errors import EvalError
from src.evaluation.judging import JudgeRequest, json_rows

# MT-Bench as published (data/mt_bench/question.jsonl, ids 81-160): 80 two-turn questions, ten in
# each of eight categories. A copy other than this is not MT-Bench, and is not scored as it.
CATEGORIES = (
    "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
)  # fmt: skip
QUESTIONS_PER_CATEGORY = 10
TURNS = 2

# common.py's temperature_config: the answers' sampling temperature per category
TEMPERATURES: dict[str, float] = {
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
DEFAULT_TEMPERATURE = 0.7  # gen_model_answer.py: a category temperature_config does not name

# common.py's NEED_REF_CATS: the categories graded against a reference answer
NEED_REFERENCE: tuple[str, ...] = ("math", "reasoning", "coding", "arena-hard-200")

MAX_NEW_TOKENS = 1024  # gen_model_answer.py's --max-new-token default
JUDGE_MAX_TOKENS = 2048  # common.run_judge_single: chat_completion_openai(..., max_tokens=2048)
# common.run_judge_single: an Anthropic judge (model_adapter.ANTHROPIC_MODEL_LIST, every name
# "claude-...") is sent chat_completion_anthropic(..., max_tokens=1024)
ANTHROPIC_JUDGE_MAX_TOKENS = 1024
JUDGE_TEMPERATURE = 0.0  # common.run_judge_single: temperature=0 for every judge

# gen_judgment.make_judge_single: the four judge prompts of single-answer grading, by
# (reference-guided, turn)
TEMPLATES: dict[tuple[bool, int], str] = {
    (False, 1): "single-v1",
    (True, 1): "single-math-v1",
    (False, 2): "single-v1-multi-turn",
    (True, 2): "single-math-v1-multi-turn",
}
# common.run_judge_single: the only output format it parses for single-answer grading
RATING_FORMAT = "[[rating]]"
# common.run_judge_single: the fields it formats each kind of prompt with
FIELDS: dict[tuple[bool, int], frozenset[str]] = {
    (False, 1): frozenset({"question", "answer"}),
    (True, 1): frozenset({"question", "answer", "ref_answer_1"}),
    (False, 2): frozenset({"question_1", "question_2", "answer_1", "answer_2"}),
    (True, 2): frozenset(
        {"question_1", "question_2", "answer_1", "answer_2", "ref_answer_1", "ref_answer_2"}
    ),
}

# the rows of FastChat's files, for messages about a line that is none
QUESTION_EXAMPLE = '{"question_id": 81, "category": "writing", "turns": ["...", "..."]}'
ANSWER_EXAMPLE = '{"question_id": 111, "choices": [{"turns": ["...", "..."]}]}'
PROMPT_EXAMPLE = (
    '{"name": "single-v1", "system_prompt": ..., "prompt_template": ..., "output_format": ...}'
)

# common.py's one_score_pattern and one_score_pattern_backup: "[[7]]", else "[7]"
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: tuple[str, ...]  # the user's turns (2 in MT-Bench)
    reference: tuple[str, ...] | None  # the reference answer's turns, for NEED_REFERENCE


@dataclass(frozen=True)
class JudgePrompt:
    """One row of FastChat's judge_prompts.jsonl."""

    name: str
    system_prompt: str
    prompt_template: str
    output_format: str  # e.g. "[[rating]]"


def answer_temperature(category: str) -> float:
    """The temperature FastChat samples a `category` question's answers at."""
    return TEMPERATURES.get(category, DEFAULT_TEMPERATURE)


# --- FastChat's files ---------------------------------------------------------------------------


def load_questions(path: Path, reference_answers: Path | None = None) -> list[Question]:
    """The questions of `path` (question.jsonl), in its order, each NEED_REFERENCE one with its
    reference answer from `reference_answers` (FastChat's model-answer format, as
    reference_answer/gpt-4.jsonl: {"question_id", "choices": [{"turns": [...]}]})."""
    references = _load_references(reference_answers) if reference_answers else {}
    questions: list[Question] = []
    seen: set[int] = set()
    for where, row in json_rows(path, QUESTION_EXAMPLE):
        question = _question(row, where)
        if question.question_id in seen:
            raise EvalError(f"{where}: question {question.question_id} appears twice")
        seen.add(question.question_id)
        if question.category in NEED_REFERENCE:
            reference = _reference(question, references, path, reference_answers)
            question = Question(question.question_id, question.category, question.turns, reference)
        questions.append(question)
    return questions


# What mends a damaged copy of the questions
COPY_WHOLE = "copy FastChat's fastchat/llm_judge/data/mt_bench/question.jsonl whole"


def require_whole(questions: Sequence[Question], path: Path) -> None:
    """`questions` (of `path`) are MT-Bench's: ten in each of CATEGORIES, two turns each. A copy
    cut short (3 questions scored as "3 of 3") or grown is refused, named, before any answer."""
    counts = Counter(q.category for q in questions)
    off = [f"{c} {counts[c]}" for c in (*CATEGORIES, *sorted(set(counts) - set(CATEGORIES)))
           if counts[c] != (QUESTIONS_PER_CATEGORY if c in CATEGORIES else 0)]  # fmt: skip
    turns = [q.question_id for q in questions if len(q.turns) != TURNS]
    if off or turns:
        what = (
            f"questions per category: {', '.join(off)}"
            if off
            else (f"question {turns[0]} has other than {TURNS} turns")
        )
        raise EvalError(
            f"data.mt_bench: {path} is not MT-Bench's {len(CATEGORIES) * QUESTIONS_PER_CATEGORY} "
            f"questions, {QUESTIONS_PER_CATEGORY} in each of its {len(CATEGORIES)} categories "
            f"with {TURNS} turns each ({len(questions)} questions; {what}): {COPY_WHOLE}"
        )


def _question(row: dict, where: str) -> Question:
    qid, category, turns = row.get("question_id"), row.get("category"), row.get("turns")
    if not (_is_int(qid) and isinstance(category, str) and _strings(turns)):
        raise EvalError(
            f"{where}: expected a question: an integer 'question_id', a string "
            "'category' and 'turns', a non-empty list of strings"
        )
    blank = next((n for n, turn in enumerate(turns, 1) if not turn.strip()), None)
    if blank is not None:  # a damaged copy: answered and judged, it would score as whole
        raise EvalError(
            f"data.mt_bench: {where}: question {qid}'s turn {blank} is blank; {COPY_WHOLE}"
        )
    return Question(qid, category, tuple(turns), None)


def _load_references(path: Path) -> dict[int, tuple[str, ...]]:
    """question_id -> the reference answer's turns; as common.load_model_answers, the last row
    of a question_id wins."""
    references: dict[int, tuple[str, ...]] = {}
    for where, row in json_rows(path, ANSWER_EXAMPLE):
        qid, choices = row.get("question_id"), row.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        turns = first.get("turns") if isinstance(first, dict) else None
        if not (_is_int(qid) and _strings(turns)):
            raise EvalError(
                f"{where}: expected a model answer: an integer 'question_id' and "
                "'choices'[0]['turns'], a non-empty list of strings"
            )
        references[qid] = tuple(turns)
    return references


def _reference(
    question: Question,
    references: dict[int, tuple[str, ...]],
    path: Path,
    reference_answers: Path | None,
) -> tuple[str, ...]:
    where = f"{question.category} question {question.question_id} of {path}"
    if reference_answers is None:
        raise EvalError(f"{where} is graded against a reference answer, but none were given")
    reference = references.get(question.question_id)
    if reference is None:
        raise EvalError(
            f"{reference_answers}: no reference answer to {where}, which is graded against one"
        )
    if len(reference) < len(question.turns):
        raise EvalError(
            f"{reference_answers}: the reference answer to {where} has {len(reference)} "
            f"turn(s), the question {len(question.turns)}"
        )
    return reference


def load_judge_prompts(path: Path) -> dict[str, JudgePrompt]:
    """The rows of `path` (judge_prompts.jsonl) by name; the four of single-answer grading must
    be there, in the output format FastChat parses, with the fields FastChat formats them with."""
    prompts: dict[str, JudgePrompt] = {}
    for where, row in json_rows(path, PROMPT_EXAMPLE):
        values = [row.get(k) for k in ("name", "system_prompt", "prompt_template", "output_format")]
        if not all(isinstance(v, str) for v in values):
            raise EvalError(
                f"{where}: expected a judge prompt: strings 'name', 'system_prompt', "
                "'prompt_template' and 'output_format'"
            )
        prompts[values[0]] = JudgePrompt(*values)
    missing = [name for name in TEMPLATES.values() if name not in prompts]
    if missing:
        raise EvalError(f"{path}: no judge prompt named {', '.join(missing)}")
    for kind, name in TEMPLATES.items():
        _check_prompt(prompts[name], FIELDS[kind], path)
    return prompts


def _check_prompt(prompt: JudgePrompt, fields: frozenset[str], path: Path) -> None:
    if prompt.output_format != RATING_FORMAT:
        raise EvalError(
            f"{path}: judge prompt {prompt.name} has output_format "
            f"{prompt.output_format!r}; single-answer grading parses {RATING_FORMAT!r}"
        )
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(prompt.prompt_template) if f}
    except ValueError as err:
        raise EvalError(f"{path}: judge prompt {prompt.name}'s template: {err}") from None
    if not used <= fields:
        raise EvalError(
            f"{path}: judge prompt {prompt.name}'s template asks for "
            f"{', '.join(sorted(used - fields))}; it is given {', '.join(sorted(fields))}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(s, str) for s in value)


# --- the judge's requests and ratings -----------------------------------------------------------


def judge_requests(
    questions: Sequence[Question],
    answers: Mapping[int, tuple[str, str]],
    prompts: Mapping[str, JudgePrompt],
    judge: str,
) -> list[JudgeRequest]:
    """The judge's requests for the answers (question_id -> the answer's turns), as FastChat's
    run_judge_single sends them to `judge` (the judge model's name): turn 1 of every question,
    turn 2 of every two-turn one (gen_judgment.make_match_single skips the others). A question
    without an answer is left out."""
    max_tokens = ANTHROPIC_JUDGE_MAX_TOKENS if judge.startswith("claude-") else JUDGE_MAX_TOKENS
    requests = []
    for question in questions:
        answer = answers.get(question.question_id)
        if answer is None:
            continue
        for turn in (1, 2) if len(question.turns) == 2 else (1,):
            name = TEMPLATES[question.category in NEED_REFERENCE, turn]
            prompt = prompts[name]
            user = prompt.prompt_template.format(**_fields(question, answer, turn))
            # Conversation.to_openai_api_messages sends no system message when it is empty
            system = (("system", prompt.system_prompt),) if prompt.system_prompt else ()
            requests.append(
                JudgeRequest(
                    key=f"mt_bench/{question.question_id}/turn{turn}/{name}",
                    messages=(*system, ("user", user)),
                    temperature=JUDGE_TEMPERATURE,
                    max_tokens=max_tokens,
                )
            )
    return requests


def _fields(question: Question, answer: Sequence[str], turn: int) -> dict[str, str]:
    """What common.run_judge_single formats a `turn` judge prompt with."""
    if turn == 1:
        fields = {"question": question.turns[0], "answer": answer[0]}
    else:
        fields = {
            "question_1": question.turns[0],
            "question_2": question.turns[1],
            "answer_1": answer[0],
            "answer_2": answer[1],
        }
    if question.reference is not None:
        fields["ref_answer_1"] = question.reference[0]
        if turn == 2:
            fields["ref_answer_2"] = question.reference[1]
    return fields


def parse_rating(judgment: str) -> float | None:
    """The judge's rating in `judgment`: the first "[[x]]", else the first "[x]" (FastChat's
    score); None where there is neither (FastChat's -1)."""
    match = ONE_SCORE.search(judgment) or ONE_SCORE_BACKUP.search(judgment)
    # FastChat reads the number with ast.literal_eval: the same value ("7" -> 7, "8.5" -> 8.5)
    return float(match.group(1)) if match else None


# --- the score ----------------------------------------------------------------------------------


def summarize(
    questions: Sequence[Question], ratings: Mapping[tuple[int, int], float | None]
) -> dict:
    """MT-Bench's score from the judge's ratings ((question_id, turn) -> rating, None where the
    judgment had none), as show_result.py's single mode computes it: it drops the unrated turns
    (score -1) and averages the rest, both turns pooled (not the mean of the turns' means).
    Per category (show_result.py prints none), the same pooled mean of its rated turns. A mean
    of nothing is None."""
    categories = {q.question_id: q.category for q in questions}
    turns = {q.question_id: len(q.turns) for q in questions}
    rated: list[tuple[str, int, float]] = []  # (category, turn, rating)
    for (qid, turn), rating in ratings.items():
        if not 1 <= turn <= turns.get(qid, 0):
            raise ValueError(f"a rating of question {qid} turn {turn}, not among the questions")
        if rating is not None:
            rated.append((categories[qid], turn, rating))
    return {
        "mt_bench": _mean(r for _, _, r in rated),
        "turn_1": _mean(r for _, t, r in rated if t == 1),
        "turn_2": _mean(r for _, t, r in rated if t == 2),
        "per_category": {
            category: _mean(r for c, _, r in rated if c == category)
            for category in dict.fromkeys(categories.values())
        },
        "rated": len(rated),
        "unrated": sum(rating is None for rating in ratings.values()),
        "questions": len(questions),
    }


def _mean(values) -> float | None:
    values = list(values)
    return fmean(values) if values else None
