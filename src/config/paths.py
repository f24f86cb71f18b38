"""`paths`: the directories (conf/paths/), and where runs live by default (`runs_root`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import SI

from src.config.checks import _check, check_one_line

RUNS_ENV, RUNS_DEFAULT = "SELFPLAY_RUNS", "runs"  # where runs live unless paths.root says


def runs_root() -> Path:
    """paths.root's default, for the commands that read runs without composing a config."""
    return Path(os.environ.get(RUNS_ENV) or RUNS_DEFAULT).resolve()


@dataclass
class PathsConfig:
    """Directories (conf/paths/). All absolute after resolution."""

    # run directories live under here: $SELFPLAY_RUNS, else runs/ (relative paths resolve
    # against the directory you launch from), e.g. paths.root=/scratch/$USER/runs
    root: str = SI(f"${{abspath:${{oc.env:{RUNS_ENV},{RUNS_DEFAULT}}}}}")
    data_dir: str = SI("${repo:data}")  # the project's own prompt files (data/prompts/)
    # cache of the locally built tiny models ($SELFPLAY_TINY_DIR, else .cache/tiny); `make tiny`
    # rebuilds them
    tiny_dir: str = SI("${abspath:${oc.env:SELFPLAY_TINY_DIR,${repo:.cache/tiny}}}")
    # the tiny copies of MT-Bench's and Arena-Hard's data (conf/data/tiny.yaml), written by the
    # first command that evaluates with them (src/tiny/benchmarks.py)
    tiny_benchmarks: str = SI("${paths.tiny_dir}/benchmarks")
    # the Hugging Face home ($HF_HOME, else ~/.cache/huggingface): SLURM jobs get it exported,
    # so that the nodes read the models and datasets `python -m src.assets fetch` put there
    hf_home: str = SI("${abspath:${oc.env:HF_HOME,'~/.cache/huggingface'}}")
    # the Hub's download cache ($HF_HUB_CACHE, else <hf_home>/hub), where huggingface_hub puts it
    hub_cache: str = SI("${abspath:${oc.env:HF_HUB_CACHE,${.hf_home}/hub}}")

    def __post_init__(self) -> None:
        # an empty folder would put what is written there at the file system's root (every run
        # directory at /, a tiny model at /tiny-mistral)
        for key, holds in FOLDERS.items():
            _check(
                getattr(self, key).strip() != "",
                f"paths.{key}",
                getattr(self, key),
                f"names no folder; set a folder for {holds}, or leave paths.{key} unset for its "
                f"default (`python -m src.explain paths.{key}` says what it is)",
            )
        check_one_line("paths.root", self.root)


# What each folder of `paths` holds, as the refusal of an empty one says it
FOLDERS = {
    "root": "the run directories, e.g. paths.root=/scratch/$USER/runs",
    "data_dir": "the project's prompt files",
    "tiny_dir": "the tiny models",
    "tiny_benchmarks": "the tiny benchmarks' data",
    "hf_home": "the Hugging Face home",
    "hub_cache": "the Hub's download cache",
}
