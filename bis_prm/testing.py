"""Offline building blocks for tests and demos: tiny random checkpoints and synthetic data in the real layouts.

`make_corpus` writes a synthetic corpus in the VisualPRM400K-Raw layout (any size, for tests and benchmarks);
`write_visualprocessbench`, `write_processbench` and `write_prmbench` write benchmarks in their real layouts.
`make_tiny_vlm` writes a base `...ForConditionalGeneration` checkpoint (a couple of layers, hidden size 64, a tiny
vision tower) together with a working processor: a byte-level BPE tokenizer trained here on a small built-in text,
the architecture's special tokens, a ChatML-style chat template and an image processor sized so that an image costs
only a few tokens. Both load with `AutoProcessor.from_pretrained` / `AutoModelForImageTextToText.from_pretrained`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast

__all__ = [
    "QWEN2_5_VL_7B_SHAPES",
    "REAL_MAX_PIXELS",
    "TINY_ARCHITECTURES",
    "TINY_TEXT_ARCHITECTURES",
    "VISUALPROCESSBENCH_SOURCES",
    "make_corpus",
    "make_remote_internvl",
    "make_tiny_lm",
    "make_tiny_vlm",
    "tiny_tokenizer",
    "write_prmbench",
    "write_processbench",
    "write_visualprocessbench",
]

TINY_ARCHITECTURES = ("qwen2_5_vl", "internvl", "llava", "qwen2_vl")
TINY_TEXT_ARCHITECTURES = ("qwen2", "llama")

_HIDDEN = 64
_VISION_HIDDEN = 32

# A small text with the vocabulary of the sample rollouts, so BPE learns whole words ("Yes", "No", "Question").
_WORDS = (
    "user assistant system Question Process Answer Step Yes No yes no the a an of is are what which how many "
    "there image shown "
    "red blue green yellow black white orange purple circle square triangle rectangle star shape shapes colour "
    "color left right top bottom count total sum difference product area angle side length width height "
    "plus minus times divided equals so therefore first then next finally we find compute answer correct wrong "
    "add subtract multiply divide number numbers figure object objects big small large"
)
_CORPUS = [
    "Question: How many red circles are there?\nProcess: There are 2 red circles.\n\nSo the answer is 2.",
    "Question: What is 3 + 4?\nProcess: 3 + 4 = 7.\n\nThe answer is 7.",
    "Question: Which shape is blue?\nProcess: The square is blue.\n\nSo the answer is the square.",
    "Yes\nNo\nYes\nNo\nYes, it is correct.\nNo, it is wrong.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 100",
    "12 * 3 = 36. 48 / 6 = 8. 9 - 4 = 5. 7 + 8 = 15. (2 + 3) * 4 = 20.",
    _WORDS,
    _WORDS.title(),
]

_IM_START, _IM_END, _EOS = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Per architecture: the special tokens of its tokenizer (named ones become tokenizer attributes, e.g.
# `tokenizer.image_token`, which the processors read) and the placeholder its chat template writes for an image.
_SPECIAL_TOKENS = {
    "qwen2_5_vl": (
        {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        "<|vision_start|><|image_pad|><|vision_end|>",
    ),
    "internvl": (
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        "<IMG_CONTEXT>\n",
    ),
    "llava": ({"image_token": "<image>"}, "<image>\n"),
}
_SPECIAL_TOKENS["qwen2_vl"] = _SPECIAL_TOKENS["qwen2_5_vl"]
for _text_arch in TINY_TEXT_ARCHITECTURES:
    _SPECIAL_TOKENS[_text_arch] = ({}, "")

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '__IMAGE__' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_tokenizer(arch: str = "qwen2_5_vl", vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """
    Train a small byte-level BPE tokenizer on the built-in text, with the special tokens of `arch`.

    Args:
        arch (`str`, *optional*, defaults to `"qwen2_5_vl"`):
            One of `TINY_ARCHITECTURES`; decides the multimodal special tokens and the chat template's image
            placeholder.
        vocab_size (`int`, *optional*, defaults to `600`):
            Target vocabulary size of the BPE trainer.

    Example:

    ```python
    >>> tokenizer = tiny_tokenizer("qwen2_5_vl")
    >>> len(tokenizer("Yes").input_ids), len(tokenizer("No").input_ids)
    (1, 1)

    ```
    """
    if arch not in _SPECIAL_TOKENS:
        raise ValueError(
            f"Unknown tiny architecture {arch!r}; choose one of {TINY_ARCHITECTURES + TINY_TEXT_ARCHITECTURES}."
        )
    named_tokens, image_placeholder = _SPECIAL_TOKENS[arch]
    special_tokens = [_EOS, _IM_START, _IM_END, *named_tokens.values()]

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=_EOS,
        pad_token=_EOS,
        extra_special_tokens=named_tokens,
        chat_template=_CHAT_TEMPLATE.replace("__IMAGE__", image_placeholder),
    )
    for word in ("Yes", "No"):
        if len(tokenizer(word, add_special_tokens=False).input_ids) != 1:
            raise RuntimeError(f"The tiny tokenizer split {word!r} into several tokens; enlarge `vocab_size`.")
    return tokenizer


def _text_config(tokenizer, **extra) -> dict:
    """A 2-layer, 64-wide decoder shared by every tiny backbone."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": _HIDDEN,
        "intermediate_size": 2 * _HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **extra,
    }


def _qwen_vl(arch, tokenizer, overrides, shapes):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _SPECIAL_TOKENS[arch][0].items()}
    if arch == "qwen2_5_vl":
        config_class, processor_class = Qwen2_5_VLConfig, Qwen2_5_VLProcessor
        vision_config = {
            "depth": 1,
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": 2 * _VISION_HIDDEN,
            "num_heads": 2,
            "out_hidden_size": _HIDDEN,
            "fullatt_block_indexes": [0],
            "window_size": 56,
        }
    else:
        config_class, processor_class = Qwen2VLConfig, Qwen2VLProcessor
        vision_config = {
            "depth": 1,
            "embed_dim": _VISION_HIDDEN,
            "hidden_size": _HIDDEN,
            "num_heads": 2,
            "mlp_ratio": 2,
        }
    # head_dim 16: the multimodal rotary sections (temporal, height, width) split its 8 frequencies.
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    config = config_class(
        text_config={**_text_config(tokenizer, rope_parameters=rope), **shapes.get("text_config", {})},
        vision_config={**vision_config, **shapes.get("vision_config", {})},
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        **{"tie_word_embeddings": False, **overrides},
    )
    # 28-56 px images: a 56x56 image is 4x4 patches of 14 px, merged 2x2 -> 4 tokens.
    size = {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=tokenizer.chat_template,
    )
    return config, processor


def _internvl(arch, tokenizer, overrides, shapes):
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLProcessor, InternVLVideoProcessor

    image_size, patch_size = 28, 7  # 4x4 patches, pixel-shuffled by 0.5 -> 4 tokens per tile
    config = InternVLConfig(
        text_config={
            **_text_config(tokenizer, model_type="qwen2", tie_word_embeddings=False),
            **shapes.get("text_config", {}),
        },
        vision_config={
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": 2 * _VISION_HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": [image_size, image_size],
            "patch_size": [patch_size, patch_size],
            **shapes.get("vision_config", {}),
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        **{"tie_word_embeddings": False, **overrides},
    )
    size = {"height": image_size, "width": image_size}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, max_patches=2),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=4,
        chat_template=tokenizer.chat_template,
    )
    return config, processor


def _llava(arch, tokenizer, overrides, shapes):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaProcessor

    image_size, patch_size = 28, 14  # 2x2 patches + CLS, the CLS dropped by the "default" strategy -> 4 tokens
    config = LlavaConfig(
        text_config={
            **_text_config(tokenizer, model_type="qwen2", tie_word_embeddings=False),
            **shapes.get("text_config", {}),
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": 2 * _VISION_HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
            "projection_dim": _VISION_HIDDEN,
            **shapes.get("vision_config", {}),
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        **{"tie_word_embeddings": False, **overrides},
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return config, processor


_BUILDERS = {"qwen2_5_vl": _qwen_vl, "qwen2_vl": _qwen_vl, "internvl": _internvl, "llava": _llava}


# Qwen2.5-VL-7B-Instruct's shapes (its config.json), for random models of the real size (benchmarks on a GPU)
QWEN2_5_VL_7B_SHAPES = {
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
# Qwen2.5-VL's `max_pixels` in the BIS and VisualPRM recipes: up to 1,280 tokens per image
REAL_MAX_PIXELS = 1003520


def make_tiny_vlm(
    arch: str,
    path: str | os.PathLike,
    seed: int = 0,
    shapes: dict[str, dict] | None = None,
    max_pixels: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **overrides,
) -> Path:
    """
    Write a tiny random base VLM checkpoint and its processor to `path`, without any network access.

    Args:
        arch (`str`):
            `"qwen2_5_vl"` (`Qwen2_5_VLForConditionalGeneration`), `"internvl"` (`InternVLForConditionalGeneration`,
            the InternVL3-hf layout), `"llava"` (`LlavaForConditionalGeneration`) or `"qwen2_vl"`
            (`Qwen2VLForConditionalGeneration`, which has no explicit PRM class: it exercises the generic path).
        path (`str` or `os.PathLike`):
            Output directory (created if needed).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the random weights; the same seed gives the same checkpoint.
        shapes (`dict`, *optional*):
            Overrides of the `text_config` and `vision_config` fields, e.g. `QWEN2_5_VL_7B_SHAPES` for a random
            model of the real size (with the tiny tokenizer).
        max_pixels (`int`, *optional*):
            Qwen2.5-VL only: the image processor's pixel budget per image (the tiny default is 56x56, a few tokens;
            `REAL_MAX_PIXELS` gives real image-token counts).
        dtype (`torch.dtype`, *optional*):
            Weights dtype (fp32 by default).
        device (`str` or `torch.device`, *optional*):
            Where the weights are created (a GPU for large shapes).
        **overrides:
            Extra keyword arguments for the top-level model config.

    Returns:
        `Path`: the output directory.

    Example:

    ```python
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> path = make_tiny_vlm("qwen2_5_vl", "/tmp/tiny-qwen2_5_vl")  # doctest: +SKIP
    >>> model = AutoModelForImageTextToText.from_pretrained(path)  # doctest: +SKIP
    >>> processor = AutoProcessor.from_pretrained(path)  # doctest: +SKIP

    ```
    """
    if arch not in _BUILDERS:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {TINY_ARCHITECTURES}.")
    path = Path(path)
    tokenizer = tiny_tokenizer(arch)
    config, processor = _BUILDERS[arch](arch, tokenizer, overrides, shapes or {})
    if max_pixels is not None:
        processor.image_processor.size = {**dict(processor.image_processor.size), "longest_edge": max_pixels}
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_tiny_lm(
    arch: str,
    path: str | os.PathLike,
    seed: int = 0,
    chat_template: bool = True,
    added_tokens: Sequence[str] = (),
    **overrides,
) -> Path:
    """
    Write a tiny random causal LM checkpoint and its tokenizer to `path`, without any network access: the base of a
    text PRM.

    Args:
        arch (`str`):
            `"qwen2"` (`Qwen2ForCausalLM`, a real `Qwen2Config`) or `"llama"` (`LlamaForCausalLM`).
        path (`str` or `os.PathLike`):
            Output directory (created if needed).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the random weights.
        chat_template (`bool`, *optional*, defaults to `True`):
            Give the tokenizer a ChatML chat template, as instruct models have; `False` makes a base model's
            tokenizer (no template).
        added_tokens (`Sequence[str]`, *optional*):
            Tokens added to the vocabulary, each then one token (a PRM's step tag, e.g. math-shepherd's `"ки"`).
        **overrides:
            Fields of the model config (e.g. `hidden_size`).

    Returns:
        `Path`: the output directory.

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> path = make_tiny_lm("qwen2", "/tmp/tiny-qwen2")  # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained(path).config.model_type  # doctest: +SKIP
    'qwen2'

    ```
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if arch not in TINY_TEXT_ARCHITECTURES:
        raise ValueError(f"Unknown tiny text architecture {arch!r}; choose one of {TINY_TEXT_ARCHITECTURES}.")
    path = Path(path)
    tokenizer = tiny_tokenizer(arch)
    if not chat_template:
        tokenizer.chat_template = None
    tokenizer.add_tokens(list(added_tokens))
    config_class = Qwen2Config if arch == "qwen2" else LlamaConfig
    config = config_class(**{**_text_config(tokenizer), "tie_word_embeddings": True, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---- a checkpoint in the remote-code layout of InternVL2.5 (the input of `convert_internvl`) ----

_REMOTE_VISION = {"hidden_size": 32, "heads": 2, "intermediate": 64, "layers": 2, "image": 28, "patch": 7}
_REMOTE_TEXT = {"hidden_size": 64, "heads": 4, "kv_heads": 2, "intermediate": 96, "layers": 2}
_INTERNVL_IMAGE_TOKENS = [
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]


def _sentencepiece_internlm2(path: Path, add_dummy_prefix: bool = True) -> tuple[int, dict]:
    """An InternLM2-style tokenizer: a sentencepiece BPE `tokenizer.model` and a remote-code `tokenizer_config.json`
    whose added tokens (ChatML and the InternVL image tokens) follow the pieces. Returns (vocabulary size, config)."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 5),
        model_prefix=str(path / "tokenizer"),
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    pieces = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model")).get_piece_size()
    added = {0: "<unk>", 1: "<s>", 2: "</s>"}
    for offset, token in enumerate(["<|im_start|>", "<|im_end|>", *_INTERNVL_IMAGE_TOKENS]):
        added[pieces + offset] = token
    tokenizer_config = {
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "add_bos_token": True,
        "add_eos_token": False,
        "pad_token": "</s>",
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, t in added.items()
        },
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    return pieces + 2 + len(_INTERNVL_IMAGE_TOKENS), tokenizer_config


def _qwen2_tokenizer(path: Path) -> int:
    tokenizer = tiny_tokenizer("qwen2")
    tokenizer.add_tokens(_INTERNVL_IMAGE_TOKENS, special_tokens=True)
    tokenizer.save_pretrained(path)
    return len(tokenizer) + 3  # the embeddings of InternVL's Qwen2 LMs have spare rows


def _remote_config(
    llm_arch: str, vocab_size: int, vision_6b: bool, text_shape: dict, vision_shape: dict, **llm_extra
) -> dict:
    if llm_arch == "internlm2":
        llm = {
            "architectures": ["InternLM2ForCausalLM"],
            "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config"},
            "model_type": "internlm2",
            "bias": False,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000,
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
            "max_position_embeddings": 12,  # short, so the dynamic NTK scaling acts on the test's sequences
            "attn_implementation": "flash_attention_2",
            "pad_token_id": 2,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
    else:
        llm = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 32768,
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": 2,
            "bos_token_id": 0,
            "eos_token_id": 0,
            # the generic fields an old transformers wrote into every sub-config
            "use_cache": False,
            "temperature": 1.0,
            "top_k": 50,
            "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
            "torchscript": False,
            "use_bfloat16": True,
        }
    llm.update(
        hidden_size=text_shape["hidden_size"],
        intermediate_size=text_shape["intermediate"],
        num_hidden_layers=text_shape["layers"],
        num_attention_heads=text_shape["heads"],
        num_key_value_heads=text_shape["kv_heads"],
        vocab_size=vocab_size,
        hidden_act="silu",
        tie_word_embeddings=False,
        transformers_version="4.37.2",
        **llm_extra,
    )
    vision = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": vision_shape["hidden_size"],
        "intermediate_size": vision_shape["intermediate"],
        "num_hidden_layers": vision_shape["layers"],
        "num_attention_heads": vision_shape["heads"],
        "image_size": vision_shape["image"],
        "patch_size": vision_shape["patch"],
        "num_channels": 3,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "norm_type": "rms_norm" if vision_6b else "layer_norm",
        "qk_normalization": vision_6b,
        "qkv_bias": not vision_6b,
        "initializer_factor": 0.1,
        "use_flash_attn": True,
        "drop_path_rate": 0.1,
        "dropout": 0.0,
        "attention_dropout": 0.0,
    }
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"},
        "model_type": "internvl_chat",
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": vision_shape["image"],
        "max_dynamic_patch": 6,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internvl2_5",
        "use_thumbnail": True,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "llm_config": llm,
        "vision_config": vision,
    }


def _remote_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the remote code's names and shapes (`InternVLChatModel.state_dict()`)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, around=0.0):
        return around + scale * torch.randn(*shape, generator=generator)

    vision, llm = config["vision_config"], config["llm_config"]
    v, vi = vision["hidden_size"], vision["intermediate_size"]
    grid = vision["image_size"] // vision["patch_size"]
    w = {
        "vision_model.embeddings.class_embedding": rand(1, 1, v),
        "vision_model.embeddings.patch_embedding.weight": rand(v, 3, vision["patch_size"], vision["patch_size"]),
        "vision_model.embeddings.patch_embedding.bias": rand(v),
        "vision_model.embeddings.position_embedding": rand(1, grid * grid + 1, v),
    }
    for i in range(vision["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        w |= {p + "ls1": rand(v, around=0.5), p + "ls2": rand(v, around=0.5), p + "attn.qkv.weight": rand(3 * v, v)}
        if vision["qkv_bias"]:
            w[p + "attn.qkv.bias"] = rand(3 * v)
        if vision["qk_normalization"]:
            w |= {p + "attn.q_norm.weight": rand(v, around=1.0), p + "attn.k_norm.weight": rand(v, around=1.0)}
        w |= {p + "attn.proj.weight": rand(v, v), p + "attn.proj.bias": rand(v)}
        w |= {p + "mlp.fc1.weight": rand(vi, v), p + "mlp.fc1.bias": rand(vi)}
        w |= {p + "mlp.fc2.weight": rand(v, vi), p + "mlp.fc2.bias": rand(v)}
        for norm in ("norm1", "norm2"):
            w[p + f"{norm}.weight"] = rand(v, around=1.0)
            if vision["norm_type"] == "layer_norm":
                w[p + f"{norm}.bias"] = rand(v)
    h, hi = llm["hidden_size"], llm["intermediate_size"]
    packed = v * int(1 / config["downsample_ratio"]) ** 2
    w |= {"mlp1.0.weight": rand(packed, around=1.0), "mlp1.0.bias": rand(packed)}
    w |= {
        "mlp1.1.weight": rand(h, packed),
        "mlp1.1.bias": rand(h),
        "mlp1.3.weight": rand(h, h),
        "mlp1.3.bias": rand(h),
    }
    heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
    d = h // heads
    vocab = llm["vocab_size"]
    if llm["architectures"] == ["InternLM2ForCausalLM"]:
        w |= {"language_model.model.tok_embeddings.weight": rand(vocab, h, scale=1.0)}
        for i in range(llm["num_hidden_layers"]):
            p = f"language_model.model.layers.{i}."
            w[p + "attention.wqkv.weight"] = rand((heads + 2 * kv_heads) * d, h)
            w[p + "attention.wo.weight"] = rand(h, heads * d)
            if llm["bias"]:
                w[p + "attention.wqkv.bias"] = rand((heads + 2 * kv_heads) * d)
                w[p + "attention.wo.bias"] = rand(h)
            w |= {p + "feed_forward.w1.weight": rand(hi, h), p + "feed_forward.w3.weight": rand(hi, h)}
            w |= {p + "feed_forward.w2.weight": rand(h, hi)}
            w |= {p + "attention_norm.weight": rand(h, around=1.0), p + "ffn_norm.weight": rand(h, around=1.0)}
        w |= {"language_model.model.norm.weight": rand(h, around=1.0), "language_model.output.weight": rand(vocab, h)}
    else:
        w |= {"language_model.model.embed_tokens.weight": rand(vocab, h, scale=1.0)}
        for i in range(llm["num_hidden_layers"]):
            p = f"language_model.model.layers.{i}."
            for name, rows in (("q", heads * d), ("k", kv_heads * d), ("v", kv_heads * d)):
                w[p + f"self_attn.{name}_proj.weight"] = rand(rows, h)
                w[p + f"self_attn.{name}_proj.bias"] = rand(rows)
            w[p + "self_attn.o_proj.weight"] = rand(h, heads * d)
            w |= {p + "mlp.gate_proj.weight": rand(hi, h), p + "mlp.up_proj.weight": rand(hi, h)}
            w |= {p + "mlp.down_proj.weight": rand(h, hi)}
            w |= {p + "input_layernorm.weight": rand(h, around=1.0)}
            w |= {p + "post_attention_layernorm.weight": rand(h, around=1.0)}
        w |= {"language_model.model.norm.weight": rand(h, around=1.0), "language_model.lm_head.weight": rand(vocab, h)}
    return w


def make_remote_internvl(
    path: str | os.PathLike,
    llm: str = "internlm2",
    vision_6b: bool = False,
    shards: int = 2,
    add_dummy_prefix: bool = True,
    select_layer: int = -1,
    text: dict | None = None,
    vision: dict | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **llm_extra,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """
    Write a random checkpoint in the remote-code layout of InternVL2.5 (`InternVLChatModel`: its `config.json`
    fields, key names and shapes, sharded safetensors) with its tokenizer files, the input of `convert_internvl`.

    Args:
        path (`str` or `os.PathLike`):
            Output directory (created if needed).
        llm (`str`, *optional*, defaults to `"internlm2"`):
            `"internlm2"` (a packed `wqkv`, a sentencepiece `tokenizer.model` read by the remote `InternLM2Tokenizer`;
            needs `sentencepiece`) or `"qwen2"` (a fast tokenizer).
        vision_6b (`bool`, *optional*, defaults to `False`):
            An InternViT-6B-style tower (RMS norm, q/k norm, no qkv bias) instead of InternViT-300M (layer norm).
        shards (`int`, *optional*, defaults to `2`):
            Number of safetensors files.
        add_dummy_prefix (`bool`, *optional*, defaults to `True`):
            The sentencepiece model's dummy prefix (InternLM2 only).
        select_layer (`int`, *optional*, defaults to `-1`):
            The vision layer whose features feed the projector.
        text (`dict`, *optional*), vision (`dict`, *optional*):
            Shape overrides: `hidden_size`, `heads`, `kv_heads`, `intermediate`, `layers` (text); `hidden_size`,
            `heads`, `intermediate`, `layers`, `image`, `patch` (vision).
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Weights dtype.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the random weights.
        **llm_extra:
            Extra `llm_config` fields.

    Returns:
        `tuple`: the `config.json` contents and the weights, by their remote names.

    Example:

    ```python
    >>> config, weights = make_remote_internvl("/tmp/remote-internvl", llm="internlm2")  # doctest: +SKIP
    >>> "language_model.model.layers.0.attention.wqkv.weight" in weights  # doctest: +SKIP
    True

    ```
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if llm == "internlm2":
        vocab_size, _ = _sentencepiece_internlm2(path, add_dummy_prefix)
    elif llm == "qwen2":
        vocab_size = _qwen2_tokenizer(path)
    else:
        raise ValueError(f"Unknown remote InternVL language model {llm!r}; choose 'internlm2' or 'qwen2'.")
    text, vision = {**_REMOTE_TEXT, **(text or {})}, {**_REMOTE_VISION, **(vision or {})}
    config = _remote_config(llm, vocab_size, vision_6b, text, vision, **llm_extra)
    config["select_layer"] = select_layer
    config["torch_dtype"] = config["llm_config"]["torch_dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    weights = {key: tensor.to(dtype) for key, tensor in _remote_weights(config, seed).items()}
    keys = sorted(weights)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: weights[key] for key in keys[i::shards]}
        save_file(part, path / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}), encoding="utf-8")
    return config, weights


# ---- a synthetic corpus in the VisualPRM400K-Raw layout ----

_CORPUS_WORDS = (
    "the triangle area angle value figure shows compute therefore circle radius length equals total number of "
    "each side graph point line answer option 距离 角度 面积 température naïve ≤ ≥ π √ ∠ – “quoted” "
).split()


def _corpus_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_CORPUS_WORDS) for _ in range(n_words))


def _corpus_rollout(rng: random.Random, source: str, index: int, list_image: bool) -> dict:
    """One synthetic rollout record."""
    n_steps = rng.randint(1, 12)
    steps = []
    for j in range(n_steps):
        # later steps fail more often, like MC estimates along a solution
        correct = rng.choice([16, 16, 16, 15, 14, 12, 8, 4, 1, 0, 0]) if j < n_steps // 2 else rng.randint(0, 16)
        text = f"Step {j + 1}: {_corpus_text(rng, rng.randint(8, 40))}."
        steps.append({"step": text, "score": correct / 16, "num_mc_correct": correct, "num_mc_total": 16})
    image = f"VisualPRM400K-v1.1-Raw/{source}/{index:06d}.png"
    question_orig = f"{_corpus_text(rng, rng.randint(10, 40))}?"
    return {
        "image": [image, image.replace(".png", "_b.png")] if list_image else image,
        "question": f"<image>\n{question_orig}\nAnswer the question using a single word or phrase.",
        "question_orig": question_orig,
        "answer": rng.choice(["A", "B", "C", "D", "12", "3.5", "yes"]),
        "response": "\n\n".join(step["step"] for step in steps),
        "num_mc_sequences": 16,
        "steps_with_score": steps,
    }


def make_corpus(
    root: str | Path,
    num_sources: int = 38,
    rollouts_per_source: int = 100,
    seed: int = 0,
    list_image_sources: int = 3,
    list_image_share: float = 0.2,
) -> Path:
    """
    Write a synthetic corpus in the VisualPRM400K-Raw layout under `root/annotations` and return that folder.

    Rollouts look like the real ones: a long instruction-style question, 1-12 steps with MC scores in multiples of
    1/16 (16 MC samples, so BIS ties are common), unicode text; the first `list_image_sources` sources store `image`
    as a list in some rows (as multi-image sources do). No image file is written.

    Example:

    ```python
    >>> annotations = make_corpus(  # doctest: +SKIP
    ...     "/tmp/corpus", num_sources=38, rollouts_per_source=10527
    ... )  # ~400k rollouts
    >>> len(list(annotations.glob("*.jsonl")))  # doctest: +SKIP
    38

    ```
    """
    rng = random.Random(seed)
    annotations = Path(root) / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    for s in range(num_sources):
        source = f"source_{s:02d}"
        with open(annotations / f"{source}.jsonl", "w", encoding="utf-8") as f:
            for i in range(rollouts_per_source):
                list_image = s < list_image_sources and rng.random() < list_image_share
                f.write(json.dumps(_corpus_rollout(rng, source, i, list_image), ensure_ascii=False) + "\n")
    return annotations


# ---- a synthetic benchmark in the VisualProcessBench layout ----

# The sources of the real test.jsonl, as it names them, with their row counts (2,866 rows, 26,950 steps in all)
VISUALPROCESSBENCH_SOURCES = {
    "MathVerse_MINI_Vision_Only": 1026,
    "MathVision_MINI": 712,
    "DynaMath": 570,
    "WeMath": 291,
    "MMMU_DEV_VAL": 267,
}


def _figure(rng: random.Random, width: int, height: int):
    """A plot-like figure: white background, axes and a few coloured shapes (compresses like real figures)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.line((width // 10, height - height // 10, width - width // 20, height - height // 10), fill="black", width=2)
    draw.line((width // 10, height // 20, width // 10, height - height // 10), fill="black", width=2)
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.randrange(width // 2), rng.randrange(height // 2)
        box = (x0, y0, x0 + rng.randint(10, width // 2), y0 + rng.randint(10, height // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, outline=colour, width=3)
    return image


def write_visualprocessbench(
    root: str | os.PathLike,
    rows: int | None = None,
    seed: int = 0,
    image_side: tuple[int, int] = (300, 1500),
    steps: tuple[int, int] = (4, 20),
    two_image_share: float = 0.05,
    sources: dict[str, int] | None = None,
) -> Path:
    """
    Write a synthetic benchmark in the exact VisualProcessBench layout (`test.jsonl` + `images/`) and return `root`.

    Rows are spread over the real file's five sources in its proportions and with its names
    (`MathVerse_MINI_Vision_Only`, ...); `image` is always a list of paths relative to `root` (a few rows hold two
    images), `response` holds `steps` and `process_correctness` (1 / -1 / 0, about 70 / 22 / 8 %), and every row
    carries `question`, `answer`, `policy_model` and `data_source`. Image sides are drawn uniformly in `image_side`.

    Args:
        root (`str` or `os.PathLike`): output directory.
        rows (`int`, *optional*): number of rows; defaults to the real 2,866.
        seed (`int`, *optional*, defaults to `0`): the same seed writes the same bytes.
        image_side (`tuple[int, int]`, *optional*, defaults to `(300, 1500)`): range of image widths and heights.
        steps (`tuple[int, int]`, *optional*, defaults to `(4, 20)`): range of steps per row.
        two_image_share (`float`, *optional*, defaults to `0.05`): share of rows with two images.
        sources (`dict[str, int]`, *optional*): source name -> relative weight; defaults to the real ones.

    Example:

    ```python
    >>> bench = write_visualprocessbench("/tmp/vpb", rows=100, image_side=(28, 56))  # doctest: +SKIP
    >>> sorted(p.name for p in bench.iterdir())  # doctest: +SKIP
    ['images', 'test.jsonl']

    ```
    """
    root = Path(root)
    rng = random.Random(seed)
    weights = sources or VISUALPROCESSBENCH_SOURCES
    rows = sum(VISUALPROCESSBENCH_SOURCES.values()) if rows is None else rows
    names = list(weights)
    lines = []
    for index in range(rows):
        source = rng.choices(names, weights=[weights[name] for name in names])[0]
        images = []
        for k in range(2 if rng.random() < two_image_share else 1):
            relative = f"images/{source}/{index:05d}_{k}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            _figure(rng, rng.randint(*image_side), rng.randint(*image_side)).save(root / relative)
            images.append(relative)
        n = rng.randint(*steps)
        record = {
            "image": images,
            "question": f"{_corpus_text(rng, rng.randint(15, 60))}?",
            "answer": rng.choice(["A", "B", "C", "D", "12", "3.5"]),
            "response": {
                "steps": [f"{_corpus_text(rng, rng.randint(8, 50))}." for _ in range(n)],
                "process_correctness": rng.choices([1, -1, 0], weights=[70, 22, 8], k=n),
            },
            "policy_model": rng.choice(["InternVL2.5-8B", "Qwen2-VL-72B", "GPT-4o"]),
            "data_source": source,
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.jsonl").write_text("".join(lines), encoding="utf-8")
    return root


PROCESSBENCH_SPLITS = {"gsm8k": 400, "math": 1000, "olympiadbench": 1000, "omnimath": 1000}


def write_processbench(
    root: str | os.PathLike,
    rows: int | dict[str, int] | None = None,
    seed: int = 0,
    steps: tuple[int, int] = (1, 12),
    layout: str = "official",
    json_lines: bool = False,
    correct_share: float = 0.45,
) -> Path:
    """
    Write a synthetic benchmark in the ProcessBench layout, one file per split, and return `root`.

    `layout="official"` writes the fields of `Qwen/ProcessBench` (`id`, `generator`, `problem`, `steps`,
    `final_answer_correct`, `label`: the 0-based first wrong step or -1), `layout="trl"` TRL's stepwise fields
    (`prompt`, `completions`, `labels`: `True` up to the first wrong step, `False` from there). Files are
    `<split>.json` JSON arrays (indented, one field per line) or, with `json_lines=True`, `<split>.jsonl`.

    Args:
        root (`str` or `os.PathLike`): output directory.
        rows (`int` or `dict[str, int]`, *optional*): problems per split (an `int`: the same for the four splits);
            defaults to the real 400 / 1,000 / 1,000 / 1,000.
        seed (`int`, *optional*, defaults to `0`): the same seed writes the same bytes.
        steps (`tuple[int, int]`, *optional*, defaults to `(1, 12)`): range of steps per problem.
        layout (`str`, *optional*, defaults to `"official"`): `"official"` or `"trl"`.
        json_lines (`bool`, *optional*, defaults to `False`): JSON lines instead of JSON arrays.
        correct_share (`float`, *optional*, defaults to `0.45`): share of all-correct solutions.

    Example:

    ```python
    >>> bench = write_processbench("/tmp/pb", rows=10)  # doctest: +SKIP
    >>> sorted(p.name for p in bench.iterdir())  # doctest: +SKIP
    ['gsm8k.json', 'math.json', 'olympiadbench.json', 'omnimath.json']

    ```
    """
    if layout not in ("official", "trl"):
        raise ValueError(f'layout must be "official" or "trl", got {layout!r}.')
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = (
        rows if isinstance(rows, dict) else {s: (n if rows is None else rows) for s, n in PROCESSBENCH_SPLITS.items()}
    )
    for split, count in counts.items():
        records = []
        for index in range(count):
            n = rng.randint(*steps)
            label = -1 if rng.random() < correct_share else rng.randrange(n)
            problem = f"{_corpus_text(rng, rng.randint(10, 40))}?"
            solution = [f"{_corpus_text(rng, rng.randint(5, 30))}." for _ in range(n)]
            if layout == "official":
                records.append(
                    {
                        "id": f"{split}-{index}",
                        "generator": rng.choice(["Qwen2-7B-Instruct", "Llama-3.1-70B-Instruct", "QwQ-32B-Preview"]),
                        "problem": problem,
                        "steps": solution,
                        "final_answer_correct": label == -1 or rng.random() < 0.3,
                        "label": label,
                    }
                )
            else:
                labels = [True] * n if label == -1 else [True] * label + [False] * (n - label)
                records.append({"prompt": problem, "completions": solution, "labels": labels})
        if json_lines:
            text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
            (root / f"{split}.jsonl").write_text(text, encoding="utf-8")
        else:
            (root / f"{split}.json").write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return root


PRMBENCH_CATEGORIES = (
    "circular",
    "confidence",
    "counterfactual",
    "deception",
    "domain_inconsistency",
    "missing_condition",
    "redundency",
    "step_contradiction",
)


def write_prmbench(root: str | os.PathLike, rows: int = 4, seed: int = 0, steps: tuple[int, int] = (2, 10)) -> Path:
    """
    Write a synthetic benchmark in the PRMBench layout (the official toolkit's `prmtest_classified` data: one JSONL
    file per category, `prm800k_test_p1_4o_<category>.jsonl`, and `prm_test_p12_multi_solutions.jsonl`) and return
    `root`.

    Every line has the real fields: `original_question`, `modified_question`, `original_process`,
    `modified_process` (steps numbered `"1. "`, ...), `modified_steps`, `error_steps` (1-based; a few name a step
    past the end, as in the real data), `reason`, `idx`, `question` and `classification`; the multi-solution lines
    have no error step and carry `ground_truth` and `original_response`.

    Args:
        root (`str` or `os.PathLike`): output directory.
        rows (`int`, *optional*, defaults to `4`): lines per file (the same `idx` values in every file).
        seed (`int`, *optional*, defaults to `0`): the same seed writes the same bytes.
        steps (`tuple[int, int]`, *optional*, defaults to `(2, 10)`): range of steps per solution.

    Example:

    ```python
    >>> bench = write_prmbench("/tmp/prmbench", rows=3)  # doctest: +SKIP
    >>> len(list(bench.iterdir()))  # doctest: +SKIP
    9

    ```
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    originals = []
    for index in range(rows):
        n = rng.randint(*steps)
        question = f"{_corpus_text(rng, rng.randint(10, 30))}?"
        originals.append(
            (f"prm_test_p1_{index}", question, [f"{_corpus_text(rng, rng.randint(5, 20))}." for _ in range(n)])
        )
    for category in (*PRMBENCH_CATEGORIES, "multi_solutions"):
        lines = []
        for idx, question, process in originals:
            n = rng.randint(*steps)
            modified = [f"{j + 1}. {_corpus_text(rng, rng.randint(5, 20))}." for j in range(n)]
            if category == "multi_solutions":
                error_steps: list[int] = []
                modified = [f"Step {j + 1}. {step.split('. ', 1)[1]}" for j, step in enumerate(modified)]
            else:
                error_steps = sorted(rng.sample(range(1, n + 1), rng.randint(1, min(3, n))))
                if rng.random() < 0.1:
                    error_steps.append(n + 1)  # the real data has a few of these; they name no step
            record = {
                "original_question": question,
                "modified_question": question if category != "missing_condition" else question[: len(question) // 2],
                "original_process": [f"{j + 1}. {step}" for j, step in enumerate(process)],
                "modified_process": modified,
                "modified_steps": list(error_steps),
                "error_steps": error_steps,
                "reason": _corpus_text(rng, 12),
                "idx": idx,
                "question": question,
                "classification": category,
            }
            if category == "multi_solutions":
                record["ground_truth"] = rng.choice(["12", "3.5", "7"])
                record["original_response"] = "\n\n".join(process)
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        name = (
            "prm_test_p12_multi_solutions.jsonl"
            if category == "multi_solutions"
            else f"prm800k_test_p1_4o_{category}.jsonl"
        )
        (root / name).write_text("".join(lines), encoding="utf-8")
    return root
