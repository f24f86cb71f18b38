"""A redo's moves on disk: a stage's finished results set aside for it (renamed beside the
stage's folder, no copy), put back as they were when it fails, deleted once it ends well. The
scheduler (src/schedule/) decides what is redone and holds the locks; this only moves files."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from src.core import locks
from src.core.artifacts import remove
from src.core.layout import SIDE_EVAL
from src.core.registry import Stage


def redone_parts(stage_dir: Path) -> list[Path]:
    """What a redo replaces in a stage's folder: all of it but the evals against other
    references that sit inside the eval's (and their locks), each redone by its own command."""
    return [p for p in stage_dir.iterdir()
            if not (p.name.startswith(SIDE_EVAL) or p.name == locks.LOCKS)]  # fmt: skip


@contextlib.contextmanager
def set_aside(stage: Stage, stage_dir: Path):
    """A stage's finished results, moved aside for its redo (beside its folder, renamed: no
    copy) and deleted once the redo ends well. A redo that fails (a judge that does not answer,
    a key not set, Ctrl-C) puts them back as they were, what it wrote removed, so a remedy the
    product suggests never loses finished work. A process killed outright leaves them aside,
    to the next redo of the stage, which deletes them."""
    aside = stage_dir.with_name(f".{stage_dir.name}.before-redo")
    remove(aside)
    aside.mkdir()
    for path in redone_parts(stage_dir):
        path.rename(aside / path.name)
    try:
        yield
    except locks.LockLost:  # another process may be writing there: nothing is moved back
        raise
    except BaseException:
        stage_dir.mkdir(parents=True, exist_ok=True)  # the failed run may have removed it
        for path in redone_parts(stage_dir):
            remove(path)
        for path in aside.iterdir():
            path.rename(stage_dir / path.name)
        aside.rmdir()
        print(f"[main] stage {stage.value}: the redo failed; its earlier results are back in "
              f"{stage_dir}", file=sys.stderr)  # fmt: skip
        raise
    remove(aside)
