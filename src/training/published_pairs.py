"""A published preference dataset in the alignment handbook's DPO form, as the pairs file that
`training.pairs` reads: to train on the pairs a model card names, e.g. WPO-HB's
wzhouad/gemma-2-ultrafeedback-hybrid (made by its authors' own sampling and ArmoRM scoring).

    hf download wzhouad/gemma-2-ultrafeedback-hybrid --repo-type dataset --local-dir hybrid
    python -m src.training.published_pairs hybrid/data/train-00000-of-00001.parquet \\
        --out hybrid-pairs.jsonl
    python -m src.main experiment=gemma-2-9b-it-wpo-hb data.external_responses=null \\
        stage=train training.pairs=hybrid-pairs.jsonl

The form (the DPO task of the WPO repository's scripts/run_wpo.py, HuggingFaceH4's
ultrafeedback_binarized): `chosen` and `rejected` are conversations, lists of {role, content};
the prompt is `prompt` when it is a conversation, else every turn of `chosen` but its last, whose
content is the response (`rejected`'s last turn the other). A pair here is one user turn and two
answers: a row whose prompt is not one user turn (a system turn, several turns) is refused, with
its file and row, as is a text the pairs file's reader refuses (blank, a lone surrogate).
`prompt_id`: the row's (a number as its digits), else the first 16 hex digits of the sha256 of
the prompt's text. Rows stream from parquet (a batch at a time) or JSON lines; the file is written
whole or not at all.

One conversion at a time per `--out`: it holds a lock on it (`.locks/<name>.lock` beside it,
src/core/locks.py) for its whole run; a second conversion to the same file stops at once with one
line naming the first (pid, host, since, command), exit 3, touching nothing. A temporary a killed
conversion left beside `--out` is removed under that lock, so never one a live conversion writes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.config.cli import ArgumentParser, failures
from src.core.artifacts import atomic_path, read_jsonl, temporaries
from src.core.errors import StageError, command_line
from src.core.locks import writing
from src.training.data import checked_pair, parquet_rows


class PublishedPairsError(StageError):
    """A row of the published dataset that is no pair; the message says which and why."""


def turns(where: str, value: Any, column: str) -> list[dict[str, str]]:
    """`value` as a conversation: a list of {role, content} with string values."""
    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(t, dict)
            and isinstance(t.get("role"), str)
            and isinstance(t.get("content"), str)
            for t in value
        )
    ):
        raise PublishedPairsError(
            f"{where}: `{column}` is not a conversation (a list of {{role, content}})"
        )
    return value


def pair_of(where: str, row: dict[str, Any]) -> dict[str, str]:
    """The pairs file's row of one published row."""
    chosen, rejected = (turns(where, row.get(c), c) for c in ("chosen", "rejected"))
    if isinstance(row.get("prompt"), list):  # the prompt's turns apart, the answers alone
        context, answers = turns(where, row["prompt"], "prompt"), (chosen, rejected)
    else:  # whole conversations: the prompt is what precedes each one's last turn
        context, answers = chosen[:-1], (chosen[-1:], rejected[-1:])
        for column, answer in zip(("chosen", "rejected"), answers, strict=True):
            if answer[0]["role"] != "assistant":  # said before the prompts are compared
                raise PublishedPairsError(f"{where}: `{column}` does not end in an assistant turn")
        if rejected[:-1] != context:
            raise PublishedPairsError(f"{where}: `chosen` and `rejected` answer other prompts")
    if [t["role"] for t in context] != ["user"]:
        raise PublishedPairsError(
            f"{where}: its prompt is the turns {[t['role'] for t in context]}, not one user turn: "
            "a pair here is one user turn and two answers"
        )
    for column, answer in zip(("chosen", "rejected"), answers, strict=True):
        if [t["role"] for t in answer] != ["assistant"]:
            raise PublishedPairsError(f"{where}: `{column}` does not end in one assistant turn")
    text = context[0]["content"]
    pid = row.get("prompt_id")
    if isinstance(pid, int) and not isinstance(pid, bool):
        pid = str(pid)  # kept as given: the pairs file's ids are strings
    elif pid is not None and not isinstance(pid, str):
        raise PublishedPairsError(
            f"{where}: its prompt_id {pid!r} is neither an integer nor a string: a prompt_id is "
            "an integer (kept as its digits) or a string, or absent (the prompt's sha256)"
        )
    if not pid or not pid.strip():
        # surrogatepass: a text UTF-8 cannot hold is named by checked_pair, not a traceback here
        pid = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return {"prompt_id": pid, "prompt": text, "chosen": answers[0][0]["content"],
            "rejected": answers[1][0]["content"]}  # fmt: skip


def rows_of(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.is_dir():
        raise PublishedPairsError(
            f"{path}: is a folder; name the dataset's .parquet or .jsonl files in it"
        )
    if not path.is_file():
        raise PublishedPairsError(f"{path}: no such file")
    if path.suffix == ".parquet":
        return parquet_rows(path)
    return read_jsonl(path, PublishedPairsError, example='{"chosen": [...], "rejected": [...]}')


def convert(inputs: list[Path], out: Path, command: str) -> int:
    """Every row of `inputs`, in order, into `out` (JSON lines), holding `out`'s lock (`command`:
    this conversion's, as the lock names it to a second one); returns the pairs written. A
    temporary an interrupted run left beside `out` (a kill -9) goes first."""
    with writing(out, command):
        for left in temporaries(out):  # under the lock: no live conversion's
            left.unlink(missing_ok=True)
            print(f"[published_pairs] removed {left}, left by an interrupted run", file=sys.stderr)
        return write_pairs(inputs, out)


def write_pairs(inputs: list[Path], out: Path) -> int:
    written = 0
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as f:
        for path in inputs:
            for where, row in rows_of(path):
                pair = checked_pair(where, pair_of(where, row), "dpo")
                f.write(json.dumps(pair, ensure_ascii=False) + "\n")
                written += 1
        if not written:
            raise PublishedPairsError(f"{', '.join(map(str, inputs))}: no rows")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m src.training.published_pairs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="the dataset's .parquet or .jsonl")
    parser.add_argument("--out", type=Path, required=True, help="the pairs file (.jsonl)")
    words = sys.argv[1:] if argv is None else argv
    command = command_line("python -m src.training.published_pairs", words)
    with failures(command, where="--out"):
        args = parser.parse_args(words)
        if args.out.suffix != ".jsonl":
            parser.error(f"--out {args.out}: the pairs file is JSON lines (.jsonl)")
        if any(args.out.resolve() == path.resolve() for path in args.inputs):
            parser.error(f"--out {args.out} is also an input: name another file for the pairs")
        written = convert(args.inputs, args.out, command)
        print(f"[published_pairs] {written:,} pairs -> {args.out} (training.pairs={args.out})")


if __name__ == "__main__":
    main()
