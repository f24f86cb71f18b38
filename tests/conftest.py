"""Shared test set-up: no test may touch the network, so every hub client is offline."""

import os
from pathlib import Path

import pytest

from src.core import threads

pytest_plugins = ["tests.support.durations"]  # every test's time, written and summed up at the end


def pin_worker(env=os.environ) -> None:
    """A pytest-xdist worker runs on one of the CPUs the run may use, its own (worker gwN on
    the N-th, round the list): its processes then choose their threads for one CPU
    (src/core/threads.py) and never share a core with the other workers' threads, whose
    OpenMP waits spin on it. Beside each other on 2 cores, two runs of the pipeline and eval
    tests took 259 s pinned, 279 s not."""
    worker = env.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        cpus = threads.allowed_cpus(env)
        os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})
        if env.get("OMP_NUM_THREADS") == env.get(threads.CHOSEN_MARK):
            # chosen by the controller, for all its CPUs: threads.configure() chooses again
            env.pop("OMP_NUM_THREADS", None)
            env.pop(threads.CHOSEN_MARK, None)


pin_worker()
threads.configure()  # as python -m src.main does, before any test loads torch

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed JIT-compiles a communication op on first use (~20 s): compile it once, keep it
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    os.path.join(os.path.dirname(__file__), "..", ".cache", "torch_extensions"),
)


# --- parallel runs ------------------------------------------------------------------------------
# `make test` runs the suite on pytest-xdist workers (`-n auto --dist loadgroup`): one worker per
# CPU this process may use, each a pytest session of its own on a CPU of its own (pin_worker
# above). What two workers must not do at
# once runs on one worker, in one group (xdist_group below):
# - "slurm": the SLURM tests (one cluster per session: a second worker would start another).
# - "vllm-<module>": a module's tests that start vLLM's engines
#   (tests/generation/test_vllm_backend.py starts each tiny model's once for the module). Two
#   modules' engines may run side by side, one on each worker: each binds its threads to its
#   worker's CPU and holds a 1 GiB KV cache (the machine has 24 GiB), so the engines' tests are
#   not one serial chain beside the rest.
# - a module whose tests share a module-scoped set-up (SHARED_SETUP, by its path under tests/):
#   made once, on one worker, and used in the module's order, as in a run without workers.
# The rest is safe side by side: the tiny models are built under a file lock each
# (src/tiny/models.py), DeepSpeed's extension under torch's own in TORCH_EXTENSIONS_DIR, every test
# writes under its own tmp_path (each worker has its own base), and a training of several
# processes on one machine meets at a free port (src/training/launch.py), not a fixed one.
TESTS = Path(__file__).parent
SHARED_SETUP = {
    "config/test_config_snapshot.py": "every composition, resolved",
    "evaluation/test_eval_leaderboard.py": "the leaderboard's tasks run once on their fixture datasets",
    "stages/test_eval_stage.py": "iteration 1 trained and evaluated",
    "tools/test_export.py": "two iterations with their model cards",
    "pipeline/test_learning.py": "one runs folder: the base model answers the eval set once",
    "training/test_lora.py": "one process's first LoRA step, which both strategies compare with",
    "pipeline/test_pipeline.py": "two iterations through the command line",
    "stages/report/test_tracking_curves.py": "three tracked iterations, read back by wandb's reader",
    "training/test_training.py": "one process's first steps, which every strategy compares with",
}


def xdist_group(item: pytest.Item) -> str | None:
    """The group `item` runs in under `--dist loadgroup` (None: any worker, beside anything)."""
    module = item.path.name.removesuffix(".py")
    if item.get_closest_marker("slurm"):
        return "slurm"
    if item.get_closest_marker("vllm"):
        return f"vllm-{module}"
    return module if item.path.relative_to(TESTS).as_posix() in SHARED_SETUP else None


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown to a run without it
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker per CPU this process may use (its affinity, SLURM's allocation and a
    cgroup quota: src/core/threads.py), not one per core of the machine."""
    return len(threads.allowed_cpus())


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = xdist_group(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # the slow first, so that the workers end together: xdist hands out the groups with the
        # most tests first, then the single tests in this order
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


GROUPS_LOST = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)  # after xdist's own hook: the groups must have reached the ids
def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `--dist loadgroup`, notice where the groups did not take: xdist sends a group to one
    worker by the `@<group>` it appends to each grouped test's id, which pytest 9.2's node ids no
    longer take (pytest-xdist#1386): the grouped tests would run spread out, silently."""
    if not getattr(session.config.option, "loadgroup", False):  # set on each worker by xdist
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group")]
    if lost and not any("@" in nodeid for nodeid in lost):
        session.config.stash[GROUPS_LOST] = (
            f"--dist loadgroup: the grouped tests have no @<group> in their ids ({lost[0]}): "
            "this pytest and pytest-xdist do not keep a group on one worker (pytest-xdist#1386); "
            "install the dev extra's versions (make install), or run with PYTEST_WORKERS=0"
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    why = item.config.stash.get(GROUPS_LOST, None)
    if why is not None and item.get_closest_marker("xdist_group"):
        pytest.fail(why, pytrace=False)  # not run beside what it must not run beside


@pytest.fixture(scope="session")
def tiny_dir():
    """The folder holding the tiny models, built once into <repo>/.cache/tiny and reused (each
    under a file lock: workers side by side build it once). Each worker starts at another model,
    so that on a fresh clone the workers build different ones at once instead of queueing."""
    from src.tiny import models as tiny

    names = tiny.PIPELINE_NAMES
    start = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    for name in names[start % len(names) :] + names[: start % len(names)]:
        tiny.ensure(name, tiny.DEFAULT_CACHE_DIR)
    return tiny.DEFAULT_CACHE_DIR


@pytest.fixture
def runs_in_tmp(tmp_path, monkeypatch):
    """The runs root (`SELFPLAY_RUNS`) under this test's tmp_path: no run of another test is
    met, reused or refused."""
    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def blender(tiny_dir):
    """The tiny PairRM as llm-blender loads it (src/ranking/blender_compat.py)."""
    from src.ranking.blender_compat import load_pairrm

    return load_pairrm(str(tiny_dir / "tiny-pairrm"))


@pytest.fixture
def alpaca_eval_offline(tmp_path, monkeypatch):
    """alpaca_eval's glm_winrate module, its one Hub download answered by a local df_gamed.csv
    (AlpacaEval's gamed baselines and instruction difficulties, which the minimal GLM does not
    read: only the columns it indexes, made up here)."""
    import numpy as np
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    from tests.support.helpers import ALPACA_EVAL_INSTRUCTIONS

    gamed = tmp_path / "df_gamed.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "index": np.arange(ALPACA_EVAL_INSTRUCTIONS),
            "instruction_difficulty": rng.normal(0, 1, ALPACA_EVAL_INSTRUCTIONS),
            "model": "gamed",
        }
    ).to_csv(gamed, index=False)

    def download(repo_id, filename, **_):
        assert (repo_id, filename) == ("tatsu-lab/alpaca_eval", "df_gamed.csv")
        return str(gamed)

    monkeypatch.setattr(glm_winrate, "hf_hub_download", download)
    return glm_winrate


# A GPU, as the processes the stages start see it: the one part of the GPU path faked here
FAKE_GPU_SITE = """
import torch

torch.cuda.is_available = lambda: True
torch.cuda.mem_get_info = lambda device=None: ({free}, {total})
torch.cuda.is_bf16_supported = lambda including_emulation=True: {bf16}
"""


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """`fake_gpu(free, total, bf16)`: CUDA is there for this process, and a process it starts
    reads that GPU (a sitecustomize on PYTHONPATH); in this process anything that would open a
    CUDA context fails the test (no stage may hold one before vLLM's engine starts)."""
    import torch

    from src.core import devices

    def context_opened(*args, **kwargs):
        raise AssertionError("a CUDA context was opened in the stage's own process")

    def install(free: float = 70e9, total: float = 80e9, bf16: bool = True) -> None:
        site = tmp_path / "fake-gpu-site"
        site.mkdir(exist_ok=True)
        code = FAKE_GPU_SITE.format(free=int(free), total=int(total), bf16=bf16)
        (site / "sitecustomize.py").write_text(code)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), repo]))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # counted without a context
        for name in ("mem_get_info", "is_bf16_supported", "current_device", "init", "_lazy_init"):
            monkeypatch.setattr(torch.cuda, name, context_opened)
        devices.gpu_computes_bf16.cache_clear()

    yield install
    devices.gpu_computes_bf16.cache_clear()


@pytest.fixture
def lineage(tiny_dir, tmp_path):
    """`lineage(name)`: a copy of the tiny lineage `name` (tests/support/lineages.py, made once) at
    tmp_path/runs, for this test to change: a lineages.Copy (root, stderr, made_in)."""
    from tests.support import lineages

    def copy(name: str, dest: Path | None = None) -> lineages.Copy:
        return lineages.copy(name, tiny_dir, dest or tmp_path / "runs")

    return copy
