"""A tiny policy widened to a real vocabulary: its embedding and LM head resized from 2,048 rows to
Mistral-7B's 32,000 or Gemma-2's 256,000 (still tied, still soft-capped), the tokenizer unchanged,
so the new rows are never targets. At that size the LM head dominates a training step's time and
memory, as in the real models, which the tiny vocabulary does not show (benchmarks/trainer.py).

Not a model of the build (src/tiny/models.py): its code is no part of a tiny model's identity.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from src.tiny.models import DEFAULT_CACHE_DIR, RECORD, ensure


def widened(name: str, vocab: int, out: Path, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """`out`: tiny model `name` with `vocab` rows, made once (seeded: the same bytes each time)
    and again whenever the tiny model is rebuilt, whose build record the copy keeps."""
    base = ensure(name, cache_dir)
    record, done = (base / RECORD).read_bytes(), out / RECORD
    if done.is_file() and done.read_bytes() == record:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    done.write_bytes(record)  # last: a folder without it is made again
    return out
