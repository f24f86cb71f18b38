"""Imports run one way (docs/design.md §3): commands → scheduler → stages → libraries → config →
core. The ground floor, src/core, imports nothing above it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


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


def test_core_imports_nothing_above_it():
    above = []
    for path in sorted((SRC / "core").glob("*.py")):
        for module in sorted(imported_modules(path)):
            if module.startswith("src.") and not module.startswith("src.core"):
                above.append(f"{path.relative_to(SRC.parent)}: {module}")
    assert above == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from src.config import Config\n")
    assert "src.config" in imported_modules(module)
