"""A sweep file's grid (W&B's sweep format, `method: grid`): each Hydra key with the values it
takes, and its points as overrides. Read by src.sweep, which runs or submits the points, and by
src.plan, which prices them."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import yaml

from src.config.checks import ConfigError, check_one_line


def load_sweep(path: Path) -> dict[str, list[Any]]:
    """The grid of a sweep file: Hydra key -> the values it takes."""
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        raise ConfigError(f"{path}: a sweep needs a `parameters:` mapping (W&B's sweep format)")
    if sweep.get("method", "grid") != "grid":
        raise ConfigError(
            f"{path}: method {sweep['method']!r} is for W&B agents (`wandb sweep {path}`); "
            "a SLURM array needs method: grid"
        )
    grid = {}
    for key, spec in sweep["parameters"].items():
        if isinstance(spec, dict) and isinstance(spec.get("values"), list) and spec["values"]:
            grid[key] = spec["values"]
        elif isinstance(spec, dict) and "value" in spec:
            grid[key] = [spec["value"]]
        else:
            raise ConfigError(f"{path}: parameter {key!r} needs `values: [...]` (or `value:`)")
        # the points file holds one point per line, which an array task reads back with sed
        check_one_line(f"{path}: parameters", str(key))
        for value in grid[key]:
            check_one_line(f"{path}: parameters.{key}", str(value))
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[list[str]]:
    """Every combination, as Hydra overrides, in the file's order (the last key varies fastest)."""
    keys = list(grid)
    return [
        [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        for values in itertools.product(*grid.values())
    ]


def positive_int(text: str) -> int:
    """A count given on a command line (--parallel: the array's throttle `%N`, which SLURM reads
    only for N >= 1; --iterations): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return value
