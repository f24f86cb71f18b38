"""What an iteration made, as folders a user can hand on or push to the Hub: the model (the
checkpoint with its model card) and the data (every prompt's K responses with the judge's scores,
win matrix and win rates, and the training pairs, as parquet with a dataset card).

Both are read from finished stages only (their done.json), the rows checked against their seals;
a folder appears whole or not at all (assembled beside its place, renamed into it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from src.config import Config, Stage
from src.core.chunks import require_sealed
from src.core.errors import StageError
from src.core.policy import CARD, checkpoint_damage
from src.core.records import read_record
from src.stages.common import redo, stage_rows


class ExportError(StageError):
    """What the export needs is not there; the message says what and where."""


# How each column of the data folder was made (the dataset card's schema)
RANKED_COLUMNS = {
    "prompt_id": "the prompt's id (from the dataset's id column, else a hash of its text)",
    "prompt": "the user's text, without the chat template",
    "responses": "the K responses of pi_{t-1} (and external ones of a hybrid pool)",
    "sources": "per response: policy or external",
    "finish_reasons": "per response: stop (end of turn) or length (max_new_tokens)",
    "num_tokens": "per response: generated tokens",
    "seeds": "per response: the seed that sampled it",
    "scores": "per response: the judge's score (PairRM: mean logit against the others; a reward)",
    "win_matrix": "K x K: P[i][j] = P(response i beats response j) under the judge",
    "win_rate": "per response: p_k, the row mean of the win matrix",
    "judge": "the ranker that scored the row",
    "comparisons": "PairRM only: the raw K x K logits",
}
PAIRS_COLUMNS = {
    "prompt_id": "as in ranked",
    "prompt": "as in ranked",
    "chosen": "the response trained towards",
    "rejected": "the response trained away from",
    "chosen_probs": "P(chosen beats rejected) from the win matrix",
    "chosen_probs_win": "p_w, the chosen response's win rate (SPPO's target)",
    "chosen_probs_lose": "p_l, the rejected response's win rate",
    "chosen_score": "the judge's score of chosen",
    "rejected_score": "the judge's score of rejected",
    "chosen_index": "chosen's index among the prompt's responses",
    "rejected_index": "rejected's index among the prompt's responses",
    "chosen_source": "policy or external",
    "rejected_source": "policy or external",
}


def export_model(cfg: Config, out: Path) -> Path:
    """`out/model/`: iteration t's checkpoint (merged, with its card) and, after LoRA, the adapter
    as `out/model/adapter/`. Files are hard-linked where the file system allows (checkpoints are
    GBs), else copied."""
    train = cfg.stage_dir(Stage.train)
    record = finished(train, f"stage=all iter={cfg.iter}")
    damage = checkpoint_damage(train / "checkpoint", record.get("outputs", {}))
    if damage:
        raise ExportError(f"{train / 'checkpoint'} is damaged ({damage})", redo(cfg, "train"))
    if not (train / "checkpoint" / CARD).is_file():  # trained before cards existed
        from src.export.cards import write_model_card

        write_model_card(cfg, train / "checkpoint")

    def assemble(folder: Path) -> None:
        _link_tree(train / "checkpoint", folder)
        if (train / "adapter").is_dir():
            _link_tree(train / "adapter", folder / "adapter")

    return _whole(out / "model", assemble)


def export_data(cfg: Config, out: Path) -> Path:
    """`out/data/`: ranked.parquet (one row per prompt), pairs.parquet (one per pair) and a
    dataset card (README.md) whose configs name both files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ranked = [row for _, row in stage_rows(cfg, Stage.rank, ExportError)]
    pairs_dir = cfg.stage_dir(Stage.pairs)
    pairs_record = finished(pairs_dir, f"stage=pairs iter={cfg.iter}")
    require_sealed(pairs_dir / "pairs.parquet", ExportError, redo(cfg, "pairs"), pairs_record)
    rank_record = read_record(cfg.stage_dir(Stage.rank))

    def assemble(folder: Path) -> None:
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(ranked), folder / "ranked.parquet")
        shutil.copyfile(pairs_dir / "pairs.parquet", folder / "pairs.parquet")
        (folder / CARD).write_text(
            dataset_card(cfg, len(ranked), rank_record["counts"], pairs_record["counts"])
        )

    return _whole(out / "data", assemble)


def finished(stage_dir: Path, finish: str) -> dict:
    """A stage's record; an unfinished stage is refused, with `finish`, the overrides that make it."""
    record = read_record(stage_dir)
    if record is None:
        raise ExportError(f"{stage_dir} is not finished (no done.json); make it first", finish)
    return record


def dataset_card(cfg: Config, prompts: int, ranking: dict, pairs: dict) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        pretty_name=f"{cfg.model.name} {cfg.method.name.value} {cfg.run_name} iteration {cfg.iter}",
        tags=["selfplay-lab", cfg.method.name.value, f"iter{cfg.iter}", "preference"],
        configs=[
            {"config_name": "ranked", "data_files": "ranked.parquet"},
            {"config_name": "pairs", "data_files": "pairs.parquet"},
        ],
    )
    schema = "\n".join(
        [f"| ranked | `{c}` | {why} |" for c, why in RANKED_COLUMNS.items()]
        + [f"| pairs | `{c}` | {why} |" for c, why in PAIRS_COLUMNS.items()]
    )
    g = cfg.generation
    body = f"""
# {data.pretty_name}

The data of iteration {cfg.iter} of a selfplay-lab run: pi_{cfg.iter - 1} (`{cfg.run.init_policy}`)
answered each prompt of `{cfg.data.prompts}` {cfg.method.K} times (temperature {g.temperature:g},
top_p {g.top_p:g}, up to {g.max_new_tokens} new tokens, one seed per sample); the judge
`{cfg.ranker.name}` ({cfg.ranker.kind.value}: `{cfg.ranker.model}`) scored every response and
every pair of responses; the pairs stage kept one (chosen, rejected) pair per prompt
(`method.pair_selection={cfg.method.pair_selection.value}`), which iteration {cfg.iter}'s training
used.

| counts | |
|---|---|
| prompts ranked (`ranked.parquet` rows) | {prompts} |
| responses dropped as empty | {ranking.get("empty_responses_dropped", 0)} |
| prompts dropped with too few responses | {ranking.get("prompts_dropped_too_few", 0)} |
| prompts whose scores all tie: dropped / kept | {pairs.get("ties_dropped", 0)} / {pairs.get("ties_kept", 0)} |
| pairs (`pairs.parquet` rows) | {pairs["pairs"]} |

```python
from datasets import load_dataset
ranked = load_dataset("parquet", data_files="ranked.parquet")["train"]
pairs = load_dataset("parquet", data_files="pairs.parquet")["train"]
```

| file | column | how it was made |
|---|---|---|
{schema}
"""
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def _whole(folder: Path, assemble) -> Path:
    """`folder` made by `assemble` beside it, then renamed into place (an older one replaced)."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    assemble(partial)
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder


def _link_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        if f.is_file():
            try:
                os.link(f, target / f.name)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(f, target / f.name)


def counts_of(folder: Path) -> dict[str, int]:
    """Rows per parquet file of an exported data folder."""
    import pyarrow.parquet as pq

    return {f.name: pq.read_metadata(f).num_rows for f in sorted(folder.glob("*.parquet"))}
