"""Builds the tiny models: offline, deterministic, and taught the toy task (src/tiny/toy.py).

They stand in for the real models in the tests and the demo:

- tiny-mistral: MistralForCausalLM, Mistral-7B-Instruct-v0.2's chat template, pretrained on toy
  conversations: it answers in toy sentences of both registers, helpful and evasive
- tiny-gemma2:  Gemma2ForCausalLM, gemma-2-9b-it's chat template, pretrained the same way
- tiny-pairrm:  a PairRM in llm-blender's format (DeBERTa-v2 backbone), trained on the toy
  preference: the judge that ranks the training data (SPPO, DPO)
- tiny-rm:      a reward model (MistralForSequenceClassification, 1 label, Mistral's template),
  trained on the toy preference: the judge of WPO-HB
- tiny-judge:   a second PairRM, trained on the same preference from other synthetic pairs and
  another seed: the eval judge (the toy's GPT-4), never the one that ranked the training data
- tiny-rm32:    tiny-rm with the policies' attention heads (2 of 32 dims, which vLLM's CPU
  attention serves; tiny-rm's 4 of 2 it refuses), trained the same way: the reward model that
  vLLM serves in the tests (`ranker.backend=vllm`) and the benchmarks
- tiny-chat-judge: MistralForCausalLM taught to grade MT-Bench's and Arena-Hard's judge prompts
  by the same preference (src/tiny/chat_judge.py): the local judge those benchmarks are served

Architectures and tokenizers: src/tiny/architectures.py; the training: src/tiny/teach.py. The
same seed and data give byte-identical folders on any machine (`BUILD_THREADS`). `ensure()`
builds a model once into a cache directory (about a minute and a half for the pipeline's five
on 2 CPU cores, and a few more for tiny-chat-judge, which only the benchmarks ask for):

    python -m src.tiny [--cache-dir DIR] [--seed N] [--force] [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from filelock import FileLock

from src.core.artifacts import atomic_write_text, share
from src.core.policy import TINY_BUILD
from src.tiny import architectures, chat_judge, teach, toy
from src.tiny.names import PIPELINE_NAMES, TINY_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "tiny"
DATA_DIR = REPO_ROOT / "data"
# written last: a folder without it (or with a stale one) is rebuilt
RECORD = TINY_BUILD
# the code a tiny model is made by: a change to any of it rebuilds every tiny model
BUILT_BY = (
    "tiny/models.py",
    "tiny/architectures.py",
    "tiny/teach.py",
    "tiny/toy.py",
    "training/data.py",  # how a policy's conversations are tokenised and collated
    "training/policy_logps.py",  # and scored
    "training/losses.py",
    "ranking/pairrm.py:PairRMJudge,CPU_SCORES_BYTES",  # how a judge's inputs are encoded and batched
    "ranking/reward_model.py",
)
# and the code one model alone is made by: tiny-chat-judge's lessons, and the names it reads of
# Arena-Hard's module (`file:NAME,...`: their values, a function's source), so that the rest of
# that module changes without a rebuild of minutes
ALSO_BUILT_BY = {
    "tiny-chat-judge": (
        "tiny/chat_judge.py",
        "evaluation/arena_hard.py:" + ",".join(chat_judge.FROM_ARENA_HARD),
    )
}

# torch's threads while a model is built: CPU kernels split their sums by thread, so another
# count gives other bytes (tiny-gemma2 and both PairRMs, seen with 1 and 2); one thread gives
# the same folder on every machine, whatever its cores or its load.
BUILD_THREADS = 1

# How long each kind of model learns (steps x batch): enough to converge on the toy, little
# enough to build all five in about a minute on 2 cores.
POLICY_PRETRAINING = {"steps": 300, "batch_size": 16, "lr": 5e-3}  # 2 answers per row
JUDGE_TRAINING = {"steps": 120, "batch_size": 32, "lr": 2e-3}
# PairRM's (source, candidate) token limits while it learns: above every toy text (the longest
# rendered training prompt is 316 tokens), so the encodings are those of the rank stage's
# 1224 / 412 (tests/tools/test_toy.py checks), and far below them, since llm-blender pads every text
# to its limit before the padding is stripped
PAIRRM_TRAINING_LIMITS = (512, 192)


def training_texts() -> list[str]:
    """The texts the tokenizers learn from: every prompt of data/prompts (the eval set's
    instructions, a JSON array, then the training splits, JSON Lines), the corpus, then toy
    answers (so that the toy's words are single tokens)."""
    texts = []
    for path in sorted((DATA_DIR / "prompts").glob("*.json*")):
        if path.suffix == ".json":
            texts += [row["instruction"] for row in json.loads(path.read_text(encoding="utf-8"))]
            continue
        with path.open(encoding="utf-8") as f:
            texts += [json.loads(line)["prompt"] for line in f if line.strip()]
    corpus = DATA_DIR / "tiny" / "corpus.txt"
    if corpus.is_file():
        texts += [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise FileNotFoundError(f"no tokenizer training text under {DATA_DIR}/prompts or /tiny")
    return texts + toy.tokenizer_texts()


def seed_of(name: str, seed: int) -> int:
    """Each model's own seed (weights and synthetic data) for the build seed `seed`."""
    return int.from_bytes(hashlib.sha256(f"{name}:{seed}".encode()).digest()[:4], "little")


# -----------------------------------------------------------------------------
# builders: each writes into `out` (a staging folder) the model that will live at `final`,
# from its seed and the tokenizer texts, and returns what its training measured


def build_policy(make: Callable) -> Callable[[Path, Path, int, list[str]], dict]:
    def build(out: Path, final: Path, seed: int, texts: list[str]) -> dict:
        from transformers import GenerationConfig

        torch.manual_seed(seed)
        model, tokenizer, generation = make(texts)
        model.generation_config = GenerationConfig(**generation)
        eos = generation["eos_token_id"]
        stats = teach.pretrain_policy(
            model, tokenizer, eos if isinstance(eos, list) else [eos], seed, **POLICY_PRETRAINING
        )
        model.save_pretrained(out)  # safetensors
        tokenizer.save_pretrained(out)
        return stats

    return build


def build_pairrm(out: Path, final: Path, seed: int, texts: list[str]) -> dict:
    from src.ranking.pairrm import PairRMJudge

    torch.manual_seed(seed)
    blender = architectures.pairrm(out, final, texts)
    judge = PairRMJudge(blender, *PAIRRM_TRAINING_LIMITS, JUDGE_TRAINING["batch_size"])
    stats = teach.train_pairrm(judge, architectures.policy_prompt, seed, **JUDGE_TRAINING)
    architectures.save_pairrm(blender, out)
    return stats


def build_reward_model(
    family: str, attention: dict | None = None
) -> Callable[[Path, Path, int, list[str]], dict]:
    def build(out: Path, final: Path, seed: int, texts: list[str]) -> dict:
        from src.ranking.reward_model import RewardModelJudge

        torch.manual_seed(seed)
        model, tokenizer = architectures.reward_model(texts, family, attention)
        judge = RewardModelJudge(model, tokenizer, 1224, 412, JUDGE_TRAINING["batch_size"])
        stats = teach.train_reward_model(judge, seed, **JUDGE_TRAINING)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return stats

    return build


def build_chat_judge(out: Path, final: Path, seed: int, texts: list[str]) -> dict:
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    model, tokenizer, generation = architectures.mistral(
        texts + chat_judge.tokenizer_texts(),
        chat_judge.SIZES,
        chat_judge.ATTENTION,
        chat_judge.CONTEXT,
        chat_judge.VERDICT_LABELS,
    )
    model.generation_config = GenerationConfig(**generation)
    stats = chat_judge.teach(model, tokenizer, seed, **chat_judge.TRAINING)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return stats


BUILDERS: dict[str, Callable[[Path, Path, int, list[str]], dict]] = {
    "tiny-mistral": build_policy(architectures.mistral),
    "tiny-gemma2": build_policy(architectures.gemma2),
    "tiny-pairrm": build_pairrm,
    "tiny-rm": build_reward_model("mistral"),
    "tiny-judge": build_reward_model("gemma2"),
    "tiny-rm32": build_reward_model("mistral", architectures.POLICY_ATTENTION),
    "tiny-chat-judge": build_chat_judge,
}


# -----------------------------------------------------------------------------
# building into a folder, once


def build_identity(name: str, folder: Path, seed: int, texts: list[str]) -> dict:
    """What a finished folder must have been built from; any change means a rebuild."""
    packages = ["torch", "transformers", "tokenizers", "sentencepiece", "llm-blender"]
    code = b"".join(map(source_bytes, BUILT_BY + ALSO_BUILT_BY.get(name, ())))
    return {
        "name": name,
        # where it was built: a PairRM's config.json names its backbone by path (`relocated`)
        "folder": str(folder),
        "seed": seed,
        "texts_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "builder_sha256": hashlib.sha256(code).hexdigest(),
        "versions": {p: version(p) for p in packages},
    }


def source_bytes(made_by: str) -> bytes:
    """A file's bytes (`path` under src/), or of `path:NAME,...` the named objects alone: a
    function's source, any other value's repr."""
    path, _, names = made_by.partition(":")
    if not names:
        return (REPO_ROOT / "src" / path).read_bytes()
    module = importlib.import_module("src." + path.removesuffix(".py").replace("/", "."))
    values = (getattr(module, n) for n in names.split(","))
    return "\0".join(inspect.getsource(v) if callable(v) else repr(v) for v in values).encode()


def build(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Build `name` into `out_dir` (replacing it): staged beside it, then renamed into place."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; choose from {', '.join(TINY_NAMES)}")
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    texts = training_texts()
    start = time.perf_counter()
    teach.log(f"building {name} (seed {seed})")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        trained = BUILDERS[name](staging, out_dir, seed_of(name, seed), texts)
        record = {**build_identity(name, out_dir, seed, texts), "training": trained}
        (staging / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        share(staging)  # mkdtemp and safetensors make their files private; the cache may be shared
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(staging, ignore_errors=True)
    teach.log(f"built {name} (seed {seed}) in {time.perf_counter() - start:.1f}s: {out_dir}")
    return out_dir


def is_built(folder: Path, name: str, seed: int) -> bool:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    record.pop("training", None)
    return record == build_identity(name, folder, seed, training_texts()) and whole(folder, name)


def whole(folder: Path, name: str) -> bool:
    """Whether a finished build's folder holds every part it is read from: its config.json and,
    a PairRM's, the backbone folder that config names (llm-blender loads it from there); one
    missing is named, and the build made again rather than read from elsewhere."""
    try:
        ranker = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        missing = "config.json"
    else:
        parts = ("config.json", "model.safetensors") if "model_name" in ranker else ()
        missing = next((f"backbone/{p}" for p in parts if not (folder / "backbone" / p).is_file()),
                       None)  # fmt: skip
    if missing:
        teach.log(f"{name}: {folder} has no {missing}: built again")
    return missing is None


def relocated(folder: Path, name: str, seed: int) -> bool:
    """A finished build moved or copied here from another folder (a cache copied between
    machines, a renamed root) is the same build but for where it lies: its one path, a PairRM's
    config.json naming its backbone folder, is pointed here and its record updated, in place of
    a rebuild (tiny-chat-judge's takes minutes). False where it is not such a build."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("folder") in (None, str(folder)):
        return False
    identity = build_identity(name, folder, seed, training_texts())
    if {k: v for k, v in record.items() if k != "training"} != {
        **identity,
        "folder": record["folder"],
    } or not whole(folder, name):
        return False
    config = folder / "config.json"
    if (folder / "backbone").is_dir() and config.is_file():  # a PairRM: llm-blender's RankerConfig
        ranker = json.loads(config.read_text())
        ranker["model_name"] = str(folder / "backbone")
        atomic_write_text(config, json.dumps(ranker, indent=2) + "\n")
    atomic_write_text(
        folder / RECORD,
        json.dumps({**record, "folder": str(folder)}, indent=2, sort_keys=True) + "\n",
    )
    teach.log(
        f"{name}: a finished build moved here from {record['folder']}: reused, its paths updated"
    )
    return True


def ensure(name: str, cache_dir: Path, seed: int = 0, force: bool = False) -> Path:
    """Return cache_dir/name, building it first unless a finished build of it is there (or was
    moved or copied there: `relocated`)."""
    folder = Path(cache_dir).resolve() / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: processes that start together share one build.
    with FileLock(folder.parent / f".{name}.lock"):
        if force or not (is_built(folder, name, seed) or relocated(folder, name, seed)):
            for stale in folder.parent.glob(f".{name}.*"):  # staging left by a killed build
                if stale.is_dir():
                    shutil.rmtree(stale)
            build(name, folder, seed)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.tiny", description=__doc__.split("\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"of {TINY_NAMES}; default: {PIPELINE_NAMES}"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if already built")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in TINY_NAMES]
    if unknown:
        parser.error(f"unknown tiny model(s) {', '.join(unknown)}; choose from {TINY_NAMES}")
    for name in args.names or PIPELINE_NAMES:
        print(ensure(name, args.cache_dir, args.seed, force=args.force))
