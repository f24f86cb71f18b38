"""Stopping early on request, at a point a re-run resumes from.

SLURM sends the job a warning signal before its time limit (`--signal=B:USR1@300` in the
templates); the batch script passes SIGUSR1 on to the stage and requeues the job. The stage
finishes what it is doing — the current chunk of prompts, or the current training step, after
which the Trainer saves a checkpoint — then stops with `Preempted` (exit code 4), writing no
completion record. The requeued job runs the same command and resumes from what was saved.

Training processes started by `accelerate launch` learn of the request through a stop file the
launching process writes (signals do not pass through the launcher), and agree on the step to
stop at with one all-reduce per step, so no rank waits in a collective the others left.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from src.core.errors import EXIT_PREEMPTED, StageError

_requested = False


class Preempted(StageError):
    """The stage stopped early on request, after saving what a re-run resumes from."""

    exit_code = EXIT_PREEMPTED
    label = "preempted"


def _on_signal(signum, frame) -> None:
    global _requested
    _requested = True
    print(
        "[preempt] SIGUSR1: stopping at the next point a re-run resumes from",
        file=sys.stderr,
        flush=True,
    )


def install() -> None:
    signal.signal(signal.SIGUSR1, _on_signal)


def requested() -> bool:
    return _requested


def check(where: str) -> None:
    """Raise Preempted if a stop was requested; `where` says what was saved."""
    if _requested:
        raise Preempted(
            f"stopped on request (SIGUSR1) after {where}; re-run the same command to resume"
        )


def stop_requested(stop_file: Path) -> bool:
    return _requested or stop_file.exists()


def trainer_callback(stop_file: Path):
    """A TrainerCallback that saves a checkpoint and stops training once a stop is requested
    (in this process, or through `stop_file`), at the same step on every rank."""
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    class StopOnRequest(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stop = stop_requested(stop_file)
            if dist.is_available() and dist.is_initialized():
                flag = torch.tensor([float(stop)], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnRequest()
