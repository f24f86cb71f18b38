"""The Hydra config tree: every combination composes, presets carry the recipes, bad input fails.

Configs are composed through Hydra's own compose API (the same composition `python -m src.main`
does) and validated with the project's schemas; the command-line behaviour is checked by running
the real entry point in a subprocess.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import is_dataclass
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import pytest
from omegaconf import OmegaConf

from src.config import (
    PAIRS_STAGE_FILE,
    REPO_ROOT,
    Config,
    ConfigError,
    previous_policy,
    validate,
)
from src.config.checks import SBATCH_ALIASES, SBATCH_OPTIONS, SBATCH_SET_BY, check_sbatch_option
from tests.support.helpers import CONF, compose_cfg, compose_raw, entry


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


MODELS = options("model")
METHODS = options("method")
HARDWARE = options("hardware")
EXPERIMENTS = [None, *options("experiment")]
# The only preset that cannot start without a user-supplied file (its hybrid pool).
PRESET_REQUIREMENTS = {"gemma-2-9b-it-wpo-hb": ["data.external_responses=/data/gpt4_answers.jsonl"]}


pytestmark = pytest.mark.usefixtures("runs_in_tmp")  # tests/conftest.py


def test_groups_have_the_options_the_project_promises():
    assert set(MODELS) >= {
        "mistral-7b-instruct-v0.2",
        "gemma-2-9b-it",
        "tiny-mistral",
        "tiny-gemma2",
    }
    assert set(METHODS) == {"sppo", "wpo", "dpo"}
    assert set(options("generation")) >= {"hf", "vllm"}
    assert set(options("ranker")) >= {
        "pairrm",
        "reward-model",
        "tiny-pairrm",
        "tiny-reward-model",
        "tiny-judge",
        "skywork-reward-v2-llama-3.1-8b",
        "skywork-reward-v2-qwen3-1.7b",
    }
    assert set(HARDWARE) >= {"cpu", "gpu-1", "node-8gpu", "multinode"}
    assert any(h.startswith("slurm-") for h in HARDWARE)
    assert set(options("logger")) == {"wandb", "none"}
    assert set(options("eval")) == {"default", "tiny"}
    assert set(options("experiment")) == {
        "gemma-2-9b-it-sppo",
        "mistral-7b-instruct-sppo",
        "gemma-2-9b-it-wpo-hb",
        "tiny-wpo-hb",
        "mistral-7b-instruct-sppo-qlora",
        "gemma-2-9b-it-sppo-qlora",
    }


def test_the_tiny_wpo_hb_preset_is_wpo_hb_at_toy_scale():
    c = compose_cfg("experiment=tiny-wpo-hb")
    assert (c.model.name, c.method.name.value, c.ranker.name) == (
        "tiny-mistral",
        "wpo",
        "tiny-reward-model",
    )
    assert c.ranker.kind.value == "reward_model" and c.method.pair_selection.value == "wpo_tiebreak"
    assert c.hardware.name == "cpu" and Path(c.data.external_responses).is_file()


def model_for(e: int, m: int, h: int) -> str:
    """The model composed with EXPERIMENTS[e], METHODS[m] and HARDWARE[h] below."""
    return MODELS[(e + m * len(HARDWARE) + h) % len(MODELS)]


@pytest.mark.slow  # ~170 compositions, ~7 s an experiment: make test, not the edit-test loop
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_method_hardware_experiment_combination_composes_with_every_model(experiment):
    """Each (experiment, method, hardware) composes with one of the models, chosen so that across
    the experiments every (model, method, hardware) triple and every (model, experiment) pair
    composes too; validation passes or rejects only an impossible batch split. (Every model with
    every combination is 4x the compositions and no file more: a model file is merged as is.)"""
    failures, valid, models = [], 0, set()
    e = EXPERIMENTS.index(experiment)
    for (m, method), (h, hardware) in itertools.product(enumerate(METHODS), enumerate(HARDWARE)):
        model = model_for(e, m, h)
        models.add(model)
        overrides = [f"model={model}", f"method={method}", f"hardware={hardware}"]
        if experiment:
            overrides += [f"experiment={experiment}", *PRESET_REQUIREMENTS.get(experiment, [])]
        raw = compose_raw(*overrides)
        try:
            cfg = validate(raw)
        except ConfigError as exc:
            t = raw.training
            world = raw.hardware.num_nodes * raw.hardware.processes_per_node
            if t.global_batch_size % (t.per_device_batch_size * world) != 0:
                assert str(exc).startswith("training.global_batch_size="), (overrides, exc)
                continue
            if t.peft == "qlora" and (
                raw.hardware.device == "cpu" or raw.hardware.distributed == "deepspeed"
            ):  # a 4-bit base needs CUDA, and DeepSpeed cannot shard it
                assert str(exc).startswith("training.peft='qlora'"), (overrides, exc)
                continue
            failures.append(f"{' '.join(overrides)}: {exc}")
            continue
        valid += 1
        assert cfg.model.name == model
        assert cfg.method.name.value == method
        assert cfg.hardware.name.endswith(hardware.removeprefix("slurm-"))
        assert cfg.method.eta * cfg.method.beta == pytest.approx(1.0)
        assert Path(cfg.run.iter_dir) == Path(cfg.run.dir) / "iter1"
        assert cfg.gradient_accumulation_steps >= 1
    assert not failures, "\n".join(failures)
    assert models == set(MODELS), "every model with this experiment"
    # at least the single-process and 8-GPU hardware; QLoRA: the one-GPU hardware
    one_gpu = (
        compose_raw(f"experiment={experiment}").training.peft == "qlora" if experiment else False
    )
    assert valid >= len(METHODS) * (2 if one_gpu else 4)


def test_the_combinations_cover_every_model_method_hardware_triple():
    """The model chosen for each combination above: across the experiments, every model meets
    every (method, hardware) pair."""
    met = {
        (model_for(e, m, h), m, h)
        for e, m, h in itertools.product(
            range(len(EXPERIMENTS)), range(len(METHODS)), range(len(HARDWARE))
        )
    }
    assert len(met) == len(MODELS) * len(METHODS) * len(HARDWARE)


def test_iter_selects_the_prompt_split_and_the_previous_checkpoint():
    cfg = compose_cfg("method=sppo", "iter=3")
    assert cfg.data.prompts == "UCLA-AGI/data-mistral-7b-instruct-sppo-iter3"
    run_dir = Path(cfg.run.dir)
    assert run_dir == Path(cfg.paths.root) / "mistral-7b-instruct-v0.2" / "sppo" / cfg.run_name
    assert Path(cfg.run.init_policy) == run_dir / "iter2" / "train" / "checkpoint"
    assert cfg.stage_dir("generate") == run_dir / "iter3" / "generate"


def test_each_interpolation_is_parsed_once_and_composes_as_parsed_anew(monkeypatch):
    """The grammar's parse trees are cached per string (src/config/compose.py): a composition
    gives the config it gives with OmegaConf's own parse, and a string that does not parse fails
    every time."""
    from omegaconf import _utils, base, grammar_parser
    from omegaconf.errors import GrammarParseError

    assert base.parse is _utils.parse and base.parse("${iter}") is base.parse("${iter}")
    for _ in range(2):
        with pytest.raises(GrammarParseError):
            base.parse("${iter")
    overrides = ("method=wpo", "iter=2", "hardware=slurm-node-8gpu")
    cached = compose_cfg(*overrides)
    for module in (base, _utils):
        monkeypatch.setattr(module, "parse", grammar_parser.parse)
    assert compose_cfg(*overrides) == cached


def test_iteration_one_starts_from_the_base_model():
    cfg = compose_cfg("iter=1")
    assert cfg.run.init_policy == "mistralai/Mistral-7B-Instruct-v0.2"
    assert previous_policy(2, "base", "/r") == "/r/iter1/train/checkpoint"


@pytest.mark.parametrize("iteration", [1, 2, 3])
def test_tiny_models_read_the_projects_own_prompt_splits(iteration):
    cfg = compose_cfg("model=tiny-gemma2", f"iter={iteration}")
    prompts = Path(cfg.data.prompts)
    assert prompts == REPO_ROOT / "data" / "prompts" / f"iter{iteration}.jsonl"
    assert prompts.is_file() and Path(cfg.data.eval_prompts).is_file()
    assert cfg.hardware.name == "cpu" and cfg.ranker.name == "tiny-pairrm"
    assert Path(cfg.model.path) == Path(cfg.paths.tiny_dir) / "tiny-gemma2"


def test_command_line_choices_win_over_what_a_tiny_model_selects():
    cfg = compose_cfg("model=tiny-mistral", "hardware=gpu-1", "data=sppo", "ranker=pairrm")
    assert (cfg.hardware.name, cfg.data.name, cfg.ranker.name) == ("gpu-1", "sppo", "pairrm")


def test_the_eval_judge_is_the_ranker_unless_one_is_chosen():
    real = compose_cfg()
    assert real.eval.judge is None  # the real recipes: point eval.judge at another judge
    tiny = compose_cfg("model=tiny-gemma2", "method=dpo")
    assert (tiny.eval.judge.name, tiny.eval.judge.kind.value) == ("tiny-judge", "reward_model")
    assert tiny.eval.judge.model != tiny.ranker.model
    chosen = compose_cfg("model=tiny-mistral", "ranker@eval.judge=tiny-pairrm")
    assert chosen.eval.judge == chosen.ranker  # any ranker option, in the ranker's schema
    assert compose_cfg("model=tiny-mistral", "eval.judge=null").eval.judge is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.judge.kind=gpt4", r"^eval\.judge\.kind: Invalid value 'gpt4', expected"),
        ("eval.judge.batch_size=0", r"^eval\.judge\.batch_size=0: must be > 0$"),
        ("eval.judge.win_prob=direct", r"^eval\.judge\.win_prob='direct': 'direct' needs PairRM"),
    ],
)
def test_a_bad_eval_judge_value_names_its_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_cfg("model=tiny-mistral", override)


def test_the_tiny_sppo_eta_is_the_toys_and_the_command_line_wins():
    for model in ("tiny-mistral", "tiny-gemma2"):
        assert compose_cfg(f"model={model}").method.eta == 10.0
        assert compose_cfg(f"model={model}", "method.eta=1000").method.eta == 1000.0
    assert compose_cfg("model=tiny-mistral", "method=wpo").method.beta == 0.01


def test_sppo_sets_eta_and_beta_follows():
    cfg = compose_cfg("method=sppo", "method.eta=5000")
    assert cfg.method.beta == pytest.approx(1 / 5000)
    assert cfg.run_name == "eta5000-lr5e-07-K5"
    wpo = compose_cfg("method=wpo", "method.beta=0.05")
    assert wpo.method.eta == pytest.approx(20.0)


def test_a_training_on_a_pairs_file_of_ones_own_is_a_lineage_of_its_own():
    """run_name's last part says where the pairs come from: K<K> of self-play, or the file a
    training reads (any preset's run name too), so that it never lands in a self-play lineage's
    folder; a run name set by the user stays as it is."""
    assert compose_cfg().run_name == "eta1000-lr5e-07-K5"
    assert compose_cfg(f"training.pairs={PAIRS_STAGE_FILE}").run_name == "eta1000-lr5e-07-K5"
    mine = "training.pairs=tests/data/pairs_tiny.jsonl"
    assert compose_cfg(mine).run_name == "eta1000-lr5e-07-pairs-pairs_tiny"
    wpo_hb = compose_cfg("experiment=tiny-wpo-hb", "data.external_responses=null", mine)
    assert wpo_hb.run_name == "beta0.01-lr0.0001-pairs-pairs_tiny"
    qlora = compose_cfg("experiment=mistral-7b-instruct-sppo-qlora", mine)
    assert qlora.run_name == "eta1000-qlora-lr5e-06-pairs-pairs_tiny"
    other = compose_cfg("training.pairs='${run.iter_dir}/pairs/my pairs (v2).jsonl'")
    assert other.run_name == "eta1000-lr5e-07-pairs-my_pairs_v2_"
    assert compose_cfg(mine, "run_name=mine").run_name == "mine"


def test_default_seeds_are_the_sppo_reference_choice():
    assert compose_cfg().sample_seeds == [0, 50, 100, 150, 200]
    assert compose_cfg("method.K=3").sample_seeds == [0, 50, 100]


# --- the presets carry docs/design.md §6.4 -----------------------------------------------------


def test_mistral_sppo_preset_is_the_reference_recipe():
    c = compose_cfg("experiment=mistral-7b-instruct-sppo", "iter=2")
    assert c.model.path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert c.data.prompts == "UCLA-AGI/data-mistral-7b-instruct-sppo-iter2"
    assert (c.method.name.value, c.method.loss.value, c.method.K) == ("sppo", "sppo", 5)
    assert (c.method.eta, c.method.beta) == (1000.0, pytest.approx(0.001))
    g = c.generation
    assert (g.temperature, g.top_p, g.max_new_tokens) == (0.7, 0.9, 2048)
    assert c.sample_seeds == [0, 50, 100, 150, 200]
    assert c.ranker.kind.value == "pairrm" and c.ranker.model == "llm-blender/PairRM"
    assert (c.ranker.source_max_length, c.ranker.candidate_max_length) == (1224, 412)
    t = c.training
    assert (t.optimizer.value, t.learning_rate, t.lr_scheduler.value) == ("rmsprop", 5e-7, "linear")
    assert (t.warmup_ratio, t.num_epochs, t.global_batch_size) == (0.1, 1.0, 64)
    assert (t.max_length, t.max_prompt_length, t.seed) == (1024, 512, 42)
    assert t.gradient_checkpointing
    assert (c.hardware.world_size, c.hardware.distributed.value, c.hardware.zero_stage) == (
        8,
        "deepspeed",
        3,
    )
    assert (t.per_device_batch_size, c.gradient_accumulation_steps) == (8, 1)


@pytest.mark.parametrize(
    ("experiment", "full", "path"),
    [
        (
            "mistral-7b-instruct-sppo-qlora",
            "mistral-7b-instruct-sppo",
            "mistralai/Mistral-7B-Instruct-v0.2",
        ),
        ("gemma-2-9b-it-sppo-qlora", "gemma-2-9b-it-sppo", "google/gemma-2-9b-it"),
    ],
)
def test_one_gpu_qlora_presets_keep_the_recipe_but_the_adapter(experiment, full, path):
    """One GPU, a 4-bit base under a LoRA adapter, the recipe's global batch of 64 as 2 x 32
    accumulation steps, gradient checkpointing; every other recipe value as the full preset's."""
    c, recipe = compose_cfg(f"experiment={experiment}"), compose_cfg(f"experiment={full}")
    assert c.model.path == path and c.hardware.name == "gpu-1" and c.hardware.world_size == 1
    t = c.training
    assert (t.peft.value, t.lora.rank, t.lora.alpha) == ("qlora", 16, 32.0)
    assert len(t.lora.target_modules) == 7
    assert (t.global_batch_size, t.per_device_batch_size, c.gradient_accumulation_steps) == (
        64,
        2,
        32,
    )
    assert t.gradient_checkpointing and t.learning_rate == 5e-6
    assert c.generation.backend.value == "hf" and c.run_name == "eta1000-qlora-lr5e-06-K5"
    changed = {"peft", "learning_rate", "per_device_batch_size", "pairs"}  # pairs: in its run dir
    for key in vars(recipe.training):
        if key not in changed:
            assert getattr(t, key) == getattr(recipe.training, key), key
    assert (c.method, c.data, c.ranker) == (recipe.method, recipe.data, recipe.ranker)


def test_gemma_sppo_preset_splits_the_batch_four_by_two():
    c = compose_cfg("experiment=gemma-2-9b-it-sppo")
    assert c.model.path == "google/gemma-2-9b-it" and c.method.eta == 1000.0
    assert (c.training.per_device_batch_size, c.gradient_accumulation_steps) == (4, 2)
    assert c.training.global_batch_size == 64 and c.training.optimizer.value == "rmsprop"
    # the same split applies to gemma x sppo without the preset (model_method specialisation)
    assert compose_cfg("model=gemma-2-9b-it", "method=sppo").training.per_device_batch_size == 4


SKYWORK_TRAINED_TOKENS = 16_384  # Skywork-Reward-V2's longest training conversation (its card)


@pytest.mark.parametrize(
    "preset", ["skywork-reward-v2-llama-3.1-8b", "skywork-reward-v2-qwen3-1.7b"]
)
@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e and "tiny" not in e])
def test_a_skywork_judge_reads_a_recipes_whole_conversation_within_its_training_length(
    preset, experiment
):
    """A plain one-label reward model (no remote code) shown the raw prompt in its own template,
    whose cuts hold every recipe's prompt and response limits (counted in the policy's tokens)
    and stay within the conversations it was trained on."""
    c = compose_cfg(f"experiment={experiment}", f"ranker={preset}",
                    *PRESET_REQUIREMENTS.get(experiment, []))  # fmt: skip
    r, g = c.ranker, c.generation
    assert (r.name, r.kind.value, r.prompt_format.value) == (preset, "reward_model", "raw")
    assert not compose_cfg(f"ranker={preset}").ranker.trust_remote_code  # WPO-HB's opts in
    assert r.source_max_length >= max(g.max_prompt_length, c.eval.max_prompt_length)
    assert r.candidate_max_length >= max(g.max_new_tokens, c.eval.max_new_tokens)
    assert r.source_max_length + r.candidate_max_length < SKYWORK_TRAINED_TOKENS


def test_wpo_hb_preset_is_the_reference_recipe():
    c = compose_cfg("experiment=gemma-2-9b-it-wpo-hb", *PRESET_REQUIREMENTS["gemma-2-9b-it-wpo-hb"])
    assert c.model.path == "google/gemma-2-9b-it"
    assert (
        c.data.prompts == "HuggingFaceH4/ultrafeedback_binarized" and c.data.split == "train_prefs"
    )
    assert c.data.external_responses == "/data/gpt4_answers.jsonl"
    m = c.method
    assert (m.name.value, m.loss.value, m.beta, m.wpo_weight, m.wpo_clamp) == (
        "wpo",
        "sigmoid",
        0.01,
        True,
        1.0,
    )
    assert m.pair_selection.value == "wpo_tiebreak"
    g = c.generation
    assert (g.temperature, g.top_p, g.max_new_tokens) == (0.8, 0.95, 4096)
    assert c.sample_seeds == [13, 21, 42, 79, 100]
    assert c.ranker.kind.value == "reward_model" and c.ranker.trust_remote_code
    t = c.training
    assert (t.optimizer.value, t.learning_rate, t.lr_scheduler.value) == ("adamw", 1e-6, "cosine")
    assert (t.num_epochs, t.global_batch_size, t.per_device_batch_size) == (2.0, 128, 1)
    assert (t.max_length, t.max_prompt_length, t.seed) == (2048, 1800, 1)
    assert c.gradient_accumulation_steps == 16


def test_mistral_wpo_differs_from_gemma_wpo_as_the_recipe_says():
    c = compose_cfg("model=mistral-7b-instruct-v0.2", "method=wpo")
    t = c.training
    assert (t.optimizer.value, t.learning_rate, t.num_epochs) == ("adamw", 5e-7, 1.0)
    assert (t.max_length, t.max_prompt_length, t.global_batch_size) == (1024, 512, 128)


def test_full_weights_in_fp16_are_refused_without_deepspeed_naming_what_trains():
    """fp16 needs loss scaling, which unscales fp32 gradients: the Trainer fails deep inside its
    first step on fp16 weights. An adapter (fp32) or DeepSpeed (fp32 master weights) trains."""
    with pytest.raises(ConfigError) as refused:
        compose_cfg("model=tiny-mistral", "training.precision=float16")
    assert str(refused.value).startswith("training.precision='float16': full weights in fp16")
    assert "hardware.distributed=deepspeed" in str(refused.value)
    compose_cfg("model=tiny-mistral", "training.precision=float16", "training.peft=lora")
    compose_cfg("training.precision=float16", "hardware=node-8gpu")


def test_deepspeed_on_cpu_in_16_bits_is_refused_before_the_trainer_fails_on_it():
    with pytest.raises(ConfigError) as refused:
        compose_cfg(
            "model=tiny-mistral", "hardware.distributed=deepspeed", "training.precision=bfloat16"
        )
    assert str(refused.value).startswith("training.precision='bfloat16': DeepSpeed on CPU")
    compose_cfg("model=tiny-mistral", "hardware.distributed=deepspeed")  # fp32: trains


def test_wpo_hb_preset_refuses_to_start_without_its_hybrid_pool():
    with pytest.raises(ConfigError, match=r"^data\.external_responses is required"):
        compose_cfg("experiment=gemma-2-9b-it-wpo-hb")


def test_slurm_hardware_switches_hydra_to_the_submitit_launcher():
    raw = compose_raw("hardware=slurm-node-8gpu", "hardware.slurm.partition=gpu", hydra_node=True)
    assert raw.hydra.runtime.choices["hydra/launcher"] == "slurm"
    launcher = OmegaConf.to_container(raw.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["nodes"]) == ("gpu", 8, 1)
    cpu = compose_raw("hardware=slurm-cpu", hydra_node=True)
    assert OmegaConf.to_container(cpu.hydra.launcher, resolve=True)["gpus_per_node"] == 0
    assert (
        compose_raw("hardware=gpu-1", hydra_node=True).hydra.runtime.choices["hydra/launcher"]
        == "basic"
    )


def test_libraries_log_under_their_own_names_warnings_up_on_stderr(capsys):
    """The logging Hydra sets before the job: a library's INFO records (lm-eval's, hundreds an
    eval) dropped, its warnings on stderr under its own name, never Hydra's `[HYDRA]` on stdout."""
    import logging.config

    raw = compose_raw(hydra_node=True)
    configured = [logging.getLogger(), logging.getLogger("hydra")]
    before = [(log.level, log.propagate, list(log.handlers)) for log in configured]
    logging.config.dictConfig(OmegaConf.to_container(raw.hydra.hydra_logging, resolve=True))
    try:
        logging.getLogger("lm_eval.evaluator").info("building the task")
        logging.getLogger("lm_eval.evaluator").warning("a task without a split")
        chatty = logging.getLogger("vllm.engine")  # a library that sets its own level, INFO
        chatty.setLevel(logging.INFO)
        chatty.info("an engine step")
        chatty.setLevel(logging.NOTSET)
    finally:  # as it was: the handlers write to this test's captured stderr
        for log, (level, propagate, handlers) in zip(configured, before, strict=True):
            log.setLevel(level)
            log.propagate = propagate
            log.handlers[:] = handlers
    said = capsys.readouterr()
    assert said.out == "" and said.err == "[lm_eval.evaluator] WARNING: a task without a split\n"


def test_every_config_file_says_what_it_is_and_how_to_launch_it():
    missing = []
    for path in sorted(CONF.rglob("*.yaml")):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
        if not header or "python -m src.main" not in "\n".join(header):
            missing.append(str(path.relative_to(REPO_ROOT)))
    assert not missing, f"config files without a header comment naming the command: {missing}"


def test_the_readmes_table_of_config_groups_names_every_option():
    """Each row of README's table whose first cell is a config group lists every file of that
    group (model_method's are applied automatically, by name)."""
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| ", (REPO_ROOT / "README.md").read_text(), re.M)
    unlisted = {}
    for group, options in rows:
        if (CONF / group).is_dir() and group != "model_method":
            listed = set(re.findall(r"`([\w.-]+)`", options))
            files = {p.stem for p in (CONF / group).glob("*.yaml")}
            if files - listed:
                unlisted[group] = sorted(files - listed)
    assert len(rows) >= 10 and not unlisted, f"README's config table lacks: {unlisted}"


# --- one home for every value: a config file holds only what it chooses or changes -------------


def file_composition(path: Path) -> list[str] | None:
    """The overrides of the plainest composition that reads `path` (None: not a config node)."""
    rel = path.relative_to(CONF).with_suffix("")
    group, name = str(rel.parent), rel.name
    if group == ".":
        return []  # config.yaml
    if group == "model_method":
        model, method = name.rsplit("_", 1)
        return [f"model={model}", f"method={method}"]
    if group == "hardware/slurm":
        return ["hardware=slurm-cpu"]
    if group.startswith("hydra"):
        return None  # Hydra's own node: no schema default to repeat
    return [f"{group}={name}", *PRESET_REQUIREMENTS.get(name, [])]


def own_values(path: Path) -> tuple[dict, str]:
    """The leaves a file sets itself (its body, without `defaults`), by full key, and the
    header that sets its package."""
    text = path.read_text()
    body = OmegaConf.to_container(OmegaConf.create(text), resolve=False) or {}
    body.pop("defaults", None)
    rel = path.relative_to(CONF).parent
    package = "" if "@package _global_" in text or str(rel) == "." else str(rel).replace("/", ".")
    leaves = {}

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            leaves[prefix.rstrip(".")] = node

    walk(body, f"{package}." if package else "")
    headers = [ln for ln in text.splitlines() if ln.startswith("# @package")]
    return leaves, "\n".join(headers)


@pytest.mark.slow
def test_no_config_file_repeats_what_it_would_get_anyway(tmp_path):
    """Each value a file sets differs from what the composition would hold without it: the
    schema's default (src/config/) or what the options it builds on chose. A repeated value is
    a second home for one fact: remove it from the file."""
    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    repeated = []
    for path in sorted(CONF.rglob("*.yaml")):
        overrides = file_composition(path)
        if overrides is None:
            continue
        leaves, header = own_values(path)
        if not leaves:
            continue
        shutil.rmtree(conf, ignore_errors=True)
        shutil.copytree(CONF, conf)
        defaults = OmegaConf.create(path.read_text()).get("defaults")
        stripped = {"defaults": OmegaConf.to_container(defaults)} if defaults else {}
        (conf / path.relative_to(CONF)).write_text(f"{header}\n{OmegaConf.to_yaml(stripped)}")
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            without = compose("config", overrides=overrides)
        plain = OmegaConf.create(OmegaConf.to_container(without, resolve=False, enum_to_str=True))
        for key, value in leaves.items():
            if key.startswith("hydra."):  # Hydra's own settings
                continue
            if OmegaConf.select(plain, key, throw_on_missing=False) == value:
                repeated.append(f"{path.relative_to(REPO_ROOT)}: {key}: {value!r}")
    assert not repeated, "values a file repeats:\n" + "\n".join(repeated)


# --- bad input: in-process validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.eta=-1", r"^method\.eta=-1\.0: must be > 0$"),
        ("iter=-1", r"^iter=-1: must be >= 0"),
        (
            "iter=0",
            r"^iter=0: iteration 0 is the base policy \(run\.init_policy\) itself, which only "
            r"stage=eval evaluates, not stage=all; iterations count from 1$",
        ),
        ("method.K=1", r"^method\.K=1: must be >= 2"),
        ("+method.foo=1", r"^unknown config key 'method\.foo'; method accepts: name, loss, K, eta"),
        ("iter=abc", r"^iter: Value 'abc' of type 'str' could not be converted to Integer$"),
        ("stage=bogus", r"^stage: Invalid value 'bogus', expected one of \[all, generate"),
        ("method.beta=0.5", r"^method\.beta=0\.5: must equal 1/method\.eta"),
        ("generation.top_p=0", r"^generation\.top_p=0\.0: must be in \(0, 1\]$"),
        (
            "training.max_length=100",
            r"^training\.max_length=100: must be > training\.max_prompt_length",
        ),
        ("training.lm_head_chunk=0", r"^training\.lm_head_chunk=0: must be > 0$"),
        ("generation.seeds=[1,2]", r"^generation\.seeds=\[1, 2\]: needs one seed per sample"),
        (
            "generation.seeds=[1,2,1,3,2]",
            r"^generation\.seeds=\[1, 2, 1, 3, 2\]: repeats \[1, 2\]: samples with the same seed",
        ),
        (
            "generation.temperature=0",
            r"^generation\.temperature=0\.0: 0 decodes greedily: the method\.K=5",
        ),
        (
            "hardware.processes_per_node=3",
            r"^hardware\.distributed='none': 'none' needs exactly one",
        ),
        (
            "generation.shard=4",
            r"^generation\.shard=4: must be in \[0, generation\.num_shards=1\)$",
        ),
        (
            "method.eta=abc",
            r"^method\.eta: Value 'abc' of type 'str' could not be converted to Float$",
        ),
        (
            "eval.reference=iter0",
            r"^eval\.reference='iter0': iterations count from 1 \(the base model is 'base'\)$",
        ),
        ("eval.reference=iter2", r"^eval\.reference='iter2': must be an iteration up to iter=1"),
        ("eval.confidence=95", r"^eval\.confidence=95\.0: must be in \(0, 1\)$"),
        (
            "eval.judged_by=.hidden",
            r"^eval\.judged_by='\.hidden': names the folder of an eval by other judges "
            r"\(eval/vs-<reference>@<name>\): letters, digits",
        ),
        ("eval.bootstrap=0", r"^eval\.bootstrap=0: must be > 0$"),
        ("eval.outcome=hard", r"^eval\.outcome: Invalid value 'hard', expected one of \[discrete"),
        *(
            (
                f"eval.reference={bad}",
                rf"^eval\.reference='{bad}': not a model the eval stage can "
                r"load; allowed: base \(the model itself\), iter<s> \(this lineage's iteration s",
            )
            for bad in ("iterX", "iter-1", "Base", "gpt2", "org/name/extra", "a b")
        ),  # fmt: skip
        ("paths.root=", r"^paths\.root='': names no folder; set a folder for the run directories"),
        (
            "paths.tiny_dir=",
            r"^paths\.tiny_dir='': names no folder; set a folder for the tiny models, or leave "
            r"paths\.tiny_dir unset for its default \(`python -m src\.explain paths\.tiny_dir`",
        ),
        ("paths.hub_cache=' '", r"^paths\.hub_cache=' ': names no folder; set a folder for the"),
        (
            "data.prompts=",
            r"^data\.prompts='': names no prompts; point it at a \.jsonl, \.json or \.parquet "
            r"file, or a Hugging Face dataset id 'owner/name'$",
        ),
        (
            "data.eval_prompts=' '",
            r"^data\.eval_prompts=' ': names no instructions; point it at the evaluation "
            r"instructions \(.*\), or leave it null where no eval runs$",
        ),
        (
            "training.pairs=",
            r"^training\.pairs='': names no file; point it at a \.parquet or \.jsonl file of "
            r"pairs, or leave it unset to train on the pairs stage's$",
        ),
        (
            "pipeline.redo=[rank,foo]",
            r"^pipeline\.redo=\['rank', 'foo'\]: names stages of an iteration: generate, rank, "
            r"pairs, train, eval \(e\.g\. pipeline\.redo=\[rank\]",
        ),
        ("pipeline.redo=all", r"^pipeline\.redo=\['all'\]: names stages of an iteration"),
        ("pipeline.until=all", r"^pipeline\.until='all': names a stage: null runs all"),
    ],
)
def test_bad_values_fail_validation_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_cfg(override)


def test_a_config_error_under_a_tracer_is_still_one_line():
    """Under a tracer (a debugger, a profiler, coverage.py), Python 3.11 leaves OmegaConf's
    re-raised key error its own context: a description that followed the chain to its end never
    returned. Composed in a thread that a trace function watches, the error is the line it is
    without one."""
    overrides = ("hardware=slurm-gpu-1", "+hardware.slurm.foo=1")
    raised: list[BaseException] = []

    def compose_traced() -> None:
        sys.settrace(lambda frame, event, arg: None)
        try:
            compose_cfg(*overrides)
        except ConfigError as error:
            raised.append(error)
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=compose_traced, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "composing under a tracer did not end in 60 s"
    assert [str(e) for e in raised] == [
        "unknown config key 'hardware.slurm.foo'; hardware.slurm accepts: partition, account, qos, "
        "time_min, cpus_per_task, mem_gb, constraint, stages, setup, sbatch, offline"
    ]


# --- numbers: finite, and of a size that what reads them takes ----------------------------------

BIG = 10**20  # an int on the command line (1e20, a float, is refused for an int key as it is typed)
SIZE_RULE = r": must be less than 2\*\*31 = 2147483648 in absolute value$"
SEED_RULE = r": must be in \[0, 2\*\*32\): a seed that numpy and torch take$"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.seed=-1"], r"^training\.seed=-1" + SEED_RULE),
        ([f"training.seed={2**32}"], r"^training\.seed=4294967296" + SEED_RULE),
        ([f"training.seed={BIG}"], rf"^training\.seed={BIG}" + SEED_RULE),
        (["eval.seed=-1"], r"^eval\.seed=-1" + SEED_RULE),
        (["generation.seeds=[0,1,2,3,-1]"], r"^generation\.seeds=\[0, 1, 2, 3, -1\]" + SEED_RULE),
        (["training.num_epochs=inf"], r"^training\.num_epochs=inf: must be finite$"),
        (["training.num_epochs=1e20"], r"^training\.num_epochs=1e\+20" + SIZE_RULE),
        (["training.schedule_epochs=inf"], r"^training\.schedule_epochs=inf: must be finite$"),
        (["training.learning_rate=inf"], r"^training\.learning_rate=inf: must be finite$"),
        (["training.learning_rate=1e20"], r"^training\.learning_rate=1e\+20" + SIZE_RULE),
        (["training.max_grad_norm=inf"], r"^training\.max_grad_norm=inf: must be finite$"),
        (["training.weight_decay=inf"], r"^training\.weight_decay=inf: must be finite$"),
        ([f"training.lora.rank={BIG}"], rf"^training\.lora\.rank={BIG}" + SIZE_RULE),
        (["training.lora.alpha=inf"], r"^training\.lora\.alpha=inf: must be finite$"),
        ([f"training.max_length={BIG}"], rf"^training\.max_length={BIG}" + SIZE_RULE),
        ([f"ranker.source_max_length={BIG}"], rf"^ranker\.source_max_length={BIG}" + SIZE_RULE),
        ([f"eval.bootstrap={BIG}"], rf"^eval\.bootstrap={BIG}" + SIZE_RULE),
        (["eval.bootstrap=100001"], r"^eval\.bootstrap=100001: must be at most 100,000: each"),
        (["eval.temperature=inf"], r"^eval\.temperature=inf: must be finite$"),
        (["generation.temperature=inf"], r"^generation\.temperature=inf: must be finite$"),
        (["generation.temperature=1e20"], r"^generation\.temperature=1e\+20" + SIZE_RULE),
        (["generation.kv_cache_gb=inf"], r"^generation\.kv_cache_gb=inf: must be finite$"),
        ([f"generation.num_shards={BIG}"], rf"^generation\.num_shards={BIG}" + SIZE_RULE),
        ([f"generation.max_new_tokens={BIG}"], rf"^generation\.max_new_tokens={BIG}" + SIZE_RULE),
        (["method.wpo_clamp=inf"], r"^method\.wpo_clamp=inf: must be finite$"),
        (["method.eta=inf"], r"^method\.eta=inf: must be finite$"),  # not its beta = 1/eta = 0
        (["method.eta=1e20"], r"^method\.eta=1e\+20" + SIZE_RULE),
        ([f"iter={BIG}"], rf"^iter={BIG}" + SIZE_RULE),
        ([f"data.max_prompts={BIG}"], rf"^data\.max_prompts={BIG}" + SIZE_RULE),
        (["hardware.gpu_memory_gb=inf"], r"^hardware\.gpu_memory_gb=inf: must be finite$"),
        (["plan.gpu_tflops=inf"], r"^plan\.gpu_tflops=inf: must be finite$"),
        (["plan.generate_tokens_per_s=inf"], r"^plan\.generate_tokens_per_s=inf: must be finite$"),
        *(
            (
                ["hardware=slurm-cpu", f"hardware.slurm.{key}={BIG}"],
                rf"^hardware\.slurm\.{re.escape(key)}={BIG}" + SIZE_RULE,
            )
            for key in ("time_min", "mem_gb", "cpus_per_task", "stages.train.time_min")
        ),
    ],
)
def test_a_number_the_libraries_cannot_take_is_refused_naming_its_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as refused:
        compose_cfg("model=tiny-mistral", *overrides)
    assert len(str(refused.value).splitlines()) == 1


def test_numbers_up_to_their_limits_are_taken():
    cfg = compose_cfg(
        f"training.seed={2**32 - 1}",
        "eval.seed=0",
        f"generation.seeds=[0,1,2,3,{2**32 - 1}]",
        f"training.lm_head_chunk={2**31 - 1}",
        f"plan.prompts={2**31 - 1}",
        "eval.bootstrap=100000",
        "method.eta=1e6",
    )
    assert (cfg.training.seed, cfg.generation.seeds[-1]) == (2**32 - 1, 2**32 - 1)
    assert cfg.training.lm_head_chunk == cfg.plan.prompts == 2**31 - 1
    assert cfg.eval.bootstrap == 100_000 and cfg.run_name.startswith("eta1e+06-")


def numeric_keys(schema: type = Config, prefix: str = "") -> list[tuple[str, type, bool]]:
    """(key, int or float, whether a list of them) of every number of the schema."""
    keys = []
    for name, hint in get_type_hints(schema).items():
        kinds = get_args(hint) or (hint,)
        section = next((k for k in kinds if is_dataclass(k)), None)
        if section is not None:
            keys += numeric_keys(section, f"{prefix}{name}.")
        for kind in kinds:
            listed = get_origin(kind) is list
            if (get_args(kind)[0] if listed else kind) in (int, float):
                keys.append((f"{prefix}{name}", get_args(kind)[0] if listed else kind, listed))
    return keys


@pytest.fixture(scope="module")
def every_section():
    """The config's tree, unresolved, with every optional section (SLURM's, the eval's judge)."""
    raw = compose_raw("model=tiny-mistral", "hardware=slurm-cpu", "ranker@eval.judge=tiny-judge")
    return OmegaConf.to_container(raw, resolve=False)


def refusal(tree: dict, key: str, value) -> str:
    """The one-line refusal of the config `tree` with `key` set to `value`."""
    tree = copy.deepcopy(tree)
    *path, last = key.split(".")
    functools.reduce(dict.__getitem__, path, tree)[last] = value
    with pytest.raises(ConfigError) as refused:
        validate(tree)
    assert len(str(refused.value).splitlines()) == 1, refused.value
    return str(refused.value)


def named(message: str, key: str, tree: dict) -> bool:
    """Whether `message` names `key`, or a key whose value is a copy of it (`${key}`) in a
    section validated before key's (generation.max_prompt_length: ${training.max_prompt_length})."""
    name = re.match(r"[\w.]+", message)[0]
    value = functools.reduce(lambda node, part: node.get(part, {}), name.split("."), tree)
    return name == key or value == f"${{{key}}}"


@pytest.mark.slow
def test_every_numeric_key_refuses_inf_and_a_number_beyond_its_limit(every_section):
    """Every key the schema types int or float, a key added later included: inf is refused
    (an int key's type refuses it), and so is 2**31 (a seed: 2**32) or more."""
    keys = numeric_keys()
    assert len(keys) > 80 and ("generation.seeds", int, True) in keys
    for key, kind, listed in keys:
        given = (lambda v: [0, 1, 2, 3, v]) if listed else (lambda v: v)  # noqa: E731
        message = refusal(every_section, key, given(math.inf))
        assert named(message, key, every_section) and re.search(r"\binf\b", message), message
        limit, rule = (2**32, SEED_RULE) if "seed" in key else (2**31, SIZE_RULE)
        message = refusal(every_section, key, given(kind(limit)))
        assert named(message, key, every_section) and re.search(rule, message), message


# --- run_name's length: its folder and the file names made of it --------------------------------

LOG_NAME_RULE = (
    r" bytes long; the SLURM logs of its jobs are named `<run_name>-it{iter}-generate_<job id>_"
    r"<task id>\.out`, {more} bytes more, and a file system takes names of at most 255 bytes: "
    r"run_name can be {limit} bytes long$"
)


@pytest.mark.parametrize(("iteration", "limit"), [(1, 216), (10, 215)])
def test_a_run_name_too_long_for_its_slurm_logs_is_refused(iteration, limit):
    """255 bytes less `-it<t>-generate_4294967294_4294967294.out`, in bytes, not characters."""
    assert compose_cfg(f"iter={iteration}", f"run_name={'a' * limit}").run_name == "a" * limit
    rule = LOG_NAME_RULE.format(iter=iteration, more=255 - limit, limit=limit)
    for name, size in (("a" * (limit + 1), limit + 1), ("a" * 300, 300), ("é" * 109, 218)):
        with pytest.raises(ConfigError, match=rf"^run_name='{name[:40]}'\.\.\. is {size}{rule}"):
            compose_cfg(f"iter={iteration}", f"run_name='{name}'")


def test_a_run_name_too_long_for_its_pairs_file_name_names_the_file_and_the_fix():
    """run_name made of training.pairs's file name (`...-pairs-<name>`): the name the user chose
    is the cause, and a shorter one (or a run_name of their own) the fix; 263 bytes are 47 more
    than run_name's 216."""
    name = "q" * 240
    with pytest.raises(ConfigError) as refused:
        compose_cfg("method=dpo", f"training.pairs=/data/{name}.jsonl")
    assert str(refused.value) == (
        f"training.pairs: its file name '{'q' * 40}'... makes run_name "
        "(`<method.tag>-lr<learning rate>-pairs-<file name>`: 'beta0.1-lr5e-07-pairs-qqqqqqqqqqqqqqqqqq'"
        "...) 262 bytes long; the SLURM logs of its jobs are named `<run_name>-it1-generate_<job "
        "id>_<task id>.out`, 39 bytes more, and a file system takes names of at most 255 bytes: "
        "run_name can be 216 bytes long; give the file a name 46 bytes shorter, or set run_name= "
        "to a name of your own"
    )
    assert compose_cfg(f"training.pairs=/data/{name[46:]}.jsonl").run_name.endswith(name[46:])
    chosen = compose_cfg(f"training.pairs=/data/{name}.jsonl", "run_name=mine")
    assert chosen.run_name == "mine"


def test_a_model_name_over_255_bytes_is_refused():
    assert compose_cfg(f"model.name={'m' * 255}").model.name == "m" * 255
    with pytest.raises(
        ConfigError, match=r"^model\.name='m{40}'\.\.\. is 256 bytes long; it names"
    ):
        compose_cfg(f"model.name={'m' * 256}")


# --- values that become folder names and SLURM script text -------------------------------------

PLAIN_NAME_RULE = (
    r"; it names one folder under paths\.root: a name without '/' or control characters, other "
    r"than '\.' and '\.\.'$"
)
SHELL_WORD_RULE = (
    r"; it is written into SLURM scripts, where it must be one word of letters, digits and "
    r"_\.,:=\+@%-"
)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.name=../../escaped", r"^model\.name='\.\./\.\./escaped' holds '/'"),
        ("model.name=/abs", r"^model\.name='/abs' holds '/'"),
        ("model.name=..", r"^model\.name='\.\.' is the folder above"),
        ("run_name=..", r"^run_name='\.\.' is the folder above"),
        ("run_name=.", r"^run_name='\.' is the folder itself"),
        ("run_name=''", r"^run_name='' is empty"),
        ("run_name=a/b", r"^run_name='a/b' holds '/'"),
        ('run_name="a\x00b"', r"^run_name='a\\x00b' holds a NUL byte"),
        ('run_name="a\nb"', r"^run_name='a\\nb' holds a newline"),
        ("method.tag=../up", r"^method\.tag='\.\./up' holds '/'"),
    ],
)
def test_a_name_that_is_not_one_folder_is_refused(override, message):
    with pytest.raises(ConfigError, match=message + PLAIN_NAME_RULE):
        compose_cfg(override)


@pytest.mark.parametrize("name", ["a..b", "..a", "my model", "mistral-7b_v0.2"])
def test_a_name_with_dots_or_blanks_inside_is_still_one_folder(name, tmp_path):
    cfg = compose_cfg(f"model.name='{name}'", f"run_name='{name}'")
    root = Path(cfg.paths.root)
    assert Path(cfg.run.dir) == root / name / "sppo" / name


def test_the_run_directory_stays_under_paths_root(tmp_path):
    inside = compose_cfg(f"paths.root={tmp_path}/r", f"run.dir={tmp_path}/r/other/lineage")
    assert inside.run.dir == f"{tmp_path}/r/other/lineage"  # another lineage's checkpoint
    for escaped in (f"{tmp_path}/elsewhere", f"{tmp_path}/r/../x", f"{tmp_path}/r"):
        with pytest.raises(ConfigError, match=r"^run\.dir='.*': lies outside paths\.root="):
            compose_cfg(f"paths.root={tmp_path}/r", f"run.dir={escaped}")
    with pytest.raises(ConfigError, match=r"^paths\.root='/tmp/a\\nb' holds a newline; it is"):
        compose_cfg('paths.root="/tmp/a\nb"')


@pytest.mark.parametrize("key", ["partition", "account", "qos", "constraint"])
@pytest.mark.parametrize(
    ("value", "bad"),
    [
        ("debug\ntouch /tmp/x", "a newline"),
        ("debug;touch /tmp/x", "';'"),
        ("$(touch /tmp/x)", "'\\$'"),
        ("`id`", "'`'"),
        ("gpu debug", "a space"),
        ("gpu'", '"\'"'),
        ("gpu#x", "'#'"),
    ],
)
def test_a_slurm_field_that_is_not_one_plain_word_is_refused(key, value, bad):
    rule = rf"^hardware\.slurm\.{key}=.* holds {bad}{SHELL_WORD_RULE}"
    with pytest.raises(ConfigError, match=rule):
        compose_cfg("hardware=slurm-cpu", f'hardware.slurm.{key}="{value}"')


def test_slurm_fields_take_what_sbatch_names():
    cfg = compose_cfg(
        "hardware=slurm-cpu",
        "hardware.slurm.partition='gpu,debug'",
        "hardware.slurm.account=proj-123_x",
        "hardware.slurm.qos=high",
        'hardware.slurm.constraint="[rack1*2&rack2*4]|(a100&ib)"',
        "run_name=eta1e+06-lr5e-07-K5",
    )
    assert cfg.hardware.slurm.constraint == "[rack1*2&rack2*4]|(a100&ib)"
    # the jobs are named after run_name: on SLURM hardware it is one word too
    with pytest.raises(ConfigError, match=rf"^run_name='my run' holds a space{SHELL_WORD_RULE}"):
        compose_cfg("hardware=slurm-cpu", "run_name='my run'")


# what the scripts say of a node's share in hardware.slurm.sbatch, after the option's name
NODE_SHARE = (
    " would give each job, the CPU pairs job and every one-GPU shard too, what the whole node "
    "has; src.slurm asks for each stage's own GPUs, CPUs and memory "
    "(hardware.slurm.stages.<stage>): drop it"
)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--exclus", "`--exclus` is sbatch's --exclusive; --exclusive" + NODE_SHARE),
        ("--exclu", "`--exclu` begins several sbatch options (--exclude, --exclusive), which "
                    "sbatch refuses as ambiguous: spell the one you mean in full"),
        ("--gpus-per-n=8", "`--gpus-per-n` is sbatch's --gpus-per-node; --gpus-per-node is set "
                           "by src.slurm, from what each job needs; drop it"),
        ("--mem-per-g=80G", "`--mem-per-g` is sbatch's --mem-per-gpu; --mem-per-gpu" + NODE_SHARE),
        ("--tasks-per-node=8", "`--tasks-per-node` is sbatch's --ntasks-per-node; "
                               "--ntasks-per-node is set by src.slurm"),
        ("--part=gpu", "`--part` is sbatch's --partition; the scripts set --partition from "
                       "hardware.slurm.partition: set that"),
        ("--tres-per-task=gres/gpu:8", ": --tres-per-task" + NODE_SHARE),
        ("--tres-per-task=license/ansys=1,cpu=4", ": --tres-per-task" + NODE_SHARE),
        ("--tres-per-t=gres/gpu:a100=2", "is sbatch's --tres-per-task; --tres-per-task"),
        ("--mincpus=128", ": --mincpus" + NODE_SHARE),
        ("--gpus-per-socket=4", ": --gpus-per-socket" + NODE_SHARE),
        ("--wrap=hostname", ": sbatch refuses --wrap beside a batch script, and each job here "
                            "is a script that runs its stage: drop it"),
        ("--wra=hostname", "`--wra` is sbatch's --wrap; sbatch refuses --wrap"),
        ("--foo=$(id)", "sbatch has no option --foo (nor one it begins): spell one of its long "
                        "options (`sbatch --help`)"),
    ],
)  # fmt: skip
def test_an_sbatch_option_is_refused_as_the_option_sbatch_reads(option, message):
    """sbatch reads an #SBATCH line with getopt_long: a prefix of one option is that option."""
    with pytest.raises(ConfigError) as refused:
        check_sbatch_option("hardware.slurm.sbatch[2]", option)
    line = str(refused.value)
    assert line.startswith(f"hardware.slurm.sbatch[2]={option!r}: ") and message in line, line
    assert "\n" not in line


@pytest.mark.parametrize(
    "option",
    ["--ntasks-per-gpu=1", "--export=NONE", "--chdir=/", "--reservation=maint", "--reser=maint",
     "--mail-type=FAIL", "--exclude=node1", "--tres-per-task=license/ansys=1",
     "--comment=$(rm -rf ~)"],
)  # fmt: skip
def test_an_sbatch_option_that_asks_for_no_nodes_share_is_taken(option):
    check_sbatch_option("hardware.slurm.sbatch[0]", option)


def test_every_sbatch_option_the_check_refuses_is_one_sbatch_has():
    """A name misspelt in the refusals would never match what sbatch reads."""
    named = {*SBATCH_SET_BY, *SBATCH_ALIASES, *SBATCH_ALIASES.values(), "wrap", "tres-per-task"}
    assert named <= set(SBATCH_OPTIONS), named - set(SBATCH_OPTIONS)
    assert len(set(SBATCH_OPTIONS)) == len(SBATCH_OPTIONS)


@pytest.mark.parametrize(
    "reference", ["base", "iter1", "iter2", "/models/mine", "./mine", "../mine", "org/name-v0.2"]
)
def test_eval_reference_takes_what_the_eval_stage_can_load(reference):
    # a model folder is looked for when the eval stage runs: a job before it may make it
    assert compose_cfg("iter=2", f"eval.reference={reference}").eval.reference == reference


@pytest.mark.parametrize(
    ("override", "stages"),
    [
        (None, []),
        ("pipeline.redo=rank", ["rank"]),
        ("pipeline.redo=[rank]", ["rank"]),
        ("pipeline.redo=[generate,train]", ["generate", "train"]),
        ("pipeline.redo=null", []),
    ],
)
def test_pipeline_redo_is_a_list_of_stages_or_one_bare_stage(override, stages):
    from src.config import Stage

    cfg = compose_cfg(*([override] if override else []))
    assert cfg.pipeline.redo == [Stage(s) for s in stages]
    assert cfg.as_tree()["pipeline"]["redo"] == stages


@pytest.mark.parametrize(
    ("overrides", "stages"),
    [
        ((), ["generate", "rank", "pairs", "train"]),
        (("pipeline.until=pairs",), ["generate", "rank", "pairs"]),
        (("pipeline.until=eval",), ["generate", "rank", "pairs", "train"]),  # no eval asked for
        (("pipeline.until=rank", "stage=train"), ["train"]),  # one stage: that stage
    ],
)
def test_pipeline_until_is_the_last_stage_stage_all_runs(overrides, stages):
    assert [s.value for s in compose_cfg(*overrides).stages()] == stages


def test_a_local_file_applies_from_the_top_with_its_package_line(tmp_path):
    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "local").mkdir(exist_ok=True)
    (conf / "local" / "default.yaml").write_text(
        "# @package _global_\nhardware:\n  slurm:\n    account: mine\n"
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        tree = compose("config", overrides=["hardware=slurm-cpu"])
    assert validate(tree).hardware.slurm.account == "mine"


# --- bad input: the real command line -----------------------------------------------------------


def run_main(*args: str, env_root: Path) -> subprocess.CompletedProcess:
    """`python -m src.main ARGS`, in this process (tests/support/helpers.py's entry)."""
    return entry("src.main", *args, env={"SELFPLAY_RUNS": str(env_root)})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["method=spo"],
            "config error: method=spo: no such option in config group 'method'; choose one of: dpo, sppo, wpo",
        ),
        (
            ["method.foo=1"],
            "config error: unknown config key 'method.foo'; method accepts: name, loss, K, eta,",
        ),
        (
            ["method.eta=oops"],
            "config error: method.eta: Value 'oops' of type 'str' could not be converted to Float",
        ),
        (  # --cfg job shows only what a run accepts: the schema is checked first
            ["method.eta=oops", "--cfg", "job"],
            "config error: method.eta: Value 'oops' of type 'str' could not be converted to Float",
        ),
        (["iter=-1", "--cfg", "job"], "config error: iter=-1: must be >= 0"),
        (["generation.top_p=5", "--cfg", "job"], "config error: generation.top_p=5.0: must be in"),
        (["method.eta=-1"], "config error: method.eta=-1.0: must be > 0"),
        (["iter=0"], "config error: iter=0: iteration 0 is the base policy (run.init_policy)"),
        (["method.K=1"], "config error: method.K=1: must be >= 2"),
        (
            ["training.optimizer=sgd"],
            "config error: training.optimizer: Invalid value 'sgd', expected one of [rmsprop, adamw]",
        ),
        (["model=[oops"], "config error: cannot parse override 'model=[oops'"),
        (
            ["hardware=slurm-gpu-1", "+hardware.slurm.foo=1"],
            "config error: unknown config key 'hardware.slurm.foo'; hardware.slurm accepts: partition,",
        ),
        (
            ["hardware.slurm.time_min=5"],
            "config error: cannot set 'hardware.slurm.time_min': 'hardware.slurm' is null",
        ),
        (
            ["eval.judge.model=/judges/mine"],
            "config error: cannot set 'eval.judge.model': 'eval.judge' is null with the options "
            "chosen (the ranker judges; choose a judge with +ranker@eval.judge=<ranker option>)",
        ),
        (
            ["model.name=../../escaped"],
            "config error: model.name='../../escaped' holds '/'; it names one folder under "
            "paths.root: a name without '/' or control characters, other than '.' and '..'",
        ),
        (
            ["run_name=.."],
            "config error: run_name='..' is the folder above; it names one folder under paths.root",
        ),
        (
            ["training.seed=-1"],
            "config error: training.seed=-1: must be in [0, 2**32): a seed that numpy and torch "
            "take",
        ),
        (
            ["generation.temperature=inf", "--cfg", "job"],
            "config error: generation.temperature=inf: must be finite",
        ),
        (
            [f"run_name={'a' * 300}"],
            f"config error: run_name='{'a' * 40}'... is 300 bytes long; the SLURM logs of its "
            "jobs are named `<run_name>-it1-generate_<job id>_<task id>.out`, 39 bytes more",
        ),
        (  # the reported submission: the second line ran as a command of the job
            ["hardware=slurm-cpu", 'hardware.slurm.partition="debug\ntouch /tmp/x"'],
            "config error: hardware.slurm.partition='debug\\ntouch /tmp/x' holds a newline; it is "
            "written into SLURM scripts, where it must be one word of letters, digits and "
            "_.,:=+@%-",
        ),
    ],
)
def test_command_line_rejects_bad_config_with_one_line(args, expected, tmp_path):
    result = run_main(*args, env_root=tmp_path / "runs")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "runs").exists(), "a rejected config must not create anything"


def test_cfg_job_loads_no_model_library():
    """`--cfg job`, what a user waits for before launching, composes, validates and lists what
    the iteration reads without importing torch (half of its start, ~2 s). A fresh process: what
    it imports is the point."""
    code = (
        "import runpy, sys; sys.argv = ['src/main.py', *sys.argv[1:]]; "
        "runpy.run_module('src.main', run_name='__main__'); "
        "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules), "
        "file=sys.stderr)"
    )
    args = ["model=tiny-mistral", "eval.enabled=true", "--cfg", "job"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr[-3000:]


def test_cfg_job_prints_the_resolved_iteration_three_config(tmp_path):
    result = run_main("method=sppo", "iter=3", "--cfg", "job", env_root=tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.iter == 3
    assert printed.data.prompts == "UCLA-AGI/data-mistral-7b-instruct-sppo-iter3"
    assert printed.run.init_policy.endswith("/iter2/train/checkpoint")
    assert "${" not in result.stdout, "interpolations left unresolved"
    # and, in comments, where what it reads resolves (src/assets)
    reads = [ln for ln in result.stdout.splitlines() if ln.startswith("# reads ")]
    assert reads[0].startswith("# reads made ") and reads[0].endswith(": made by this run")
    assert "# reads dataset UCLA-AGI/data-mistral-7b-instruct-sppo-iter3 [train]: " in reads[1]
    assert "# reads ranker llm-blender/PairRM: " in reads[2]
