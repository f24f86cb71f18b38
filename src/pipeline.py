"""Stage records and their fingerprints: which finished work a run may reuse (docs/design.md §5).

A stage's output depends on a few config keys (STAGE_INPUTS) and on the output of the stage
before it — for `generate`, on the previous iteration's checkpoint. Its fingerprint hashes
both, chaining back to iteration 1, so a change anywhere upstream changes every fingerprint
after it. A stage's `done.json` stores the fingerprint it was made under:

- the same fingerprint: the work is done, skip it;
- another fingerprint: it was made under another config; never reused silently — refused,
  naming the keys that changed, unless the user asks to redo it (`pipeline.redo=[stage]`);
- no record: the stage has not finished (it resumes from whatever it left, or starts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.config import Config, Stage

# The order in which the stages of an iteration consume each other's output.
ORDER = (Stage.generate, Stage.rank, Stage.pairs, Stage.train, Stage.eval)

# What each stage's output depends on (beyond the stage before it). Not listed on purpose:
# where and how fast the work runs (hardware, batch sizes, shards, chunk sizes), the logger,
# and names (run_name, ranker.name) — none of them changes the result.
# What makes a judge's verdicts (keys of a ranker config): the rank stage's judge is `ranker`,
# the eval stage's is `eval.judge` (or `ranker`, when it is null).
JUDGE_INPUTS = (
    "kind",
    "model",
    "source_max_length",
    "candidate_max_length",
    "prompt_format",
    "win_prob",
)
STAGE_INPUTS: dict[Stage, tuple[str, ...]] = {
    Stage.generate: (
        "iter",
        "run.init_policy",
        "model.path",
        "model.revision",
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
    Stage.rank: (
        *(f"ranker.{key}" for key in JUDGE_INPUTS),
        "ranker.self_term",
        "ranker.empty_responses",
        "data.external_responses",
    ),
    Stage.pairs: ("method.pair_selection", "ranker.ties"),
    Stage.train: ("method", "training", "model.dtype", "model.attn_implementation"),
    Stage.eval: (
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
        "generation.backend",
        *(f"ranker.{key}" for key in JUDGE_INPUTS),
        *(f"eval.judge.{key}" for key in JUDGE_INPUTS),
    ),
}


def as_tree(cfg: Config) -> dict[str, Any]:
    """The config as plain, resolved data (enums as their values), as config.yaml stores it."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def stage_inputs(tree: dict[str, Any], stage: Stage) -> dict[str, Any]:
    return {key: lookup(tree, key) for key in STAGE_INPUTS[stage]}


def read_record(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / "done.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:  # written atomically, so only a hand edit gets here: treat as unfinished
        return None


def stage_fingerprint(cfg: Config, stage: Stage) -> str:
    """sha256 of the stage's inputs and of the fingerprint of what it consumes."""
    position = ORDER.index(stage)
    if stage == Stage.eval:
        upstream: str | None = stage_fingerprint(cfg, Stage.train)
    elif position > 0:
        upstream = stage_fingerprint(cfg, ORDER[position - 1])
    elif cfg.iter > 1:  # the previous iteration's checkpoint, as recorded when it was trained
        record = read_record(Path(cfg.run.dir) / f"iter{cfg.iter - 1}" / "train")
        upstream = record["fingerprint"] if record else "unfinished"
    else:
        upstream = None
    payload = {
        "stage": stage.value,
        "inputs": stage_inputs(as_tree(cfg), stage),
        "upstream": upstream,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class StageState:
    stage: Stage
    status: str  # "done" | "stale" | "todo"
    changed: list[str] = field(default_factory=list)  # for "stale": the input keys that differ


def state_of(cfg: Config, stage: Stage) -> StageState:
    record = read_record(cfg.stage_dir(stage))
    if record is None:
        return StageState(stage, "todo")
    if record.get("fingerprint") == stage_fingerprint(cfg, stage):
        return StageState(stage, "done")
    return StageState(stage, "stale", changed_inputs(cfg, stage))


def changed_inputs(cfg: Config, stage: Stage) -> list[str]:
    """`key: old -> new` for the inputs that differ from the config the stage last ran with."""
    saved = cfg.stage_dir(stage) / "config.yaml"
    if not saved.is_file():
        return []
    before = flatten(stage_inputs(OmegaConf.to_container(OmegaConf.load(saved)), stage))
    now = flatten(stage_inputs(as_tree(cfg), stage))
    return [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
