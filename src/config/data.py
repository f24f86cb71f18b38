"""`data`: where the prompts come from (conf/data/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from src.config.checks import _check, _positive, check_numbers
from src.config.eval import BENCHMARK_DATA, BENCHMARK_DATA_HINT

# What data.prompts and data.eval_prompts name (src/generation/prompts.py reads them)
PROMPT_SOURCE = "a .jsonl, .json or .parquet file, or a Hugging Face dataset id 'owner/name'"


@dataclass
class DataConfig:
    """Where the prompts come from (conf/data/)."""

    name: str  # the prompt set's name, a label (the files are `prompts`)
    prompts: str  # hub dataset id or local .jsonl / .parquet; may depend on ${iter}
    split: str = "train"  # the split of `prompts` to read
    prompt_column: str = "prompt"  # the column that holds the prompt text
    id_column: str | None = None  # null: prompt_id derived from the prompt text
    max_prompts: int | None = None  # first N prompts only (smoke runs)
    eval_prompts: str | None = None  # held-out prompts for the eval stage
    eval_split: str = "train"  # the split of `eval_prompts` to read
    # eval.benchmarks' data, the user's copies (never shipped here): FastChat's llm_judge/data
    # folder (judge_prompts.jsonl, mt_bench/question.jsonl, mt_bench/reference_answer/gpt-4.jsonl)
    mt_bench: str | None = None
    # an Arena-Hard-Auto data folder, e.g. its data/arena-hard-v0.1 (question.jsonl and
    # model_answer/<baseline>.jsonl for each baseline its categories are played against)
    arena_hard: str | None = None
    # where the leaderboard's datasets are copied: <folder>/<repo id>/, as
    # `hf download <repo id> --repo-type dataset --local-dir <folder>/<repo id>` makes them;
    # null (and for a dataset not there): the Hugging Face caches
    leaderboard: str | None = None
    # hybrid pool (WPO-HB): JSONL of external responses keyed by prompt_id or prompt text
    external_responses: str | None = None

    def __post_init__(self) -> None:
        check_numbers(self, "data.")
        if self.max_prompts is not None:
            _positive("data.max_prompts", self.max_prompts)
        # an empty name would be read as the working folder, and refused where a stage reads it
        _check(
            self.prompts.strip() != "",
            "data.prompts",
            self.prompts,
            f"names no prompts; point it at {PROMPT_SOURCE}",
        )
        _check(
            self.eval_prompts is None or self.eval_prompts.strip() != "",
            "data.eval_prompts",
            self.eval_prompts,
            f"names no instructions; point it at the evaluation instructions ({PROMPT_SOURCE}: "
            "AlpacaEval's alpaca_eval.json, say), or leave it null where no eval runs",
        )


def cross_checks(cfg: Any) -> None:  # cfg: the composed Config (root.py)
    """The rules of `data` keys that other sections call for: the data of each benchmark that
    eval.benchmarks names (here, not in eval.py: the key refused is data's)."""
    for benchmark, key in BENCHMARK_DATA.items():
        _check(
            benchmark not in cfg.eval.benchmarks or getattr(cfg.data, key) is not None,
            f"data.{key}",
            None,
            f"eval.benchmarks names {benchmark.value}: point data.{key} at its data "
            f"({BENCHMARK_DATA_HINT[benchmark]})",
        )
