"""`ConfigError` and the checks the schemas' `__post_init__` run: every number of the config, the
values written into SLURM scripts (shell words, lines, sbatch options), the names of folders
under paths.root, shards and model locations."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; its message is one line that names the key."""


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
# sbatch's long options, those of Slurm 22.05 to 26.05 (src/common/slurm_opt.c: the ones sbatch
# takes). sbatch reads an #SBATCH line with getopt_long, which takes a name given in full, else
# any prefix of exactly one of them (`--exclus` is --exclusive): an option is checked as the one
# sbatch reads. A prefix of several in any of these versions is refused, not guessed.
SBATCH_OPTIONS = (
    "account", "acctg-freq", "array", "autocomplete", "batch", "bb", "bbf", "begin", "chdir",
    "cluster", "cluster-constraint", "clusters", "comment", "consolidate-segments",
    "constraint", "container", "container-id", "container-type", "context", "contiguous",
    "core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu", "cpus-per-task", "deadline",
    "delay-boot", "dependency", "distribution", "error", "exclude", "exclusive", "export",
    "export-file", "external", "extra", "extra-node-info", "get-user-env", "gid", "gpu-bind",
    "gpu-freq", "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres",
    "gres-flags", "help", "hint", "hold", "ignore-pbs", "input", "job-name",
    "kill-on-invalid-dep", "licenses", "mail-type", "mail-user", "mcs-label", "mem", "mem-bind",
    "mem-per-cpu", "mem-per-gpu", "mem-update", "mincpus", "network", "nice", "no-kill",
    "no-requeue", "nodefile", "nodelist", "nodes", "ntasks", "ntasks-per-core",
    "ntasks-per-gpu", "ntasks-per-node", "ntasks-per-socket", "ntasks-per-tres",
    "oom-kill-step", "open-mode", "output", "overcommit", "oversubscribe", "parsable",
    "partition", "power", "prefer", "priority", "profile", "propagate", "qos", "quiet",
    "reboot", "requeue", "reservation", "resources", "resv-ports", "segment", "signal",
    "sockets-per-node", "spread-job", "spread-segments", "stepmgr", "switches",
    "tasks-per-node", "test-only", "thread-spec", "threads-per-core", "time", "time-min", "tmp",
    "tres-bind", "tres-per-task", "uid", "usage", "use-min-nodes", "verbose", "version", "wait",
    "wait-all-nodes", "wckey", "wrap",
)  # fmt: skip
# The names sbatch reads as another option of SBATCH_OPTIONS (the same option to getopt_long)
SBATCH_ALIASES = {"tasks-per-node": "ntasks-per-node"}
# The sbatch options the scripts set themselves, and where each comes from: given again in
# `hardware.slurm.sbatch` it would contradict the script's own line (sbatch takes the last)
SBATCH_SET_BY = {
    **{name: f"hardware.slurm.{name}" for name in ("partition", "account", "qos", "constraint")},
    "time": "hardware.slurm.time_min or hardware.slurm.stages.<stage>.time_min",
    # a node's share: src.slurm asks for each stage's own (hardware.slurm.stages.<stage>)
    **dict.fromkeys(
        [
            *("gres", "gpus", "gpus-per-task", "gpus-per-socket", "cpus-per-gpu", "mincpus"),
            *("mem-per-cpu", "mem-per-gpu", "exclusive"),
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
# The TRES of a --tres-per-task entry that ask for a node's share: CPUs and GPUs per task
# ("cpu=4", "gres/gpu=1", "gres/gpu:a100=2"; "gres:gpu:1" as older versions wrote it)
SHARE_TRES = re.compile(r"(cpu|gres[/:]gpu)(?=$|[=:])")


def sbatch_option_name(key: str, option: str, name: str) -> str:
    """The option sbatch reads `name` (`--name`) as, named in full: `name` itself, else the one
    option of SBATCH_OPTIONS it is a prefix of (getopt_long's rule), an alias as its option."""
    given = name[2:]
    if given in SBATCH_OPTIONS:
        return f"--{SBATCH_ALIASES.get(given, given)}"
    begun = [n for n in SBATCH_OPTIONS if n.startswith(given)]
    if len({SBATCH_ALIASES.get(n, n) for n in begun}) > 1:
        raise ConfigError(
            f"{key}={option!r}: `{name}` begins several sbatch options "
            f"({', '.join(f'--{n}' for n in begun)}), which sbatch refuses as ambiguous: spell "
            "the one you mean in full"
        )
    if not begun:
        raise ConfigError(
            f"{key}={option!r}: sbatch has no option {name} (nor one it begins): spell one of "
            "its long options (`sbatch --help`), e.g. --reservation=maint, --mail-type=FAIL"
        )
    return f"--{SBATCH_ALIASES.get(begun[0], begun[0])}"


def check_sbatch_option(key: str, option: str) -> None:
    """`key` is one of `hardware.slurm.sbatch`'s options, `--name` or `--name=value`, written on
    an #SBATCH line of its own (the value quoted by src.slurm's `sbatch_value`). It is checked as
    the option sbatch reads: `--exclus` is --exclusive, refused as --exclusive is."""
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
    read = sbatch_option_name(key, option, name)
    # what the refusal says first: which option sbatch reads, where the name is not its own
    said = f"{key}={option!r}: " + ("" if read == name else f"`{name}` is sbatch's {read}; ")
    where = SBATCH_SET_BY.get(read[2:])
    if read == "--tres-per-task" and any(
        SHARE_TRES.match(t.strip()) for t in value.lower().split(",")
    ):
        where = "hardware.slurm.stages"
    if read == "--wrap":
        raise ConfigError(
            f"{said}sbatch refuses --wrap beside a batch script, and each job here is a script "
            "that runs its stage: drop it"
        )
    if where == "src.slurm":
        raise ConfigError(f"{said}{read} is set by src.slurm, from what each job needs; drop it")
    if where == "hardware.slurm.stages":
        raise ConfigError(
            f"{said}{read} would give each job, the CPU pairs job and every one-GPU shard too, "
            "what the whole node has; src.slurm asks for each stage's own GPUs, CPUs and memory "
            "(hardware.slurm.stages.<stage>): drop it"
        )
    if where is not None:
        raise ConfigError(f"{said}the scripts set {read} from {where}: set that")


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
