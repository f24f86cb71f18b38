"""`python -m benchmarks <name> [options]`: measure one benchmark and write its results file;
`python -m benchmarks --render [FILE.json ...]`: re-render results files' Markdown from their JSON
(every committed one by default), measuring nothing. The benchmarks, what they compare and their
latest tables: benchmarks/README.md."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from benchmarks.harness import RESULTS, render

BENCHMARKS = (
    "generation",
    "stream",
    "ranking",
    "trainer",
    "train_memory",
    "scale",
    "agreement",
    "iteration",
    "optimizer_step",
)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("benchmarks:", ", ".join(BENCHMARKS))
        return 0 if argv else 2
    if argv[0] == "--render":
        return render_files([Path(p) for p in argv[1:]] or sorted(RESULTS.glob("*.json")))
    if argv[0] not in BENCHMARKS:
        print(
            f"error: no benchmark {argv[0]!r}; there are: {', '.join(BENCHMARKS)}", file=sys.stderr
        )
        return 2
    importlib.import_module(f"benchmarks.{argv[0]}").BENCHMARK.main(argv[1:])
    return 0


def render_files(paths: list[Path]) -> int:
    """Each results file's Markdown beside it, from its JSON; a file that is missing or not a
    results file is one line (exit 1), and the others are still rendered."""
    from src.core.artifacts import atomic_write_text

    failed = 0
    for path in paths:
        try:
            markdown = render(json.loads(path.read_text()))
        except OSError as err:
            print(f"error: {path}: {err.strerror or err}", file=sys.stderr)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            why = f"no {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
            print(f"error: {path}: not a results file the harness wrote ({why})", file=sys.stderr)
        else:
            atomic_write_text(path.with_suffix(".md"), markdown)
            print(f"rendered {path.with_suffix('.md')}")
            continue
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
