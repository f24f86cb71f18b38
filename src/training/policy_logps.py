"""A collated batch's response log-probs under a causal LM, with its LM head streamed.

Full-vocabulary logits are a preference step's largest tensors: [B, T, V] for the forward, as
many again for the gradient, and more for Gemma-2's soft-capping — at Gemma-2's 256k
vocabulary several GB each per micro-batch. `stream_lm_head` swaps the model's LM head for a
`StreamedLMHead` holding the same weight (tied or not; state-dict keys unchanged, so
checkpoints save and load as before). Inside `batch_response_logps` that head receives the
final hidden states and returns the summed response log-probs and WPO's m(y) directly,
computing the logits chunk by chunk over response tokens only (src/training/losses.py:
`response_logps`); everywhere else (generation, a plain forward) it is the plain linear head.

The head is still called by the model's own forward, so whatever wraps the model keeps
working: DDP sees its forward; DeepSpeed ZeRO-3 gathers the head's partitioned weight once for
the forward and once for the backward, not once per chunk; gradient checkpointing leaves the
head alone.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import PreTrainedModel

from src.training.data import shifted_labels
from src.training.losses import response_logps

# Architectures whose causal-LM forward returns exactly lm_head(hidden) — soft-capped where the
# config says final_logit_softcapping — so the streamed head may stand in for it.
STREAMED_MODEL_TYPES = ("mistral", "gemma2")
SOFTCAP = "final_logit_softcapping"


class StreamedLMHead(torch.nn.Module):
    """A bias-free LM head that can return response log-probs instead of logits."""

    def __init__(self, weight: torch.nn.Parameter, softcap: float | None, chunk_size: int):
        super().__init__()
        self.weight = weight  # the model's own Parameter: tying and state-dict keys unchanged
        self.softcap = softcap
        self.chunk_size = chunk_size
        self.request: tuple[torch.Tensor, torch.Tensor, bool] | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.request is None:
            return torch.nn.functional.linear(hidden, self.weight)
        labels, mask, with_alignment = self.request
        logps, alignment = response_logps(
            hidden,
            labels,
            mask,
            head=self.weight,
            softcap=self.softcap,
            with_alignment=with_alignment,
            chunk_size=self.chunk_size,
        )
        # [B, 2] stands in for the logits: the model hands it back as its output's `logits`
        return torch.stack([logps, alignment if with_alignment else torch.zeros_like(logps)], -1)

    def extra_repr(self) -> str:
        vocab, hidden = getattr(self.weight, "ds_shape", self.weight.shape)  # ZeRO-3: partitioned
        return f"{hidden} -> {vocab}, softcap={self.softcap}, chunk_size={self.chunk_size}"


def unwrapped(model: torch.nn.Module) -> PreTrainedModel:
    """The Hugging Face model inside a DDP module, a DeepSpeed engine or a peft adapter."""
    while not isinstance(model, PreTrainedModel):
        if hasattr(model, "get_base_model"):  # peft's PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        else:
            break
    return model


def stream_lm_head(model: PreTrainedModel, chunk_size: int) -> StreamedLMHead:
    """Give `model` a streamed LM head (before DDP or DeepSpeed wraps it); returns the head."""
    head = model.get_output_embeddings()
    if isinstance(head, StreamedLMHead):
        head.chunk_size = chunk_size
        return head
    if model.config.model_type not in STREAMED_MODEL_TYPES:
        raise ValueError(
            f"training.lm_head_chunk: the streamed LM head knows model types "
            f"{', '.join(STREAMED_MODEL_TYPES)}, not {model.config.model_type!r}; "
            "add training.lm_head_chunk=null to use the model's own full-logits head"
        )
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ValueError(
            f"training.lm_head_chunk: {type(model).__name__}'s LM head is {head!r}, not a "
            "bias-free linear layer; add training.lm_head_chunk=null"
        )
    streamed = StreamedLMHead(head.weight, getattr(model.config, SOFTCAP, None), chunk_size)
    model.set_output_embeddings(streamed)
    return streamed


@contextmanager
def _streaming(model: PreTrainedModel, head: StreamedLMHead, request: tuple):
    """The head answers with log-probs; the model's own soft-capping (applied after the head)
    is off meanwhile, since the head applies it to each chunk itself."""
    softcap = getattr(model.config, SOFTCAP, None)
    head.request = request
    if softcap is not None:
        setattr(model.config, SOFTCAP, None)
    try:
        yield
    finally:
        head.request = None
        if softcap is not None:
            setattr(model.config, SOFTCAP, softcap)


def batch_response_logps(model, inputs: dict[str, torch.Tensor], with_alignment: bool):
    """Summed response log-probs [B] (and WPO's m(y) [B], or None) of a collated batch
    (src/training/data.py: PairCollator) under `model`, wrapped or not.

    With a streamed head (`stream_lm_head`) no [B, T, V] tensor exists. Without one the model
    computes full logits, from the batch's first response row on only (`logits_to_keep`: the
    rows before it score prompt tokens).
    """
    mask = inputs["response_mask"]
    labels = shifted_labels(inputs["input_ids"])
    core = unwrapped(model)
    head = core.get_output_embeddings()
    if isinstance(head, StreamedLMHead):
        with _streaming(core, head, (labels, mask, with_alignment)):
            out = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                use_cache=False,
            ).logits
        return out[:, 0], out[:, 1].detach() if with_alignment else None
    in_any = mask.bool().any(0).nonzero()
    first = int(in_any[0]) if len(in_any) else mask.shape[1] - 1
    logits = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        use_cache=False,
        logits_to_keep=mask.shape[1] - first,
    ).logits
    return response_logps(logits, labels[:, first:], mask[:, first:], with_alignment=with_alignment)
