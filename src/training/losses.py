"""Preference losses of self-play training: SPPO, DPO, IPO and the WPO weight
(docs/design.md §6.2–§6.3).

Pure maths on tensors; imports only torch. Notation follows docs/design.md §6:
``r = log π_θ(y|x) − log π_ref(y|x)``, where a log-prob is the SUM of the response tokens'
log-probs; the subscript w is the chosen response, l the rejected one; ``Δ = r_w − r_l``.

Every loss function takes per-pair tensors of shape [B] and returns per-pair losses [B]
(no reduction: the caller takes the mean), differentiable w.r.t. the policy log-probs.

``response_logps`` turns the final hidden states and the LM head's weight (or ready-made
logits) into those summed log-probs (and the WPO alignment statistic) chunk by chunk over the
response tokens, so that the [B, T, V] logits never exist, forward or backward: for Gemma-2's
256k vocabulary one copy of them is several GB per micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

LOSS_TYPES = ("sppo", "sppo_single", "sppo_hard", "sigmoid", "ipo")
# which probability tensor each SPPO variant needs (preference_loss's keyword names)
_SPPO_PROBS = {
    "sppo": ("chosen_probs_win", "chosen_probs_lose"),
    "sppo_single": ("chosen_probs",),
    "sppo_hard": (),
}


# ---------------------------------------------------------------------------------------------
# SPPO (docs/design.md §6.2; Wu et al. 2024, "Self-Play Preference Optimization", arXiv 2405.00675)
# ---------------------------------------------------------------------------------------------


def sppo_loss(
    r_chosen: Tensor, r_rejected: Tensor, p_win: Tensor, p_lose: Tensor, eta: float
) -> Tensor:
    """Soft SPPO (docs/design.md §6.2):
    ``½[(r_w − η(p̂_w − ½))² + (r_l − η(p̂_l − ½))²]``.

    ``p_win``/``p_lose`` are the win rates p̂ of the chosen and rejected responses against the
    whole sample (``chosen_probs_win``/``chosen_probs_lose`` of the pairs file). The squared
    regression pulls each log-ratio towards η times its advantage over a coin flip; with
    η = 1000 the targets reach ±500 nats and losses of order 10⁴ are normal.
    """
    target_w = eta * (p_win - 0.5)
    target_l = eta * (p_lose - 0.5)
    return 0.5 * ((r_chosen - target_w) ** 2 + (r_rejected - target_l) ** 2)


def sppo_single_loss(r_chosen: Tensor, r_rejected: Tensor, p_chosen: Tensor, eta: float) -> Tensor:
    """SPPO on the pair's own preference (docs/design.md §6.2 ``sppo_single``).

    ``½[(r_w − η(P_wl − ½))² + (r_l + η(P_wl − ½))²]`` with ``P_wl`` = P(chosen ≻ rejected)
    (``chosen_probs``): the rejected target is the mirror image, since P_lw = 1 − P_wl.
    """
    target = eta * (p_chosen - 0.5)
    return 0.5 * ((r_chosen - target) ** 2 + (r_rejected + target) ** 2)


def sppo_hard_loss(r_chosen: Tensor, r_rejected: Tensor, eta: float) -> Tensor:
    """Hard-label SPPO as TRL implements it (docs/design.md §6.2 ``sppo_hard``).

    ``(r_w − η/2)² + (r_l + η/2)²``: the soft loss with p̂_w = 1, p̂_l = 0, summed rather than
    halved (TRL's convention, kept so that numbers compare with TRL runs).
    """
    half = eta / 2
    return (r_chosen - half) ** 2 + (r_rejected + half) ** 2


# ---------------------------------------------------------------------------------------------
# DPO and IPO (docs/design.md §6.3)
# ---------------------------------------------------------------------------------------------


def dpo_sigmoid_loss(
    r_chosen: Tensor, r_rejected: Tensor, beta: float, label_smoothing: float = 0.0
) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7) with conservative label smoothing (docs/design.md §6.3).

    ``ℓ = −(1−ε) log σ(βΔ) − ε log σ(−βΔ)``, ``Δ = r_w − r_l``. ``logsigmoid`` keeps it finite
    for any |βΔ| (``log(sigmoid(x))`` is −inf for x ≲ −104 in fp32).
    """
    logits = beta * (r_chosen - r_rejected)
    losses = -torch.nn.functional.logsigmoid(logits)
    if label_smoothing:  # ε = 0 is plain DPO: skip the second logsigmoid
        losses = (1 - label_smoothing) * losses - label_smoothing * torch.nn.functional.logsigmoid(
            -logits
        )
    return losses


def ipo_loss(r_chosen: Tensor, r_rejected: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17): ``(Δ − 1/(2β))²``.

    β plays the role of IPO's τ: the margin Δ regresses onto 1/(2τ).
    """
    return (r_chosen - r_rejected - 1 / (2 * beta)) ** 2


# ---------------------------------------------------------------------------------------------
# WPO weight (docs/design.md §6.3; Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
# Optimization", arXiv 2406.11827, with the sampling-aligned normalisation)
# ---------------------------------------------------------------------------------------------


def wpo_weight(align_chosen: Tensor, align_rejected: Tensor, clamp: float | None = 1.0) -> Tensor:
    """Pair weight ``W = min(clamp, exp(m(y_w) + m(y_l)))`` (docs/design.md §6.3), detached.

    ``align_*`` are the token means m(y) returned by ``response_logps(..., with_alignment=True)``.
    The weight is a constant of the loss (WPO differentiates only through ℓ), so it is
    detached here. ``clamp=None`` drops the clamp (TRL ≥ 0.29). Returned in float32, or
    float64 when the inputs are float64.
    """
    if clamp is not None and not clamp > 0:
        raise ValueError(f"wpo_weight: clamp must be > 0 or None, got {clamp!r}")
    dtype = torch.float64 if align_chosen.dtype == torch.float64 else torch.float32
    log_w = align_chosen.detach().to(dtype) + align_rejected.detach().to(dtype)
    weight = torch.exp(log_w)
    if clamp is not None:
        weight = weight.clamp(max=clamp)
    return weight


# ---------------------------------------------------------------------------------------------
# Token statistics, chunked: the LM head streamed over response tokens (docs/design.md §6 notation;
# §6.3 "compute it in chunks")
# ---------------------------------------------------------------------------------------------


# On CPU, BLAS's kernels for products of 1 to 3 rows sum a vocabulary-long dot product one term
# after another in fp32, where 4 rows and more get blocked partial sums: ~10x the rounding error
# (2.3e-5 against 2.1e-6, relative, on a row of the tiny Mistral; tests/training/test_streamed_head.py).
BLOCKED_ROWS = 4


def _rows_times(grad: Tensor, head: Tensor) -> Tensor:
    """``grad @ head`` ([rows, V] x [V, H]), a chunk of fewer than BLOCKED_ROWS rows padded with
    zero rows so that the sum over V is blocked as it is for larger chunks."""
    rows = grad.shape[0]
    if rows >= BLOCKED_ROWS:
        return grad @ head
    padded = grad.new_zeros((BLOCKED_ROWS, grad.shape[1]))
    padded[:rows] = grad
    return (padded @ head)[:rows]


def _chunk_logits(states, head, rows_b, rows_t, softcap, work_dtype):
    """One chunk's logits in ``work_dtype``, soft-capped, as a private copy (safe to modify in
    place), and the chunk's rows of ``states`` (the head's input, for its gradient)."""
    x = states[rows_b, rows_t]  # advanced indexing: a copy of just these rows
    z = x.to(work_dtype) if head is None else (x.to(head.dtype) @ head.T).to(work_dtype)
    if softcap is not None:  # Gemma-2's final-logit soft-capping, s = c·tanh(z/c)
        z = z.div_(softcap).tanh_().mul_(softcap)
    return z, x


class _ChunkedTokenLogps(torch.autograd.Function):
    """Per-token ``log p_t(y_t)`` (and WPO's ``a_t``) over the response tokens, chunk by chunk.

    Each chunk's logits are made from ``states`` — the final hidden states times the LM head's
    weight ``head`` (then the model's soft-capping), or, with ``head`` None, the logits
    themselves — reduced to a logsumexp, a gathered logit and WPO's alignment term, and
    dropped. Only rows with ``mask`` set are visited (prompt and padding rows are never read,
    so their values and labels — -100 included — cannot matter), ``chunk_size`` rows at a time.
    Saved for backward: ``states`` and ``head`` themselves (no copy), the row indices, the
    labels and the per-row logsumexp — O(rows), not O(rows·V). Backward rebuilds each chunk's
    logits and softmax, forms ``g_t·(onehot(y_t) − softmax(s_t))`` (times the soft-capping's
    derivative ``1 − tanh²``) and, with a head, turns it into the chunk's hidden-state gradient
    and one ``addmm`` into the head's: no [rows, V] tensor outlives its chunk, forward or
    backward. Matmuls run in the head's dtype, with autocast off, forward and backward alike.
    """

    @staticmethod
    def forward(ctx, states, head, labels, mask, softcap, chunk_size, with_alignment):
        bsz, seq, _ = states.shape
        vocab = states.shape[-1] if head is None else head.shape[0]
        wide = states.dtype == torch.float64 or (head is not None and head.dtype == torch.float64)
        work_dtype = torch.float64 if wide else torch.float32
        rows_b, rows_t = mask.nonzero(as_tuple=True)  # response tokens, row-major order
        targets = labels[rows_b, rows_t]
        n_rows = targets.numel()
        if n_rows and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
            # gather would fail (CPU) or trip a device assert (CUDA): say which contract broke
            raise ValueError(
                f"response_logps: a label under mask == 1 is outside [0, vocab_size={vocab}); "
                "ids such as -100 belong only where mask == 0"
            )

        device = states.device
        token_logp = torch.empty(n_rows, dtype=work_dtype, device=device)
        row_lse = torch.empty(n_rows, dtype=work_dtype, device=device)
        align = torch.empty(n_rows if with_alignment else 0, dtype=work_dtype, device=device)
        with torch.autocast(device.type, enabled=False):
            for start in range(0, n_rows, chunk_size):
                end = min(start + chunk_size, n_rows)
                z, _ = _chunk_logits(
                    states, head, rows_b[start:end], rows_t[start:end], softcap, work_dtype
                )
                z_target = z.gather(-1, targets[start:end, None]).squeeze(-1)
                z_max = z.amax(-1, keepdim=True)
                e = z.sub_(z_max).exp_()  # exp(z − max) ∈ [0, 1]: one exp pass serves both sums
                sum_e = e.sum(-1)  # ≥ 1 (the max's own term), so its log is safe
                lse = z_max.squeeze(-1) + sum_e.log()
                row_lse[start:end] = lse
                token_logp[start:end] = z_target - lse
                if with_alignment:
                    # a_t = log p(y_t) − log Σ_v p(v)², with log Σ p² = lse(2z) − 2·lse(z)
                    # = log Σ e² − 2·log Σ e: no p² is formed, so it cannot underflow to log 0
                    sum_e2 = e.square_().sum(-1)
                    align[start:end] = token_logp[start:end] - (sum_e2.log() - 2 * sum_e.log())
                del z, e

        per_token = torch.zeros((bsz, seq), dtype=work_dtype, device=device)
        per_token[rows_b, rows_t] = token_logp
        per_token_align = torch.zeros(
            (bsz, seq) if with_alignment else (0,), dtype=work_dtype, device=device
        )
        if with_alignment:
            per_token_align[rows_b, rows_t] = align

        ctx.save_for_backward(states, head, rows_b, rows_t, targets, row_lse)
        ctx.softcap, ctx.chunk_size = softcap, chunk_size
        ctx.mark_non_differentiable(per_token_align)  # the WPO weight is a constant of the loss
        return per_token, per_token_align

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_per_token, _grad_align):
        states, head, rows_b, rows_t, targets, row_lse = ctx.saved_tensors
        need_states, need_head = ctx.needs_input_grad[:2]
        # zeros: masked rows get exactly no gradient
        grad_states = torch.zeros_like(states) if need_states else None
        grad_head = torch.zeros_like(head) if need_head else None
        if not (need_states or need_head):
            return None, None, None, None, None, None, None
        grad_rows = grad_per_token[rows_b, rows_t].to(row_lse.dtype)
        softcap, chunk_size = ctx.softcap, ctx.chunk_size
        with torch.autocast(states.device.type, enabled=False):
            for start in range(0, targets.numel(), chunk_size):
                end = min(start + chunk_size, targets.numel())
                rb, rt = rows_b[start:end], rows_t[start:end]
                g = grad_rows[start:end, None]
                s, x = _chunk_logits(states, head, rb, rt, softcap, row_lse.dtype)
                # ds/dz = 1 − tanh²(z/c) = 1 − (s/c)²: taken before s turns into the softmax
                dcap = (s / softcap).square_().neg_().add_(1) if softcap is not None else None
                # d log p(y)/ds = onehot(y) − softmax(s); softmax from the saved logsumexp
                grad = s.sub_(row_lse[start:end, None]).exp_()
                grad.mul_(-g).scatter_add_(-1, targets[start:end, None], g)
                if dcap is not None:
                    grad.mul_(dcap)
                del s, dcap
                if head is None:
                    grad_states[rb, rt] = grad.to(states.dtype)
                    continue
                grad = grad.to(head.dtype)
                if need_states:
                    grad_states[rb, rt] = _rows_times(grad, head).to(states.dtype)
                if need_head:
                    grad_head.addmm_(grad.T, x.to(head.dtype))
                del grad
        return grad_states, grad_head, None, None, None, None, None


def response_logps(
    states: Tensor,
    labels: Tensor,
    mask: Tensor,
    *,
    head: Tensor | None = None,
    softcap: float | None = None,
    with_alignment: bool = False,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor | None]:
    """Summed response log-probs ``log π(y|x) = Σ_t log p_t(y_t)`` (docs/design.md §6
    notation) and, optionally, WPO's ``m(y) = mean_t a_t`` (docs/design.md §6.3).

    Args:
        states: with ``head``, the model's final hidden states [B, T, H]; without, next-token
            logits [B, T, V]. Either way ALREADY shifted: row t scores ``labels[:, t]``.
            Any float dtype; bf16 stays bf16 (no full fp32 copy is made).
        labels: [B, T] token ids (int64). Where ``mask == 0`` any value is allowed (e.g. -100):
            those positions are never read.
        mask: [B, T], nonzero = response token. Prompt and padding positions contribute
            nothing, to the value or to the gradient.
        head: the LM head's weight [V, H] (no bias): the logits are made chunk by chunk and
            never exist whole; its gradient is accumulated chunk by chunk too.
        softcap: the model's final-logit soft-capping c (logits become ``c·tanh(z/c)``;
            Gemma-2's ``final_logit_softcapping``); None for none.
        with_alignment: also return ``m(y)``, the mean over response tokens of
            ``a_t = log p_t(y_t) − log Σ_v p_t(v)²`` (0 for a response with no tokens).
        chunk_size: rows (response tokens) per chunk; peak extra memory is two or three
            ``chunk_size × V`` fp32 buffers.

    Returns:
        ``(logp_sum [B], alignment_mean [B] | None)``: ``logp_sum`` in float32 (float64 for
        float64 inputs), differentiable w.r.t. ``states`` and ``head``; ``alignment_mean``
        detached, same dtype.
    """
    if states.dim() != 3:
        raise ValueError(
            f"response_logps: states must be [B, T, H or V], got {tuple(states.shape)}"
        )
    if labels.shape != states.shape[:2] or mask.shape != states.shape[:2]:
        raise ValueError(
            "response_logps: labels and mask must be [B, T] = "
            f"{tuple(states.shape[:2])}, got {tuple(labels.shape)} and {tuple(mask.shape)}"
        )
    if not states.is_floating_point():
        raise ValueError(f"response_logps: states must be floating point, got {states.dtype}")
    if head is not None and (head.dim() != 2 or head.shape[1] != states.shape[-1]):
        raise ValueError(
            f"response_logps: head must be [V, {states.shape[-1]}], got {tuple(head.shape)}"
        )
    if softcap is not None and not softcap > 0:
        raise ValueError(f"response_logps: softcap must be > 0 or None, got {softcap!r}")
    if chunk_size < 1:
        raise ValueError(f"response_logps: chunk_size must be >= 1, got {chunk_size}")
    in_response = mask != 0
    per_token, per_token_align = _ChunkedTokenLogps.apply(
        states, head, labels.long(), in_response, softcap, int(chunk_size), bool(with_alignment)
    )
    logp_sum = per_token.sum(-1)
    if not with_alignment:
        return logp_sum, None
    # clamp: an empty response gets m = 0 (weight factor 1) instead of 0/0
    n_tokens = in_response.sum(-1).clamp(min=1).to(per_token_align.dtype)
    return logp_sum, per_token_align.sum(-1) / n_tokens


# ---------------------------------------------------------------------------------------------
# Dispatch (docs/design.md §6.2–§6.3)
# ---------------------------------------------------------------------------------------------


@dataclass
class PairLossOutput:
    """Per-pair results of ``preference_loss``; all tensors are [B].

    ``losses`` already carry the weights (the caller takes their mean); ``chosen_rewards`` and
    ``rejected_rewards`` are the implicit rewards β·r, detached; ``weights`` is the WPO weight
    or None.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    weights: Tensor | None = None


def preference_loss(
    loss_type: str,
    *,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    eta: float | None = None,
    label_smoothing: float = 0.0,
    chosen_probs: Tensor | None = None,
    chosen_probs_win: Tensor | None = None,
    chosen_probs_lose: Tensor | None = None,
    weights: Tensor | None = None,
) -> PairLossOutput:
    """Per-pair preference loss for ``loss_type`` in ``LOSS_TYPES`` (docs/design.md §6.2–§6.3).

    ``eta`` is SPPO's η (None: η = 1/β, docs/design.md §6.2). ``weights`` (WPO, from
    ``wpo_weight``) multiply the per-pair losses and are treated as constants; the batch loss is
    the plain mean of ``W·ℓ`` — no division by ΣW (docs/design.md §6.3).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"preference_loss: unknown loss_type {loss_type!r}; allowed: {', '.join(LOSS_TYPES)}"
        )
    if not beta > 0:
        raise ValueError(f"preference_loss: beta must be > 0, got {beta!r}")
    if eta is None:
        eta = 1.0 / beta
    probs = {
        "chosen_probs": chosen_probs,
        "chosen_probs_win": chosen_probs_win,
        "chosen_probs_lose": chosen_probs_lose,
    }
    for name in _SPPO_PROBS.get(loss_type, ()):
        if probs[name] is None:
            raise ValueError(
                f"preference_loss: loss_type {loss_type!r} needs {name} (from the pairs file), "
                "but it was not given"
            )

    # a [B] against a [B, 1] tensor would broadcast to [B, B] and train on nonsense silently
    shape = policy_chosen_logps.shape
    named = {
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
        "weights": weights,
        **{name: probs[name] for name in _SPPO_PROBS.get(loss_type, ())},
    }
    for name, value in named.items():
        if value is not None and value.shape != shape:
            raise ValueError(
                f"preference_loss: {name} has shape {tuple(value.shape)}, "
                f"policy_chosen_logps has {tuple(shape)}"
            )

    r_chosen = policy_chosen_logps - ref_chosen_logps
    r_rejected = policy_rejected_logps - ref_rejected_logps
    if loss_type == "sppo":
        losses = sppo_loss(r_chosen, r_rejected, chosen_probs_win, chosen_probs_lose, eta)
    elif loss_type == "sppo_single":
        losses = sppo_single_loss(r_chosen, r_rejected, chosen_probs, eta)
    elif loss_type == "sppo_hard":
        losses = sppo_hard_loss(r_chosen, r_rejected, eta)
    elif loss_type == "sigmoid":
        losses = dpo_sigmoid_loss(r_chosen, r_rejected, beta, label_smoothing)
    else:
        losses = ipo_loss(r_chosen, r_rejected, beta)

    if weights is not None:
        weights = weights.detach()  # WPO's weight is a constant: no gradient through it
        losses = losses * weights
    return PairLossOutput(
        losses=losses,
        chosen_rewards=beta * r_chosen.detach(),
        rejected_rewards=beta * r_rejected.detach(),
        weights=weights,
    )


def pair_metrics(out: PairLossOutput) -> dict[str, float]:
    """Batch means of the implicit rewards (TRL's names) and the WPO weight's mean/min/max."""
    chosen = out.chosen_rewards.detach().float()
    rejected = out.rejected_rewards.detach().float()
    names = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]
    values = [
        chosen.mean(),
        rejected.mean(),
        (chosen - rejected).mean(),
        (chosen > rejected).float().mean(),
    ]
    if out.weights is not None:
        w = out.weights.detach().float()
        names += ["wpo/weight_mean", "wpo/weight_min", "wpo/weight_max"]
        values += [w.mean(), w.min(), w.max()]
    # one device-to-host copy for all of them
    return dict(zip(names, torch.stack(values).tolist(), strict=True))
