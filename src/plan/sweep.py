"""What a sweep costs: each point's iterations priced as `python -m src.plan` prices one
(src/plan/hours.py), then the stages several points share counted once, as the runs compute them
once (src/core/reuse.py): a stage of iteration t is shared by the points whose keys it and every
stage before it read (the earlier iterations' too) are the same — an eta or a learning rate
leaves iteration 1's generate and rank shared by every point.

    python -m src.plan --sweep sweeps/grid.yaml --iterations 3 model=mistral-7b-instruct-v0.2 hardware=node-8gpu
"""

from __future__ import annotations

import json
from pathlib import Path

from src.config import Config, compose
from src.config.grid import grid_points, load_sweep
from src.core.fingerprints import stage_inputs
from src.core.registry import STAGES, Stage
from src.plan.hours import hours_shown, iteration_hours
from src.plan.stages import policy_shape

ORDER = {s.value: i for i, s in enumerate(STAGES)}  # the rows in pipeline order


def read_chain(cfgs: list[Config], stage: Stage) -> str:
    """What `stage` of the last of `cfgs` (iterations 1..t of one point) is made from: the inputs
    of every stage of the earlier iterations and of the stages up to it in its own."""
    order = list(STAGES)
    parts = []
    for u, cfg in enumerate(cfgs, start=1):
        last = order.index(stage) if u == len(cfgs) else order.index(Stage.train)
        parts += [stage_inputs(cfg.as_tree(), s) for s in order[: last + 1]]
    return json.dumps(parts, sort_keys=True, default=str)


def sweep_text(path: Path, overrides: list[str], iterations: int) -> str:
    """The sweep's GPU-hours as its points alone would pay them, and with the stages they share
    computed once, by stage and iteration."""
    points = grid_points(load_sweep(path))
    alone = 0.0
    shared: dict[tuple[str, int], dict[str, float]] = {}  # (stage, t) -> read chain -> GPU-hours
    for point in points:
        cfgs = [compose([*overrides, *point, f"iter={t}"]) for t in range(1, iterations + 1)]
        shape = policy_shape(cfgs[0])
        for t, cfg in enumerate(cfgs, start=1):
            for s in iteration_hours(cfg, shape):
                alone += s.gpu_hours
                chain = read_chain(cfgs[:t], Stage(s.stage))
                shared.setdefault((s.stage, t), {})[chain] = s.gpu_hours
    once = sum(sum(chains.values()) for chains in shared.values())
    rows = [
        f"| {stage} | {t} | {len(chains)} of {len(points)} | "
        f"{hours_shown(sum(chains.values()), 0)} |"
        for (stage, t), chains in sorted(
            shared.items(), key=lambda item: (item[0][1], ORDER[item[0][0]])
        )
    ]
    saved = alone - once
    return "\n".join(
        [
            f"sweep {path}: {len(points)} points, iterations 1..{iterations}",
            "",
            "| stage | iteration | computed (of the points) | GPU-hours |",
            "|---|---|---|---|",
            *rows,
            "",
            f"{hours_shown(alone, 0)} GPU-hours as {len(points)} lineages computing every stage; "
            f"{hours_shown(once, 0)} with the stages they share computed once "
            f"(pipeline.reuse, the default): {hours_shown(saved, 0)} saved "
            f"({100 * saved / alone if alone else 0:.0f} %).",
        ]
    )
