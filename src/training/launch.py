"""Training with more than one process: the stage relaunches itself under `accelerate launch`, one
worker per process (`python -m src.stages.train <stage_dir>/config.yaml`), and passes a
preemption request on to them through a stop file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from src.config import Config, Device, Distributed
from src.core import preemption
from src.core.artifacts import atomic_write_json, atomic_write_text
from src.core.errors import EXIT_ENVIRONMENT, EnvironmentFailure, StageError, describe_os_error
from src.training.arguments import TrainingError

WORKER_ENV = "SELFPLAY_TRAIN_WORKER"  # set in the processes `accelerate launch` starts


def preemption_stop_file(stage_dir: Path) -> Path:
    return stage_dir / "trainer" / "STOP"


def launch_command(cfg: Config, config_path: Path) -> list[str]:
    """`accelerate launch` for the hardware; DeepSpeed itself is configured by TrainingArguments
    (the one place its config comes from), so the launcher only starts the processes."""
    hw = cfg.hardware
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", str(hw.world_size), "--num_machines", str(hw.num_nodes)]
    if hw.num_nodes > 1:
        node_rank = os.environ.get("SLURM_NODEID", os.environ.get("NODE_RANK"))
        master = os.environ.get("MASTER_ADDR")
        if node_rank is None or master is None:
            raise TrainingError(
                f"hardware.num_nodes={hw.num_nodes}: set MASTER_ADDR and NODE_RANK (SLURM sets "
                "SLURM_NODEID), one launcher per node"
            )
        cmd += ["--machine_rank", node_rank, "--main_process_ip", master]
        cmd += [
            "--main_process_port",
            os.environ.get("MASTER_PORT", "29500"),
            "--rdzv_backend",
            "c10d",
        ]
    return [*cmd, "-m", "src.stages.train", str(config_path)]


def launch_workers(cfg: Config, stage_dir: Path) -> dict:
    config_path = stage_dir / "config.yaml"  # saved by src.main before any stage runs
    env = {**os.environ, WORKER_ENV: "1"}
    if cfg.hardware.device == Device.cpu and cfg.hardware.distributed != Distributed.deepspeed:
        env["ACCELERATE_USE_CPU"] = "1"  # `--cpu` alone would start a single process
    print(f"[train] launching {cfg.hardware.world_size} processes", file=sys.stderr, flush=True)
    stop_file = preemption_stop_file(stage_dir)
    stop_file.unlink(missing_ok=True)
    for left in (stage_dir / "trainer").glob("failure-rank*.json"):  # an earlier run's
        left.unlink()
    workers = subprocess.Popen(launch_command(cfg, config_path), env=env)
    while workers.poll() is None:
        if preemption.requested() and not stop_file.exists():
            atomic_write_text(stop_file, "stop\n")  # the workers save and stop at a step end
        with contextlib.suppress(subprocess.TimeoutExpired):
            workers.wait(timeout=1)
    if preemption.requested():
        preemption.check("the training workers saved a checkpoint")
    if workers.returncode != 0:
        failure = worker_failure(stage_dir)
        if failure is not None:
            raise failure
        raise TrainingError(
            f"training workers failed (exit code {workers.returncode}); see their output above"
        )
    return {"workers": cfg.hardware.world_size}


# A worker that meets a failure a user can cause or fix (a StageError, the file system) leaves
# it here and exits; the launching process raises it again, so the command ends on one line.


def failure_file(stage_dir: Path, rank: int) -> Path:
    return stage_dir / "trainer" / f"failure-rank{rank}.json"


def report_failure(stage_dir: Path, failure: BaseException) -> int:
    """Leave `failure` for the launching process; the exit code it ends with."""
    if isinstance(failure, StageError):
        report = {"message": str(failure), "fix": failure.fix, "exit_code": failure.exit_code}
    else:
        assert isinstance(failure, OSError)
        report = {"message": describe_os_error(failure), "fix": None, "exit_code": EXIT_ENVIRONMENT}
    atomic_write_json(failure_file(stage_dir, int(os.environ.get("RANK", 0))), report)
    return report["exit_code"]


def worker_failure(stage_dir: Path) -> StageError | None:
    """The first failure a worker left (rank 0's when it has one), as the error to raise."""
    for path in sorted((stage_dir / "trainer").glob("failure-rank*.json")):
        report = json.loads(path.read_text())
        kind = EnvironmentFailure if report["exit_code"] == EXIT_ENVIRONMENT else TrainingError
        return kind(report["message"], report["fix"])
    return None
