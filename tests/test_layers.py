"""Imports run one way (docs/design.md §3), in two wings. The pipeline, all that `python -m
src.main` runs for an iteration: scheduler → stages → libraries → config → core. The tools
standing on it: every other command (and the checks src.main makes before a stage,
src/assets/preflight.py); src.main stands on both. Every module of src/ and benchmarks/ is read;
an import from a lower layer to a higher one fails here, as does a module no layer names and a
circle of imports between folders."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from src.core.layout import ADAPTER, CHECKPOINT, RECORD, SAVED_CONFIG, SIDE_EVAL

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module may import its own layer and the layers below it. A command inside a
# library's package is a tool of its own, named by its module.
LAYERS = {
    "core": ("src", "src/core"),
    "config": ("src/config",),
    "libraries": ("src/generation", "src/training", "src/ranking", "src/evaluation", "src/plan"),
    "stages": ("src/stages",),
    "scheduler": ("src/schedule",),
    "tools": (
        "src/assets", "src/tiny", "src/wheelhouse", "src/explain", "src/export", "src/compare",
        "src/status", "src/slurm", "src/sweep", "benchmarks",
        "src/plan/__main__", "src/training/published_pairs",
    ),
    "entry": ("src/main",),
}  # fmt: skip
COMMANDS_IN_LIBRARIES = {unit for unit in LAYERS["tools"] if unit.count("/") == 2}
RANK = {unit: rank for rank, units in enumerate(LAYERS.values()) for unit in units}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function (TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def unit_of(module: str) -> str | None:
    """The folder or top-level module of src/ or benchmarks/ that `module` lies in (src.core.x ->
    src/core, src.main -> src/main), or None for another package."""
    parts = [p for p in module.split(".") if p != "__init__"]
    if parts[0] == "benchmarks":
        return "benchmarks"
    if parts[0] != "src":
        return None
    if "/".join(parts[:3]) in COMMANDS_IN_LIBRARIES:
        return "/".join(parts[:3])
    return "/".join(parts[:2])


def modules() -> list[Path]:
    return sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def imports_between_units() -> dict[str, dict[str, list[str]]]:
    """unit -> the units it imports -> the files that do, for every module of the house."""
    edges: dict[str, dict[str, list[str]]] = {}
    for path in modules():
        rel = path.relative_to(ROOT)
        unit = unit_of(".".join(rel.with_suffix("").parts))
        for module in imported_modules(path):
            target = unit_of(module)
            if target not in (None, unit):
                edges.setdefault(unit, {}).setdefault(target, []).append(str(rel))
    return edges


def test_every_module_has_a_layer():
    units = {unit_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in modules()}
    assert sorted(units - RANK.keys()) == []


def test_no_import_runs_up_a_layer():
    up = [
        f"{file}: imports {target} ({layer_of(target)}) from {layer_of(unit)}"
        for unit, targets in imports_between_units().items()
        for target, files in targets.items()
        if target in RANK and RANK[target] > RANK[unit]
        for file in sorted(set(files))
    ]
    assert up == []


def layer_of(unit: str) -> str:
    return list(LAYERS)[RANK[unit]]


def test_no_circle_of_imports_between_folders():
    edges = {u: set(t) for u, t in imports_between_units().items()}
    done: set[str] = set()

    def visit(unit: str, path: list[str]) -> list[str] | None:
        if unit in path:
            return path[path.index(unit) :] + [unit]
        if unit in done:
            return None
        for target in sorted(edges.get(unit, ())):
            if circle := visit(target, [*path, unit]):
                return circle
        done.add(unit)
        return None

    circles = [c for u in sorted(edges) if (c := visit(u, []))]
    assert circles == []


def test_core_imports_nothing_above_it():
    above = []
    for path in sorted((ROOT / "src" / "core").glob("*.py")):
        for module in sorted(imported_modules(path)):
            if module.startswith("src.") and not module.startswith("src.core"):
                above.append(f"{path.relative_to(ROOT)}: {module}")
    assert above == []


# The library modules that take the whole `Config` (docs/design.md §3), each assembling a
# stage's parts from many sections; every other library module takes the sections it reads.
WHOLE_CONFIG = {
    "src/training/arguments.py", "src/training/adapters.py",  # the Trainer's arguments, adapters
    "src/evaluation/answers.py", "src/evaluation/benchmarks.py",  # the eval's answers, benchmarks
    "src/plan/stages.py", "src/plan/hours.py", "src/plan/sweep.py",  # the planner
}  # fmt: skip


def test_a_library_takes_the_whole_config_only_where_it_is_named():
    taking = {
        str(path.relative_to(ROOT))
        for unit in LAYERS["libraries"]
        for path in (ROOT / unit).glob("*.py")
        if any(m.startswith("src.config") and m.endswith(".Config") for m in imported_modules(path))
    }
    assert taking == WHOLE_CONFIG


def test_the_check_sees_imports_inside_functions_and_an_upward_one(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from src.stages.train import run\n")
    assert "src.stages.train" in imported_modules(module)
    assert RANK[unit_of("src.stages.train")] > RANK[unit_of("src.generation.sampling")]
    # the wings: a tool stands above the scheduler, a library's command above the library
    assert RANK[unit_of("src.tiny.on_demand")] > RANK[unit_of("src.schedule")]
    assert RANK[unit_of("src.plan.__main__")] > RANK[unit_of("src.plan.stages")]


def test_the_stages_are_listed_in_the_registry_alone():
    """A new stage is declared in src/core/registry.py (and run from its module): no other module
    of the house writes the list of stages again — a tuple, list or set naming three or more,
    as names or as members — where it would be missed. Tables keyed by stage (the planners, the
    assets each stage reads, compare's columns per stage) hold what differs between stages and
    are not read here."""
    from src.core.registry import Stage

    names = {s.value for s in Stage if s != Stage.all}
    found = []
    for path in modules():
        if path == ROOT / "src/core/registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Tuple | ast.List | ast.Set):
                continue
            listed = {e.value for e in node.elts if isinstance(e, ast.Constant)}
            listed |= {e.attr for e in node.elts if isinstance(e, ast.Attribute)}
            if len(listed & names) >= 3:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"the stages listed outside the registry: {found}"


def test_the_registry_check_sees_a_list_of_stages(tmp_path, monkeypatch):
    module = tmp_path / "src" / "compare" / "runs.py"
    module.parent.mkdir(parents=True)
    module.write_text('STAGES = ("generate", "rank", "pairs", "train", "eval")\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"src/compare/runs\.py:1"):
        test_the_stages_are_listed_in_the_registry_alone()


# A run's folders are spelt in src/core/layout.py alone. Outside it, these spell them again:
# an f-string's or a concatenation's `iter<t>`, a glob of `iter*` folders, a regex or a string
# method that reads `iter<digits>` back, a path joined with a name the layout gives a stage's
# folder (`/ "train" / "checkpoint"`, `stage_dir / "done.json"`) and a name that starts with the side evals' `vs-`. A name with a suffix (`iter{t}.jsonl`, a glob's
# `iter*.parquet`) is a file, never a run's folder: the prompt files (data/prompts/iter<t>.jsonl,
# .cache/scale/iter<t>.parquet) are named after the splits of the SPPO data sets
# (`...-sppo-iter<t>`), whose spelling is the data's, not the run's.
LAYOUT = ROOT / "src/core/layout.py"
NAMED = {CHECKPOINT, ADAPTER, RECORD, SAVED_CONFIG}  # what a stage's folder holds, by name
ITER_BEFORE = re.compile(r"(^|[^A-Za-z0-9_])iter$")  # text an iteration's number follows


def layout_spelt(path: Path) -> list[int]:
    """The lines of `path` that spell a run's folders by hand."""
    return sorted({n.lineno for n in ast.walk(ast.parse(path.read_text())) if spells_layout(n)})


def spells_layout(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr):  # f"iter{t}", but f"iter{t}.jsonl" names a file
        parts = [*node.values, None]
        return any(
            ITER_BEFORE.search(_text(parts[i - 1]) or "")
            and isinstance(value, ast.FormattedValue)
            and not (_text(parts[i + 1]) or "").startswith(".")
            for i, value in enumerate(node.values[1:], 1)
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return bool(ITER_BEFORE.search(_text(node.left) or ""))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _text(node.right) in NAMED
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        pattern = _text(node.args[0]) or ""
        if node.func.attr in ("glob", "rglob"):  # iter*, but iter*.jsonl names files
            return any(p.startswith("iter") and "." not in p for p in pattern.split("/"))
        return node.func.attr in ("removeprefix", "startswith") and pattern == "iter"
    text = _text(node) or ""
    return "iter(\\d" in text or text.startswith(SIDE_EVAL)


def _text(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def test_the_run_layout_is_spelt_in_its_module_alone():
    """Every path into a run's folder is built, and read back, by src/core/layout.py."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules()
        if path != LAYOUT
        for line in layout_spelt(path)
    ]
    assert not found, f"the run layout spelt outside src/core/layout.py: {found}"


@pytest.mark.parametrize(
    "source",
    [
        'name = f"{run}-iter{t}-pairs"',
        'folder = run / f"iter{t + 1}"',
        'folder = run / ("iter" + str(t))',
        'found = run.glob("iter*")',
        'found = run.glob("iter*/train/done.json")',
        'match = re.fullmatch(r"iter(\\d+)", name)',
        't = int(folder.name.removeprefix("iter"))',
        'path = run / "iter1" / "train" / "checkpoint"',
        'record = stage_dir / "done.json"',
        'saved = stage_dir / "config.yaml"',
        'folder = f"vs-{name}"',
        'prefix = "vs-"',
    ],
)
def test_the_layout_check_sees_a_spelling(tmp_path, monkeypatch, source):
    module = tmp_path / "src" / "stages" / "report" / "curves.py"
    module.parent.mkdir(parents=True)
    module.write_text(f"import re\n\n{source}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"src/stages/report/curves\.py:3"):
        test_the_run_layout_is_spelt_in_its_module_alone()


def test_the_layout_check_leaves_the_prompt_files_alone(tmp_path):
    module = tmp_path / "data.py"
    module.write_text(
        'a = data / "prompts" / f"iter{t}.jsonl"\n'
        'b = out / f"iter{t}.parquet"\n'
        'c = sorted((data / "prompts").glob("iter*.jsonl"))\n'
        '"""A docstring that names iter<t>/train/checkpoint and eval/vs-<name>."""\n'
    )
    assert layout_spelt(module) == []
