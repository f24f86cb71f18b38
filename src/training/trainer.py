"""`PreferenceTrainer`: the SPPO / WPO / DPO step on top of `transformers.Trainer`.

The library brings accelerate, DeepSpeed, checkpoints, schedules and W&B reporting; this class
adds only what a preference step needs: one concatenated forward over chosen and rejected,
memory-bounded response log-probs, the reference log-probs, the loss of src/training/losses.py,
and per-step metrics (rewards, WPO weights, tokens/s).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from copy import deepcopy
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from src.core.artifacts import atomic_write_json, read_json
from src.core.records import redo_of
from src.training.adapters import adapter_off, peft_model
from src.training.arguments import TrainingError, diverged
from src.training.checkpoints import seal
from src.training.losses import pair_metrics, preference_loss, wpo_weight
from src.training.memory_phases import MemoryPhases
from src.training.policy_logps import batch_response_logps

# transformers' W&B integration, imported with the Trainer, prints "[INFO] Running in WANDB
# offline mode" on stdout whenever WANDB_MODE=offline, whatever the run tracks (logger=none too;
# an offline W&B run says so itself): imported with the variable out of its sight, it is quiet
_wandb_mode = os.environ.pop("WANDB_MODE", None)
try:
    from transformers import Trainer, TrainerCallback
finally:
    if _wandb_mode is not None:
        os.environ["WANDB_MODE"] = _wandb_mode


class ReferenceLogps:
    """log pi_ref of every pair's chosen and rejected response, keyed by the pair's index.

    `precompute`: filled once before the first step by a forward-only pass, and saved beside the
    checkpoint so that a resumed run (whose weights are no longer pi_ref) reads them back.
    """

    def __init__(self, path: Path, identity: dict):
        self.path = path  # in the train stage's folder, whose redo trains again from pi_ref
        self.identity = identity  # what the numbers depend on: a saved file must match it
        self.values: dict[int, tuple[float, float]] = {}

    def load(self) -> bool:
        """Read the saved log-probs back; False when there are none for these inputs (or the
        file is not what `save` wrote: then they are made again, or refused on resume)."""
        if not self.path.is_file():
            return False
        try:
            saved = read_json(self.path, TrainingError)
            if saved.get("identity") != self.identity:
                return False
            self.values = {int(k): (float(c), float(r)) for k, (c, r) in saved["logps"].items()}
        except (TrainingError, KeyError, TypeError, ValueError, AttributeError):
            print(f"[train] {self.path} is damaged", file=sys.stderr, flush=True)
            return False
        return True

    def save(self) -> None:
        atomic_write_json(self.path, {"identity": self.identity, "logps": self.values})

    def lookup(self, pair_index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.values[int(i)] for i in pair_index]
        table = torch.tensor(rows, dtype=torch.float32, device=device)
        return table[:, 0], table[:, 1]


class PreferenceTrainer(Trainer):
    def __init__(
        self,
        *args,
        loss_type: str,
        beta: float,
        eta: float,
        label_smoothing: float,
        wpo: bool,
        wpo_clamp: float | None,
        reference: ReferenceLogps | None,
        ref_model: torch.nn.Module | None = None,
        memory_phases: MemoryPhases | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # pi_ref: precomputed log-probs, a frozen copy, or (LoRA) the policy with its adapter off
        if reference is not None and ref_model is not None:
            raise ValueError("give precomputed reference log-probs or a reference model, not both")
        if reference is None and ref_model is None and peft_model(self.model) is None:
            raise ValueError(
                "no reference: give precomputed log-probs, a reference model or an adapter model"
            )
        self.loss_type, self.beta, self.eta = loss_type, beta, eta
        self.label_smoothing, self.wpo, self.wpo_clamp = label_smoothing, wpo, wpo_clamp
        self.reference, self.ref_model = reference, ref_model
        self._ref_prepared = False
        self._sums: dict[str, torch.Tensor] = defaultdict(
            lambda: torch.zeros((), dtype=torch.float64)
        )
        self._counts: dict[str, int] = defaultdict(int)
        self._tokens = 0
        self._clock = time.perf_counter()
        if reference is not None:
            self.add_callback(_PrecomputeReference(self))
        self.memory_phases = memory_phases  # training.record_memory_phases: each step's phases
        if memory_phases is not None:
            memory_phases.attach(self)
        self._resume = _LogAtCheckpoints()  # last: it sees every other callback's should_save
        self.add_callback(self._resume)

    # --- forward ----------------------------------------------------------------------------

    def _online_reference(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_model is None:  # LoRA: the policy with its adapter off
            with torch.no_grad(), adapter_off(model):
                logps, _ = batch_response_logps(model, inputs, with_alignment=False)
            half = logps.shape[0] // 2
            return logps[:half], logps[half:]
        if not self._ref_prepared:
            self.ref_model = self._prepare_reference_model(self.ref_model)
            self._ref_prepared = True
        with torch.no_grad():
            logps, _ = batch_response_logps(self.ref_model, inputs, with_alignment=False)
        half = logps.shape[0] // 2
        return logps[:half], logps[half:]

    def _prepare_reference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy of pi_ref placed like the policy: on its device, or sharded by ZeRO-3."""
        model.eval().requires_grad_(False)
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is None:
            return model.to(self.accelerator.device)
        import deepspeed

        config = deepcopy(plugin.deepspeed_config)
        if config["zero_optimization"]["stage"] != 3:
            config["zero_optimization"]["stage"] = 0  # ZeRO-1/2 shard optimiser state only
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.memory_phases is None:
            return super().training_step(model, inputs, num_items_in_batch)
        self.memory_phases.forward_begins()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.memory_phases.backward_done()
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pairs = inputs["pair_index"].shape[0]
        logps, alignment = batch_response_logps(model, inputs, with_alignment=self.wpo)
        policy_chosen, policy_rejected = logps[:pairs], logps[pairs:]
        if self.reference is not None:
            ref_chosen, ref_rejected = self.reference.lookup(inputs["pair_index"], logps.device)
        else:
            ref_chosen, ref_rejected = self._online_reference(model, inputs)
        weights = None
        if self.wpo:
            weights = wpo_weight(alignment[:pairs], alignment[pairs:], clamp=self.wpo_clamp)
        probs = {
            k: inputs[k].to(logps.dtype)
            for k in ("chosen_probs", "chosen_probs_win", "chosen_probs_lose")
            if k in inputs
        }
        out = preference_loss(
            self.loss_type,
            policy_chosen_logps=policy_chosen,
            policy_rejected_logps=policy_rejected,
            ref_chosen_logps=ref_chosen.to(logps.dtype),
            ref_rejected_logps=ref_rejected.to(logps.dtype),
            beta=self.beta,
            eta=self.eta,
            label_smoothing=self.label_smoothing,
            weights=weights,
            **probs,
        )
        loss = out.losses.mean()
        if not torch.isfinite(loss):  # the Trainer would log it as 0 and step on
            raise diverged(self.state.global_step + 1, f"the loss is {loss.item()}", self.args)
        self._accumulate(
            {
                **pair_metrics(out),
                "logps/chosen": policy_chosen.detach().mean().item(),
                "logps/rejected": policy_rejected.detach().mean().item(),
            }
        )
        self._tokens += int(inputs["attention_mask"].sum())
        if self.memory_phases is not None:
            self.memory_phases.forward_done()
        return (loss, out) if return_outputs else loss

    # --- reference precompute ---------------------------------------------------------------

    def precompute_reference(self) -> None:
        """One forward-only pass of pi_ref (the untrained policy: same weights) over all pairs."""
        assert self.reference is not None
        if self.reference.load():
            return
        if self.state.global_step > 0:
            raise TrainingError(
                f"resuming at step {self.state.global_step} but the reference log-probs "
                f"({self.reference.path}) are missing, damaged or made for other inputs: the "
                "policy is no longer pi_ref, so they cannot be made again from it; train again "
                "from pi_ref",
                redo_of(self.reference.path.parent),
            )
        loader = DataLoader(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        model = self.model_wrapped
        was_training = model.training
        model.eval()
        with torch.no_grad(), adapter_off(model):  # LoRA: exactly pi_{t-1}'s weights
            for batch in loader:
                logps, _ = batch_response_logps(model, batch, with_alignment=False)
                half = logps.shape[0] // 2
                rows = torch.stack(
                    [batch["pair_index"].to(logps), logps[:half], logps[half:]], dim=1
                )
                for index, chosen, rejected in self.accelerator.gather_for_metrics(rows).tolist():
                    self.reference.values[int(index)] = (chosen, rejected)
        model.train(was_training)
        if self.accelerator.is_main_process:
            self.reference.save()
        self.accelerator.wait_for_everyone()

    # --- metrics ------------------------------------------------------------------------------

    def _accumulate(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] += value
            self._counts[key] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the preference metrics, averaged over the steps since the last log and over ranks."""
        if self._counts and "loss" in logs:
            keys = sorted(self._counts)
            local = torch.tensor(
                [float(self._sums[k]) for k in keys]
                + [float(self._counts[k]) for k in keys]
                + [float(self._tokens)],
                device=self.accelerator.device,
            )
            total = self.accelerator.reduce(local, reduction="sum").tolist()
            n = len(keys)
            for i, key in enumerate(keys):
                logs[key] = total[i] / max(total[n + i], 1.0)
            now = time.perf_counter()
            logs["tokens_per_second"] = total[-1] / max(now - self._clock, 1e-9)
            self._clock, self._tokens = now, 0
            self._sums.clear()
            self._counts.clear()
        norm = logs.get("grad_norm")
        if norm is not None and not math.isfinite(norm):  # the update it clipped is not finite
            raise diverged(self.state.global_step, f"the gradient norm is {norm}", self.args)
        if "train_loss" in logs:  # the end-of-training summary, logged and then returned
            logs["train_loss"] = self._train_loss_of_every_step(logs["train_loss"])
        super().log(logs, start_time)

    def _train_loss_of_every_step(self, reported: float) -> float:
        """The mean loss over all steps, those before a resumed-from checkpoint included.

        The Trainer's train_loss is the loss summed in this `train()` call over the steps it ran:
        after a resume, the steps since the checkpoint only. The steps before it are in the
        restored log_history — each logged loss is its steps' summed loss / their count, and
        `_LogAtCheckpoints` makes every checkpoint's step a logged one — so their sum comes
        back exactly (to float rounding): sum(loss x steps it covers).
        """
        start, steps = self._resume.started_at, self.state.global_step
        if not start or steps <= start:
            return reported
        before, covered = 0.0, 0
        for entry in self.state.log_history:
            if "loss" in entry and entry["step"] <= start:
                before += entry["loss"] * (entry["step"] - covered)
                covered = entry["step"]
        if covered != start:  # a checkpoint saved by a run that did not log its step
            return reported
        return (reported * (steps - start) + before) / steps


class _PrecomputeReference(TrainerCallback):
    """Runs the reference pass once the model is wrapped (DDP / ZeRO-3) and before step 1."""

    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.precompute_reference()


class _LogAtCheckpoints(TrainerCallback):
    """Logs the loss at every step a checkpoint is saved, so that its log_history holds the loss
    of every step up to it (with logging_steps > 1 the steps since the last log would otherwise
    be lost with the process); notes the step `train()` starts at (> 0: resumed)."""

    started_at = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started_at = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # the Trainer logs before it saves
            control.should_log = True

    on_epoch_end = on_step_end


class StopAfterEpochs(TrainerCallback):
    """The SPPO model cards: the schedule spans `schedule_epochs`, training stops after `epochs`."""

    def __init__(self, epochs: float):
        self.epochs = epochs

    def on_step_end(self, args, state, control, **kwargs):
        if state.epoch is not None and state.epoch >= self.epochs - 1e-9:
            control.should_training_stop = True
            control.should_save = True


class SealCheckpoints(TrainerCallback):
    """Seals each checkpoint once every process has saved its part of it."""

    def __init__(self, identity: str):
        self.identity = identity

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # each process writes its own RNG state and ZeRO shards
        if state.is_world_process_zero:
            seal(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.identity)
