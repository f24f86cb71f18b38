"""Download the hub assets of a run into the Hub cache, with huggingface_hub's own download.

One `snapshot_download` per repository at the config's revision: resumable (a re-run picks up
where an interrupted one stopped), the token from the usual places (`HF_TOKEN`, `hf auth login`),
the files limited to what the run reads (`cache.wanted_files`: a model's weights in one format, a
dataset's named files). huggingface_hub records the commit's full file listing beside it
(`trees/<commit>.json`), which the offline check reads. An llm-blender ranker's backbone is read
from the ranker's config once the ranker is here, and fetched next. A leaderboard dataset with
data.leaderboard set goes to its folder there (`local_dir`: `hf download --local-dir`'s layout).
Where that cannot be written (a shared cache mounted read-only), an asset already whole is kept as
it is and one that is not ends the fetch, the place named.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from pathlib import Path

from src.assets.asset import Asset
from src.assets.cache import cached_bytes, damaged_files, folder_bytes, hub_damage, wanted_files
from src.assets.listing import Listed, ranker_backbone
from src.core.errors import EnvironmentFailure
from src.core.hub import writable


class FetchFailed(EnvironmentFailure):
    """The Hub refused or could not be reached; what was fetched before is kept."""


def fetch_all(listed: list[Listed], hub_cache: str) -> list[Asset]:
    """Fetch every hub asset of `listed` (a ranker's backbone after it); returns them in order."""
    queue = [entry.asset for entry in listed if entry.asset.on_hub]
    done: list[Asset] = []
    while queue:
        asset = queue.pop(0)
        if asset in done:
            continue
        fetch_one(asset, hub_cache)
        done.append(asset)
        if asset.kind == "ranker":
            backbone = ranker_backbone(asset, hub_cache)
            if backbone is not None:
                queue.insert(0, Asset("model", backbone))
    return done


def fetch_one(asset: Asset, hub_cache: str) -> None:
    """One repository's files the run reads, into the Hub cache."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    target = Path(asset.local_dir or hub_cache)
    if not writable(target):
        whole = target.is_dir() if asset.local_dir else hub_damage(asset, hub_cache) is None
        if not whole:
            raise FetchFailed(
                f"cannot fetch {asset.source}: {target} cannot be written here (mounted "
                "read-only?): fetch where it can be, a login node"
            )
        print(f"[assets] {asset.label()}: here, in {target}, which cannot be written here: "
              "kept as it is", file=sys.stderr, flush=True)  # fmt: skip
        return
    started = time.time()
    print(f"[assets] fetching {asset.label()} ...", file=sys.stderr, flush=True)
    for path, why in damaged_files(asset, hub_cache):
        blob = path.resolve()  # the snapshot's link and the blob it points to: both go
        path.unlink()
        blob.unlink(missing_ok=True)
        print(f"[assets] {asset.source}: {why}: fetched again", file=sys.stderr, flush=True)
    try:
        names = HfApi().list_repo_files(
            asset.source, repo_type=asset.repo_type, revision=asset.revision
        )
        files = wanted_files(asset, names)
        if asset.files and len(files) < len(asset.files):
            absent = sorted(set(asset.files) - set(files))
            raise FetchFailed(f"{asset.source} has no file {absent[0]}")
        folder = snapshot_download(
            asset.source,
            repo_type=asset.repo_type,
            revision=asset.revision,
            cache_dir=hub_cache,
            local_dir=asset.local_dir,
            allow_patterns=[glob_escape(f) for f in files],
        )
    except OfflineModeIsEnabled:
        raise FetchFailed(
            f"cannot fetch {asset.source}: the Hub is offline here (HF_HUB_OFFLINE): fetch on a "
            "machine that reaches it (a login node), into a cache the nodes share"
        ) from None
    except transport_errors() as err:  # no answer at all: the network, a proxy, DNS, a timeout
        said = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FetchFailed(
            f"cannot fetch {asset.source}: the Hub ({hub_endpoint()}) did not answer ({said}): "
            "check the network and its proxy (HTTPS_PROXY), or fetch on a machine that reaches it"
        ) from None
    except (HfHubHTTPError, OSError) as err:
        said = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FetchFailed(f"cannot fetch {asset.source}: {said}") from None
    local = Path(asset.local_dir) if asset.local_dir is not None else None
    size = folder_bytes(local) if local is not None else cached_bytes(asset, hub_cache) or 0
    print(
        f"[assets] {asset.source}: {len(files)} files, {size / 1e9:.2f} GB in {folder} "
        f"({time.time() - started:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def transport_errors() -> tuple[type[BaseException], ...]:
    """The errors of the HTTP client huggingface_hub calls the Hub with when no answer comes
    (httpx2 for huggingface_hub 2, httpx before): a refused connection, DNS, a timeout."""
    found = []
    for client in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(client).TransportError)
    return tuple(found)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def glob_escape(name: str) -> str:
    """A file name as an fnmatch pattern that matches it alone (allow_patterns are patterns)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
