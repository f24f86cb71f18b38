"""Where an asset is on this machine, and whether it is whole, read without the network.

A hub asset lives in the Hub cache (`paths.hub_cache`, huggingface_hub's `HF_HUB_CACHE`) as
huggingface_hub lays it out: `<repo folder>/snapshots/<commit>/<files>` linked to `blobs/`, the
branch a revision names in `refs/`, and, for a repository fetched by `snapshot_download`, the
commit's full file listing with every file's size and hashes in `trees/<commit>.json` (its
documented format 1). Of that listing the files `wanted_files` picks are what a fetch downloads
and what a check expects: each present, each of its recorded size; `verify` also hashes each
against the listing (sha256 for LFS files, git's blob id for the others). Without a listing (a
cache filled by other means) the check reads what loading reads: a model's config, its weight
index and every shard it names, each safetensors file's header against its size; a dataset's
files of each split; a ranker's config and weights; a local data folder's required files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

from src.assets.asset import Asset
from src.core.hub import snapshot_folder, split_files
from src.core.policy import model_folder_damage, safetensors_damage

# Weights for other frameworks (TF, Flax, ONNX, GGUF, Core ML, OpenVINO): never read. PyTorch's
# .bin/.pt/.pth weights: not fetched when the repository holds safetensors, which transformers
# and vLLM read first. Every safetensors file is kept: offline, vLLM asks huggingface_hub for
# all of a repository's `*.safetensors` (a consolidated copy too) and refuses a snapshot that
# lacks one.
OTHER_FORMATS = (
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.onnx_data",
    "*.ot",
    "*.gguf",
    "*.tflite",
    "*.mlmodel",
    "onnx/*",
    "coreml/*",
    "openvino/*",
)
TORCH_WEIGHTS = ("*.bin", "*.pt", "*.pth")
TREE_FORMAT = 1  # the version of huggingface_hub's trees/<commit>.json this reads
HASH_BLOCK = 1 << 24


def wanted_files(asset: Asset, names: list[str]) -> list[str]:
    """Of a repository's files, those a run reads: a dataset's named files (or all of it); a
    model's or ranker's files less the weights' other formats."""
    if asset.kind == "dataset":
        return sorted(n for n in names if not asset.files or n in asset.files)
    skip = OTHER_FORMATS
    if any(n.endswith(".safetensors") for n in names):
        skip += TORCH_WEIGHTS
    return sorted(n for n in names if not any(fnmatch.fnmatch(n, p) for p in skip))


def repo_folder(asset: Asset, hub_cache: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return Path(hub_cache) / repo_folder_name(repo_id=asset.source, repo_type=asset.repo_type)


def cached_folder(asset: Asset, hub_cache: str | None = None) -> Path | None:
    """The snapshot folder of a hub asset at its revision, or None when it is not in the cache.
    An llm-blender ranker may also be where llm-blender downloads one itself: <hub_cache>/<id>."""
    from huggingface_hub import constants

    cache = hub_cache or constants.HF_HUB_CACHE
    folder = snapshot_folder(asset.source, asset.repo_type, asset.revision, cache)
    own = Path(cache) / asset.source
    if folder is None and asset.kind == "ranker" and (own / "config.json").is_file():
        return own
    return folder


def tree_listing(asset: Asset, folder: Path, hub_cache: str) -> dict[str, dict] | None:
    """The repository's files at the snapshot's commit as huggingface_hub recorded them when it
    downloaded them (path -> size, blob_id, lfs_sha256), or None when it recorded none."""
    path = repo_folder(asset, hub_cache) / "trees" / f"{folder.name}.json"
    try:
        listing = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(listing, dict) or listing.get("format_version") != TREE_FORMAT:
        return None
    files = listing.get("files")
    return files if isinstance(files, dict) else None


def cached_bytes(asset: Asset, hub_cache: str) -> int | None:
    """The bytes of the asset's files in the cache, or None when it is not there."""
    folder = cached_folder(asset, hub_cache)
    return None if folder is None else folder_bytes(folder)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def hub_damage(asset: Asset, hub_cache: str, verify: bool = False) -> str | None:
    """Why the hub asset is not usable from the cache (None: it is)."""
    folder = cached_folder(asset, hub_cache)
    if folder is None:
        return f"not in the Hub cache {hub_cache}"
    listing = tree_listing(asset, folder, hub_cache)
    if listing is not None:
        expected = wanted_files(asset, list(listing))
        if asset.files:
            absent = sorted(set(asset.files) - set(listing))
            if absent:
                return f"the repository has no {absent[0]}"
        for name in expected:
            why = file_damage(folder / name, listing[name], verify)
            if why:
                return f"{name} {why}"
    return structure_damage(asset, folder)


def damaged_files(asset: Asset, hub_cache: str) -> list[tuple[Path, str]]:
    """The files of the asset's cached snapshot that are there but not the Hub's (a size other
    than the recorded one), each with why: what a fetch must download again, as
    huggingface_hub keeps a file it finds in the snapshot whatever its size."""
    folder = cached_folder(asset, hub_cache)
    listing = None if folder is None else tree_listing(asset, folder, hub_cache)
    if listing is None:
        return []
    found = []
    for name in wanted_files(asset, list(listing)):
        path = folder / name
        why = file_damage(path, listing[name], verify=False)
        if why and path.is_file():
            found.append((path, f"{name} {why}"))
    return found


def file_damage(path: Path, entry: dict, verify: bool) -> str | None:
    """Why one file of a snapshot is not the one the listing records."""
    if not path.is_file():
        return "is missing"
    size, recorded = path.stat().st_size, entry.get("lfs_size") or entry.get("size")
    if recorded is not None and size != recorded:
        return f"has {size} bytes where the Hub has {recorded} (cut short or replaced)"
    if verify:
        lfs = entry.get("lfs_sha256")
        digest = hashlib.sha256() if lfs else hashlib.sha1(f"blob {size}\0".encode())
        with path.open("rb") as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
        if digest.hexdigest() != (lfs or entry.get("blob_id")):
            return "is not the Hub's file (its content differs)"
    return None


def structure_damage(asset: Asset, folder: Path) -> str | None:
    """Why the files in `folder` cannot be loaded as the asset's kind, read as loading reads them."""
    if asset.kind == "model":
        return model_folder_damage(folder) or index_damage(folder)
    if asset.kind == "ranker":
        return ranker_damage(folder)
    if asset.kind == "dataset":
        return dataset_damage(asset, folder)
    if asset.kind == "folder":
        return files_missing(asset, folder)
    return None


def files_missing(asset: Asset, folder: Path) -> str | None:
    """The first of the asset's `files` (or folders: Arena-Hard's answers' while its questions
    cannot be read) that `folder` lacks."""
    missing = sorted(f for f in asset.files if not (folder / f).exists())
    return f"{missing[0]} is missing" if missing else None


def index_damage(folder: Path) -> str | None:
    """A sharded model's index names every shard: each must be there."""
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is not a weight index (no weight_map)"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"{missing[0]} is missing ({index.name} names it)"
    return None


def ranker_damage(folder: Path) -> str | None:
    """An llm-blender ranker: its RankerConfig as config.json, weights beside it."""
    try:
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return "has no config.json (llm-blender's RankerConfig)"
    except ValueError as err:
        return f"config.json is not valid JSON ({err})"
    weights = folder / "model.safetensors"
    if weights.is_file():
        why = safetensors_damage(weights)
        return f"model.safetensors {why}" if why else None
    if not (folder / "pytorch_model.bin").is_file():
        return "has no weights (model.safetensors or pytorch_model.bin)"
    return None


def dataset_damage(asset: Asset, folder: Path) -> str | None:
    """A dataset's splits as `datasets` resolves them in the folder, each file readable."""
    if asset.files:
        return files_missing(asset, folder)
    try:
        files = split_files(folder)
    except Exception as err:  # datasets raises many kinds; the message is what matters
        return f"is not a dataset `datasets` can read ({str(err).splitlines()[0]})"
    for split in asset.splits:
        if split not in files:
            return f"has no split {split!r} (its splits: {', '.join(files) or 'none'})"
        for path in files[split]:
            why = data_file_damage(Path(path))
            if why:
                return f"{Path(path).relative_to(folder)} {why}"
    return None


def data_file_damage(path: Path) -> str | None:
    """A parquet file ends with its footer: a file cut short has none."""
    if not path.is_file():
        return "is missing"
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            pq.ParquetFile(path)
        except (pyarrow.ArrowException, OSError) as err:
            return f"is not readable parquet ({err})"
    return None
