"""What a stage read, kept in its record as its manifest, and the key made from it
(docs/design.md §5, "A stage is what it read").

A stage's manifest names everything its output was made from:

- `params`: the config keys it reads (its `inputs` in src/core/registry.py), in their portable
  form (`fingerprint_form`: paths in the run, its root and the clone relative to them);
- `files`: each local file or folder it read by a key (its prompts, a pairs file of the user's
  own, the benchmarks' data: `input_contents`; the base model pi_0 and the judge, where each is a
  local folder: `model_files_read`), by sha256;
- `upstream`: each stage output it read, by that output's identity (`out_id`: the sha256 of
  the outputs its record seals), named `<stage>@<iteration>` — the stage it consumes, and the
  checkpoint it starts from or judges (iteration t-1's training for generate, iteration t's for
  its eval).

Its key is the sha256 of the manifest's values (a file by its sha256 alone) and its stage's
`version`. A stage is finished when its record's key is the key of what it would read now
(src/core/state.py): an upstream stage made again with other bytes changes the key of every stage
that read it, one made again with the same bytes changes none, and no clock is compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.core.fingerprints import (
    GONE,
    Read,
    file_entry,
    fingerprint_form,
    input_contents,
    lookup,
    read_upstream,
    resolved,
    stage_inputs,
)
from src.core.layout import RunLayout, iteration_number
from src.core.records import out_id, read_record, stat_signature
from src.core.registry import STAGES, Stage

# The base model a stage reads (pi_0), by the content of its files where it is a local folder
BASE_MODEL = "model.path"
# The keys that may name a model folder read by content (`model_files_read`)
MODEL_KEYS = (BASE_MODEL, "ranker.model", "eval.judge.model")


@dataclass(frozen=True)
class Link:
    """A stage output another stage reads: `stage` of iteration `iteration`."""

    stage: Stage
    iteration: int

    @property
    def name(self) -> str:
        return f"{self.stage.value}@{self.iteration}"

    @classmethod
    def parse(cls, name: str) -> Link:
        stage, _, t = name.partition("@")
        return cls(Stage(stage), int(t))


def links(tree: dict[str, Any], stage: Stage) -> list[Link]:
    """The stage outputs `stage` of iteration `tree['iter']` reads: the stage of its iteration it
    consumes (where it reads it: `read_upstream`) and the policy it loads, pi_{t-1} (generate, and
    a training, which starts from it) or the checkpoint it judges (the eval: iteration t's, and
    an earlier iteration's where that is its reference). pi_0, which no stage made, enters by its
    files (`model_files_read`)."""
    t = tree["iter"]
    found = []
    consumed = read_upstream(tree, stage)
    if consumed is not None:
        found.append(Link(consumed, t))
    if stage in (Stage.generate, Stage.train) and t > 1:
        found.append(Link(Stage.train, t - 1))
    if stage == Stage.eval:
        reference = iteration_number(str(lookup(tree, "eval.reference")))
        if reference:
            found.append(Link(Stage.train, reference))
    return [link for link in dict.fromkeys(found) if link.iteration >= 1]


def reads_base_model(tree: dict[str, Any], stage: Stage) -> bool:
    """Whether `stage` loads pi_0, the base model: generate and train at iteration 1, the eval of
    iteration 0 (pi_0 itself) and any eval against the base model."""
    t = tree["iter"]
    if stage in (Stage.generate, Stage.train):
        return t == 1
    if stage == Stage.eval:
        return t == 0 or lookup(tree, "eval.reference") == "base"
    return False


def upstream(tree: dict[str, Any], stage: Stage) -> dict[str, str]:
    """{`<stage>@<t>`: its `out_id`} for each stage output `stage` reads (`links`), as its records
    say now. A damaged record raises the StageError that names it."""
    layout = RunLayout(lookup(tree, "run.dir"))
    return {
        link.name: out_id(read_record(layout.stage_dir_in(link.iteration, link.stage)))
        for link in links(tree, stage)
    }


def model_inputs(tree: dict[str, Any], stage: Stage) -> list[str]:
    """The keys naming a model `stage` loads that no stage of the run made: the base model
    (`reads_base_model`) and the judge it ranks or judges with."""
    keys = [BASE_MODEL] if reads_base_model(tree, stage) else []
    if stage == Stage.rank:
        keys.append("ranker.model")
    elif stage == Stage.eval:
        keys.append("eval.judge.model" if lookup(tree, "eval.judge.model") else "ranker.model")
    return keys


def model_files_read(tree: dict[str, Any], stage: Stage, kept: dict[str, Any]) -> dict[str, Any]:
    """{key: {path, stat, sha256}} for each model `stage` loads from a local folder
    (`model_inputs`): its weights, config and tokenizer files by content (`model_entry`); none
    for a hub id. `kept`: the record's entries, which vouch by stat."""
    found = {}
    for key in model_inputs(tree, stage):
        path = lookup(tree, key)
        form = fingerprint_form(path, tree)
        seen = kept.get(key) or {}
        entry = model_entry(
            Path(str(path)).expanduser(), form, seen if seen.get("path") == form else {}
        )
        if entry is not None:
            found[key] = entry
    return found


def model_entry(folder: Path, form: str, seen: dict[str, Any]) -> dict[str, Any] | None:
    """{path, stat, sha256} of the local model in `folder` (`weights_signature`: the files it is
    loaded from, by content), trusted by their stat where `seen` holds the same; `GONE` where it
    was read (`seen`) and is no folder now; None for a hub id."""
    from src.core.policy import model_files, weights_signature

    if not folder.is_dir():
        return {"path": form, "stat": GONE, "sha256": GONE} if seen else None
    stat = stat_signature(model_files(folder), folder)
    if seen.get("stat") == stat:
        return {"path": form, "stat": stat, "sha256": seen["sha256"]}
    return {"path": form, "stat": stat, "sha256": weights_signature(str(folder), None)}


def files_now(recorded: dict[str, Any], run_dir: str, root: str) -> dict[str, Any]:
    """Each file entry a record kept, as its file or folder reads now, found by its portable
    form where the run, its root and the clone are now: what a view checks with no config."""
    now = {}
    for key, seen in recorded.items():
        path = resolved(seen["path"], run_dir, root)
        if key in MODEL_KEYS:
            entry = model_entry(path, seen["path"], seen)
        else:
            entry = file_entry(key, path, seen["path"], seen.get("read"), seen)
        if entry is not None:
            now[key] = entry
    return now


def manifest(
    tree: dict[str, Any],
    stage: Stage,
    read: dict[str, Read] | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `stage` of `tree`'s iteration reads now: its params, the local files it reads (`read`:
    what the stage read of each, as it names it when it finishes; else as `record` kept it) and
    the stage outputs it reads. `record`: the stage's own, whose file entries vouch by stat."""
    kept = ((record or {}).get("manifest") or {}).get("files") or {}
    files = input_contents(tree, stage, read, record={"contents": kept})
    files |= model_files_read(tree, stage, kept)
    return {
        "version": STAGES[stage].version,
        "params": stage_inputs(tree, stage),
        "files": files,
        "upstream": upstream(tree, stage),
    }


def key_of(stage: Stage, made: dict[str, Any]) -> str:
    """The key of a manifest: sha256 of its stage, the stage's version and the manifest's
    values, each file by its sha256 alone (its stat and path only vouch for it)."""
    payload = {
        "stage": stage.value,
        "version": STAGES[stage].version,
        "params": made["params"],
        "files": {k: entry["sha256"] for k, entry in made["files"].items()},
        "upstream": made["upstream"],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Key(str):
    """A stage's key, carrying the manifest it was made from: `write_record` keeps both."""

    manifest: dict[str, Any]

    def __new__(cls, value: str, made: dict[str, Any]) -> Key:
        key = super().__new__(cls, value)
        key.manifest = made
        return key


def stage_key(tree: dict[str, Any], stage: Stage, read: dict[str, Read] | None = None) -> Key:
    """The key of what `stage` of `tree`'s iteration reads now (`manifest`), with that manifest:
    what its record keeps once it finishes."""
    made = manifest(tree, stage, read)
    return Key(key_of(stage, made), made)


def chunk_identity(
    tree: dict[str, Any], stage: Stage, read: dict[str, Read] | None = None, **content: str | None
) -> str:
    """What a sharded stage's chunks are made from, so that a chunk made under another identity
    is never reused: the stage's key, its chunk size (a chunk's file is one slice of the shard)
    and `content`, hashes of inputs read from files whose names alone do not say what they hold
    (the responses being ranked, an external responses file)."""
    payload = {
        "key": stage_key(tree, stage, read),
        "chunk_size": lookup(tree, f"{STAGES[stage].sharded_by}.chunk_size"),
        **content,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
