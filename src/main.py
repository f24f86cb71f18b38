"""The one entry point: `python -m src.main [group=option ...] [key=value ...]`.

Composes conf/config.yaml with Hydra and validates it against the typed schemas (src/config/)
before any work; then the scheduler plans each iteration from its records (src/schedule/), the
checks made before any stage follow the plans, cheapest first (src/assets/preflight.py: the
machine and the keys, then what the records refuse, then the rest), and the scheduler runs them.
A failure ends with one line on stderr and the exit code of src/core/errors.py
(src/config/cli.py): a bad config with 2, naming the key; `--cfg job` prints the validated
config, resolved.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.assets.preflight import preflight, require_machine_and_keys
from src.config import REPO_ROOT, Config, Device, compose_tree, validate
from src.config.cli import check_hydra_arguments, failures, hydra_raises, launcher_failure
from src.core import memory, preemption, threads
from src.core.errors import command_line
from src.schedule.plan import iterations, refuse
from src.schedule.run import dispatch

# What Ctrl-C or SIGTERM leaves: every stage resumes
INTERRUPTED = (
    "re-run the same command to resume from the finished chunks and the last Trainer checkpoint"
)


# conf/ by its absolute path: Hydra reads a relative one as a Python package (`pkg://conf`)
# unless this module runs as __main__, and src.main.main() may be called from other code
@hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "conf"), config_name="config")
def _hydra_main(raw: DictConfig) -> None:
    # The job's own overrides (one point of a multirun): what a fix is set on. Failures end the
    # process here: a SystemExit passes through Hydra untouched, where an exception would be
    # reported by Hydra first ("Error executing job ...").
    hydra_cfg = HydraConfig.get()
    # as written: each is a string node, which reading one by one would resolve (`${iter}`)
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    command = command_line("python -m src.main", overrides)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # a job of a local multirun (Hydra's basic launcher)
        SWEEP_DIRS.add(Path(hydra_cfg.sweep.dir))
    with failures(command, overrides, interrupted=INTERRUPTED):
        cfg = validate(raw)
        quiet_libraries(cfg)

        def config_for_iter(t: int) -> Config:
            return validate(OmegaConf.merge(raw, {"iter": t}))

        preemption.install()
        run(cfg, command, overrides, config_for_iter)


def run(
    cfg: Config,
    command: str,
    overrides: list[str],
    config_for_iter: Callable[[int], Config] | None = None,
) -> None:
    """A valid config's run: the iterations it runs, each planned once from its records; the
    checks made before any stage, cheapest first, before anything loads, is built or is written
    (src/assets/preflight.py): the machine and the keys, what the records refuse, the rest; then
    the stages, as planned."""
    plans = iterations(cfg, config_for_iter)
    require_machine_and_keys(plans)
    refuse(plans)
    preflight(plans, command, overrides)
    dispatch(plans, command)


def quiet_libraries(cfg: Config) -> None:
    """Lines libraries print that are not so here, silenced before they load (and in the
    training workers, which inherit the environment); a user's own setting wins. W&B's
    advertisement for its Weave tracer in every run of a process that imported an LLM client (a
    judged eval); DeepSpeed's warning, at every train stage on a CPU machine, that it found no
    GPU (named, it has nothing to look for)."""
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
    if cfg.hardware.device == Device.cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    threads.configure()  # before torch loads: OpenMP reads its settings once
    memory.pin_mmap_threshold()
    args = sys.argv[1:]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    command = command_line("python -m src.main", overrides)
    with failures(command, overrides, interrupted=INTERRUPTED):
        if any(a in ("--cfg", "-c") and b == "job" for a, b in zip(args, args[1:], strict=False)):
            print_job(overrides)
            return
        check_hydra_arguments(args, "python -m src.main")
        hydra_raises()
        try:
            _hydra_main()
        except Exception as exc:
            failure = launcher_failure(exc)
            if failure is None:
                raise
            raise failure from exc
        finally:
            remove_sweep_dirs()


# the hydra.sweep.dir of each job of a multirun this process ran itself
SWEEP_DIRS: set[Path] = set()


def remove_sweep_dirs() -> None:
    """A multirun run here (Hydra's basic launcher) leaves in hydra.sweep.dir only its
    multirun.yaml and a folder per job, empty (the stages write into their run directories):
    removed, and `multirun/` if nothing else is in it. The SLURM launcher's jobs run elsewhere,
    and its .submitit logs keep their folder."""
    for sweep in SWEEP_DIRS:
        left = [p for p in sweep.rglob("*") if p.is_file() and p != sweep / "multirun.yaml"]
        if sweep.is_dir() and not left:
            shutil.rmtree(sweep, ignore_errors=True)
            with contextlib.suppress(OSError):
                sweep.parent.rmdir()  # multirun/, when empty


def print_job(overrides: list[str]) -> None:
    """`--cfg job`: the config a run with these overrides would get, checked as a run checks it
    and resolved (the iteration's split, the previous checkpoint): what a user checks before
    launching, and in comments after it where each model, judge and file it reads resolves.
    (Hydra's own `--cfg job` prints without validating.)"""
    from src.assets.check import listed_for, where

    tree = compose_tree(overrides)
    cfg = validate(tree)
    print(OmegaConf.to_yaml(tree, resolve=True), end="")
    print(f"# what iteration {cfg.iter} reads besides its own outputs (python -m src.assets list):")
    for entry in listed_for([cfg]):
        print(f"# reads {entry.asset.label()}: {where(entry.asset, cfg)}")


if __name__ == "__main__":
    main()
