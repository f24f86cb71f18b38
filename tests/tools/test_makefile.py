"""`make`'s install stamps, by `make -n` (nothing installed): named by the content of what decides
each install, so a venv shared by clones, or a pyproject.toml that a checkout rewrote unchanged,
reinstalls nothing, and another pyproject.toml, other extras or another wheelhouse does; the
bench extra once per install; a venv stamped by the mtime rule before keeps counting as installed
while its stamp is newer than pyproject.toml."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from src.config import REPO_ROOT

# What the child make must not take from a make that runs the tests (`make test VENV=...`)
MAKE_ENV = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def clone(tmp_path: Path, name: str) -> Path:
    """A clone as a fresh checkout leaves it, of the files `make install` reads: the Makefile and
    pyproject.toml, written now (newer than any stamp)."""
    folder = tmp_path / name
    folder.mkdir()
    for file in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO_ROOT / file, folder / file)
    later = time.time() + 60  # a checkout's mtime: after the stamps written below
    os.utime(folder / "pyproject.toml", (later, later))
    return folder


def shown(where: Path, *args: str) -> list[list[str]]:
    """The commands `make -n` shows in `where` for `args`, each as the shell splits it (make's
    own messages left out)."""
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", *args, f"PYTHON={sys.executable}"],
        cwd=where, env=MAKE_ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.replace("\\\n", "").splitlines()
    return [shlex.split(line, comments=True) for line in lines if not line.startswith("make")]


def pips(commands: list[list[str]]) -> list[list[str]]:
    """The pip installs among `commands`."""
    return [c for c in commands if "pip" in c and "install" in c]


def install_as_shown(commands: list[list[str]]) -> list[Path]:
    """What the recipes shown leave when they run: their stamps, each touched in turn."""
    stamps = [Path(c[1]) for c in commands if c[0] == "touch"]
    for stamp in stamps:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    return stamps


def test_a_second_clone_with_the_same_pyproject_reinstalls_nothing_into_a_shared_venv(tmp_path):
    """VENV=<one venv> from two clones: the second's pyproject.toml, the same bytes written
    later, finds the first's stamps."""
    venv = tmp_path / "shared-venv"
    first = clone(tmp_path, "first")
    run = shown(first, "install", f"VENV={venv}")
    assert pips(run), run  # nothing installed yet
    stamps = install_as_shown(run)
    assert [s.name.split("-")[0] for s in stamps] == [".installed", ".vllm"], stamps
    assert shown(first, "install", f"VENV={venv}") == []
    second = clone(tmp_path, "second")  # its pyproject.toml newer than every stamp
    assert (second / "pyproject.toml").stat().st_mtime > max(s.stat().st_mtime for s in stamps)
    assert shown(second, "install", f"VENV={venv}") == []
    (test,) = shown(second, "test", f"VENV={venv}")
    assert "pytest" in test


def test_another_pyproject_or_other_extras_reinstall(tmp_path):
    """A pyproject.toml of other bytes, older than the stamps, installs again, vLLM after it;
    so do other extras."""
    venv = tmp_path / "shared-venv"
    first = clone(tmp_path, "first")
    stamps = install_as_shown(shown(first, "install", f"VENV={venv}"))
    second = clone(tmp_path, "second")
    with (second / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# another line\n")
    # older than the stamps: its content alone says it changed
    earlier = min(s.stat().st_mtime for s in stamps) - 60
    os.utime(second / "pyproject.toml", (earlier, earlier))
    run = shown(second, "install", f"VENV={venv}")
    assert any(c[-1].startswith(".[slurm,dev") for c in pips(run)), run
    assert any(c[0] == "touch" and ".vllm-installed-" in c[1] for c in run), run
    run = shown(first, "install", f"VENV={venv}", "EXTRAS=slurm")
    assert any(c[-1] in (".[slurm]", ".[slurm,qlora]") for c in pips(run)), run
    assert shown(first, "install", f"VENV={venv}") == []  # nothing ran: its stamps stand


def wheelhouse(tmp_path: Path, pins: str) -> Path:
    """A wheelhouse as far as `make -n` reads one: its constraints.txt (the pins)."""
    folder = tmp_path / "house"
    folder.mkdir(exist_ok=True)
    (folder / "constraints.txt").write_text(pins)
    return folder


def test_a_wheelhouse_install_counts_without_wheelhouse_and_other_pins_reinstall(tmp_path):
    """A node installs from a wheelhouse, then runs `make test` with no WHEELHOUSE: no index is
    asked. The wheelhouse rebuilt with other pins: `make install WHEELHOUSE=` installs again."""
    venv = tmp_path / "venv"
    house = wheelhouse(tmp_path, "torch==2.13.0+cpu\n")
    args = ["install", f"VENV={venv}", f"WHEELHOUSE={house}", "VLLM=0"]
    run = shown(REPO_ROOT, *args)
    assert pips(run) and all("--no-index" in c for c in pips(run)), run
    install_as_shown(run)
    assert shown(REPO_ROOT, *args) == []
    assert shown(REPO_ROOT, "install", f"VENV={venv}", "VLLM=0") == []
    wheelhouse(tmp_path, "torch==2.13.0+cpu\nsix==1.17.0\n")
    assert pips(shown(REPO_ROOT, *args))


def test_bench_installs_its_extra_once_from_the_wheelhouse_too(tmp_path):
    """`make bench` installs the bench extra where its stamp is missing, from the wheelhouse
    when one is given (verified first), and on an installed venv runs the benchmark alone."""
    venv = tmp_path / "venv"
    run = shown(REPO_ROOT, "bench", f"VENV={venv}")
    assert [c for c in pips(run) if c[-1].startswith(".[bench,")], run
    install_as_shown(run)
    (bench,) = shown(REPO_ROOT, "bench", f"VENV={venv}")  # installed, its bench stamp there
    assert "benchmarks" in bench and "pip" not in bench
    house = wheelhouse(tmp_path, "torch==2.13.0+cpu\n")
    run = shown(REPO_ROOT, "bench", f"VENV={tmp_path / 'other'}", f"WHEELHOUSE={house}")
    (extra,) = [c for c in pips(run) if c[-1].startswith(".[bench,")]
    assert extra[extra.index("--no-index") :][:3] == ["--no-index", "--find-links", str(house)]
    verify = [sys.executable, "-m", "src.wheelhouse", "verify", str(house)]
    assert run.count(verify) == 3 and run[run.index(extra) - 2] == verify, run


def test_a_venv_stamped_by_the_mtime_rule_counts_while_its_stamp_is_newer(tmp_path):
    """`.installed` and `.vllm-installed`, the stamps before the keyed ones."""
    venv = tmp_path / "venv"
    venv.mkdir()
    here = clone(tmp_path, "clone")
    for stamp in (".installed", ".vllm-installed"):
        (venv / stamp).touch()
    assert pips(shown(here, "install", f"VENV={venv}"))  # pyproject.toml newer: reinstall
    earlier = time.time() - 60
    os.utime(here / "pyproject.toml", (earlier, earlier))
    assert shown(here, "install", f"VENV={venv}") == []
