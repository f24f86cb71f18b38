"""The tiny offline models: real classes, the real chat templates, reproducible builds, and a
PairRM that llm-blender loads and ranks with (through src.ranking.blender_compat)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from jinja2.exceptions import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer

from src.ranking import blender_compat
from src.tiny import models as tiny
from tests.support.helpers import BUILT_ON_DEMAND, REPO_ROOT, TINY_WEIGHTS, same_bytes

LMS = {"tiny-mistral": "MistralForCausalLM", "tiny-gemma2": "Gemma2ForCausalLM"}
USER_HI = [{"role": "user", "content": "hi"}]
THREE_TURNS = USER_HI + [
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "how?"},
]


def render(tok, messages) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def tokenizers(tiny_dir):
    return {name: AutoTokenizer.from_pretrained(tiny_dir / name) for name in LMS}


# -----------------------------------------------------------------------------
# causal LMs


@pytest.mark.parametrize("name", LMS)
def test_lm_loads_as_the_real_class(tiny_dir, name):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / name)
    assert type(model).__name__ == LMS[name]
    assert model.num_parameters() < 1_000_000
    assert (tiny_dir / name / "model.safetensors").is_file()


def test_mistral_chat_template(tokenizers):
    tok = tokenizers["tiny-mistral"]
    assert render(tok, USER_HI) == "<s>[INST] hi [/INST]"
    assert render(tok, THREE_TURNS) == "<s>[INST] hi [/INST]hello</s>[INST] how? [/INST]"
    with pytest.raises(TemplateError, match="must alternate"):
        render(tok, [{"role": "system", "content": "be brief"}] + USER_HI)
    with pytest.raises(TemplateError, match="must alternate"):
        render(tok, USER_HI + USER_HI)


def test_gemma2_chat_template(tokenizers):
    tok = tokenizers["tiny-gemma2"]
    assert (
        render(tok, USER_HI) == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    )
    assert tok.apply_chat_template(USER_HI, tokenize=False) == (
        "<bos><start_of_turn>user\nhi<end_of_turn>\n"
    )
    assert render(tok, THREE_TURNS) == (
        "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n"
        "<start_of_turn>user\nhow?<end_of_turn>\n<start_of_turn>model\n"
    )
    # the real template trims every message
    assert render(tok, [{"role": "user", "content": "  hi \n"}]) == render(tok, USER_HI)
    with pytest.raises(TemplateError, match="System role not supported"):
        render(tok, [{"role": "system", "content": "be brief"}] + USER_HI)
    with pytest.raises(TemplateError, match="must alternate"):
        render(tok, USER_HI + USER_HI)


@pytest.mark.parametrize(
    ("name", "markers"),
    [("tiny-mistral", ["[INST]", "[/INST]", "</s>"]), ("tiny-gemma2", ["<end_of_turn>"])],
)
def test_rendered_prompt_has_one_bos(tokenizers, name, markers):
    tok = tokenizers[name]
    prompt = render(tok, THREE_TURNS)
    ids = tok(prompt, add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    # the template already holds BOS: adding special tokens again doubles it
    assert tok(prompt).input_ids[:2] == [tok.bos_token_id, tok.bos_token_id]
    for marker in markers:  # the turn markers are single special tokens
        assert tok.convert_tokens_to_ids(marker) in ids
    assert tok.decode(ids) == prompt


@pytest.mark.parametrize("name", LMS)
def test_generate_five_samples(tiny_dir, tokenizers, name):
    tok = tokenizers[name]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / name)
    inputs = tok(render(tok, USER_HI), add_special_tokens=False, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(
        **inputs, do_sample=True, num_return_sequences=5, max_new_tokens=8, pad_token_id=0
    )
    assert out.shape[0] == 5
    assert out.shape[1] <= inputs.input_ids.shape[1] + 8
    assert torch.equal(out[:, : inputs.input_ids.shape[1]], inputs.input_ids.expand(5, -1))


def test_generation_stops_at_the_end_of_a_turn(tiny_dir, tokenizers):
    mistral = AutoModelForCausalLM.from_pretrained(tiny_dir / "tiny-mistral").generation_config
    assert mistral.eos_token_id == tokenizers["tiny-mistral"].eos_token_id
    gemma_tok = tokenizers["tiny-gemma2"]
    gemma = AutoModelForCausalLM.from_pretrained(tiny_dir / "tiny-gemma2").generation_config
    assert gemma.eos_token_id == [
        gemma_tok.eos_token_id,
        gemma_tok.convert_tokens_to_ids("<end_of_turn>"),
    ]
    assert gemma.pad_token_id == gemma_tok.pad_token_id == 0


# -----------------------------------------------------------------------------
# building: reproducible, atomic, cached


def test_tiny_reward_model_scores_the_last_real_token_of_a_conversation(tiny_dir):
    """One score per (prompt, response) in Mistral's template; its own pad token, so right
    padding in a batch does not change a score."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        MistralForSequenceClassification,
    )

    folder = tiny_dir / "tiny-rm"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert isinstance(model, MistralForSequenceClassification) and model.config.num_labels == 1
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        tokenize=False,
    )
    assert text == "<s>[INST] hi [/INST]hello</s>"
    short = tok(text, add_special_tokens=False)["input_ids"]
    long = tok(text.replace("hello", "hello there, how are you"), add_special_tokens=False)[
        "input_ids"
    ]
    padded = torch.full((2, len(long)), tok.pad_token_id)
    padded[0, : len(short)] = torch.tensor(short)
    padded[1] = torch.tensor(long)
    with torch.no_grad():
        batch = model(input_ids=padded, attention_mask=(padded != tok.pad_token_id).long()).logits
        alone = model(input_ids=torch.tensor([short])).logits
    assert batch.shape == (2, 1)
    assert torch.allclose(batch[0], alone[0], atol=1e-5) and not torch.allclose(batch[0], batch[1])


# tiny-rm's rebuild is test_ensure_reuses_a_finished_build_and_redoes_any_other's, of a half-made one
REBUILT_HERE = [n for n in tiny.PIPELINE_NAMES if n not in (*BUILT_ON_DEMAND, "tiny-rm")]


@pytest.mark.slow
@pytest.mark.parametrize("name", REBUILT_HERE)
def test_same_seed_same_bytes(tmp_path, tiny_dir, name):
    """Training included: a rebuild from seed 0 is byte for byte the cached seed-0 build (for
    BUILT_ON_DEMAND, tests/pipeline/test_schedule.py's build on demand is that rebuild)."""
    same_bytes(tiny.build(name, tmp_path / name, seed=0), tiny_dir / name)
    assert not list(tmp_path.glob(".*")), "a staging folder was left behind"


@pytest.mark.slow
def test_the_chat_judge_builds_the_same_bytes_from_the_same_seed(tmp_path, monkeypatch):
    """tiny-chat-judge's build, training and grading included, cut to a few steps (the whole of
    it takes minutes): twice from one seed, the same bytes; from another, other weights."""
    from src.tiny import chat_judge

    monkeypatch.setitem(chat_judge.TRAINING, "steps", 3)
    monkeypatch.setattr(chat_judge, "HELD_OUT", 4)
    builds = [
        tiny.build("tiny-chat-judge", tmp_path / str(i), seed=s) for i, s in enumerate((0, 0, 1))
    ]
    for file in TINY_WEIGHTS["tiny-chat-judge"]:
        assert (builds[0] / file).read_bytes() == (builds[1] / file).read_bytes(), file
    weights = TINY_WEIGHTS["tiny-chat-judge"][0]
    assert (builds[0] / weights).read_bytes() != (builds[2] / weights).read_bytes()


@pytest.mark.slow
def test_ensure_reuses_a_finished_build_and_redoes_any_other(tmp_path, tiny_dir):
    """A finished build is reused, a half-made one made again (from seed 0, byte for byte the
    cached build), another seed is another build (other weights, other training data), a moved
    one is reused where it lies."""
    folder = tmp_path / "tiny-rm"  # the quickest to build
    shutil.copytree(tiny_dir / "tiny-rm", folder)
    record, weights = folder / tiny.RECORD, folder / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert tiny.ensure("tiny-rm", tmp_path) == folder
    assert weights.stat().st_mtime_ns == built_at  # reused

    (folder / "model.safetensors").write_bytes(b"half-written")
    record.unlink()  # as if killed before the record was written
    assert tiny.ensure("tiny-rm", tmp_path) == folder
    same_bytes(folder, tiny_dir / "tiny-rm")
    left = [p.name for p in tmp_path.glob(".*")]
    assert left == [".tiny-rm.lock"], "a staging folder was left behind: only ensure's lock"

    tiny.ensure("tiny-rm", tmp_path, seed=3)  # another seed is another build
    assert '"seed": 3' in record.read_text()
    cached = tiny_dir / "tiny-rm"
    for_seed = {d: (d / "model.safetensors").read_bytes() for d in (folder, cached)}
    assert for_seed[folder] != for_seed[cached], "other weights"
    trained = [json.loads((d / tiny.RECORD).read_text())["training"] for d in (folder, cached)]
    assert trained[0] != trained[1], "other training data"

    moved = tmp_path / "moved"
    moved.mkdir()
    folder.rename(moved / "tiny-rm")  # a moved cache is reused where it now lies, not rebuilt
    weights = (moved / "tiny-rm" / "model.safetensors").stat().st_mtime_ns
    tiny.ensure("tiny-rm", moved, seed=3)
    assert str(moved / "tiny-rm") in (moved / "tiny-rm" / tiny.RECORD).read_text()
    assert (moved / "tiny-rm" / "model.safetensors").stat().st_mtime_ns == weights


def test_the_chat_judges_build_is_keyed_by_what_it_reads_of_arena_hard(monkeypatch):
    """tiny-chat-judge's build identity names every Arena-Hard name its lessons and grades read
    (read from its source), changes with any of them, and not with the rest of that module."""
    import ast

    from src.evaluation import arena_hard
    from src.tiny import chat_judge

    source = ast.parse((REPO_ROOT / "src" / "tiny" / "chat_judge.py").read_text())
    read = {n.attr for n in ast.walk(source) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "arena_hard"}  # fmt: skip
    assert read <= set(chat_judge.FROM_ARENA_HARD), read - set(chat_judge.FROM_ARENA_HARD)

    def key() -> str:
        return tiny.build_identity("tiny-chat-judge", REPO_ROOT, 0, [])["builder_sha256"]

    before = key()
    monkeypatch.setattr(arena_hard, "JUDGE_MAX_TOKENS", 1)  # read by the eval, not the judge
    assert key() == before
    monkeypatch.setattr(arena_hard, "PROMPT_TEMPLATE", arena_hard.PROMPT_TEMPLATE + " ")
    assert key() != before


def test_a_builds_training_loop_says_how_far_it_is(monkeypatch, capfd):
    """Every PROGRESS_S seconds a line with the step, the loss and the time left (none after
    the last step, whose line is the summary)."""
    from src.tiny import teach

    monkeypatch.setattr(teach, "PROGRESS_S", 0.0)
    weight = torch.nn.Parameter(torch.zeros(1))
    teach.fit([weight], [[1.0]] * 4, lambda batch: ((weight - batch[0]) ** 2).sum(), 0.1, "toy")
    lines = capfd.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines[:-1]] == [
        f"[tiny] toy: step {n}/4 ({n / 4:.0%})" for n in (1, 2, 3)
    ]
    assert "s left" in lines[0] and lines[-1].startswith("[tiny] toy: 4 steps in ")


def test_a_copied_pairrm_points_at_its_own_backbone_and_loads(tiny_dir, tmp_path, capfd):
    """A PairRM's config.json names its backbone folder by path: a copy is reused (no rebuild)
    with that path pointed at the copy's backbone, which llm-blender then loads."""
    import shutil

    copy = tmp_path / "cache" / "tiny-pairrm"
    shutil.copytree(tiny_dir / "tiny-pairrm", copy)
    weights = (copy / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure("tiny-pairrm", copy.parent) == copy
    assert (copy / "model.safetensors").stat().st_mtime_ns == weights
    assert json.loads((copy / "config.json").read_text())["model_name"] == str(copy / "backbone")
    assert f"moved here from {tiny_dir / 'tiny-pairrm'}" in capfd.readouterr().err
    blender = blender_compat.load_pairrm(str(copy))
    assert blender.ranker_config.model_name == str(copy / "backbone")


def test_a_pairrm_without_its_backbone_is_not_reused_but_named(tiny_dir, tmp_path, capfd):
    """Copied without backbone/ (or the folder lost in place), a PairRM is no finished build:
    its config.json would read the original's backbone, or none. Named, and built again."""
    import shutil

    copy = tmp_path / "cache" / "tiny-pairrm"
    shutil.copytree(tiny_dir / "tiny-pairrm", copy, ignore=shutil.ignore_patterns("backbone"))
    assert not tiny.relocated(copy, "tiny-pairrm", 0)
    assert f"tiny-pairrm: {copy} has no backbone/config.json: built again" in capfd.readouterr().err
    assert tiny.is_built(tiny_dir / "tiny-pairrm", "tiny-pairrm", 0), "the original is whole"


@pytest.mark.parametrize("name", LMS)
def test_a_widened_model_has_the_new_rows_the_same_tokenizer_and_is_made_once(
    tiny_dir, tmp_path, name
):
    from src.tiny.widen import widened

    out = widened(name, 4096, tmp_path / "wide", tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings == 4096 == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == 4096
    assert len(AutoTokenizer.from_pretrained(out)) == len(
        AutoTokenizer.from_pretrained(tiny_dir / name)
    )
    made = (out / "model.safetensors").stat().st_mtime_ns
    assert widened(name, 4096, out, tiny_dir) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == made  # reused: same tiny build
    (out / tiny.RECORD).write_text("{}")  # as if the tiny model had been rebuilt since
    widened(name, 4096, out, tiny_dir)
    assert (out / tiny.RECORD).read_bytes() == (tiny_dir / name / tiny.RECORD).read_bytes()


def test_cli_rejects_an_unknown_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tiny.main(["tiny-llama"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "unknown tiny model" in err and "tiny-llama" in err and "tiny-mistral" in err


def test_cli_prints_the_built_folders(tiny_dir, capsys):
    tiny.main(["--cache-dir", str(tiny_dir), "tiny-mistral", "tiny-pairrm"])
    out = capsys.readouterr().out.split()
    assert out == [str(tiny_dir / "tiny-mistral"), str(tiny_dir / "tiny-pairrm")]


# -----------------------------------------------------------------------------
# PairRM through llm-blender


def test_compat_restores_the_removed_transformers_names(tokenizers):
    import transformers.utils.hub

    llm_blender = blender_compat.import_llm_blender()
    assert blender_compat.import_llm_blender() is llm_blender
    assert isinstance(transformers.utils.hub.TRANSFORMERS_CACHE, str)
    tok = tokenizers["tiny-gemma2"]  # (tiny-mistral, like Mistral, has no pad token)
    texts = ["hi there", "a longer text to pad against"]
    batch = tok.batch_encode_plus(texts, padding="max_length", max_length=12, truncation=True)
    assert batch["input_ids"] == tok(texts, padding="max_length", max_length=12).input_ids


@pytest.mark.slow
def test_llm_blender_is_imported_without_vllm_and_vllm_stays_importable():
    """A fresh interpreter (this one may hold vLLM): llm-blender, which imports vLLM wherever
    it is installed, goes without it; `import vllm` afterwards still works where vLLM is."""
    pytest.importorskip("vllm", reason="vLLM is not installed here: nothing to keep out")
    code = (
        "import sys; from src.ranking.blender_compat import import_llm_blender; "
        "m = import_llm_blender(); print('vllm' in sys.modules, m.blender.blender.is_vllm_imported); "
        "import vllm; print(vllm.LLM.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["False False", "LLM"]


def test_loading_pairrm_prints_nothing_a_user_cannot_act_on(tiny_dir, capfd):
    """No dataclasses_json warning per unset RankerConfig field, no note on the resized
    embeddings, no loading bar, no "Successfully loaded": every rank stage printed them; and the
    libraries' own settings are as they were afterwards."""
    import warnings

    from transformers.utils import logging as hf_logging

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blender_compat.load_pairrm(str(tiny_dir / "tiny-pairrm"))
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr() == ("", "")
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


def test_tiny_pairrm_is_llm_blenders_pair_ranker(blender, tiny_dir):
    assert blender.ranker_config.ranker_type == "pairranker"
    assert (blender.ranker_config.source_maxlength, blender.ranker_config.candidate_maxlength) == (
        1224,
        412,
    )
    backbone = AutoTokenizer.from_pretrained(tiny_dir / "tiny-pairrm" / "backbone")
    assert type(backbone).__name__ == "DebertaV2Tokenizer" and len(backbone) > 500
    # llm-blender's collator added its 4 prefix tokens and the embeddings were resized to match
    assert len(blender.ranker_tokenizer) == len(backbone) + 4
    embeddings = blender.ranker.pretrained_model.get_input_embeddings()
    assert embeddings.num_embeddings == len(backbone) + 4


def test_tiny_pairrm_ranks(blender):
    inputs = ["What is 2 + 2?", "Say hello."]
    candidates = [["4", "5", "four, clearly"], ["hello", "goodbye", "hi there, friend"]]
    scores = blender.rank(inputs, candidates, return_scores=True, batch_size=2, disable_tqdm=True)
    assert scores.shape == (2, 3)
    assert all(math.isfinite(s) for s in scores.flatten())
    assert scores.std() > 1e-3  # the texts move the scores: no ties up to rounding
    again = blender.rank(inputs, candidates, return_scores=True, batch_size=1, disable_tqdm=True)
    assert again == pytest.approx(scores, abs=1e-5)


def test_pairrm_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(blender_compat.hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(blender_compat.PairRMLoadError, match="cannot be fetched offline"):
        blender_compat.load_pairrm("llm-blender/PairRM", cache_dir=tmp_path)


def test_pairrm_hub_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    # online mode, but the download fails: llm-blender would say "reward model type ... not
    # supported"
    llm_blender = blender_compat.import_llm_blender()

    def no_network(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(blender_compat.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(llm_blender.blender.blender, "snapshot_download", no_network)
    with pytest.raises(blender_compat.PairRMLoadError, match="could not be reached"):
        blender_compat.load_pairrm("llm-blender/PairRM", cache_dir=tmp_path)


def test_pairrm_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(blender_compat.PairRMLoadError, match="no config.json"):
        blender_compat.load_pairrm(str(tmp_path))
