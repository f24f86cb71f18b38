"""`eval`: the eval stage (conf/eval/), its LLM judge (`eval.llm_judge`) and the data each
benchmark reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from src.config.checks import _check, _model_location, _positive, check_numbers
from src.config.choices import Backend, Benchmark, Outcome
from src.config.ranker import RankerConfig
from src.core.layout import iteration_name, iteration_number

# What `eval.judged_by` may be: one folder name, in characters any file system, W&B run name and
# SLURM job name keeps
JUDGED_BY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

# The prefix of OpenAI's model names: a judge this stage serves is never called so (its figures
# would read as the published judge's)
OPENAI_JUDGES = ("gpt-",)


def is_http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass
class LLMJudgeConfig:
    """The chat model that grades MT-Bench and Arena-Hard (`eval.llm_judge`): OpenAI's API, any
    OpenAI-compatible endpoint, or a model the eval stage serves itself with vLLM's
    OpenAI-compatible server on loopback. Its `model` labels every score it gives."""

    # the model the endpoint serves (with `serve`: the name it serves it as); null: gpt-4, or with
    # `serve` the served folder's or hub id's last part (a local model never labelled gpt-4)
    model: str | None = None
    base_url: str | None = None  # null: OpenAI's API; e.g. http://judge-node:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the variable that holds the key; "": none is needed
    serve: str | None = None  # a model folder or hub id this stage serves (vLLM) as `model`
    # whether the judge's chat template takes a system turn; false: the system prompt opens the
    # first user turn (Mistral-Instruct's template refuses a system turn: vLLM's server answers
    # 400, "Conversation roles must alternate"); null: a served judge's template says, an
    # endpoint takes one
    system_turn: bool | None = None
    concurrency: int = 8  # requests in flight
    timeout_s: float = 600.0  # one request's limit
    max_retries: int = 3  # per request, with the client's backoff
    max_model_len: int = 4096  # the served judge's context, prompt and judgment (with `serve`)
    start_timeout_s: float = 900.0  # how long the served judge may take to answer its first call

    def __post_init__(self) -> None:
        check_numbers(self, "eval.llm_judge.")
        _positive("eval.llm_judge.concurrency", self.concurrency)
        _positive("eval.llm_judge.timeout_s", self.timeout_s)
        _positive("eval.llm_judge.max_model_len", self.max_model_len)
        _positive("eval.llm_judge.start_timeout_s", self.start_timeout_s)
        _check(
            self.max_retries >= 0, "eval.llm_judge.max_retries", self.max_retries, "must be >= 0"
        )
        _check(
            self.serve is None or not (self.model or "").startswith(OPENAI_JUDGES),
            "eval.llm_judge.model",
            self.model,
            f"names an OpenAI model, but the judge this stage serves (eval.llm_judge.serve="
            f"{self.serve}) would take that name and its scores would read as that model's: to "
            "grade with OpenAI's add eval.llm_judge.serve=null; to serve that folder, name it "
            "otherwise (null: its folder's name)",
        )
        _check(
            self.base_url is None or is_http_url(self.base_url),
            "eval.llm_judge.base_url",
            self.base_url,
            "is not an http(s) URL: name the judge's OpenAI-compatible endpoint, e.g. "
            "http://judge-node:8000/v1 (null: OpenAI's API)",
        )
        _check(
            self.serve is None or self.base_url is None,
            "eval.llm_judge.base_url",
            self.base_url,
            f"the judge at base_url is not the one this stage serves (eval.llm_judge.serve="
            f"{self.serve}): for the judge at base_url add eval.llm_judge.serve=null; to serve "
            "the judge here, leave base_url null",
        )

    @property
    def name(self) -> str:
        """The model's name at the endpoint: `model`, else gpt-4, or a served one's own name."""
        if self.model is not None:
            return self.model
        return "gpt-4" if self.serve is None else Path(self.serve.rstrip("/")).name


# The data key each benchmark reads, and what the user points it at
BENCHMARK_DATA = {Benchmark.mt_bench: "mt_bench", Benchmark.arena_hard: "arena_hard"}
BENCHMARK_DATA_HINT = {
    Benchmark.mt_bench: "a copy of FastChat's fastchat/llm_judge/data folder",
    Benchmark.arena_hard: "a copy of arena-hard-auto's data/arena-hard-v0.1 folder",
}

# The eval's bootstrap resamples at most (eval.bootstrap): each refits the length-controlled GLM,
# some milliseconds on AlpacaEval's 805 prompts, so 100,000 take minutes
MAX_BOOTSTRAP = 100_000


@dataclass
class EvalConfig:
    """The eval stage: the policy pi_t against a reference on held-out prompts (conf/eval/)."""

    enabled: bool = False  # stage=all evaluates every iteration after training it
    # "base" (the model's own path: pi_0), "iter<s>" (iteration s of this lineage), or a model
    # directory / hub id. An eval against anything but the base model (or a reference_outputs
    # file) writes into eval/vs-<name>/, beside the one against the base: each its own record
    reference: str = "base"
    # a name for this eval's judges (eval.judge, eval.llm_judge) where they are not the ones the
    # lineage's own evals use: the eval goes to eval/vs-<reference>@<name>/ (vs-base@<name>
    # against the base model), beside those, each judge's figures kept; null: the lineage's own
    judged_by: str | None = None
    # AlpacaEval-format JSON of reference answers (instruction, output, generator) used instead
    # of generating them, e.g. AlpacaEval 2's GPT-4 Turbo outputs downloaded beforehand
    reference_outputs: str | None = None
    # the engine that answers (hf | vllm); null: generation.backend's, the generate stage's
    backend: Backend | None = None
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling, when temperature > 0
    max_new_tokens: int = 2048  # a longer answer is cut
    # the sampling seed when temperature > 0, and the leaderboard's documents' (GPQA's choices)
    seed: int = 0
    max_prompt_length: int = 2048  # in policy tokens, after the chat template
    batch_size: int = 8  # prompts per generate call
    chunk_size: int = 64  # prompts per answers file written: the unit of resume
    outcome: Outcome = Outcome.discrete  # what a comparison scores (win_rate and lc_win_rate)
    bootstrap: int = 1000  # resamples of the prompts for the confidence intervals
    confidence: float = 0.95  # the confidence level of those intervals
    # the judge of the eval, a ranker config (`+ranker@eval.judge=<option>`); null: the ranker
    # that ranked the training data (the real recipes judge with another model: GPT-4)
    judge: RankerConfig | None = None
    # also judge the answers with AlpacaEval 2 itself (alpaca_eval's evaluator: GPT-4 Turbo
    # through OpenAI's API, against its GPT-4 Turbo reference, on its 805 instructions): needs
    # OPENAI_API_KEY and the network; its leaderboard row goes to eval.json and the model card
    alpaca_eval: bool = False
    # more of what the model cards report, on the same policy: mt_bench (data.mt_bench),
    # arena_hard (data.arena_hard), leaderboard (eval.leaderboard_tasks, data.leaderboard)
    benchmarks: list[Benchmark] = field(default_factory=list)
    llm_judge: LLMJudgeConfig = field(default_factory=LLMJudgeConfig)  # MT-Bench's, Arena-Hard's
    # Arena-Hard's baseline, the model whose answers data.arena_hard/model_answer/<name>.jsonl
    # holds: null plays each category against its own, as the benchmark does (gpt-4-0314 for
    # v0.1; v2.0: o3-mini-2025-01-31 for hard prompts, gemini-2.0-flash-001 for creative writing)
    arena_hard_baseline: str | None = None
    # the leaderboard's tasks, as lm-eval names them: "leaderboard" (v2's six: ifeval, bbh,
    # math_hard, gpqa, musr, mmlu_pro), any of those six or a leaderboard_* subtask, and v1's
    # arc_challenge (25-shot) and truthfulqa_mc2
    leaderboard_tasks: list[str] = field(default_factory=lambda: ["leaderboard"])
    # the first N documents of each leaderboard task only: a check of the setup, not the benchmark
    leaderboard_limit: int | None = None

    def __post_init__(self) -> None:
        check_numbers(self, "eval.")
        if self.leaderboard_limit is not None:
            _positive("eval.leaderboard_limit", self.leaderboard_limit)
        _check(
            Benchmark.leaderboard not in self.benchmarks or bool(self.leaderboard_tasks),
            "eval.leaderboard_tasks",
            list(self.leaderboard_tasks),
            "is empty while eval.benchmarks names leaderboard: name its tasks (leaderboard, "
            "arc_challenge, truthfulqa_mc2)",
        )
        _check(self.temperature >= 0, "eval.temperature", self.temperature, "must be >= 0")
        _check(0 < self.top_p <= 1, "eval.top_p", self.top_p, "must be in (0, 1]")
        _positive("eval.max_new_tokens", self.max_new_tokens)
        _positive("eval.max_prompt_length", self.max_prompt_length)
        _positive("eval.batch_size", self.batch_size)
        _positive("eval.chunk_size", self.chunk_size)
        _positive("eval.bootstrap", self.bootstrap)
        _check(
            self.bootstrap <= MAX_BOOTSTRAP,
            "eval.bootstrap",
            self.bootstrap,
            f"must be at most {MAX_BOOTSTRAP:,}: each resample refits the length control, and "
            "the intervals stop moving long before",
        )
        _check(0 < self.confidence < 1, "eval.confidence", self.confidence, "must be in (0, 1)")
        _check(
            len(set(self.benchmarks)) == len(self.benchmarks),
            "eval.benchmarks",
            [b.value for b in self.benchmarks],
            "names a benchmark twice",
        )
        _check(
            self.judged_by is None or bool(JUDGED_BY_NAME.fullmatch(self.judged_by)),
            "eval.judged_by",
            self.judged_by,
            "names the folder of an eval by other judges (eval/vs-<reference>@<name>): letters, "
            "digits, '.', '_' and '-', not starting with '.' or '-' (e.g. gpt-4o)",
        )
        earlier = iteration_number(self.reference)
        _check(
            earlier is None or earlier >= 1,
            "eval.reference",
            self.reference,
            "iterations count from 1 (the base model is 'base')",
        )
        _check(
            self.reference == "base" or earlier is not None or _model_location(self.reference),
            "eval.reference",
            self.reference,
            "not a model the eval stage can load; allowed: base (the model itself), iter<s> (this "
            "lineage's iteration s, 1 <= s <= iter), a model folder (an absolute or ./ path) or "
            "a hub id ORG/NAME",
        )
        if earlier is not None:  # iter01 is iter1: one folder, one fingerprint
            self.reference = iteration_name(earlier)


def cross_checks(cfg: Any) -> None:  # cfg: the composed Config (root.py)
    """The rules of `eval` keys that read other sections (iter)."""
    earlier = iteration_number(cfg.eval.reference)
    if earlier is not None:
        _check(
            earlier <= cfg.iter,
            "eval.reference",
            cfg.eval.reference,
            f"must be an iteration up to iter={cfg.iter} (a later one is not trained yet)",
        )
