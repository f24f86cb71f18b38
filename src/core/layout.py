"""The layout of a run's folder, spelt here alone (docs/design.md §5).

    <run_dir>/iter<t>/<stage>/            one folder per stage of iteration t
    <run_dir>/iter<t>/train/checkpoint/   iteration t's policy, iteration t+1's generator
    <run_dir>/iter<t>/eval/vs-<name>/     an eval against another reference than the base model
    <run_dir>/iter<t>/eval/vs-<name>@<by>/  one by other judges (eval.judged_by), vs-base@<by> too
    <run_dir>/iter0/eval/                 the base model's own eval (`stage=eval iter=0`)
    <run_dir>/iter<t>/train/adapter/      with LoRA: the adapter alone, merged into the checkpoint
    <run_dir>/export/iter<t>/             iteration t's model and data folders, as exported
    <run_dir>/slurm/                      `python -m src.slurm`'s scripts, their logs in logs/
    <run_dir>/sweep.json                  the sweep that last ran the lineage as a point

Every module that builds such a path, lists the iterations or side evals of a run, or reads a
folder back into its iteration and stage does it through `RunLayout`; the iteration's name
(`iter<t>`) doubles as its W&B tag and artifact alias and as its model's label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from src.core.registry import STAGES, Stage

ITERATION = re.compile(r"iter(\d+)")

# The clone this code runs from: conf/'s `${repo:...}` paths lie in it (its data/, .cache/tiny),
# and records name a path in it relative to it (`<repo>/...`, src/core/fingerprints.py), so that
# a clone renamed or a run copied to another clone keeps its finished stages.
REPO_ROOT = Path(__file__).resolve().parents[2]

# Evals of one checkpoint against several references sit side by side: the one against the base
# model in the eval stage's folder, each other one in a folder of its own inside it, named by its
# reference (`iter3/eval/vs-iter1`, `iter3/eval/vs-gpt4_turbo.json`), with its own record and lock.
SIDE_EVAL = "vs-"
# An eval by other judges than the lineage's own (`eval.judged_by`), of the same checkpoint against
# the same reference, sits beside those too: `vs-<reference>@<judges>` (`vs-base@gpt-4o`).
JUDGED_BY = "@"

# In each stage's folder: its record, written last, the only mark that it finished
# (src/core/records.py); the config it ran with, headed by its command (src/core/saved.py).
RECORD = "done.json"
SAVED_CONFIG = "config.yaml"
# In the lineage's folder: the sweep that last ran it as a point, {"sweep": name, "swept": keys}
# (src/stages/report/curves.py), which keeps its curve run in the sweep's W&B group
SWEEP_RECORD = "sweep.json"
LOCKS = ".locks"  # the folder of an iteration that holds its stages' locks (src/core/locks.py)
CHECKPOINT = "checkpoint"  # the train stage's model folder
ADAPTER = "adapter"  # beside it, a LoRA training's adapter alone


def iteration_name(t: int) -> str:
    """`iter<t>`: iteration t's folder, and its tag, alias and label wherever it is named."""
    return f"iter{t}"


def iteration_number(name: str) -> int | None:
    """t for the name `iter<t>`; None for any other name."""
    match = ITERATION.fullmatch(name)
    return int(match[1]) if match else None


def side_name(
    reference: str | None, reference_outputs: str | None, judged_by: str | None = None
) -> str | None:
    """The name an eval against `reference` (a model, `iter<t>`) or against the answers in
    `reference_outputs` (the file wins, as in the stage) gives its folder, after `vs-`; None for
    the eval against the base model, which has the eval's folder itself. The file's name keeps its
    suffix (answers read from `iter1.json` are not iteration 1's, `vs-iter1`); a model's is its
    last path component; either in characters a folder name keeps, which `@` is not: an eval by
    other judges (`judged_by`) adds `@<judged_by>` to that name, `base@<judged_by>` against the
    base model."""
    if judged_by:
        return f"{side_name(reference, reference_outputs) or 'base'}{JUDGED_BY}{judged_by}"
    if not reference_outputs and reference in (None, "base"):
        return None
    if reference_outputs:
        name = PurePosixPath(reference_outputs).name
    else:
        name = PurePosixPath(str(reference).rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def stage_folder(
    stage: Stage,
    reference: str | None = "base",
    reference_outputs: str | None = None,
    judged_by: str | None = None,
) -> str:
    """A stage's folder inside its iteration's: its name, and for an eval against anything but
    the base model (`eval.reference`, `eval.reference_outputs`) or by other judges
    (`eval.judged_by`) `eval/vs-<side_name>`."""
    side = side_name(reference, reference_outputs, judged_by) if stage == Stage.eval else None
    return _folder(stage, side)


def _folder(stage: Stage, side: str | None) -> str:
    if side is None:
        return stage.value
    if stage != Stage.eval:
        raise ValueError(f"only the eval stage has evals beside it, not {stage.value}")
    return f"{stage.value}/{SIDE_EVAL}{side}"


@dataclass(frozen=True)
class Place:
    """Where a path lies in a run: its iteration, its stage (None: the iteration's folder
    itself) and the side eval's name after `vs-` (None: not in a side eval's folder)."""

    iteration: int
    stage: Stage | None = None
    side: str | None = None


def begun(folder: Path) -> bool:
    """Whether an iteration's folder holds anything but its stages' locks."""
    return folder.is_dir() and any(p.name != LOCKS for p in folder.iterdir())


@dataclass(frozen=True)
class RunLayout:
    """The folders of the run in `run_dir`, one lineage's iterations."""

    run_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))

    @classmethod
    def holding(cls, folder: Path) -> RunLayout | None:
        """The run whose stage folder (`iter<t>/<stage>`) or side eval's (`iter<t>/eval/vs-<name>`)
        `folder` is; None for a folder outside that layout (a cache, a file of the user's own)."""
        folder = Path(folder)
        stage = folder.parent if folder.name.startswith(SIDE_EVAL) else folder
        if stage.name in _STAGE_NAMES and iteration_number(stage.parent.name) is not None:
            return cls(stage.parent.parent)
        return None

    def iteration_dir(self, t: int) -> Path:
        return self.run_dir / iteration_name(t)

    def stage_dir_in(self, t: int, stage: Stage | str, side: str | None = None) -> Path:
        """The folder of `stage` in iteration t: the eval's own, or with `side` the eval against
        that reference (`side_name`). `Config.stage_dir`: the folder of the config's own stage,
        its iteration and its eval's reference."""
        return self.iteration_dir(t) / _folder(Stage(stage), side)

    def checkpoint(self, t: int) -> Path:
        """Iteration t's trained policy, π_t."""
        return self.stage_dir_in(t, Stage.train) / CHECKPOINT

    def export_dir(self, t: int) -> Path:
        """Where `python -m src.export` assembles iteration t's folders unless told elsewhere."""
        return self.run_dir / "export" / iteration_name(t)

    def slurm_logs(self) -> Path:
        """Where the SLURM jobs of `python -m src.slurm` log; their scripts are in its parent."""
        return self.run_dir / "slurm" / "logs"

    def iterations(self, locked: bool = False) -> list[int]:
        """The iterations that have a folder in the run, in order (iter10 after iter9); not one
        whose folder holds only its locks (a redo of a training locks the next iteration's
        stages, which start from its checkpoint, whether or not that iteration was begun),
        unless `locked`."""
        if not self.run_dir.is_dir():
            return []
        found = (iteration_number(p.name) for p in self.run_dir.iterdir()
                 if (p.is_dir() if locked else begun(p)))  # fmt: skip
        return sorted(t for t in found if t is not None)

    def side_evals(self, t: int) -> list[Path]:
        """The folders of iteration t's evals against other references than the base model,
        by name."""
        return sorted(self.stage_dir_in(t, Stage.eval).glob(f"{SIDE_EVAL}*"))

    def parse(self, path: Path) -> Place:
        """Where `path` (a folder of the run or a file in one) lies; a ValueError for a path
        outside the run or outside its iterations' folders."""
        path = Path(path)
        try:
            parts = path.relative_to(self.run_dir).parts
        except ValueError:
            raise ValueError(f"{path} lies outside the run {self.run_dir}") from None
        t = iteration_number(parts[0]) if parts else None
        if t is None:
            raise ValueError(f"{path} lies in no iteration's folder (iter<t>) of {self.run_dir}")
        if len(parts) == 1:
            return Place(t)
        if parts[1] not in _STAGE_NAMES:
            raise ValueError(f"{path} lies in no stage's folder of {self.iteration_dir(t)}")
        stage = Stage(parts[1])
        if stage == Stage.eval and len(parts) > 2 and parts[2].startswith(SIDE_EVAL):
            return Place(t, stage, parts[2].removeprefix(SIDE_EVAL))
        return Place(t, stage)


_STAGE_NAMES = {s.value for s in STAGES}
