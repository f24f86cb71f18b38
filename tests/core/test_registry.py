"""The stages' declaration (src/core/registry.py): every key of the config schema is some
stage's input or declared as none's, with why."""

from __future__ import annotations

from src.core.registry import EXPERIMENT_INPUTS, NOT_INPUTS, STAGES, Stage
from src.explain import schema_keys


def leaf_keys() -> list[str]:
    """Every leaf key of the config schema, dotted, as `python -m src.explain` lists them (a
    section that may be null, like eval.judge or hardware.slurm, by its keys)."""
    return [key for key, kind, _, _ in schema_keys() if kind != "section"]


def declared_by(key: str, entries) -> list[str]:
    """The entries (keys or sections) that name `key`."""
    return [e for e in entries if key == e or key.startswith(f"{e}.")]


INPUTS = {key for spec in STAGES.values() for key in spec.inputs}
NOT = [key for keys in NOT_INPUTS.values() for key in keys]


def test_every_key_of_the_schema_is_an_input_of_a_stage_or_says_why_not():
    """A key added to the config that is neither would change no fingerprint: a stage whose
    output it changes would keep its record, stale, as valid."""
    keys = leaf_keys()
    assert "eval.llm_judge.system_turn" in keys and "training.lora.rank" in keys
    undeclared = [k for k in keys if not declared_by(k, INPUTS) and not declared_by(k, NOT)]
    assert undeclared == [], "an input of a stage (StageSpec.inputs) or in NOT_INPUTS, with why"


def test_no_key_is_both_an_input_and_not_one_and_every_one_declared_is_in_the_schema():
    keys = leaf_keys()
    both = [k for k in keys if declared_by(k, INPUTS) and declared_by(k, NOT)]
    assert both == []
    assert len(NOT) == len(set(NOT)), "each key in one group"
    assert [e for e in NOT if not declared_by(e, keys) and not any(
        k.startswith(f"{e}.") for k in keys
    )] == [], "a key no longer in the schema"  # fmt: skip


def test_what_makes_another_experiment_is_read_by_a_stage_the_policy_is_made_from():
    """Each of EXPERIMENT_INPUTS is a key of the schema that a stage up to the training reads: a
    misspelt one would never make another experiment."""
    order = list(STAGES)
    made_from = {key for s in order[: order.index(Stage.train) + 1] for key in STAGES[s].inputs}
    keys = leaf_keys()
    assert [k for k in EXPERIMENT_INPUTS if k not in keys or not declared_by(k, made_from)] == []
