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

BENCHMARKS = ("generation", "stream", "ranking", "trainer", "train_memory", "scale")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("benchmarks:", ", ".join(BENCHMARKS))
        return 0 if argv else 2
    if argv[0] == "--render":
        for path in [Path(p) for p in argv[1:]] or sorted(RESULTS.glob("*.json")):
            path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
            print(f"rendered {path.with_suffix('.md')}")
        return 0
    if argv[0] not in BENCHMARKS:
        print(
            f"error: no benchmark {argv[0]!r}; there are: {', '.join(BENCHMARKS)}", file=sys.stderr
        )
        return 2
    importlib.import_module(f"benchmarks.{argv[0]}").BENCHMARK.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
