"""The memory of each phase of a training step, recorded by the stage itself
(`training.record_memory_phases=true`): what the train stage writes to done.json as
`timings.memory_phases`, so that a benchmark reads the product's own step, not a copy of it.

A step's phases and what bounds each (the stage's `Peak` split into laps: on a GPU torch's
allocation, `max_memory_allocated` reset at each boundary, and `reserved_peak`; on CPU the
resident set, VmHWM reset through /proc/self/clear_refs, and glibc's bytes in use at each
boundary, `allocated`):

- forward: from the start of `training_step` to the end of `compute_loss` (the policy's forward,
  the reference's log-probs, the loss);
- backward: from there to the end of the backward — the end of `training_step` with plain
  torch / DDP; under DeepSpeed, where accelerate's backward goes on to call the engine's `step`,
  the entry of `engine.step`;
- optimizer_step: clipping and the optimiser's step — from the end of `training_step` to the
  Trainer's `on_optimizer_step` (plain); the engine's `step`, which clips, steps the optimiser
  one sub-group at a time and clears the gradients (DeepSpeed).

Each phase keeps its `peak` and what is `held` at its end, and its `seconds` (summed over the
micro-batches; on a GPU the device synchronised at each boundary, so that a phase is charged for
its own kernels); the step keeps what is held at its
`start` (the Trainer's `on_step_begin`) and `end` (`on_step_end`, after `zero_grad`). With
gradient accumulation a phase's peak is the largest over the micro-batches and its `held` the
last one's. What runs between steps (logging, checkpoints) is in no phase, but still in the
stage's `peak_memory_gib`. With more than one process, each records its own; rank 0's are
written.

Off (the default), nothing of this runs: the trainer holds None and checks it twice a micro-batch.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback

from src.core.memory import Peak

PHASES = ("forward", "backward", "optimizer_step")
GIB = 2**30


class MemoryPhases(TrainerCallback):
    """Records each optimizer step's phases (bytes above the stage's start, as `Peak` counts)."""

    def __init__(self, peak: Peak):
        self.peak = peak
        self.accelerator = None  # the trainer's, given by `attach`
        self.steps: list[dict] = []  # one per optimizer step of this process
        self.first_step_number: int | None = None
        self._step: dict | None = None  # the step being recorded
        self._phase: str | None = None  # the phase the current lap belongs to
        self._opened = 0.0  # when the current lap began (time.perf_counter)

    def attach(self, trainer) -> None:
        self.accelerator = trainer.accelerator
        trainer.add_callback(self)

    # --- the boundaries -------------------------------------------------------------------------

    def enter(self, phase: str | None) -> None:
        """Close the current lap (into its phase, if it has one) and open one for `phase`."""
        self._close()
        self._phase = phase

    def _close(self) -> dict | None:
        if self.peak.cuda and self._phase is not None:
            import torch

            torch.cuda.synchronize()  # the phase's kernels end inside it
        now = time.perf_counter()
        lap = self.peak.lap()
        if lap is not None and self._step is not None and self._phase is not None:
            kept = self._step.setdefault(self._phase, {})
            for key, value in lap.items():  # held: the last micro-batch's; peaks: the largest
                kept[key] = value if key == "held" else max(kept.get(key, 0), value)
            seconds = self._step.setdefault("seconds", {})
            seconds[self._phase] = seconds.get(self._phase, 0.0) + now - self._opened
        self._phase, self._opened = None, now
        return lap

    def forward_begins(self) -> None:
        """training_step starts (each micro-batch's)."""
        if self._step is not None:
            self.enter("forward")

    def forward_done(self) -> None:
        """compute_loss returns: within a training step only (not an evaluation's)."""
        if self._phase == "forward":
            self.enter("backward")

    def backward_done(self) -> None:
        """training_step returns. Under DeepSpeed the engine's step has closed the backward
        already at the micro-batch that ends the step; before, it closes here."""
        if self._phase == "backward":
            sync = self.accelerator is None or self.accelerator.sync_gradients
            deepspeed = self._engine() is not None
            self.enter("optimizer_step" if sync and not deepspeed else None)

    def _engine(self):
        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        return None if wrapped is None else wrapped.engine

    # --- the Trainer's callbacks ----------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        engine = self._engine()
        if engine is None or getattr(engine.step, "_memory_phases", False):
            return
        step = engine.step

        def recorded_step(*a, **kw):  # accelerate's backward calls it after engine.backward
            if self._phase == "backward":
                self.enter("optimizer_step")
            out = step(*a, **kw)
            if self._phase == "optimizer_step":
                self.enter(None)
            return out

        recorded_step._memory_phases = True
        engine.step = recorded_step

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = None
        lap = self._close()  # what ran since the last step's end belongs to no phase
        self._step = {"start": at_boundary(lap)} if lap is not None else None
        if self.first_step_number is None:
            self.first_step_number = state.global_step + 1

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._phase == "optimizer_step":
            self.enter(None)

    def on_step_end(self, args, state, control, **kwargs):
        lap = self._close()  # after zero_grad and the scheduler: what stays between steps
        step, self._step = self._step, None
        if step is None or lap is None or any(p not in step for p in PHASES):
            return  # not measurable here, or a step whose boundaries were not all seen
        step["end"] = at_boundary(lap)
        self.steps.append(step)

    # --- the record -----------------------------------------------------------------------------

    def record(self) -> dict | None:
        """What done.json keeps (`timings.memory_phases`): GiB above the process's memory before
        the policy was loaded (as `peak_memory_gib`), the first step and the largest of each
        figure over the later ones; None when no step was measured."""
        if not self.steps:
            return None
        first, later = self.steps[0], self.steps[1:]
        timed = later or [first]  # the first step's time includes its warm-up
        seconds = {p: sum(s["seconds"][p] for s in timed) / len(timed) for p in PHASES}
        return {
            "measure": "torch.cuda allocated" if self.peak.cuda else "resident set (VmRSS, VmHWM)",
            "steps": len(self.steps),
            "first_step_number": self.first_step_number,
            "first_step": in_gib(first),
            "later_steps": in_gib(largest(later)) if later else None,
            # each phase's mean seconds a step over the later steps (the first where alone)
            "seconds_per_step": seconds,
            "optimizer_step_share": seconds["optimizer_step"] / (sum(seconds.values()) or 1.0),
        }


def at_boundary(lap: dict) -> dict:
    """What a step's start or end keeps of a lap: what is held (and, on CPU, allocated) then."""
    return {k: v for k, v in lap.items() if k in ("held", "allocated")}


def largest(steps: list[dict]) -> dict:
    """Each figure of each boundary: its largest over `steps`."""
    return {
        boundary: {key: max(s[boundary][key] for s in steps) for key in steps[0][boundary]}
        for boundary in steps[0]
    }


def in_gib(step: dict) -> dict:
    order = ("start", *PHASES, "end")
    return {b: {k: v / GIB for k, v in step[b].items()} for b in order if b in step}
