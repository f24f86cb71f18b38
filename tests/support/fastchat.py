"""FastChat's llm_judge files, as its repository holds them (two of MT-Bench's real questions,
GPT-4's reference answer to one, the four single-answer judge prompts verbatim), and their
layout written to a folder: what MT-Bench's grading, the eval stage's benchmarks, the served
judge and tiny-chat-judge are tested on."""

from __future__ import annotations

import json
from pathlib import Path

from src.evaluation import benchmarks, mt_bench

# --- FastChat's files, as its repository holds them (lm-sys/FastChat, fastchat/llm_judge/data) ---

WRITING = {
    "question_id": 81,
    "category": "writing",
    "turns": [
        "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting "
        "cultural experiences and must-see attractions.",
        "Rewrite your previous response. Start every sentence with the letter A.",
    ],
}
MATH = {
    "question_id": 111,
    "category": "math",
    "turns": [
        "The vertices of a triangle are at points (0, 0), (-1, 1), and (3, 3). What is the "
        "area of the triangle?",
        "What's area of the circle circumscribing the triangle?",
    ],
    "reference": ["Area is 3", "5pi"],
}
# reference_answer/gpt-4.jsonl's answer to question 111 (shortened; same schema)
MATH_REFERENCE = {
    "question_id": 111,
    "answer_id": "NJPTPe2PZ7547UMekB9kBM",
    "model_id": "gpt-4",
    "choices": [
        {
            "index": 0,
            "turns": [
                "The area of the triangle is 0. This means that the three points are collinear.",
                "Since the three points are collinear and do not form a triangle, there is no "
                "circumscribed circle for this set of points.",
            ],
        }
    ],
    "tstamp": 1686287200.2472498,
}

INSTRUCTION = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response "
    "provided by an AI assistant to the user question displayed below. "
)
RATE = (
    "Be as objective as possible. After providing your explanation, you must rate the response "
    'on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: '
    '"Rating: [[5]]".'
)
GENERAL_CRITERIA = (
    "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, "
    "depth, creativity, and level of detail of the response. "
)
MATH_CRITERIA = (
    "Your evaluation should consider correctness and helpfulness. You will be given a reference "
    "answer and the assistant's answer. "
)
COMPARE = (
    "Begin your evaluation by comparing the assistant's answer with the reference answer. "
    "Identify and correct any mistakes. "
)
SINGLE_V1 = (
    INSTRUCTION
    + GENERAL_CRITERIA
    + "Begin your evaluation by providing a short explanation. "
    + RATE
    + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)
SINGLE_MATH_V1 = (
    INSTRUCTION
    + MATH_CRITERIA
    + COMPARE
    + RATE
    + "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n"
    "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)
MULTI_TURN_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. "
    + GENERAL_CRITERIA
    + "You evaluation should focus on the assistant's answer to the second user question. "
    "Begin your evaluation by providing a short explanation. " + RATE + "\n\n"
)
MATH_MULTI_TURN_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question. "
    + MATH_CRITERIA
    + "You evaluation should focus on the assistant's answer to the second question. "
    + COMPARE
    + RATE
    + "\n\n"
)
CONVERSATION = (
    "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n"
    "### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
    "<|The End of Assistant A's Conversation with User|>"
)
REFERENCE_CONVERSATION = (
    "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
    "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
    "<|The End of Reference Answer|>\n\n\n"
)
SINGLE_PROMPTS = [
    ("single-v1", "You are a helpful assistant.", SINGLE_V1, "general"),
    ("single-math-v1", "You are a helpful assistant.", SINGLE_MATH_V1, "math"),
    ("single-v1-multi-turn", MULTI_TURN_SYSTEM, CONVERSATION, "general"),
    (
        "single-math-v1-multi-turn",
        MATH_MULTI_TURN_SYSTEM,
        REFERENCE_CONVERSATION + CONVERSATION,
        "math",
    ),
]


def judge_prompt_row(name, system, template, category, output_format="[[rating]]") -> dict:
    return {
        "name": name,
        "type": "single",
        "system_prompt": system,
        "prompt_template": template,
        "description": "Prompt for general questions",
        "category": category,
        "output_format": output_format,
    }


def write_lines(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def fastchat_data(root: Path) -> Path:
    """FastChat's llm_judge/data layout, with two of MT-Bench's questions."""
    write_lines(root / "mt_bench" / "question.jsonl", [WRITING, MATH])
    write_lines(root / "mt_bench" / "reference_answer" / "gpt-4.jsonl", [MATH_REFERENCE])
    write_lines(root / "judge_prompts.jsonl", [judge_prompt_row(*p) for p in SINGLE_PROMPTS])
    return root


def two_questions(root: Path) -> benchmarks.MTBenchData:
    """`fastchat_data`'s two questions, read as the stage reads MT-Bench's but for its count:
    what the judging's own tests need (the stage refuses them as a cut copy)."""
    questions, references, prompts = benchmarks.mt_bench_files(str(fastchat_data(root)))
    return benchmarks.MTBenchData(
        mt_bench.load_questions(questions, references), mt_bench.load_judge_prompts(prompts)
    )
