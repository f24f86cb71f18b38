"""LoRA and QLoRA training (`training.peft`), through the peft library.

The policy pi_{t-1} is frozen (QLoRA: loaded in 4 bits by bitsandbytes) and a LoRA adapter is
trained on it. pi_ref is the same weights with the adapter switched off, so no second copy of
the model exists. At the end of the iteration the adapter is saved on its own (`train/adapter/`,
a few MB) and merged into the unquantised weights of pi_{t-1} in the training dtype
(`train/checkpoint/`): the next iteration's generation, ranking, eval and training read a whole
model, exactly as after full-weight training.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from src.config import Config, Peft
from src.core.errors import EnvironmentFailure, StageError
from src.core.policy import ADAPTER_CONFIG, adapter_base, causal_lm

if TYPE_CHECKING:  # torch loads where a worker runs, not in the launcher that imports these
    import torch


def require_qlora_support() -> None:
    """A 4-bit base needs a CUDA device and bitsandbytes, checked before any model loads."""
    import torch

    if not torch.cuda.is_available():
        raise EnvironmentFailure(
            "training.peft=qlora: no CUDA device is visible to this process (bitsandbytes' "
            "4-bit layers run on GPUs); train a LoRA adapter on full weights instead",
            fix="training.peft=lora",
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise EnvironmentFailure(
            "training.peft=qlora needs bitsandbytes, which is not installed: pip install '.[qlora]'"
        ) from None


def quantization(cfg: Config, dtype: torch.dtype) -> dict:
    """`from_pretrained` arguments of the base under QLoRA: 4-bit NF4 with double quantisation
    (the QLoRA paper's setting), computing in the training dtype, on this process's GPU."""
    import torch

    if cfg.training.peft != Peft.qlora:
        return {}
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        ),
        "device_map": {"": torch.cuda.current_device()},
    }


def add_adapter(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """`model` frozen, with a fresh LoRA adapter on `training.lora.target_modules`."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = cfg.training.lora
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    unmatched = [t for t in lora.target_modules if not any(_names(n, t) for n in linear)]
    if unmatched:
        known = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise StageError(
            f"training.lora.target_modules: {unmatched} match no linear layer of "
            f"{cfg.run.init_policy} (its linear layers: {known})"
        )
    if cfg.training.peft == Peft.qlora:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(cfg.training.seed)  # A's random initialisation: the same adapter every run
    with _peft_quietly():
        return get_peft_model(model, config)


@contextlib.contextmanager
def _peft_quietly():
    """peft 0.21 wraps a model asking transformers a question transformers 5 renamed: a
    FutureWarning on every run that the user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        yield


def _names(module_name: str, target: str) -> bool:
    """peft's rule: a target is a module name's last component(s), or a full-match regex."""
    return (
        module_name == target
        or module_name.endswith("." + target)
        or bool(re.fullmatch(target, module_name))
    )


def peft_model(model: torch.nn.Module):
    """The PeftModel inside a DDP module or a DeepSpeed engine, or None (full weights)."""
    from peft import PeftModel

    while not isinstance(model, PeftModel):
        if not hasattr(model, "module"):
            return None
        model = model.module
    return model


def adapter_off(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """pi_ref: within it, `model` (wrapped or not) computes with its adapter switched off."""
    inner = peft_model(model)
    return inner.disable_adapter() if inner is not None else contextlib.nullcontext()


def require_adapter_base(adapter_dir: Path, base: str) -> None:
    """An adapter trained on another base than `base` (pi_{t-1}) is refused, on one line."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise StageError(
            f"{adapter_dir}: holds no LoRA adapter ({ADAPTER_CONFIG} missing) although "
            "training.peft is lora / qlora"
        )
    recorded = adapter_base(Path(adapter_dir))
    if not _same_model(recorded, base):
        raise StageError(
            f"{path}: a LoRA adapter of the base {recorded!r}, but this iteration's base "
            f"(pi_t-1) is {base!r}"
        )


def _same_model(a: str | None, b: str) -> bool:
    if a == b:
        return True
    try:
        return a is not None and Path(a).resolve() == Path(b).resolve() and Path(b).exists()
    except OSError:
        return False


def merge(cfg: Config, adapter_dir: Path, out_dir: Path, dtype: torch.dtype, tokenizer) -> None:
    """pi_t as a whole model: pi_{t-1} loaded unquantised in `dtype` on the CPU (QLoRA's too: the
    adapter goes onto the weights that were quantised, not onto their 4-bit approximation),
    the adapter added into its weights, saved like a full-weight checkpoint."""
    from peft import PeftModel

    require_adapter_base(adapter_dir, cfg.run.init_policy)
    model = causal_lm(cfg.run.init_policy, dtype, **cfg.model.loading)
    with _peft_quietly():
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def outside_zero3(args) -> Iterator[None]:
    """Under ZeRO-3, transformers partitions every model it loads across the ranks, collectively;
    the merge loads pi_{t-1} whole on rank 0 alone, so ZeRO-3 is set aside meanwhile."""
    from transformers.integrations.deepspeed import (
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if getattr(args, "hf_deepspeed_config", None) is not None:
            set_hf_deepspeed_config(args.hf_deepspeed_config)
