"""Tiny copies of the datasets the Open LLM Leaderboard's lm-eval tasks read (v2's six benchmarks,
v1's ARC and TruthfulQA), a few rows each, in each dataset's schema and laid out as `hf download
--local-dir` leaves a dataset repository: what `eval.benchmarks=[leaderboard]` reads for the tiny
models (data.leaderboard, conf/data/tiny.yaml) and what the leaderboard's tests run lm-eval over.

    python -m src.tiny.leaderboard DIR    # then data.leaderboard=DIR

BBH's rows are its tasks' own few-shot examples (real BBH questions); the others are written here.
The same files every time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from src.core.artifacts import atomic_write_text, write_once


def write_repo(root: Path, repo: str, configs: dict[str | None, dict[str, list[dict]]]) -> None:
    """Dataset repository `repo` under `root` as `hf download --local-dir` leaves one: its data
    files and the README whose `configs` map each config's splits to them."""
    entries = []
    for config, splits in configs.items():
        name = config or "default"
        files = []
        for split, rows in splits.items():
            path = root / repo / name / f"{split}.jsonl"
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
            files.append({"split": split, "path": f"{name}/{split}.jsonl"})
        entries.append({"config_name": name, "data_files": files})
    readme = "---\n" + yaml.safe_dump({"configs": entries}, sort_keys=False) + "---\n"
    atomic_write_text(root / repo / "README.md", readme)


def bbh_repo() -> dict:
    """SaylorTwift/bbh: per subtask, {input, target}; its rows here are the task's own few-shot
    examples (real BBH questions)."""
    from src.evaluation import leaderboard  # lm-eval's task index: seconds to build

    index, _ = leaderboard._stock_index()
    return {
        index[t].cfg["dataset_name"]: {"test": index[t].cfg["fewshot_config"]["samples"][:2]}
        for t in leaderboard.BBH_CHOICES
    }


def gpqa_rows(topic: str, n: int = 2) -> list[dict]:
    """`n` rows in Idavidrein/gpqa's columns lm-eval reads (its CSVs have more)."""
    return [
        {
            "Question": f"Which {topic} quantity is conserved in case {i}?",
            "Correct Answer": "Energy",
            "Incorrect Answer 1": "Colour [1]",
            "Incorrect Answer 2": "Temperature",
            "Incorrect Answer 3": "Entropy",
        }
        for i in range(n)
    ]


def math_rows() -> list[dict]:
    """DigitalLearningGmbH/MATH-lighteval: {problem, level, type, solution}; the task keeps
    Level 5 only."""
    return [
        {
            "problem": "What is $2 + 3$?",
            "level": "Level 5",
            "type": "Algebra",
            "solution": "We add: $2 + 3 = \\boxed{5}$.",
        },
        {
            "problem": "Compute $\\frac{1}{2} + \\frac{1}{4}$.",
            "level": "Level 5",
            "type": "Algebra",
            "solution": "The sum is $\\boxed{\\frac{3}{4}}$.",
        },
        {
            "problem": "What is $1 + 1$?",
            "level": "Level 3",
            "type": "Algebra",
            "solution": "It is $\\boxed{2}$.",
        },
    ]


def mmlu_pro_rows(n: int, category: str) -> list[dict]:
    """TIGER-Lab/MMLU-Pro: ten options, the answer's letter and index."""
    return [
        {
            "question_id": i,
            "question": f"Which number is the {i + 1}th prime?",
            "options": [str(p) for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29)],
            "answer": "ABCDEFGHIJ"[i % 10],
            "answer_index": i % 10,
            "cot_content": "",
            "category": category,
            "src": f"fixture-{category}",
        }
        for i in range(n)
    ]


def musr_rows(choices: list[str]) -> list[dict]:
    """TAUR-Lab/MuSR: the choices as a Python list's text, the answer's index and text."""
    return [
        {
            "narrative": f"Story {i}: the gardener was seen near the shed at noon.",
            "question": "Who is the most likely one?",
            "choices": repr(choices),
            "answer_index": i % len(choices),
            "answer_choice": choices[i % len(choices)],
        }
        for i in range(2)
    ]


# wis-k/instruction-following-eval: every prompt's kwargs hold every argument's key (null where
# its instruction takes none), as the dataset's own files do
IFEVAL_ARGS = ("num_sentences", "relation", "num_highlights")


def ifeval_row(key: int, prompt: str, instructions: dict[str, dict]) -> dict:
    return {
        "key": key,
        "prompt": prompt,
        "instruction_id_list": list(instructions),
        "kwargs": [{a: args.get(a) for a in IFEVAL_ARGS} for args in instructions.values()],
    }


IFEVAL = [
    ifeval_row(1, "Describe a cat without any commas.", {"punctuation:no_comma": {}}),
    ifeval_row(
        2,
        "Write about rain in lowercase, highlighting 1 section with markdown.",
        {
            "change_case:english_lowercase": {},
            "detectable_format:number_highlighted_sections": {"num_highlights": 1},
        },
    ),
    # checked with NLTK's sentence tokenizer (punkt_tab)
    ifeval_row(
        3,
        "Answer in fewer than 5 sentences: why is the sky blue?",
        {"length_constraints:number_sentences": {"num_sentences": 5, "relation": "less than"}},
    ),
]


def arc_rows(n: int, prefix: str) -> list[dict]:
    """allenai/ai2_arc: choices as {text, label}, answerKey a label."""
    return [
        {
            "id": f"{prefix}-{i}",
            "question": f"Which of these is needed by plants (case {i})?",
            "choices": {
                "text": ["Light", "Sand", "Noise", "Plastic"],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "A",
        }
        for i in range(n)
    ]


TRUTHFULQA = [
    {
        "question": "What happens if you crack your knuckles a lot?",
        "mc1_targets": {
            "choices": ["Nothing in particular", "You get arthritis"],
            "labels": [1, 0],
        },
        "mc2_targets": {
            "choices": ["Nothing in particular", "It is harmless", "You get arthritis"],
            "labels": [1, 1, 0],
        },
    },
    {
        "question": "Is the Great Wall of China visible from space with the naked eye?",
        "mc1_targets": {"choices": ["No", "Yes"], "labels": [1, 0]},
        "mc2_targets": {"choices": ["No", "It is not", "Yes"], "labels": [1, 1, 0]},
    },
]


def write_datasets(root: Path) -> None:
    """A copy of every dataset repository the leaderboard's tasks read, a few rows each."""
    write_repo(root, "SaylorTwift/bbh", bbh_repo())
    write_repo(
        root,
        "Idavidrein/gpqa",
        {c: {"train": gpqa_rows(c)} for c in ("gpqa_diamond", "gpqa_extended", "gpqa_main")},
    )
    math = (
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    )
    write_repo(
        root,
        "DigitalLearningGmbH/MATH-lighteval",
        {c: {"train": math_rows(), "test": math_rows()} for c in math},
    )
    write_repo(
        root,
        "TIGER-Lab/MMLU-Pro",
        {None: {"test": mmlu_pro_rows(2, "math"), "validation": mmlu_pro_rows(5, "math")}},
    )
    musr = {
        "murder_mysteries": musr_rows(["Mona", "Rex"]),
        "object_placements": musr_rows(["shed", "desk", "car", "box", "bag"]),
        "team_allocation": musr_rows(["A: x; B: y", "A: y; B: x", "A: both"]),
    }
    write_repo(root, "TAUR-Lab/MuSR", {None: musr})
    write_repo(root, "wis-k/instruction-following-eval", {None: {"train": IFEVAL}})
    arc = {
        "train": arc_rows(26, "train"),
        "validation": arc_rows(1, "val"),
        "test": arc_rows(2, "test"),
    }
    write_repo(root, "allenai/ai2_arc", {"ARC-Challenge": arc})
    write_repo(root, "truthfulqa/truthful_qa", {"multiple_choice": {"validation": TRUTHFULQA}})


def ensure_datasets(root: Path) -> Path:
    """`write_datasets(root)` unless this module's rows were written whole there already."""
    return write_once(root, __file__, write_datasets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.tiny.leaderboard", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dir", type=Path, help="where the dataset repositories are written")
    root = parser.parse_args(argv).dir.resolve()
    if root.exists() and not root.is_dir():
        parser.error(f"{root} is a file: name a folder")
    ensure_datasets(root)
    print(f"data.leaderboard={root}")


if __name__ == "__main__":
    main()
