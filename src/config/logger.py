"""`logger`: experiment tracking (conf/logger/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import SI

from src.config.checks import _check
from src.config.choices import LoggerBackend, WandbMode


@dataclass
class LoggerConfig:
    """Experiment tracking (conf/logger/). Every run also writes a local metrics.json."""

    backend: LoggerBackend  # wandb: a W&B run per stage; none: the local metrics.json alone
    project: str = "selfplay-lab"  # the W&B project
    entity: str | None = None  # the W&B team or user; null: your default
    mode: WandbMode = SI("${oc.env:WANDB_MODE,online}")  # $WANDB_MODE, else online
    tags: list[str] = field(default_factory=list)  # on every run, beside the method and model
    dir: str = SI("${paths.root}/wandb")  # W&B's local files (offline runs: `wandb sync`)
    # the sweep this run is a point of, and the keys it sweeps (set by src.sweep): the group of
    # the lineage's curve run, and values in its config that W&B colours the points by
    sweep: str | None = None
    swept: list[str] = field(default_factory=list)  # the swept keys, e.g. [method.eta]
    # rows of each W&B table a stage logs (the eval's answers and verdicts, a sample of the
    # pairs); 0: no tables
    table_rows: int = 200
    # upload iteration t's checkpoint into its W&B artifact; false: a reference to its folder
    upload_weights: bool = False

    def __post_init__(self) -> None:
        _check(self.table_rows >= 0, "logger.table_rows", self.table_rows, "must be >= 0 (0: none)")
