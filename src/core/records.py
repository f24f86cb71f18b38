"""Stage records and their fingerprints: which finished work a run may reuse (docs/design.md §5);
what a finished stage's state is under a config, and why it is stale: src/core/staleness.py.

A stage's output depends on a few config keys (its `inputs` in src/core/registry.py) and on the
output of the stage it consumes — for `generate`, on the previous iteration's checkpoint. Its fingerprint hashes
both, chaining back to iteration 1, so a change anywhere upstream changes every fingerprint
after it. A stage's `done.json` stores the fingerprint it was made under:

- the same fingerprint: the work is done, skip it;
- another fingerprint: it was made under another config; never reused silently — refused,
  naming the keys that changed, unless the user asks to redo it (`pipeline.redo=[stage]`);
- no record: the stage has not finished (it resumes from whatever it left, or starts).

A local file a stage reads by a key (its prompts, pairs, reference answers: FILE_INPUTS) enters
its fingerprint by content, so a file edited in place makes the stage stale, the file named.

Each function takes the config as plain data (`Config.as_tree()`): a tree that holds `iter`,
`run.dir`, `paths.root` and the stages' inputs.

A fingerprint does not depend on where the run sits: a path inside the run directory enters it
as `<run>/...`, one elsewhere under `paths.root` as `<root>/...` (`fingerprint_form`), so a run
root moved or copied elsewhere keeps its finished stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from src.core.artifacts import atomic_write_json, files_sha256, folder_files, read_json
from src.core.errors import Redo, StageError, shown
from src.core.layout import RECORD, RunLayout, stage_folder
from src.core.machine import machine
from src.core.registry import (
    BENCHMARK_INPUTS,
    FILE_INPUTS,
    FOLDER_INPUTS,
    POLICY_INPUTS,
    STAGES,
    Stage,
)

# Bumped when what a record holds changes. Formats 3 and 4 hash the same fingerprint (the paths
# inside the run relative to it); format 4 adds the record's own sha256, checked from format 5 on,
# so a record edited by hand or damaged is refused rather than believed; format 5 hashes the
# content of the local files the stage read (`input_contents`) and keeps each one's, so that a
# file changed is named; format 6 fingerprints a training on a pairs file of the user's own by
# that file and the policy it starts from, not through the stages it does not read. A record of
# 3 or 4 is checked as it was made, by name, and one of 5 (such a training) chained as it was
# made. Format 2 hashed the paths absolute, and its records are still checked as it made them,
# where the run then sat (`state_of`). A record of any other format was made by another version
# of this project, and is refused with that reason rather than as a config change; one whose
# format is not a number is damaged.
RECORD_FORMAT = 6
CONTENTS_FORMAT = 5  # the first to hash the files' content and to check the record's sha256
PORTABLE_FORMATS = (3, 4, CONTENTS_FORMAT, RECORD_FORMAT)
ABSOLUTE_PATHS_FORMAT = 2
KNOWN_FORMATS = (ABSOLUTE_PATHS_FORMAT, *PORTABLE_FORMATS)

# What a fingerprint writes, at the head of a path, for the run directory and for paths.root.
PORTABLE = ("<run>", "<root>")


def stage_dir(tree: dict[str, Any], stage: Stage) -> Path:
    folder = stage_folder(
        stage, lookup(tree, "eval.reference"), lookup(tree, "eval.reference_outputs")
    )
    return RunLayout(lookup(tree, "run.dir")).iteration_dir(tree["iter"]) / folder


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def fingerprint_form(value: Any, tree: dict[str, Any], at: tuple[str, str] = PORTABLE) -> Any:
    """`value`, from the config `tree`, as fingerprints hash it and `changed` shows it.

    A path inside the run directory (`run.dir`) is written `<run>/...`, another inside
    `paths.root` `<root>/...`, so that a fingerprint depends on paths relative to the run, not on
    where its root sits; anything else (a model dir, a prompt file elsewhere) is kept as it is;
    sections and lists item by item. `at`: what to write for the run directory and the root
    instead — format 2 hashed the absolute paths, which is `at=(its run.dir, its paths.root)`.
    """
    if isinstance(value, dict):
        return {k: fingerprint_form(v, tree, at) for k, v in value.items()}
    if isinstance(value, list):
        return [fingerprint_form(v, tree, at) for v in value]
    if isinstance(value, str):
        places = (lookup(tree, "run.dir"), lookup(tree, "paths.root"))
        for place, written in zip(places, at, strict=True):
            base = str(place).rstrip("/")
            if place and (value == base or value.startswith(base + "/")):
                return written.rstrip("/") + value[len(base) :]
    return value


def stage_inputs(
    tree: dict[str, Any],
    stage: Stage,
    at: tuple[str, str] = PORTABLE,
    extras: bool = True,
    backend_written: bool = False,
    chained: bool = False,
) -> dict[str, Any]:
    """The stage's inputs in `tree`, in their fingerprint form.

    A stage that reads no stage of its iteration though it consumes one (a training on a pairs
    file of the user's own) starts from the policy alone, as generate does: the policy's keys
    (`POLICY_INPUTS`) are its inputs too (`chained=True`: not, as records before format 6).

    `training.lora` shapes an adapter only: with `training.peft=none` neither key enters the
    fingerprint, so a full-weight run's records (made before the keys existed, too) stay valid
    whatever the adapter settings say. `training.weight_updates` acts on full weights in 16 bits
    only: trained in fp32 (as on CPU) or with an adapter, it does not enter either.
    `training.record_memory_phases` says what the record keeps, not what the stage makes: it
    never enters it. The eval stage's `eval.alpaca_eval`, `eval.benchmarks` and each benchmark's
    own keys (`BENCHMARK_INPUTS`) enter it while they run: an eval made without them keeps its
    record, one that asks for them again is stale (`extras=False`: none of them, as records made
    before they entered it were fingerprinted); `eval.llm_judge.system_turn` only when set;
    `eval.backend` only when it names another engine than null does (generation.backend's, among
    the inputs already), so that an eval asked for with that engine written out is the eval made
    without it. `backend_written=True`: `eval.backend` as the engine it resolves to, set or not —
    what records made with it set to generation.backend's hold (it entered whenever set then).
    """
    keys = STAGES[stage].inputs
    if not chained and STAGES[stage].consumes is not None and read_upstream(tree, stage) is None:
        keys = (*keys, *POLICY_INPUTS)
    inputs = {key: lookup(tree, key) for key in keys}
    training = inputs.get("training")
    if isinstance(training, dict):
        left_out = {"record_memory_phases"}
        adapter = training.get("peft", "none") != "none"
        if not adapter:
            left_out |= {"peft", "lora"}
        precision = training.get("precision", "auto")
        in_fp32 = precision == "float32" or (
            precision == "auto" and lookup(tree, "hardware.device") == "cpu"
        )
        if adapter or in_fp32:
            left_out.add("weight_updates")
        inputs["training"] = {k: v for k, v in training.items() if k not in left_out}
    if stage == Stage.eval:  # AlpacaEval 2 and the benchmarks: their keys while they run only
        listed = [str(b) for b in inputs["eval.benchmarks"] or []] if extras else []
        kept = {key for b in listed for key in BENCHMARK_INPUTS[b]}
        dropped = {key for keys in BENCHMARK_INPUTS.values() for key in keys} - kept
        dropped |= {"eval.alpaca_eval"} if not (extras and inputs["eval.alpaca_eval"]) else set()
        dropped |= {"eval.benchmarks"} if not listed else set()
        if inputs["eval.llm_judge.system_turn"] is None:  # as records before it was read
            dropped.add("eval.llm_judge.system_turn")
        engine, default = inputs["eval.backend"], inputs["generation.backend"]
        if backend_written:
            inputs["eval.backend"] = engine or default
        elif engine in (None, default):
            dropped.add("eval.backend")
        inputs = {k: v for k, v in inputs.items() if k not in dropped}
    return fingerprint_form(inputs, tree, at)


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


def made_before_training(eval_dir: Path) -> bool:
    """Whether the finished eval in `eval_dir` (`iterT/eval`, or `iterT/eval/vs-<name>`) was
    made before iteration T's training last finished: of a checkpoint trained again since, whose
    figures it does not hold, whatever its config says (`pipeline.redo=[train]` retrains under
    the same one)."""
    layout = RunLayout.holding(eval_dir)
    if layout is None:
        return False
    train_dir = layout.stage_dir(layout.parse(eval_dir).iteration, Stage.train)
    try:
        made, trained = (
            datetime.strptime(json.loads((d / RECORD).read_bytes())["finished_at"], RECORD_TIME)
            for d in (Path(eval_dir), train_dir)
        )
    except (OSError, ValueError, TypeError, KeyError):  # unfinished, or a record not readable
        return False  # (read_record names a damaged one where the stage reads it)
    return made < trained


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


class Fingerprint(str):
    """A stage's fingerprint, carrying the content of the files it hashed (`input_contents`):
    `write_record` keeps them, so that a later check names the file that changed."""

    contents: dict[str, dict[str, str]]

    def __new__(cls, value: str, contents: dict[str, dict[str, str]]) -> Fingerprint:
        made = super().__new__(cls, value)
        made.contents = contents
        return made


def stage_fingerprint(
    tree: dict[str, Any],
    stage: Stage,
    at: tuple[str, str] = PORTABLE,
    extras: bool = True,
    contents: bool = True,
    backend_written: bool = False,
    read: dict[str, Read] | None = None,
    chained: bool = False,
) -> Fingerprint:
    """sha256 of the stage's inputs, of the content of the local files among them and of the
    fingerprint of what it reads: the stage it consumes (`read_upstream`), or, where it reads no
    stage of its iteration, the policy it starts from (pi_{t-1}, as recorded when it was trained).

    `at`: see `fingerprint_form`; the default makes the fingerprint of this format. `extras`,
    `backend_written`: see `stage_inputs`. `contents=False`: by the files' names alone, as
    records before format 5. `read`: see `input_contents`. `chained=True`: a training on a file
    of the user's own chained through the stages it does not read, as records before format 6.
    """
    consumes = STAGES[stage].consumes if chained else read_upstream(tree, stage)
    iteration = tree["iter"]
    if consumes is not None:
        upstream: str | None = stage_fingerprint(tree, consumes, at, contents=contents)
    elif iteration > 1:  # the previous iteration's checkpoint, as recorded when it was trained
        previous = RunLayout(lookup(tree, "run.dir")).stage_dir(iteration - 1, Stage.train)
        record = read_record(previous)
        upstream = record["fingerprint"] if record else "unfinished"
    else:
        upstream = None
    inputs = stage_inputs(tree, stage, at, extras, backend_written, chained)
    payload = {"stage": stage.value, "inputs": inputs, "upstream": upstream}
    found = input_contents(tree, stage, read) if contents else {}
    if found:  # only then: a stage that reads no local file keeps its fingerprint of format 4
        payload["contents"] = {key: entry["sha256"] for key, entry in found.items()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return Fingerprint(digest, found)


def read_upstream(tree: dict[str, Any], stage: Stage) -> Stage | None:
    """The stage whose output `stage` reads under `tree`: the one it consumes, unless the file its
    `consumes_via` key names lies elsewhere (a file of the user's own: `training.pairs`)."""
    spec = STAGES[stage]
    if spec.consumes is None or spec.consumes_via is None or not lookup(tree, spec.consumes_via):
        return spec.consumes
    read = Path(lookup(tree, spec.consumes_via)).resolve()
    return spec.consumes if read.parent == stage_dir(tree, spec.consumes).resolve() else None


# What a local input holds when it is no longer a file or folder the stage could read
GONE = "gone"
# What a stage read of a local input (`input_contents`): the files and folders under a folder,
# or the bytes from the start of a file
Read = list[str] | int


def input_contents(
    tree: dict[str, Any], stage: Stage, read: dict[str, Read] | None = None
) -> dict[str, dict[str, Any]]:
    """{key: {path, stat, sha256[, read]}} for each of the stage's FILE_INPUTS that names a local
    file or folder outside the run: what the stage read of it, by content.

    An input enters by what its stage read of it, `read[key]`, which the stage names as it
    finishes, kept in the record and read from it by a later check: of a folder, the files and
    sub-folders under it (MT-Bench's question and judge files, the leaderboard's dataset copies);
    of a file, the bytes read from its start (a prompts file read to data.max_prompts). Without
    them (a record made before, a file read whole), the whole file or every file in the folder. A file named by a record that is gone, or has become
    a folder, hashes as `GONE`, so the check names it. The record vouches for a file whose size,
    inode, mtime and ctime (which every write changes, `cp -p` and `touch -d` too) are as it
    recorded them, so that a check does not read it again.
    """
    named = flatten(stage_inputs(tree, stage))
    out: dict[str, dict[str, Any]] = {}
    recorded: dict | None = None
    for key in FILE_INPUTS:
        form = named.get(key)
        if not isinstance(form, str) or form.startswith(PORTABLE[0]):
            continue
        if recorded is None:
            try:
                recorded = (read_record(stage_dir(tree, stage)) or {}).get("contents") or {}
            except StageError:  # damaged: said where the stage's state is read
                recorded = {}
        seen = recorded.get(key) or {}
        seen = seen if seen.get("path") == form else {}
        path = Path(lookup(tree, key)).expanduser()
        parts = (read or {}).get(key, seen.get("read"))
        if not path.exists():
            if seen:  # it was read: now gone
                out[key] = {"path": form, "stat": GONE, "sha256": GONE}
            continue  # a hub id, or never read: the stage's reader says so
        if key in FOLDER_INPUTS:
            files = files_read(path, None if isinstance(parts, int) else parts)
        else:  # a file input replaced by a folder (or a device) is not what was read
            files = [path] if path.is_file() else None
        if files is None:
            out[key] = {"path": form, "stat": GONE, "sha256": GONE}
            continue
        if not files and not seen:
            continue  # an empty folder, as records before empty folders entered
        stats = [(f.relative_to(path).as_posix() if f != path else "", f.stat()) for f in files]
        stat = hashlib.sha256(
            "\n".join(
                f"{n}:{s.st_size}:{s.st_ino}:{s.st_mtime_ns}:{s.st_ctime_ns}" for n, s in stats
            ).encode()
        ).hexdigest()
        if seen.get("stat") == stat and seen.get("read") == parts:
            digest = seen["sha256"]
        elif isinstance(parts, int):  # the first bytes of a file, all that its stage read
            digest = prefix_sha256(path, parts)
        else:
            hashes = files_sha256(files)
            digest = hashlib.sha256(
                "\n".join(
                    f"{n}:{hashes[f]}" for (n, _), f in zip(stats, files, strict=True)
                ).encode()
            ).hexdigest()
        out[key] = {"path": form, "stat": stat, "sha256": digest}
        if parts is not None:
            out[key]["read"] = parts if isinstance(parts, int) else sorted(parts)
    return out


def prefix_sha256(path: Path, size: int) -> str:
    """sha256 of the first `size` bytes of `path` (of all of it, when it is shorter)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while size > 0 and (block := f.read(min(size, 2**20))):
            digest.update(block)
            size -= len(block)
    return digest.hexdigest()


def files_read(path: Path, parts: list[str] | None) -> list[Path] | None:
    """The files of the folder `path` a stage read: those under each of `parts` (a file, or a
    folder's files), else all of them. None: `path` is not a folder, or one of `parts` is gone."""
    if not path.is_dir():
        return None
    if parts is None:
        return folder_files(path)
    found = []
    for part in sorted(parts):
        under = path / part
        if under.is_file():
            found.append(under)
        elif under.is_dir():
            found += folder_files(under)
        else:
            return None
    return found


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def chunk_identity(
    tree: dict[str, Any], stage: Stage, read: dict[str, Read] | None = None, **content: str | None
) -> str:
    """What a sharded stage's chunks are made from, so that a chunk made under another identity
    is never reused: the stage's fingerprint, its chunk size (a chunk's file is one slice of the
    shard) and `content`, hashes of inputs read from files whose names alone do not say what
    they hold (the responses being ranked, an external responses file); `read`: as the record's
    (`input_contents`)."""
    payload = {
        "fingerprint": stage_fingerprint(tree, stage, read=read),
        "chunk_size": lookup(tree, f"{STAGES[stage].sharded_by}.chunk_size"),
        **content,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
