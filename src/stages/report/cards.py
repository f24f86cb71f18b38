"""The model card of an iteration's checkpoint: `train/checkpoint/README.md` in the Hugging Face
Hub's format, made with huggingface_hub's `ModelCard` / `ModelCardData`.

The metadata says what the Hub indexes (the real base model, datasets, license, library, tags, and
the eval results as `model-index`); the body says what made the checkpoint: its lineage, the
recipe read from the run's resolved config, the training summary, the eval results with their
intervals, the exact command and the project's version. The train stage writes it; the eval
stage of the same iteration writes it again with its results.

A card is made to be pushed to the Hub, so it shows no local absolute path (`card_value`): a
path under the run root, the repository or the tiny models' folder is shown relative to it, a
copy in the Hub's cache as the repository it is, any other only by its last component.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from statistics import mean

from src.config import REPO_ROOT, Config, PathsConfig, Peft, Stage
from src.core.artifacts import atomic_write_text, files_sha256, read_json
from src.core.errors import Redo, StageError, as_typed
from src.core.fingerprints import read_upstream
from src.core.layout import SAVED_CONFIG, iteration_name
from src.core.policy import CARD
from src.core.records import read_record
from src.core.state import saved_state
from src.evaluation.alpaca_eval import REFERENCE_REPO
from src.evaluation.arena_hard import V01 as ARENA_V01
from src.evaluation.benchmarks import figure
from src.evaluation.leaderboard import V1, shown_scores

# Licenses of the bases this project knows; any other base: "other" (its own card says which)
BASE_LICENSES = {
    "mistralai/Mistral-7B-Instruct-v0.2": "apache-2.0",
    "google/gemma-2-9b-it": "gemma",
}

# A folder of the Hub's download cache: `models--<owner>--<name>` (or datasets--, spaces--)
_HUB_CACHE_FOLDER = re.compile(r"(?:models|datasets|spaces)--(.+)")
# An absolute path (or one from the home directory) inside a text: after a space, `=` (an
# override's value), a quote or an opening bracket or comma (a Hydra list), up to the next
# space, quote, comma or closing bracket. `~` alone is not one: `~key` deletes an override.
_PATH_IN_TEXT = re.compile(r"(?<![^\s=,\[('\"`])(?:/|~/)[^\s,\])'\"`]*")


@dataclass(frozen=True)
class LeaderboardRow:
    """One benchmark's row in a model card's model-index, as the Open LLM Leaderboard's bot
    writes it."""

    dataset_name: str
    dataset_type: str
    few_shot: int
    metric_type: str
    metric_name: str | None  # the bot writes none for TruthfulQA
    dataset_config: str | None = None
    dataset_split: str | None = None


# The rows the leaderboard's bot writes into the cards of the models it evaluated, copied from
# such cards' model-index: v2's six from
# https://huggingface.co/UCLA-AGI/Llama-3-Instruct-8B-SPPO-Iter3/blob/main/README.md (the same
# in UCLA-AGI/Gemma-2-9B-It-SPPO-Iter2's), v1's ARC and TruthfulQA from
# https://huggingface.co/BEE-spoke-data/smol_llama-220M-GQA/blob/main/README.md, which holds
# rows of both versions. Keyed by
# src/evaluation/leaderboard.py's names: v2's (V2) valued by their normalised score, v1's (V1)
# by their raw one in percent, as each version showed them.
LEADERBOARD_ROWS = {
    "ifeval": LeaderboardRow(
        "IFEval (0-Shot)", "HuggingFaceH4/ifeval", 0,
        "inst_level_strict_acc and prompt_level_strict_acc", "strict accuracy",
    ),
    "bbh": LeaderboardRow("BBH (3-Shot)", "BBH", 3, "acc_norm", "normalized accuracy"),
    "math_hard": LeaderboardRow(
        "MATH Lvl 5 (4-Shot)", "hendrycks/competition_math", 4, "exact_match", "exact match"
    ),
    "gpqa": LeaderboardRow("GPQA (0-shot)", "Idavidrein/gpqa", 0, "acc_norm", "acc_norm"),
    "musr": LeaderboardRow("MuSR (0-shot)", "TAUR-Lab/MuSR", 0, "acc_norm", "acc_norm"),
    "mmlu_pro": LeaderboardRow(
        "MMLU-PRO (5-shot)", "TIGER-Lab/MMLU-Pro", 5, "acc", "accuracy", "main", "test"
    ),
    "arc_challenge": LeaderboardRow(
        "AI2 Reasoning Challenge (25-Shot)", "ai2_arc", 25, "acc_norm", "normalized accuracy",
        "ARC-Challenge", "test",
    ),
    "truthfulqa_mc2": LeaderboardRow(
        "TruthfulQA (0-shot)", "truthful_qa", 0, "mc2", None, "multiple_choice", "validation"
    ),
}  # fmt: skip
LEADERBOARD_SOURCE = "Open LLM Leaderboard"
# The bot's source URLs end in ?query=<the model's repository>: this model is on neither
# leaderboard, its figures are this run's, computed as the leaderboard computes them
LEADERBOARD_URLS = {
    "v1": "https://huggingface.co/spaces/HuggingFaceH4/open_llm_leaderboard",
    "v2": "https://huggingface.co/spaces/open-llm-leaderboard/open_llm_leaderboard",
}

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

Iteration {{ iteration }} of {{ method }} {{ optimisation }} of
`{{ base_model }}`{{ source }}, made by selfplay-lab {{ project_version }}.

## Lineage

{{ lineage }}

## Recipe

| setting | value |
|---|---|
{% for key, value in recipe %}| {{ key }} | {{ value }} |
{% endfor %}
{% if notes %}Departures from the published recipe:
{% for note in notes %}
- {{ note }}
{% endfor %}
{% endif %}## Training

| metric | value |
|---|---|
{% for key, value in training %}| {{ key }} | {{ value }} |
{% endfor %}
## Evaluation

{{ evaluation }}

## Reproduce

```bash
{% if pairs %}# training.pairs: the file of sha256 {{ pairs }}
{% endif %}{{ command }}
```
"""


def write_model_card(
    cfg: Config, checkpoint: Path, writing: Path | None = None, trained_now: bool = False
) -> Path:
    """`checkpoint/README.md` from the train stage's metrics.json and config.yaml and the
    eval.json of each eval of the iteration (`evaluations`). `writing`: the eval folder whose
    stage writes the card, its record not yet written; `trained_now`: the train stage writes it,
    and every eval there is of the checkpoint before this one. Returns the card's path."""
    stage_dir = cfg.stage_dir(Stage.train)
    metrics = read_json(stage_dir / "metrics.json", StageError, Redo(Stage.train, cfg.iter))
    evaluated = [] if trained_now else evaluations(cfg, writing)
    return atomic_write_text(
        checkpoint / CARD, model_card(cfg, metrics, evaluated, saved_command(stage_dir))
    )


def evaluations(cfg: Config, writing: Path | None = None) -> list[dict]:
    """The iteration's evals, side by side: the one against the base model first, then each
    against another reference (`eval/vs-<name>`), those finished and made from the checkpoint as
    it is now (an eval of a checkpoint trained again since is left out), and `writing`."""
    base = cfg.layout.stage_dir_in(cfg.iter, Stage.eval)
    found = []
    for folder in [base, *cfg.layout.side_evals(cfg.iter)]:
        report = folder / "eval.json"
        if not report.is_file():
            continue
        if folder != writing:
            state = saved_state(cfg.as_tree(), Stage.eval, folder)
            if read_record(folder) is None:
                continue
            if state is not None and state.status != "done":
                print(f"[card] {folder}: stale ({state.why}), left out of the model card",
                      file=sys.stderr)  # fmt: skip
                continue
        found.append(read_json(report, StageError, Redo(Stage.eval, cfg.iter)))
    return found


def saved_command(stage_dir: Path) -> str:
    """The command that made the stage: the first line of the config.yaml that `python -m
    src.main` saves beside its output (a stage run from Python has none)."""
    saved = stage_dir / SAVED_CONFIG
    if not saved.is_file():
        return "# not recorded: the stage was run from Python, not by python -m src.main"
    return as_typed(saved.read_text().splitlines()[0].removeprefix("# "))


def arena_categories(arena: dict | None) -> list[tuple[str, dict]]:
    """An Arena-Hard result's categories, each with its baseline, the reported one first (a
    result made before each category had its own baseline: its one figure alone)."""
    if not arena:
        return []
    shown = arena.get("category")  # None in a result pooled over its categories
    categories = arena.get("categories") or {}
    first = {**arena, **categories.get(shown, {}), "baseline": arena["baseline"]}
    rest = [(k, c) for k, c in categories.items() if k != shown and "baseline" in c]
    return [(shown, first), *rest]


def arena_rate(figures: dict) -> str:
    """A win rate and its bootstrap interval, in percent, as the card writes them."""
    if figures.get("win_rate") is None:
        return "no win rate (no verdict counted)"
    return (
        f"win rate {100 * figures['win_rate']:.1f} % [{100 * figures['lower']:.1f}, "
        f"{100 * figures['upper']:.1f}] ({round(100 * figures['level'])} % bootstrap interval)"
    )


def model_card(cfg: Config, metrics: dict, evaluations: list[dict], command: str) -> str:
    """The card's text; `evaluations`: eval.json's of the iteration, the one against the base
    model first (none: not evaluated yet)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = cfg.model.path
    is_hub_id = _hub_id(base)
    name = cfg.model_label(cfg.iter)
    eval_prompts = card_value(cfg.data.eval_prompts, cfg.paths) if cfg.data.eval_prompts else None
    shown = [
        # a reference read from a file is labelled by what the file says, which may be a path
        judged_labels(
            e | {key: card_value(e[key], cfg.paths) for key in ("reference", "judge")}, cfg.paths
        )
        for e in evaluations
    ]
    own_pairs = pairs_file(cfg)
    results = []
    for evaluation in shown:  # the benchmarks run by several evals: their rows once
        results += [r for r in eval_results(cfg, evaluation) if r not in results]
    data = ModelCardData(
        model_name=name,
        base_model=base if is_hub_id else None,
        datasets=[cfg.data.prompts] if _hub_id(cfg.data.prompts) and not own_pairs else None,
        license=BASE_LICENSES.get(base, "other"),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["selfplay-lab", cfg.method.name.value, iteration_name(cfg.iter)]
        + ([cfg.training.peft.value] if cfg.training.peft != Peft.none else []),
        eval_results=results or None,
    )
    card = ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        title=name,
        iteration=cfg.iter,
        method=cfg.method.name.value.upper(),
        optimisation="preference optimisation"
        if own_pairs
        else "self-play preference optimisation",
        source=f" on the pairs of `{card_value(cfg.training.pairs, cfg.paths)}`"
        if own_pairs
        else "",
        base_model=base if is_hub_id else cfg.model.name,
        project_version=project_version(),
        lineage=lineage(cfg),
        recipe=recipe(cfg, own_pairs),
        notes=[card_text(" ".join(note.split()), cfg.paths) for note in cfg.notes],
        training=training_summary(metrics),
        evaluation="\n\n".join(evaluation_text(e, eval_prompts) for e in shown)
        or evaluation_text(None),
        command=card_text(command, cfg.paths),
        pairs=own_pairs,
    )
    return str(card)


def eval_results(cfg: Config, evaluation: dict) -> list:
    """The model-index rows of one eval (its reference and judge as the card shows them): the
    win rates against its reference, AlpacaEval 2's row, the benchmarks'."""
    from huggingface_hub import EvalResult

    results = []
    dataset = Path(cfg.data.eval_prompts or "eval").stem
    for metric in ("win_rate", "lc_win_rate"):
        if evaluation[metric] is None:  # no LC below AlpacaEval's 5 folds
            continue
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=metric,
                metric_name=f"{metric} vs {evaluation['reference']} ({evaluation['judge']})",
                metric_value=round(evaluation[metric], 4),
            )
        )
    leaderboard = evaluation.get("alpaca_eval")
    for metric in ("lc_win_rate", "win_rate") if leaderboard else ():
        results.append(  # in percent, as AlpacaEval's leaderboard
            EvalResult(
                task_type="text-generation",
                dataset_type=REFERENCE_REPO,
                dataset_name="AlpacaEval 2",
                metric_type=metric,
                metric_name=f"AlpacaEval 2 {metric} % ({leaderboard['annotator']})",
                metric_value=round(100 * leaderboard[metric], 2),
            )
        )
    return results + benchmark_results(evaluation)


def judged_labels(evaluation: dict, paths: PathsConfig) -> dict:
    """`evaluation` with its judged benchmarks' judge and baseline as a card shows them (a
    served judge's name may be a path)."""
    out = dict(evaluation)
    for benchmark in ("mt_bench", "arena_hard"):
        section = evaluation.get(benchmark)
        if isinstance(section, dict):
            out[benchmark] = section | {
                key: card_value(section[key], paths)
                for key in ("judge", "baseline")
                if isinstance(section.get(key), str)
            }
    return out


def benchmark_results(evaluation: dict) -> list:
    """The model-index rows of eval.benchmarks' results: MT-Bench's and Arena-Hard's, each
    naming its judge in the metric's name and the dataset's args (a score by one judge is
    never shown as another's), and the Open LLM Leaderboard's as its bot writes them. None for
    a benchmark not run or a score that is None, nor the leaderboard's of a run limited to each
    task's first documents."""
    from huggingface_hub import EvalResult

    task = {"task_type": "text-generation", "task_name": "Text Generation"}
    results = []
    mt = evaluation.get("mt_bench")
    for metric, what in (("mt_bench", "score"), ("turn_1", "turn 1"), ("turn_2", "turn 2")):
        if not mt or mt.get(metric) is None:
            continue
        results.append(
            EvalResult(
                **task,
                dataset_type="mt_bench",
                dataset_name="MT-Bench",
                dataset_args={"judge": mt["judge"]},
                metric_type=metric,
                metric_name=f"MT-Bench {what} ({mt['judge']})",
                metric_value=round(mt[metric], 2),
            )
        )
    arena = evaluation.get("arena_hard")
    for category, c in arena_categories(arena):
        if c.get("win_rate") is None:
            continue
        version, baseline, judge = arena["version"], c["baseline"], arena["judge"]
        of = f" {category}" if category and version != ARENA_V01 else ""  # v2.0: each its own
        results.append(  # in percent, as its leaderboard
            EvalResult(
                **task,
                dataset_type="arena_hard",
                dataset_name=f"Arena-Hard-Auto {version}",
                dataset_config=version,
                dataset_args={"judge": judge, "baseline": baseline},
                metric_type="win_rate",
                metric_name=f"Arena-Hard {version}{of} win rate % vs {baseline} ({judge})",
                metric_value=round(100 * c["win_rate"], 2),
            )
        )
    board = evaluation.get("leaderboard")
    if board and not board.get("limit"):
        shown = shown_scores(board)
        for name, row in LEADERBOARD_ROWS.items():
            value = shown.get(name)
            if value is None:
                continue
            results.append(
                EvalResult(
                    **task,
                    dataset_name=row.dataset_name,
                    dataset_type=row.dataset_type,
                    dataset_config=row.dataset_config,
                    dataset_split=row.dataset_split,
                    dataset_args={"num_few_shot": row.few_shot},
                    metric_type=row.metric_type,
                    metric_name=row.metric_name,
                    metric_value=round(value, 2),
                    source_name=LEADERBOARD_SOURCE,
                    source_url=LEADERBOARD_URLS["v1" if name in V1 else "v2"],
                )
            )
    return results


def lineage(cfg: Config) -> str:
    policy, base = (card_value(p, cfg.paths) for p in (cfg.run.init_policy, cfg.model.path))
    if cfg.iter == 1:
        return f"pi_1, trained from the base model `{policy}` (pi_0)."
    return (
        f"pi_{cfg.iter}, trained from iteration {cfg.iter - 1}'s checkpoint `{policy}`, itself "
        f"descended from `{base}`; pi_{cfg.iter - 1} generated the responses and was the "
        "reference model."
    )


def pairs_file(cfg: Config) -> str | None:
    """The sha256 of the pairs file the checkpoint was trained on when it is a file of the
    user's own (training.pairs); None: the pairs stage's, made by self-play."""
    if read_upstream(cfg.as_tree(), Stage.train) is not None:
        return None
    path = Path(cfg.training.pairs).expanduser().resolve()
    return files_sha256([path])[path]


def recipe(cfg: Config, digest: str | None) -> list[tuple[str, object]]:
    """The values that made the checkpoint, as the run's resolved config holds them: on a pairs
    file of the user's own (`digest`, its sha256: `pairs_file`), that file in place of the
    self-play settings, which did not apply."""
    m, g, t, r = cfg.method, cfg.generation, cfg.training, cfg.ranker
    source = [
        ("method.K", m.K),
        ("ranker", f"{r.kind.value}: {card_value(r.model, cfg.paths)}"),
        ("generation", f"temperature {g.temperature:g}, top_p {g.top_p:g}, {g.max_new_tokens} new tokens"),
        ("data.prompts", card_value(cfg.data.prompts, cfg.paths)),
    ] if digest is None else [
        ("training.pairs", f"{card_value(t.pairs, cfg.paths)} (sha256 {digest})"),
    ]  # fmt: skip
    return [
        ("method.loss", m.loss.value),
        ("method.eta / method.beta", f"{m.eta:g} / {m.beta:g}"),
        ("method.wpo_weight", m.wpo_weight),
        *source,
        ("training.optimizer", t.optimizer.value),
        ("training.learning_rate", f"{t.learning_rate:g}"),
        ("training.lr_scheduler", f"{t.lr_scheduler.value}, warm-up {t.warmup_ratio:g}"),
        ("training.global_batch_size", f"{t.global_batch_size} = {t.per_device_batch_size} per device x {cfg.hardware.world_size} x {cfg.gradient_accumulation_steps} accumulation"),
        ("training.num_epochs", f"{t.num_epochs:g}" + (f" (schedule of {t.schedule_epochs:g})" if t.schedule_epochs else "")),
        ("training.max_length / max_prompt_length", f"{t.max_length} / {t.max_prompt_length}"),
        ("training.seed", t.seed),
        ("training.peft", t.peft.value if t.peft == Peft.none else f"{t.peft.value}: rank {t.lora.rank}, alpha {t.lora.alpha:g}, merged"),
    ]  # fmt: skip


def training_summary(metrics: dict) -> list[tuple[str, str]]:
    steps = [e for e in metrics["log_history"] if "loss" in e]
    summary = metrics["summary"]
    rows = [
        ("steps", str(summary.get("steps", len(steps)))),
        ("pairs trained", str(summary.get("pairs_trained", "-"))),
        ("train_loss (mean over steps)", f"{summary['train_loss']:.4f}"),
    ]
    for key in ("rewards/accuracies", "rewards/margins"):
        values = [e[key] for e in steps if key in e]
        if values:
            rows.append((f"{key} (mean; last step)", f"{mean(values):.4f}; {values[-1]:.4f}"))
    return rows


def evaluation_text(evaluation: dict | None, prompts: str | None = None) -> str:
    """The eval section; `prompts`: the eval instructions as the card names them."""
    if evaluation is None:
        return "Not evaluated yet: `eval.enabled=true` or `stage=eval` writes the results here."
    confidence = round(100 * evaluation["confidence"])
    lc = (
        f"length-controlled {evaluation['lc_win_rate']:.3f} "
        f"[{evaluation['lc_win_rate_low']:.3f}, {evaluation['lc_win_rate_high']:.3f}] "
        if evaluation["lc_win_rate"] is not None
        else "no length-controlled rate (fewer instructions than AlpacaEval's 5 folds) "
    )
    text = (
        f"Against `{evaluation['reference']}` on {evaluation['compared']} instructions"
        + (f" of `{prompts}`" if prompts else "")
        + ", judged by "
        f"`{evaluation['judge']}`: win rate {evaluation['win_rate']:.3f} "
        f"[{evaluation['win_rate_low']:.3f}, {evaluation['win_rate_high']:.3f}], "
        f"{lc}({confidence} % bootstrap intervals; length control: AlpacaEval's GLM "
        "`length_controlled_minimal`)."
    )
    leaderboard = evaluation.get("alpaca_eval")
    if leaderboard:
        text += (
            f" AlpacaEval 2 (`{leaderboard['annotator']}`, {leaderboard['n_total']} instructions): "
            f"length-controlled win rate {100 * leaderboard['lc_win_rate']:.2f} %, win rate "
            f"{100 * leaderboard['win_rate']:.2f} % (SE {100 * leaderboard['standard_error']:.2f}), "
            f"average length {leaderboard['avg_length']} characters."
        )
    lines = benchmark_lines(evaluation)
    return "\n\n".join([text, "\n".join(f"- {line}" for line in lines)] if lines else [text])


def of(scored: int | None, asked: int | None) -> str:
    """ "N questions", or "N of M questions scored" where fewer were scored than asked (a record
    made before it held both: the one it holds)."""
    if scored is None or asked is None or scored == asked:
        return f"{asked if scored is None else scored} questions"
    return f"{scored} of {asked} questions scored"


def benchmark_lines(evaluation: dict) -> list[str]:
    """A line per benchmark of eval.benchmarks that ran, each judged one's naming its judge."""
    lines = []
    mt = evaluation.get("mt_bench")
    if mt:
        score = (
            f"{mt['mt_bench']:.2f} (turn 1 {figure(mt['turn_1'], '.2f')}, turn 2 "
            f"{figure(mt['turn_2'], '.2f')}), the mean of {mt['rated']} rated turns"
            if mt["mt_bench"] is not None
            else "no turn rated"
        )
        unrated = f"; {mt['unrated']} judgments without a rating" if mt.get("unrated") else ""
        lines.append(
            f"MT-Bench ({of(mt.get('scored'), mt['questions'])}), judged by "
            f"`{mt['judge']}`: {score}{unrated}."
        )
    arena = evaluation.get("arena_hard")
    if arena:
        unjudged = f"; {arena['unjudged']} games without a verdict" if arena.get("unjudged") else ""
        lines.append(
            f"Arena-Hard-Auto {arena['version']} ({of(arena['questions'], arena.get('asked'))}), "
            "judged by "
            f"`{arena['judge']}` against `{arena['baseline']}`: {arena_rate(arena)}{unjudged}."
        )
        others = [(k, c) for k, c in arena_categories(arena) if k != arena.get("category")]
        for category, c in others:  # v2.0 scores each category on its own, never pooled
            lines.append(f"  {category} ({c['questions']} questions scored) against "
                         f"`{c['baseline']}`: {arena_rate({**c, 'level': arena['level']})}.")  # fmt: skip
    board = evaluation.get("leaderboard")
    if board:
        lines.append(leaderboard_line(board))
    return lines


def leaderboard_line(board: dict) -> str:
    scores = shown_scores(board)
    shown = {
        version: [
            f"{row.dataset_name} {scores[name]:.2f}"
            for name, row in LEADERBOARD_ROWS.items()
            if (name in V1) == (version == "v1") and scores.get(name) is not None
        ]
        for version in ("v2", "v1")
    }
    parts = []
    if shown["v2"]:
        parts.append(
            f"v2 normalised (0-100) average {figure(scores.get('average'), '.2f')} over "
            f"{len(shown['v2'])} benchmarks: {', '.join(shown['v2'])}"
        )
    if shown["v1"]:
        parts.append(f"v1 (raw, in percent): {', '.join(shown['v1'])}")
    line = "Open LLM Leaderboard, by lm-evaluation-harness: " + ("; ".join(parts) or "no score")
    for task, left in (board.get("unscored") or {}).items():
        line += f"; {task} without {left['prompts']} of its {left['of']} prompts ({left['why']})"
    if board.get("limit"):
        line += (
            f"; on each task's first {board['limit']} documents only, a check of the setup, not "
            "the benchmark (the model-index shows none of these)"
        )
    return line + "."


def card_value(value: str, paths: PathsConfig) -> str:
    """`value`, a config value that may be a local path, as a model card shows it: a path under
    `paths.root`, REPO_ROOT or `paths.tiny_dir` (as `tiny/...`) relative to the deepest of them, a
    copy in the Hub's download cache as its repository id, any other absolute path (or one from
    the home directory) as its last component; anything else (a hub id, a name, a relative path)
    as it is. Lexical: it reads no file system, neither does it follow links."""
    if not value.startswith(("/", "~/")):
        return value
    path = PurePosixPath(os.path.normpath(value))
    for part in path.parts:
        cached = _HUB_CACHE_FOLDER.fullmatch(part)
        if cached:
            return cached[1].replace("--", "/")
    anchors = [(paths.root, ""), (str(REPO_ROOT), ""), (paths.tiny_dir, "tiny")]
    folders = [(PurePosixPath(os.path.normpath(a)), label) for a, label in anchors]
    for folder, label in sorted(folders, key=lambda f: -len(f[0].parts)):
        # the file system's root as an anchor would show every path whole
        if len(folder.parts) > 1 and path.is_relative_to(folder):
            shown = PurePosixPath(label, *path.relative_to(folder).parts)
            if shown.parts:  # the anchor itself, unlabelled: a shallower anchor may name it
                return str(shown)
    return path.name or value


def card_text(text: str, paths: PathsConfig) -> str:
    """`text` (a command line, a note) with each absolute path in it shown as `card_value`
    shows it, the rest as it is."""
    return _PATH_IN_TEXT.sub(lambda m: card_value(m[0], paths), text)


def _hub_id(value: str) -> bool:
    """A Hub repository id (org/name), not a local path."""
    return "/" in value and not Path(value).is_absolute() and not Path(value).exists()


def project_version() -> str:
    """The version in pyproject.toml and, in a git checkout, the commit."""
    try:
        release = version("selfplay-lab")
    except PackageNotFoundError:
        release = next(
            line.split('"')[1]
            for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines()
            if line.startswith("version = ")
        )
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return release
    return f"{release} (commit {commit})"
