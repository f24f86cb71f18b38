"""`training.record_memory_phases`: the train stage records each step's memory by phase in its
done.json (`timings.memory_phases`, src/training/memory_phases.py) — how the phases are bounded,
with plain torch and under DeepSpeed, and what the tiny models' steps measure through the stage."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from src.config import REPO_ROOT, Stage
from src.core.identity import stage_key
from src.stages.train import run
from src.training.memory_phases import GIB, PHASES, MemoryPhases
from tests.support.helpers import compose_cfg, run_main_process

PAIRS = REPO_ROOT / "tests" / "data" / "pairs_tiny.jsonl"  # 12 pairs: 2 steps of 8 and 4
BOUNDARIES = ("start", *PHASES, "end")


pytestmark = pytest.mark.usefixtures("runs_in_tmp", "tiny_dir")  # tests/conftest.py


def train_overrides(*extra: str) -> list[str]:
    return ["stage=train", "model=tiny-mistral", "logger=none", f"training.pairs={PAIRS}", *extra]


def phases_of(record: dict) -> dict:
    return record["timings"]["memory_phases"]


def check_layout(phases: dict, steps: int) -> None:
    """Every boundary of the first step and of the later ones, each phase's peak at least what
    it holds at its end, beside the plan's terms."""
    assert phases["steps"] == steps and phases["first_step_number"] == 1
    for part in ("first_step", "later_steps"):
        step = phases[part]
        assert set(step) == set(BOUNDARIES), part
        for phase in PHASES:
            assert step[phase]["peak"] >= step[phase]["held"], (part, phase, step)
    plan = phases["plan"]  # the plan's terms for the same config, to set beside them
    assert plan["kept"] and set(plan["phases"]) == {"backward", "optimiser step"}
    assert plan["peak"] > 0 and plan["peak_phase"] in plan["phases"]


# --- the boundaries: the Trainer's calls, in its order, with a scripted Peak --------------------


class ScriptedPeak:
    """`Peak`'s laps as the test sets them: (peak, held) in GiB at the next boundary."""

    cuda = False

    def __init__(self):
        self.now = (0.0, 0.0)

    def lap(self):
        peak, held = self.now
        return {"peak": int(peak * GIB), "held": int(held * GIB)}


def recorder(peak: ScriptedPeak, engine=None) -> MemoryPhases:
    phases = MemoryPhases(peak)
    wrapped = None if engine is None else SimpleNamespace(engine=engine)
    phases.accelerator = SimpleNamespace(sync_gradients=True, deepspeed_engine_wrapped=wrapped)
    phases.on_train_begin(None, None, None)
    return phases


def test_plain_steps_bound_forward_backward_and_optimizer_step_over_accumulated_batches():
    """Two micro-batches: each phase's peak is the larger of the two, its held the last one's;
    the optimizer step runs from the end of the last backward to on_optimizer_step."""
    peak = ScriptedPeak()
    phases = recorder(peak)
    state = SimpleNamespace(global_step=0)
    peak.now = (1, 1)
    phases.on_step_begin(None, state, None)
    for forward, backward, last in (((5, 4), (7, 2), False), ((6, 4.5), (8, 3), True)):
        phases.accelerator.sync_gradients = last
        peak.now = (3, 2)  # between the micro-batches: no phase's
        phases.forward_begins()
        peak.now = forward
        phases.forward_done()  # compute_loss returns
        peak.now = backward
        phases.backward_done()  # training_step returns
    peak.now = (9, 4)  # clipping and optimizer.step()
    phases.on_optimizer_step(None, state, None)
    peak.now = (4, 3)  # zero_grad
    phases.on_step_end(None, state, None)

    record = phases.record()
    assert record["first_step"] == {
        "start": {"held": 1},
        "forward": {"peak": 6, "held": 4.5},
        "backward": {"peak": 8, "held": 3},
        "optimizer_step": {"peak": 9, "held": 4},
        "end": {"held": 3},
    }
    assert record["steps"] == 1 and record["later_steps"] is None


def test_each_phase_is_timed_summed_over_micro_batches_and_averaged_over_the_later_steps(
    monkeypatch,
):
    """A scripted clock: a phase's seconds are its micro-batches' together; the record gives each
    phase's mean over the steps after the first (whose time holds its warm-up) and the optimizer
    step's share of a step."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(
        "src.training.memory_phases.time", SimpleNamespace(perf_counter=lambda: clock.now)
    )
    peak = ScriptedPeak()
    peak.now = (1, 1)
    phases = recorder(peak)

    def step(forward: float, backward: float, optimizer: float) -> None:
        state = SimpleNamespace(global_step=len(phases.steps))
        phases.on_step_begin(None, state, None)
        for last in (False, True):  # two micro-batches, each forward and backward as long
            phases.accelerator.sync_gradients = last
            clock.now += 0.5  # between micro-batches: no phase's
            phases.forward_begins()
            clock.now += forward / 2
            phases.forward_done()
            clock.now += backward / 2
            phases.backward_done()
        clock.now += optimizer
        phases.on_optimizer_step(None, state, None)
        clock.now += 0.25  # zero_grad, the scheduler
        phases.on_step_end(None, state, None)

    step(10.0, 10.0, 10.0)  # the first: its warm-up counts in no mean
    step(2.0, 4.0, 1.0)
    step(4.0, 8.0, 3.0)
    record = phases.record()
    assert record["seconds_per_step"] == {"forward": 3.0, "backward": 6.0, "optimizer_step": 2.0}
    assert record["optimizer_step_share"] == 2.0 / 11.0


def test_under_deepspeed_the_engines_step_bounds_the_optimizer_step():
    """accelerate's backward runs the engine's backward and then its step (clipping, the
    optimiser, zero_grad), which the recorder wraps; the Trainer's own optimizer.step() is a
    no-op. A micro-batch that ends no step has no engine step: its backward ends with
    training_step."""
    peak, calls = ScriptedPeak(), []

    def step():
        calls.append("step")
        peak.now = (9, 4)

    phases = recorder(peak, SimpleNamespace(step=step))
    engine = phases.accelerator.deepspeed_engine_wrapped.engine
    state = SimpleNamespace(global_step=4)
    for _ in range(2):
        peak.now = (1, 1)
        phases.on_step_begin(None, state, None)
        for last in (False, True):
            phases.accelerator.sync_gradients = last
            phases.forward_begins()
            peak.now = (5, 4)
            phases.forward_done()
            peak.now = (7, 2) if last else (6, 3)  # the engine's backward
            if last:
                engine.step()  # accelerate's backward goes on to the engine's step
            phases.backward_done()  # training_step returns
        peak.now = (2, 2)  # the Trainer's no-op clipping and step, zero_grad
        phases.on_optimizer_step(None, state, None)
        phases.on_step_end(None, state, None)
        state.global_step += 1
    assert calls == ["step", "step"]
    record = phases.record()
    assert record["steps"] == 2 and record["first_step_number"] == 5
    for part in ("first_step", "later_steps"):
        assert record[part]["backward"] == {"peak": 7, "held": 2}
        assert record[part]["optimizer_step"] == {"peak": 9, "held": 4}
        assert record[part]["end"] == {"held": 2}


# --- through the stage ---------------------------------------------------------------------------


def test_the_record_keeps_the_phases_only_when_asked(tmp_path):
    """On: every phase of the first step and of the later one, beside the plan's terms; off
    (the default): no trace of them. (In this process, whose heap earlier tests have used, the
    figures themselves are not checked: the next test runs the stage's own command.)"""
    records = {}
    for flag in ("true", "false"):
        cfg = compose_cfg(
            *train_overrides(f"run_name={flag}", f"training.record_memory_phases={flag}")
        )
        run(cfg)
        records[flag] = json.loads((cfg.stage_dir(Stage.train) / "done.json").read_text())
    check_layout(phases_of(records["true"]), steps=2)
    assert "memory_phases" not in records["false"]["timings"]
    assert "peak_memory_gib" in records["false"]["timings"]


def test_recording_the_phases_leaves_the_fingerprint_as_it_is():
    """It says what the record keeps, not what the stage makes: a finished stage stays done."""
    fingerprints = {
        stage_key(compose_cfg(*train_overrides(*flag)).as_tree(), Stage.train)
        for flag in ([], ["training.record_memory_phases=true"])
    }
    assert len(fingerprints) == 1


@pytest.mark.slow
def test_a_steps_phases_measure_its_activations_gradients_and_optimizer_state(tmp_path):
    """`python -m src.main stage=train` on CPU, full weights in fp32, RMSprop: the backward's
    peak is above what the forward left (the gradients and the LM head's chunks come on top of
    the activations) and the backward leaves the gradients; the first step's optimizer step
    keeps the optimiser's state, which no later step allocates again. (The sizes are glibc's
    bytes in use, `allocated`: the resident set hides a tensor that reuses freed memory.)"""
    runs = tmp_path / "runs"
    result = run_main_process(runs, *train_overrides("training.record_memory_phases=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(next(runs.glob("**/train/done.json")).read_text())
    phases = phases_of(record)
    check_layout(phases, steps=record["counts"]["steps"])
    first, later = phases["first_step"], phases["later_steps"]
    weights = phases["plan"]["kept"]["weights (fp32)"]
    states = phases["plan"]["kept"]["optimiser state (fp32)"]  # RMSprop: one per weight
    for step in (first, later):
        assert step["backward"]["peak"] > step["forward"]["held"]
    gradients = later["backward"]["allocated"] - later["start"]["allocated"]
    assert 0.9 * weights <= gradients <= 1.5 * weights, (gradients, weights)

    def kept_by_the_step(step: dict) -> float:
        return step["optimizer_step"]["allocated"] - step["backward"]["allocated"]

    assert 0.9 * states <= kept_by_the_step(first) <= 1.5 * states, (first, states)
    assert abs(kept_by_the_step(later)) <= 0.1 * states, (later, states)
    assert max(first[p]["peak"] for p in PHASES) <= record["timings"]["peak_memory_gib"]


@pytest.mark.slow
@pytest.mark.distributed
def test_under_deepspeed_zero3_every_phase_of_every_step_is_recorded(tmp_path):
    """Two gloo processes under DeepSpeed ZeRO-3: the optimizer step is the engine's own (its
    step wrapped by the recorder), and rank 0's phases are written, beside the plan's ZeRO-3
    terms."""
    runs = tmp_path / "runs"
    result = run_main_process(
        runs,
        *train_overrides(
            "training.record_memory_phases=true",
            "hardware.processes_per_node=2",
            "hardware.distributed=deepspeed",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(next(runs.glob("**/train/done.json")).read_text())
    phases = phases_of(record)
    check_layout(phases, steps=record["counts"]["steps"])
    for step in (phases["first_step"], phases["later_steps"]):
        assert step["backward"]["peak"] > step["forward"]["held"]
    assert "model states / devices" in phases["plan"]["kept"]
