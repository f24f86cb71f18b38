"""Stage `generate` on the tiny models: contract rows, seeds, shards, kill -9 and resume, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.config import REPO_ROOT
from src.core.errors import StageError
from src.generation.sampling import GenerationError
from src.generation.vllm_engine import QUIET_ENV
from tests.support.helpers import compose_cfg, run_recorded

ITER1 = REPO_ROOT / "data" / "prompts" / "iter1.jsonl"
ITER1_IDS = [json.loads(line)["prompt_id"] for line in ITER1.read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("runs_in_tmp", "tiny_dir")  # tests/conftest.py


def gen_cfg(*overrides: str):
    return compose_cfg("stage=generate", "logger=none", "generation.max_new_tokens=8", *overrides)


def responses(stage_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(stage_dir.glob("responses-shard*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


@pytest.mark.parametrize("model", ["tiny-mistral", "tiny-gemma2"])
def test_k_responses_per_prompt_with_the_contract_schema(model):
    cfg = gen_cfg(f"model={model}", "data.max_prompts=6", "method.K=3")
    run_recorded(cfg, "generate")
    stage = cfg.stage_dir("generate")
    rows = responses(stage)
    assert [r["prompt_id"] for r in rows] == ITER1_IDS[:6]
    for r in rows:
        assert set(r) == {
            "prompt_id",
            "prompt",
            "responses",
            "finish_reasons",
            "num_tokens",
            "seeds",
        }
        assert len(r["responses"]) == len(r["finish_reasons"]) == len(r["num_tokens"]) == 3
        assert r["seeds"] == [0, 50, 100]
        assert all(reason in ("stop", "length") for reason in r["finish_reasons"])
        assert all(0 < n <= 8 for n in r["num_tokens"])
    done = json.loads((stage / "done.json").read_text())
    assert done["counts"]["generated"] == 6 and done["counts"]["shards"] == 1


def test_same_seeds_same_responses_other_seeds_other_responses():
    first = gen_cfg("model=tiny-mistral", "data.max_prompts=4", "run_name=a")
    second = gen_cfg(
        "model=tiny-mistral", "data.max_prompts=4", "run_name=b", "generation.batch_size=3"
    )
    other = gen_cfg(
        "model=tiny-mistral", "data.max_prompts=4", "run_name=c", "generation.seeds=[1,2,3,4,5]"
    )
    for cfg in (first, second, other):
        run_recorded(cfg, "generate")
    a, b, c = (responses(cfg.stage_dir("generate")) for cfg in (first, second, other))
    assert a == b, "same seeds: same responses, whatever the batch size"
    assert [r["responses"] for r in a] != [r["responses"] for r in c]


def test_shards_partition_the_prompts_and_reproduce_the_unsharded_run():
    whole = gen_cfg("model=tiny-gemma2", "data.max_prompts=10", "run_name=whole")
    run_recorded(whole, "generate")
    sharded = [
        gen_cfg(
            "model=tiny-gemma2",
            "data.max_prompts=10",
            "run_name=sharded",
            f"generation.shard={s}",
            "generation.num_shards=3",
        )
        for s in range(3)
    ]
    stage = sharded[0].stage_dir("generate")
    for i, cfg in enumerate(sharded):
        assert not (stage / "done.json").exists(), "the record waits for every shard"
        run_recorded(cfg, "generate")
        assert len(list(stage.glob("responses-shard*.jsonl"))) == i + 1
    ids = [r["prompt_id"] for r in responses(stage)]
    assert sorted(ids) == sorted(ITER1_IDS[:10]) and len(ids) == len(set(ids)), "no overlap, no gap"
    by_id = {r["prompt_id"]: r for r in responses(whole.stage_dir("generate"))}
    assert all(r == by_id[r["prompt_id"]] for r in responses(stage)), (
        "per-prompt seeds: shard-independent"
    )
    assert json.loads((stage / "done.json").read_text())["counts"]["generated"] == 10


@pytest.mark.slow
def test_killed_mid_run_then_rerun_gives_every_prompt_once_and_the_same_output(tmp_path):
    overrides = [
        "stage=generate",
        "model=tiny-mistral",
        "logger=none",
        "generation.max_new_tokens=8",
    ]
    overrides += ["generation.chunk_size=2", "generation.batch_size=2", "data.max_prompts=12"]
    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path / "killed")}
    cmd = [sys.executable, "-m", "src.main", *overrides]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    chunks = []
    while time.time() < deadline and proc.poll() is None:
        # a chunk counts once sealed: its rows are written first, then its seal
        chunks = list((tmp_path / "killed").rglob("chunk*.sealed.json"))
        if len(chunks) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(chunks) >= 2, (
        "the run should still be going after two chunks"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "killed").rglob("responses-shard*.jsonl")), (
        "killed before its shard file"
    )
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    killed_stage = next((tmp_path / "killed").rglob("iter1/generate"))
    done = json.loads((killed_stage / "done.json").read_text())["counts"]
    assert (
        done["reused_from_earlier_run"] >= 4
        and done["generated"] + done["reused_from_earlier_run"] == 12
    )

    uninterrupted = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env={**env, "SELFPLAY_RUNS": str(tmp_path / "clean")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    clean_stage = next((tmp_path / "clean").rglob("iter1/generate"))
    assert responses(killed_stage) == responses(clean_stage)
    assert [r["prompt_id"] for r in responses(killed_stage)] == ITER1_IDS[:12]


def test_a_truncated_chunk_is_generated_again_to_the_same_bytes(capsys):
    """A node that crashed after a chunk's rename but before its data reached the disk leaves a
    short chunk: the re-run makes it again instead of writing a responses file that lacks
    prompts, says how much it kept, and the file equals the uninterrupted run's byte for byte."""
    cfg = gen_cfg("model=tiny-mistral", "data.max_prompts=12", "generation.chunk_size=4")
    run_recorded(cfg, "generate")
    stage = cfg.stage_dir("generate")
    output = stage / "responses-shard000-of-001.jsonl"
    clean = output.read_bytes()
    (stage / "done.json").unlink()
    output.unlink()
    chunk = stage / "shard000-of-001" / "chunk00001.jsonl"
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    capsys.readouterr()
    counts = run_recorded(cfg, "generate")
    assert counts["reused_from_earlier_run"] == 8 and counts["generated"] == 4
    assert "shard000-of-001: 8 of 12 rows kept from an earlier run, 4 made in this one" in (
        capsys.readouterr().err
    )
    assert output.read_bytes() == clean


def test_chunks_made_with_another_config_are_never_reused():
    run_recorded(gen_cfg("model=tiny-mistral", "data.max_prompts=2"), "generate")
    with pytest.raises(
        StageError, match=r"holds responses generated with a different configuration"
    ):
        run_recorded(
            gen_cfg("model=tiny-mistral", "data.max_prompts=2", "generation.temperature=1.3"),
            "generate",
        )


def test_long_prompts_are_skipped_or_truncated_and_counted(tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt_id": "short", "prompt": "Hi"},
        {"prompt_id": "long", "prompt": "Tell me more. " * 200},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[0]]))  # one repeat
    limit = "generation.max_prompt_length=40"
    skip = gen_cfg("model=tiny-gemma2", f"data.prompts={path}", limit, "run_name=skip")
    run_recorded(skip, "generate")
    said = capsys.readouterr().err  # what done.json counts is said on the console too
    assert f"[generate] 1 rows of {path} repeat an earlier row: dropped" in said
    assert (
        "[generate] 1 prompts are longer than generation.max_prompt_length=40 tokens: skipped"
        in said
    )
    assert [r["prompt_id"] for r in responses(skip.stage_dir("generate"))] == ["short"]
    assert (
        json.loads((skip.stage_dir("generate") / "done.json").read_text())["counts"][
            "skipped_too_long"
        ]
        == 1
    )
    cut = gen_cfg(
        "model=tiny-gemma2",
        f"data.prompts={path}",
        limit,
        "generation.long_prompts=truncate",
        "run_name=cut",
    )
    run_recorded(cut, "generate")
    assert "[generate] 1 prompts are longer than" in capsys.readouterr().err
    kept = responses(cut.stage_dir("generate"))
    assert [r["prompt_id"] for r in kept] == ["short", "long"]
    assert rows[1]["prompt"].endswith(kept[1]["prompt"]), "the end of the prompt is what is kept"
    assert 0 < len(kept[1]["prompt"]) < len(rows[1]["prompt"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"prompt file not found"),
        ("", r"holds no prompts"),
        ('{"prompt_id": "a", "text": "hi"}\n', r"prompt"),
        ('{"prompt_id": "a", "prompt": "   "}\n', r"empty"),
    ],
)
def test_bad_prompt_files_fail_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    if content is not None:
        path.write_text(content)
    cfg = gen_cfg("model=tiny-mistral", f"data.prompts={path}")
    with pytest.raises(StageError, match=message):
        run_recorded(cfg, "generate")
    assert not list(cfg.stage_dir("generate").glob("responses-shard*.jsonl"))


@pytest.mark.slow
def test_command_line_writes_the_iteration_one_split(tmp_path):
    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path / "runs")}
    cmd = [
        sys.executable,
        "-m",
        "src.main",
        "stage=generate",
        "model=tiny-gemma2",
        "iter=1",
        "logger=none",
    ]
    result = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stage = next((tmp_path / "runs").rglob("iter1/generate"))
    rows = responses(stage)
    ids = [r["prompt_id"] for r in rows]
    skipped = json.loads((stage / "done.json").read_text())["counts"]["skipped_too_long"]
    assert ids == [i for i in ITER1_IDS if i in ids] and len(ids) + skipped == len(ITER1_IDS)
    assert skipped <= 2, "the tiny prompt limit (128 tokens) leaves out only the longest prompts"
    assert all(len(r["responses"]) == 5 for r in rows)
    # the progress line: prompts done of the shard's, tokens/s, the time taken
    assert re.search(
        rf"shard000-of-001: {len(ids)}/{len(ids)} prompts \(100%\), [\d,]+ tokens/s, done in",
        result.stderr,
    )


def test_the_vllm_backend_without_vllm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, as where it is absent
    cfg = gen_cfg("model=tiny-mistral", "generation=vllm", "data.max_prompts=2")
    environ = dict(os.environ)
    with pytest.raises(
        StageError,
        match=r"generation=vllm needs vLLM, which cannot be imported here .*make install-vllm",
    ):
        run_recorded(cfg, "generate")
    added = set(os.environ) - set(environ)
    assert not added & set(QUIET_ENV), "the settings given to vLLM are taken back"


def test_a_missing_previous_checkpoint_names_the_command_that_makes_it():
    with pytest.raises(
        StageError, match=r"iteration 1's checkpoint, which is not trained: .*; finish iteration 1"
    ) as refused:
        run_recorded(gen_cfg("model=tiny-mistral", "iter=2"), "generate")
    assert refused.value.fix == "stage=all iter=1"


def test_a_split_whose_every_prompt_is_too_long_stops_and_records_nothing(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt_id": f"q{i}", "prompt": f"Question {i}: " + "more " * 60}) + "\n"
            for i in range(2)
        )
    )
    # 4 tokens leave no room for any text in the chat template: raising the limit is the fix
    for limit, fix in [(4, None), (40, "generation.long_prompts=truncate")]:
        for shard in range(3):  # shard 2 of 3 has no prompt of its own: it refuses too
            cfg = gen_cfg(
                "model=tiny-mistral",
                f"data.prompts={path}",
                f"generation.max_prompt_length={limit}",
                f"generation.shard={shard}",
                "generation.num_shards=3",
            )
            with pytest.raises(
                GenerationError,
                match=rf"^all 2 prompts read from {re.escape(str(path))} are longer than "
                rf"generation\.max_prompt_length={limit} tokens in the chat template \(the "
                r"shortest takes \d+\), so all are skipped and none is left to answer; raise "
                r"generation\.max_prompt_length to \d+ or more",
            ) as refused:
                run_recorded(cfg, "generate")
            assert refused.value.fix == fix
            assert ("long_prompts=truncate to keep their end" in str(refused.value)) == bool(fix)
    stage = cfg.stage_dir("generate")
    assert not list(stage.glob("responses-shard*.jsonl")) and not (stage / "done.json").exists()


def test_a_shard_left_without_prompts_goes_on_while_the_split_has_some(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt_id": "long", "prompt": "Tell me more. " * 200},
        {"prompt_id": "short", "prompt": "Hi"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # shard 0's one prompt is too long, shard 2 has none (more shards than prompts)
    for shard in range(3):
        run_recorded(
            gen_cfg(
                "model=tiny-mistral",
                f"data.prompts={path}",
                "generation.max_prompt_length=40",
                f"generation.shard={shard}",
                "generation.num_shards=3",
            ),
            "generate",
        )
    cfg = gen_cfg("model=tiny-mistral", f"data.prompts={path}", "generation.num_shards=3")
    stage = cfg.stage_dir("generate")
    assert [r["prompt_id"] for r in responses(stage)] == ["short"]
    counts = json.loads((stage / "done.json").read_text())["counts"]
    assert counts["generated"] == 1 and counts["skipped_too_long"] == 1 and counts["shards"] == 3


def test_the_eval_answers_refuse_instructions_all_too_long(tiny_dir):
    from src.evaluation.answers import Answerer, answers, cache_dir
    from src.stages.eval import load_instructions

    cfg = gen_cfg("model=tiny-mistral", "eval.max_prompt_length=4")
    instructions = load_instructions(cfg)
    who = Answerer("base", str(tiny_dir / "tiny-mistral"), "tiny-mistral@test")
    with pytest.raises(
        GenerationError,
        match=rf"^all {len(instructions)} prompts read from {re.escape(cfg.data.eval_prompts)} "
        r"are longer than "
        r"eval\.max_prompt_length=4 tokens .*; raise eval\.max_prompt_length to \d+ or more$",
    ) as refused:
        answers(cfg, who, instructions)
    assert refused.value.fix is None  # an instruction is answered whole: nothing to truncate
    assert not list(cache_dir(cfg, "").parent.rglob("done.json"))
