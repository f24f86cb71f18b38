"""`python -m src.status [--json] [key=value ...]`: where each lineage stands, read-only.

    python -m src.status                                 # every lineage under paths.root
    python -m src.status model=tiny-mistral method=dpo   # the lineage this src.main command runs
    python -m src.status --json paths.root=/scratch/runs

For each iteration of a lineage, each stage: finished, stale (why, in src.main's words:
src/core/state.py), running (its lock's holder: src/core/locks.py), missing, damaged (its
record's own error) or unknown (its state needs a record that does not read, named); iteration 0,
where the lineage has it, its eval alone (the base model's own, `stage=eval iter=0`); and the one
command that brings the lineage a step nearer to up to date.

Without overrides every lineage of paths.root is shown, each stage judged by its own record:
intact while what it read, its own outputs and the stages it read are as recorded, whatever
command made it — a lineage whose iterations were made with other settings (a training redone
at another rate) is judged as it was made, never by its newest command. The command named makes
the first stage that is not intact again as it was made (its own saved command, with
`pipeline.redo=[<stage>]`) and replaces nothing that is; with every stage intact and one
missing, the lineage's newest command (the head of its stages' saved configs:
src/config/cli.py's `last_command`) at its last iteration. With overrides, the lineage they
name judged as src.main judges that command (composed as src.main composes it, `stage=` and
`pipeline.redo*` left out: they say how one run goes, not where the lineage stands), the
command named being src.main's refusal's fix, else, while a stage is missing, the command itself;
once its iterations are up to date, that of iteration 0's eval (`stage=eval iter=0`).

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

from omegaconf import DictConfig

from src.config import Config, ConfigError, Stage, at_iteration, compose_tree, validate
from src.config.cli import (
    MAIN,
    ONE_RUN,
    ArgumentParser,
    failures,
    last_command,
    saved_command,
    trained_iterations,
)
from src.core import locks
from src.core.diff import StageState, Why
from src.core.errors import (
    RedoStale,
    StageError,
    as_typed,
    command_line,
    override,
    running_stage,
    set_overrides,
    with_overrides,
    without_keys,
)
from src.core.fingerprints import lookup, read_upstream
from src.core.layout import SAVED_CONFIG, RunLayout
from src.core.records import read_record
from src.core.registry import STAGES
from src.core.saved import relocated, saved_config
from src.core.state import Judge, state_of

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
    """The lineage `python -m src.main <overrides>` runs, judged as that command; or, when they
    name none (paths.root at most), every lineage under paths.root, each stage by its own
    record."""
    cfg = validate(compose_tree(overrides))  # a bad override refused as src.main refuses it
    root = Path(cfg.paths.root)
    words = without_keys(overrides, *ONE_RUN)
    if cfg.iter == 0:  # the base model's eval: shown as its lineage's row 0, the lineage judged
        words = without_keys(words, "iter")  # as a whole (iter=0 alone composes with stage=eval)
    if without_keys(words, "paths.root"):
        return Status(str(root), [judged(Path(cfg.run.dir), root, words)])
    return Status(str(root), [by_records(run_dir, root) for run_dir in lineages(root)])


def lineages(root: Path) -> list[Path]:
    """The lineage folders under `root` (<model>/<method>/<run_name>) with an iteration's."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.glob("*/*/*") if d.is_dir() and trained_iterations(d))


class Elsewhere(Exception):
    """A lineage's command composes to another folder than the lineage's."""


def composed(run_dir: Path, words: list[str]) -> tuple[DictConfig, Config]:
    """`python -m src.main <words>`'s config, composed and validated; Elsewhere where it makes
    another lineage than the one in `run_dir`."""
    raw = compose_tree(words)
    cfg = validate(raw)
    if Path(cfg.run.dir).resolve() != run_dir.resolve():
        raise Elsewhere(f"its command makes {cfg.run.dir} now")
    return raw, cfg


def judged(run_dir: Path, root: Path, words: list[str]) -> Lineage:
    """The lineage in `run_dir` judged as `python -m src.main <words>` at its last iteration."""
    raw, cfg = composed(run_dir, words)
    config_for_iter = configs_of(raw)
    last = max([cfg.iter, *trained_iterations(run_dir)])
    rows = [Iteration(t, cells_of(config_for_iter(t))) for t in range(1, last + 1)]
    command = command_line(MAIN, set_overrides(words, [f"iter={last}"]))
    remedy, note = brought_up_to_date(config_for_iter(last), config_for_iter, command, rows)
    base = base_model_judged(run_dir, config_for_iter)
    if base and remedy is None and note is None:  # its iterations up to date: then iteration 0
        again = command_line(MAIN, set_overrides(words, ["iter=0", "stage=eval"]))
        remedy, note = brought_up_to_date(config_for_iter(0), config_for_iter, again, base)
    return Lineage(name_of(run_dir, root), as_typed(command), base + rows, remedy, note)


def base_model_judged(run_dir: Path, config_for_iter: Callable[[int], Config]) -> list[Iteration]:
    """Iteration 0's row, the base model's own eval (`stage=eval iter=0`) where the lineage has
    it, judged as `python -m src.main stage=eval iter=0` with the settings of the lineage's
    command judges it."""
    if not RunLayout(run_dir).stage_dir_in(0, Stage.eval).is_dir():
        return []  # no config composed where there is none
    cfg = config_for_iter(0)
    cell = stage_cell(cfg.stage_dir(Stage.eval), False, lambda: state_of(cfg.as_tree(), Stage.eval))
    return [] if cell is None else [Iteration(0, {Stage.eval.value: cell})]


def configs_of(raw: DictConfig) -> Callable[[int], Config]:
    """The composed config at each iteration, as src.main makes it (each made once); at
    iteration 0, the base model's, its eval's (`stage=eval iter=0`)."""
    made: dict[int, Config] = {}

    def config_for_iter(t: int) -> Config:
        if t not in made:
            made[t] = at_iteration(raw, t)
        return made[t]

    return config_for_iter


def cells_of(cfg: Config) -> dict[str, Cell]:
    """Each stage of `cfg`'s iteration judged by `cfg`, as src.main judges it; then each eval
    beside the base model's (`eval/vs-<name>`), as `pipeline.redo_stale` judges it."""
    from src.schedule.plan import side_evals

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


def by_records(run_dir: Path, root: Path) -> Lineage:
    """A lineage found under `root`, each stage judged by its own record (`Judge.intact`: what it
    read, its own outputs and the stages it read as recorded), never by another stage's command;
    a stage its newest command runs without a record, missing. Named: the command that makes
    the first stage not intact again and replaces nothing that is (`remaking`); else, while a
    stage is missing or running, the newest command as src.main would judge it."""
    words, why = last_command(run_dir, root)
    raw = newest = None
    try:
        raw, newest = (None, None) if words is None else composed(run_dir, words)
    except ConfigError as err:
        why = f"its last command does not compose now: {err}"
    except Elsewhere as err:
        why = str(err)
    judge = Judge({"run": {"dir": str(run_dir)}, "paths": {"root": str(root)}})
    layout = RunLayout(run_dir)
    found: list[tuple[int, str, Path, Cell | None]] = []  # (iteration, name, folder, cell)
    base = layout.stage_dir_in(0, Stage.eval)
    found.append((0, Stage.eval.value, base, stage_cell(base, False, lambda: judge.intact(base))))
    wanted = newest.stages() if newest else []
    for t in range(1, max([*trained_iterations(run_dir), newest.iter if newest else 0]) + 1):
        for stage in STAGES:
            folder = layout.stage_dir_in(t, stage)
            asked = stage in wanted or folder.is_dir()
            cell = stage_cell(folder, asked, lambda f=folder: judge.intact(f))
            found.append((t, stage.value, folder, cell))
        for side in layout.side_evals(t):
            cell = stage_cell(side, False, lambda f=side: judge.intact(f))
            found.append((t, SIDE + side.name, side, cell))
    found = [entry for entry in found if entry[3] is not None]
    rows = {t: Iteration(t, {}) for t, *_ in found}
    for t, name, _, cell in found:
        rows[t].stages[name] = cell
    lineage = Lineage(name_of(run_dir, root), None, list(rows.values()), None)
    bad = [(t, folder) for t, _, folder, cell in found if cell.state in NOT_INTACT]
    if bad:
        lineage.command, lineage.note = remaking(run_dir, root, *bad[0])
    elif any(cell.state in ("missing", "running") for *_, cell in found):
        if newest is None:
            lineage.note = f"{why}; no command named"
        else:
            command = command_line(MAIN, set_overrides(words, [f"iter={newest.iter}"]))
            lineage.command, lineage.note = brought_up_to_date(
                newest, configs_of(raw), command, lineage.iterations
            )
    return lineage


# a stage's cell that its own command makes again (`remaking`)
NOT_INTACT = ("stale", "damaged", "unknown")


def remaking(run_dir: Path, root: Path, t: int, folder: Path) -> tuple[str | None, str | None]:
    """The command that makes the stage in `folder` (iteration t) again as it was made, and
    nothing intact: its own saved command at iteration t with `pipeline.redo=[<stage>]`, each
    stage of its iteration it reads as that stage was made (its settings where they differ,
    `as_made`); the first of these that src.main would not refuse: the iteration, earlier ones
    first; the iteration alone (`pipeline.require_previous=true`); the stage alone. (None, why)
    where none is."""
    stage = RunLayout(run_dir).parse(folder).stage
    words, why = saved_command(folder / SAVED_CONFIG, root)
    if words is None:
        return None, f"{why}; no command named"
    at = [f"iter={t}", *([f"stage={Stage.eval.value}"] if t == 0 else [])]
    tries = [[], ["pipeline.require_previous=true"], [f"stage={stage.value}"]] if t else [[]]
    refusal = None
    try:
        made = as_made(composed(run_dir, set_overrides(words, at))[1], stage)
        for extra in tries:
            attempt = set_overrides(words, [*at, *made, *extra, f"pipeline.redo=[{stage.value}]"])
            refusal = refusal_of(configs_of(composed(run_dir, attempt)[0]), t)
            if refusal is None:
                return as_typed(command_line(MAIN, attempt)), None
    except (ConfigError, Elsewhere) as err:
        return None, f"{folder}'s command does not compose now ({err}); no command named"
    return None, f"src.main would refuse to make {folder} again: {refusal}"


def as_made(cfg: Config, stage: Stage) -> list[str]:
    """`key=value` for each setting the stages of its iteration that `stage` reads (those they
    read too) were made with otherwise than `cfg` says: their own saved configs' values."""
    tree, made = cfg.as_tree(), {}
    judge = Judge(tree)
    read = read_upstream(tree, stage)
    while read is not None:
        saved = saved_config(cfg.stage_dir(read))
        saved = saved and relocated(saved, str(cfg.run.dir), str(cfg.paths.root))
        for change in judge.state(read).changed if saved is not None else []:
            if change.kind == Why.value and change.key is not None:
                made.setdefault(change.key, lookup(saved, change.key))
        read = read_upstream(tree, read)
    return [override(key, value) for key, value in made.items()]


def refusal_of(config_for_iter: Callable[[int], Config], t: int) -> StageError | None:
    """What src.main's checks would refuse of its command at iteration t, or None."""
    from src.schedule.plan import iterations, refuse

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # what it would run first, said
            refuse(iterations(config_for_iter(t), config_for_iter))
    except StageError as err:
        return err
    return None


def brought_up_to_date(
    cfg: Config, config_for_iter: Callable[[int], Config], command: str, rows: list[Iteration]
) -> tuple[str | None, str | None]:
    """What brings the lineage up to date and, where none is named, why: `command` with the fix
    of what src.main would refuse in it, or `command` itself while a stage is missing or
    running; (None, None): it is up to date."""
    err = refusal_of(config_for_iter, cfg.iter)
    if err is not None:
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


def stage_cell(folder: Path, asked: bool, judge: Callable[[], StageState]) -> Cell | None:
    """The stage in `folder`: running while a process holds its lock, damaged when its record
    does not read, missing without one (None: not asked for either), else as `judge` says."""
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
    return Cell("finished") if state.status == "done" else Cell("stale", state.why)


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
