"""src/core/threads.py: the CPUs a process may use (affinity, SLURM, cgroup quotas), and the
OpenMP settings every entry point gives torch before it loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from src.config import REPO_ROOT
from src.core import threads

AFFINITY = sorted(os.sched_getaffinity(0))


def test_slurm_and_a_quota_cut_the_affinity_never_to_nothing():
    assert threads.allowed_cpus({}, quota=float(len(AFFINITY) + 4)) == AFFINITY
    assert threads.allowed_cpus({"SLURM_CPUS_PER_TASK": "1"}, quota=64.0) == AFFINITY[:1]
    assert threads.allowed_cpus({"SLURM_CPUS_PER_TASK": "999"}, quota=64.0) == AFFINITY
    assert threads.allowed_cpus({}, quota=1.5) == AFFINITY[:1]  # 1.5 CPUs: one thread
    assert threads.allowed_cpus({}, quota=0.2) == AFFINITY[:1]  # at least one
    assert threads.allowed_cpus({"SLURM_CPUS_PER_TASK": "x"}, quota=64.0) == AFFINITY


def cgroups(tmp_path: Path, proc_line: str, files: dict[str, str]) -> float | None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "proc-cgroup").write_text(proc_line + "\n")
    return threads.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "proc-cgroup")


def test_a_cgroup_v2_quota_up_the_path_limits(tmp_path):
    files = {"fs/a/b/cpu.max": "max 100000\n", "fs/a/cpu.max": "150000 100000\n"}
    assert cgroups(tmp_path, "0::/a/b", files) == 1.5
    assert cgroups(tmp_path / "none", "0::/a/b", {"fs/a/b/cpu.max": "max 100000\n"}) is None


def test_a_cgroup_v1_quota(tmp_path):
    files = {
        "fs/cpu,cpuacct/job/cpu.cfs_quota_us": "200000\n",
        "fs/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
    }
    assert cgroups(tmp_path, "4:cpu,cpuacct:/job", files) == 2.0
    unlimited = {**files, "fs/cpu,cpuacct/job/cpu.cfs_quota_us": "-1\n"}
    assert cgroups(tmp_path / "u", "4:cpu,cpuacct:/job", unlimited) is None
    assert cgroups(tmp_path / "m", "4:memory:/job", files) is None  # no cpu controller line


def test_configure_fills_in_only_what_the_user_left_unset():
    env = {"SLURM_CPUS_PER_TASK": "1"}
    assert threads.configure(env) == {"OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": threads.SPIN_COUNT}
    assert env[threads.CHOSEN_MARK] == "1"
    mine = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.configure(mine) == {} and mine["OMP_NUM_THREADS"] == "3"
    assert threads.CHOSEN_MARK not in mine


def test_training_workers_share_the_cpus_unless_the_user_fixed_a_count():
    chosen: dict[str, str] = {}
    threads.configure(chosen)  # also what a child process inherits from its parent
    assert threads.threads_per_process(2, chosen) == max(1, len(AFFINITY) // 2)
    assert threads.threads_per_process(4, {"OMP_NUM_THREADS": "3"}) == 3


def test_torch_starts_with_the_chosen_threads():
    """The settings reach torch: a fresh interpreter started with them runs that many threads."""
    env = {**os.environ, "SLURM_CPUS_PER_TASK": "1"}
    for key in ("OMP_NUM_THREADS", threads.CHOSEN_MARK, "GOMP_SPINCOUNT"):
        env.pop(key, None)
    code = (
        "from src.core import threads; threads.configure(); import os, torch; "
        "print(torch.get_num_threads(), os.environ['GOMP_SPINCOUNT'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", threads.SPIN_COUNT]
