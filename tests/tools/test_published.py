"""`python -m src.tiny.published`, the demo's last table: the digits docs/results.md publishes
per machine (the same table there as in src/tiny/published.py), the demo's run folders as
the Makefile's demo commands name them, and the runs' own digits beside the published ones, "-"
where a run has not finished."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from src.config import REPO_ROOT
from src.core import records
from src.core.records import Finished, write_record
from src.tiny.published import COLUMNS, DEMO_RUNS, PUBLISHED, main
from tests.support.helpers import compose_cfg

FOLDER_FREE = {"logger=none", "eval.enabled=true"}  # the demo's overrides that name no folder


def docs_table() -> list[tuple[str, tuple[float, ...]]]:
    """docs/results.md's table of the demo's digits per machine: each row's machine and its five
    figures (SPPO's three, WPO-HB, DPO)."""
    lines = (REPO_ROOT / "docs" / "results.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| machine (2 cores"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        machine, sppo, wpo_hb, dpo = (cell.strip() for cell in line.strip("|").split("|"))
        figures = [*sppo.split(" / "), wpo_hb, dpo]
        rows.append((machine, tuple(float(f) for f in figures)))
    return rows


def test_the_docs_table_holds_the_modules_digits():
    assert docs_table() == [(row.machine, row.figures) for row in PUBLISHED]
    assert all(len(row.figures) == len(COLUMNS) for row in PUBLISHED)


def demo_commands(*args: str) -> list[list[str]]:
    """The commands `make -n demo` shows, each as the shell splits it."""
    shown = subprocess.run(
        ["make", "-n", "--no-print-directory", "demo", *args],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    return [shlex.split(line) for line in shown.stdout.replace("\\\n", "").splitlines() if line]


def demo_runs() -> list[list[str]]:
    """The overrides of the demo's training commands (`src.main ... eval.enabled=true`) that
    name a run's folder."""
    return [
        [a for a in c[c.index("src.main") + 1 :] if a not in FOLDER_FREE]
        for c in demo_commands()
        if "src.main" in c and "eval.enabled=true" in c
    ]


def test_the_demo_runs_are_the_makefiles_and_its_last_command_prints_the_table():
    assert demo_runs() == [list(run.command()) for run in DEMO_RUNS]
    ran = [c for c in demo_commands("ARGS=training.seed=7") if c[0] not in ("echo", "test")]
    assert ran[-1][ran[-1].index("-m") + 1 :] == ["src.tiny.published", "training.seed=7"]
    assert "src.export" in ran[-2]


def eval_folders_of_the_demo(root: Path) -> list[Path]:
    """Each eval the demo runs, in COLUMNS' order, under `root`: its commands' folders as the
    config names them."""
    folders = []
    for overrides in demo_runs():
        cfg = compose_cfg(*overrides)
        lineage = root / Path(cfg.run.dir).relative_to(cfg.paths.root)
        folders += [lineage / f"iter{t}" / "eval" for t in range(1, cfg.iter + 1)]
    assert len(folders) == len(COLUMNS)
    return folders


def finished(folder: Path, win_rate: float, record: bool = True) -> None:
    """An eval with its eval.json, and the record that marks it finished."""
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"win_rate": win_rate, "judge": "tiny-judge"}))
    if record:
        write_record(folder, Finished("f" * 64, {"win_rate": win_rate}, {"seconds": 1.0}))


def printed_rows(out: str) -> dict[str, list[str]]:
    """The printed table's rows: machine -> its other cells."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r" {2,}", line.strip())
        if len(cells) == 2 + len(COLUMNS):
            rows[cells[0]] = cells[1:]
    return rows


def test_the_runs_digits_beside_the_published_ones_and_a_dash_for_each_unfinished(tmp_path, capsys):
    """SPPO iterations 1 and 2 and WPO-HB finished; SPPO iteration 3 never ran; DPO's eval left
    an eval.json and no record (cut short): "-"."""
    sppo1, sppo2, _sppo3, wpo_hb, dpo = eval_folders_of_the_demo(tmp_path)
    finished(sppo1, 0.69)
    finished(sppo2, 0.8)
    finished(wpo_hb, 0.79)
    finished(dpo, 0.9, record=False)
    main(["--root", str(tmp_path)])
    out = capsys.readouterr().out
    rows = printed_rows(out)
    assert list(rows)[0] == "machine"
    for row in PUBLISHED:
        sets = "not recorded" if row.vector_sets is None else " ".join(row.vector_sets)
        assert rows[row.machine] == [sets, *(f"{f:.3f}" for f in row.figures)], out
    here = records.machine()
    (label,) = [m for m in rows if m.startswith("this machine")]
    assert label.startswith(f"this machine ({here['cpu']}")
    assert rows[label] == [" ".join(here["vector_sets"]) or "none", "0.690", "0.800", "-", "0.790",
                           "-"]  # fmt: skip
    # gaps 0.010 / 0.007 / 0.003 to the second row, 0.017 at most to the others
    said = f"largest difference to the nearest published row ({PUBLISHED[1].machine}): 0.010"
    assert said in out and "docs/results.md" in out.splitlines()[-1]


def test_runs_recorded_on_another_machine_are_named_by_it(tmp_path, capsys, monkeypatch):
    """A root copied from elsewhere: the row is the records' machine, not this one."""
    sppo1 = eval_folders_of_the_demo(tmp_path)[0]
    other = {"cpu": "Other CPU 9000", "vector_sets": ["avx2"], "torch_threads": 4, "gpu": None}
    monkeypatch.setattr(records, "machine", lambda: other)
    finished(sppo1, 0.7)
    monkeypatch.undo()
    main(["--root", str(tmp_path)])
    rows = printed_rows(capsys.readouterr().out)
    assert rows["made on Other CPU 9000, 4 torch threads"] == ["avx2", "0.700", *["-"] * 4]


def test_no_runs_print_dashes_and_the_command_exits_0(tmp_path):
    """What `make demo` meets where its runs are elsewhere: the table, a "-" for every figure,
    exit 0."""
    result = subprocess.run(
        [sys.executable, "-m", "src.tiny.published", "--root", str(tmp_path / "none")],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (mine,) = [cells for m, cells in printed_rows(result.stdout).items() if m.startswith("this")]
    assert mine[1:] == ["-"] * len(COLUMNS)
    assert "none of the demo's runs has finished an eval" in result.stdout
