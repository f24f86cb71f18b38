"""Tiny copies of MT-Bench's and Arena-Hard's data, in their own files' layouts and schemas, for the
tiny models: what `eval.benchmarks=[mt_bench,arena_hard]` reads in the demo and the tests, graded
by tiny-chat-judge (src/tiny/chat_judge.py).

- `<dir>/mt_bench/`: FastChat's llm_judge/data layout. MT-Bench's eight categories, ten
  two-turn questions each (the eval set's instructions, then a follow-up), a reference answer
  for the reference-guided categories (English lines, as GPT-4's, not toy sentences), and the four single-answer judge prompts, worded as
  tiny-chat-judge learned them (FastChat's own are the user's copy: README, "Benchmarks").
- `<dir>/arena_hard/`: arena-hard-auto's data/arena-hard-v0.1 layout. Questions in v0.1's
  schema and the answers of a baseline (`BASELINE`) that is helpful half the time.

    python -m src.tiny.benchmarks DIR    # then data.mt_bench=DIR/mt_bench data.arena_hard=DIR/arena_hard

Written from a fixed seed: the same files every time; `ensure` writes them once (a stamp beside
them holds the hash of this module).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from src.core.artifacts import atomic_write_text, write_once
from src.evaluation.mt_bench import CATEGORIES, QUESTIONS_PER_CATEGORY
from src.tiny import chat_judge, toy

ARENA_HARD_QUESTIONS = 100
BASELINE = "tiny-baseline"  # eval.arena_hard_baseline=tiny-baseline
BASELINE_SHARE = 0.5  # the baseline's answers: each sentence helpful with this probability
FOLLOW_UPS = (
    "Now make your answer shorter.",
    "Rewrite your previous response for a beginner.",
    "Can you give one more example?",
    "Turn your answer into a list of steps.",
    "Explain the hardest part of your answer again.",
)
REFERENCE_GUIDED = ("math", "reasoning", "coding")  # src.evaluation.mt_bench.NEED_REFERENCE's


def instructions() -> list[str]:
    return [
        row["instruction"]
        for row in json.loads((toy.DATA_DIR / "prompts" / "eval.json").read_text())
    ]


def judge_prompts() -> list[dict]:
    """The four prompts of single-answer grading in FastChat's schema, in the tiny judge's words."""
    system = " ".join(chat_judge.INSTRUCTIONS[:6])
    reference_conversation = (
        "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
        "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
        "<|The End of Reference Answer|>\n\n\n"
    )
    rows = [
        ("single-v1", system, chat_judge.SINGLE, "general"),
        ("single-math-v1", system, chat_judge.WITH_REFERENCE, "math"),
        ("single-v1-multi-turn", system, chat_judge.CONVERSATION, "general"),
        (
            "single-math-v1-multi-turn",
            system,
            reference_conversation + chat_judge.CONVERSATION,
            "math",
        ),
    ]
    return [
        {
            "name": name,
            "type": "single",
            "system_prompt": system_prompt,
            "prompt_template": template,
            "description": "tiny-chat-judge's wording of single-answer grading",
            "category": category,
            "output_format": "[[rating]]",
        }
        for name, system_prompt, template, category in rows
    ]


def mt_bench_rows(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(questions, reference answers) in FastChat's schemas."""
    texts, corpus = instructions(), chat_judge.corpus_lines()
    questions, references = [], []
    for c, category in enumerate(CATEGORIES):
        for k in range(QUESTIONS_PER_CATEGORY):
            qid = 81 + c * QUESTIONS_PER_CATEGORY + k  # MT-Bench's ids run from 81
            turns = [texts[(c * QUESTIONS_PER_CATEGORY + k) % len(texts)], rng.choice(FOLLOW_UPS)]
            questions.append({"question_id": qid, "category": category, "turns": turns})
            if category in REFERENCE_GUIDED:
                answer = rng.sample(corpus, len(turns))  # English, as GPT-4's are
                references.append(
                    {"question_id": qid, "answer_id": f"tiny-{qid}", "model_id": "gpt-4",
                     "choices": [{"index": 0, "turns": answer}], "tstamp": 0.0}
                )  # fmt: skip
    return questions, references


def arena_hard_rows(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(questions, the baseline's answers) in Arena-Hard v0.1's schemas."""
    texts = instructions()
    questions, answers = [], []
    for k in range(ARENA_HARD_QUESTIONS):
        qid = f"tiny{k:04d}"
        prompt = texts[-1 - k % len(texts)]
        questions.append(
            {"question_id": qid, "category": "arena-hard-v0.1", "cluster": "tiny",
             "turns": [{"content": prompt}]}
        )  # fmt: skip
        answer = toy.sample_answer(rng, share=BASELINE_SHARE).text
        answers.append(
            {"question_id": qid, "answer_id": f"{BASELINE}-{qid}", "model_id": BASELINE,
             "choices": [{"index": 0, "turns": [{"content": answer, "token_len": 0}]}],
             "tstamp": 0.0}
        )  # fmt: skip
    return questions, answers


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Both folders under `root`: (data.mt_bench, data.arena_hard)."""
    rng = random.Random(f"tiny-benchmarks-{seed}")
    mt_bench, arena_hard = root / "mt_bench", root / "arena_hard"
    questions, references = mt_bench_rows(rng)
    write_jsonl(mt_bench / "mt_bench" / "question.jsonl", questions)
    write_jsonl(mt_bench / "mt_bench" / "reference_answer" / "gpt-4.jsonl", references)
    write_jsonl(mt_bench / "judge_prompts.jsonl", judge_prompts())
    questions, answers = arena_hard_rows(rng)
    write_jsonl(arena_hard / "question.jsonl", questions)
    write_jsonl(arena_hard / "model_answer" / f"{BASELINE}.jsonl", answers)
    return mt_bench, arena_hard


def ensure(root: Path) -> tuple[Path, Path]:
    """`write(root)` unless this module's files were written whole there already."""
    write_once(root, __file__, write)
    return root / "mt_bench", root / "arena_hard"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.tiny.benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dir", type=Path, help="where the two folders are written")
    args = parser.parse_args(argv)
    if args.dir.exists() and not args.dir.is_dir():
        parser.error(f"{args.dir} is a file: name a folder")
    mt_bench, arena_hard = ensure(args.dir.resolve())
    print(
        f"data.mt_bench={mt_bench} data.arena_hard={arena_hard} eval.arena_hard_baseline={BASELINE}"
    )


if __name__ == "__main__":
    main()
