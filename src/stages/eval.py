"""Stage `eval`: the policy of iteration t against a reference on held-out instructions.

    python -m src.main stage=eval model=tiny-mistral iter=2
    python -m src.main stage=eval model=tiny-mistral iter=0   # the base model: iteration 0
    python -m src.main stage=eval iter=3 eval.reference=iter1 data.eval_prompts=alpaca_eval.json
    python -m src.main model=tiny-mistral iter=3 eval.enabled=true   # after every iteration

setup (the instructions, AlpacaEval's format; the policy pi_t, iteration t's checkpoint; the
reference: the base model, an earlier iteration, any model, or a file of reference answers;
both models' answers, generated once and cached, src/evaluation/answers.py) -> run (the
configured judge compares each pair of answers, PairRM in both orders; identical answers tie)
-> cleanup (eval.json, metrics.json, judgements.jsonl; model_outputs.json and
reference_outputs.json in AlpacaEval's format; the iteration's model card; then the record,
which the scheduler writes after them as `done.json`).

Evals of one checkpoint against several references, or by several judges, sit side by side: the
one against the base model in iter<t>/eval/, each other one (eval.reference=iter1,
eval.reference_outputs=<file>) in iter<t>/eval/vs-<name>/, each by other judges
(eval.judged_by=<by>) in iter<t>/eval/vs-<name>@<by>/ (vs-base@<by> against the base model;
src/core/layout.py: stage_folder), each with its own record, redo and W&B run; the model card and
src.compare show them all.

eval.json: win_rate and lc_win_rate (src/evaluation/winrate.py) with their bootstrap intervals
(`*_low`, `*_high`), the standard error, wins / losses / ties, average answer lengths (characters) of both sides.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from src.config import Config, Outcome, RankerConfig, Stage, WinProb
from src.core.artifacts import atomic_write_json, atomic_write_text
from src.core.errors import EnvironmentFailure, Redo
from src.core.identity import stage_key
from src.core.layout import iteration_name, iteration_number
from src.core.policy import CARD, checkpoint_damage, require_loadable, weights_signature
from src.core.records import Finished, read_record
from src.evaluation import benchmarks
from src.evaluation.alpaca_eval import (
    RESULTS,
    judge_with_alpaca_eval,
    reference_from_file,
    write_alpaca_eval,
)
from src.evaluation.answers import Answerer, answers
from src.evaluation.errors import EvalError
from src.evaluation.winrate import FOLDS, outcomes, win_rates
from src.generation.prompts import Prompt, load_prompts
from src.generation.sampling import VLLM_LOG
from src.ranking.preferences import win_matrix
from src.stages import StageResult
from src.stages.common import load_judge
from src.stages.report.cards import write_model_card


def run(cfg: Config) -> StageResult:
    started = time.time()
    stage_dir = cfg.stage_dir(Stage.eval)

    # setup (eval.alpaca_eval=true's judge: checked by the scheduler before any stage starts)
    instructions = load_instructions(cfg)
    # before any answer is made: the benchmarks' data read, their judge answering
    benchmark_data = benchmarks.check(cfg)
    policy = answerer(cfg, iteration_name(cfg.iter))
    # both sides checked before any generation: a bad reference fails in seconds, not after
    # the policy has answered
    if cfg.eval.reference_outputs is None:
        reference = answerer(cfg, cfg.eval.reference)
        policy_answers = answers(cfg, policy, instructions)
        reference_label, reference_answers = reference.label, answers(cfg, reference, instructions)
    else:
        reference_label, reference_answers = reference_from_file(
            cfg.eval.reference_outputs, instructions, cfg.data.eval_prompts
        )
        policy_answers = answers(cfg, policy, instructions)
    compared = [
        p
        for p in instructions
        if p.prompt_id in policy_answers and p.prompt_id in reference_answers
    ]
    if not compared:
        raise EvalError(
            f"no instruction of {cfg.data.eval_prompts} was answered by both the policy and the "
            f"reference (all over eval.max_prompt_length={cfg.eval.max_prompt_length} tokens?)"
        )
    ours = [policy_answers[p.prompt_id]["output"] for p in compared]
    theirs = [reference_answers[p.prompt_id]["output"] for p in compared]

    # run
    preferences = judge(cfg, compared, ours, theirs)
    y = outcomes(preferences, discrete=cfg.eval.outcome == Outcome.discrete)
    ours_len = np.array([len(a) for a in ours])
    theirs_len = np.array([len(a) for a in theirs])
    rates = win_rates(y, ours_len, theirs_len, cfg.eval.bootstrap, cfg.eval.confidence)
    lc_low, lc_high = rates.lc_win_rate_ci or (None, None)
    hard = outcomes(preferences, discrete=True)
    report = {
        "policy": policy.label,
        "policy_path": policy.path,
        "reference": reference_label,
        "judge": eval_judge(cfg).name,
        "outcome": cfg.eval.outcome.value,
        "instructions": len(instructions),
        "compared": rates.n,
        "left_out": len(instructions) - rates.n,
        "win_rate": rates.win_rate,
        "lc_win_rate": rates.lc_win_rate,
        # the bootstrap interval at `confidence`, flat so that W&B's summary keeps it
        "win_rate_low": rates.win_rate_ci[0],
        "win_rate_high": rates.win_rate_ci[1],
        "lc_win_rate_low": lc_low,
        "lc_win_rate_high": lc_high,
        "confidence": cfg.eval.confidence,
        "standard_error": rates.standard_error,
        "length_coefficient": rates.length_coefficient,
        "discrete_win_rate": float(hard.mean()),
        "probability_win_rate": float(np.mean(preferences)),
        "wins": int((hard == 1).sum()),
        "losses": int((hard == 0).sum()),
        "ties": int((hard == 0.5).sum()),
        "identical_answers": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        "avg_length": float(ours_len.mean()),
        "reference_avg_length": float(theirs_len.mean()),
        "seconds": time.time() - started,
    }
    print(
        f"[eval] {policy.label} vs {reference_label} on {rates.n} instructions: "
        f"win rate {rates.win_rate:.3f} [{rates.win_rate_ci[0]:.3f}, {rates.win_rate_ci[1]:.3f}], "
        + (
            f"length-controlled {rates.lc_win_rate:.3f} [{lc_low:.3f}, {lc_high:.3f}]; "
            if rates.lc_win_rate is not None
            else f"no length-controlled rate (AlpacaEval's {FOLDS}-fold fit needs {FOLDS} "
            "instructions); "
        )
        + f"average length {report['avg_length']:.0f} vs {report['reference_avg_length']:.0f} chars",
        file=sys.stderr,
    )

    # cleanup: every file atomically (the record, written after them by the scheduler)
    judgements = [
        {
            "prompt_id": p.prompt_id,
            "instruction": p.prompt,
            "output": a,
            "reference_output": b,
            "preference": float(pref),
            "outcome": float(out),
        }
        for p, a, b, pref, out in zip(compared, ours, theirs, preferences, y, strict=True)
    ]
    atomic_write_text(
        stage_dir / "judgements.jsonl",
        "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judgements),
    )
    dataset = Path(cfg.data.eval_prompts or "eval").stem
    write_alpaca_eval(
        stage_dir / "model_outputs.json", instructions, policy_answers, policy.label, dataset
    )
    write_alpaca_eval(
        stage_dir / "reference_outputs.json",
        instructions,
        reference_answers,
        reference_label,
        dataset,
    )
    if cfg.eval.alpaca_eval:
        report["alpaca_eval"] = alpaca_eval_row(stage_dir, policy.label)
    report.update(benchmarks.run(cfg, policy, benchmark_data, stage_dir))
    report["seconds"] = time.time() - started
    atomic_write_json(stage_dir / "eval.json", report)
    atomic_write_json(stage_dir / "metrics.json", report)
    checkpoint = cfg.layout.checkpoint(cfg.iter)
    if Path(policy.path).resolve() == checkpoint.resolve() and (checkpoint / CARD).is_file():
        write_model_card(cfg, checkpoint, stage_dir)  # the iteration's card, with these results
    fingerprint = stage_key(cfg.as_tree(), Stage.eval, read=benchmarks.files_read(cfg))
    return StageResult(report, Finished(fingerprint, report, {"seconds": report["seconds"]}))


# --- setup ----------------------------------------------------------------------------------------


def load_instructions(cfg: Config) -> list[Prompt]:
    """The evaluation instructions: AlpacaEval's format (`instruction`, optional `dataset`), as
    its own `alpaca_eval.json` (a JSON array), JSON Lines, parquet or a hub dataset."""
    if not cfg.data.eval_prompts:
        raise EvalError(
            "data.eval_prompts is not set: point it at the evaluation instructions, e.g. "
            "AlpacaEval's 805 (data.eval_prompts=/path/to/alpaca_eval.json, downloaded from "
            "https://huggingface.co/datasets/tatsu-lab/alpaca_eval)"
        )
    return load_prompts(
        cfg.data.eval_prompts, split=cfg.data.eval_split, prompt_column="instruction"
    ).prompts


def answerer(cfg: Config, which: str) -> Answerer:
    """The model `which` names: 'base', 'iter<s>' (this lineage's checkpoint; iter0: pi_0, the
    policy iteration 1 starts from, `run.init_policy`), or a path / hub id."""
    s = iteration_number(which)
    key = "eval.reference"
    if s == 0:  # `stage=eval iter=0`: the base model's own figures
        s, key = None, "run.init_policy"
        which = "base" if cfg.run.init_policy == cfg.model.path else cfg.run.init_policy
    if which == "base":
        path, label = cfg.model.path, cfg.model.name
    elif s is not None:
        path = str(cfg.layout.checkpoint(s))
        label = cfg.model_label(s)
        record = read_record(cfg.layout.stage_dir_in(s, Stage.train))
        if record is None:
            raise EvalError(
                f"iteration {s} is not trained: {path} has no finished training record",
                fix=f"stage=all iter={s}",
            )
        damage = checkpoint_damage(Path(path), record.get("outputs", {}))
        if damage:
            raise EvalError(
                f"iteration {s}'s checkpoint {path} is damaged ({damage}); train it again",
                fix=Redo(Stage.train, s),
            )
    else:  # before any answer is made: a reference that cannot load fails first
        path, label = which, Path(which).name
        require_loadable(path, cfg.model.revision, key=key)
    return Answerer(label, path, weights_signature(path, cfg.model.revision))


# --- run --------------------------------------------------------------------------------------------


def eval_judge(cfg: Config) -> RankerConfig:
    """eval.judge, or the ranker when it is null."""
    return cfg.eval.judge or cfg.ranker


def judge(cfg: Config, compared: list[Prompt], ours: list[str], theirs: list[str]) -> np.ndarray:
    """P(policy's answer beats the reference's) per instruction; identical answers: 1/2."""
    preferences = np.full(len(compared), 0.5)
    todo = [i for i in range(len(compared)) if ours[i] != theirs[i]]
    if not todo:
        return preferences
    r = eval_judge(cfg)
    judged = load_judge(
        cfg,
        r,
        "eval.judge" if cfg.eval.judge is not None else "ranker",
        cfg.stage_dir(Stage.eval) / VLLM_LOG,
        "the answers are kept: re-run the same command to judge them",
    )
    size = r.chunk_size
    direct = r.win_prob == WinProb.direct
    with closing(judged):  # the judge's engine (vLLM's) shut down whatever happens
        for start in range(0, len(todo), size):
            batch = todo[start : start + size]
            results = judged(
                [compared[i].prompt for i in batch], [[ours[i], theirs[i]] for i in batch]
            )
            for i, (scores, comparisons) in zip(batch, results, strict=True):
                p = win_matrix(scores, comparisons, direct=direct)[0, 1]
                if not np.isfinite(p):
                    raise EvalError(
                        f"the judge gave a non-finite preference ({p}) for prompt_id "
                        f"{compared[i].prompt_id!r} ({compared[i].prompt[:60]!r}): check the "
                        "judge's weights and precision"
                    )
                preferences[i] = p
            print(
                f"[eval] judged {min(start + size, len(todo))}/{len(todo)} pairs of answers",
                file=sys.stderr,
                flush=True,
            )
    return preferences


def alpaca_eval_row(stage_dir: Path, label: str) -> dict:
    """AlpacaEval 2's leaderboard row for this stage's model_outputs.json; a failure of its
    judge or of the network is the environment's (exit 3), its answers so far kept."""
    from openai import OpenAIError

    try:
        row = judge_with_alpaca_eval(stage_dir / "model_outputs.json", stage_dir / RESULTS, label)
    except (OpenAIError, OSError) as err:  # OSError: requests' and the Hub's connection errors
        raise EnvironmentFailure(
            f"AlpacaEval 2's evaluator failed: {type(err).__name__}: {str(err).splitlines()[0]}; "
            f"the judge's answers so far are cached in {stage_dir / RESULTS}: run this command again"
        ) from None
    print(
        f"[eval] AlpacaEval 2 ({row['annotator']}): length-controlled "
        f"{100 * row['lc_win_rate']:.2f} %, win rate {100 * row['win_rate']:.2f} % "
        f"(SE {100 * row['standard_error']:.2f}), average length {row['avg_length']} chars",
        file=sys.stderr,
    )
    return row
