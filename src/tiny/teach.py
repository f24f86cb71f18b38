"""Teaching the tiny models the toy task (src/tiny/toy.py) when they are built.

- `pretrain_policy`: a tiny causal LM learns to answer the toy's prompts in its chat template,
  ending its turn, from toy conversations — tokenised, collated and scored by the training
  stage's own code (PairTokenizer, PairCollator, batch_response_logps), so the policy learns
  exactly the token layout it is later sampled and trained with.
- `train_pairrm`, `train_reward_model`: a judge learns the toy preference from labelled pairs of
  toy answers, through the same encoders the rank stage uses (PairRMJudge, RewardModelJudge).

Each is a plain loop of AdamW steps on length-sorted batches (little padding), with a linear
warm-up and decay; dropout is off (the models are small and the data plentiful, and dropout's
random masks were a quarter of a judge's step on CPU). Each returns what it measured — the final
loss and, for the judges, their agreement with the preference on pairs they never saw — which
the build writes into the model's record (tiny_build.json).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from src.tiny import toy

PROMPT_TOKENS = 128  # longer prompts keep their end, as in training (conf/training/tiny.yaml)
SEQUENCE_TOKENS = 256


def log(message: str) -> None:
    print(f"[tiny] {message}", file=sys.stderr, flush=True)


def length_batches(items: list, size: int, length: Callable[[Any], int], seed: int) -> list[list]:
    """`items` cut into batches of similar length, in a shuffled order."""
    ordered = sorted(items, key=length)
    batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    random.Random(seed).shuffle(batches)
    return batches


PROGRESS_S = 30.0  # seconds between a training loop's progress lines


def fit(
    parameters: Sequence[torch.nn.Parameter],
    batches: list[list],
    loss_of: Callable[[list], torch.Tensor],
    lr: float,
    what: str,
) -> float:
    """AdamW over `batches` (one step each), linear warm-up (10 %) and decay; the last loss.
    A progress line every PROGRESS_S seconds: a build on a slow machine runs for many minutes."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    steps, warmup = len(batches), max(1, len(batches) // 10)
    started = said = time.perf_counter()
    loss = torch.zeros(())
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr * min((step + 1) / warmup, (steps - step) / (steps - warmup + 1))
        loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        if now - said >= PROGRESS_S and step + 1 < steps:
            said, done = now, step + 1
            left = (now - started) / done * (steps - done)
            log(f"{what}: step {done}/{steps} ({done / steps:.0%}), loss {loss:.3f}, "
                f"{now - started:.0f}s in, ~{left:.0f}s left")  # fmt: skip
    log(f"{what}: {steps} steps in {time.perf_counter() - started:.1f}s, last loss {loss:.3f}")
    return float(loss.detach())


def pretrain_policy(
    model, tokenizer, end_of_turn_ids: list[int], seed: int, steps: int, batch_size: int, lr: float
) -> dict:
    """Next-token loss on the answers of toy conversations (two answers per prompt)."""
    from src.training.data import PairCollator, PairTokenizer
    from src.training.policy_logps import batch_response_logps

    rows = [
        {"prompt_id": str(i), "prompt": p, "chosen": a, "rejected": b}
        for i, (p, a, b) in enumerate(toy.conversations(seed, steps * batch_size))
    ]
    pairs, _ = PairTokenizer(tokenizer, end_of_turn_ids, SEQUENCE_TOKENS, PROMPT_TOKENS)(
        rows, "sigmoid"
    )
    collate = PairCollator(tokenizer.pad_token_id or 0)
    batches = length_batches(
        pairs,
        batch_size,
        lambda p: len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)),
        seed,
    )

    def loss_of(batch: list) -> torch.Tensor:
        inputs = collate(batch)
        logps, _ = batch_response_logps(model, inputs, with_alignment=False)
        return -logps.sum() / inputs["response_mask"].sum()

    model.train()
    loss = fit(list(model.parameters()), batches, loss_of, lr, "policy pretraining")
    model.eval()
    return {"steps": len(batches), "conversations": len(pairs), "final_loss": round(loss, 4)}


def agreement(prefers: Callable[[list[tuple[str, str, str]]], list[float]], seed: str) -> float:
    """How often a judge prefers what the toy preference prefers, on 400 fresh pairs of answers
    with different shares (`prefers` gives P(a beats b) for (prompt, a, b) triples)."""
    rows = [r for r in toy.preference_data(seed, 500) if r[3] != 0.5][:400]
    verdicts = prefers([(p, a, b) for p, a, b, _ in rows])
    return sum((v > 0.5) == (r[3] == 1.0) for v, r in zip(verdicts, rows, strict=True)) / len(rows)


def train_pairrm(
    judge,
    render: Callable[[str, random.Random], str],
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
) -> dict:
    """A PairRM (`judge`: src.ranking.pairrm.PairRMJudge over the ranker being trained) learns
    the toy preference: binary cross-entropy of its logit C(a, b) against P(a preferred).
    `render` gives the source as the rank stage would show it (a policy's chat template).

    A step sees batch_size / 2 pairs, each in both orders (a, b) and (b, a): the logit must be
    antisymmetric, and showing both orders breaks the tie between the two candidate slots far
    sooner (4 build seeds of 4 agreed >= 0.93 with the preference, against 0.85-0.91 from
    twice as many pairs in one order each).
    """
    rng = random.Random(seed)
    rows = [
        (judge.encode(render(p, rng), [a, b]), y)
        for p, a, b, y in toy.preference_data(seed, steps * batch_size // 2)
    ]
    ranker = judge.ranker

    def loss_of(pairs: list) -> torch.Tensor:
        swapped = [(replace(e, candidates=e.candidates[::-1]), 1 - y) for e, y in pairs]
        batch = pairs + swapped
        source = judge.pad([e.source for e, _ in batch])
        left = judge.pad([e.candidates[0] for e, _ in batch])
        right = judge.pad([e.candidates[1] for e, _ in batch])
        logits = ranker._forward(*source, *left, *right)["logits"]
        target = torch.tensor([y for _, y in batch], dtype=logits.dtype)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)

    def prefers(triples: list[tuple[str, str, str]]) -> list[float]:
        logits = judge.compare(
            [render(p, rng) for p, _, _ in triples], [[a, b] for _, a, b in triples]
        )
        return [float(torch.sigmoid(torch.tensor(C[0, 1] - C[1, 0]))) for C in logits]

    batches = length_batches(
        rows, batch_size // 2, lambda r: len(r[0].source) + sum(map(len, r[0].candidates)), seed
    )
    ranker.eval()  # dropout off; gradients flow all the same
    loss = fit(list(ranker.parameters()), batches, loss_of, lr, "PairRM training")
    return {
        "steps": len(batches),
        "final_loss": round(loss, 4),
        "agreement": agreement(prefers, f"held-out-{seed}"),
    }


def train_reward_model(judge, seed: int, steps: int, batch_size: int, lr: float) -> dict:
    """A reward model (`judge`: src.ranking.reward_model.RewardModelJudge over the model being
    trained) learns the toy preference by Bradley-Terry: binary cross-entropy of sigma(r_a - r_b)
    against P(a preferred), on (prompt, answer) conversations in its own chat template, scored by
    the judge's own forward (`rewards`)."""
    model = judge.model
    rows = [
        (judge.encode(p, a), judge.encode(p, b), y)
        for p, a, b, y in toy.preference_data(seed, steps * batch_size)
    ]

    def loss_of(batch: list) -> torch.Tensor:
        r = judge.rewards([a for a, _, _ in batch] + [b for _, b, _ in batch])
        margin = r[: len(batch)] - r[len(batch) :]
        target = torch.tensor([y for _, _, y in batch], dtype=margin.dtype)
        return torch.nn.functional.binary_cross_entropy_with_logits(margin, target)

    def prefers(triples: list[tuple[str, str, str]]) -> list[float]:
        scores = judge.score([p for p, _, _ in triples], [[a, b] for _, a, b in triples])
        return [float(torch.sigmoid(torch.tensor(s[0] - s[1]))) for s in scores]

    batches = length_batches(rows, batch_size, lambda r: max(len(r[0]), len(r[1])), seed)
    model.train()
    loss = fit(list(model.parameters()), batches, loss_of, lr, "reward model training")
    model.eval()
    return {
        "steps": len(batches),
        "final_loss": round(loss, 4),
        "agreement": agreement(prefers, f"held-out-{seed}"),
    }
