"""What one lineage made, another with the same key takes (src/core/reuse.py): a lineage at another
learning rate generates and ranks nothing for iteration 1, its stages the first lineage's bytes;
deleting the first leaves it whole; `pipeline.reuse=false` computes; two processes wanting one
key at once compute it once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import REPO_ROOT, Stage
from src.core.records import read_record
from src.core.registry import STAGES
from src.core.state import state_of
from tests.support.helpers import OFFLINE, SMALL, cli, compose_cfg

OTHER_RATE = "training.learning_rate=5e-5"  # another lineage (run_name names the rate)
SHARED = (Stage.generate, Stage.rank, Stage.pairs)  # what a learning rate does not read


def stage_dirs(root: Path, *overrides: str) -> dict[Stage, Path]:
    cfg = compose_cfg(*SMALL, f"paths.root={root}", "iter=1", *overrides)
    return {stage: cfg.stage_dir(stage) for stage in STAGES}


def outputs(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in read_record(folder)["outputs"]}


@pytest.mark.slow
def test_a_lineage_at_another_learning_rate_takes_iteration_1s_generate_rank_and_pairs(lineage):
    """Generate, rank and pairs are taken (the same bytes, hard links, read-only), named with
    where from; the training computes. The taken lineage stands alone: with the first deleted,
    every stage of it is still finished. `pipeline.reuse=false` computes every stage.

    Slow: two trainings and a generation and ranking of the tiny lineage, in-process (~25 s)."""
    root = lineage("one-iteration").root
    first, second = stage_dirs(root), stage_dirs(root, OTHER_RATE)
    made = cli(root, "iter=1", OTHER_RATE)
    assert made.returncode == 0, made.stderr[-3000:]
    for stage in SHARED:
        assert f"[main] stage {stage.value}: reused from {first[stage]}" in made.stderr, stage
        assert outputs(second[stage]) == outputs(first[stage]), stage
        name = next(iter(read_record(first[stage])["outputs"]))
        assert (second[stage] / name).stat().st_ino == (first[stage] / name).stat().st_ino
        assert read_record(second[stage])["key"] == read_record(first[stage])["key"]
    assert "[generate]" not in made.stderr and "[rank]" not in made.stderr, "nothing computed"
    assert "reused from" not in made.stderr.split(f"stage train -> {second[Stage.train]}")[1]

    shutil.rmtree(first[Stage.generate].parents[1])  # the lineage that made them, deleted
    tree = compose_cfg(*SMALL, f"paths.root={root}", "iter=1", OTHER_RATE).as_tree()
    assert {state_of(tree, s).status for s in STAGES if not STAGES[s].optional} == {"done"}

    computed = cli(root, "iter=1", "training.learning_rate=2e-5", "pipeline.reuse=false")
    assert computed.returncode == 0, computed.stderr[-3000:]
    assert "reused from" not in computed.stderr and "[generate]" in computed.stderr


@pytest.mark.slow
def test_two_processes_wanting_one_key_compute_it_once(tmp_path):
    """Two lineages' generate started at once on a fresh root: one computes under the key's lock,
    the other waits for it and takes its rows, the same bytes.

    Slow: two processes, one generation (~20 s)."""
    root = tmp_path / "runs"
    rates = ("training.learning_rate=1e-4", OTHER_RATE)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "src.main",
                *SMALL,
                f"paths.root={root}",
                "iter=1",
                "stage=generate",
                rate,
            ],  # fmt: skip
            cwd=REPO_ROOT,
            env={**os.environ, **OFFLINE},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rate in rates
    ]
    said = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], said
    assert sum("stage generate: reused from" in s for s in said) == 1, said
    folders = [stage_dirs(root, rate)[Stage.generate] for rate in rates]
    assert outputs(folders[0]) == outputs(folders[1])
