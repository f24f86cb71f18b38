"""The check a command runs before any work: every asset its stages read is here and whole.

`python -m src.main` runs it before the first stage (before any W&B run opens), `src.slurm` and
`src.sweep` for the whole chain before any script is written or job queued, and
`python -m src.assets check` on its own. It reads the Hub cache the run will read
(`paths.hub_cache`) with the network unused, and refuses with one line per missing or damaged
asset, each with the command that fetches it, then one line that ends it with exit 3 (the
environment's). Where the run may reach the Hub (`HF_HUB_OFFLINE` unset, and for SLURM jobs
`hardware.slurm.offline=false`), the hub assets are not checked: what the cache lacks, loading
downloads (huggingface_hub never leaves a file half-written in the cache).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from src.assets.asset import Asset
from src.assets.cache import cached_bytes, folder_bytes, hub_damage, structure_damage
from src.assets.listing import Listed, merged, needs, tiny_data
from src.config import Config
from src.core.errors import EnvironmentFailure, StageError
from src.tiny.names import TINY_NAMES

FETCH = "python -m src.assets fetch"


class AssetsMissing(EnvironmentFailure):
    """Assets a command reads are not on this machine (or damaged); the lines above it name each."""


def listed_for(configs: Sequence[Config], stages: dict[int, list] | None = None) -> list[Listed]:
    """Every asset the configs' iterations read, merged; `stages`: per iteration, the stages
    that will run (default: those each config's `stage=` runs)."""
    found = []
    for cfg in configs:
        found += needs(cfg, None if stages is None else stages.get(cfg.iter))
    return merged(found)


def damage(asset: Asset, cfg: Config, verify: bool = False, online: bool = False) -> str | None:
    """Why `asset` cannot be read by the run (None: it can). `online`: the run may download
    hub assets."""
    if asset.kind == "made":
        return None  # the stage that reads it checks it is finished and whole
    if asset.tasks:  # a leaderboard dataset: where the eval stage looks for it, or downloads it
        if online:
            return None
        return leaderboard_absence(asset, cfg) or (
            leaderboard_damage(asset, cfg) if verify else None
        )
    if asset.on_hub:  # online, the loading library downloads what the cache lacks
        return None if online else hub_damage(asset, cfg.paths.hub_cache, verify)
    path = Path(asset.source).expanduser()
    if is_tiny(path, cfg):
        return None  # built on demand
    if asset.kind in ("model", "ranker", "folder"):
        if not path.is_dir():
            return f"no such folder: {path}"
        why = structure_damage(asset, path)
        if why is None and asset.kind == "folder":  # a benchmark's data: read as the eval reads it
            from src.evaluation.benchmarks import folder_damage

            why = folder_damage(path, cfg)
        return why
    if not path.is_file():
        return f"no such file: {path}"
    return None


def leaderboard_absence(asset: Asset, cfg: Config) -> str | None:
    """Where a dataset the leaderboard's tasks read was looked for, as the eval stage looks
    (data.leaderboard's copy, the Hub cache's snapshot, the datasets cache), and not found."""
    from src.evaluation import leaderboard

    configs = leaderboard.datasets_read(asset.tasks)[asset.source]
    return leaderboard.absent(asset.source, configs, cfg.data.leaderboard, cfg.paths.hub_cache)


def leaderboard_damage(asset: Asset, cfg: Config) -> str | None:
    """Why the eval stage would stop on the leaderboard dataset found for `asset`'s tasks: each
    task built over it and every document read, as the stage does (`leaderboard.verify`)."""
    from src.evaluation import leaderboard
    from src.evaluation.errors import EvalError

    try:
        leaderboard.verify(asset.tasks, cfg.data.leaderboard)
    except (EvalError, EnvironmentFailure) as err:
        return str(err)
    return None


def is_tiny(path: Path, cfg: Config) -> bool:
    """A tiny model, or the tiny benchmarks' data: made by the command that reads it."""
    tiny_dir = Path(cfg.paths.tiny_dir)
    return (path.parent == tiny_dir and path.name in TINY_NAMES) or tiny_data(path, cfg)


def where(asset: Asset, cfg: Config) -> str:
    """Where the asset resolves and what of it is here, for the listing."""
    if asset.kind == "made":
        return "made by this run"
    if not asset.on_hub:
        path = Path(asset.source).expanduser()
        return "built on demand" if is_tiny(path, cfg) and not path.exists() else "local"
    if asset.local_dir is not None and Path(asset.local_dir).is_dir():
        return f"in {asset.local_dir}, {folder_bytes(Path(asset.local_dir)) / 1e9:.2f} GB"
    size = cached_bytes(asset, cfg.paths.hub_cache)
    if size is None and asset.tasks and leaderboard_absence(asset, cfg) is None:
        return "in the datasets cache (an earlier load's)"
    return "not in the cache" if size is None else f"in the cache, {size / 1e9:.2f} GB"


def fetch_command(fetch_args: Sequence[str], asset: Asset | None = None) -> str:
    """The command that fetches `asset` (None: every asset) of the run `fetch_args` describe: the
    iterations' options and the overrides, as `python -m src.assets` takes them."""
    only = ["--only", asset.source] if asset is not None else []
    return shlex.join([*FETCH.split(), *only, *fetch_args])


def require_assets(
    listed: list[Listed], cfg: Config, fetch_args: Sequence[str], online: bool, verify: bool = False
) -> None:
    """Refuse, with every missing or damaged asset named on a line of its own, before any work."""
    bad = []
    for entry in listed:
        why = damage(entry.asset, cfg, verify, online)
        if why:
            bad.append((entry, why))
    if not bad:
        return
    local = [entry for entry, _ in bad if not entry.asset.on_hub]
    for entry, why in bad:
        if len(bad) > 1:  # one alone is the line that ends the command
            print(
                f"missing: {entry.asset.label()} ({entry.used_by()}): {why}; "
                f"{fix(entry.asset, fetch_args)}",
                file=sys.stderr,
            )
    hub = len(bad) - len(local)
    advice = (
        f"the run reads the Hub cache alone (HF_HUB_OFFLINE): fetch "
        f"{'it' if len(bad) == 1 else 'them'} where the Hub is reachable (into "
        f"{cfg.paths.hub_cache}): "
        f"{fetch_command(fetch_args)}"
        if hub
        else f"point {'the key' if len(bad) == 1 else 'the keys named above'} at what exists"
    )
    if len(bad) == 1 and bad[0][0].asset.hint:
        advice = fix(bad[0][0].asset, fetch_args)  # what to copy there
    error = AssetsMissing if hub else StageError
    if len(bad) == 1:
        entry, why = bad[0]
        raise error(f"{entry.asset.label()} ({entry.used_by()}): {why}; {advice}")
    read = sum(entry.asset.kind != "made" for entry in listed)
    raise error(f"{len(bad)} of the {read} assets this command reads cannot be used; {advice}")


def fix(asset: Asset, fetch_args: Sequence[str]) -> str:
    """What makes a missing asset here: the fetch of a hub one, else the key pointed elsewhere
    (for a folder nothing fetches, at a copy of what)."""
    if asset.on_hub:
        return f"fetch: {fetch_command(fetch_args, asset)}"
    if asset.hint:
        return f"nothing fetches it: point the key at {asset.hint}"
    return "set the key to a file or folder that exists"
