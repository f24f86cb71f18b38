"""`logger.mode=online` with an API key but no W&B server to reach: the stage ends at once with
one line (exit 3) naming the server and the command with `logger.mode=offline`, not after
wandb's ~100 s of retries with a traceback."""

from __future__ import annotations

import os
import shlex
import socket

import pytest

from tests.support.helpers import SMALL, closed_port, run_main_process

FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, the form of a real key
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "WANDB_HTTP_PROXY", "WANDB_HTTPS_PROXY")


@pytest.fixture
def dead_server(monkeypatch) -> str:
    """An API key, and WANDB_BASE_URL at a closed local port, reached directly."""
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    for var in PROXIES:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    return url


def test_the_reachability_check_tells_a_listening_port_from_a_closed_one():
    from src.stages.report.tracking import unreachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert unreachable(f"http://127.0.0.1:{listening.getsockname()[1]}/") is None
    port = closed_port()
    why = unreachable(f"http://127.0.0.1:{port}", timeout=2)
    assert why is not None and f"127.0.0.1:{port}" in why


def test_a_failed_wandb_init_is_one_line_and_leaves_no_run_variables(
    dead_server, tmp_path, monkeypatch
):
    """The server answers the probe but wandb.init still cannot get through (CommError)."""
    import wandb

    from src.config import Stage
    from src.core.errors import EnvironmentFailure
    from src.stages.report import tracking
    from tests.support.helpers import compose_cfg

    def init(**_):
        raise wandb.errors.CommError("Failed to get resume status: context deadline exceeded")

    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path))
    # wandb's settings are loaded once per process: keep this test's out of them
    monkeypatch.setattr(tracking, "server", lambda: (dead_server, None))
    monkeypatch.setattr(tracking, "signed_in", lambda _: True)
    monkeypatch.setattr(tracking, "unreachable", lambda *_: None)
    monkeypatch.setattr(wandb, "init", init)
    # start sets these for the process: monkeypatch puts back what was there (set first, so
    # that a variable absent before is removed again)
    for var in ("WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", *tracking.RUN_VARS):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    cfg = compose_cfg("model=tiny-mistral", "logger=wandb", "logger.mode=online")
    with pytest.raises(EnvironmentFailure, match="context deadline exceeded.*wandb sync") as err:
        tracking.start(cfg, Stage.generate)
    assert err.value.exit_code == 3 and err.value.fix == "logger.mode=offline"
    assert not [var for var in tracking.RUN_VARS if var in os.environ]


@pytest.mark.slow
def test_online_with_a_key_and_no_server_fails_at_once_with_one_line(dead_server, tmp_path):
    # WANDB_MODE=offline is set; the command's logger.mode=online wins over it. A process of its
    # own: W&B reads its server's address as it is imported. Its timeout: a hang (wandb's
    # retries) fails the test instead of passing late
    result = run_main_process(
        tmp_path, *SMALL, "logger=wandb", "logger.mode=online", "stage=generate", timeout=90
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], lines[-5:]
    assert lines[-1].startswith(f"error: W&B server {dead_server} ")
    assert "wandb sync" in lines[-1]
    assert lines[-1].endswith("`")
    command = shlex.split(lines[-1].rsplit("; run `", 1)[1].removesuffix("`"))
    assert command[:3] == ["python", "-m", "src.main"], command
    assert "logger.mode=offline" in command and "logger.mode=online" not in command
    assert "stage=generate" in command
