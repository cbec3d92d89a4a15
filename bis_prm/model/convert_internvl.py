"""Convert an InternVL2 / InternVL2.5 remote-code checkpoint into transformers' `InternVLForConditionalGeneration`.

`OpenGVLab/InternVL2_5-8B`, `OpenGVLab/VisualPRM-8B` and the other sizes are `InternVLChatModel` checkpoints that load
only with `trust_remote_code=True`: an InternViT vision tower (`vision_model.*`), an MLP projector (`mlp1.*`) and a
language model (`language_model.*`) that is InternLM2 (with a packed `wqkv`), Qwen2 or Llama. [`convert_internvl`]
reads their safetensors and JSON files only (no remote code runs) and writes the stock layout: InternLM2 becomes
Llama (the q/k/v projections unpacked from `wqkv` group by group), Qwen2 and Llama stay as they are, InternViT gets
the names of `InternVLVisionModel` and `mlp1` those of `InternVLMultiModalProjector`. The processor is
`InternVLProcessor` with the GotOcr2 image processor tiling as the checkpoint's config says (`force_image_size`,
`max_dynamic_patch` tiles plus a thumbnail), the tokenizer a fast tokenizer (InternLM2's sentencepiece model is
converted to a `tokenizers` BPE with byte fallback) and the chat template the checkpoint's conversation template.

Every source tensor is checked before anything is written: a key the converter does not know, a tensor of the wrong
shape or a weight the model needs but the checkpoint lacks stops the conversion with a message naming it. The weights
are then read tensor by tensor (memory-mapped) and written shard by shard (`max_shard_size`, 5 GB by default) into a
temporary folder next to the output, renamed to the output at the end: the private memory it needs stays below one
shard (the tensors split out of `wqkv` / `qkv`; the rest are pages of the mapped files), not twice the model, and a
failed conversion leaves no half-written folder behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers.utils import logging

__all__ = ["InternVLConversionError", "chat_template", "convert_internvl", "internvl_config"]

logger = logging.get_logger(__name__)

# the ImageNet statistics of InternVL's `build_transform`
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
_IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
# The files a conversion reads from a Hub repository (no `*.py`: remote code is never downloaded)
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.tiktoken"]

# conversation templates of InternVL (`internvl/conversation.py`): system message and the separator after each turn
_SYSTEM_INTERNVL2_5 = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
_SYSTEM_INTERNVL2 = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
_TEMPLATES = {
    "internvl2_5": (_SYSTEM_INTERNVL2_5, "<|im_end|>\n"),
    "internlm2-chat": (_SYSTEM_INTERNVL2, "<|im_end|>"),
    "Hermes-2": (_SYSTEM_INTERNVL2, "<|im_end|>"),
}


class InternVLConversionError(ValueError):
    """A checkpoint that cannot be converted: the message names the file, key, shape or config field."""


# ---- config ----


def _rope_parameters(llm: dict) -> dict:
    theta = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind not in ("linear", "dynamic"):
        # InternLM2 itself implements only these two (`InternLM2Attention._init_rope`)
        raise InternVLConversionError(f"llm_config.rope_scaling type {kind!r} is not one InternLM2 implements")
    return {"rope_type": kind, "factor": float(scaling["factor"]), "rope_theta": theta}


def _internlm2_text_config(llm: dict):
    from transformers import LlamaConfig

    hidden, heads = llm["hidden_size"], llm["num_attention_heads"]
    if hidden % heads:
        raise InternVLConversionError(
            f"llm_config: hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        )
    kv_heads = llm.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise InternVLConversionError(
            f"llm_config: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    return LlamaConfig(
        vocab_size=llm["vocab_size"],
        hidden_size=hidden,
        intermediate_size=llm["intermediate_size"],
        num_hidden_layers=llm["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        hidden_act=llm.get("hidden_act", "silu"),
        max_position_embeddings=llm.get("max_position_embeddings", 2048),
        rms_norm_eps=llm.get("rms_norm_eps", 1e-6),
        rope_parameters=_rope_parameters(llm),
        # InternLM2's `bias` is on wqkv and wo only, as Llama's `attention_bias`; its MLP never has one
        attention_bias=bool(llm.get("bias", True)),
        mlp_bias=False,
        bos_token_id=llm.get("bos_token_id", 1),
        eos_token_id=llm.get("eos_token_id", 2),
        pad_token_id=llm.get("pad_token_id", 0),
        tie_word_embeddings=False,
        initializer_range=llm.get("initializer_range", 0.02),
    )


# fields of the remote configs that only the remote code reads
_REMOTE_ONLY_FIELDS = {
    "_name_or_path",
    "_attn_implementation_autoset",
    "architectures",
    "attn_implementation",
    "auto_map",
    "model_type",
    "torch_dtype",
    "transformers_version",
    "use_bfloat16",
    "use_flash_attn",
}


def _stock_text_config(llm: dict):
    from transformers import AutoConfig

    fields = {key: value for key, value in llm.items() if key not in _REMOTE_ONLY_FIELDS}
    # InternVL's training configs switch the KV cache off; generation wants it (the PRM classes switch it off again)
    return AutoConfig.for_model(llm["model_type"], **{**fields, "tie_word_embeddings": False, "use_cache": True})


_TEXT_CONFIGS: dict[str, Callable[[dict], object]] = {
    "InternLM2ForCausalLM": _internlm2_text_config,
    "Qwen2ForCausalLM": _stock_text_config,
    "LlamaForCausalLM": _stock_text_config,
}


def internvl_config(remote: dict, image_token_id: int):
    """
    The `InternVLConfig` of a converted checkpoint, from the remote code's `config.json` (`InternVLChatConfig`).

    InternLM2 language models become `LlamaConfig` (rope theta and linear / dynamic scaling kept, `bias` as
    `attention_bias`); Qwen2 and Llama ones keep their config. The vision tower keeps InternViT's shapes (300M: layer
    norm, no q/k norm; 6B: RMS norm and q/k norm), `select_layer` becomes `vision_feature_layer` and the image size
    `force_image_size` (the processor's tile size).

    Args:
        remote (`dict`):
            The checkpoint's `config.json`.
        image_token_id (`int`):
            The id of `<IMG_CONTEXT>` in the checkpoint's tokenizer.

    Raises:
        [`InternVLConversionError`]: naming the config field that cannot be converted.

    Example:

    ```python
    >>> remote = {
    ...     "architectures": ["InternVLChatModel"], "downsample_ratio": 0.5, "force_image_size": 448,
    ...     "ps_version": "v2", "select_layer": -1, "template": "internvl2_5",
    ...     "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    ...                       "num_attention_heads": 16, "image_size": 448, "patch_size": 14,
    ...                       "norm_type": "layer_norm", "qk_normalization": False, "qkv_bias": True},
    ...     "llm_config": {"architectures": ["InternLM2ForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    ...                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    ...                    "vocab_size": 92553, "rope_theta": 1000000, "bias": False,
    ...                    "rope_scaling": {"type": "dynamic", "factor": 2.0}},
    ... }
    >>> config = internvl_config(remote, image_token_id=92546)
    >>> config.text_config.model_type, config.text_config.num_key_value_heads, config.image_seq_length
    ('llama', 8, 256)

    ```
    """
    from transformers import InternVLConfig, InternVLVisionConfig

    architecture = (remote.get("architectures") or [None])[0]
    if architecture != "InternVLChatModel" and remote.get("model_type") != "internvl_chat":
        raise InternVLConversionError(
            f"config.json describes {architecture or remote.get('model_type')!r}, not an InternVLChatModel "
            "(remote-code InternVL) checkpoint"
        )
    for field in ("vision_config", "llm_config"):
        if not isinstance(remote.get(field), dict):
            raise InternVLConversionError(f"config.json has no {field}")
    if remote.get("ps_version", "v1") != "v2":
        # v1 leaves the pixel-shuffled grid transposed; InternVLModel.pixel_shuffle is v2
        raise InternVLConversionError(
            f"config.json: ps_version {remote.get('ps_version', 'v1')!r} is not supported (transformers implements v2)"
        )
    llm = remote["llm_config"]
    llm_architecture = (llm.get("architectures") or [None])[0]
    if llm_architecture not in _TEXT_CONFIGS:
        raise InternVLConversionError(
            f"llm_config: language model {llm_architecture!r} is not supported (supported: {sorted(_TEXT_CONFIGS)})"
        )
    vision = remote["vision_config"]
    patch_size = vision.get("patch_size", 14)
    tile_size = remote.get("force_image_size") or vision.get("image_size", 224)
    ratio = remote.get("downsample_ratio", 0.5)
    if abs(int(1 / ratio) * ratio - 1) > 1e-9:
        raise InternVLConversionError(f"config.json: downsample_ratio {ratio} is not 1/n")
    if vision.get("qk_normalization") and vision.get("layer_norm_eps", 1e-6) != 1e-6:
        # InternVLVisionAttention builds its q/k norms with eps 1e-6 whatever `layer_norm_eps` says
        logger.warning(
            f"vision_config.layer_norm_eps is {vision['layer_norm_eps']}: InternViT's q/k norms use it, "
            "transformers' use 1e-6, so the converted vision tower differs slightly"
        )
    vision_config = InternVLVisionConfig(
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        num_channels=vision.get("num_channels", 3),
        # the grid of the position embeddings stored in the checkpoint; other tile sizes interpolate it, as InternViT
        image_size=vision.get("image_size", 224),
        patch_size=patch_size,
        attention_bias=bool(vision.get("qkv_bias", False)),
        use_qk_norm=bool(vision.get("qk_normalization", False)),
        norm_type=vision.get("norm_type", "rms_norm"),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        hidden_act=vision.get("hidden_act", "gelu"),
        layer_scale_init_value=vision.get("initializer_factor", 0.1),
        use_absolute_position_embeddings=True,
        # InternViT has no final norm: with mean pooling, InternVLVisionModel's `layernorm` is the identity
        use_mean_pooling=True,
    )
    config = InternVLConfig(
        text_config=_TEXT_CONFIGS[llm_architecture](llm),
        vision_config=vision_config,
        image_token_id=image_token_id,
        image_seq_length=int((tile_size // patch_size) ** 2 * ratio**2),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=remote.get("select_layer", -1),
        vision_feature_select_strategy="default",  # InternVL drops the CLS token
        tie_word_embeddings=False,
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    dtype = remote.get("torch_dtype") or llm.get("torch_dtype")
    if dtype:
        config.dtype = dtype
    return config


# ---- weights ----

# remote name -> converted name; `None` marks a packed tensor that `_split` unpacks
_VISION_RULES = [
    (r"vision_model\.embeddings\.class_embedding", r"model.vision_tower.embeddings.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", r"model.vision_tower.embeddings.position_embeddings"),
    (
        r"vision_model\.embeddings\.patch_embedding\.(weight|bias)",
        r"model.vision_tower.embeddings.patch_embeddings.projection.\1",
    ),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls([12])", r"model.vision_tower.encoder.layer.\1.lambda_\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)", None),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)",
        r"model.vision_tower.encoder.layer.\1.attention.projection_layer.\2",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.weight",
        r"model.vision_tower.encoder.layer.\1.attention.\2.weight",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)",
        r"model.vision_tower.encoder.layer.\1.mlp.\2.\3",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)",
        r"model.vision_tower.encoder.layer.\1.layernorm_before.\2",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)",
        r"model.vision_tower.encoder.layer.\1.layernorm_after.\2",
    ),
    (r"mlp1\.0\.(weight|bias)", r"model.multi_modal_projector.layer_norm.\1"),
    (r"mlp1\.1\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
    (r"mlp1\.3\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
]
_INTERNLM2_RULES = [
    (r"language_model\.model\.tok_embeddings\.weight", r"model.language_model.embed_tokens.weight"),
    (r"language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)", None),
    (
        r"language_model\.model\.layers\.(\d+)\.attention\.wo\.(weight|bias)",
        r"model.language_model.layers.\1.self_attn.o_proj.\2",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.weight",
        r"model.language_model.layers.\1.mlp.gate_proj.weight",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.weight",
        r"model.language_model.layers.\1.mlp.up_proj.weight",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.weight",
        r"model.language_model.layers.\1.mlp.down_proj.weight",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.attention_norm\.weight",
        r"model.language_model.layers.\1.input_layernorm.weight",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.ffn_norm\.weight",
        r"model.language_model.layers.\1.post_attention_layernorm.weight",
    ),
    (r"language_model\.model\.norm\.weight", r"model.language_model.norm.weight"),
    (r"language_model\.output\.weight", r"lm_head.weight"),
]
# Qwen2 / Llama language models already have transformers' names under `language_model.`
_STOCK_LM_RULES = [
    (r"language_model\.model\.(.+)", r"model.language_model.\1"),
    (r"language_model\.lm_head\.weight", r"lm_head.weight"),
]


class _Plan:
    """Where every source tensor goes: converted names and how to compute them, checked against the model."""

    def __init__(self, config, source_shapes: dict[str, tuple[int, ...]], internlm2: bool):
        self.config = config
        text = config.text_config
        self.rules = [(re.compile(pattern), target) for pattern, target in _VISION_RULES] + [
            (re.compile(pattern), target) for pattern, target in (_INTERNLM2_RULES if internlm2 else _STOCK_LM_RULES)
        ]
        self.targets: dict[str, list[str]] = {}  # source key -> converted keys
        self.shapes: dict[str, tuple[int, ...]] = {}  # converted key -> shape
        unknown = []
        for key, shape in source_shapes.items():
            names = self._names(key)
            if names is None:
                unknown.append(key)
                continue
            self.targets[key] = names
            for name, part_shape in zip(names, self._split_shapes(key, shape), strict=True):
                self.shapes[name] = part_shape
        if unknown:
            raise InternVLConversionError(
                f"{len(unknown)} unknown key(s) in the checkpoint (not InternViT, mlp1 or the "
                f"{'InternLM2' if internlm2 else text.model_type} language model): {_shown(sorted(unknown))}"
            )
        self._check_against_model()

    def _names(self, key: str) -> list[str] | None:
        for pattern, target in self.rules:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            if target is not None:
                return [match.expand(target)]
            layer, kind = match.groups()
            if key.startswith("vision_model."):
                prefix = f"model.vision_tower.encoder.layer.{layer}.attention"
            else:
                prefix = f"model.language_model.layers.{layer}.self_attn"
            return [f"{prefix}.{part}_proj.{kind}" for part in ("q", "k", "v")]
        return None

    def _attention_shape(self, key: str) -> tuple[int, int, int]:
        """(query heads, key/value heads, head size) of the packed tensor `key`."""
        if key.startswith("vision_model."):
            vision = self.config.vision_config
            heads = vision.num_attention_heads
            return heads, heads, vision.hidden_size // heads
        text = self.config.text_config
        return text.num_attention_heads, text.num_key_value_heads, text.head_dim

    def _split_shapes(self, key: str, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        if len(self.targets[key]) == 1:
            return [shape]
        heads, kv_heads, head_dim = self._attention_shape(key)
        if shape[0] != (heads + 2 * kv_heads) * head_dim:
            raise InternVLConversionError(
                f"{key} has shape {list(shape)}, but {heads} query heads and {kv_heads} key/value heads of size "
                f"{head_dim} pack into {(heads + 2 * kv_heads) * head_dim} rows"
            )
        rest = tuple(shape[1:])
        return [(heads * head_dim, *rest), (kv_heads * head_dim, *rest), (kv_heads * head_dim, *rest)]

    def _check_against_model(self) -> None:
        from transformers import InternVLForConditionalGeneration

        with torch.device("meta"):
            model = InternVLForConditionalGeneration(self.config)
        expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        missing = sorted(set(expected) - set(self.shapes))
        if missing:
            raise InternVLConversionError(
                f"the checkpoint lacks {len(missing)} weight(s) the converted model needs: {_shown(missing)}"
            )
        sources = {name: key for key, names in self.targets.items() for name in names}
        extra = sorted(set(self.shapes) - set(expected))
        if extra:
            raise InternVLConversionError(
                f"{len(extra)} key(s) of the checkpoint have no place in the converted model: "
                f"{_shown([sources[name] for name in extra])}"
            )
        wrong = [
            f"{sources[name]} ({list(self.shapes[name])}, expected {list(shape)} for {name})"
            for name, shape in expected.items()
            if self.shapes[name] != shape
        ]
        if wrong:
            raise InternVLConversionError(
                f"{len(wrong)} tensor(s) of the checkpoint have the wrong shape for its config.json: {_shown(wrong)}"
            )

    def convert(self, key: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        names = self.targets[key]
        if len(names) == 1:
            yield names[0], tensor
            return
        heads, kv_heads, head_dim = self._attention_shape(key)
        if key.startswith("vision_model."):
            # InternViT's qkv is [q; k; v], each all heads: `reshape(B, N, 3, heads, head_dim)`
            parts = tensor.chunk(3, dim=0)
        else:
            # InternLM2's wqkv is grouped by key/value head: [q heads of the group, k, v] for each group, as its
            # `rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + num_key_value_groups, d=head_dim)` reads it
            groups = heads // kv_heads
            packed = tensor.reshape(kv_heads, groups + 2, head_dim, *tensor.shape[1:])
            rest = tensor.shape[1:]
            parts = (
                packed[:, :groups].reshape(heads * head_dim, *rest),
                packed[:, -2].reshape(kv_heads * head_dim, *rest),
                packed[:, -1].reshape(kv_heads * head_dim, *rest),
            )
        for name, part in zip(names, parts, strict=True):
            yield name, part.clone(memory_format=torch.contiguous_format)  # a tensor of its own, not a view


def _shown(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _safetensors_files(source: Path) -> list[Path]:
    index = source / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as error:
            raise InternVLConversionError(f"{index} cannot be read: {error}") from None
        files = [source / name for name in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(source.glob("*.safetensors"))
    if not files:
        raise InternVLConversionError(f"{source} has no *.safetensors weights (a *.bin checkpoint is not read)")
    for file in files:
        if not file.is_file():
            raise InternVLConversionError(f"{file} is listed in model.safetensors.index.json but missing")
    return files


def _read_shapes(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], dict[str, Path], dict[str, int]]:
    """Shapes, files and byte sizes of every tensor, from the safetensors headers only."""
    from safetensors import safe_open

    shapes, locations, sizes = {}, {}, {}
    for file in files:
        try:
            with safe_open(file, "pt") as f:
                for key in f.keys():
                    if key in locations:
                        raise InternVLConversionError(f"{key} is stored twice: in {locations[key]} and {file}")
                    tensor_slice = f.get_slice(key)
                    shape = tuple(tensor_slice.get_shape())
                    itemsize = _DTYPE_SIZES.get(tensor_slice.get_dtype(), 4)
                    shapes[key], locations[key] = shape, file
                    sizes[key] = itemsize * int(torch.Size(shape).numel())
        except InternVLConversionError:
            raise
        except Exception as error:  # a truncated or foreign file: safetensors raises its own error types
            raise InternVLConversionError(f"{file} is not a readable safetensors file: {error}") from None
    return shapes, locations, sizes


_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _write_weights(plan: _Plan, locations: dict[str, Path], sizes: dict[str, int], out: Path, max_shard: int) -> None:
    """Write the converted tensors into shards of at most `max_shard` bytes, one shard at a time."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    keys = sorted(locations, key=lambda key: (str(locations[key]), key))
    shards: list[list[str]] = [[]]
    filled = 0
    for key in keys:
        if shards[-1] and filled + sizes[key] > max_shard:
            shards.append([])
            filled = 0
        shards[-1].append(key)
        filled += sizes[key]
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map, total = {}, 0
    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(safe_open(file, "pt")) for file in dict.fromkeys(locations.values())}
        for shard_keys, name in zip(shards, names, strict=True):
            tensors = {}
            for key in shard_keys:
                for converted, tensor in plan.convert(key, handles[locations[key]].get_tensor(key)):
                    tensors[converted] = tensor
                    weight_map[converted] = name
                    total += tensor.numel() * tensor.element_size()
            save_file(tensors, out / name, metadata={"format": "pt"})
            del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


# ---- tokenizer, processor, chat template ----


def _sentencepiece_tokenizer(model_file: Path, tokenizer_config: dict, **kwargs):
    """
    InternLM2's tokenizer (a sentencepiece BPE model read by its remote `InternLM2Tokenizer`) as a fast tokenizer,
    built as its own `InternLM2Converter` does: the pieces and their merges in score order, byte fallback, a "▁"
    prefix only if the model adds a dummy prefix, and the added tokens of `tokenizer_config.json` at their ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import import_protobuf
    from transformers.tokenization_utils_base import generate_merges

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as error:  # protobuf's DecodeError
        raise InternVLConversionError(f"{model_file} is not a sentencepiece model: {error}") from None
    if proto.trainer_spec.model_type != 2:
        raise InternVLConversionError(f"{model_file} is not a BPE sentencepiece model (InternLM2's tokenizer is BPE)")
    added = {
        int(index): token
        for index, token in (tokenizer_config.get("added_tokens_decoder") or {}).items()
        if isinstance(token, dict) and "content" in token
    }
    added_file = model_file.parent / "added_tokens.json"
    if added_file.is_file():  # tokenizers saved before transformers 4.34 list their added tokens only here
        for content, index in json.loads(added_file.read_text(encoding="utf-8")).items():
            added.setdefault(int(index), {"content": content, "special": True})
    vocab_scores = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(p.piece, p.score) for p in proto.pieces[3:]]
    for index in range(len(vocab_scores)):
        if index in added:
            vocab_scores[index] = (added[index]["content"], vocab_scores[index][1])
    vocab = {piece: index for index, (piece, _) in enumerate(vocab_scores)}
    merges = generate_merges(vocab, vocab_scores)
    backend = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend("▁")] if proto.normalizer_spec.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens(
        [
            AddedToken(
                token["content"],
                special=token.get("special", True),
                normalized=token.get("normalized", False),
                lstrip=token.get("lstrip", False),
                rstrip=token.get("rstrip", False),
                single_word=token.get("single_word", False),
            )
            for _, token in sorted(added.items())
        ]
    )
    misplaced = [
        f"{token['content']!r} (id {index}, got {backend.token_to_id(token['content'])})"
        for index, token in added.items()
        if backend.token_to_id(token["content"]) != index
    ]
    if misplaced:
        raise InternVLConversionError(
            f"tokenizer_config.json's added tokens do not follow the {len(proto.pieces)} pieces of {model_file}: "
            f"{_shown(misplaced)}"
        )
    add_bos = tokenizer_config.get("add_bos_token", True)
    add_eos = tokenizer_config.get("add_eos_token", False)
    single = ["<s>:0"] * add_bos + ["$A:0"] + ["</s>:0"] * add_eos
    pair = single + ["<s>:1"] * add_bos + ["$B:1"] + ["</s>:1"] * add_eos
    used = [(token, vocab[token]) for token in ("<s>", "</s>") if (token == "<s>" and add_bos) or add_eos]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=used)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=tokenizer_config.get("pad_token") or "</s>",
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        clean_up_tokenization_spaces=False,
        model_max_length=tokenizer_config.get("model_max_length", int(1e30)),
        **kwargs,
    )


def _tokenizer(source: Path):
    """The checkpoint's tokenizer without remote code: InternLM2's converted, any other one through AutoTokenizer."""
    from transformers import AutoTokenizer

    config_file = source / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    names = [str(tokenizer_config.get("tokenizer_class", ""))] + [
        str(name) for name in (tokenizer_config.get("auto_map") or {}).get("AutoTokenizer", []) if name
    ]
    if any("InternLM2" in name for name in names):
        model_file = source / "tokenizer.model"
        if not model_file.is_file():
            raise InternVLConversionError(f"{source} has an InternLM2 tokenizer but no tokenizer.model")

        def load(**kwargs):
            return _sentencepiece_tokenizer(model_file, tokenizer_config, **kwargs)

    else:

        def load(**kwargs):
            try:
                return AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
            except Exception as error:  # transformers raises ValueError / OSError / ImportError here
                raise InternVLConversionError(f"the tokenizer of {source} cannot be loaded: {error}") from None

    vocab = load().get_vocab()
    for name in ("start_image_token", "end_image_token", "context_image_token"):
        if _IMAGE_TOKENS[name] not in vocab:
            raise InternVLConversionError(f"the tokenizer of {source} has no {_IMAGE_TOKENS[name]} token")
    # InternVLProcessor reads these names from the tokenizer; a missing `<video>` (InternVL2/2.5 tokenizers have
    # none) is added as a new special token (see `_grow_vocabulary`)
    return load(extra_special_tokens=dict(_IMAGE_TOKENS))


def chat_template(template: str | None, system_message: str | None = None) -> str:
    """
    A Jinja chat template rendering InternVL's conversation template `template` (`internvl2_5`, `internlm2-chat`,
    `Hermes-2`): its default system message when the conversation has none, an image as `<IMG_CONTEXT>\\n` (what
    `InternVLProcessor` expands into `<img><IMG_CONTEXT>...</img>`), each turn closed by the template's separator.

    Example:

    ```python
    >>> from jinja2 import Template
    >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    >>> Template(chat_template("internvl2_5", "S")).render(messages=messages, add_generation_prompt=True)
    '<|im_start|>system\\nS<|im_end|>\\n<|im_start|>user\\n<IMG_CONTEXT>\\nHi<|im_end|>\\n<|im_start|>assistant\\n'

    ```
    """
    if template not in _TEMPLATES:
        raise InternVLConversionError(
            f"config.json: conversation template {template!r} is not supported (supported: {sorted(_TEMPLATES)})"
        )
    default_system, separator = _TEMPLATES[template]
    system = json.dumps(system_message if system_message is not None else default_system, ensure_ascii=False)
    separator = json.dumps(separator)
    return (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n' + " + system + " + " + separator + " }}"
        "{% endif %}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
        "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ " + separator + " }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def _processor(remote: dict, config, tokenizer):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    vision = remote["vision_config"]
    tile = remote.get("force_image_size") or vision.get("image_size", 224)
    size = {"height": tile, "width": tile}
    dynamic = bool(remote.get("dynamic_image_size", False))
    image_processor = GotOcr2ImageProcessor(
        size=size,
        crop_to_patches=dynamic,
        min_patches=remote.get("min_dynamic_patch", 1),
        # InternVLProcessor always crops; a checkpoint without dynamic tiling has one tile per image
        max_patches=remote.get("max_dynamic_patch", 6) if dynamic else 1,
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        do_convert_rgb=True,
    )
    template = chat_template(remote.get("template"), remote.get("system_message"))
    tokenizer.chat_template = template
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD),
        image_seq_length=config.image_seq_length,
        chat_template=template,
    )


def _grow_vocabulary(plan: _Plan, config, vocab_size: int) -> None:
    """
    Give the tokens the conversion added (`<video>`) rows of their own: the embeddings and LM head grow to the
    tokenizer's size, the new rows the mean of the existing ones (as `load_prm` starts the step token).
    """
    text = config.text_config
    if vocab_size <= text.vocab_size:
        return
    old = text.vocab_size
    text.vocab_size = vocab_size
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        plan.shapes[name] = (vocab_size, *plan.shapes[name][1:])
    convert = plan.convert

    def grown(key, tensor):
        for name, part in convert(key, tensor):
            if name in ("model.language_model.embed_tokens.weight", "lm_head.weight") and part.shape[0] == old:
                mean = part.float().mean(dim=0, keepdim=True).to(part.dtype)
                part = torch.cat([part, mean.expand(vocab_size - old, -1)])
            yield name, part

    plan.convert = grown


# ---- the conversion ----


def _resolve(source: str | os.PathLike, revision: str | None, token: str | bool | None) -> Path:
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise InternVLConversionError(f"{source} is not a directory")
        return path
    if isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=revision, token=token, allow_patterns=_HUB_PATTERNS))
    raise InternVLConversionError(f"{source} does not exist (and is not a Hub repo id)")


def convert_internvl(
    source: str | os.PathLike,
    output: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """
    Convert a remote-code InternVL2 / InternVL2.5 checkpoint (`OpenGVLab/InternVL2_5-8B`, `OpenGVLab/VisualPRM-8B`,
    ...) into an `InternVLForConditionalGeneration` checkpoint with its `InternVLProcessor`, without running any of
    its code.

    The output loads with `AutoModelForImageTextToText.from_pretrained(output)` / `AutoProcessor.from_pretrained(
    output)`, and becomes a PRM with `load_prm(output, head=...)`. It is written to a temporary folder next to
    `output` and renamed at the end; on any error nothing is left behind.

    Args:
        source (`str` or `os.PathLike`):
            A local checkpoint folder, or a Hub repo id (its `*.json`, `*.safetensors` and tokenizer files are
            downloaded; never its `*.py`).
        output (`str` or `os.PathLike`):
            The folder to write; it must not exist unless `overwrite`.
        max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`):
            Largest safetensors shard, in bytes or as `"5GB"`, `"500MB"`.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an existing `output` folder (only once the conversion has succeeded).
        revision (`str`, *optional*):
            Hub revision of `source`.
        token (`str` or `bool`, *optional*):
            Hub token for a private `source`.

    Returns:
        `Path`: the output folder.

    Raises:
        [`InternVLConversionError`]: for a checkpoint that cannot be converted, naming the key, shape, file or
        config field.

    Example:

    ```python
    >>> from bis_prm import convert_internvl, load_prm
    >>> path = convert_internvl("OpenGVLab/VisualPRM-8B", "VisualPRM-8B-hf")  # doctest: +SKIP
    >>> model, processor = load_prm(path, head="yes_no", dtype="bfloat16")  # doctest: +SKIP

    ```
    """
    from transformers.utils.hub import convert_file_size_to_int

    max_shard_bytes = convert_file_size_to_int(max_shard_size)
    output = Path(output)
    if output.exists() and not overwrite:
        raise InternVLConversionError(f"{output} already exists (pass overwrite=True to replace it)")
    source_dir = _resolve(source, revision, token)
    config_file = source_dir / "config.json"
    try:
        remote = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InternVLConversionError(f"{config_file} cannot be read: {error}") from None

    tokenizer = _tokenizer(source_dir)
    config = internvl_config(
        remote, image_token_id=tokenizer.convert_tokens_to_ids(_IMAGE_TOKENS["context_image_token"])
    )
    files = _safetensors_files(source_dir)
    shapes, locations, sizes = _read_shapes(files)
    internlm2 = remote["llm_config"]["architectures"][0] == "InternLM2ForCausalLM"
    plan = _Plan(config, shapes, internlm2=internlm2)
    _grow_vocabulary(plan, config, len(tokenizer))
    processor = _processor(remote, config, tokenizer)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
    try:
        _write_weights(plan, locations, sizes, staging, max_shard_bytes)
        config.save_pretrained(staging)
        processor.save_pretrained(staging)
        _write_generation_config(source_dir, staging, tokenizer)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _write_generation_config(source: Path, out: Path, tokenizer) -> None:
    """The source's generation config if any, else one that stops at the end of an assistant turn."""
    from transformers import GenerationConfig

    file = source / "generation_config.json"
    fields = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    fields = {key: value for key, value in fields.items() if key not in _REMOTE_ONLY_FIELDS}
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if "eos_token_id" not in fields and end_of_turn is not None and end_of_turn != tokenizer.unk_token_id:
        fields["eos_token_id"] = end_of_turn
    fields.setdefault("pad_token_id", tokenizer.pad_token_id)
    GenerationConfig(**fields).save_pretrained(out)
