"""Typed configuration: the schema of every node of `conf/`, its resolvers, composition and
validation.

The dataclasses below are the config: each key's default and its documentation live here, once.
`Config` is Hydra's base schema (`register_schema`): `conf/config.yaml` composes its options onto
it, so the YAML files hold only what an option chooses or changes, and an unknown key or a value
of the wrong type fails as it is composed. `compose` (Hydra's compose API) and `validate` turn
the tree into typed objects whose `__post_init__` checks ranges; every failure is a ConfigError
of one line that names the key. Stages receive a `Config`, never a DictConfig; only the
command-line entry points know Hydra.

Iteration-dependent values are plain interpolations resolved here: the prompt split
(`data.prompts: ...iter${iter}`) and the policy of iteration iter-1 (`run.init_policy`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_type_hints
from urllib.parse import urlsplit

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import SI, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from src.core.choice import Choice
from src.core.errors import causes
from src.core.registry import STAGES, Stage, stage_folder

REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A bad configuration value; its message is one line that names the key."""


# ---------------------------------------------------------------------------------------------
# Resolvers. Registered at import so Hydra's `--cfg job --resolve`, the compose API in tests and
# `validate` all see them.


def previous_policy(iteration: int, base_model: str, run_dir: str) -> str:
    """The policy pi_{t-1}: the base model for iteration 1, else iteration t-1's checkpoint.

    It is the generator, the initial weights and the reference model of iteration t.
    """
    if int(iteration) <= 1:
        return str(base_model)
    return str(Path(run_dir) / f"iter{int(iteration) - 1}" / "train" / "checkpoint")


def _number(x: Any, _node_: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{_node_._get_full_key(None)} is computed from {x!r}, which is not a number"
        ) from None


def _reciprocal(x: Any, _node_: Any) -> float:
    value = _number(x, _node_)
    if value == 0:
        raise ConfigError(f"{_node_._get_full_key(None)} = 1/0: eta and beta must be > 0")
    return 1.0 / value


def _compact_number(x: Any, _node_: Any) -> str:
    """1000.0 -> '1000', 5e-07 -> '5e-07': short, stable run-directory names."""
    return f"{_number(x, _node_):g}"


# What `required` left unset while a command that shows a run without running it composed the
# config (`showing_unset_required`); None: every other command, which refuses
_UNSET_REQUIRED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "unset_required", default=None
)


def _required(why: Any, _node_: Any) -> None:
    """`key: ${required:why}` in a preset: the preset cannot run until the user sets `key`.

    (`???` cannot express this: OmegaConf's merge never lets `???` replace a value.)
    """
    key = _node_._get_full_key(None)
    unset = _UNSET_REQUIRED.get()
    if unset is None:
        raise ConfigError(f"{key} is required: {why}; set {key}=<value>")
    line = f"{key} is required to run: {why}; set {key}=<value>"
    if line not in unset:
        unset.append(line)
    return None


@contextlib.contextmanager
def showing_unset_required() -> Iterator[list[str]]:
    """Composition for a command that shows a run without running it (src.plan, src.assets
    list): a key a preset requires and the command leaves unset is None, and named in the list
    yielded, instead of a refusal before anything is shown."""
    unset: list[str] = []
    token = _UNSET_REQUIRED.set(unset)
    try:
        yield unset
    finally:
        _UNSET_REQUIRED.reset(token)


def _gpus(device: Any, processes_per_node: Any) -> int:
    """GPUs a SLURM job asks for per node: one per process on CUDA hardware, none on CPU."""
    return int(processes_per_node) if str(device) == "cuda" else 0


# training.pairs as the config writes it when the pairs are the pairs stage's own
PAIRS_STAGE_FILE = "${run.iter_dir}/pairs/pairs.parquet"


def _pairs_source(self_play: Any, _root_: Any) -> str:
    """run_name's last part: `self_play` (K<K>) while the pairs are the pairs stage's own; else
    `pairs-<file name>` of training.pairs, a lineage of its own, so that a training on another
    file never lands in (nor replaces) the checkpoint a self-play lineage made. training.pairs is
    read as written: resolving it would need run_name."""
    written = str(_root_.training._get_node("pairs")._value())
    return str(self_play) if written == PAIRS_STAGE_FILE else pairs_lineage(written)


def pairs_lineage(pairs: str) -> str:
    """`pairs-<name>`: the run name's part that says a lineage trains on the pairs file `pairs`."""
    return "pairs-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(pairs.rstrip("/")).stem or "file")


_RESOLVERS = {
    "repo": lambda rel: str(REPO_ROOT / str(rel)),
    "abspath": lambda p: str(Path(str(p)).expanduser().resolve()),
    "previous_policy": previous_policy,
    "reciprocal": _reciprocal,
    "num": _compact_number,
    "gpus": _gpus,
    "required": _required,
    "pairs_source": _pairs_source,
}
for _name, _fn in _RESOLVERS.items():
    OmegaConf.register_new_resolver(_name, _fn, replace=True)


def parse_each_string_once() -> None:
    """OmegaConf parses a string with its interpolation grammar (ANTLR, in pure Python) each time
    it makes or resolves a node of it: a composition parses its ~35 distinct strings ~130 times,
    a quarter of its time. A string's parse tree is the same every time and is only read (by
    OmegaConf's grammar visitor), so each is parsed once per process; a string that does not
    parse raises every time (exceptions are not cached). Composing then takes ~20 % less, for
    every command's start and every test (tests/test_config.py)."""
    import functools

    import omegaconf._utils
    import omegaconf.base
    from omegaconf import grammar_parser

    cached = functools.lru_cache(maxsize=4096)(grammar_parser.parse)
    for module in (omegaconf.base, omegaconf._utils):  # each imported the function by its name
        module.parse = cached


parse_each_string_once()


# ---------------------------------------------------------------------------------------------
# Choices. Enum *names* are what a config file or an override writes; OmegaConf lists them in its
# error message when a value is not one of them.


class MethodName(Choice):
    sppo = "sppo"
    wpo = "wpo"
    dpo = "dpo"


class Loss(Choice):
    sppo = "sppo"  # soft SPPO, docs/design.md §6.2 (the reference trainer's)
    sppo_single = "sppo_single"  # uses the pairwise P_wl instead of the two win rates
    sppo_hard = "sppo_hard"  # TRL's hard-label variant
    sigmoid = "sigmoid"  # DPO, with label smoothing
    ipo = "ipo"


class PairSelection(Choice):
    argmax_argmin = "argmax_argmin"  # SPPO: chosen = argmax score, rejected = argmin
    wpo_tiebreak = "wpo_tiebreak"  # WPO v2: ties -> shortest chosen, rejected closest in length


class Dtype(Choice):
    auto = "auto"  # bf16 on a GPU that supports it, fp32 on CPU
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class WeightUpdates(Choice):
    kahan = "kahan"  # a bf16 compensation buffer per weight (Kahan summation), bf16 state
    fp32 = "fp32"  # fp32 master weights and optimizer state (DeepSpeed's bf16 mode, one process)


class Backend(Choice):
    hf = "hf"
    vllm = "vllm"


class LongPrompts(Choice):
    skip = "skip"  # leave the prompt out and count it in the completion record
    truncate = "truncate"  # keep the end of the prompt


class JudgeKind(Choice):
    pairrm = "pairrm"
    reward_model = "reward_model"


class WinProb(Choice):
    bt = "bt"  # P_ij = sigmoid(s_i - s_j), Bradley-Terry on aggregated scores (reference)
    direct = "direct"  # P_ij = sigmoid(C_ij), PairRM's own pairwise logit


class TiePolicy(Choice):
    drop = "drop"  # all K scores equal: no pair, counted
    keep = "keep"  # the reference's behaviour: a pair whose chosen equals rejected


class EmptyResponses(Choice):
    drop = "drop"  # leave empty responses out of the candidates, counted
    keep = "keep"  # rank them like any other response (the reference's behaviour)


class Attention(Choice):
    # transformers' own DeBERTa-v2 attention: the [B, heads, L, L] scores built and then gathered,
    # added to and masked in full (what an H200 spends most of a PairRM forward on)
    eager = "eager"
    # disentangled-flash's exact kernels (Triton): the same attention without the [B, heads, L, L]
    # tensors, on a CUDA GPU; elsewhere transformers' own, said in one line
    fused = "fused"


class PromptFormat(Choice):
    chat_template = "chat_template"  # what the reference passes to PairRM
    raw = "raw"


class Outcome(Choice):
    discrete = "discrete"  # 1 if the judge prefers the policy's answer, 0 if not, 1/2 on a tie
    probability = "probability"  # the judge's probability that it does (AlpacaEval 2's weighting)


class Benchmark(Choice):
    """What the eval stage measures beside its judge's win rate (eval.benchmarks)."""

    mt_bench = "mt_bench"  # FastChat's MT-Bench, single-answer grading by eval.llm_judge
    arena_hard = "arena_hard"  # Arena-Hard-Auto against a baseline's answers, by eval.llm_judge
    # the Open LLM Leaderboard (eval.leaderboard_tasks) through lm-evaluation-harness, in-process
    leaderboard = "leaderboard"


class Optimizer(Choice):
    rmsprop = "rmsprop"
    adamw = "adamw"


class Scheduler(Choice):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class RefLogprobs(Choice):
    precompute = "precompute"  # one forward-only pass of the frozen reference before training
    online = "online"  # reference forward every step, as the original code does


class Peft(Choice):
    none = "none"  # every weight trained (the recipes' setting)
    lora = "lora"  # a LoRA adapter on the frozen policy (peft)
    qlora = "qlora"  # a LoRA adapter on the policy loaded in 4 bits (bitsandbytes, CUDA only)


class Device(Choice):
    cpu = "cpu"
    cuda = "cuda"


class Distributed(Choice):
    none = "none"
    ddp = "ddp"
    deepspeed = "deepspeed"


class LoggerBackend(Choice):
    wandb = "wandb"
    none = "none"


class WandbMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


# ---------------------------------------------------------------------------------------------
# Checks used by the schemas' __post_init__: each names the full key and the value it got.


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def _positive(key: str, value: float | int) -> None:
    _check(value > 0, key, value, "must be > 0")


# What every number of the config is held to before its key's own rule (`check_numbers`): it is
# finite, and less than 2**31 in absolute value: lengths, counts and sizes reach tokenizers, torch,
# numpy and SLURM as 32- or 64-bit integers, and no run comes near it. A seed is what numpy and
# torch seed from (the Trainer's set_seed): an integer in [0, 2**32).
NUMBER_LIMIT = 2**31
SEED_LIMIT = 2**32
SEED_KEYS = frozenset({"training.seed", "eval.seed", "generation.seeds"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_numbers(node: Any, prefix: str = "") -> None:
    """Every number of the schema object `node` and of those nested in it (its keys under
    `prefix`, e.g. 'training.'; a list's items too): finite, below NUMBER_LIMIT in size, a seed
    (SEED_KEYS) in [0, SEED_LIMIT). Each schema runs it on itself before its own rules, so that
    they compare finite numbers; Config runs it on the whole tree, so that no key is left out."""
    for f in fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        if is_dataclass(value):
            check_numbers(value, f"{key}.")
            continue
        numbers = [v for v in (value if isinstance(value, list) else [value]) if _is_number(v)]
        if key in SEED_KEYS:
            _check(
                all(isinstance(v, int) and 0 <= v < SEED_LIMIT for v in numbers),
                key,
                value,
                "must be in [0, 2**32): a seed that numpy and torch take",
            )
            continue
        _check(all(math.isfinite(v) for v in numbers), key, value, "must be finite")
        _check(
            all(abs(v) < NUMBER_LIMIT for v in numbers),
            key,
            value,
            f"must be less than 2**31 = {NUMBER_LIMIT} in absolute value",
        )


# The characters of a value that SLURM scripts hold as it is (an #SBATCH directive, a job name):
# an allow-list, not a list of the shell's metacharacters, so that nothing a shell or sbatch reads
# specially (a newline ends the #SBATCH line and starts a command; ; | & $ ` ( ) < > quotes,
# blanks, #) gets through, whatever the shell
SHELL_WORD = re.compile(r"[A-Za-z0-9_.,:=+@%-]*")
SHELL_WORD_TEXT = "letters, digits and _.,:=+@%-"
# The operators of an sbatch --constraint expression ("a100&ib", "[rack1*2&rack2*4]"): written
# only into its #SBATCH directive, a comment to the shell, and quoted there for sbatch
CONSTRAINT_OPERATORS = "&|[]*()"

_CHARACTER_NAMES = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL byte",
                    "\t": "a tab", " ": "a space"}  # fmt: skip


def _first_bad(value: str, ok: Callable[[str], bool]) -> str | None:
    """How the first character of `value` that `ok` refuses reads in a message; None if none."""
    bad = next((c for c in value if not ok(c)), None)
    return None if bad is None else _CHARACTER_NAMES.get(bad, repr(bad))


def check_shell_word(key: str, value: str | None, operators: str = "") -> None:
    """`key`'s value goes into SLURM scripts (a directive, a job name): refuse any character but
    SHELL_WORD's (and `operators`), naming the key, the value and the first bad character."""
    if value is None:
        return
    bad = _first_bad(value, lambda c: SHELL_WORD.fullmatch(c) is not None or c in operators)
    allowed = SHELL_WORD_TEXT + (f" and the operators {operators}" if operators else "")
    if bad is not None:
        raise ConfigError(
            f"{key}={value!r} holds {bad}; it is written into SLURM scripts, where it must be "
            f"one word of {allowed}"
        )


def check_one_line(key: str, value: str) -> None:
    """`key`'s value is written on one line of a SLURM script (a path on a comment or #SBATCH
    line) or of a sweep's points file: a line break (or another control character) in it would
    start a line of its own, which the shell runs or the array reads as another point."""
    bad = _first_bad(value, str.isprintable)
    if bad is not None:
        raise ConfigError(
            f"{key}={value!r} holds {bad}; it is written on one line of a SLURM script or "
            "file, and must be printable characters only"
        )


def check_setup_line(key: str, line: str) -> None:
    """`key` is one of `hardware.slurm.setup`'s lines: the user's own shell code, run as it is,
    but one line of it: a line break would end the line where the config does not show it, and
    an #SBATCH line there is one sbatch never reads (it stops at the first command)."""
    bad = _first_bad(line, str.isprintable)
    if bad is not None or not line.strip():
        raise ConfigError(
            f"{key}={line!r} {f'holds {bad}' if bad else 'is blank'}; each setup line is one "
            "command on a line of its own in the SLURM scripts: one item per line, printable "
            "characters only"
        )
    if line.lstrip().startswith("#SBATCH"):
        option = line.lstrip().removeprefix("#SBATCH").strip() or "--name=value"
        raise ConfigError(
            f"{key}={line!r}: sbatch reads no #SBATCH line after the script's first command; "
            f"put the option in hardware.slurm.sbatch (e.g. hardware.slurm.sbatch=['{option}'])"
        )


# An option of `hardware.slurm.sbatch`: its name as sbatch spells it in full (no short form)
SBATCH_OPTION = re.compile(r"--[a-z][a-z0-9-]*")
# The sbatch options the scripts set themselves, and where each comes from: given again in
# `hardware.slurm.sbatch` it would contradict the script's own line (sbatch takes the last)
SBATCH_SET_BY = {
    **{name: f"hardware.slurm.{name}" for name in ("partition", "account", "qos", "constraint")},
    "time": "hardware.slurm.time_min or hardware.slurm.stages.<stage>.time_min",
    # a node's share: src.slurm asks for each stage's own (hardware.slurm.stages.<stage>)
    **dict.fromkeys(
        [
            "gres",
            "gpus",
            "gpus-per-task",
            "cpus-per-gpu",
            "mem-per-cpu",
            "mem-per-gpu",
            "exclusive",
        ],
        "hardware.slurm.stages",
    ),
    **dict.fromkeys(
        [
            *("cpus-per-task", "mem", "gpus-per-node", "nodes", "ntasks", "ntasks-per-node"),
            *("array", "job-name", "output", "dependency", "requeue", "open-mode", "signal"),
            "kill-on-invalid-dep",
        ],
        "src.slurm",
    ),
}


def check_sbatch_option(key: str, option: str) -> None:
    """`key` is one of `hardware.slurm.sbatch`'s options, `--name` or `--name=value`, written on
    an #SBATCH line of its own (the value quoted by src.slurm's `sbatch_value`)."""
    name, equals, value = option.partition("=")
    if not SBATCH_OPTION.fullmatch(name):
        raise ConfigError(
            f"{key}={option!r}: an sbatch option is `--name` or `--name=value`, the name spelled "
            "in full in lowercase letters, digits and '-' (e.g. --reservation=maint, --mail-type=FAIL)"
        )
    bad = _first_bad(value, str.isprintable)
    if bad is not None or (equals and not value):
        raise ConfigError(
            f"{key}={option!r} {f'holds {bad}' if bad else 'has no value after ='}; an option's "
            "value is written on one #SBATCH line: printable characters, or no '=' at all"
        )
    where = SBATCH_SET_BY.get(name[2:])
    if where == "src.slurm":
        raise ConfigError(
            f"{key}={option!r}: {name} is set by src.slurm, from what each job needs; drop it"
        )
    if where == "hardware.slurm.stages":
        raise ConfigError(
            f"{key}={option!r}: {name} would give each job, the CPU pairs job and every one-GPU "
            "shard too, what the whole node has; src.slurm asks for each stage's own GPUs, CPUs "
            "and memory (hardware.slurm.stages.<stage>): drop it"
        )
    if where is not None:
        raise ConfigError(f"{key}={option!r}: the scripts set {name} from {where}: set that")


# The bytes of one file or folder name that a file system takes (NAME_MAX of ext4, XFS, Btrfs,
# Lustre, GPFS)
NAME_MAX = 255


def _bytes(name: str) -> int:
    """`name`'s UTF-8 bytes; a lone surrogate (check_path_component refuses it) counts too."""
    return len(name.encode("utf-8", "surrogatepass"))


def _shown(value: str, keep: int = 40) -> str:
    """`value` as a message shows it: its repr, its beginning only when it is long."""
    return repr(value) if len(value) <= keep else f"{value[:keep]!r}..."


def check_path_component(key: str, value: str) -> None:
    """`key`'s value names one folder of a path under paths.root (model.name, run_name, a
    sweep's name): '/', '..' or an absolute path would put what is written outside it, and a
    name over NAME_MAX bytes is one the file system refuses."""
    bad = _first_bad(value, lambda c: c != "/" and c.isprintable())
    if value in ("", ".", "..") or bad is not None:
        special = {"": "is empty", ".": "is the folder itself", "..": "is the folder above"}
        what = f"holds {bad}" if bad else special[value]
        raise ConfigError(
            f"{key}={value!r} {what}; it names one folder under paths.root: a name without "
            "'/' or control characters, other than '.' and '..'"
        )
    if _bytes(value) > NAME_MAX:
        raise ConfigError(
            f"{key}={_shown(value)} is {_bytes(value)} bytes long; it names one folder under "
            f"paths.root, and a file system takes names of at most {NAME_MAX} bytes"
        )


# The longest file name made of run_name: a sharded stage's SLURM log, `%x_%A_%a.out` (src/slurm.py),
# %x its job name `<run_name>-it<t>-<stage>` (Config.stage_run_name), %A and %a a job id and an
# array task id, 32-bit numbers of up to 10 digits (a job that is no array has %a = 4294967294)
SLURM_LOG_NAME = "{job}_4294967294_4294967294.out"


def _check_shard(section: str, shard: int | None, num_shards: int | None) -> None:
    """`<section>.shard` / `.num_shards`: null means "from the SLURM array, else 0 of 1"."""
    if num_shards is not None:
        _positive(f"{section}.num_shards", num_shards)
    if shard is not None:
        limit = num_shards if num_shards is not None else 1
        _check(
            0 <= shard < limit,
            f"{section}.shard",
            shard,
            f"must be in [0, {section}.num_shards={limit})",
        )


# A hub id: ORG/NAME, letters, digits, '-', '_' and '.' (huggingface_hub's rule, less the ids of
# the few models that predate organisations)
HUB_ID = re.compile(r"(?!.*(--|\.\.))[\w][\w.-]*/[\w.-]*[\w]")


def _model_location(value: str) -> bool:
    """Whether `value` can name a model: a path (absolute, `./`, `../`), a folder here, or a hub
    id ORG/NAME. Whether the model is there is the stage's to find out: a path may be made by a
    job that runs first."""
    if value.startswith(("/", "./", "../")) or Path(value).is_dir():
        return True
    return len(value) <= 96 and HUB_ID.fullmatch(value) is not None


# ---------------------------------------------------------------------------------------------
# Schemas, one per config group.


@dataclass
class ModelConfig:
    """A policy model (conf/model/)."""

    name: str  # short name, used in run directories
    path: str  # hub id or local directory (tiny models: built into paths.tiny_dir on demand)
    # Gemma-2 trains best with eager attention (logit soft-capping); null: transformers' default
    attn_implementation: str | None = None
    trust_remote_code: bool = False  # run the model repository's own code (transformers)
    revision: str | None = None  # the hub branch, tag or commit to load; null: the default

    def __post_init__(self) -> None:
        check_path_component("model.name", self.name)

    @property
    def loading(self) -> dict[str, Any]:
        """The `from_pretrained` arguments every load of this model's policies takes."""
        return {
            "attn_implementation": self.attn_implementation,
            "trust_remote_code": self.trust_remote_code,
            "revision": self.revision,
        }


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


@dataclass
class MethodConfig:
    """The preference-optimisation method (conf/method/)."""

    name: MethodName  # names the run directory and tags the runs
    loss: Loss  # the preference loss (docs/design.md §6)
    K: int = 5  # responses sampled per prompt
    eta: float = 1000.0  # SPPO's eta; always 1/beta: a method sets one, the other follows
    beta: float = SI("${reciprocal:${.eta}}")  # the loss's beta, 1/eta
    label_smoothing: float = 0.0  # DPO sigmoid only
    wpo_weight: bool = False  # multiply the pairwise loss by the WPO weight (docs/design.md §6.3)
    wpo_clamp: float | None = 1.0  # W = min(clamp, exp(m_w + m_l)); null: unclamped
    pair_selection: PairSelection = PairSelection.argmax_argmin  # which two responses pair up
    tag: str = SI("eta${num:${.eta}}")  # the hyper-parameters' part of the default run_name

    def __post_init__(self) -> None:
        check_numbers(self, "method.")
        check_path_component("method.tag", self.tag)  # the default run_name starts with it
        _check(self.K >= 2, "method.K", self.K, "must be >= 2 (a pair needs two responses)")
        _positive("method.eta", self.eta)
        _positive("method.beta", self.beta)
        _check(
            math.isclose(self.eta * self.beta, 1.0, rel_tol=1e-9),
            "method.beta",
            self.beta,
            f"must equal 1/method.eta (eta={self.eta:g}); set one of them, the other follows",
        )
        _check(
            0.0 <= self.label_smoothing < 0.5,
            "method.label_smoothing",
            self.label_smoothing,
            "must be in [0, 0.5)",
        )
        if self.wpo_clamp is not None:
            _positive("method.wpo_clamp", self.wpo_clamp)


@dataclass
class GenerationConfig:
    """Sampling K responses per prompt (conf/generation/)."""

    backend: Backend  # hf: transformers' generate; vllm: vLLM's engine (make install-vllm)
    temperature: float = 0.7  # > 0: the K samples of a prompt must differ
    top_p: float = 0.9  # nucleus sampling: the smallest set of tokens with this much probability
    max_new_tokens: int = 2048  # a longer response is cut (finish_reason: length)
    # one seed per sample k; null: 50*k, the SPPO reference's choice
    seeds: list[int] | None = None
    batch_size: int = 8  # prompts per HF generate call (each expands to K sequences)
    chunk_size: int = 64  # prompts per file written: the unit of resume
    # in policy tokens, after the chat template: by default what training keeps
    max_prompt_length: int = SI("${training.max_prompt_length}")
    long_prompts: LongPrompts = LongPrompts.skip  # a prompt longer than max_prompt_length
    shard: int | None = None  # null: SLURM_ARRAY_TASK_ID when set, else 0
    num_shards: int | None = None  # null: SLURM_ARRAY_TASK_COUNT when set, else 1
    tensor_parallel_size: int = 1  # vLLM only
    gpu_memory_utilization: float = 0.9  # vLLM only: its share of the GPU (weights + KV cache)
    # vLLM only: the KV cache's size in GB; null: what gpu_memory_utilization leaves on a GPU,
    # 1 GB on CPU (where vLLM would read the utilisation as a share of the machine's memory)
    kv_cache_gb: float | None = None
    # vLLM only: skip torch.compile (and CUDA graphs): on CPU the engine starts in ~30 s
    # instead of ~60 s, and decodes more slowly
    enforce_eager: bool = False
    # vLLM only: the sequences its engine decodes in one step at most; null: vLLM's default
    # (the KV cache may hold fewer: generation.kv_cache_gb, gpu_memory_utilization)
    max_num_seqs: int | None = None
    # vLLM only: samples handed to the engine ahead of those that have ended, read from the
    # shard's prompts as samples end (a stream: a slot that frees is refilled at the next step,
    # and memory stays flat at any shard size); null: twice the engine's max_num_seqs
    in_flight: int | None = None

    def __post_init__(self) -> None:
        check_numbers(self, "generation.")
        _check(self.temperature >= 0, "generation.temperature", self.temperature, "must be >= 0")
        _check(0 < self.top_p <= 1, "generation.top_p", self.top_p, "must be in (0, 1]")
        _positive("generation.max_new_tokens", self.max_new_tokens)
        _positive("generation.batch_size", self.batch_size)
        _positive("generation.chunk_size", self.chunk_size)
        _positive("generation.max_prompt_length", self.max_prompt_length)
        _positive("generation.tensor_parallel_size", self.tensor_parallel_size)
        _check(
            0 < self.gpu_memory_utilization <= 1,
            "generation.gpu_memory_utilization",
            self.gpu_memory_utilization,
            "must be in (0, 1]",
        )
        _check(
            self.kv_cache_gb is None or self.kv_cache_gb > 0,
            "generation.kv_cache_gb",
            self.kv_cache_gb,
            "must be > 0 or null",
        )
        for key in ("max_num_seqs", "in_flight"):
            if getattr(self, key) is not None:
                _positive(f"generation.{key}", getattr(self, key))
        _check_shard("generation", self.shard, self.num_shards)


@dataclass
class RankerConfig:
    """The judge that scores the K responses (conf/ranker/)."""

    name: str  # the judge's name, as records and model cards show it
    kind: JudgeKind  # pairrm: llm-blender's pairwise PairRM; reward_model: one score per response
    model: str  # hub id or local directory
    # comparisons (PairRM) or sequences (reward model) per forward, at most: on a CPU PairRM's
    # forwards also stop at CPU_SCORES_BYTES of attention scores (src/ranking/pairrm.py)
    batch_size: int = 32
    source_max_length: int = 1224  # PairRM truncation of the prompt, in PairRM tokens
    candidate_max_length: int = 412  # PairRM truncation of each response
    prompt_format: PromptFormat = PromptFormat.chat_template  # the prompt as PairRM reads it
    attention: Attention = (
        Attention.eager
    )  # PairRM's DeBERTa attention (the same scores either way)
    win_prob: WinProb = WinProb.bt  # how the probability P_ij that i beats j is computed
    self_term: bool = True  # win rate includes P_ii = 1/2, so the K win rates sum to K/2
    ties: TiePolicy = TiePolicy.drop  # a prompt whose K responses all score the same
    empty_responses: EmptyResponses = EmptyResponses.drop  # empty or whitespace-only responses
    trust_remote_code: bool = False  # ArmoRM needs it: opt in explicitly
    chunk_size: int = 64  # prompts per file written: the unit of resume
    shard: int | None = None  # null: SLURM_ARRAY_TASK_ID when set, else 0
    num_shards: int | None = None  # null: SLURM_ARRAY_TASK_COUNT when set, else 1

    def check(self, section: str) -> None:
        """Range checks, naming the keys under `section` (`ranker` or `eval.judge`): called by
        Config, which knows where each ranker config sits."""
        _positive(f"{section}.batch_size", self.batch_size)
        _positive(f"{section}.source_max_length", self.source_max_length)
        _positive(f"{section}.candidate_max_length", self.candidate_max_length)
        _positive(f"{section}.chunk_size", self.chunk_size)
        _check(
            self.attention == Attention.eager or self.kind == JudgeKind.pairrm,
            f"{section}.attention",
            self.attention.value,
            "'fused' is PairRM's DeBERTa attention; a reward model has its own (use eager)",
        )
        _check(
            self.win_prob == WinProb.bt or self.kind == JudgeKind.pairrm,
            f"{section}.win_prob",
            self.win_prob.value,
            "'direct' needs PairRM's pairwise logits; a reward model gives only scores (use bt)",
        )
        _check_shard(section, self.shard, self.num_shards)


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
    # AlpacaEval-format JSON of reference answers (instruction, output, generator) used instead
    # of generating them, e.g. AlpacaEval 2's GPT-4 Turbo outputs downloaded beforehand
    reference_outputs: str | None = None
    # the engine that answers (hf | vllm); null: generation.backend's, the generate stage's
    backend: Backend | None = None
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling, when temperature > 0
    max_new_tokens: int = 2048  # a longer answer is cut
    seed: int = 0  # the sampling seed when temperature > 0
    max_prompt_length: int = 2048  # in policy tokens, after the chat template
    batch_size: int = 8  # prompts per generate call
    chunk_size: int = 64  # prompts per answers file written: the unit of resume
    outcome: Outcome = Outcome.discrete  # what a comparison scores (win_rate and lc_win_rate)
    bootstrap: int = 1000  # resamples of the prompts for the confidence intervals
    confidence: float = 0.95  # the confidence level of those intervals
    # the judge of the eval, a ranker config (`ranker@eval.judge=<option>`); null: the ranker
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
        earlier = re.fullmatch(r"iter(\d+)", self.reference)
        _check(
            earlier is None or int(earlier[1]) >= 1,
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
            self.reference = f"iter{int(earlier[1])}"


@dataclass
class AdapterConfig:
    """The adapter of training.peft=lora|qlora (`training.lora`)."""

    rank: int = 16  # r, the rank of each adapted layer's update
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.05  # dropout on the adapter's input
    # every linear layer of the attention and MLP blocks of Mistral and Gemma-2 (module names)
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
        ]
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_numbers(self, "training.lora.")
        _positive("training.lora.rank", self.rank)
        _positive("training.lora.alpha", self.alpha)
        _check(0 <= self.dropout < 1, "training.lora.dropout", self.dropout, "must be in [0, 1)")
        _check(
            bool(self.target_modules),
            "training.lora.target_modules",
            self.target_modules,
            "names at least one module, e.g. [q_proj,v_proj]",
        )


@dataclass
class TrainingConfig:
    """The optimisation recipe (conf/training/)."""

    # the pairs stage's file, or one of your own (.parquet / .jsonl, e.g. tests/data/pairs_tiny.jsonl)
    pairs: str = SI(PAIRS_STAGE_FILE)
    optimizer: Optimizer = Optimizer.rmsprop  # rmsprop: the SPPO recipes' optimizer
    learning_rate: float = 5e-7  # the peak, reached after the warm-up
    lr_scheduler: Scheduler = Scheduler.linear  # the learning rate's schedule after the warm-up
    warmup_ratio: float = 0.1  # the share of the schedule's steps that warm up linearly from 0
    num_epochs: float = 1.0  # passes over the pairs (a fraction stops part-way)
    # The SPPO model cards: the schedule spans 18 epochs and training stops after 1.
    # null: the schedule spans num_epochs.
    schedule_epochs: float | None = None
    # pairs per optimizer step over all processes: per_device_batch_size x world size x the
    # gradient accumulation steps this implies
    global_batch_size: int = 64
    per_device_batch_size: int = 8  # pairs per forward pass of one process (GPU)
    max_length: int = 1024  # prompt + response tokens kept; a longer pair is cut
    max_prompt_length: int = 512  # of a pair too long for max_length: the prompt's last tokens
    gradient_checkpointing: bool = True  # recompute activations in the backward: less memory
    # Response tokens per chunk of the streamed LM head (src/training/policy_logps.py): the
    # [B, T, V] logits never exist; a chunk holds about two chunk x vocabulary fp32 buffers at
    # a time (256 x 256k: 0.26 GB each). null: the model's own head computes full logits.
    lm_head_chunk: int | None = 256
    precision: Dtype = Dtype.auto  # the dtype training computes in
    # Full weights in bf16 without DeepSpeed (training.precision=auto on a GPU): how the weights
    # keep an update smaller than their spacing (at lr 5e-7 nearly every update: a bf16 weight of
    # 0.02 has a spacing of 1.2e-4, an RMSprop step is ~5e-6, and written into it as is it rounds
    # away). kahan: each update added with Kahan summation, the optimizer state in bf16 (8 bytes a
    # parameter with RMSprop: a 7-9B model trains on one 80 GB GPU); fp32: fp32 master weights and
    # optimizer state, as DeepSpeed's bf16 mode keeps them (12 bytes a parameter with RMSprop).
    # src/training/optimizers.py. ZeRO-3 keeps fp32 partitions itself and an adapter trains in
    # fp32: neither reads this.
    weight_updates: WeightUpdates = WeightUpdates.kahan
    ref_logprobs: RefLogprobs = RefLogprobs.precompute  # where the reference's log-probs come from
    weight_decay: float = 0.0  # the optimizer's weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    seed: int = 42  # the Trainer's seed: the order of the pairs, dropout, a fresh adapter
    logging_steps: int = 1  # optimizer steps between logged losses and metrics
    save_steps: int = 200  # Trainer checkpoints, what an interrupted run resumes from
    # none: full weights; lora / qlora: an adapter, merged into the checkpoint at the end
    peft: Peft = Peft.none
    lora: AdapterConfig = field(default_factory=AdapterConfig)
    # true: done.json keeps each step's memory by phase (forward, backward, optimizer step: its
    # peak and what it holds at its end) beside the plan's terms, `timings.memory_phases`
    # (src/training/memory_phases.py); a few reads of the allocator a step. Not in the fingerprint.
    record_memory_phases: bool = False

    def __post_init__(self) -> None:
        check_numbers(self, "training.")
        _positive("training.learning_rate", self.learning_rate)
        _check(
            0 <= self.warmup_ratio < 1,
            "training.warmup_ratio",
            self.warmup_ratio,
            "must be in [0, 1)",
        )
        _positive("training.num_epochs", self.num_epochs)
        if self.schedule_epochs is not None:
            _check(
                self.schedule_epochs >= self.num_epochs,
                "training.schedule_epochs",
                self.schedule_epochs,
                f"must be >= training.num_epochs={self.num_epochs:g}",
            )
        _positive("training.global_batch_size", self.global_batch_size)
        _positive("training.per_device_batch_size", self.per_device_batch_size)
        _positive("training.max_prompt_length", self.max_prompt_length)
        if self.lm_head_chunk is not None:
            _positive("training.lm_head_chunk", self.lm_head_chunk)
        _check(
            self.max_length > self.max_prompt_length,
            "training.max_length",
            self.max_length,
            f"must be > training.max_prompt_length={self.max_prompt_length}",
        )
        _check(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, "must be >= 0")
        _positive("training.max_grad_norm", self.max_grad_norm)
        _positive("training.logging_steps", self.logging_steps)
        _positive("training.save_steps", self.save_steps)


@dataclass
class StageRequest:
    """What one task of a stage asks SLURM for (`hardware.slurm.stages.<stage>.*`); null: derived
    from the node by `src/slurm.py` (a GPU task its GPUs' share of the node's CPUs and memory,
    pairs a small CPU job, training the whole node)."""

    cpus_per_task: int | None = None  # CPUs of one task
    mem_gb: int | None = None  # memory of one task, in GB
    time_min: int | None = None  # the task's time limit, in minutes


@dataclass
class StageRequests:
    """One request per stage of an iteration (`hardware.slurm.stages`)."""

    generate: StageRequest = field(default_factory=StageRequest)
    rank: StageRequest = field(default_factory=StageRequest)
    pairs: StageRequest = field(default_factory=StageRequest)
    train: StageRequest = field(default_factory=StageRequest)
    eval: StageRequest = field(default_factory=StageRequest)


@dataclass
class SlurmConfig:
    """The SLURM node a hardware runs on (conf/hardware/slurm/node.yaml): what a whole-node job
    asks for, and what each stage's share is cut from (`stages`). The sbatch templates and the
    submitit launcher read these."""

    partition: str | None = None  # sbatch --partition; null: the cluster's default
    account: str | None = None  # sbatch --account; null: yours by default
    qos: str | None = None  # sbatch --qos; null: the default
    time_min: int = 240  # every stage's time limit, unless its own is set (pairs: at most 60)
    cpus_per_task: int = 8  # the node's CPUs
    mem_gb: int = 64  # the node's memory
    constraint: str | None = None  # sbatch --constraint (node features, e.g. a GPU type)
    stages: StageRequests = field(default_factory=StageRequests)
    # shell lines every job runs on its node before its stage, after the exports (e.g. `module
    # load cuda/12.4`, `export NCCL_SOCKET_IFNAME=ib0`): one command per item (the stage runs the
    # clone's .venv/bin/python, so activating another environment changes nothing)
    setup: list[str] = field(default_factory=list)
    # more sbatch options, each `--name` or `--name=value` (e.g. `--reservation=maint`,
    # `--mail-type=FAIL`); those the scripts set themselves are refused, naming their key, and
    # so are those that ask for a node's share (`--gres=gpu:8`, `--exclusive`): the scripts ask
    # for each stage's own, and these would give every one-GPU shard and the CPU pairs job a node
    sbatch: list[str] = field(default_factory=list)
    # the jobs read models and datasets from the Hugging Face cache only (HF_HUB_OFFLINE=1,
    # HF_DATASETS_OFFLINE=1, TRANSFORMERS_OFFLINE=1); false for nodes that reach the Hub
    offline: bool = True

    def __post_init__(self) -> None:
        check_numbers(self, "hardware.slurm.")
        for key in ("partition", "account", "qos"):
            check_shell_word(f"hardware.slurm.{key}", getattr(self, key))
        check_shell_word("hardware.slurm.constraint", self.constraint, CONSTRAINT_OPERATORS)
        for i, line in enumerate(self.setup):
            check_setup_line(f"hardware.slurm.setup[{i}]", line)
        for i, option in enumerate(self.sbatch):
            check_sbatch_option(f"hardware.slurm.sbatch[{i}]", option)
        _positive("hardware.slurm.time_min", self.time_min)
        _positive("hardware.slurm.cpus_per_task", self.cpus_per_task)
        _positive("hardware.slurm.mem_gb", self.mem_gb)
        for stage in fields(StageRequests):
            request, key = getattr(self.stages, stage.name), f"hardware.slurm.stages.{stage.name}"
            for name, node in (("cpus_per_task", self.cpus_per_task), ("mem_gb", self.mem_gb)):
                value = getattr(request, name)
                if value is not None:
                    _positive(f"{key}.{name}", value)
                    _check(
                        value <= node,
                        f"{key}.{name}",
                        value,
                        f"is more than a node has (hardware.slurm.{name}={node}): one task "
                        "runs on one node",
                    )
            if request.time_min is not None:
                _positive(f"{key}.time_min", request.time_min)


@dataclass
class HardwareConfig:
    """Where the work runs (conf/hardware/)."""

    name: str  # the hardware option's name, as messages show it
    device: Device  # cuda: one process per GPU; cpu: gloo processes
    num_nodes: int = 1  # nodes that train together (through SLURM)
    processes_per_node: int = 1  # GPUs per node; on CPU, gloo processes
    distributed: Distributed = Distributed.none  # how training processes share the work
    zero_stage: int = 3  # DeepSpeed only
    # each GPU's memory, what `python -m src.plan` checks every stage against (A100 / H100:
    # 80); null: not known (CPU), the plan shows the memory without checking it
    gpu_memory_gb: float | None = 80.0
    slurm: SlurmConfig | None = None

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.processes_per_node

    def __post_init__(self) -> None:
        check_numbers(self, "hardware.")
        _positive("hardware.num_nodes", self.num_nodes)
        _positive("hardware.processes_per_node", self.processes_per_node)
        _check(
            self.zero_stage in (0, 1, 2, 3), "hardware.zero_stage", self.zero_stage, "must be 0-3"
        )
        _check(
            self.gpu_memory_gb is None or self.gpu_memory_gb > 0,
            "hardware.gpu_memory_gb",
            self.gpu_memory_gb,
            "must be > 0 or null",
        )
        _check(
            self.distributed != Distributed.none or self.world_size == 1,
            "hardware.distributed",
            self.distributed.value,
            f"'none' needs exactly one process, but num_nodes x processes_per_node = {self.world_size}",
        )


@dataclass
class LoggerConfig:
    """Experiment tracking (conf/logger/). Every run also writes a local metrics.json."""

    backend: LoggerBackend  # wandb: a W&B run per stage; none: the local metrics.json alone
    project: str = "selfplay-lab"  # the W&B project
    entity: str | None = None  # the W&B team or user; null: your default
    mode: WandbMode = SI("${oc.env:WANDB_MODE,online}")  # $WANDB_MODE, else online
    tags: list[str] = field(default_factory=list)  # on every run, beside the method and model
    dir: str = SI("${paths.root}/wandb")  # W&B's local files (offline runs: `wandb sync`)
    # the sweep this run is a point of, and the keys it sweeps (set by src.sweep): the group of
    # the lineage's curve run, and values in its config that W&B colours the points by
    sweep: str | None = None
    swept: list[str] = field(default_factory=list)  # the swept keys, e.g. [method.eta]
    # rows of each W&B table a stage logs (the eval's answers and verdicts, a sample of the
    # pairs); 0: no tables
    table_rows: int = 200
    # upload iteration t's checkpoint into its W&B artifact; false: a reference to its folder
    upload_weights: bool = False

    def __post_init__(self) -> None:
        _check(self.table_rows >= 0, "logger.table_rows", self.table_rows, "must be >= 0 (0: none)")


RUNS_ENV, RUNS_DEFAULT = "SELFPLAY_RUNS", "runs"  # where runs live unless paths.root says


def runs_root() -> Path:
    """paths.root's default, for the commands that read runs without composing a config."""
    return Path(os.environ.get(RUNS_ENV) or RUNS_DEFAULT).resolve()


@dataclass
class PathsConfig:
    """Directories (conf/paths/). All absolute after resolution."""

    # run directories live under here: $SELFPLAY_RUNS, else runs/ (relative paths resolve
    # against the directory you launch from), e.g. paths.root=/scratch/$USER/runs
    root: str = SI(f"${{abspath:${{oc.env:{RUNS_ENV},{RUNS_DEFAULT}}}}}")
    data_dir: str = SI("${repo:data}")  # the project's own prompt files (data/prompts/)
    # cache of the locally built tiny models ($SELFPLAY_TINY_DIR, else .cache/tiny); `make tiny`
    # rebuilds them
    tiny_dir: str = SI("${abspath:${oc.env:SELFPLAY_TINY_DIR,${repo:.cache/tiny}}}")
    # the tiny copies of MT-Bench's and Arena-Hard's data (conf/data/tiny.yaml), written by the
    # first command that evaluates with them (src/tiny/benchmarks.py)
    tiny_benchmarks: str = SI("${paths.tiny_dir}/benchmarks")
    # the Hugging Face home ($HF_HOME, else ~/.cache/huggingface): SLURM jobs get it exported,
    # so that the nodes read the models and datasets `python -m src.assets fetch` put there
    hf_home: str = SI("${abspath:${oc.env:HF_HOME,'~/.cache/huggingface'}}")
    # the Hub's download cache ($HF_HUB_CACHE, else <hf_home>/hub), where huggingface_hub puts it
    hub_cache: str = SI("${abspath:${oc.env:HF_HUB_CACHE,${.hf_home}/hub}}")

    def __post_init__(self) -> None:
        # an empty root would put every run directory at the file system's root
        _check(
            self.root.strip() != "",
            "paths.root",
            self.root,
            "names no folder; set a folder for the run directories, e.g. "
            "paths.root=/scratch/$USER/runs (unset, it is $SELFPLAY_RUNS, else ./runs)",
        )
        check_one_line("paths.root", self.root)


@dataclass
class RunConfig:
    """Derived locations of this run (docs/design.md §5); override only to point at another
    lineage's checkpoint."""

    # one run directory per hyper-parameter lineage; its iterations share it
    dir: str = SI("${paths.root}/${model.name}/${method.name}/${run_name}")
    iter_dir: str = SI("${run.dir}/iter${iter}")  # this iteration's folder: one per stage in it
    # generator, initial weights and reference of this iteration: pi_{iter-1}
    init_policy: str = SI("${previous_policy:${iter},${model.path},${run.dir}}")


@dataclass
class PlanConfig:
    """What `python -m src.slurm` checks before it queues (`python -m src.plan` shows it)."""

    # false: queue even a stage the memory model says does not fit hardware.gpu_memory_gb
    check: bool = True
    # prompts of an iteration; null: data.max_prompts where the split has more, else the
    # previous iteration's, else the source's rows (a local file, the Hub cache, its dataset
    # card: src/plan/counts.py), else the SPPO recipe's 20,000
    prompts: int | None = None
    gpu_tflops: float = 989.0  # each GPU's dense bf16 peak: H100 SXM 989 (A100: 312)
    # an assumption: the share of that peak training reaches, and ranking with a judge other than
    # PairRM (whose comparisons/s are measured: src/plan/hours.py)
    mfu: float = 0.3
    # generation per GPU; null: HF measured on an H100 for the real models, vLLM a share of the
    # decode bound (src/plan/hours.py)
    generate_tokens_per_s: float | None = None
    gpu_memory_tbs: float = 3.35  # each GPU's memory bandwidth, TB/s: H100 SXM 3.35 (A100: 2.0)
    # the share of the decode bound vLLM reaches (each step reads the weights once and the KV
    # cache of the sequences in it); null: the share measured for the model with vLLM 0.26 on 640
    # samples of the recipe-like spread (Mistral-7B 0.22 on an H200, Gemma-2-9B 0.32 on an H100:
    # src/plan/hours.py cites the results files), for other models Mistral-7B's, assumed
    vllm_bound_share: float | None = None

    def __post_init__(self) -> None:
        check_numbers(self, "plan.")
        if self.prompts is not None:
            _positive("plan.prompts", self.prompts)
        _positive("plan.gpu_tflops", self.gpu_tflops)
        _check(0 < self.mfu <= 1, "plan.mfu", self.mfu, "must be in (0, 1]")
        if self.generate_tokens_per_s is not None:
            _positive("plan.generate_tokens_per_s", self.generate_tokens_per_s)
        _positive("plan.gpu_memory_tbs", self.gpu_memory_tbs)
        _check(
            self.vllm_bound_share is None or 0 < self.vllm_bound_share <= 1,
            "plan.vllm_bound_share",
            self.vllm_bound_share,
            "must be in (0, 1]",
        )


@dataclass
class PipelineConfig:
    """How `stage=all` chains iterations and treats finished stages (their records: each
    stage's done.json)."""

    # false: iteration t with iterations < t not done runs them first, saying so; true: refuse
    # instead, naming the missing checkpoint and the command that makes it
    require_previous: bool = False
    # stages of THIS iteration to redo although they were finished under another config (the
    # later stages of the iteration are redone with them): a list, e.g. pipeline.redo=[rank], or
    # one stage bare (pipeline.redo=rank); typed Any, as Hydra refuses a bare name for a list
    redo: Any = field(default_factory=list)
    # true: every stage of this iteration and of the earlier ones `stage=all` runs first that was
    # made under another config, or from a checkpoint trained again since, is redone (with the
    # stages after it) instead of refused: the one command after a redo of an early iteration
    redo_stale: bool = False

    def __post_init__(self) -> None:
        given = self.redo if isinstance(self.redo, list | tuple) else [self.redo]
        given = [str(s) for s in given if s is not None]
        names = [s.value for s in Stage if s != Stage.all]
        _check(
            all(s in names for s in given),
            "pipeline.redo",
            given,
            f"names stages of an iteration: {', '.join(names)} (e.g. pipeline.redo=[rank]: rank "
            "and the stages after it)",
        )
        self.redo = [Stage(s) for s in given]


@dataclass(kw_only=True)
class Config:
    """The whole composed configuration of one invocation."""

    # iteration t (1-based): generator, initial weights and reference are iteration t-1's policy
    iter: int = 1
    # the stage of iteration `iter` to run; all: every stage in order (eval with eval.enabled=true)
    stage: Stage = Stage.all
    # one run directory per hyper-parameter lineage; iterations of a lineage share it. Its last
    # part: K<K>, or pairs-<file name> when training.pairs names a file of your own
    run_name: str = SI(
        "${method.tag}-lr${num:${training.learning_rate}}-${pairs_source:K${method.K}}"
    )
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig
    method: MethodConfig
    data: DataConfig
    generation: GenerationConfig
    ranker: RankerConfig
    training: TrainingConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    hardware: HardwareConfig
    logger: LoggerConfig
    paths: PathsConfig = field(default_factory=PathsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    # What a preset says about itself in every model card it makes: how it departs from the
    # published recipe it reproduces (src/stages/cards.py)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_numbers(self)  # every key, a section's own included, before the rules below
        self.ranker.check("ranker")
        if self.eval.judge is not None:
            self.eval.judge.check("eval.judge")
        for benchmark, key in BENCHMARK_DATA.items():
            _check(
                benchmark not in self.eval.benchmarks or getattr(self.data, key) is not None,
                f"data.{key}",
                None,
                f"eval.benchmarks names {benchmark.value}: point data.{key} at its data "
                f"({BENCHMARK_DATA_HINT[benchmark]})",
            )
        _check(self.iter >= 1, "iter", self.iter, "must be >= 1 (iterations count from 1)")
        # its longest file name, a SLURM log, sets its limit (its folder's, NAME_MAX, is looser)
        longest = max((s for s in Stage if s != Stage.all), key=lambda s: len(s.value))
        log = SLURM_LOG_NAME.format(job=self.stage_run_name(longest))
        if _bytes(log) > NAME_MAX:
            tail = _bytes(log) - _bytes(self.run_name)
            raise ConfigError(
                f"run_name={_shown(self.run_name)} is {_bytes(self.run_name)} bytes long; the "
                f"SLURM logs of its jobs are named `<run_name>-it{self.iter}-{longest.value}_"
                f"<job id>_<task id>.out`, {tail} bytes more, and a file system takes names of "
                f"at most {NAME_MAX} bytes: run_name can be {NAME_MAX - tail} bytes long"
            )
        check_path_component("run_name", self.run_name)
        if self.hardware.slurm is not None:  # the SLURM jobs are named after it
            check_shell_word("run_name", self.run_name)
        check_one_line("run.dir", self.run.dir)
        # lexically, not through symlinks: a root whose folders link to scratch space is fine,
        # a run.dir override that climbs out of the root is not
        root, run_dir = os.path.abspath(self.paths.root), os.path.abspath(self.run.dir)
        _check(
            run_dir.startswith(root.rstrip("/") + "/"),
            "run.dir",
            self.run.dir,
            f"lies outside paths.root={self.paths.root!r}: a run's files go under the root; "
            "move them with paths.root",
        )
        if self.generation.seeds is not None:
            _check(
                len(self.generation.seeds) == self.method.K,
                "generation.seeds",
                self.generation.seeds,
                f"needs one seed per sample: method.K={self.method.K} seeds",
            )
            repeated = sorted(
                {s for s in self.generation.seeds if self.generation.seeds.count(s) > 1}
            )
            _check(
                not repeated,
                "generation.seeds",
                self.generation.seeds,
                f"repeats {repeated}: samples with the same seed are the same response, "
                "and a pair of equal responses teaches nothing; give each sample its own seed",
            )
        _check(
            self.generation.temperature > 0,
            "generation.temperature",
            self.generation.temperature,
            f"0 decodes greedily: the method.K={self.method.K} responses to a prompt would all be "
            "the same, and no pair could be preferred; sample with a temperature > 0 (e.g. 0.7)",
        )
        if self.training.peft == Peft.qlora:
            _check(
                self.hardware.device == Device.cuda,
                "training.peft",
                "qlora",
                f"a 4-bit base needs a CUDA GPU (bitsandbytes), and hardware={self.hardware.name} "
                "trains on the CPU; train a LoRA adapter on full weights there: training.peft=lora",
            )
            _check(
                self.hardware.distributed != Distributed.deepspeed,
                "training.peft",
                "qlora",
                "DeepSpeed cannot shard a 4-bit base; QLoRA trains on one GPU or under DDP "
                "(hardware.distributed=ddp), or use training.peft=lora with ZeRO-3",
            )
        if (
            self.hardware.device == Device.cpu
            and self.hardware.distributed == Distributed.deepspeed
        ):
            _check(
                self.training.precision in (Dtype.auto, Dtype.float32),
                "training.precision",
                self.training.precision.value,
                "DeepSpeed on CPU trains in fp32 only (the HF Trainer takes 16 bits under "
                "DeepSpeed on a GPU alone): use training.precision=float32, or "
                "hardware.distributed=ddp or none",
            )
        if self.training.precision == Dtype.float16 and self.training.peft == Peft.none:
            _check(
                self.hardware.distributed == Distributed.deepspeed,
                "training.precision",
                "float16",
                "full weights in fp16 need loss scaling over fp32 master weights, which DeepSpeed "
                "keeps: add hardware.distributed=deepspeed, or train in bf16 "
                "(training.precision=bfloat16)",
            )
        per_step = self.training.per_device_batch_size * self.hardware.world_size
        _check(
            self.training.global_batch_size % per_step == 0,
            "training.global_batch_size",
            self.training.global_batch_size,
            f"must be a multiple of per_device_batch_size x world size "
            f"= {self.training.per_device_batch_size} x {self.hardware.world_size} = {per_step}",
        )
        _check(
            self.generation.max_prompt_length <= self.training.max_prompt_length
            or self.generation.long_prompts == LongPrompts.skip,
            "generation.max_prompt_length",
            self.generation.max_prompt_length,
            f"truncating to more than training.max_prompt_length={self.training.max_prompt_length} "
            "would be truncated again in training",
        )

        earlier = re.fullmatch(r"iter(\d+)", self.eval.reference)
        if earlier:
            _check(
                int(earlier[1]) <= self.iter,
                "eval.reference",
                self.eval.reference,
                f"must be an iteration up to iter={self.iter} (a later one is not trained yet)",
            )

    @property
    def gradient_accumulation_steps(self) -> int:
        per_step = self.training.per_device_batch_size * self.hardware.world_size
        return self.training.global_batch_size // per_step

    @property
    def eval_backend(self) -> Backend:
        """The engine that answers the eval: eval.backend, else the generate stage's."""
        return self.eval.backend or self.generation.backend

    @property
    def sample_seeds(self) -> list[int]:
        """The seed of each of the K samples (50*k by default, as the SPPO reference)."""
        if self.generation.seeds is not None:
            return list(self.generation.seeds)
        return [50 * k for k in range(self.method.K)]

    def stage_dir(self, stage: Stage | str) -> Path:
        """Where `stage` of this iteration writes (an eval against another reference than the
        base model: a folder of its own inside the eval's, `src.core.registry.stage_folder`)."""
        return Path(self.run.iter_dir) / self.stage_folder(stage)

    def stage_folder(self, stage: Stage | str) -> str:
        return stage_folder(Stage(stage), self.eval.reference, self.eval.reference_outputs)

    def shard_section(self, stage: Stage) -> GenerationConfig | RankerConfig | None:
        """The section whose `shard`, `num_shards` and `chunk_size` split `stage`
        (`generation`, `ranker`), or None for a stage that is not sharded."""
        section = STAGES[stage].sharded_by
        return getattr(self, section) if section else None

    def as_tree(self) -> dict[str, Any]:
        """The config as plain, resolved data (enums as their names), as config.yaml stores it:
        what stage records, fingerprints and W&B receive."""
        return plain_data(self)

    def stage_run_name(self, stage: Stage | str) -> str:
        """A stage's name wherever it runs: its SLURM job, its W&B run, the Trainer's run_name:
        `<run_name>-it<t>-<stage>`, an eval against another reference `...-eval-vs-<name>`."""
        return f"{self.run_name}-it{self.iter}-{self.stage_folder(stage).replace('/', '-')}"


def plain_data(value: Any) -> Any:
    """A validated config node as plain data: what OmegaConf's `to_container(structured(value),
    resolve=True, enum_to_str=True)` gives, key for key and type for type (tests/test_config.py
    holds the two equal for every composition), read straight off the dataclasses, which hold
    resolved values already. OmegaConf's way builds a typed node tree first: 70 ms a call, and a
    command asks for the tree of each stage it considers (the scheduler, every fingerprint)."""
    if is_dataclass(value):
        return {f.name: plain_data(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, dict):
        return {(k.name if isinstance(k, Enum) else k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(v) for v in value]
    return value


def register_schema() -> None:
    """Hydra composes conf/ onto `Config`: conf/config.yaml's defaults list starts with
    `base_config`, so each default above is the config's default, a typo in a key or a value of
    the wrong type fails as it is composed, and a config file holds only what it chooses or
    changes (tests/test_config.py checks that none repeats what it would get anyway)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


register_schema()


# ---------------------------------------------------------------------------------------------
# Validation.


def allowed_keys(dotted_path: str) -> list[str] | None:
    """The keys the schema accepts at `dotted_path` ('' for the top), or None if not a node."""
    schema: Any = Config
    for part in [p for p in dotted_path.split(".") if p]:
        hint = get_type_hints(schema).get(part)
        # `SlurmConfig | None` -> SlurmConfig; a leaf type (str, list, an enum) has no keys
        schema = next((t for t in (hint, *get_args(hint)) if is_dataclass(t)), None)
        if schema is None:
            return None
    return [f.name for f in fields(schema)]


def describe_omegaconf_error(exc: OmegaConfBaseException) -> str:
    """OmegaConf's multi-line errors as one line that names the key."""
    for inner in causes(exc):  # raised by one of our resolvers, possibly wrapped twice
        if isinstance(inner, ConfigError):
            return str(inner)
    key = getattr(exc, "full_key", None) or "?"
    msg = (getattr(exc, "msg", None) or str(exc) or type(exc).__name__).splitlines()[0]
    if isinstance(exc, ConfigKeyError | ConfigAttributeError):
        parent = key.rpartition(".")[0]
        keys = allowed_keys(parent)
        where = parent or "the top level"
        accepted = f"; {where} accepts: {', '.join(keys)}" if keys else ""
        return f"unknown config key '{key}'{accepted}"
    if isinstance(exc, ValidationError):
        return f"{key}: {msg}"
    return f"{key}: {msg}" if key != "?" else msg


@functools.cache
def schema() -> DictConfig:
    """Config as OmegaConf's typed node, made once a process (~13 ms a composition)."""
    return OmegaConf.structured(Config)


def validate(cfg: DictConfig | dict) -> Config:
    """Check `cfg` against the schema and return the typed, fully resolved Config.

    Raises ConfigError with a one-line message naming the key on any unknown key, wrong type,
    value out of range or failed interpolation.
    """
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    try:
        # as plain data: a key added to a typed node (`+method.foo=1`) meets the schema here
        plain = OmegaConf.to_container(raw, resolve=False, enum_to_str=True)
        merged = OmegaConf.merge(schema(), plain)  # merge copies it: the schema stays as made
        typed = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc)) from exc
    assert isinstance(typed, Config)
    return typed


# Nodes that some compositions leave null, and what fills them.
NULL_NODES = {
    "hardware.slurm": "hardware.slurm needs hardware=slurm-*",
    "eval.judge": "the ranker judges; choose a judge with ranker@eval.judge=<ranker option>",
}


def compose_tree(overrides: Sequence[str], hydra_node: bool = False) -> DictConfig:
    """conf/config.yaml with `overrides` (`python -m src.main`'s arguments), composed by Hydra's
    compose API; a composition Hydra refuses raises ConfigError, one line naming the key."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            return hydra_compose(
                "config", overrides=list(overrides), return_hydra_config=hydra_node
            )
    except (HydraException, OmegaConfBaseException, AssertionError) as exc:
        raise ConfigError(describe_composition_error(exc, overrides)) from exc


def compose(overrides: Sequence[str]) -> Config:
    """The validated config that `python -m src.main <overrides>` runs with."""
    return validate(compose_tree(overrides))


def describe_composition_error(exc: BaseException, overrides: Sequence[str]) -> str:
    """Hydra's multi-line composition errors, as one line that names the key and the choices.

    Re-raises what is not a composition error (an AssertionError of another origin)."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        return (
            f"{group}={option}: no such option in config group '{group}'; "
            f"choose one of: {', '.join(sorted(exc.options))}"
        )
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override '{exc.override}': {exc.message.splitlines()[0]}"
    if isinstance(exc, AssertionError):
        # OmegaConf's update of a key under a null node (`hardware.slurm.time_min=5` where no
        # hardware=slurm-* made hardware.slurm)
        if "Unexpected type for root" not in str(exc):
            raise exc
        for override in overrides:
            key = override.lstrip("+~").partition("=")[0]
            parent = next((n for n in NULL_NODES if key.startswith(f"{n}.")), None)
            if parent is not None and _is_null(parent, overrides):
                return (
                    f"cannot set '{key}': '{parent}' is null with the options chosen "
                    f"({NULL_NODES[parent]})"
                )
    for inner in causes(exc):  # Hydra wraps OmegaConf's error, which names the key
        if isinstance(inner, OmegaConfBaseException) and getattr(inner, "full_key", None):
            return _unpackaged(exc, inner) or describe_omegaconf_error(inner)
    if isinstance(exc, OmegaConfBaseException):
        return describe_omegaconf_error(exc)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ else ""
    return " ".join(filter(None, [lines[0] if lines else type(exc).__name__, cause]))


def _unpackaged(exc: BaseException, inner: OmegaConfBaseException) -> str | None:
    """The error of a config file whose keys Hydra put under its group's name, which the schema
    does not have (conf/local/default.yaml without `# @package _global_`); else None."""
    top = str(getattr(inner, "full_key", "")).split(".")[0]
    where = re.match(r"In '([\w./-]+)'", str(exc))  # Hydra's "In 'local/default': ..."
    if not where or where[1].split("/")[0] != top or top in {f.name for f in fields(Config)}:
        return None
    return (
        f"conf/{where[1]}.yaml: its keys are read under '{top}', which the config does not "
        "have; make `# @package _global_` its first line, so that they apply from the top of "
        "the config"
    )


def _is_null(node: str, overrides: Sequence[str]) -> bool:
    """Whether `node` is null in the composition of the overrides that set nothing under a
    null node."""
    kept = [o for o in overrides if not any(f"{n}." in o.partition("=")[0] for n in NULL_NODES)]
    try:
        return OmegaConf.select(compose_tree(kept), node) is None
    except ConfigError:
        return False


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, as saved beside every stage's output."""
    return OmegaConf.to_yaml(cfg.as_tree())


__all__ = [
    "Config",
    "ConfigError",
    "REPO_ROOT",
    "Stage",
    "allowed_keys",
    "check_numbers",
    "check_one_line",
    "check_path_component",
    "check_shell_word",
    "compose",
    "compose_tree",
    "describe_composition_error",
    "describe_omegaconf_error",
    "previous_policy",
    "to_yaml",
    "validate",
]
