"""Peak GPU memory of one preference training step at the real models' size, measured term by term
and set beside the memory model (`src/plan/memory.py`, docs/memory.md), for
Mistral-7B-Instruct-v0.2 and Gemma-2-9B-It.

    python -m benchmarks.bench_train_memory_gpu --out benchmarks/results/train_memory_gpu.json
    python -m benchmarks.bench_train_memory_gpu --render benchmarks/results/train_memory_gpu.json
    python -m benchmarks.bench_train_memory_gpu --tiny --device cpu --out /tmp/t.json  # smoke
    python -m benchmarks.bench_train_memory_gpu --modes zero3 \
        --out benchmarks/results/train_memory_gpu_zero3.json  # DeepSpeed ZeRO-3, one process

No weights are downloaded: each architecture is built from its config class
(`src.plan.shapes.REAL_MODELS`, by `bench_generation_gpu`'s names: the real shapes, vocabularies and
attention — eager for Gemma-2, as conf/model/gemma-2-9b-it.yaml sets, torch's SDPA for Mistral) with
random bf16 weights directly on the GPU. What is measured is the project's step, not a look-alike: a
batch of random token ids collated by `src.training.data.PairCollator` (B sequences = B/2 pairs,
chosen then rejected, each prompt 100–200 tokens and its response filling the sequence to T), the
summed response log-probs of `src.training.policy_logps.batch_response_logps` through the streamed
LM head (`stream_lm_head`, 256-token chunks, the default `training.lm_head_chunk`) or the model's
own head, and the SPPO loss of `src.training.losses.preference_loss` against precomputed reference
log-probs (the default `training.ref_logprobs`), as `PreferenceTrainer.compute_loss` combines them;
then what the HF Trainer does around it on one GPU with `bf16=True`: the forward under bf16 autocast
with its outputs cast to fp32 (accelerate's `prepare_model`), gradient checkpointing with
`use_reentrant=False`, `loss.backward()`, gradient clipping to norm 1, `torch.optim.RMSprop` (the
Trainer's `optim="rmsprop"`: torch's defaults, the foreach implementation on CUDA) and
`zero_grad(set_to_none=True)`. Modes: `full` (every weight trained in bf16) and `lora` (peft LoRA on
the frozen bf16 model with `src.config.AdapterConfig`'s settings: r 16, alpha 32, dropout 0.05, the
seven linear layers of every block; peft keeps the adapter's weights in fp32). QLoRA needs
bitsandbytes and is not measured here.

`zero3` (only when asked for: `--modes zero3`; needs DeepSpeed): the same step under DeepSpeed
ZeRO-3 with one process on the one GPU (D = 1, the only data-parallel degree one GPU allows:
every partition is the whole model). The model is built as above, then `deepspeed.initialize`
gets it with torch's RMSprop and the project's config (`DEEPSPEED`, restated from
`src.training.arguments.deepspeed_config`, with its "auto" values filled as the HF Trainer fills
them), as the Trainer does when the config has no optimizer section. No autocast (accelerate
leaves mixed precision to DeepSpeed); the engine's `backward`, then its `step` (clipping and the
optimiser, one sub-group at a time), as accelerate's backward takes them. Besides the phases,
each row keeps the stage-3 optimiser's buffers (`zero3_buffers`), the peak of
`deepspeed.initialize` and the parameters gathered at a time (`Gathered`).

Each (model, mode, head, B x T) runs in a fresh interpreter and takes two steps: the first
allocates the optimiser's state, the second is the one reported. Memory is torch's own
accounting (`memory_allocated`, `max_memory_allocated`, reset at each phase boundary): the
weights after the build, the states after step 1, and during step 2 the allocation after the
forward (what the backward keeps), after the backward (the gradients) and the peak of each
phase — the forward, the LM head's backward (up to the last layer's output gradient, taken by a
hook on each decoder layer's output), each layer's recompute-and-backward, the optimiser step.
The CUDA context is `mem_get_info`'s used memory less torch's reserved pool. The tables read the
per-layer figures from the phases the results file keeps (`phases_step_2`), so a change to how
they are read needs no new run. On a CPU (`--device cpu`, with `--tiny`) the same code runs and
glibc's bytes in use stand in for torch's statistics, at the phase boundaries only: a check of
the code, not a measurement. Each row carries the
memory model's figures for the same run (`src.plan.memory.train_memory` at D = 1: what stays,
each phase's terms, the peak and its phase, the footprint) as the model stood when the run was
made, so that the Markdown sets term beside term from the results file alone; rows of earlier
runs keep the earlier model's terms (`model_terms`) and render as they were. Needs torch,
transformers, peft and accelerate only (and DeepSpeed for `zero3`; not hydra or the project's
other dependencies): every import from src/ below stays clear of src.config (src.plan.shapes and
src.plan.memory are pure Python).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from array import array
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_generation_gpu import ARCHITECTURES, HUB_IDS  # noqa: E402
from benchmarks.common import code_hashes, machine_info, run_fresh  # noqa: E402
from src.plan.memory import Step, train_memory  # noqa: E402
from src.plan.shapes import Shape, real_shape  # noqa: E402

GIB = 2**30
MODULE = "benchmarks.bench_train_memory_gpu"
CHUNK = 256  # training.lm_head_chunk's default
PROMPT_TOKENS = (100, 200)  # each prompt's length is drawn from this range; responses fill to T
TINY_PROMPT_TOKENS = (8, 16)
# src.config.AdapterConfig's defaults (restated: src.config imports hydra, which the GPU machine
# lacks; `lora_settings_match_config` checks them wherever src.config imports)
LORA = dict(
    r=16,
    lora_alpha=32.0,
    lora_dropout=0.05,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
SEED = 42  # training.seed: the adapter's initialisation
LEARNING_RATE = 5e-7  # training.learning_rate (memory does not depend on it)
ETA = 1000.0  # method.eta of SPPO; beta = 1 / eta
# tiny versions of the architectures, for a smoke run of the code on a CPU
TINY = dict(
    vocab_size=1024, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
)  # fmt: skip

# What runs, most informative first: a run that would pass the time budget is left out.
# (model, mode, head, sequences, tokens)
DEFAULT_PLAN = [
    ("mistral-7b-instruct-v0.2", "lora", "streamed", 4, 1024),
    ("mistral-7b-instruct-v0.2", "full", "streamed", 4, 1024),
    ("gemma-2-9b-it", "lora", "streamed", 4, 1024),
    ("gemma-2-9b-it", "full", "streamed", 4, 1024),
    ("gemma-2-9b-it", "lora", "streamed", 8, 2048),
    ("gemma-2-9b-it", "full", "streamed", 8, 2048),
    ("gemma-2-9b-it", "lora", "own", 8, 2048),
    ("gemma-2-9b-it", "lora", "own", 4, 1024),
    ("mistral-7b-instruct-v0.2", "lora", "own", 4, 1024),
    ("mistral-7b-instruct-v0.2", "full", "own", 4, 1024),
    ("gemma-2-9b-it", "full", "own", 4, 1024),
    ("mistral-7b-instruct-v0.2", "lora", "streamed", 8, 2048),
    ("mistral-7b-instruct-v0.2", "full", "streamed", 8, 2048),
    ("gemma-2-9b-it", "full", "own", 8, 2048),
    ("mistral-7b-instruct-v0.2", "lora", "own", 8, 2048),
    ("mistral-7b-instruct-v0.2", "full", "own", 8, 2048),
    # DeepSpeed ZeRO-3 with one process on the one GPU (D = 1): `--modes zero3`
    ("mistral-7b-instruct-v0.2", "zero3", "streamed", 4, 1024),
    ("gemma-2-9b-it", "zero3", "streamed", 4, 1024),
    ("gemma-2-9b-it", "zero3", "streamed", 8, 2048),
    ("mistral-7b-instruct-v0.2", "zero3", "streamed", 8, 2048),
    ("mistral-7b-instruct-v0.2", "zero3", "own", 4, 1024),
]


# src.training.arguments.deepspeed_config for bf16 and hardware.zero_stage 3 (restated, as LORA
# is: `deepspeed_settings_match_project` checks it wherever src.config imports)
DEEPSPEED = {
    "bf16": {"enabled": True},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
}
MAX_GRAD_NORM = 1.0  # training.max_grad_norm


def deepspeed_config(pairs: int) -> dict:
    """DEEPSPEED with its "auto" values filled as the HF Trainer fills them (per-device batch =
    pairs, one accumulation step, one process), and `zero_allow_untested_optimizer`, which the
    Trainer sets when the config has no optimizer section and it hands DeepSpeed its own torch
    optimizer (transformers.integrations.deepspeed.deepspeed_optim_sched). The stage-3 sizes the
    project does not set keep DeepSpeed's defaults: reduce_bucket_size 5e8,
    stage3_prefetch_bucket_size 5e7, stage3_max_live_parameters 1e9, sub_group_size 1e9,
    stage3_param_persistence_threshold 1e5."""
    import copy

    config = copy.deepcopy(DEEPSPEED)
    config.update(
        train_batch_size=pairs,
        train_micro_batch_size_per_gpu=pairs,
        gradient_accumulation_steps=1,
        gradient_clipping=MAX_GRAD_NORM,
        zero_allow_untested_optimizer=True,
        steps_per_print=10**9,
    )
    return config


def deepspeed_settings_match_project() -> bool | None:
    """True where DEEPSPEED is what src.training.arguments.deepspeed_config makes for bf16 and
    the default hardware.zero_stage; None where src.config cannot be imported (no hydra)."""
    try:
        import torch

        from src.config import HardwareConfig
        from src.training.arguments import deepspeed_config as project_config
    except ImportError:
        return None
    zero_stage = HardwareConfig.__dataclass_fields__["zero_stage"].default
    hardware = type("Hardware", (), {"zero_stage": zero_stage})
    return project_config(type("Cfg", (), {"hardware": hardware}), torch.bfloat16) == DEEPSPEED


def lora_settings_match_config() -> bool | None:
    """True where LORA is src.config.AdapterConfig's defaults; None where src.config cannot be
    imported (no hydra: the GPU machine)."""
    try:
        from src.config import AdapterConfig
    except ImportError:
        return None
    c = AdapterConfig()
    return (c.rank, c.alpha, c.dropout, list(c.target_modules)) == (
        LORA["r"], LORA["lora_alpha"], LORA["lora_dropout"], LORA["target_modules"]
    )  # fmt: skip


# --- the worker: one (model, mode, head, B x T) in this process ------------------------------


class Memory:
    """torch's allocator statistics on CUDA. On a CPU (the smoke run, which checks the code and
    the accounting) glibc's bytes in use (mallinfo2), read at the phase boundaries only: a CPU
    run has no peak within a phase."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch
        self._peak = 0
        if not self.cuda:
            import ctypes

            class Mallinfo2(ctypes.Structure):
                _fields_ = [
                    (name, ctypes.c_size_t)
                    for name in (
                        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                        "uordblks", "fordblks", "keepcost",
                    )
                ]  # fmt: skip

            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.mallinfo2.restype = Mallinfo2

    def allocated(self) -> int:
        if self.cuda:
            return self.torch.cuda.memory_allocated()
        info = self._libc.mallinfo2()
        now = info.uordblks + info.hblkhd
        self._peak = max(self._peak, now)
        return now

    def peak(self) -> int:
        return (
            self.torch.cuda.max_memory_allocated()
            if self.cuda
            else max(self._peak, self.allocated())
        )

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        else:
            self._peak = 0
            self._peak = self.allocated()

    def reserved_peak(self) -> int:
        return self.torch.cuda.max_memory_reserved() if self.cuda else self._peak

    def context(self) -> int:
        """Device memory in use that is not torch's pool: the CUDA context, its modules and the
        libraries' own allocations (cuBLAS, cuDNN)."""
        if not self.cuda:
            return 0
        self.torch.cuda.synchronize()
        free, total = self.torch.cuda.mem_get_info()
        return total - free - self.torch.cuda.memory_reserved()


class Phases:
    """Allocation at each phase boundary and the peak within each phase."""

    def __init__(self, memory: Memory):
        self.memory = memory
        self.rows: list[dict] = []
        self.at = 0
        self.recording = False  # True during the step's own forward (not the recompute)

    def start(self) -> None:
        self.rows = []
        self.memory.reset_peak()
        self.at = self.memory.allocated()

    def mark(self, name: str) -> None:
        now = self.memory.allocated()
        self.rows.append(
            {
                "phase": name,
                "start": self.at,
                "end": now,
                "peak": self.memory.peak(),
                "reserved_peak": self.memory.reserved_peak(),
            }
        )
        self.memory.reset_peak()
        self.at = now


def build(name: str, tiny: bool, device):
    import torch
    import transformers

    config_class, model_class, kwargs, attention = ARCHITECTURES[name]
    kwargs = dict(kwargs)
    if tiny:
        kwargs.update(TINY)
        if "query_pre_attn_scalar" in kwargs:
            kwargs["query_pre_attn_scalar"] = TINY["head_dim"]
    config = getattr(transformers, config_class)(**kwargs, attn_implementation=attention)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:  # initialised where it trains: seconds on a GPU, where the CPU takes minutes
            model = getattr(transformers, model_class)(config)
    finally:
        torch.set_default_dtype(torch.float32)
    assert next(model.parameters()).device.type == device.type
    model.config.use_cache = False
    return model


def shape_of(config, name: str) -> Shape:
    """The memory model's Shape of the built model's `config` (for the real models, checked
    against `src.plan.shapes.real_shape` and returned as that)."""
    shape = Shape.from_config(name, config.to_dict(), config._attn_implementation)
    known = real_shape(HUB_IDS[name]) if name in HUB_IDS else None
    if known is not None and config.vocab_size == known.vocab:  # not a tiny (smoke) run
        assert shape == replace(known, name=name), (shape, known)
        return known
    return shape


def add_lora(model):
    """peft's LoRA as src.training.adapters.add_adapter makes it (same settings and seed)."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(**LORA, task_type="CAUSAL_LM")
    torch.manual_seed(SEED)
    return get_peft_model(model, config)


def enable_checkpointing(model) -> None:
    """What the Trainer does with training.gradient_checkpointing (the project's default)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def as_trainer_prepares(model, device) -> None:
    """accelerate's prepare_model under the Trainer's bf16=True: the forward under bf16 autocast,
    its floating outputs cast to fp32."""
    import torch
    from accelerate.utils import convert_outputs_to_fp32

    forward = model.forward
    model.forward = convert_outputs_to_fp32(
        torch.autocast(device.type, dtype=torch.bfloat16)(forward)
    )


def collated_batch(sequences: int, tokens: int, vocab: int, prompt_range, device, seed: int = 0):
    """B sequences (B/2 pairs) of exactly `tokens` tokens, collated as the trainer's loader does."""
    from src.training.data import PairCollator, TokenisedPair

    rng = random.Random(seed)
    pairs = []
    for index in range(sequences // 2):
        prompt = rng.randint(*prompt_range)
        ids = [[rng.randrange(10, vocab) for _ in range(n)] for n in (prompt, tokens - prompt)]
        rejected = [rng.randrange(10, vocab) for _ in range(tokens - prompt)]
        probs = {"chosen_probs_win": 0.7, "chosen_probs_lose": 0.3}
        pairs.append(
            TokenisedPair(
                index, array("i", ids[0]), array("i", ids[1]), array("i", rejected), probs
            )
        )
    batch = PairCollator(pad_id=0)(pairs)
    return {k: v.to(device) for k, v in batch.items()}, [len(p.prompt_ids) for p in pairs]


def compute_loss(model, inputs):
    """PreferenceTrainer.compute_loss for SPPO with precomputed reference log-probs (the trainer
    module itself imports src.config, hence hydra: its lines are followed here one for one)."""
    import torch

    from src.training.losses import preference_loss
    from src.training.policy_logps import batch_response_logps

    pairs = inputs["pair_index"].shape[0]
    logps, _ = batch_response_logps(model, inputs, with_alignment=False)
    policy_chosen, policy_rejected = logps[:pairs], logps[pairs:]
    # ReferenceLogps.lookup: a float32 table of the precomputed values
    ref = torch.tensor([[-1000.0, -1100.0]] * pairs, dtype=torch.float32, device=logps.device)
    ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]
    probs = {
        k: inputs[k].to(logps.dtype)
        for k in ("chosen_probs", "chosen_probs_win", "chosen_probs_lose")
        if k in inputs
    }
    out = preference_loss(
        "sppo",
        policy_chosen_logps=policy_chosen,
        policy_rejected_logps=policy_rejected,
        ref_chosen_logps=ref_chosen.to(logps.dtype),
        ref_rejected_logps=ref_rejected.to(logps.dtype),
        beta=1.0 / ETA,
        eta=ETA,
        label_smoothing=0.0,
        weights=None,
        **probs,
    )
    return out.losses.mean()


def decoder_layers(model):
    from src.training.policy_logps import unwrapped

    return unwrapped(model).model.layers


def watch_layers(model, phases: Phases) -> None:
    """A hook on each decoder layer's output (registered in the step's own forward only): it
    fires when that output's gradient is complete, i.e. when the layer after it has finished its
    backward, closing that layer's phase (the last layer's output closes the LM head's)."""
    layers = decoder_layers(model)
    last = len(layers) - 1

    def on_forward(index):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if phases.recording and hidden.requires_grad:
                name = "lm head backward" if index == last else f"layer {index + 1} backward"
                hidden.register_hook(lambda grad: phases.mark(name))

        return hook

    for i, layer in enumerate(layers):
        layer.register_forward_hook(on_forward(i))


def train_step(model, optimizer, inputs, phases: Phases, params) -> float:
    import torch

    phases.start()
    phases.recording = True
    loss = compute_loss(model, inputs)
    phases.recording = False
    phases.mark("forward")
    loss.backward()
    phases.mark("layer 0 backward + embeddings")
    torch.nn.utils.clip_grad_norm_(params, 1.0)  # training.max_grad_norm
    optimizer.step()
    phases.mark("clip + optimiser step")
    optimizer.zero_grad(set_to_none=True)  # what model.zero_grad() in the Trainer's loop does
    phases.mark("zero_grad")
    return float(loss.detach())


def train_step_zero3(engine, inputs, phases: Phases) -> float:
    """The same step under DeepSpeed as the Trainer takes it: accelerate's backward is the
    engine's `backward` then its `step` (which clips to gradient_clipping, steps the optimiser
    one sub-group at a time and clears the gradients); the Trainer's own clipping and
    `optimizer.step()` do nothing under DeepSpeed; then `model.zero_grad()`."""
    phases.start()
    phases.recording = True
    loss = compute_loss(engine, inputs)
    phases.recording = False
    phases.mark("forward")
    engine.backward(loss)
    phases.mark("layer 0 backward + embeddings")
    engine.step()
    phases.mark("clip + optimiser step")
    engine.zero_grad()
    phases.mark("zero_grad")
    return float(loss.detach())


# --- DeepSpeed ZeRO-3 with one process --------------------------------------------------------


def init_distributed(device) -> None:
    """One process, rank 0 of 1 (D = 1: the only data-parallel degree one GPU allows), on a free
    local port; nccl on a GPU, gloo on a CPU."""
    import socket

    import torch

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    )
    if device.type == "cuda":
        torch.cuda.set_device(0)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


class Gathered:
    """ZeRO-3's gathered parameters, sampled at the end of every parameter-holding module's
    forward (its hook is registered before DeepSpeed's, so it runs before DeepSpeed releases that
    module's parameters), in the step's forward and in the backward's recomputes: the bytes of
    every parameter then available (gathered or persistent), and of those whose data is not a
    view of this process's own partition (a gathered copy; with one process, gathering a
    parameter makes it a view of its partition, no copy)."""

    def __init__(self, model):
        self.model = model
        self.on = False
        self.available_peak = 0
        self.copies_peak = 0
        self.samples = 0
        for module in model.modules():
            if next(module.parameters(recurse=False), None) is not None:
                module.register_forward_hook(self.sample)

    def sample(self, module, args, output) -> None:
        if not self.on:
            return
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        available = copies = 0
        for p in self.params:
            if getattr(p, "ds_status", None) != ZeroParamStatus.AVAILABLE:
                continue
            n = p.ds_numel * p.element_size()
            available += n
            if p.data.untyped_storage().data_ptr() != p.ds_tensor.untyped_storage().data_ptr():
                copies += n
        self.available_peak = max(self.available_peak, available)
        self.copies_peak = max(self.copies_peak, copies)
        self.samples += 1

    def start(self) -> None:
        self.params = list(self.model.parameters())
        self.on = True


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views counted once)."""
    seen = {}
    for t in tensors:
        if t is not None and t.numel():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def zero3_buffers(engine) -> dict:
    """The buffers DeepSpeed's stage-3 optimiser holds between steps (D = 1: a partition is the
    whole model), read from the optimiser itself."""
    import torch

    opt = engine.optimizer
    states = [
        v for state in opt.optimizer.state.values() for v in state.values()
        if torch.is_tensor(v) and v.dim() > 0  # not the step count
    ]  # fmt: skip
    buckets = [getattr(b, "buffer", None) for b in getattr(opt, "ipg_buckets", {}).values()]
    zero = engine._config.zero_config
    return {
        "bf16_params": storage_bytes(opt.fp16_partitioned_groups_flat),
        "fp32_master": storage_bytes(opt.fp32_partitioned_groups_flat),
        "grad_partitions": storage_bytes([opt.grad_partitions_flat_buffer]),
        "optimizer_states": storage_bytes(states),
        "optimizer_state_names": sorted(
            {k for state in opt.optimizer.state.values() for k in state}
        ),
        "reduce_bucket": storage_bytes(buckets),
        "sub_groups": len(opt.fp16_partitioned_groups_flat),
        "sub_group_numel_max": max(t.numel() for t in opt.fp16_partitioned_groups_flat),
        "persistent_params": sum(
            p.ds_numel for p in engine.module.parameters() if getattr(p, "ds_persist", False)
        ),
        "grad_dtype": str(opt.gradient_accumulation_dtype).removeprefix("torch."),
        "world_size": engine.world_size,
        "config": {
            "reduce_bucket_size": zero.reduce_bucket_size,
            "stage3_prefetch_bucket_size": zero.prefetch_bucket_size,
            "stage3_max_live_parameters": zero.max_live_parameters,
            "stage3_max_reuse_distance": zero.max_reuse_distance,
            "stage3_param_persistence_threshold": zero.param_persistence_threshold,
            "sub_group_size": zero.sub_group_size,
            "overlap_comm": zero.overlap_comm,
            "contiguous_gradients": zero.contiguous_gradients,
        },
    }


def transient(row: dict) -> int:
    """A phase's peak above the larger of what it started with and what it left: what stays
    (a layer's weight gradients) is not counted as the phase's own."""
    return row["peak"] - max(row["start"], row["end"])


def layer_transients(phases: list[dict]) -> dict:
    """The largest transient of a decoder layer's recompute-and-backward, over layers 1..L-1
    (layer 0's phase also holds the embeddings' backward: a [V, H] gradient with full weights),
    and that of layer 0's phase."""
    layers = [r for r in phases if r["phase"].startswith("layer ")]
    last = next(r for r in layers if r["phase"] == "layer 0 backward + embeddings")
    return {
        "layer_backward_transient": max(transient(r) for r in layers if r is not last),
        "layer_0_and_embeddings_transient": transient(last),
    }


def predicted(shape: Shape, mode: str, head: str, sequences: int, tokens: int, rows_own: int):
    """The memory model's figures (bytes) for this run, one process (D = 1): what stays through
    the step, each transient phase's terms, the peak (torch's allocation) and its phase, the CUDA
    context and the footprint (context and allocator slack included). Kept in the row, so that the
    tables read the model as it stood when the run was made."""
    step = Step(
        sequences=sequences,
        tokens=tokens,
        response_rows=rows_own,
        chunk=CHUNK if head == "streamed" else None,
    )
    memory = train_memory(shape, step, mode, devices=1)
    return {
        "kept": memory.kept,
        "phases": memory.phases,
        "peak": memory.peak,
        "peak_phase": memory.peak_phase,
        "context": memory.context,
        "footprint": memory.footprint,
    }


def worker(spec: dict) -> dict:
    import torch

    device = torch.device(spec["device"])
    memory = Memory(device)
    zero3 = spec["mode"] == "zero3"
    if zero3:
        init_distributed(device)
    if memory.cuda:
        torch.zeros(1, device=device)  # the CUDA context
    context_init = memory.context()
    started = time.perf_counter()
    base = memory.allocated()  # CUDA: the one tensor above; CPU: the interpreter's own heap
    model = build(spec["model"], spec["tiny"], device)
    weights = memory.allocated() - base
    shape = shape_of(model.config, spec["model"])
    from src.training.policy_logps import stream_lm_head

    if spec["head"] == "streamed":
        stream_lm_head(model, CHUNK)
    if spec["mode"] == "lora":
        model = add_lora(model)
    adapter = memory.allocated() - base - weights
    enable_checkpointing(model)
    model.train()
    if not zero3:  # under DeepSpeed accelerate adds no autocast: bf16 weights compute in bf16
        as_trainer_prepares(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    trainable_dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    optimizer = torch.optim.RMSprop(params, lr=LEARNING_RATE)  # the Trainer's optim="rmsprop"
    phases = Phases(memory)
    watch_layers(model, phases)
    zero3_row = None
    if zero3:  # what the Trainer's deepspeed_init and accelerate's prepare do
        import deepspeed

        gathered = Gathered(model)  # its hooks before DeepSpeed's
        before = memory.allocated()
        memory.reset_peak()
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(spec["sequences"] // 2)
        )
        zero3_row = {
            "before_init": before - base,
            "after_init": memory.allocated() - base,
            "init_peak": memory.peak() - base,
        }
        model = engine
    prompt_range = TINY_PROMPT_TOKENS if spec["tiny"] else PROMPT_TOKENS
    inputs, prompts = collated_batch(
        spec["sequences"], spec["tokens"], shape.vocab, prompt_range, device
    )
    response_rows = int(inputs["response_mask"].sum())
    in_any = inputs["response_mask"].bool().any(0).nonzero()
    rows_own = spec["sequences"] * (spec["tokens"] - int(in_any[0]))  # logits_to_keep's rows
    steps = []
    for index in range(2):
        if zero3:
            if index == 1:
                gathered.start()
            loss = train_step_zero3(model, inputs, phases)
        else:
            loss = train_step(model, optimizer, inputs, phases, params)
        steps.append({"loss": loss, "phases": phases.rows})
    context_end = memory.context()
    if zero3:
        zero3_row.update(
            **zero3_buffers(engine),  # the optimiser's state exists from the first step on
            gathered_available_peak=gathered.available_peak,
            gathered_copies_peak=gathered.copies_peak,
            gathered_samples=gathered.samples,
            after_steps=memory.allocated() - base,
        )
    seconds = time.perf_counter() - started

    first, second = steps
    p2 = {r["phase"]: r for r in second["phases"]}
    start2 = second["phases"][0]["start"]
    layer_params = sum(
        getattr(p, "ds_numel", p.numel()) * p.element_size()
        for p in decoder_layers(model)[0].parameters()
        if p.requires_grad
    )
    head_row = p2["lm head backward"]
    measured = {
        "weights": weights,
        "adapter": adapter,
        "after_step_1": first["phases"][-1]["end"] - base,  # weights + optimiser states
        "optimizer_states": start2 - first["phases"][0]["start"],
        "kept_after_forward": p2["forward"]["end"] - start2,
        "gradients": p2["layer 0 backward + embeddings"]["end"] - start2,
        "forward_peak": p2["forward"]["peak"] - start2,
        # above what the phase started with and what it leaves: the phase's own transient
        "head_backward_transient": transient(head_row),
        "head_backward_kept": head_row["end"] - head_row["start"],
        **layer_transients(second["phases"]),
        "layer_params_trainable_bytes": layer_params,
        "optimizer_step_peak": p2["clip + optimiser step"]["peak"]
        - p2["clip + optimiser step"]["start"],
        "step_1_peak": max(r["peak"] for r in first["phases"]) - base,
        "step_2_peak": max(r["peak"] for r in second["phases"]) - base,
        "step_2_peak_phase": max(second["phases"], key=lambda r: r["peak"])["phase"],
        "reserved_peak": max(r["reserved_peak"] for r in second["phases"]) - base,
        "base": base,
        "context_init": context_init,
        "context_end": context_end,
    }
    return {
        **{k: spec[k] for k in ("model", "mode", "head", "sequences", "tokens", "tiny", "device")},
        "attention": decoder_layers(model)[0].self_attn.config._attn_implementation,
        "prompt_tokens": prompts,
        "response_rows": response_rows,
        "rows_own_head": rows_own,
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
        "trainable": trainable,
        "trainable_dtypes": trainable_dtypes,
        "losses": [s["loss"] for s in steps],
        "measured": measured,
        "phases_step_2": second["phases"],
        "model_memory": predicted(
            shape, spec["mode"], spec["head"], spec["sequences"], spec["tokens"], rows_own
        ),
        "model_shape": shape.__dict__,
        "model_params": shape.params,
        "model_lora_params": shape.lora_params(LORA["r"]),
        **({"zero3": zero3_row} if zero3 else {}),
        "seconds": seconds,
    }


def worker_main(argv: list[str]) -> None:
    out, spec = Path(argv[0]), json.loads(argv[1])
    import torch

    try:
        row = worker(spec)
    except torch.OutOfMemoryError as error:
        row = {**spec, "oom": True, "error": str(error).splitlines()[0]}
        if torch.cuda.is_available():
            row["allocated_at_oom"] = torch.cuda.memory_allocated()
            row["peak_at_oom"] = torch.cuda.max_memory_allocated()
        import traceback

        row["where"] = [f"{f.filename.rsplit('/', 3)[-1]}:{f.lineno} {f.name}"
                        for f in traceback.extract_tb(error.__traceback__)[-6:]]  # fmt: skip
    out.write_text(json.dumps(row))
    if spec["mode"] == "zero3":
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# --- the driver --------------------------------------------------------------------------------


def versions() -> dict:
    from benchmarks.common import installed

    return {p: installed(p) for p in ("torch", "transformers", "peft", "accelerate")}


def gpu_name() -> str:
    import subprocess

    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "none"


def write(out: Path, result: dict) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks/results/train_memory_gpu.json"
    )
    parser.add_argument("--render", type=Path, help="rewrite the Markdown of a results file")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configs and T (a smoke run)")
    parser.add_argument("--models", nargs="+", choices=list(ARCHITECTURES))
    parser.add_argument("--modes", nargs="+", choices=["full", "lora", "zero3"])
    parser.add_argument("--heads", nargs="+", choices=["streamed", "own"])
    parser.add_argument("--shapes", nargs="+", help="BxT, e.g. 4x1024 (default: the plan's)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all runs")
    parser.add_argument("--timeout", type=int, default=300, help="seconds for one run")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(result))
        return
    plan = [
        (m, mode, head, b, t)
        for m, mode, head, b, t in DEFAULT_PLAN
        if (args.models is None or m in args.models)
        and (mode in args.modes if args.modes else mode != "zero3")
        and (args.heads is None or head in args.heads)
        and (args.shapes is None or f"{b}x{t}" in args.shapes)
    ]
    if args.tiny:  # the same plan at T / 16: prompts of 8-16 tokens, responses filling T
        plan = [(m, mode, head, b, t // 16) for m, mode, head, b, t in plan]
    zero3 = any(mode == "zero3" for _, mode, *_ in plan)
    packages = ("torch", "transformers", "peft", "accelerate") + ("deepspeed",) * zero3
    files = [Path(__file__), REPO_ROOT / "src/training/policy_logps.py",
             REPO_ROOT / "src/training/losses.py", REPO_ROOT / "src/training/data.py",
             REPO_ROOT / "src/plan/memory.py", REPO_ROOT / "src/plan/shapes.py"]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "peak GPU memory of one SPPO training step at the real model shapes, "
        "measured term by term beside the memory model of src/plan/memory.py",
        "command": f"python -m {MODULE} " + " ".join(argv),
        "machine": {
            **machine_info(packages, code_hashes(files)),
            "gpu": gpu_name(),
        },
        "settings": {
            "chunk": CHUNK,
            "prompt_tokens": TINY_PROMPT_TOKENS if args.tiny else PROMPT_TOKENS,
            "lora": LORA,
            "lora_matches_src_config": lora_settings_match_config(),
            "optimizer": "torch.optim.RMSprop (defaults; lr 5e-7)",
            "loss": "sppo, eta 1000",
            "device": args.device,
            "tiny": args.tiny,
            **(
                {
                    "deepspeed": DEEPSPEED,
                    "deepspeed_matches_project": deepspeed_settings_match_project(),
                    "processes": 1,
                }
                if zero3
                else {}
            ),
        },
        "rows": [],
    }
    write(args.out, result)
    began, longest = time.perf_counter(), 0.0
    for model, mode, head, b, t in plan:
        spec = dict(model=model, mode=mode, head=head, sequences=b, tokens=t, tiny=args.tiny,
                    device=args.device)  # fmt: skip
        left = args.budget - (time.perf_counter() - began)
        if left < 1.2 * longest + 10:
            result["rows"].append({**spec, "skipped": "time budget"})
            print(f"skipped (time budget): {spec}", flush=True)
            write(args.out, result)
            continue
        t0 = time.perf_counter()
        row, error = run_fresh(MODULE, [json.dumps(spec)], timeout=int(min(args.timeout, left)))
        elapsed = time.perf_counter() - t0
        longest = max(longest, elapsed)
        row = row if row is not None else {**spec, "error": error}
        row["wall_s"] = elapsed
        result["rows"].append(row)
        write(args.out, result)
        print(summary_line(row), flush=True)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


# --- the tables -------------------------------------------------------------------------------


UNIT = {"name": "GiB", "bytes": GIB}  # MiB for a tiny (smoke) run's tables


def g(x: float | None) -> str:
    return "–" if x is None else f"{x / UNIT['bytes']:.2f}"


def label(r: dict) -> str:
    return f"{r['model']} | {r['mode']} | {r['head']} | {r['sequences']}x{r['tokens']}"


def earlier_model(r: dict) -> bool:
    """A row of a run set beside the memory model before the H200 measurements: it keeps that
    model's terms (`model_terms`, bytes, a 1 GiB CUDA-context term among them), summed to its
    total; later rows keep `src.plan.memory`'s figures (`model_memory`: `predicted`)."""
    return "model_terms" in r


def model_peak(r: dict) -> float:
    """The model's allocation at the step's peak (the CUDA context aside)."""
    if earlier_model(r):
        return sum(v for k, v in r["model_terms"].items() if k != "CUDA context")
    return r["model_memory"]["peak"]


def model_total(r: dict) -> float:
    """What the model says the GPU holds: the earlier model's terms summed, or the footprint."""
    if earlier_model(r):
        return sum(r["model_terms"].values())
    return r["model_memory"]["footprint"]


def summary_line(r: dict) -> str:
    if "measured" not in r:
        return f"{label(r)}: {r.get('error') or r.get('skipped') or 'out of memory'}"
    m = {**r["measured"], **layer_transients(r["phases_step_2"])}
    phase = "" if earlier_model(r) else f" ({r['model_memory']['peak_phase']})"
    return (
        f"{label(r)}: peak {g(m['step_2_peak'])} GiB ({m['step_2_peak_phase']}), model "
        f"{g(model_peak(r))} GiB{phase} + context; weights {g(m['weights'])}, states "
        f"{g(m['optimizer_states'])}, gradients {g(m['gradients'])}, kept "
        f"{g(m['kept_after_forward'])}, layer "
        f"{g(m['layer_backward_transient'])}, head {g(m['head_backward_transient'])}, optimiser step "
        f"{g(m['optimizer_step_peak'])}, context {g(m['context_end'])}"
    )


def measured_for(term: str, r: dict, m: dict) -> float | None:
    """The measured bytes `src.plan.memory`'s term `term` is set beside (None: not measured
    apart, e.g. the QLoRA terms, or the head's gradient that lies inside the phases)."""
    z = r.get("zero3", {})
    figures = {
        "weights (bf16)": lambda: m["weights"],
        "frozen weights (bf16)": lambda: m["weights"],
        "optimiser state (bf16)": lambda: m["optimizer_states"],
        "adapter: fp32 weights, gradients, states": lambda: (
            m["adapter"] + m["gradients"] + m["optimizer_states"]
        ),
        "model states / devices": lambda: sum(
            z[k] for k in ("bf16_params", "grad_partitions", "fp32_master", "optimizer_states")
        ),
        "reduce bucket": lambda: z["reduce_bucket"],
        "parameters gathered at a time": lambda: z["gathered_copies_peak"],
        "layer inputs kept (gradient checkpointing)": lambda: m["kept_after_forward"],
        "every layer's activations (no checkpointing)": lambda: m["kept_after_forward"],
        "one layer recomputed and its backward": lambda: m["layer_backward_transient"],
        "streamed LM head and the final norm's backward": lambda: m["head_backward_transient"],
        "the model's own LM head: full logits": lambda: m["head_backward_transient"],
        "gradients (bf16)": lambda: m["gradients"],
        "RMSprop's temporary": lambda: m["optimizer_step_peak"],
    }
    return figures[term]() if term in figures else None


def term_pairs(r: dict) -> list[tuple[str, float | None, float | None]]:
    """(term, the model's bytes, measured bytes) for one run: each of the model's terms as the
    row keeps them (what stays, then each phase's), then what was measured beside no term of its
    own, then the peak, the CUDA context, the allocator's slack and the footprint."""
    if earlier_model(r):
        return earlier_term_pairs(r)
    mm, m = r["model_memory"], {**r["measured"], **layer_transients(r["phases_step_2"])}
    rows: list[tuple[str, float | None, float | None]] = [
        (term, value, measured_for(term, r, m)) for term, value in mm["kept"].items()
    ]
    for phase, terms in mm["phases"].items():
        rows += [(f"{phase}: {term}", v, measured_for(term, r, m)) for term, v in terms.items()]
    modelled = {term for terms in mm["phases"].values() for term in terms}
    head = "streamed" if r["head"] == "streamed" else "own"
    rows.append(("layer 0 + the embeddings' backward (transient)", None,
                 m["layer_0_and_embeddings_transient"]))  # fmt: skip
    if "one layer recomputed and its backward" not in modelled:  # the head's phase is larger
        rows.append(("one layer recomputed + its backward (transient; layers 1 to L-1)", None,
                     m["layer_backward_transient"]))  # fmt: skip
    if not any("LM head" in term and "gradient" not in term for term in modelled):
        rows.append((f"LM head backward ({head}, transient)", None, m["head_backward_transient"]))
    if r["mode"] == "zero3":
        z = r["zero3"]
        if "parameters gathered at a time" not in mm["kept"]:  # D = 1: none beside the partition
            rows.append(("parameters gathered at a time: copies beside the partition", None,
                         z["gathered_copies_peak"]))  # fmt: skip
        rows += [
            ("parameters available at a time (views of the partition at D = 1)", None,
             z["gathered_available_peak"]),
            ("deepspeed.initialize (transient above what it leaves)", None,
             z["init_peak"] - max(z["after_init"], z["before_init"])),
        ]  # fmt: skip
    rows += [
        (f"peak allocated (the model's: {mm['peak_phase']})", mm["peak"], m["step_2_peak"]),
        ("CUDA context", mm["context"], m["context_end"]),
        ("allocator slack (peak reserved - peak allocated)",
         mm["footprint"] - mm["peak"] - mm["context"], m["reserved_peak"] - m["step_2_peak"]),
        ("footprint (context + peak reserved)", mm["footprint"],
         m["context_end"] + m["reserved_peak"]),
    ]  # fmt: skip
    return rows


def earlier_term_pairs(r: dict) -> list[tuple[str, float, float | None]]:
    """(term, the earlier model's bytes, measured bytes) for a row that keeps that model's
    terms (`earlier_model`)."""
    t, m = r["model_terms"], {**r["measured"], **layer_transients(r["phases_step_2"])}
    b = 2
    if r["mode"] == "zero3":
        z, psi = r["zero3"], r["model_params"]
        gather_key = next(k for k in t if k.startswith("parameters gathered"))
        rows = [
            ("bf16 parameters (flat partition)", psi * b, z["bf16_params"]),
            ("bf16 gradient partitions", psi * b, z["grad_partitions"]),
            ("fp32 master weights", psi * 4, z["fp32_master"]),
            ("optimiser state (RMSprop, fp32)", psi * 4, z["optimizer_states"]),
            ("model states Ψ(2+2+4+4k)/D, D = 1 (allocated after step 1, with the bucket)",
             t["model states / devices"], m["after_step_1"]),
            ("reduce bucket (contiguous_gradients, reduce_bucket_size × b)", 0.0,
             z["reduce_bucket"]),
            ("parameters gathered at a time (≤ 1e9 × b): copies beside the partition",
             t[gather_key], z["gathered_copies_peak"]),
            ("parameters available at a time (views of the partition at D = 1)",
             t[gather_key], z["gathered_available_peak"]),
            ("deepspeed.initialize (transient above what it leaves)", 0.0,
             z["init_peak"] - max(z["after_init"], z["before_init"])),
        ]  # fmt: skip
    elif r["mode"] == "full":
        psi_b = r["model_params"] * b
        rows = [
            ("weights", psi_b, m["weights"]),
            ("gradients", psi_b, m["gradients"]),
            ("optimiser state (RMSprop)", psi_b, m["optimizer_states"]),
        ]
    else:
        adapter = r["model_lora_params"] * 4
        rows = [
            ("weights (frozen, bf16)", r["model_params"] * b, m["weights"]),
            ("adapter weights (fp32)", adapter, m["adapter"]),
            ("adapter gradients", adapter, m["gradients"]),
            ("adapter optimiser state", adapter, m["optimizer_states"]),
        ]
    head_key = next(k for k in t if "LM head" in k and "gradient" not in k)
    if r["mode"] == "zero3":  # formed whole at D = 1, inside the head's (or layer 0's) phase
        rows.append(
            ("LM head gradient before reduce-scatter (V H b; in the phases below)",
             t["LM head gradient before reduce-scatter"], None)
        )  # fmt: skip
    rows += [
        ("kept after the forward (checkpointed layer inputs)",
         t["layer inputs kept (gradient checkpointing)"], m["kept_after_forward"]),
        ("one layer recomputed + its backward (transient; layers 1 to L-1)",
         t["one layer recomputed (attention + MLP)"], m["layer_backward_transient"]),
        ("layer 0 + the embeddings' backward (transient)",
         t["one layer recomputed (attention + MLP)"], m["layer_0_and_embeddings_transient"]),
        (f"LM head backward ({'streamed' if r['head'] == 'streamed' else 'own'}, transient)",
         t[head_key], m["head_backward_transient"]),
        ("optimiser step (transient)", 0.0, m["optimizer_step_peak"]),
        ("CUDA context", t["CUDA context"], m["context_end"]),
        ("allocator slack (peak reserved - peak allocated)", 0.0, m["reserved_peak"] - m["step_2_peak"]),
    ]  # fmt: skip
    return rows


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    unit = UNIT["name"] = "MiB" if s["tiny"] else "GiB"
    UNIT["bytes"] = 2**20 if s["tiny"] else GIB
    v = m.get("versions", {})
    measured = [r for r in result["rows"] if "measured" in r]
    earlier = bool(measured) and all(earlier_model(r) for r in measured)
    if earlier:
        model_is = (
            '"model" is the earlier memory model\'s total (the terms this results file keeps, '
            "from before these measurements; `src/plan/memory.py` has replaced that model) less "
            "its 1 GiB CUDA-context term, set beside torch's peak allocation; the last two columns "
            "are the whole device footprint (context + peak reserved) beside the model's total."
        )
    else:
        model_is = (
            '"model" is `src/plan/memory.py`\'s peak allocation for the same run at D = 1, and '
            "the phase it falls in, as the results file keeps them (the model when the run was "
            "made), set beside torch's peak allocation; the last two columns are the whole device "
            "footprint (context + peak reserved) beside the model's (its CUDA context and the "
            "allocator's slack included)."
        )
    lines = [
        "# Peak GPU memory of one SPPO step, measured beside the memory model",
        "",
        f"{m.get('gpu')} · torch {v.get('torch')} · transformers {v.get('transformers')} · "
        f"peft {v.get('peft')} · accelerate {v.get('accelerate')} · {m['date_utc']}",
        "",
        f"Random bf16 weights of the real shapes; B sequences (B/2 pairs) of exactly T tokens, "
        f"prompts of {s['prompt_tokens'][0]}–{s['prompt_tokens'][1]} tokens; SPPO loss, "
        f"precomputed reference; bf16 autocast, gradient checkpointing, RMSprop, clipping; "
        f"LM head streamed in {s['chunk']}-token chunks or the model's own; LoRA r "
        f"{s['lora']['r']} on {len(s['lora']['target_modules'])} linear layers per block. "
        f"The second step's figures; {unit}. " + model_is,
        "",
    ]
    if any(r.get("mode") == "zero3" for r in result["rows"]):
        lines[-1:-1] = [
            "",
            "zero3: DeepSpeed ZeRO-3 with one process on the one GPU (D = 1, the only "
            "data-parallel degree one GPU allows), `deepspeed.initialize` with the project's "
            "settings (`src.training.arguments.deepspeed_config`: bf16, stage 3, overlap_comm, "
            "contiguous_gradients"
            + {True: "; checked against it", False: "; DIFFERS from it", None: ""}[
                s.get("deepspeed_matches_project")
            ]
            + "; DeepSpeed's defaults for the stage-3 sizes) and torch's RMSprop handed to it, "
            "as the HF Trainer does when the config has no optimizer section. No autocast "
            "(accelerate leaves mixed precision to DeepSpeed: bf16 weights compute in bf16); "
            "the engine's backward, then its step (clipping to 1, the optimiser by sub-group).",
        ]
    model_columns = "model | measured / model | context + peak reserved | model total"
    if not earlier:
        model_columns = (
            "model (phase) | measured / model | context + peak reserved | model footprint"
        )
    lines += [
        "| model | mode | head | B x T | weights | weights + states | peak allocated (phase) | "
        + model_columns
        + " |",
        "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "measured" not in r:
            why = "out of memory" if r.get("oom") else (r.get("skipped") or r.get("error"))
            if r.get("oom") and "peak_at_oom" in r:
                why += f" (peak {g(r['peak_at_oom'])} allocated; {r['where'][-1]})"
            lines.append(f"| {label(r)} | {why} | | | | | | |")
            continue
        x = r["measured"]
        model = model_peak(r)
        phase = "" if earlier_model(r) else f" ({r['model_memory']['peak_phase']})"
        lines.append(
            f"| {label(r)} | {g(x['weights'] + x['adapter'])} | {g(x['after_step_1'])} | "
            f"{g(x['step_2_peak'])} ({x['step_2_peak_phase']}) | {g(model)}{phase} | "
            f"{x['step_2_peak'] / model:.2f} | {g(x['context_end'] + x['reserved_peak'])} | "
            f"{g(model_total(r))} |"
        )
    lines += ["", "## Term by term", ""]
    lines += [
        "Measured: weights after the build; states after step 1 less before it; gradients after "
        "the backward less the step's start; kept = after the forward less the step's start; "
        "one layer = the largest, over the decoder layers 1 to L-1, of the transient of "
        "the layer's recompute-and-backward phase: its peak above the larger of what it "
        "started with and what it left (what stays, such as a layer's weight gradients, is not "
        "counted); layer 0's phase, which also runs the embeddings' backward, is shown on its "
        "own; LM head = the same for the phase from the backward's start to the last layer's "
        "output gradient (it includes the final norm's backward); "
        "optimiser step = the peak above its start during clipping and "
        "`optimizer.step()`.",
        "",
    ]
    if any(r.get("mode") == "zero3" for r in result["rows"]):
        lines[-1:-1] = [
            "",
            "zero3: the four model states are the sizes of the stage-3 optimiser's own buffers "
            "after the steps (its flat bf16 partition, its bf16 gradient partitions, its fp32 "
            "master partition, RMSprop's state on it), the reduce bucket its contiguous-gradients "
            "buffer; gathered and available = the largest sum, sampled at the end of every "
            "parameter-holding module's forward (the step's and the recomputes'), of the "
            "parameters then gathered: those whose data is a copy beside the partition, and all "
            "of them (views of the partition at D = 1, persistent ones included); "
            "deepspeed.initialize = its peak above what was there before or after it; optimiser "
            "step = the peak above its start during the engine's step. The LM head's gradient "
            "is formed whole at D = 1 and has no row of its own: it lies in the head's phase "
            "(untied) or in what that phase leaves until layer 0's (tied).",
        ]
    for r in result["rows"]:
        if "measured" not in r:
            continue
        lines += [
            f"**{label(r).replace(' | ', ', ')}** (N = {r['rows_own_head']:,} rows from the "
            f"first response row, {r['response_rows']:,} response tokens)",
            "",
        ]
        if "zero3" in r:
            z = r["zero3"]
            lines += [
                f"ZeRO-3 with {z['world_size']} process: {z['sub_groups']} optimiser sub-groups "
                f"(largest {z['sub_group_numel_max']:,} elements), gradients in {z['grad_dtype']}, "
                f"RMSprop state {', '.join(z['optimizer_state_names'])}; "
                + ", ".join(f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool)
                            else f"{k} {v}" for k, v in z["config"].items())
                + f"; peak in deepspeed.initialize {g(z['init_peak'])} {unit}.",
                "",
            ]  # fmt: skip
        lines += [
            f"| term | model {unit} | measured {unit} | measured / model |",
            "|---|---:|---:|---:|",
        ]
        for name, model, measured in term_pairs(r):
            ratio = f"{measured / model:.2f}" if model and measured is not None else "–"
            lines.append(f"| {name} | {g(model)} | {g(measured)} | {ratio} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
