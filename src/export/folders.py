"""What an iteration made, as folders a user can hand on or push to the Hub: the model (the
checkpoint with its model card) and the data (every prompt's K responses with the judge's scores,
win matrix and win rates, and the training pairs, as parquet with a dataset card).

Both are read from finished stages only (their done.json), each judged, finished and not stale,
before anything is made or locked (`model_folder`, `data_folder`), the rows checked against their
seals as they are read; a folder appears whole or not at all (assembled beside its place, renamed
into it). The model's files are copies, never links: an exported file edited in place leaves the
run's checkpoint as training sealed it.

Export replaces only what it wrote itself: each folder carries a record (MARKER) of the run and
iteration it came from and of every file in it. A folder in the way without one, of another run
or iteration, holding anything the record does not list, or a link or a file, is refused unless
`force` is given.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from src.config import Config, Stage
from src.core.artifacts import atomic_write_json, remove, sync_directory
from src.core.errors import (
    Redo,
    RedoStale,
    StageError,
)
from src.core.fingerprints import read_upstream
from src.core.layout import ADAPTER, iteration_name
from src.core.policy import CARD, checkpoint_damage
from src.core.records import read_record
from src.core.rows import require_sealed
from src.core.state import redo_for, saved_state
from src.stages.common import stage_rows


class ExportError(StageError):
    """What the export needs is not there; the message says what and where."""


class InTheWay(ExportError):
    """Something export did not write is where it would put a folder. Its fix, `--force`, is an
    option of the export's own command, not an override of the pipeline's."""


# The record of where an exported folder came from and what export wrote into it. Hidden, and
# left out of a push: it names the run's local path, which means nothing on the Hub.
MARKER = ".selfplay-export.json"


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


def model_folder(cfg: Config) -> Callable[[Path], None]:
    """What makes `model/`: iteration t's checkpoint (merged, with its card) and, after LoRA, the
    adapter as `model/adapter/`, copied (`_copy_file`: checkpoints are GBs). Its training is
    judged now (`finished`); the checkpoint's bytes, hashed, as the folder is assembled."""
    train, checkpoint = cfg.stage_dir(Stage.train), cfg.layout.checkpoint(cfg.iter)
    record = finished(cfg, Stage.train, f"stage=all iter={cfg.iter}")

    def assemble(folder: Path) -> None:
        damage = checkpoint_damage(checkpoint, record.get("outputs", {}))
        if damage:
            raise ExportError(f"{checkpoint} is damaged ({damage})", Redo(Stage.train, cfg.iter))
        if not (checkpoint / CARD).is_file():  # trained before cards existed
            from src.stages.report.cards import write_model_card

            write_model_card(cfg, checkpoint)
        _copy_tree(checkpoint, folder)
        if (train / ADAPTER).is_dir():
            _copy_tree(train / ADAPTER, folder / ADAPTER)

    return assemble


def data_folder(cfg: Config) -> Callable[[Path], None]:
    """What makes `data/`: ranked.parquet (one row per prompt), pairs.parquet (one per pair) and a
    dataset card (README.md) whose configs name both files. Its rank and pairs stages are judged
    now (`finished`); their rows, checked against their seals, as the folder is assembled."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rank_record = finished(cfg, Stage.rank, f"stage=rank iter={cfg.iter}")
    pairs_record = finished(cfg, Stage.pairs, f"stage=pairs iter={cfg.iter}")
    pairs_dir = cfg.stage_dir(Stage.pairs)

    def assemble(folder: Path) -> None:
        ranked = [row for _, row in stage_rows(cfg, Stage.rank, ExportError)]
        require_sealed(pairs_dir / "pairs.parquet", ExportError, pairs_record)
        pq.write_table(pa.Table.from_pylist(ranked), folder / "ranked.parquet")
        shutil.copyfile(pairs_dir / "pairs.parquet", folder / "pairs.parquet")
        (folder / CARD).write_text(
            dataset_card(cfg, len(ranked), rank_record["counts"], pairs_record["counts"])
        )

    return assemble


# What makes each folder, by its name (`--what`)
FOLDERS = {"model": model_folder, "data": data_folder}


def own_pairs(cfg: Config) -> str | None:
    """training.pairs when iteration t trains on a pairs file of the user's own: its lineage
    has a model and no data (ranked responses, pairs) of its own to export. None: the pairs
    stage's file, which the run made."""
    return cfg.training.pairs if read_upstream(cfg.as_tree(), Stage.train) is None else None


def exported(what: str | None, cfg: Config) -> list[str]:
    """The folders `--what` asks for (None: not given: what the iteration made, the model and
    the data, or the model alone where it trained on a pairs file of the user's own)."""
    pairs = own_pairs(cfg)
    if pairs is None:
        return ["model", "data"] if what in (None, "all") else [what]
    if what in (None, "model"):
        return ["model"]
    raise ExportError(
        f"iteration {cfg.iter} of {cfg.run.dir} trains on training.pairs={pairs}, a file of "
        "your own, not on responses the run ranked and paired: it has no data of its own to "
        "export; --what model exports its model"
    )


def finished(cfg: Config, stage: Stage, finish: str) -> dict:
    """A stage's record: an unfinished stage is refused with `finish`, the overrides that make it,
    and one that no longer matches what it was made from (its own saved config: a file it read
    edited since, say) with the overrides that redo it, or, where an earlier iteration is the
    cause (trained again since), with the lineage's own command that does (`lineage_redo`)."""
    stage_dir = cfg.stage_dir(stage)
    record = read_record(stage_dir)
    if record is None:
        raise ExportError(f"{stage_dir} is not finished (no done.json); make it first", finish)
    state = saved_state(cfg.as_tree(), stage)
    if state is not None and state.status == "stale":
        said = f"{stage_dir} is stale ({state.why}): redo it before exporting it"
        fix = redo_for(state, cfg.iter)
        if isinstance(fix, RedoStale):  # the cause is an earlier iteration's, made with settings
            # the export's overrides need not carry: the lineage's own command redoes it
            raise ExportError(f"{said}; {lineage_redo(cfg)}")
        raise ExportError(said, fix)
    return record


def lineage_redo(cfg: Config) -> str:
    """What makes the first stage of iteration t's lineage that is not intact again, in the
    settings it was made with, as src.status names it (src/status.py's `by_records`); where it
    names none, why."""
    from src.status import by_records

    found = by_records(Path(cfg.run.dir), Path(cfg.paths.root))
    if found.command is None:
        return f"`python -m src.status` names no command: {found.note}"
    return f"run `{found.command}`"


def dataset_card(cfg: Config, prompts: int, ranking: dict, pairs: dict) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    from src.stages.report.cards import card_value  # pushed to the Hub too: no local absolute path

    policy, prompt_source, ranker = (
        card_value(value, cfg.paths)
        for value in (cfg.run.init_policy, cfg.data.prompts, cfg.ranker.model)
    )
    data = DatasetCardData(
        pretty_name=f"{cfg.model.name} {cfg.method.name.value} {cfg.run_name} iteration {cfg.iter}",
        tags=["selfplay-lab", cfg.method.name.value, iteration_name(cfg.iter), "preference"],
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

The data of iteration {cfg.iter} of a selfplay-lab run: pi_{cfg.iter - 1} (`{policy}`)
answered each prompt of `{prompt_source}` {cfg.method.K} times (temperature {g.temperature:g},
top_p {g.top_p:g}, up to {g.max_new_tokens} new tokens, one seed per sample); the judge
`{cfg.ranker.name}` ({cfg.ranker.kind.value}: `{ranker}`) scored every response and
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


def require_replaceable(folder: Path, cfg: Config, force: bool = False) -> None:
    """Refuse `folder`, the `.partial` beside it that it is assembled in and the `.replaced` its
    predecessor is moved aside to, unless each is absent or export's own of this run and
    iteration (`force`: anything goes)."""
    if force:
        return
    origin = _origin(cfg)
    for path, whole in ((_partial(folder), False), (_replaced(folder), False), (folder, True)):
        reason = _not_ours(path, origin, whole)
        if reason:
            raise InTheWay(f"{path} {reason}; nothing was exported, --force replaces it", "--force")


def _origin(cfg: Config) -> dict:
    return {"run": str(Path(cfg.run.dir).resolve()), "iter": cfg.iter}


def _partial(folder: Path) -> Path:
    return folder.with_name(folder.name + ".partial")


def _replaced(folder: Path) -> Path:
    return folder.with_name(folder.name + ".replaced")


def _not_ours(path: Path, origin: dict, whole: bool) -> str | None:
    """Why export may not replace `path`; None when it may. `whole`: a finished folder, whose
    record must list everything in it (a `.partial` is cut short at any point)."""
    if path.is_symlink():
        return (
            f"is a symbolic link (to {os.readlink(path)}), which export neither follows nor removes"
        )
    if not path.exists():
        return None
    if not path.is_dir():
        return "is a file, not a folder export made"
    entries = _entries(path)
    try:
        record = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, or not a record export wrote
        record = None
    if not isinstance(record, dict):  # an empty folder holds nothing to lose
        return f"holds files export did not write ({_some(entries)})" if entries else None
    run, t = record.get("run"), record.get("iter")
    if run != origin["run"]:
        return f"is the export of another run ({run} iteration {t}), not of {origin['run']}"
    if t != origin["iter"]:
        return f"is this run's export of iteration {t}, not of iteration {origin['iter']}"
    unlisted = sorted(set(entries) - set(record.get("files") or ())) if whole else []
    return f"holds files export did not write ({_some(unlisted)})" if unlisted else None


def _entries(folder: Path) -> list[str]:
    """Every file, link and folder under `folder` but the record, relative; links not followed."""
    found = []
    for here, dirs, files in os.walk(folder):
        inside = Path(here).relative_to(folder)
        found += [(inside / name).as_posix() for name in dirs + files]
    return sorted(set(found) - {MARKER})


def _some(names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def assembled(folder: Path, assemble: Callable[[Path], None], cfg: Config, force: bool) -> Path:
    """`folder` made by `assemble` beside it, written to disk, then renamed into place; what
    `require_replaceable` allows in the way is moved aside first and removed after, so that a
    reader finds the earlier folder or the new one, each whole, never one half made or half
    removed. A failure or Ctrl-C leaves no `.partial` behind and the earlier folder in place; what
    a kill leaves (`.partial`, `.replaced`) is removed by the next export of the same run and
    iteration. One export at a time per folder: the caller holds the lock (src.export)."""
    require_replaceable(folder, cfg, force)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial, aside = _partial(folder), _replaced(folder)
    remove(partial)
    remove(aside)
    origin = _origin(cfg)
    partial.mkdir()
    try:
        # claimed before anything goes in: a `.partial` a kill leaves is known as export's own
        atomic_write_json(partial / MARKER, {**origin, "files": []})
        assemble(partial)
        atomic_write_json(partial / MARKER, {**origin, "files": _entries(partial)})
        _sync_tree(partial)  # on disk before its name says it is whole
        if _present(folder):
            folder.rename(aside)  # a link is moved itself, never what it points to
        partial.rename(folder)
        sync_directory(folder.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):  # the failure that stopped the export is the news
            if _present(aside) and not _present(folder):
                aside.rename(folder)  # stopped between the two renames: the earlier one back
            remove(partial)
        if isinstance(err, OSError) and err.filename is None:  # pyarrow's name no file
            said = err.strerror or " ".join(str(err).split())
            raise OSError(err.errno, said, str(folder)) from err
        raise
    remove(aside)
    return folder


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _copy_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        if f.is_file():
            _copy_file(f, target / f.name)


# copy_file_range refused before it copied anything: no such call, or not between these files
_NO_COPY_RANGE = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def _copy_file(source: Path, target: Path) -> None:
    """`source`'s content as the new file `target`, an inode of its own: never a hard link, which
    an edit of the export in place would carry into the run's checkpoint. The kernel copies it
    (`copy_file_range`: a reflink on btrfs and XFS, a server-side copy on NFS 4.2, else a copy
    that never leaves the kernel), else it is streamed in blocks; never read into memory whole."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        if not _copied_in_kernel(src.fileno(), dst.fileno(), size):
            shutil.copyfileobj(src, dst, 1 << 24)
        dst.flush()
        if os.fstat(dst.fileno()).st_size != size:
            raise ExportError(f"{source} changed while it was copied to {target}; export again")


def _copied_in_kernel(src: int, dst: int, size: int) -> bool:
    """Copy `size` bytes of `src` to `dst` with copy_file_range; False, nothing copied, where
    there is none."""
    if not hasattr(os, "copy_file_range"):
        return False
    left = size
    while left > 0:
        try:
            n = os.copy_file_range(src, dst, left)
        except OSError as err:
            if err.errno in _NO_COPY_RANGE and os.lseek(dst, 0, os.SEEK_CUR) == 0:
                return False
            raise
        if n == 0:  # the file ended early (it changed meanwhile): the caller's size check says so
            break
        left -= n
    return True


def _sync_tree(folder: Path) -> None:
    """Every file and folder under `folder` flushed to disk."""
    for here, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(Path(here) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_directory(Path(here))


def counts_of(folder: Path) -> dict[str, int]:
    """Rows per parquet file of an exported data folder."""
    import pyarrow.parquet as pq

    return {f.name: pq.read_metadata(f).num_rows for f in sorted(folder.glob("*.parquet"))}
