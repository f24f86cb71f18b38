"""Every option of every config group, every model x method pair and every preset resolves to
the config recorded in tests/data/config_snapshot.json.

The record holds, per composition, the validated config (what every stage saves beside its
output) and the composed tree as `--cfg job` prints it. A change to how conf/ is written (where
a default lives, what a preset repeats) must leave both as they were: the validated config equal,
and every key `--cfg job` printed printing the same value. A change meant to alter a resolved
value rewrites the record, and the diff shows exactly what changed:

    .venv/bin/python -m tests.config.test_config_snapshot     # rewrites tests/data/config_snapshot.json
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

import pytest
from omegaconf import OmegaConf

from src.config import REPO_ROOT
from tests.support.helpers import CONF, compose_raw

SNAPSHOT = REPO_ROOT / "tests" / "data" / "config_snapshot.json"
PLAIN = "plain tree as OmegaConf's"  # a check's outcome beside each composition, not recorded
# What the config reads from the environment, fixed
PLACEHOLDERS = {
    "SELFPLAY_RUNS": "/runs",
    "SELFPLAY_TINY_DIR": "/tiny",
    "WANDB_MODE": "offline",
    "HF_HOME": "/hf",
    "HF_HUB_CACHE": "/hf/hub",
}
# The one preset that cannot start without a user-supplied file (its hybrid pool)
REQUIRED = {"gemma-2-9b-it-wpo-hb": ["data.external_responses=/data/gpt4_answers.jsonl"]}
# Groups whose options are chosen with `group=option`; model_method is chosen by model x method
GROUPS = sorted(
    p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "model_method")
)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compositions() -> dict[str, list[str]]:
    """Each composition's name and its overrides."""
    runs: dict[str, list[str]] = {"(defaults)": []}
    for group in GROUPS:
        for option in options(group):
            overrides = [f"{group}={option}", *REQUIRED.get(option, [])]
            runs[" ".join(overrides)] = overrides
    for model in options("model"):
        for method in options("method"):
            runs[f"model={model} method={method}"] = [f"model={model}", f"method={method}"]
    for judge in options("ranker"):  # the tiny models' eval option chooses a judge
        runs[f"model=tiny-mistral ranker@eval.judge={judge}"] = [
            "model=tiny-mistral",
            f"ranker@eval.judge={judge}",
        ]
    runs["iter=3"] = ["iter=3"]
    runs["model=tiny-mistral iter=3"] = ["model=tiny-mistral", "iter=3"]
    return runs


@contextmanager
def placeholder_env():
    saved = {k: os.environ.get(k) for k in PLACEHOLDERS}
    os.environ.update(PLACEHOLDERS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def resolved(overrides: list[str]) -> dict:
    """{'config': the composed tree `--cfg job` prints} and, where validation refuses it,
    {'error': its one line}; plain data, the repository's path written as <repo>. (Every
    composition that validates prints its whole validated config: the test checks that too.)"""
    from src.config import ConfigError, to_yaml, validate

    raw = compose_raw(*overrides)
    out = {"config": OmegaConf.to_container(raw, resolve=True)}
    try:
        cfg = validate(raw)
    except ConfigError as exc:
        out["error"] = str(exc)
    else:
        typed = OmegaConf.structured(cfg)
        out["typed"] = OmegaConf.to_container(typed)
        # the plain tree and YAML read off the dataclasses, as OmegaConf's typed nodes give them
        omegaconfs = OmegaConf.to_container(typed, resolve=True, enum_to_str=True)
        out[PLAIN] = repr(cfg.as_tree()) == repr(omegaconfs) and to_yaml(cfg) == OmegaConf.to_yaml(
            typed
        )
    text = json.dumps(out, sort_keys=True, default=str)
    return json.loads(text.replace(str(REPO_ROOT), "<repo>"))


def resolve_all() -> dict:
    with placeholder_env():
        return {name: resolved(overrides) for name, overrides in compositions().items()}


def take() -> dict:
    """The record: every composition less its validated config (checked against `config`)."""
    return {
        name: {k: v for k, v in run.items() if k not in ("typed", PLAIN)}
        for name, run in resolve_all().items()
    }


def flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


@pytest.fixture(scope="module")
def now() -> dict:
    return resolve_all()


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(SNAPSHOT.read_text())


def test_the_record_covers_every_composition(now, recorded):
    assert sorted(now) == sorted(recorded)


def test_the_plain_tree_of_every_composition_is_omegaconfs(now):
    """`Config.as_tree()` and `to_yaml` (src/config/root.py's plain_data) give what OmegaConf's
    typed nodes give: the fingerprints and saved configs of runs made before are the same."""
    validated = [name for name, run in now.items() if "error" not in run]
    assert validated and [name for name in validated if not now[name][PLAIN]] == []


@pytest.mark.parametrize("name", sorted(compositions()))
def test_a_composition_resolves_as_recorded(name, now, recorded):
    if name not in recorded:
        pytest.fail(f"{name} is not in {SNAPSHOT.name}: rewrite it (python -m {__name__})")
    run, record = now[name], recorded[name]
    assert run.get("error") == record.get("error")
    before = flat(record["config"])
    for what, tree in (("--cfg job", run["config"]), ("the validated config", run.get("typed"))):
        if tree is None:  # refused by validation, as recorded
            continue
        after = flat(tree)
        changed = {
            k: (v, after.get(k, "<missing>")) for k, v in before.items() if after.get(k) != v
        }
        assert not changed, f"{what} of {name}: {{key: (recorded, now)}} {changed}"
        added = sorted(set(after) - set(before))
        assert not added, f"{what} of {name} has keys the record lacks: {added}"


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(take(), indent=1, sort_keys=True) + "\n")
    print(
        f"wrote {SNAPSHOT.relative_to(REPO_ROOT)}: {len(compositions())} compositions",
        file=sys.stderr,
    )
