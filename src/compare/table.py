"""Compare runs: a table row per (lineage, iteration), and three plots.

    python -m src.compare [--root DIR] [--out DIR] [--wandb ENTITY/PROJECT] [--metric NAME]

Reads the run directories the stages write (README, "Run directories"):
    <root>/<model>/<method>/<run_name>/iter<t>/<stage>/{config.yaml, done.json, metrics.json}
and writes compare.md, compare.csv, training_curves.png, win_rate_by_iteration.png and
final_vs_hparams.png into --out (default <root>/compare). --metric picks the log_history key
that training_curves.png draws (default: loss). --wandb reads the same from a W&B project.

Only finished stages count: values come from a stage whose done.json exists, as the stages
themselves trust nothing else in a directory. A malformed config.yaml, done.json, metrics.json
or eval.json is skipped with one warning line naming the file: its values stay blank (a
malformed done.json makes its stage unfinished) and every other run is still compared. A value
of the wrong type (text where a number belongs) is blanked with one warning line naming the file,
the key and the value.
A failure is one line (src.cli): exit code 1 when there is nothing to compare, --metric
names no logged key or the W&B server cannot be reached; 2 for a bad option; 3 when the file
system refuses (--out where a file is, or read-only; --root a file).

This module holds the outputs (the table, the CSV, the printed win rates) and the command line;
src.compare.runs reads the runs and src.compare.plots draws them.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

from src.cli import ArgumentParser, failures
from src.compare.runs import JUDGED_HEADLINES, CompareError, Iteration, discover, fetch_wandb, num
from src.config import runs_root
from src.core.artifacts import atomic_write_text
from src.core.errors import EnvironmentFailure

COLUMNS = (
    "model", "method", "run_name", "iter", "eta", "beta", "lr", "K", "loss_type", "stages_done",
    "train_loss_final", "accuracy_last", "accuracy_mean", "margin_last", "margin_mean",
    "pairs", "mean_chosen_probs", "mean_chosen_win_rate", "mean_score_margin",
    "gen_tokens_per_s", "eval_win_rate", "eval_lc_win_rate", "alpaca_eval_lc", "alpaca_eval_wr",
    "leaderboard",
)  # fmt: skip
# shown once any run has been evaluated (by AlpacaEval 2 itself: eval.alpaca_eval=true; on the
# Open LLM Leaderboard: eval.benchmarks=[leaderboard])
OPTIONAL_COLUMNS = (
    "eval_win_rate", "eval_lc_win_rate", "alpaca_eval_lc", "alpaca_eval_wr", "leaderboard",
)  # fmt: skip


def columns_for(rows: list[dict]) -> list[str]:
    shown = [c for c in COLUMNS if c not in OPTIONAL_COLUMNS]
    judged = sorted(
        {c for r in rows for c in r if c.startswith(tuple(f"{b}[" for b in JUDGED_HEADLINES))}
    )
    return shown + [c for c in OPTIONAL_COLUMNS if any(r.get(c) is not None for r in rows)] + judged


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # None is written as an empty cell; floats in full precision
    return buffer.getvalue()


def write_outputs(iterations: list[Iteration], out: Path, metric: str) -> tuple[str, list[Path]]:
    from src.compare import plots  # matplotlib loads only when there is something to draw

    rows = [it.row for it in iterations]
    columns = columns_for(rows)
    check_metric(iterations, metric)
    table = markdown_table(rows, columns)
    paths = [atomic_write_text(out / "compare.md", table),
             atomic_write_text(out / "compare.csv", csv_text(rows, columns))]  # fmt: skip
    paths += plots.draw_all(iterations, out, metric)
    return table, paths


def win_rate_curves(iterations: list[Iteration]) -> str:
    """The eval win rates by iteration, one line per lineage ("" when nothing was evaluated)."""
    lines: dict[str, list[str]] = {}
    for it in iterations:
        r = it.row
        if r.get("eval_win_rate") is None:
            continue
        low, high = r.get("eval_win_rate_ci") or (None, None)
        ci = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
        lc = f" LC {r['eval_lc_win_rate']:.3f}" if r.get("eval_lc_win_rate") is not None else ""
        lines.setdefault(it.lineage, []).append(f"iter{r['iter']} {r['eval_win_rate']:.3f}{ci}{lc}")
    if not lines:
        return ""
    body = "\n".join(f"  {lineage}: " + " | ".join(points) for lineage, points in lines.items())
    return (
        f"eval win rate by iteration (against each run's reference; bootstrap interval):\n{body}\n"
    )


def check_metric(iterations: list[Iteration], metric: str) -> None:
    logged = {k for it in iterations for e in it.history for k in e if num(e[k]) is not None}
    if logged and metric not in logged:
        names = ", ".join(sorted(logged - {"step", "epoch"}))
        raise CompareError(f"--metric {metric}: no training log has it; logged keys: {names}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m src.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="run directories (default: $SELFPLAY_RUNS, else ./runs)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <root>/compare)"
    )
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead")
    parser.add_argument("--metric", default="loss", help="log_history key of training_curves.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    with failures(" ".join(["python -m src.compare", *words]), where="--out"):
        compare(parse_args(words))


def compare(args: argparse.Namespace) -> None:
    """Read the runs, write the outputs, print the table and the win-rate curves."""
    root = args.root.resolve() if args.root else runs_root()
    out = args.out.resolve() if args.out else root / "compare"
    if root.exists() and not root.is_dir() and not args.wandb:  # as the stages see paths.root
        raise EnvironmentFailure(
            f"--root {root}: a file, not a folder; point --root (or $SELFPLAY_RUNS) at the "
            "folder of run directories"
        )
    iterations = fetch_wandb(args.wandb) if args.wandb else discover(root)
    table, paths = write_outputs(iterations, out, args.metric)
    print(table)
    curves = win_rate_curves(iterations)
    if curves:
        print(curves)
    for path in paths:
        print(f"wrote {path}")
