"""AlpacaEval 2 itself (`src.evaluation.alpaca_eval`, eval.alpaca_eval=true), offline.

Tested: what stops its evaluator is said before any stage starts, as one line with exit 3 and
the command to run instead (no OpenAI key, first; the Hub offline with its files not cached, as
the assets check names them; OpenAI's API not answering, a closed local port standing in for
it); instructions that are not AlpacaEval's are refused before its judge is paid; the leaderboard row read back from the
results files alpaca_eval's own `evaluate` writes from annotations supplied here (its GPT-4 Turbo
judge replaced by those annotations: the one part that needs the network), and from the rows of
its published leaderboard; the row in the model card's model-index.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from src.evaluation import alpaca_eval
from src.evaluation.alpaca_eval import ANNOTATOR, alpaca_eval_missing, leaderboard_row
from src.evaluation.errors import EvalError
from src.evaluation.winrate import GLM, length_controlled
from tests.support.helpers import SMALL, alpaca_eval_annotations, cli, closed_port, one_line_failure

# Two rows of AlpacaEval 2's published leaderboard, as its file holds them
# (tatsu-lab/alpaca_eval: src/alpaca_eval/leaderboards/data_AlpacaEval_2/
# weighted_alpaca_eval_gpt4_turbo_leaderboard.csv)
PUBLISHED = """\
,win_rate,standard_error,n_wins,n_wins_base,n_draws,n_total,discrete_win_rate,mode,avg_length,length_controlled_winrate,lc_standard_error
gemma-2-9b-it-WPO-HB,77.82503168985093,1.2355857177790277,640,163,2,805,79.62732919254658,community,2285,76.72506842726064,0.4242603928637889
SPPO-Gemma-2-9B-It-PairRM,48.23404468746583,1.4568887170812033,386,418,1,805,48.01242236024844,community,1803,53.96983730150777,0.6516507968188552
"""


# --- refused before any answer is made -------------------------------------------------------


@pytest.mark.slow
def test_without_a_key_the_stage_ends_with_one_line_and_exit_3(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = cli(tmp_path, "iter=1", "stage=eval", "eval.alpaca_eval=true")
    line = one_line_failure(result, 3)
    assert line.startswith(
        f"error: eval.alpaca_eval=true runs AlpacaEval 2's judge ({ANNOTATOR}, OpenAI's API), "
        "but OPENAI_API_KEY is not set"
    ), line
    command = f"python -m src.main {' '.join(SMALL)} iter=1 stage=eval eval.alpaca_eval=false"
    assert line.endswith(f"run `{command}`"), line
    made = {p.name for p in tmp_path.rglob("eval/*")}
    assert made <= {"config.yaml"}, f"no answer, no result: {made}"  # the stage's config only


@pytest.mark.slow
def test_with_the_hub_offline_and_its_files_not_cached_the_stage_says_which(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-key")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    result = cli(tmp_path / "runs", "iter=1", "stage=eval", "eval.alpaca_eval=true")
    line = one_line_failure(result, 3)
    assert line.startswith(
        "error: dataset tatsu-lab/alpaca_eval (alpaca_eval_gpt4_baseline.json, df_gamed.csv) "
        "(eval.alpaca_eval: iteration 1 eval): not in the Hub cache"
    ), line
    fetch = f"python -m src.assets fetch {' '.join(SMALL)} iter=1 stage=eval eval.alpaca_eval=true"
    assert line.endswith(fetch), line
    assert not list((tmp_path / "runs").rglob("eval/*")), "refused before the stage starts"


def test_openai_not_answering_is_what_is_missing(monkeypatch):
    """A key and the Hub's files, but no answer from the API (a closed local port here)."""
    url = f"http://127.0.0.1:{closed_port()}/v1/models"
    monkeypatch.setattr(alpaca_eval, "OPENAI_URL", url)
    missing = alpaca_eval_missing({"OPENAI_API_KEY": "sk-not-a-key"})
    assert missing.startswith(f"{url} does not answer ("), missing
    assert alpaca_eval_missing({"OPENAI_API_KEY": "sk-not-a-key"}, reach=False) is None
    assert alpaca_eval_missing({}) == "OPENAI_API_KEY is not set"


def test_instructions_that_are_not_alpaca_evals_are_refused_before_its_judge(tmp_path, monkeypatch):
    reference = tmp_path / "alpaca_eval_gpt4_baseline.json"
    published = [
        {"instruction": f"q{i}", "output": "a", "generator": "gpt4_turbo"} for i in range(3)
    ]
    reference.write_text(json.dumps(published))
    monkeypatch.setattr(alpaca_eval, "hf_hub_download", lambda *a, **k: str(reference))
    outputs = tmp_path / "model_outputs.json"
    outputs.write_text(
        json.dumps([{"instruction": "q0", "output": "b"}, {"instruction": "mine", "output": "c"}])
    )
    with pytest.raises(
        EvalError, match=r"1 of .*model_outputs\.json's are not among them, e\.g\. 'mine'"
    ):
        alpaca_eval.judge_with_alpaca_eval(outputs, tmp_path / "out", "policy")
    assert not (tmp_path / "out").exists()


# --- the leaderboard row ---------------------------------------------------------------------


class ReplayedJudge:
    """alpaca_eval's annotator interface, answering with annotations given beforehand."""

    preferences: dict[str, float] = {}

    def __init__(self, annotators_config, **_):
        self.name = annotators_config

    def annotate_head2head(self, outputs_1, outputs_2, **_):
        rows = []
        for (_, ref), (_, ours) in zip(outputs_1.iterrows(), outputs_2.iterrows(), strict=True):
            assert ref["instruction"] == ours["instruction"]
            rows.append(
                {
                    "instruction": ours["instruction"],
                    "output_1": ref["output"],
                    "output_2": ours["output"],
                    "generator_1": ref["generator"],
                    "generator_2": ours["generator"],
                    "annotator": self.name,
                    "preference": self.preferences[ours["instruction"]],
                }
            )
        return rows


def test_the_leaderboard_row_alpaca_evals_evaluate_writes_is_read_back(
    alpaca_eval_offline, tmp_path
):
    from alpaca_eval.main import evaluate

    n, rng = 60, np.random.default_rng(0)
    y = rng.choice([0.0, 0.5, 1.0], n, p=[0.4, 0.05, 0.55])
    annotated = alpaca_eval_annotations(y, rng.integers(50, 900, n), rng.integers(50, 900, n))
    reference = annotated[["instruction", "output_1"]].rename(columns={"output_1": "output"})
    ours = annotated[["instruction", "output_2"]].rename(columns={"output_2": "output"})
    ReplayedJudge.preferences = dict(
        zip(annotated["instruction"], annotated["preference"], strict=True)
    )
    leaderboard, _ = evaluate(
        model_outputs=ours.assign(generator="policy"),
        reference_outputs=reference.assign(generator="reference"),
        annotators_config=ANNOTATOR,
        output_path=tmp_path,
        precomputed_leaderboard=None,
        is_return_instead_of_print=True,
        metric_kwargs={"glm_name": GLM, "save_weights_dir": None},
        Annotator=ReplayedJudge,
    )
    path = tmp_path / ANNOTATOR / "leaderboard.csv"
    row = leaderboard_row(path, "policy")
    expected = leaderboard.loc["policy"]
    assert row["lc_win_rate"] == pytest.approx(
        expected["length_controlled_winrate"] / 100, abs=1e-12
    )
    assert row["win_rate"] == pytest.approx(expected["win_rate"] / 100, abs=1e-12)
    assert row["standard_error"] == pytest.approx(expected["standard_error"] / 100, abs=1e-12)
    assert row["avg_length"] == int(ours["output"].str.len().mean())
    assert row["n_total"] == n and row["annotator"] == ANNOTATOR
    # and it is the rate the eval stage computes from the same judgements
    lengths = annotated["output_2"].str.len(), annotated["output_1"].str.len()
    assert row["lc_win_rate"] == pytest.approx(length_controlled(y, *lengths).lc_win_rate, abs=1e-6)
    assert row["win_rate"] == pytest.approx(y.mean(), abs=1e-12)


def test_the_published_leaderboard_rows_read_as_fractions(tmp_path):
    path = tmp_path / ANNOTATOR / "leaderboard.csv"
    path.parent.mkdir()
    path.write_text(PUBLISHED)
    wpo = leaderboard_row(path, "gemma-2-9b-it-WPO-HB")
    assert wpo["lc_win_rate"] == pytest.approx(0.7672506842726064, abs=1e-15)
    assert wpo["win_rate"] == pytest.approx(0.7782503168985093, abs=1e-15)
    assert wpo["standard_error"] == pytest.approx(0.012355857177790277, abs=1e-15)
    assert (wpo["avg_length"], wpo["n_total"], wpo["n_wins"], wpo["n_draws"]) == (2285, 805, 640, 2)
    sppo = leaderboard_row(path, "SPPO-Gemma-2-9B-It-PairRM")
    assert (
        round(100 * sppo["lc_win_rate"], 2) == 53.97 and round(100 * sppo["win_rate"], 2) == 48.23
    )
    with pytest.raises(EvalError, match="no row for 'gemma-2-9b-it'"):
        leaderboard_row(path, "gemma-2-9b-it")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "not alpaca_eval's leaderboard file"),
        (",win_rate\npolicy,50\n", "the row 'policy' has no length_controlled_winrate"),
    ],
    ids=["missing", "no-lc-column"],
)
def test_a_leaderboard_file_that_is_not_alpaca_evals_is_refused(tmp_path, text, match):
    path = tmp_path / "leaderboard.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(EvalError, match=match):
        leaderboard_row(path, "policy")


def test_the_model_card_carries_the_leaderboard_row(tmp_path):
    from huggingface_hub import ModelCard

    from src.stages.report.cards import evaluation_text, model_card
    from tests.support.helpers import compose_cfg

    path = tmp_path / ANNOTATOR / "leaderboard.csv"
    path.parent.mkdir()
    path.write_text(PUBLISHED)
    evaluation = {
        "reference": "base", "judge": "pairrm", "compared": 805, "confidence": 0.95,
        "win_rate": 0.6, "win_rate_low": 0.55, "win_rate_high": 0.65,
        "lc_win_rate": 0.58, "lc_win_rate_low": 0.53, "lc_win_rate_high": 0.63,
        "alpaca_eval": leaderboard_row(path, "gemma-2-9b-it-WPO-HB"),
    }  # fmt: skip
    text = evaluation_text(evaluation)
    assert "length-controlled win rate 76.73 %, win rate 77.83 % (SE 1.24)" in text
    metrics = {"log_history": [], "summary": {"train_loss": 0.5}}
    card = model_card(
        compose_cfg("model=tiny-mistral", "logger=none"), metrics, [evaluation], "cmd"
    )
    assert "AlpacaEval 2 lc_win_rate % (weighted_alpaca_eval_gpt4_turbo)" in card
    results = ModelCard(card).data.eval_results
    values = {(r.metric_type, r.dataset_name): r.metric_value for r in results}
    assert values[("lc_win_rate", "AlpacaEval 2")] == 76.73
    assert values[("win_rate", "AlpacaEval 2")] == 77.83


# --- AlpacaEval's 805 instructions as published ----------------------------------------------


def test_the_published_evaluation_file_is_read_in_order_and_answers_keep_it(tmp_path):
    """alpaca_eval_gpt4_baseline.json's shape (a JSON array of instruction, output, generator,
    dataset; 805 rows from five sources): read as data.eval_prompts in its order with each row's
    dataset, usable as eval.reference_outputs as it is, and the answers exported in its order."""
    from src.evaluation.alpaca_eval import reference_from_file, write_alpaca_eval
    from src.stages import eval as eval_stage
    from tests.support.helpers import ALPACA_EVAL_INSTRUCTIONS, compose_cfg

    sources = ("helpful_base", "koala", "oasst", "selfinstruct", "vicuna")
    rng = np.random.default_rng(0)
    published = [
        {
            "dataset": sources[int(rng.integers(len(sources)))],
            "instruction": f"Instruction {i}: {'why ' * int(rng.integers(1, 5))}?",
            "output": f"GPT-4 Turbo's answer {i}",
            "generator": "gpt4_turbo",
        }
        for i in rng.permutation(ALPACA_EVAL_INSTRUCTIONS)
    ]
    path = tmp_path / "alpaca_eval_gpt4_baseline.json"
    path.write_text(json.dumps(published, indent=4))
    cfg = compose_cfg("model=tiny-mistral", "logger=none", f"data.eval_prompts={path}")
    instructions = eval_stage.load_instructions(cfg)
    assert [p.prompt for p in instructions] == [r["instruction"] for r in published]
    assert [p.dataset for p in instructions] == [r["dataset"] for r in published]

    label, reference = reference_from_file(str(path), instructions, str(path))
    assert label == "gpt4_turbo"
    assert [reference[p.prompt_id]["output"] for p in instructions] == [
        r["output"] for r in published
    ]

    answered = {p.prompt_id: {"output": f"ours {i}"} for i, p in enumerate(instructions)}
    answered.pop(instructions[3].prompt_id)  # an instruction over eval.max_prompt_length
    out = tmp_path / "model_outputs.json"
    write_alpaca_eval(out, instructions, answered, "policy", "fallback")
    exported = json.loads(out.read_text())
    kept = [r for i, r in enumerate(published) if i != 3]
    assert [e["instruction"] for e in exported] == [r["instruction"] for r in kept]
    assert [e["dataset"] for e in exported] == [r["dataset"] for r in kept]
    assert {e["generator"] for e in exported} == {"policy"}
