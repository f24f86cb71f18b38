"""The Hugging Face Hub's download cache, read without the network: where a repository fetched
into it (`python -m src.assets fetch`, or any huggingface_hub download) lies."""

from __future__ import annotations

import re
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
