"""`python -m src.sweep --dry-run`: a sweep file's points, composed and checked, as one SLURM
array, and every sweep file refused with its reason, without a cluster."""

from __future__ import annotations

import re
import subprocess

import pytest

from src.config import REPO_ROOT
from tests.support.helpers import Composed, composing

pytestmark = pytest.mark.usefixtures("without_assets")  # tests/tools/conftest.py


@pytest.mark.slow
def test_the_grid_sweep_is_one_throttled_array_of_27_lineages(capsys, tmp_path):
    from src.sweep import main as sweep

    sweep(["sweeps/grid.yaml", "--dry-run", "--parallel", "4", "--iterations", "3",
           "model=tiny-mistral", "hardware=slurm-cpu"])  # fmt: skip
    out = capsys.readouterr().out
    points = out.split("# ---- ")[1].split("\n", 1)[1].strip().splitlines()
    assert len(points) == 27 == len(set(points))
    assert points[0] == "method.eta=1000 training.learning_rate=2.5e-07 method.K=3"
    script = out.split("# ---- ")[2]
    assert "#SBATCH --array=0-26%4" in script
    pinned = "generation.shard=0 generation.num_shards=1 ranker.shard=0 ranker.num_shards=1"
    # every point's curve run in the sweep's W&B group, coloured by the keys it sweeps
    tracked = "logger.sweep=grid 'logger.swept=[method.eta,training.learning_rate,method.K]'"
    assert (
        f'-m src.main model=tiny-mistral hardware=slurm-cpu {pinned} {tracked} "${{POINT[@]}}" '
        '"$@" &' in script
    )
    assert "\n  run iter=3\n" in script
    # iteration 1's generate, rank and pairs, which the points of one K read the same: made once
    # for each K, as its first point, before the array, which waits for them
    first = [line for line in out.splitlines() if "SWEEP_SHARED=" in line]
    assert [line.split("--array=")[1].split()[0] for line in first] == ["0", "1", "2"]
    assert all(" --export=ALL,SWEEP_SHARED=pairs " in line for line in first)
    assert out.splitlines()[-1].startswith("# $ sbatch --parsable '--dependency=afterok:<shared>' ")
    body = script.split("\n", 1)[1].split("\n# $ ")[0]
    assert subprocess.run(["bash", "-n"], input=body, text=True).returncode == 0
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "name",
    ["eta", "lr", "k", pytest.param("grid", marks=pytest.mark.slow)],  # 27 compositions
)
def test_every_sweep_file_expands_into_distinct_valid_points(name):
    from src.config.grid import grid_points, load_sweep
    from src.sweep import check_points

    points = grid_points(load_sweep(REPO_ROOT / "sweeps" / f"{name}.yaml"))
    configs = check_points(points, ["model=tiny-mistral", "hardware=slurm-cpu"], 1)
    assert len({c.run.dir for c in configs}) == len(points) >= 3


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (
            "method: random\nparameters: {method.eta: {values: [1, 2]}}\n",
            [],
            "method 'random' is for W&B agents",
        ),
        (
            "parameters: {method.eta: {min: 1, max: 2}}\n",
            [],
            "parameter 'method.eta' needs `values: \\[...\\]`",
        ),
        (
            "parameters: {method.eta: {values: [1000, 5000]}}\n",
            ["run_name=fixed"],
            "share a run directory",
        ),
        ("method: grid\n", [], "needs a `parameters:` mapping"),
    ],
)
def test_bad_sweeps_are_refused_with_a_reason(tmp_path, capsys, content, extra, message):
    from src.sweep import main as sweep

    path = tmp_path / "s.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit):
        sweep([str(path), "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu", *extra])
    assert re.search(message, capsys.readouterr().err)


def test_a_grid_larger_than_one_array_is_refused_before_its_points_are_composed(
    tmp_path, capsys, monkeypatch
):
    """A 100 x 100 grid composed its 10,000 points for most of an hour before rendering."""
    import src.sweep
    from src.sweep import main as sweep

    monkeypatch.setattr(src.sweep, "compose_tree", composing)
    path = tmp_path / "s.yaml"
    values = ", ".join(str(v) for v in range(1, 101))
    path.write_text(f"parameters:\n  method.eta: {{values: [{values}]}}\n"
                    f"  method.K: {{values: [{values}]}}\n")  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        sweep([str(path), "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [
        f"config error: {path}: 10000 points (100 x 100 values) is more than one SLURM array "
        "takes (1001 tasks, SLURM's default MaxArraySize): split the grid over several sweep "
        "files"
    ]
    path.write_text(f"parameters:\n  method.eta: {{values: [{values}]}}\n"
                    "  method.K: {values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n")  # fmt: skip
    with pytest.raises(Composed):  # 1000 points: one array takes them
        sweep([str(path), "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu"])


@pytest.mark.parametrize("parallel", ["-3", "0"])
def test_the_throttle_takes_one_task_at_least(capsys, parallel):
    from src.sweep import main as sweep

    with pytest.raises(SystemExit) as exit_info:
        sweep(["sweeps/eta.yaml", "--dry-run", "--parallel", parallel,
               "model=tiny-mistral", "hardware=slurm-cpu"])  # fmt: skip
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "", "no array is rendered (it was --array=0-2%-3)"
    assert captured.err.splitlines() == [
        f"config error: python -m src.sweep: argument --parallel: must be a whole number >= 1, "
        f"not {parallel!r}; see `python -m src.sweep --help`"
    ]


@pytest.mark.parametrize(
    ("stem", "message"),
    [
        ("..", "sweep name='..' is the folder above; it names one folder under paths.root"),
        ("a b", "sweep name='a b' holds a space; it is written into SLURM scripts"),
        ("a;id", "sweep name='a;id' holds ';'; it is written into SLURM scripts"),
        ("$(id)", "sweep name='$(id)' holds '$'; it is written into SLURM scripts"),
    ],
)
def test_a_sweep_is_named_by_one_plain_folder_name(tmp_path, capsys, stem, message):
    from src.sweep import main as sweep

    path = tmp_path / f"{stem}.yaml"
    path.write_text((REPO_ROOT / "sweeps" / "eta.yaml").read_text())
    with pytest.raises(SystemExit) as exit_info:
        sweep([str(path), "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"config error: {message}")


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (  # the points file holds a point per line: this one would be read as two
            '{data.name: {values: ["a\\nb"]}}',
            r"s\.yaml: parameters\.data\.name='a\\nb' holds a newline",
        ),
        ('{"data.\\nname": {value: a}}', r"s\.yaml: parameters='data\.\\nname' holds a newline"),
        ("{run_name: {values: [a, ..]}}", r"run_name='\.\.' is the folder above"),
    ],
)
def test_a_sweep_point_that_would_break_its_line_or_leave_the_root_is_refused(
    tmp_path, capsys, parameters, message
):
    from src.sweep import main as sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"parameters: {parameters}\n")
    with pytest.raises(SystemExit) as exit_info:
        sweep([str(path), "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and re.search(f"^config error: .*{message}", captured.err)
    assert not (tmp_path / "runs").exists()
