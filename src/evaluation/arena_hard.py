r"""Arena-Hard-Auto (Li et al. 2024, arXiv 2406.11939) judged and scored as its own code does it:
its questions and a baseline's answers read from its files, the two games per question its
judge plays, the verdict read from a judgment, and a model's win rate against the baseline with
the bootstrap interval its leaderboard prints. Pure functions: answering, calling the judge and
caching the judgments are the caller's.

Read from lmarena/arena-hard-auto (formerly lm-sys/arena-hard-auto):

- v0.1 at 0489bf3 (2024-09-01, the last commit before v2.0; the code behind the v0.1 leaderboard
  that papers report): config/judge_config.yaml, gen_judgment.py, show_result.py,
  utils_math.py;
- v2.0 at 196f6b8 (2025): config/arena-hard-v2.0.yaml, config/arena-hard-v0.1.yaml,
  utils/judge_utils.py, utils/completion.py, gen_judgment.py, show_result.py.

The version is the questions' category, the key of the benchmark's JUDGE_SETTINGS: every v0.1
question is "arena-hard-v0.1", v2.0's are "hard_prompt" and "creative_writing" (JUDGE_SETTINGS
also knows "coding" and "math"). v0.1's questions are judged and scored the v0.1 way even when
read from v2.0's schema (900183d rewrote v0.1's files in it): that is what its leaderboard did.

Judging (gen_judgment.py). Two games per question: game 1 with the baseline's answer as
assistant A and the model's as B, game 2 swapped, each the system prompt and PROMPT_TEMPLATE
filled in. v0.1: temperature 0, 4096 tokens (judge gpt-4-1106-preview, baseline gpt-4-0314).
v2.0: temperature 0 and 16000 tokens for gpt-4.1, 1.0 and 32000 for gemini-2.5 (the alternative
its config leaves commented out); "creative_writing" is judged under a prompt without the
judge's own answer first. Each category's games are played against its own baseline
(JUDGE_SETTINGS: o3-mini-2025-01-31 for hard prompts, coding and math, gemini-2.0-flash-001 for
creative writing, gpt-4-0314 for v0.1). Both versions' default system prompt and template are
the same text.

Verdicts. v0.1: `\[\[([AB<>=]+)\]\]` on the judgment as written; one distinct match is the
verdict, several different ones are none; with no match at all the judge is asked once more
(`retry_request`). v2.0: `\[\[([AB<>=]+)\]\]`, else `\[([AB<>=]+)\]`, on the judgment
upper-cased; the last match is the verdict, whatever different ones precede it; no second ask.

Scoring (show_result.py). Each verdict is battles the model wins (1), ties (1/2) or loses (0):
one battle, or three for a "significantly better" one (">>", weight 3). The bootstrap resamples
those battles with replacement, 100 times by default (a ">>" verdict's three independently;
show_result resamples every model's battles together, here the model's own are).

- v0.1: Bradley-Terry fitted by maximum likelihood (utils_math.compute_mle_elo: a logistic
  regression without intercept or penalty on every battle twice, a tie won once and lost once),
  the baseline anchored; the win rate is BT's probability that the model beats the baseline,
  1 / (1 + 10^((R_baseline - R_model) / 400)), the interval its value at percentiles 2.5 and
  97.5 of the bootstrap fits' Elo. Every battle is the model against the baseline, so the
  likelihood has one free parameter and its maximum is where that probability equals the share
  of battles won, ties counting half: the fit is that share (tests/evaluation/test_eval_arena_hard.py runs
  compute_mle_elo's regression to check it), also on the leaderboard, where each model's rating
  depends on its own battles only. A game without one of its five verdicts is left out.
- v2.0: no fit: the mean of the battles' scores. The point is the mean of the bootstrap means,
  the interval their quantiles 0.05 and 0.95 (a 90% interval). A question either game of which
  has no verdict is left out whole, as is one with a verdict outside show_result's ten labels
  (on which it fails). Each category is scored on its own battles against its own baseline,
  never pooled: show_result prints one leaderboard per category it is asked for, hard_prompt
  when asked for none, which is the figure here (`HEADLINE`; another category where the
  questions have no hard prompt), each category's beside it.

Style control (show_result's --style-control, v2.0's --control-features) is not here: it
standardises the style differences over the battles of every model judged and fits one style
coefficient for all, so a model's controlled rate is its rate at the leaderboard's average style
difference and depends on which models are in the judgment folder; on one model's battles alone
it stays near its raw rate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.evaluation.errors import EvalError
from src.evaluation.judging import JudgeRequest, json_rows

V01, V2 = "v0.1", "v2.0"
# utils/judge_utils.py's JUDGE_SETTINGS keys, the categories of the questions
VERSIONS = {
    "arena-hard-v0.1": V01,
    "hard_prompt": V2,
    "coding": V2,
    "math": V2,
    "creative_writing": V2,
}
# JUDGE_SETTINGS' baseline of each category: the model whose answers its questions' games are
# played against (eval.arena_hard_baseline=<name> plays every category against one)
BASELINES = {
    "arena-hard-v0.1": "gpt-4-0314",
    "hard_prompt": "o3-mini-2025-01-31",
    "coding": "o3-mini-2025-01-31",
    "math": "o3-mini-2025-01-31",
    "creative_writing": "gemini-2.0-flash-001",
}
# the category show_result.py reports when asked for none (its --category default): v2.0's figure
HEADLINE = "hard_prompt"

# v0.1: config/judge_config.yaml's system_prompt; v2.0: utils/judge_utils.py's
# OG_ARENA_HARD_PROMPT (the same text)
SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by "
    "two AI assistants to the user prompt displayed below. You will be given assistant A's "
    "answer and assistant B's answer. Your job is to evaluate which assistant's answer is "
    "better.\n"
    "\n"
    "Begin your evaluation by generating your own answer to the prompt. You must provide your "
    "answers before judging any answers.\n"
    "\n"
    "When evaluating the assistants' answers, compare both assistants' answers with your "
    "answer. You must identify and correct any mistakes or inaccurate information.\n"
    "\n"
    "Then consider if the assistant's answers are helpful, relevant, and concise. Helpful "
    "means the answer correctly responds to the prompt or follows the instructions. Note when "
    "user prompt has any ambiguity or more than one interpretation, it is more helpful and "
    "appropriate to ask for clarifications or more information from the user than providing "
    "an answer based on assumptions. Relevant means all parts of the response closely connect "
    "or are appropriate to what is being asked. Concise means the response is clear and not "
    "verbose or excessive.\n"
    "\n"
    "Then consider the creativity and novelty of the assistant's answers when needed. "
    "Finally, identify any missing important information in the assistants' answers that "
    "would be beneficial to include when responding to the user prompt.\n"
    "\n"
    "After providing your explanation, you must output only one of the following choices as "
    "your final verdict with a label:\n"
    "\n"
    "1. Assistant A is significantly better: [[A>>B]]\n"
    "2. Assistant A is slightly better: [[A>B]]\n"
    "3. Tie, relatively the same: [[A=B]]\n"
    "4. Assistant B is slightly better: [[B>A]]\n"
    "5. Assistant B is significantly better: [[B>>A]]\n"
    "\n"
    'Example output: "My final verdict is tie: [[A=B]]".'
)
# v2.0's creative_writing system prompt: the same without the judge's own answer
CREATIVE_WRITING_PROMPT = SYSTEM_PROMPT.replace(
    "Begin your evaluation by generating your own answer to the prompt. You must provide your "
    "answers before judging any answers.\n\n",
    "",
).replace("compare both assistants' answers with your answer.", "compare both assistants' answers.")
# v2.0's placeholders; v0.1's template is the same text with {question_1}, {answer_1}, {answer_2}
PROMPT_TEMPLATE = (
    "<|User Prompt|>\n{QUESTION}\n\n"
    "<|The Start of Assistant A's Answer|>\n{ANSWER_A}\n<|The End of Assistant A's Answer|>\n\n"
    "<|The Start of Assistant B's Answer|>\n{ANSWER_B}\n<|The End of Assistant B's Answer|>"
)
JUDGE_TEMPERATURE = 0.0  # v0.1's config/judge_config.yaml
JUDGE_MAX_TOKENS = 4096
# config/arena-hard-v2.0.yaml: gpt-4.1's settings, which it applies to any judge, and
# gemini-2.5's, commented out beside them
V2_JUDGES = {"gpt-4.1": (0.0, 16000), "gemini-2.5": (1.0, 32000)}
# v0.1's second attempt at a judgment without a verdict (number_of_judgment_attempts: 2)
FOLLOW_UP = "continue your judgment and finish by outputting a final verdict label"

V01_PATTERN = r"\[\[([AB<>=]+)\]\]"  # config/judge_config.yaml's regex_pattern
V2_PATTERNS = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")  # arena-hard-v2.0.yaml's, in order

# assistant A's score in each verdict v2.0's show_result knows (label_to_score); v0.1's knows
# the five its judge is asked for
A_SCORES = {
    "A>>B": 1.0,
    "A>B": 1.0,
    "A=B": 0.5,
    "B>A": 0.0,
    "B>>A": 0.0,
    "A<<B": 0.0,
    "A<B": 0.0,
    "B=A": 0.5,
    "B<<A": 1.0,
    "B<A": 1.0,
}
V01_VERDICTS = frozenset({"A>>B", "A>B", "A=B", "B>A", "B>>A"})
WEIGHT = 3  # battles a "significantly better" verdict counts as (show_result's weight)
OUTCOMES = {1.0: "wins", 0.5: "ties", 0.0: "losses"}
SCALE = 400  # compute_mle_elo's Elo points per factor of 10 in the odds
EDGE = 1e-12  # a share of 0 or 1 is an Elo of -inf or +inf: kept finite for the percentiles
LEVELS = {V01: 0.95, V2: 0.90}  # the bootstrap intervals' coverage


# the rows of the benchmark's files (v2.0's schema), for messages about a line that is none
QUESTION_EXAMPLE = '{"uid": ..., "category": "hard_prompt", "prompt": ...}'
ANSWER_EXAMPLE = '{"uid": ..., "model": ..., "messages": [..., {"content": {"answer": ...}}]}'


@dataclass(frozen=True)
class Question:
    uid: str  # v0.1: question_id; v2.0: uid
    category: str
    prompt: str  # the user's turn


# --- files -----------------------------------------------------------------------------------


def load_questions(path: Path) -> list[Question]:
    """An Arena-Hard question.jsonl: v2.0's schema {uid, category, prompt} (v0.1's questions
    too since 900183d) or v0.1's {question_id, category, turns: [{content}]}."""
    questions: list[Question] = []
    first: dict[str, str] = {}  # uid -> where it first is
    for where, row in json_rows(path, QUESTION_EXAMPLE):
        if "uid" in row:
            uid, prompt = _text(row, where, "uid"), _text(row, where, "prompt")
        elif "question_id" in row:
            uid, prompt = _text(row, where, "question_id"), _text(row, where, "turns", 0, "content")
        else:
            raise EvalError(f"{where}: no 'uid' (v2.0) or 'question_id' (v0.1)")
        category = _text(row, where, "category")
        if category not in VERSIONS:
            raise EvalError(
                f"{where}: category {category!r} is none of Arena-Hard's ({', '.join(VERSIONS)})"
            )
        if uid in first:
            raise EvalError(f"{where}: question {uid} again (first at {first[uid]})")
        first[uid] = where
        questions.append(Question(uid=uid, category=category, prompt=prompt))
    if not questions:
        raise EvalError(f"{path}: no questions")
    if len({VERSIONS[q.category] for q in questions}) > 1:
        raise EvalError(f"{path}: mixes Arena-Hard v0.1's and v2.0's categories")
    return questions


def load_answers(path: Path) -> tuple[str, dict[str, str]]:
    """(model name, uid -> answer) from a model-answer jsonl: v2.0's schema {uid, model,
    messages: [..., {content: {answer}}]} (v0.1's answers too since 900183d) or v0.1's
    {question_id, model_id, choices: [{turns: [{content}]}]}. A uid answered twice keeps its
    last answer, as the benchmark's loader does."""
    name: str | None = None
    answers: dict[str, str] = {}
    for where, row in json_rows(path, ANSWER_EXAMPLE):
        if "uid" in row:
            uid, model = _text(row, where, "uid"), _text(row, where, "model")
            answer = _text(row, where, "messages", -1, "content", "answer")
        elif "question_id" in row:
            uid, model = _text(row, where, "question_id"), _text(row, where, "model_id")
            answer = _text(row, where, "choices", 0, "turns", 0, "content")
        else:
            raise EvalError(f"{where}: no 'uid' (v2.0) or 'question_id' (v0.1)")
        if name is not None and model != name:
            raise EvalError(f"{where}: answers of {model!r} among those of {name!r}")
        name = model
        answers[uid] = answer
    if name is None:
        raise EvalError(f"{path}: no answers")
    return name, answers


def _text(row: dict, where: str, *keys: str | int) -> str:
    """row[keys[0]][keys[1]]..., which must be a string."""
    value = row
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            value = None
            break
    if not isinstance(value, str):
        field = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
        raise EvalError(f"{where}: no string at {field}")
    return value


# --- judging ---------------------------------------------------------------------------------


def version_of(questions: Iterable[Question]) -> str:
    """The Arena-Hard version whose code judges and scores these questions."""
    found = set()
    for q in questions:
        if q.category not in VERSIONS:
            raise EvalError(f"question {q.uid}: category {q.category!r} is none of Arena-Hard's")
        found.add(VERSIONS[q.category])
    if len(found) != 1:
        raise EvalError("no questions" if not found else "questions of Arena-Hard v0.1 and v2.0")
    return found.pop()


def judge_requests(
    questions: Sequence[Question], answers: dict[str, str], baseline: dict[str, str], judge: str
) -> list[JudgeRequest]:
    """The two games of every question both `answers` and `baseline` answer: game 1 with the
    baseline as assistant A, game 2 with the model as A. `judge`: the judge model's name, which
    sets v2.0's temperature and max_tokens."""
    requests = []
    for q in questions:
        if q.uid not in answers or q.uid not in baseline:
            continue
        if version_of([q]) == V01:
            temperature, max_tokens = JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS
        else:
            temperature, max_tokens = V2_JUDGES.get(judge, V2_JUDGES["gpt-4.1"])
        system = CREATIVE_WRITING_PROMPT if q.category == "creative_writing" else SYSTEM_PROMPT
        games = ((baseline[q.uid], answers[q.uid]), (answers[q.uid], baseline[q.uid]))
        for game, (a, b) in enumerate(games, 1):
            user = PROMPT_TEMPLATE.format(QUESTION=q.prompt, ANSWER_A=a, ANSWER_B=b)
            requests.append(
                JudgeRequest(
                    key=f"arena_hard/{q.uid}/game{game}",
                    messages=(("system", system), ("user", user)),
                    temperature=temperature,
                    max_tokens=max_tokens,
                )
            )
    return requests


def parse_verdict(judgment: str, version: str = V01) -> str | None:
    """The verdict label ("A>>B", "B>A", ...) the benchmark reads from a judgment, None for none
    (v0.1 also for several different ones; v2.0 takes the last). `version`: the question's,
    `version_of([question])`."""
    if version == V01:
        found = set(re.findall(V01_PATTERN, judgment))
        return found.pop() if len(found) == 1 else None
    for pattern in V2_PATTERNS:
        found = re.findall(pattern, judgment.upper())
        if found:
            return found[-1]
    return None


def has_verdict(judgment: str, version: str = V01) -> bool:
    """Whether a judgment says a verdict at all (v0.1: any label, even several different ones,
    which then count for nothing; v2.0: one it reads): one that does not is asked again."""
    if version == V01:
        return re.search(V01_PATTERN, judgment) is not None
    return parse_verdict(judgment, version) is not None


def retry_request(request: JudgeRequest, judgment: str, version: str = V01) -> JudgeRequest | None:
    """v0.1's second attempt at a game whose judgment matched no verdict at all (none for one
    that matched several, nor in v2.0): the conversation goes on with FOLLOW_UP. The game's
    verdict is then that of the two judgments joined, which is the second's: the first has none,
    and none spans the newline that joins them."""
    if version != V01 or re.search(V01_PATTERN, judgment):
        return None
    return JudgeRequest(
        key=f"{request.key}/attempt2",
        messages=(*request.messages, ("assistant", judgment), ("user", FOLLOW_UP)),
        temperature=request.temperature,
        max_tokens=request.max_tokens,
    )


# --- scoring ---------------------------------------------------------------------------------


def battles(verdict: str | None, game: int, version: str) -> list[float]:
    """The model's scores in the battles one game's verdict counts as (1 won, 0.5 tied, 0
    lost; three for a "significantly better" verdict), [] for no verdict the scoring knows."""
    if verdict not in (V01_VERDICTS if version == V01 else A_SCORES):
        return []
    model_is_a = game == 2
    mine = A_SCORES[verdict] if model_is_a else 1.0 - A_SCORES[verdict]
    return [mine] * (WEIGHT if ">>" in verdict or "<<" in verdict else 1)


def score(
    questions: Sequence[Question],
    verdicts: dict[tuple[str, int], str | None],
    lengths: dict[str, int] | None = None,
    bootstrap: int = 100,
    seed: int = 0,
) -> dict:
    """The model's win rate against the baseline from the games' verdicts, keyed (uid, game), as
    the questions' version reports it (module docstring), with:

    lower, upper, level: its bootstrap interval and the interval's coverage;
    games: per game, the verdicts the win rate counts that the model won, tied and lost;
    unjudged: games of the questions judged (either game in `verdicts`), of every category, that
        count for nothing: no verdict, one the scoring does not know, or absent;
    questions, battles: the questions and the (weighted) battles the win rate counts;
    category: the category the win rate is of: v2.0's `HEADLINE` where the questions have one,
        else their first category; v0.1's one;
    categories: each category's questions, win rate and interval (v2.0 reports each on its own,
        against its own baseline);
    avg_tokens: with `lengths` (uid -> the model's answer's tokens), their mean over the
        questions, truncated, as the v0.1 leaderboard prints it.

    A win rate and interval are None when no battle counts.
    """
    if bootstrap < 1:
        raise ValueError(f"bootstrap={bootstrap}: needs at least one resample")
    version = version_of(questions)
    games = {f"game{g}": {"wins": 0, "ties": 0, "losses": 0} for g in (1, 2)}
    unjudged = 0
    # v2.0 leaves out a question either game of which counts for nothing, v0.1 only that game
    counts = all if version == V2 else any
    by_category: dict[str, list[list[float]]] = {}  # each counted question's battles
    categories = list(dict.fromkeys(q.category for q in questions))
    headline = HEADLINE if HEADLINE in categories else categories[0]
    for q in questions:
        if (q.uid, 1) not in verdicts and (q.uid, 2) not in verdicts:
            continue  # never judged
        both = [battles(verdicts.get((q.uid, g)), g, version) for g in (1, 2)]
        unjudged += sum(not b for b in both)
        if not counts(both):
            continue
        for g, b in zip((1, 2), both, strict=True):
            if b and q.category == headline:
                games[f"game{g}"][OUTCOMES[b[0]]] += 1
        by_category.setdefault(q.category, []).append(both[0] + both[1])
    scores = _flat(by_category.get(headline, []))
    avg_tokens = None
    if lengths is not None:
        mine = [lengths[q.uid] for q in questions if q.uid in lengths]
        avg_tokens = int(np.mean(mine)) if mine else None
    return {
        "version": version,
        **win_rate(scores, version, bootstrap, seed),
        "level": LEVELS[version],
        "games": games,
        "unjudged": unjudged,
        "category": headline,
        "questions": len(by_category.get(headline, [])),
        "battles": len(scores),
        "categories": {
            category: {
                "questions": len(judged),
                **win_rate(_flat(judged), version, bootstrap, seed),
            }
            for category, judged in by_category.items()
        },
        "avg_tokens": avg_tokens,
    }


def _flat(judged: list[list[float]]) -> np.ndarray:
    return np.array([s for rows in judged for s in rows], dtype=np.float64)


def win_rate(scores: np.ndarray, version: str, bootstrap: int, seed: int) -> dict:
    """{win_rate, lower, upper} of the battles' scores, as `version`'s show_result reports it."""
    if len(scores) == 0:
        return {"win_rate": None, "lower": None, "upper": None}
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), size=(bootstrap, len(scores)))].mean(axis=1)
    if version == V01:
        # BT's fit (module docstring); percentiles of the fits' Elo, as its show_result takes them
        low, high = np.percentile(_elo(means), [2.5, 97.5])
        point, lower, upper = scores.mean(), _beats_baseline(low), _beats_baseline(high)
    else:
        point, (lower, upper) = means.mean(), np.quantile(means, [0.05, 0.95])
    return {"win_rate": float(point), "lower": float(lower), "upper": float(upper)}


def _elo(p: np.ndarray) -> np.ndarray:
    """The model's Elo above the baseline's at which BT gives it win probability p."""
    p = np.clip(p, EDGE, 1 - EDGE)
    return SCALE * np.log10(p / (1 - p))


def _beats_baseline(elo: float) -> float:
    """compute_mle_elo's predicted win rate against the baseline (predict_win_rate)."""
    return 1.0 / (1.0 + 10.0 ** (-elo / SCALE))
