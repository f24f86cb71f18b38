"""The tiny lineages the tests read, each made once and copied for every test that reads it.

A lineage here is a runs root as `python -m src.main` leaves it: tests/support/helpers.py's SMALL
iteration with the lineage's own overrides (LINEAGES). It is made once per version of what makes
it — the code (src/), the configs (conf/), the prompts (data/), the tiny models, the versions of
torch and transformers, its overrides — into .cache/test-lineages/<name>-<key>/, under
a file lock, so that pytest-xdist workers side by side make it once and a later session with the
same code makes it not at all. A test gets its own copy, which it may change or damage: the
product resumes, redoes and exports a run root that was moved (tests/pipeline/test_pipeline.py checks
that on a copy it makes itself), so a copy is that lineage as any test would have made it.
`trained_again` leaves a copy as a retraining of iteration 1 would, without training.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

from filelock import FileLock

from src.config import REPO_ROOT, Stage, compose, to_yaml
from src.config.cli import MAIN
from src.core.identity import stage_key
from src.core.records import Finished, read_record, write_record
from src.core.saved import save_config
from src.tiny.names import PIPELINE_NAMES
from tests.support.helpers import SMALL, run_main_process

# name -> the overrides after SMALL
LINEAGES: dict[str, tuple[str, ...]] = {
    # iteration 1, trained
    "one-iteration": ("iter=1",),
    # iterations 1 and 2: iteration 2 made from iteration 1's checkpoint
    "two-iterations": ("iter=2",),
    # iterations 1 and 2, each evaluated (their model cards carry the results), another seed
    "evaluated-two": ("eval.enabled=true", "iter=2", "training.seed=7"),
}
CACHE = REPO_ROOT / ".cache" / "test-lineages"
# What makes a lineage: its key reads every file under these (and the tiny models a SMALL run
# reads: the tiny_dir fixture's)
MADE_FROM = ("src", "conf", "data")


@functools.cache  # read once per session: every copy of a lineage asks for its key
def key(overrides: tuple[str, ...], tiny_dir: Path) -> str:
    digest = hashlib.sha256()
    folders = [REPO_ROOT / f for f in MADE_FROM] + [tiny_dir / n for n in PIPELINE_NAMES]
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts or path.name.startswith("."):
                continue
            digest.update(str(path.relative_to(folder.parent)).encode() + b"\0")
            digest.update(path.read_bytes())
    made = {
        "overrides": [*SMALL, *overrides],
        "versions": {p: version(p) for p in ("torch", "transformers", "accelerate", "peft")},
    }
    digest.update(json.dumps(made, sort_keys=True).encode())
    return digest.hexdigest()[:16]


class Copy(NamedTuple):
    root: Path  # the copy: a runs root
    stderr: str  # of the command that made the lineage
    made_in: Path  # the runs root it was made in, which its saved configs and stderr name


def made(name: str, tiny_dir: Path) -> Copy:
    """The lineage `name`, made where it is not. Read it, never write into it: `copy` gives a
    test its own."""
    overrides = LINEAGES[name]
    folder = CACHE / f"{name}-{key(overrides, tiny_dir)}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "stderr.txt").is_file():  # written last: the lineage is whole
            shutil.rmtree(folder, ignore_errors=True)
            result = run_main_process(folder / "runs", *SMALL, *overrides)
            assert result.returncode == 0, f"lineage {name}: {result.stderr[-3000:]}"
            (folder / "stderr.txt").write_text(result.stderr)
            for older in CACHE.glob(f"{name}-*"):  # made by code that has changed since
                if older.is_dir() and older != folder:
                    shutil.rmtree(older, ignore_errors=True)
    return Copy(folder / "runs", (folder / "stderr.txt").read_text(), folder / "runs")


def copy(name: str, tiny_dir: Path, dest: Path) -> Copy:
    """A copy of the lineage `name` at `dest` (a runs root that must not exist yet), the files'
    modes and times kept; a copy on write where the file system makes one."""
    original = made(name, tiny_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(original.root), str(dest)], check=True)
    return original._replace(root=dest)


def trained_again(root: Path, *overrides: str) -> None:
    """Iteration 1's training of the lineage under `root` as `pipeline.redo=[train]` with
    `overrides` leaves it, made now: its saved config, headed by that command, and its record
    (its checkpoint made again with other bytes: its generation config written with one blank
    more, which loads as it did, sealed anew)."""
    from src.core.policy import seal_checkpoint

    cfg = compose([*SMALL, f"paths.root={root}", "iter=1", *overrides])
    train = cfg.stage_dir(Stage.train)
    made = read_record(train)
    command = " ".join([MAIN, *SMALL, "iter=1", *overrides, "pipeline.redo=[train]"])
    save_config(train, to_yaml(cfg), command)
    written = train / "checkpoint" / "generation_config.json"
    written.write_text(written.read_text() + " ")
    key = stage_key(cfg.as_tree(), Stage.train)
    seals = seal_checkpoint(train / "checkpoint")
    write_record(train, Finished(key, made["counts"], made["timings"], seals))
