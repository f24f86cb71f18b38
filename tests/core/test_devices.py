"""What the stages know of the GPU (src/core/devices.py), on CPU: why CUDA is not usable, in one
line naming the driver; and the GPU's memory and dtype read without a CUDA context in the
stage's own process (the processes they start see a faked GPU: tests/conftest.py `fake_gpu`)."""

from __future__ import annotations

import pytest
import torch

from src.core.devices import device_for
from src.core.errors import StageError
from tests.support.helpers import compose_cfg


@pytest.fixture
def nvidia_smi(tmp_path, monkeypatch):
    """`nvidia_smi(driver)`: PATH holds an nvidia-smi that reports `driver` (None: none at all)."""

    def install(driver: str | None) -> None:
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        if driver is not None:
            tool = folder / "nvidia-smi"
            tool.write_text(f"#!/bin/sh\necho {driver}\n")
            tool.chmod(0o755)
        monkeypatch.setenv("PATH", str(folder))

    return install


@pytest.mark.parametrize(
    ("built_for", "driver", "said"),
    [
        ("13.0", "550.54.15", "the NVIDIA driver here is 550.54.15, older than the 580 that "
         "torch {torch} (CUDA 13.0) needs: update the driver"),
        ("12.8", "520.61.05", "older than the 525.60.13 that torch {torch} (CUDA 12.8) needs"),
        ("13.0", None, "no GPU is visible (no NVIDIA driver: nvidia-smi is not on PATH)"),
        (None, "580.65.06", "torch {torch} is a CPU build: on a GPU node `make install` installs"),
        ("13.0", "580.65.06", "torch sees no GPU (NVIDIA driver 580.65.06, "
         "CUDA_VISIBLE_DEVICES=''): check the GPUs this job was given"),
    ],
)  # fmt: skip
def test_a_gpu_stage_where_cuda_is_not_usable_says_why_in_one_line(
    nvidia_smi, monkeypatch, built_for, driver, said
):
    """torch 2.11 and vLLM 0.26 (the `cuda` set) are CUDA 13 builds: on a driver below 580 torch
    sees no GPU, and the stage names the driver and what it needs, not `hardware=cpu`."""
    nvidia_smi(driver)
    monkeypatch.setattr(torch.version, "cuda", built_for)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(StageError) as refused:
        device_for("cuda", "gpu-1")
    message = str(refused.value)
    assert refused.value.exit_code == 3  # the environment
    assert message.startswith("hardware=gpu-1 asks for CUDA, but ") and "\n" not in message
    assert said.format(torch=torch.__version__) in message


@pytest.mark.slow
def test_no_cuda_context_opens_in_the_stages_process_before_vllm_starts(fake_gpu):
    """What the plan's check, the sampling dtype and vLLM's KV-cache check read of the GPU comes
    from a process of its own: a context here would hold ~0.5 GB of the GPU for the stage's life,
    which vLLM's engine counts as taken, and make vLLM spawn its workers."""
    from src.config import ConfigError
    from src.generation.sampling import generation_dtype
    from src.generation.vllm_engine import refuse_unworkable
    from src.plan.stages import DoesNotFit, require_fit_here

    fake_gpu(free=3 * 2**30, total=24e9, bf16=True)
    cuda = torch.device("cuda")
    assert generation_dtype(cuda) == torch.bfloat16
    with pytest.raises(DoesNotFit, match=r"this GPU's memory=24 \(22.4 GiB\)"):
        require_fit_here(compose_cfg("stage=train"), ["stage=train"])
    cfg = compose_cfg("model=tiny-mistral", "generation=vllm", "generation.kv_cache_gb=4")
    with pytest.raises(ConfigError, match="more than the 3 GiB free on this machine's GPU"):
        refuse_unworkable(cfg.generation, cfg.model.path, cuda, torch.bfloat16, "generation")
