"""The pipeline through a real SLURM cluster (tests/support/slurm_cluster.py): an afterok chain of two
tiny iterations, shards sharing a node, a 4-point sweep array, a failing stage cancelling what
waits for it, and a requeue. Every wait is bounded. Multi-node training is in
test_slurm_multinode.py."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.helpers import SLURM_SMALL, run_without_slurm

pytestmark = pytest.mark.slurm


@pytest.fixture
def on_cluster(slurm_cluster, tmp_path, monkeypatch, tiny_dir):
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))  # the jobs inherit it
    return slurm_cluster, [*SLURM_SMALL, f"hardware.slurm.partition={slurm_cluster.partition}"]


def shard_rows(stage_dir: Path, prefix: str = "responses") -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(stage_dir.glob(f"{prefix}-shard*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_two_iterations_chained_through_slurm(on_cluster, tmp_path, chain_here):
    """Two iterations as eight dependent SLURM jobs, byte for byte the run without SLURM.

    Slow: eight real jobs on the local cluster, each a fresh process that imports its stage and
    loads its model, one after the other as their dependencies order them."""
    from src.slurm import submit_chain

    cluster, overrides = on_cluster
    ids = submit_chain([*overrides, "method.K=3"], iterations=2)
    assert len(ids) == 8
    states = cluster.wait(ids.values(), timeout=900)
    assert set(states.values()) == {"COMPLETED"}, states

    name = "eta10-lr0.0001-K3-it{}-{}"
    first_train = cluster.job_record(ids[name.format(1, "train")])
    (second_gen,) = cluster.job_records(ids[name.format(2, "generate")])
    assert second_gen["StartTime"] >= first_train["EndTime"], "iteration 2 waited for iteration 1"
    for earlier, later in zip(list(ids.values()), list(ids.values())[1:], strict=False):
        start = cluster.job_records(later)[0]["StartTime"]
        assert all(start >= r["EndTime"] for r in cluster.job_records(earlier))

    lineage = next((tmp_path / "runs").glob("tiny-mistral/sppo/*"))
    logs = sorted(p.name for p in (lineage / "slurm" / "logs").glob("*.out"))
    assert len(logs) == 8, "one log per job"
    assert not [n for n in logs if "4294967294" in n], logs  # no array task id where none is
    # the same outputs as the pipeline run without SLURM (the same overrides)
    here = chain_here
    for t in (1, 2):
        assert shard_rows(lineage / f"iter{t}" / "generate") == shard_rows(
            here / f"iter{t}" / "generate"
        )
    assert (lineage / "iter2" / "train" / "done.json").is_file()


def test_two_generation_shards_share_the_node_and_run_at_the_same_time(on_cluster, tmp_path):
    """A node of 2 processes, as an 8-GPU node has 8 GPUs: each generation and ranking shard
    asks for half of it, so SLURM runs both at once; training takes the whole node.

    Slow: a whole iteration's jobs on the local cluster, each stage a fresh process."""
    from src.slurm import submit_chain

    cluster, overrides = on_cluster
    node = cluster.nodes()[0]
    cpus, mem_gb = int(node["CPUTot"]), int(node["RealMemory"]) // 1024
    if cpus < 2:
        pytest.skip(f"the local cluster's node has {cpus} CPU: two one-CPU tasks cannot share it")
    two_slots = [*overrides, "method.K=3", "hardware.processes_per_node=2",
                 "hardware.distributed=ddp", f"hardware.slurm.cpus_per_task={cpus}",
                 f"hardware.slurm.mem_gb={mem_gb}"]  # fmt: skip
    ids = submit_chain(two_slots, iterations=1)
    states = cluster.wait(ids.values(), timeout=900)
    assert set(states.values()) == {"COMPLETED"}, states

    for stage in ("generate", "rank"):
        tasks = cluster.job_records(ids[f"eta10-lr0.0001-K3-it1-{stage}"])
        assert len(tasks) == 2
        assert [int(t["NumCPUs"]) for t in tasks] == [cpus // 2] * 2, stage
        assert [t["MinMemoryNode"] for t in tasks] == [f"{mem_gb // 2}G"] * 2, stage
        # both ran at once on one node: each started before the other ended (SLURM's own times)
        assert tasks[0]["NodeList"] == tasks[1]["NodeList"], tasks
        assert max(t["StartTime"] for t in tasks) < min(t["EndTime"] for t in tasks), tasks
    (train,) = cluster.job_records(ids["eta10-lr0.0001-K3-it1-train"])
    assert (int(train["NumCPUs"]), train["MinMemoryNode"]) == (cpus, f"{mem_gb}G")

    lineage = next((tmp_path / "runs").glob("tiny-mistral/sppo/*"))
    here = run_without_slurm([*two_slots, "hardware=cpu", "iter=1"], tmp_path / "local")
    generated = sorted((lineage / "iter1" / "generate").glob("responses-shard*.jsonl"))
    assert [p.name for p in generated] == [
        "responses-shard000-of-002.jsonl",
        "responses-shard001-of-002.jsonl",
    ]
    for stage, rows in (("generate", "responses"), ("rank", "ranked")):
        ours, theirs = (
            sorted(shard_rows(d / "iter1" / stage, rows), key=lambda r: r["prompt_id"])
            for d in (lineage, here)
        )
        assert ours == theirs, stage
    ours, theirs = (
        pq.read_table(d / "iter1/pairs/pairs.parquet").to_pylist() for d in (lineage, here)
    )
    assert ours == theirs
    ours, theirs = (
        json.loads((d / "iter1/train/metrics.json").read_text())["summary"] for d in (lineage, here)
    )
    assert ours["steps"] == theirs["steps"] > 0
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)


def test_a_four_point_sweep_is_one_array_and_the_compare_tool_ranks_it(on_cluster, tmp_path):
    """Iteration 1's generate, rank and pairs, which the points of one K read the same, made once
    for each K before the array, and taken by the other point of that K; the compare tool ranks
    the four lineages."""
    from src.compare import main as compare
    from src.sweep import submit_sweep

    cluster, overrides = on_cluster
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(
        "method: grid\nparameters:\n  method.eta: {values: [1000, 5000]}\n  method.K: {values: [2, 3]}\n"
    )
    job = submit_sweep(sweep, overrides, iterations=1, parallel=2, dry_run=False)
    states = cluster.wait([job], timeout=900)
    assert list(states.values()) == ["COMPLETED"] * 4, states
    assert all(
        r["ArrayTaskThrottle"] == "2" for r in cluster.job_records(job) if "ArrayTaskThrottle" in r
    )

    for stage in ("generate", "rank", "pairs"):
        records = [
            json.loads(r.read_text()) for r in (tmp_path / "runs").rglob(f"iter1/{stage}/done.json")
        ]
        made = sorted("reused_from" in r for r in records)
        assert made == [False, False, True, True], f"{stage}: made once for each K"

    compare(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "cmp")])
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    points = sorted((float(r["eta"]), int(r["K"])) for r in rows)
    assert points == [(1000.0, 2), (1000.0, 3), (5000.0, 2), (5000.0, 3)]
    assert all(r["stages_done"] == "generate+rank+pairs+train" for r in rows)


def test_a_failing_stage_cancels_its_dependents(on_cluster, tmp_path):
    from src.slurm import submit_chain

    cluster, overrides = on_cluster
    # an external pool with no response for these prompts: the rank stage refuses it once it
    # reads the generated rows (everything it reads exists, so the chain is queued)
    pool = tmp_path / "unrelated-pool.jsonl"
    pool.write_text('{"prompt_id": "elsewhere", "response": "An answer to another prompt."}\n')
    ids = submit_chain([*overrides, "method.K=2", f"data.external_responses={pool}"], iterations=2)
    states = cluster.wait(ids.values(), timeout=600)
    by_stage = {
        name.split("-it", 1)[1]: states_of(cluster, job, states) for name, job in ids.items()
    }
    assert by_stage["1-generate"] == {"COMPLETED"}
    assert by_stage["1-rank"] == {"FAILED"}
    for later in ("1-pairs", "1-train", "2-generate", "2-rank", "2-pairs", "2-train"):
        assert by_stage[later] == {"CANCELLED"}, (later, by_stage)
    log = next((tmp_path / "runs").rglob("*-it1-rank_*_*.out")).read_text()
    assert "error: " in log and "unrelated-pool.jsonl has no external response" in log


def states_of(cluster, job: str, states: dict[str, str]) -> set[str]:
    return {s for rid, s in states.items() if rid == job or rid.startswith(f"{job}_")}


def test_the_warning_signal_saves_requeues_and_the_requeued_training_resumes(on_cluster, tmp_path):
    """SLURM's warning signal mid-training: the job stops its stage and is requeued once, and
    the requeued job resumes from the checkpoint it saved and trains every step.

    Slow: one iteration of real SLURM jobs, each a fresh process, its training long enough to
    be signalled mid-run, then trained again by the requeued job."""
    import time

    from src.slurm import submit_chain

    cluster, overrides = on_cluster
    more_steps = ["training.num_epochs=20", "training.save_steps=1000", "training.global_batch_size=2",
                  "training.per_device_batch_size=1", "method.K=2"]  # fmt: skip
    ids = submit_chain([*overrides, *more_steps], iterations=1)
    train = ids["eta10-lr0.0001-K2-it1-train"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        started = list((tmp_path / "runs").rglob("train/trainer/identity.txt"))
        if started and cluster.job_record(train)["JobState"] == "RUNNING":
            break
        time.sleep(0.1)
    # what SLURM does --signal=B:USR1@300 seconds before the time limit
    subprocess.run(["scancel", "--batch", "--signal=USR1", train], check=True, env=cluster.env)
    states = cluster.wait(ids.values(), timeout=600)
    log = next((tmp_path / "runs").rglob("*-it1-train_*.out")).read_text()
    assert set(states.values()) == {"COMPLETED"}, (states, log)
    assert int(cluster.job_record(train)["Restarts"]) == 1, "requeued once"
    assert "time limit near: stopping the stage, requeueing" in log
    assert "[train] resuming from" in log and "checkpoint-" in log
    done = json.loads(next((tmp_path / "runs").rglob("train/done.json")).read_text())
    assert done["counts"]["steps"] == 40  # 4 pairs, 2 per step, 20 epochs: all of them
