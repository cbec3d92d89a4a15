"""Tiny random vision-language checkpoints for tests and demos, built fully offline.

`make_tiny_vlm` writes a base `...ForConditionalGeneration` checkpoint (a couple of layers, hidden size 64, a tiny
vision tower) together with a working processor: a byte-level BPE tokenizer trained here on a small built-in text,
the architecture's special tokens, a ChatML-style chat template and an image processor sized so that an image costs
only a few tokens. Both load with `AutoProcessor.from_pretrained` / `AutoModelForImageTextToText.from_pretrained`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast

__all__ = ["TINY_ARCHITECTURES", "make_tiny_vlm", "tiny_tokenizer"]

TINY_ARCHITECTURES = ("qwen2_5_vl", "internvl", "llava")

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
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {TINY_ARCHITECTURES}.")
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


def _qwen2_5_vl(tokenizer, overrides):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _SPECIAL_TOKENS["qwen2_5_vl"][0].items()}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": _HIDDEN,
            "intermediate_size": 2 * _HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": 2 * _VISION_HIDDEN,
            "num_heads": 2,
            "out_hidden_size": _HIDDEN,
            "fullatt_block_indexes": [0],
            "window_size": 56,
        },
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        **{"tie_word_embeddings": False, **overrides},
    )
    # 28-56 px images: a 56x56 image is 4x4 patches of 14 px, merged 2x2 -> 4 tokens.
    size = {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=tokenizer.chat_template,
    )
    return config, processor


def _internvl(tokenizer, overrides):
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLProcessor, InternVLVideoProcessor

    image_size, patch_size = 28, 7  # 4x4 patches, pixel-shuffled by 0.5 -> 4 tokens per tile
    config = InternVLConfig(
        text_config={
            "model_type": "qwen2",
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
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": 2 * _VISION_HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": [image_size, image_size],
            "patch_size": [patch_size, patch_size],
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


def _llava(tokenizer, overrides):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaProcessor

    image_size, patch_size = 28, 14  # 2x2 patches + CLS, the CLS dropped by the "default" strategy -> 4 tokens
    config = LlavaConfig(
        text_config={
            "model_type": "qwen2",
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
            "tie_word_embeddings": False,
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


_BUILDERS = {"qwen2_5_vl": _qwen2_5_vl, "internvl": _internvl, "llava": _llava}


def make_tiny_vlm(arch: str, path: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """
    Write a tiny random base VLM checkpoint and its processor to `path`, without any network access.

    Args:
        arch (`str`):
            `"qwen2_5_vl"` (`Qwen2_5_VLForConditionalGeneration`), `"internvl"` (`InternVLForConditionalGeneration`,
            the InternVL3-hf layout) or `"llava"` (`LlavaForConditionalGeneration`).
        path (`str` or `os.PathLike`):
            Output directory (created if needed).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the random weights; the same seed gives the same checkpoint.
        **overrides:
            Extra keyword arguments for the top-level model config.

    Returns:
        `Path`: the output directory.

    Example:

    ```python
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> path = make_tiny_vlm("qwen2_5_vl", "/tmp/tiny-qwen2_5_vl")
    >>> model = AutoModelForImageTextToText.from_pretrained(path)
    >>> processor = AutoProcessor.from_pretrained(path)
    ```
    """
    if arch not in _BUILDERS:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {TINY_ARCHITECTURES}.")
    path = Path(path)
    tokenizer = tiny_tokenizer(arch)
    config, processor = _BUILDERS[arch](tokenizer, overrides)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
