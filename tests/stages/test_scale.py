"""Memory that does not grow with the prompts: the rank and pairs stages at 300 and at 3,000
prompts, each in a fresh process, measured by the kernel (the process's peak resident memory).

A stage that held its input or its output whole would grow by the size of the rows; the rows
here are made large (responses of 2 kB) so that holding them costs far more than the noise of a
process's peak (2,700 extra rows x 5 responses x 2 kB = 27 MB of text, more as Python objects).
The bench at the recipe's size is `python -m benchmarks scale`.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from src.config import REPO_ROOT, Stage
from src.core.artifacts import atomic_write_text
from src.core.identity import stage_key
from src.core.records import Finished, write_record
from src.tiny.toy import sample_answer
from tests.support.helpers import compose_cfg

K = 5
SMALL, LARGE = 300, 3000  # both over what a stage holds at a time (the pairs' BATCH)
# What a stage may grow by from SMALL to LARGE prompts: holding the rows would take 27 MB+
MAX_GROWTH_MB = 12
RESPONSE_CHARS = 2000
# The judge reads each response's first JUDGED tokens: the stage still reads and writes every
# character of every row, while the judge's own work (the same per chunk at any size) stays small
JUDGED = 16
STAGE = (
    "model=tiny-mistral", "logger=none", f"method.K={K}", "ranker=tiny-reward-model",
    f"ranker.candidate_max_length={JUDGED}",
)  # fmt: skip


def write_generation(root, n: int) -> None:
    """A finished generate stage of `n` prompts whose responses are RESPONSE_CHARS long."""
    cfg = compose_cfg(*STAGE, f"paths.root={root}")
    rows = (
        {
            "prompt_id": f"p{i:06d}",
            "prompt": f"Tell me everything about topic number {i:06d}.",
            "responses": [response(random.Random(f"{i}-{k}")) for k in range(K)],
            "finish_reasons": ["stop"] * K,
            "num_tokens": [1000] * K,
            "seeds": [50 * k for k in range(K)],
        }
        for i in range(n)
    )  # fmt: skip
    stage = cfg.stage_dir("generate")
    atomic_write_text(
        stage / "responses-shard000-of-001.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
    )
    # as the generate stage of this config records it: a stage run alone checks what it reads
    write_record(stage, Finished(stage_key(cfg.as_tree(), Stage.generate), {"shards": 1}, {}))


def response(rng: random.Random) -> str:
    """RESPONSE_CHARS characters of toy answer: every chunk of every size has the same shape, so the
    judge's own working memory is the same at any number of prompts."""
    text = ""
    while len(text) < RESPONSE_CHARS:
        text += sample_answer(rng, sentences=5).text + " "
    return text[:RESPONSE_CHARS]


# Starts a command and prints its peak resident memory (kB) as the kernel records it. A child's
# ru_maxrss counts what it held before its exec: forked from this test process, it would carry
# this process's size (which grows as the test writes its rows), so the stage is forked from this
# small interpreter instead.
PEAK_OF = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "print(usage.ru_maxrss)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def peak_mb(root, stage: str) -> float:
    """The kernel's record of the stage process's peak resident memory (ru_maxrss)."""
    cmd = [sys.executable, "-m", "src.main", *STAGE, f"paths.root={root}", f"stage={stage}"]
    result = subprocess.run(
        [sys.executable, "-c", PEAK_OF, *cmd], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout) / 1024


@pytest.mark.slow
def test_rank_and_pairs_memory_does_not_grow_with_the_prompts(tiny_dir, tmp_path):
    peaks = {}
    for n in (SMALL, LARGE):
        write_generation(tmp_path / str(n), n)
        peaks[n] = {stage: peak_mb(tmp_path / str(n), stage) for stage in ("rank", "pairs")}
    for stage in ("rank", "pairs"):
        grew = peaks[LARGE][stage] - peaks[SMALL][stage]
        assert grew <= MAX_GROWTH_MB, (stage, peaks)
