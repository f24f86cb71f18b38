"""A real SLURM cluster for the tests: the session fixtures `slurm_cluster` and `two_nodes`.

The fixture starts munged + slurmctld + two slurmd nodes, each in a network namespace of its
own, with `slurm/cluster.sh start --nodes 2 <temp dir>` (root only: it installs the Debian
packages when missing); where namespaces cannot be made it starts the one-node form, and the
multi-node tests (`two_nodes`) skip with the reason. It points `SLURM_CONF` at the cluster for
the session and stops it at the end, whatever happened. When `SLURM_CONF` already names a
running cluster that slurm/cluster.sh wrote (CI starts one before the tests), the fixture uses
that one and leaves it running. Without root, or when the packages cannot be installed, the
tests skip with the reason; `SELFPLAY_SLURM_UNAVAILABLE=<reason>` makes them skip at once, and
`SELFPLAY_SLURM_MULTINODE_UNAVAILABLE=<reason>` says why a running one-node cluster has one node.

Accounting (slurmdbd, sacct) is off: job state comes from `scontrol show job -o`, which keeps
finished jobs for a day (MinJobAge).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "slurm" / "cluster.sh"
CONF_MARKER = "# written by selfplay-lab slurm/cluster.sh"
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")
# one `Key=value` of `scontrol show job -o`: values hold no spaces except in a few free-text
# fields, so a field runs up to the next ` Key=`
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w/:]*)=(.*?)(?=\s+[A-Za-z][\w/:]*=|\s*$)")


def parse_record(line: str) -> dict[str, str]:
    """One line of `scontrol show job -o` as a dict of its fields."""
    return {m.group(1): m.group(2) for m in _FIELD.finditer(line.strip())}


def _run(args: Sequence[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


@dataclass
class SlurmCluster:
    """A running cluster: where its files are, and helpers to submit and follow jobs."""

    state_dir: Path
    partition: str = "debug"
    # why the cluster has one node only (None: it has several, or nobody said)
    multinode_unavailable: str | None = None
    conf: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conf = self.state_dir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def submit(
        self,
        script: str | None = None,
        args: Iterable[str] = (),
        *,
        time_limit: str = "2",
        cwd: str | os.PathLike | None = None,
    ) -> str:
        """Submit a batch job and return its id (`sbatch --parsable`).

        `script` is the text of a batch script (given to sbatch on stdin; `#!/bin/bash` is added
        when it has no shebang); `args` are more sbatch options, e.g. `["--wrap", "true"]`.
        Every job gets `--time` (minutes, `time_limit`), `--kill-on-invalid-dep=yes` and the
        partition; `cwd` is the job's working folder (its `slurm-%j.out` goes there).
        """
        cmd = [
            "sbatch",
            "--parsable",
            f"--time={time_limit}",
            "--kill-on-invalid-dep=yes",
            f"--partition={self.partition}",
        ]
        if cwd is not None:
            cmd.append(f"--chdir={os.fspath(cwd)}")
        cmd += list(args)
        if script is not None and not script.startswith("#!"):
            script = "#!/bin/bash\n" + script
        result = _run(cmd, input=script, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def job_records(self, job_id: str | int) -> list[dict[str, str]]:
        """Every record `scontrol show job -o <id>` prints: one, or one per array task."""
        result = _run(["scontrol", "show", "job", "-o", str(job_id)], env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"scontrol show job {job_id}: {result.stderr.strip()}")
        return [parse_record(line) for line in result.stdout.splitlines() if line.strip()]

    def job_record(self, job_id: str | int) -> dict[str, str]:
        """The fields of one job (`JobState`, `Dependency`, `StartTime`, `ExitCode`, ...).

        For an array task pass `<array id>_<task>`; `job_records` gives all tasks of an array.
        """
        records = self.job_records(job_id)
        if len(records) != 1:
            raise ValueError(f"job {job_id} has {len(records)} records; use job_records")
        return records[0]

    def nodes(self) -> list[dict[str, str]]:
        """The fields of each node (`NodeName`, `CPUTot`, `RealMemory` in MB, `State`, ...)."""
        result = _run(["scontrol", "show", "node", "-o"], env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"scontrol show node: {result.stderr.strip()}")
        return [parse_record(line) for line in result.stdout.splitlines() if line.strip()]

    def node_processes(self, node: str, pattern: str) -> list[int]:
        """The pids of the job processes running on `node` whose command line holds `pattern`
        (read from /proc: every node of the local cluster is this machine)."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):
                continue  # not a process, or gone
            if f"SLURMD_NODENAME={node}".encode() in environ and pattern in cmdline:
                pids.append(int(proc.name))
        return pids

    @staticmethod
    def record_id(record: dict[str, str]) -> str:
        """`<id>` for a job, `<array id>_<task>` for an array task."""
        task = record.get("ArrayTaskId")
        if task is not None:
            return f"{record['ArrayJobId']}_{task}"
        return record["JobId"]

    def all_job_records(self) -> dict[str, list[dict[str, str]]]:
        """Every job's records from one `scontrol show job -o`, by job id (an array's by its
        array id): one process however many jobs are watched."""
        result = _run(["scontrol", "show", "job", "-o"], env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"scontrol show job: {result.stderr.strip()}")
        by_job: dict[str, list[dict[str, str]]] = {}
        for line in result.stdout.splitlines():
            if line.strip() and not line.startswith("No jobs"):
                record = parse_record(line)
                by_job.setdefault(record.get("ArrayJobId", record["JobId"]), []).append(record)
        return by_job

    def wait(
        self, job_ids: Iterable[str | int], timeout: float = 30, poll: float = 0.25
    ) -> dict[str, str]:
        """Poll until every job (every task of an array) is in a terminal state.

        Returns `{record id: JobState}`, a record id being `<id>` for a job and
        `<array id>_<task>` for each task of an array. Raises TimeoutError, naming the state and
        reason of the jobs not done, when `timeout` seconds pass first. Each poll is one
        `scontrol` (one per job each 0.2 s kept a fifth of a CPU busy beside the jobs).
        """
        ids = [str(j) for j in job_ids]
        deadline = time.monotonic() + timeout
        while True:
            states: dict[str, str] = {}
            waiting: list[str] = []
            by_job = self.all_job_records()
            for job_id in ids:
                if job_id not in by_job:
                    raise RuntimeError(f"scontrol show job: no job {job_id}")
                for rec in by_job[job_id]:
                    rid, state = self.record_id(rec), rec.get("JobState", "?")
                    states[rid] = state
                    if state not in TERMINAL_STATES:
                        waiting.append(f"{rid}: {state} (Reason={rec.get('Reason', '?')})")
            if not waiting:
                return states
            if time.monotonic() >= deadline:
                raise TimeoutError(f"jobs not done after {timeout:g}s: " + "; ".join(waiting))
            time.sleep(poll)


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on this machine now (held open together while chosen)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("0.0.0.0", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


MULTINODE_ENV = "SELFPLAY_SLURM_MULTINODE_UNAVAILABLE"


def _running_cluster_from_env() -> SlurmCluster | None:
    """The cluster SLURM_CONF names, when slurm/cluster.sh wrote it and it answers."""
    conf = os.environ.get("SLURM_CONF")
    if not conf or not Path(conf).is_file() or shutil.which("scontrol") is None:
        return None
    text = Path(conf).read_text()
    if CONF_MARKER not in text:
        return None  # a real cluster's configuration: never submit test jobs there
    ping = _run(["scontrol", "ping"], timeout=15)
    if "is UP" not in ping.stdout:
        return None
    match = re.search(r"^PartitionName=(\S+)", text, re.MULTILINE)
    return SlurmCluster(
        Path(conf).parent,
        match.group(1) if match else "debug",
        os.environ.get(MULTINODE_ENV)
        or "the running cluster (SLURM_CONF) has one node; start it with "
        "slurm/cluster.sh start --nodes 2",
    )


def _missing_packages() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node SLURM cluster for the session (see the module docstring)."""
    reason = os.environ.get("SELFPLAY_SLURM_UNAVAILABLE")
    if reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    existing = _running_cluster_from_env()
    if existing is not None:
        yield existing
        return
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (slurm/cluster.sh start installs/runs it)")
    if _missing_packages() and shutil.which("apt-get") is None:
        pytest.skip(f"SLURM is not installed ({', '.join(_missing_packages())}) and no apt-get")

    # not under pytest's basetemp: munged wants every folder above its socket open to all
    state_dir = Path(tempfile.mkdtemp(prefix="selfplay-slurm-test-"))
    state_dir.chmod(0o755)
    partition = "debug"
    ctld_port, slurmd_port = free_ports(2)
    env = {
        **os.environ,
        "SELFPLAY_SLURM_PARTITION": partition,
        # ports of our own, so a cluster someone else runs on this machine is no obstacle
        "SELFPLAY_SLURMCTLD_PORT": str(ctld_port),
        "SELFPLAY_SLURMD_PORT": str(slurmd_port),
    }
    env.pop("SLURM_CONF", None)
    cluster = SlurmCluster(state_dir, partition)
    old_conf = os.environ.get("SLURM_CONF")
    try:
        try:
            start = [str(CLUSTER_SH), "start", "--nodes", "2", str(state_dir)]
            result = _run(start, timeout=300, env=env)
            if result.returncode == 3:  # no network namespaces here: one node, no multi-node tests
                cluster.multinode_unavailable = (result.stderr.strip().splitlines() or ["?"])[-1]
                result = _run([str(CLUSTER_SH), "start", str(state_dir)], timeout=300, env=env)
        except subprocess.TimeoutExpired:
            pytest.fail("slurm/cluster.sh start took more than 300 s")
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            if result.returncode == 1 and _missing_packages():
                pytest.skip(f"could not install SLURM: {output.splitlines()[-1:]}")
            pytest.fail(f"slurm/cluster.sh start failed ({result.returncode}):\n{output}")
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        stop = _run([str(CLUSTER_SH), "stop", str(state_dir)], timeout=120, env=env)
        if stop.returncode == 0:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            print(f"slurm/cluster.sh stop failed; state left in {state_dir}:\n{stop.stderr}")


@pytest.fixture(scope="session")
def two_nodes(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The session cluster when it has two nodes (or more), else the tests skip with why not."""
    if len(slurm_cluster.nodes()) < 2:
        pytest.skip(f"no two-node SLURM cluster: {slurm_cluster.multinode_unavailable}")
    return slurm_cluster


@pytest.fixture(name="tmp_path")
def shared_tmp_path(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """pytest's tmp_path, but for a `slurm` test one on no memory file system: its jobs write
    under it, and src.slurm refuses a paths.root on tmpfs, which /tmp is on some machines. There
    it is a folder under the clone's .cache/ instead (the clone, which the jobs run from, must be
    on a file system the nodes share anyway), removed after the test."""
    from src.slurm import memory_file_system

    if request.node.get_closest_marker("slurm") is None or memory_file_system(tmp_path) is None:
        yield tmp_path
        return
    base = REPO_ROOT / ".cache" / "slurm-tests"
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="test-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def chain_here(slurm_cluster: SlurmCluster, tmp_path_factory, tiny_dir) -> Path:
    """The lineage of two iterations of tests.support.helpers.SLURM_SMALL (K = 3) run here, without
    SLURM: what the chain through the cluster gives (test_slurm_pipeline.py), and iteration 1's
    training what the two nodes' gives (test_slurm_multinode.py). Made once for the session."""
    from tests.support.helpers import SLURM_SMALL, run_without_slurm

    root = tmp_path_factory.mktemp("chain-here")
    return run_without_slurm([*SLURM_SMALL, "method.K=3", "iter=2"], root)
