"""The threads of this project's CPU work: one per CPU the process may use, and OpenMP told not
to spin long when it waits.

torch starts one OpenMP thread per CPU it sees, and its OpenMP runtime (GNU libgomp) lets a
thread that waits for the others spin some 300,000 times before it sleeps. Two things then go
wrong where the CPUs are shared:

- The process may use fewer CPUs than it sees: SLURM's allocation (`SLURM_CPUS_PER_TASK`, on a
  cluster that does not bind tasks to cores) and a cgroup CPU quota (a container's `--cpus`) are
  invisible to torch, which starts a thread per core of the node.
- Other processes share the cores (a CI machine, a workstation, a node without core binding).
  A spinning thread then burns the time slice that the thread it waits for needed. On 2 cores
  beside two busy processes, HF generation of a tiny model fell from 4,600-6,400 tokens/s quiet
  to 730-960 (medians) with torch's defaults; with `GOMP_SPINCOUNT=10000` it ran at 4,900-6,100
  quiet and 1,100-2,400 beside them. One thread does best there (2,300-2,400) but gives up a
  quarter to a third on a quiet machine, so it is the user's choice (`OMP_NUM_THREADS=1`), not
  this module's (docs/performance.md, "Threads, beside busy processes").

`configure()` runs first in every entry point (`python -m src.main`, the tests, the benchmarks'
workers), before torch loads: it sets `OMP_NUM_THREADS` to the CPUs the process may use and
`GOMP_SPINCOUNT`, each unless the user set it. The count does not follow the machine's load: a
thread count changes a float sum's order, so the same config on the same allocation gives the
same bytes whatever runs beside it. Training workers get their share (`threads_per_process`);
vLLM's CPU worker binds its own threads, to the same CPUs (src/generation/vllm_engine.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# libgomp's spins before a waiting thread sleeps: long enough to bridge the gaps between the
# small ops of one forward on a quiet machine, short enough not to starve a shared core
SPIN_COUNT = "10000"


def cgroup_cpu_quota(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPUs a cgroup quota allows this process (e.g. 1.5), or None where none is set.

    cgroup v2 keeps `<quota> <period>` in cpu.max, v1 the two in cpu.cfs_quota_us and
    cpu.cfs_period_us; a quota anywhere up the process's cgroup path limits it.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            base, read = root, _v2_quota
        elif "cpu" in controllers.split(","):
            base, read = root / controllers, _v1_quota
            if not base.is_dir():
                base = root / "cpu"
        else:
            continue
        here = base / path.lstrip("/")
        while True:
            quota = read(here)
            if quota is not None:
                limits.append(quota)
            if here == base or base not in here.parents:
                break
            here = here.parent
    return min(limits) if limits else None


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


def allowed_cpus(env=os.environ, quota: float | None = None) -> list[int]:
    """The ids of the CPUs this process may use: its affinity, cut to SLURM's allocation and to
    a cgroup quota (`quota`: a reading to use instead of the cgroups'). Never empty."""
    cpus = sorted(os.sched_getaffinity(0))
    limit = len(cpus)
    quota = cgroup_cpu_quota() if quota is None else quota
    if quota is not None:
        limit = min(limit, max(1, math.floor(quota)))  # threads beyond a quota are throttled
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limit = min(limit, int(slurm))
    return cpus[:limit]


# The OMP_NUM_THREADS that `configure` chose, beside it in the environment (so that child
# processes also tell it from one the user set).
CHOSEN_MARK = "SELFPLAY_OMP_NUM_THREADS"


def threads_per_process(processes: int, env=os.environ) -> int:
    """Threads for each of `processes` processes sharing this one's CPUs (training workers): the
    user's OMP_NUM_THREADS where they set one, else the allowed CPUs shared out."""
    users = env.get("OMP_NUM_THREADS", "")
    if users.isdigit() and int(users) > 0 and users != env.get(CHOSEN_MARK):
        return int(users)
    return max(1, len(allowed_cpus(env)) // processes)


def configure(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set OMP_NUM_THREADS and GOMP_SPINCOUNT in `env` where the user has not; returns what it
    set. Call it before torch loads: OpenMP reads both once, when it starts."""
    wanted = {"OMP_NUM_THREADS": str(len(allowed_cpus(env)))}
    if "OMP_WAIT_POLICY" not in env:  # a wait policy of the user's decides the spinning
        wanted["GOMP_SPINCOUNT"] = SPIN_COUNT
    chosen = {key: value for key, value in wanted.items() if not env.get(key)}
    env.update(chosen)
    if "OMP_NUM_THREADS" in chosen:
        env[CHOSEN_MARK] = chosen["OMP_NUM_THREADS"]
    return chosen
