"""The config a stage ran with, saved beside its output (`config.yaml`, headed by the command
that made it and the clone it ran from), and read back as plain data, its paths moved to where
the run and the clone are now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from src.core.artifacts import atomic_write_text
from src.core.fingerprints import lookup
from src.core.layout import REPO_ROOT, SAVED_CONFIG

# Under a saved config's command: the clone it ran from (`saved_config`)
CLONE_LINE = "# repo: "


def save_config(folder: Path, resolved: str, command: str) -> None:
    """The resolved config (YAML) beside a stage's output in `folder`, headed by the command that
    made it (as `command_line` holds it: `command_words` reads its words back) and the clone it
    ran from: what `saved_config` reads back."""
    atomic_write_text(folder / SAVED_CONFIG, f"# {command}\n{CLONE_LINE}{REPO_ROOT}\n{resolved}")


def saved_config(folder: Path) -> dict[str, Any] | None:
    """The config the stage in `folder` last ran with (its `config.yaml`), as plain data, or
    None. Its paths in the clone it ran from (its header names it; a config saved before headers
    did is taken as made here) are moved to this clone (REPO_ROOT), so that a clone renamed, or a
    run copied to another, is judged by this clone's files."""
    saved = folder / SAVED_CONFIG
    if not saved.is_file():
        return None
    # plain YAML (the config resolved): libyaml's loader, ~15x OmegaConf's, as a lineage's walk
    # reads one per earlier iteration
    try:
        text = saved.read_bytes()
        loaded = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeDecodeError):  # damaged: judged by its record alone
        return None
    if not (isinstance(loaded, dict) and "iter" in loaded):
        return None  # emptied, or not a config (a stage run from Python saves none): none saved
    header = [line for line in text.split(b"\n", 2)[:2] if line.startswith(CLONE_LINE.encode())]
    made_in = header[0][len(CLONE_LINE) :].decode(errors="replace") if header else None
    return moved(loaded, [(made_in, str(REPO_ROOT))]) if made_in != str(REPO_ROOT) else loaded


def relocated(tree: dict, run_dir: str, root: str) -> dict:
    """A saved config's paths inside its run and its root moved to `run_dir` and `root`, where the
    run is now (a root copied elsewhere keeps its finished stages)."""
    # the run's own folder first: it lies inside the root
    return moved(tree, [(lookup(tree, "run.dir"), run_dir), (lookup(tree, "paths.root"), root)])


def moved(tree: dict, moves: list[tuple[str | None, str]]) -> dict:
    """`tree` with each path inside the old folder of one of `moves` (the first that holds it)
    moved to its new one; an old folder None moves nothing."""

    def move(value):
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        for old, new in moves:
            if isinstance(value, str) and old and (value == old or value.startswith(f"{old}/")):
                return new + value[len(old) :]
        return value

    return move(tree)
