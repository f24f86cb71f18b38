"""The stages of an iteration, each declared once (docs/design.md §5).

A `StageSpec` says what a stage is to everything around it: the order of the pipeline
(`src/schedule/`), what its finished output depends on (the stage fingerprints and chunk
identities, `src/core/fingerprints.py`), whether it is split into shards and by which config
section (the chunks, `src/core/chunks.py`; one W&B run per shard,
`src/stages/report/tracking.py`; one SLURM array task per shard, `src/slurm.py`) and how much of
a node one of its tasks takes (`src/slurm.py`).
The code that runs a stage is its module in `src/stages/`.

Every key of the config is some stage's input or declared as none's, with why (`NOT_INPUTS`):
adding a key that changes a stage's output means adding it to that stage's `inputs` here, and
nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.core.choice import Choice


class Stage(Choice):
    all = "all"  # every stage of the iteration, in order (`stage=all`)
    generate = "generate"
    rank = "rank"
    pairs = "pairs"
    train = "train"
    eval = "eval"


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    # the stage whose output this one reads; None: pi_{t-1}, the previous iteration's checkpoint
    consumes: Stage | None
    # the config keys its output depends on (beyond what it consumes); a section: all its keys.
    # The keys that change no stage's output: NOT_INPUTS.
    inputs: tuple[str, ...]
    # the node's process slots one task takes: GPUs on a GPU machine (gloo processes on CPU), of
    # hardware.processes_per_node; its SLURM job gets that share of the node's CPUs and memory.
    # 0: a small CPU job (src/slurm.py: SMALL_JOB). A config key names a count the config sets.
    slots: int | str
    # the config section whose `shard`, `num_shards` and `chunk_size` split the work
    sharded_by: str | None = None
    rows: str | None = None  # its rows files: <rows>-shardSSS-of-NNN.jsonl
    optional: bool = False  # in `stage=all` only with `eval.enabled=true`
    # it loads a model through transformers (a policy or a judge): src/schedule/run.py imports
    # transformers' model code before any stage starts, so that no stage's peak memory counts it
    loads_model: bool = True
    # a config key naming a file of the user's own that may stand in for what it consumes: the
    # consumed stage is read only where that file lies in the consumed stage's folder
    consumes_via: str | None = None
    # it makes pi_t, the policy every eval of the iteration and the next iteration's stages read:
    # its redo takes their locks too
    makes_policy: bool = False
    # its run launches processes of its own (one per GPU, on one node or several): its rank-0
    # process opens its W&B run, and on several nodes node 0 alone holds its locks
    launches_processes: bool = False
    # its rank-0 process writes its record, not the scheduler: after the checkpoint it seals
    writes_record: bool = False
    # what its outputs mean: raised by hand when a change of its code makes the outputs it made
    # before wrong (every record made under another version is stale, naming it), never for a
    # change that leaves them right
    version: int = 1


# What each of eval.benchmarks reads beside the answers: keys of the eval stage's inputs while it
# is listed only (src.core.fingerprints.stage_inputs), so that an eval made without a benchmark keeps
# its record whatever that benchmark's settings say
_CHAT_JUDGE = (
    "eval.llm_judge.model",
    "eval.llm_judge.base_url",
    "eval.llm_judge.serve",
    "eval.llm_judge.system_turn",
)
BENCHMARK_INPUTS = {
    "mt_bench": ("data.mt_bench", *_CHAT_JUDGE),
    "arena_hard": ("data.arena_hard", "eval.arena_hard_baseline", *_CHAT_JUDGE),
    "leaderboard": ("data.leaderboard", "eval.leaderboard_tasks", "eval.leaderboard_limit"),
}

# The inputs that name a local file or folder whose content, not only its name, makes a stage's
# output (src.core.fingerprints.input_contents): a file edited in place makes the stage stale. A path
# inside the run (an earlier stage's output) is left out: its stage's fingerprint stands for it.
# A folder among them enters by the files its stage read (the files it names as it finishes).
FOLDER_INPUTS = ("data.mt_bench", "data.arena_hard", "data.leaderboard")
FILE_INPUTS = (
    "data.prompts", "data.eval_prompts", "data.external_responses", "training.pairs",
    "eval.reference_outputs", *FOLDER_INPUTS,
)  # fmt: skip

# The policy a stage starts from where it reads no stage of its iteration: generate, and a
# training on a pairs file of the user's own (pi_{t-1}: the base model at iteration 1)
POLICY_INPUTS = ("run.init_policy", "model.path", "model.revision")

# What makes a judge's verdicts (keys of a ranker config): the rank stage's judge is `ranker`,
# the eval stage's is `eval.judge` (or `ranker`, when it is null). `backend` among them, as
# generation.backend is the generate stage's: vLLM's engine and transformers' forward run other
# kernels (in bf16 on a GPU, other roundings at every layer), so their scores are not one run's
# and may order a near-tie the other way; rows made by one are not taken for the other's.
JUDGE_INPUTS = (
    "kind",
    "model",
    "backend",
    "source_max_length",
    "candidate_max_length",
    "prompt_format",
    "win_prob",
)

# The eval's judges: its pairwise judge (eval.judge, or the ranker where it is null) and the chat
# judge of its benchmarks. An eval asked for with other judges than a finished one of the same
# checkpoint is that checkpoint judged otherwise, not the same eval made otherwise:
# src/schedule/remedies.py offers it a folder of its own beside the finished one first (eval.judged_by).
EVAL_JUDGE_INPUTS = (
    *(f"ranker.{key}" for key in JUDGE_INPUTS),
    *(f"eval.judge.{key}" for key in JUDGE_INPUTS),
    *_CHAT_JUDGE,
)

# The inputs whose value makes another experiment, not the same one made otherwise: the engine
# that samples, the judge that ranks, the pairs trained on, a method setting the default run_name
# does not name (its K, eta or beta and learning rate it names, and so separates). A lineage's
# stages made with another value of one are never replaced unasked: src/schedule/remedies.py offers a
# lineage of its own first. Each with what a command asking for another value does.
EXPERIMENT_INPUTS = {
    "generation.backend": "generate with this engine",
    "ranker.kind": "rank with this judge",
    "ranker.model": "rank with this judge",
    "ranker.backend": "rank with this judge",
    "training.pairs": "train on these pairs",
    "method.loss": "train with this method",
    "method.label_smoothing": "train with this method",
    "method.wpo_weight": "train with this method",
    "method.wpo_clamp": "train with this method",
    "method.pair_selection": "train with this method",
}

# In pipeline order: each stage consumes the output of one before it.
STAGES: dict[Stage, StageSpec] = {
    spec.stage: spec
    for spec in (
        StageSpec(
            Stage.generate,
            consumes=None,
            inputs=(
                "iter",
                *POLICY_INPUTS,
                "data.prompts",
                "data.split",
                "data.prompt_column",
                "data.id_column",
                "data.max_prompts",
                "method.K",
                "generation.backend",
                "generation.temperature",
                "generation.top_p",
                "generation.max_new_tokens",
                "generation.seeds",
                "generation.max_prompt_length",
                "generation.long_prompts",
            ),
            slots="generation.tensor_parallel_size",
            sharded_by="generation",
            rows="responses",
        ),
        StageSpec(
            Stage.rank,
            consumes=Stage.generate,
            inputs=(
                *(f"ranker.{key}" for key in JUDGE_INPUTS),
                "ranker.self_term",
                "ranker.empty_responses",
                "data.external_responses",
            ),
            slots="ranker.tensor_parallel_size",
            sharded_by="ranker",
            rows="ranked",
        ),
        StageSpec(
            Stage.pairs,
            consumes=Stage.rank,
            inputs=("method.pair_selection", "ranker.ties"),
            slots=0,
            loads_model=False,
        ),
        StageSpec(
            Stage.train,
            consumes=Stage.pairs,
            inputs=("method", "training", "model.attn_implementation"),
            slots="hardware.processes_per_node",
            consumes_via="training.pairs",
            makes_policy=True,
            launches_processes=True,
            writes_record=True,
        ),
        StageSpec(
            Stage.eval,
            consumes=Stage.train,
            inputs=(
                "data.eval_prompts",
                "data.eval_split",
                "eval.reference",
                "eval.reference_outputs",
                "eval.temperature",
                "eval.top_p",
                "eval.max_new_tokens",
                "eval.seed",
                "eval.max_prompt_length",
                "eval.outcome",
                "eval.bootstrap",
                "eval.confidence",
                "eval.backend",
                "generation.backend",
                *(f"ranker.{key}" for key in JUDGE_INPUTS),
                *(f"eval.judge.{key}" for key in JUDGE_INPUTS),
                "eval.alpaca_eval",
                "eval.benchmarks",
                *dict.fromkeys(key for keys in BENCHMARK_INPUTS.values() for key in keys),
            ),
            slots="generation.tensor_parallel_size",
            optional=True,
        ),
    )
}


# The config keys that are no stage's input, by why (a section: every key in it): with the
# stages' inputs they cover every key of the schema (tests/core/test_registry.py), so that a new key
# is declared one or the other, and one that changes a stage's output never leaves its records
# valid.
NOT_INPUTS: dict[str, tuple[str, ...]] = {
    "what a command runs, redoes and checks, not what a stage makes": (
        "stage", "eval.enabled", "pipeline", "plan", "notes",
    ),
    "names: of the run, its folders, its judges (where the output sits, not what it holds)": (
        "run_name", "run.dir", "run.iter_dir", "model.name", "data.name", "ranker.name",
        "eval.judge.name", "eval.judged_by",
    ),
    "where and how fast the work runs: the same output on any machine, batch, shard, engine": (
        "hardware",
        "generation.batch_size", "generation.chunk_size", "generation.shard",
        "generation.num_shards", "generation.tensor_parallel_size",
        "generation.gpu_memory_utilization", "generation.kv_cache_gb", "generation.enforce_eager",
        "generation.max_num_seqs", "generation.in_flight",
        "eval.batch_size", "eval.chunk_size",
        "eval.judge.shard", "eval.judge.num_shards",
        "ranker.tensor_parallel_size", "eval.judge.tensor_parallel_size",
        "eval.llm_judge.concurrency", "eval.llm_judge.timeout_s", "eval.llm_judge.max_retries",
        "eval.llm_judge.max_model_len", "eval.llm_judge.start_timeout_s",
    ),
    # which comparisons share a judge's forward, and its attention's kernels: src/stages/rank.py,
    # BATCHING; another chunk size is refused by the chunks' identity
    "how a judge's work is batched and split: its scores equal to float rounding; a resume "
    "continues at the batch size and attention its kept rows were made with": (
        "ranker.batch_size", "ranker.attention", "ranker.chunk_size", "ranker.shard",
        "ranker.num_shards",
        "eval.judge.batch_size", "eval.judge.attention", "eval.judge.chunk_size",
    ),
    "permissions and secrets: whether a model's own code may run, where the API key is": (
        "model.trust_remote_code", "ranker.trust_remote_code", "eval.judge.trust_remote_code",
        "eval.llm_judge.api_key_env",
    ),
    "what the rank stage does with a judge's scores, which the eval's judge does not read": (
        "eval.judge.self_term", "eval.judge.ties", "eval.judge.empty_responses",
    ),
    "the logger: what W&B is told": ("logger",),
    "where files are found and cached (an input path under paths.root is hashed relative)": (
        "paths",
    ),
}  # fmt: skip


def iteration_stages(stage: Stage, with_eval: bool, own_pairs: bool = False) -> list[Stage]:
    """What `stage=` runs, in order: `all` every stage (the optional ones `with_eval`, i.e. with
    `eval.enabled=true`; none before the training where it trains on a pairs file of the user's
    own, `own_pairs`, which reads none of them), any other stage that one alone."""
    if stage != Stage.all:
        return [stage]
    order = list(STAGES)
    first = order.index(Stage.train) if own_pairs else 0
    return [s for s in order[first:] if not STAGES[s].optional or with_eval]
