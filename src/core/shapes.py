"""The shapes the memory model reads: layers, widths, vocabulary, attention, of the real models
(their config.json, as keyword arguments of their transformers config classes, so that nothing
is downloaded) or of any model folder's config.json.

Pure Python: the GPU benchmarks import it where only torch and transformers are installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# The real models' configs (config.json of mistralai/Mistral-7B-Instruct-v0.2 and
# google/gemma-2-9b-it): (config class, model class, config keyword arguments, attention kernel)
REAL_MODELS = {
    "mistralai/Mistral-7B-Instruct-v0.2": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(
            vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
            rope_theta=1e6, sliding_window=None, rms_norm_eps=1e-5, tie_word_embeddings=False,
        ),
        "sdpa",
    ),
    "google/gemma-2-9b-it": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
            num_attention_heads=16, num_key_value_heads=8, head_dim=256,
            query_pre_attn_scalar=256, sliding_window=4096, max_position_embeddings=8192,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        ),
        "eager",  # as conf/model/gemma-2-9b-it.yaml: soft-capping needs the eager kernel
    ),
}  # fmt: skip
# The hub judges' parameters: PairRM is DeBERTa-v3-large with a pairwise head, ArmoRM Llama-3-8B
# with its reward heads (their model cards); Skywork-Reward-V2's are their base models' decoders
# with a one-label head for the LM head (counted from Llama-3.1-8B's and Qwen3-1.7B's configs).
# A local judge's are read from its files.
JUDGE_PARAMS = {
    "llm-blender/PairRM": 0.436e9,
    "RLHFlow/ArmoRM-Llama3-8B-v0.1": 7.51e9,
    "Skywork/Skywork-Reward-V2-Llama-3.1-8B": 7.505e9,
    "Skywork/Skywork-Reward-V2-Qwen3-1.7B": 1.721e9,
}
TIED_BY_DEFAULT = {
    "gemma2": True,
    "mistral": False,
}  # tie_word_embeddings when config.json omits it


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
    softcapped: bool = False  # the logits soft-capped (Gemma-2's final_logit_softcapping)
    norms: int = 2  # RMSNorms per decoder block (Gemma-2: four, around attention and MLP)
    # max_position_embeddings, the longest sequence it takes: no part of its size (the library's
    # default Mistral config has 131,072 where Mistral-7B-Instruct-v0.2 has 32,768)
    positions: int | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, name: str, config: dict, attention: str | None = None) -> Shape:
        """From a config.json's fields (a Mistral- or Gemma-2-like decoder)."""
        heads = config["num_attention_heads"]
        model_type = config.get("model_type", "")
        return cls(
            name=name,
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            tied=config.get("tie_word_embeddings", TIED_BY_DEFAULT.get(model_type, False)),
            eager_attention=(attention or config.get("attn_implementation")) == "eager",
            softcapped=bool(config.get("final_logit_softcapping")),
            norms=4 if model_type == "gemma2" else 2,
            positions=config.get("max_position_embeddings"),
        )

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

    def lora_input_width(self) -> int:
        """The adapted layers' input widths summed over a block (what peft's dropout keeps)."""
        return sum(a for a, _ in self.linear_per_layer().values())

    def kv_bytes_per_token(self, b: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * b


def real_shape(model: str) -> Shape:
    config_class, _, kwargs, attention = REAL_MODELS[model]
    model_type = {"MistralConfig": "mistral", "Gemma2Config": "gemma2"}[config_class]
    name = {"mistral": "Mistral-7B", "gemma2": "Gemma-2-9B"}[model_type]
    return Shape.from_config(name, {**kwargs, "model_type": model_type}, attention)


MISTRAL_7B = real_shape("mistralai/Mistral-7B-Instruct-v0.2")
GEMMA_2_9B = real_shape("google/gemma-2-9b-it")


def shape_of(model: str, attention: str | None = None) -> Shape | None:
    """The shape of `model`: a real model by its hub id, or the config.json of a model folder or
    of a hub model in the Hub cache; None when neither is known here (another model, not
    fetched)."""
    if model in REAL_MODELS:
        return real_shape(model)
    config = Path(model) / "config.json"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        try:
            cached = try_to_load_from_cache(model, "config.json")
        except HFValidationError:  # a path, not a hub id
            return None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    try:
        return Shape.from_config(Path(model).name, json.loads(config.read_text()), attention)
    except (KeyError, TypeError, ValueError):  # not a decoder's config, or not JSON
        return None


def judge_weights(model: str) -> float | None:
    """The judge's weights in bytes: a hub judge's parameters in bf16, or a local judge's files
    as saved (an upper bound: a reward model loads in bf16 on a GPU)."""
    if model in JUDGE_PARAMS:
        return JUDGE_PARAMS[model] * 2
    files = list(Path(model).glob("*.safetensors")) + list(Path(model).glob("*.bin"))
    return float(sum(f.stat().st_size for f in files)) if files else None
