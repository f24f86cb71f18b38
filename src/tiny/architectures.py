"""The tiny models' architectures and tokenizers, untrained: the real classes with tiny configs.

- tiny causal LMs: MistralForCausalLM / Gemma2ForCausalLM with the real chat templates
- a tiny reward model: MistralForSequenceClassification (1 label) with Mistral's template
- a tiny PairRM: a DeBERTa-v2 backbone and llm-blender's pair ranker built on it

Tokenizers are trained here on the repository's texts (a byte-level BPE for the LMs, a
SentencePiece unigram for DeBERTa), so nothing is downloaded. src/tiny/models.py trains the models
(src/tiny/teach.py) and saves them.
"""

from __future__ import annotations

import functools
import io
import json
import random
from pathlib import Path
from types import SimpleNamespace

# The chat templates, verbatim from the tokenizer_config.json of the real models.
# Mistral-7B-Instruct-v0.2 (the original template, as in the SPPO checkpoints): no system role,
# "<s>[INST] hi [/INST]", every assistant turn ends with "</s>".
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)
# gemma-2-9b-it: raises on a system role, the assistant is called "model", contents are trimmed.
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# (template, BOS) of each policy: how the rank and eval stages show a prompt to PairRM
POLICY_PROMPT_FORMATS = ((MISTRAL_CHAT_TEMPLATE, "<s>"), (GEMMA2_CHAT_TEMPLATE, "<bos>"))

LM_VOCAB_SIZE = 2048  # the BPE stops earlier if the texts have fewer distinct merges
RANKER_VOCAB_SIZE = 1024
MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]  # ids as in Mistral: 0, 1, 2
GEMMA2_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
# the sizes of every tiny transformer: 2 layers of width 64
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
# The policies' attention: 2 query heads sharing 1 key/value head (grouped-query, as both real
# models), each of 32 dims. vLLM's CPU attention kernels take head sizes 32, 64, 80 and up
# ("Unsupported CPU attention configuration: head_dim=16"), so 32 is the smallest it serves; the
# projections keep the sizes that 4 heads of 16 over 2 key/value heads had.
POLICY_ATTENTION = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}


@functools.cache
def _compiled(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def chat_prompt(prompt: str, template: str, bos: str) -> str:
    """A user turn rendered by `template` for generation, as the tokenizer's
    apply_chat_template(..., add_generation_prompt=True) renders it."""
    return _compiled(template).render(
        messages=[{"role": "user", "content": prompt}], add_generation_prompt=True, bos_token=bos
    )


def policy_prompt(prompt: str, rng: random.Random) -> str:
    """The prompt as a tiny policy's template shows it to PairRM (either policy's, at random)."""
    return chat_prompt(prompt, *rng.choice(POLICY_PROMPT_FORMATS))


# -----------------------------------------------------------------------------
# causal LMs: byte-level BPE tokenizer + real architecture with a tiny config


def lm_tokenizer(
    texts: list[str],
    specials: list[str],
    chat_template: str,
    bos: str,
    eos: str,
    unk: str,
    pad: str | None = None,
    words: tuple[str, ...] = (),
):
    """Train a byte-level BPE (no unknown bytes, ever) and wrap it for transformers.

    `specials` come first, so their ids are fixed; like the real tokenizers, encoding adds BOS
    (and never EOS), so a rendered chat prompt must be encoded with add_special_tokens=False.
    `words` are kept whole: tokens of their own, after the BPE's, decoded as text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LM_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.add_tokens(list(words))
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, specials.index(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        additional_special_tokens=[t for t in specials if t not in (bos, eos, unk, pad)],
        chat_template=chat_template,
    )


def mistral(
    texts: list[str],
    sizes: dict = TINY,
    attention: dict = POLICY_ATTENTION,
    max_position_embeddings: int = 4096,
    words: tuple[str, ...] = (),
):
    """(MistralForCausalLM, tokenizer, generation config), random weights from torch's RNG; the
    keywords give other sizes and whole words (tiny-chat-judge's, src/tiny/chat_judge.py)."""
    from transformers import MistralConfig, MistralForCausalLM

    # [INST]/[/INST] are single special tokens here (plain text in the real v0.2 tokenizer) so
    # that prompts stay short.
    tok = lm_tokenizer(
        texts, MISTRAL_SPECIALS, MISTRAL_CHAT_TEMPLATE, "<s>", "</s>", "<unk>", words=words
    )
    config = MistralConfig(
        vocab_size=len(tok),
        **sizes,
        **attention,
        max_position_embeddings=max_position_embeddings,
        rope_theta=1e6,  # v0.2's
        sliding_window=None,  # v0.2 has none
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    # Like the real model: no pad token (the pipeline must choose one).
    generation = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    return MistralForCausalLM(config), tok, generation


def gemma2(texts: list[str]):
    """(Gemma2ForCausalLM, tokenizer, generation config), random weights from torch's RNG."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # Ids as in Gemma: <pad> 0, <eos> 1, <bos> 2, <unk> 3.
    tok = lm_tokenizer(
        texts, GEMMA2_SPECIALS, GEMMA2_CHAT_TEMPLATE, "<bos>", "<eos>", "<unk>", pad="<pad>"
    )
    config = Gemma2Config(
        vocab_size=len(tok),
        **TINY,  # one sliding-window layer, one global layer
        **POLICY_ATTENTION,
        query_pre_attn_scalar=POLICY_ATTENTION["head_dim"],  # = head_dim, as in gemma-2-9b
        sliding_window=4096,
        max_position_embeddings=8192,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        # Gemma ties its LM head to embeddings scaled by sqrt(hidden_size); from the usual 0.02
        # that tied head learned unreliably in a few hundred steps (for 2 build seeds in 5 the
        # pretrained model mixed up its sentences), from 0.05 it learned every time
        initializer_range=0.05,
    )
    # As gemma-2-9b-it's generation_config: a turn ends at <eos> or at <end_of_turn>.
    generation = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")],
        "pad_token_id": tok.pad_token_id,
    }
    return Gemma2ForCausalLM(config), tok, generation


def reward_model(texts: list[str], family: str, attention: dict | None = None):
    """(a 1-label sequence classifier, tokenizer): a scalar reward read at the last non-pad token,
    as ArmoRM-style judges are. `family`: "mistral" (MistralForSequenceClassification, Mistral's
    template) or "gemma2" (Gemma2ForSequenceClassification, Gemma-2's template). `attention`:
    other heads than tiny-rm's 4 of 2 dims (tiny-rm32 takes POLICY_ATTENTION's, which vLLM's CPU
    attention serves).

    Unlike the policies it has a pad token of its own (real reward models ship one), so the
    end-of-turn token the template puts after the response is read, not mistaken for padding:
    transformers' classifier reads the last token that is not the pad token, vLLM's pooler the
    last token, and both read that end of turn.
    """
    from transformers import (
        Gemma2Config,
        Gemma2ForSequenceClassification,
        MistralConfig,
        MistralForSequenceClassification,
    )

    if family == "mistral":
        specials, template, bos, eos = (
            [*MISTRAL_SPECIALS, "<pad>"],
            MISTRAL_CHAT_TEMPLATE,
            "<s>",
            "</s>",
        )
        tok = lm_tokenizer(texts, specials, template, bos, eos, "<unk>", "<pad>")
        config = MistralConfig(
            sliding_window=None, max_position_embeddings=4096, vocab_size=len(tok), **TINY
        )
        classifier = MistralForSequenceClassification
    else:
        tok = lm_tokenizer(
            texts, GEMMA2_SPECIALS, GEMMA2_CHAT_TEMPLATE, "<bos>", "<eos>", "<unk>", "<pad>"
        )
        config = Gemma2Config(head_dim=16, query_pre_attn_scalar=16, vocab_size=len(tok), **TINY)
        classifier = Gemma2ForSequenceClassification
    config.update(
        {
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_labels": 1,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            **(attention or {}),
        }
    )
    return classifier(config), tok


# -----------------------------------------------------------------------------
# PairRM: a DeBERTa-v2 backbone folder + llm-blender's pair ranker built on it


def deberta_tokenizer(texts: list[str]):
    """A DeBERTa-v2 tokenizer with a SentencePiece unigram vocabulary trained on `texts`.

    SentencePiece (single-threaded) trains reproducibly, the tokenizers library's unigram
    trainer does not. The vocabulary goes in as (piece, score) pairs: on transformers 5,
    DebertaV2Tokenizer(vocab_file=...) ignores the file and keeps a 7-token vocabulary.
    Special ids follow deberta-v3: [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3.
    """
    import sentencepiece as spm
    from transformers import DebertaV2Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=RANKER_VOCAB_SIZE,
        hard_vocab_limit=False,  # small texts may not support the full size
        pad_id=0,
        pad_piece="[PAD]",
        bos_id=1,
        bos_piece="[CLS]",
        eos_id=2,
        eos_piece="[SEP]",
        unk_id=3,
        unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"],
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return DebertaV2Tokenizer(vocab=vocab, unk_id=3)


def pairrm(
    out: Path,
    final: Path,
    texts: list[str],
    *,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    position_buckets: int = 32,
    initializer_range: float = 0.02,
):
    """llm-blender's pair ranker on a DeBERTa-v3-style backbone, random weights from torch's RNG.

    Writes into `out` the backbone folder and the ranker's config.json (which names the backbone
    by `final`, the folder's absolute path once in place: loadranker() reads it as given); returns
    the ranker in a Blender-like namespace (`ranker`, `ranker_collator`). The weights are the
    caller's to train and save (`save_pairrm`). The keywords give other sizes
    (benchmarks/ranking.py builds a PairRM of the real backbone's shape with them).
    """
    from transformers import DebertaV2Config, DebertaV2Model

    from src.ranking.blender_compat import import_llm_blender

    llm_blender = import_llm_blender()
    from llm_blender.blender.blender_utils import load_ranker

    # The backbone: relative positions only, as PairRM's deberta-v3-large, so it takes PairRM's
    # 1224 + 2 x 412 tokens; fewer position buckets than its 256 (log-spaced beyond +-16): the
    # same reach, less work per step, and the tiny one learns the toy preference more reliably.
    tok = deberta_tokenizer(texts)
    config = DebertaV2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=position_buckets,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
        initializer_range=initializer_range,
        pad_token_id=tok.pad_token_id,
    )
    DebertaV2Model(config).save_pretrained(out / "backbone")
    tok.save_pretrained(out / "backbone")

    # The ranker, built by llm-blender itself: its collator adds 4 prefix tokens to the
    # tokenizer and its builder resizes the embeddings and adds the comparison head.
    ranker_config = llm_blender.RankerConfig(
        ranker_type="pairranker",
        model_type="deberta",
        model_name=str(final / "backbone"),
        source_maxlength=1224,  # PairRM's defaults
        candidate_maxlength=412,
    )
    # (unset fields are left out: llm-blender warns about every null it reads back)
    fields = {k: v for k, v in ranker_config.to_dict().items() if v is not None}
    (out / "config.json").write_text(json.dumps(fields, indent=2) + "\n")
    ranker_config.model_name = str(out / "backbone")  # built from the staged copy
    ranker, _, collator = load_ranker(ranker_config)
    return SimpleNamespace(ranker=ranker, ranker_collator=collator)


def save_pairrm(blender, out: Path) -> None:
    import safetensors.torch

    safetensors.torch.save_model(blender.ranker, str(out / "model.safetensors"))
