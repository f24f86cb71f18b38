"""What an iteration made, handed on: each checkpoint carries a model card the Hub's own library
parses (metadata that round-trips, the eval results as model-index once the iteration's eval
ran, a recipe that is the run's resolved config); `python -m src.export` assembles the model and
data folders, loadable with `datasets`, refuses a push it cannot finish before doing anything, and
replaces only its own export of the same run and iteration, leaving no `.partial` folder behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_type_hints

import pytest
from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from src.config import REPO_ROOT
from src.core.contracts import PairRow, RankedRow
from src.core.policy import seal_checkpoint
from tests.support import lineages
from tests.support.helpers import SMALL, entry, one_line_failure, run_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dir) -> lineages.Copy:
    """`cli(root, "eval.enabled=true", "iter=2", "training.seed=7")`, copied (tests/support/lineages.py)."""
    return lineages.copy("evaluated-two", tiny_dir, tmp_path_factory.mktemp("cards") / "runs")


@pytest.fixture(scope="module")
def lineage(made) -> Path:
    (run,) = (made.root / "tiny-mistral" / "sppo").iterdir()
    return run


def table(text: str, heading: str) -> dict[str, str]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", section, re.M)[1:])


@pytest.mark.parametrize("t", [1, 2])
def test_the_card_parses_and_round_trips(lineage, t):
    checkpoint = lineage / f"iter{t}" / "train" / "checkpoint"
    card = ModelCard.load(checkpoint / "README.md")
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert set(data["tags"]) == {"selfplay-lab", "sppo", f"iter{t}"}
    assert "README.md" not in "".join(seal_checkpoint(checkpoint)), "the card is never sealed"


@pytest.mark.parametrize("t", [1, 2])
def test_the_eval_results_are_the_model_index(lineage, t):
    evaluation = json.loads((lineage / f"iter{t}" / "eval" / "eval.json").read_text())
    card = ModelCard.load(lineage / f"iter{t}" / "train" / "checkpoint" / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {
        "win_rate": round(evaluation["win_rate"], 4),
        "lc_win_rate": round(evaluation["lc_win_rate"], 4),
    }
    assert f"[{evaluation['win_rate_low']:.3f}, {evaluation['win_rate_high']:.3f}]" in card.text


@pytest.mark.parametrize("t", [1, 2])
def test_the_recipe_is_the_runs_resolved_config(made, lineage, t):
    stage = lineage / f"iter{t}" / "train"
    config = OmegaConf.load(stage / "config.yaml")
    text = (stage / "checkpoint" / "README.md").read_text()
    recipe = table(text, "Recipe")
    tr = config.training
    assert recipe["method.K"] == str(config.method.K) == "3"
    assert recipe["method.eta / method.beta"] == f"{config.method.eta:g} / {config.method.beta:g}"
    assert recipe["method.loss"] == config.method.loss
    assert recipe["training.learning_rate"] == f"{tr.learning_rate:g}"
    assert recipe["training.seed"] == str(tr.seed) == "7"
    assert recipe["training.global_batch_size"].startswith(f"{tr.global_batch_size} = ")
    assert recipe["training.max_length / max_prompt_length"] == (
        f"{tr.max_length} / {tr.max_prompt_length}"
    )
    # as the card shows it: relative to the repository, whose data/ holds the prompts
    assert recipe["data.prompts"] == f"data/prompts/iter{t}.jsonl"
    assert config.data.prompts == str(REPO_ROOT / recipe["data.prompts"])
    summary = json.loads((stage / "metrics.json").read_text())["summary"]
    training = table(text, "Training")
    assert training["steps"] == str(summary["steps"])
    assert training["train_loss (mean over steps)"] == f"{summary['train_loss']:.4f}"
    command = (stage / "config.yaml").read_text().splitlines()[0].removeprefix("# ")
    assert f"```bash\n{command}\n```" in text
    root = made.made_in  # where the run was made, and its card written
    assert str(root) not in text and str(REPO_ROOT) not in text, "no local absolute path"
    if t == 2:
        checkpoint = (lineage / "iter1" / "train" / "checkpoint").relative_to(made.root)
        assert f"iteration 1's checkpoint `{checkpoint}`" in text


def export(lineage: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m src.export` of `lineage`, in this process (tests/support/helpers.py's entry)."""
    return entry("src.export", *export_words(lineage), *args)


def export_process(
    lineage: Path, *args: str, env: dict | None = None, preexec_fn=None
) -> subprocess.CompletedProcess:
    """`python -m src.export` of `lineage` in a fresh process: for an environment read at
    import, a limit on the process, or a second process beside this one."""
    return subprocess.run(
        [sys.executable, "-m", "src.export", *export_words(lineage), *args],
        cwd=REPO_ROOT,
        env=env or os.environ,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec_fn,
    )


def export_words(lineage: Path) -> list[str]:
    return ["model=tiny-mistral", f"paths.root={lineage.parents[2]}", f"run_name={lineage.name}"]


def test_the_exported_data_loads_with_datasets_and_counts_what_the_stages_counted(
    lineage, tmp_path
):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    result = export(lineage, "iter=2", "--what", "data", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    data = tmp_path / "data"
    ranked = load_dataset("parquet", data_files=str(data / "ranked.parquet"))["train"]
    pairs = load_dataset("parquet", data_files=str(data / "pairs.parquet"))["train"]
    contract = {k for k in get_type_hints(RankedRow) if k != "comparisons"}
    assert contract <= set(ranked.column_names), contract - set(ranked.column_names)
    assert set(get_type_hints(PairRow)) <= set(pairs.column_names)
    rank_done = json.loads((lineage / "iter2" / "rank" / "done.json").read_text())["counts"]
    pairs_done = json.loads((lineage / "iter2" / "pairs" / "done.json").read_text())["counts"]
    assert len(ranked) == rank_done["ranked"] and len(pairs) == pairs_done["pairs"]
    assert all(len(r) == 3 for r in ranked["responses"]) and all(
        len(m) == 3 for m in ranked["win_matrix"]
    )
    card = DatasetCard.load(data / "README.md")
    assert [c["config_name"] for c in card.data.to_dict()["configs"]] == ["ranked", "pairs"]
    assert f"| pairs (`pairs.parquet` rows) | {pairs_done['pairs']} |" in card.text
    assert not (lineage / "export").exists(), "--out: nothing written elsewhere"


def test_the_exported_model_is_the_checkpoint_with_its_card(lineage, tmp_path):
    from transformers import AutoModelForCausalLM

    result = export(lineage, "iter=1", "--what", "model", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    model = tmp_path / "model"
    AutoModelForCausalLM.from_pretrained(model)
    checkpoint = lineage / "iter1" / "train" / "checkpoint"
    assert (model / "README.md").read_text() == (checkpoint / "README.md").read_text()
    assert not (tmp_path / "data").exists()


PAIRS = REPO_ROOT / "tests" / "data" / "pairs_tiny.jsonl"


@pytest.fixture(scope="module")
def own_pairs(tmp_path_factory, tiny_dir) -> Path:
    """Iteration 1 trained on a pairs file of the user's own (`stage=train training.pairs=...`):
    a lineage with a model and no generate, rank or pairs stage; its run directory."""
    root = tmp_path_factory.mktemp("own-pairs") / "runs"
    made = run_main(root, *SMALL, "stage=train", f"training.pairs={PAIRS}")
    assert made.returncode == 0, made.stderr[-3000:]
    (run,) = (root / "tiny-mistral" / "sppo").iterdir()
    return run


def test_an_iteration_trained_on_a_pairs_file_of_ones_own_exports_its_model(own_pairs, tmp_path):
    """Exported as the training was run (its training.pairs): the model alone, its card naming
    the file's sha256; the data, which it has none of, is refused when asked for, naming the
    --what that exports what it has.

    Slow: it pays for its lineage, a training on the tiny model (`own_pairs`) and the imports of
    one in this process."""
    words = ["model=tiny-mistral", f"paths.root={own_pairs.parents[2]}", f"training.pairs={PAIRS}"]
    result = entry("src.export", *words, "iter=1", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model"]
    digest = hashlib.sha256(PAIRS.read_bytes()).hexdigest()
    assert (
        f"training.pairs: the file of sha256 {digest}"
        in (tmp_path / "out/model/README.md").read_text()
    )
    assert f"[export] data: none, iteration 1 trains on training.pairs={PAIRS}" in result.stderr
    for what in ("data", "all"):
        asked = entry("src.export", *words, "iter=1", "--what", what, "--out", str(tmp_path / what))
        assert one_line_failure(asked, 1) == (
            f"error: iteration 1 of {own_pairs} trains on training.pairs={PAIRS}, a file of your "
            "own, not on responses the run ranked and paired: it has no data of its own to "
            "export; --what model exports its model"
        )
        assert not (tmp_path / what).exists()


@pytest.mark.parametrize(
    ("offline", "said"),
    [
        (True, "--push org/name: the Hub is offline (HF_HUB_OFFLINE); the folders were not made"),
        (False, "--push org/name: no Hugging Face token on this machine; nothing was pushed"),
    ],
)
def test_a_push_that_cannot_finish_is_one_line_and_leaves_nothing(lineage, tmp_path, offline, said):
    hub = ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # either says "offline"
    env = {k: v for k, v in os.environ.items() if k not in hub}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # no stored token either
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "out"
    # the Hub's offline switch is read as huggingface_hub is imported: a process of its own
    result = export_process(lineage, "iter=1", "--out", str(out), "--push", "org/name", env=env)
    line = one_line_failure(result, 3)
    assert line.startswith(f"error: {said}"), line
    assert not out.exists()


def test_exporting_an_unfinished_iteration_is_one_line(lineage, tmp_path):
    line = one_line_failure(export(lineage, "iter=3", "--out", str(tmp_path / "o")), 1)
    assert "iter3/train is not finished (no done.json); make it first" in line, line
    root = lineage.parents[2]  # the fix is the pipeline's command that makes it, not an export
    made_by = f"python -m src.main model=tiny-mistral paths.root={root} run_name={lineage.name} iter=3 stage=all"
    assert line.endswith(f"run `{made_by}`"), line


def test_an_iteration_descended_from_one_trained_again_is_refused_naming_its_lineages_command(
    tiny_dir, tmp_path
):
    """Iteration 1 trained again under another setting after iteration 2 was made from it: the
    export of iteration 2 is refused naming the command src.status names, iteration 2's own made
    again (the export's own overrides lack its settings), and before anything is made: no export
    folder, no lock beside it."""
    from src.status import status

    runs = lineages.copy("two-iterations", tiny_dir, tmp_path / "runs").root
    lineages.trained_again(runs, "training.warmup_ratio=0.2")
    (run,) = (runs / "tiny-mistral" / "sppo").iterdir()
    line = one_line_failure(export(run, "iter=2"), 1)
    assert line.startswith(f"error: {run / 'iter2' / 'train'} is stale (iteration 1's checkpoint")
    (found,) = status([f"paths.root={runs}"]).lineages
    assert found.command.endswith(
        f" iter=2 paths.root={runs} pipeline.require_previous=true 'pipeline.redo=[generate]'"
    )
    assert line.endswith(f"; run `{found.command}`"), line
    assert not (run / "export").exists(), "neither the folder nor its lock"


@pytest.mark.parametrize(
    ("experiment", "said", "license"),
    [
        ("gemma-2-9b-it-sppo", "gives 8 per device x 1: the same global batch", "gemma"),
        ("mistral-7b-instruct-sppo-qlora", "learning rate 5e-6 instead of 5e-7", "apache-2.0"),
        ("mistral-7b-instruct-sppo", None, "apache-2.0"),
    ],
)
def test_a_preset_that_departs_from_its_published_card_says_so_in_its_cards(
    experiment, said, license
):
    """The real recipes' cards, made from their resolved configs (training summary stubbed):
    the Hub base model and license, the prompt dataset, and the preset's `notes`."""
    from src.stages.report.cards import model_card
    from tests.support.helpers import compose_cfg

    cfg = compose_cfg(f"experiment={experiment}")
    metrics = {"summary": {"train_loss": 0.5, "steps": 1}, "log_history": [{"loss": 0.5}]}
    card = ModelCard(model_card(cfg, metrics, [], "python -m src.main"))
    data = card.data.to_dict()
    assert data["base_model"] == cfg.model.path and data["license"] == license
    assert data["datasets"] == [cfg.data.prompts]
    if said is None:
        assert "Departures from the published recipe" not in card.text
    else:
        assert said in card.text.replace("\n", " ")


# --- what export may replace (only its own export of the same run and iteration) ---


def refused(result: subprocess.CompletedProcess, lineage: Path, out: Path, *args: str) -> str:
    """The refusal's line, after checking that it ends with this very export's command, --force
    added."""
    line = one_line_failure(result, 1)
    root = lineage.parents[2]
    command = f"python -m src.export model=tiny-mistral paths.root={root} run_name={lineage.name}"
    assert line.endswith(f"; run `{command} {' '.join(args)} --force`"), line
    return line


@pytest.mark.parametrize("occupied", ["model", "data"])
def test_a_folder_export_did_not_write_is_refused_and_force_replaces_it(
    lineage, tmp_path, occupied
):
    notes = tmp_path / occupied / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("my own notes")
    args = ("iter=1", "--out", str(tmp_path))
    line = refused(export(lineage, *args), lineage, tmp_path, *args)
    assert line.startswith(
        f"error: {tmp_path / occupied} holds files export did not write (notes.txt); "
        "nothing was exported, --force replaces it;"
    ), line
    assert notes.read_text() == "my own notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == [occupied], "nothing else made either"

    result = export(lineage, *args, "--force")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not notes.exists()
    assert (tmp_path / "model" / "config.json").is_file()
    assert (tmp_path / "data" / "pairs.parquet").is_file()


def test_an_export_replaces_its_own_export_of_the_same_run_and_iteration_only(lineage, tmp_path):
    args = ("--what", "data", "--out", str(tmp_path))
    first = export(lineage, "iter=1", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    data = tmp_path / "data"
    stale = data / "ranked.parquet"
    stale.write_bytes(b"not what export wrote here")  # it wrote the file: replaced regardless

    again = export(lineage, "iter=1", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert stale.read_bytes()[:4] == b"PAR1", "the export was made again"

    line = refused(export(lineage, "iter=2", *args), lineage, tmp_path, "iter=2", *args)
    assert f"error: {data} is this run's export of iteration 1, not of iteration 2;" in line

    (data / "adapter").mkdir()
    (data / "adapter" / "mine.json").write_text("{}")
    line = refused(export(lineage, "iter=1", *args), lineage, tmp_path, "iter=1", *args)
    assert f"{data} holds files export did not write (adapter, adapter/mine.json)" in line
    assert (data / "adapter" / "mine.json").read_text() == "{}"


def test_an_export_of_another_run_is_refused(lineage, tmp_path):
    import shutil

    other = tmp_path / "runs" / lineage.relative_to(lineage.parents[2])  # the same run, moved
    shutil.copytree(lineage, other, symlinks=True)
    out = tmp_path / "out"
    made = export(other, "iter=1", "--what", "model", "--out", str(out))
    assert made.returncode == 0, made.stderr[-3000:]
    args = ("iter=1", "--what", "model", "--out", str(out))
    line = refused(export(lineage, *args), lineage, out, *args)
    assert line.startswith(
        f"error: {out / 'model'} is the export of another run ({other} iteration 1), not of "
        f"{lineage};"
    ), line


def test_a_symbolic_link_in_the_way_is_named_and_what_it_points_to_is_kept(lineage, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model").symlink_to(mine)
    args = ("iter=1", "--what", "model", "--out", str(out))
    line = refused(export(lineage, *args), lineage, out, *args)
    assert line.startswith(
        f"error: {out / 'model'} is a symbolic link (to {mine}), which export neither follows "
        "nor removes;"
    ), line

    result = export(lineage, *args, "--force")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "model").is_symlink() and (out / "model" / "config.json").is_file()
    assert (mine / "notes.txt").read_text() == "my own notes"


def test_a_failed_export_leaves_no_partial_folder_and_keeps_the_earlier_export(lineage, tmp_path):
    """A real failure half-way through assembling: the file size limit (RLIMIT_FSIZE, which
    binds root too) lets export claim its .partial folder but not write ranked.parquet."""
    import resource

    args = ("iter=1", "--what", "data", "--out", str(tmp_path))
    earlier = export(lineage, *args)
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    assert (tmp_path / "data" / "ranked.parquet").stat().st_size > 2048

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    # not measured under `make coverage`: coverage.py's data file would meet the limit as well
    unmeasured = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_CONFIG"}
    result = export_process(lineage, *args, env=unmeasured, preexec_fn=small_files)
    assert [p.name for p in tmp_path.iterdir()] == ["data"], "no data.partial left"
    line = one_line_failure(result, 3)
    assert line.startswith("error: ") and line.endswith(f"File too large: {tmp_path / 'data'}")
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before


def test_a_partial_folder_a_kill_left_is_removed_and_one_export_did_not_make_is_refused(
    lineage, tmp_path
):
    args = ("iter=1", "--out", str(tmp_path))
    made = export(lineage, *args)
    assert made.returncode == 0, made.stderr[-3000:]
    # a kill after assembling, before the rename, leaves the whole folder under its .partial name
    (tmp_path / "model").rename(tmp_path / "model.partial")
    (tmp_path / "model.partial" / "model.safetensors").unlink()  # or earlier: cut short
    notes = tmp_path / "data.partial" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("my own notes")

    line = refused(export(lineage, *args), lineage, tmp_path, *args)
    assert (
        f"error: {tmp_path / 'data.partial'} holds files export did not write (notes.txt)" in line
    )
    assert (tmp_path / "model.partial").is_dir(), "refused before anything was removed"

    notes.unlink()  # the user moved their notes away
    result = export(lineage, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]
    assert (tmp_path / "model" / "model.safetensors").is_file()


# --- one export per folder at a time, and an export that shares nothing with the run ---


def whole(folder: Path) -> bool:
    """Whether `folder` holds exactly what its record lists: an export as it was finished."""
    from src.export.folders import MARKER

    record = json.loads((folder / MARKER).read_text())
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    return found == sorted([*record["files"], MARKER])


def paused(process: subprocess.Popen) -> bool:
    """Whether `process` is stopped (SIGSTOP), as /proc reports its state."""
    return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_second_export_to_the_same_folder_is_refused_at_once_naming_the_first(lineage, tmp_path):
    """Two real exports to one --out: the first is paused half-way (its model in place, its data
    being assembled), the second runs to its end meanwhile (refused, exit 3, naming the first,
    touching nothing), then the first finishes whole. The model a reader finds in --out while the
    first is paused is whole."""
    import signal
    import socket
    import time

    out = tmp_path / "out"
    args = ("iter=1", "--out", str(out))
    root = lineage.parents[2]
    command = [sys.executable, "-m", "src.export", "model=tiny-mistral", f"paths.root={root}"]
    first = subprocess.Popen(
        [*command, f"run_name={lineage.name}", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and time.monotonic() < deadline:
            if (out / "data.partial").exists():
                os.kill(first.pid, signal.SIGSTOP)
                break
            time.sleep(0.001)
        while first.poll() is None and not paused(first) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first export ended before it could be paused"

        def seen() -> list[str]:
            return sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))

        before = seen()
        assert {"model", "data.partial"} <= set(before) and "data" not in before, before
        assert whole(out / "model")
        second = export(lineage, *args)
        line = one_line_failure(second, 3)
        assert line.startswith(
            f"error: {out} is being written by pid {first.pid} on {socket.gethostname()} since "
        ), line
        assert (
            f"(`python -m src.export model=tiny-mistral paths.root={root} "
            f"run_name={lineage.name} {' '.join(args)}`, " in line
        ), line
        assert seen() == before, "refused before touching --out"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["data", "model"]
    assert whole(out / "model") and whole(out / "data")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (out / "model").iterdir()}
    assert {"ranked.parquet", "pairs.parquet"} <= {p.name for p in (out / "data").iterdir()}


def test_a_push_uploads_whole_folders_and_holds_the_folder_while_it_uploads(
    lineage, tmp_path, monkeypatch
):
    """The push path, the Hub stubbed: each folder handed to the upload is whole, and an export
    to the same --out started during the upload is refused (exit 3) naming this one."""
    from src.export import __main__ as entry

    out = tmp_path / "out"
    root = lineage.parents[2]
    words = ["model=tiny-mistral", f"paths.root={root}", f"run_name={lineage.name}", "iter=1"]
    uploads = []

    def upload(folder: Path, repo: str, repo_type: str, private: bool) -> str:
        other = export_process(lineage, "iter=1", "--out", str(out))  # another process
        uploads.append((repo, repo_type, whole(folder), other.returncode, other.stderr))
        return f"https://huggingface.co/{repo}/commit/0"

    monkeypatch.setattr(entry, "require_hub_writable", lambda repo: None)
    monkeypatch.setattr(entry, "push", upload)
    entry.main([*words, "--out", str(out), "--push", "org/name"])

    assert [u[:3] for u in uploads] == [
        ("org/name", "model", True),
        ("org/name-data", "dataset", True),
    ]
    for *_, code, stderr in uploads:
        line = stderr.strip().splitlines()[-1]
        assert code == 3 and line.startswith(
            f"error: {out} is being written by pid {os.getpid()} on "
        ), stderr[-3000:]
    assert whole(out / "model") and whole(out / "data")


def test_editing_the_exported_model_leaves_the_runs_checkpoint_whole(lineage, tmp_path):
    """The exported files are copies with inodes of their own, not links: writing into the
    exported weights in place leaves iteration 1's checkpoint as training sealed it, and
    iteration 2 still starts from it."""
    import shutil

    from src.core.policy import checkpoint_damage
    from src.core.records import read_record
    from src.stages.common import require_previous_policy
    from tests.support.helpers import compose_cfg

    run = tmp_path / "runs" / lineage.relative_to(lineage.parents[2])  # not the module's run
    shutil.copytree(lineage, run, symlinks=True)
    out = tmp_path / "out"
    result = export(run, "iter=1", "--what", "model", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    train = run / "iter1" / "train"
    exported = sorted(p for p in (out / "model").iterdir() if p.is_file())
    assert {p.name for p in train.joinpath("checkpoint").iterdir()} <= {p.name for p in exported}
    for path in exported:
        if (train / "checkpoint" / path.name).exists():
            source = (train / "checkpoint" / path.name).stat()
            assert path.stat().st_ino != source.st_ino, f"{path} shares its inode with the run"
            assert path.read_bytes() == (train / "checkpoint" / path.name).read_bytes()
        assert path.stat().st_nlink == 1, path

    with open(out / "model" / "model.safetensors", "r+b") as f:  # an edit in place
        f.seek(1024)
        f.write(b"\xff" * 256)
    assert checkpoint_damage(train / "checkpoint", read_record(train)["outputs"]) is None
    cfg = compose_cfg(
        "model=tiny-mistral", f"paths.root={tmp_path / 'runs'}", f"run_name={run.name}", "iter=2"
    )
    assert require_previous_policy(cfg) == str(train / "checkpoint")


def test_a_copy_the_kernel_cannot_make_is_streamed(tmp_path, monkeypatch):
    """Where copy_file_range is refused between two files (another file system on an older
    kernel), the file is streamed instead: the same bytes, an inode of its own."""
    import errno

    from src.export import folders

    def refused(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused, raising=False)
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 << 20))
    folders._copy_file(source, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert (tmp_path / "copy.bin").stat().st_ino != source.stat().st_ino


def test_what_a_kill_between_the_two_renames_left_is_cleared_by_the_next_export(lineage, tmp_path):
    """A kill after the earlier export was moved aside and before the new one took its place
    leaves `data.replaced` and a whole `data.partial`, no `data`: the next export removes both."""
    import shutil

    args = ("iter=1", "--what", "data", "--out", str(tmp_path))
    made = export(lineage, *args)
    assert made.returncode == 0, made.stderr[-3000:]
    shutil.copytree(tmp_path / "data", tmp_path / "data.partial")
    (tmp_path / "data").rename(tmp_path / "data.replaced")

    again = export(lineage, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert whole(tmp_path / "data")


@pytest.mark.parametrize(
    "made_out", [False, True], ids=["out-to-make", "out-made-its-lock-refused"]
)
def test_export_names_the_folder_above_out_it_cannot_write(
    lineage, tmp_path, monkeypatch, capsys, made_out
):
    """Its stages judged finished, the export makes --out and its lock: where the folder above
    cannot be written, that folder is named."""
    from src.export.__main__ import main

    read_only = tmp_path / "read-only"
    out = read_only / "out"
    (out if made_out else read_only).mkdir(parents=True)
    mkdir = Path.mkdir

    def refused_there(self, *args, **kwargs):
        if self.parent == read_only and not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused_there)
    with pytest.raises(SystemExit) as exit_:
        main([*export_words(lineage), "iter=1", "--out", str(out)])
    assert exit_.value.code == 3
    assert capsys.readouterr().err == (
        f"error: --out {out}: the folder above it, {read_only}, cannot be written "
        f"({os.strerror(errno.EROFS)}): an export makes --out and its lock (.locks/) there; "
        "point --out into a folder you can write to\n"
    )


def test_export_to_a_read_only_run_root_points_out_elsewhere(lineage, monkeypatch, capsys):
    """Without --out the export's folder is under the run (<run.dir>/export/iter<t>): where the
    run root cannot be written, the fix is --out; a paths.root moved elsewhere would leave the
    run behind. Read-only as a mount makes it, whoever runs the test (root too)."""
    from src.export.__main__ import main
    from tests.support.helpers import compose_cfg

    root = lineage.parents[2]
    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == root or root in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(SystemExit) as exit_:
        main([*export_words(lineage), "iter=1"])
    assert exit_.value.code == 3
    out = compose_cfg(*export_words(lineage)).layout.export_dir(1)
    assert capsys.readouterr().err == (
        f"error: {os.strerror(errno.EROFS)}: {out}; the file system is read-only: point --out "
        "at a writable folder\n"
    )
