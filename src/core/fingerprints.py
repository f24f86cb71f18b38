"""The forms a stage's manifest (src/core/identity.py) holds of what it read: its config keys
(`stage_inputs`: its `inputs` in src/core/registry.py, with the rules of which enter when) and
the local files it read by a key, by content (`input_contents`: its prompts, a pairs file, the
benchmarks' data — FILE_INPUTS), so a file edited in place makes the stage stale, the file named.

Each function takes the config as plain data (`Config.as_tree()`): a tree that holds `iter`,
`run.dir`, `paths.root` and the stages' inputs.

No form depends on where the run or the clone sits: a path inside the run directory is written
`<run>/...`, one elsewhere under `paths.root` `<root>/...`, one elsewhere in the clone (REPO_ROOT:
its data/, the tiny models in .cache/tiny) `<repo>/...` (`fingerprint_form`), so a run root moved
or copied elsewhere, a clone renamed, or a run copied to another clone keeps its finished stages.
"""

from __future__ import annotations

import hashlib
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
                kept = read_record(stage_dir(tree, stage)) or {}
                # format 8 keeps them in its manifest, earlier formats beside it
                recorded = (kept.get("manifest") or {}).get("files") or kept.get("contents") or {}
            except StageError:  # damaged: said where the stage's state is read
                recorded = {}
        seen = recorded.get(key) or {}
        seen = seen if seen.get("path") == form else {}
        path = Path(lookup(tree, key)).expanduser()
        entry = file_entry(key, path, form, (read or {}).get(key, seen.get("read")), seen)
        if entry is not None:
            out[key] = entry
    return out


def file_entry(
    key: str, path: Path, form: str, parts: Read | None, seen: dict[str, Any]
) -> dict[str, Any] | None:
    """{path, stat, sha256[, read]}: what a stage read of the local input `key` at `path` (`parts`,
    `input_contents`), by content, named `form`; `seen`: the record's entry, which vouches for
    files whose stat is as it kept it. None: nothing to name (a hub id, an empty folder never
    read)."""
    if not path.exists():
        # it was read: now gone; else a hub id, or never read: the stage's reader says so
        return {"path": form, "stat": GONE, "sha256": GONE} if seen else None
    if key in FOLDER_INPUTS:
        files = files_read(path, None if isinstance(parts, int) else parts)
    else:  # a file input replaced by a folder (or a device) is not what was read
        files = [path] if path.is_file() else None
    if files is None:
        return {"path": form, "stat": GONE, "sha256": GONE}
    if not files and not seen:
        return None  # an empty folder, as records before empty folders entered
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
            "\n".join(f"{n}:{hashes[f]}" for (n, _), f in zip(stats, files, strict=True)).encode()
        ).hexdigest()
    entry = {"path": form, "stat": stat, "sha256": digest}
    if parts is not None:
        entry["read"] = parts if isinstance(parts, int) else sorted(parts)
    return entry


def resolved(form: str, run_dir: str, root: str) -> Path:
    """The path a portable form (`fingerprint_form`) names where the run, its root and the clone
    are now."""
    for anchor, place in zip(PORTABLE, (run_dir, root, str(REPO_ROOT)), strict=True):
        if form == anchor or form.startswith(anchor + "/"):
            return Path(str(place) + form[len(anchor) :])
    return Path(form).expanduser()


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
