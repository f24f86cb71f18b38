"""Tests of src/training/losses.py: the hand-computed numbers of docs/design.md §6.2–§6.3 and
the chunked token statistics (values, gradients, masking, memory)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from src.training import losses as L

DATA = Path(__file__).resolve().parents[1] / "data" / "preference_math.json"
REF = json.loads(DATA.read_text())
F64 = torch.float64


def close(got: float, expected: float, tol: float = 1e-9) -> bool:
    """Equal to `tol`: absolutely for small numbers, relatively for large (losses reach 5e5)."""
    return abs(got - expected) <= tol * max(1.0, abs(expected))


def t64(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def naive_token_stats(logits, labels, mask):
    """The obvious implementation: full fp32 log-softmax over [B, T, V]."""
    work = logits.double() if logits.dtype == F64 else logits.float()
    logp_all = work.log_softmax(-1)
    m = mask.to(work.dtype)
    tok = logp_all.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    align_tok = tok - torch.log((logp_all.exp() ** 2).sum(-1))
    logp_sum = (tok * m).sum(-1)
    align = ((align_tok * m).sum(-1) / m.sum(-1).clamp(min=1)).detach()
    return logp_sum, align


def random_batch(b=3, t=7, v=11, dtype=torch.float32, seed=0):
    """Random logits with a prompt prefix and right padding masked out (labels -100 there)."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, t, v, generator=g, dtype=F64)).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i in range(b):  # prompt of i+1 tokens, then a response, then padding (last row: none)
        mask[i, i + 1 : t - (b - 1 - i)] = 1
    labels[mask == 0] = -100
    return logits, labels, mask


# --- SPPO (docs/design.md §6.2) -----------------------------------------------------------------


@pytest.mark.parametrize("case", REF["sppo"], ids=lambda c: c["name"])
def test_sppo_reference_numbers(case):
    eta = 1.0 / case["beta"]
    pol_w = t64(case["policy_chosen_logp"], grad=True)
    pol_l = t64(case["policy_rejected_logp"], grad=True)
    r_w = pol_w - t64(case["ref_chosen_logp"])
    r_l = pol_l - t64(case["ref_rejected_logp"])
    p_win, p_lose = t64(case["chosen_probs_win"]), t64(case["chosen_probs_lose"])

    loss = L.sppo_loss(r_w, r_l, p_win, p_lose, eta)
    assert close(loss.item(), case["loss_sppo"])
    d_w, d_l = torch.autograd.grad(loss.sum(), (pol_w, pol_l))  # d/dr = d/d(policy logp)
    assert close(d_w.item(), case["dloss_dr_chosen"])
    assert close(d_l.item(), case["dloss_dr_rejected"])
    assert close(L.sppo_hard_loss(r_w, r_l, eta).item(), case["loss_sppo_hard"])
    if "loss_sppo_single" in case:
        got = L.sppo_single_loss(r_w, r_l, t64(case["chosen_probs"]), eta).item()
        assert close(got, case["loss_sppo_single"])

    # the dispatcher gives the same numbers, with eta defaulting to 1/beta
    common = dict(
        policy_chosen_logps=pol_w,
        policy_rejected_logps=pol_l,
        ref_chosen_logps=t64(case["ref_chosen_logp"]),
        ref_rejected_logps=t64(case["ref_rejected_logp"]),
        beta=case["beta"],
    )
    out = L.preference_loss(
        "sppo", **common, chosen_probs_win=p_win, chosen_probs_lose=p_lose, eta=eta
    )
    assert close(out.losses.item(), case["loss_sppo"])
    assert close(L.preference_loss("sppo_hard", **common).losses.item(), case["loss_sppo_hard"])
    assert close(out.chosen_rewards.item(), case["beta"] * r_w.item())
    assert close(out.rejected_rewards.item(), case["beta"] * r_l.item())
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    if "loss_sppo_single" in case:
        single = L.preference_loss("sppo_single", **common, chosen_probs=t64(case["chosen_probs"]))
        assert close(single.losses.item(), case["loss_sppo_single"])


def test_sppo_win_rate_inputs_from_reference():
    """The probabilities the ranking stage stores feed the losses as they are (a [B] batch)."""
    wr = REF["win_rate"][0]
    case = REF["sppo"][0]
    r_w, r_l = t64(5.0, 1.0), t64(-2.0, 0.5)
    p_win = t64(wr["chosen_probs_win"], case["chosen_probs_win"])
    p_lose = t64(wr["chosen_probs_lose"], case["chosen_probs_lose"])
    got = L.sppo_loss(r_w, r_l, p_win, p_lose, 1000.0)
    expected = [
        0.5 * ((rw - 1000 * (pw - 0.5)) ** 2 + (rl - 1000 * (pl - 0.5)) ** 2)
        for rw, rl, pw, pl in zip(
            r_w.tolist(), r_l.tolist(), p_win.tolist(), p_lose.tolist(), strict=True
        )
    ]
    assert got.shape == (2,)
    assert all(close(g, e) for g, e in zip(got.tolist(), expected, strict=True))


# --- WPO (docs/design.md §6.3) ------------------------------------------------------------------


def _wpo_side(side):
    logits = torch.tensor([side["logits"]], dtype=F64, requires_grad=True)
    labels = torch.tensor([side["tokens"]])
    mask = torch.tensor([side["mask"]])
    return logits, labels, mask


@pytest.mark.parametrize("case", REF["wpo"], ids=lambda c: c["name"])
@pytest.mark.parametrize("chunk_size", [1, 1024])
def test_wpo_reference_numbers(case, chunk_size):
    exp = case["expected"]
    beta, eps = case["beta"], case["label_smoothing"]
    lw, yw, mw = _wpo_side(case["chosen"])
    ll, yl, ml = _wpo_side(case["rejected"])
    pol_w, m_w = L.response_logps(lw, yw, mw, with_alignment=True, chunk_size=chunk_size)
    pol_l, m_l = L.response_logps(ll, yl, ml, with_alignment=True, chunk_size=chunk_size)
    assert pol_w.dtype == F64 and m_w.dtype == F64
    assert close(pol_w.item(), exp["policy_chosen_logp"])
    assert close(pol_l.item(), exp["policy_rejected_logp"])
    assert close(m_w.item(), exp["m_chosen"])
    assert close(m_l.item(), exp["m_rejected"])

    w_clamped = L.wpo_weight(m_w, m_l)
    w_free = L.wpo_weight(m_w, m_l, clamp=None)
    assert w_clamped.dtype == F64 and not w_clamped.requires_grad
    assert close(w_clamped.item(), exp["weight_clamped"])
    assert close(w_free.item(), exp["weight_unclamped"])

    refs = dict(ref_chosen_logps=t64(case["ref_chosen_logp"]))
    refs["ref_rejected_logps"] = t64(case["ref_rejected_logp"])
    # leaves standing in for the policy log-probs: dℓ/d(policy_chosen_logp) = dℓ/dΔ
    leaf_w = pol_w.detach().clone().requires_grad_()
    leaf_l = pol_l.detach().clone().requires_grad_()

    def run(weights):
        return L.preference_loss(
            "sigmoid",
            policy_chosen_logps=leaf_w,
            policy_rejected_logps=leaf_l,
            **refs,
            beta=beta,
            label_smoothing=eps,
            weights=weights,
        )

    assert close(run(None).losses.item(), exp["dpo_loss_unweighted"])
    assert close(run(w_free).losses.item(), exp["wpo_loss_unclamped"])
    out = run(w_clamped)
    assert close(out.losses.item(), exp["wpo_loss_clamped"])
    d_w, d_l = torch.autograd.grad(out.losses.mean(), (leaf_w, leaf_l))
    assert close(d_w.item(), exp["dloss_ddelta_clamped"])
    assert close(d_l.item(), -exp["dloss_ddelta_clamped"])


def _naive_alignment_differentiable(logits, labels, mask):
    """m(y) WITH a graph attached: a weight built from it must still act as a constant."""
    logp_all = logits.log_softmax(-1)
    tok = logp_all.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    a = tok - torch.log((logp_all.exp() ** 2).sum(-1))
    m = mask.to(logits.dtype)
    return (a * m).sum(-1) / m.sum(-1)


@pytest.mark.parametrize("source", ["wpo_weight", "weight_with_graph"])
def test_wpo_weight_carries_no_gradient(source):
    lw, yw, mw = random_batch(seed=1, dtype=F64)
    ll, yl, ml = random_batch(seed=2, dtype=F64)
    lw.requires_grad_()
    ll.requires_grad_()
    pol_w, m_w = L.response_logps(lw, yw, mw, with_alignment=True)
    pol_l, m_l = L.response_logps(ll, yl, ml, with_alignment=True)
    assert pol_w.requires_grad and not m_w.requires_grad and not m_l.requires_grad
    if source == "wpo_weight":
        weights = L.wpo_weight(m_w, m_l, clamp=None)
        assert not weights.requires_grad
    else:  # preference_loss itself must treat a weight with a graph as a constant
        weights = torch.exp(
            _naive_alignment_differentiable(lw, yw, mw)
            + _naive_alignment_differentiable(ll, yl, ml)
        )
        assert weights.requires_grad
    assert not torch.allclose(weights, torch.ones_like(weights))  # else the check is vacuous

    refs = dict(ref_chosen_logps=pol_w.detach() + 0.3, ref_rejected_logps=pol_l.detach() - 0.2)

    def grads(w):
        out = L.preference_loss(
            "sigmoid",
            policy_chosen_logps=pol_w,
            policy_rejected_logps=pol_l,
            **refs,
            beta=0.1,
            weights=w,
        )
        return torch.autograd.grad(out.losses.sum(), (lw, ll), retain_graph=True)

    gw_weighted, gl_weighted = grads(weights)
    gw_plain, gl_plain = grads(None)
    w = weights.detach()[:, None, None]
    torch.testing.assert_close(gw_weighted, w * gw_plain, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gl_weighted, w * gl_plain, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("vocab", [2, 5, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64])
def test_uniform_distribution_has_zero_alignment(vocab, dtype):
    logits = torch.zeros(2, 3, vocab, dtype=dtype)
    labels = torch.tensor([[0, vocab - 1, 1], [1, 0, 0]])
    mask = torch.ones(2, 3)
    logp, align = L.response_logps(logits, labels, mask, with_alignment=True)
    assert torch.equal(align, torch.zeros_like(align))  # exactly 0
    torch.testing.assert_close(logp, torch.full_like(logp, -3 * math.log(vocab)))
    assert torch.equal(L.wpo_weight(align, align, clamp=None), torch.ones(2, dtype=align.dtype))


def test_shifted_uniform_alignment_is_zero_to_rounding():
    logits = torch.full((1, 4, 7), 123.25, dtype=F64)
    _, align = L.response_logps(
        logits, torch.tensor([[0, 1, 2, 3]]), torch.ones(1, 4), with_alignment=True
    )
    assert abs(align.item()) < 1e-12


def test_wpo_weight_dtype_and_clamp():
    m_w = torch.tensor([0.5, -2.0, 0.0], dtype=torch.bfloat16)
    m_l = torch.tensor([0.4, 0.1, 0.0], dtype=torch.bfloat16)
    w = L.wpo_weight(m_w, m_l)
    assert w.dtype == torch.float32
    assert w[0].item() == 1.0 and w[2].item() == 1.0
    assert w[1].item() == pytest.approx(math.exp(-2.0 + 0.1), rel=1e-2)
    free = L.wpo_weight(m_w, m_l, clamp=None)
    assert free[0].item() == pytest.approx(math.exp(0.9), rel=1e-2)
    assert L.wpo_weight(m_w, m_l, clamp=2.0)[0].item() == 2.0
    # the weight is a constant of the loss even when its inputs carry a graph
    m_grad = m_w.float().requires_grad_()
    assert not L.wpo_weight(m_grad, m_grad * 2).requires_grad
    with pytest.raises(ValueError, match="clamp"):
        L.wpo_weight(m_w, m_l, clamp=0.0)


# --- chunked token statistics --------------------------------------------------------------------


def test_masked_positions_change_nothing():
    logits, labels, mask = random_batch(dtype=F64, seed=3)
    masked = mask == 0
    assert masked.any() and (~masked).any()
    garbage = logits.clone()
    garbage[masked] = torch.tensor(float("nan"), dtype=F64)  # never read, so even NaN is harmless
    b0, t0 = masked.nonzero()[0].tolist()
    garbage[b0, t0] = float("inf")
    other_labels = labels.clone()
    other_labels[masked] = 10**9  # out of vocabulary: must never be indexed

    outs = []
    for lg, lb in ((logits, labels), (garbage, other_labels)):
        lg = lg.clone().requires_grad_()
        logp, align = L.response_logps(lg, lb, mask, with_alignment=True, chunk_size=4)
        (grad,) = torch.autograd.grad(logp.sum(), lg)
        outs.append((logp, align, grad))
    (logp_a, align_a, grad_a), (logp_b, align_b, grad_b) = outs
    assert torch.equal(logp_a, logp_b) and torch.equal(align_a, align_b)
    assert torch.equal(grad_a, grad_b)
    assert torch.equal(grad_a[masked], torch.zeros_like(grad_a[masked]))
    assert (grad_a[~masked] != 0).any(dim=-1).all()

    # and equal to the same responses with no prompt and no padding at all
    for i in range(logits.shape[0]):
        keep = mask[i] == 1
        trimmed, _ = L.response_logps(
            logits[i : i + 1, keep], labels[i : i + 1, keep], mask[i : i + 1, keep]
        )
        assert close(trimmed.item(), logp_a[i].item(), 1e-12)


def test_empty_response_gives_zero():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.tensor([[0, 0, 0], [1, 1, 0]])
    labels = torch.tensor([[-100, -100, -100], [1, 2, -100]])
    logp, align = L.response_logps(logits, labels, mask, with_alignment=True)
    assert logp[0].item() == 0.0 and align[0].item() == 0.0
    assert logp[1].item() < 0
    (grad,) = torch.autograd.grad(logp.sum(), logits)
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    # a fully masked batch works too
    logp, align = L.response_logps(logits, labels, torch.zeros(2, 3), with_alignment=True)
    assert torch.equal(logp, torch.zeros(2)) and torch.equal(align, torch.zeros(2))


def _compare_with_naive(dtype, chunk_size, shifted_view):
    logits, labels, mask = random_batch(b=3, t=9, v=50, dtype=dtype, seed=4)
    if shifted_view:  # logits[:, :-1] of a longer tensor: not viewable as [B*T, V]
        longer = torch.cat([logits, logits[:, :1]], dim=1)
        logits = longer[:, :-1]
        assert not logits.is_contiguous()
    upstream = torch.randn(3, generator=torch.Generator().manual_seed(5))
    results = []
    for fn in (L.response_logps, naive_token_stats):
        lg = logits.detach().clone().requires_grad_()
        lg_in = lg if not shifted_view else torch.cat([lg, lg[:, :1]], dim=1)[:, :-1]
        if fn is naive_token_stats:
            logp, align = fn(lg_in, labels, mask)
        else:
            logp, align = fn(lg_in, labels, mask, with_alignment=True, chunk_size=chunk_size)
        (grad,) = torch.autograd.grad((logp * upstream.to(logp.dtype)).sum(), lg)
        results.append((logp, align, grad))
    (logp, align, grad), (logp_ref, align_ref, grad_ref) = results
    assert logp.dtype == logp_ref.dtype and grad.dtype == dtype
    return logp, align, grad, logp_ref, align_ref, grad_ref


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 1024])  # 1024 > B*T = 27
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_naive(dtype, chunk_size):
    logp, align, grad, logp_ref, align_ref, grad_ref = _compare_with_naive(dtype, chunk_size, False)
    # both upcast the same logits to fp32: values agree to fp32 rounding
    torch.testing.assert_close(logp, logp_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(align, align_ref, rtol=1e-5, atol=1e-4)
    if dtype == torch.bfloat16:
        # both cast an fp32 gradient to bf16 (8 mantissa bits): at most an ulp or so apart
        torch.testing.assert_close(grad, grad_ref, rtol=2e-2, atol=1e-4)
    else:
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_chunked_equals_naive_on_shifted_view(chunk_size):
    logp, align, grad, logp_ref, align_ref, grad_ref = _compare_with_naive(
        torch.float32, chunk_size, True
    )
    torch.testing.assert_close(logp, logp_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(align, align_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_gradcheck_float64(chunk_size):
    logits, labels, mask = random_batch(b=2, t=4, v=5, dtype=F64, seed=6)
    logits.requires_grad_()

    def per_pair(lg):
        return L.response_logps(lg, labels, mask, chunk_size=chunk_size)[0]

    assert torch.autograd.gradcheck(per_pair, (logits,), eps=1e-6, atol=1e-8)
    logp, align = L.response_logps(logits, labels, mask, with_alignment=True, chunk_size=chunk_size)
    logp_ref, align_ref = naive_token_stats(logits, labels, mask)
    torch.testing.assert_close(logp, logp_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(align, align_ref, rtol=1e-12, atol=1e-12)


def _saved_bytes(fn):
    """Bytes autograd keeps for backward while `fn` builds its graph."""
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def test_no_full_vocab_fp32_copy_is_kept_for_backward():
    logits, labels, mask = random_batch(b=2, t=16, v=4096, dtype=torch.bfloat16, seed=7)
    logits.requires_grad_()
    fp32_copy = logits.numel() * 4
    chunked = _saved_bytes(
        lambda: L.response_logps(logits, labels, mask, with_alignment=True, chunk_size=8)
    )
    naive = _saved_bytes(lambda: naive_token_stats(logits, labels, mask))
    assert naive >= fp32_copy  # the probe sees the naive fp32 log-softmax...
    assert (
        chunked <= logits.numel() * logits.element_size() + 32 * mask.numel()
    )  # ...ours keeps none


# --- DPO / IPO -----------------------------------------------------------------------------------


def test_dpo_label_smoothing_and_ipo_values():
    r_w, r_l = t64(1.5, -2.0), t64(-3.5, 4.0)
    beta, eps = 0.1, 0.2
    x = [beta * 5.0, beta * -6.0]
    expected = [
        -(1 - eps) * math.log(1 / (1 + math.exp(-v))) - eps * math.log(1 / (1 + math.exp(v)))
        for v in x
    ]
    got = L.dpo_sigmoid_loss(r_w, r_l, beta, label_smoothing=eps)
    assert all(close(g, e, 1e-12) for g, e in zip(got.tolist(), expected, strict=True))
    plain = L.dpo_sigmoid_loss(r_w, r_l, beta)
    assert all(
        close(g, math.log1p(math.exp(-v)), 1e-12) for g, v in zip(plain.tolist(), x, strict=True)
    )
    ipo = L.ipo_loss(r_w, r_l, beta)
    assert all(
        close(g, e, 1e-12)
        for g, e in zip(ipo.tolist(), [(5.0 - 5.0) ** 2, (-6.0 - 5.0) ** 2], strict=True)
    )


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_losses_finite_at_huge_margins(dtype, eps):
    beta = 0.5
    r_w = torch.tensor([2e4, -2e4], dtype=dtype, requires_grad=True)  # βΔ = ±1e4
    r_l = torch.zeros(2, dtype=dtype)
    dpo = L.dpo_sigmoid_loss(r_w, r_l, beta, label_smoothing=eps)
    assert torch.isfinite(dpo).all()
    # −log σ(1e4) ≈ 0, −log σ(−1e4) = 1e4
    assert dpo[0].item() == pytest.approx(eps * 1e4, abs=1e-3)
    assert dpo[1].item() == pytest.approx((1 - eps) * 1e4, rel=1e-6)
    (grad,) = torch.autograd.grad(dpo.sum(), r_w)
    assert torch.isfinite(grad).all()
    assert grad[1].item() == pytest.approx(-(1 - eps) * beta, rel=1e-6)
    ipo = L.ipo_loss(r_w, r_l, beta)
    (grad,) = torch.autograd.grad(ipo.sum(), r_w)
    assert torch.isfinite(ipo).all() and torch.isfinite(grad).all()


# --- dispatcher and metrics ----------------------------------------------------------------------


def _batch():
    return dict(
        policy_chosen_logps=t64(-10.0, -20.0, -5.0, grad=True),
        policy_rejected_logps=t64(-12.0, -18.0, -9.0, grad=True),
        ref_chosen_logps=t64(-11.0, -19.0, -5.0),
        ref_rejected_logps=t64(-11.0, -19.0, -8.0),
    )


@pytest.mark.parametrize("loss_type", L.LOSS_TYPES)
def test_dispatch_matches_the_functions(loss_type):
    b = _batch()
    probs = dict(
        chosen_probs=t64(0.9, 0.6, 0.7),
        chosen_probs_win=t64(0.7, 0.55, 0.8),
        chosen_probs_lose=t64(0.3, 0.45, 0.1),
    )
    beta, eta, eps = 0.1, 3.0, 0.1
    out = L.preference_loss(loss_type, **b, beta=beta, eta=eta, label_smoothing=eps, **probs)
    r_w = b["policy_chosen_logps"] - b["ref_chosen_logps"]
    r_l = b["policy_rejected_logps"] - b["ref_rejected_logps"]
    expected = {
        "sppo": lambda: L.sppo_loss(
            r_w, r_l, probs["chosen_probs_win"], probs["chosen_probs_lose"], eta
        ),
        "sppo_single": lambda: L.sppo_single_loss(r_w, r_l, probs["chosen_probs"], eta),
        "sppo_hard": lambda: L.sppo_hard_loss(r_w, r_l, eta),
        "sigmoid": lambda: L.dpo_sigmoid_loss(r_w, r_l, beta, eps),
        "ipo": lambda: L.ipo_loss(r_w, r_l, beta),
    }[loss_type]()
    torch.testing.assert_close(out.losses, expected, rtol=0, atol=0)
    assert out.losses.shape == (3,) and out.losses.requires_grad
    torch.testing.assert_close(out.chosen_rewards, beta * r_w.detach(), rtol=0, atol=0)
    assert out.weights is None


def test_weights_multiply_without_normalising():
    b = _batch()
    w = torch.tensor([0.5, 1.0, 0.25], dtype=F64)
    plain = L.preference_loss("sigmoid", **b, beta=0.1).losses
    out = L.preference_loss("sigmoid", **b, beta=0.1, weights=w)
    torch.testing.assert_close(out.losses, w * plain, rtol=0, atol=0)
    torch.testing.assert_close(out.weights, w)


def test_pair_metrics():
    out = L.PairLossOutput(
        losses=torch.zeros(3),
        chosen_rewards=torch.tensor([1.0, -1.0, 2.0]),
        rejected_rewards=torch.tensor([0.0, 0.5, 2.0]),
    )
    m = L.pair_metrics(out)
    assert m == pytest.approx(
        {
            "rewards/chosen": 2 / 3,
            "rewards/rejected": 2.5 / 3,
            "rewards/margins": (1 - 1.5 + 0) / 3,
            "rewards/accuracies": 1 / 3,  # ties are not wins
        }
    )
    out.weights = torch.tensor([0.2, 1.0, 0.6])
    m = L.pair_metrics(out)
    assert m["wpo/weight_mean"] == pytest.approx(0.6)
    assert m["wpo/weight_min"] == pytest.approx(0.2)
    assert m["wpo/weight_max"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in m.values())


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_loss_type_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown loss_type 'kto'") as err:
        L.preference_loss("kto", **_batch(), beta=0.1)
    for name in L.LOSS_TYPES:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("loss_type", "given", "missing"),
    [
        ("sppo", {"chosen_probs_lose": t64(0.3, 0.4, 0.2)}, "chosen_probs_win"),
        ("sppo", {"chosen_probs_win": t64(0.7, 0.6, 0.8)}, "chosen_probs_lose"),
        ("sppo_single", {"chosen_probs_win": t64(0.7, 0.6, 0.8)}, "chosen_probs"),
    ],
)
def test_missing_probabilities_are_named(loss_type, given, missing):
    with pytest.raises(ValueError, match=rf"needs {missing} "):
        L.preference_loss(loss_type, **_batch(), beta=0.1, **given)


def test_shape_mismatch_and_bad_arguments():
    b = _batch()
    b["ref_rejected_logps"] = b["ref_rejected_logps"][:, None]  # [B, 1] would broadcast to [B, B]
    with pytest.raises(ValueError, match="ref_rejected_logps has shape"):
        L.preference_loss("sigmoid", **b, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        L.preference_loss("sigmoid", **_batch(), beta=0.0)

    logits, labels, mask = random_batch()
    bad = labels.clone()
    bad[mask == 1] = -100
    with pytest.raises(ValueError, match="outside"):
        L.response_logps(logits, bad, mask)
    with pytest.raises(ValueError, match="chunk_size"):
        L.response_logps(logits, labels, mask, chunk_size=0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        L.response_logps(logits, labels[:, :-1], mask)
