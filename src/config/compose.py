"""The resolvers (registered at import), composition (Hydra's compose API), validation into a
`Config`, and Hydra's and OmegaConf's errors translated into a ConfigError of one line that
names the key."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_type_hints

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from src.config.checks import ConfigError
from src.config.root import Config
from src.config.training import PAIRS_STAGE_FILE, pairs_lineage
from src.core.errors import causes, set_overrides
from src.core.layout import REPO_ROOT, RunLayout, iteration_name

# ---------------------------------------------------------------------------------------------
# Resolvers. Registered at import so Hydra's `--cfg job --resolve`, the compose API in tests and
# `validate` all see them.


def previous_policy(iteration: int, base_model: str, run_dir: str) -> str:
    """The policy pi_{t-1}: the base model for iteration 1, else iteration t-1's checkpoint.

    It is the generator, the initial weights and the reference model of iteration t.
    """
    if int(iteration) <= 1:
        return str(base_model)
    return str(RunLayout(run_dir).checkpoint(int(iteration) - 1))


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


def _pairs_source(self_play: Any, _root_: Any) -> str:
    """run_name's last part: `self_play` (K<K>) while the pairs are the pairs stage's own; else
    `pairs-<file name>` of training.pairs, a lineage of its own, so that a training on another
    file never lands in (nor replaces) the checkpoint a self-play lineage made. training.pairs is
    read as written: resolving it would need run_name."""
    written = str(_root_.training._get_node("pairs")._value())
    return str(self_play) if written == PAIRS_STAGE_FILE else pairs_lineage(written)


_RESOLVERS = {
    "repo": lambda rel: str(REPO_ROOT / str(rel)),
    "abspath": lambda p: str(Path(str(p)).expanduser().resolve()),
    "previous_policy": previous_policy,
    "iteration_name": iteration_name,
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
    every command's start and every test (tests/config/test_config.py)."""
    import functools

    import omegaconf._utils
    import omegaconf.base
    from omegaconf import grammar_parser

    cached = functools.lru_cache(maxsize=4096)(grammar_parser.parse)
    for module in (omegaconf.base, omegaconf._utils):  # each imported the function by its name
        module.parse = cached


parse_each_string_once()


def read_each_file_once() -> None:
    """Hydra reads and parses each YAML file of conf/ anew for every composition (~30 of them,
    its YAML parser in pure Python: ~13 % of a composition). A file's parsed content is kept per
    process, by its path, size and mtime (an edited file is read again), and each composition is
    given a config made afresh from it (Hydra changes the configs it composes from)."""
    import copy
    import os

    import yaml
    from hydra._internal.core_plugins.file_config_source import FileConfigSource
    from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
    from omegaconf._utils import get_yaml_loader

    parsed: dict[tuple[str, int, int], tuple[dict, Any]] = {}

    def load_config(self: FileConfigSource, config_path: str) -> ConfigResult:
        full = os.path.realpath(os.path.join(self.path, self._normalize_file_name(config_path)))
        try:
            st = os.stat(full)
        except OSError:
            raise ConfigLoadError(f"Config not found : {full}") from None
        seen = (full, st.st_size, st.st_mtime_ns)
        if seen not in parsed:
            with open(full, encoding="utf-8") as f:
                text = f.read()
            parsed[seen] = (ConfigSource._get_header_dict(text[:512]),
                            yaml.load(text, Loader=get_yaml_loader()))  # fmt: skip
        header, content = parsed[seen]
        return ConfigResult(
            config=OmegaConf.create(copy.deepcopy(content)),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header=dict(header),
        )

    FileConfigSource.load_config = load_config


read_each_file_once()


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


def with_section(cfg: Config, section: str, saved: Any) -> Config:
    """`cfg` with its `section` as a stage's saved config sets it (an eval's against another
    reference: its own eval settings), checked as a command's config is: ConfigError where it no
    longer composes."""
    return validate(OmegaConf.merge(OmegaConf.create(cfg.as_tree()), {section: saved}))


# Nodes that some compositions leave null, and what fills them.
NULL_NODES = {
    "hardware.slurm": "hardware.slurm needs hardware=slurm-*",
    "eval.judge": "the ranker judges; choose a judge with +ranker@eval.judge=<ranker option>",
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


def at_iteration(tree: DictConfig, t: int) -> Config:
    """The validated config of a composition (`compose_tree`) at iteration t, as `iter=t` makes
    it (iteration 0, the base model's, with its eval: `stage=eval iter=0`): a merge, no
    composition again, for every iteration of a chain, a sweep or a lineage's view."""
    return validate(OmegaConf.merge(tree, {"iter": t, **({"stage": "eval"} if t == 0 else {})}))


def compose(overrides: Sequence[str], iteration: int | None = None) -> Config:
    """The validated config that `python -m src.main <overrides>` runs with; at `iteration`, when
    one is given, whatever iter= the overrides set (each iteration of a chain, a sweep, an export)."""
    if iteration is not None:
        overrides = set_overrides(overrides, [f"iter={iteration}"])
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
