"""Reading runs: one Iteration per (lineage, iteration), its table row and its training log,
from the local run directories the stages write (src/stages/report/results.py reads an iteration's
files) or from a W&B project. `choose` then leaves out the iterations with no finished stage and
applies --only and --where. The command that uses this: src/compare/table.py.
"""

from __future__ import annotations

import math
import os
import re
import socket
import sys
import threading
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from src.core.errors import EnvironmentFailure, StageError
from src.core.layout import RunLayout, iteration_name
from src.stages.report.results import (
    CURVES,
    HPARAMS,
    STAGES,
    Iteration,
    Record,
    add_side,
    eval_columns,
    generate_columns,
    num,
    one_line,
    own_hparam,
    pairs_columns,
    read_iteration,
    setting,
    train_columns,
)

WANDB_TIMEOUT_S = 5.0


class CompareError(StageError):
    """Nothing to compare, a bad argument, or a W&B server out of reach."""


def discover(root: Path) -> list[Iteration]:
    if not root.is_dir():
        raise CompareError(
            f"no runs found: {root} is not a directory (set --root or $SELFPLAY_RUNS)"
        )
    found = []
    for layout in (RunLayout(run_dir) for run_dir in root.glob("*/*/*")):
        for t in layout.iterations():
            if any(layout.stage_dir_in(t, s).is_dir() for s in STAGES):
                found.append(read_iteration(layout, t))
    if not found:
        raise CompareError(
            f"no runs found under {root}: expected <model>/<method>/<run_name>/iter<t>/<stage>/ "
            "directories there (set --root or $SELFPLAY_RUNS)"
        )
    return sorted(found, key=lambda it: (it.lineage, it.row["iter"]))


# --- W&B (group = lineage, job_type = stage, flat config keys) ---


def probe_server(url: str, timeout: float) -> None:
    """Fail within `timeout` when the server is out of reach: neither the name lookup nor the
    W&B client's retries are bounded by the client's own timeout."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as err:
            outcome["error"] = one_line(err)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome.get("ok"):
        reason = outcome.get("error", f"no answer in {timeout:g} s")
        raise EnvironmentFailure(
            f"--wandb: cannot reach the W&B server at {url} ({reason}); "
            "compare the local run directories with --root instead"
        )


def without_page(said: str, url: str) -> str:
    """W&B's error with the web page a server that is not W&B's API answered (a proxy's, a login
    page) cut off: the URL named instead of its HTML."""
    page = re.search(r"<(!doctype|html|head|body|title)\b", said, re.IGNORECASE)
    if page is None:
        return said
    return (f"{said[: page.start()].rstrip(' :')}: a web page came back, not W&B's API "
            f"(WANDB_BASE_URL={url})")  # fmt: skip


def fetch_wandb(project: str, timeout: float = WANDB_TIMEOUT_S) -> list[Iteration]:
    if not re.fullmatch(r"[^/\s]+/[^/\s]+", project):
        raise CompareError(f"--wandb {project!r}: expected ENTITY/PROJECT")
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    probe_server(url, timeout)
    import wandb

    try:
        runs = list(wandb.Api(timeout=int(timeout)).runs(project))
    except Exception as err:  # auth, unknown project, server errors: all end the command alike
        raise CompareError(f"--wandb {project}: {without_page(one_line(err), url)}") from None
    found: dict[tuple[str, int], Iteration] = {}
    curve_runs = [run for run in runs if run.job_type == CURVES]
    for run in runs:
        if run.job_type == CURVES:
            continue
        cfg, summary = dict(run.config), dict(run.summary)
        where = f"W&B run {project}/{run.id}"
        group, t = run.group or run.name, int(cfg.get("iter") or 0)
        # the group is the whole lineage, <model>/<method>/<run_name> (src/stages/report/tracking.py)
        run_name = group.rsplit("/", 1)[-1]
        row = lineage_row(cfg.get("model"), cfg.get("method"), run_name, t, cfg)
        it = found.setdefault((group, t), Iteration(row))
        # a crashed, failed or still running stage is not finished, as one without a done.json
        if getattr(run, "state", "finished") != "finished":
            continue
        it.setting = it.setting or setting(cfg)  # a stage run's config holds the whole tree
        # "vs-<name>": an eval against another reference, or by other judges (vs-<name>@<by>)
        side = cfg.get("eval_folder")
        if run.job_type == "eval" and isinstance(side, str) and side:
            add_side(it.row, Record(summary, where, "summary."), side)
            continue
        it.row["stages_done"] = "+".join(filter(None, [it.row["stages_done"], run.job_type]))
        if run.job_type == "train":  # the Trainer logs train/loss ... against train/global_step
            for logged in run.scan_history():
                entry = {k.removeprefix("train/"): v for k, v in logged.items()}
                it.history.append({**entry, "step": entry.get("global_step", entry.get("_step"))})
            it.row.update(train_columns(it.history, where, "history"))
        columns = {"pairs": pairs_columns, "generate": generate_columns, "eval": eval_columns}
        if run.job_type in columns:
            it.row.update(columns[run.job_type](Record(summary, where, "summary.")))
    for run in curve_runs:  # a lineage's figures by iteration, one history for all of them
        read_curve(run, found, f"W&B run {project}/{run.id}")
    if not found:
        raise CompareError(f"no runs found in W&B project {project}")
    for it in found.values():
        it.row["stages_done"] = it.row["stages_done"] or "none"
    return sorted(found.values(), key=lambda it: (it.lineage, it.row["iter"]))


# the job type of a lineage's curve run (src/stages/report/curves.py), whose rows hold, by iteration,
# the figures of this module's columns, each interval as `<column>_low` / `<column>_high`


def lineage_row(model, method, run_name: str, t: int, config: dict) -> dict:
    """The first columns of iteration `t`'s row as a W&B run's `config` gives them: the lineage,
    the iteration and the hyper-parameters (the stages done are filled in as runs are read)."""
    row = {"model": model, "method": method, "run_name": run_name, "iter": t}
    row.update(
        own_hparam({col: config.get(col if col != "loss_type" else "loss") for col in HPARAMS})
    )
    return {**row, "stages_done": ""}


def read_curve(run: Any, found: dict[tuple[str, int], Iteration], where: str) -> None:
    """The rows of a lineage's curve run into `found`, over what its stage runs gave; an
    iteration that only the curve run holds counts as finished by it (`stages_done`: curves)."""
    if getattr(run, "state", "finished") != "finished":
        return
    cfg = dict(run.config)
    lineage = cfg.get("lineage") or run.group
    model, method, run_name = (str(lineage).split("/") + ["", "", ""])[:3]
    for i, logged in enumerate(run.scan_history()):
        figures = Record(dict(logged), where, f"history[{i}].")
        t = figures.number("iteration")
        if t is None:
            continue
        row = lineage_row(model, method, run_name, int(t), cfg)
        it = found.setdefault((str(lineage), int(t)), Iteration(row))
        it.row["stages_done"] = it.row["stages_done"] or CURVES
        for key in figures.values:
            if key.startswith("_") or key == "iteration" or key.endswith(("_low", "_high")):
                continue
            value = figures.number(key)
            if value is not None:  # a row a resumed run logged without it keeps what was read
                it.row[key] = value
            low, high = figures.number(f"{key}_low"), figures.number(f"{key}_high")
            if low is not None and high is not None:
                it.row[f"{key}_ci"] = (low, high)


# --- choosing what to compare ---


def choose(
    iterations: list[Iteration],
    source: str,
    only: list[str] | None = None,
    where: list[tuple[str, str]] | None = None,
) -> list[Iteration]:
    """The iterations with a finished stage that --only (globs on the lineage, any of them) and
    --where (column=value pairs, all of them) select. Those with no finished stage, the folders a
    refused or interrupted command leaves, are left out with one line on stderr naming them;
    `source`: where the runs were read ("under <root>"), for the refusal when none is finished."""
    only, where = only or [], where or []
    done = [it for it in iterations if it.row["stages_done"] != "none"]
    if not done:
        raise CompareError(
            f"no runs found {source}: {count(iterations, 'iteration')}, none with a finished "
            f"stage yet ({names(iterations)})"
        )
    chosen = narrowed(done, only, where)  # a failure stays one line: refused before the note
    unfinished = (it for it in iterations if it.row["stages_done"] == "none")
    skipped = [it for it in unfinished if selected(it, only, where)]
    if skipped:
        print(
            f"left out {count(skipped, 'iteration')} with no finished stage: {names(skipped)}",
            file=sys.stderr,
        )
    return chosen


def selected(it: Iteration, only: list[str], where: list[tuple[str, str]]) -> bool:
    in_only = not only or any(fnmatchcase(it.lineage, pattern) for pattern in only)
    return in_only and all(equals(it.row.get(key), value) for key, value in where)


def narrowed(
    iterations: list[Iteration], only: list[str], where: list[tuple[str, str]]
) -> list[Iteration]:
    """`selected`, filter by filter, so that a filter that matches nothing is named with the
    values there are (a pattern or a value mistyped would otherwise compare nothing, silently)."""
    for pattern in only:
        if not any(fnmatchcase(it.lineage, pattern) for it in iterations):
            lineages = sorted({it.lineage for it in iterations})
            raise CompareError(
                f"--only {pattern!r} matches no lineage with a finished stage; "
                f"lineages: {listing(lineages)}"
            )
    chosen = [it for it in iterations if selected(it, only, [])]
    for n, (key, value) in enumerate(where):
        columns = {k for it in chosen for k in it.row if not k.endswith("_ci")}
        if key not in columns:
            raise CompareError(
                f"--where {key}={value}: no column {key!r}; columns: {', '.join(sorted(columns))}"
            )
        kept = [it for it in chosen if equals(it.row.get(key), value)]
        if not kept:
            before = " of those the filters before it select" if only or n else ""
            values = sorted({it.row.get(key) for it in chosen}, key=sort_key)
            raise CompareError(
                f"--where {key}={value} matches no run{before}; {key} there: "
                f"{listing([shown(v) for v in values])}"
            )
        chosen = kept
    return chosen


def equals(value: Any, wanted: str) -> bool:
    """A column's value against --where's text: as numbers where both are (eta=10 is 10.0),
    else as text; a blank matches nothing."""
    number = num(value)
    if number is not None:
        try:
            return math.isclose(number, float(wanted), rel_tol=1e-9)
        except ValueError:
            return False
    return value is not None and str(value) == wanted


def shown(value: Any) -> str:
    number = num(value)
    # 5000.0 as 5000 and 5e-07 as written, yet every digit a --where needs
    return "(blank)" if value is None else f"{number:.12g}" if number is not None else str(value)


def sort_key(value: Any) -> tuple:
    number = num(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def names(iterations: list[Iteration]) -> str:
    return listing([f"{it.lineage} {iteration_name(it.row['iter'])}" for it in iterations])


def listing(items: list[str], most: int = 8) -> str:
    """`items` joined, the first `most` of them: the line stays one line."""
    shown_items = ", ".join(items[:most])
    return shown_items + (f", ... ({len(items)} in all)" if len(items) > most else "")
