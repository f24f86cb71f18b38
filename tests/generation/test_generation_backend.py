"""The HF backend: seeded Gumbel-max sampling and the shared prefill, on the real tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from src.generation.hf_backend import HFGenerator, SeededSampler, sample_seed

PROMPTS = ["Hi there", "Write a long poem about the sea and the sky, please.", "What is 2+2?"]


def sampler_choices(
    logits: torch.Tensor, rows: int, temperature: float, top_p: float
) -> torch.Tensor:
    sampler = SeededSampler(list(range(rows)), temperature, top_p, torch.device("cpu"))
    out = sampler(torch.zeros((rows, 1), dtype=torch.long), logits.expand(rows, -1).clone())
    assert torch.isfinite(out).sum(dim=-1).eq(1).all(), "one token per row survives"
    return out.argmax(dim=-1)


def test_seeded_sampling_follows_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    rows = 20000
    counts = torch.bincount(sampler_choices(logits, rows, 0.7, 1.0), minlength=5).double() / rows
    expected = (logits[0].double() / 0.7).softmax(-1)
    sigma = (expected * (1 - expected) / rows).sqrt()
    assert ((counts - expected).abs() <= 4 * sigma + 1e-9).all(), (counts, expected)


def test_top_p_keeps_the_smallest_nucleus_and_greedy_is_argmax():
    logits = torch.tensor([[3.0, 2.0, 0.0, -2.0]])  # probabilities ~ .71 .26 .04 .00
    chosen = sampler_choices(logits, 4000, 1.0, 0.9)
    assert set(chosen.tolist()) == {0, 1}, "0.71 < 0.9: the second token joins, the rest never"
    assert set(sampler_choices(logits, 50, 1.0, 0.5).tolist()) == {0}
    assert set(sampler_choices(logits, 50, 0.0, 1.0).tolist()) == {0}


def test_sample_seeds_are_stable_and_distinct():
    assert sample_seed(50, "p1") == sample_seed(50, "p1")
    assert len({sample_seed(s, p) for s in (0, 50, 100) for p in ("p1", "p2")}) == 6


@pytest.fixture(params=["tiny-mistral", "tiny-gemma2"])
def generator_parts(request, tiny_dir):
    path = tiny_dir / request.param
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    eos = GenerationConfig.from_pretrained(path).eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    ids = [
        tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        ).input_ids
        for p in PROMPTS
    ]
    return model, tokenizer, eos, ids


def test_shared_prefill_decodes_exactly_like_plain_generate(generator_parts):
    """Greedy through the shared, left-padded prefill = HF's own greedy on each prompt alone."""
    model, tokenizer, eos, ids = generator_parts
    ours = HFGenerator(model, tokenizer, eos_ids=eos, temperature=0.0, top_p=1.0, max_new_tokens=12)
    batch = ours(ids, ["a", "b", "c"], [0, 50])
    for prompt_ids, samples in zip(ids, batch, strict=True):
        reference = model.generate(
            torch.tensor([prompt_ids]),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=eos,
            pad_token_id=ours.pad_id,
        )[0, len(prompt_ids) :].tolist()
        expected = ours._sample(reference)
        assert [s.text for s in samples] == [expected.text] * 2  # greedy: both samples agree
        assert samples[0].num_tokens == expected.num_tokens


def test_samples_depend_on_their_seed_not_on_their_batch(generator_parts):
    model, tokenizer, eos, ids = generator_parts
    gen = HFGenerator(model, tokenizer, eos_ids=eos, temperature=0.7, top_p=0.9, max_new_tokens=16)
    seeds = [0, 50, 100, 150, 200]
    together = gen(ids, ["a", "b", "c"], seeds)
    alone = gen([ids[1]], ["b"], seeds)[0]
    assert [s.text for s in together[1]] == [s.text for s in alone]
    assert len({s.text for s in together[1]}) == 5, "five seeds, five different samples"
    again = gen(ids, ["a", "b", "c"], seeds)
    assert [[s.text for s in r] for r in again] == [[s.text for s in r] for r in together]
    other = gen([ids[1]], ["b"], [1, 51, 101, 151, 201])[0]
    assert [s.text for s in other] != [s.text for s in alone]
    assert all(
        s.finish_reason in ("stop", "length") and 0 < s.num_tokens <= 16
        for r in together
        for s in r
    )


def test_counter_noise_is_uniform_and_a_pure_function_of_key_step_and_token():
    from src.generation.hf_backend import counter_uniform

    keys = torch.tensor([sample_seed(s, "p") for s in (0, 50, 100)])
    u = counter_uniform(keys, step=3, vocab=50000)
    assert u.shape == (3, 50000) and bool((u > 0).all() and (u < 1).all())
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    assert torch.equal(counter_uniform(keys[1:2], step=3, vocab=50000), u[1:2]), (
        "rows are independent"
    )
    assert not torch.equal(counter_uniform(keys, step=4, vocab=50000), u)
    assert (u[0] - u[1]).abs().mean() > 0.2, "different keys, different streams"
