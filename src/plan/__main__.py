"""Will each stage fit, before anything is queued: `python -m src.plan <the overrides of
src.main>` prints, for the resolved config and hardware, each stage of an iteration with its
processes, its memory per GPU (the memory model of src/plan/memory.py, term by term), whether
that fits `hardware.gpu_memory_gb`, and the largest per-device batch that does.

    python -m src.plan experiment=gemma-2-9b-it-sppo hardware=node-8gpu
    python -m src.plan experiment=gemma-2-9b-it-sppo-qlora hardware.gpu_memory_gb=24

A bad config ends with one line and exit 2, as src.main's; a model whose shape is not known here
(a hub id of another model, offline) with exit 1.
"""

from __future__ import annotations

import sys

from src.cli import failures
from src.config import compose
from src.plan.memory import GIB
from src.plan.stages import StagePlan, plan


def row(p: StagePlan, gpu_gb: float | None) -> str:
    if p.memory is None:
        memory, fits = ("–", "CPU") if not p.note else ("?", p.note)
    else:
        memory = f"{p.memory.footprint / GIB:.1f}"
        fits = {None: "not checked", True: "yes", False: "**no**"}[p.fits(gpu_gb)]
    batch = "" if p.batch_key is None else f"{p.batch_key}={p.batch}"
    if p.batch_key is not None and gpu_gb is not None:
        batch += f" (fits up to {p.largest_batch})" if p.largest_batch else " (none fits)"
    return f"| {p.stage} | {p.processes} | {memory} | {fits} | {batch} |"


def report(overrides: list[str]) -> str:
    cfg = compose(overrides)
    hw = cfg.hardware
    gpu_gb = hw.gpu_memory_gb if hw.device.value == "cuda" else None
    stages = plan(cfg)
    gpus = f"{hw.world_size} GPU(s) of {gpu_gb:g} GB" if gpu_gb else "no GPU memory to check"
    lines = [
        f"plan: {cfg.model.name}, {cfg.method.name.value}, iteration {cfg.iter} on "
        f"hardware={hw.name} ({gpus})",
        "",
        "| stage | processes | GiB per GPU | fits | per-device batch |",
        "|---|---|---|---|---|",
        *(row(p, gpu_gb) for p in stages),
        "",
        "GiB per GPU: the peak allocation, the allocator's slack over the activations and the CUDA "
        "context (docs/memory.md). Terms at each stage's peak:",
    ]
    for p in stages:
        if p.memory is None:
            continue
        phase = f", peak in the {p.memory.peak_phase}" if p.memory.peak_phase else ""
        lines.append(f"  {p.stage}{phase}:")
        lines += [f"    {v / GIB:7.2f}  {k}" for k, v in p.memory.terms().items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    with failures(" ".join(["python -m src.plan", *overrides]), overrides):
        print(report(overrides))


if __name__ == "__main__":
    main()
