"""Will each stage fit, before anything is queued: `python -m src.plan <the overrides of
src.main>` prints, for the resolved config and hardware, each stage of an iteration with its
processes, its memory per GPU (the memory model of src/plan/memory.py, term by term), whether
that fits `hardware.gpu_memory_gb`, and the largest per-device batch that does; where none does,
the GPU memory a batch of 1 needs and the override (`src.plan.stages.remedies`) that fits.

    python -m src.plan experiment=gemma-2-9b-it-sppo hardware=node-8gpu
    python -m src.plan experiment=gemma-2-9b-it-sppo-qlora hardware.gpu_memory_gb=24
    python -m src.plan --sweep sweeps/grid.yaml --iterations 3 hardware=node-8gpu   # a sweep's
        GPU-hours, the stages its points share counted once (src/plan/sweep.py)

A bad config ends with one line and exit 2, as src.main's; a model whose shape is not known here
(a hub id of another model, offline) with exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

from src.config import compose, showing_unset_required
from src.config.cli import ArgumentParser, failures
from src.config.grid import positive_int
from src.core.errors import command_line
from src.plan.stages import plan_text
from src.plan.sweep import sweep_text


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(prog="python -m src.plan", add_help=False)
    parser.add_argument(
        "--sweep", type=Path, help="price this sweep file's points (src/plan/sweep.py)"
    )
    parser.add_argument("--iterations", type=positive_int, default=1)
    known, overrides = parser.parse_known_args(args)
    with failures(command_line("python -m src.plan", args), overrides):
        with showing_unset_required() as unset:  # a required file: planned without it
            if known.sweep is not None:
                text = sweep_text(known.sweep, overrides, known.iterations)
            else:
                cfg = compose(overrides)
                text = plan_text(cfg, overrides=overrides)  # which composes its remedies alike
        print(text)
        for line in unset:
            print(f"note: {line} (planned without it)", file=sys.stderr)


if __name__ == "__main__":
    main()
