"""RMSprop and AdamW for full weights held in bf16: torch's updates, computed in fp32, and kept
in a form that does not lose an update smaller than a bf16 weight's spacing.

A bf16 weight keeps 8 significant bits: at magnitude 0.02 its spacing is 1.2e-4, while an
RMSprop or AdamW step at the recipes' learning rate (5e-7) is ~5e-6 or less. Written straight
into the weight, as torch's optimizers write it when the Trainer trains a bf16-loaded model, such
a step rounds away (on tiny-mistral, 300 steps at lr 5e-7 changed 0.39 % of the weights and ended
at a reward margin of -0.0007 where fp32 reaches 0.21: docs/memory.md, "Full weights in bf16").
Two ways keep it
(`training.weight_updates`):

- `kahan`: Kahan summation (Kahan 1965; optimi and AnyPrecisionAdamW apply it to bf16 training
  the same way). A bf16 compensation buffer keeps what rounding dropped from the weight and adds
  it back with the next update: weight + compensation follows the exact sum of the updates to
  ~2^-16 of the weight. The optimizer state stays in bf16, rounded stochastically so that its
  running averages stay unbiased. 2 bytes a parameter more than the weights' own state.
- `fp32`: an fp32 master copy of every weight and the optimizer state in fp32, the bf16 weight
  rewritten from its master after each step: what DeepSpeed's bf16 mode does (the recipes' ZeRO-3
  keeps exactly these, partitioned), on one process. 6 bytes a parameter more (RMSprop).

The update of each class is its torch namesake's, term for term (`torch.optim.RMSprop`: not
centred, no momentum, weight decay as L2 on the gradient; `torch.optim.AdamW`: decoupled weight
decay, bias-corrected moments). A parameter is stepped a slice of at most `OPTIMIZER_SLICE`
elements at a time, so the step's fp32 temporaries stay a few times 64 MiB (torch's foreach step makes one as
large as every parameter it updates). An fp32 weight is updated as torch updates it, to rounding
(tests/training/test_optimizers.py).

On a GPU a slice's step runs fused (`fused`, by default where the weight is on a GPU): the same
Python, compiled by torch.compile into one kernel that reads each tensor once and writes it once,
with no fp32 temporaries and its random bits drawn in the kernel (eager, the step is ~10
element-wise passes over the slice, a third of its time the stochastic rounding's random bits:
`python -m benchmarks optimizer_step`). The compiler keeps every cast to bf16 as a rounding
(`emulate_precision_casts`: left to itself it would keep the fp32 value it casts from, and the
compensation, the weight's rounding error, would be lost).
"""

from __future__ import annotations

import functools
import math
import sys
from itertools import chain

import torch

from src.config import WeightUpdates
from src.core.memory import OPTIMIZER_SLICE

# the state that holds a bf16 weight's exact value, or what its rounding left out
MASTER, COMPENSATION = "master", "compensation"


def fp32(tensor: torch.Tensor) -> torch.Tensor:
    """An fp32 copy (`.float()` of an fp32 tensor is the tensor itself, which an update must
    not write into)."""
    return tensor.to(torch.float32, copy=True)


def store(state: torch.Tensor, value: torch.Tensor) -> None:
    """state <- value (fp32). Into bf16, rounded stochastically: up with the probability of the
    fraction of a spacing by which `value` exceeds the bf16 value below it, so that a running
    average stays unbiased (rounded to nearest, an average whose relative change per step is
    below 2^-9 stops moving: RMSprop's, at alpha 0.99, from its ~130th step on)."""
    if state.dtype != torch.bfloat16:
        state.copy_(value)
        return
    noise = torch.randint_like(value, 0, 1 << 16, dtype=torch.int32)
    # bf16 is fp32's upper 16 bits: noise added below them, then those bits alone (exact in bf16)
    state.copy_(noise.add_(value.view(torch.int32)).bitwise_and_(-(1 << 16)).view(torch.float32))


class Bf16Optimizer(torch.optim.Optimizer):
    """The step both optimizers share: for every parameter with a gradient, slice by slice, the
    subclass's `update` in fp32, then the weight moved as `keep` says. Subclasses name their
    state tensors (`state_names`, each shaped like the parameter)."""

    state_names: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, keep: WeightUpdates, fused: bool | None = None):
        self.keep = WeightUpdates(keep)
        self.fused = fused  # None: fused where the weight is on a GPU
        self._compiling_said = False
        super().__init__(params, defaults)

    @staticmethod
    def update(group: dict, step: int, weight, grad, states: dict) -> torch.Tensor:
        """The fp32 update of one slice. `group`: the hyperparameters; `weight`: its exact fp32
        value; `grad`: its fp32 gradient (a copy: may be overwritten); `states`: slices of the
        state tensors, each written once with `store`."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts every state to its parameter's dtype as it loads (an fp32 master of a
        bf16 weight would come back rounded): each comes back in the dtype it was saved in."""
        super().load_state_dict(state_dict)
        saved = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for index, p in zip(saved, params, strict=True):
            for key, value in state_dict["state"].get(index, {}).items():
                if torch.is_tensor(value) and value.dtype != self.state[p][key].dtype:
                    self.state[p][key] = value.to(device=p.device, copy=True)

    def _init_state(self, p: torch.Tensor) -> dict:
        state: dict = {"step": 0}
        exact = p.dtype == torch.float32
        if not exact and self.keep == WeightUpdates.fp32:
            state[MASTER] = fp32(p)
        elif not exact:
            state[COMPENSATION] = torch.zeros_like(p)
        in_fp32 = exact or self.keep == WeightUpdates.fp32
        for name in self.state_names:
            state[name] = torch.zeros_like(p, dtype=torch.float32 if in_fp32 else p.dtype)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p))
                state["step"] += 1
                self._step_parameter(group, state, p)
        return loss

    def _step_parameter(self, group: dict, state: dict, p: torch.Tensor) -> None:
        flat, grad = p.view(-1), p.grad.reshape(-1)
        tensors = {name: state[name].view(-1) for name in self.state_names}
        master, compensation = state.get(MASTER), state.get(COMPENSATION)
        settings = {key: value for key, value in group.items() if key != "params"}
        for start in range(0, flat.numel(), OPTIMIZER_SLICE):
            part = slice(start, start + OPTIMIZER_SLICE)
            self._slice_step(p)(
                self.update, settings, state["step"], flat[part], grad[part],
                {name: t[part] for name, t in tensors.items()},
                None if master is None else master.view(-1)[part],
                None if compensation is None else compensation.view(-1)[part],
            )  # fmt: skip

    def _slice_step(self, p: torch.Tensor):
        """step_slice, or its compiled form where the step is fused."""
        return self._fused_step if (p.is_cuda if self.fused is None else self.fused) else step_slice

    def _fused_step(self, *args) -> None:
        """The compiled step_slice. A compiler that fails (no Triton, no C++ compiler, an option
        this torch lacks) has not touched the slice: it is stepped eagerly, as is the rest of the
        run, said once on stderr."""
        from torch._dynamo.exc import BackendCompilerFailed
        from torch._inductor.exc import InductorError

        if not self._compiling_said:
            self._compiling_said = True
            print("[train] the optimizer step is compiled into one kernel at its first step "
                  "(torch.compile: seconds to a minute, once a run)", file=sys.stderr)  # fmt: skip
        try:
            compiled = compiled_step_slice()
        except RuntimeError as error:  # an option (COMPILE_OPTIONS) this torch's inductor lacks
            self._eager_from_now(error, args)
            return
        try:
            compiled(*args)
        except (BackendCompilerFailed, InductorError) as error:
            self._eager_from_now(error, args)

    def _eager_from_now(self, error: Exception, args: tuple) -> None:
        self.fused = False
        cause = next(iter(str(error).strip().splitlines()), type(error).__name__)
        print(f"[train] the fused optimizer step did not compile ({cause[:200]}): the step runs "
              "eagerly, several times slower", file=sys.stderr)  # fmt: skip
        step_slice(*args)


def step_slice(update, group: dict, step: int, weight, grad, states: dict, master, lost) -> None:
    """One slice of a parameter stepped: `update` in fp32, then the weight moved as its
    `master` (fp32) or `lost` (the Kahan compensation, bf16) say, or neither for an fp32 weight."""
    if master is not None:  # the master is the weight; the bf16 weight its rounding
        master.add_(update(group, step, master, fp32(grad), states))
        weight.copy_(master)
    elif lost is not None:  # Kahan: w + (c + u), then what rounding left out
        exact = fp32(weight).add_(lost.float())
        exact.add_(update(group, step, exact, fp32(grad), states))
        weight.copy_(exact)
        lost.copy_(exact.sub_(weight.float()))
    else:  # an fp32 weight: as torch adds it
        weight.add_(update(group, step, weight, fp32(grad), states))


@functools.cache
def compiled_step_slice():
    """step_slice compiled once per process (a graph per update and form of weight, any slice
    length, the learning rate and step count as inputs, not constants)."""
    return torch.compile(step_slice, dynamic=True, options=COMPILE_OPTIONS)


# Without it the compiled step would lose the compensation; a torch whose inductor lacks it
# refuses the option (RuntimeError), and the step runs eagerly
COMPILE_OPTIONS = {"emulate_precision_casts": True}


class Bf16RMSprop(Bf16Optimizer):
    """torch.optim.RMSprop's update (not centred, no momentum): with weight decay
    g <- g + lambda w; v <- alpha v + (1 - alpha) g^2; w <- w - lr g / (sqrt(v) + eps)."""

    state_names = ("square_avg",)

    def __init__(
        self,
        params,
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        keep=WeightUpdates.kahan,
        fused=None,
    ):
        if momentum or centered:
            raise ValueError(
                "Bf16RMSprop has no momentum and is not centred (the recipes' RMSprop)"
            )
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, keep, fused)

    @staticmethod
    def update(group, step, weight, grad, states):
        if group["weight_decay"]:
            grad.add_(weight, alpha=group["weight_decay"])
        average = fp32(states["square_avg"]).mul_(group["alpha"])
        average.addcmul_(grad, grad, value=1 - group["alpha"])
        store(states["square_avg"], average)
        return grad.div_(average.sqrt_().add_(group["eps"])).mul_(-group["lr"])


class Bf16AdamW(Bf16Optimizer):
    """torch.optim.AdamW's update (no amsgrad): w <- w (1 - lr lambda), then the bias-corrected
    Adam step lr m_hat / (sqrt(v_hat) + eps)."""

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        keep=WeightUpdates.kahan,
        fused=None,
    ):
        if amsgrad:
            raise ValueError("Bf16AdamW does not implement amsgrad")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, keep, fused)

    @staticmethod
    def update(group, step, weight, grad, states):
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        exp_avg = fp32(states["exp_avg"]).lerp_(grad, 1 - beta1)
        exp_avg_sq = fp32(states["exp_avg_sq"]).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        store(states["exp_avg"], exp_avg)
        store(states["exp_avg_sq"], exp_avg_sq)
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        denominator = exp_avg_sq.sqrt_().div_(math.sqrt(bias2)).add_(eps)
        change = exp_avg.div_(denominator).mul_(-lr / bias1)
        if group["weight_decay"]:
            change.add_(weight, alpha=-lr * group["weight_decay"])
        return change


# torch's optimizer -> the same update for bf16 weights
BF16 = {torch.optim.RMSprop: Bf16RMSprop, torch.optim.AdamW: Bf16AdamW}


def for_trainer(args, model, keep: WeightUpdates) -> tuple[type[torch.optim.Optimizer], dict]:
    """The optimizer the HF Trainer builds for `args` (`optim`, learning rate, betas, eps), for
    bf16 weights kept as `keep` says: for `Trainer(optimizer_cls_and_kwargs=...)`."""
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    if cls not in BF16:
        raise ValueError(f"{cls.__name__}: no form for bf16 weights (only {list(BF16)})")
    return BF16[cls], {**kwargs, "keep": keep}
