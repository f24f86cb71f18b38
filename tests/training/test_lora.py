"""training.peft=lora|qlora on the tiny models: real peft adapters under the real Trainer, the
reference as the policy with its adapter off, the merge into a whole checkpoint, resume, DDP and
ZeRO-3, and the one-line failures. QLoRA's 4-bit base needs CUDA: its training test is `gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from src.config import REPO_ROOT, ConfigError
from src.core.errors import EnvironmentFailure, StageError
from src.stages.train import run
from src.stages.train_worker import setup
from src.training.adapters import adapter_off, require_qlora_support
from src.training.policy_logps import batch_response_logps
from tests.support.helpers import cli, compose_cfg, one_line_failure

FIXTURE = REPO_ROOT / "tests" / "data" / "pairs_tiny.jsonl"
LORA = ("model=tiny-mistral", "logger=none", "training.peft=lora", "stage=train")


pytestmark = pytest.mark.usefixtures("runs_in_tmp", "tiny_dir")  # tests/conftest.py


def lora_cfg(*overrides: str):
    return compose_cfg(*LORA, f"training.pairs={FIXTURE}", *overrides)


def first_batch(trainer) -> dict[str, torch.Tensor]:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(4)])


def logps(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return batch_response_logps(model.eval(), batch, with_alignment=False)[0]


def test_only_the_adapter_trains_and_the_reference_is_the_base_model():
    """A few online-reference steps: every weight of pi_{t-1} stays bit for bit, every adapter
    matrix moves; with the adapter off the policy scores responses as the base model loaded
    afresh does, with it on it no longer does."""
    cfg = lora_cfg("training.ref_logprobs=online", "training.num_epochs=2")
    trainer = setup(cfg, cfg.stage_dir("train")).trainer
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    adapter = [n for n in before if ".lora_" in n]
    assert adapter and all(after[n].requires_grad for n in adapter)
    assert all(not torch.equal(before[n], after[n]) for n in adapter), "every adapter matrix moves"
    frozen = [n for n in before if n not in adapter]
    assert all(torch.equal(before[n], after[n]) for n in frozen), "the base stays pi_{t-1}"

    batch = first_batch(trainer)
    base = AutoModelForCausalLM.from_pretrained(cfg.run.init_policy, dtype=torch.float32)
    with adapter_off(trainer.model):
        reference = logps(trainer.model, batch)
    torch.testing.assert_close(reference, logps(base, batch), rtol=1e-5, atol=1e-4)
    assert (logps(trainer.model, batch) - reference).abs().max() > 1e-2, "the adapter acts"


def test_precomputed_reference_log_probs_equal_the_full_weight_runs():
    """Both precompute pi_ref = pi_{t-1} over the same pairs: the same numbers."""
    lora = lora_cfg("run_name=lora")
    full = lora_cfg("run_name=full", "training.peft=none")
    saved = {}
    for cfg in (lora, full):
        run(cfg)
        saved[cfg.run_name] = json.loads(
            (cfg.stage_dir("train") / "reference_logps.json").read_text()
        )["logps"]
    assert saved["lora"].keys() == saved["full"].keys()
    for key, values in saved["lora"].items():
        assert values == pytest.approx(saved["full"][key], rel=1e-6), key


def test_the_merged_checkpoint_computes_what_the_adapter_model_did():
    """train/checkpoint is pi_{t-1} + the adapter, merged: its forward equals base + adapter's
    (fp32 rounding), differs from the base's, and it is a plain model for the next iteration."""
    from peft import PeftModel

    cfg = lora_cfg("training.num_epochs=2")
    run(cfg)
    stage = cfg.stage_dir("train")
    record = json.loads((stage / "done.json").read_text())
    assert "adapter/adapter_model.safetensors" in record["outputs"]
    assert "checkpoint/model.safetensors" in record["outputs"]
    assert not (stage / "checkpoint" / "adapter_config.json").exists()

    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(cfg.run.init_policy, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(stage / "adapter")).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(stage / "checkpoint").eval()(ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-4)
    assert (merged - base_logits).abs().max() > 1e-2


@pytest.mark.slow
def test_a_preempted_lora_run_resumes_to_the_same_adapter(monkeypatch):
    """Stopped after its first step's checkpoint (an adapter) and re-run: the same 4 steps, the
    same train_loss and the same merged weights as an uninterrupted run."""
    from safetensors.torch import load_file

    from src.core import preemption

    common = ("training.num_epochs=2", "training.ref_logprobs=online")
    whole = lora_cfg(*common, "run_name=whole")
    run(whole)
    cfg = lora_cfg(*common, "run_name=resumed")
    monkeypatch.setattr(preemption, "_requested", True)  # as SIGUSR1 would: stop after step 1
    with pytest.raises(preemption.Preempted):
        run(cfg)
    monkeypatch.setattr(preemption, "_requested", False)
    (saved,) = (cfg.stage_dir("train") / "trainer").glob("checkpoint-*")
    assert (saved / "adapter_model.safetensors").is_file()
    assert not (saved / "model.safetensors").exists(), "a LoRA checkpoint holds the adapter only"
    run(cfg)

    summaries = [
        json.loads((c.stage_dir("train") / "metrics.json").read_text())["summary"]
        for c in (whole, cfg)
    ]
    assert summaries[0]["steps"] == summaries[1]["steps"] == 4
    assert summaries[1]["train_loss"] == pytest.approx(summaries[0]["train_loss"], rel=1e-6)
    weights = [
        load_file(c.stage_dir("train") / "checkpoint" / "model.safetensors") for c in (whole, cfg)
    ]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-6, atol=1e-7)


def test_a_resumed_adapter_of_another_base_is_refused(monkeypatch):
    from src.core import preemption
    from src.training import checkpoints

    cfg = lora_cfg("training.save_steps=1")
    monkeypatch.setattr(preemption, "_requested", True)  # as SIGUSR1 would: stop after step 1
    with pytest.raises(preemption.Preempted):
        run(cfg)
    monkeypatch.setattr(preemption, "_requested", False)
    (config,) = (cfg.stage_dir("train") / "trainer").glob("checkpoint-*/adapter_config.json")
    edited = {**json.loads(config.read_text()), "base_model_name_or_path": "other/model"}
    config.write_text(json.dumps(edited))
    # saved whole so (sealed), not damaged since: resumable but for its base
    made_by = json.loads((config.parent / checkpoints.SEAL).read_text())["identity"]
    checkpoints.seal(config.parent, made_by)
    with pytest.raises(
        StageError, match=r"a LoRA adapter of the base 'other/model', but this iteration's base"
    ):
        run(cfg)


# --- pipelines ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_lora_sppo_iterations_and_a_lora_wpo_iteration_run_end_to_end(tmp_path):
    """Iteration 2 generates with, ranks for and trains on iteration 1's merged checkpoint, its
    adapter on top of that checkpoint."""
    sppo = cli(tmp_path, "training.peft=lora", "iter=2")
    assert sppo.returncode == 0, sppo.stderr[-3000:]
    wpo = cli(tmp_path, "training.peft=lora", "method=wpo", "iter=1")
    assert wpo.returncode == 0, wpo.stderr[-3000:]

    (sppo_run,) = (tmp_path / "tiny-mistral" / "sppo").iterdir()
    (wpo_run,) = (tmp_path / "tiny-mistral" / "wpo").iterdir()
    for iteration in (sppo_run / "iter1", sppo_run / "iter2", wpo_run / "iter1"):
        train = iteration / "train"
        assert (train / "done.json").is_file(), iteration
        AutoModelForCausalLM.from_pretrained(train / "checkpoint")
    adapter = json.loads(
        (sppo_run / "iter2" / "train" / "adapter" / "adapter_config.json").read_text()
    )
    assert Path(adapter["base_model_name_or_path"]) == sppo_run / "iter1" / "train" / "checkpoint"
    metrics = json.loads((wpo_run / "iter1" / "train" / "metrics.json").read_text())
    assert "wpo/weight_mean" in metrics["log_history"][0]


def first_lora_step(root: Path, *overrides: str) -> dict:
    """The first logged step of a LoRA training on the command line, its merged checkpoint
    loaded."""
    result = cli(
        root,
        "stage=train",
        "training.peft=lora",
        f"training.pairs={FIXTURE}",
        "training.global_batch_size=8",
        "training.per_device_batch_size=4",
        "training.lm_head_chunk=16",
        "training.lora.dropout=0",  # each rank would draw its own dropout masks
        *overrides,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (stage,) = root.glob("tiny-mistral/*/*/iter1/train")
    AutoModelForCausalLM.from_pretrained(stage / "checkpoint")
    return json.loads((stage / "metrics.json").read_text())["log_history"][0]


@pytest.fixture(scope="module")
def one_process_lora_step(tmp_path_factory) -> dict:
    """One process's first step, made once: both strategies compare with it."""
    return first_lora_step(tmp_path_factory.mktemp("lora-one-process") / "one")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_two_cpu_processes_train_the_same_adapter_step_as_one(
    tmp_path, one_process_lora_step, strategy
):
    """LoRA under 2-process DDP and ZeRO-3 (the frozen base partitioned too): the first step's
    loss, log-probs and gradient norm equal one process's at the same global batch, and rank 0
    merges one whole checkpoint."""
    first = {
        "one": one_process_lora_step,
        "two": first_lora_step(
            tmp_path / "two", "hardware.processes_per_node=2", f"hardware.distributed={strategy}"
        ),
    }
    for key in ("loss", "logps/chosen", "logps/rejected", "grad_norm"):
        assert first["two"][key] == pytest.approx(first["one"][key], rel=1e-5), key


# --- one-line failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            ("training.peft=qlora",),
            "a 4-bit base needs a CUDA GPU \\(bitsandbytes\\), and hardware=cpu trains on the CPU",
        ),
        (
            ("training.peft=qlora", "hardware=node-8gpu"),
            "DeepSpeed cannot shard a 4-bit base",
        ),
        (("training.lora.rank=0",), "training.lora.rank=0: must be > 0"),
        (("training.lora.target_modules=[]",), "names at least one module"),
    ],
)
def test_impossible_adapter_settings_are_config_errors(overrides, said):
    with pytest.raises(ConfigError, match=said):
        lora_cfg(*overrides)


def test_qlora_without_a_gpu_or_bitsandbytes_is_one_line(tmp_path, monkeypatch):
    """On this CPU machine, with hardware saying CUDA: exit 3 before any model loads; the
    library check is reached with the GPU check satisfied."""
    args = ("stage=train", "hardware=gpu-1", "training.peft=qlora", f"training.pairs={FIXTURE}")
    line = one_line_failure(cli(tmp_path, *args), 3)
    assert "training.peft=qlora: no CUDA device is visible to this process" in line
    assert "training.peft=lora" in line

    import builtins

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_import = builtins.__import__

    def without_bitsandbytes(name, *rest, **kwargs):
        if name == "bitsandbytes":
            raise ImportError(name)
        return real_import(name, *rest, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_bitsandbytes)
    with pytest.raises(
        EnvironmentFailure, match=r"needs bitsandbytes, .* pip install '\.\[qlora\]'"
    ):
        require_qlora_support()


def test_target_modules_that_match_nothing_are_one_line(tmp_path):
    args = ("stage=train", "training.peft=lora", "training.lora.target_modules=[q_proj,qkv]")
    line = one_line_failure(cli(tmp_path, *args, f"training.pairs={FIXTURE}"), 1)
    assert "training.lora.target_modules: ['qkv'] match no linear layer" in line
    assert "'q_proj'" in line and "'down_proj'" in line  # the names it could have said
    assert not list(tmp_path.rglob("done.json"))


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (
            json.dumps({"base_model_name_or_path": "x/y"}),
            "model.path={}: a LoRA adapter (of the base 'x/y')",
        ),
        ("{not json", "{}/adapter_config.json: unreadable (not the JSON object peft writes)"),
    ],
)
def test_a_lora_adapter_as_the_policy_is_one_line(tmp_path, config, said):
    adapter = tmp_path / "my-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(config)
    line = one_line_failure(cli(tmp_path, "stage=generate", f"model.path={adapter}"), 1)
    assert line.startswith("error: " + said.format(adapter)), line


# --- QLoRA on a GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA's 4-bit base needs a CUDA GPU")
def test_qlora_trains_the_adapter_on_a_4_bit_base_and_merges_it_unquantised():
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel

    cfg = lora_cfg(
        "hardware=gpu-1",
        "training.peft=qlora",
        "training.precision=bfloat16",
        "training.num_epochs=2",
    )
    run(cfg)
    stage = cfg.stage_dir("train")
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(cfg.run.init_policy, dtype=torch.bfloat16)
    merged = AutoModelForCausalLM.from_pretrained(stage / "checkpoint")
    assert merged.dtype == torch.bfloat16
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, str(stage / "adapter")).eval()(ids).logits
        ours = merged.eval()(ids).logits
    torch.testing.assert_close(ours.float(), adapted.float(), rtol=2e-2, atol=2e-2)
