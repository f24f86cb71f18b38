"""The chain of checkpoints and pairs in W&B: artifacts that say which iteration made which.

Iteration t's pairs are an artifact of its pairs stage's run (`<lineage>-iter<t>-pairs`, type
`dataset`) and its checkpoint one of its train stage's run (`<lineage>-iter<t>-checkpoint`,
type `model`); the stages that read them use them: iteration t's train uses its pairs and
iteration t-1's checkpoint (its initial weights and reference), iteration t's generate
iteration t-1's checkpoint, its eval its own checkpoint (and iteration s's, with
`eval.reference=iter<s>`). W&B's lineage view then shows iteration 2's checkpoint made from
iteration 1's.

An artifact references its files where the run keeps them (`file://`; nothing is uploaded,
unless `logger.upload_weights=true` for a checkpoint) and holds the stage's record, done.json,
whose seals say what the files were: a stage made again is a new version of its artifact. A
user's run makes the same artifact from the same record, so its use and the producer's log are
one version. Offline, W&B refuses `use_artifact`; the run's file then records the use the way
`use_artifact` records a use of an artifact not yet committed (`use_after_commit`), which
`wandb sync` replays.
"""

from __future__ import annotations

import re

from src.config import Config, Stage
from src.core.layout import RECORD, iteration_name, iteration_number

IN_ARTIFACT = f"record/{RECORD}"  # the stage's record, inside its artifact


def artifact_name(cfg: Config, t: int, what: str) -> str:
    """`<model>-<method>-<run_name>-iter<t>-<what>`, in the characters W&B takes."""
    name = f"{cfg.model_label(t)}-{what}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def stage_artifact(cfg: Config, t: int, stage: Stage):
    """Iteration t's checkpoint (stage train) or pairs (stage pairs) as an artifact, or None
    where that stage has not finished."""
    import wandb

    stage_dir = cfg.layout.stage_dir_in(t, stage)
    record = stage_dir / RECORD
    if not record.is_file():
        return None
    what, kind = ("checkpoint", "model") if stage == Stage.train else ("pairs", "dataset")
    artifact = wandb.Artifact(
        artifact_name(cfg, t, what), type=kind, metadata={"iteration": t, "stage": stage.value}
    )
    made = cfg.layout.checkpoint(t) if stage == Stage.train else stage_dir / "pairs.parquet"
    if stage == Stage.train and cfg.logger.upload_weights:
        artifact.add_dir(str(made), name="checkpoint")
    else:
        artifact.add_reference(made.resolve().as_uri(), checksum=False)
    artifact.add_file(str(record), name=IN_ARTIFACT)
    return artifact


def produced(cfg: Config, stage: Stage) -> list:
    """What `stage` of this iteration makes that the lineage carries on."""
    if stage not in (Stage.train, Stage.pairs):
        return []
    return [a for a in [stage_artifact(cfg, cfg.iter, stage)] if a is not None]


def used(cfg: Config, stage: Stage) -> list:
    """What `stage` of this iteration reads of the lineage's earlier work."""
    t = cfg.iter
    wanted: list[tuple[int, Stage]] = []
    if stage in (Stage.generate, Stage.train) and t > 1:
        wanted.append((t - 1, Stage.train))
    if stage == Stage.train:
        wanted.append((t, Stage.pairs))
    if stage == Stage.eval:
        wanted.append((t, Stage.train))
        earlier = iteration_number(cfg.eval.reference)
        if earlier is not None and cfg.eval.reference_outputs is None:
            wanted.append((earlier, Stage.train))
    artifacts = (stage_artifact(cfg, s, made_by) for s, made_by in wanted)
    return [a for a in artifacts if a is not None]


def log_produced(run, cfg: Config, stage: Stage) -> None:
    for artifact in produced(cfg, stage):
        run.log_artifact(artifact, aliases=["latest", iteration_name(cfg.iter)])


def log_used(run, cfg: Config, stage: Stage) -> None:
    for artifact in used(cfg, stage):
        if run.offline:
            # what use_artifact records for an artifact not yet committed, which it refuses
            # offline: wandb sync commits the artifact (its version, by its digest) and uses it
            run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
        else:
            run.use_artifact(artifact)
