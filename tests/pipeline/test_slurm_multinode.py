"""Multi-node training for real: `python -m src.slurm` on the two-node local cluster
(`slurm/cluster.sh start --nodes 2`: each node a network namespace of its own, its own address
and hostname), 2 nodes x 1 gloo process under ZeRO-3, as `hardware=slurm-multinode` is 2 nodes x
8 GPUs. The training job's `srun` starts one launcher per node; they meet at the first node
(c10d rendezvous) and train as one. Every wait is bounded."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from src.training.checkpoints import SEAL, checkpoints
from tests.support.helpers import SLURM_SMALL

pytestmark = pytest.mark.slurm

TWO_NODES = [
    "hardware.num_nodes=2",
    "hardware.processes_per_node=1",
    "hardware.distributed=deepspeed",
    "hardware.zero_stage=3",
]
FIRST_STEP = ("loss", "logps/chosen", "logps/rejected", "grad_norm")


@pytest.fixture
def on_two_nodes(two_nodes, tmp_path, monkeypatch, tiny_dir):
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))  # the jobs inherit it
    return two_nodes, [*SLURM_SMALL, f"hardware.slurm.partition={two_nodes.partition}", *TWO_NODES]


def train_log(root: Path, job: str) -> str:
    """The output of training job `job` (both nodes' tasks write into it)."""
    (log,) = root.rglob(f"*-train_{job}.out")
    return log.read_text()


def test_two_nodes_train_as_one_a_node_lost_resumes_and_the_chain_goes_on(
    on_two_nodes, tmp_path, chain_here
):
    """Two iterations whose training jobs span both nodes. node2's worker killed mid-training:
    the job fails on its own, the chain's later jobs are cancelled, and a resubmission queues
    the training and what follows it, not what had finished; the training resumes from the last
    whole checkpoint to every step, then the chain goes on. Each training is one: launched once a
    node, saved once by rank 0, its first step that of one process on the same pairs.

    Slow: real SLURM jobs for two iterations, each a fresh process, each training two launchers
    that meet over the network namespaces, one of them long enough (16 steps, a checkpoint every
    2) to be killed after a saved checkpoint."""
    from src.slurm import submit_chain

    cluster, overrides = on_two_nodes
    # K = 3 as chain_here; its one step an epoch, 16 epochs (the first step is the same)
    longer = [*overrides, "method.K=3", "training.num_epochs=16", "training.save_steps=2"]
    name = "eta10-lr0.0001-K3-it{}-{}"
    ids = submit_chain(longer, iterations=2)
    train = ids[name.format(1, "train")]
    trainer = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # until a complete Trainer checkpoint exists
        found = list((tmp_path / "runs").rglob("iter1/train/trainer"))
        if found and list(found[0].glob(f"checkpoint-*/{SEAL}")):  # saved whole
            trainer = found[0]
            break
        time.sleep(0.1)
    assert trainer is not None, cluster.job_record(train)
    # node2's training worker (not its launcher) dies mid-run
    (worker,) = cluster.node_processes("node2", "python -u -m src.stages.train_worker")
    os.kill(worker, signal.SIGKILL)

    # no hang: the job ends on its own, well before its 10-minute limit (the wait is bounded)
    states = cluster.wait(ids.values(), timeout=240)
    assert states[train] == "FAILED", states
    for job_name, job in ids.items():
        if "-it2-" in job_name:
            assert {s for rid, s in states.items() if rid.split("_")[0] == job} == {"CANCELLED"}
    resume_from = next((d for d in checkpoints(trainer) if (d / SEAL).is_file()), None)
    assert resume_from is not None
    assert not (trainer.parent / "done.json").exists()

    again = submit_chain(longer, iterations=2)
    assert list(again) == [name.format(1, "train")] + [
        name.format(2, stage) for stage in ("generate", "rank", "pairs", "train")
    ], "iteration 1's generate, rank, pairs: finished"
    states = cluster.wait(again.values(), timeout=900)
    assert set(states.values()) == {"COMPLETED"}, states
    runs = tmp_path / "runs"
    assert f"[train] resuming from {resume_from}" in train_log(runs, again[name.format(1, "train")])
    done = json.loads((trainer.parent / "done.json").read_text())
    assert done["counts"]["steps"] == 16  # 4 pairs a step, 16 epochs: all of them

    lineage = next(runs.glob("tiny-mistral/sppo/*"))
    for t in (1, 2):
        job = again[name.format(t, "train")]
        (record,) = cluster.job_records(job)
        assert (record["NumNodes"], record["NodeList"]) == ("2", "node[1-2]"), record
        log = train_log(runs, job)
        # one launcher per node, each on its own host, each knowing its rank
        launched = sorted(re.findall(r"\[train\] (node\d), node (\d) of 2: launching 1 of 2", log))
        assert launched == [("node1", "0"), ("node2", "1")], log[-3000:]
        # the checkpoint is written once, by rank 0
        saved = re.findall(r"\[train\] rank 0 on (node\d) saved (\S+)", log)
        assert len(saved) == 1 and saved[0][1] == str(lineage / f"iter{t}" / "train" / "checkpoint")
        assert (lineage / f"iter{t}" / "train" / "done.json").is_file()
    AutoModelForCausalLM.from_pretrained(lineage / "iter2" / "train" / "checkpoint")

    # the two ranks are one training: the first step of 2 nodes x 2 pairs = that of one process
    # with 2 pairs x 2 accumulation steps, on the same pairs (iteration 1 of SLURM_SMALL with
    # K = 3 run here, one epoch; the resumed run keeps the first run's log)
    first = [
        json.loads((d / "iter1" / "train" / "metrics.json").read_text())["log_history"][0]
        for d in (lineage, chain_here)
    ]
    for key in FIRST_STEP:
        assert first[0][key] == pytest.approx(first[1][key], rel=1e-5), key
