"""The Open LLM Leaderboard run in-process through lm-evaluation-harness, and its normalisation.

The tasks are lm-eval's own (lm-eval 0.4.13): v2's six benchmarks are the `leaderboard` group of
lm_eval/tasks/leaderboard/ (leaderboard_ifeval, leaderboard_bbh (24 subtasks),
leaderboard_math_hard (7), leaderboard_gpqa (3), leaderboard_musr (3), leaderboard_mmlu_pro);
v1's ARC and TruthfulQA are lm_eval/tasks/arc/arc_challenge.yaml (25-shot here, as v1 ran it)
and lm_eval/tasks/truthfulqa/truthfulqa_mc2.yaml. They run through `lm_eval.simple_evaluate`
(lm_eval/evaluator.py) on lm-eval's "hf" model (or "vllm"), with the chat template applied and
the few-shot examples as turns of the conversation, as the leaderboard evaluates chat models
(huggingface/leaderboards, docs/source/en/open_llm_leaderboard/submitting.md: "The chat template
toggle activates automatically for chat models").

The scores are normalised as the leaderboard does
(https://huggingface.co/docs/leaderboards/open_llm_leaderboard/normalization, and about.md of the
same docs for each benchmark's metric and num_choices): a score s with n choices becomes
max(s - 1/n, 0) / (1 - 1/n) * 100, the random baseline 1/n being 0 for generative tasks; BBH and
MuSR normalise each subtask with its own n and average them; GPQA (n = 4), MMLU-Pro (n = 10) and
MATH Lvl 5 (generative) normalise their one score (lm-eval's group score, weighted by the
subtasks' sizes); IFEval is the mean of its prompt-level and instruction-level strict
accuracies; the average is the mean of the six. v1 had no normalisation: its scores stay raw.

Offline, a task's dataset is read from a copy of its Hub repository: `data_dir`/<repo id>/ as
`hf download <repo id> --repo-type dataset --local-dir` makes it, else the Hub cache's snapshot
of the repository (`hf download` without --local-dir), else the datasets cache of an earlier
online load (datasets reads it by the repository's id). `missing_datasets` names what is in none
of them before any model loads.

IFEval checks two of its instructions (length_constraints:number_sentences,
change_case:capital_word_frequency) with NLTK's punkt_tab tokenizer, which lm-eval tries to
download when it imports them and which an offline machine may lack: those prompts are then
left out of the run, named and counted in the result's "unscored", never a crash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import logging
import random
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from statistics import fmean

from src.core.artifacts import atomic_write_text, folder_files, read_jsonl
from src.core.errors import EnvironmentFailure
from src.core.hub import datasets_config, snapshot_folder
from src.evaluation.errors import EvalError

V2 = ("ifeval", "bbh", "math_hard", "gpqa", "musr", "mmlu_pro")
PREFIX = "leaderboard_"  # lm-eval's names of v2's benchmarks: leaderboard_<name>
GROUP = "leaderboard"  # lm-eval's group of the six
V1 = {"arc_challenge": "acc_norm", "truthfulqa_mc2": "acc"}  # task -> its v1 metric (mc2 is acc)
V1_FEWSHOT = {"arc_challenge": 25}  # TruthfulQA's six examples are in its prompt (0-shot)
TASK_DIRS = ("leaderboard", "arc", "truthfulqa")  # the folders of lm_eval/tasks/ these come from
RESULTS_FILE = "lm_eval_results.json"

# about.md's num_choices (BBH's equal len(doc_to_choice) of lm-eval's bbh_mc/*.yaml;
# object_counting's 19 counts a "0" answer the task added)
BBH_CHOICES = {
    f"leaderboard_bbh_{name}": n
    for name, n in {
        "boolean_expressions": 2,
        "causal_judgement": 2,
        "date_understanding": 6,
        "disambiguation_qa": 3,
        "formal_fallacies": 2,
        "geometric_shapes": 11,
        "hyperbaton": 2,
        "logical_deduction_five_objects": 5,
        "logical_deduction_seven_objects": 7,
        "logical_deduction_three_objects": 3,
        "movie_recommendation": 6,
        "navigate": 2,
        "object_counting": 19,
        "penguins_in_a_table": 5,
        "reasoning_about_colored_objects": 18,
        "ruin_names": 6,
        "salient_translation_error_detection": 6,
        "snarks": 2,
        "sports_understanding": 2,
        "temporal_sequences": 4,
        "tracking_shuffled_objects_five_objects": 5,
        "tracking_shuffled_objects_seven_objects": 7,
        "tracking_shuffled_objects_three_objects": 3,
        "web_of_lies": 2,
    }.items()
}
MUSR_CHOICES = {
    "leaderboard_musr_murder_mysteries": 2,
    "leaderboard_musr_object_placements": 5,
    "leaderboard_musr_team_allocation": 3,
}
GPQA_SUBTASKS = tuple(f"leaderboard_gpqa_{s}" for s in ("diamond", "extended", "main"))
MATH_SUBTASKS = tuple(
    f"leaderboard_math_{s}_hard"
    for s in (
        "algebra",
        "counting_and_prob",
        "geometry",
        "intermediate_algebra",
        "num_theory",
        "prealgebra",
        "precalculus",
    )
)


@dataclass(frozen=True)
class Benchmark:
    """One of v2's six as the leaderboard scores it from lm-eval's results."""

    task: str  # lm-eval's task, or group of `subtasks`
    metrics: tuple[str, ...]  # the score is their mean (lm-eval's filter "none")
    choices: int | Mapping[str, int]  # num_choices (0: generative), or each subtask's
    subtasks: tuple[str, ...] = ()


BENCHMARKS = {
    "ifeval": Benchmark(
        "leaderboard_ifeval", ("prompt_level_strict_acc", "inst_level_strict_acc"), 0
    ),
    "bbh": Benchmark("leaderboard_bbh", ("acc_norm",), BBH_CHOICES, tuple(BBH_CHOICES)),
    "math_hard": Benchmark("leaderboard_math_hard", ("exact_match",), 0, MATH_SUBTASKS),
    "gpqa": Benchmark("leaderboard_gpqa", ("acc_norm",), 4, GPQA_SUBTASKS),
    "musr": Benchmark("leaderboard_musr", ("acc_norm",), MUSR_CHOICES, tuple(MUSR_CHOICES)),
    "mmlu_pro": Benchmark("leaderboard_mmlu_pro", ("acc",), 10),
}

# IFEval's prompts: a response that every instruction's check can read, to find the checks
# that need NLTK data this machine lacks
PROBE = "A first sentence. A second one."
PUNKT = "tokenizers/punkt_tab/english/"  # what nltk's sentence and word tokenizers load


# --- normalisation ------------------------------------------------------------------------------


def normalise(results: Mapping[str, Mapping]) -> dict[str, float]:
    """lm-eval's `results` (task -> metrics) -> {benchmark: normalised score, 0-100, ...,
    "average": their mean}, for the benchmarks of V2 whose tasks are in `results`."""
    out = {}
    for name, bench in BENCHMARKS.items():
        if isinstance(bench.choices, Mapping):
            present = [t for t in bench.subtasks if t in results]
            if present:
                out[name] = fmean(
                    scaled(_score(results, t, bench.metrics), bench.choices[t]) for t in present
                )
        elif (raw := _raw(results, bench)) is not None:
            out[name] = scaled(raw, bench.choices)
    if out:
        out["average"] = fmean(out.values())
    return out


def raw_scores(results: Mapping[str, Mapping]) -> dict[str, float]:
    """{benchmark: the score the leaderboard normalises, a fraction} for V2's benchmarks and v1's
    tasks in `results`: lm-eval's group score (weighted by the subtasks' sizes), or, when only
    some subtasks ran, their mean; IFEval's mean of its two strict accuracies."""
    out = {
        name: raw for name, bench in BENCHMARKS.items() if (raw := _raw(results, bench)) is not None
    }
    out |= {
        task: _score(results, task, (metric,)) for task, metric in V1.items() if task in results
    }
    return out


def shown_scores(result: Mapping) -> dict[str, float]:
    """The figures of a run's result (`run_leaderboard`'s: "raw", "normalised") as the
    leaderboards showed them, 0-100: v2's benchmarks normalised, with their "average"; v1's tasks
    raw, in percent (v1 had no normalisation). What the model card and W&B carry."""
    raw = result.get("raw") or {}
    return {**(result.get("normalised") or {}), **{t: 100 * raw[t] for t in V1 if t in raw}}


def scaled(score: float, choices: int) -> float:
    """The leaderboard's normalize_within_range(score, 1/choices, 1) * 100, 0 below the random
    baseline 1/choices (0 for a generative task, choices = 0)."""
    baseline = 1 / choices if choices else 0.0
    return max(score - baseline, 0.0) / (1 - baseline) * 100


def _raw(results: Mapping[str, Mapping], bench: Benchmark) -> float | None:
    rows = [bench.task] if bench.task in results else [t for t in bench.subtasks if t in results]
    return fmean(_score(results, t, bench.metrics) for t in rows) if rows else None


def _score(results: Mapping[str, Mapping], task: str, metrics: Iterable[str]) -> float:
    row = results[task]
    missing = [m for m in metrics if f"{m},none" not in row]
    if missing:
        raise EvalError(f"lm-eval results: {task} has no {', '.join(f'{m},none' for m in missing)}")
    return fmean(float(row[f"{m},none"]) for m in metrics)


# --- tasks and their datasets -------------------------------------------------------------------


@lru_cache(maxsize=1)
def _stock_index() -> tuple[dict, frozenset[str]]:
    """lm-eval's entries of TASK_DIRS (name -> Entry: its YAML with includes merged) and which of
    them are groups; indexed alone, these folders take milliseconds where all tasks take
    seconds."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False, include_path=_task_dirs())
    return manager.task_index, frozenset(manager.all_groups)


def _task_dirs() -> list[str]:
    import lm_eval.tasks

    return [str(Path(lm_eval.tasks.__file__).parent / d) for d in TASK_DIRS]


def lm_eval_names(tasks: Iterable[str]) -> list[str]:
    """`tasks` as lm-eval names them: V2's names become leaderboard_<name>; "leaderboard", v1's
    tasks and lm-eval's leaderboard subtasks stay."""
    index, _ = _stock_index()
    tasks = list(tasks)
    names = [PREFIX + t if t in V2 else t for t in tasks]
    unknown = [
        t for t, n in zip(tasks, names, strict=True) if n not in index or not _is_leaderboard(n)
    ]
    if unknown:
        raise EvalError(
            f"eval.leaderboard_tasks: unknown {', '.join(map(repr, unknown))}; choose among "
            f"{GROUP}, {', '.join(V2)}, {', '.join(V1)} or a leaderboard_* subtask of lm-eval"
        )
    leaves = [leaf for name in names for leaf in _leaves(name)]
    twice = sorted({leaf for leaf in leaves if leaves.count(leaf) > 1})
    if twice:  # lm-eval refuses them only once the model is loaded
        raise EvalError(f"eval.leaderboard_tasks: {', '.join(twice)} asked for more than once")
    return names


def _is_leaderboard(name: str) -> bool:
    return name == GROUP or name.startswith(PREFIX) or name in V1


def _leaves(name: str) -> list[str]:
    index, groups = _stock_index()
    if name not in groups:
        return [name]
    return [leaf for child in index[name].cfg["task"] for leaf in _leaves(child)]


def _all_leaves(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(leaf for name in names for leaf in _leaves(name)))


def datasets_read(names: Iterable[str]) -> dict[str, dict[str | None, list[str]]]:
    """{repo id: {config (None: the default): [lm-eval task, ...]}} of the tasks `names` and
    their subtasks, from lm-eval's YAMLs."""
    index, _ = _stock_index()
    out: dict[str, dict[str | None, list[str]]] = {}
    for leaf in _all_leaves(names):
        cfg = index[leaf].cfg
        out.setdefault(cfg["dataset_path"], {}).setdefault(cfg.get("dataset_name"), []).append(leaf)
    return out


def copy_folder(repo: str, data_dir: str | Path | None) -> Path | None:
    """Where `data_dir` holds its copy of dataset repository `repo`: <data_dir>/<repo id>, the
    layout `hf download --local-dir` makes (None: no data_dir)."""
    return Path(data_dir) / repo if data_dir is not None else None


def local_copy(
    repo: str,
    configs: Mapping[str | None, list[str]],
    data_dir: str | Path | None,
    hub_cache: str | None = None,
) -> Path | None:
    """The folder holding a copy of dataset repository `repo` with each config of `configs`
    (config -> the tasks reading it) and the splits those read: `data_dir`/`repo`, else the Hub
    cache's snapshot of it (`hub_cache`, default huggingface_hub's); None: neither."""
    candidates = [copy_folder(repo, data_dir), snapshot_folder(repo, "dataset", None, hub_cache)]
    for folder in candidates:
        if folder is None or not folder.is_dir():
            continue
        if not any(_lacks(folder, config, _splits(tasks)) for config, tasks in configs.items()):
            return folder
    return None


def _lacks(folder: Path, config: str | None, splits: set[str]) -> str | None:
    """What the dataset copy `folder` lacks of `config` with `splits` (its README's configs, or
    the layout of its files: what datasets would load); None: nothing."""
    from datasets import load_dataset_builder

    datasets_config()
    try:
        files = load_dataset_builder(str(folder), config).config.data_files or {}
    except Exception as err:  # no such config, no data files, a README not YAML: no copy
        return f"config {config or 'default'} cannot be read ({_said(err)})"
    missing = sorted(splits - {str(split) for split in files})
    return f"config {config or 'default'} has no split {missing[0]}" if missing else None


def _splits(tasks: Iterable[str]) -> set[str]:
    index, _ = _stock_index()
    keys = ("training_split", "validation_split", "test_split", "fewshot_split")
    return {split for t in tasks for k in keys if (split := index[t].cfg.get(k))}


def in_datasets_cache(repo: str, configs: Iterable[str | None]) -> bool:
    """Whether an earlier online load left every config of `configs` of `repo` in the datasets
    cache, where datasets reads it offline by the repo's id (datasets/load.py,
    CachedDatasetModuleFactory: <cache>/<namespace>___<name>/<config>/<version>/<hash>/)."""
    from datasets.naming import camelcase_to_snakecase

    config = datasets_config()
    namespace, _, name = repo.rpartition("/")
    root = Path(config.HF_DATASETS_CACHE) / "___".join(
        filter(None, [namespace, camelcase_to_snakecase(name)])
    )
    return all(any(root.glob(f"{c or 'default'}/*/*/dataset_info.json")) for c in configs)


def absent(
    repo: str,
    configs: Mapping[str | None, list[str]],
    data_dir: str | Path | None,
    hub_cache: str | None = None,
) -> str | None:
    """Where dataset repository `repo` (config -> the tasks reading it) was looked for and not
    found whole: neither in `data_dir`'s copy nor in the Hugging Face caches (Hub, datasets);
    None: found, and read from there offline."""
    if local_copy(repo, configs, data_dir, hub_cache) is not None:
        return None
    if in_datasets_cache(repo, configs):
        return None
    if data_dir is None:
        return "not in the Hugging Face caches"
    copy = copy_folder(repo, data_dir)
    lacks = copy.is_dir() and next(
        filter(None, (_lacks(copy, c, _splits(tasks)) for c, tasks in configs.items())), None
    )
    if lacks:  # there, but not what the tasks read
        return f"in {copy}, whose {lacks}, and not in the Hugging Face caches"
    return f"neither in {copy} nor in the Hugging Face caches"


def missing_datasets(
    tasks: Iterable[str], data_dir: str | Path | None, hub_cache: str | None = None
) -> list[str]:
    """One line per dataset repository the tasks read that is neither in `data_dir` nor in the
    Hugging Face caches (Hub, datasets), each with the command that fetches it."""
    lines = []
    for repo, configs in datasets_read(lm_eval_names(tasks)).items():
        where = absent(repo, configs, data_dir, hub_cache)
        if where is not None:
            readers = [t for ts in configs.values() for t in ts]
            more = f" and {len(readers) - 1} more" if len(readers) > 1 else ""
            lines.append(
                f"the dataset {repo} (read by {readers[0]}{more}) is {where}: fetch it with "
                f"`{fetch_command(repo, data_dir)}`"
            )
    return lines


def fetch_command(repo: str, data_dir: str | Path | None) -> str:
    local = f" --local-dir {copy_folder(repo, data_dir)}" if data_dir is not None else ""
    return f"hf download {repo} --repo-type dataset{local}"


# --- the run ------------------------------------------------------------------------------------


def run_leaderboard(
    model_path: str,
    tasks: list[str],
    *,
    data_dir: str | Path | None,
    chat_template: bool = True,
    limit: int | None = None,
    batch_size: int | str = 1,
    dtype: str | None = None,
    output: Path,
    backend: str = "hf",
    device: str | None = None,
    max_gen_toks: int | None = None,
    seed: int = 0,
) -> dict:
    """The leaderboard's `tasks` on the model at `model_path`, in this process.

    `backend`: lm-eval's "hf" or "vllm"; `device`: "cuda" when torch sees a GPU, else "cpu";
    `dtype`: bfloat16 on a GPU that computes in it, else float32; `limit`: the first `limit`
    documents of each task (a check, not the benchmark); `max_gen_toks`: a cap on the generative
    tasks' answers (the leaderboard's: IFEval 1280 tokens, MATH 1024); `seed`: what the tasks'
    documents are drawn with (GPQA's order of choices: `seeded_documents`). lm-eval's results
    are written to `output`/RESULTS_FILE. Returns {"raw": raw_scores, "normalised": normalise,
    "unscored": {task: what could not be scored here}}."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    names = lm_eval_names(tasks)
    model_args, device = _model_args(backend, model_path, dtype, device)
    with seeded_documents(seed), prepared(names, data_dir) as (manager, loaded):
        unscored = {}
        for built in loaded.values():
            if (ifeval := built["tasks"].get(BENCHMARKS["ifeval"].task)) is not None:
                unscored |= _leave_out_unscorable_ifeval(ifeval)
        tracker = EvaluationTracker()  # records the chat template and how the shots were given
        with lm_eval_said_once():
            evaluated = lm_eval.simple_evaluate(
                model=backend,
                model_args=model_args,
                tasks=[
                    b["groups"][n] if n in b["groups"] else b["tasks"][n] for n, b in loaded.items()
                ],
                task_manager=manager,
                batch_size=batch_size,
                device=device,
                limit=limit,
                apply_chat_template=chat_template,
                fewshot_as_multiturn=chat_template,
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
                log_samples=False,
                evaluation_tracker=tracker,
            )
    from lm_eval.utils import handle_non_serializable

    # what lm-eval's own results file holds (EvaluationTracker.save_results_aggregated)
    tracker.general_config_tracker.log_end_time()
    evaluated |= asdict(tracker.general_config_tracker)
    text = json.dumps(evaluated, indent=2, default=handle_non_serializable, ensure_ascii=False)
    atomic_write_text(Path(output) / RESULTS_FILE, text + "\n")
    results = evaluated["results"]
    return {"raw": raw_scores(results), "normalised": normalise(results), "unscored": unscored}


class _Dropped(logging.Filter):
    """A logger's records whose message begins as `pattern` says, dropped and counted."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern, self.count = re.compile(pattern), 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern.match(record.getMessage()):
            self.count += 1
            return False
        return True


@contextlib.contextmanager
def lm_eval_said_once() -> Iterator[None]:
    """lm-eval's warnings that every leaderboard run meets, said once or not at all: the
    leaderboard group's note of each metric that most of its tasks lack (its benchmarks score
    different metrics, each read from its own task: seven lines a run); and a note for each
    prompt that the policy's chat template refused its system turn, which lm-eval then leaves
    out (the task's description: Mistral's template takes none), said here once, counted.
    lm-eval's other warnings are left as they are."""
    template = _Dropped(r"Failed to apply chat template\. removing the system role")
    drops = {
        "lm_eval.models.huggingface": template,
        "lm_eval.models.vllm_causallms": template,
        "lm_eval.api.group": _Dropped(r"Group '.*': metric '.*' is missing in \d+/\d+ tasks"),
    }
    for name, dropped in drops.items():
        logging.getLogger(name).addFilter(dropped)
    try:
        yield
    finally:
        for name, dropped in drops.items():
            logging.getLogger(name).removeFilter(dropped)
        if template.count:
            print(
                "[leaderboard] the chat template takes no system turn: lm-eval left the task's "
                f"description out of {template.count} prompts",
                file=sys.stderr,
            )


@contextlib.contextmanager
def seeded_documents(seed: int) -> Iterator[None]:
    """lm-eval's tasks read their documents (each time they are asked for them: test_docs,
    validation_docs, training_docs, fewshot_docs) with Python's `random` seeded with `seed`, and
    never from the datasets cache. GPQA's process_docs shuffles each question's four choices with
    the unseeded global `random` (lm_eval/tasks/leaderboard/gpqa/utils.py), and datasets keeps
    the first shuffle a machine drew in its cache, under a key the seed is no part of: the
    letter of each right answer, and GPQA's score, were whatever that first load drew. Seeded at
    each read (with the task's name: GPQA's three subtasks are not shuffled alike), every read
    is the same documents (the requests built and the answers scored among them), and the same
    seed the same figures; `random` is left as it was found."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    reads = {
        name: ConfigurableTask.__dict__[name]
        for name in ("training_docs", "validation_docs", "test_docs", "fewshot_docs")
    }

    def seeded(read):
        @functools.wraps(read)
        def documents(task):
            state, caching = random.getstate(), datasets.is_caching_enabled()
            random.seed(f"{seed}/{task.config.task}")  # a str seeds alike in every process
            datasets.disable_caching()
            try:
                return read(task)
            finally:
                random.setstate(state)
                if caching:
                    datasets.enable_caching()

        return documents

    for name, read in reads.items():
        setattr(ConfigurableTask, name, seeded(read))
    try:
        yield
    finally:
        for name, read in reads.items():
            setattr(ConfigurableTask, name, read)


@contextlib.contextmanager
def prepared(names: list[str], data_dir: str | Path | None) -> Iterator[tuple[object, dict]]:
    """lm-eval's TaskManager and the tasks `names` it built ({name: TaskManager.load's dict}),
    over their datasets' copies, each copy loaded whole (`require_loadable`) and every document
    read as its task reads it (`require_readable`): what a run evaluates, checked before any
    model loads."""
    folders = dataset_folders(names, data_dir)
    caches = {
        repo: require_loadable(repo, folder, names, data_dir) for repo, folder in folders.items()
    }
    index, _ = _stock_index()
    with tempfile.TemporaryDirectory(prefix="leaderboard-tasks-") as overrides:
        manager = _task_manager(names, folders, caches, Path(overrides))
        loaded = {}
        for name in names:
            try:
                with nltk_never_downloads():
                    loaded[name] = manager.load(name)
            except Exception as err:  # lm-eval reads a first document as it builds a task
                leaf = next((t for t in _leaves(name) if _unbuildable(manager, t)), name)
                repo = index[leaf].cfg["dataset_path"]
                where, fetch = _copy_named(repo, folders.get(repo), data_dir, leaf)
                raise EvalError(
                    f"{where}: {leaf} cannot be built from it ({_said(err)}); fetch it again: "
                    f"`{fetch}`"
                ) from None
        for built in loaded.values():
            for leaf, task in built["tasks"].items():
                repo = index[leaf].cfg["dataset_path"]
                require_readable(task, *_copy_named(repo, folders.get(repo), data_dir, leaf))
        yield manager, loaded


def verify(tasks: Iterable[str], data_dir: str | Path | None) -> None:
    """The leaderboard's `tasks` built over their datasets as a run builds them, and every
    document read as each task reads it: a copy the run would stop on is refused now, in one
    line (src.assets check --verify; the eval stage before its first answer)."""
    with prepared(lm_eval_names(tasks), data_dir):
        pass


def _unbuildable(manager, leaf: str) -> bool:
    try:
        manager.load(leaf)
    except Exception:
        return True
    return False


def _copy_named(
    repo: str, folder: Path | None, data_dir: str | Path | None, task: str
) -> tuple[str, str]:
    """What a message calls the copy of `repo` a task reads (its folder, else the datasets
    cache), and the command that fetches it again."""
    if folder is None:
        return f"the dataset {repo} in the datasets cache (read by {task})", fetch_command(
            repo, None
        )
    ours = data_dir is not None and folder == copy_folder(repo, data_dir)
    return (
        f"the leaderboard's copy of {repo} ({folder}, read by {task})",
        fetch_command(repo, data_dir if ours else None),
    )


def _said(err: BaseException) -> str:
    said = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {said}" if said else type(err).__name__


class _Reading(dict):
    """A document that records the columns a function of the task reads from it."""

    def __init__(self, doc: Mapping) -> None:
        super().__init__(doc)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def _template_columns(task, template: object) -> set[str]:
    """The columns a task's doc_to_* value reads: a column's name, or those a Jinja template
    names (a function's are recorded as it runs: `_Reading`)."""
    if not isinstance(template, str):
        return set()
    if template in (task.features or ()):
        return {template}
    from jinja2 import meta
    from lm_eval.utils import env

    return set(meta.find_undeclared_variables(env.parse(template)))


def require_readable(task, where: str, fetch: str) -> None:
    """Every document `task` evaluates and takes its shots from, read as lm-eval reads it (its
    prompt, target and choices): a row that lacks a column the task reads, or holds none in
    it, is one line naming the copy, the split and the row, before any model loads. (lm-eval
    reads a missing column as None from a row of JSON Lines whose others have it, and would
    score that row's prompt "None" without a word; or stop mid-run with a traceback.)"""
    c = task.config
    readers = [task.doc_to_text, task.doc_to_target]
    if c.doc_to_choice is not None:
        readers.append(task.doc_to_choice)
    named = set().union(*(_template_columns(task, t) for t in (c.doc_to_text, c.doc_to_target,
                                                                c.doc_to_choice)))  # fmt: skip
    splits = [(c.test_split or c.validation_split, task.eval_docs)]
    if c.fewshot_split and c.fewshot_split != splits[0][0]:
        splits.append((c.fewshot_split, task.fewshot_docs()))
    for split, docs in splits:
        for row, doc in enumerate(docs or (), start=1):
            reading = _Reading(doc)
            try:
                for read in readers:
                    read(reading)
            except Exception as err:
                problem = _said(err)
            else:
                # a column of the copy empty in this row (one never there is the task's to miss)
                empty = sorted(k for k in named | reading.read if k in doc and doc[k] is None)
                if not empty:
                    continue
                problem = f"no {empty[0]!r}"
            raise EvalError(
                f"{where}: {split} row {row} cannot be read as {c.task} reads it ({problem}); "
                f"fetch it again: `{fetch}`"
            )


def dataset_folders(names: list[str], data_dir: str | Path | None) -> dict[str, Path]:
    """{repo id: its local copy} of the datasets the tasks read; offline, a dataset in neither a
    local copy nor the datasets cache ends the run (one line, exit 3) before any model loads."""
    config = datasets_config()
    if config.HF_HUB_OFFLINE and (missing := missing_datasets(names, data_dir)):
        raise EnvironmentFailure(
            f"{len(missing)} of the leaderboard's datasets: " + "; ".join(missing)
        )
    read = datasets_read(names).items()
    found = {repo: local_copy(repo, configs, data_dir) for repo, configs in read}
    return {repo: folder for repo, folder in found.items() if folder is not None}


def _model_args(
    backend: str, model_path: str, dtype: str | None, device: str | None
) -> tuple[dict, str | None]:
    """lm-eval's model_args for `backend` and the device to pass (vLLM places itself)."""
    import torch

    if backend not in ("hf", "vllm"):
        raise EvalError(f"leaderboard backend {backend!r}: choose hf or vllm")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise EnvironmentFailure(
            "the leaderboard's vllm backend needs vLLM, which is not installed here"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        from src.core.devices import gpu_computes_bf16

        dtype = "bfloat16" if device.startswith("cuda") and gpu_computes_bf16() else "float32"
    return {"pretrained": model_path, "dtype": dtype}, (device if backend == "hf" else None)


def copy_cache(folder: Path) -> Path:
    """The datasets cache of a local copy, keyed by its content: datasets keys the Arrow tables
    it builds from a folder by the folder's name, so a copy corrected, cut or replaced since an
    earlier load was read back from that load's tables. Every file but hidden ones (the
    `.cache/` that `hf download --local-dir` keeps) enters the key."""
    config = datasets_config()
    digest = hashlib.sha256()
    for path in folder_files(folder):
        relative = path.relative_to(folder)
        digest.update(f"{relative.as_posix()}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return Path(config.HF_DATASETS_CACHE) / "copies" / f"{folder.name}-{digest.hexdigest()[:16]}"


def require_loadable(
    repo: str, folder: Path, names: list[str], data_dir: str | Path | None
) -> Path:
    """Each config of `repo` the tasks read, loaded from its copy `folder` into the copy's own
    cache (returned) before any model loads; a damaged copy is one line naming the dataset, the
    file (and line) and the task: a JSON row cut short (which datasets drops without a word), a
    README whose configs are not YAML, a split with no data, bytes that are not UTF-8."""
    from datasets import load_dataset

    cache = copy_cache(folder)
    configs = datasets_read(names)[repo]
    _, fetch = _copy_named(repo, folder, data_dir, "")
    readers = next(iter(configs.values()))
    for path in folder_files(folder, "*.jsonl"):  # a row cut short, which datasets drops
        try:
            for _ in read_jsonl(path, EvalError):
                pass
        except EvalError as err:
            raise EvalError(
                f"the leaderboard's copy of {repo} (read by {readers[0]}): {err}; fetch it "
                f"again: `{fetch}`"
            ) from None
    for config, tasks in configs.items():
        where, _ = _copy_named(repo, folder, data_dir, tasks[0])
        try:
            load_dataset(str(folder), config, cache_dir=str(cache))
        except Exception as err:  # datasets' many errors, each said in one line
            raise EvalError(
                f"{where}: config {config or 'default'} cannot be loaded ({_said(err)}); fetch "
                f"it again: `{fetch}`"
            ) from None
    return cache


def _task_manager(
    names: list[str], folders: Mapping[str, Path], caches: Mapping[str, Path], overrides: Path
):
    """lm-eval's TaskManager of TASK_DIRS, each task that reads a local copy of its dataset (or
    runs v1's few-shot) overridden by a YAML in `overrides` that includes lm-eval's own and
    changes only that (a copy read into `caches`' folder for it): lm-eval indexes a later
    folder's task in place of the stock one."""
    from lm_eval.tasks import TaskManager

    index, _ = _stock_index()
    for leaf in _all_leaves(names):
        entry = index[leaf]
        changes = {}
        if (folder := folders.get(entry.cfg["dataset_path"])) is not None:
            changes["dataset_path"] = str(folder)
            kwargs = entry.cfg.get("dataset_kwargs") or {}
            changes["dataset_kwargs"] = {
                **kwargs,
                "cache_dir": str(caches[entry.cfg["dataset_path"]]),
            }
        if leaf in V1_FEWSHOT:
            changes["num_fewshot"] = V1_FEWSHOT[leaf]
        if changes:
            lines = [f"include: {json.dumps(str(entry.yaml_path))}", f"task: {leaf}"]
            lines += [f"{key}: {json.dumps(value)}" for key, value in changes.items()]
            (overrides / f"{leaf}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # each override replaces its stock task on purpose: no warning for each
    index_log = logging.getLogger("lm_eval.tasks._index")
    level = index_log.level
    index_log.setLevel(logging.ERROR)
    try:
        return TaskManager(include_defaults=False, include_path=[*_task_dirs(), str(overrides)])
    finally:
        index_log.setLevel(level)


# --- IFEval without NLTK's data -----------------------------------------------------------------


def punkt_missing() -> bool:
    import nltk

    try:
        nltk.data.find(PUNKT)
    except LookupError:
        return True
    return False


@contextlib.contextmanager
def nltk_never_downloads() -> Iterator[None]:
    """lm-eval's IFEval modules call `nltk.download("punkt_tab")` as they load, where NLTK's
    data is missing, and one of them then prints "Downloaded punkt_tab on rank 0" whatever came
    of it: offline, a false line after NLTK's errors. A run reads what the machine holds: here
    nothing is fetched, and the prompts left unscored are said once, with the command that
    installs the data (`_leave_out_unscorable_ifeval`)."""
    import nltk

    fetch = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            yield
    finally:
        nltk.download = fetch
        said = [line for line in printed.getvalue().splitlines() if "punkt_tab" not in line]
        print(*said, sep="\n", end="\n" if said else "")


def unscorable_instructions(doc: Mapping) -> list[str]:
    """The instructions of IFEval prompt `doc` whose check lm-eval cannot run here (NLTK data
    missing), found by running each check, as lm-eval's scoring does, on PROBE."""
    from lm_eval.tasks.leaderboard.ifeval.utils import (
        InputExample,
        test_instruction_following_strict,
    )

    out = []
    for instruction, kwargs in zip(doc["instruction_id_list"], doc["kwargs"], strict=True):
        one = InputExample(doc["key"], [instruction], doc["prompt"], [kwargs])
        try:
            test_instruction_following_strict(one, PROBE)
        except LookupError:
            out.append(instruction)
    return out


def _leave_out_unscorable_ifeval(task) -> dict[str, dict]:
    """Without NLTK's punkt_tab, `task` (leaderboard_ifeval) left with the prompts lm-eval can
    score; {task name: the prompts left out, of how many, per instruction, and why}."""
    if not punkt_missing():
        return {}
    docs = task.dataset[task.config.test_split]
    found = {doc["key"]: unscorable_instructions(doc) for doc in docs}
    left_out = {key for key, instructions in found.items() if instructions}
    if not left_out:
        return {}
    task.set_config("process_docs", lambda ds: ds.filter(lambda doc: doc["key"] not in left_out))
    per_instruction = Counter(i for instructions in found.values() for i in instructions)
    why = "NLTK's punkt_tab is not installed (python -m nltk.downloader punkt_tab installs it)"
    print(
        f"[leaderboard] {task.config.task}: {len(left_out)} of {len(docs)} prompts not scored: "
        f"{why}; instructions {', '.join(sorted(per_instruction))}",
        file=sys.stderr,
    )
    return {
        task.config.task: {
            "prompts": len(left_out),
            "of": len(docs),
            "instructions": dict(sorted(per_instruction.items())),
            "why": why,
        }
    }
