"""The generated parts of data/: toy instructions and the hybrid pool's external answers.

The hand-written prompts (data/prompts: the first 40 of each training split, the first 30 eval
instructions) are joined by generated ones, task x subject combinations drawn without
replacement, so that an iteration has enough pairs to move the policy and the eval enough
instructions for a useful interval; data/tiny/external_responses.jsonl holds one toy answer per
training prompt, mostly helpful (the stand-in for a stronger model's answers in WPO-HB's pool).

    python -m src.tiny.data      # rewrites them; tests/tools/test_toy.py checks data/ matches

Run it after changing this module; the hand-written rows are kept as they are.

Recipe-sized splits are made on demand, not kept in data/: `--scale N` writes N distinct toy
prompts per iteration (three iterations, none repeated across them) as parquet files in the
columns of the SPPO splits (prompt, prompt_id, chosen, rejected, messages), read by `data=scale`:

    python -m src.tiny.data --scale 20000      # .cache/scale/iter{1,2,3}.parquet
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from src.core.artifacts import atomic_path
from src.core.contracts import derive_prompt_id
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
# What makes the recipe-sized splits' prompts distinct: each task x subject is asked for one of
# these readers, under one of these limits (20 x 40 x 10 x 8 = 64,000 prompts).
READERS = (
    "a teenager",
    "a busy parent",
    "a retired engineer",
    "a complete beginner",
    "a student",
    "a small business owner",
    "a nurse on night shifts",
    "a first-time home owner",
    "someone who hates jargon",
    "a visitor from abroad",
)
LIMITS = (
    "Keep it under 50 words.", "Use plain language.", "Use a numbered list.",
    "Be encouraging.", "Mention one common pitfall.", "End with a question.",
    "Keep it to three sentences.", "Add one practical example.",
)  # fmt: skip
SCALE_ITERATIONS = 3
SCALE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "scale"
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


def scale_prompts(n: int, iterations: int = SCALE_ITERATIONS) -> list[list[str]]:
    """`iterations` lists of `n` distinct prompts each, none shared between them: every task x
    subject x reader x limit once at most, in a fixed shuffled order."""
    combos = [(t, s, r, c) for t in TASKS for s in SUBJECTS for r in READERS for c in LIMITS]
    if n * iterations > len(combos):
        raise ValueError(f"at most {len(combos) // iterations} prompts per iteration, not {n}")
    rng = random.Random("scale")
    rng.shuffle(combos)
    texts = [
        f"{task.format(topic=subject, who=rng.choice(WHO))} Write it for {reader}. {limit}"
        for task, subject, reader, limit in combos[: n * iterations]
    ]
    return [texts[i * n : (i + 1) * n] for i in range(iterations)]


def scale_row(prompt: str) -> dict:
    """A row as the SPPO splits hold one: the prompt, its id, and the chosen and rejected
    conversations (toy answers; the pipeline reads the prompt alone)."""
    prompt_id = derive_prompt_id(prompt)
    rng = random.Random(prompt_id)
    answers = sorted((sample_answer(rng) for _ in range(2)), key=lambda a: -a.share)

    def turn(answer: str) -> list[dict]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    return {
        "prompt": prompt,
        "prompt_id": prompt_id,
        "chosen": turn(answers[0].text),
        "rejected": turn(answers[1].text),
        "messages": turn(answers[0].text),
    }


def write_scale(n: int, out_dir: Path = SCALE_DIR) -> list[Path]:
    """out_dir/iter{t}.parquet, t = 1..3, of `n` prompts each, written through `datasets` (as
    the splits on the Hub are) and atomically: a file there is always whole."""
    from datasets import Dataset

    paths = []
    for t, prompts in enumerate(scale_prompts(n), 1):
        path = out_dir / f"iter{t}.parquet"
        with atomic_path(path) as tmp:
            Dataset.from_list([scale_row(p) for p in prompts]).to_parquet(tmp)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.tiny.data", description=__doc__)
    parser.add_argument("--scale", type=int, help="write N prompts per iteration instead")
    parser.add_argument("--out", type=Path, default=SCALE_DIR, help="where --scale writes")
    args = parser.parse_args(argv)
    if args.scale is None:
        write_data()
        return
    most = len(TASKS) * len(SUBJECTS) * len(READERS) * len(LIMITS) // SCALE_ITERATIONS
    if not 1 <= args.scale <= most:
        parser.error(f"--scale must be between 1 and {most}")
    for path in write_scale(args.scale, args.out):
        print(f"wrote {path} ({args.scale} prompts)")


if __name__ == "__main__":
    main()
