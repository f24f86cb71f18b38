"""The demo's digits as docs/results.md publishes them per machine, beside the runs here.

    python -m src.tiny.published [--root DIR] [OVERRIDE ...]

`make demo` ends with it. Each machine's row: the win rate against the base model, by the eval
judge (tiny-judge), of SPPO η = 10 at iterations 1, 2 and 3, of WPO-HB and of DPO, each at
iteration 1: the published machines' (docs/results.md, Measured, shows the same table; a test
holds the two equal), then the one the runs under the root were made on, read from each eval's
eval.json, "-" where a run has not finished. DIR: the runs' root (default: paths.root as the
demo's commands compose it, $SELFPLAY_RUNS, else runs); OVERRIDEs: the demo's own (`make demo
ARGS=...`), which name its run folders as they named them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from src.config import ConfigError, compose
from src.core.errors import EXIT_CONFIG_ERROR, StageError
from src.core.layout import RunLayout
from src.core.machine import machine
from src.core.records import read_record


@dataclass(frozen=True)
class DemoRun:
    """One lineage `make demo` trains: its name, the overrides of its command that name its
    folder, and the iterations it runs."""

    name: str
    overrides: tuple[str, ...]
    iterations: int

    def command(self) -> tuple[str, ...]:
        """Its overrides on `python -m src.main`, iter= last."""
        return (*self.overrides, f"iter={self.iterations}")

    def columns(self) -> list[str]:
        """Its columns: one per iteration, each named by its number where it runs several."""
        if self.iterations == 1:
            return [self.name]
        return [f"{self.name} {t}" for t in range(1, self.iterations + 1)]


# The demo's three commands (the Makefile's demo target; a test holds them equal), less the
# overrides that name no folder (logger=none eval.enabled=true)
DEMO_RUNS = (
    DemoRun("SPPO", ("model=tiny-mistral",), 3),
    DemoRun("WPO-HB", ("experiment=tiny-wpo-hb",), 1),
    DemoRun("DPO", ("model=tiny-mistral", "method=dpo"), 1),
)
COLUMNS = tuple(column for run in DEMO_RUNS for column in run.columns())


@dataclass(frozen=True)
class Row:
    """One machine's demo: its description, the CPU vector instruction sets its float sums ran
    on (None: not recorded), and its win rates in COLUMNS' order (None: not run)."""

    machine: str
    vector_sets: tuple[str, ...] | None
    figures: tuple[float | None, ...]


# Each on 2 cores with torch 2.13.0+cpu; vector sets as src.core.machine.machine names them
PUBLISHED = (
    Row(
        "the one that made the first Measured table (its CPU not recorded)",
        None,
        (0.697, 0.817, 0.897, 0.803, 0.717),
    ),
    Row(
        "AMD EPYC with AVX2 and FMA, no AVX-512",
        ("avx2", "fma"),
        (0.680, 0.807, 0.883, 0.793, 0.713),
    ),
    Row(
        "AMD EPYC with AVX-512, its own AVX-512 kernels (ATEN_CPU_CAPABILITY=avx512)",
        ("avx2", "fma", "avx512f"),
        (0.680, 0.813, 0.847, 0.773, 0.733),
    ),
    Row(
        "AMD EPYC with AVX-512, AVX2 kernels (the default: src/core/kernels.py)",
        ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"),
        (0.680, 0.807, 0.870, 0.793, 0.713),
    ),
)


def eval_folders(root: Path | None, overrides: list[str]) -> tuple[Path, list[Path]]:
    """The runs' root and the folder of each eval in COLUMNS' order, as `python -m src.main`
    with the demo's overrides names them; under `root` where given."""
    folders = []
    for run in DEMO_RUNS:
        cfg = compose([*run.command(), *overrides])
        here = Path(cfg.paths.root) if root is None else root
        lineage = here / Path(cfg.run.dir).relative_to(cfg.paths.root)
        eval_folder = cfg.stage_folder("eval")
        folders += [
            RunLayout(lineage).iteration_dir(t) / eval_folder for t in range(1, run.iterations + 1)
        ]
    return here, folders


def finished_eval(folder: Path) -> tuple[float | None, dict | None]:
    """An eval's win rate and the machine its record names; (None, None) where the stage has not
    finished (no record: an eval.json beside none is a leftover) or its files do not read."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, StageError):
        record = read_record(folder)
        if record is not None:
            win_rate = float(json.loads((folder / "eval.json").read_text())["win_rate"])
            return win_rate, record.get("machine")
    return None, None


def measured(folders: list[Path]) -> tuple[tuple[float | None, ...], list[dict]]:
    """The evals' win rates, in their order, and the machines their records name."""
    figures, machines = [], []
    for folder in folders:
        win_rate, made_on = finished_eval(folder)
        figures.append(win_rate)
        if made_on and made_on not in machines:
            machines.append(made_on)
    return tuple(figures), machines


def this_row(figures: tuple[float | None, ...], machines: list[dict]) -> Row:
    """The runs' row, named by the machine their records name: this one (src.core.machine.machine)
    where they name none or its CPU and vector sets, with the kernels and torch threads they ran
    on; else the other CPUs (a root copied from elsewhere)."""
    here = machine()
    same = all(
        (m.get("cpu"), m.get("vector_sets")) == (here["cpu"], here["vector_sets"]) for m in machines
    )
    threads = sorted({str(m["torch_threads"]) for m in machines if m.get("torch_threads")})
    kernels = sorted({str(m["cpu_kernels"]) for m in machines if m.get("cpu_kernels")})
    ran = "".join(
        f", {' or '.join(values)} {what}"
        for values, what in ((kernels, "kernels"), (threads, "torch threads"))
        if values
    )
    if same:
        label, sets = f"this machine ({here['cpu']}{ran})", here["vector_sets"]
    else:
        label = f"made on {' and '.join(sorted({str(m.get('cpu')) for m in machines}))}{ran}"
        sets = sorted({s for m in machines for s in m.get("vector_sets") or []})
    return Row(label, tuple(sets), figures)


def nearest(row: Row) -> tuple[Row, float, str] | None:
    """The published row whose figures are closest to `row`'s (the smallest largest difference
    over the figures `row` has), that difference and its column; None where it has none."""
    best = None
    for published in PUBLISHED:
        gaps = [
            (abs(mine - theirs), column)
            for mine, theirs, column in zip(row.figures, published.figures, COLUMNS, strict=True)
            if mine is not None and theirs is not None
        ]
        if gaps and (best is None or max(gaps)[0] < best[1]):
            best = (published, *max(gaps))
    return best


def table(rows: list[Row]) -> str:
    """The rows as aligned text, a header first."""
    cells = [["machine", "vector sets", *COLUMNS]]
    for row in rows:
        sets = "not recorded" if row.vector_sets is None else " ".join(row.vector_sets) or "none"
        figures = ["-" if f is None else f"{f:.3f}" for f in row.figures]
        cells.append([row.machine, sets, *figures])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def report(row: Row, root: Path) -> str:
    """The table, then how far the runs' digits are from the nearest published ones, and why
    digits move at all."""
    lines = [
        "make demo: win rate against the base (tiny-judge) of SPPO η = 10 at iterations 1-3, of"
        " WPO-HB and of DPO;",
        f"as published (docs/results.md), then the runs under {root}:",
        table([*PUBLISHED, row]),
    ]
    found = nearest(row)
    if found is None:
        lines.append("none of the demo's runs has finished an eval: nothing to compare")
    else:
        published, gap, column = found
        lines.append(
            f"largest difference to the nearest published row ({published.machine}): "
            f"{gap:.3f} ({column})"
        )
    lines.append(
        "why digits move from machine to machine (float sums in another order, by the kernels'"
        "\nvector sets and torch's thread count): docs/results.md, Measured"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.tiny.published", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="paths.root (default: $SELFPLAY_RUNS, else runs)"
    )
    parser.add_argument("overrides", nargs="*", help="the demo's overrides (make demo ARGS=...)")
    args = parser.parse_args(argv)
    try:
        root, folders = eval_folders(args.root.resolve() if args.root else None, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    figures, machines = measured(folders)
    print(report(this_row(figures, machines), root))


if __name__ == "__main__":
    main()
