"""Kills vLLM's engine processes once the stage that started them is gone.

    python src/generation/vllm_watchdog.py STAGE_PID ENGINE_PID...

vLLM's engine does not watch its client: a stage killed with SIGKILL (or by the OOM killer)
would leave it running, holding its memory (2.2 GB for a tiny model on CPU), and a re-run would
start a second one. src/generation/vllm_processes.py starts this beside the engine, in a
session of its own (the terminal's Ctrl-C reaches the stage, not it). It imports nothing of the
project: psutil only, so it starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import sys
import time

import psutil

POLL_S = 0.5


def process(pid: str) -> psutil.Process | None:
    try:
        return psutil.Process(int(pid))
    except psutil.Error:  # gone already
        return None


def runs(client: psutil.Process | None) -> bool:
    if client is None:  # the stage ended (killed) before this process started: the engine goes
        return False
    try:
        return client.is_running() and client.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone between the two reads (reaped): gone
        return False


def main(argv: list[str]) -> None:
    client, engine = process(argv[0]), [p for p in map(process, argv[1:]) if p is not None]
    while runs(client):
        time.sleep(POLL_S)
    doomed = []
    for p in engine:
        doomed.append(p)
        with contextlib.suppress(psutil.Error):
            doomed += p.children(recursive=True)
    for p in doomed:
        with contextlib.suppress(psutil.Error):
            p.kill()  # psutil checks the pid still names the same process


if __name__ == "__main__":
    main(sys.argv[1:])
