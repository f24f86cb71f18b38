"""`python -m src.plan` and the check `python -m src.slurm` makes with it (`src.plan.stages`):
every stage of an iteration with its memory per GPU, the largest per-device batch that fits,
and a chain that cannot fit refused before anything is queued, with the overrides that fit."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import REPO_ROOT, Stage
from src.plan.memory import GIB
from src.plan.stages import DoesNotFit, plan, require_fit
from tests.support.helpers import compose_cfg, one_line_failure

GEMMA = ["experiment=gemma-2-9b-it-sppo"]  # generates with vLLM
# the preset with the HF backend, whose memory and rate follow its batch of prompts
GEMMA_HF = [*GEMMA, "generation=hf"]
ON_24GB = ["hardware=slurm-gpu-1", "hardware.gpu_memory_gb=24"]


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def stages(*overrides: str) -> dict:
    return {p.stage: p for p in plan(compose_cfg(*overrides))}


def test_the_plan_of_a_recipe_on_one_8_gpu_node_fits_every_stage():
    result = run("src.plan", *GEMMA, "hardware=node-8gpu")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith(
        "plan: gemma-2-9b-it, sppo, iteration 1 on hardware=node-8gpu (8 GPU(s) of 80 GB)"
    )
    for stage in ("generate", "rank", "pairs", "train"):
        assert f"| {stage} |" in out
    assert "| train | 8 (DeepSpeed ZeRO-3 over 8) |" in out
    assert "**no**" not in out
    assert "model states / devices" in out  # the terms at the training step's peak
    # what the nodes install: the GPU set, and how without internet
    assert (
        out.rstrip()
        .splitlines()[-1]
        .startswith(
            "Install: the `cuda` set (torch==2.11.0, vllm==0.26.0; the project with "
            "slurm,dev,vllm,qlora): `make install`, or with no internet `make wheelhouse "
            "WHEELHOUSE=<dir> TARGET=cuda`"
        )
    )


@pytest.mark.parametrize("stage", ["generate", "train"])
def test_the_largest_batch_is_the_largest_that_fits(stage):
    cfg = compose_cfg(*GEMMA_HF, "hardware=node-8gpu")
    p = stages(*GEMMA_HF, "hardware=node-8gpu")[stage]
    key, largest = p.batch_key, p.largest_batch
    assert largest and largest >= p.batch
    gpu = cfg.hardware.gpu_memory_gb
    assert stages(*GEMMA_HF, "hardware=node-8gpu", f"{key}={largest}")[stage].fits(gpu)
    if stage == "generate":
        over = stages(*GEMMA_HF, "hardware=node-8gpu", f"{key}={largest + 1}")[stage]
        assert not over.fits(gpu)
    else:  # a per-device batch the global batch divides into: 64 pairs over 8 GPUs
        assert largest == 8 == cfg.training.global_batch_size // cfg.hardware.world_size


def test_memory_grows_with_the_batch_and_with_lengths():
    small = stages(*GEMMA, "training.per_device_batch_size=1")["train"].memory.footprint
    large = stages(*GEMMA, "training.per_device_batch_size=4")["train"].memory.footprint
    longer = stages(*GEMMA, "training.per_device_batch_size=4", "training.max_length=2048")
    assert small < large < longer["train"].memory.footprint


def test_full_weights_on_a_24_gb_card_are_refused_with_the_overrides_that_fit():
    cfg = compose_cfg(*GEMMA_HF, *ON_24GB)
    with pytest.raises(DoesNotFit) as refused:
        require_fit(cfg, [*GEMMA_HF, *ON_24GB])
    assert refused.value.exit_code == 2
    assert refused.value.fix == "generation=vllm training.peft=qlora"
    message = str(refused.value)
    assert message.startswith("stage generate needs ")
    assert "stage train needs " in message and "hardware.gpu_memory_gb=24 (22.4 GiB)" in message
    fixed = compose_cfg(*GEMMA, *ON_24GB, "training.peft=qlora")
    require_fit(fixed, [*GEMMA, *ON_24GB, "training.peft=qlora"])  # nothing left to refuse
    # the preset as shipped generates with vLLM, which fits: only training is refused
    with pytest.raises(DoesNotFit) as shipped:
        require_fit(compose_cfg(*GEMMA, *ON_24GB), [*GEMMA, *ON_24GB])
    assert shipped.value.fix == "training.peft=qlora"
    assert str(shipped.value).startswith("stage train needs ")


def test_src_slurm_refuses_in_one_line_with_exit_2_and_queues_nothing(tmp_path):
    # the nodes reach the Hub: the recipe's weights need not be in this offline cache
    args = ["--dry-run", *GEMMA, *ON_24GB, f"paths.root={tmp_path}", "hardware.slurm.offline=false"]
    line = one_line_failure(run("src.slurm", *args), 2)
    assert line.startswith("error: stage train needs "), line
    assert line.endswith(f"run `python -m src.slurm {' '.join(args)} training.peft=qlora`"), line
    assert not list(tmp_path.rglob("*.sbatch"))
    assert run("src.slurm", *args, "plan.check=false").returncode == 0
    assert run("src.slurm", *args, "training.peft=qlora").returncode == 0


def test_the_mistral_qlora_preset_fits_a_24_gb_card():
    cfg = compose_cfg("experiment=mistral-7b-instruct-sppo-qlora", *ON_24GB)
    require_fit(cfg, ["experiment=mistral-7b-instruct-sppo-qlora", *ON_24GB])
    train = stages("experiment=mistral-7b-instruct-sppo-qlora", *ON_24GB)["train"]
    assert train.memory.footprint < 24e9 and train.memory.peak / GIB < 12


def test_a_stage_no_batch_fits_says_the_gpu_it_needs_and_the_override_that_fits():
    """Gemma-2-9B's QLoRA preset on 24 GB: HF generation holds the bf16 model and the KV cache of
    even one prompt's 5 samples past the GPU. The row says the GPU a batch of 1 needs, as the
    memory model has it, and the plan the override under which the stage fits."""
    from src.plan.stages import gpu_holding, plan_text

    overrides = ["experiment=gemma-2-9b-it-sppo-qlora", "hardware.gpu_memory_gb=24"]
    generate = stages(*overrides)["generate"]
    assert generate.largest_batch is None and not generate.fits(24)
    gb = gpu_holding(generate.least)
    one = [*overrides[:1], "generation.batch_size=1"]
    assert stages(*one, f"hardware.gpu_memory_gb={gb}")["generate"].fits(gb)
    assert not stages(*one, f"hardware.gpu_memory_gb={gb - 0.1:.1f}")["generate"].fits(gb - 0.1)
    text = plan_text(compose_cfg(*overrides), overrides=overrides)
    assert f"generation.batch_size=2 (none fits; at 1 it needs a GPU of {gb:.1f} GB) |" in text
    remedied = stages(*overrides, "generation=vllm")["generate"]
    assert remedied.fits(24)
    assert (
        f"generate fits 24 GB with generation=vllm: {remedied.memory.footprint / GIB:.1f}" in text
    )
    assert "fits 24 GB with" not in plan_text(compose_cfg(*overrides))  # no command: not tried


def test_a_model_whose_shape_is_not_known_is_one_line_with_exit_1():
    result = run("src.plan", "model.path=some-org/not-here")
    line = one_line_failure(result, 1)
    assert line.startswith("error: model.path=some-org/not-here: its shape is not known here")


def test_on_cpu_the_memory_is_shown_and_not_checked(tiny_dir):
    result = run("src.plan", "model=tiny-mistral")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no GPU memory to check" in result.stdout and "not checked" in result.stdout


def test_the_dry_run_prints_the_plan_src_plan_prints(tmp_path):
    args = [*GEMMA, "hardware=slurm-node-8gpu", f"paths.root={tmp_path}"]
    planned = run("src.plan", *args)
    dry = run("src.slurm", "--dry-run", *args, "hardware.slurm.offline=false")
    assert planned.returncode == dry.returncode == 0, dry.stderr[-2000:]
    assert dry.stdout.startswith(planned.stdout.rstrip("\n") + "\n\n")


def test_cfg_job_and_the_plan_show_the_same_settings(tmp_path):
    """What `python -m src.main --cfg job` resolves is what the plan reads: the per-device
    batches, the processes and the GPU's memory it prints."""
    import yaml

    args = [
        *GEMMA_HF,
        "hardware=slurm-node-8gpu",
        "training.per_device_batch_size=2",
        "eval.enabled=true",
    ]
    job = run("src.main", "--cfg", "job", *args)
    planned = run("src.plan", *args)
    assert job.returncode == planned.returncode == 0, job.stderr[-2000:] + planned.stderr[-2000:]
    cfg = yaml.safe_load(job.stdout)
    hw = cfg["hardware"]
    world = hw["num_nodes"] * hw["processes_per_node"]
    assert (
        f"on hardware={hw['name']} ({world} GPU(s) of {hw['gpu_memory_gb']:g} GB)" in planned.stdout
    )
    memory_table = planned.stdout.split("\n\n")[1]  # before the terms and the hours
    rows = {r.split("|")[1].strip(): r for r in memory_table.splitlines() if r.startswith("| ")}
    batch = cfg["training"]["per_device_batch_size"]
    assert f"training.per_device_batch_size={batch} " in rows["train"]
    assert f"| {world} (DeepSpeed ZeRO-3 over {world}) |" in rows["train"]
    assert f"generation.batch_size={cfg['generation']['batch_size']} " in rows["generate"]
    if cfg["eval"]["enabled"]:
        assert f"eval.batch_size={cfg['eval']['batch_size']} " in rows["eval"]
    else:
        assert "eval" not in rows


# --- hours ---------------------------------------------------------------------------------------


def hours(*overrides: str) -> dict:
    """The Gemma-2 recipe's hours on a node of 8 GPUs, generating with HF unless `overrides`
    name the backend."""
    from src.plan.hours import iteration_hours
    from src.plan.stages import policy_shape

    backend = [] if any(o.startswith("generation=") for o in overrides) else ["generation=hf"]
    cfg = compose_cfg(*GEMMA, *backend, "hardware=node-8gpu", *overrides)
    return {s.stage: s for s in iteration_hours(cfg, policy_shape(cfg))}


def test_without_a_previous_iteration_the_work_is_the_configs_limits():
    cfg = compose_cfg(*GEMMA_HF, "hardware=node-8gpu", "plan.prompts=1000")
    generate = hours("plan.prompts=1000")["generate"]
    assert generate.tokens == 1000 * cfg.method.K * cfg.generation.max_new_tokens
    assert generate.basis == "H100, HF, measured at 8 and 32 prompts a call"
    assert generate.gpus == 8 and cfg.generation.batch_size == 8
    # 1,000 prompts x 5 x 2,048 tokens at the H100's 694 tokens/s (8 prompts a call) on 8 GPUs
    assert generate.hours == pytest.approx(1000 * 5 * 2048 / (694 * 8) / 3600)


def test_a_local_split_is_planned_at_its_rows_not_the_recipes_20000(tmp_path):
    """The tiny preset on SLURM, no iteration run yet: its 120 prompts, not 20,000 assumed."""
    from src.plan.hours import prompt_count

    cfg = compose_cfg("model=tiny-mistral", "hardware=slurm-cpu", f"paths.root={tmp_path}")
    assert prompt_count(cfg, None) == (120, f"the rows of data.prompts, {cfg.data.prompts}")
    capped = compose_cfg("model=tiny-mistral", "data.max_prompts=8", f"paths.root={tmp_path}")
    assert prompt_count(capped, None) == (8, "data.max_prompts")
    # a hub dataset neither in the Hub cache nor of a known card: the recipe's
    assert prompt_count(compose_cfg(*GEMMA, f"paths.hub_cache={tmp_path}"), None)[0] == 20_000


def test_a_hub_split_is_counted_in_the_hub_cache_else_as_its_dataset_card_counts(tmp_path):
    """WPO-HB's prompts, UltraFeedback's train_prefs: 61,135 rows by the card, not the SPPO
    recipe's 20,000; where the dataset is in the Hub cache, the rows of its split's files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from src.plan.hours import hours_text, prompt_count
    from src.plan.stages import policy_shape

    repo = "HuggingFaceH4/ultrafeedback_binarized"
    wpo = ["experiment=gemma-2-9b-it-wpo-hb", "data.external_responses=x.jsonl"]
    cfg = compose_cfg(*wpo, f"paths.hub_cache={tmp_path}")
    by_card = f"the rows of data.prompts, {repo} [train_prefs], by its dataset card"
    assert prompt_count(cfg, None) == (61_135, by_card)
    assert (
        f"Time of one iteration: 61,135 prompts ({by_card})"
        in hours_text(cfg, policy_shape(cfg))[0]
    )
    commit = "0" * 40
    storage = tmp_path / "datasets--HuggingFaceH4--ultrafeedback_binarized"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    snapshot = storage / "snapshots" / commit
    (snapshot / "data").mkdir(parents=True)
    (snapshot / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in ("train_prefs", "test_prefs"))
        + "---\n"
    )
    for split, rows in (("train_prefs", 7), ("test_prefs", 3)):
        table = pa.table({"prompt": [f"p{i}" for i in range(rows)]})
        pq.write_table(table, snapshot / "data" / f"{split}-00000-of-00001.parquet")
    cached = f"the rows of data.prompts, {repo} [train_prefs] in the Hub cache"
    assert prompt_count(cfg, None) == (7, cached)


def test_the_eval_row_answers_the_eval_sets_instructions_not_alpacaevals_805(tmp_path):
    """The tiny data's eval set is 150 instructions (a JSON array, as alpaca_eval.json is);
    AlpacaEval's 805 only where data.eval_prompts is not counted, and said to be assumed."""
    from src.plan.counts import file_rows

    cfg = compose_cfg(*GEMMA, "data=tiny")
    evaluated = hours("data=tiny", "eval.enabled=true")["eval"]
    assert evaluated.tokens == 150 * cfg.eval.max_new_tokens
    where = f"150 instructions (the rows of data.eval_prompts, {cfg.data.eval_prompts})"
    assert evaluated.basis.endswith(where)
    unset = hours("eval.enabled=true", "data.eval_prompts=null")["eval"]
    assert unset.tokens == 805 * cfg.eval.max_new_tokens
    assumed = "805 instructions (assumed: AlpacaEval's; data.eval_prompts is not set)"
    assert unset.basis.endswith(assumed)
    lines = tmp_path / "eval.json"  # JSON Lines under .json, as the prompts are read too
    lines.write_text('{"instruction": "a"}\n\n{"instruction": "b"}\n')
    assert file_rows(lines) == 2


@pytest.mark.parametrize(
    ("batch", "rate"), [(8, 694.0), (32, 984.0), (20, (694 + 984) / 2), (4, 347.0), (64, 984.0)]
)
def test_the_generation_rate_follows_the_measured_batches(batch, rate):
    generate = hours("plan.prompts=1000", f"generation.batch_size={batch}")["generate"]
    assert generate.hours == pytest.approx(generate.tokens / (rate * 8) / 3600)


def test_the_rates_are_the_plans_settings():
    base = hours()
    assert hours("plan.mfu=0.6")["train"].hours == pytest.approx(base["train"].hours / 2)
    reward_model = hours("ranker=reward-model")["rank"]  # PairRM's rank is measured, not FLOPs
    assert hours("ranker=reward-model", "plan.mfu=0.6")["rank"].hours == pytest.approx(
        reward_model.hours / 2
    )
    assert reward_model.basis.startswith("assumed MFU 0.3")
    assert hours("plan.generate_tokens_per_s=1388")["generate"].hours == pytest.approx(
        base["generate"].hours / 2
    )
    assert hours("plan.gpu_tflops=312")["train"].hours == pytest.approx(
        base["train"].hours * 989 / 312
    )


@pytest.mark.parametrize(
    ("ranker", "params", "gib"),
    [
        ("reward-model", 7.51e9, 14.7),  # ArmoRM
        ("skywork-reward-v2-llama-3.1-8b", 7.505e9, 14.7),
        ("skywork-reward-v2-qwen3-1.7b", 1.721e9, 4.0),
    ],
)
def test_a_reward_model_presets_judge_is_sized_before_it_is_fetched(ranker, params, gib):
    """Each reward-model preset's judge, from its recorded size: its bf16 weights on each GPU
    beside the CUDA context, and its rank a forward of 2 FLOPs a token per parameter over each
    of the K responses with its prompt, at the assumed MFU, the count's source named."""
    cfg = compose_cfg(*GEMMA, "hardware=node-8gpu", f"ranker={ranker}")
    rank = hours(f"ranker={ranker}", "plan.prompts=1000")["rank"]
    g, flops_per_s = cfg.generation, cfg.plan.mfu * cfg.plan.gpu_tflops * 1e12
    assert rank.tokens == 1000 * cfg.method.K * (g.max_prompt_length + g.max_new_tokens)
    assert 0 < rank.hours == pytest.approx(rank.tokens * 2 * params / (flops_per_s * 8) / 3600)
    assert rank.basis.endswith(
        f", 2 FLOPs a token per judge parameter ({params / 1e9:.2f}e9: src/core/shapes.py)"
    )
    memory = stages(*GEMMA, "hardware=node-8gpu", f"ranker={ranker}")["rank"].memory
    assert memory.kept == {f"{cfg.ranker.model} weights": pytest.approx(2 * params)}
    assert round(memory.footprint / GIB, 1) == gib


def test_a_judge_of_unknown_size_is_not_counted_and_says_so():
    rank = hours("ranker=reward-model", "ranker.model=acme/unknown-rm")["rank"]
    assert rank.basis == "not counted: the size of acme/unknown-rm is not known here"
    assert stages(*GEMMA, "ranker=reward-model", "ranker.model=acme/unknown-rm")["rank"].note


def test_pairrms_rank_is_its_comparisons_at_the_rate_measured_on_a_gpu_at_their_length():
    """K(K-1) comparisons a prompt over PairRM's comparisons/s per GPU measured at the length of
    a comparison (the prompt's limit and two responses, cut to PairRM's 1,224 + 2 x 412), its
    results file named: the nearest measured rate outside the lengths measured, a log-log line
    between them; the assumed MFU, which would make it ~14x faster, does not move it."""
    from src.plan.hours import MEASURED_RANK_RATES

    points, source = MEASURED_RANK_RATES["llm-blender/PairRM"]
    assert points == ((609, 89.0), (2024, 20.3))
    for lengths, comparison, rate in [
        (("generation.max_new_tokens=2048",), 2048, 20.3),  # cut to PairRM's limits
        (("generation.max_new_tokens=48", "generation.max_prompt_length=128"), 224, 89.0),
        (("generation.max_new_tokens=256",), 1024, 89.0 * (20.3 / 89.0) ** (
            math.log(1024 / 609) / math.log(2024 / 609))),
    ]:  # fmt: skip
        rank = hours("plan.prompts=1000", *lengths)["rank"]
        assert rank.hours == pytest.approx(1000 * 5 * 4 / (rate * 8) / 3600)
        assert rank.basis.startswith(f"measured: {rate:.1f} comparisons/s at {comparison:,} ")
    assert rank.basis.endswith(f"({source})") and 40 < rate < 50
    assert (REPO_ROOT / source.rpartition(": ")[2]).is_file()
    assert (
        hours("plan.prompts=1000", "plan.mfu=0.6")["rank"].hours
        == hours("plan.prompts=1000")["rank"].hours
    )


def test_vllms_rate_is_a_share_of_the_decode_bound_measured_for_each_model():
    """Gemma-2-9B on one 80 GB GPU, generation=vllm: a step reads the bf16 weights once and the
    KV cache of every sequence it holds (42 layers x 8 KV heads x 256 x K and V x 2 bytes a
    token; a sequence holds its prompt and half its response on average); the sequences are as
    many as the KV cache holds (0.9 of the GPU less the weights), fewer than max_num_seqs."""
    from src.plan.stages import policy_shape

    vllm = ("hardware=gpu-1", "generation=vllm", "plan.prompts=1000")
    generate = hours(*vllm)["generate"]
    assert generate.basis.startswith("measured: plan.vllm_bound_share=0.32 of the decode bound")
    assert generate.basis.endswith("benchmarks/results/generation_gpu_gemma_vllm.md)")
    cfg = compose_cfg(*GEMMA, *vllm)
    context = cfg.generation.max_prompt_length + cfg.generation.max_new_tokens / 2
    weights, per_sequence = 2 * policy_shape(cfg).params, context * 42 * 8 * 256 * 2 * 2
    sequences = int((80 * 2**30 * 0.9 - weights) // per_sequence)
    assert 10 < sequences < 1024
    assert f"at {sequences} sequences of {context:,.0f} tokens" in generate.basis
    bound = sequences / ((weights + sequences * per_sequence) / 3.35e12)
    assert generate.hours == pytest.approx(generate.tokens / (0.32 * bound) / 3600)
    # the plan's settings move it as the formula says; a rate given wins
    assert hours(*vllm, "plan.vllm_bound_share=0.64")["generate"].hours == pytest.approx(
        generate.hours / 2
    )
    assert hours(*vllm, "plan.vllm_bound_share=0.64")["generate"].basis.startswith("set: ")
    # Mistral-7B's own measured share, its basis naming its results file; a model measured
    # nowhere gets Mistral-7B's, assumed
    mistral = hours(*vllm, "model=mistral-7b-instruct-v0.2")["generate"].basis
    assert mistral.startswith("measured: plan.vllm_bound_share=0.22")
    assert mistral.endswith("benchmarks/results/generation_gpu_vllm.md)")
    for results in ("generation_gpu_vllm.md", "generation_gpu_gemma_vllm.md"):
        assert (REPO_ROOT / "benchmarks/results" / results).is_file()
    tiny = hours(*vllm, "model=tiny-mistral")["generate"].basis
    assert tiny.startswith("assumed: plan.vllm_bound_share=0.22") and "results" not in tiny
    assert hours(*vllm, "plan.gpu_memory_tbs=6.7")["generate"].hours == pytest.approx(
        generate.hours / 2
    )
    assert hours(*vllm, "plan.generate_tokens_per_s=1000")["generate"].basis == (
        "plan.generate_tokens_per_s"
    )


def test_hours_past_a_million_are_written_in_three_significant_digits():
    """A rate set near 0 (a share of the decode bound the key allows) is hours of hundreds of
    digits: written as the tokens are, not in full."""
    from src.plan.hours import hours_text
    from src.plan.stages import policy_shape

    cfg = compose_cfg(*GEMMA, "hardware=node-8gpu", "plan.vllm_bound_share=1e-300")
    lines = hours_text(cfg, policy_shape(cfg))
    digits3 = r"\d\.\d\de\+30\d"
    generate = next(line for line in lines if line.startswith("| generate |")).split(" | ")
    assert all(re.fullmatch(digits3, figure) for figure in generate[3:5]), generate
    assert re.fullmatch(rf"Iterations 1\.\.1: {digits3} GPU-hours\.", lines[-1])
    train = next(line for line in lines if line.startswith("| train |")).split(" | ")
    assert re.fullmatch(r"\d+\.\d", train[3]) and re.fullmatch(r"\d+", train[4])


def test_a_previous_iterations_generation_gives_the_prompts_and_lengths(tmp_path):
    cfg = compose_cfg(*GEMMA, "hardware=node-8gpu", "iter=2", f"paths.root={tmp_path}")
    record = Path(cfg.run.dir) / "iter1" / "generate" / "done.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"counts": {"generated": 400, "tokens": 400 * 5 * 300}}))
    generate = hours("iter=2", f"paths.root={tmp_path}")["generate"]
    assert generate.tokens == 400 * 5 * 300  # 300 tokens a sample, as iteration 1 made them


def test_the_plan_prints_the_hours_of_the_iteration_and_of_the_chain(tmp_path):
    out = run("src.plan", *GEMMA_HF, "hardware=node-8gpu", "iter=3", f"paths.hub_cache={tmp_path}")
    out = out.stdout
    per_iteration = next(line for line in out.splitlines() if line.startswith("| iteration |"))
    gpu_hours = float(per_iteration.split("|")[5])
    chain = next(line for line in out.splitlines() if line.startswith("Iterations 1..3:"))
    assert float(chain.split()[2]) == pytest.approx(3 * gpu_hours, abs=2)
    assert "assumed: the SPPO recipe's 20,000" in out and "assumed MFU 0.3" in out
    assert "H100, HF, measured at 8 and 32 prompts a call" in out


def test_the_readmes_gpu_hours_are_the_plans(tmp_path):
    """Each row of the README's "Will it fit?" table: its GPU-hours of iterations 1-3 are what the
    plan of its command says, with no run before it and no dataset in the Hub cache."""
    from src.plan.hours import hours_text
    from src.plan.stages import policy_shape

    readme = (REPO_ROOT / "README.md").read_text().splitlines()
    rows = [line for line in readme if line.startswith("| `experiment=")]
    assert len(rows) == 5
    here = [f"paths.root={tmp_path}", f"paths.hub_cache={tmp_path}", "iter=3"]
    for line in rows:
        command, *_, figure = line.strip("| ").split(" | ")
        overrides = command.strip("`").replace("=…", "=responses.jsonl").split()
        cfg = compose_cfg(*overrides, *here)
        total = hours_text(cfg, policy_shape(cfg))[-1]
        assert total == f"Iterations 1..3: {figure.split()[0].replace(',', '')} GPU-hours.", line


def test_src_main_on_a_gpu_checks_the_stages_it_runs_against_that_gpu(fake_gpu):
    """The GPU is the one part faked here: CUDA says it is there, with 24 GB, to the process that
    reads it (not this one: no CUDA context may stay here before vLLM starts)."""
    from src.plan.stages import require_fit_here

    fake_gpu(free=20e9, total=24e9)
    cfg = compose_cfg(*GEMMA, "stage=train")
    with pytest.raises(DoesNotFit) as refused:
        require_fit_here(cfg, [*GEMMA, "stage=train"])
    assert str(refused.value).startswith("stage train needs ")  # generate is not this command's
    assert "this GPU's memory=24 (22.4 GiB)" in str(refused.value)
    assert refused.value.fix == "training.peft=qlora hardware.distributed=ddp"  # node-8gpu
    require_fit_here(compose_cfg(*GEMMA, "stage=train", "plan.check=false"), [])
    require_fit_here(compose_cfg(*GEMMA, "stage=pairs"), [])  # a CPU stage: nothing to check


def test_full_weights_on_one_gpu_are_planned_with_what_keeps_their_bf16_updates():
    """The default command (Mistral-7B, full weights, one GPU, bf16): Kahan's compensation beside
    the weights and state, fitting 80 GB; fp32 master weights and state do not, and the plan's
    first remedy is Kahan; the tiny models train in fp32 on CPU, with torch's optimizer."""
    kahan = stages("stage=train")["train"]
    terms = kahan.memory.terms()
    assert terms["Kahan compensation (bf16)"] == terms["weights (bf16)"]
    assert "Kahan-compensated bf16" in kahan.processes and kahan.fits(80)
    master = compose_cfg("stage=train", "training.weight_updates=fp32")
    held = next(p for p in plan(master) if p.stage == "train").memory
    assert held.terms()["master weights (fp32)"] == 2 * terms["weights (bf16)"]
    with pytest.raises(DoesNotFit) as refused:
        require_fit(master, ["stage=train", "training.weight_updates=fp32"])
    assert refused.value.fix == "training.weight_updates=kahan"
    require_fit(
        compose_cfg("stage=train", "training.weight_updates=fp32", "hardware.gpu_memory_gb=141"), []
    )
    tiny = stages("model=tiny-mistral")["train"].memory.terms()
    assert "weights (fp32)" in tiny and not any("Kahan" in k or "master" in k for k in tiny)


def test_a_trainer_checkpoint_holds_what_the_step_keeps_as_written_on_a_gpu():
    """Mistral-7B's shapes, full weights with fp32 masters and RMSprop: 72.4 GB a Trainer
    checkpoint, as the train stage wrote into /dev/shm on an H200 (69,088 MiB,
    benchmarks/results/logs/iteration_gpu_mistral_train/train_fp32_rerun_memory.txt); Kahan's
    bf16 weights, compensation and state 3 x 2 bytes a parameter; a LoRA adapter alone."""
    from src.plan.stages import policy_shape, trainer_checkpoint_bytes

    def each(*overrides: str) -> float:
        cfg = compose_cfg("stage=train", *overrides)
        return trainer_checkpoint_bytes(cfg, policy_shape(cfg))

    master = each("training.weight_updates=fp32")
    assert master == pytest.approx(69_088 * 2**20, rel=0.005)
    assert each() == pytest.approx(master * 6 / 10)
    assert each("training.peft=lora") < master / 100


def test_each_stage_is_planned_alone_as_in_the_plan_of_the_iteration():
    """The stages come from the registry, in order, eval with eval.enabled; one stage planned
    alone (a stage's peak line, the fit check's retry) is that stage's row of the whole plan."""
    cfg = compose_cfg(*GEMMA, *ON_24GB, "eval.enabled=true")
    whole = plan(cfg)
    assert [p.stage for p in whole] == ["generate", "rank", "pairs", "train", "eval"]
    for p in whole:
        (alone,) = plan(cfg, [Stage(p.stage)])
        assert alone == p
    assert plan(cfg, [Stage.pairs])[0].memory is None  # no model held: one CPU process


def test_a_preset_that_requires_a_file_is_planned_without_it_and_says_so(capsys):
    """WPO-HB requires its external responses before it runs; the plan is shown all the same,
    a note naming the key, where the refusal had shown nothing. src.main still refuses."""
    from src.config import ConfigError
    from src.plan.__main__ import main

    main(["experiment=gemma-2-9b-it-wpo-hb", "hardware=node-8gpu"])
    out, err = capsys.readouterr()
    assert "Iterations 1..1:" in out
    assert err.startswith("note: data.external_responses is required to run: the hybrid pool")
    with pytest.raises(ConfigError, match=r"^data\.external_responses is required: "):
        compose_cfg("experiment=gemma-2-9b-it-wpo-hb")


def test_the_previous_generation_is_read_from_its_record_a_damaged_one_passed_over(
    tmp_path, monkeypatch
):
    """The prompts and tokens the plan takes from iteration t-1's generate stage come from its
    record as the one reader of records checks it: an edited record gives none."""
    from src.core.records import Finished, write_record
    from src.plan.hours import previous_generation

    monkeypatch.setenv("SELFPLAY_RUNS", str(tmp_path))
    cfg = compose_cfg("model=tiny-mistral", "logger=none", "iter=2")
    folder = cfg.layout.stage_dir_in(1, Stage.generate)
    counts = {"generated": 39, "tokens": 9000}
    write_record(folder, Finished("ab" * 32, counts, {"seconds": 80.0}))
    assert previous_generation(cfg) == counts
    record = json.loads((folder / "done.json").read_text())
    edited = {**record, "counts": {**counts, "generated": 40}}  # its sha256 left as it was
    (folder / "done.json").write_text(json.dumps(edited))
    assert previous_generation(cfg) is None


def test_a_sweep_is_priced_with_the_stages_its_points_share_counted_once(tmp_path):
    """Two etas over two iterations: iteration 1's generate and rank, which read no eta, are
    computed once; its training and every stage of iteration 2 (made from each point's own
    checkpoint) once a point; the saving is what the shared stages cost the second point."""
    from src.plan.hours import iteration_hours
    from src.plan.stages import policy_shape
    from tests.support.helpers import entry

    sweep = tmp_path / "eta.yaml"
    sweep.write_text("method: grid\nparameters:\n  method.eta:\n    values: [1, 10]\n")
    recipe = ("model=mistral-7b-instruct-v0.2", "hardware=node-8gpu")
    priced = entry("src.plan", "--sweep", str(sweep), "--iterations", "2", *recipe)
    assert priced.returncode == 0, priced.stderr[-3000:]
    rows = re.findall(r"^\| (\w+) \| (\d) \| (\d) of 2 \|", priced.stdout, re.M)
    assert {(stage, t): n for stage, t, n in rows} == {
        ("generate", "1"): "1", ("rank", "1"): "1", ("train", "1"): "2",
        ("generate", "2"): "2", ("rank", "2"): "2", ("train", "2"): "2",
    }  # fmt: skip
    cfg = compose_cfg(*recipe, "method.eta=1", "iter=1")
    hours = {s.stage: s.gpu_hours for s in iteration_hours(cfg, policy_shape(cfg))}
    saved = float(re.search(r": ([\d.e+]+) saved", priced.stdout).group(1))
    assert saved == pytest.approx(hours["generate"] + hours["rank"], abs=1)
