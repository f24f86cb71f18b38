"""What wandb's own reader (`wandb leet inspect`) reads back from the offline runs under a
run root: each run's records and summary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

WANDB = Path(sys.executable).with_name("wandb")


@dataclass
class Run:
    """One offline run (one segment of a resumed one): its records and its summary."""

    folder: Path
    records: list[dict]
    summary: dict

    @property
    def stage(self) -> str | None:
        return self.summary["config"].get("stage")

    @property
    def iteration(self) -> int | None:
        return self.summary["config"].get("iter")

    @property
    def header(self) -> dict:
        return next(r["run"] for r in self.records if r["type"] == "run")

    def history(self) -> list[dict]:
        return [r["history"]["item"] for r in self.records if r["type"] == "history"]

    def artifacts(self, used: bool) -> dict[str, str]:
        """name -> digest of the artifacts the run logged (used=False) or used."""
        found = (r["artifact"] for r in self.records if r["type"] == "artifact")
        return {a["name"]: a["digest"] for a in found if bool(a.get("use_after_commit")) == used}

    def table(self, key: str) -> dict:
        (path,) = (self.folder / "files" / "media" / "table").glob(f"{key}_*.table.json")
        return json.loads(path.read_text())


def inspect(folder: Path, *options: str) -> str:
    shown = subprocess.run(
        [str(WANDB), "leet", "inspect", "--json", *options, str(folder)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def ended_records(folder: Path, wait_s: float = 60.0) -> list[dict]:
    """The records of a run finished in this process, once its file holds its exit record: the
    wandb service this process shares writes it after `wandb.finish()` returns, and under load
    that can come seconds later (a stage's own process waits for it as it exits). Fails if it
    never comes."""
    deadline = time.monotonic() + wait_s
    while True:
        records = [json.loads(line) for line in inspect(folder).splitlines()]
        if any(r["type"] == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def offline_runs(root: Path) -> list[Run]:
    """Every offline run under the root's W&B folder, in the order they were made."""
    folders = sorted((root / "wandb").rglob("offline-run-*"), key=lambda p: p.name)
    return [
        Run(
            f,
            [json.loads(line) for line in inspect(f).splitlines()],
            json.loads(inspect(f, "--summary")),
        )
        for f in folders
    ]
