"""The one entry point: `python -m src.main [group=option ...] [key=value ...]`.

Composes conf/config.yaml with Hydra, validates it against the typed schemas (src/config.py)
before any work and hands it to the scheduler (src/schedule.py). A bad config ends with one line
on stderr naming the key, and exit code 2; `--cfg job` prints the validated config, resolved.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.config import (
    Config,
    ConfigError,
    compose_tree,
    describe_composition_error,
    validate,
)
from src.core import memory, preemption, threads
from src.core.errors import (
    EXIT_CONFIG_ERROR,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    StageError,
    describe,
    describe_os_error,
)
from src.schedule import dispatch

_WANTS_TRACEBACK = False  # HYDRA_FULL_ERROR=1: every failure keeps its traceback


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(raw: DictConfig) -> None:
    # Errors we expect end the process here: a SystemExit passes through Hydra untouched,
    # where an exception would be logged by Hydra first, over several lines.
    try:
        cfg = validate(raw)
    except ConfigError as exc:
        _fail(f"config error: {exc}", EXIT_CONFIG_ERROR)
    command = " ".join(["python -m src.main", *HydraConfig.get().overrides.task])

    def config_for_iter(t: int) -> Config:
        return validate(OmegaConf.merge(raw, {"iter": t}))

    preemption.install()
    try:
        dispatch(cfg, command, config_for_iter)
    except StageError as exc:
        _fail(describe(exc, command), exc.exit_code, exc)
    except OSError as exc:  # the file system refused (full, read-only, not permitted, ...)
        _fail(f"error: {describe_os_error(exc)}", EXIT_ENVIRONMENT, exc)


def _fail(message: str, code: int, exc: BaseException | None = None) -> NoReturn:
    if exc is not None and _WANTS_TRACEBACK:
        raise exc
    # a progress bar the failure interrupted would be drawn again at exit, after the message
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
    print(message, file=sys.stderr)
    sys.exit(code)


def main() -> None:
    threads.configure()  # before torch loads: OpenMP reads its settings once
    memory.pin_mmap_threshold()
    args = sys.argv[1:]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    if any(a in ("--cfg", "-c") and b == "job" for a, b in zip(args, args[1:], strict=False)):
        print_job(overrides)
        return
    # Hydra prints its errors over several lines plus a hint; let them reach us instead,
    # unless the user asked for Hydra's full traceback themselves.
    global _WANTS_TRACEBACK
    _WANTS_TRACEBACK = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException, AssertionError) as exc:
        message = describe_composition_error(exc, overrides)
        _fail(f"config error: {message}", EXIT_CONFIG_ERROR, exc)
    except KeyboardInterrupt as exc:
        _fail(
            "interrupted: stopped by Ctrl-C; re-run the same command to resume from the "
            "finished chunks and the last Trainer checkpoint",
            EXIT_INTERRUPTED,
            exc,
        )


def print_job(overrides: list[str]) -> None:
    """`--cfg job`: the config a run with these overrides would get, checked as a run checks it
    and resolved (the iteration's split, the previous checkpoint): what a user checks before
    launching. (Hydra's own `--cfg job` prints without validating.)"""
    try:
        tree = compose_tree(overrides)
        validate(tree)
    except ConfigError as exc:
        _fail(f"config error: {exc}", EXIT_CONFIG_ERROR, exc)
    print(OmegaConf.to_yaml(tree, resolve=True), end="")


if __name__ == "__main__":
    main()
