"""An asset: where something a run reads comes from (src/assets/listing.py says what each stage
reads, src/assets/cache.py where each one is here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.core.hub import HUB_ID


@dataclass(frozen=True)
class Asset:
    """Where something a run reads comes from."""

    # model: a transformers model (weights, config, tokenizer); ranker: an llm-blender ranker
    # (RankerConfig config.json + weights; its backbone is a model of its own); dataset: a hub
    # dataset (its `splits`) or a local prompt file; file: a local file; folder: a local folder
    # of which `files` are read, a copy of `hint` that nothing fetches; made: a checkpoint a
    # stage of this run makes
    kind: str
    source: str  # hub id, or a local path
    revision: str | None = None  # hub only: branch, tag or commit; None: main
    splits: tuple[str, ...] = ()  # dataset: the splits read
    # dataset: only these files of the repository (else all of it); folder: the files it must hold
    files: tuple[str, ...] = ()
    # dataset: the lm-eval tasks that read it (the leaderboard's): looked for, and checked, as
    # the eval stage looks for it (src.evaluation.leaderboard.absent)
    tasks: tuple[str, ...] = ()
    local_dir: str | None = None  # dataset: fetched into this folder, not the Hub cache
    hint: str = ""  # folder: what it is a copy of

    @property
    def on_hub(self) -> bool:
        """A hub id (not a path that exists here, nor one that looks like a path)."""
        local = Path(self.source).expanduser()
        return (
            self.kind not in ("made", "folder")
            and bool(HUB_ID.match(self.source))
            and not local.exists()
            and not self.source.startswith((".", "~", "/"))
        )

    @property
    def repo_type(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"

    def label(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        part = f" [{', '.join(self.splits)}]" if self.splits else ""
        files = f" ({', '.join(self.files)})" if self.files else ""
        more = f" and {len(self.tasks) - 1} more" if len(self.tasks) > 1 else ""
        tasks = f" (read by {self.tasks[0]}{more})" if self.tasks else ""
        return f"{self.kind} {self.source}{at}{part}{files}{tasks}"
