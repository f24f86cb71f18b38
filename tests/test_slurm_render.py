"""`python -m src.slurm --dry-run`: the sbatch scripts and lines of a chain, without a cluster."""

from __future__ import annotations

import re
import subprocess

import pytest

from src.slurm import main


@pytest.fixture(autouse=True)
def runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))


def dry_run(capsys, *args: str) -> dict[str, str]:
    main(["--dry-run", *args])
    out = capsys.readouterr().out
    scripts = {}
    for block in out.split("# ---- ")[1:]:
        path, _, body = block.partition("\n")
        scripts[path.rsplit("/", 1)[1].removesuffix(".sbatch")] = body
    return scripts


def test_a_three_iteration_gemma_chain_on_8_gpus(capsys, tmp_path):
    scripts = dry_run(
        capsys, "--iterations", "3", "experiment=gemma-2-9b-it-sppo", "hardware=slurm-node-8gpu",
        "hardware.slurm.partition=gpu",
    )  # fmt: skip
    names = list(scripts)
    assert names == [
        f"eta1000-lr5e-07-K5-it{t}-{s}"
        for t in (1, 2, 3)
        for s in ("generate", "rank", "pairs", "train")
    ]
    # each job waits for the one before it: afterok, cancelled if that one fails
    for before, after in zip(names, names[1:], strict=False):
        line = scripts[after].split("# $ ")[1].splitlines()[0]
        assert f"--dependency=afterok:<{before}>" in line and "--kill-on-invalid-dep=yes" in line
    assert "--dependency" not in scripts[names[0]].split("# $ ")[1]
    gen = scripts["eta1000-lr5e-07-K5-it2-generate"]
    assert "#SBATCH --array=0-7" in gen, "one generation shard per GPU"
    assert "#SBATCH --gpus-per-node=1" in gen and "#SBATCH --partition=gpu" in gen
    assert re.search(
        r"-m src\.main experiment=gemma-2-9b-it-sppo .* stage=generate iter=2 generation\.num_shards=8",
        gen,
    )
    train = scripts["eta1000-lr5e-07-K5-it3-train"]
    assert "#SBATCH --gpus-per-node=8" in train and "#SBATCH --nodes=1" in train
    assert "#SBATCH --requeue" in train and "#SBATCH --signal=B:USR1@300" in train
    assert "%x_%A_%a.out" in train
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


def test_a_two_node_training_expands_the_node_rank_inside_each_task(capsys, tmp_path):
    scripts = dry_run(capsys, "experiment=gemma-2-9b-it-sppo", "hardware=slurm-multinode")
    train = scripts["eta1000-lr5e-07-K5-it1-train"]
    assert "#SBATCH --nodes=2" in train and "#SBATCH --ntasks-per-node=1" in train
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in train
    # single-quoted: the batch shell leaves $SLURM_NODEID for each task's own shell
    (srun,) = [line for line in train.splitlines() if line.startswith("srun ")]
    assert re.fullmatch(
        r"srun --kill-on-bad-exit=1 bash -c 'NODE_RANK=\$SLURM_NODEID exec \S+python -m src\.main .*stage=train iter=1' &",
        srun,
    )
    for name, script in scripts.items():
        body = script.split("\n# $ ")[0]
        checked = subprocess.run(["bash", "-n"], input=body, text=True, capture_output=True)
        assert checked.returncode == 0, (name, checked.stderr)


def test_a_hardware_without_slurm_resources_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", "model=tiny-mistral"])
    assert exit_info.value.code == 1
    assert (
        "hardware=cpu has no SLURM resources: choose one of the hardware=slurm-* options"
        in capsys.readouterr().err
    )
