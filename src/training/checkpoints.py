"""The Trainer's checkpoints (`train/trainer/checkpoint-N/`), trusted by their content.

After the Trainer saves a checkpoint, every process has written its part (ZeRO-3 shards, RNG
states) and rank 0 seals it: `seal.json` holds the identity of the run that made it (the train
stage's fingerprint) and each file's size and sha256. A re-run resumes from the newest checkpoint
whose files are all as sealed; a newer one that is not (a save cut short, a file damaged or
replaced since) is named on the console, removed and skipped for the one before it. The
Trainer's callback that seals them is `SealCheckpoints` (src/training/trainer.py), so that this
module, which the train stage's launcher reads, loads neither the Trainer nor its libraries.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from src.core.artifacts import atomic_write_json, files_sha256, read_json, share
from src.core.errors import StageError

SEAL = "seal.json"  # written last, after every process has saved its part


def checkpoints(output_dir: Path) -> list[Path]:
    """The Trainer's checkpoint folders under `output_dir`, newest (highest step) first."""
    found = [
        (int(d.name.split("-")[1]), d)
        for d in output_dir.glob("checkpoint-*")
        if d.is_dir() and d.name.split("-")[1].isdigit()
    ]
    return [d for _, d in sorted(found, reverse=True)]


def seal(folder: Path, identity: str) -> None:
    """Give the checkpoint's files the umask's mode and record what they hold."""
    share(folder)
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name != SEAL)
    digests = files_sha256(files)
    sealed = {
        str(f.relative_to(folder)): {"bytes": f.stat().st_size, "sha256": digests[f]} for f in files
    }
    atomic_write_json(folder / SEAL, {"identity": identity, "files": sealed})


def damage(folder: Path, identity: str) -> str | None:
    """Why the checkpoint in `folder` cannot be resumed from (None: it can)."""
    if not (folder / SEAL).is_file():
        return "it has no seal (its save was cut short, or an earlier version made it)"
    try:
        made = read_json(folder / SEAL, StageError)
        if made.get("identity") != identity:
            return "it was saved by a run with another configuration"
        files = {folder / name: seal for name, seal in made["files"].items()}
        for path, sealed in files.items():
            if not path.is_file():
                return f"{path.name} is missing"
            if path.stat().st_size != sealed["bytes"]:
                return f"{path.name} has {path.stat().st_size} bytes where it was saved with {sealed['bytes']}"
        for path, digest in files_sha256(files).items():
            if digest != files[path]["sha256"]:
                return f"{path.name} is not the file that was saved (its content changed)"
    except (StageError, OSError, KeyError, TypeError, AttributeError) as err:
        return f"its seal or files cannot be read ({err})"
    return None


def resume_point(output_dir: Path, identity: str, remove_damaged: bool) -> str | None:
    """The newest checkpoint saved whole and unchanged since, or None. A newer one that is not is
    named on the console and, with `remove_damaged` (the one process that decides for its
    node's workers), removed: the Trainer saves that step again."""
    for folder in checkpoints(output_dir):
        why = damage(folder, identity)
        if why is None:
            return str(folder)
        removed = "removed, " if remove_damaged else ""
        print(
            f"[train] {folder} cannot be resumed from: {why}; {removed}trying the one before it",
            file=sys.stderr,
            flush=True,
        )
        if remove_damaged:
            shutil.rmtree(folder, ignore_errors=True)
    return None
