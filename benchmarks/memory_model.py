"""The memory model of docs/memory.md ("One GPU: LoRA and QLoRA") as code: peak GPU memory of a
training step and of generation, per device, for Mistral-7B and Gemma-2-9B under full weights
(one GPU or ZeRO-3 over 8), LoRA and QLoRA; prints the README's table.

    python -m benchmarks.memory_model            # the table (Markdown)
    python -m benchmarks.memory_model --terms    # every term of every row

Every number is a formula over the models' shapes and the recipe (docs/memory.md gives each term
and where it was checked); nothing here is measured.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool  # embeddings and LM head one matrix
    eager_attention: bool  # T^2 scores materialised (Gemma-2's soft-capping)

    def linear_per_layer(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of a decoder block: the LoRA targets."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_per_layer().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:  # norms are negligible
        return self.linear_params + self.embedding_params

    def lora_params(self, rank: int) -> int:
        return self.layers * sum(rank * (a + b) for a, b in self.linear_per_layer().values())

    def kv_bytes_per_token(self, b: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * b


MISTRAL_7B = Shape(
    "Mistral-7B", 32, 4096, 14336, 32000, 32, 8, 128, tied=False, eager_attention=False
)
GEMMA_2_9B = Shape(
    "Gemma-2-9B", 42, 3584, 14336, 256000, 16, 8, 256, tied=True, eager_attention=True
)


@dataclass(frozen=True)
class Step:
    """One training step of the SPPO recipe: 2 pairs (4 sequences) per micro-batch, T = max_length
    1024, bf16, gradient checkpointing, RMSprop (one state per parameter), LoRA rank 16, the
    streamed LM head with 256-token chunks."""

    sequences: int = 4
    tokens: int = 1024
    rank: int = 16
    optimizer_states: int = 1  # RMSprop; AdamW: 2
    chunk: int = 256
    b: int = 2  # bf16


NF4_BYTES = (4 + 0.127) / 8  # 4-bit NF4 plus double-quantised absmax constants (QLoRA paper)
CUDA_CONTEXT = 1.0 * GIB  # CUDA context, kernels and allocator slack


def step_terms(m: Shape, s: Step, mode: str, devices: int = 1) -> dict[str, float]:
    """Bytes per device of each term. mode: full | zero3 | lora | qlora."""
    psi, b, k = m.params, s.b, s.optimizer_states
    terms: dict[str, float] = {}
    if mode == "full":  # HF Trainer, the model loaded in bf16: weights, gradients, states in bf16
        terms["weights + gradients + optimiser state (bf16)"] = psi * b * (2 + k)
        terms["LM head / embedding gradient"] = 0.0  # inside the gradients above
    elif mode == "zero3":  # bf16 weights and gradients, fp32 master weights and states, sharded
        terms["model states / devices"] = psi * (2 + 2 + 4 + 4 * k) / devices
        terms["parameters gathered at a time (<= 1e9)"] = min(1e9, psi) * b
        terms["LM head gradient before reduce-scatter"] = m.vocab * m.hidden * b
    else:
        adapter = m.lora_params(s.rank)
        if mode == "lora":
            terms["frozen weights (bf16)"] = psi * b
        else:  # QLoRA: linear layers in NF4; peft's k-bit preparation upcasts the rest to fp32
            terms["frozen linear layers (NF4)"] = m.linear_params * NF4_BYTES
            terms["embeddings / LM head (fp32)"] = m.embedding_params * 4
            terms["one layer's weight dequantised"] = m.hidden * m.intermediate * b
        terms["adapter: fp32 weights, gradients, states"] = adapter * 4 * (2 + k)
    # activations: the same for every mode, the backward runs through every layer
    terms["layer inputs kept (gradient checkpointing)"] = (
        m.layers * s.sequences * s.tokens * m.hidden * b
    )
    attention = (
        14 * s.sequences * m.heads * s.tokens**2  # T^2 scores, capping, fp32 softmax, gradients
        if m.eager_attention
        else 4 * s.sequences * s.tokens * m.heads * m.head_dim * b  # fused kernel: linear in T
    )
    mlp = 6 * s.sequences * s.tokens * m.intermediate * b  # gate, up, act, product + gradients
    terms["one layer recomputed (attention + MLP)"] = attention + mlp
    terms["streamed LM head chunk"] = s.chunk * m.vocab * (8 + b)
    terms["CUDA context"] = CUDA_CONTEXT
    return terms


def generation_bytes(m: Shape, prompts: int, k: int = 5, tokens: int = 512 + 2048) -> float:
    """HF generation of `prompts` prompts x K samples: the bf16 model and the KV cache."""
    return m.params * 2 + prompts * k * tokens * m.kv_bytes_per_token() + CUDA_CONTEXT


GPUS = (24, 40, 48, 80)
MODES = {
    "full": "full weights, one GPU",
    "zero3": "full weights, ZeRO-3 over 8 GPUs",
    "lora": "LoRA r=16, one GPU",
    "qlora": "QLoRA r=16, one GPU",
}


def table() -> str:
    s = Step()
    rows = [
        "| model | training | GiB per GPU | " + " | ".join(f"{g} GB" for g in GPUS) + " |",
        "|---|---|---|" + "---|" * len(GPUS),
    ]
    for m in (MISTRAL_7B, GEMMA_2_9B):
        for mode, label in MODES.items():
            gib = sum(step_terms(m, s, mode, devices=8).values()) / GIB
            fits = ["fits" if gib <= 0.95 * g * 1e9 / GIB else "–" for g in GPUS]
            rows.append(f"| {m.name} | {label} | {gib:.1f} | " + " | ".join(fits) + " |")
        for prompts in (1, 2, 8):
            gib = generation_bytes(m, prompts) / GIB
            fits = ["fits" if gib <= 0.95 * g * 1e9 / GIB else "–" for g in GPUS]
            label = f"(generation, {prompts} prompt{'s' * (prompts > 1)} x 5 samples, bf16)"
            rows.append(f"| {m.name} | {label} | {gib:.1f} | " + " | ".join(fits) + " |")
    return "\n".join(rows)


def terms_text() -> str:
    out = []
    for m in (MISTRAL_7B, GEMMA_2_9B):
        out.append(
            f"{m.name}: {m.params / 1e9:.2f}e9 parameters, {m.linear_params / 1e9:.2f}e9 in "
            f"linear layers, LoRA r=16 adapter {m.lora_params(16) / 1e6:.1f}e6"
        )
        for mode, label in MODES.items():
            out.append(f"  {label}")
            for name, value in step_terms(m, Step(), mode, devices=8).items():
                out.append(f"    {value / GIB:7.2f} GiB  {name}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terms", action="store_true", help="every term of every row")
    args = parser.parse_args(argv)
    print(terms_text() if args.terms else table())


if __name__ == "__main__":
    main()
