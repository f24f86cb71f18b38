"""The benchmarks of the eval stage (`eval.benchmarks`): what the model cards report, measured on
the iteration's policy beside the judge's win rate.

- mt_bench (src/evaluation/mt_bench.py) and arena_hard (src/evaluation/arena_hard.py): the
  policy's answers made with the eval stage's sampler and cached as its other answers are
  (src/evaluation/answers.py), then graded by the chat judge `eval.llm_judge`
  (src/evaluation/judge_client.py; served here with `serve`, src/evaluation/judge_server.py).
- leaderboard (src/evaluation/leaderboard.py): the Open LLM Leaderboard's tasks run by
  lm-evaluation-harness in this process on the policy's weights (vLLM as its engine on a GPU
  where installed, transformers elsewhere), scored raw and normalised as the leaderboard does.

`check` runs before any answer is made: each benchmark's data read (offline, every leaderboard
dataset found), the judge reachable (a served one: its model loadable). `run` then makes every
answer and runs the leaderboard first, and starts a served judge after, so that two engines never
hold the accelerator at once. Each result is labelled with the
judge that gave it (`judge`): a score by `gpt-4` and one by a local model are never one figure.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from src.config import BENCHMARK_DATA, BENCHMARK_DATA_HINT, Benchmark, Config
from src.core.errors import EnvironmentFailure
from src.evaluation import arena_hard, leaderboard, mt_bench
from src.evaluation.errors import EvalError
from src.evaluation.judge_client import (
    Endpoint,
    brief,
    cache_path,
    endpoint_of,
    judge_all,
    require_reachable,
)
from src.generation.prompts import Prompt

if TYPE_CHECKING:  # answers.py imports torch: what lists a run's assets needs none of it
    from src.evaluation.answers import Answerer

JUDGED = (Benchmark.mt_bench, Benchmark.arena_hard)  # graded by eval.llm_judge


@dataclass(frozen=True)
class MTBenchData:
    questions: list
    prompts: dict


@dataclass(frozen=True)
class ArenaHardData:
    questions: list
    baselines: dict  # category -> the model its games are played against
    baseline: dict  # uid -> that model's answer to the question


def mt_bench_files(folder: str) -> tuple[Path, Path, Path]:
    """FastChat's llm_judge/data layout: questions, GPT-4's reference answers, judge prompts."""
    root = Path(folder)
    bench = root / "mt_bench"
    return (
        bench / "question.jsonl",
        bench / "reference_answer" / "gpt-4.jsonl",
        root / "judge_prompts.jsonl",
    )


ARENA_HARD_QUESTIONS = "question.jsonl"  # in an arena-hard-auto data/<bench> folder


def baseline_answers(root: Path, name: str) -> Path:
    """Where an arena-hard-auto data folder holds model `name`'s answers."""
    return root / "model_answer" / f"{name}.jsonl"


def arena_hard_files(folder: str, baseline: str | None) -> tuple[Path, ...]:
    """arena-hard-auto's data/<bench> layout: the questions, then the answers of each baseline
    they are played against (`baseline`, or each category's own: those of the categories the
    questions file names; the answers' folder while it cannot be read)."""
    root = Path(folder)
    questions = root / ARENA_HARD_QUESTIONS
    names = [baseline] if baseline else sorted(set(arena_hard_baselines(questions, None).values()))
    if not names:
        return questions, root / "model_answer"
    return (questions, *(baseline_answers(root, name) for name in names))


def arena_hard_baselines(questions: Path | list, baseline: str | None) -> dict[str, str]:
    """category -> its baseline: `baseline` for every one, else each category's own
    (arena_hard.BASELINES), for the categories of `questions` (a list, or a file not yet checked:
    none where it cannot be read)."""
    if isinstance(questions, Path):
        try:
            questions = arena_hard.load_questions(questions)
        except (EvalError, OSError):
            return {}
    return {q.category: baseline or arena_hard.BASELINES[q.category] for q in questions}


def required_files(benchmark: Benchmark, cfg: Config) -> tuple[Path, ...]:
    """The files of a judged benchmark's data that `read_data` requires (MT-Bench's GPT-4
    reference answers are optional)."""
    if benchmark == Benchmark.mt_bench:
        questions, _, prompts = mt_bench_files(cfg.data.mt_bench)
        return questions, prompts
    return arena_hard_files(cfg.data.arena_hard, cfg.eval.arena_hard_baseline)


def data_folders(cfg: Config) -> dict[str, tuple[str, tuple[str, ...], str]]:
    """{data key: (its folder, the files `read_data` requires in it, what it is a copy of)} of
    eval.benchmarks' judged benchmarks: the user's copies, which nothing fetches."""
    found = {}
    for benchmark, key in BENCHMARK_DATA.items():
        folder = getattr(cfg.data, key)
        if benchmark in cfg.eval.benchmarks and folder is not None:
            files = tuple(p.relative_to(folder).as_posix() for p in required_files(benchmark, cfg))
            found[f"data.{key}"] = (folder, files, BENCHMARK_DATA_HINT[benchmark])
    return found


def files_read(cfg: Config) -> dict[str, list[str]]:
    """{data key: the files and folders under it that eval.benchmarks read}: MT-Bench's and
    Arena-Hard's required files, and the leaderboard's dataset copies under data.leaderboard
    (`<repo id>`): what the eval's record vouches for (src.core.fingerprints.input_contents), so that
    another file or dataset beside them leaves the eval finished."""
    read = {key: list(files) for key, (_, files, _) in data_folders(cfg).items()}
    if Benchmark.leaderboard in cfg.eval.benchmarks and cfg.data.leaderboard is not None:
        names = leaderboard.lm_eval_names(cfg.eval.leaderboard_tasks)
        copies = leaderboard.dataset_folders(names, cfg.data.leaderboard)
        read["data.leaderboard"] = [
            repo
            for repo, folder in copies.items()
            if folder == leaderboard.copy_folder(repo, cfg.data.leaderboard)
        ]
    return read


def require_questions(questions: list, path: Path) -> list:
    """A benchmark scored on no question is no result: its file must hold one."""
    if not questions:
        raise EvalError(f"{path} holds no question: a benchmark needs its questions")
    return questions


def read_data(cfg: Config) -> dict[Benchmark, object]:
    """Each benchmark's questions, prompts and baseline (the leaderboard's task names), read (and
    so checked) now."""
    return {b: READERS[b](cfg) for b in READERS if b in cfg.eval.benchmarks}


def read_mt_bench(cfg: Config) -> MTBenchData:
    """MT-Bench's questions, whole (`mt_bench.require_whole`), each reference-guided one with its
    reference answer, and the judge prompts."""
    questions, references, prompts = mt_bench_files(cfg.data.mt_bench)
    for path in required_files(Benchmark.mt_bench, cfg):
        require_file(path, "data.mt_bench", "FastChat's fastchat/llm_judge/data folder")
    asked = require_questions(
        mt_bench.load_questions(questions, references if references.is_file() else None),
        questions,
    )
    mt_bench.require_whole(asked, questions)
    return MTBenchData(asked, mt_bench.load_judge_prompts(prompts))


def read_leaderboard(cfg: Config) -> list[str]:
    """lm-eval's names of the leaderboard's tasks, each built over its dataset as the run builds
    it and every document read (`leaderboard.verify`): offline, each dataset found."""
    names = leaderboard.lm_eval_names(cfg.eval.leaderboard_tasks)
    leaderboard.verify(names, cfg.data.leaderboard)
    return names


def folder_damage(folder: Path, cfg: Config) -> str | None:
    """Why the eval stage would refuse `folder` as a judged benchmark's data (data.mt_bench's or
    data.arena_hard's), read as it reads it: what `src.assets check` says before any stage."""
    for benchmark, key in BENCHMARK_DATA.items():
        mine = getattr(cfg.data, key)
        if benchmark in cfg.eval.benchmarks and mine and Path(mine).expanduser() == folder:
            try:
                READERS[benchmark](cfg)
            except EvalError as err:  # the check's line names the key
                return str(err).removeprefix(f"data.{key}: ")
    return None


def read_arena_hard(cfg: Config) -> ArenaHardData:
    """The questions, and each one's baseline answer from its category's baseline (or
    eval.arena_hard_baseline's), every question answered."""
    questions = Path(cfg.data.arena_hard) / ARENA_HARD_QUESTIONS  # read once, here
    require_file(questions, "data.arena_hard", "arena-hard-auto's data/arena-hard-v0.1 folder")
    asked = require_questions(arena_hard.load_questions(questions), questions)
    baselines = arena_hard_baselines(asked, cfg.eval.arena_hard_baseline)
    answer: dict[str, str] = {}
    for name in sorted(set(baselines.values())):
        path = baseline_answers(questions.parent, name)
        require_file(path, "eval.arena_hard_baseline", f"the answers of {name}, a baseline of "
                     f"{questions}'s categories, in data.arena_hard/model_answer")  # fmt: skip
        answers_by_uid = arena_hard.load_answers(path)[1]
        mine = [q.uid for q in asked if baselines[q.category] == name]
        unanswered = [uid for uid in mine if uid not in answers_by_uid]
        if unanswered:  # a win rate against it would rest on the questions it answered alone
            raise EvalError(
                f"eval.arena_hard_baseline: {path} answers {len(mine) - len(unanswered)} of "
                f"the {len(mine)} questions of {questions} it is the baseline of (not "
                f"{unanswered[0]}{f' and {len(unanswered) - 1} more' if len(unanswered) > 1 else ''}"
                "): a baseline answers every question"
            )
        answer.update({uid: answers_by_uid[uid] for uid in mine})
    return ArenaHardData(asked, baselines, answer)


READERS = {
    Benchmark.mt_bench: read_mt_bench,
    Benchmark.arena_hard: read_arena_hard,
    Benchmark.leaderboard: read_leaderboard,
}


def require_file(path: Path, key: str, what: str) -> None:
    if not path.is_file():
        raise EvalError(f"{key}: {path} does not exist (expected {what})")


def check(cfg: Config) -> dict[Benchmark, object]:
    """Before any answer is made: the benchmarks' data, and a judge that can answer (exit 3
    where not). Returns the data read."""
    data = read_data(cfg)
    judged = [b.value for b in cfg.eval.benchmarks if b in JUDGED]
    j = cfg.eval.llm_judge
    if judged and j.serve is None:
        require_reachable(endpoint_of(j), j, " and ".join(judged))
    elif judged:
        from src.core.policy import require_loadable

        require_loadable(j.serve, None, key="eval.llm_judge.serve")
    return data


def run(cfg: Config, policy: Answerer, data: dict[Benchmark, object], stage_dir: Path) -> dict:
    """Every benchmark of eval.benchmarks on `policy`: {benchmark: its results}."""
    results: dict[str, dict] = {}
    made = {}
    for benchmark, what in data.items():  # every answer before a served judge starts
        started = time.time()
        if benchmark == Benchmark.leaderboard:
            results[benchmark.value] = run_leaderboard(cfg, policy, what, stage_dir)
            continue
        made[benchmark] = (ANSWER[benchmark](cfg, policy, what), time.time() - started)
    if made:
        with judge_endpoint(cfg, stage_dir) as endpoint:
            for benchmark, (answered, seconds) in made.items():
                started = time.time()
                result = GRADE[benchmark](cfg, endpoint, data[benchmark], answered)
                result["seconds"] = seconds + time.time() - started
                results[benchmark.value] = result
    return results


@contextlib.contextmanager
def judge_endpoint(cfg: Config, stage_dir: Path) -> Iterator[Endpoint]:
    j = cfg.eval.llm_judge
    if j.serve is None:
        yield endpoint_of(j, merge_system=j.system_turn is False)
        return
    from src.core.devices import device_for
    from src.evaluation.judge_server import served_judge

    device = device_for(cfg.hardware.device, cfg.hardware.name)
    system_turn = takes_system_turn(j.serve) if j.system_turn is None else j.system_turn
    with served_judge(j, stage_dir, on_cpu=device.type == "cpu") as served:
        yield endpoint_of(j, base_url=served.url, merge_system=not system_turn, pid=served.pid)


def figure(value: float | None, spec: str) -> str:
    return "none" if value is None else format(value, spec)


def takes_system_turn(model: str) -> bool:
    """Whether `model`'s chat template renders a system turn (Mistral-Instruct-v0.2's refuses
    one: roles must alternate user/assistant)."""
    from src.generation.sampling import load_tokenizer

    tokenizer, _ = load_tokenizer(model, None)
    try:
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False
        )
    except Exception:  # jinja's TemplateError, raised by the template's own raise_exception
        return False
    return True


# --- MT-Bench -----------------------------------------------------------------------------------


def answer_mt_bench(cfg: Config, policy: Answerer, data: MTBenchData) -> dict[int, tuple[str, str]]:
    """The policy's two turns per question, the second after its own first, each at its
    category's temperature (FastChat's gen_model_answer)."""
    first = sample(
        cfg, policy, data.questions, lambda q: Prompt(f"mt_bench-{q.question_id}-1", q.turns[0])
    )
    second = sample(
        cfg,
        policy,
        [q for q in data.questions if q.question_id in first],
        lambda q: Prompt(
            f"mt_bench-{q.question_id}-2", q.turns[1], history=((q.turns[0], first[q.question_id]),)
        ),
    )
    return {qid: (first[qid], second[qid]) for qid in second}


def sample(cfg: Config, policy: Answerer, questions: list, prompt_of) -> dict[int, str]:
    """question_id -> the policy's answer to `prompt_of(question)`, one cached answers set per
    temperature (an instruction the policy cannot take whole is left out)."""
    from src.evaluation.answers import answers

    out: dict[int, str] = {}
    by_temperature: dict[float, list] = {}
    for q in questions:
        by_temperature.setdefault(mt_bench.answer_temperature(q.category), []).append(q)
    for temperature, group in by_temperature.items():
        decoding = replace(
            cfg.eval,
            temperature=temperature,
            max_new_tokens=min(cfg.eval.max_new_tokens, mt_bench.MAX_NEW_TOKENS),
        )
        prompts = {prompt_of(q).prompt_id: q.question_id for q in group}
        rows = answers(replace(cfg, eval=decoding), policy, [prompt_of(q) for q in group])
        out.update({prompts[pid]: row["output"] for pid, row in rows.items()})
    return out


def grade_mt_bench(cfg: Config, endpoint: Endpoint, data: MTBenchData, answered) -> dict:
    requests = mt_bench.judge_requests(data.questions, answered, data.prompts, endpoint.model)
    cache = cache_path(cfg.paths.root, endpoint, "mt_bench")
    judgments, cost = judge_all(
        endpoint,
        cfg.eval.llm_judge,
        requests,
        cache,
        "mt_bench",
        final=lambda text: mt_bench.parse_rating(text) is not None,
    )
    ratings = {}
    for key, judgment in judgments.items():
        _, qid, turn, _ = key.split("/", 3)
        ratings[(int(qid), int(turn.removeprefix("turn")))] = mt_bench.parse_rating(judgment.text)
    summary = mt_bench.summarize(data.questions, ratings)
    summary["scored"] = len({qid for (qid, _), rating in ratings.items() if rating is not None})
    texts = [judgment.text for judgment in judgments.values()]
    require_a_verdict("mt_bench", endpoint, texts, summary["rated"], cache)
    print(
        f"[eval] mt_bench by {endpoint.label}: {figure(summary['mt_bench'], '.2f')} (turn 1 "
        f"{figure(summary['turn_1'], '.2f')}, turn 2 {figure(summary['turn_2'], '.2f')}; "
        f"{summary['unrated']} of {len(ratings)} judgments without a rating; "
        f"{summary['scored']} of {summary['questions']} questions scored)",
        file=sys.stderr,
    )
    return {
        "judge": endpoint.label,
        **summary,
        "unanswered": len(data.questions) - len(answered),
        **cost,
    }


def require_a_verdict(
    benchmark: str, endpoint: Endpoint, texts: list[str], usable: int, cache: Path
) -> None:
    """A benchmark whose judgments hold no verdict at all ends the eval in one line (exit 3): a
    figure of none is not a result. What the judge said is kept, and asked again by the next run
    (judge_all: a judgment without a verdict is never final)."""
    if texts and not usable:
        raise EnvironmentFailure(
            f"{benchmark}: none of the {len(texts)} judgments by {endpoint.label} holds a verdict "
            f"(the first said {brief(texts[0])!r}); kept in {cache}, each asked again by the next "
            "run: check the judge and its prompt, then run the command again"
        )


# --- Arena-Hard ---------------------------------------------------------------------------------

ARENA_HARD_TEMPERATURE = 0.0  # arena-hard-auto's gen_answer_config: greedy answers
ARENA_HARD_MAX_TOKENS = 4096  # and its max_tokens


def answer_arena_hard(cfg: Config, policy: Answerer, data: ArenaHardData) -> dict[str, str]:
    from src.evaluation.answers import answers

    decoding = replace(
        cfg.eval,
        temperature=ARENA_HARD_TEMPERATURE,
        max_new_tokens=min(cfg.eval.max_new_tokens, ARENA_HARD_MAX_TOKENS),
    )
    prompts = [Prompt(f"arena_hard-{q.uid}", q.prompt) for q in data.questions]
    rows = answers(replace(cfg, eval=decoding), policy, prompts)
    return {pid.removeprefix("arena_hard-"): row["output"] for pid, row in rows.items()}


def grade_arena_hard(cfg: Config, endpoint: Endpoint, data: ArenaHardData, answered) -> dict:
    """Both games of every question judged; in v0.1 a judgment with no verdict at all asked once
    more (the benchmark's second attempt), its verdict then the second judgment's."""
    version = arena_hard.version_of(data.questions)
    requests = arena_hard.judge_requests(data.questions, answered, data.baseline, endpoint.model)
    cache = cache_path(cfg.paths.root, endpoint, "arena_hard")
    final = functools.partial(arena_hard.has_verdict, version=version)
    # v0.1 asks a judgment without a verdict once more (its second attempt): that one is final
    # only with a verdict; in v2.0 the first is the last
    judged, cost = judge_all(
        endpoint,
        cfg.eval.llm_judge,
        requests,
        cache,
        "arena_hard",
        final=(lambda text: True) if version == arena_hard.V01 else final,
    )
    texts = {key: judgment.text for key, judgment in judged.items()}
    retries = [
        retry
        for r in requests
        if (retry := arena_hard.retry_request(r, texts[r.key], version)) is not None
    ]
    if retries:
        again, more = judge_all(
            endpoint, cfg.eval.llm_judge, retries, cache, "arena_hard", final=final
        )
        texts.update({key.removesuffix("/attempt2"): j.text for key, j in again.items()})
        cost = {k: cost[k] + more[k] for k in cost}
    verdicts = {}
    for key, text in texts.items():
        _, uid, game = key.split("/", 2)
        verdicts[(uid, int(game.removeprefix("game")))] = arena_hard.parse_verdict(text, version)
    scored = arena_hard.score(data.questions, verdicts, seed=cfg.eval.seed)
    for category, figures in scored["categories"].items():
        figures["baseline"] = data.baselines[category]
    usable = sum(v is not None for v in verdicts.values())
    require_a_verdict("arena_hard", endpoint, list(texts.values()), usable, cache)
    for category, c in scored["categories"].items():
        asked = sum(q.category == category for q in data.questions)
        print(
            f"[eval] arena_hard {category} by {endpoint.label} against {c['baseline']}: win "
            f"rate {figure(c['win_rate'], '.3f')} [{figure(c['lower'], '.3f')}, "
            f"{figure(c['upper'], '.3f')}]; {c['questions']} of {asked} questions scored",
            file=sys.stderr,
        )
    print(f"[eval] arena_hard: {scored['unjudged']} game(s) without a verdict", file=sys.stderr)
    return {
        "judge": endpoint.label,
        "baseline": data.baselines[scored["category"]],
        **scored,
        "asked": sum(q.category == scored["category"] for q in data.questions),
        "unanswered": len(data.questions) - len(answered),
        **cost,
    }


# --- the Open LLM Leaderboard -------------------------------------------------------------------


def run_leaderboard(cfg: Config, policy: Answerer, tasks: list[str], stage_dir: Path) -> dict:
    """lm-eval on the policy's weights, with its chat template, as the leaderboard runs chat
    models; lm-eval's own results file goes to <stage>/leaderboard/."""
    import importlib.util

    from src.core.devices import device_for

    device = device_for(cfg.hardware.device, cfg.hardware.name)
    on_gpu = device.type == "cuda"
    started = time.time()
    result = leaderboard.run_leaderboard(
        policy.path,
        tasks,
        data_dir=cfg.data.leaderboard,
        limit=cfg.eval.leaderboard_limit,
        batch_size=cfg.eval.batch_size,
        output=stage_dir / "leaderboard",
        backend="vllm" if on_gpu and importlib.util.find_spec("vllm") else "hf",
        device=device.type,
        seed=cfg.eval.seed,
    )
    normalised = result["normalised"]
    shown = ", ".join(f"{k} {v:.2f}" for k, v in normalised.items())
    print(f"[eval] leaderboard (normalised, 0-100): {shown or 'no v2 task'}", file=sys.stderr)
    # a run on each task's first documents only is a check of the setup, not the benchmark: the
    # model card says so, and shows no leaderboard figure in its model-index
    return {**result, "limit": cfg.eval.leaderboard_limit, "seconds": time.time() - started}


ANSWER = {Benchmark.mt_bench: answer_mt_bench, Benchmark.arena_hard: answer_arena_hard}
GRADE = {Benchmark.mt_bench: grade_mt_bench, Benchmark.arena_hard: grade_arena_hard}
