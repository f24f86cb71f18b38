"""tiny-chat-judge: a tiny chat model that grades as MT-Bench's and Arena-Hard's judges do, by the
toy preference (src/tiny/toy.py) — the local judge of `eval.llm_judge.serve` in the tests and
the demo, served by vLLM's OpenAI-compatible server like any chat model.

What it is taught (`judge_example`), each conversation in Mistral-Instruct's template with the
judge's instructions opening the user turn, as the eval stage sends them to a template that
takes no system turn:

- **single-answer grading** (MT-Bench): an answer between `[The Start of Assistant's Answer]`
  markers, or the second answer of a two-turn conversation, or an answer after a reference
  answer, each under instructions of its own wording; it answers `Rating: [[r]]` with
  r = 1 + round(9 x the answer's share of well-formed helpful sentences), 1 to 10;
- **pairwise grading** (Arena-Hard): Arena-Hard-Auto's own judge prompt and template
  (src/evaluation/arena_hard.py), or other instructions around the same template; it answers
  `My final verdict is: [[v]]`, v by the difference of the two shares (`verdict`).

FastChat's judge prompts are not in this repository (a user's copy is read): the tiny judge never
sees them while it learns, and tests/tools/test_tiny_chat_judge.py grades through them.
"""

from __future__ import annotations

import random

import torch

from src.tiny import toy

# the judge's sizes: 3 layers of width 64 (2 layers, or 2 of width 128, learned the verdicts far
# less well), vLLM's smallest CPU attention head (32)
SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3}
ATTENTION = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
# the context it is built for: Arena-Hard v2.0 asks for 16,000 new tokens after its prompt
CONTEXT = 32768
# ~5 min on 1 thread. Of its held-out verdicts, those that name the better answer: at 400 steps
# about half (chance), at 800 0.72, at 1,200 0.86 (its ratings' correlation: 0.93, 0.95)
TRAINING = {"steps": 1200, "batch_size": 16, "lr": 3e-3}
HELD_OUT = 240  # conversations of each kind the build grades to measure what it learned

# what it reads of src/evaluation/arena_hard.py, to learn from and to grade itself with: its build
# is keyed by these alone (src/tiny/models.py)
FROM_ARENA_HARD = (
    "SYSTEM_PROMPT", "CREATIVE_WRITING_PROMPT", "PROMPT_TEMPLATE", "parse_verdict", "V01_PATTERN",
)  # fmt: skip

RATING = "Rating: [[{}]]"
VERDICT = "My final verdict is: [[{}]]"
# Arena-Hard's five labels, each one token of the judge's vocabulary: spelt in tokens, its
# second letter was not always the other one of its first (a fifth of the verdicts on a tiny
# policy's answers were "[[B>>B]]" or "[[A>>A]]", which the benchmark cannot score)
VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
VERDICT_LABELS = tuple(f"[[{v}]]" for v in VERDICTS)
SIGNIFICANT = 0.5
# how often a pairwise conversation is under Arena-Hard's own judge prompt (500 tokens); the others'
# are shorter, which the judge learns from at less cost
REAL_PAIRWISE_PROMPT = (
    0.3  # a share difference from which one answer is "significantly better" (>>)
)

# instructions of its own wording (FastChat's are the user's): what single-answer grading asks
INSTRUCTIONS = (
    "You are a fair judge of assistant answers.",
    "Please rate the answer of the assistant below on a scale of 1 to 10.",
    "Judge how helpful the response is, and give a rating from 1 to 10.",
    "Read the question and the answer, then rate the answer.",
    "Your evaluation should consider how useful and concrete the answer is.",
    "Be objective. Give your rating in double brackets, for example: Rating: [[5]].",
    "An answer that hedges or deflects helps the user less than one that gives steps.",
    "Focus on the assistant's answer to the second question.",
    "Compare the answer with the reference answer where one is given.",
)
SINGLE = (
    "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)
WITH_REFERENCE = (
    "[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n"
    "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)
CONVERSATION = (
    "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n"
    "### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
    "<|The End of Assistant A's Conversation with User|>"
)
PAIRWISE_INSTRUCTIONS = (
    "Please act as a judge of two assistants' answers to the user prompt below.",
    "Decide which assistant's answer is better, A or B.",
    "Output your final verdict with a label: [[A>>B]], [[A>B]], [[A=B]], [[B>A]] or [[B>>A]].",
)


def rating(answer: toy.ToyAnswer) -> int:
    """The toy's MT-Bench rating of `answer`: 1 (nothing helpful) to 10 (all of it)."""
    return 1 + int(9 * answer.share + 0.5)


def verdict(a: toy.ToyAnswer, b: toy.ToyAnswer) -> str:
    """The toy's Arena-Hard verdict on A against B (one of VERDICTS)."""
    difference = a.share - b.share
    if difference == 0:
        return "A=B"
    better = "A>{}B" if difference > 0 else "B>{}A"
    return better.format(">" if abs(difference) >= SIGNIFICANT else "")


def _preamble(rng: random.Random, own: tuple[str, ...], corpus: list[str]) -> str:
    """Instructions: some of `own`, among English lines that say nothing about the answers."""
    lines = rng.sample(own, rng.randint(1, len(own)))
    lines += rng.sample(corpus, rng.randint(0, 2))
    rng.shuffle(lines)
    return " ".join(lines)


def judge_example(
    rng: random.Random, prompts: list[str], corpus: list[str]
) -> tuple[str, str, str]:
    """(system, user, the judgment taught) of one grading conversation, of a kind drawn at random."""
    from src.evaluation import arena_hard

    kind = rng.random()
    question = rng.choice(prompts)
    if kind < 0.45:  # Arena-Hard: its judge prompt, or others around its template
        a, b = toy.judged_answer(rng), toy.judged_answer(rng)
        if rng.random() < REAL_PAIRWISE_PROMPT:
            system = (
                arena_hard.SYSTEM_PROMPT
                if rng.random() < 0.8
                else arena_hard.CREATIVE_WRITING_PROMPT
            )
        else:
            system = _preamble(rng, PAIRWISE_INSTRUCTIONS, corpus)
        user = arena_hard.PROMPT_TEMPLATE.format(
            QUESTION=question, ANSWER_A=a.text, ANSWER_B=b.text
        )
        return system, user, VERDICT.format(verdict(a, b))
    answer = toy.judged_answer(rng)
    system = _preamble(rng, INSTRUCTIONS, corpus)
    if kind < 0.75:
        user = SINGLE.format(question=question, answer=answer.text)
    elif kind < 0.9:  # the second turn is judged: the first answer is not the one rated
        user = CONVERSATION.format(
            question_1=question,
            answer_1=toy.judged_answer(rng).text,
            question_2=rng.choice(prompts),
            answer_2=answer.text,
        )
    else:
        reference = " ".join(rng.sample(corpus, rng.randint(1, 3)))
        user = WITH_REFERENCE.format(question=question, ref_answer_1=reference, answer=answer.text)
    return system, user, RATING.format(rating(answer))


def corpus_lines() -> list[str]:
    lines = (toy.DATA_DIR / "tiny" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if len(line.split()) >= 4]


def examples(seed: int | str, n: int) -> list[tuple[str, str, str]]:
    rng = random.Random(f"chat-judge-{seed}")
    prompts, corpus = toy.training_prompts(), corpus_lines()
    return [judge_example(rng, prompts, corpus) for _ in range(n)]


def tokenizer_texts() -> list[str]:
    """What the judge's tokenizer learns besides the other tiny models' texts: its instructions
    and its judgments, so that they are few tokens."""
    from src.evaluation import arena_hard

    texts = [arena_hard.SYSTEM_PROMPT, arena_hard.PROMPT_TEMPLATE, SINGLE, CONVERSATION]
    texts += [*INSTRUCTIONS, *PAIRWISE_INSTRUCTIONS, WITH_REFERENCE]
    texts += [RATING.format(r) for r in range(1, 11)]
    texts += [VERDICT.format(v) for v in VERDICTS]
    return texts


# -----------------------------------------------------------------------------
# teaching


def render(tokenizer, system: str, user: str) -> list[int]:
    """The conversation's tokens as the served judge reads them: the system prompt opens the user
    turn (src.evaluation.judge_client.sent_messages), in the judge's chat template."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{system}\n\n{user}"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def teach(model, tokenizer, seed: int, steps: int, batch_size: int, lr: float) -> dict:
    """Next-token loss on the judgments (and the end of the turn) only."""
    from src.tiny.teach import fit, length_batches

    eos = tokenizer.eos_token_id
    rows = []
    for system, user, judgment in examples(seed, steps * batch_size):
        prompt = render(tokenizer, system, user)
        rows.append((prompt, tokenizer(judgment, add_special_tokens=False)["input_ids"] + [eos]))
    batches = shortest_first(
        length_batches(rows, batch_size, lambda r: len(r[0]) + len(r[1]), seed), seed
    )

    def loss_of(batch: list) -> torch.Tensor:
        width = max(len(p) + len(t) for p, t in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows_at, positions, targets = [], [], []
        for i, (prompt, target) in enumerate(batch):
            sequence = prompt + target
            ids[i, : len(sequence)] = torch.tensor(sequence)
            mask[i, : len(sequence)] = 1
            for k, token in enumerate(target):  # the position that predicts each target token
                rows_at.append(i)
                positions.append(len(prompt) - 1 + k)
                targets.append(token)
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.lm_head(hidden[rows_at, positions])  # never the whole sequence's
        return torch.nn.functional.cross_entropy(logits, torch.tensor(targets))

    model.train()
    loss = fit(list(model.parameters()), batches, loss_of, lr, "chat judge training")
    model.eval()
    return {"steps": len(batches), "final_loss": round(loss, 4), **grades(model, tokenizer, seed)}


def shortest_first(batches: list[list], seed: int) -> list[list]:
    """The shortest quarter of the batches first, shortest to longest, then the others in a
    shuffled order. Among few tokens the judge finds the answers' sentences sooner: from a random
    order it learned from some seeds only (after 800 steps, the build seed's ratings correlated
    0.15 with the toy's and its verdicts were at chance; in this order 0.94 and 0.79, and 0.96
    and 0.86 from another seed)."""
    ordered = sorted(batches, key=lambda b: max(len(p) + len(t) for p, t in b))
    quarter = len(ordered) // 4
    rest = ordered[quarter:]
    random.Random(seed).shuffle(rest)
    return ordered[:quarter] + rest


# -----------------------------------------------------------------------------
# what it learned


def judge(model, tokenizer, conversations: list[tuple[str, str]], batch: int = 16) -> list[str]:
    """Its greedy judgments of (system, user) conversations."""
    judgments = []
    for start in range(0, len(conversations), batch):
        prompts = [render(tokenizer, s, u) for s, u in conversations[start : start + batch]]
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=16,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        judgments += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return judgments


def grades(model, tokenizer, seed: int) -> dict:
    """On conversations it never saw: the correlation of its ratings with the toy's, how often its
    verdict picks the answer the toy prefers, and how many judgments carry neither."""
    from src.evaluation import arena_hard, mt_bench

    held_out = examples(f"held-out-{seed}", 2 * HELD_OUT)
    judged = judge(model, tokenizer, [(s, u) for s, u, _ in held_out])
    ratings, verdicts, unread = [], [], 0
    for (_, _, taught), text in zip(held_out, judged, strict=True):
        if taught.startswith("Rating"):
            got = mt_bench.parse_rating(text)
            unread += got is None
            ratings.append((float(mt_bench.parse_rating(taught)), got))
        else:
            got = arena_hard.parse_verdict(text)
            unread += got is None
            verdicts.append((arena_hard.parse_verdict(taught), got))
    pairs = [(t, g) for t, g in ratings if g is not None]
    return {
        "rating_correlation": round(correlation(pairs), 4) if len(pairs) > 2 else None,
        "verdict_agreement": round(agreement(verdicts), 4),
        "unread": unread,
    }


def correlation(pairs: list[tuple[float, float]]) -> float:
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def agreement(verdicts: list[tuple[str, str | None]]) -> float:
    """The share of verdicts on answers the toy does not tie that name the better one."""

    def side(v: str | None) -> str | None:  # "A", "B", "=" (a tie) or None (no verdict)
        return None if v is None else "=" if v == "A=B" else v[0]

    decided = [(side(t), side(g)) for t, g in verdicts if t != "A=B"]
    return sum(t == g for t, g in decided) / max(1, len(decided))
