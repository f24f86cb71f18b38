"""PairRM through llm-blender, batched across prompts.

llm-blender's `Blender.rank(inputs, candidates, batch_size=1)` (the SPPO reference's call)
runs, for every prompt, K(K-1) forward passes of ONE comparison each. Here the same model
(`blender.ranker`, llm-blender's CrossCompareReranker) compares many (prompt, i, j) triples
per forward, sorted by length so that a batch holds similar lengths and little padding.

Inputs are tokenised by llm-blender's own collator, one prompt at a time, exactly as
`rank(batch_size=1)` tokenises them: its candidate truncation depends on the batch (a
candidate may use `candidate_max_length + (source_max_length - longest source) // 2`
tokens), so per-prompt encoding is what makes the logits equal the reference's. Padding is
then stripped and the triples re-batched; the ranker moves padding to the end of each row and
masks it, so batching changes the logits only by float rounding.

With disentangled-flash's inference encoder (`fuse_attention`, packed) a batch is not padded at
all: its comparisons are concatenated into one [tokens, hidden] sequence split by `cu_seqlens`
(FlashAttention's varlen layout), a batch closes at a budget of tokens, and the prefix tokens'
states are read where llm-blender's `_forward` reads them (`forward_packed`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from src.config import Attention
from src.core import memory

# On a CPU a forward's eager attention allocates, per layer, tens of [B, heads, L, L] temporaries
# that its element-wise work streams through; comparisons share a forward (up to
# ranker.batch_size) while one such tensor stays within this. Measured on the tiny PairRM, 2
# cores, B = 32 (benchmarks/results/README.md, PairRM on a CPU): 64 MiB and 128 MiB equally fast, 512 MiB 0.55x
# and no bound 0.35x as fast on mixed lengths; 64 MiB needs half 128's memory.
CPU_SCORES_BYTES = 64 * 2**20


@dataclass
class EncodedPrompt:
    source: torch.Tensor  # [S] PairRM token ids, no padding
    candidates: list[torch.Tensor]  # K x [L_k]


class PairRMJudge:
    """Raw comparison logits C (C_ij > 0: response i beats response j) for each prompt.

    Padded batches take up to `batch_size` comparisons; packed ones (the ranker's backbone fused
    with `packed=True`) up to `packed_tokens` tokens, by default the tokens of `batch_size`
    comparisons at the length limits: the same memory as a padded batch at its longest."""

    def __init__(
        self,
        blender,
        source_max_length: int,
        candidate_max_length: int,
        batch_size: int,
        packed_tokens: int | None = None,
    ) -> None:
        self.ranker = blender.ranker
        self.collator = copy.copy(blender.ranker_collator)  # as rank() does, then set the limits
        self.collator.source_maxlength = source_max_length
        self.collator.candidate_maxlength = candidate_max_length
        self.pad_id = self.collator.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.packed_tokens = packed_tokens or batch_size * (
            source_max_length + 2 * candidate_max_length
        )
        weight = next(self.ranker.parameters())
        self.device = weight.device
        # one comparison's [heads, L, L] attention scores at L = 1, in bytes
        heads = self.ranker.pretrained_model.config.num_attention_heads
        self.scores_bytes = heads * weight.element_size()

    @property
    def packed(self) -> bool:
        """Whether the ranker's backbone takes packed batches (`fuse_attention`, packed)."""
        return runs_packed(self.ranker.pretrained_model)

    def encode(self, source: str, candidates: list[str]) -> EncodedPrompt:
        batch = self.collator([{"index": 0, "source": source, "candidates": candidates}])
        src = batch["source_ids"][0][batch["source_attention_mask"][0].bool()]
        cands = [
            ids[mask.bool()]
            for ids, mask in zip(
                batch["candidate_ids"][0], batch["candidate_attention_mask"][0], strict=True
            )
        ]
        return EncodedPrompt(src, cands)

    def pad(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, r in enumerate(rows):
            ids[n, : len(r)] = r
            mask[n, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def batches(self, triples: list, length) -> Iterator[list]:
        """Runs of the length-sorted `triples`, each of at most `batch_size` and, on a CPU, with
        attention scores of at most CPU_SCORES_BYTES a tensor ([B, heads, L, L] at the run's
        longest L): one forward's temporaries stay as large as the cache and memory serve fast."""
        budget = CPU_SCORES_BYTES if self.device.type == "cpu" else None
        batch: list = []
        for t in triples:
            wider = (len(batch) + 1) * self.scores_bytes * length(t) ** 2
            if batch and (len(batch) == self.batch_size or (budget and wider > budget)):
                yield batch
                batch = []
            batch.append(t)
        if batch:
            yield batch

    def packs(self, triples: list, length) -> Iterator[list]:
        """Runs of the length-sorted `triples` of at most `packed_tokens` tokens together (a
        longer comparison alone): a packed forward's work and memory grow with its tokens, not
        with its count or its longest."""
        batch: list = []
        tokens = 0
        for t in triples:
            if batch and tokens + length(t) > self.packed_tokens:
                yield batch
                batch, tokens = [], 0
            batch.append(t)
            tokens += length(t)
        if batch:
            yield batch

    def forward(self, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The logits of the comparisons `rows` (source, left candidate, right candidate: token
        ids without padding), one forward."""
        if self.packed:
            return self.forward_packed(rows)
        source, left, right = (self.pad(list(part)) for part in zip(*rows, strict=True))
        return self.ranker._forward(*source, *left, *right)["logits"]

    def forward_packed(self, rows: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """`forward` through disentangled-flash's packed encoder: what llm-blender's `_forward`
        computes for one comparison alone, for every row of the batch at once. Each comparison
        is its three rows concatenated (`cat_ids`: every row ends with its separator, so nothing
        moves), the generic candidate prefix made <candidate1> and <candidate2>; the states of
        the three prefix tokens go to the ranker's head."""
        from disentangled_flash import PackedSequenceInfo

        tok = self.collator.tokenizer
        sequences = [
            torch.cat([s, torch.where(a == tok.cand_prefix_id, tok.cand1_prefix_id, a),
                       torch.where(b == tok.cand_prefix_id, tok.cand2_prefix_id, b)])
            for s, a, b in rows
        ]  # fmt: skip
        lengths = [len(x) for x in sequences]
        ids = torch.cat(sequences).to(self.device)
        positions = torch.cat([torch.arange(n) for n in lengths]).to(self.device)
        offsets = tuple(itertools.accumulate(lengths, initial=0))
        cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=self.device)
        backbone = self.ranker.pretrained_model
        # the embeddings as the padded forward makes them (its mask multiplies by 1 here), each
        # sequence's positions from 0
        hidden = backbone.embeddings(input_ids=ids[None], position_ids=positions[None])[0]
        info = PackedSequenceInfo(offsets, tuple(lengths), max(lengths))
        states = backbone.encoder.forward_packed(
            hidden, cu_seqlens, info.max_seqlen, output_hidden_states=False, packed_info=info
        ).last_hidden_state
        left, right, _ = self.ranker.reduce(
            *(states[ids == prefix] for prefix in
              (tok.source_prefix_id, tok.cand1_prefix_id, tok.cand2_prefix_id))
        )  # fmt: skip
        return (left - right).mean(dim=-1)

    @torch.no_grad()
    def compare(self, sources: list[str], candidates: list[list[str]]) -> list[np.ndarray]:
        """One K_p x K_p matrix of comparison logits per prompt (diagonal 0).

        Prompts may have different numbers of candidates.
        """
        encoded = [self.encode(s, c) for s, c in zip(sources, candidates, strict=True)]
        triples = [
            (p, i, j)
            for p, e in enumerate(encoded)
            for i in range(len(e.candidates))
            for j in range(len(e.candidates))
            if i != j
        ]

        def length(t: tuple[int, int, int]) -> int:
            e = encoded[t[0]]
            return len(e.source) + len(e.candidates[t[1]]) + len(e.candidates[t[2]])

        triples.sort(key=length)
        logits = [np.zeros((len(e.candidates),) * 2, dtype=np.float64) for e in encoded]
        runs = self.packs(triples, length) if self.packed else self.batches(triples, length)
        with memory.heap_only() if self.device.type == "cpu" else contextlib.nullcontext():
            for batch in runs:
                rows = [(encoded[p].source, encoded[p].candidates[i], encoded[p].candidates[j])
                        for p, i, j in batch]  # fmt: skip
                out = self.forward(rows)
                for (p, i, j), value in zip(batch, out.float().cpu().tolist(), strict=True):
                    logits[p][i, j] = value
        if self.packed:
            # the library keeps position plans for every sequence length it has seen (on its
            # PyTorch path an [L, L] map each): a call's lengths are not the next call's
            self.ranker.pretrained_model.encoder.clear_inference_cache()
        return logits


def load_pairrm_judge(
    model: str,
    source_max_length: int,
    candidate_max_length: int,
    batch_size: int,
    device: str = "cpu",
    attention: Attention = Attention.eager,
) -> PairRMJudge:
    from src.ranking.blender_compat import load_pairrm

    started = time.time()
    blender = load_pairrm(model, device=device)
    if attention == Attention.fused:
        fuse_attention(blender.ranker.pretrained_model)
    print(f"[rank] PairRM {model} loaded in {time.time() - started:.1f}s", file=sys.stderr)
    return PairRMJudge(blender, source_max_length, candidate_max_length, batch_size)


def fuse_attention(backbone, backend: str = "triton", packed: bool = True) -> bool:
    """PairRM's DeBERTa (`backbone`, on its device) given disentangled-flash's exact attention
    (DeBERTa-v2/v3's c2p and p2c terms): its Triton kernels compute the scores block by block and
    never build the [B, heads, L, L] tensors that transformers' eager attention builds, gathers
    and masks. `packed`: its inference encoder, whose packed (varlen) forward takes a batch's
    comparisons concatenated without padding (`PairRMJudge.forward_packed`); else its
    runtime-length padded path (`inference=False`: any padded width, no length buckets), which
    takes the padded batches transformers' attention takes. Where Triton cannot run (no CUDA GPU,
    no Triton, a head size it has no kernel for) the model keeps transformers' attention, said in
    one line: the scores are the same. `backend="torch"`: the library's PyTorch path instead,
    which runs anywhere (packed: one sequence at a time; its checks on CPU). Returns whether the
    model's attention was replaced."""
    import importlib.util

    device = next(backbone.parameters()).device.type
    why = None
    if backend == "triton" and device != "cuda":
        why = f"its kernels need a CUDA GPU (the ranker is on {device})"
    elif backend == "triton" and importlib.util.find_spec("triton") is None:
        why = "its kernels need Triton, which is not installed here"
    if why is None:
        from disentangled_flash import DebertaV2OptimizedEncoder, optimize_deberta

        optimize_deberta(backbone, backend=backend, inference=packed)
        if isinstance(backbone.encoder, DebertaV2OptimizedEncoder):
            return True
        why = "it has no kernel for this GPU or head size"
    print(f"[rank] ranker.attention=fused: {why}: transformers' attention instead, the same "
          "scores", file=sys.stderr)  # fmt: skip
    return False


def runs_packed(backbone) -> bool:
    """Whether `backbone` has disentangled-flash's inference encoder (`fuse_attention`, packed),
    which takes packed batches only."""
    return getattr(backbone.encoder, "inference", False) is True
