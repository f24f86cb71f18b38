"""Weights & Biases: one run per (lineage, iteration, stage), on rank 0 only (docs/design.md §8).

- group = the lineage `<model>/<method>/<run_name>`, job_type = the stage, name
  `Config.stage_run_name` (`<run_name>-it<t>-<stage>`, `-shard<i>of<n>` added per shard), tags = `logger.tags` + method + model;
- the run id is a hash of the run directory, the iteration and the stage's folder (and the
  shard, for a sharded stage; an eval against another reference than the base model has a
  folder, so a run, of its own), with resume "allow": a requeued job continues its run instead
  of starting a second one;
- config: the resolved config plus flat `eta beta lr K method loss model iter stage eval_folder`
  to filter and plot by; the summary: the stage's `metrics.json` numbers, flattened (`arena_hard.lower`),
  and the eval stage's benchmark figures under keys that say what each is (`benchmark_figures`:
  `mt_bench[gpt-4]`, `leaderboard/average`); training adds its curves through the Trainer's own
  W&B callback, which finds this run already open and logs into it.

`logger=none` tracks nothing; `logger.mode=offline` (or WANDB_MODE=offline) needs no server
(`wandb sync` uploads later). Every stage writes its local metrics.json either way. Online, a
server that cannot be reached, or no API key (WANDB_API_KEY, `wandb login`), ends the stage at
once with one line (exit 3), not after wandb's own retries (~100 s) and a traceback.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from src.config import Config, LoggerBackend, Stage, WandbMode
from src.core.errors import EnvironmentFailure
from src.core.fingerprints import flatten
from src.core.layout import iteration_name
from src.core.registry import STAGES
from src.stages.common import stage_shard
from src.stages.report import chain, tables
from src.stages.report.results import JUDGED_HEADLINES

# Set while a stage's run is open, so that the Trainer's callback (or a child process) joins it;
# cleared when it closes, so that nothing started later in this process resumes it by accident.
RUN_VARS = ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE")

# Seconds to wait for the W&B server's TCP handshake: a live server answers in far less.
CONNECT_TIMEOUT = 5.0


def enabled(cfg: Config) -> bool:
    return cfg.logger.backend == LoggerBackend.wandb


def lineage(cfg: Config) -> str:
    return f"{cfg.model.name}/{cfg.method.name.value}/{cfg.run_name}"


def part(cfg: Config, stage: Stage) -> str:
    """ "" or "-shard<i>of<n>": each shard of a sharded stage (a SLURM array task) is its own run."""
    if STAGES[stage].sharded_by is None:
        return ""
    shard = stage_shard(cfg, stage)
    return f"-shard{shard.index}of{shard.count}" if shard.count > 1 else ""


def run_id(cfg: Config, stage: Stage) -> str:
    where = f"{iteration_name(cfg.iter)}|{cfg.stage_folder(stage)}{part(cfg, stage)}"
    key = f"{Path(cfg.run.dir).resolve()}|{where}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def flat_config(cfg: Config) -> dict[str, Any]:
    """The keys runs are filtered, grouped and coloured by, flat (the sections hold them too)."""
    return {
        "eta": cfg.method.eta,
        "beta": cfg.method.beta,
        "lr": cfg.training.learning_rate,
        "K": cfg.method.K,
        "method": cfg.method.name.value,
        "loss": cfg.method.loss.value,
        "model": cfg.model.name,
    }


def tracked_config(cfg: Config, stage: Stage) -> dict[str, Any]:
    return {
        **cfg.as_tree(),
        **flat_config(cfg),
        "iter": cfg.iter,
        "stage": stage.value,
        # "" for the eval against the base model, `vs-<name>` for one against another reference or
        # by other judges
        "eval_folder": cfg.stage_folder(stage).partition("/")[2],
    }


def unreachable(url: str, proxy: str | None = None, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why a TCP connection to `url`'s host and port (or to `proxy`'s, the way requests go out
    through one) cannot be opened within `timeout` seconds; None when it opens. Sends nothing."""
    parts = urlsplit(proxy or url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as err:  # refused, timed out, unknown host, no route, ...
        return (
            f"cannot connect to {parts.hostname}:{port}"
            + (f" (proxy {proxy})" if proxy else "")
            + f": {err.strerror or err}"
        )


def server() -> tuple[str, str | None]:
    """The server URL wandb.init will talk to (WANDB_BASE_URL, `wandb login --host`'s setting, or
    wandb's default) and the proxy it goes through, if any: wandb's own setting, else the
    environment's HTTP(S)_PROXY unless NO_PROXY exempts the host."""
    from wandb.sdk import wandb_setup  # wandb's settings, as wandb.init loads them (wandb 0.31)

    settings = wandb_setup.singleton().settings
    url = settings.base_url
    https = urlsplit(url).scheme == "https"
    proxy = settings.https_proxy if https else settings.http_proxy
    if not proxy and not urllib.request.proxy_bypass(urlsplit(url).hostname or ""):
        proxy = urllib.request.getproxies().get("https" if https else "http")
    return url, proxy


def signed_in(url: str) -> bool:
    """Whether wandb finds well-formed credentials for `url` (WANDB_API_KEY, ~/.netrc, its
    settings) without prompting. Without them wandb.init fails at once, before it calls the
    server, and its message (`wandb login`) is the one to show."""
    from wandb.errors import Error
    from wandb.sdk.lib import wbauth

    try:
        found = wbauth.authenticate_session(
            host=url, source="wandb.init()", prompt=False, update_session=False
        )
    except Error:  # a malformed key: wandb.init names it
        return False
    return found is not None


def _offline_instead(url: str, what: str) -> EnvironmentFailure:
    for var in RUN_VARS:  # nothing started later in this process joins a run that never opened
        os.environ.pop(var, None)
    return EnvironmentFailure(
        f"W&B server {url} (logger.mode=online): {what}; check WANDB_BASE_URL and the network, "
        "or track offline and upload the run later with `wandb sync`",
        fix="logger.mode=offline",
    )


def start(cfg: Config, stage: Stage) -> None:
    """Open (or resume) the stage's run; a no-op with `logger=none`."""
    if not enabled(cfg):
        return
    import wandb

    log = cfg.logger
    Path(log.dir).mkdir(parents=True, exist_ok=True)
    # the Trainer's callback and any child process read these, the same for every run of the
    # process; the run's own (RUN_VARS) are set once it is open (`joined`)
    os.environ.update(
        {"WANDB_DIR": log.dir, "WANDB_MODE": log.mode.value, "WANDB_PROJECT": log.project}
    )
    if log.entity:
        os.environ["WANDB_ENTITY"] = log.entity
    if log.mode == WandbMode.online:
        # wandb.init retries an unreachable server for ~100 s, then fails with a traceback: probe
        # it first, once there is a key (without one, wandb.init's own message comes at once)
        url, proxy = server()
        if signed_in(url) and (why := unreachable(url, proxy)):
            raise _offline_instead(url, why)
    try:
        wandb.init(
            project=log.project,
            entity=log.entity,
            group=lineage(cfg),
            job_type=stage.value,
            name=f"{cfg.stage_run_name(stage)}{part(cfg, stage)}",
            id=run_id(cfg, stage),
            resume="allow",
            tags=[*log.tags, cfg.method.name.value, cfg.model.name],
            dir=log.dir,
            mode=log.mode.value,
            config=tracked_config(cfg, stage),
        )
    # online without an API key, or a malformed or rejected one (a CommError, but not the
    # server's): the machine's credentials, not the config
    except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as err:
        for var in RUN_VARS:
            os.environ.pop(var, None)
        said = str(err).splitlines()[0].rstrip(".")
        raise EnvironmentFailure(
            f"W&B (logger.mode={log.mode.value}): {said}; set WANDB_API_KEY or run `wandb login` "
            "on this machine, or track offline (upload later with `wandb sync`) or not at all "
            "(logger=none)",
            fix="logger.mode=offline" if log.mode == WandbMode.online else None,
        ) from None
    except (wandb.errors.CommError, TimeoutError) as err:  # reachable, yet init did not go through
        raise _offline_instead(
            server()[0], (str(err) or "init timed out").splitlines()[0]
        ) from None
    joined(cfg, stage)
    chain.log_used(wandb.run, cfg, stage)


def joined(cfg: Config, stage: Stage) -> None:
    """The stage's run, open, named to the Trainer's callback and to any child process, which
    join it. Set after wandb.init: a wandb.init after the process's first says, on the
    terminal, that the variables changed since that first one are ignored (this process's runs
    take theirs as arguments), at every stage."""
    os.environ.update(
        {
            "WANDB_RUN_ID": run_id(cfg, stage),
            "WANDB_RESUME": "allow",
            "WANDB_RUN_GROUP": lineage(cfg),
            "WANDB_JOB_TYPE": stage.value,
        }
    )


def finish(cfg: Config, stage: Stage, metrics: dict[str, Any], exit_code: int = 0) -> None:
    """Put the stage's numbers (and rates derived from them) in the run's summary and, for a stage
    that finished (`exit_code` 0: else the command's), its tables (src/stages/report/tables.py) and
    the artifacts it made (src/stages/report/chain.py); close it."""
    if not enabled(cfg):
        return
    import wandb

    for var in RUN_VARS:
        os.environ.pop(var, None)
    if wandb.run is None:
        return
    numbers = {k: v for k, v in flatten(metrics).items() if _number(v)}
    seconds = numbers.get("seconds")
    for count in ("tokens", "comparisons"):  # generation tokens/s, judge comparisons/s
        if seconds and count in numbers:
            numbers[f"{count}_per_second"] = numbers[count] / seconds
    numbers |= benchmark_figures(metrics)
    if numbers:
        wandb.run.summary.update(numbers)
    if not exit_code:
        for key, (columns, rows) in tables.stage_tables(cfg, stage).items():
            wandb.run.log({key: wandb.Table(columns=columns, data=rows)})
        chain.log_produced(wandb.run, cfg, stage)
    wandb.finish(exit_code=exit_code)


def benchmark_figures(metrics: dict[str, Any]) -> dict[str, float]:
    """The eval stage's benchmark figures as a researcher compares them across runs: each judged
    benchmark's headline (src.compare's JUDGED_HEADLINES) under `<benchmark>[<judge>]`, the
    column src.compare shows, with its interval where it has one (`arena_hard[gpt-4]/lower`,
    `/upper`), so that figures by different judges are never one series; the Open LLM
    Leaderboard's as it shows them (`leaderboard/<benchmark>`: v2's normalised, 0-100, and their
    `average`; v1's raw, in percent). A figure that is None is left out."""
    figures: dict[str, float] = {}
    for benchmark, headline in JUDGED_HEADLINES.items():
        section = metrics.get(benchmark)
        if not isinstance(section, dict) or not isinstance(section.get("judge"), str):
            continue
        key = f"{benchmark}[{section['judge']}]"
        for suffix, field in (("", headline), ("/lower", "lower"), ("/upper", "upper")):
            if _number(section.get(field)):
                figures[key + suffix] = section[field]
    board = metrics.get("leaderboard")
    if isinstance(board, dict):
        from src.evaluation.leaderboard import shown_scores

        figures |= {f"leaderboard/{k}": v for k, v in shown_scores(board).items() if _number(v)}
    return figures


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
