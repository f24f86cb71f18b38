"""`python -m src.assets`: what each preset reads, fetched with the real huggingface_hub client
from a Hub of local folders (tests/support/hub_server.py), checked offline; and the same check stopping
`src.main` and `src.slurm` before any work when an asset is missing. The eval stage's benchmarks:
their data folders and served judge listed and checked, the leaderboard's datasets fetched where
the stage reads them and checked as it looks for them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.assets.asset import Asset
from src.assets.cache import wanted_files
from src.assets.check import damage, listed_for, require_assets
from src.config import REPO_ROOT
from src.core.errors import StageError
from src.evaluation import leaderboard
from src.tiny.benchmarks import write as write_tiny_benchmarks
from src.tiny.leaderboard import TRUTHFULQA, arc_rows, write_repo
from tests.support.helpers import SMALL, compose_cfg, one_line_failure, read_only
from tests.support.hub_server import LocalHub

TINY = REPO_ROOT / ".cache" / "tiny"

# --- the listing ----------------------------------------------------------------------------

# What iterations 1-3 of each preset read from the Hub (checkpoints of the run aside)
RECIPE = [
    "ranker llm-blender/PairRM",
    "model microsoft/deberta-v3-large",
    *(f"dataset UCLA-AGI/data-mistral-7b-instruct-sppo-iter{t} [train]" for t in (1, 2, 3)),
]
PINNED = {
    "mistral-7b-instruct-sppo": ["model mistralai/Mistral-7B-Instruct-v0.2", *RECIPE],
    "mistral-7b-instruct-sppo-qlora": ["model mistralai/Mistral-7B-Instruct-v0.2", *RECIPE],
    "gemma-2-9b-it-sppo": ["model google/gemma-2-9b-it", *RECIPE],
    "gemma-2-9b-it-sppo-qlora": ["model google/gemma-2-9b-it", *RECIPE],
    "gemma-2-9b-it-wpo-hb": [
        "model google/gemma-2-9b-it",
        "dataset HuggingFaceH4/ultrafeedback_binarized [train_prefs]",
        "model RLHFlow/ArmoRM-Llama3-8B-v0.1",
    ],
    "tiny-wpo-hb": [],
}


def labels(configs) -> list[str]:
    return sorted(e.asset.label() for e in listed_for(configs) if e.asset.on_hub)


@pytest.mark.parametrize("preset", sorted(PINNED))
def test_every_preset_lists_what_its_three_iterations_read_from_the_hub(preset):
    assert {p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")} == set(PINNED)
    extra = ["data.external_responses=/data/gpt4.jsonl"] if "wpo-hb" in preset else []
    configs = [compose_cfg(f"experiment={preset}", f"iter={t}", *extra) for t in (1, 2, 3)]
    assert labels(configs) == sorted(PINNED[preset])
    # the base model is read in iteration 1 only; later iterations start from the run's checkpoints
    made = [e for e in listed_for(configs) if e.asset.kind == "made"]
    assert [e.needs[0].iteration for e in made] == [2, 3]


def test_eval_reads_the_base_model_the_judge_and_alpaca_evals_files_every_iteration():
    configs = [
        compose_cfg(
            "experiment=mistral-7b-instruct-sppo",
            f"iter={t}",
            "eval.enabled=true",
            "eval.alpaca_eval=true",
            "data.eval_prompts=tatsu-lab/alpaca_eval-instructions",
        )
        for t in (1, 2)
    ]
    entries = {e.asset.label(): e for e in listed_for(configs)}
    base = entries["model mistralai/Mistral-7B-Instruct-v0.2"]
    assert "eval.reference: iterations 1-2 eval" in base.used_by()
    alpaca = entries["dataset tatsu-lab/alpaca_eval (alpaca_eval_gpt4_baseline.json, df_gamed.csv)"]
    assert alpaca.used_by() == "eval.alpaca_eval: iterations 1-2 eval"
    assert "dataset tatsu-lab/alpaca_eval-instructions [train]" in entries


# The reward-model presets and the hub repository each reads
REWARD_MODELS = {
    "reward-model": "RLHFlow/ArmoRM-Llama3-8B-v0.1",
    "skywork-reward-v2-llama-3.1-8b": "Skywork/Skywork-Reward-V2-Llama-3.1-8B",
    "skywork-reward-v2-qwen3-1.7b": "Skywork/Skywork-Reward-V2-Qwen3-1.7B",
}


@pytest.mark.parametrize("preset", sorted(REWARD_MODELS))
def test_a_reward_model_preset_lists_its_judge_read_whole_by_the_rank_and_the_eval(preset):
    """A reward-model preset's judge is a hub model read by the rank stage, and by the eval as
    its judge: listed (so fetched and checked) whole, its weights, config and tokenizer with its
    chat template; nothing of the policy, whose template a reward model does not read."""
    rank = {e.asset.label(): e for e in listed_for([compose_cfg("stage=rank", f"ranker={preset}")])}
    judge = rank.pop(f"model {REWARD_MODELS[preset]}")
    assert judge.asset.on_hub and judge.asset.files == ()
    assert judge.used_by() == "ranker.model: iteration 1 rank" and rank == {}
    overrides = ["stage=eval", "eval.enabled=true", f"+ranker@eval.judge={preset}"]
    evaluated = {e.asset.source: e for e in listed_for([compose_cfg(*overrides)])}
    assert evaluated[REWARD_MODELS[preset]].used_by() == "eval.judge.model: iteration 1 eval"


BENCHMARKS = [
    "eval.enabled=true",
    "eval.benchmarks=[mt_bench,arena_hard,leaderboard]",
    "data.mt_bench=/data/llm_judge",
    "data.arena_hard=/data/arena-hard-v0.1",
    "eval.llm_judge.serve=Qwen/Qwen2.5-7B-Instruct",
    "eval.leaderboard_tasks=[leaderboard,arc_challenge,truthfulqa_mc2]",
]
# the dataset repositories lm-eval's tasks of v2's six and v1's two read
LEADERBOARD_REPOS = [
    "DigitalLearningGmbH/MATH-lighteval",
    "Idavidrein/gpqa",
    "SaylorTwift/bbh",
    "TAUR-Lab/MuSR",
    "TIGER-Lab/MMLU-Pro",
    "allenai/ai2_arc",
    "truthfulqa/truthful_qa",
    "wis-k/instruction-following-eval",
]


def test_eval_benchmarks_read_their_data_folders_served_judge_and_leaderboard_datasets():
    configs = [
        compose_cfg("experiment=mistral-7b-instruct-sppo", f"iter={t}", *BENCHMARKS) for t in (1, 2)
    ]
    entries = {e.asset.label(): e for e in listed_for(configs)}
    mt_bench = entries["folder /data/llm_judge (mt_bench/question.jsonl, judge_prompts.jsonl)"]
    assert mt_bench.used_by() == "data.mt_bench: iterations 1-2 eval"
    arena = entries["folder /data/arena-hard-v0.1 (question.jsonl, model_answer)"]
    assert arena.used_by() == "data.arena_hard: iterations 1-2 eval"
    assert not mt_bench.asset.on_hub and not arena.asset.on_hub  # the user's copies: not fetched
    judge = entries["model Qwen/Qwen2.5-7B-Instruct"]
    assert judge.used_by() == "eval.llm_judge.serve: iterations 1-2 eval" and judge.asset.on_hub
    read = {
        e.asset.source: e
        for e in entries.values()
        if e.used_by() == "eval.leaderboard_tasks: iterations 1-2 eval"
    }
    assert sorted(read) == LEADERBOARD_REPOS
    assert all(e.asset.on_hub and e.asset.local_dir is None for e in read.values())
    bbh = "dataset SaylorTwift/bbh (read by leaderboard_bbh_boolean_expressions and 23 more)"
    assert read["SaylorTwift/bbh"].asset.label() == bbh
    # data.leaderboard: each fetched into <folder>/<repo id>; no judged benchmark: no judge served
    cfg = compose_cfg(
        *SMALL,
        "stage=eval",
        "eval.benchmarks=[leaderboard]",
        "eval.leaderboard_tasks=[arc_challenge]",
        "eval.llm_judge.serve=Qwen/Qwen2.5-7B-Instruct",
        "data.leaderboard=/data/leaderboard",
    )
    hub = [e.asset for e in listed_for([cfg]) if e.asset.on_hub]
    assert hub == [
        Asset(
            "dataset",
            "allenai/ai2_arc",
            tasks=("arc_challenge",),
            local_dir="/data/leaderboard/allenai/ai2_arc",
        )
    ]


def test_a_benchmark_folder_missing_a_file_names_it_and_what_to_copy_there(tmp_path):
    data = tmp_path / "llm_judge"
    (data / "mt_bench").mkdir(parents=True)
    (data / "mt_bench" / "question.jsonl").write_text("{}\n")
    cfg = compose_cfg(
        *SMALL,
        "stage=eval",
        "eval.benchmarks=[mt_bench]",
        f"data.mt_bench={data}",
        f"eval.llm_judge.serve={tmp_path / 'no-judge'}",
    )
    by_key = {e.used_by(): e for e in listed_for([cfg])}
    folder = by_key["data.mt_bench: iteration 1 eval"]
    assert damage(folder.asset, cfg) == "judge_prompts.jsonl is missing"
    served = by_key["eval.llm_judge.serve: iteration 1 eval"].asset
    assert damage(served, cfg) == f"no such folder: {tmp_path / 'no-judge'}"
    with pytest.raises(StageError) as refused:  # a local folder: exit 1, as a missing file's
        require_assets([folder], cfg, [], online=False)
    assert str(refused.value) == (
        f"folder {data} (mt_bench/question.jsonl, judge_prompts.jsonl) (data.mt_bench: iteration "
        "1 eval): judge_prompts.jsonl is missing; nothing fetches it: point the key at a copy of "
        "FastChat's fastchat/llm_judge/data folder"
    )
    # every file there, read as the eval stage reads it: what it would refuse is refused first
    (data / "judge_prompts.jsonl").write_text("{}\n")
    with pytest.raises(StageError, match=r"question\.jsonl:1: expected a question: "):
        require_assets([folder], cfg, [], online=False)
    write_tiny_benchmarks(tmp_path)  # MT-Bench's 80 questions, in llm_judge's layout
    shutil.rmtree(data)
    (tmp_path / "mt_bench").rename(data)
    require_assets([folder], cfg, [], online=False)
    question = data / "mt_bench" / "question.jsonl"
    question.write_text("".join(question.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(
        StageError,
        match=r"eval\): \S+/question\.jsonl is not MT-Bench's 80 questions, .*\(3 questions; ",
    ):
        require_assets([folder], cfg, [], online=False)


def test_a_model_is_fetched_in_one_weight_format():
    model = Asset("model", "o/m")
    names = ["config.json", "model.safetensors", "pytorch_model.bin", "consolidated.safetensors"]
    names += ["tf_model.h5", "onnx/model.onnx", "original/consolidated.00.pth", "tokenizer.model"]
    # vLLM reads every *.safetensors of a repository offline: none is left out
    assert wanted_files(model, names) == [
        "config.json",
        "consolidated.safetensors",
        "model.safetensors",
        "tokenizer.model",
    ]
    assert wanted_files(model, ["config.json", "pytorch_model.bin"]) == [
        "config.json",
        "pytorch_model.bin",
    ]
    part = Asset("dataset", "o/d", files=("a.json",))
    assert wanted_files(part, ["a.json", "b.json"]) == ["a.json"]


# --- a Hub of local folders, fetched and checked ------------------------------------------------

HUB_IDS = [
    "model.path=acme/tiny-mistral",
    "ranker=tiny-pairrm",
    "ranker.model=acme/tiny-pairrm",
    "data.prompts=acme/prompts-iter${iter}",
]


ARC = {"train": arc_rows(3, "train"), "validation": arc_rows(1, "val"), "test": arc_rows(2, "test")}


@pytest.fixture
def local_hub(tmp_path):
    """The tiny models, the tiny PairRM (its backbone a repository of its own), two prompt splits
    and ARC's dataset (as its README's configs lay it out) as hub repositories; a
    pytorch_model.bin beside the policy's safetensors."""
    served = tmp_path / "served"
    policy = served / "tiny-mistral"
    shutil.copytree(TINY / "tiny-mistral", policy)
    (policy / "pytorch_model.bin").write_bytes(b"not fetched: the safetensors are")
    ranker = served / "tiny-pairrm"
    shutil.copytree(TINY / "tiny-pairrm", ranker, ignore=shutil.ignore_patterns("backbone"))
    config = json.loads((ranker / "config.json").read_text())
    (ranker / "config.json").write_text(json.dumps(config | {"model_name": "acme/tiny-deberta"}))
    with LocalHub() as hub:
        hub.add("model", "acme/tiny-mistral", policy)
        hub.add("model", "acme/tiny-pairrm", ranker)
        hub.add("model", "acme/tiny-deberta", TINY / "tiny-pairrm" / "backbone")
        for t in (1, 2):
            split = served / f"prompts-iter{t}" / "data"
            split.mkdir(parents=True)
            prompts = [f"Question {t}.{i}: what is {i} + {t}?" for i in range(6)]
            ids = [f"p{t}-{i}" for i in range(6)]
            table = pa.table({"prompt": prompts, "prompt_id": ids})
            pq.write_table(table, split / "train-00000-of-00001.parquet")
            hub.add("dataset", f"acme/prompts-iter{t}", split.parent)
        write_repo(served, "allenai/ai2_arc", {"ARC-Challenge": ARC})
        hub.add("dataset", "allenai/ai2_arc", served / "allenai/ai2_arc")
        yield hub


def assets(tmp_path, hub, action, *args, online=False, ids=tuple(HUB_IDS)):
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0" if online else "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "SELFPLAY_RUNS": str(tmp_path / "runs"),
    }
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    for derived in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        env.pop(derived, None)
    return subprocess.run(
        [sys.executable, "-m", "src.assets", action, *args, "model=tiny-mistral", *ids],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(tmp_path, kind, repo_id):
    folder = tmp_path / "hf" / "hub" / f"{kind}s--{repo_id.replace('/', '--')}" / "snapshots"
    return next(folder.iterdir())


@pytest.mark.slow
def test_fetch_downloads_what_the_run_reads_and_check_finds_it_whole_offline(tmp_path, local_hub):
    fetched = assets(tmp_path, local_hub, "fetch", "--iterations", "2", online=True)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert "all 5 assets are here and whole" in fetched.stdout
    got = local_hub.downloaded()
    assert "acme/tiny-mistral/model.safetensors" in got
    assert "acme/tiny-mistral/pytorch_model.bin" not in got  # one weight format
    # the ranker's backbone, named in its config, is fetched after it
    assert got.index("acme/tiny-deberta/model.safetensors") > got.index(
        "acme/tiny-pairrm/config.json"
    )
    for t in (1, 2):
        assert f"acme/prompts-iter{t}/data/train-00000-of-00001.parquet" in got
    checked = assets(tmp_path, local_hub, "check", "--iterations", "2", "--verify")
    assert checked.returncode == 0, checked.stderr[-3000:]
    served = len(local_hub.requests)
    listed = assets(tmp_path, local_hub, "list", "--iterations", "2")
    assert "acme/tiny-deberta" in listed.stdout and "in the cache" in listed.stdout
    assert len(local_hub.requests) == served  # offline: nothing asked of the Hub


@pytest.mark.slow
def test_check_names_a_missing_file_and_a_truncated_one_with_the_command_that_fetches_it(
    tmp_path, local_hub
):
    assert assets(tmp_path, local_hub, "fetch", online=True).returncode == 0
    weights = snapshot(tmp_path, "model", "acme/tiny-mistral") / "model.safetensors"
    blob = weights.resolve()
    size = blob.stat().st_size
    with blob.open("r+b") as f:
        f.truncate(size - 100)
    (
        snapshot(tmp_path, "dataset", "acme/prompts-iter1")
        / "data"
        / "train-00000-of-00001.parquet"
    ).unlink()
    checked = assets(tmp_path, local_hub, "check")
    assert one_line_failure(checked, 3).startswith("error: 2 of the 4 assets")
    missing = [ln for ln in checked.stderr.splitlines() if ln.startswith("missing:")]
    assert len(missing) == 2
    assert f"model.safetensors has {size - 100} bytes where the Hub has {size}" in missing[0]
    assert (
        "fetch: python -m src.assets fetch --only acme/tiny-mistral model=tiny-mistral"
        in missing[0]
    )
    assert "data/train-00000-of-00001.parquet is missing" in missing[1]
    # the fetch each line names replaces the cut file (huggingface_hub alone keeps it) and
    # downloads the missing one
    said = ""
    for repo in ("acme/tiny-mistral", "acme/prompts-iter1"):
        fetched = assets(tmp_path, local_hub, "fetch", "--only", repo, online=True)
        assert fetched.returncode == 0, fetched.stderr[-2000:]
        said += fetched.stderr
    again = f"model.safetensors has {size - 100} bytes where the Hub has {size} (cut short or "
    assert f"[assets] acme/tiny-mistral: {again}replaced): fetched again" in said, said[-2000:]
    assert assets(tmp_path, local_hub, "check").returncode == 0
    assert blob.stat().st_size == size
    # same size, other content: only --verify's hashes tell
    with blob.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\0" * 64)
    assert assets(tmp_path, local_hub, "check").returncode == 0
    verified = assets(tmp_path, local_hub, "check", "--verify")
    assert verified.returncode == 3
    assert "model.safetensors is not the Hub's file" in verified.stderr


# The eval stage of iteration 1 with the leaderboard's ARC and TruthfulQA, the tiny models its
# other reads: the leaderboard's datasets (the Hub's, not the tiny preset's copies) are its only
# hub assets
LEADERBOARD = [
    "stage=eval",
    "eval.benchmarks=[leaderboard]",
    "eval.leaderboard_tasks=[arc_challenge,truthfulqa_mc2]",
    "data.leaderboard=null",
]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def in_hub_cache(tmp_path, repo: str, configs: dict) -> None:
    """Where `hf download <repo> --repo-type dataset` puts a dataset: its snapshot, and the
    branch that names it."""
    stored = tmp_path / "hf" / "hub" / f"datasets--{repo.replace('/', '--')}"
    write_repo(stored / "snapshots" / COMMIT, "", configs)
    (stored / "refs").mkdir()
    (stored / "refs" / "main").write_text(COMMIT)


@pytest.mark.slow
def test_check_names_each_leaderboard_dataset_no_cache_holds_as_the_eval_stage_would(
    tmp_path, monkeypatch
):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    hub_cache = str(tmp_path / "hf" / "hub")
    tasks = ["arc_challenge", "truthfulqa_mc2"]
    overrides = shlex.join([*LEADERBOARD, "model=tiny-mistral"])
    checked = assets(tmp_path, None, "check", *LEADERBOARD, ids=())
    assert one_line_failure(checked, 3).startswith("error: 2 of the 5 assets")
    missing = [ln for ln in checked.stderr.splitlines() if ln.startswith("missing:")]
    assert [ln.split(" (read by")[0] for ln in missing] == [
        "missing: dataset allenai/ai2_arc",
        "missing: dataset truthfulqa/truthful_qa",
    ]
    for line, repo in zip(missing, ["allenai/ai2_arc", "truthfulqa/truthful_qa"], strict=True):
        assert "(eval.leaderboard_tasks: iteration 1 eval): not in the Hugging Face caches" in line
        assert line.endswith(f"; fetch: python -m src.assets fetch --only {repo} {overrides}")
    # the eval stage's own check names the same
    lines = leaderboard.missing_datasets(tasks, None, hub_cache)
    assert [ln.split(" ")[2] for ln in lines] == ["allenai/ai2_arc", "truthfulqa/truthful_qa"]

    in_hub_cache(tmp_path, "allenai/ai2_arc", {"ARC-Challenge": ARC})
    last = one_line_failure(assets(tmp_path, None, "check", *LEADERBOARD, ids=()), 3)
    assert last.startswith(
        "error: dataset truthfulqa/truthful_qa (read by truthfulqa_mc2) (eval.leaderboard_tasks: "
        "iteration 1 eval): not in the Hugging Face caches; the run reads the Hub cache alone"
    )
    assert last.endswith(f": python -m src.assets fetch {overrides}")
    assert [ln.split(" ")[2] for ln in leaderboard.missing_datasets(tasks, None, hub_cache)] == [
        "truthfulqa/truthful_qa"
    ]

    in_hub_cache(
        tmp_path, "truthfulqa/truthful_qa", {"multiple_choice": {"validation": TRUTHFULQA}}
    )
    checked = assets(tmp_path, None, "check", *LEADERBOARD, ids=())
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "all 5 assets are here and whole" in checked.stdout
    assert leaderboard.missing_datasets(tasks, None, hub_cache) == []
    listed = assets(tmp_path, None, "list", *LEADERBOARD, ids=())
    assert "dataset allenai/ai2_arc (read by arc_challenge)\n" in listed.stdout
    assert "    here:    in the cache, " in listed.stdout


@pytest.mark.parametrize(
    ("damage_done", "said"),
    [
        ("a row cut short", r"ARC-Challenge/test\.jsonl:2: malformed JSON line: "),
        ("bytes that are not UTF-8", r"ARC-Challenge/test\.jsonl: not UTF-8 text \("),
        ("an empty split", r"config ARC-Challenge cannot be loaded \("),
        ("a row without its question", r"test row 2 cannot be read as arc_challenge reads it \("),
    ],
    ids=["cut", "not UTF-8", "empty split", "no question"],
)
def test_check_verify_reads_a_leaderboard_copy_as_the_eval_stage_does(
    tmp_path, monkeypatch, damage_done, said
):
    """--verify had vouched for copies the eval stage refuses ("all 4 assets are here and
    whole"): each task is built over the copy and every document read, as the stage does."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    copies = tmp_path / "leaderboard"
    write_repo(copies, "allenai/ai2_arc", {"ARC-Challenge": ARC})
    cfg = compose_cfg(*SMALL, *LEADERBOARD[:2], "eval.leaderboard_tasks=[arc_challenge]",
                      f"data.leaderboard={copies}")  # fmt: skip
    (arc,) = [e.asset for e in listed_for([cfg]) if e.asset.tasks]
    assert damage(arc, cfg, verify=True) is None
    test = copies / "allenai/ai2_arc/ARC-Challenge/test.jsonl"
    if damage_done == "a row cut short":
        test.write_text(test.read_text()[:-40])
    elif damage_done == "bytes that are not UTF-8":
        test.write_bytes(b"\xff\xfe" + test.read_bytes())
    elif damage_done == "an empty split":
        test.write_text("")
    else:
        rows = [json.loads(line) for line in test.read_text().splitlines()]
        del rows[1]["question"]
        test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert damage(arc, cfg) is None  # found where the stage looks: the copy is read by --verify
    why = damage(arc, cfg, verify=True)
    assert re.search(said, why), why
    assert why.startswith("the leaderboard's copy of allenai/ai2_arc (") and "\n" not in why


@pytest.mark.slow
def test_fetch_puts_a_leaderboard_dataset_where_the_eval_stage_reads_it(tmp_path, local_hub):
    arc = ["stage=eval", "eval.benchmarks=[leaderboard]", "eval.leaderboard_tasks=[arc_challenge]"]
    fetched = assets(
        tmp_path, local_hub, "fetch", *arc, "data.leaderboard=null", online=True, ids=()
    )
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert "all 4 assets are here and whole" in fetched.stdout
    files = ["README.md", *(f"ARC-Challenge/{s}.jsonl" for s in ("train", "validation", "test"))]
    assert sorted(local_hub.downloaded()) == sorted(f"allenai/ai2_arc/{f}" for f in files)
    folder = snapshot(tmp_path, "dataset", "allenai/ai2_arc")
    assert all((folder / f).is_file() for f in files)
    # data.leaderboard: into <folder>/<repo id>, as `hf download --local-dir` lays it out, and
    # found there with the Hub cache's copy gone
    shutil.rmtree(tmp_path / "hf" / "hub" / "datasets--allenai--ai2_arc")
    copies = tmp_path / "leaderboard"
    local = [*arc, f"data.leaderboard={copies}"]
    fetched = assets(tmp_path, local_hub, "fetch", *local, online=True, ids=())
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert all((copies / "allenai/ai2_arc" / f).is_file() for f in files)
    assert not (tmp_path / "hf" / "hub" / "datasets--allenai--ai2_arc" / "snapshots").exists()
    served = len(local_hub.requests)
    checked = assets(tmp_path, local_hub, "check", *local, ids=())
    assert checked.returncode == 0, checked.stderr[-3000:]
    listed = assets(tmp_path, local_hub, "list", *local, ids=())
    assert f"    here:    in {copies / 'allenai/ai2_arc'}, " in listed.stdout
    assert len(local_hub.requests) == served  # offline: nothing asked of the Hub


@pytest.mark.slow
def test_the_run_reads_its_hub_assets_from_a_read_only_cache_offline(tmp_path, local_hub):
    """Fetched once, and then mounted read-only as the nodes of a cluster mount a shared cache: the
    check finds every asset whole, and the policy, the prompt split and the PairRM with its
    backbone load with the Hub offline (generation and ranking of iteration 1 by their hub ids),
    writing nothing under the cache; a fetch finds it whole and keeps it."""
    assert assets(tmp_path, local_hub, "fetch", online=True).returncode == 0
    served = len(local_hub.requests)
    hf = tmp_path / "hf"
    before = sorted(str(p) for p in hf.rglob("*"))
    env = {
        **os.environ,
        "HF_HOME": str(hf),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "SELFPLAY_RUNS": str(tmp_path / "runs"),
        "XDG_CACHE_HOME": str(tmp_path / "user-cache"),
    }
    for derived in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        env.pop(derived, None)
    online = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": local_hub.url}
    commands = [
        (["src.assets", "fetch", "model=tiny-mistral", *HUB_IDS], online),
        (["src.assets", "check", "model=tiny-mistral", *HUB_IDS], {}),
        *((["src.main", *SMALL, *HUB_IDS, f"stage={stage}"], {}) for stage in ("generate", "rank")),
    ]
    for command, more in commands:
        run = subprocess.run(
            read_only(hf, [sys.executable, "-m", *command]),
            cwd=REPO_ROOT,
            env=env | more,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    ranked = list((tmp_path / "runs").glob("tiny-mistral/sppo/*/iter1/rank/ranked-*.jsonl"))
    rows = [json.loads(line) for f in ranked for line in f.read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["win_rate"]) == 3 for r in rows)
    assert len(local_hub.requests) == served
    assert sorted(str(p) for p in hf.rglob("*")) == before


@pytest.mark.slow
def test_main_refuses_before_any_stage_naming_every_missing_asset(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "src.main", *SMALL, "logger=wandb", "iter=2", *HUB_IDS],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "1",
            "SELFPLAY_RUNS": str(tmp_path / "runs"),
            "WANDB_MODE": "offline",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = one_line_failure(run, 3)
    assert "python -m src.assets fetch model=tiny-mistral" in last and "iter=2" in last
    missing = [ln.split(" (")[0] for ln in run.stderr.splitlines() if ln.startswith("missing:")]
    assert missing == [
        "missing: model acme/tiny-mistral",
        "missing: dataset acme/prompts-iter1 [train]",
        "missing: ranker acme/tiny-pairrm",
        "missing: dataset acme/prompts-iter2 [train]",
    ]
    assert not (tmp_path / "runs").exists()  # no stage folder, no W&B run


@pytest.mark.slow
def test_slurm_refuses_a_chain_whose_second_split_is_missing_before_any_script(tmp_path, local_hub):
    """A submission is refused before any script, naming the fetch and the nodes' download; a
    dry run prints the scripts, then the same line."""
    assert assets(tmp_path, local_hub, "fetch", online=True).returncode == 0  # iteration 1's
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": local_hub.url,
        "SELFPLAY_RUNS": str(tmp_path / "runs"),
    }
    env.pop("HF_HUB_CACHE", None)
    # the jobs run offline (hardware.slurm.offline): the chain is checked though this shell is not
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.slurm",
            "--iterations",
            "2",
            "--dry-run",
            *SMALL,
            *HUB_IDS,
            "hardware=slurm-cpu",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = one_line_failure(run, 3)  # one asset missing: the line that ends it names it
    assert last.startswith("error: dataset acme/prompts-iter2 [train] (data.prompts: iteration 2")
    assert "python -m src.assets fetch --iterations 2" in last
    assert last.endswith("let them download what the cache lacks: hardware.slurm.offline=false")
    # a dry run shows the scripts all the same, before that line; nothing is written
    assert run.stdout.count("#SBATCH --job-name") >= 2 and not (tmp_path / "runs").exists()
    submitted = subprocess.run(
        [sys.executable, "-m", "src.slurm", "--iterations", "2", *SMALL, *HUB_IDS,
         "hardware=slurm-cpu"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one_line_failure(submitted, 3) == last  # a submission: refused before any script
    assert "#SBATCH" not in submitted.stdout + submitted.stderr
    assert not (tmp_path / "runs").exists()


def test_sweep_refuses_an_array_whose_points_read_a_missing_split_before_any_script(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.sweep",
            str(REPO_ROOT / "sweeps" / "eta.yaml"),
            "--iterations",
            "2",
            "--dry-run",
            *SMALL,
            "hardware=slurm-cpu",
            "data.prompts=acme/prompts-iter${iter}",
        ],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "HF_HOME": str(tmp_path / "hf"),
            "SELFPLAY_RUNS": str(tmp_path / "runs"),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one_line_failure(run, 3).endswith(
        "python -m src.assets fetch --iterations 2 "
        + " ".join(SMALL)
        + " hardware=slurm-cpu 'data.prompts=acme/prompts-iter${iter}' generation.shard=0 "
        "generation.num_shards=1 ranker.shard=0 ranker.num_shards=1"
    )
    missing = [ln.split(" (")[0] for ln in run.stderr.splitlines() if ln.startswith("missing:")]
    assert missing == [f"missing: dataset acme/prompts-iter{t} [train]" for t in (1, 2)]
    assert "#SBATCH" not in run.stdout and not (tmp_path / "runs").exists()


@pytest.mark.slow  # huggingface_hub tries five times more before it gives up (~24 s)
def test_fetch_from_a_hub_that_does_not_answer_is_one_line(tmp_path):
    """The Hub unreachable (here: nothing listens where HF_ENDPOINT points), offline mode not
    set: one line naming the asset, the endpoint and what to check, no traceback, exit 3."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    fetched = assets(tmp_path, SimpleNamespace(url=url), "fetch", online=True)
    line = one_line_failure(fetched, 3)
    assert line.startswith(f"error: cannot fetch acme/tiny-mistral: the Hub ({url}) did not answer")
    assert "HTTPS_PROXY" in line


def test_list_shows_what_a_preset_reads_and_the_file_it_requires_not_named_yet(capsys):
    from src.assets.__main__ import main

    main(["list", "experiment=gemma-2-9b-it-wpo-hb"])
    out = capsys.readouterr().out
    assert "model RLHFlow/ArmoRM-Llama3-8B-v0.1" in out
    assert out.rstrip().endswith(
        "missing: data.external_responses is required to run: the hybrid pool of WPO-HB needs a "
        "JSONL of external responses (e.g. GPT-4-turbo answers); set data.external_responses=<value>"
    )
