"""Typed configuration: the schema of every node of `conf/`, its resolvers, composition and
validation.

The dataclasses of this package are the config: each key's default and its documentation live
here, once. `Config` is Hydra's base schema (`register_schema`): `conf/config.yaml` composes its
options onto it, so the YAML files hold only what an option chooses or changes, and an unknown key
or a value of the wrong type fails as it is composed. `compose` (Hydra's compose API) and
`validate` turn the tree into typed objects whose `__post_init__` checks ranges; every failure is
a ConfigError of one line that names the key. Stages receive a `Config`, never a DictConfig; only
the command-line entry points know Hydra.

Iteration-dependent values are plain interpolations resolved here: the prompt split
(`data.prompts: ...iter${iter}`) and the policy of iteration iter-1 (`run.init_policy`).

Schemas, one per config group: model.py, method.py, data.py, generation.py, ranker.py, eval.py,
training.py, hardware.py, logger.py, paths.py, iteration.py (`run`, `plan`, `pipeline`); root.py
holds `Config`, which is made of them. Below them: choices.py (the enums a key takes) and checks.py
(`ConfigError` and the checks every schema runs); above them, compose.py (the resolvers,
registered at import, composition, validation and the one-line errors) and, on top, cli.py: the
boundary at which every command ends a failure (`failures`: one line and its exit code), and a
lineage's newest command as the commands read it (`last_command`). Every name but cli.py's is
imported from here, `src.config`; the commands import `src.config.cli`.
"""

from src.config.checks import (
    CONSTRAINT_OPERATORS,
    HUB_ID,
    NAME_MAX,
    NUMBER_LIMIT,
    SBATCH_OPTION,
    SBATCH_SET_BY,
    SEED_KEYS,
    SEED_LIMIT,
    SHELL_WORD,
    SHELL_WORD_TEXT,
    SLURM_LOG_NAME,
    ConfigError,
    check_numbers,
    check_one_line,
    check_path_component,
    check_sbatch_option,
    check_setup_line,
    check_shell_word,
)
from src.config.choices import (
    Attention,
    Backend,
    Benchmark,
    Device,
    Distributed,
    Dtype,
    EmptyResponses,
    JudgeKind,
    LoggerBackend,
    LongPrompts,
    Loss,
    MethodName,
    Optimizer,
    Outcome,
    PairSelection,
    Peft,
    PromptFormat,
    RefLogprobs,
    Scheduler,
    TiePolicy,
    WandbMode,
    WeightUpdates,
    WinProb,
)
from src.config.compose import (
    NULL_NODES,
    REPO_ROOT,
    allowed_keys,
    at_iteration,
    compose,
    compose_tree,
    describe_composition_error,
    describe_omegaconf_error,
    parse_each_string_once,
    previous_policy,
    schema,
    showing_unset_required,
    to_yaml,
    validate,
    with_section,
)
from src.config.data import (
    DataConfig,
)
from src.config.eval import (
    BENCHMARK_DATA,
    BENCHMARK_DATA_HINT,
    MAX_BOOTSTRAP,
    OPENAI_JUDGES,
    EvalConfig,
    LLMJudgeConfig,
    is_http_url,
)
from src.config.generation import (
    GenerationConfig,
)
from src.config.hardware import (
    HardwareConfig,
    SlurmConfig,
    StageRequest,
    StageRequests,
)
from src.config.iteration import (
    PipelineConfig,
    PlanConfig,
    RunConfig,
)
from src.config.logger import (
    LoggerConfig,
)
from src.config.method import (
    MethodConfig,
)
from src.config.model import (
    ModelConfig,
)
from src.config.paths import (
    RUNS_DEFAULT,
    RUNS_ENV,
    PathsConfig,
    runs_root,
)
from src.config.ranker import (
    RankerConfig,
)
from src.config.root import (
    Config,
    plain_data,
    register_schema,
)
from src.config.training import (
    PAIRS_FILE,
    PAIRS_STAGE_FILE,
    AdapterConfig,
    TrainingConfig,
    pairs_lineage,
)
from src.core.registry import Stage

__all__ = [
    "AdapterConfig",
    "Attention",
    "BENCHMARK_DATA",
    "BENCHMARK_DATA_HINT",
    "Backend",
    "Benchmark",
    "CONSTRAINT_OPERATORS",
    "Config",
    "ConfigError",
    "DataConfig",
    "Device",
    "Distributed",
    "Dtype",
    "EmptyResponses",
    "EvalConfig",
    "GenerationConfig",
    "HUB_ID",
    "HardwareConfig",
    "JudgeKind",
    "LLMJudgeConfig",
    "LoggerBackend",
    "LoggerConfig",
    "LongPrompts",
    "Loss",
    "MAX_BOOTSTRAP",
    "MethodConfig",
    "MethodName",
    "ModelConfig",
    "NAME_MAX",
    "NULL_NODES",
    "NUMBER_LIMIT",
    "OPENAI_JUDGES",
    "Optimizer",
    "Outcome",
    "PAIRS_FILE",
    "PAIRS_STAGE_FILE",
    "PairSelection",
    "PathsConfig",
    "Peft",
    "PipelineConfig",
    "PlanConfig",
    "PromptFormat",
    "REPO_ROOT",
    "RUNS_DEFAULT",
    "RUNS_ENV",
    "RankerConfig",
    "RefLogprobs",
    "RunConfig",
    "SBATCH_OPTION",
    "SBATCH_SET_BY",
    "SEED_KEYS",
    "SEED_LIMIT",
    "SHELL_WORD",
    "SHELL_WORD_TEXT",
    "SLURM_LOG_NAME",
    "Scheduler",
    "SlurmConfig",
    "Stage",
    "StageRequest",
    "StageRequests",
    "TiePolicy",
    "TrainingConfig",
    "WandbMode",
    "WeightUpdates",
    "WinProb",
    "allowed_keys",
    "check_numbers",
    "check_one_line",
    "check_path_component",
    "check_sbatch_option",
    "check_setup_line",
    "check_shell_word",
    "at_iteration",
    "compose",
    "compose_tree",
    "describe_composition_error",
    "describe_omegaconf_error",
    "is_http_url",
    "pairs_lineage",
    "parse_each_string_once",
    "plain_data",
    "previous_policy",
    "register_schema",
    "runs_root",
    "schema",
    "showing_unset_required",
    "to_yaml",
    "validate",
    "with_section",
]
