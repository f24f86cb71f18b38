"""The local one-node SLURM cluster (slurm/cluster.sh) runs jobs, arrays and dependencies."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slurm


def test_batch_job_completes(slurm_cluster, tmp_path):
    job = slurm_cluster.submit("echo hello from $SLURM_JOB_ID\n", cwd=tmp_path)
    assert slurm_cluster.wait([job], timeout=30) == {job: "COMPLETED"}
    record = slurm_cluster.job_record(job)
    assert record["ExitCode"] == "0:0"
    assert record["Partition"] == slurm_cluster.partition
    assert (tmp_path / f"slurm-{job}.out").read_text().strip() == f"hello from {job}"


def test_array_job_writes_one_output_per_task(slurm_cluster, tmp_path):
    job = slurm_cluster.submit(
        args=[
            "--array=0-2",
            "--job-name=arr",
            "--output=%x_%A_%a.out",
            "--wrap",
            "echo task $SLURM_ARRAY_TASK_ID",
        ],
        cwd=tmp_path,
    )
    states = slurm_cluster.wait([job], timeout=30)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(3)}
    outputs = sorted(p.name for p in tmp_path.glob("*.out"))
    assert outputs == [f"arr_{job}_{i}.out" for i in range(3)]
    for i in range(3):
        assert (tmp_path / f"arr_{job}_{i}.out").read_text().strip() == f"task {i}"


def test_afterok_on_a_failed_job_is_cancelled(slurm_cluster, tmp_path):
    upstream = slurm_cluster.submit("exit 3\n", cwd=tmp_path)
    dependent = slurm_cluster.submit(
        "echo must not run\n", args=[f"--dependency=afterok:{upstream}"], cwd=tmp_path
    )
    # kill_invalid_depend: cancelled at the next scheduling pass, not left pending forever
    states = slurm_cluster.wait([upstream, dependent], timeout=30)
    assert states == {upstream: "FAILED", dependent: "CANCELLED"}
    assert slurm_cluster.job_record(upstream)["ExitCode"] == "3:0"
    record = slurm_cluster.job_record(dependent)
    assert record["Reason"] == "DependencyNeverSatisfied"
    assert not (tmp_path / f"slurm-{dependent}.out").exists()


def test_record_shows_the_dependency(slurm_cluster, tmp_path):
    upstream = slurm_cluster.submit("sleep 2\n", cwd=tmp_path)
    dependent = slurm_cluster.submit(
        "true\n", args=[f"--dependency=afterok:{upstream}"], cwd=tmp_path
    )
    pending = slurm_cluster.job_record(dependent)
    assert pending["JobState"] == "PENDING"
    assert pending["Dependency"] == f"afterok:{upstream}(unfulfilled)"
    states = slurm_cluster.wait([upstream, dependent], timeout=30)
    assert states == {upstream: "COMPLETED", dependent: "COMPLETED"}
    # ISO timestamps: the dependent started once its upstream had ended
    assert (
        slurm_cluster.job_record(dependent)["StartTime"]
        >= (slurm_cluster.job_record(upstream)["EndTime"])
    )
