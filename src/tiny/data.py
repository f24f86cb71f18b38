"""The generated parts of data/: toy instructions and the hybrid pool's external answers.

The hand-written prompts (data/prompts: the first 40 of each training split, the first 30 eval
instructions) are joined by generated ones, task x subject combinations drawn without
replacement, so that an iteration has enough pairs to move the policy and the eval enough
instructions for a useful interval; data/tiny/external_responses.jsonl holds one toy answer per
training prompt, mostly helpful (the stand-in for a stronger model's answers in WPO-HB's pool).

    python -m src.tiny.data      # rewrites them; tests/test_toy.py checks data/ matches

Run it after changing this module; the hand-written rows are kept as they are.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from src.tiny.toy import DATA_DIR, sample_answer

TASKS = (
    "Write a short email to {who} about {topic}.",
    "Explain {topic} in simple terms.",
    "Give me three tips for {topic}.",
    "What should a beginner know about {topic}?",
    "Write a haiku about {topic}.",
    "Summarise the main challenges of {topic} in two sentences.",
    "How do I get started with {topic}?",
    "What are the pros and cons of {topic}?",
    "Plan a weekend around {topic}.",
    "Write the opening lines of a short story about {topic}.",
    "List five common mistakes people make with {topic}.",
    "Draft a checklist for {topic}.",
    "Describe {topic} to someone who has never tried it.",
    "Write a product description for an online course on {topic}.",
    "Suggest a title for a blog post about {topic}.",
    "What questions should I ask an expert on {topic}?",
    "Compare two ways of approaching {topic}.",
    "Write a friendly reminder to {who} about {topic}.",
    "Make a one-week plan for {topic}.",
    "Why do people find {topic} difficult?",
)
SUBJECTS = (
    "learning the guitar", "composting kitchen waste", "saving for a holiday",
    "running a book club", "baking sourdough bread", "learning Spanish", "growing tomatoes",
    "writing a CV", "public speaking", "training a puppy", "fixing a leaking tap",
    "starting a podcast", "budgeting for groceries", "learning to swim", "tidying a garage",
    "painting a bedroom", "choosing a laptop", "planning a birthday party",
    "keeping houseplants alive", "learning chess", "cycling to work", "reducing screen time",
    "writing a wedding speech", "making a family tree", "brewing coffee at home",
    "preparing for a job interview", "learning Python", "moving to a new city",
    "recycling old electronics", "caring for an older cat", "hiking in the mountains",
    "cooking for a crowd", "building a bookshelf", "meditation", "phone photography",
    "tracking personal expenses", "learning to draw", "volunteering locally",
    "hosting a dinner party", "knitting a scarf",
)  # fmt: skip
WHO = ("my manager", "a neighbour", "my landlord", "a colleague", "my teacher", "the team")
GENERATED_TRAINING = 80  # per iteration file, after its 40 hand-written prompts
GENERATED_EVAL = 120  # after the 30 hand-written eval instructions
FIRST_GENERATED_ID = 121


def generated_instructions() -> tuple[list[list[str]], list[str]]:
    """(3 lists of training prompts, one per iteration; eval instructions): distinct task x
    subject combinations drawn without replacement, so no eval instruction is a training one."""
    rng = random.Random("instructions")
    combos = [(task, subject) for task in TASKS for subject in SUBJECTS]
    rng.shuffle(combos)
    texts = [task.format(topic=subject, who=rng.choice(WHO)) for task, subject in combos]
    training = texts[: 3 * GENERATED_TRAINING]
    evaluation = texts[3 * GENERATED_TRAINING : 3 * GENERATED_TRAINING + GENERATED_EVAL]
    return [training[i::3] for i in range(3)], evaluation


def external_answer(prompt_id: str) -> str:
    """The hybrid pool's stand-in for a stronger model's answer: three to five sentences,
    mostly helpful (share drawn U(0.6, 1))."""
    rng = random.Random(f"external-{prompt_id}")
    return sample_answer(rng, share=rng.uniform(0.6, 1.0), sentences=rng.randint(3, 5)).text


def write_data(data_dir: Path = DATA_DIR) -> None:
    """Rewrite the generated rows of data/prompts and data/tiny/external_responses.jsonl."""
    training, evaluation = generated_instructions()
    next_id = FIRST_GENERATED_ID
    all_ids = []
    for t, generated in enumerate(training, 1):
        path = data_dir / "prompts" / f"iter{t}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
        rows = [r for r in rows if int(r["prompt_id"][1:]) < FIRST_GENERATED_ID]
        for text in generated:
            rows.append({"prompt_id": f"p{next_id:04d}", "prompt": text})
            next_id += 1
        all_ids += [r["prompt_id"] for r in rows]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    path = data_dir / "prompts" / "eval.json"
    rows = [
        r
        for r in json.loads(path.read_text(encoding="utf-8"))
        if r["dataset"] != "selfplay-lab-generated"
    ]
    rows += [{"dataset": "selfplay-lab-generated", "instruction": text} for text in evaluation]
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    external = [{"prompt_id": i, "response": external_answer(i)} for i in sorted(all_ids)]
    (data_dir / "tiny" / "external_responses.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in external)
    )


if __name__ == "__main__":
    write_data()
