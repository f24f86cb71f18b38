"""What each stage of an iteration reads that no stage makes: the base policy, the judges, the
prompt splits, the eval files. Declared here once, per stage (`READS`), and read by the listing,
the fetch and the check of `python -m src.assets`, and by the checks `src.main`, `src.slurm` and
`src.sweep` run before any work.

An `Asset` is where a file or a model comes from: a hub repository at a revision (a model, an
llm-blender ranker, a dataset, or some files of a dataset repository), a local file or folder, a
tiny model built on demand, or a checkpoint a stage of the run makes (listed, never fetched). A
`Need` is one read of an asset: by which config key, in which iteration and stage. The eval
stage's benchmarks (`eval.benchmarks`) add the judge it serves (`eval.llm_judge.serve`), the
user's copies of MT-Bench's and Arena-Hard's data (folders nothing fetches), and the dataset
repositories of the leaderboard's lm-eval tasks (found as the stage finds them:
`src.evaluation.leaderboard`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from src.assets.asset import Asset
from src.config import Benchmark, Config, JudgeKind, PromptFormat, RankerConfig, Stage
from src.evaluation.alpaca_eval import GLM_FILES, REFERENCE_FILE, REFERENCE_REPO

# the DeBERTa an llm-blender ranker builds itself on, named in its config.json (`model_name`);
# before the ranker is fetched, the backbone of the one the recipes use is known
KNOWN_BACKBONES = {"llm-blender/PairRM": "microsoft/deberta-v3-large"}


@dataclass(frozen=True)
class Need:
    """One read of an asset: `key` names it in the config, in `stage` of iteration `iteration`."""

    asset: Asset
    key: str
    iteration: int
    stage: Stage


@dataclass
class Listed:
    """An asset with every read of it, merged across the stages and iterations of a command."""

    asset: Asset
    needs: list[Need] = field(default_factory=list)

    def used_by(self) -> str:
        """'data.prompts: iteration 2 generate; model.path: iterations 1-3 eval'"""
        by_key: dict[str, dict[Stage, list[int]]] = {}
        for n in self.needs:
            by_key.setdefault(n.key, {}).setdefault(n.stage, []).append(n.iteration)
        parts = []
        for key, stages in by_key.items():
            uses = [f"{_iterations(its)} {stage.value}" for stage, its in stages.items()]
            parts.append(f"{key}: {', '.join(uses)}")
        return "; ".join(parts)


def _iterations(its: list[int]) -> str:
    its = sorted(set(its))
    if len(its) == 1:
        return f"iteration {its[0]}"
    if its == list(range(its[0], its[-1] + 1)):
        return f"iterations {its[0]}-{its[-1]}"
    return "iterations " + ",".join(map(str, its))


# --- what each stage reads ---------------------------------------------------------------------


def model_asset(cfg: Config, path: str) -> Asset:
    """The policy model at `path`: a checkpoint of this run, or the model (at model.revision)."""
    if path.startswith(cfg.run.dir):
        return Asset("made", path)
    return Asset("model", path, cfg.model.revision)


def prompts_asset(source: str, split: str) -> Asset:
    return Asset("dataset", source, splits=(split,))


def judge_assets(r: RankerConfig, key: str) -> list[tuple[Asset, str]]:
    """A judge: an llm-blender ranker and the backbone it is built on, or a reward model."""
    if r.kind != JudgeKind.pairrm:
        return [(Asset("model", r.model), key)]
    ranker = Asset("ranker", r.model)
    backbone = ranker_backbone(ranker)
    found = [(ranker, key)]
    if backbone is not None:
        found.append((Asset("model", backbone), f"{key} (its backbone)"))
    return found


def ranker_backbone(ranker: Asset, hub_cache: str | None = None) -> str | None:
    """The model an llm-blender ranker is built on: its config.json's `model_name` when the
    ranker is here (a folder, or fetched into the Hub cache), else the known one of its hub id."""
    from src.assets.cache import cached_folder

    folder = Path(ranker.source) if not ranker.on_hub else cached_folder(ranker, hub_cache)
    config = folder / "config.json" if folder is not None else None
    if config is not None and config.is_file():
        try:
            name = json.loads(config.read_text()).get("model_name")
        except (ValueError, AttributeError):
            name = None  # a damaged config: the check names it
        if isinstance(name, str) and name:
            return name
    return KNOWN_BACKBONES.get(ranker.source)


def _policy(cfg: Config) -> list[tuple[Asset, str]]:
    """pi_{t-1}: the model itself (model.path) in iteration 1, else a checkpoint of the run."""
    asset = model_asset(cfg, cfg.run.init_policy)
    return [(asset, "run.init_policy" if asset.kind == "made" else "model.path")]


def _generate(cfg: Config) -> list[tuple[Asset, str]]:
    return [*_policy(cfg), (prompts_asset(cfg.data.prompts, cfg.data.split), "data.prompts")]


def _rank(cfg: Config) -> list[tuple[Asset, str]]:
    found = judge_assets(cfg.ranker, "ranker.model")
    if (
        cfg.ranker.kind == JudgeKind.pairrm
        and cfg.ranker.prompt_format == PromptFormat.chat_template
    ):
        found += _policy(cfg)  # its chat template renders the prompts PairRM reads
    if cfg.data.external_responses:
        found.append((Asset("file", cfg.data.external_responses), "data.external_responses"))
    return found


def _train(cfg: Config) -> list[tuple[Asset, str]]:
    return _policy(cfg)  # pi_{t-1}: the initial weights and the reference


def _eval(cfg: Config) -> list[tuple[Asset, str]]:
    e = cfg.eval
    # pi_t: iteration t's checkpoint; at iteration 0 the base policy itself
    made = [(Asset("made", str(cfg.layout.checkpoint(cfg.iter))), "pi_t")]
    found = _policy(cfg) if cfg.iter == 0 else made
    if cfg.data.eval_prompts:
        found.append(
            (prompts_asset(cfg.data.eval_prompts, cfg.data.eval_split), "data.eval_prompts")
        )
    if e.reference_outputs:
        found.append((Asset("file", e.reference_outputs), "eval.reference_outputs"))
    elif e.reference == "base":
        found.append((model_asset(cfg, cfg.model.path), "eval.reference"))
    elif not re.fullmatch(r"iter\d+", e.reference):
        found.append((Asset("model", e.reference, cfg.model.revision), "eval.reference"))
    judge = e.judge or cfg.ranker
    found += judge_assets(judge, "eval.judge.model" if e.judge else "ranker.model")
    if e.alpaca_eval:
        files = (REFERENCE_FILE, *GLM_FILES)
        found.append((Asset("dataset", REFERENCE_REPO, files=files), "eval.alpaca_eval"))
    return found + _benchmarks(cfg)


def _benchmarks(cfg: Config) -> list[tuple[Asset, str]]:
    """eval.benchmarks': MT-Bench's and Arena-Hard's data (the user's copies, each file the
    stage requires) and the judge the stage serves for them; the dataset repository of each of
    the leaderboard's tasks, whole, fetched into data.leaderboard/<repo id> when set."""
    from src.evaluation import benchmarks, leaderboard

    e = cfg.eval
    found = [
        (Asset("folder", folder, files=files, hint=hint), key)
        for key, (folder, files, hint) in benchmarks.data_folders(cfg).items()
    ]
    if e.llm_judge.serve is not None and any(b in benchmarks.JUDGED for b in e.benchmarks):
        found.append((Asset("model", e.llm_judge.serve), "eval.llm_judge.serve"))
    if Benchmark.leaderboard in e.benchmarks:
        names = leaderboard.lm_eval_names(e.leaderboard_tasks)
        for repo, configs in leaderboard.datasets_read(names).items():
            tasks = tuple(t for ts in configs.values() for t in ts)
            local = leaderboard.copy_folder(repo, cfg.data.leaderboard)
            if local is not None and tiny_data(local, cfg):  # the tiny copy, nothing fetched
                asset = Asset("folder", str(local), hint=f"a tiny copy of {repo}")
            else:
                asset = Asset("dataset", repo, tasks=tasks, local_dir=local and str(local))
            found.append((asset, "eval.leaderboard_tasks"))
    return found


def tiny_data(path: Path, cfg: Config) -> bool:
    """Under paths.tiny_benchmarks: the tiny benchmarks' data, written by the command that reads
    it (src.tiny.on_demand)."""
    tiny = Path(cfg.paths.tiny_benchmarks)
    return path == tiny or tiny in path.parents


# Every stage, with what it reads that no stage of the run makes (pairs reads only the ranks)
READS: dict[Stage, Callable[[Config], list[tuple[Asset, str]]]] = {
    Stage.generate: _generate,
    Stage.rank: _rank,
    Stage.pairs: lambda cfg: [],
    Stage.train: _train,
    Stage.eval: _eval,
}


def needs(cfg: Config, stages: Iterable[Stage] | None = None) -> list[Need]:
    """What `stages` of `cfg`'s iteration read (by default the stages its `stage=` runs)."""
    chosen = cfg.stages() if stages is None else stages
    return [
        Need(asset, key, cfg.iter, stage) for stage in chosen for asset, key in READS[stage](cfg)
    ]


def merged(all_needs: Iterable[Need]) -> list[Listed]:
    """One entry per asset (a dataset's splits and files merged), in the order first read."""
    by_source: dict[tuple[str, str, str | None], Listed] = {}
    for n in all_needs:
        a = n.asset
        key = (a.kind, a.source, a.revision)
        entry = by_source.setdefault(key, Listed(a))
        splits = tuple(dict.fromkeys(entry.asset.splits + a.splits))
        files = tuple(dict.fromkeys(entry.asset.files + a.files))
        tasks = tuple(dict.fromkeys(entry.asset.tasks + a.tasks))
        # a repository read whole by one stage is fetched whole
        whole = not a.files or (entry.needs and not entry.asset.files)
        files = () if whole else files
        entry.asset = replace(a, splits=splits, files=files, tasks=tasks)
        entry.needs.append(n)
    return list(by_source.values())
