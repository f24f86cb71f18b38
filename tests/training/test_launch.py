"""The launching side of a multi-process training (src/training/launch.py): how the end of its
workers is read. The workers here are small scripts in place of `python -m
src.stages.train_worker`, started by the same launcher code; the real workers run in
tests/training/test_training.py."""

import sys

import pytest

from src.config import Device, Distributed, HardwareConfig
from src.core.errors import Redo
from src.training import launch
from src.training.arguments import TrainingError

TWO = HardwareConfig(
    name="cpu", device=Device.cpu, processes_per_node=2, distributed=Distributed.ddp
)


def workers(monkeypatch, script: str) -> None:
    """`launch_workers` starts two copies of `script` (ranks 0 and 1) in place of accelerate's."""
    each = f"import os, sys\nos.environ['RANK'] = sys.argv[1]\n{script}"
    both = (
        "import subprocess, sys\n"
        f"codes = [subprocess.call([sys.executable, '-c', {each!r}, str(r)]) for r in (0, 1)]\n"
        "sys.exit(next((c for c in codes if c), 0) and 1)"
    )
    monkeypatch.setattr(launch, "launch_command", lambda hw, path: [sys.executable, "-c", both])


def test_a_worker_that_aborts_after_every_rank_finished_loses_nothing(tmp_path, monkeypatch, capfd):
    """Past the last barrier each worker says so; an abort in the teardown after it (gloo's
    threads at exit: SIGABRT) leaves the training done, and the stage goes on, saying why."""
    workers(
        monkeypatch,
        "from src.training.launch import report_finished\n"
        "report_finished()\n"
        "if os.environ['RANK'] == '1': os.abort()",
    )
    assert launch.launch_workers(TWO, tmp_path, None) == {"workers": 2}
    assert "after the training finished on every rank" in capfd.readouterr().err


@pytest.mark.parametrize("finishing", ["0", ""], ids=["one rank finished", "none finished"])
def test_a_worker_that_aborts_before_every_rank_finished_fails_the_stage(
    tmp_path, monkeypatch, finishing
):
    workers(
        monkeypatch,
        "from src.training.launch import report_finished\n"
        f"if os.environ['RANK'] in {finishing!r}.split(): report_finished()\n"
        "if os.environ['RANK'] == '1': os.abort()",
    )
    with pytest.raises(TrainingError, match=r"training workers failed \(exit code 1\)"):
        launch.launch_workers(TWO, tmp_path, None)


@pytest.mark.slow
@pytest.mark.parametrize("fix", [Redo("pairs", 2), "training.max_length=512", None])
def test_a_workers_failure_reaches_the_launcher_with_its_remedy(tmp_path, monkeypatch, fix):
    """A worker's StageError crosses the process boundary whole: its message, its exit code and
    its fix, a Redo still a Redo (the launching command's `stage=` decides its overrides)."""
    workers(
        monkeypatch,
        "from src.core.errors import Redo\n"
        "from src.training.arguments import TrainingError\n"
        "from src.training.launch import report_failure\n"
        f"sys.exit(report_failure(TrainingError('pairs.parquet: row 3 is bad', {fix!r})))",
    )
    with pytest.raises(TrainingError, match=r"^pairs\.parquet: row 3 is bad$") as failed:
        launch.launch_workers(TWO, tmp_path, None)
    assert failed.value.fix == fix


def test_a_training_on_one_machine_meets_at_a_free_port_and_one_over_nodes_at_master_port(
    tmp_path, monkeypatch
):
    """Two trainings on one machine (a sweep, two users) each ask accelerate for a free port (0),
    unless MASTER_PORT says one; the nodes of one training meet at MASTER_PORT."""
    monkeypatch.delenv("MASTER_PORT", raising=False)

    def port(hw: HardwareConfig) -> str:
        cmd = launch.launch_command(hw, tmp_path / "config.yaml")
        return cmd[cmd.index("--main_process_port") + 1]

    assert port(TWO) == "0"
    monkeypatch.setenv("MASTER_PORT", "29611")
    assert port(TWO) == "29611"
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    nodes = HardwareConfig(
        name="cpu",
        device=Device.cpu,
        num_nodes=2,
        processes_per_node=2,
        distributed=Distributed.ddp,
    )
    assert port(nodes) == "29611"
