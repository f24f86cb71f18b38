"""The optimizers for bf16 weights (src/training/optimizers.py): torch's updates where the weights
are fp32, the fp32 sum of those updates where they are bf16 (pure bf16 loses most of them), an
unbiased bf16 state, slices that change nothing, and a state that resumes."""

from __future__ import annotations

import pytest
import torch

from src.config import WeightUpdates
from src.training import optimizers
from src.training.optimizers import Bf16AdamW, Bf16RMSprop, store

LR = 5e-7  # the recipes' learning rate
TORCH = {Bf16RMSprop: torch.optim.RMSprop, Bf16AdamW: torch.optim.AdamW}


def weights(dtype=torch.float32, n: int = 4096, seed: int = 0) -> torch.nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter((torch.randn(n, generator=g) * 0.02).to(dtype))


def gradients(steps: int, n: int = 4096, seed: int = 1) -> list[torch.Tensor]:
    """A fixed sequence of gradients, the same for every optimizer compared."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, generator=g)  # a consistent direction, as a loss gives
    return [direction + 0.5 * torch.randn(n, generator=g) for _ in range(steps)]


def train(optimizer, param, grads) -> None:
    for grad in grads:
        param.grad = grad.to(param.dtype)
        optimizer.step()


@pytest.mark.parametrize("cls", [Bf16RMSprop, Bf16AdamW])
def test_on_fp32_weights_the_update_is_torchs(cls):
    ours, theirs = weights(), weights()
    decay = {"weight_decay": 0.01}
    grads = gradients(20)
    train(cls([ours], lr=1e-3, **decay), ours, grads)
    train(TORCH[cls]([theirs], lr=1e-3, **decay), theirs, grads)
    # to fp32 rounding: the same terms in another order, one rounding of the weight per step
    # either way (20 steps, 2 eps each, of weights ~0.02)
    eps = torch.finfo().eps
    torch.testing.assert_close(ours, theirs, rtol=40 * eps, atol=40 * eps * 0.02)


# how far the weight plus what it keeps beside it may lie from the fp32 run's after 50 steps, as
# a share of the change (max, mean): the fp32 master is that run to rounding; Kahan's bf16 state,
# rounded stochastically, adds a noise of ~2^-9 of the state a step (measured: RMSprop 2.0 % /
# 0.41 %, AdamW 3.6 % / 0.73 %)
TOLERANCE = {WeightUpdates.fp32: (0.005, 0.001), WeightUpdates.kahan: (0.06, 0.01)}


# the step eager, and fused: compiled by torch.compile into one kernel (C++ on the CPU, Triton on a
# GPU), its first call a few seconds of compiling
FUSED = [False, pytest.param(True, marks=pytest.mark.slow, id="fused")]


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("keep", list(WeightUpdates))
@pytest.mark.parametrize("cls", [Bf16RMSprop, Bf16AdamW])
def test_bf16_weights_follow_the_fp32_sum_of_the_updates_where_pure_bf16_loses_them(
    cls, keep, fused
):
    """At lr 5e-7 on weights ~N(0, 0.02), 50 steps of the same bf16 gradients: the bf16 weight
    plus what it keeps beside it (the Kahan compensation, or the fp32 master) is where torch's
    optimizer takes the same weights in fp32; torch's optimizer on the bf16 weights leaves most
    of them where they were. Fused, to the same tolerance: a compiler that folded a cast to bf16
    away would lose the compensation."""
    grads = [g.to(torch.bfloat16) for g in gradients(50)]  # as a bf16 model's backward gives
    start = weights(torch.bfloat16)
    reference = torch.nn.Parameter(start.detach().float())
    train(TORCH[cls]([reference], lr=LR), reference, grads)
    change = reference.detach() - start.detach().float()
    assert (change != 0).all()

    ours = torch.nn.Parameter(start.detach().clone())
    optimizer = cls([ours], lr=LR, keep=keep, fused=fused)
    train(optimizer, ours, grads)
    state = optimizer.state[ours]
    if keep == WeightUpdates.kahan:
        held = ours.detach().float() + state["compensation"].float()
        assert state["square_avg" if cls is Bf16RMSprop else "exp_avg"].dtype == torch.bfloat16
    else:
        held = state["master"]
        assert torch.equal(ours.detach(), held.to(torch.bfloat16))
    error = (held - start.detach().float() - change).abs()
    largest, mean = TOLERANCE[keep]
    assert error.max() <= largest * change.abs().max()
    assert error.mean() <= mean * change.abs().mean()

    pure = torch.nn.Parameter(start.detach().clone())
    train(TORCH[cls]([pure], lr=LR), pure, grads)
    assert (pure.detach() == start.detach()).float().mean() > 0.5  # most never moved


def test_a_bf16_state_is_rounded_without_bias():
    """A value a quarter of the way between two bf16 values, stored 200,000 times: its mean is the
    value (rounded to nearest, every copy would be the bf16 value below it)."""
    value = torch.full((200_000,), 1.0 + 2**-9, dtype=torch.float32)  # 1/4 spacing above 1
    state = torch.empty_like(value, dtype=torch.bfloat16)
    torch.manual_seed(0)
    store(state, value)
    assert set(state.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert state.double().mean().item() == pytest.approx(1.0 + 2**-9, abs=2e-5)


@pytest.mark.parametrize("fused", FUSED)
def test_rmsprops_bf16_average_reaches_the_squared_gradient(fused):
    """A constant gradient for 1,000 steps: RMSprop's running average of g^2 ends at g^2 (to
    0.99^1000); rounded to nearest in bf16 it would stop growing a third of the way short. Fused,
    the random bits are drawn in the kernel: as unbiased."""
    param = weights(torch.bfloat16, n=10_000)
    optimizer = Bf16RMSprop([param], lr=LR, fused=fused)
    torch.manual_seed(0)
    train(optimizer, param, [torch.ones(10_000)] * 1000)
    average = optimizer.state[param]["square_avg"].double().mean().item()
    assert average == pytest.approx(1.0, abs=0.01)


def test_a_parameter_stepped_in_slices_is_the_parameter_stepped_whole(monkeypatch):
    grads = gradients(10)
    whole = weights(torch.bfloat16)
    sliced = torch.nn.Parameter(whole.detach().clone())
    train(Bf16RMSprop([whole], lr=LR, keep=WeightUpdates.fp32), whole, grads)
    monkeypatch.setattr(
        optimizers, "OPTIMIZER_SLICE", 1000
    )  # 4,096 elements: 5 slices, the last short
    train(Bf16RMSprop([sliced], lr=LR, keep=WeightUpdates.fp32), sliced, grads)
    assert torch.equal(whole, sliced)


@pytest.mark.parametrize("keep", list(WeightUpdates))
def test_a_saved_state_resumes_where_it_stopped(keep, tmp_path):
    """The Trainer saves the optimizer's state_dict with each checkpoint and loads it on resume:
    the compensation or master comes back in its dtype, and the run goes on as if never stopped
    (the same random draws for the stochastic rounding)."""
    grads = gradients(10)
    straight = weights(torch.bfloat16)
    resumed = torch.nn.Parameter(straight.detach().clone())
    torch.manual_seed(3)
    train(Bf16RMSprop([straight], lr=LR, keep=keep), straight, grads)

    torch.manual_seed(3)
    first = Bf16RMSprop([resumed], lr=LR, keep=keep)
    train(first, resumed, grads[:5])
    torch.save(first.state_dict(), tmp_path / "optimizer.pt")
    second = Bf16RMSprop([resumed], lr=LR, keep=keep)
    second.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    kept = "master" if keep == WeightUpdates.fp32 else "compensation"
    assert second.state[resumed][kept].dtype == first.state[resumed][kept].dtype
    train(second, resumed, grads[5:])
    assert torch.equal(straight, resumed)


def test_the_trainers_optimizer_and_its_arguments_are_kept():
    from transformers import TrainingArguments

    param = weights(torch.bfloat16)
    for optim, cls in [("rmsprop", Bf16RMSprop), ("adamw_torch", Bf16AdamW)]:
        args = TrainingArguments(output_dir="unused", optim=optim, learning_rate=LR, use_cpu=True)
        chosen, kwargs = optimizers.for_trainer(args, torch.nn.Linear(1, 1), WeightUpdates.kahan)
        assert chosen is cls and kwargs["lr"] == LR and kwargs["keep"] == WeightUpdates.kahan
        cls([param], **kwargs)  # every argument the Trainer passes is one it takes
    args = TrainingArguments(output_dir="unused", optim="sgd", use_cpu=True)
    with pytest.raises(ValueError, match="SGD: no form for bf16 weights"):
        optimizers.for_trainer(args, torch.nn.Linear(1, 1), WeightUpdates.kahan)


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["no compiler", "an option this torch lacks"])
def test_a_compiler_that_fails_leaves_the_eager_step_and_says_so_once(
    failure, monkeypatch, tmp_path, capfd
):
    """No C++ compiler here (on a GPU node: no Triton, or no C compiler for its launcher), or a
    torch whose inductor lacks an option the step needs (it refuses it): the fused step's
    compiling, said as it starts, fails before it touches the slice, and the run steps eagerly,
    to the weights an eager optimizer reaches, the cause said in one line."""
    import torch._dynamo
    from torch._inductor import config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing compiled before
    if failure == "no compiler":
        monkeypatch.setattr(config.cpp, "cxx", (str(tmp_path / "no-compiler"),))
    else:
        monkeypatch.setitem(optimizers.COMPILE_OPTIONS, "an_option_this_torch_lacks", True)
    optimizers.compiled_step_slice.cache_clear()
    torch._dynamo.reset()
    grads = gradients(3)
    fused, eager = weights(torch.bfloat16), weights(torch.bfloat16)
    try:
        train(Bf16RMSprop([fused], lr=LR, keep=WeightUpdates.fp32, fused=True), fused, grads)
    finally:
        optimizers.compiled_step_slice.cache_clear()
        torch._dynamo.reset()
    train(Bf16RMSprop([eager], lr=LR, keep=WeightUpdates.fp32), eager, grads)
    assert torch.equal(fused, eager)
    said = [line for line in capfd.readouterr().err.splitlines() if line.startswith("[train]")]
    assert len(said) == 2 and "compiled into one kernel at its first step" in said[0], said
    assert "the fused optimizer step did not compile (" in said[1], said
