"""The policy every stage of iteration t starts from: pi_{t-1}, checked whole before it is loaded,
and the tokens that end its turn."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from src.core.artifacts import files_sha256
from src.core.errors import EnvironmentFailure, StageError

ADAPTER_CONFIG = "adapter_config.json"  # what peft saves beside a LoRA adapter's weights
CARD = "README.md"  # a checkpoint's model card: rewritten after training, so never sealed
# a tiny model's build record (src/tiny/models.py): where and how it was built, rewritten where
# its folder moves, so no part of the model
TINY_BUILD = "tiny_build.json"
# the files of a model folder a model is loaded from: weights, configs, tokenizer, chat template
MODEL_FILES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")


def require_loadable(path: str, revision: str | None, key: str = "model.path") -> None:
    """A local model folder must be whole; a hub id must be in the local cache when the Hub is
    offline (else from_pretrained fails after a long traceback). `key`: the setting that names
    it, for the messages."""
    if Path(path).is_dir():
        if (Path(path) / ADAPTER_CONFIG).is_file() and not (Path(path) / "config.json").is_file():
            base = adapter_base(Path(path))
            raise StageError(
                f"{key}={path}: a LoRA adapter (of the base {base!r}), not a whole model; "
                f"merge it into its base first (peft's merge_and_unload) and point {key} "
                "at the merged folder"
            )
        damage = model_folder_damage(Path(path))
        if damage:
            raise StageError(f"{key}={path}: {damage}")
        return
    if Path(path).is_absolute() or path.startswith((".", "~")) or Path(path).exists():
        raise StageError(f"{key}={path}: no such model folder")
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.is_offline_mode() and not isinstance(
        try_to_load_from_cache(path, "config.json", revision=revision), str
    ):
        raise EnvironmentFailure(
            f"{key}={path!r} is neither a local folder nor in the Hugging Face cache, and "
            "the Hub is offline (HF_HUB_OFFLINE=1): download it where the Hub is reachable "
            f"(`hf download {path}`), or point {key} at a local folder"
        )


# The JSON files of a model folder that loading reads (tokenizer.json: tens of MB, parsed in
# well under a second): one that is not JSON fails here, named, not deep inside transformers.
MODEL_JSON = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def model_folder_damage(folder: Path) -> str | None:
    """Why `folder` is not a whole model transformers can load (None: it is)."""
    if not (folder / "config.json").is_file():
        present = ", ".join(sorted(f.name for f in folder.iterdir())[:5]) or "nothing"
        return f"not a model folder: it has no config.json (it holds {present})"
    for name in MODEL_JSON:
        try:
            if (folder / name).is_file():
                json.loads((folder / name).read_bytes())
        except ValueError as err:
            return f"{name} is not valid JSON ({err}): the model is damaged"
    damage = checkpoint_damage(folder, {})
    return f"the model is damaged ({damage})" if damage else None


def adapter_base(folder: Path) -> str | None:
    """The base model a LoRA adapter folder names (peft's adapter_config.json)."""
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
        return config.get("base_model_name_or_path")
    except (ValueError, AttributeError):  # not JSON, or not an object
        raise StageError(f"{path}: unreadable (not the JSON object peft writes)") from None


def causal_lm(path: str, dtype, **settings):
    """The policy at `path` as a transformers causal LM; `settings`: more `from_pretrained`
    arguments — the model's own (`ModelConfig.loading`: attention kernel, remote code, revision)
    and any a caller adds."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **settings)


# --- a checkpoint saved whole ---------------------------------------------------------------------


def seal_checkpoint(folder: Path) -> dict[str, dict[str, int | str]]:
    """What the train stage's record keeps of its checkpoint: every file's size and sha256, by
    name (the model card aside: the eval stage writes it again)."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and f.name != CARD]
    digests = files_sha256(files)
    return {
        f"{folder.name}/{f.name}": {"bytes": f.stat().st_size, "sha256": digests[f]} for f in files
    }


def checkpoint_damage(folder: Path, outputs: dict) -> str | None:
    """Why the checkpoint in `folder` is not whole (a file missing, cut short, or with other
    content than `outputs` recorded when it was made; a safetensors file shorter than its
    header says), or None."""
    sealed = {}
    for name, seal in outputs.items():
        prefix, _, file = name.partition("/")
        if prefix != folder.name or "bytes" not in seal:
            continue
        if not (folder / file).is_file():
            return f"{file} is missing"
        size = (folder / file).stat().st_size
        if size != seal["bytes"]:
            return f"{file} has {size} bytes where training saved {seal['bytes']}"
        if "sha256" in seal:  # records of earlier versions kept sizes only
            sealed[folder / file] = seal["sha256"]
    for path, digest in files_sha256(sealed).items():
        if digest != sealed[path]:
            return f"{path.name} is not the file training saved (its content changed)"
    for weights in sorted(folder.glob("*.safetensors")):
        why = safetensors_damage(weights)
        if why:
            return f"{weights.name} {why}"
    return None


def safetensors_damage(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header of tensor offsets, then the
    data: it is whole when its size is where the last tensor ends. Read without loading it."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is cut short ({size} bytes)"
        (header_bytes,) = struct.unpack("<Q", head)
        if 8 + header_bytes > size:
            return f"is cut short ({size} bytes; its header alone is {header_bytes})"
        try:
            header = json.loads(f.read(header_bytes))
            ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        except (ValueError, AttributeError, KeyError, IndexError, TypeError):
            return "has an unreadable header"
    expected = 8 + header_bytes + max(ends, default=0)
    if size != expected:
        return (
            f"is cut short ({size} bytes of {expected})" if size < expected else "has extra bytes"
        )
    return None


def end_of_turn_ids(path: str, tokenizer) -> list[int]:
    """The ids that end the assistant's turn: the generation config's EOS list (Gemma: <eos> and
    <end_of_turn>), else the tokenizer's EOS."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # a checkpoint saved without generation_config.json
        eos = None
    eos = eos if eos is not None else tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def model_files(folder: Path) -> list[Path]:
    """The files a local model is loaded from (MODEL_FILES), in order; a tiny model's build record,
    rewritten where its folder moves, is none of them."""
    return [f for f in sorted(folder.iterdir())
            if f.is_file() and f.suffix in MODEL_FILES and f.name != TINY_BUILD]  # fmt: skip


def weights_signature(path: str, revision: str | None) -> str:
    """What identifies the model at `path`: for a local folder the content of the files it is
    loaded from (MODEL_FILES), by name — a retrained or rebuilt model gets new answers, a rebuilt
    judge new judgments, while a folder moved or copied (a clone renamed, a run copied to another
    clone) or files written again as they were keep theirs; for a hub id, the id and revision.
    A checkpoint's files were hashed as the stage checked it (`checkpoint_damage`): not read
    again."""
    folder = Path(path)
    if not folder.is_dir():
        return f"{path}@{revision or 'main'}"
    files = model_files(folder)
    digests = files_sha256(files)
    return hashlib.sha256(json.dumps([[f.name, digests[f]] for f in files]).encode()).hexdigest()
