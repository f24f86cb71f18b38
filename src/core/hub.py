"""The Hugging Face Hub's download cache, read without the network: where a repository fetched
into it (`python -m src.assets fetch`, or any huggingface_hub download) lies; and the `datasets`
cache beside it, moved to a folder of this user's where it cannot be written (`datasets_config`).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

# What a source that may be a Hub repository looks like (owner/name), beside a path of this
# machine that does not exist: the callers rule out what else it may be
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def snapshot_folder(
    repo_id: str,
    repo_type: str = "model",
    revision: str | None = None,
    hub_cache: str | None = None,
) -> Path | None:
    """The snapshot folder of a hub repository at `revision` in the Hub cache, or None when the
    cache has none: the commit `refs/<revision>` names (or the revision itself, a commit), as
    huggingface_hub resolves it offline. Whether the folder holds every file is `hub_damage`'s
    to say: huggingface_hub's own offline lookup refuses a snapshot that lacks any file of the
    repository, where a fetch leaves out the weights' other formats."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.file_download import REGEX_COMMIT_HASH, repo_folder_name

    try:
        storage = Path(hub_cache or constants.HF_HUB_CACHE) / repo_folder_name(
            repo_id=repo_id, repo_type=repo_type
        )
    except HFValidationError:  # not a hub id at all
        return None
    commit = revision or "main"
    if not REGEX_COMMIT_HASH.fullmatch(commit):
        try:
            commit = (storage / "refs" / commit).read_text().strip()
        except OSError:
            return None
    folder = storage / "snapshots" / commit
    return folder if folder.is_dir() else None


def datasets_config():
    """`datasets.config`, its cache (HF_DATASETS_CACHE, else $HF_HOME/datasets) moved to a folder
    of this user's when this process cannot write there: a shared Hugging Face home mounted
    read-only, as a cluster's nodes mount one, is read whole, but `datasets` takes a lock and
    writes its Arrow tables beside the cache even to load a snapshot of the Hub cache. Said once
    on stderr; the processes this one starts inherit the move (HF_DATASETS_CACHE)."""
    import datasets.config as config

    cache = Path(config.HF_DATASETS_CACHE)
    if writable(cache):
        return config
    own = next((p for p in own_caches() if writable(p)), None)
    if own is None:  # nowhere of this user's: the load says what it could not write
        return config
    print(f"[datasets] {cache} cannot be written here: its cache (the locks it takes and the "
          f"tables it builds) is {own}", file=sys.stderr)  # fmt: skip
    config.HF_DATASETS_CACHE = own
    config.DOWNLOADED_DATASETS_PATH = own / config.DOWNLOADED_DATASETS_DIR
    config.EXTRACTED_DATASETS_PATH = config.DOWNLOADED_DATASETS_PATH / config.EXTRACTED_DATASETS_DIR
    os.environ["HF_DATASETS_CACHE"] = str(own)
    return config


def split_files(folder: Path) -> dict[str, list[str]]:
    """The files `datasets` reads for each split of the dataset in `folder` (a snapshot of the
    Hub cache); raises what `datasets` raises for a folder it cannot read."""
    import datasets  # lazy: about a second, and only hub datasets need it

    datasets_config()
    return dict(datasets.load_dataset_builder(str(folder)).config.data_files or {})


def own_caches() -> list[Path]:
    """This user's folders for `datasets`' cache, in order of preference."""
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return [
        Path(home) / "selfplay-lab" / "datasets",
        Path(tempfile.gettempdir()) / f"selfplay-lab-{os.getuid()}" / "datasets",
    ]


def writable(folder: Path) -> bool:
    """Whether this process may create files in `folder`, or create it: its nearest existing
    ancestor decides (a read-only mount refuses root too)."""
    existing = folder.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
