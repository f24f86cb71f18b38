"""`python -m src.status [--json] [key=value ...]`: where each lineage stands, read-only.

    python -m src.status                                 # every lineage under paths.root
    python -m src.status model=tiny-mistral method=dpo   # the lineage this src.main command runs
    python -m src.status --json paths.root=/scratch/runs

For each iteration of a lineage, each stage: finished, stale (why, in src.main's words:
src/core/state.py), running (its lock's holder: src/core/locks.py), missing, damaged (its
record's own error) or unknown (its state needs a record that does not read, named); iteration 0,
where the lineage has it, its eval alone (the base model's own, `stage=eval iter=0`); and the one
command that brings the lineage up to date, the one src.main names: its refusal's fix
(src/schedule.py), else, while a stage is missing, the command itself; once its iterations are up
to date, that of iteration 0's eval (`stage=eval iter=0`).

A lineage is judged as src.main judges a command. With overrides, theirs, composed as src.main
composes them; without, every lineage of paths.root, each by the newest command that ran in it
(the head of its stages' saved configs: src/config/cli.py's `last_command`), paths.root set
where the lineage is now. Either way `stage=` and `pipeline.redo*` are left out (they say how
one run goes, not where the lineage stands) and the command is the lineage's last iteration's,
which runs the earlier ones first. A lineage whose command does not compose now, or composes to
another folder, is judged stage by stage, each by its own record, and no command is named.

It writes and creates nothing and takes no lock (a writer trying a lock while a probe held it
would stop); it ends 0 whatever the lineages hold, 2 for a bad override (one line).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.config import Config, ConfigError, Stage, compose_tree, validate
from src.config.cli import (
    MAIN,
    ONE_RUN,
    ArgumentParser,
    failures,
    last_command,
    trained_iterations,
)
from src.core import locks
from src.core.diff import StageState
from src.core.errors import (
    RedoStale,
    StageError,
    as_typed,
    command_line,
    running_stage,
    set_overrides,
    with_overrides,
    without_keys,
)
from src.core.layout import RunLayout
from src.core.records import read_record
from src.core.registry import STAGES
from src.core.state import Judge, saved_state, state_of

WIDTH = 100  # of the text's wrapped lines
SIDE = f"{Stage.eval.value}/"  # an eval beside the base model's, by its folder: eval/vs-<name>
COLUMN = 13  # a stage's column: "running [12]"


@dataclass
class Cell:
    """A stage's state and, where there is one, what it is about: a stale stage's reasons, a
    running one's holder, a damaged record's error."""

    state: str  # finished | stale | running | missing | damaged | unknown
    why: str | None = None


@dataclass
class Iteration:
    iter: int
    # by stage: those its command runs, and any other that has a folder
    stages: dict[str, Cell]


@dataclass
class Lineage:
    lineage: str  # its folder, under the root: <model>/<method>/<run_name>
    judged_as: str | None  # the command it is judged as (None: stage by stage, `note` says why)
    iterations: list[Iteration]
    command: str | None  # what brings it up to date; None: it is, or `note` says why none is named
    note: str | None = None


@dataclass
class Status:
    root: str
    lineages: list[Lineage]


def status(overrides: list[str]) -> Status:
    """The lineage `python -m src.main <overrides>` runs, or, when they name none (paths.root at
    most), every lineage under paths.root."""
    cfg = validate(compose_tree(overrides))  # a bad override refused as src.main refuses it
    root = Path(cfg.paths.root)
    words = without_keys(overrides, *ONE_RUN)
    if cfg.iter == 0:  # the base model's eval: shown as its lineage's row 0, the lineage judged
        words = without_keys(words, "iter")  # as a whole (iter=0 alone composes with stage=eval)
    if without_keys(words, "paths.root"):
        return Status(str(root), [judged(Path(cfg.run.dir), root, words)])
    return Status(str(root), [of_root(run_dir, root) for run_dir in lineages(root)])


def lineages(root: Path) -> list[Path]:
    """The lineage folders under `root` (<model>/<method>/<run_name>) with an iteration's."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.glob("*/*/*") if d.is_dir() and trained_iterations(d))


def of_root(run_dir: Path, root: Path) -> Lineage:
    """A lineage found under `root`, judged as its newest command."""
    words, why = last_command(run_dir, root)
    if words is None:
        return by_saved_configs(run_dir, root, why)
    try:
        return judged(run_dir, root, words)
    except ConfigError as err:
        return by_saved_configs(run_dir, root, f"its last command does not compose now: {err}")
    except Elsewhere as err:
        return by_saved_configs(run_dir, root, str(err))


class Elsewhere(Exception):
    """A lineage's command composes to another folder than the lineage's."""


def judged(run_dir: Path, root: Path, words: list[str]) -> Lineage:
    """The lineage in `run_dir` judged as `python -m src.main <words>` at its last iteration."""
    raw = compose_tree(words)
    cfg = validate(raw)
    if Path(cfg.run.dir).resolve() != run_dir.resolve():
        raise Elsewhere(f"its last command makes {cfg.run.dir} now")
    last = max([cfg.iter, *trained_iterations(run_dir)])
    config_for_iter = configs_of(raw)
    rows = [Iteration(t, cells_of(config_for_iter(t))) for t in range(1, last + 1)]
    command = command_line(MAIN, set_overrides(words, [f"iter={last}"]))
    remedy, note = brought_up_to_date(config_for_iter(last), config_for_iter, command, rows)
    base = base_model_judged(run_dir, config_for_iter)
    if base and remedy is None and note is None:  # its iterations up to date: then iteration 0
        again = command_line(MAIN, set_overrides(words, ["iter=0", "stage=eval"]))
        remedy, note = brought_up_to_date(config_for_iter(0), config_for_iter, again, base)
    return Lineage(name_of(run_dir, root), as_typed(command), base + rows, remedy, note)


def base_model_judged(run_dir: Path, config_for_iter: Callable[[int], Config]) -> list[Iteration]:
    """Iteration 0's row (`base_model_row`), judged as `python -m src.main stage=eval iter=0`
    with the settings of the lineage's command judges it."""
    if not RunLayout(run_dir).stage_dir_in(0, Stage.eval).is_dir():
        return []  # no config composed where there is none
    cfg = config_for_iter(0)
    return base_model_row(cfg.stage_dir(Stage.eval), lambda: state_of(cfg.as_tree(), Stage.eval))


def base_model_row(folder: Path, judge: Callable[[], StageState | None]) -> list[Iteration]:
    """Iteration 0, where the lineage has it: the base model's own eval (`stage=eval iter=0`) in
    `folder`, finished (judged by `judge`), running or damaged; none otherwise, as no command of
    the lineage's iterations makes it."""
    cell = stage_cell(folder, False, judge)
    return [] if cell is None else [Iteration(0, {Stage.eval.value: cell})]


def configs_of(raw: DictConfig) -> Callable[[int], Config]:
    """The composed config at each iteration, as src.main makes it (each made once); at
    iteration 0, the base model's, its eval's (`stage=eval iter=0`)."""
    made: dict[int, Config] = {}

    def config_for_iter(t: int) -> Config:
        if t not in made:
            at = {"iter": t, **({"stage": Stage.eval.value} if t == 0 else {})}
            made[t] = validate(OmegaConf.merge(raw, at))
        return made[t]

    return config_for_iter


def cells_of(cfg: Config) -> dict[str, Cell]:
    """Each stage of `cfg`'s iteration judged by `cfg`, as src.main judges it; then each eval
    beside the base model's (`eval/vs-<name>`), as `pipeline.redo_stale` judges it."""
    from src.schedule import side_evals

    tree, asked = cfg.as_tree(), cfg.stages()
    judged = Judge(tree)  # each stage judged once, those it reads too
    cells = {}
    for stage in STAGES:
        judge = lambda stage=stage: judged.state(stage)  # noqa: E731 - one per stage
        cell = stage_cell(cfg.stage_dir(stage), stage in asked, judge)
        if cell is not None:
            cells[stage.value] = cell
    for side in side_evals(cfg):  # beside the base model's: each by the settings it was made with
        folder, tree = side.stage_dir(Stage.eval), side.as_tree()
        cell = stage_cell(folder, False, lambda tree=tree: state_of(tree, Stage.eval))
        if cell is not None:
            cells[SIDE + folder.name] = cell
    return cells


def by_saved_configs(run_dir: Path, root: Path, why: str) -> Lineage:
    """A lineage no command judges (`why`): each stage by the config it was made with."""
    layout = RunLayout(run_dir)
    where = {"run": {"dir": str(run_dir)}, "paths": {"root": str(root)}}
    base = layout.stage_dir_in(0, Stage.eval)
    rows = base_model_row(base, lambda: saved_state(where, Stage.eval, base))
    for t in range(1, max(trained_iterations(run_dir)) + 1):
        cells = {}
        for stage in STAGES:
            folder = layout.stage_dir_in(t, stage)
            judge = lambda s=stage, f=folder: saved_state(where, s, f)  # noqa: E731
            cell = stage_cell(folder, folder.is_dir(), judge)
            if cell is not None:
                cells[stage.value] = cell
        rows.append(Iteration(t, cells))
    note = f"{why}; each stage judged by its own record, no command named"
    return Lineage(name_of(run_dir, root), None, rows, None, note)


def stage_cell(folder: Path, asked: bool, judge: Callable[[], StageState | None]) -> Cell | None:
    """The stage in `folder`: running while a process holds its lock, damaged when its record
    does not read, missing without one (None: not asked for either), else as `judge` says
    (None from it: finished by its record alone, no saved config to judge it by)."""
    holders = locks.writers(folder)
    if holders:
        return Cell("running", "; ".join(locks.described(path) for path in holders))
    try:
        record = read_record(folder)
    except StageError as err:
        return Cell("damaged", str(err))
    if record is None:
        return Cell("missing") if asked else None
    try:
        state = judge()
    except StageError as err:  # what it is judged by reads another record, which does not read
        return Cell("unknown", str(err))
    if state is None:
        return Cell("finished", "by its record alone: it saved no config to judge it by")
    return Cell("finished") if state.status == "done" else Cell("stale", state.why)


def brought_up_to_date(
    cfg: Config, config_for_iter: Callable[[int], Config], command: str, rows: list[Iteration]
) -> tuple[str | None, str | None]:
    """What brings the lineage up to date and, where none is named, why: `command` with the fix
    of what src.main would refuse in it, or `command` itself while a stage is missing or
    running; (None, None): it is up to date."""
    from src.schedule import iterations, refuse

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # what it would run first, said
            refuse(iterations(cfg, config_for_iter))  # as src.main's checks refuse its plans
    except StageError as err:
        fix = err.overrides(running_stage(command))
        if fix is None:
            return None, f"src.main would refuse it: {err}"
        return as_typed(with_overrides(command, fix)), None
    cells = {name: cell for row in rows for name, cell in row.stages.items()}
    if all(cell.state == "finished" for cell in cells.values()):
        return None, None
    if any(name.startswith(SIDE) and cell.state == "stale" for name, cell in cells.items()):
        # src.main redoes an eval beside the base model's only with pipeline.redo_stale
        return as_typed(with_overrides(command, RedoStale().overrides())), None
    return as_typed(command), None


def name_of(run_dir: Path, root: Path) -> str:
    try:
        return str(run_dir.relative_to(root))
    except ValueError:
        return str(run_dir)


# --- the text ---


def as_text(found: Status) -> str:
    if not found.lineages:
        return f"paths.root: {found.root}\nno lineages there"
    return "\n\n".join([f"paths.root: {found.root}", *map(lineage_text, found.lineages)])


def lineage_text(lineage: Lineage) -> str:
    """A lineage's table (iteration x stage), each reason once, numbered, under it; then the
    command that brings it up to date."""
    names = [stage.value for stage in STAGES]
    reasons: dict[str, int] = {}

    def shown(cell: Cell | None) -> str:
        if cell is None:
            return "-"
        if cell.why is None:
            return cell.state
        return f"{cell.state} [{reasons.setdefault(cell.why, len(reasons) + 1)}]"

    lines = [lineage.lineage, row("iter", names)]
    for it in lineage.iterations:
        lines.append(row(str(it.iter), [shown(it.stages.get(n)) for n in names]))
        lines += [row("", [f"{n}: {shown(c)}"]) for n, c in it.stages.items() if n.startswith(SIDE)]
    for why, n in reasons.items():
        lines += textwrap.wrap(why, WIDTH, initial_indent=f"  [{n}] ", subsequent_indent=" " * 6)
    if lineage.note:
        lines += textwrap.wrap(lineage.note, WIDTH, initial_indent="  ", subsequent_indent="    ")
    elif lineage.command is None:
        lines.append("  up to date")
    else:
        running = any(c.state == "running" for it in lineage.iterations for c in it.stages.values())
        once = " (once what runs has ended)" if running else ""
        lines.append(f"  to bring it up to date{once}: {lineage.command}")
    return "\n".join(lines)


def row(first: str, cells: list[str]) -> str:
    return ("  " + first.ljust(6) + "".join(c.ljust(COLUMN) for c in cells)).rstrip()


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="python -m src.status", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="the same, as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m src.main")
    with failures(command_line("python -m src.status", words), [w for w in words if "=" in w]):
        args = parser.parse_intermixed_args(words)
        found = status(args.overrides)
        print(json.dumps(asdict(found), indent=2) if args.json else as_text(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
