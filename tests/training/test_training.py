"""Stage `train` on the tiny models: real Trainer, real accelerate / DeepSpeed, real checkpoints."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from src.config import REPO_ROOT
from src.core.artifacts import umask
from src.core.errors import StageError
from src.stages.train import run
from src.training.arguments import TrainingError
from tests.support.helpers import compose_cfg, run_main_process

FIXTURE = REPO_ROOT / "tests" / "data" / "pairs_tiny.jsonl"
FIXTURE_ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("runs_in_tmp", "tiny_dir")  # tests/conftest.py


def train_cfg(*overrides: str, pairs: Path = FIXTURE):
    return compose_cfg("stage=train", "logger=none", f"training.pairs={pairs}", *overrides)


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trained(cfg) -> tuple[dict, dict, Path]:
    run(cfg)
    stage = cfg.stage_dir("train")
    return (
        json.loads((stage / "metrics.json").read_text()),
        json.loads((stage / "done.json").read_text()),
        stage,
    )


@pytest.mark.parametrize("model", ["tiny-mistral", "tiny-gemma2"])
def test_logits_only_from_the_first_response_row_give_the_full_sequence_log_probs(model, tiny_dir):
    """The trainer asks the model for logits from the batch's first response row on; summed
    log-probs and WPO's m(y) must equal those of the whole [B, T, V] logits (Gemma-2's
    soft-capping included)."""
    from src.training.data import PairCollator, TokenisedPair, shifted_labels
    from src.training.policy_logps import batch_response_logps

    policy = AutoModelForCausalLM.from_pretrained(tiny_dir / model, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(5, policy.config.vocab_size, (n,), generator=g).tolist()

    # prompts of different lengths: the first response row is the shortest prompt's
    pairs = [TokenisedPair(i, ids(p), ids(c), ids(r), {}) for i, (p, c, r) in
             enumerate([(9, 4, 7), (3, 6, 2), (14, 1, 5)])]  # fmt: skip
    batch = PairCollator(pad_id=0)(pairs)
    with torch.no_grad():
        logps, align = batch_response_logps(policy, batch, with_alignment=True)
        full = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_p = full.double().log_softmax(-1)
    token = log_p.gather(-1, shifted_labels(batch["input_ids"])[..., None])[..., 0]
    mask = batch["response_mask"].double()
    expected_logps = (token * mask).sum(-1)
    a = token - torch.logsumexp(2 * log_p, -1)  # a_t = log p(y_t) - log sum_v p(v)^2
    expected_align = (a * mask).sum(-1) / mask.sum(-1)
    torch.testing.assert_close(logps.double(), expected_logps, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(align.double(), expected_align, rtol=1e-5, atol=1e-5)


def test_pairs_are_tokenised_a_batch_at_a_time_into_4_byte_ids_keyed_by_their_row(tiny_dir):
    """More pairs than one tokenising batch, one dropped in the second: a kept pair's index is its
    row in the file (the reference log-prob cache's key), its ids are 4-byte arrays, and they are
    the ids of the pair tokenised alone."""
    from array import array

    from src.core.policy import end_of_turn_ids
    from src.training.data import TOKENISE_BATCH, PairTokenizer

    path = tiny_dir / "tiny-gemma2"
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenise = PairTokenizer(tokenizer, end_of_turn_ids(str(path), tokenizer), 256, 128)
    n, dropped = TOKENISE_BATCH + 10, TOKENISE_BATCH + 3
    rows = [dict(FIXTURE_ROWS[i % len(FIXTURE_ROWS)], prompt_id=f"p{i}") for i in range(n)]
    rows[dropped]["rejected"] = rows[dropped]["chosen"]
    pairs, report = tokenise(iter(rows), "sppo")
    assert (report.read, report.kept, report.dropped_identical) == (n, n - 1, 1)
    assert [p.index for p in pairs] == [i for i in range(n) if i != dropped]
    for pair in pairs[TOKENISE_BATCH - 2 :]:
        (alone,), _ = tokenise([rows[pair.index]], "sppo")
        for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
            ids = getattr(pair, name)
            assert isinstance(ids, array) and ids.itemsize == 4
            assert ids == getattr(alone, name)
        assert pair.probs == alone.probs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sppo", "wpo"])
@pytest.mark.parametrize("model", ["tiny-mistral", "tiny-gemma2"])
def test_a_few_steps_change_every_parameter(model, method):
    """Two steps of each method on each architecture move every parameter, finitely.

    Slow (its first case): the module's first training pays the Trainer's imports and, on a
    fresh clone, the tiny model's build (~2 min on CI's 2 cores)."""
    cfg = train_cfg(f"model={model}", f"method={method}", "training.warmup_ratio=0")
    metrics, done, stage = trained(cfg)

    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert len(losses) == done["counts"]["steps"] == 2 and all(
        map(torch.isfinite, torch.tensor(losses))
    )
    if method == "wpo":
        weights = [e["wpo/weight_mean"] for e in metrics["log_history"] if "loss" in e]
        assert all(0 < w <= 1 for w in weights), weights  # clamped at 1 by default
    before = dict(AutoModelForCausalLM.from_pretrained(cfg.model.path).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(stage / "checkpoint").named_parameters())
    assert before.keys() == after.keys()
    unchanged = [name for name, p in before.items() if torch.equal(p, after[name])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    assert done["counts"]["pairs_trained"] == len(FIXTURE_ROWS)
    assert not (stage / "checkpoint.partial").exists()


@pytest.mark.slow
def test_precomputed_and_online_reference_give_the_same_step_zero_loss():
    first = {}
    for mode in ("precompute", "online"):
        metrics, _, _ = trained(
            train_cfg("model=tiny-mistral", f"training.ref_logprobs={mode}", f"run_name={mode}")
        )
        first[mode] = metrics["log_history"][0]
    assert first["online"]["loss"] == pytest.approx(first["precompute"]["loss"], rel=1e-5)
    # at step 0 the policy is the reference: every reward is 0
    assert (
        abs(first["precompute"]["rewards/margins"]) < 1e-4
        and abs(first["online"]["rewards/margins"]) < 1e-4
    )


@pytest.mark.slow
def test_sppo_card_schedule_spans_18_epochs_and_stops_after_one():
    cfg = train_cfg("model=tiny-mistral", "training.schedule_epochs=18", "training.warmup_ratio=0")
    metrics, done, _ = trained(cfg)
    assert done["counts"]["steps"] == 2  # 12 pairs, global batch 8: one epoch is 2 steps
    last_lr = [e["learning_rate"] for e in metrics["log_history"] if "learning_rate" in e][-1]
    # a linear schedule over 36 steps has barely decayed after 2; over 2 steps it would be ~0
    assert last_lr > 0.9 * cfg.training.learning_rate


@pytest.mark.slow
def test_identical_and_overlong_pairs_are_handled_as_documented(tmp_path):
    """(A blank chosen or rejected is a bad row, refused: tests/training/test_bad_pairs.py.)"""
    rows = [dict(r) for r in FIXTURE_ROWS[:8]]
    rows[0]["rejected"] = rows[0]["chosen"]  # no preference: dropped, counted
    rows[2]["prompt"] = "Explain this. " * 400  # longer than max_length: the prompt keeps its end
    metrics, done, _ = trained(
        train_cfg("model=tiny-gemma2", "method=wpo", pairs=write_pairs(tmp_path / "p.jsonl", rows))
    )
    counts = done["counts"]
    assert (counts["dropped_identical"], counts["pairs_trained"], counts["truncated_prompts"]) == (
        1,
        7,
        1,
    )
    assert all(
        torch.isfinite(torch.tensor(e["loss"])) for e in metrics["log_history"] if "loss" in e
    )


def test_the_trainer_is_imported_without_transformers_notice_of_wandbs_offline_mode():
    """transformers prints "[INFO] Running in WANDB offline mode" on stdout as its W&B
    integration is imported, whenever WANDB_MODE=offline, whatever the run tracks (a
    logger=none training too): the trainer imports it without a word, and leaves the variable
    as it was. A fresh process: transformers says it once, at its first import."""
    shown = subprocess.run(
        [sys.executable, "-c", "import os, src.training.trainer; print(os.environ['WANDB_MODE'])"],
        cwd=REPO_ROOT,
        env={**os.environ, "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["offline"]
    assert "WANDB" not in shown.stderr, shown.stderr


def test_a_missing_previous_checkpoint_names_the_command_that_makes_it():
    with pytest.raises(
        StageError, match=r"iteration 1's checkpoint, which is not trained: .*; finish iteration 1"
    ) as refused:
        run(train_cfg("model=tiny-mistral", "iter=2"))
    assert refused.value.fix == "stage=all iter=1"


def train_on_the_command_line(runs: Path, *overrides: str, model: str = "tiny-mistral") -> Path:
    """`python -m src.main stage=train model=... ...` for real; returns the stage dir."""
    result = run_main_process(
        runs,
        "stage=train",
        f"model={model}",
        "logger=none",
        f"training.pairs={FIXTURE}",
        *overrides,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return next(runs.glob(f"{model}/*/*/iter1/train"))


@pytest.mark.slow
def test_a_disk_without_room_for_the_checkpoint_is_refused_before_the_policy_loads(monkeypatch):
    """The final save needs the policy's parameters in its training dtype (fp32 on CPU) beside
    the stage, and the Trainer's checkpoint saved when the training ends (12 pairs: one) its
    weights and optimiser state: with less free, one ENOSPC error names the sizes before
    anything is loaded, not after the training; with enough, training starts."""
    import src.stages.train as train_stage
    import src.stages.train_worker as train_worker
    from src.plan.stages import policy_shape, trainer_checkpoint_bytes

    cfg = train_cfg("model=tiny-mistral")
    shape = policy_shape(cfg)
    # the tokenizer and records beside the weights: at most their own size (a 1.3 MB model
    # had been refused with 60 MB free, for a fixed 64 MiB)
    final = shape.params * 4 * 2
    each = trainer_checkpoint_bytes(cfg, shape)
    assert each == shape.params * 4 * 2  # fp32 weights and RMSprop's one state
    need = final + each
    loaded = []
    monkeypatch.setattr(train_worker, "setup", lambda *a: loaded.append(a) or 1 / 0)
    for free in (need - 1, need):
        usage = shutil._ntuple_diskusage(10**12, 10**12 - free, free)
        monkeypatch.setattr(train_stage.shutil, "disk_usage", lambda path, u=usage: u)
        with pytest.raises((OSError, ZeroDivisionError)) as refused:
            run(cfg)
        if free < need:
            assert refused.value.errno == errno.ENOSPC and not loaded
            shown = train_stage.shown_bytes
            said = (
                f"for the checkpoint ({shown(need, up=True)} needed: {shown(final, up=True)} "
                f"the checkpoint, 1 x {shown(each, up=True)} the Trainer's to resume from "
                f"(training.save_steps); {shown(free, up=False)} free)"
            )
            assert said in str(refused.value) and shown(need, True) != shown(free, False)
        else:
            assert refused.type is ZeroDivisionError and loaded  # past the check: setup ran


def test_the_launcher_loads_neither_its_worker_nor_the_trainers_libraries():
    """The train stage's launcher (src/stages/train.py) imports no worker: its module, the
    Trainer, torch, transformers and peft load only where a worker runs (in this process with
    one)."""
    loaded = ("src.stages.train_worker", "torch", "transformers", "peft")
    code = f"import sys, src.stages.train; print([m for m in {loaded} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", ["auto", "bfloat16", "float16", "float32"])
def test_the_launchers_weight_bytes_are_the_trainings_dtypes(dtype):
    """The disk check's bytes a weight (no torch in the launcher) are those of the dtype the
    workers train in."""
    from src.training.arguments import precision, weight_bytes

    adapter = ["training.peft=lora"] if dtype == "float16" else []  # fp16 full weights: DeepSpeed
    cfg = compose_cfg("model=tiny-mistral", "hardware=cpu", f"training.precision={dtype}", *adapter)
    assert weight_bytes(cfg) == precision(cfg).itemsize


def test_sizes_are_shown_to_three_figures_a_need_rounded_up_and_free_space_down():
    from src.stages.train import shown_bytes

    assert shown_bytes(1_346_960, up=True) == "1.35 MB"
    assert shown_bytes(62_914_560, up=False) == "62.9 MB"
    assert shown_bytes(16_100_000_001, up=True) == "16.2 GB"
    assert shown_bytes(16_199_999_999, up=False) == "16.1 GB"
    assert shown_bytes(999, up=True) == "999 B" and shown_bytes(0, up=False) == "0 B"
    assert shown_bytes(5_400_000, up=True) != shown_bytes(5_399_999, up=False)


@pytest.mark.parametrize(
    ("pairs", "epochs", "save_steps", "at_once"),
    [
        (12, 1, 200, 1),  # 2 steps: the save when the training ends
        (12, 1, 1, 2),  # a save each step: the newest and the one kept before it
        (16, 1, 2, 1),  # the last periodic save is the end's
        (2_500, 1, 200, 2),  # the recipe's 313 steps: saved at 200 and at the end
        (2_500, 3, 200, 3),  # a third written before the oldest goes
        (None, 1, 200, 3),  # no pairs file yet: as many as can be
    ],
)
def test_the_trainer_checkpoints_on_disk_at_once(tmp_path, pairs, epochs, save_steps, at_once):
    from src.stages.train import checkpoints_at_once

    path = tmp_path / "pairs.jsonl"
    if pairs is not None:
        path.write_text("{}\n" * pairs)
    cfg = train_cfg(f"training.num_epochs={epochs}", f"training.save_steps={save_steps}",
                    "training.global_batch_size=8", pairs=path)  # fmt: skip
    assert checkpoints_at_once(cfg) == at_once


def test_a_training_that_diverges_stops_at_its_first_non_finite_step_and_saves_nothing():
    """learning_rate=1e9: step 1's update blows the weights up, step 2's loss is NaN (which the
    Trainer would log as 0 and step on, then fail writing metrics.json): one line naming the
    step and the remedy, exit code 1, no checkpoint and no record. A gradient norm that is not
    finite stops it the same way."""
    from src.core.errors import EXIT_STAGE_ERROR
    from src.stages.train_worker import setup

    cfg = train_cfg("model=tiny-mistral", "training.learning_rate=1e9", "training.num_epochs=3",
                    "training.warmup_ratio=0")  # fmt: skip
    with pytest.raises(TrainingError) as refused:
        run(cfg)
    said = str(refused.value)
    assert said.startswith("the training diverged at step 2: the loss is nan"), said
    assert "training.learning_rate=1e+09" in said and "lower training.learning_rate" in said
    assert refused.value.exit_code == EXIT_STAGE_ERROR
    stage = cfg.stage_dir("train")
    assert not (stage / "done.json").exists() and not (stage / "checkpoint").exists()

    trainer = setup(train_cfg("model=tiny-mistral"), stage).trainer
    with pytest.raises(TrainingError, match=r"^the training diverged at step 0: the gradient "):
        trainer.log({"loss": 1.0, "grad_norm": float("inf")})


def test_weights_that_are_not_finite_are_counted_among_the_trained_ones_only():
    from src.stages.train_worker import nonfinite_weights

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert nonfinite_weights(model) == 0
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[1].bias[1] = float("-inf")
    assert nonfinite_weights(model) == 2
    model[1].requires_grad_(False)  # frozen (a LoRA base): not trained, not checked
    assert nonfinite_weights(model) == 1


def test_a_save_that_says_the_disk_was_full_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    """safetensors deletes the shard it failed to write, so the disk has room again when the
    error is read: its words (as an H200's 64 GB disk gave them) still make it ENOSPC; another
    failure with room on the disk stays itself, and one with the disk (nearly) full is ENOSPC
    whatever it says."""
    from safetensors import SafetensorError

    from src.stages.train_worker import saving_to

    full = "Error while serializing: I/O error: No space left on device (os error 28)"
    with pytest.raises(OSError) as refused, saving_to(tmp_path):
        raise SafetensorError(full)
    assert refused.value.errno == errno.ENOSPC and refused.value.filename == str(tmp_path)
    with pytest.raises(SafetensorError), saving_to(tmp_path):
        raise SafetensorError("Error while serializing: invalid metadata")
    # torch's own words for it ("unexpected pos") say nothing of the disk: its free space does
    nearly_full = shutil._ntuple_diskusage(10**12, 10**12 - 4096, 4096)
    monkeypatch.setattr("src.stages.train_worker.shutil.disk_usage", lambda path: nearly_full)
    with pytest.raises(OSError) as refused, saving_to(tmp_path):
        raise RuntimeError("[enforce fail at inline_container.cc:659] . unexpected pos 64")
    assert refused.value.errno == errno.ENOSPC


@pytest.mark.slow
def test_command_line_trains_and_writes_a_loadable_checkpoint(tmp_path):
    stage = train_on_the_command_line(tmp_path / "runs", "method=sppo")
    model = AutoModelForCausalLM.from_pretrained(stage / "checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(stage / "checkpoint")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert json.loads((stage / "done.json").read_text())["counts"]["steps"] == 2
    assert not list((stage / "trainer").glob("checkpoint-*")), "the stage is done: they go"
    # readable by the group as the umask says: safetensors saves through a private (0600) file
    wanted = 0o666 & ~umask()
    private = [f for f in stage.rglob("*") if f.is_file() and f.stat().st_mode & 0o777 != wanted]
    assert private == [], private


STREAMED = "training.lm_head_chunk=16"  # several chunks per batch
ONE_PROCESS = {"one": [STREAMED], "one-full-logits": ["training.lm_head_chunk=null"]}


def first_step(root: Path, name: str, *overrides: str, model: str) -> dict:
    """The first logged step of `name`'s training on the command line, its checkpoint loaded."""
    stage = train_on_the_command_line(root / name, f"run_name={name}", *overrides, model=model)
    AutoModelForCausalLM.from_pretrained(stage / "checkpoint")  # gathered: loads whole
    return json.loads((stage / "metrics.json").read_text())["log_history"][0]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """model -> the first steps of its one-process trainings (ONE_PROCESS), made once for the
    module: the strategies compare with the same ones."""
    made = {}

    def first_steps(model: str) -> dict[str, dict]:
        if model not in made:
            root = tmp_path_factory.mktemp(f"one-process-{model}")
            made[model] = {n: first_step(root, n, *o, model=model) for n, o in ONE_PROCESS.items()}
        return made[model]

    return first_steps


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    "strategy, model",
    [("deepspeed", "tiny-mistral"), ("deepspeed", "tiny-gemma2"), ("ddp", "tiny-mistral")],
)
def test_two_cpu_processes_match_one_process_on_the_same_global_batch(
    tmp_path, one_process, strategy, model
):
    """2 gloo processes x 4 pairs = 1 process x 4 pairs x 2 accumulation steps: the same first
    step — loss, log-probs and gradient norm — with the streamed LM head (under ZeRO-3 its weight
    is partitioned; Gemma-2 ties it to the embeddings and soft-caps the logits) and with the
    model's own full-logits head. (At step 1 the policy is the reference, so the loss alone does
    not depend on the log-probs; the logged log-probs and the gradient norm do.)

    Slow: two training processes per strategy, and the first DeepSpeed run of a session builds its
    communication op (~20 s; kept in TORCH_EXTENSIONS_DIR after)."""
    two = [STREAMED, "hardware.processes_per_node=2", f"hardware.distributed={strategy}"]
    first = {**one_process(model), "two": first_step(tmp_path, "two", *two, model=model)}
    for name in ("two", "one-full-logits"):
        for key in ("loss", "logps/chosen", "logps/rejected", "grad_norm"):
            assert first[name][key] == pytest.approx(first["one"][key], rel=1e-5), (name, key)


@pytest.mark.slow
@pytest.mark.distributed  # a process group of one; beside the trainings it compares with
def test_deepspeed_in_one_process_needs_no_launcher(tmp_path, one_process, monkeypatch):
    """hardware.distributed=deepspeed with one process, started as a user starts it (no launcher's
    variables): the stage sets them itself, where DeepSpeed would look for an MPI launch, and the
    first step is one process's without DeepSpeed."""
    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(variable, raising=False)
    zero3 = first_step(
        tmp_path, "zero3", STREAMED, "hardware.distributed=deepspeed", model="tiny-mistral"
    )
    for key in ("loss", "logps/chosen", "logps/rejected", "grad_norm"):
        assert zero3[key] == pytest.approx(one_process("tiny-mistral")["one"][key], rel=1e-5), key


@pytest.mark.slow
def test_the_trainers_wandb_run_holds_the_preference_metrics(tmp_path):
    """logger=wandb in offline mode (conftest): read the run back with wandb's own tooling."""
    cfg = train_cfg(
        "model=tiny-mistral", "method=wpo", "logger=wandb", f"logger.dir={tmp_path / 'wandb'}"
    )
    trained(cfg)
    (run_file,) = (tmp_path / "wandb").rglob("run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    shown = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_file.parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)["summary"]
    for key in (
        "loss",
        "rewards/margins",
        "logps/chosen",
        "wpo/weight_mean",
        "tokens_per_second",
        "learning_rate",
        "grad_norm",
    ):
        assert f"train/{key}" in summary, (key, sorted(summary))
    assert summary["train/global_step"] == 2


def test_a_checkpoint_killed_while_saving_or_damaged_since_is_not_resumed_from(tmp_path, capsys):
    from src.training import checkpoints

    assert checkpoints.resume_point(tmp_path, "id", remove_damaged=True) is None
    for step, whole in ((1, True), (2, True), (10, True), (11, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "optimizer.pt").write_bytes(b"x" * 64)
        (folder / "trainer_state.json").write_text("{}")
        if whole:  # sealed after every process saved its part
            checkpoints.seal(folder, "id")
    assert checkpoints.resume_point(tmp_path, "id", remove_damaged=True) == str(
        tmp_path / "checkpoint-10"
    ), "10 > 2: numeric order; 11 was never sealed"
    assert not (tmp_path / "checkpoint-11").exists()
    assert "checkpoint-11 cannot be resumed from: it has no seal" in capsys.readouterr().err

    # damaged in place at the same size: the content, not the size, decides
    with open(tmp_path / "checkpoint-10" / "optimizer.pt", "r+b") as f:
        f.write(b"y")
    assert checkpoints.resume_point(tmp_path, "id", remove_damaged=False) == str(
        tmp_path / "checkpoint-2"
    )
    err = capsys.readouterr().err
    assert "checkpoint-10 cannot be resumed from: optimizer.pt is not the file" in err
    assert (tmp_path / "checkpoint-10").exists(), "only the deciding process removes"
    (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(b"x" * 10)  # cut short
    assert checkpoints.resume_point(tmp_path, "id", remove_damaged=True) == str(
        tmp_path / "checkpoint-1"
    )
    assert "optimizer.pt has 10 bytes where it was saved with 64" in capsys.readouterr().err
    assert checkpoints.resume_point(tmp_path, "another", remove_damaged=False) is None


@pytest.mark.slow
@pytest.mark.parametrize("logging_steps", [1, 3])
def test_a_resumed_run_reports_the_train_loss_of_every_step(monkeypatch, logging_steps):
    """Stopped after its first step's checkpoint and re-run, training resumes from it; the
    train_loss in metrics.json is still the mean over all 4 steps, not over the resumed 3 only.
    logging_steps=3 leaves the checkpoint's step unlogged unless the trainer logs at saves."""
    from src.core import preemption

    # 12 pairs, global batch 8: 2 steps an epoch, 4 in all
    common = (
        "model=tiny-mistral",
        "training.num_epochs=2",
        f"training.logging_steps={logging_steps}",
    )
    whole, _, _ = trained(train_cfg(*common, "run_name=whole"))

    cfg = train_cfg(*common, "run_name=resumed")
    monkeypatch.setattr(preemption, "_requested", True)  # as SIGUSR1 would: stop after step 1
    with pytest.raises(preemption.Preempted):
        run(cfg)
    monkeypatch.setattr(preemption, "_requested", False)
    resumed, done, stage = trained(cfg)

    assert done["counts"]["steps"] == whole["summary"]["steps"] == 4
    assert not list((stage / "trainer").glob("checkpoint-*")), "the stage is done: they go"
    # the same steps on the same weights (CPU, fixed seed); only float rounding differs: the
    # Trainer sums step losses in float32 between logs, grouped otherwise once resumed
    assert resumed["summary"]["train_loss"] == pytest.approx(
        whole["summary"]["train_loss"], rel=1e-6
    )
    finals = [e["train_loss"] for e in resumed["log_history"] if "train_loss" in e]
    assert finals == [resumed["summary"]["train_loss"]]  # the logged one agrees


# --- full weights in bf16 ----------------------------------------------------------------------

# The recipes' learning rate for one iteration's number of steps (20,000 prompts at a global batch
# of 64: ~312): 12 pairs, 2 a step, 50 epochs
RECIPE_STEPS = [
    "training.learning_rate=5e-7",
    "training.global_batch_size=2",
    "training.per_device_batch_size=2",
    "training.num_epochs=50",
    "training.save_steps=1000",
]
BF16_RUNS = {
    "fp32": ["training.precision=float32"],
    "kahan": ["training.precision=bfloat16"],  # training.weight_updates=kahan, the default
    "master": ["training.precision=bfloat16", "training.weight_updates=fp32"],
}


def bf16_rounded(source: Path, folder: Path) -> Path:
    """A copy of the model at `source` whose weights are bf16 values (stored in fp32): fp32 and
    bf16 trainings from it start from the same weights."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    weights = load_file(folder / "model.safetensors")
    rounded = {k: v.to(torch.bfloat16).float().contiguous() for k, v in weights.items()}
    save_file(rounded, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def weight_changes(start: dict, trained_weights: dict) -> tuple[float, float, dict]:
    """(the share of weights whose bf16 value changed, their mean |change|, which changed): the
    trained weights rounded to bf16, as a checkpoint of bf16 weights holds them."""
    moved, total, size, which = 0, 0.0, 0, {}
    for name, before in start.items():
        change = trained_weights[name].to(torch.bfloat16).float() - before
        which[name] = change != 0
        moved += int(which[name].sum())
        total += float(change.abs().sum())
        size += before.numel()
    return moved / size, total / size, which


@pytest.mark.slow
def test_full_weights_in_bf16_learn_what_the_recipes_fp32_master_weights_learn(tmp_path, tiny_dir):
    """Full weights in bf16 at the recipes' learning rate for one iteration's 300 steps, on the
    same pairs from the same weights. Kahan-compensated updates (the default) end where fp32
    master weights (DeepSpeed's bf16 mode, the recipes' ZeRO-3) end: reward margins within 5 %,
    the same weights changed in the bf16 checkpoint. Beside the fp32 run, which also computes in
    fp32: margins at least 60 % of its (the bf16 forward sees each weight's rounding), the share
    of weights changed within 25 %. torch's RMSprop writing into the bf16 weights (what the
    Trainer does with a bf16 model) ended at a margin of -0.0007 where the fp32 run's is 0.21,
    and changed 0.39 % of the weights where these change ~7 % (docs/memory.md, "Full weights in
    bf16")."""
    start_dir = bf16_rounded(tiny_dir / "tiny-mistral", tmp_path / "start")
    start = {
        n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(start_dir).named_parameters()
    }
    margins, changes = {}, {}
    for name, overrides in BF16_RUNS.items():
        cfg = train_cfg(
            "model=tiny-mistral",
            f"model.path={start_dir}",
            f"paths.root={tmp_path / name}",
            *RECIPE_STEPS,
            *overrides,
        )
        metrics, done, stage = trained(cfg)
        assert done["counts"]["steps"] == 300
        steps = [e for e in metrics["log_history"] if "loss" in e]
        margins[name] = sum(e["rewards/margins"] for e in steps[-30:]) / 30  # the last 5 epochs
        model = AutoModelForCausalLM.from_pretrained(stage / "checkpoint", dtype=torch.float32)
        changes[name] = weight_changes(start, {n: p.detach() for n, p in model.named_parameters()})
    figures = (
        f"margins {margins}, (share, mean |change|) { ({n: c[:2] for n, c in changes.items()}) }"
    )
    assert margins["kahan"] == pytest.approx(margins["master"], rel=0.05), figures
    (share, size, which), (share_m, size_m, which_m) = changes["kahan"], changes["master"]
    assert share == pytest.approx(share_m, rel=0.05), figures
    assert size == pytest.approx(size_m, rel=0.05), figures
    both = sum(int((which[n] & which_m[n]).sum()) for n in which)
    either = sum(int((which[n] | which_m[n]).sum()) for n in which)
    assert both / either > 0.95  # the same weights changed
    assert margins["kahan"] >= 0.6 * margins["fp32"] > 0, figures
    assert share == pytest.approx(changes["fp32"][0], rel=0.25), figures


def test_a_run_whose_warm_up_takes_half_its_steps_is_warned_of():
    """16 pairs in batches of 8: 2 optimizer steps, the first warming up from learning rate 0
    (a smoke run, where eta or the learning rate barely changes what it learns)."""
    from src.training.arguments import warmup_warning

    smoke = compose_cfg("model=tiny-mistral", "training.global_batch_size=8")
    assert warmup_warning(16, smoke).startswith(
        "[train] warning: 1 of the schedule's 2 optimizer steps warm up from learning rate 0"
    )
    assert warmup_warning(400, smoke) is None  # 50 steps, 5 warming up
    unwarmed = compose_cfg(
        "model=tiny-mistral", "training.global_batch_size=8", "training.warmup_ratio=0"
    )
    assert warmup_warning(16, unwarmed) is None
