"""Bad input and a hostile environment through the real command line: each failure ends with one
line (no traceback) naming what and where, the user's own command with what changes where a
command fixes it, its documented exit code, and nothing a re-run would trust.

The pairs-file cases are in test_bad_pairs.py, W&B's in test_tracking_offline_server.py, the
config cases in test_config.py; damaged chunks and rows files in test_integrity.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.config import REPO_ROOT
from src.core.errors import describe_os_error, with_overrides
from src.core.policy import safetensors_damage, seal_checkpoint
from src.core.records import Finished, write_record
from tests.support.helpers import (
    SMALL,
    cli,
    compose_cfg,
    one_line_failure,
    run_main,
    run_main_process,
)

GENERATE = ["stage=generate"]  # with SMALL's sizes (cli runs them)


def records(root: Path) -> list[Path]:
    return sorted(root.rglob("done.json"))


# --- suggested commands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "overrides", "expected"),
    [
        ("python -m src.main iter=2", "iter=1", "python -m src.main iter=1"),
        (
            "python -m src.main model=m stage=train iter=3 paths.root=/r",
            "stage=train iter=2 pipeline.redo=[train]",
            "python -m src.main model=m stage=train iter=2 paths.root=/r pipeline.redo=[train]",
        ),
        (
            "python -m src.main",
            "iter=1 pipeline.redo=[rank]",
            "python -m src.main iter=1 pipeline.redo=[rank]",
        ),
        ("python -m src.main +iter=4", "iter=1", "python -m src.main iter=1"),
        # each key set once: a later word would win over the fix
        (
            "python -m src.main stage=pairs stage=rank",
            "stage=generate iter=1",
            "python -m src.main stage=generate iter=1",
        ),
        (
            "python -m src.main ++stage=rank +iter=3 m=x",
            "stage=generate iter=1",
            "python -m src.main stage=generate iter=1 m=x",
        ),
        ("python -m src.main ~stage m=x", "stage=rank", "python -m src.main stage=rank m=x"),
        (
            "python -m src.main pipeline={redo:[rank],require_previous:true} m=x",
            "iter=1 pipeline.redo=[train]",
            "python -m src.main pipeline={require_previous:True} m=x iter=1 pipeline.redo=[train]",
        ),
        (
            "python -m src.main pipeline={redo:[rank]} m=x",
            "pipeline.redo=[train]",
            "python -m src.main m=x pipeline.redo=[train]",
        ),
        ("python -m src.main iter=3", "iter=2 iter=1", "python -m src.main iter=1"),
    ],
)
def test_a_fix_is_the_users_command_with_what_changes(command, overrides, expected):
    assert with_overrides(command, overrides) == expected


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
        (errno.ENOTDIR, "a file, not a folder"),
    ],
)
def test_file_system_errors_are_one_line_with_what_to_do(code, advice):
    line = describe_os_error(OSError(code, os.strerror(code), "/runs/x/done.json"))
    assert line.startswith(f"{os.strerror(code)}: /runs/x/done.json; ") and advice in line
    assert "\n" not in line


# --- the file system ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "folder", "said"),
    [
        ("paths.root", "/etc/hostname", "Not a directory: /etc/hostname/"),
        ("paths.root", "/sys/selfplay-runs", ""),  # EPERM as root, EACCES otherwise
        # the tiny models are built there on demand, before the stage
        ("paths.tiny_dir", "/etc/hostname", "File exists: /etc/hostname; "),
    ],
)
def test_a_folder_that_cannot_be_made_is_one_line_naming_its_key(tmp_path, key, folder, said):
    line = one_line_failure(cli(tmp_path, *GENERATE, f"{key}={folder}"), 3)
    assert line.startswith(f"error: {said}") and folder in line and key in line


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system of its own (a tmpfs), or a skip where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_stops_the_stage_and_a_rerun_finishes_it(small_disk):
    root = small_disk / "runs"
    filler = small_disk / "filler"
    args = [*GENERATE, "generation.chunk_size=1", f"paths.root={root}"]
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 8192))  # two blocks left
    line = one_line_failure(cli(small_disk, *args), 3)
    assert line.startswith("error: No space left on device: ") and "the disk is full" in line
    assert not records(root), "no stage recorded as finished"

    filler.unlink()
    rerun = cli(small_disk, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (done,) = records(root)
    counts = json.loads(done.read_text())["counts"]
    assert counts["generated"] + counts["reused_from_earlier_run"] == 4


@pytest.mark.parametrize(
    "processes",
    [
        [],
        pytest.param(
            ["hardware.processes_per_node=2", "hardware.distributed=ddp"],
            marks=pytest.mark.distributed,  # two gloo processes
        ),
    ],
    ids=["one process", "two processes"],  # two: refused by the launcher, before any worker
)
def test_a_full_disk_while_training_is_one_line(small_disk, processes):
    pairs = REPO_ROOT / "tests" / "data" / "pairs_tiny.jsonl"
    root = small_disk / "runs"  # 1 MiB: less than the tiny model's checkpoint, refused at start
    args = ["stage=train", f"training.pairs={pairs}", f"paths.root={root}", *processes]
    result = cli(small_disk, *args, "training.per_device_batch_size=1")
    line = one_line_failure(result, 3)
    assert line.startswith("error: No space left on device for the checkpoint (") and line.endswith(
        "finished chunks and Trainer checkpoints are kept"
    )
    assert not records(root)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [
        (signal.SIGINT, 130, "Ctrl-C"),
        # what scancel, a time limit and a preemption without the warning signal send
        (signal.SIGTERM, 143, "SIGTERM (scancel, a time limit, or a preemption without warning)"),
        (signal.SIGHUP, 143, "SIGHUP (its terminal or session closed)"),  # an ssh session ends
    ],
)
def test_ctrl_c_sigterm_and_sighup_are_one_line_and_their_exit_code_and_leave_no_record(
    tmp_path, signum, code, said
):
    # ~10 s of work at full speed: the first chunk appears long before the last
    args = ["model=tiny-mistral", "logger=none", *GENERATE, "method.K=2", "data.max_prompts=120"]
    args += ["generation.chunk_size=2", "generation.batch_size=1", "generation.max_new_tokens=48"]
    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.main", *args],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        # as a terminal's foreground job gets Ctrl-C: a shell starts a background job (this suite
        # run with `&`) with SIGINT ignored, and an ignored signal stays ignored across exec
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        text=True,
    )
    deadline = time.time() + 300
    # (a run that ended before its first chunk fails below with its output, not after the wait)
    while (
        time.time() < deadline and proc.poll() is None and not list(tmp_path.rglob("chunk*.jsonl"))
    ):
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    line = one_line_failure(result, code)
    assert line.startswith(f"interrupted: stopped by {said}; re-run the same command to resume")
    assert not records(tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))  # no atomic write left half-made


def test_sigusr1_outside_a_stage_is_one_line_not_a_silent_end(tmp_path):
    """SIGUSR1 (SLURM's warning before a time limit) asks a running stage to stop where a re-run
    resumes; where none runs (an export, a comparison, the checks before a stage) it ended the
    command at once with no line and its temporary files left: now the boundary says so."""
    code = (
        "import os, signal, time\n"
        "from src.config.cli import failures\n"
        "with failures('python -m src.export', interrupted='nothing was exported'):\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    time.sleep(60)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    line = one_line_failure(result, 143)
    assert line == (
        "interrupted: stopped by SIGUSR1 (a preemption warning, where no stage was running to "
        "save its work); nothing was exported"
    )


# --- the policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "said"),
    [
        # every hub id a run reads is looked for in the cache before any stage (src/assets)
        ("model.path=some-org/some-model-7b", "model some-org/some-model-7b (model.path: iter"),
        ("data.prompts=some-org/some-prompts", "dataset some-org/some-prompts [train] (data.pr"),
    ],
)
def test_a_hub_id_with_the_hub_offline_is_one_line(tmp_path, override, said):
    line = one_line_failure(cli(tmp_path, *GENERATE, override), 3)
    assert line.startswith(f"error: {said}") and "HF_HUB_OFFLINE" in line
    assert not records(tmp_path)


def test_a_missing_local_policy_folder_is_one_line(tmp_path):
    line = one_line_failure(cli(tmp_path, *GENERATE, f"model.path={tmp_path}/nothing"), 1)
    assert line == f"error: model.path={tmp_path}/nothing: no such model folder"


@pytest.mark.parametrize("damage", ["empty folder", "tokenizer.json not JSON"])
def test_a_policy_folder_that_cannot_be_loaded_is_one_line(tmp_path, tiny_dir, damage):
    folder = tmp_path / "model"
    if damage == "empty folder":
        folder.mkdir()
        said = "not a model folder: it has no config.json"
    else:
        shutil.copytree(tiny_dir / "tiny-mistral", folder)
        (folder / "tokenizer.json").write_text('{"version": ')
        said = "tokenizer.json is not valid JSON"
    line = one_line_failure(cli(tmp_path, *GENERATE, f"model.path={folder}"), 1)
    assert line.startswith(f"error: model.path={folder}: {said}"), line


@pytest.mark.slow
def test_a_stage_never_reads_an_earlier_stage_made_under_another_config(tmp_path):
    """stage=rank with another generation.* would rank responses sampled under the old one and
    record them under the new one."""
    assert cli(tmp_path, *GENERATE).returncode == 0
    before = records(tmp_path)
    line = one_line_failure(cli(tmp_path, "stage=rank", "generation.temperature=0.9"), 1)
    assert (
        "/iter1/generate was made with a different configuration (generation.temperature: " in line
    )
    assert "0.7 -> 0.9); stage rank reads it" in line
    fix = "stage=generate generation.temperature=0.9 iter=1 'pipeline.redo=[generate]'"
    assert line.endswith(f"run `python -m src.main {' '.join(SMALL)} {fix}`"), line
    assert records(tmp_path) == before, "nothing recorded as finished"


@pytest.fixture
def trained_iteration_one(tmp_path, tiny_dir, monkeypatch):
    """Iteration 1's training record and checkpoint (the tiny model's weights), as the train
    stage leaves them."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path))
    cfg = compose_cfg(*SMALL, "iter=2")
    checkpoint = Path(cfg.run.init_policy)
    shutil.copytree(cfg.model.path, checkpoint)
    write_record(checkpoint.parent, Finished("x", {}, {}, seal_checkpoint(checkpoint)))
    return checkpoint


@pytest.mark.parametrize(
    "damage",
    ["truncated", "removed", "truncated, unrecorded", "overwritten in place", "tokenizer edited"],
)
def test_a_damaged_previous_checkpoint_names_the_training_to_redo(
    tmp_path, trained_iteration_one, damage
):
    weights = trained_iteration_one / "model.safetensors"
    if damage == "removed":
        weights.unlink()
    elif damage == "overwritten in place":  # the same size: only the content tells
        with open(weights, "r+b") as f:
            f.seek(weights.stat().st_size - 4096)
            f.write(os.urandom(4096))
    elif damage == "tokenizer edited":
        tokenizer = trained_iteration_one / "tokenizer.json"
        tokenizer.write_bytes(tokenizer.read_bytes().replace(b'"', b"'", 1))
    else:
        weights.write_bytes(weights.read_bytes()[:-100])
    if damage == "truncated, unrecorded":  # a record without sizes: the file's own header tells
        write_record(trained_iteration_one.parent, Finished("x", {}, {}, {}))
    before = records(tmp_path)
    line = one_line_failure(cli(tmp_path, *GENERATE, "iter=2"), 1)
    assert f"iteration 1's checkpoint {trained_iteration_one}, which is damaged (" in line
    why = {
        "truncated": "model.safetensors has ",
        "removed": "model.safetensors is missing",
        "truncated, unrecorded": "model.safetensors is cut short",
        "overwritten in place": "model.safetensors is not the file training saved",
        "tokenizer edited": "tokenizer.json is not the file training saved",
    }[damage]
    assert why in line
    assert line.endswith(
        f"run `python -m src.main {' '.join(SMALL)} stage=train iter=1 'pipeline.redo=[train]'`"
    )
    assert records(tmp_path) == before, "nothing recorded as finished"


def test_a_whole_checkpoint_passes_the_check(trained_iteration_one):
    assert safetensors_damage(trained_iteration_one / "model.safetensors") is None


def safetensors_bytes(header: object, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (safetensors_bytes({"w": {"data_offsets": [0, 4]}}, b"abcd"), None),
        (safetensors_bytes({"w": {"data_offsets": [0, 4]}}, b"ab"), "is cut short"),
        (safetensors_bytes({"w": {"data_offsets": [0, 4]}}, b"abcdef"), "has extra bytes"),
        (safetensors_bytes([1, 2], b""), "has an unreadable header"),
        (safetensors_bytes({"w": {"dtype": "F32"}}, b""), "has an unreadable header"),
        (b"\xff" * 8 + b"{}", "is cut short"),  # a header length past the end
        (b"abc", "is cut short"),
    ],
)
def test_a_safetensors_file_is_checked_against_its_header(tmp_path, content, why):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    said = safetensors_damage(path)
    assert said is None if why is None else said.startswith(why)


@pytest.mark.slow
def test_a_debug_run_keeps_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # read once by a process: a fresh one
    result = run_main_process(tmp_path, *SMALL, *GENERATE, f"model.path={tmp_path}/nothing")
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "no such model folder" in result.stderr


@pytest.mark.parametrize(
    ("text", "overrides", "said"),
    [
        # valid JSON, not text a tokenizer can read
        (
            "bad \ud800 text",
            [],
            "{path}:2 (prompt_id 'b'): the prompt holds '\\ud800' at character 4, a lone surrogate",
        ),
        (
            "Hello",
            ["generation.max_prompt_length=4", "generation.long_prompts=skip"],
            "all 2 prompts read from {path} are longer than generation.max_prompt_length=4 tokens",
        ),
    ],
    ids=["a-lone-surrogate", "every-prompt-too-long"],
)
def test_prompts_left_unusable_stop_generate_with_one_line(tmp_path, text, overrides, said):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt_id": "a", "prompt": "Hi"}, {"prompt_id": "b", "prompt": text}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli(tmp_path, *GENERATE, f"data.prompts={path}", *overrides)
    line = one_line_failure(result, 1)
    assert line.startswith(f"error: {said.format(path=path)}"), line
    assert not records(tmp_path), "nothing a re-run would trust"


def test_a_suggested_command_keeps_an_override_that_depends_on_the_iteration_as_typed(tmp_path):
    """`data.prompts=...${iter}...`: the refusal's command sets `iter=1` beside the override as
    the user wrote it (resolved at the iteration asked for, it would make iteration 1 from
    iteration 2's prompts), quoted so that a shell leaves `${iter}` to the config."""
    done = run_main(tmp_path, "model=tiny-mistral", "logger=none", "iter=2",
                    "pipeline.require_previous=true", "data.prompts=/p/ms${iter}.jsonl")  # fmt: skip
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.endswith(
        "iter=1 pipeline.require_previous=true 'data.prompts=/p/ms${iter}.jsonl'`"
    ), line
