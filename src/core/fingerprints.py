"""Stage fingerprints: what a finished stage's output depends on, hashed (docs/design.md §5); the
records that store them: src/core/records.py; what a stage's state is under a config, and why it
is stale: src/core/staleness.py.

A stage's output depends on a few config keys (its `inputs` in src/core/registry.py) and on the
output of the stage it consumes — for `generate`, on the previous iteration's checkpoint. Its fingerprint hashes
both, chaining back to iteration 1, so a change anywhere upstream changes every fingerprint
after it. A sharded stage's chunks are reused under their identity (`chunk_identity`): its
fingerprint and what its chunks are cut from.

A local file a stage reads by a key (its prompts, pairs, reference answers: FILE_INPUTS) enters
its fingerprint by content, so a file edited in place makes the stage stale, the file named.

Each function takes the config as plain data (`Config.as_tree()`): a tree that holds `iter`,
`run.dir`, `paths.root` and the stages' inputs.

A fingerprint does not depend on where the run or the clone sits: a path inside the run directory
enters it as `<run>/...`, one elsewhere under `paths.root` as `<root>/...`, one elsewhere in the
clone (REPO_ROOT: its data/, the tiny models in .cache/tiny) as `<repo>/...` (`fingerprint_form`),
so a run root moved or copied elsewhere, a clone renamed, or a run copied to another clone keeps
its finished stages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from src.core.artifacts import files_sha256, folder_files
from src.core.errors import StageError
from src.core.layout import REPO_ROOT, RunLayout, stage_folder
from src.core.records import read_record
from src.core.registry import (
    BENCHMARK_INPUTS,
    FILE_INPUTS,
    FOLDER_INPUTS,
    POLICY_INPUTS,
    STAGES,
    Stage,
)

# What a fingerprint writes, at the head of a path, for the run directory, paths.root and the clone
# (REPO_ROOT). None: paths in that folder are kept absolute, as records before format 7 kept the
# clone's (`CLONE_ABSOLUTE`).
Anchors = tuple[str | None, str | None, str | None]
PORTABLE: Anchors = ("<run>", "<root>", "<repo>")
CLONE_ABSOLUTE: Anchors = ("<run>", "<root>", None)


def stage_dir(tree: dict[str, Any], stage: Stage) -> Path:
    """`Config.stage_dir` of the config as plain data: where `stage` of its iteration writes."""
    folder = stage_folder(
        stage,
        lookup(tree, "eval.reference"),
        lookup(tree, "eval.reference_outputs"),
        lookup(tree, "eval.judged_by"),
    )
    return RunLayout(lookup(tree, "run.dir")).iteration_dir(tree["iter"]) / folder


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def fingerprint_form(value: Any, tree: dict[str, Any], at: Anchors = PORTABLE) -> Any:
    """`value`, from the config `tree`, as fingerprints hash it and `changed` shows it.

    A path inside the run directory (`run.dir`) is written `<run>/...`, another inside
    `paths.root` `<root>/...`, another inside the clone (REPO_ROOT) `<repo>/...`, each by the
    deepest of them that holds it (the runs root is the clone's runs/ by default), so that a
    fingerprint depends on paths relative to the run and the clone, not on where they sit;
    anything else (a model or a prompt file elsewhere, a hub id) is kept as it is; sections and
    lists item by item. `at`: what to write for the run directory, the root and the clone instead —
    format 2 hashed the absolute paths, which is `at=(its run.dir, its paths.root, None)`.
    """
    if isinstance(value, dict):
        return {k: fingerprint_form(v, tree, at) for k, v in value.items()}
    if isinstance(value, list):
        return [fingerprint_form(v, tree, at) for v in value]
    if isinstance(value, str):
        places = (lookup(tree, "run.dir"), lookup(tree, "paths.root"), REPO_ROOT)
        held = []
        for place, written in zip(places, at, strict=True):
            base = str(place).rstrip("/")
            if place and written is not None and (value == base or value.startswith(base + "/")):
                held.append((base, written))
        if held:
            base, written = max(held, key=lambda h: len(h[0]))
            return written.rstrip("/") + value[len(base) :]
    return value


def stage_inputs(
    tree: dict[str, Any],
    stage: Stage,
    at: Anchors = PORTABLE,
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
    at: Anchors = PORTABLE,
    extras: bool = True,
    contents: bool = True,
    backend_written: bool = False,
    read: dict[str, Read] | None = None,
    chained: bool = False,
    record: dict[str, Any] | None = None,
) -> Fingerprint:
    """sha256 of the stage's inputs, of the content of the local files among them and of the
    fingerprint of what it reads: the stage it consumes (`read_upstream`), or, where it reads no
    stage of its iteration, the policy it starts from (pi_{t-1}, as recorded when it was trained).

    `at`: see `fingerprint_form`; the default makes the fingerprint of this format. `extras`,
    `backend_written`: see `stage_inputs`. `contents=False`: by the files' names alone, as
    records before format 5. `read`, `record`: see `input_contents`. `chained=True`: a training on
    a file of the user's own chained through the stages it does not read, as records before
    format 6.
    """
    consumes = STAGES[stage].consumes if chained else read_upstream(tree, stage)
    iteration = tree["iter"]
    if consumes is not None:
        upstream: str | None = stage_fingerprint(tree, consumes, at, contents=contents)
    elif iteration > 1:  # the previous iteration's checkpoint, as recorded when it was trained
        previous = RunLayout(lookup(tree, "run.dir")).stage_dir_in(iteration - 1, Stage.train)
        trained = read_record(previous)
        upstream = trained["fingerprint"] if trained else "unfinished"
    else:
        upstream = None
    inputs = stage_inputs(tree, stage, at, extras, backend_written, chained)
    payload = {"stage": stage.value, "inputs": inputs, "upstream": upstream}
    found = input_contents(tree, stage, read, at, record) if contents else {}
    if found:  # only then: a stage that reads no local file keeps its fingerprint of format 4
        payload["contents"] = {key: entry["sha256"] for key, entry in found.items()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return Fingerprint(digest, found)


def read_upstream(tree: dict[str, Any], stage: Stage) -> Stage | None:
    """The stage whose output `stage` reads under `tree`: the one it consumes, unless the file its
    `consumes_via` key names lies elsewhere (a file of the user's own: `training.pairs`)."""
    spec = STAGES[stage]
    if tree["iter"] == 0:  # iteration 0 is pi_0 itself, which its eval reads: no stage made it
        return None
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
    tree: dict[str, Any],
    stage: Stage,
    read: dict[str, Read] | None = None,
    at: Anchors = PORTABLE,
    record: dict[str, Any] | None = None,
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
    recorded them, so that a check does not read it again. Each is named by its path in its
    fingerprint form (`at`: as its record's format wrote it). `record`: the stage's, where its
    caller read it already (None: read here).
    """
    named = flatten(stage_inputs(tree, stage, at))
    out: dict[str, dict[str, Any]] = {}
    recorded = None if record is None else record.get("contents") or {}
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
