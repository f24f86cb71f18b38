"""Compare runs: a table row per (lineage, iteration), and three plots.

    python -m src.compare [--root DIR] [--out DIR] [--wandb ENTITY/PROJECT] [--metric NAME]
                          [--only PATTERN]... [--where KEY=VALUE]... [--hparam-metric NAME]
                          [--by seed]

Reads the run directories the stages write (README, "Run directories"):
    <root>/<model>/<method>/<run_name>/iter<t>/<stage>/{config.yaml, done.json, metrics.json}
and writes compare.md, compare.csv, training_curves.png, win_rate_by_iteration.png and
final_vs_hparams.png into --out (default <root>/compare). --metric picks the log_history key
that training_curves.png draws (default: loss). --hparam-metric picks the column that
final_vs_hparams.png draws, at each lineage's last iteration that has it, against its method's
own eta or beta and each other hyper-parameter that varies (default: eval_win_rate, the eval's
win rate, with its bootstrap interval; the final training loss where no run has it). --wandb
reads the same from a W&B project. A row's eta or beta is the one its loss reads (eta: SPPO's;
beta: DPO's and WPO's), the other blank.

--by seed pools the lineages that differ by their seeds alone (src/compare/pool.py): a row per
pool and iteration, each figure the mean over the seeds, their min-max beside it in the table
(`<column>_min`, `<column>_max` in the CSV) and as the plots' error bars and training bands.

--only PATTERN keeps the lineages `<model>/<method>/<run_name>` that match a glob
(`--only 'tiny-mistral/sppo/*'`; given twice, either), --where KEY=VALUE the rows whose column
KEY holds VALUE (`--where eta=10` matches 10.0, SPPO's runs only; given twice, both); each, from
the run directories or from W&B, must match something.

Only finished stages count: values come from a stage whose done.json exists, as the stages
themselves trust nothing else in a directory, and an iteration with no finished stage (the
folder a refused or interrupted command leaves) is left out with one line on stderr naming it.
An eval against another reference than the run's own (`iter<t>/eval/vs-<name>/`, e.g. vs-iter1
for eval.reference=iter1) or by other judges (vs-base@<by> for eval.judged_by=<by>) adds the
columns eval_win_rate[vs-<name>] and eval_lc_win_rate[vs-<name>], and a line per lineage and
reference to the printed win rates; its MT-Bench and Arena-Hard figures are columns by their judge
(mt_bench[<judge>]), beside the run's own judge's.
A malformed config.yaml, done.json, metrics.json or eval.json is skipped with one warning line
naming the file: its values stay blank (a malformed done.json makes its stage unfinished) and
every other run is still compared. A value of the wrong type (text where a number belongs) is
blanked with one warning line naming the file, the key and the value.
A failure is one line (src.config.cli): exit code 1 when there is nothing to compare (no finished
stage), --only or --where matches nothing, --metric names no logged key or --hparam-metric no
column; 2 for a bad option (--where without `=`); 3 when the W&B server cannot be reached or the
file system refuses (--out where a file is, or read-only; --root a file).

This module holds the outputs (the table, the CSV, the printed win rates) and the command line;
src.compare.runs reads the runs and src.compare.plots draws them.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

from src.compare.pool import by_seed
from src.compare.runs import CompareError, choose, discover, fetch_wandb
from src.config import runs_root
from src.config.cli import ArgumentParser, failures
from src.core.artifacts import atomic_write_text
from src.core.errors import EnvironmentFailure, command_line
from src.core.layout import SIDE_EVAL, iteration_name
from src.stages.report.results import JUDGED_HEADLINES, Iteration, num

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


# The eval against another reference than the run's own: eval_win_rate[vs-iter1], ...
SIDE_EVAL_COLUMN = re.compile(rf"eval_(lc_)?win_rate\[({re.escape(SIDE_EVAL)}[^\]]+)\]")
# final_vs_hparams.png's metric: the eval's win rate, which sweeps/eta-tiny.yaml's `metric:`
# names by its W&B summary key (win_rate); the pairs' chosen win rate the other sweeps name is
# mean_chosen_win_rate (src/sweep.py itself reads no metric)
HPARAM_METRIC = "eval_win_rate"


def columns_for(rows: list[dict]) -> list[str]:
    shown = [c for c in COLUMNS if c not in OPTIONAL_COLUMNS]
    if any("seeds" in r for r in rows):  # pooled (--by seed): how many lineages each row pools
        shown.insert(shown.index("stages_done") + 1, "seeds")
    judged = sorted(
        {c for r in rows for c in r if c.startswith(tuple(f"{b}[" for b in JUDGED_HEADLINES))}
    )
    # a reference's win rate and its length-controlled one side by side
    side = sorted(
        {c for r in rows for c, v in r.items() if SIDE_EVAL_COLUMN.fullmatch(c) and v is not None},
        key=lambda c: (SIDE_EVAL_COLUMN.fullmatch(c)[2], c.startswith("eval_lc")),
    )
    optional = [c for c in OPTIONAL_COLUMNS if any(r.get(c) is not None for r in rows)]
    return shown + optional + side + judged


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(row: dict, column: str) -> str:
        value = row.get(column)
        text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        if pooled(row, column) and row["seeds"] > 1:  # the seeds' min-max beside the mean
            low, high = row[f"{column}_ci"]
            text += f" [{low:.4g}, {high:.4g}]"
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], columns: list[str]) -> str:
    if "seeds" in columns:  # pooled: each figure's min and max over the seeds after it
        columns = [x for c in columns for x in (c, *spread_columns(rows, c))]
        rows = [r | {f"{c}_{end}": r[f"{c}_ci"][i] for c in columns if pooled(r, c)
                     for i, end in enumerate(("min", "max"))} for r in rows]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # None is written as an empty cell; floats in full precision
    return buffer.getvalue()


def spread_columns(rows: list[dict], column: str) -> tuple[str, ...]:
    """`<column>_min` and `<column>_max` where a pooled row has a spread of `column`."""
    return (f"{column}_min", f"{column}_max") if any(pooled(r, column) for r in rows) else ()


def pooled(row: dict, column: str) -> bool:
    """Whether `row` pools lineages (--by seed) and holds the seeds' min-max of `column` (a row
    of a lineage alone keeps its bootstrap intervals)."""
    return bool(row.get("seeds")) and bool(row.get(f"{column}_ci"))


def write_outputs(
    iterations: list[Iteration], out: Path, metric: str, hparam_metric: str = HPARAM_METRIC
) -> tuple[str, list[Path]]:
    from src.compare import plots  # matplotlib loads only when there is something to draw

    rows = [it.row for it in iterations]
    columns = columns_for(rows)
    check_metric(iterations, metric)
    check_hparam_metric(rows, hparam_metric)
    table = markdown_table(rows, columns)
    paths = [atomic_write_text(out / "compare.md", table),
             atomic_write_text(out / "compare.csv", csv_text(rows, columns))]  # fmt: skip
    paths += plots.draw_all(iterations, out, metric, hparam_metric)
    return table, paths


def win_rate_curves(iterations: list[Iteration]) -> str:
    """The eval win rates by iteration, a line per lineage and reference: the run's own first,
    then each other one as `<lineage> vs <name>` ("" when nothing was evaluated)."""
    references = sorted(
        {m[2] for it in iterations for c in it.row if (m := SIDE_EVAL_COLUMN.fullmatch(c))}
    )
    lines: dict[tuple[str, str], list[str]] = {}
    for it in iterations:
        for reference in ("", *references):  # "": the run's own, eval_win_rate
            suffix = f"[{reference}]" if reference else ""
            point = curve_point(it.row, f"eval_win_rate{suffix}", f"eval_lc_win_rate{suffix}")
            if point:
                lines.setdefault((it.lineage, reference), []).append(point)
    if not lines:
        return ""
    interval = "bootstrap interval"
    if any("seeds" in it.row for it in iterations):
        interval += "; a pool of seeds: its mean [min, max]"
    body = "\n".join(
        f"  {lineage}{' vs ' + reference.removeprefix(SIDE_EVAL) if reference else ''}: "
        + " | ".join(lines[lineage, reference])
        for lineage, reference in sorted(lines)  # a lineage's lines together, its own first
    )
    return f"eval win rate by iteration (against each run's reference; {interval}):\n{body}\n"


def curve_point(row: dict, key: str, lc_key: str) -> str:
    """`iter2 0.310 [0.220, 0.400] LC 0.270`, or "" where `key` is blank."""
    if row.get(key) is None:
        return ""
    low, high = row.get(f"{key}_ci") or (None, None)
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
    lc = f" LC {row[lc_key]:.3f}" if row.get(lc_key) is not None else ""
    return f"{iteration_name(row['iter'])} {row[key]:.3f}{ci}{lc}"


def check_metric(iterations: list[Iteration], metric: str) -> None:
    logged = {k for it in iterations for e in it.history for k in e if num(e[k]) is not None}
    if logged and metric not in logged:
        names = ", ".join(sorted(logged - {"step", "epoch"}))
        raise CompareError(f"--metric {metric}: no training log has it; logged keys: {names}")


def check_hparam_metric(rows: list[dict], name: str) -> None:
    columns = set(COLUMNS) | {c for r in rows for c in r if not c.endswith("_ci")}
    if name not in columns:
        raise CompareError(
            f"--hparam-metric {name}: not a column; columns: {', '.join(columns_for(rows))}"
        )


def where_pair(text: str) -> tuple[str, str]:
    """--where's KEY=VALUE; anything else is a bad option (argparse's error: exit code 2)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (a column and its value), not {text!r}"
        )
    return key.strip(), value.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m src.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="run directories (default: $SELFPLAY_RUNS, else ./runs)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <root>/compare)"
    )
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead")
    parser.add_argument("--metric", default="loss", help="log_history key of training_curves.png")
    parser.add_argument(
        "--only", action="append", default=[], metavar="PATTERN",
        help="compare the lineages <model>/<method>/<run_name> this glob matches (repeatable: any)",
    )  # fmt: skip
    parser.add_argument(
        "--where", action="append", default=[], type=where_pair, metavar="KEY=VALUE",
        help="compare the rows whose column KEY holds VALUE, e.g. eta=10 (repeatable: all)",
    )  # fmt: skip
    parser.add_argument(
        "--by", choices=["seed"], default=None,
        help="pool the lineages that differ by their seeds alone: each figure's mean and min-max",
    )  # fmt: skip
    parser.add_argument(
        "--hparam-metric", default=HPARAM_METRIC, metavar="NAME",
        help=f"column final_vs_hparams.png draws (default: {HPARAM_METRIC})",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    with failures(command_line("python -m src.compare", words), where="--out"):
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
    if args.wandb:
        found, source = fetch_wandb(args.wandb), f"in W&B project {args.wandb}"
    else:
        found, source = discover(root), f"under {root}"
    iterations = choose(found, source, args.only, args.where)
    if args.by == "seed":
        iterations = by_seed(iterations)
    table, paths = write_outputs(iterations, out, args.metric, args.hparam_metric)
    print(table)
    curves = win_rate_curves(iterations)
    if curves:
        print(curves)
    for path in paths:
        print(f"wrote {path}")
