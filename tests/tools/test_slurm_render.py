"""`python -m src.slurm --dry-run`: the sbatch scripts and lines of a chain, without a cluster.
The same scripts run by the local cluster: tests/pipeline/test_slurm_scripts.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import REPO_ROOT
from src.slurm import TEMPLATES, fill, main, require_chain_assets, sbatch_value
from tests.support.helpers import Composed, composing

pytestmark = pytest.mark.usefixtures("without_assets")  # tests/tools/conftest.py


def dry_run(capsys, *args: str, said: list[str] | None = None) -> dict[str, str]:
    """The scripts `--dry-run` prints, by job name; `said` gets what it wrote to stderr."""
    main(["--dry-run", *args])
    out, err = capsys.readouterr()
    if said is not None:
        said.append(err)
    scripts = {}
    for block in out.split("# ---- ")[1:]:
        path, _, body = block.partition("\n")
        scripts[path.rsplit("/", 1)[1].removesuffix(".sbatch")] = body
    return scripts


def test_a_chains_plan_names_its_iterations_and_their_gpu_hours(capsys):
    main(["--dry-run", "--from-iter", "2", "--iterations", "4", "experiment=gemma-2-9b-it-sppo",
          "hardware=slurm-node-8gpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("plan: gemma-2-9b-it, sppo, iterations 2-4 on hardware=slurm-node-8gpu")
    per_iteration = next(line for line in out.splitlines() if line.startswith("| iteration |"))
    chain = next(line for line in out.splitlines() if line.startswith("Iterations 2..4:"))
    assert float(chain.split()[2]) == pytest.approx(3 * float(per_iteration.split("|")[5]), abs=2)


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
    assert "/slurm/logs/%x_%j.out" in train  # a job that is no array: its own id
    assert "/slurm/logs/%x_%A_%a.out" in gen  # an array's task: the array's id and its own
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


def test_an_enabled_eval_waits_for_its_training_and_nothing_waits_for_it(capsys):
    scripts = dry_run(
        capsys, "--iterations", "2", "model=tiny-mistral", "hardware=slurm-cpu", "eval.enabled=true"
    )
    run_name = next(iter(scripts)).split("-it1-")[0]
    names = [
        f"{run_name}-it{t}-{s}"
        for t in (1, 2)
        for s in ("generate", "rank", "pairs", "train", "eval")
    ]
    assert list(scripts) == names

    def waits_for(name: str) -> str | None:
        found = re.search(r"--dependency=afterok:<([^>]+)>", scripts[name].split("# $ ")[1])
        return found[1] if found else None

    assert waits_for(f"{run_name}-it1-eval") == f"{run_name}-it1-train"
    assert waits_for(f"{run_name}-it2-generate") == f"{run_name}-it1-train", "eval is off the chain"
    assert waits_for(f"{run_name}-it2-eval") == f"{run_name}-it2-train"
    assert re.search(r"-m src\.main .* stage=eval iter=2", scripts[f"{run_name}-it2-eval"])


@pytest.mark.slow  # the one-iteration lineage: made once per version of the code (~1 min)
def test_a_resubmission_queues_only_what_is_not_finished(capsys, lineage):
    """Iteration 1 finished (the tiny lineage, at this test's runs root): a chain of two queues
    iteration 2 alone, its generation waiting for nothing, and says which stages it leaves; a
    changed setting of a finished stage queues it, and what comes after it, again."""
    from tests.support.helpers import SMALL

    lineage("one-iteration")
    said: list[str] = []
    scripts = dry_run(capsys, "--iterations", "2", *SMALL, "hardware=slurm-cpu", said=said)
    assert [name.split("-it")[1] for name in scripts] == [
        "2-generate", "2-rank", "2-pairs", "2-train"
    ], scripts.keys()  # fmt: skip
    assert "--dependency" not in next(iter(scripts.values())).split("# $ ")[1]
    for stage in ("generate", "rank", "pairs", "train"):
        assert f"[slurm] iteration 1, {stage}: finished with this config, not queued" in said[0]
    changed = dry_run(capsys, "--iterations", "2", *SMALL, "hardware=slurm-cpu",
                      "ranker.self_term=false")  # fmt: skip
    assert [name.split("-it")[1] for name in changed][:3] == ["1-rank", "1-pairs", "1-train"]


def test_a_two_node_training_expands_the_node_rank_inside_each_task(capsys, tmp_path):
    scripts = dry_run(capsys, "experiment=gemma-2-9b-it-sppo", "hardware=slurm-multinode")
    train = scripts["eta1000-lr5e-07-K5-it1-train"]
    assert "#SBATCH --nodes=2" in train and "#SBATCH --ntasks-per-node=1" in train
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in train
    # single-quoted: the batch shell leaves $SLURM_NODEID for each task's own shell
    (srun,) = [line for line in train.splitlines() if line.startswith("srun ")]
    assert re.fullmatch(
        r"srun --kill-on-bad-exit=1 bash -c 'NODE_RANK=\$SLURM_NODEID exec \"\$@\"' node-task "
        r"\S+python -m src\.main .*stage=train iter=1 &",
        srun,
    )
    for name, script in scripts.items():
        body = script.split("\n# $ ")[0]
        checked = subprocess.run(["bash", "-n"], input=body, text=True, capture_output=True)
        assert checked.returncode == 0, (name, checked.stderr)


def sbatch(script: str, option: str) -> int:
    """An integer #SBATCH option of a rendered script (0 when absent; `--mem=64G` -> 64)."""
    found = re.search(rf"^#SBATCH --{option}=(\d+)", script, re.MULTILINE)
    return int(found[1]) if found else 0


def test_the_8_one_gpu_shards_of_a_stage_fit_on_one_node_and_pairs_takes_little(capsys):
    scripts = dry_run(capsys, "experiment=gemma-2-9b-it-sppo", "hardware=slurm-node-8gpu",
                      "hardware.slurm.cpus_per_task=96", "hardware.slurm.mem_gb=1024")  # fmt: skip
    node = {"gpus-per-node": 8, "cpus-per-task": 96, "mem": 1024}
    for stage in ("generate", "rank"):
        script = scripts[f"eta1000-lr5e-07-K5-it1-{stage}"]
        tasks = int(re.search(r"^#SBATCH --array=0-(\d+)$", script, re.MULTILINE)[1]) + 1
        assert tasks == 8
        for option, whole in node.items():
            assert 0 < tasks * sbatch(script, option) <= whole, (stage, option)
        assert sbatch(script, "cpus-per-task") == 12 and sbatch(script, "mem") == 128
        assert "# Asks for: 1 GPU, 12 CPUs, 128 GB (1/8 of a node)" in script
    pairs = scripts["eta1000-lr5e-07-K5-it1-pairs"]
    assert "--gpus" not in pairs and "--gres" not in pairs
    assert sbatch(pairs, "cpus-per-task") * 16 <= 96 and sbatch(pairs, "mem") * 16 <= 1024
    assert sbatch(pairs, "time") <= 60 < sbatch(scripts["eta1000-lr5e-07-K5-it1-train"], "time")
    train = scripts["eta1000-lr5e-07-K5-it1-train"]
    assert [sbatch(train, o) for o in node] == list(node.values()), "training takes the node"


def test_the_printed_table_is_what_the_scripts_ask_for(capsys):
    main(["--dry-run", "experiment=gemma-2-9b-it-sppo", "hardware=slurm-multinode",
          "eval.enabled=true", "hardware.slurm.stages.eval.time_min=90"])  # fmt: skip
    out = capsys.readouterr().out
    rows = {
        cells[0]: cells[1:]
        # the requests table: after the plan (src.plan's tables), before the scripts
        for line in out.split("What each stage asks for")[1].split("# ---- ")[0].splitlines()
        if line.startswith("| ") and not line.startswith("| stage")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows == {
        "generate": ["16", "1", "1", "8", "64", "1440", "1/8"],
        "rank": ["16", "1", "1", "8", "64", "1440", "1/8"],
        "pairs": ["1", "1", "0", "2", "8", "60", "1/32"],
        "train": ["1", "2", "8", "64", "512", "1440", "whole"],
        "eval": ["1", "1", "1", "8", "64", "90", "1/8"],
    }
    evaluation = out.split("eta1000-lr5e-07-K5-it1-eval.sbatch\n", 1)[1]
    assert sbatch(evaluation, "time") == 90 and sbatch(evaluation, "gpus-per-node") == 1


def test_a_stage_request_set_by_hand_wins_and_is_checked_against_the_node(capsys):
    scripts = dry_run(capsys, "experiment=gemma-2-9b-it-sppo", "hardware=slurm-node-8gpu",
                      "hardware.slurm.stages.generate.cpus_per_task=4",
                      "hardware.slurm.stages.generate.mem_gb=32")  # fmt: skip
    generate = next(v for k, v in scripts.items() if k.endswith("-generate"))
    assert (sbatch(generate, "cpus-per-task"), sbatch(generate, "mem")) == (4, 32)
    rank = next(v for k, v in scripts.items() if k.endswith("-rank"))
    assert (sbatch(rank, "cpus-per-task"), sbatch(rank, "mem")) == (8, 64), "only generate"

    for overrides, message in [
        (
            ["hardware.slurm.stages.rank.mem_gb=600"],
            "config error: hardware.slurm.stages.rank.mem_gb=600: is more than a node has "
            "(hardware.slurm.mem_gb=512): one task runs on one node",
        ),
        (
            ["hardware.slurm.stages.train.cpus_per_task=0"],
            "config error: hardware.slurm.stages.train.cpus_per_task=0: must be > 0",
        ),
        (
            ["generation=vllm", "generation.tensor_parallel_size=16"],
            "config error: generate: one task takes 16 GPUs (generation.tensor_parallel_size) "
            "but a node has hardware.processes_per_node=8; a task runs on one node",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "--dry-run",
                    "experiment=gemma-2-9b-it-sppo",
                    "hardware=slurm-node-8gpu",
                    *overrides,
                ]
            )
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert captured.err.strip() == message and "# ---- " not in captured.out


def test_a_tensor_parallel_generation_task_takes_its_gpus_share(capsys):
    scripts = dry_run(capsys, "experiment=gemma-2-9b-it-sppo", "hardware=slurm-node-8gpu",
                      "generation=vllm", "generation.tensor_parallel_size=2")  # fmt: skip
    generate = next(v for k, v in scripts.items() if k.endswith("-generate"))
    assert "#SBATCH --array=0-3" in generate, "one task per 2 GPUs of the node"
    assert [sbatch(generate, o) for o in ("gpus-per-node", "cpus-per-task", "mem")] == [2, 16, 128]


def test_every_stage_has_a_request_section():
    from dataclasses import fields

    from src.config import StageRequests
    from src.core.registry import STAGES

    assert [f.name for f in fields(StageRequests)] == [s.value for s in STAGES]


@pytest.mark.parametrize(
    "hardware", ["slurm-cpu", "slurm-gpu-1", "slurm-node-8gpu", "slurm-multinode"]
)
def test_the_slurm_readme_shows_what_each_stage_asks_for(hardware):
    from src.config import compose
    from src.slurm import requests_table

    base = "model=tiny-mistral" if hardware == "slurm-cpu" else "experiment=gemma-2-9b-it-sppo"
    table = requests_table(compose([base, f"hardware={hardware}", "eval.enabled=true"], 1))
    assert table in (REPO_ROOT / "slurm" / "README.md").read_text()


@pytest.mark.parametrize("dry", [["--dry-run"], []], ids=["dry-run", "submission"])
def test_a_chain_whose_model_is_missing_names_every_missing_asset(capsys, monkeypatch, dry):
    """The plan reads the model's shape from its config.json, an asset: missing, it is named
    with every other asset missing, a line each, then the line that ends it (exit 3)."""
    monkeypatch.setattr("src.slurm.require_chain_assets", require_chain_assets)
    with pytest.raises(SystemExit) as exit_info:
        main([*dry, "model=tiny-mistral", "hardware=slurm-cpu", "model.path=acme/tiny-mistral",
              "ranker=tiny-pairrm", "ranker.model=acme/tiny-pairrm", "data.prompts=acme/prompts"])  # fmt: skip
    assert exit_info.value.code == 3
    captured = capsys.readouterr()
    *named, last = captured.err.splitlines()
    assert [line.split(" (")[0] for line in named] == [
        "missing: model acme/tiny-mistral",
        "missing: dataset acme/prompts [train]",
        "missing: ranker acme/tiny-pairrm",
    ]
    assert last.startswith("error: 3 of the 3 assets this command reads cannot be used; ")
    assert "#SBATCH" not in captured.out


def test_a_hardware_without_slurm_resources_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", "model=tiny-mistral"])
    assert exit_info.value.code == 2
    assert (
        "hardware=cpu has no SLURM resources: choose one of the hardware=slurm-* options"
        in capsys.readouterr().err
    )


def test_a_chain_longer_than_one_submission_takes_is_refused_at_once(capsys, monkeypatch):
    """A chain of 1000 iterations composed its configs for minutes, then queued 4000 jobs."""
    import src.slurm

    monkeypatch.setattr(src.slurm, "compose", composing)
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", "--iterations", "1000", "model=tiny-mistral", "hardware=slurm-cpu"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [
        "config error: --iterations 1000 --from-iter 1: one chain submits at most 100 "
        "iterations (its jobs all wait in the queue from the start): submit --iterations 100 "
        "now and --from-iter 101 once they end"
    ]
    with pytest.raises(Composed):  # 100 iterations, the most one chain takes
        main(["--dry-run", "--from-iter", "901", "--iterations", "1000", "model=tiny-mistral"])


def test_a_shard_array_larger_than_slurm_takes_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", "model=tiny-mistral", "hardware=slurm-cpu",
              "generation.num_shards=1002"])  # fmt: skip
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "# ---- " not in captured.out and captured.err.splitlines() == [
        "config error: generation.num_shards=1002: is more array tasks than one SLURM array "
        "takes (1001, SLURM's default MaxArraySize)"
    ]
    scripts = dry_run(capsys, "model=tiny-mistral", "hardware=slurm-cpu", "ranker.num_shards=1001")
    rank = next(v for k, v in scripts.items() if k.endswith("-rank"))
    assert "\n#SBATCH --array=0-1000\n" in rank


def test_a_long_composition_says_how_far_it_is(capsys):
    from src.slurm import PROGRESS_EVERY, counted

    assert list(counted(range(60), "[slurm] iterations composed")) == list(range(60))
    assert capsys.readouterr().err.splitlines() == [
        f"[slurm] iterations composed: {n}/60" for n in range(PROGRESS_EVERY, 60, PROGRESS_EVERY)
    ]
    assert list(counted(range(PROGRESS_EVERY), "[sweep] points composed"))
    assert capsys.readouterr().err == "", "as many as PROGRESS_EVERY: silent"


# --- what a config value can do to a script ---------------------------------------------------


def test_the_reported_partition_is_refused_before_any_script_is_rendered(tmp_path):
    """`hardware.slurm.partition="debug\ntouch ..."` put `touch ...` on a line of its own, which
    the submitted job ran."""
    marker = tmp_path / "injected"
    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "src.slurm", "--dry-run", "model=tiny-mistral",
         "hardware=slurm-cpu", f'hardware.slurm.partition="debug\ntouch {marker}"'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"config error: hardware.slurm.partition='debug\\ntouch {marker}' holds a newline; it "
        "is written into SLURM scripts, where it must be one word of letters, digits and "
        "_.,:=+@%-"
    ]
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_directives_quote_a_path_with_blanks_and_a_constraint_expression(capsys, monkeypatch):
    root = Path(os.environ["SELFPLAY_RUNS"]) / "runs #1"  # '#' ends an #SBATCH line unquoted
    monkeypatch.setenv("SELFPLAY_RUNS", str(root))
    scripts = dry_run(capsys, "model=tiny-mistral", "hardware=slurm-cpu",
                      'hardware.slurm.constraint="a100&(ib|nvlink)"')  # fmt: skip
    assert len(scripts) == 4
    assert not root.exists(), "a dry run writes nothing"
    for name, script in scripts.items():
        log = r"%x_%A_%a" if "--array" in script else r"%x_%j"
        assert re.search(rf'^#SBATCH --output="{re.escape(str(root))}/tiny-mistral/sppo/[^"/]+'
                         rf'/slurm/logs/{log}\.out"$', script, re.MULTILINE)  # fmt: skip
        assert f"\n#SBATCH --job-name={name}\n" in script
        assert '\n#SBATCH --constraint="a100&(ib|nvlink)"\n' in script
        body = script.split("\n# $ ")[0]
        checked = subprocess.run(["bash", "-n"], input=body, text=True, capture_output=True)
        assert checked.returncode == 0, (name, checked.stderr)


def test_each_node_task_gets_the_overrides_as_words_and_runs_none_of_them(capsys, tmp_path):
    """The srun line of a two-node training, run here: a fake srun runs the task's command with,
    in place of the stage, a Python that prints its node rank and arguments."""
    marker = tmp_path / "injected"
    hostile = f"data.name='x $(touch {marker}) `touch {marker}` \"y\"'"
    scripts = dry_run(capsys, "experiment=gemma-2-9b-it-sppo", "hardware=slurm-multinode", hostile)
    (srun,) = [
        line
        for line in scripts["eta1000-lr5e-07-K5-it1-train"].splitlines()
        if line.startswith("srun ")
    ]
    fake_srun = (
        "srun() {\n"
        "  shift  # --kill-on-bad-exit=1\n"
        '  local task=("$@")  # bash -c CODE NAME PYTHON ARGS...\n'
        '  "${task[@]:0:4}" "$PY" -c "$REPORT" "${task[@]:5}"\n'
        "}\n"
    )
    report = "import json, os, sys; print(json.dumps([os.environ['NODE_RANK'], sys.argv[1:]]))"
    done = subprocess.run(
        ["bash", "-c", f"{fake_srun}{srun}\nwait $!"],
        env={**os.environ, "SLURM_NODEID": "1", "PY": sys.executable, "REPORT": report},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert not marker.exists(), "no shell read the override as code"
    assert done.returncode == 0, done.stderr
    rank, argv = json.loads(done.stdout)
    assert rank == "1", "the node rank is expanded inside the task"
    assert argv[:2] == ["-m", "src.main"] and argv[-2:] == ["stage=train", "iter=1"]
    assert hostile in argv, "the override arrives as one word, as it was given"


def test_a_line_break_never_reaches_a_comment_or_directive_line():
    """The last guard, for a value the config did not check: the script is not rendered."""
    values = {"description": "iteration 1\ntouch /tmp/x", "job_name": "j", "output": "o"}
    with pytest.raises(ValueError, match=r"stage\.sbatch: @description@='iteration 1\\ntouch"):
        fill("stage.sbatch", values)
    with pytest.raises(ValueError, match=r"@job_name@"):
        fill("stage.sbatch", {"job_name": "j\rk"})
    # on a command line too: even inside quotes it would continue the word on a line of its own
    with pytest.raises(ValueError, match=r"@overrides@"):
        fill("stage.sbatch", {"overrides": shlex.quote("a\nb")})


def shell_lines(text: str) -> list[str]:
    """The lines of a script or template that bash runs: neither blank nor comments (#SBATCH
    lines are comments to it); a template's block of directives, @resource_lines@, is none."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith("#") and line != "@resource_lines@"
    ]


def command_words(script: str) -> list[str]:
    """The words bash passes to `python -m src.main` on the script's command line: printf prints
    them in place of running it."""
    (line,) = [line for line in shell_lines(script) if " -m src.main " in line]
    words = line.split(" -m src.main ", 1)[1].removesuffix(" &")
    done = subprocess.run(["bash", "-c", f"printf '%s\\0' {words}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\0")[:-1]


def assert_runs_only_its_template(
    script: str, template: str, marker: Path, overrides: list[str]
) -> None:
    """The script runs its template's commands, the exports and setup lines of the config that
    `overrides` compose, and no other line: bash reads it, and running everything before
    `set -euo pipefail` (the header, where values on comment and #SBATCH lines land) does
    nothing."""
    from src.config import compose
    from src.slurm import node_values

    body = script.split("\n# $ ")[0]
    own = (TEMPLATES / template).read_text()
    for key, lines in node_values(compose(overrides, 1)).items():
        own = own.replace(f"@{key}@", lines)
    assert len(shell_lines(body)) == len(shell_lines(own)), body
    checked = subprocess.run(["bash", "-n"], input=body, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    header = body.split("\nset -euo pipefail\n")[0]
    subprocess.run(["bash", "-c", header], capture_output=True, timeout=30)
    assert not marker.exists(), "a value ran as a command"


@pytest.mark.parametrize("where", ["hardware.slurm.partition", "run_name", "paths.root"])
def test_a_value_naming_a_placeholder_is_written_as_it_is(capsys, tmp_path, monkeypatch, where):
    """`@overrides@` in a partition, a run name or the run root stays that text: it is not
    replaced by the quoted overrides, whose line break (in `notes`) would otherwise land on a
    comment or #SBATCH line and start a command of its own."""
    marker = tmp_path / "injected"
    note = f'notes=["x\ntouch {marker} #"]'
    overrides = ["model=tiny-mistral", "hardware=slurm-cpu", note]
    if where == "paths.root":
        monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "@overrides@"))
    else:
        overrides.append(f"{where}=@overrides@")
    scripts = dry_run(capsys, *overrides)
    assert len(scripts) == 4
    for name, script in scripts.items():
        written = {
            "hardware.slurm.partition": "\n#SBATCH --partition=@overrides@\n",
            "run_name": f"\n#SBATCH --job-name=@overrides@-it1-{name.rsplit('-', 1)[1]}\n",
            "paths.root": f"\n#SBATCH --output={tmp_path}/@overrides@/tiny-mistral/sppo/",
        }[where]
        assert script.count(written) == 1, script
        assert_runs_only_its_template(script, "stage.sbatch", marker, overrides)
        assert command_words(script)[: len(overrides)] == overrides, "each override as given"


def test_a_sweep_named_like_a_placeholder_is_written_as_it_is(capsys, tmp_path):
    from src.sweep import main as sweep

    marker = tmp_path / "injected"
    note = f'notes=["x\ntouch {marker} #"]'
    path = tmp_path / "@overrides@.yaml"
    path.write_text((REPO_ROOT / "sweeps" / "eta.yaml").read_text())
    sweep([str(path), "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu", note])
    script = capsys.readouterr().out.split("# ---- ")[2].split("\n", 1)[1]
    assert script.count("\n#SBATCH --job-name=sweep-@overrides@\n") == 1
    assert script.count(f"{tmp_path}/runs/sweeps/@overrides@/logs/%x_%A_%a.out") == 1
    assert_runs_only_its_template(
        script, "sweep-array.sbatch", marker, ["model=tiny-mistral", "hardware=slurm-cpu", note]
    )
    assert command_words(script)[:3] == ["model=tiny-mistral", "hardware=slurm-cpu", note]


def test_each_placeholder_is_replaced_once_whatever_the_values_hold():
    script = fill(
        "stage.sbatch",
        {"job_name": "@overrides@", "overrides": "@job_name@", "description": "@@signal_s@@"},
    )
    assert "\n#SBATCH --job-name=@overrides@\n" in script
    assert " -m src.main @job_name@ &\n" in script and "\n# @@signal_s@@\n" in script
    assert "#SBATCH --signal=B:USR1@@signal_s@" in script, "a placeholder without a value stays"


@pytest.mark.parametrize(
    "value",
    ["plain", "it's", "a b", "back\\slash", "a\nb", "cr\r", "tab\t", "\x1b[31m", "é\u2028x",
     "$(id)"],
)  # fmt: skip
def test_a_shell_word_is_one_line_that_bash_reads_back_as_the_value(value):
    from src.slurm import shell_word

    word = shell_word(value)
    assert word.isprintable(), "no line break nor control character on the script's line"
    done = subprocess.run(["bash", "-c", f"printf '%s' {word}"], capture_output=True)
    assert done.stdout.decode() == value


@pytest.mark.parametrize(
    ("value", "written"),
    [("gpu", "gpu"), ("/a/b_c-1/%x.out", "/a/b_c-1/%x.out"), ("a b#c", '"a b#c"'),
     ('say "hi"\\', '"say \\"hi\\"\\\\"')],
)  # fmt: skip
def test_an_sbatch_value_is_quoted_when_sbatch_would_split_it(value, written):
    assert sbatch_value(value) == written


# --- a site's setup and the nodes' environment ------------------------------------------------

SITE = [
    "hardware.slurm.setup=['module load cuda/12.4','source /shared/envs/selfplay/bin/activate']",
    "hardware.slurm.sbatch=['--reservation=maint','--mail-type=FAIL','--comment=$(rm -rf ~)']",
]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            'hardware.slurm.setup=["true\ntouch x"]',
            "hardware.slurm.setup[0]='true\\ntouch x' holds a newline; each setup line is one "
            "command on a line of its own in the SLURM scripts: one item per line, printable "
            "characters only",
        ),
        (
            'hardware.slurm.setup=["module load a\rb"]',
            "'module load a\\rb' holds a carriage return",
        ),
        ("hardware.slurm.setup=['module load a',' ']", "hardware.slurm.setup[1]=' ' is blank"),
        (
            "hardware.slurm.setup=['#SBATCH --reservation=maint']",
            "hardware.slurm.setup[0]='#SBATCH --reservation=maint': sbatch reads no #SBATCH line "
            "after the script's first command; put the option in hardware.slurm.sbatch (e.g. "
            "hardware.slurm.sbatch=['--reservation=maint'])",
        ),
        (
            "hardware.slurm.sbatch=['--mail-type=FAIL','--exclusive']",
            "hardware.slurm.sbatch[1]='--exclusive': --exclusive would give each job, the CPU "
            "pairs job and every one-GPU shard too, what the whole node has; src.slurm asks for "
            "each stage's own GPUs, CPUs and memory (hardware.slurm.stages.<stage>): drop it",
        ),
        ("hardware.slurm.sbatch=['--gres=gpu:8']", "--gres would give each job"),
        (
            "hardware.slurm.sbatch=['--reservation=maint','--job-name=x']",
            "hardware.slurm.sbatch[1]='--job-name=x': --job-name is set by src.slurm, from what "
            "each job needs; drop it",
        ),
        (
            "hardware.slurm.sbatch=['--partition=gpu']",
            "hardware.slurm.sbatch[0]='--partition=gpu': the scripts set --partition from "
            "hardware.slurm.partition: set that",
        ),
        (
            "hardware.slurm.sbatch=['--time=10']",
            "the scripts set --time from hardware.slurm.time_min or "
            "hardware.slurm.stages.<stage>.time_min: set that",
        ),
        ("hardware.slurm.sbatch=['--kill-on-invalid-dep=no']", "is set by src.slurm"),
        (
            "hardware.slurm.sbatch=['--gres gpu:8']",
            "hardware.slurm.sbatch[0]='--gres gpu:8': an sbatch option is `--name` or "
            "`--name=value`, the name spelled in full in lowercase letters, digits and '-'",
        ),
        ("hardware.slurm.sbatch=['-p gpu']", "an sbatch option is `--name` or `--name=value`"),
        ("hardware.slurm.sbatch=['--Gres=gpu:8']", "an sbatch option is `--name` or"),
        ('hardware.slurm.sbatch=["--mail-user=a\nb"]', "'--mail-user=a\\nb' holds a newline"),
        ("hardware.slurm.sbatch=['--reservation=']", "'--reservation=' has no value after ="),
    ],
)
def test_a_setup_line_or_sbatch_option_that_is_not_one_safe_line_is_refused(
    capsys, override, message
):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", "model=tiny-mistral", "hardware=slurm-cpu", override])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("config error: hardware.slurm.") and message in line
    assert "# ---- " not in captured.out


def test_a_line_break_typed_in_a_setup_line_is_refused_before_any_script(tmp_path):
    """From a shell, bash's $'\\n' puts a line break into the override: the setup line would be
    two commands, the second one the config never shows."""
    marker = tmp_path / "injected"
    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path / "runs")}
    command = (
        f"{shlex.quote(sys.executable)} -m src.slurm --dry-run model=tiny-mistral "
        f"hardware=slurm-cpu 'hardware.slurm.setup=[\"true'$'\\n''touch {marker}\"]'"
    )
    done = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"config error: hardware.slurm.setup[0]='true\\ntouch {marker}' holds a newline; each "
        "setup line is one command on a line of its own in the SLURM scripts: one item per "
        "line, printable characters only"
    ]
    assert not marker.exists() and not (tmp_path / "runs").exists()


def script_parts(script: str) -> tuple[list[str], list[str]]:
    """A rendered script's #SBATCH lines, and its lines from `cd` to the line that runs the stage
    (that line excluded)."""
    lines = script.split("\n# $ ")[0].splitlines()
    directives = [line for line in lines if line.startswith("#SBATCH ")]
    start = next(i for i, line in enumerate(lines) if line.startswith("cd "))
    end = next(i for i, line in enumerate(lines) if " -m src.main " in line)
    return directives, lines[start:end]


def exported(lines: list[str]) -> dict[str, str]:
    """What the `export` lines among `lines` set, as bash reads them (nothing else is run)."""
    exports = "\n".join(line for line in lines if line.startswith("export "))
    report = "import json, os; print(json.dumps(dict(os.environ)))"
    done = subprocess.run(["env", "-i", "bash", "-c", f"{exports}\nexec {sys.executable} -c "
                           f"{shlex.quote(report)}"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    env = json.loads(done.stdout)
    return {k: v for k, v in env.items() if k in exports and k not in ("PWD", "SHLVL", "_")}


def test_every_template_exports_the_config_then_runs_the_setup_lines(capsys, tmp_path, monkeypatch):
    """stage.sbatch, train-multinode.sbatch and sweep-array.sbatch: after `cd <clone>`, the
    exports of the resolved config (each value one quoted word, whatever it holds), then the
    site's setup lines as written, then the stage; the site's sbatch options after the others."""
    from src.sweep import main as sweep

    marker = tmp_path / "injected"
    root = tmp_path / f"runs $(touch {marker}) 'a'"
    hf_home = tmp_path / f"hf `touch {marker}`"
    monkeypatch.setenv("SELFPLAY_RUNS", str(root))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    scripts = dry_run(capsys, "model=tiny-mistral", "hardware=slurm-cpu", "hardware.num_nodes=2",
                      "hardware.distributed=deepspeed", "hardware.slurm.partition=gpu", *SITE)  # fmt: skip
    sweep(["sweeps/eta.yaml", "--dry-run", "model=tiny-mistral", "hardware=slurm-cpu",
           "hardware.slurm.partition=gpu", *SITE])  # fmt: skip
    stage = {name.rsplit("-", 1)[1]: script for name, script in scripts.items()}
    rendered = {
        "stage.sbatch": stage["generate"],
        "train-multinode.sbatch": stage["train"],
        "sweep-array.sbatch": capsys.readouterr().out.split("# ---- ")[2].split("\n", 1)[1],
    }
    for template, script in rendered.items():
        assert f"from slurm/templates/{template}" in script
        directives, lines = script_parts(script)
        assert directives[-4:] == ["#SBATCH --partition=gpu", "#SBATCH --reservation=maint",
                                   "#SBATCH --mail-type=FAIL", '#SBATCH --comment="$(rm -rf ~)"'], template  # fmt: skip
        # sbatch reads directives up to the first command only
        assert script.index(directives[-1]) < script.index("\nset -euo pipefail\n")
        assert lines[0] == f"cd {REPO_ROOT}" and lines[1] == "export PYTHONUNBUFFERED=1"
        assert [line.split("=")[0] for line in lines[2:9]] == [
            "export HF_HOME", "export HF_HUB_CACHE", "export SELFPLAY_RUNS", "export WANDB_MODE",
            "export HF_HUB_OFFLINE", "export HF_DATASETS_OFFLINE", "export TRANSFORMERS_OFFLINE",
        ], template  # fmt: skip
        assert lines[9:11] == ["module load cuda/12.4", "source /shared/envs/selfplay/bin/activate"]
        assert exported(lines[:11]) == {
            "PYTHONUNBUFFERED": "1",
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "SELFPLAY_RUNS": str(root),
            "WANDB_MODE": "offline",  # conftest's, which logger.mode reads
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }, template
        checked = subprocess.run(["bash", "-n"], input=script.split("\n# $ ")[0], text=True,
                                 capture_output=True)  # fmt: skip
        assert checked.returncode == 0, (template, checked.stderr)
    assert not marker.exists(), "no value ran as a command"


def test_nodes_that_reach_the_hub_and_a_run_without_wandb_export_less(capsys):
    scripts = dry_run(capsys, "model=tiny-mistral", "hardware=slurm-cpu", "logger=none",
                      "hardware.slurm.offline=false", "paths.hf_home=/shared/hf")  # fmt: skip
    for script in scripts.values():
        directives, lines = script_parts(script)
        assert exported(lines) == {
            "PYTHONUNBUFFERED": "1",
            "HF_HOME": "/shared/hf",
            "HF_HUB_CACHE": "/shared/hf/hub",
            "SELFPLAY_RUNS": os.environ["SELFPLAY_RUNS"],
        }
        assert lines[-1] == "", "no setup line: an empty line in its place"
        assert not any("--gres" in line or "--exclusive" in line for line in directives)


def test_only_the_shell_line_keys_fill_several_lines():
    from src.slurm import SHELL_LINE_KEYS, check_lines

    assert set(SHELL_LINE_KEYS) == {"environment", "setup"}
    script = fill("stage.sbatch", {"environment": "export A=1\nexport B=2", "setup": "a\nb"})
    assert "\nexport PYTHONUNBUFFERED=1\nexport A=1\nexport B=2\na\nb\n" in script
    for key in SHELL_LINE_KEYS:
        with pytest.raises(ValueError, match=rf"@{key}@='a\\n\\x1b"):
            fill("stage.sbatch", {key: "a\n\x1b[31m"})  # each line printable
        with pytest.raises(ValueError, match=rf"@{key}@"):
            check_lines("t.sbatch", key, "a\nb", own_line=False)  # on a line of its own only
    for key in ("repo", "python", "script", "overrides", "description"):
        with pytest.raises(ValueError, match=rf"@{key}@"):
            fill("stage.sbatch", {key: "a\nb"})


@pytest.mark.parametrize("template", ["stage.sbatch", "train-multinode.sbatch",
                                      "sweep-array.sbatch"])  # fmt: skip
def test_a_node_that_does_not_see_the_clone_or_the_script_ends_the_job_with_one_line(
    tmp_path, template
):
    """Run with bash here, as a node runs it: before `cd`, the clone, its Python and the script
    itself must be where the submitting machine had them; the first one missing is named."""
    from src.slurm import shell_word

    script = tmp_path / "job.sbatch"
    clone, python = tmp_path / "no clone", Path(sys.executable)
    for missing, values in [
        (clone, {"repo": clone, "python": python, "script": script}),
        (
            tmp_path / "gone.sbatch",
            {"repo": REPO_ROOT, "python": python, "script": tmp_path / "gone.sbatch"},
        ),
    ]:
        words = {k: shell_word(str(v)) for k, v in values.items()}
        script.write_text(fill(template, {**words, "resource_lines": ""}))
        done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        assert done.returncode == 3, done.stderr
        assert done.stdout == "" and done.stderr.splitlines() == [
            f"[slurm] {missing} is not on this node: the clone, its .venv, paths.root and "
            "HF_HOME must be on a file system every node mounts at the same path"
        ]


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:27 / /scratch rw,relatime shared:5 - tmpfs tmpfs rw,size=100k
31 30 0:28 / /scratch/shared rw - nfs4 server:/export rw
32 27 0:29 / /local\\040ram rw - ramfs ramfs rw
"""


@pytest.mark.parametrize(
    ("path", "mountinfo", "kind"),
    [
        ("/scratch", MOUNTINFO, "tmpfs"),
        ("/scratch/runs/x", MOUNTINFO, "tmpfs"),
        ("/scratch/shared/runs", MOUNTINFO, None),  # the longest mount point that holds it
        ("/scratchy/runs", MOUNTINFO, None),  # a mount point holds whole folder names only
        ("/local ram/runs", MOUNTINFO, "ramfs"),  # the mount point's blank, in octal
        ("/home/me", MOUNTINFO, None),
        ("/scratch/x", MOUNTINFO + "40 27 0:40 / /scratch rw - xfs /dev/sdb rw\n", None),
        ("/scratch/x", "", None),
    ],
)
def test_a_path_on_a_memory_file_system_is_found_by_its_longest_mount_point(path, mountinfo, kind):
    from src.slurm import memory_file_system

    assert memory_file_system(path, mountinfo) == kind


@pytest.mark.parametrize(
    ("where", "command"),
    [("paths.root", "src.slurm"), ("paths.hf_home", "src.slurm"), ("paths.root", "src.sweep")],
)
def test_a_submission_from_a_memory_file_system_is_refused_before_anything_is_written(
    capsys, tmp_path, monkeypatch, where, command
):
    """What lies on tmpfs no other node sees: refused before a folder or script is made."""
    import src.slurm
    from src.slurm import memory_file_system
    from src.sweep import main as sweep

    memory = tmp_path / "in memory"
    point = str(memory).replace(" ", "\\040")  # as mountinfo writes a blank
    mountinfo = f"1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 0:9 / {point} rw - tmpfs tmpfs rw\n"
    monkeypatch.setattr(
        src.slurm, "memory_file_system", lambda path: memory_file_system(path, mountinfo)
    )
    folder = memory / "hf" if where == "paths.hf_home" else memory / "runs"
    monkeypatch.setenv("HF_HOME" if where == "paths.hf_home" else "SELFPLAY_RUNS", str(folder))
    args = ["model=tiny-mistral", "hardware=slurm-cpu"]
    with pytest.raises(SystemExit) as exit_info:
        if command == "src.sweep":
            sweep(["sweeps/eta.yaml", *args])
        else:
            main(args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"config error: {where} {folder} is on tmpfs, this machine's memory, which the nodes do "
        "not see: the clone, its .venv, paths.root and HF_HOME must be on a file system every "
        "node mounts at the same path"
    )
    assert not memory.exists(), "nothing written"
