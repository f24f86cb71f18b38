"""Peak GPU memory per device of each stage: a training step (full weights, ZeRO-3, LoRA,
QLoRA), HF generation, and the judge; term by term (docs/memory.md gives each term and where it
was measured: the training terms on an H200 at the real models' sizes).

    python -m src.plan.memory            # the table of docs/memory.md (Markdown)
    python -m src.plan.memory --terms    # every term of every row

A step's memory is what stays through it (weights, gradients, optimiser state) plus the larger
of its two transient phases: the backward (the layer inputs gradient checkpointing keeps, then
one layer recomputed or the LM head's backward) and the optimiser step (torch's RMSprop builds a
temporary as large as the parameters it updates: with full weights that phase is the peak).

Pure Python, no torch: the GPU benchmarks import it where only torch and transformers are.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from src.core.memory import OPTIMIZER_SLICE
from src.core.shapes import GEMMA_2_9B, MISTRAL_7B, Shape

GIB = 1024**3
NF4_BYTES = (4 + 0.127) / 8  # 4-bit NF4 plus double-quantised absmax constants (QLoRA paper)
CUDA_CONTEXT = 0.75 * GIB  # measured on an H200 after a step (torch 2.11): 0.74-0.75 GiB
# what torch's allocator reserves above the allocation, as a share of a phase's activations
# (their many sizes fragment its blocks): measured 11-22 % on the H200
ALLOCATOR_SLACK = 0.25
WHOLE = (
    "gradients",
    "RMSprop's temporary",
    "the step's fp32 slices",
    "LM head gradient before reduce-scatter",
)  # the names of terms allocated once per step, not fragmenting
# DeepSpeed's ZeRO-3 defaults, which the project's config leaves as they are (elements)
GATHERED = 1e9  # stage3_max_live_parameters: parameters gathered at a time
REDUCE_BUCKET = 5e8  # reduce_bucket_size: gradients flattened for a reduce, held throughout
SUB_GROUP = 1e9  # sub_group_size: parameters the optimiser steps at a time
ZERO3_CONTEXT = 1.7 * GIB  # CUDA context with DeepSpeed's and NCCL's kernels: 1.66-1.68 (H200)
ZERO3_SLACK = 0.23  # reserved above the peak under ZeRO-3, a share of it: 14-23 % (H200, D = 1)
NORM_BACKWARD = 18  # bytes per B T H element: the final RMSNorm's fp32 backward (measured)
# bytes per B T input element of every adapted layer, by b: peft's dropout output and mask, A's
# output (bf16: measured on the H200; fp32: on CPU, the tiny models)
LORA_SAVED = {2: 6, 4: 5}
# bytes per logit the model's own head keeps, by (soft-capped, b): on a GPU under the Trainer's
# bf16 autocast (measured on the H200); in fp32 on CPU two [N, V] copies, three soft-capped
OWN_HEAD = {(False, 2): 8, (True, 2): 10, (False, 4): 8, (True, 4): 12}
DTYPES = {2: "bf16", 4: "fp32"}
# The optimizers for bf16 weights (src/training/optimizers.py) step a parameter OPTIMIZER_SLICE
# elements at a time, holding at most this many fp32 slices of it at once, k its states per weight
# (measured on CPU: RMSprop 5 and 2, AdamW 6 and 3); eager, that is: the fused step (a GPU's)
# holds none, and the plan keeps the eager bound (the step it falls back to)
STEP_SLICES = {"kahan": lambda k: 4 + k, "master": lambda k: 1 + k}
EAGER_SAVED = 8  # bytes per attention score autograd keeps: tanh's output and the fp32 softmax's
# On CPU (fp32, glibc, which maps large tensors and returns them when freed: no allocator slack)
# what a stage adds to the process's resident set besides its tensors: the Trainer's, autograd's
# and oneDNN's buffers and threads (measured on the tiny models, 2 cores)
CPU_CONTEXT = {"train": 40 * 2**20, "generate": 13 * 2**20}


@dataclass(frozen=True)
class Step:
    """One training step per device. Defaults: the SPPO recipe, 2 pairs (4 sequences) per
    micro-batch, T = max_length 1,024, bf16, gradient checkpointing, RMSprop (one state per
    parameter), LoRA rank 16, the streamed LM head with 256-token chunks."""

    sequences: int = 4  # 2 x pairs per device
    tokens: int = 1024  # T, the padded length
    response_rows: int | None = None  # logit rows of the own head; None: every token (B T)
    rank: int = 16
    optimizer_states: int = 1  # RMSprop; AdamW: 2
    chunk: int | None = 256  # None: the model's own head, full logits
    b: int = 2  # bf16
    gradient_checkpointing: bool = True


@dataclass
class Memory:
    """Bytes per device: what stays through the stage, and its transient phases (the peak holds
    the larger one)."""

    kept: dict[str, float]
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    context: float = CUDA_CONTEXT
    slack_of_peak: float = 0.0  # the allocator's slack as a share of the peak (ZeRO-3)
    slack_of_activations: float = ALLOCATOR_SLACK

    def on_cpu(self, stage: str) -> Memory:
        """The same tensors in a CPU process: its context instead of CUDA's, no allocator slack."""
        self.context, self.slack_of_peak, self.slack_of_activations = CPU_CONTEXT[stage], 0.0, 0.0
        return self

    @property
    def peak_phase(self) -> str | None:
        return max(self.phases, key=lambda p: sum(self.phases[p].values()), default=None)

    @property
    def peak(self) -> float:
        """Torch's peak allocation."""
        transient = sum(self.phases[self.peak_phase].values()) if self.phases else 0.0
        return sum(self.kept.values()) + transient

    @property
    def footprint(self) -> float:
        """What the GPU holds: the CUDA context and, at the phase that needs most, the
        allocation and the allocator's slack over its activations."""
        kept = sum(self.kept.values())
        phases = [
            sum(terms.values())
            + self.slack_of_activations
            * sum(v for k, v in terms.items() if not k.startswith(WHOLE))
            for terms in self.phases.values()
        ]
        return kept + max(phases, default=0.0) + self.slack_of_peak * self.peak + self.context

    def terms(self) -> dict[str, float]:
        """Every term at the peak: the kept ones, then the peak phase's."""
        phase = self.phases.get(self.peak_phase, {})
        return {**self.kept, **{f"{self.peak_phase}: {k}": v for k, v in phase.items()}}


def layer_activations(m: Shape, s: Step) -> float:
    """One decoder layer's forward and backward tensors: the attention's (T^2 scores with the
    eager kernel, linear in T with a fused one) and the MLP's (gate, up, activation, product and
    their gradients)."""
    bt = s.sequences * s.tokens
    attention = (
        14 * s.sequences * m.heads * s.tokens**2  # scores, capping, fp32 softmax, gradients
        if m.eager_attention
        else 4 * bt * m.heads * m.head_dim * s.b
    )
    return attention + 6 * bt * m.intermediate * s.b


def layer_saved(m: Shape, s: Step) -> float:
    """What autograd keeps of one decoder layer for its backward without checkpointing: each
    norm's input and output, q after the rotary embedding, k and v, the attention's output and
    o_proj's contiguous input, the MLP's gate, up, activation and product; with the eager kernel
    the soft-capped scores and the softmax."""
    bt = s.sequences * s.tokens
    q, kv = m.heads * m.head_dim, m.kv_heads * m.head_dim
    linear = bt * (2 * m.norms * m.hidden + 3 * q + 2 * kv + 4 * m.intermediate) * s.b
    if not m.eager_attention:
        return linear
    return linear + EAGER_SAVED * s.sequences * m.heads * s.tokens**2


def layer_backward(m: Shape, s: Step) -> float:
    """One layer's backward beside what autograd kept: the scores' fp32 gradient (the eager
    kernel), else the MLP's three gradients."""
    bt = s.sequences * s.tokens
    scores = 4 * s.sequences * m.heads * s.tokens**2 if m.eager_attention else 0
    return max(scores, 3 * bt * m.intermediate * s.b)


def checkpoint_bytes(m: Shape, s: Step, mode: str) -> float:
    """One Trainer checkpoint on disk, every process's part together: the weights that train and
    the optimiser's state as `train_memory` keeps them (modes as there) — an adapter alone for
    LoRA and QLoRA; under ZeRO-3 the fp32 master weights and states beside the whole 16-bit model
    that stage3_gather_16bit_weights_on_model_save writes. Mistral-7B's shapes with fp32 masters
    and RMSprop: 72.4 GB, as written on an H200 (benchmarks/results/iteration_gpu_mistral_train)."""
    psi, b, k = m.params, s.b, s.optimizer_states
    if mode in ("lora", "qlora"):
        return m.lora_params(s.rank) * 4 * (1 + k)
    if mode == "kahan":  # the weights, their compensation and the states, in the weights' dtype
        return psi * b * (2 + k)
    if mode in ("master", "zero3"):
        return psi * (b + 4 * (1 + k))
    return psi * b * (1 + k)


def train_memory(m: Shape, s: Step, mode: str, devices: int = 1) -> Memory:
    """A training step per device. mode: full (the Trainer's own optimizer on the weights as
    loaded: fp32 on CPU) | kahan | master (bf16 weights and their optimizer, by
    `training.weight_updates`) | zero3 | lora | qlora."""
    psi, b, k = m.params, s.b, s.optimizer_states
    bt, dtype = s.sequences * s.tokens, DTYPES[s.b]
    kept: dict[str, float] = {}
    gradients = 0.0  # gradients as large as the weights, complete from the last layer's backward
    if mode == "full":  # torch's optimizer: weights, gradients and states in the weights' dtype
        kept[f"weights ({dtype})"] = psi * b
        kept[f"optimiser state ({dtype})"] = psi * b * k
        gradients = psi * b
        step_temporary = psi * b
    elif mode in STEP_SLICES:  # bf16 weights and what keeps their updates beside them
        kept[f"weights ({dtype})"] = psi * b
        if mode == "kahan":
            kept[f"Kahan compensation ({dtype})"] = psi * b
            kept[f"optimiser state ({dtype})"] = psi * b * k
        else:
            kept["master weights (fp32)"] = psi * 4
            kept["optimiser state (fp32)"] = psi * 4 * k
        gradients = psi * b
        largest = max(m.vocab * m.hidden, m.hidden * m.intermediate)
        step_temporary = 4 * min(OPTIMIZER_SLICE, largest) * STEP_SLICES[mode](k)
    elif mode == "zero3":  # bf16 weights and gradients, fp32 master weights and states, sharded
        kept["model states / devices"] = psi * (2 + 2 + 4 + 4 * k) / devices
        kept["reduce bucket"] = REDUCE_BUCKET * b
        if devices > 1:  # on one device a gathered parameter is a view of its partition
            kept["parameters gathered at a time"] = min(GATHERED, psi) * b
        # the step runs on one sub-group at a time: its fp32 gradient and RMSprop's square root
        # (a sub-group of SUB_GROUP parameters and the part of a weight that overflows it)
        step_temporary = 8 * min(psi / devices, SUB_GROUP + m.hidden * m.intermediate / devices)
    else:
        adapter = m.lora_params(s.rank)
        if mode == "lora":
            kept[f"frozen weights ({dtype})"] = psi * b
        else:  # QLoRA: linear layers in NF4; peft's k-bit preparation upcasts the rest to fp32
            kept["frozen linear layers (NF4)"] = m.linear_params * NF4_BYTES
            kept["embeddings / LM head (fp32)"] = m.embedding_params * 4
            kept["one layer's weight dequantised"] = m.hidden * m.intermediate * b
        kept["adapter: fp32 weights, gradients, states"] = adapter * 4 * (2 + k)
        step_temporary = adapter * 4
    masks = 2 * s.sequences * s.tokens**2 * b if m.eager_attention else 0  # the eager kernel's
    lora = LORA_SAVED[b] * bt * m.lora_input_width() if mode in ("lora", "qlora") else 0
    if s.gradient_checkpointing:  # each layer's input, the final norm's output and fp32 input
        inputs = (m.layers + 3) * bt * m.hidden * b + masks
        backward = {"layer inputs kept (gradient checkpointing)": inputs}
        layer = layer_activations(m, s) + lora  # one layer's forward again, then its backward
    else:  # every layer's saved activations (and the embeddings' output, the final norm's)
        saved = m.layers * (layer_saved(m, s) + lora) + 3 * bt * m.hidden * b + masks
        backward = {"every layer's saved activations (no checkpointing)": saved}
        layer = layer_backward(m, s)
    if s.chunk is not None:
        head = max(s.chunk * m.vocab * (8 + b), NORM_BACKWARD * bt * m.hidden)
        head_name = "streamed LM head and the final norm's backward"
    else:
        rows = bt if s.response_rows is None else s.response_rows
        head = OWN_HEAD[m.softcapped, b] * rows * m.vocab + 8192 * m.vocab
        head_name = "the model's own LM head: full logits"
    # the head's backward comes first, before any layer's gradient; a layer's may come last
    if layer + gradients >= head:
        recomputed = " recomputed and its" if s.gradient_checkpointing else "'s"
        backward[f"one layer{recomputed} backward"] = layer
        if gradients:
            backward[f"gradients ({dtype})"] = gradients
    else:
        backward[head_name] = head
    if mode == "zero3":  # held from the head's backward on (through it all when tied)
        backward["LM head gradient before reduce-scatter"] = m.vocab * m.hidden * b
    step_name = "the step's fp32 slices" if mode in STEP_SLICES else "RMSprop's temporary"
    step = {step_name: step_temporary}
    if gradients:
        step = {f"gradients ({dtype})": gradients, **step}
    if mode == "zero3":
        return Memory(
            kept, {"backward": backward, "optimiser step": step}, ZERO3_CONTEXT, ZERO3_SLACK
        )
    return Memory(kept, {"backward": backward, "optimiser step": step})


def generation_memory(
    m: Shape, prompts: int, k: int, prompt_tokens: int, new_tokens: int, b: int = 2
) -> Memory:
    """HF generation of `prompts` prompts (padded to `prompt_tokens`) x K samples of up to
    `new_tokens`: the model, then the larger of two phases. The prefill runs the prompts once:
    their KV cache and one layer's largest activation (the eager kernel's [prompts, heads, T, T]
    scores: the step being computed, its input and the fp32 softmax; else the MLP's three
    [prompts, T, I] tensors). Sampling holds the K-fold cache of prompt and new tokens, one
    layer's copy more while the cache grows by concatenation, and the last position's logits."""
    sequences = prompts * k
    kv = m.kv_bytes_per_token(b)
    if m.eager_attention:
        layer = 3 * 4 * prompts * m.heads * prompt_tokens**2 + prompts * prompt_tokens**2 * b
    else:
        layer = 3 * prompts * prompt_tokens * m.intermediate * b
    cache = sequences * (prompt_tokens + new_tokens) * kv
    return Memory(
        {f"weights ({DTYPES[b]})": m.params * b},
        {
            "prefill": {
                "the prompts' KV cache": prompts * prompt_tokens * kv,
                "one layer's activations": layer,
            },
            "sampling": {
                "KV cache": cache,
                "one layer's cache copied as it grows": cache / m.layers,
                "logits and probabilities (fp32)": 2 * sequences * m.vocab * 4,
            },
        },
    )


# --- the table of docs/memory.md -----------------------------------------------------------------

GPUS = (24, 40, 48, 80, 141)  # ... an A100 or H100 of 80 GB, an H200 of 141
MODES = {
    "kahan": "full weights, bf16 + Kahan, one GPU",
    "master": "full weights, fp32 master, one GPU",
    "zero3": "full weights, ZeRO-3 over 8 GPUs",
    "lora": "LoRA r=16, one GPU",
    "qlora": "QLoRA r=16, one GPU",
}


def fits(footprint: float, gpu_gb: float) -> bool:
    return footprint <= gpu_gb * 1e9


def table() -> str:
    s = Step()
    rows = [
        "| model | training | GiB per GPU | " + " | ".join(f"{g} GB" for g in GPUS) + " |",
        "|---|---|---|" + "---|" * len(GPUS),
    ]

    def row(model: str, label: str, memory: Memory) -> str:
        marks = ["fits" if fits(memory.footprint, g) else "–" for g in GPUS]
        return f"| {model} | {label} | {memory.footprint / GIB:.1f} | " + " | ".join(marks) + " |"

    for m in (MISTRAL_7B, GEMMA_2_9B):
        for mode, label in MODES.items():
            rows.append(row(m.name, label, train_memory(m, s, mode, devices=8)))
        for prompts in (1, 2, 8):
            label = f"(generation, {prompts} prompt{'s' * (prompts > 1)} x 5 samples, bf16)"
            rows.append(row(m.name, label, generation_memory(m, prompts, 5, 512, 2048)))
    return "\n".join(rows)


def terms_text() -> str:
    out = []
    for m in (MISTRAL_7B, GEMMA_2_9B):
        out.append(
            f"{m.name}: {m.params / 1e9:.2f}e9 parameters, {m.linear_params / 1e9:.2f}e9 in "
            f"linear layers, LoRA r=16 adapter {m.lora_params(16) / 1e6:.1f}e6"
        )
        for mode, label in MODES.items():
            memory = train_memory(m, Step(), mode, devices=8)
            out.append(f"  {label}: peak {memory.peak / GIB:.2f} GiB ({memory.peak_phase})")
            for name, value in memory.terms().items():
                out.append(f"    {value / GIB:7.2f} GiB  {name}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terms", action="store_true", help="every term of every row")
    args = parser.parse_args(argv)
    print(terms_text() if args.terms else table())


if __name__ == "__main__":
    main()
