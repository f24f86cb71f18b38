"""The scripts `python -m src.slurm` renders, run by the local SLURM cluster
(tests/support/slurm_cluster.py): the options sbatch reads back and the environment a job gets.
Their rendering without a cluster: tests/tools/test_slurm_render.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.config import Stage
from tests.support.helpers import SLURM_SMALL


@pytest.mark.slurm
def test_sbatch_reads_a_quoted_output_path_back(slurm_cluster, tmp_path, monkeypatch):
    """A run root with a blank and a '#': the job's log lands where --output says."""
    root = tmp_path / "runs #1"
    monkeypatch.setenv("SELFPLAY_RUNS", str(root))  # the job inherits it
    overrides = [*SLURM_SMALL, f"hardware.slurm.partition={slurm_cluster.partition}"]
    text, _ = failing_pairs_job(slurm_cluster, overrides)
    assert "[main] stage pairs ->" in text and "/iter1/rank is not finished" in text, text


def failing_pairs_job(slurm_cluster, overrides: list[str]) -> tuple[str, str]:
    """The pairs stage of an iteration that is not ranked, submitted alone: a job that ends at
    once and fails, its log saying why. Returns its log's text and its job id."""
    from src.config import compose
    from src.slurm import stage_job, submit

    cfg = compose(overrides, 1)
    job = stage_job(cfg, Stage.pairs, overrides, after=None)
    script_dir = Path(cfg.run.dir) / "slurm"
    (script_dir / "logs").mkdir(parents=True)
    ids = submit([job], script_dir, dry_run=False)
    assert set(slurm_cluster.wait(ids.values(), timeout=180).values()) == {"FAILED"}
    (log,) = (script_dir / "logs").glob(f"{job.name}_{ids[job.name]}.out")
    return log.read_text(), ids[job.name]


@pytest.mark.slurm
def test_a_job_runs_the_site_setup_with_the_configs_environment(slurm_cluster, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """On the local cluster: the setup lines run after the exports, which come from the config
    and not from the submitting shell, and the site's sbatch option reaches SLURM."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # sbatch passes it on; the script sets 1
    hf_home = tmp_path / "hf home"
    probe = 'echo "[probe] PROBE=$PROBE HF_HUB_OFFLINE=$HF_HUB_OFFLINE HF_HOME=$HF_HOME"'
    overrides = [*SLURM_SMALL, f"hardware.slurm.partition={slurm_cluster.partition}",
                 f"paths.hf_home='{hf_home}'", f"hardware.slurm.setup=['export PROBE=ok','{probe}']",
                 "hardware.slurm.sbatch=['--comment=probe']"]  # fmt: skip
    text, job_id = failing_pairs_job(slurm_cluster, overrides)
    assert f"[probe] PROBE=ok HF_HUB_OFFLINE=1 HF_HOME={hf_home}\n" in text, text
    assert "/iter1/rank is not finished" in text, text
    assert slurm_cluster.job_record(job_id)["Comment"] == "probe"
