"""The local SLURM cluster (slurm/cluster.sh) runs jobs, arrays and dependencies; with two nodes,
a job spans both, and stop removes the network it made."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.slurm_cluster import CLUSTER_SH, free_ports

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


def test_a_two_node_job_runs_one_task_on_each_node_with_its_own_address(two_nodes, tmp_path):
    script = (
        "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n"
        "srun bash -c 'echo $SLURM_NODEID $(hostname) $(getent hosts $(hostname) | cut -d\" \" -f1)'\n"
    )
    job = two_nodes.submit(script, cwd=tmp_path)
    assert two_nodes.wait([job], timeout=60) == {job: "COMPLETED"}
    assert two_nodes.job_record(job)["NodeList"] == "node[1-2]"
    lines = sorted((tmp_path / f"slurm-{job}.out").read_text().split("\n")[:2])
    tasks = [line.split() for line in lines]
    assert [(rank, host) for rank, host, _ in tasks] == [("0", "node1"), ("1", "node2")]
    addresses = {node["NodeName"]: node["NodeAddr"] for node in two_nodes.nodes()}
    assert [address for *_, address in tasks] == [addresses["node1"], addresses["node2"]]
    assert addresses["node1"] != addresses["node2"]


def test_stop_removes_the_namespaces_and_links_that_start_made(two_nodes):
    """A second two-node cluster of its own (own state directory, own ports), started and
    stopped: what it made of the network is gone afterwards, the session cluster's is not."""

    def netns() -> set[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}

    def links() -> set[str]:
        listed = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
        return {line.split(":")[1].strip().split("@")[0] for line in listed.stdout.splitlines()}

    before_ns, before_links = netns(), links()
    # not under pytest's basetemp: munged wants every folder above its socket open to all
    state = Path(tempfile.mkdtemp(prefix="selfplay-slurm-second-"))
    state.chmod(0o755)
    ctld, slurmd = free_ports(2)
    env = {**os.environ, "SELFPLAY_SLURMCTLD_PORT": str(ctld), "SELFPLAY_SLURMD_PORT": str(slurmd)}
    env.pop("SLURM_CONF", None)
    started = subprocess.run([str(CLUSTER_SH), "start", "--nodes", "2", str(state)],
                             capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        made_ns, made_links = netns() - before_ns, links() - before_links
        assert len(made_ns) == 2 and len(made_links) == 3, (made_ns, made_links)  # bridge, 2 veth
        assert all(os.path.isfile(f"/etc/netns/{ns}/hosts") for ns in made_ns)
    finally:
        stopped = subprocess.run([str(CLUSTER_SH), "stop", str(state)],
                                 capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    shutil.rmtree(state)
    assert netns() == before_ns and links() == before_links
    assert not any(os.path.exists(f"/etc/netns/{ns}") for ns in made_ns)
