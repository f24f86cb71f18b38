"""Stages `rank` and `pairs` on the tiny judges: the contract rows, llm-blender's scores, the
hybrid pool, shards, resume, refusal of another config's chunks, and every bad input's message.

The generation output the stages read is written here by hand in the contract's format
(docs/design.md §5), so each test controls exactly what the judge sees.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import src.stages.pairs as pairs_stage
import src.stages.rank as rank_stage
from src.config import REPO_ROOT, ConfigError, Stage
from src.core.artifacts import atomic_write_json, atomic_write_text, file_sha256, read_jsonl
from src.core.contracts import PairRow, RankedRow
from src.core.errors import StageError
from src.core.identity import Key, stage_key
from src.core.records import Finished, write_record
from src.ranking.blender_compat import PairRMLoadError, load_pairrm
from src.ranking.judge import policy_chat_template
from src.ranking.preferences import all_tied
from tests.support.helpers import compose_cfg, one_line_failure, run_recorded

CORPUS = (REPO_ROOT / "data" / "tiny" / "corpus.txt").read_text().split()


pytestmark = pytest.mark.usefixtures("runs_in_tmp", "tiny_dir")  # tests/conftest.py


def cfg_for(*overrides: str):
    return compose_cfg("model=tiny-mistral", "logger=none", "method.K=3", *overrides)


def text(i: int, words: int) -> str:
    return " ".join(CORPUS[(37 * i) % 4000 :][:words])


def generation_rows(n: int, K: int = 3) -> list[dict]:
    return [
        {
            "prompt_id": f"q{p:03d}",
            "prompt": f"Question {p}: {text(p, 6)}?",
            "responses": [text(100 * p + k, 4 + 7 * k) for k in range(K)],
            "finish_reasons": ["stop"] * K,
            "num_tokens": [4 + 7 * k for k in range(K)],
            "seeds": [50 * k for k in range(K)],
        }
        for p in range(n)
    ]


def write_generation(cfg, rows: list[dict], shards: int = 1, finished: bool = True) -> None:
    stage = cfg.stage_dir("generate")
    for s in range(shards):
        mine = rows[s::shards]
        atomic_write_text(
            stage / f"responses-shard{s:03d}-of-{shards:03d}.jsonl",
            "".join(json.dumps(r) + "\n" for r in mine),
        )
    if finished:  # as the generate stage of this config records it: the command line checks
        write_record(
            stage,
            Finished(stage_key(cfg.as_tree(), Stage.generate), {"shards": shards}, {}),
        )


def ranked(cfg) -> list[dict]:
    rows = []
    for path in sorted(cfg.stage_dir("rank").glob("ranked-shard*.jsonl")):
        rows += [row for _, row in read_jsonl(path)]
    return rows


def pairs_of(cfg) -> list[dict]:
    return pq.read_table(cfg.stage_dir("pairs") / "pairs.parquet").to_pylist()


# --- SPPO with PairRM ---------------------------------------------------------------------------


def test_sppo_rank_then_pairs_follow_the_contract_and_llm_blender(tiny_dir):
    cfg = cfg_for("ranker.batch_size=5")
    rows = generation_rows(4)
    write_generation(cfg, rows)
    counts = run_recorded(cfg, "rank")
    assert counts["ranked"] == 4 and counts["comparisons"] == 4 * 3 * 2

    out = ranked(cfg)
    assert [r["prompt_id"] for r in out] == [r["prompt_id"] for r in rows]
    for r, g in zip(out, rows, strict=True):
        assert set(r) == set(RankedRow.__annotations__), (
            "a PairRM row has every key of the contract"
        )
        assert {k: r[k] for k in g} == g, "the generation row is kept as it was"
        assert r["sources"] == ["policy"] * 3 and r["judge"] == "tiny-pairrm"
        P, p = np.array(r["win_matrix"]), np.array(r["win_rate"])
        assert p.sum() == pytest.approx(1.5, abs=1e-12), "win rates sum to K/2"
        np.testing.assert_allclose(P + P.T, np.ones((3, 3)), atol=1e-12)
        C = np.array(r["comparisons"])
        np.testing.assert_allclose(r["scores"], (C - C.T).mean(-1), atol=1e-12)

    # the scores are llm-blender's own, for the prompt as pi_{t-1}'s chat template renders it
    render = policy_chat_template(cfg.run.init_policy, cfg.model.revision)
    assert render("hi").startswith("<s>[INST] hi [/INST]")
    blender = load_pairrm(str(tiny_dir / "tiny-pairrm"))
    reference = blender.rank(
        [render(g["prompt"]) for g in rows],
        [g["responses"] for g in rows],
        return_scores=True,
        batch_size=1,
        disable_tqdm=True,
    )
    assert np.abs(np.array([r["scores"] for r in out]) - reference).max() <= 1e-5

    pairs_counts = run_recorded(cfg, "pairs")
    pairs = pairs_of(cfg)
    assert pairs_counts["pairs"] == len(pairs) == 4
    assert all(list(pair) == list(PairRow.__annotations__) for pair in pairs), (
        "the contract's columns"
    )
    assert [p["prompt_id"] for p in pairs] == sorted(p["prompt_id"] for p in pairs)
    by_id = {r["prompt_id"]: r for r in out}
    for pair in pairs:
        r = by_id[pair["prompt_id"]]
        w, lose = int(np.argmax(r["scores"])), int(np.argmin(r["scores"]))
        assert (pair["chosen"], pair["rejected"]) == (r["responses"][w], r["responses"][lose])
        assert pair["prompt"] == r["prompt"]
        assert pair["chosen_probs"] == r["win_matrix"][w][lose]
        assert pair["chosen_probs_win"] == r["win_rate"][w]
        assert pair["chosen_probs_lose"] == r["win_rate"][lose]
        assert (pair["chosen_score"], pair["rejected_score"]) == (r["scores"][w], r["scores"][lose])
    done = json.loads((cfg.stage_dir("pairs") / "done.json").read_text())
    assert done["counts"]["pairs"] == 4 and done["counts"]["ties_dropped"] == 0

    # the training stage reads them: the default training.pairs is this file
    from src.training.data import read_pairs

    assert len(list(read_pairs(cfg.training.pairs, "sppo"))) == 4


def test_direct_probabilities_and_no_self_term_are_switches():
    cfg = cfg_for("ranker.win_prob=direct", "ranker.self_term=false")
    write_generation(cfg, generation_rows(2))
    run_recorded(cfg, "rank")
    for r in ranked(cfg):
        C, P = np.array(r["comparisons"]), np.array(r["win_matrix"])
        off = ~np.eye(3, dtype=bool)
        np.testing.assert_allclose(P[off], (1 / (1 + np.exp(-C)))[off], atol=1e-12)
        expected = [(P[i].sum() - 0.5) / 2 for i in range(3)]
        np.testing.assert_allclose(r["win_rate"], expected, atol=1e-12)


# --- WPO with a reward model and the hybrid pool ---------------------------------------------------


def test_wpo_with_the_reward_model_and_a_hybrid_pool(tmp_path, tiny_dir):
    cfg_external = tmp_path / "external.jsonl"
    rows = generation_rows(4)
    # matched by prompt_id for some prompts, by the exact prompt text for the others
    external = [
        {"prompt_id": r["prompt_id"], "response": f"External answer {i}: {text(i, 30)}"}
        for i, r in enumerate(rows[:2])
    ] + [
        {"prompt": r["prompt"], "output": f"External answer {i + 2}."}
        for i, r in enumerate(rows[2:])
    ]
    cfg_external.write_text("".join(json.dumps(e) + "\n" for e in external))
    cfg = cfg_for(
        "method=wpo", "ranker=tiny-reward-model", f"data.external_responses={cfg_external}"
    )
    assert cfg.method.pair_selection.value == "wpo_tiebreak"
    write_generation(cfg, rows)
    counts = run_recorded(cfg, "rank")
    assert counts["external_added"] == 4 and counts["comparisons"] == 4 * 4

    out = ranked(cfg)
    for r, e in zip(out, external, strict=True):
        assert len(r["responses"]) == 4 and r["sources"] == ["policy"] * 3 + ["external"]
        assert r["responses"][-1] == e.get("response", e.get("output"))
        assert r["finish_reasons"][-1] == "external" and r["num_tokens"][-1] is None
        assert "comparisons" not in r and sum(r["win_rate"]) == pytest.approx(2.0, abs=1e-12)

    # the scores are the reward model's own, each conversation scored alone
    import torch

    from src.ranking.reward_model import load_reward_model_judge

    judge = load_reward_model_judge(
        str(tiny_dir / "tiny-rm"), 1224, 412, 1, False, torch.device("cpu")
    )
    alone = judge.score([out[0]["prompt"]], [out[0]["responses"]])[0]
    np.testing.assert_allclose(out[0]["scores"], alone, atol=1e-5)

    run_recorded(cfg, "pairs")
    by_id = {r["prompt_id"]: r for r in out}
    for pair in pairs_of(cfg):
        r = by_id[pair["prompt_id"]]
        assert pair["chosen_score"] == max(r["scores"]) and pair["rejected_score"] == min(
            r["scores"]
        )
        assert pair["chosen_source"] == r["sources"][pair["chosen_index"]]


def test_the_reward_model_refuses_direct_probabilities():
    with pytest.raises(ConfigError, match="ranker.win_prob='direct'.*reward model"):
        cfg_for("ranker=tiny-reward-model", "ranker.win_prob=direct")


# --- ties and empty responses -------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_all_tied_prompts_are_dropped_and_counted_or_kept(policy):
    cfg = cfg_for(f"ranker.ties={policy}")
    rows = generation_rows(3)
    rows[1]["responses"] = ["The same answer."] * 3  # PairRM cannot tell them apart
    write_generation(cfg, rows)
    counts = run_recorded(cfg, "rank")
    assert counts["all_tied"] == 1
    assert all_tied(np.array(ranked(cfg)[1]["scores"]))
    done = run_recorded(cfg, "pairs")
    pairs = {p["prompt_id"]: p for p in pairs_of(cfg)}
    if policy == "drop":
        assert done["ties_dropped"] == 1 and "q001" not in pairs and len(pairs) == 2
    else:  # the reference: argmax = argmin, chosen equals rejected
        assert (
            done["ties_kept"] == 1
            and pairs["q001"]["chosen_index"] == pairs["q001"]["rejected_index"]
        )


def test_responses_with_unicode_line_separators_rank_whole():
    """JSON leaves U+2028, U+2029 and U+0085 unescaped, and str.splitlines() splits at them: a
    sampled response holding one must stay one row, not break the stage."""
    cfg = cfg_for()
    rows = generation_rows(2)
    rows[0]["responses"][1] = "one\u2028two\u2029three\x85four"
    write_generation(cfg, rows)
    assert run_recorded(cfg, "rank")["ranked"] == 2
    assert ranked(cfg)[0]["responses"][1] == "one\u2028two\u2029three\x85four"
    run_recorded(cfg, "pairs")
    assert len(pairs_of(cfg)) == 2


def test_every_prompt_tied_is_an_error_not_an_empty_training_set():
    cfg = cfg_for()
    rows = generation_rows(2)
    for r in rows:
        r["responses"] = ["Same."] * 3
    write_generation(cfg, rows)
    run_recorded(cfg, "rank")
    with pytest.raises(StageError, match="no pairs: all 2 ranked prompts have tied scores"):
        run_recorded(cfg, "pairs")
    assert not (cfg.stage_dir("pairs") / "pairs.parquet").exists()


def test_empty_responses_are_dropped_and_counted_or_kept():
    rows = generation_rows(3)
    rows[0]["responses"][1] = "   "
    rows[2]["responses"][0] = rows[2]["responses"][2] = ""  # one left: the prompt goes
    dropped = cfg_for("run_name=drop")
    write_generation(dropped, rows)
    counts = run_recorded(dropped, "rank")
    assert counts["empty_responses_dropped"] == 3 and counts["prompts_dropped_too_few"] == 1
    out = ranked(dropped)
    assert [r["prompt_id"] for r in out] == ["q000", "q001"]
    assert out[0]["responses"] == [rows[0]["responses"][0], rows[0]["responses"][2]]
    assert out[0]["num_tokens"] == [rows[0]["num_tokens"][0], rows[0]["num_tokens"][2]]

    kept = cfg_for("run_name=keep", "ranker.empty_responses=keep")
    write_generation(kept, rows)
    assert run_recorded(kept, "rank")["empty_responses_dropped"] == 0
    assert [len(r["responses"]) for r in ranked(kept)] == [3, 3, 3]


# --- shards and resume --------------------------------------------------------------------------


def test_rank_shards_reproduce_the_unsharded_run():
    rows = generation_rows(7)
    whole = cfg_for("run_name=whole")
    write_generation(whole, rows, shards=2)  # generation shards and rank shards are independent
    run_recorded(whole, "rank")
    run_recorded(whole, "pairs")

    for s in range(3):
        cfg = cfg_for("run_name=sharded", f"ranker.shard={s}", "ranker.num_shards=3")
        if s == 0:
            write_generation(cfg, rows, shards=2)
        run_recorded(cfg, "rank")
        finished = (cfg.stage_dir("rank") / "done.json").exists()
        assert finished == (s == 2), "done.json only once every shard is there"
    by_id = {r["prompt_id"]: r for r in ranked(whole)}
    sharded = ranked(cfg)
    assert len(sharded) == 7
    for r in sharded:
        np.testing.assert_allclose(r["scores"], by_id[r["prompt_id"]]["scores"], atol=1e-6)
    run_recorded(cfg, "pairs")
    assert [p["chosen"] for p in pairs_of(cfg)] == [p["chosen"] for p in pairs_of(whole)]


def leave_as_killed(cfg, last_chunk: int) -> None:
    """The state a kill leaves in a finished ranking's one shard before its chunk `last_chunk`
    was sealed: chunk files only, no shard file, no record."""
    stage = cfg.stage_dir("rank")
    for leftover in ("done.json", "ranked-shard000-of-001.jsonl", "shard000-of-001/counts.json"):
        (stage / leftover).unlink()
    (stage / "shard000-of-001" / f"chunk{last_chunk:05d}.jsonl").unlink()


def test_an_interrupted_rank_resumes_from_its_chunks():
    cfg = cfg_for("ranker.chunk_size=2")
    write_generation(cfg, generation_rows(5))
    run_recorded(cfg, "rank")
    before = ranked(cfg)
    leave_as_killed(cfg, last_chunk=2)
    with pytest.raises(StageError, match="not finished"):
        run_recorded(cfg, "pairs")
    counts = run_recorded(cfg, "rank")
    assert counts["reused_from_earlier_run"] == 4 and counts["ranked"] == 1
    assert ranked(cfg) == before


def test_a_rank_resumed_at_another_batch_size_continues_at_the_kept_rows_one(capsys):
    """The batch size moves the scores by float rounding only, so it is no part of the chunks'
    identity; a resume asked for another goes on at the kept rows' own: the rows of one run."""
    cfg = cfg_for("ranker.chunk_size=4", "ranker.batch_size=1")
    write_generation(cfg, generation_rows(16))
    run_recorded(cfg, "rank")
    rows_file = cfg.stage_dir("rank") / "ranked-shard000-of-001.jsonl"
    before = rows_file.read_bytes()
    leave_as_killed(cfg, last_chunk=3)
    capsys.readouterr()
    counts = run_recorded(cfg_for("ranker.chunk_size=4"), "rank")  # conf/ranker/tiny-pairrm: 4
    assert counts["reused_from_earlier_run"] == 12 and counts["ranked"] == 4
    assert rows_file.read_bytes() == before
    assert (
        "[rank] ranker.batch_size=4 asked; the kept rows were made at 1: continuing at 1 so "
        "that the rows are one run's" in capsys.readouterr().err.splitlines()
    )


def test_chunks_ranked_with_another_config_are_refused():
    cfg = cfg_for("ranker.chunk_size=2")
    write_generation(cfg, generation_rows(3))
    run_recorded(cfg, "rank")
    with pytest.raises(StageError, match="rankings made with a different configuration"):
        run_recorded(cfg_for("ranker.chunk_size=2", "ranker.self_term=false"), "rank")
    # the batch size is no part of the chunks' identity: another one reuses them, as made
    assert (
        run_recorded(cfg_for("ranker.chunk_size=2", "ranker.batch_size=3"), "rank")["ranked"] == 0
    )


# --- bad input ----------------------------------------------------------------------------------


def _one_response(rows):
    rows[1]["responses"] = ["alone"]


def _four_responses(rows):
    rows[2]["responses"].append("a fourth")


def _duplicate(rows):
    rows[2]["prompt_id"] = "q000"


def _no_id(rows):
    del rows[0]["prompt_id"]


def _not_strings(rows):
    rows[0]["responses"][1] = 7


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            _one_response,
            r"responses-shard000-of-001\.jsonl:2: prompt_id 'q001' has 1 response\(s\): ranking needs at least 2",
        ),
        (_four_responses, r":3: prompt_id 'q002' has 4 responses but method\.K=3"),
        (_duplicate, r":3: prompt_id 'q000' appears again \(first at .*:1\)"),
        (_no_id, r":1: the row has no prompt_id"),
        (_not_strings, r":1: prompt_id 'q000': `responses` must be a list of strings"),
    ],
)
def test_bad_generation_rows_are_named(corrupt, message):
    cfg = cfg_for()
    rows = generation_rows(3)
    corrupt(rows)
    write_generation(cfg, rows)
    with pytest.raises(StageError, match=message):
        run_recorded(cfg, "rank")
    assert not list(cfg.stage_dir("rank").glob("**/*.jsonl")), "nothing ranked from bad input"


def test_an_unfinished_generation_is_never_read():
    cfg = cfg_for()
    write_generation(cfg, generation_rows(2), finished=False)
    with pytest.raises(StageError, match=r"generate is not finished \(no done\.json\)") as refused:
        run_recorded(cfg, "rank")
    assert refused.value.fix == "stage=generate iter=1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"prompt_id": "q000", "response": "x"}\n',
            r"no external response for 2 of 3 prompts \(e\.g\. prompt_id 'q001', 'q002'\)",
        ),
        (
            '{"prompt_id": "q000", "response": "x"}\n{"prompt_id": "q000", "response": "y"}\n',
            r":2: a second external response for 'q000'",
        ),
        ('{"prompt_id": "q000"}\n', r":1: no `response` string"),
        ('{"response": "x"}\n', r":1: a row needs a `prompt_id` or a `prompt`"),
        ("not json\n", r":1: malformed JSON line"),
        (
            '{"prompt_id": "q000", "response": "x"}\n{"prompt_id": "q001", "response": "a\\ud800"}\n',
            r":2: 'response' holds '\\ud800' at character 1, a lone surrogate",
        ),
    ],
)
def test_bad_external_responses_are_named(tmp_path, content, message):
    path = tmp_path / "external.jsonl"
    path.write_text(content)
    cfg = cfg_for(f"data.external_responses={path}")
    write_generation(cfg, generation_rows(3))
    with pytest.raises(StageError, match=message):
        run_recorded(cfg, "rank")


def test_a_missing_external_file_is_named(tmp_path):
    cfg = cfg_for(f"data.external_responses={tmp_path / 'nope.jsonl'}")
    write_generation(cfg, generation_rows(2))
    with pytest.raises(StageError, match=r"external responses file not found: .*nope\.jsonl"):
        run_recorded(cfg, "rank")


def test_a_nan_score_names_the_prompt_and_writes_nothing(tmp_path, tiny_dir):
    import safetensors.torch

    broken = tmp_path / "nan-rm"
    shutil.copytree(tiny_dir / "tiny-rm", broken)
    weights = safetensors.torch.load_file(broken / "model.safetensors")
    weights["score.weight"][:] = float("nan")
    safetensors.torch.save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    cfg = cfg_for("ranker=tiny-reward-model", f"ranker.model={broken}")
    write_generation(cfg, generation_rows(2))
    with pytest.raises(
        StageError, match=r"non-finite score \(nan\) to response 0 of prompt_id 'q000' \(.*:1\)"
    ):
        run_recorded(cfg, "rank")
    assert not list(cfg.stage_dir("rank").glob("**/*.jsonl"))
    assert not (cfg.stage_dir("rank") / "done.json").exists()


def test_the_offline_pairrm_hub_id_gets_a_clear_message():
    cfg = cfg_for("ranker=pairrm")
    assert cfg.ranker.model == "llm-blender/PairRM"
    write_generation(cfg, generation_rows(2))
    with pytest.raises(
        PairRMLoadError,
        match=r"'llm-blender/PairRM' cannot be fetched offline: pass a local ranker directory",
    ):
        run_recorded(cfg, "rank")


def test_an_unreachable_reward_model_gets_a_clear_message():
    cfg = cfg_for("ranker=reward-model")
    write_generation(cfg, generation_rows(2))
    with pytest.raises(
        StageError,
        match=r"cannot load the reward model 'RLHFlow/ArmoRM-Llama3-8B-v0.1'.*point ranker\.model at a local folder",
    ):
        run_recorded(cfg, "rank")


# --- bad ranked rows: each the rank stage could have written (a judge's or an older version's
# output, an external response), sealed with its record, so only the row's own check tells ------


def write_ranked_row(cfg, line: int, change) -> Path:
    """Rank 3 prompts for real, then `change` the ranked row on `line` (from 1) and seal the
    file again, as the rank stage seals what it writes."""
    write_generation(cfg, generation_rows(3))
    run_recorded(cfg, "rank")
    path = cfg.stage_dir("rank") / "ranked-shard000-of-001.jsonl"
    rows = [row for _, row in read_jsonl(path)]
    change(rows[line - 1])
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    seal = {"rows": len(rows), "sha256": file_sha256(path)}
    atomic_write_json(path.with_suffix(".sealed.json"), seal)
    record = json.loads((cfg.stage_dir("rank") / "done.json").read_text())
    outputs = {**record["outputs"], path.name: seal}
    write_record(
        cfg.stage_dir("rank"),
        Finished(Key(record["key"], record["manifest"]), record["counts"], {}, outputs),
    )
    return path


def _set(key, value, *index):
    def change(row):
        target = row[key]
        for i in index[:-1]:
            target = target[i]
        target[index[-1]] = value

    return change


def _drop(key):
    return lambda row: row.pop(key)


def _append(key, value):
    return lambda row: row[key].append(value)


BAD_RANKED = {
    "win-rate-above-one": (
        _set("win_rate", 1.7, 0),
        r"'win_rate'\[0\] is 1\.7, expected a probability in \[0, 1\]$",
    ),
    "a-negative-win-rate": (
        _set("win_rate", -0.2, 2),
        r"'win_rate'\[2\] is -0\.2, expected a probability in \[0, 1\]$",
    ),
    "a-nan-win-probability": (
        _set("win_matrix", float("nan"), 1, 2),
        r"'win_matrix'\[1\]\[2\] is nan, expected a probability in \[0, 1\]$",
    ),
    "an-infinite-score": (
        _set("scores", float("inf"), 1),
        r"'scores'\[1\] is inf, expected a finite score \(a NaN or infinite score",
    ),
    "a-score-as-text": (
        _set("scores", "0.3", 0),
        r"'scores'\[0\] is a str \('0\.3'\), expected a finite score",
    ),
    "a-win-rate-too-many": (
        _append("win_rate", 0.5),
        r"'win_rate' is a list of 4, expected one item per response \(3\)$",
    ),
    "a-sources-too-few": (
        lambda row: row["sources"].pop(),
        r"'sources' is a list of 2, expected one item per response \(3\)$",
    ),
    "a-short-win-matrix-row": (
        lambda row: row["win_matrix"][2].pop(),
        r"'win_matrix'\[2\] is a list of 2, expected 3 items, one per response$",
    ),
    "a-response-not-a-string": (
        _set("responses", 7, 1),
        r"'responses'\[1\] is 7, expected a string$",
    ),
    "no-win-rate": (_drop("win_rate"), r"lacks win_rate$"),
    "a-blank-prompt": (
        lambda row: row.update(prompt="  "),
        r"'prompt' is only whitespace, expected text$",
    ),
}


@pytest.mark.parametrize(("change", "message"), BAD_RANKED.values(), ids=BAD_RANKED.keys())
def test_a_bad_ranked_row_names_its_line_and_field_and_ranks_again(change, message):
    cfg = cfg_for("stage=pairs")
    path = write_ranked_row(cfg, 2, change)
    with pytest.raises(pairs_stage.PairsBuildError) as refused:
        run_recorded(cfg, "pairs")
    assert re.match(rf"{re.escape(str(path))}:2: prompt_id 'q001': {message}", str(refused.value))
    # making the pairs again would make the same pair: ranking again is the fix
    assert refused.value.overrides(str(cfg.stage)) == "stage=rank iter=1 pipeline.redo=[rank]"
    assert not (cfg.stage_dir("pairs") / "pairs.parquet").exists()


def test_a_blank_response_kept_by_the_ranker_makes_no_pair():
    """`ranker.empty_responses=keep` ranks blank responses like any other; a pair with one on a
    side is refused where it is made, naming the ranked row, not left for training to find."""
    cfg = cfg_for("stage=pairs", "ranker.empty_responses=keep")
    rows = generation_rows(3)
    # of three responses two blank: one of them is the chosen or the rejected one
    rows[1]["responses"][0], rows[1]["responses"][2] = "", " \n"
    write_generation(cfg, rows)
    run_recorded(cfg, "rank")
    with pytest.raises(pairs_stage.PairsBuildError) as refused:
        run_recorded(cfg, "pairs")
    path = cfg.stage_dir("rank") / "ranked-shard000-of-001.jsonl"
    assert re.match(
        rf"{re.escape(str(path))}:2: prompt_id 'q001': the pair of responses \d and \d: "
        r"'(chosen|rejected)' is (empty|only whitespace), expected text; a pair needs text on "
        r"both sides \(ranker\.empty_responses=drop",
        str(refused.value),
    ), str(refused.value)
    assert (
        refused.value.overrides(str(cfg.stage))
        == "stage=rank iter=1 pipeline.redo=[rank] ranker.empty_responses=drop"
    )
    assert not (cfg.stage_dir("pairs") / "pairs.parquet").exists()


def test_a_full_disk_names_the_file_the_pairs_stage_could_not_write(monkeypatch):
    cfg = cfg_for()
    write_generation(cfg, generation_rows(2))
    run_recorded(cfg, "rank")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write says it: of no file

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as refused:
        run_recorded(cfg, "pairs")
    run = Path(refused.value.filename)  # a run of the sort, beside the stage's folder
    assert refused.value.errno == errno.ENOSPC and run.name == "run00000.jsonl"
    assert run.parent.parent == cfg.stage_dir("pairs").parent


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.slow
def test_command_line_rank_then_pairs(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SELFPLAY_RUNS": str(tmp_path / "cli"), "HF_HUB_OFFLINE": "1"}
    common = ["model=tiny-mistral", "iter=1", "logger=none", "method.K=3"]
    cfg = compose_cfg(*common)
    write_generation(cfg, generation_rows(3))
    # compose_cfg resolved paths under this test's SELFPLAY_RUNS; the CLI must see the same dir
    generated = cfg.stage_dir("generate")
    target = Path(str(generated).replace(str(tmp_path / "runs"), str(tmp_path / "cli")))
    shutil.copytree(generated, target)

    def main(*args):
        return subprocess.run(
            [sys.executable, "-m", "src.main", *args, *common],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    for stage in ("rank", "pairs"):
        result = main(f"stage={stage}")
        assert result.returncode == 0, result.stderr[-2000:]
    assert (target.parent / "pairs" / "pairs.parquet").is_file()

    shutil.rmtree(target.parent / "rank")
    (target / "done.json").unlink()
    failed = main("stage=rank")
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "is not finished (no done.json)" in last
    # the user's own command, with the stage that makes the missing input
    assert last.endswith(f"run `python -m src.main stage=generate {' '.join(common)}`"), last


def test_a_run_that_failed_before_its_first_chunk_does_not_block_a_corrected_config():
    cfg = cfg_for("ranker=pairrm")  # a hub id, offline: fails when the judge loads
    write_generation(cfg, generation_rows(2))
    with pytest.raises(PairRMLoadError):
        run_recorded(cfg, "rank")
    assert run_recorded(cfg_for(), "rank")["ranked"] == 2


def test_the_command_line_ends_a_bad_ranked_row_with_the_command_that_ranks_again(tmp_path):
    cfg = cfg_for()
    path = write_ranked_row(cfg, 3, _set("win_rate", 1.7, 1))
    result = subprocess.run(
        [sys.executable, "-m", "src.main", "model=tiny-mistral", "logger=none", "method.K=3"]
        + ["stage=pairs"],
        cwd=REPO_ROOT,
        env={**os.environ, "SELFPLAY_RUNS": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = one_line_failure(result, 1)
    assert line.startswith(
        f"error: {path}:3: prompt_id 'q002': 'win_rate'[1] is 1.7, expected a probability in [0, 1]"
    ), line
    assert line.endswith(
        "; run `python -m src.main model=tiny-mistral logger=none method.K=3 stage=rank iter=1 "
        "'pipeline.redo=[rank]'`"
    ), line
    assert not (cfg.stage_dir("pairs") / "pairs.parquet").exists()


# --- nothing to work on -------------------------------------------------------------------------


def test_a_generation_with_no_rows_is_refused_by_rank_and_an_empty_ranking_by_pairs():
    """Records an older version could leave (generate finished with every prompt skipped): a
    stage with nothing to work on stops, naming the stage to redo, instead of blaming ties."""
    cfg = cfg_for()
    write_generation(cfg, [])
    with pytest.raises(rank_stage.RankError) as refused:
        run_recorded(cfg, "rank")
    assert str(refused.value) == (
        f"{cfg.stage_dir('generate')} holds no responses: nothing to rank; generate again"
    )
    assert (
        refused.value.overrides(str(cfg.stage)) == "iter=1 pipeline.redo=[generate]"
    )  # stage=all: and on
    assert not (cfg.stage_dir("rank") / "done.json").exists()

    rank = cfg.stage_dir("rank")
    atomic_write_text(rank / "ranked-shard000-of-001.jsonl", "")
    write_record(rank, Finished(stage_key(cfg.as_tree(), Stage.rank), {"shards": 1}, {}))
    with pytest.raises(pairs_stage.PairsBuildError) as no_pairs:
        run_recorded(cfg, "pairs")
    assert str(no_pairs.value) == f"no pairs: {rank} holds no ranked prompts; rank again"
    assert no_pairs.value.overrides(str(cfg.stage)) == "iter=1 pipeline.redo=[rank]"
    assert not (cfg.stage_dir("pairs") / "done.json").exists()


def test_every_prompt_short_of_responses_is_refused_but_an_empty_shard_goes_on():
    rows = generation_rows(2)
    for r in rows:
        r["responses"][1] = r["responses"][2] = " "
    cfg = cfg_for("ranker.shard=1", "ranker.num_shards=3")  # shard 1 of 3: one prompt of its own
    write_generation(cfg, rows)
    with pytest.raises(
        rank_stage.RankError,
        match=r"^all 2 prompts of .*/generate have fewer than 2 non-empty responses once blank "
        r"ones are dropped \(ranker\.empty_responses=drop\): nothing to rank",
    ):
        run_recorded(cfg, "rank")
    assert not list(cfg.stage_dir("rank").glob("ranked-shard*.jsonl"))

    # one prompt left to rank: shard 1 (its prompt dropped) and shard 2 (none) finish empty
    rows[0]["responses"][1] = "An answer after all."
    for s in range(3):
        cfg = cfg_for("run_name=some", f"ranker.shard={s}", "ranker.num_shards=3")
        if s == 0:
            write_generation(cfg, rows)
        run_recorded(cfg, "rank")
    assert [r["prompt_id"] for r in ranked(cfg)] == ["q000"]
    done = json.loads((cfg.stage_dir("rank") / "done.json").read_text())["counts"]
    assert done["ranked"] == 1 and done["prompts_dropped_too_few"] == 1 and done["shards"] == 3
