"""The streamed LM head (src/training/policy_logps.py, src/training/losses.py: response_logps):
the numbers of the full [B, T, V] logits — log-probs, WPO's m(y), every loss and the gradients
— without those logits ever existing, on the real tiny Mistral and Gemma-2 (soft-capped, tied).
Distributed runs (ZeRO-3, DDP) are in tests/training/test_training.py."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from src.training.data import PairCollator, TokenisedPair, shifted_labels
from src.training.losses import LOSS_TYPES, preference_loss, response_logps, wpo_weight
from src.training.policy_logps import StreamedLMHead, batch_response_logps, stream_lm_head

MODELS = ["tiny-mistral", "tiny-gemma2"]
TOLERANCE = 1e-5  # fp32 rounding, relative to the largest entry


def load(tiny_dir, name: str, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(tiny_dir / name, dtype=dtype)


def collated(vocab: int, seed: int = 0) -> dict:
    """Three pairs with prompts and responses of different lengths: prompt rows, response rows
    and padding in every sequence."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(5, vocab, (n,), generator=g).tolist()

    lengths = [(9, 14, 7), (3, 6, 12), (14, 1, 5)]
    pairs = [TokenisedPair(i, ids(p), ids(c), ids(r), {}) for i, (p, c, r) in enumerate(lengths)]
    return PairCollator(pad_id=0)(pairs)


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = want.detach().abs().max().item()
    error = (got.detach().double() - want.detach().double()).abs().max().item()
    assert error <= TOLERANCE * max(scale, 1e-30), (
        f"{what}: max error {error:.3g}, scale {scale:.3g}"
    )


def full_logits_stats(hidden, weight, labels, mask, softcap):
    """The obvious computation: the model's whole [B, T, V] logits, soft-capped as
    Gemma2ForCausalLM does, then an fp32 log-softmax."""
    logits = torch.nn.functional.linear(hidden, weight)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    log_p = logits.float().log_softmax(-1)
    m = mask.float()
    token = log_p.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    a = token - torch.logsumexp(2 * log_p, -1)  # a_t = log p(y_t) − log Σ_v p(v)²
    return (token * m).sum(-1), ((a * m).sum(-1) / m.sum(-1).clamp(min=1)).detach()


def every_loss(logps: torch.Tensor, alignment: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each loss type on the pairs of a batch (chosen rows first), with rewards away from 0."""
    pairs = logps.shape[0] // 2
    g = torch.Generator().manual_seed(1)
    ref = logps.detach() - torch.rand(logps.shape, generator=g)
    probs = torch.rand(3, pairs, generator=g)
    common = {
        "policy_chosen_logps": logps[:pairs],
        "policy_rejected_logps": logps[pairs:],
        "ref_chosen_logps": ref[:pairs],
        "ref_rejected_logps": ref[pairs:],
        "beta": 0.1,
        "eta": 10.0,
        "chosen_probs": probs[0],
        "chosen_probs_win": probs[1],
        "chosen_probs_lose": probs[2],
    }
    losses = {name: preference_loss(name, **common).losses for name in LOSS_TYPES}
    weights = wpo_weight(alignment[:pairs], alignment[pairs:], clamp=None)
    losses["wpo"] = preference_loss("sigmoid", **common, weights=weights).losses
    return losses


def head_inputs(policy, batch):
    """The decoder's final hidden states (a leaf), the head's weight (a leaf), labels, mask."""
    with torch.no_grad():
        hidden = policy.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    weight = policy.get_output_embeddings().weight.detach()
    labels = shifted_labels(batch["input_ids"])
    return hidden, weight, labels, batch["response_mask"]


@pytest.mark.parametrize("chunk_size", [1, 5, 512])
@pytest.mark.parametrize("model", MODELS)
def test_streamed_head_gives_the_full_logits_values_losses_and_gradients(
    model, chunk_size, tiny_dir
):
    policy = load(tiny_dir, model).eval()
    softcap = getattr(policy.config, "final_logit_softcapping", None)
    assert (softcap is not None) == (model == "tiny-gemma2")  # Gemma-2's soft-capping is covered
    hidden, weight, labels, mask = head_inputs(policy, collated(policy.config.vocab_size))

    results = {}
    for way in ("streamed", "full"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if way == "streamed":
            logps, alignment = response_logps(
                h, labels, mask, head=w, softcap=softcap, with_alignment=True, chunk_size=chunk_size
            )
        else:
            logps, alignment = full_logits_stats(h, w, labels, mask, softcap)
        losses = every_loss(logps, alignment)
        total = sum(loss.mean() for loss in losses.values())
        grad_hidden, grad_weight = torch.autograd.grad(total, (h, w))
        results[way] = {
            "log-probs": logps,
            "m(y)": alignment,
            **{f"loss {name}": loss for name, loss in losses.items()},
            "gradient of the hidden states": grad_hidden,
            "gradient of the head's weight": grad_weight,
        }
    for what, want in results["full"].items():
        assert_close(results["streamed"][what], want, what)
    assert (mask == 0).any()
    assert torch.equal(  # prompt and padding rows get exactly no gradient
        results["streamed"]["gradient of the hidden states"][mask == 0],
        torch.zeros_like(hidden[mask == 0]),
    )


def test_a_head_that_leaves_out_the_soft_capping_misses_the_full_logits(tiny_dir):
    """What the test above would catch: Gemma-2 without its final-logit soft-capping is off by far
    more than the tolerance, in the values and in the gradients."""
    policy = load(tiny_dir, "tiny-gemma2").eval()
    hidden, weight, labels, mask = head_inputs(policy, collated(policy.config.vocab_size))
    softcap = policy.config.final_logit_softcapping
    w_full, w_uncapped = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    full, _ = full_logits_stats(hidden, w_full, labels, mask, softcap)
    uncapped, _ = response_logps(hidden, labels, mask, head=w_uncapped, softcap=None)
    with pytest.raises(AssertionError, match="log-probs"):
        assert_close(uncapped, full, "log-probs")
    (grad_full,) = torch.autograd.grad(full.sum(), w_full)
    (grad_uncapped,) = torch.autograd.grad(uncapped.sum(), w_uncapped)
    with pytest.raises(AssertionError):
        assert_close(grad_uncapped, grad_full, "gradient")


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_every_parameter_gets_the_full_logits_gradient(model, checkpointing, tiny_dir):
    """Through the whole model: batch_response_logps with the streamed head and with the model's
    own head give the same log-probs, m(y) and parameter gradients — the tied Gemma-2 embedding
    included — with gradient checkpointing too."""
    batch = collated(2048)
    results = {}
    for chunk in (None, 4):
        policy = load(tiny_dir, model).train()
        if checkpointing:
            policy.gradient_checkpointing_enable()
        if chunk is not None:
            stream_lm_head(policy, chunk)
        logps, alignment = batch_response_logps(policy, batch, with_alignment=True)
        sum(loss.mean() for loss in every_loss(logps, alignment).values()).backward()
        grads = {name: p.grad for name, p in policy.named_parameters()}
        results[chunk] = {"log-probs": logps, "m(y)": alignment, **grads}
    assert results[4].keys() == results[None].keys()
    for what, want in results[None].items():
        assert_close(results[4][what], want, what)


def test_the_streamed_head_saves_and_generates_like_the_models_own(tiny_dir, tmp_path):
    policy = load(tiny_dir, "tiny-gemma2").eval()
    keys = list(policy.state_dict())
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    with torch.no_grad():
        before = policy(input_ids=ids).logits
    head = stream_lm_head(policy, 8)
    assert isinstance(policy.lm_head, StreamedLMHead) and head is policy.lm_head
    assert policy.lm_head.weight is policy.model.embed_tokens.weight  # still tied
    assert stream_lm_head(policy, 16) is head and head.chunk_size == 16  # once only
    assert list(policy.state_dict()) == keys
    with torch.no_grad():  # outside batch_response_logps it is the plain (soft-capped) head
        assert torch.equal(policy(input_ids=ids).logits, before)
    policy.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    assert type(reloaded.lm_head) is torch.nn.Linear
    assert reloaded.config.final_logit_softcapping == policy.config.final_logit_softcapping
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, before)


class LargestVocabularyTensor(TorchDispatchMode):
    """Every tensor an op makes, forward or backward, whose last dimension is the vocabulary:
    the largest number of rows (entries / V) among those that are not the head's weight."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.vocab, self.hidden, self.rows = vocab, hidden, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (
                isinstance(t, torch.Tensor)
                and t.dim()
                and t.shape[-1] == self.vocab
                and t.numel() != self.vocab * self.hidden  # the weight, its transpose, its grad
            ):
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("model", MODELS)
def test_no_tensor_holds_more_than_a_chunk_of_logits_forward_or_backward(model, tiny_dir):
    batch = collated(2048)
    tokens = batch["input_ids"].numel()
    rows = {}
    for chunk in (None, 4):
        policy = load(tiny_dir, model).train()
        if chunk is not None:
            stream_lm_head(policy, chunk)
        probe = LargestVocabularyTensor(policy.config.vocab_size, policy.config.hidden_size)
        with probe:
            logps, alignment = batch_response_logps(policy, batch, with_alignment=True)
            (logps.sum() + alignment.sum()).backward()
        rows[chunk] = probe.rows
    assert rows[None] >= tokens / 2  # the probe sees the model's own head's logits...
    assert rows[4] <= 4  # ...and the streamed head never holds more than a chunk of rows


def test_architectures_the_stream_does_not_know_are_refused_with_the_way_out():
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(ValueError, match=r"not 'llama'.*training\.lm_head_chunk=null"):
        stream_lm_head(llama, 8)


def test_bf16_weights_stream_in_bf16_and_autocast_changes_nothing(tiny_dir):
    """bf16 (the GPU recipe): matmuls in bf16, softmax statistics in fp32, gradients in the
    weights' dtype, values as the full bf16 logits give them (to bf16 rounding: one ulp of a
    logit is ~0.4 %). Under autocast the head keeps its weights' precision, forward and backward."""
    policy = load(tiny_dir, "tiny-gemma2", dtype=torch.bfloat16).eval()
    softcap = policy.config.final_logit_softcapping
    hidden, weight, labels, mask = head_inputs(policy, collated(policy.config.vocab_size))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logps, _ = response_logps(h, labels, mask, head=w, softcap=softcap, chunk_size=5)
    full, _ = full_logits_stats(hidden.float(), weight.float(), labels, mask, softcap)
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, full, rtol=2e-2, atol=0)
    grad_h, grad_w = torch.autograd.grad(logps.sum(), (h, w))
    assert grad_h.dtype == grad_w.dtype == torch.bfloat16
    assert torch.isfinite(grad_w.float()).all() and grad_w.abs().sum() > 0

    h32, w32 = hidden.float().requires_grad_(), weight.float().requires_grad_()
    plain, _ = response_logps(h32, labels, mask, head=w32, softcap=softcap, chunk_size=5)
    plain_grads = torch.autograd.grad(plain.sum(), (h32, w32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast, _ = response_logps(h32, labels, mask, head=w32, softcap=softcap, chunk_size=5)
        autocast_grads = torch.autograd.grad(autocast.sum(), (h32, w32))
    assert torch.equal(autocast, plain)
    assert all(map(torch.equal, autocast_grads, plain_grads))
