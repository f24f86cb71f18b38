"""Stage records: a finished stage's `done.json`, which finished work a run may reuse
(docs/design.md §5), written and read here alone. The fingerprint it stores:
src/core/fingerprints.py; what a finished stage's state is under a config, and why it is stale:
src/core/staleness.py.

A stage's `done.json` stores the fingerprint it was made under:

- the same fingerprint: the work is done, skip it;
- another fingerprint: it was made under another config; never reused silently — refused,
  naming the keys that changed, unless the user asks to redo it (`pipeline.redo=[stage]`);
- no record: the stage has not finished (it resumes from whatever it left, or starts).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.core.artifacts import atomic_write_json, read_json
from src.core.errors import Redo, StageError, shown
from src.core.layout import RECORD, RunLayout
from src.core.machine import machine

# Bumped when what a record holds changes. Formats 3 and 4 hash the same fingerprint (the paths
# inside the run relative to it); format 4 adds the record's own sha256, checked from format 5 on,
# so a record edited by hand or damaged is refused rather than believed; format 5 hashes the
# content of the local files the stage read (`input_contents`) and keeps each one's, so that a
# file changed is named; format 6 fingerprints a training on a pairs file of the user's own by
# that file and the policy it starts from, not through the stages it does not read; format 7
# writes the paths in the clone relative to it (`<repo>/...`, `fingerprint_form`), so that a clone
# renamed, or a run copied to another, keeps its stages. A record of 3 or 4 is checked as it was
# made, by name, one of 5 (such a training) chained, and one before 7 with the clone's paths
# absolute, as it was made. Format 2 hashed the paths absolute, and its records are still checked
# as it made them, where the run then sat (`state_of`). A record of any other format was made by
# another version of this project, and is refused with that reason rather than as a config
# change; one whose format is not a number is damaged.
RECORD_FORMAT = 7
CONTENTS_FORMAT = 5  # the first to hash the files' content and to check the record's sha256
OWN_PAIRS_FORMAT = 6  # the first to fingerprint a training on a pairs file of the user's own
REPO_FORMAT = 7  # the first to write the paths in the clone relative to it
PORTABLE_FORMATS = (3, 4, CONTENTS_FORMAT, OWN_PAIRS_FORMAT, REPO_FORMAT)
ABSOLUTE_PATHS_FORMAT = 2
KNOWN_FORMATS = (ABSOLUTE_PATHS_FORMAT, *PORTABLE_FORMATS)


def redo_of(stage_dir: Path) -> Redo | None:
    """What makes again the stage whose folder is `stage_dir` (`iterT/<stage>`, or an eval
    beside it: `iterT/eval/vs-<name>`); None for a folder outside that layout (a cache, a file of
    the user's own), which deleting remakes."""
    layout = RunLayout.holding(stage_dir)
    if layout is None:
        return None
    place = layout.parse(stage_dir)
    return Redo(place.stage.value, place.iteration)


RECORD_TIME = "%Y-%m-%dT%H:%M:%S%z"  # a record's finished_at, to the second, with its offset


def record_sha256(record: dict[str, Any]) -> str:
    """What a record's `sha256` holds: the hash of everything else in it."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_record(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's `done.json`, checked; None when there is none (the stage has not finished).

    The one reader of records: a record that is not what `write_record` wrote (not JSON, not an
    object, a field missing or of the wrong type, content that does not match its own sha256)
    raises a StageError naming the file and what makes the stage again (`redo_of`) — never
    read as "unfinished" (its outputs would be trusted by nobody, but redone silently) and never
    believed.
    """
    path = Path(stage_dir) / RECORD
    if not path.is_file() and not os.path.lexists(path):
        return None
    fix = redo_of(path.parent)
    again = "make the stage again" if fix else f"delete {path.parent} to make it again"
    if not path.is_file():  # a folder or a device in its place: taken as none, the stage would
        # run whole and then fail to write its record
        what = "a folder" if path.is_dir() else "not a regular file"
        raise StageError(f"{path} is {what}, not the record this project writes; {again}", fix)
    record = read_json(path, StageError, fix, again)
    problem = record_problem(record)
    if problem:
        raise StageError(f"{path}: {problem} (edited or damaged?); {again}", fix)
    return record


def record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a parsed record (None: nothing)."""
    made_as = record.get("format")
    if made_as is not None and (not isinstance(made_as, int) or isinstance(made_as, bool)):
        return f"its 'format' is {shown(made_as)}, not a whole number"
    if made_as not in KNOWN_FORMATS:
        return None  # another version's (whose fields may differ): state_of refuses it as such
    fields = {"fingerprint": str, "counts": dict, "timings": dict}
    for key, kind in fields.items():
        if not isinstance(record.get(key), kind):
            return f"its {key!r} is {shown(record.get(key))}, not a {kind.__name__}"
    if "outputs" in record and not isinstance(record["outputs"], dict):
        return f"its 'outputs' is {shown(record['outputs'])}, not an object"
    if record["format"] >= CONTENTS_FORMAT and record.get("sha256") != record_sha256(record):
        return "its content does not match its sha256"
    return None


@dataclass(frozen=True)
class Finished:
    """What a finished stage's record keeps of its work, as its run hands it over; `write_record`
    adds the format, package versions, machine, time and the record's own sha256."""

    fingerprint: str  # the config's (a `Fingerprint`: the contents of the files it hashed too)
    counts: dict
    timings: dict
    outputs: dict | None = None  # the seal (rows, sha256) of each output the next stages check


def write_record(stage_dir: str | os.PathLike[str], finished: Finished) -> Path:
    """`done.json`, written atomically and LAST: the only mark that a stage finished.

    A stage whose record exists with the same config fingerprint can be skipped; without one,
    whatever else is in the directory is a leftover to redo, never to trust. Written by the
    scheduler once a stage's run returns (src/schedule.py), by a stage whose spec says it writes
    its own (training's rank-0 worker) and by the eval's answer cache.
    """
    from importlib.metadata import version

    packages = ("torch", "transformers", "accelerate", "deepspeed", "datasets", "llm-blender")
    versions = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except Exception:  # not installed (e.g. an optional extra): record its absence
            versions[name] = None
    record = {
        "format": RECORD_FORMAT,
        "fingerprint": str(finished.fingerprint),
        "counts": finished.counts,
        "timings": finished.timings,
        "versions": versions,
        "machine": machine(),
        "finished_at": time.strftime(RECORD_TIME),
    }
    if finished.outputs is not None:
        record["outputs"] = finished.outputs
    if getattr(finished.fingerprint, "contents", None):
        record["contents"] = finished.fingerprint.contents
    record["sha256"] = record_sha256(record)
    return atomic_write_json(Path(stage_dir) / RECORD, record)
