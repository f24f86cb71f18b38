"""Stage `pairs`: one (chosen, rejected) pair per ranked prompt, the training set
(docs/design.md §5).

    python -m src.main stage=pairs model=tiny-mistral iter=1
    python -m src.main stage=pairs model=tiny-mistral method=wpo ranker=tiny-reward-model

SPPO (`method.pair_selection=argmax_argmin`, docs/design.md §6.1): chosen w = argmax of the scores,
rejected l = argmin, with chosen_probs = P_wl, chosen_probs_win = p_w, chosen_probs_lose = p_l.
WPO (`wpo_tiebreak`, the WPO v2 recipe): chosen = highest score, ties broken by the shortest
response; rejected = lowest score, ties broken by the length closest to the chosen one's
(lengths in characters, so that external responses compare with the policy's).

When every response of a prompt scored the same there is no preference: `ranker.ties=drop`
leaves the prompt out and counts it; `keep` keeps the pair the selection gives (the SPPO
reference's behaviour: argmax = argmin, chosen equals rejected).

Every ranked row is checked against `RankedRow` as it is read, and every pair against `PairRow`
as it is made (src/core/contracts.py, the checks the train stage makes of the file): the ranked
rows are all a pair is made of, so a bad pair names its ranked file and line and the command
that ranks again.

Writes `pairs.parquet` (rows sorted by prompt_id, so sharding never changes the file) and the
counts in `metrics.json`, each atomically, and returns the record (the file's seal, the counts)
that the scheduler writes after them as `done.json`.
"""

from __future__ import annotations

import heapq
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from src.config import Config, PairSelection, Stage, TiePolicy
from src.core.artifacts import atomic_path, atomic_write_json, file_sha256, read_jsonl
from src.core.contracts import PairRow, RankedRow, pair_row_problem, ranked_row_problem
from src.core.errors import Redo, StageError, naming
from src.core.identity import stage_key
from src.core.records import Finished
from src.ranking.candidates import EXTERNAL
from src.ranking.preferences import TIE_ATOL, all_tied
from src.stages import StageResult
from src.stages.common import stage_rows

BATCH = 256  # pairs sorted in memory at a time (one run of the merge), and written at a time


class PairsBuildError(StageError):
    """The ranked rows cannot make pairs; the message says what and where."""


def run(cfg: Config) -> StageResult:
    started = time.time()
    stage_dir = cfg.stage_dir(Stage.pairs)

    # run: one pair per prompt with a preference, the ranked rows read as they are used; the
    # pairs sorted by prompt_id (the same file however the ranking was sharded) in runs of
    # BATCH pairs merged into the file, so no more than a few batches are ever in memory
    pairs, ties, prompts = 0, 0, 0
    stats: list[tuple[str, float, float, float, float, bool, bool]] = []
    # the runs beside the stage's folder, on the run's disk: a failure leaves no pairs folder
    for left in stage_dir.parent.glob(".pairs-sorting-*"):  # a killed run's runs
        shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".pairs-sorting-", dir=stage_dir.parent) as sorting:
        runs, batch = [], []
        for where, row in ranked_rows(cfg):
            prompts += 1
            if all_tied(np.asarray(row["scores"], dtype=np.float64)):
                ties += 1
                if cfg.ranker.ties == TiePolicy.drop:
                    continue
            try:
                pair = pair_of(row, where, cfg.method.pair_selection)
            except PairsBuildError as bad:  # a blank response, which only ranking again leaves out
                fix = Redo(Stage.rank, cfg.iter, also="ranker.empty_responses=drop")
                raise PairsBuildError(str(bad), fix) from None
            batch.append(pair)
            stats.append(pair_stats(pair))
            if len(batch) == BATCH:
                runs.append(sorted_run(batch, Path(sorting) / f"run{len(runs):05d}.jsonl"))
                batch = []
        if batch:
            runs.append(sorted_run(batch, Path(sorting) / f"run{len(runs):05d}.jsonl"))
        if not prompts:  # a ranking recorded before the rank stage refused to finish empty
            raise PairsBuildError(
                f"no pairs: {cfg.stage_dir(Stage.rank)} holds no ranked prompts; rank again",
                Redo(Stage.rank, cfg.iter),
            )
        if not runs:
            raise PairsBuildError(
                f"no pairs: all {prompts} ranked prompts have tied scores (ranker.ties=drop); "
                "the judge does not tell these responses apart"
            )
        # cleanup: every file atomically (the record, written after them, seals the pairs)
        with atomic_path(stage_dir / "pairs.parquet") as tmp:
            pairs = merge_runs(runs, tmp)

    stats.sort()
    ids, chosen_probs, win, lose, margin, chosen_ext, rejected_ext = zip(*stats, strict=True)
    counts = {
        "prompts": prompts,
        "pairs": pairs,
        "ties_dropped": ties if cfg.ranker.ties == TiePolicy.drop else 0,
        "ties_kept": ties if cfg.ranker.ties == TiePolicy.keep else 0,
        "chosen_external": sum(chosen_ext),
        "rejected_external": sum(rejected_ext),
        "mean_chosen_probs": float(np.mean(chosen_probs)),
        "mean_chosen_win_rate": float(np.mean(win)),
        "mean_rejected_win_rate": float(np.mean(lose)),
        "mean_score_margin": float(np.mean(margin)),
    }
    seconds = time.time() - started
    atomic_write_json(stage_dir / "metrics.json", counts)
    seal = {"rows": pairs, "sha256": file_sha256(stage_dir / "pairs.parquet")}
    finished = Finished(
        stage_key(cfg.as_tree(), Stage.pairs),
        counts,
        {"seconds": seconds},
        {"pairs.parquet": seal},
    )
    print(
        f"[pairs] {counts['pairs']} pairs from {counts['prompts']} prompts "
        f"({ties} with tied scores, {cfg.ranker.ties.value}); mean P(chosen > rejected) "
        f"{counts['mean_chosen_probs']:.3f}",
        file=sys.stderr,
    )
    return StageResult(counts, finished)


def pair_stats(pair: PairRow) -> tuple[str, float, float, float, float, bool, bool]:
    """What the stage's counts average over a pair, keyed by its prompt_id (small: kept for
    every pair, and averaged in the file's order)."""
    return (
        pair["prompt_id"],
        pair["chosen_probs"],
        pair["chosen_probs_win"],
        pair["chosen_probs_lose"],
        pair["chosen_score"] - pair["rejected_score"],
        pair["chosen_source"] == EXTERNAL,
        pair["rejected_source"] == EXTERNAL,
    )


def sorted_run(pairs: list[PairRow], path: Path) -> Path:
    """`pairs` sorted by prompt_id, as JSON Lines: one run of the merge."""
    rows = sorted(pairs, key=lambda r: r["prompt_id"])
    with naming(path):  # a full disk's refusal names no file by itself
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def merge_runs(runs: list[Path], out: Path) -> int:
    """The sorted runs merged by prompt_id into one parquet file at `out`, one pair of each run
    in memory at a time (and BATCH of the file); returns the number of pairs."""
    streams = [(row for _, row in read_jsonl(run)) for run in runs]
    writer, written, batch = None, 0, []
    for row in heapq.merge(*streams, key=lambda r: r["prompt_id"]):
        batch.append(row)
        if len(batch) == BATCH:
            writer = write_batch(writer, batch, out)
            written, batch = written + len(batch), []
    if batch:
        writer = write_batch(writer, batch, out)
        written += len(batch)
    writer.close()
    return written


def write_batch(writer, batch: list[PairRow], out: Path):
    """`batch` appended to the parquet file at `out` (its writer opened on the first batch,
    with the first batch's schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(batch, schema=writer.schema if writer else None)
    writer = writer or pq.ParquetWriter(out, table.schema)
    writer.write_table(table)
    return writer


def select_pair(
    scores: np.ndarray, lengths: list[int], selection: PairSelection
) -> tuple[int, int]:
    """(chosen, rejected) indices among the K responses."""
    if selection == PairSelection.argmax_argmin:  # the first index among equal scores, as numpy
        return int(np.argmax(scores)), int(np.argmin(scores))
    K = len(scores)
    top = [i for i in range(K) if scores[i] >= scores.max() - TIE_ATOL]
    chosen = min(top, key=lambda i: (lengths[i], i))
    # when every score ties, the rejected one is any other response
    bottom = [i for i in range(K) if scores[i] <= scores.min() + TIE_ATOL and i not in top]
    bottom = bottom or [i for i in range(K) if i != chosen]
    rejected = min(bottom, key=lambda i: (abs(lengths[i] - lengths[chosen]), i))
    return chosen, rejected


def ranked_rows(cfg: Config) -> Iterator[tuple[str, RankedRow]]:
    """(where, row) for every ranked row of the iteration, each checked against `RankedRow` as it
    is read: a bad one names its file, line and prompt_id, and the command that ranks again."""
    for where, row in stage_rows(cfg, Stage.rank, PairsBuildError):
        problem = ranked_row_problem(row)
        if problem:
            pid = row.get("prompt_id")
            named = f"{where}: prompt_id {pid!r}" if isinstance(pid, str) and pid.strip() else where
            raise PairsBuildError(f"{named}: {problem}", Redo(Stage.rank, cfg.iter))
        yield where, row


def pair_of(row: RankedRow, where: str, selection: PairSelection) -> PairRow:
    """The pair `selection` makes of a ranked row that passed its check (`where` names it), or a
    PairsBuildError when the train stage would refuse the pair: a blank response chosen or
    rejected, which `ranker.empty_responses=keep` ranks like any other."""
    scores = np.asarray(row["scores"], dtype=np.float64)
    P = np.asarray(row["win_matrix"], dtype=np.float64)
    p = np.asarray(row["win_rate"], dtype=np.float64)
    win, lose = select_pair(scores, [len(r) for r in row["responses"]], selection)
    pair = PairRow(
        prompt_id=row["prompt_id"],
        prompt=row["prompt"],
        chosen=row["responses"][win],
        rejected=row["responses"][lose],
        chosen_probs=float(P[win, lose]),
        chosen_probs_win=float(p[win]),
        chosen_probs_lose=float(p[lose]),
        chosen_score=float(scores[win]),
        rejected_score=float(scores[lose]),
        chosen_index=win,
        rejected_index=lose,
        chosen_source=row["sources"][win],
        rejected_source=row["sources"][lose],
    )
    problem = pair_row_problem(pair)
    if problem:
        raise PairsBuildError(
            f"{where}: prompt_id {pair['prompt_id']!r}: the pair of responses {win} and {lose}: "
            f"{problem}; a pair needs text on both sides (ranker.empty_responses=drop leaves "
            "blank responses out of the ranking)"
        )
    return pair
