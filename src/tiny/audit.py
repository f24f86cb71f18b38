"""Audits tiny-model runs with the toy's own rule: what the judges could only learn, read off the text.

    python -m src.tiny.audit [--root DIR]   (default: $SELFPLAY_RUNS, else runs)

For every lineage of the tiny models under the root and every iteration: the share of helpful
sentences and the share of well-formed answers (src/tiny/toy.py) of the policy's samples (the
generate stage) and of its eval answers, beside the eval judge's win rate against the reference.
A win rate that rises while the rule's share does not, or while answers stop being whole
sentences, is the eval judge being exploited, not the policy getting better.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from statistics import mean

from src.config import Stage, runs_root
from src.core.artifacts import read_jsonl
from src.core.errors import StageError
from src.core.layout import RunLayout, iteration_name
from src.core.records import read_record
from src.tiny.toy import helpful_share, well_formed

TINY_MODELS = ("tiny-mistral", "tiny-gemma2")


def measure(texts: list[str]) -> str:
    if not texts:
        return "-"
    shares = [helpful_share(t) or 0.0 for t in texts]
    return f"helpful {mean(shares):.2f}, well-formed {mean(map(well_formed, texts)):.2f}"


def audit_iteration(lineage: RunLayout, t: int) -> str | None:
    generated = [
        response
        for path in sorted(lineage.stage_dir_in(t, Stage.generate).glob("responses-*.jsonl"))
        for _, row in read_jsonl(path)
        for response in row["responses"]
    ]
    evaluated = lineage.stage_dir_in(t, Stage.eval)
    report, judged = evaluated / "eval.json", evaluated / "judgements.jsonl"
    if not generated and not report.is_file():
        return None
    line = f"  {iteration_name(t)}: samples {measure(generated)}"
    if report.is_file() and judged.is_file():
        r = json.loads(report.read_text())
        rows = [row for _, row in read_jsonl(judged)]
        line += (
            f" | eval answers {measure([j['output'] for j in rows])}"
            f" (reference {measure([j['reference_output'] for j in rows])})"
            f" | {r['judge']} win rate {r['win_rate']:.3f}"
            f" [{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}]"
        )
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.tiny.audit", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="paths.root (default: $SELFPLAY_RUNS, else runs)"
    )
    args = parser.parse_args(argv)
    args.root = args.root.resolve() if args.root else runs_root()
    lineages = sorted(p for m in TINY_MODELS for p in args.root.glob(f"{m}/*/*") if p.is_dir())
    if not lineages:
        print(f"no runs of the tiny models under {args.root}", file=sys.stderr)
        sys.exit(1)
    for lineage in lineages:
        lines = [audit_iteration(RunLayout(lineage), t) for t in RunLayout(lineage).iterations()]
        head = f"{lineage.relative_to(args.root)}{made_on(lineage)}"
        print("\n".join([head, *filter(None, lines)]))


def made_on(lineage: Path) -> str:
    """Where its training ran, from the first record that names a machine: other kernels (the
    vector instruction sets torch ran) or thread count sums floats in another order, and the
    digits of a curve move with it (docs/results.md)."""
    layout = RunLayout(lineage)
    for t in layout.iterations():
        with contextlib.suppress(OSError, StageError):
            m = (read_record(layout.stage_dir_in(t, Stage.train)) or {}).get("machine")
            if m:
                sets = ", ".join(m["vector_sets"]) or "no vector sets"
                ran = f"; {m['cpu_kernels']} kernels" if m.get("cpu_kernels") else ""
                return f" (trained on {m['cpu']}: {sets}{ran}; {m['torch_threads']} torch threads)"
    return ""


if __name__ == "__main__":
    main()
