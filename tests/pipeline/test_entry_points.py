"""Every command ends a failure at one boundary (src/config/cli.py): one line on stderr, no
traceback, and the exit code of README's table — 1 bad input, 2 bad configuration (a key, an
option, a value, a command's own arguments, a sweep file), 3 the environment (the file system,
sbatch, W&B credentials). Each case runs the real command, offline.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import REPO_ROOT
from src.core.errors import set_overrides
from src.core.policy import seal_checkpoint
from src.core.records import Finished, write_record
from tests.support.helpers import one_line_failure

SLURM = ["--iterations", "1", "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(module: str, *args: str, root: Path, env: dict | None = None, timeout: int = 300):
    """`python -m MODULE ARGS`, offline, its runs under `root`; `env` sets variables (None:
    unsets one)."""
    environ = {**os.environ, **OFFLINE, "WANDB_MODE": "offline", "SELFPLAY_RUNS": str(root)}
    environ.pop("HYDRA_FULL_ERROR", None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env={k: v for k, v in environ.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The failure's line, after checking that it is all stderr holds."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


# --- bad configuration: exit 2, "config error: ..." naming the key -----------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["method.foo=1"], "unknown config key 'method.foo'"),
        (["+method.foo=1"], "unknown config key 'method.foo'"),
        (["method=spo"], "method=spo: no such option in config group 'method'"),
        (["method.eta=-1"], "method.eta=-1.0: must be > 0"),
        (["method.K=abc"], "method.K: Value 'abc'"),
        (["hardware.slurm.stages.train.cpus_per_task=1000"], "cpus_per_task=1000: is more than"),
        (["--iterations", "x"], "argument --iterations: invalid int value: 'x'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--iterations", "0"], "no iterations to submit"),
        (["hardware=cpu"], "hardware=cpu has no SLURM resources"),
    ],
)
def test_slurm_refuses_a_bad_config_with_one_line(tmp_path, args, named):
    line = only_line(run("src.slurm", *SLURM, *args, root=tmp_path / "runs"), 2)
    assert line.startswith("config error: ") and named in line, line
    assert not (tmp_path / "runs").exists()


def write_sweep(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


ETA = "parameters: {method.eta: {values: [1]}}\n"


@pytest.mark.parametrize(
    ("sweep", "args", "named"),
    [
        ("parameters: {method.foo: {values: [1, 2]}}\n", [], "unknown config key 'method.foo'"),
        ("parameters: {method.eta: {values: [-1]}}\n", [], "method.eta=-1.0: must be > 0"),
        (ETA, ["method=spo"], "method=spo: no such option"),
        ("parameters: [\n", [], "s.yaml: not valid YAML"),
        ("method: grid\n", [], "s.yaml: a sweep needs a `parameters:` mapping"),
        (None, [], "sweep file not found: "),
        (ETA, ["--local"], "python -m src.sweep: --local runs the points here"),
    ],
)
def test_sweep_refuses_a_bad_config_or_sweep_file_with_one_line(tmp_path, sweep, args, named):
    path = write_sweep(tmp_path, sweep) if sweep else tmp_path / "missing.yaml"
    result = run(
        "src.sweep", str(path), "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu", *args,
        root=tmp_path / "runs",
    )  # fmt: skip
    line = only_line(result, 2)
    assert line.startswith("config error: ") and named in line, line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["paths.root="], "paths.root='': names no folder"),
        (["eval.reference=iterX"], "eval.reference='iterX': not a model the eval stage can load"),
        (["pipeline.redo=foo"], "pipeline.redo=['foo']: names stages of an iteration: generate,"),
        (["pipeline.redo=[all]"], "pipeline.redo=['all']: names stages of an iteration"),
        (["--foo"], "python -m src.main: unrecognized arguments: --foo"),
    ],
)
def test_main_refuses_a_bad_value_at_start_up_with_one_line(tmp_path, args, named):
    line = only_line(run("src.main", "model=tiny-mistral", *args, root=tmp_path / "runs"), 2)
    assert line.startswith(f"config error: {named}"), line
    assert not (tmp_path / "runs").exists()


def test_a_bare_stage_name_in_pipeline_redo_is_a_list_of_one(tmp_path):
    result = run(
        "src.main", "model=tiny-mistral", "pipeline.redo=rank", "--cfg", "job", root=tmp_path
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]


def test_a_local_file_without_its_package_line_is_named(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO_ROOT / "conf", conf)
    (conf / "local").mkdir(exist_ok=True)
    (conf / "local" / "default.yaml").write_text("hardware:\n  slurm:\n    account: mine\n")
    result = run("src.main", "--config-path", str(conf), "model=tiny-mistral", root=tmp_path / "r")
    line = only_line(result, 2)
    assert line.startswith("config error: conf/local/default.yaml: its keys are read under "), line
    assert "`# @package _global_`" in line
    assert not (tmp_path / "r").exists()


def test_a_full_error_keeps_the_traceback(tmp_path):
    result = run("src.slurm", *SLURM, "method.foo=1", root=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


# --- the environment: exit 3 -------------------------------------------------------------------


def test_slurm_and_sweep_name_a_runs_folder_that_is_a_file(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    slurm = run(
        "src.slurm", "model=tiny-mistral", "hardware=slurm-cpu", f"paths.root={a_file}",
        root=tmp_path,
    )  # fmt: skip
    line = only_line(slurm, 3)
    assert line.startswith(f"error: Not a directory: {a_file}/") and "paths.root" in line, line
    sweep = write_sweep(tmp_path, "parameters: {method.eta: {values: [1, 2]}}\n")
    swept = run(
        "src.sweep", str(sweep), "model=tiny-mistral", "hardware=slurm-cpu",
        f"paths.root={a_file}", root=tmp_path,
    )  # fmt: skip
    line = only_line(swept, 3)
    assert line.startswith(f"error: Not a directory: {a_file}/") and "paths.root" in line, line


def test_slurm_without_sbatch_is_the_environment(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run(
        "src.slurm", "model=tiny-mistral", "hardware=slurm-cpu", f"paths.root={tmp_path}/r",
        root=tmp_path, env={"PATH": str(empty)},
    )  # fmt: skip
    line = only_line(result, 3)
    assert line.startswith("error: sbatch: no such command on this machine"), line


def test_a_local_multirun_leaves_no_multirun_folder_behind(tmp_path):
    """Hydra's basic launcher makes <paths.root>/multirun/<time>/ with its multirun.yaml and a
    folder per job, which the stages never write into: gone when the command ends (here its
    first job fails: a pairs stage with nothing ranked)."""
    result = run(
        "src.main", "-m", "method.eta=1,10", "model=tiny-mistral", "stage=pairs", "logger=none",
        f"paths.root={tmp_path}/r", root=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert not (tmp_path / "r" / "multirun").exists(), list((tmp_path / "r").rglob("*"))


def test_a_slurm_multirun_off_a_cluster_is_the_environment(tmp_path):
    """Hydra's SLURM launcher (hardware=slurm-*, `-m`) where SLURM does not run: submitit's
    own failure as one line, exit 3, instead of Hydra's traceback."""
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run(
        "src.main", "-m", "method.eta=1000,5000", "model=tiny-mistral", "hardware=slurm-cpu",
        f"paths.root={tmp_path}/r", root=tmp_path, env={"PATH": str(empty)},
    )  # fmt: skip
    line = only_line(result, 3)
    assert line.startswith("error: the SLURM launcher could not submit the multirun: "), line
    assert "srun" in line and "a hardware= that is not slurm-*" in line, line


def a_run(root: Path) -> Path:
    """The least `python -m src.compare` compares: one finished stage of one iteration."""
    stage = root / "tiny-mistral" / "sppo" / "r" / "iter1" / "generate"
    stage.mkdir(parents=True)
    (stage / "done.json").write_text("{}")
    return root


@pytest.mark.parametrize(
    ("where", "code", "said"),
    [
        (
            "out-a-file",
            3,
            "error: File exists: {file}; a file is in the way of a folder: check --out",
        ),
        ("out-under-a-file", 3, "error: Not a directory: {file}/sub; a path on the way is a file"),
        ("root-a-file", 3, "error: --root {file}: a file, not a folder"),
        ("no-runs", 1, "error: no runs found under {root}"),
        ("bad-option", 2, "config error: python -m src.compare: unrecognized arguments: --bogus"),
    ],
)
def test_compare_fails_with_one_line(tmp_path, where, code, said):
    root, a_file = a_run(tmp_path / "runs"), tmp_path / "a-file"
    a_file.write_text("")
    args = {
        "out-a-file": ["--root", str(root), "--out", str(a_file)],
        "out-under-a-file": ["--root", str(root), "--out", str(a_file / "sub")],
        "root-a-file": ["--root", str(a_file)],
        "no-runs": ["--root", str(tmp_path / "empty")],
        "bad-option": ["--root", str(root), "--bogus"],
    }[where]
    (tmp_path / "empty").mkdir()
    line = only_line(run("src.compare", *args, root=root), code)
    assert line.startswith(said.format(file=a_file, root=tmp_path / "empty")), line


def test_compare_names_out_when_the_file_system_is_read_only(tmp_path, monkeypatch, capsys):
    from src.compare import table

    def read_only(path, text):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(table, "atomic_write_text", read_only)
    with pytest.raises(SystemExit) as exit_:
        table.main(["--root", str(a_run(tmp_path)), "--out", "/mnt/ro/compare"])
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert err == (
        f"error: {os.strerror(errno.EROFS)}: /mnt/ro/compare/compare.md; the file system is "
        "read-only: point --out at a writable folder\n"
    )


def trained(root: Path) -> Path:
    """A finished training of iteration 1 (run_name=r), as the export reads it."""
    train = root / "tiny-mistral" / "sppo" / "r" / "iter1" / "train"
    checkpoint = train / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "README.md").write_text("# a card\n")
    write_record(train, Finished("fingerprint", {}, {}, seal_checkpoint(checkpoint)))
    return root


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["--what", "x"], 2, "config error: python -m src.export: argument --what: invalid choice"),
        (["--bogus"], 2, "config error: python -m src.export: unrecognized arguments: --bogus"),
        (["iter=x"], 2, "config error: iter=x: must be an iteration number"),
        (["method.foo=1"], 2, "config error: unknown config key 'method.foo'"),
        (["iter=2"], 1, "error: {root}/tiny-mistral/sppo/r/iter2/train is not finished"),
        (["--what", "model", "--out", "{file}/sub"], 3, "error: Not a directory: {file}/sub"),
    ],
)
def test_export_fails_with_one_line(tmp_path, args, code, said):
    root, a_file = trained(tmp_path / "runs"), tmp_path / "a-file"
    a_file.write_text("")
    args = [a.format(file=a_file) for a in args]
    result = run("src.export", "model=tiny-mistral", "run_name=r", *args, root=root)
    line = only_line(result, code)
    assert line.startswith(said.format(root=root, file=a_file)), line
    if code == 1:  # the fix is the pipeline's command that makes the iteration
        assert line.endswith(
            "run `python -m src.main model=tiny-mistral run_name=r iter=2 stage=all`"
        )
    if code == 3:
        assert "check --out" in line


@pytest.mark.slow
def test_wandb_without_an_api_key_is_the_environment(tmp_path, tiny_dir):
    home = tmp_path / "home"  # no ~/.netrc, no wandb settings
    home.mkdir()
    env = {"HOME": str(home), "WANDB_API_KEY": None, "NETRC": str(home / ".netrc")}
    env["HF_HOME"] = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    result = run(
        "src.main", "model=tiny-mistral", "logger=wandb", "logger.mode=online", "stage=generate",
        "data.max_prompts=2", "method.K=2", "generation.max_new_tokens=4", root=tmp_path / "r",
        env={**env, "WANDB_BASE_URL": "http://127.0.0.1:9"}, timeout=120,
    )  # fmt: skip
    line = one_line_failure(result, 3)
    assert line.startswith("error: W&B (logger.mode=online): "), line
    assert "WANDB_API_KEY" in line and "`wandb login`" in line
    assert line.endswith("logger.mode=offline stage=generate data.max_prompts=2 method.K=2 "
                         "generation.max_new_tokens=4`"), line  # fmt: skip


def test_the_commands_a_submission_writes_set_each_key_once():
    words = set_overrides(
        ["++stage=rank", "generation.num_shards=8", "iter=4"],
        ["stage=generate", "iter=1", "generation.num_shards=2"],
    )
    assert words == ["stage=generate", "generation.num_shards=2", "iter=1"]


@pytest.mark.slow
def test_a_repeated_stage_is_not_repeated_in_the_fix(tmp_path):
    result = run(
        "src.main", "model=tiny-mistral", "logger=none", "stage=pairs", "stage=rank", root=tmp_path
    )
    line = one_line_failure(result, 1)
    command = shlex.split(line.rsplit("; run `", 1)[1].removesuffix("`"))
    keys = [w.lstrip("+~").partition("=")[0] for w in command[3:]]
    assert sorted(keys) == sorted(set(keys)), command
    assert "stage=generate" in command and "stage=rank" not in command, command


def test_slurm_scripts_set_stage_and_iter_once(tmp_path):
    result = run("src.slurm", *SLURM, "++stage=train", "++iter=5", root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stdout.splitlines() if " -m src.main " in ln]
    assert lines, result.stdout[-3000:]
    for line in lines:
        words = line.split()
        assert sum(w.lstrip("+").startswith("stage=") for w in words) == 1, line
        assert sum(w.lstrip("+").startswith("iter=") for w in words) == 1, line


def test_a_reader_that_stops_reading_ends_the_command_quietly():
    """`--cfg job | head -n 12` (make demo's first screen): the reader closed the pipe, which
    fails nothing; the exit code a shell gives a process SIGPIPE ended, and nothing said."""
    read, write = os.pipe()
    os.close(read)
    with open(write, "w") as closed:
        shown = subprocess.run(
            [sys.executable, "-c", "from src.config.cli import failures\nwith failures('x'):\n"
             "    import sys\n    sys.stdout.write('a line\\n' * 100_000)\n    sys.stdout.flush()"],
            stdout=closed, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        )  # fmt: skip
    assert (shown.returncode, shown.stderr) == (141, "")


def test_libraries_are_told_what_they_would_say_falsely_before_they_load(monkeypatch):
    """DeepSpeed on a CPU machine (else its warning that it found no GPU, at every train stage),
    W&B without its Weave advertisement; a user's own setting kept."""
    from src.main import quiet_libraries
    from tests.support.helpers import compose_cfg

    for var in ("DS_ACCELERATOR", "WANDB_DISABLE_WEAVE"):
        monkeypatch.delenv(var, raising=False)
    quiet_libraries(compose_cfg("model=tiny-mistral", "hardware.device=cuda"))
    assert "DS_ACCELERATOR" not in os.environ and os.environ["WANDB_DISABLE_WEAVE"] == "true"
    quiet_libraries(compose_cfg("model=tiny-mistral"))
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setenv("WANDB_DISABLE_WEAVE", "false")
    quiet_libraries(compose_cfg("model=tiny-mistral"))
    assert os.environ["WANDB_DISABLE_WEAVE"] == "false"
