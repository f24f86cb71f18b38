"""The toy task of the tiny models (src/tiny/toy.py): the preference is what its docs say, no
length signal hides in it, data/ is what src/tiny/data.py generates, and the trained judges —
loaded and called as the rank and eval stages call them — agree with the preference on answers
they never saw."""

from __future__ import annotations

import json
import random
from statistics import mean

import pytest

from src.config import REPO_ROOT
from src.stages.common import load_judge
from src.tiny import data, toy
from tests.support.helpers import compose_cfg

DATA = REPO_ROOT / "data"


def test_the_registers_carry_no_length_signal():
    assert len(toy.HELPFUL) == len(toy.EVASIVE)

    def mean_length(templates) -> float:  # every template with every topic
        return mean(
            len(t.format(t=a, u=b)) for t in templates for a in toy.TOPICS for b in toy.TOPICS
        )

    assert abs(mean_length(toy.HELPFUL) - mean_length(toy.EVASIVE)) < 1.0
    # an answer's length does not predict its share
    rng = random.Random(0)
    answers = [toy.sample_answer(rng) for _ in range(4000)]
    short = [a.share for a in answers if a.sentences <= 2]
    long = [a.share for a in answers if a.sentences >= 4]
    assert abs(mean(short) - mean(long)) < 0.03


def test_the_share_read_off_a_text_is_the_share_it_was_made_with():
    rng = random.Random(1)
    for _ in range(300):
        answer = toy.sample_answer(rng)
        assert toy.helpful_share(answer.text) == pytest.approx(answer.share)
        assert toy.well_formed(answer.text)
    broken = toy.sample_answer(random.Random(2), share=1.0, sentences=3, garbled=1.0)
    assert broken.helpful == 0 and not toy.well_formed(broken.text)
    assert toy.helpful_share("") is None


def test_the_preference_is_the_share_and_is_antisymmetric():
    rng = random.Random(3)
    for _ in range(300):
        a, b = toy.sample_answer(rng), toy.sample_answer(rng)
        assert toy.preference(a, b) + toy.preference(b, a) == 1.0
        assert toy.preference(a, b) == (0.5 if a.share == b.share else float(a.share > b.share))
    one_helpful = toy.ToyAnswer("x", 1, 1)
    assert toy.preference(one_helpful, toy.ToyAnswer("y z", 4, 5)) == 1.0  # not the longer one


def test_synthetic_pairs_follow_their_seed_and_eval_instructions_are_held_out():
    assert toy.preference_data("a", 50) != toy.preference_data("b", 50)
    assert toy.preference_data("a", 50) == toy.preference_data("a", 50)
    # the eval instructions are never training prompts
    eval_set = {r["instruction"] for r in json.loads((DATA / "prompts" / "eval.json").read_text())}
    assert not eval_set & set(toy.training_prompts())


def test_data_holds_what_the_generator_makes(tmp_path):
    """data/ is src/tiny/data.py's output over the hand-written rows: run it on a copy, compare."""
    copy = tmp_path / "data"
    for sub in ("prompts", "tiny"):
        (copy / sub).mkdir(parents=True)
    for path in [*(DATA / "prompts").iterdir(), DATA / "tiny" / "external_responses.jsonl"]:
        (copy / path.relative_to(DATA)).write_bytes(path.read_bytes())
    data.write_data(copy)
    for path in copy.rglob("*.json*"):
        assert path.read_bytes() == (DATA / path.relative_to(copy)).read_bytes(), path
    training, evaluation = data.generated_instructions()
    ids = set()
    for t in (1, 2, 3):
        rows = [
            json.loads(x)
            for x in (DATA / "prompts" / f"iter{t}.jsonl").read_text().split("\n")
            if x
        ]
        assert len(rows) == 40 + data.GENERATED_TRAINING
        assert [r["prompt"] for r in rows[40:]] == training[t - 1]
        ids |= {r["prompt_id"] for r in rows}
    assert len(ids) == 3 * (40 + data.GENERATED_TRAINING)
    texts = toy.training_prompts() + [
        r["instruction"] for r in json.loads((DATA / "prompts" / "eval.json").read_text())
    ]
    assert len(set(texts)) == len(texts) == 510
    eval_rows = json.loads((DATA / "prompts" / "eval.json").read_text())
    assert len(eval_rows) == 30 + data.GENERATED_EVAL >= 100
    assert [r["instruction"] for r in eval_rows[30:]] == evaluation
    external = [
        json.loads(x)
        for x in (DATA / "tiny" / "external_responses.jsonl").read_text().split("\n")
        if x
    ]
    assert sorted(r["prompt_id"] for r in external) == sorted(ids)
    assert mean(toy.helpful_share(r["response"]) for r in external) > 0.7  # a stronger model's


def test_the_recipe_sized_splits_load_as_a_split_does(tmp_path):
    """`python -m src.tiny.data --scale N`: N distinct prompts per iteration, none shared
    between iterations, in the SPPO splits' columns, loaded by the path every local split takes
    (ids derived from the text, as data=sppo derives them)."""
    from src.core.contracts import derive_prompt_id
    from src.generation.prompts import load_prompts

    splits = data.scale_prompts(500)
    assert [len(s) for s in splits] == [500] * 3
    assert len({p for s in splits for p in s}) == 1500
    data.main(["--scale", "300", "--out", str(tmp_path)])
    loaded = load_prompts(str(tmp_path / "iter2.parquet"), max_prompts=200)
    assert [p.prompt for p in loaded] == data.scale_prompts(300)[1][:200]
    assert loaded.duplicates_dropped == 0
    assert [p.prompt_id for p in loaded] == [derive_prompt_id(p.prompt) for p in loaded]
    row = data.scale_row(loaded.prompts[0].prompt)
    assert set(row) == {"prompt", "prompt_id", "chosen", "rejected", "messages"}
    assert [m["role"] for m in row["chosen"]] == ["user", "assistant"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"iter{t}.parquet" for t in (1, 2, 3)]


@pytest.mark.parametrize(
    ("ranker", "name"),
    [
        ("tiny-pairrm", "tiny-pairrm"),
        ("tiny-reward-model", "tiny-rm"),
        ("tiny-judge", "tiny-judge"),
    ],
)
def test_each_trained_judge_agrees_with_the_preference(tiny_dir, ranker, name):
    """Through the stages' own Judge, on 200 fresh pairs of answers with different shares."""
    cfg = compose_cfg("model=tiny-mistral", "logger=none", f"ranker={ranker}")
    judge = load_judge(cfg, cfg.ranker)
    rows = [r for r in toy.preference_data("unseen", 300) if r[3] != 0.5][:200]
    verdicts = judge([p for p, *_ in rows], [[a, b] for _, a, b, _ in rows])
    agree = mean(
        float((s[0] > s[1]) == (y == 1.0)) for (s, _), (*_, y) in zip(verdicts, rows, strict=True)
    )
    assert agree >= 0.85, agree
    record = json.loads((tiny_dir / name / "tiny_build.json").read_text())["training"]
    assert record["agreement"] >= 0.85 and record["steps"] > 0


def test_the_eval_judge_is_not_a_ranker_of_the_training_data():
    for preset in ("model=tiny-mistral", "model=tiny-gemma2", "experiment=tiny-wpo-hb"):
        cfg = compose_cfg(preset, "logger=none")
        assert cfg.eval.judge is not None and cfg.eval.judge.model != cfg.ranker.model, preset
        assert cfg.eval.judge.name == "tiny-judge"


@pytest.mark.parametrize("name", ["tiny-mistral", "tiny-gemma2"])
def test_the_pretrained_policies_answer_in_both_registers(tiny_dir, name):
    """Sampled as the generate stage samples (T 0.7, top-p 0.9): whole toy sentences, answers
    of every length and every share — something for the judges to rank and the loop to move."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / name)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / name).eval()
    torch.manual_seed(0)
    answers = []
    for prompt in toy.training_prompts()[:30]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        out = model.generate(
            ids, do_sample=True, temperature=0.7, top_p=0.9, top_k=0, num_return_sequences=5,
            max_new_tokens=96, pad_token_id=tok.pad_token_id or 0,
        )  # fmt: skip
        answers += tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    assert mean(map(toy.well_formed, answers)) >= 0.9
    shares = [toy.helpful_share(a) for a in answers]
    assert 0.25 < mean(shares) < 0.75 and shares.count(0.0) > 10 and shares.count(1.0) > 10
    assert len({len(a.split(". ")) for a in answers}) >= 4  # one sentence to five


def test_pairrm_learns_from_the_encodings_the_rank_stage_makes(tiny_dir):
    """The build's lower token limits cut nothing: the longest training prompts, in either
    policy's template, and the longest answers encode as under PairRM's 1224 / 412."""
    import torch

    from src.ranking.blender_compat import load_pairrm
    from src.ranking.pairrm import PairRMJudge
    from src.tiny import architectures, models

    blender = load_pairrm(str(tiny_dir / "tiny-pairrm"))
    building = PairRMJudge(blender, *models.PAIRRM_TRAINING_LIMITS, 4)
    ranking = PairRMJudge(blender, 1224, 412, 4)
    rng = random.Random(0)
    answers = [
        toy.sample_answer(rng, sentences=5, garbled=g).text for g in (0, 1) for _ in range(50)
    ]
    longest = sorted(answers, key=len)[-2:]
    for prompt in sorted(toy.training_prompts(), key=len)[-5:]:
        for template in architectures.POLICY_PROMPT_FORMATS:
            source = architectures.chat_prompt(prompt, *template)
            a, b = building.encode(source, longest), ranking.encode(source, longest)
            assert torch.equal(a.source, b.source)
            assert all(torch.equal(x, y) for x, y in zip(a.candidates, b.candidates, strict=True))
