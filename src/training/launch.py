"""Training with more than one process: the stage's launcher (src/stages/train.py) starts its
workers under `accelerate launch`, one per process (`python -m src.stages.train_worker
<stage_dir>/config.yaml`), and passes a preemption request on to them through a stop file.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import IO

from src.config import Device, Distributed, HardwareConfig
from src.core import preemption, threads
from src.core.artifacts import atomic_write_json, atomic_write_text
from src.core.errors import (
    EXIT_ENVIRONMENT,
    EnvironmentFailure,
    Redo,
    StageError,
    describe_os_error,
)
from src.core.layout import SAVED_CONFIG
from src.core.machine import node_rank
from src.training.arguments import TRAINER_DIR, TrainingError

RESUME_ENV = "SELFPLAY_RESUME_FROM"  # the checkpoint they resume from ("": none), chosen once


def preemption_stop_file(stage_dir: Path) -> Path:
    return stage_dir / TRAINER_DIR / "STOP"


def as_one_process_group(hw: HardwareConfig) -> None:
    """DeepSpeed in this one process: the variables a launcher would set (rank 0 of 1, a free
    port here), which the stage starts none for. Without them `deepspeed.init_distributed` looks
    for an MPI launch and fails for want of mpi4py. A launch that set them already is kept."""
    if hw.distributed != Distributed.deepspeed or hw.world_size != 1 or "RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def launch_command(hw: HardwareConfig, config_path: Path) -> list[str]:
    """`accelerate launch` for the hardware; DeepSpeed itself is configured by TrainingArguments
    (the one place its config comes from), so the launcher only starts the processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", str(hw.world_size), "--num_machines", str(hw.num_nodes)]
    if hw.num_nodes > 1:
        rank, master = node_rank(), os.environ.get("MASTER_ADDR")
        if rank is None or master is None:
            raise TrainingError(
                f"hardware.num_nodes={hw.num_nodes}: set MASTER_ADDR and NODE_RANK (SLURM sets "
                "SLURM_NODEID), one launcher per node"
            )
        cmd += ["--machine_rank", rank, "--main_process_ip", master]
        cmd += [
            "--main_process_port",
            os.environ.get("MASTER_PORT", "29500"),
            "--rdzv_backend",
            "c10d",
        ]
    else:  # a free port here (0: accelerate's pick), not 29500, which another training may hold
        cmd += ["--main_process_port", os.environ.get("MASTER_PORT", "0")]
    return [*cmd, "-m", "src.stages.train_worker", str(config_path)]


def launch_workers(hw: HardwareConfig, stage_dir: Path, resume: str | None) -> dict:
    """The training processes `hw` asks for, each running src.stages.train_worker on the stage's
    saved config and resuming from the Trainer checkpoint `resume`; their first failure is raised
    here again."""
    config_path = stage_dir / SAVED_CONFIG  # saved by src.main before any stage runs
    if hw.num_nodes > 1:  # one launcher per node: each says where it runs
        print(
            f"[train] {socket.gethostname()}, node {node_rank()} of {hw.num_nodes}: launching "
            f"{hw.processes_per_node} of {hw.world_size} processes",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"[train] launching {hw.world_size} processes", file=sys.stderr, flush=True)
    stop_file = preemption_stop_file(stage_dir)
    # off the run's disk: a worker that stops because that disk is full can still say so
    with tempfile.TemporaryDirectory(prefix="selfplay-train-") as failures:
        env = {**os.environ, FAILURES_ENV: failures, RESUME_ENV: resume or ""}
        # each worker its share of the CPUs this process may use (else each would start the
        # count this process was given, or accelerate's cores / processes)
        env["OMP_NUM_THREADS"] = str(threads.threads_per_process(hw.processes_per_node))
        if hw.device == Device.cpu and hw.distributed != Distributed.deepspeed:
            env["ACCELERATE_USE_CPU"] = "1"  # `--cpu` alone would start a single process
        workers = subprocess.Popen(launch_command(hw, config_path), env=env, stderr=subprocess.PIPE)
        pump = threading.Thread(target=forward_until_failure, args=(workers.stderr, Path(failures)))
        pump.start()
        while workers.poll() is None:
            if preemption.requested() and not stop_file.exists():
                atomic_write_text(stop_file, "stop\n")  # the workers save and stop at a step end
            with contextlib.suppress(subprocess.TimeoutExpired):
                workers.wait(timeout=1)
        pump.join()
        if preemption.requested():
            preemption.check("the training workers saved a checkpoint")
        if workers.returncode != 0:
            code = workers.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            failure = worker_failure(Path(failures))
            if failure is None and finished(Path(failures)) == hw.processes_per_node:
                # past the last barrier every rank's work is on disk: what failed is the exit
                print(
                    f"[train] the workers ended with {how} after the training finished on every "
                    "rank (the checkpoint is saved); going on",
                    file=sys.stderr,
                    flush=True,
                )
                return {"workers": hw.world_size}
            raise failure or TrainingError(
                f"training workers failed ({how}); see their output above"
            )
    return {"workers": hw.world_size}


# A worker that meets a failure a user can cause or fix (a StageError, the file system) reports
# it and exits; the launching process raises it again, so the command ends on its one line.

FAILURES_ENV = "SELFPLAY_TRAIN_FAILURES"  # the folder the workers report failures in


def forward_until_failure(stream: IO[bytes], failures: Path) -> None:
    """The workers' stderr, as it comes (progress bars included), until one reports a failure:
    what follows is its echo — the other ranks losing their peer, the launcher's summary."""
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
    last = "\n"
    for chunk in iter(lambda: os.read(stream.fileno(), 1 << 16), b""):
        if not any(failures.iterdir()):
            text = decode.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            last = text[-1:] or last
    if last != "\n":  # a progress bar left mid-line: what is said next starts a line of its own
        sys.stderr.write("\n")


def report_failure(failure: BaseException) -> int:
    """Report `failure` to the launching process; the exit code the worker ends with."""
    if isinstance(failure, StageError):
        fix = asdict(failure.fix) if isinstance(failure.fix, Redo) else failure.fix
        report = {"message": str(failure), "fix": fix, "exit_code": failure.exit_code}
    else:
        assert isinstance(failure, OSError)
        report = {"message": describe_os_error(failure), "fix": None, "exit_code": EXIT_ENVIRONMENT}
    try:
        rank = int(os.environ.get("RANK", 0))
        atomic_write_json(Path(os.environ[FAILURES_ENV]) / f"rank{rank:05d}.json", report)
    except (KeyError, OSError):  # run by hand, or nowhere to write: say it here
        print(f"error: {report['message']}", file=sys.stderr)
    return report["exit_code"]


def report_finished() -> None:
    """Said by a worker past its last barrier (every rank's training and checkpoint done), for
    its launcher: a worker may still abort in the teardown that follows (gloo's threads, C++
    destructors at exit: SIGABRT), which then loses nothing."""
    if FAILURES_ENV in os.environ:
        rank = int(os.environ.get("RANK", 0))
        atomic_write_text(Path(os.environ[FAILURES_ENV]) / f"finished-rank{rank:05d}", "")


def finished(failures: Path) -> int:
    """How many of this launcher's workers said `report_finished`."""
    return len(list(failures.glob("finished-rank*")))


def worker_failure(failures: Path) -> StageError | None:
    """The failure the lowest rank that reported one reported, as the error to raise."""
    for path in sorted(failures.glob("rank*.json")):
        report = json.loads(path.read_text())
        kind = EnvironmentFailure if report["exit_code"] == EXIT_ENVIRONMENT else TrainingError
        fix = report["fix"]
        return kind(report["message"], Redo(**fix) if isinstance(fix, dict) else fix)
    return None
