"""The one place that makes llm-blender 0.0.2 work on transformers 5, and loads PairRM.

llm-blender 0.0.2 (its only release) was written for transformers 4 and uses two names that
transformers 5 removed. We restore exactly those two, before llm_blender is first imported:

- `transformers.utils.hub.TRANSFORMERS_CACHE`, imported at module load by llm_blender.blender.
  It was an alias of the hub cache directory, so it becomes huggingface_hub's HF_HUB_CACHE.
- `PreTrainedTokenizerBase.batch_encode_plus`, called by the pair-ranker collator at rank
  time. It was the batched form of `__call__`, so it becomes a thin alias of `__call__`.

Everything else in llm-blender runs unchanged. Import it only through `import_llm_blender()`,
which also keeps it from importing vLLM: llm_blender.blender imports vLLM wherever it is
installed, for a generation helper that ranking never calls, and that import costs each stage
that ranks or judges ~1 s of CPU (vLLM brings in torch's compiler).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from huggingface_hub import constants as hub_constants

from src.core.errors import EnvironmentFailure, StageError

PAIRRM_HUB_ID = "llm-blender/PairRM"


class PairRMLoadError(StageError):
    """A ranker could not be loaded; the message says what to pass instead."""


class PairRMUnreachable(PairRMLoadError, EnvironmentFailure):
    """A ranker hub id that cannot be fetched: the Hub is offline or unreachable."""


def _batch_encode_plus(self, batch_text_or_text_pairs, *args: Any, **kwargs: Any):
    return self(batch_text_or_text_pairs, *args, **kwargs)


def import_llm_blender() -> ModuleType:
    """Restore the two transformers-4 names llm-blender needs, then import it without vLLM
    (idempotent)."""
    import transformers.utils.hub as hf_hub_utils
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    if not hasattr(hf_hub_utils, "TRANSFORMERS_CACHE"):
        hf_hub_utils.TRANSFORMERS_CACHE = hub_constants.HF_HUB_CACHE
    if not hasattr(PreTrainedTokenizerBase, "batch_encode_plus"):
        PreTrainedTokenizerBase.batch_encode_plus = _batch_encode_plus
    hidden = "vllm" not in sys.modules  # a process that has vLLM already lends it, at no cost
    if hidden:
        sys.modules["vllm"] = None  # `import vllm` raises ImportError: llm-blender goes without
    try:
        return importlib.import_module("llm_blender")
    finally:
        if hidden:
            del sys.modules["vllm"]


def _cannot_fetch(path_or_id: str, why: str) -> str:
    return (
        f"cannot load the ranker {path_or_id!r}: it is not a local directory and the Hugging "
        f"Face Hub {why}. A hub id such as {PAIRRM_HUB_ID!r} cannot be fetched offline: pass "
        "a local ranker directory instead (for tests, the tiny PairRM that "
        "`python -m src.tiny tiny-pairrm` builds)."
    )


def load_pairrm(path_or_id: str, device: str = "cpu", **kwargs: Any):
    """Load a pairwise ranker with `Blender.loadranker` and return the `llm_blender.Blender`.

    `path_or_id` is a local ranker folder (a RankerConfig `config.json` plus weights) or a hub
    id. When llm-blender cannot fetch a hub id it goes on and fails later with "reward model
    type ... not supported", which hides the cause; we raise PairRMLoadError instead.
    `kwargs` go to `loadranker` (RankerConfig fields, `cache_dir`).
    """
    llm_blender = import_llm_blender()
    # llm-blender looks for a hub id under cache_dir/<id> before trying to download it there; a
    # ranker fetched into the Hub cache (python -m src.assets fetch) is its snapshot folder
    cache_dir = Path(kwargs.get("cache_dir", hub_constants.HF_HUB_CACHE))
    if not Path(path_or_id).is_dir():
        from src.core.hub import snapshot_folder

        path_or_id = str(snapshot_folder(path_or_id, hub_cache=str(cache_dir)) or path_or_id)
    folder = Path(path_or_id) if Path(path_or_id).is_dir() else cache_dir / path_or_id
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise PairRMLoadError(
            f"{folder} has no config.json: a ranker folder holds llm-blender's RankerConfig "
            "as config.json beside the weights (model.safetensors or pytorch_model.bin)."
        )
    if not folder.is_dir() and hub_constants.is_offline_mode():
        raise PairRMUnreachable(_cannot_fetch(path_or_id, "is in offline mode (HF_HUB_OFFLINE)"))

    # Blender() warns on the root logger that no ranker is loaded yet: we load one next
    logging.disable(logging.WARNING)
    try:
        blender = llm_blender.Blender()
    finally:
        logging.disable(logging.NOTSET)
    try:
        with quiet_loading():
            blender.loadranker(str(path_or_id), device=device, **kwargs)
    except ValueError as err:
        if folder.is_dir() or "not supported" not in str(err):
            raise
        raise PairRMUnreachable(_cannot_fetch(path_or_id, "could not be reached")) from err
    return blender


@contextlib.contextmanager
def quiet_loading():
    """Silence what loading a ranker prints that no user can act on: dataclasses_json's
    RuntimeWarning for each RankerConfig field llm-blender leaves None, transformers' note on
    the embeddings resized for the 4 tokens llm-blender's collator adds and its weight-loading
    bar, and llm-blender's "Successfully loaded" lines (the rank stage says what it loaded, and
    in how long). An error still raises as it would."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="dataclasses_json")
            yield
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
