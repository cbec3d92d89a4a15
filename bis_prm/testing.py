"""Offline building blocks for tests and demos: tiny random checkpoints and synthetic data in the real layouts.

`make_corpus` writes a synthetic corpus in the VisualPRM400K-Raw layout (any size, for tests and benchmarks).
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
    "make_tiny_lm",
    "make_tiny_vlm",
    "tiny_tokenizer",
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
