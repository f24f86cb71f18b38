"""Will each stage fit, before anything is queued: `python -m src.plan <the overrides of
src.main>` prints, for the resolved config and hardware, each stage of an iteration with its
processes, its memory per GPU (the memory model of src/plan/memory.py, term by term), whether
that fits `hardware.gpu_memory_gb`, and the largest per-device batch that does; where none does,
the GPU memory a batch of 1 needs and the override (`src.plan.stages.remedies`) that fits.

    python -m src.plan experiment=gemma-2-9b-it-sppo hardware=node-8gpu
    python -m src.plan experiment=gemma-2-9b-it-sppo-qlora hardware.gpu_memory_gb=24

A bad config ends with one line and exit 2, as src.main's; a model whose shape is not known here
(a hub id of another model, offline) with exit 1.
"""

from __future__ import annotations

import sys

from src.config import compose, showing_unset_required
from src.config.cli import failures
from src.core.errors import command_line
from src.plan.stages import plan_text


def main(argv: list[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    with failures(command_line("python -m src.plan", overrides), overrides):
        with showing_unset_required() as unset:  # a required file: planned without it
            cfg = compose(overrides)
            text = plan_text(cfg, overrides=overrides)  # which composes its remedies alike
        print(text)
        for line in unset:
            print(f"note: {line} (planned without it)", file=sys.stderr)


if __name__ == "__main__":
    main()
