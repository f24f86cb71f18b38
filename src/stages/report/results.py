"""An iteration's figures as its finished stages wrote them: the row `python -m src.compare` shows
and the lineage's curve run logs (src/stages/report/curves.py), read from the same files by the same
code.

Only a finished stage (one with a done.json) gives values; a malformed file is skipped with one
warning line naming it, its values left blank, and so is a value of the wrong type (text where a
number belongs), with one warning line naming the file, the key and the value. A finished stage
whose figures no longer stand for its iteration as the lineage is now (made from a checkpoint
trained again since, from a file edited since, descended from a stale iteration) is left out
likewise, named on stderr with why (`standing`), and is no stage done (`stages_done`). An eval against a reference other than the
run's own, or by other judges (`iter<t>/eval/vs-<name>/`, a run of its own in W&B) adds its win
rates as columns `eval_win_rate[vs-<name>]`, and its judged benchmarks' figures by their judge
(`add_side`). Of eta and beta, a row holds the one its loss reads (eta: SPPO's; beta: DPO's,
WPO's), the other blank. The column functions serve a W&B run's summary as well
(src/compare/runs.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import reprlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf.errors import OmegaConfBaseException

from src.config import SEED_KEYS
from src.core import registry
from src.core.diff import READ_CHANGED
from src.core.errors import StageError
from src.core.fingerprints import fingerprint_form, flatten
from src.core.layout import RECORD, SAVED_CONFIG, RunLayout
from src.core.records import record_problem
from src.core.state import saved_state

# The W&B job type of a lineage's curve run (src/stages/report/curves.py), by which src.compare
# finds it
CURVES = "curves"
STAGES = tuple(stage.value for stage in registry.STAGES)  # each stage's folder, in pipeline order
# Hyper-parameter column -> key in the resolved config.yaml of a stage.
HPARAMS = {"eta": "method.eta", "beta": "method.beta", "lr": "training.learning_rate",
           "K": "method.K", "loss_type": "method.loss"}  # fmt: skip
# The losses that read eta (src/training/losses.py); DPO's and IPO's read beta. A config holds
# both, one the reciprocal of the other (conf/method), but a row shows only the one its loss
# reads: DPO at beta = 0.1 is no run at eta = 10, for --where as for final_vs_hparams.png.
ETA_LOSSES = frozenset({"sppo", "sppo_single", "sppo_hard"})


@dataclass
class Iteration:
    """One iteration of one lineage: its table row, its training log (for the curves) and what it
    was made with but its seeds (`setting`; None: not known)."""

    row: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    setting: str | None = None

    @property
    def lineage(self) -> str:
        return f"{self.row['model']}/{self.row['method']}/{self.row['run_name']}"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def num(value: Any) -> float | None:
    """A finite number as float; anything else (missing, text, bool, NaN) as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60  # a warning stays one readable line


@dataclass
class Record:
    """Values a stage wrote and where: a value of the wrong type is blanked with a warning
    naming the file, the key and the value, as a blank alone reads as "not measured"."""

    values: dict[str, Any]
    where: str = ""  # the file, or the W&B run
    prefix: str = ""  # the values' place in it: "counts." in a done.json

    def number(self, key: str) -> float | None:
        value = self.values.get(key)
        number = num(value)
        if number is None and value is not None:
            self.warn(key, value, "a finite number")
        return number

    def section(self, key: str) -> Record:
        value = self.values.get(key)
        if value is not None and not isinstance(value, dict):
            self.warn(key, value, "an object")
        inner = value if isinstance(value, dict) else {}
        return Record(inner, self.where, f"{self.prefix}{key}.")

    def warn(self, key: str, value: Any, expected: str) -> None:
        warn(
            f"{self.where}: {self.prefix}{key} is {_SHORT.repr(value)}, not {expected}; left blank"
        )


def own_hparam(hparams: dict[str, Any]) -> dict[str, Any]:
    """`hparams` with eta or beta blanked, whichever its loss does not read; both kept where the
    loss is unknown (a config without it), as nothing says which one the run was set by."""
    loss = hparams.get("loss_type")
    if loss is None:
        return hparams
    return {**hparams, ("beta" if loss in ETA_LOSSES else "eta"): None}


def setting(cfg: dict) -> str | None:
    """What an iteration was made with but its seeds, as a digest: every stage's inputs in the
    config it ran with (`cfg`: a saved config.yaml, a W&B stage run's config), in their
    fingerprint form (a path inside its run relative to it), less the seeds (SEED_KEYS). Two
    lineages whose iterations share it differ by their seeds alone. None for a config that
    holds no run (a curve run's flat keys)."""
    if not isinstance(dig(cfg, "run.dir"), str) or not isinstance(cfg.get("iter"), int):
        return None
    inputs = {key: dig(cfg, key) for spec in registry.STAGES.values() for key in spec.inputs}
    flat = flatten(fingerprint_form(inputs, cfg))
    kept = {key: value for key, value in flat.items() if key not in SEED_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def dig(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


# What a file read here is parsed with, and what its content must be, by its format (a stage's
# JSON files; a saved config.yaml)
FORMATS = {
    "JSON": (json.loads, "a JSON {}, expected an object"),
    "YAML": (yaml.safe_load, "YAML {}, expected a mapping of config keys"),
}


def read_mapping(path: Path, form: str = "JSON") -> dict | None:
    """The object (the mapping) a file of format `form` holds (FORMATS); None when it is absent,
    or malformed (with a warning)."""
    if not path.is_file():
        return None
    parse, expected = FORMATS[form]
    try:
        obj = parse(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        warn(f"{path}: malformed {form} ({one_line(err)}); skipped")
        return None
    if not isinstance(obj, dict):
        warn(f"{path}: {expected.format(type(obj).__name__)}; skipped")
        return None
    return obj


def finished_stage(stage_dir: Path) -> Record | None:
    """The metrics of a finished stage (None if unfinished): its metrics.json when it writes
    one, else the counts of its done.json (rank, pairs, generate write no metrics.json yet). Its
    done.json is read as JSON here, with a warning where it is not, and checked as the one
    reader of records checks it (`record_problem`, src/core/records.py)."""
    done = read_mapping(stage_dir / RECORD)
    if done is None:
        return None
    if problem := record_problem(done):
        warn(f"{stage_dir / RECORD}: {problem}; skipped")
        return None
    metrics = read_mapping(stage_dir / "metrics.json")
    if metrics is not None:
        record = Record(metrics, str(stage_dir / "metrics.json"))
    else:
        counts = done.get("counts") if isinstance(done.get("counts"), dict) else {}
        record = Record(counts, str(stage_dir / RECORD), "counts.")
    if record.values.get("seconds") is None:  # tokens/s needs a duration; done.json has one
        record.values = {**record.values, "seconds": dig(done, "timings.seconds")}
    return record


# --- the columns each stage contributes (shared by local directories and W&B) ---


def train_columns(history: list[dict], where: str, name: str) -> dict[str, float | None]:
    """`name`: what `where` calls the history (a warning names an entry as `name[i].key`)."""
    entries = [Record(e, where, f"{name}[{i}].") for i, e in enumerate(history)]

    def series(key: str) -> list[float]:
        return [v for e in entries if (v := e.number(key)) is not None]

    loss, acc, margin = series("loss"), series("rewards/accuracies"), series("rewards/margins")
    return {
        "train_loss_final": loss[-1] if loss else None,
        "accuracy_last": acc[-1] if acc else None,
        "accuracy_mean": sum(acc) / len(acc) if acc else None,
        "margin_last": margin[-1] if margin else None,
        "margin_mean": sum(margin) / len(margin) if margin else None,
    }


def pairs_columns(m: Record) -> dict[str, float | None]:
    keys = ("pairs", "mean_chosen_probs", "mean_chosen_win_rate", "mean_score_margin")
    return {k: m.number(k) for k in keys}


def generate_columns(m: Record, k: Any = None) -> dict[str, float | None]:
    """Tokens/s, and (with `k`, the responses per prompt) the mean response length in tokens."""
    tokens, seconds, rows = m.number("tokens"), m.number("seconds"), m.number("generated")
    responses = rows * k if rows and isinstance(k, int) and k > 0 else None
    return {
        "gen_tokens_per_s": tokens / seconds if tokens is not None and seconds else None,
        "gen_mean_response_tokens": tokens / responses
        if tokens is not None and responses
        else None,
    }


def eval_columns(m: Record) -> dict[str, Any]:
    """The win rates, and their intervals (not table columns: the plot's error bars). `m`: the
    eval stage's eval.json, or its W&B run's summary, which holds its sections flat
    (src/stages/report/tracking.py: `alpaca_eval.win_rate`, `mt_bench[gpt-4]`)."""
    row = win_rate_columns(m)
    row["eval_avg_length"] = m.number("avg_length")  # characters, the policy's answers
    row["eval_reference_avg_length"] = m.number("reference_avg_length")
    alpaca = m.section("alpaca_eval")  # AlpacaEval 2's own row
    row["alpaca_eval_lc"] = or_flat(alpaca.number("lc_win_rate"), m, "alpaca_eval.lc_win_rate")
    row["alpaca_eval_wr"] = or_flat(alpaca.number("win_rate"), m, "alpaca_eval.win_rate")
    # the Open LLM Leaderboard's v2 average, normalised as the leaderboard shows it (0-100)
    average = m.section("leaderboard").section("normalised").number("average")
    row["leaderboard"] = or_flat(average, m, "leaderboard.normalised.average")
    return row | judged_columns(m)


def judged_columns(m: Record) -> dict[str, float | None]:
    """The headline of each benchmark graded by eval.llm_judge, a column per judge
    (`mt_bench[gpt-4]`): a score by one judge is never shown as another's. `m`: as
    `eval_columns`'."""
    row = {}
    for benchmark, key in JUDGED_HEADLINES.items():
        section = m.section(benchmark)
        judge = section.values.get("judge")
        if isinstance(judge, str):
            row[f"{benchmark}[{judge}]"] = section.number(key)
        for column in m.values:  # a W&B summary's, under the same name
            if column.startswith(f"{benchmark}[") and column.endswith("]"):
                row[column] = m.number(column)
    return row


def add_side(row: dict[str, Any], m: Record, side: str) -> None:
    """What an eval beside the iteration's own (`side`: its folder, `vs-<name>`) adds to its
    `row`: its win rates, under its folder's name, and each judged benchmark's headline by a judge
    the row has none of yet (the same judge's figure of the same checkpoint: the first read
    stands, the iteration's own eval's first), so that a second judge's figures sit beside the
    first's (`eval.judged_by`). `m`: as `eval_columns`'."""
    for column, value in judged_columns(m).items():
        if row.get(column) is None:
            row[column] = value
    row.update(win_rate_columns(m, side))


def win_rate_columns(m: Record, reference: str = "") -> dict[str, Any]:
    """eval_win_rate and eval_lc_win_rate, each with its bootstrap interval under `<column>_ci`;
    `reference`: "vs-<name>" for an eval against another reference than the run's own, whose
    columns are `eval_win_rate[vs-<name>]`, as the judged benchmarks' are by judge."""
    row: dict[str, Any] = {}
    for key in ("win_rate", "lc_win_rate"):
        column = f"eval_{key}[{reference}]" if reference else f"eval_{key}"
        row[column] = m.number(key)
        low, high = m.number(f"{key}_low"), m.number(f"{key}_high")
        row[f"{column}_ci"] = (low, high) if low is not None and high is not None else None
    return row


def or_flat(nested: float | None, m: Record, flat: str) -> float | None:
    """A value read nested, as eval.json holds it, else the one a W&B summary holds flat, its
    keys joined by dots."""
    return nested if nested is not None else m.number(flat)


# The figure of each benchmark graded by eval.llm_judge that src.compare shows, by the judge's name
JUDGED_HEADLINES = {"mt_bench": "mt_bench", "arena_hard": "win_rate"}


def log_history(metrics: dict) -> list[dict]:
    history = metrics.get("log_history")
    return [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []


# --- local run directories ---


def read_iteration(layout: RunLayout, t: int) -> Iteration:
    run_dir = layout.run_dir
    row: dict[str, Any] = {"model": run_dir.parent.parent.name, "method": run_dir.parent.name,
                           "run_name": run_dir.name, "iter": t}  # fmt: skip
    # Each stage saves the config it ran with; train's comes first, as only train uses the lr.
    configs = (
        read_mapping(layout.stage_dir_in(t, s) / SAVED_CONFIG, "YAML") for s in reversed(STAGES)
    )
    cfg = next((c for c in configs if c is not None), {})
    row.update(own_hparam({col: dig(cfg, key) for col, key in HPARAMS.items()}))
    made = ((s, layout.stage_dir_in(t, s)) for s in STAGES)
    # a finished stage that no longer stands is no stage done: its figures are left out too
    stages = {s: m for s, folder in made
              if (m := finished_stage(folder)) is not None and standing(folder, run_dir)}  # fmt: skip
    row["stages_done"] = "+".join(stages) or "none"
    train = stages.get("train", Record({}))
    it = Iteration(row, log_history(train.values), setting(cfg))
    row.update(train_columns(it.history, train.where, "log_history"))
    row.update(pairs_columns(stages.get("pairs", Record({}))))
    row.update(generate_columns(stages.get("generate", Record({})), row["K"]))
    if "eval" in stages:
        base = layout.stage_dir_in(t, registry.Stage.eval)
        row.update(eval_columns(eval_record(base, stages["eval"])))
    # each finished eval against another reference (whether or not the base one finished),
    # likewise
    for folder in layout.side_evals(t):
        done = finished_stage(folder)
        if done is not None and standing(folder, run_dir):
            add_side(row, eval_record(folder, done), folder.name)
    return it


def standing(folder: Path, run_dir: Path) -> bool:
    """Whether the finished stage in `folder` (of run `run_dir`) stands for its iteration as its
    lineage is now (`outdated`); one that does not is named on stderr, with why, and its figures
    are left out: a row never shows a stale stage's figures as the lineage's."""
    why = outdated(RunLayout(run_dir).parse(folder).stage, folder, run_dir)
    if why:
        print(f"[compare] {folder}: {why}, left out (pipeline.redo_stale=true "
              "makes it again)", file=sys.stderr)  # fmt: skip
    return not why


def outdated(stage: registry.Stage, stage_dir: Path, run_dir: Path) -> str | None:
    """Why a finished stage's figures (run `run_dir`'s) are not those of its iteration as its
    lineage stands now, judged by its own record (`saved_state`: a stage it read made again
    since, a file it read changed since, one of its outputs damaged, an earlier iteration it
    descends from stale), in the words of `StageState.why`; None: they are. Its config keys may
    differ from today's: its row shows those it ran with."""
    here = {"run": {"dir": str(run_dir)}, "paths": {"root": str(run_dir.parents[2])}}
    try:
        state = saved_state(here, stage, stage_dir)
    except OmegaConfBaseException:  # a saved config that is YAML but no config: named where
        return None  # the row reads it (one that is not YAML is read as none saved)
    except StageError as err:  # a record on its way damaged: not the figures of a known lineage
        return str(err)
    return state.why if state is not None and state.has(*READ_CHANGED) else None


def eval_record(eval_dir: Path, done: Record) -> Record:
    """An eval's eval.json, else (an older eval, or a malformed eval.json) its metrics."""
    evaluation = read_mapping(eval_dir / "eval.json")
    return Record(evaluation, str(eval_dir / "eval.json")) if evaluation else done
