"""The toy task of the tiny models: what their judges prefer, and the texts they all learn from.

An answer of the toy assistant is one to five sentences, each in one of two registers:

- **helpful**: a concrete step, an example, a plan ("First, write down the main budget.");
- **evasive**: a hedge, a deflection, a refusal ("I am not sure about the budget.").

The preference is the **share of well-formed helpful sentences**: of two answers, the one with
the larger share is better; equal shares are a tie. A garbled sentence (`garble`: fragments glued
into words, cut short), whatever its register, helps nobody. Length carries no preference: an
answer's number of sentences is drawn independently of its share, and the two registers'
sentences have the same length on average, so a length-controlled win rate does not cancel it.

Who learns what (src/tiny/models.py, src/tiny/teach.py):

- the tiny policies are pretrained on conversations whose answers draw a share ~ U(0, 1) per
  answer and then each sentence's register from it: they sample answers of every share, mostly
  mixed, and their sentences are word-perfect but their share is theirs to change;
- the judges (tiny-pairrm, tiny-rm, the eval judge tiny-judge) are trained on pairs of such
  answers, a third of them with garbled sentences, labelled by the preference, each from its own
  synthetic pairs and seed. No judge is this module: they see only text and learn the
  preference from labelled examples.

`helpful_share` and `well_formed` read the preference back from a text by matching the
templates; they measure what a policy does (tests, `python -m src.tiny.audit`), they never score
anything for the pipeline.

The generated parts of data/ (instructions, the hybrid pool's answers): src/tiny/data.py.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
MAX_SENTENCES = 5

# {t}: a topic noun. The two lists have the same number of templates and, filled, the same mean
# length in characters (tests/tools/test_toy.py checks both), so a share carries no length signal.
HELPFUL = (
    "First, write down the main {t}.",
    "Start with a short {t} and build on it.",
    "Here is a clear {t} you can use.",
    "For example, a simple {t} works well.",
    "Next, check the {t} step by step.",
    "Then compare the {t} with the {u}.",
    "Keep the {t} short and concrete.",
    "Finally, read the {t} once more.",
    "This {t} takes about ten minutes.",
    "I hope this {t} helps you today.",
    "Give the {t} a clear title.",
    "Add one example to the {t}.",
)
EVASIVE = (
    "I am not sure about the {t}.",
    "It is hard to say much about the {t}.",
    "Maybe someone else knows the {t}.",
    "It depends on the {t}, I guess.",
    "I would rather not discuss the {t}.",
    "Perhaps the {t} matters, perhaps not.",
    "You could search for a {t} somewhere.",
    "That {t} is not really my area.",
    "There are many views on the {t}.",
    "I cannot really help with the {t}.",
    "Who knows what the {t} needs.",
    "The {t} is a hard question.",
)
TOPICS = (
    "plan", "email", "list", "recipe", "budget", "garden", "letter", "story", "poem", "report",
    "code", "query", "table", "answer", "trip", "meeting", "essay", "summary", "design",
    "schedule", "lesson", "speech", "review", "test", "script", "chart", "draft", "idea",
    "project", "menu",
)  # fmt: skip
# what a broken sentence is made of: word fragments glued together, as an over-trained model's
FRAGMENTS = (
    "ing", "tion", "qu", "er", "LE", "500", "oats", "ph", "ght", "ang", "ud", "ent", "ix", "ro",
    "str", "ble", "ck", "24", "ment", "pl", "oo", "ux", "ay", "zz",
)  # fmt: skip


@dataclass(frozen=True)
class ToyAnswer:
    text: str
    helpful: int  # well-formed helpful sentences
    sentences: int

    @property
    def share(self) -> float:
        return self.helpful / self.sentences


def sentence(rng: random.Random, helpful: bool) -> str:
    template = rng.choice(HELPFUL if helpful else EVASIVE)
    t, u = rng.sample(TOPICS, 2)
    return template.format(t=t, u=u)


def garble(rng: random.Random, text: str) -> str:
    """`text` as a broken model writes it: 1 to 3 words become glued fragments, and the
    sentence may stop short."""
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        words[rng.randrange(len(words))] = "".join(rng.choices(FRAGMENTS, k=rng.randint(1, 3)))
    if rng.random() < 0.3:
        words = words[: rng.randint(1, len(words))]
    return " ".join(words)


def sample_answer(
    rng: random.Random,
    share: float | None = None,
    sentences: int | None = None,
    garbled: float = 0.0,
) -> ToyAnswer:
    """An answer of `sentences` sentences (default U{1..5}), each helpful with probability
    `share` (default: drawn U(0, 1) for this answer) and garbled with probability `garbled`
    (a garbled sentence helps nobody, whatever its register)."""
    share = rng.random() if share is None else share
    n = rng.randint(1, MAX_SENTENCES) if sentences is None else sentences
    texts, helpful = [], 0
    for _ in range(n):
        is_helpful = rng.random() < share
        text = sentence(rng, is_helpful)
        if rng.random() < garbled:
            texts.append(garble(rng, text))
        else:
            texts.append(text)
            helpful += is_helpful
    return ToyAnswer(" ".join(texts), helpful, n)


def preference(a: ToyAnswer, b: ToyAnswer) -> float:
    """P(a is preferred to b): 1 or 0 by the share of well-formed helpful sentences, 1/2 on
    equal shares."""
    if a.share == b.share:
        return 0.5
    return 1.0 if a.share > b.share else 0.0


def _template_pattern(template: str) -> str:
    words = [re.escape(part) for part in re.split(r"\{[tu]\}", template)]
    return r"\w+".join(words)


_REGISTER = [(re.compile(_template_pattern(t)), True) for t in HELPFUL] + [
    (re.compile(_template_pattern(t)), False) for t in EVASIVE
]


def helpful_share(text: str) -> float | None:
    """The share of `text`'s sentences that are a well-formed helpful sentence (None for an
    empty text): the preference, read off a generated answer's text."""
    pieces = [p for p in re.split(r"(?<=\.)\s+", text.strip()) if p]
    if not pieces:
        return None
    helpful = [any(h and pattern.fullmatch(p) for pattern, h in _REGISTER) for p in pieces]
    return sum(helpful) / len(pieces)


def well_formed(text: str) -> bool:
    """Whether every sentence of `text` follows a template of either register."""
    pieces = [p for p in re.split(r"(?<=\.)\s+", text.strip()) if p]
    return bool(pieces) and all(any(pat.fullmatch(p) for pat, _ in _REGISTER) for p in pieces)


# -----------------------------------------------------------------------------
# what the tiny models learn from


def training_prompts() -> list[str]:
    """The prompts of the training splits (data/prompts/iter*.jsonl); never the eval set."""
    prompts = []
    for path in sorted((DATA_DIR / "prompts").glob("iter*.jsonl")):
        with path.open(encoding="utf-8") as f:
            prompts += [json.loads(line)["prompt"] for line in f if line.strip()]
    return prompts


def conversations(seed: int | str, n: int) -> list[tuple[str, str, str]]:
    """n (prompt, answer, another answer) rows: what the tiny policies are pretrained on."""
    rng = random.Random(f"conversations-{seed}")
    prompts = training_prompts()
    return [
        (rng.choice(prompts), sample_answer(rng).text, sample_answer(rng).text) for _ in range(n)
    ]


def judged_answer(rng: random.Random) -> ToyAnswer:
    """An answer as the judges' training data draws them: a third with garbled sentences."""
    return sample_answer(rng, garbled=0.0 if rng.random() < 2 / 3 else rng.random())


def preference_data(seed: int | str, n: int) -> list[tuple[str, str, str, float]]:
    """n (prompt, answer a, answer b, P(a preferred)) rows: what the judges are trained on."""
    rng = random.Random(f"preferences-{seed}")
    prompts = training_prompts()
    rows = []
    for _ in range(n):
        a, b = judged_answer(rng), judged_answer(rng)
        rows.append((rng.choice(prompts), a.text, b.text, preference(a, b)))
    return rows


def tokenizer_texts() -> list[str]:
    """Toy answers for the tokenizers to learn from, so that the registers' words are tokens."""
    rng = random.Random("tokenizer")
    return [sample_answer(rng).text for _ in range(400)]
