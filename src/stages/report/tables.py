"""W&B tables of what a stage made, to read beside its figures: the eval's answers, the pairs.

- eval: per instruction, the policy's answer and the reference's, the judge's preference and
  outcome, both answers' lengths (from the stage's judgements.jsonl);
- pairs: per prompt, the chosen and the rejected response, the chosen one's win probability and
  both scores (from pairs.parquet).

Each holds the first `logger.table_rows` rows of the stage's file (0: no table), in the stage's
run; nothing else of a stage's rows is uploaded.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from src.config import Config, Stage
from src.core.artifacts import read_jsonl

EVAL_COLUMNS = ["prompt_id", "instruction", "answer", "reference_answer", "preference",
                "outcome", "answer_chars", "reference_chars"]  # fmt: skip
PAIR_COLUMNS = ["prompt_id", "prompt", "chosen", "rejected", "chosen_probs", "chosen_score",
                "rejected_score"]  # fmt: skip


def stage_tables(cfg: Config, stage: Stage) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The tables of `stage`'s run, by key: (columns, rows)."""
    rows = cfg.logger.table_rows
    stage_dir = cfg.stage_dir(stage)
    made = {Stage.eval: "judgements.jsonl", Stage.pairs: "pairs.parquet"}.get(stage)
    if rows == 0 or made is None or not (stage_dir / made).is_file():
        return {}
    if stage == Stage.eval:
        judged = (row for _, row in read_jsonl(stage_dir / made))
        return {"answers_table": (EVAL_COLUMNS, [eval_row(j) for j in islice(judged, rows)])}
    import pyarrow.parquet as pq

    pairs = pq.ParquetFile(stage_dir / made)
    first = next(pairs.iter_batches(rows, columns=PAIR_COLUMNS), None)
    data = first.to_pylist() if first is not None else []
    return {"pairs_table": (PAIR_COLUMNS, [[p[c] for c in PAIR_COLUMNS] for p in data])}


def eval_row(judged: dict[str, Any]) -> list[Any]:
    answer, reference = judged["output"], judged["reference_output"]
    return [judged["prompt_id"], judged["instruction"], answer, reference, judged["preference"],
            judged["outcome"], len(answer), len(reference)]  # fmt: skip
