"""`python -m src.compare --by seed`: the lineages that differ by their seeds alone pooled into one,
a row per iteration holding each figure's mean over the seeds and, as its interval, their spread:
the lowest and the highest (min–max, which with the few seeds a sweep runs hides no seed the way a
standard deviation would).

Two lineages differ by their seeds alone when each iteration both have was made with the same
`setting` (src/stages/report/results.py: every stage's inputs but `training.seed`,
`generation.seeds` and `eval.seed`); lineages that differ in anything else are never pooled, and
a lineage whose configs are not known (a W&B curve run alone) stays a lineage of its own. A pool
is named by its lineages' run names in brace form (`eta10-s{1,2,3}`); its rows count the lineages
each pools (`seeds`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from src.stages.report.results import Iteration, num

# The columns that are no figure of an iteration: the same in every lineage a pool holds
KEPT = ("model", "method", "run_name", "iter", "eta", "beta", "lr", "K", "loss_type")


@dataclass
class Pooled(Iteration):
    """One iteration of a pool of lineages: `row` and `history` hold the means over its
    `lineages`, each figure's min–max as its interval (`<column>_ci`), each logged key's per
    step in `spread` (key -> step -> (min, max))."""

    lineages: list[str] = field(default_factory=list)
    spread: dict[str, dict[float, tuple[float, float]]] = field(default_factory=dict)


def by_seed(iterations: list[Iteration]) -> list[Iteration]:
    """`iterations` with the lineages that differ by their seeds alone pooled (`Pooled`), each
    pool's rows under its name, in the order of the lineages; a lineage alike no other as it is."""
    pooled = []
    for lineages in pools(iterations):
        members = [it for it in iterations if it.lineage in lineages]
        if len(lineages) == 1:
            pooled += members
            continue
        name = braced(sorted({it.row["run_name"] for it in members}))
        by_t: dict[int, list[Iteration]] = defaultdict(list)
        for it in members:
            by_t[it.row["iter"]].append(it)
        pooled += [pool(its, name) for _, its in sorted(by_t.items())]
    return sorted(pooled, key=lambda it: (it.lineage, it.row["iter"]))


def pools(iterations: list[Iteration]) -> list[set[str]]:
    """The lineages, grouped: each joins the first group whose every lineage it is `alike`."""
    settings: dict[str, dict[int, str | None]] = defaultdict(dict)
    heads: dict[str, tuple] = {}
    for it in iterations:
        settings[it.lineage][it.row["iter"]] = it.setting
        heads[it.lineage] = (it.row["model"], it.row["method"])
    groups: list[set[str]] = []
    for lineage in sorted(settings):
        group = next(
            (g for g in groups if all(alike(settings[lineage], settings[other]) for other in g)
             and all(heads[other] == heads[lineage] for other in g)),
            None,
        )  # fmt: skip
        if group is None:
            groups.append({lineage})
        else:
            group.add(lineage)
    return groups


def alike(mine: dict[int, str | None], theirs: dict[int, str | None]) -> bool:
    """Whether two lineages' iterations (`iteration -> setting`) differ by their seeds alone: each
    iteration both have made with one known setting, and at least one such."""
    both = mine.keys() & theirs.keys()
    return bool(both) and all(mine[t] is not None and mine[t] == theirs[t] for t in both)


def braced(names: list[str]) -> str:
    """The run names as one: what they share around one brace of what differs
    (`eta10-s1`, `eta10-s2` -> `eta10-s{1,2}`); a name alone as it is."""
    if len(names) == 1:
        return names[0]
    head = 0
    while all(len(n) > head and n[head] == names[0][head] for n in names):
        head += 1
    tail = 0
    while all(len(n) - head > tail and n[-1 - tail] == names[0][-1 - tail] for n in names):
        tail += 1
    middles = [n[head : len(n) - tail] for n in names]
    return f"{names[0][:head]}{{{','.join(middles)}}}{names[0][len(names[0]) - tail :]}"


def pool(its: list[Iteration], name: str) -> Pooled:
    """One iteration of a pool: the rows `its` (its lineages' at that iteration) as one, named
    `name`: each figure's mean, its min–max as its interval; their training logs likewise."""
    rows = [it.row for it in its]
    row: dict[str, Any] = {key: rows[0].get(key) for key in KEPT} | {"run_name": name}
    done = [set(r["stages_done"].split("+")) for r in rows]
    row["stages_done"] = "+".join(s for s in rows[0]["stages_done"].split("+")
                                  if all(s in d for d in done)) or "none"  # fmt: skip
    row["seeds"] = len(rows)
    figures = dict.fromkeys(k for r in rows for k in r if k not in row and not k.endswith("_ci"))
    for key in figures:
        values = [v for r in rows if (v := num(r.get(key))) is not None]
        if values:
            row[key] = fmean(values)
            row[f"{key}_ci"] = (min(values), max(values))
    history, spread = pooled_history([it.history for it in its])
    return Pooled(row, history, its[0].setting, sorted(it.lineage for it in its), spread)


def pooled_history(histories: list[list[dict]]) -> tuple[list[dict], dict]:
    """The training logs as one: at each step, each key's mean over the logs that have it, and
    its min–max (`Pooled.spread`)."""
    at: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for history in histories:
        for entry in history:
            step = num(entry.get("step"))
            if step is None:
                continue
            for key, value in entry.items():
                if key != "step" and (number := num(value)) is not None:
                    at[step][key].append(number)
    entries, spread = [], defaultdict(dict)
    for step, keys in sorted(at.items()):
        entries.append({"step": step, **{key: fmean(values) for key, values in keys.items()}})
        for key, values in keys.items():
            spread[key][step] = (min(values), max(values))
    return entries, dict(spread)
