"""The one entry point: `python -m src.main [group=option ...] [key=value ...]`.

Composes conf/config.yaml with Hydra, validates it against the typed schemas (src/config.py)
before any work, prepares the run directory, saves the resolved config there and calls the
stage function(s). A bad config ends with one line on stderr naming the key, and exit code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from src.artifacts import atomic_write_text
from src.config import (
    Config,
    ConfigError,
    Stage,
    allowed_keys,
    describe_omegaconf_error,
    to_yaml,
    validate,
)
from src.errors import StageError

EXIT_STAGE_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_STAGE_UNAVAILABLE = 3

# Stage name -> the module whose `run(cfg: Config)` performs it, in pipeline order.
STAGE_MODULES = {
    Stage.generate: "src.generation",
    Stage.rank: "src.ranking",
    Stage.pairs: "src.pairs",
    Stage.train: "src.training",
    Stage.eval: "src.evaluation",
}
# What `stage=all` runs; eval joins when its stage exists and is configured.
PIPELINE = (Stage.generate, Stage.rank, Stage.pairs, Stage.train)


class StageUnavailable(RuntimeError):
    """The requested stage is not part of this version of the project."""


def load_stage(stage: Stage) -> Callable[[Config], object]:
    module_name = STAGE_MODULES[stage]
    if importlib.util.find_spec(module_name) is None:
        path = module_name.replace(".", "/") + ".py"
        raise StageUnavailable(
            f"stage '{stage.value}' is not implemented in this version: {path} does not exist, "
            "so nothing was run"
        )
    run = getattr(importlib.import_module(module_name), "run", None)
    if not callable(run):
        raise StageUnavailable(
            f"stage '{stage.value}' is not implemented in this version: {module_name} has no "
            "run(cfg), so nothing was run"
        )
    return run


def prepare_run_dir(cfg: Config, stages: list[Stage], command: str) -> None:
    """Create the iteration directory and save the resolved config beside each stage's output."""
    text = f"# {command}\n{to_yaml(cfg)}"
    for stage in stages:
        atomic_write_text(cfg.stage_dir(stage) / "config.yaml", text)


def ensure_tiny_models(cfg: Config) -> None:
    """Build the tiny models this config points at (cached; seconds on first use)."""
    tiny_dir = Path(cfg.paths.tiny_dir)
    wanted = [Path(p) for p in (cfg.model.path, cfg.ranker.model) if Path(p).parent == tiny_dir]
    if wanted:
        from src import tiny  # torch and transformers load only when tiny models are used

        for path in wanted:
            if path.name in tiny.TINY_NAMES:
                tiny.ensure(path.name, tiny_dir)


def dispatch(cfg: Config, command: str) -> None:
    stages = list(PIPELINE) if cfg.stage == Stage.all else [cfg.stage]
    runners = [load_stage(s) for s in stages]  # every stage must exist before any work starts
    prepare_run_dir(cfg, stages, command)
    ensure_tiny_models(cfg)
    print(f"[main] iteration {cfg.iter} of {cfg.run.dir}", file=sys.stderr)
    print(f"[main] policy pi_{cfg.iter - 1}: {cfg.run.init_policy}", file=sys.stderr)
    for stage, run in zip(stages, runners, strict=True):
        print(f"[main] stage {stage.value} -> {cfg.stage_dir(stage)}", file=sys.stderr)
        run(cfg)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(raw: DictConfig) -> None:
    # Errors we expect end the process here: a SystemExit passes through Hydra untouched,
    # where an exception would be logged by Hydra first, over several lines.
    try:
        cfg = validate(raw)
    except ConfigError as exc:
        _fail(f"config error: {exc}", EXIT_CONFIG_ERROR)
    command = " ".join(["python -m src.main", *HydraConfig.get().overrides.task])
    try:
        dispatch(cfg, command)
    except StageUnavailable as exc:
        _fail(f"error: {exc}", EXIT_STAGE_UNAVAILABLE)
    except StageError as exc:
        _fail(f"error: {exc}", EXIT_STAGE_ERROR)


def _fail(message: str, code: int) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(code)


def describe_hydra_error(exc: Exception) -> str:
    """Hydra's multi-line composition errors, as one line that names the key and the choices."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        return (
            f"{group}={option}: no such option in config group '{group}'; "
            f"choose one of: {', '.join(sorted(exc.options))}"
        )
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override '{exc.override}': {exc.message.splitlines()[0]}"
    unknown = re.match(r"Could not override '([^']+)'", str(exc))
    if unknown and "not in struct" in str(exc.__cause__ or ""):
        key = unknown.group(1)
        parent, _, leaf = key.rpartition(".")
        keys = allowed_keys(parent)
        if keys and leaf in keys:  # a known key under a node this composition leaves null
            return f"cannot set '{key}': '{parent}' is null with the options chosen (e.g. hardware.slurm needs hardware=slurm-*)"
        accepted = f"; {parent or 'the top level'} accepts: {', '.join(keys)}" if keys else ""
        return f"unknown config key '{key}'{accepted}"
    if isinstance(exc, OmegaConfBaseException):
        return describe_omegaconf_error(exc)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ else ""
    return " ".join(filter(None, [lines[0] if lines else type(exc).__name__, cause]))


def main() -> None:
    # `--cfg job` prints the config; show it resolved (the iteration's split, the previous
    # checkpoint), which is what a user checks before launching.
    args = sys.argv[1:]
    shows_job = any(
        a in ("--cfg", "-c") and b in ("job", "all") for a, b in zip(args, args[1:], strict=False)
    )
    if shows_job and "--resolve" not in args:
        sys.argv.append("--resolve")
    # Hydra prints its errors over several lines plus a hint; let them reach us instead,
    # unless the user asked for Hydra's full traceback themselves.
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as exc:
        if wants_traceback:
            raise
        _fail(f"config error: {describe_hydra_error(exc)}", EXIT_CONFIG_ERROR)


if __name__ == "__main__":
    main()
