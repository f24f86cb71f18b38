"""The pairs dataset (docs/design.md §5) as token ids, and the collator of the concatenated
forward.

A pair is rendered as the policy saw it at generation time: the prompt through the chat template
with `add_generation_prompt=True`, the response as the assistant turn's continuation, ending
with the end-of-turn token (it belongs to the response: the policy must learn when to stop).
The template's BOS is the only BOS, so everything is tokenised with add_special_tokens=False.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from src.core.artifacts import read_jsonl
from src.core.contracts import pair_row_problem
from src.core.errors import Redo, StageError
from src.training.pairs_file import JSON_LINES, PARQUET

# the only numbers of the file a loss reads: SPPO's targets (docs/design.md §6.2); DPO/IPO read
# none, and WPO's weights come from the policy's own log-probs, not from the file
PROBABILITY_COLUMNS = {
    "sppo": ("chosen_probs_win", "chosen_probs_lose"),
    "sppo_single": ("chosen_probs",),
}
PAIR_EXAMPLE = '{"prompt_id": ..., "prompt": ..., "chosen": ..., "rejected": ...}'
# pairs read and tokenised at a time: the texts of a batch are in memory, only the ids stay
TOKENISE_BATCH = 256


class PairsError(StageError):
    """The pairs file cannot be trained on; the message says what and where."""


def read_pairs(path: str | Path, loss: str, fix: Redo | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a pairs file (.parquet, or .jsonl for hand-made fixtures), every one checked, read
    as they are used (a parquet file a batch of rows at a time: the file is never all in memory).

    Every row is checked as it is tokenised, before training starts, so that a bad one stops the
    stage with its file, row and prompt_id rather than a traceback from the chat template or a
    NaN loss hours later. `fix`: what remakes the file when it is the pairs stage's output;
    None for a file of the user's own, where the message says what to correct.
    """
    path = Path(path)
    try:
        empty = True
        for where, row in located_rows(path):
            yield checked_pair(where, row, loss)
            empty = False
        if empty:
            raise PairsError(f"{path} holds no pairs")
    except PairsError as err:
        raise PairsError(str(err), fix) from None  # one remedy for every defect of the file


def located_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row; `where` counts from 1 as every input error does:
    "pairs.jsonl:7" (the line), "pairs.parquet: row 7"."""
    if not path.exists():
        raise PairsError(
            f"pairs file not found: {path} (run stage=pairs first, or set training.pairs)"
        )
    if not path.is_file():
        raise PairsError(f"{path} is not a file (training.pairs names a .parquet or .jsonl file)")
    if path.suffix == PARQUET:
        return parquet_rows(path)
    if path.suffix in JSON_LINES:
        return read_jsonl(path, PairsError, example=PAIR_EXAMPLE)
    raise PairsError(f"{path}: pairs must be .parquet or .jsonl, got '{path.suffix}'")


def parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow  # lazy: a .jsonl fixture never needs it
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=TOKENISE_BATCH):
            for row in batch.to_pylist():
                number += 1
                yield f"{path}: row {number}", row
    except pyarrow.ArrowException as err:  # not parquet, or truncated: no footer to read
        raise PairsError(f"{path}: cannot read as parquet ({err})") from None


def checked_pair(where: str, row: dict[str, Any], loss: str) -> dict[str, Any]:
    """`row` when `loss` can train on it (src/core/contracts.py: PairRow), else a PairsError
    saying what to correct, and where."""
    pid = row.get("prompt_id")
    if isinstance(pid, str) and pid.strip():  # so that every message about the row names it
        where = f"{where} (prompt_id {pid!r})"
    problem = pair_row_problem(row, PROBABILITY_COLUMNS.get(loss, ()), f"loss {loss!r}")
    if problem:
        raise PairsError(f"{where}: {problem}")
    return row


@dataclass
class TokenisedPair:
    """A pair's token ids. PairTokenizer keeps them as 4-byte arrays: a list of Python ints
    costs ~36 bytes a token, ~9x the memory, over every pair of an iteration."""

    index: int  # position in the pairs file: the key of the reference log-prob cache
    prompt_ids: array | list[int]
    chosen_ids: array | list[int]
    rejected_ids: array | list[int]
    probs: dict[str, float]


@dataclass
class TokenisationReport:
    read: int = 0  # pairs in the file
    kept: int = 0
    dropped_identical: int = 0  # chosen == rejected: no preference to learn (documented)
    dropped_empty: int = 0  # a response with no token left after truncation
    truncated_prompts: int = 0
    truncated_responses: int = 0


class PairTokenizer:
    """Chat-template rendering and TRL-style truncation for one policy's tokenizer."""

    def __init__(
        self, tokenizer, end_of_turn_ids: list[int], max_length: int, max_prompt_length: int
    ):
        self.tokenizer = tokenizer
        self.end_of_turn_ids = set(end_of_turn_ids)
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length

    def prompt_text(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    def response_text(self, prompt_text: str, prompt: str, response: str) -> str:
        """The assistant turn as the template writes it after the generation prompt."""
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=False,
        )
        if not full.startswith(prompt_text):
            raise PairsError(
                "the chat template renders the prompt differently with and without the answer; "
                "cannot locate the response tokens"
            )
        return full[len(prompt_text) :]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _end_at_turn_end(self, ids: list[int]) -> list[int]:
        # Gemma's template writes "<end_of_turn>\n": the model stops at <end_of_turn>, so the
        # newline after it is not part of what it generates.
        for i in range(len(ids) - 1, -1, -1):
            if ids[i] in self.end_of_turn_ids:
                return ids[: i + 1]
        return ids

    def __call__(
        self, rows: Iterable[dict[str, Any]], loss: str
    ) -> tuple[list[TokenisedPair], TokenisationReport]:
        """Every row of `rows` (read a batch at a time) tokenised; what was dropped, counted."""
        report, pairs, stream = TokenisationReport(), [], iter(rows)
        while batch := list(itertools.islice(stream, TOKENISE_BATCH)):
            pairs += self._batch(batch, loss, report)
        report.kept = len(pairs)
        return pairs, report

    def _batch(
        self, rows: list[dict[str, Any]], loss: str, report: TokenisationReport
    ) -> list[TokenisedPair]:
        prompt_texts = [self.prompt_text(r["prompt"]) for r in rows]
        prompts = self._ids(prompt_texts)
        chosen = self._ids(
            [
                self.response_text(p, r["prompt"], r["chosen"])
                for p, r in zip(prompt_texts, rows, strict=True)
            ]
        )
        rejected = self._ids(
            [
                self.response_text(p, r["prompt"], r["rejected"])
                for p, r in zip(prompt_texts, rows, strict=True)
            ]
        )
        pairs = []
        rows_ids = zip(rows, prompts, chosen, rejected, strict=True)
        for index, (row, p, c, r) in enumerate(rows_ids, start=report.read):
            if row["chosen"] == row["rejected"]:
                report.dropped_identical += 1
                continue
            c, r = self._end_at_turn_end(c), self._end_at_turn_end(r)
            p, c, r = self._truncate(p, c, r, report)
            if not c or not r:
                report.dropped_empty += 1
                continue
            probs = {k: float(row[k]) for k in PROBABILITY_COLUMNS.get(loss, ())}
            pairs.append(TokenisedPair(index, array("i", p), array("i", c), array("i", r), probs))
        report.read += len(rows)
        return pairs

    def _truncate(self, p: list[int], c: list[int], r: list[int], report: TokenisationReport):
        """Prompt keeps its end (the question), responses keep their start; TRL's order."""
        if len(p) + max(len(c), len(r)) > self.max_length and len(p) > self.max_prompt_length:
            p = p[-self.max_prompt_length :]
            report.truncated_prompts += 1
        room = self.max_length - len(p)
        if len(c) > room or len(r) > room:
            report.truncated_responses += 1
            c, r = c[:room], r[:room]
        return p, c, r


class PairCollator:
    """Pads a batch of pairs into one [2B, L] tensor: the B chosen rows, then the B rejected.

    One forward over both halves shares the kernel launches and, under ZeRO-3, the parameter
    all-gathers. Padding is on the right; `response_mask` marks the response tokens, already
    shifted to the positions whose logits score them (row t scores token t+1).
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[TokenisedPair]) -> dict[str, torch.Tensor]:
        sequences = [p.prompt_ids + p.chosen_ids for p in batch] + [
            p.prompt_ids + p.rejected_ids for p in batch
        ]
        prompt_lengths = [len(p.prompt_ids) for p in batch] * 2
        length = max(map(len, sequences))
        input_ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        response_mask = torch.zeros((len(sequences), length), dtype=torch.bool)
        for i, (seq, start) in enumerate(zip(sequences, prompt_lengths, strict=True)):
            input_ids[i, : len(seq)] = torch.tensor(seq)
            attention_mask[i, : len(seq)] = 1
            # token j (j >= start) is scored by the logits at row j - 1
            response_mask[i, start - 1 : len(seq) - 1] = True
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "pair_index": torch.tensor([p.index for p in batch]),
        }
        for key in batch[0].probs:
            out[key] = torch.tensor([p.probs[key] for p in batch], dtype=torch.float64)
        return out


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """labels[:, t] = input_ids[:, t + 1]: the token the logits of row t score (last row: pad)."""
    labels = torch.zeros_like(input_ids)
    labels[:, :-1] = input_ids[:, 1:]
    return labels
