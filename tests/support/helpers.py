"""Helpers shared by the tests: compose the project's config exactly as `python -m src.main`
does, or run that command on the tiny models."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from src.config import REPO_ROOT, Config, compose, compose_tree
from src.core import memory

CONF = REPO_ROOT / "conf"


def compose_raw(*overrides: str, hydra_node: bool = False):
    return compose_tree(overrides, hydra_node=hydra_node)


def compose_cfg(*overrides: str) -> Config:
    return compose(overrides)


def run_recorded(cfg: Config, stage: str) -> dict:
    """`stage`'s run as the scheduler runs it (src/schedule/run.py: `run_tracked`: inside its W&B
    run, its record written once it returns); the figures its W&B run keeps."""
    from src.core.registry import Stage
    from src.schedule.run import run_tracked
    from src.stages import stage_run

    return run_tracked(cfg, Stage(stage), stage_run(Stage(stage))).summary


# The files of each tiny model that a build from the same seed reproduces byte for byte
TINY_WEIGHTS = {
    "tiny-mistral": ["model.safetensors", "tokenizer.json"],
    "tiny-gemma2": ["model.safetensors", "tokenizer.json"],
    "tiny-pairrm": ["model.safetensors", "backbone/model.safetensors", "backbone/tokenizer.json"],
    "tiny-rm": ["model.safetensors", "tokenizer.json"],
    "tiny-judge": ["model.safetensors", "tokenizer.json"],
    "tiny-chat-judge": ["model.safetensors", "tokenizer.json"],
}


def same_bytes(again: Path, cached: Path) -> None:
    """A tiny model built again from seed 0 is byte for byte the cached seed-0 build, training
    included: each of its TINY_WEIGHTS files."""
    for file in TINY_WEIGHTS[cached.name]:
        assert (again / file).read_bytes() == (cached / file).read_bytes(), (cached.name, file)


# The two a `model=tiny-gemma2` command builds where none is cached: tests/pipeline/test_schedule.py
# builds them so and compares them with the shared build (tests/tools/test_tiny_models.py rebuilds
# the others)
BUILT_ON_DEMAND = ("tiny-gemma2", "tiny-pairrm")


# A whole iteration in seconds on the tiny models: few prompts, short responses, small batches.
SMALL = [
    "model=tiny-mistral",
    "logger=none",
    "method.K=3",
    "data.max_prompts=4",
    "generation.max_new_tokens=8",
    "training.global_batch_size=4",
    "training.per_device_batch_size=2",
]


# An iteration on the local SLURM cluster (tests/support/slurm_cluster.py): CPU jobs with a short limit
SLURM_SMALL = [
    *(o for o in SMALL if not o.startswith("method.K=")),
    "hardware=slurm-cpu",
    "hardware.slurm.time_min=10",
    "hardware.slurm.mem_gb=2",
]


def run_without_slurm(overrides: list[str], root: Path) -> Path:
    """`python -m src.main` with `overrides` less SLURM's, here; returns its lineage folder."""
    run = run_main(root, *[o for o in overrides if "slurm" not in o])
    assert run.returncode == 0, run.stderr[-2000:]
    return next(root.glob("tiny-mistral/sppo/*"))


def run_main(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m src.main ARGS`, offline, its runs under `root`, in this process (`entry`; the
    test's own timeout bounds it)."""
    return entry("src.main", *args, env={"SELFPLAY_RUNS": str(root), **OFFLINE})


def run_main_process(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m src.main ARGS` for real, in a fresh process: for what a process is the point of
    (its environment read at import, locks between processes, signals)."""
    env = {**os.environ, "SELFPLAY_RUNS": str(root), **OFFLINE}
    return subprocess.run(
        [sys.executable, "-m", "src.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


HOLD = """
import sys, time
from pathlib import Path
from src.core.locks import writing
shard = sys.argv[2] if sys.argv[2] != "-" else None
with writing(Path(sys.argv[1]), sys.argv[3], shard):
    print("held", flush=True)
    time.sleep(600)
"""


def holder(
    stage_dir: Path, shard: str | None = None, command: str = "python -m src.main holder"
) -> subprocess.Popen:
    """A process that holds `stage_dir` (or its `shard`) until it is killed, signed `command`
    (src/core/locks.py): another writer in this process would take this process's own lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(stage_dir), shard or "-", command],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_main(root, *SMALL, *args)


OFFLINE = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
# What a command's process would start afresh, restored after each `entry`
_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1]


def entry(
    module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in this process, as its process would end: the exit code its
    failure boundary gives (src/config/cli.py; 1 and the traceback for an exception it lets through),
    and what it wrote, the libraries and the processes it starts included (`captured`). `env` is
    set over the environment while it runs; the environment, the working directory, sys.argv and
    the signal handlers are restored after.

    A command costs its imports and its config once per test session this way, not once per call
    (~8 s of CPU each). Keep a fresh process (`run_main_process`, `subprocess`) where the process
    is what is tested: a signal or a kill, a lock between processes, a variable read at import
    (HYDRA_FULL_ERROR, the Hub's and W&B's settings), a peak of its memory; and for DeepSpeed
    in one process, whose process group outlives the command."""
    import importlib
    import traceback

    try:
        main = importlib.import_module(f"{module}.__main__").main
    except ModuleNotFoundError:
        main = importlib.import_module(module).main
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    saved_handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    code = 0
    with captured() as output:
        try:
            # glibc's mmap threshold as src.main pins it for the processes it starts, through the
            # variable they read at their start, and not here: mallopt() would outlast the command
            # and move where this process's later tensors are allocated, and with their alignment
            # the last bits of what they compute (a tiny model built after would differ)
            os.environ.setdefault(memory.MMAP_THRESHOLD_VAR, str(memory.THRESHOLD))
            os.environ.update(env or {})
            os.chdir(REPO_ROOT)
            sys.argv = [f"{module.replace('.', '/')}.py", *args]
            try:
                returned = main()
                code = returned if isinstance(returned, int) else 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, int | None):
                    print(exc.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - as the interpreter ends a process with one
                traceback.print_exc()
                code = 1
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            sys.argv = saved_argv
            for signum, handler in saved_handlers.items():
                signal.signal(signum, handler)
    return subprocess.CompletedProcess([module, *args], code, output["stdout"], output["stderr"])


@contextmanager
def captured() -> Iterator[dict[str, str]]:
    """What is written inside, into two files: {"stdout": ..., "stderr": ...} once the block
    ends. Redirected where it is written, at the file descriptors: 1 and 2, which the libraries and the processes
    started inside write to, and those under sys.stdout and sys.stderr (pytest's capture files,
    or 1 and 2). Python's stream objects are left as they are: a command run inside may shut
    down logging's handlers (Hydra's start does), and a handler may close its stream unless it
    is the current sys.stderr (absl's), which would close pytest's capture."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        targets = {1: out, 2: err}
        for stream, into in ((sys.stdout, out), (sys.stderr, err)):
            stream.flush()
            with contextlib.suppress(AttributeError, OSError, ValueError):
                targets.setdefault(stream.fileno(), into)
        saved = {fd: os.dup(fd) for fd in targets}
        written: dict[str, str] = {}
        try:
            for fd, into in targets.items():
                os.dup2(into.fileno(), fd)
            yield written
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            for name, f in (("stdout", out), ("stderr", err)):
                f.seek(0)
                written[name] = f.read().decode("utf-8", "replace")


def one_line_failure(result: subprocess.CompletedProcess, code: int) -> str:
    """The failure's line, after checking it is the only thing that looks like one."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    failures = [
        ln for ln in result.stderr.splitlines() if ln.startswith(("error:", "interrupted:"))
    ]
    assert failures == [last], result.stderr[-3000:]
    return last


ALPACA_EVAL_INSTRUCTIONS = 805  # AlpacaEval 2's evaluation set


def alpaca_eval_annotations(y, policy_lengths, reference_lengths):
    """alpaca_eval's annotation format for outcomes y (the policy's answer is output_2): a
    DataFrame."""
    import numpy as np
    import pandas as pd

    n = len(y)
    return pd.DataFrame(
        {
            "instruction": [f"instruction {i}" for i in range(n)],
            "output_1": ["r" * int(k) for k in reference_lengths],
            "output_2": ["p" * int(k) for k in policy_lengths],
            "generator_1": "reference",
            "generator_2": "policy",
            "annotator": "judge",
            "index": np.arange(n),
            "preference": 1.0 + np.asarray(y, np.float64),
        }
    )


# An eval.json's sections: the judge's win rates (src/stages/eval.py) and eval.benchmarks'
# results (src/evaluation/benchmarks.py)
ALPACA = {
    "reference": "base", "judge": "tiny-pairrm", "compared": 805, "confidence": 0.95,
    "win_rate": 0.6, "win_rate_low": 0.55, "win_rate_high": 0.65,
    "lc_win_rate": 0.58, "lc_win_rate_low": 0.53, "lc_win_rate_high": 0.63,
}  # fmt: skip
MT_BENCH = {
    "judge": "gpt-4", "mt_bench": 7.1234, "turn_1": 7.5, "turn_2": 6.7468,
    "per_category": {"writing": 8.0}, "rated": 159, "unrated": 1, "questions": 80,
    "unanswered": 0, "judge_calls": 160, "seconds": 12.0,
}  # fmt: skip
ARENA_HARD = {
    "judge": "qwen-judge@local", "baseline": "gpt-4-0314", "version": "v0.1",
    "win_rate": 0.55321, "lower": 0.5012, "upper": 0.6024, "level": 0.95,
    "games": {"game1": {"wins": 1, "ties": 0, "losses": 0}}, "unjudged": 2, "questions": 500,
    "battles": 1100, "categories": {}, "avg_tokens": 512, "unanswered": 0, "seconds": 30.0,
}  # fmt: skip
LEADERBOARD = {
    "raw": {"ifeval": 0.7, "bbh": 0.5, "math_hard": 0.07, "gpqa": 0.3, "musr": 0.4,
            "mmlu_pro": 0.35, "arc_challenge": 0.6519, "truthfulqa_mc2": 0.58041},
    "normalised": {"ifeval": 68.2812, "bbh": 29.7391, "math_hard": 7.33, "gpqa": 2.0134,
                   "musr": 3.0912, "mmlu_pro": 29.3801, "average": 23.3063},
    "unscored": {}, "limit": None, "seconds": 100.0,
}  # fmt: skip


def read_only(folder: Path, command: list[str]) -> list[str]:
    """`command` run with `folder` mounted read-only over itself, in a mount namespace of its own
    (as a cluster's nodes mount a shared cache): a write under it fails with EROFS, whoever runs
    it (root included, whom permission bits do not stop). Skips where mount namespaces are not
    allowed."""
    import pytest

    unshare = ["unshare", "-m" if os.geteuid() == 0 else "-rm"]
    probe = subprocess.run([*unshare, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode().strip()}")
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
    return [*unshare, "sh", "-c", mount, str(folder), *command]


def closed_port() -> int:
    """A local port nothing listens on: bound once by us, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Composed(Exception):
    """Raised by a stand-in for `compose`: the command got as far as composing a config."""


def composing(*_args: object) -> None:
    raise Composed
