"""Step-level process reward models: a backbone's base model plus a 2-row linear head `score` at the step tokens.

A PRM is transformers' own token-classification pattern, `<Arch>ForTokenClassification(GenericForTokenClassification,
<Arch>PreTrainedModel)`: the base model under `model` and a head `score` (row 0: negative / "No", row 1: positive /
"Yes", the class order of TRL-trained PRMs and Qwen2.5-Math-PRM) on the last hidden state. Text LMs have such
classes in transformers already (`Qwen2ForTokenClassification`, `LlamaForTokenClassification`, ...); this module adds
them for the vision-language backbones and registers them with `AutoModelForTokenClassification`, so every PRM loads
with transformers' own `from_pretrained`. Only the positions of the step token (`<prm>`) are trained and read, with
[`prm_loss`] (the trainer's loss).

[`load_prm`] creates a PRM from a base checkpoint in one explicit step: the stock `from_pretrained` of the PRM class
builds it (under DeepSpeed ZeRO-3 inside `zero.Init`, each rank holding its shard), then `head="yes_no"` sets `score`
from the LM head's "Yes"/"No" rows, read from the checkpoint's safetensors without materialising the LM head: the PRM
then computes exactly the LM logits restricted to those two tokens (VisualPRM). `head="linear"` keeps the random
initialisation of a new head (Qwen2.5-Math-PRM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

import torch
import torch.nn.functional as F
from tokenizers import AddedToken
from transformers import (
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING,
    AutoConfig,
    AutoModelForTokenClassification,
    AutoProcessor,
    InternVLConfig,
    InternVLPreTrainedModel,
    LlavaConfig,
    LlavaPreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLPreTrainedModel,
    Qwen2VLConfig,
    Qwen2VLPreTrainedModel,
)
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.modeling_layers import GenericForTokenClassification
from transformers.utils import cached_file
from transformers.utils import logging as transformers_logging

from bis_prm.model.vision_tower import VISION_TOWER_NAMES

__all__ = [
    "PRM_HEADS",
    "InternVLForTokenClassification",
    "LlavaForTokenClassification",
    "Qwen2VLForTokenClassification",
    "Qwen2_5_VLForTokenClassification",
    "add_step_token",
    "load_prm",
    "prm_class_for",
    "prm_config",
    "prm_lora_config",
    "positive_index",
    "prm_loss",
    "yes_no_token_ids",
]

logger = transformers_logging.get_logger(__name__)

PRM_HEADS = ("yes_no", "linear")
# The ecosystem's order (TRL-trained PRMs, Qwen2.5-Math-PRM: `[negative, positive]`), so that scripts written for
# those read ours unchanged. PRMs saved by 0.2.0.dev0 have the opposite order in their config; see `positive_index`.
ID2LABEL = {0: "negative", 1: "positive"}
# Hub/cache arguments that must reach the config, processor and checkpoint-file loaders too, not only the model's.
_HUB_KWARGS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "token",
    "revision",
    "subfolder",
    "trust_remote_code",
)


def positive_index(config) -> int:
    """
    The class index of "correct step" in a PRM's logits, read from its config's `id2label`: 1 for PRMs saved by
    bis_prm since 0.3.0.dev0 and for the ecosystem's PRMs (`[negative, positive]`), 0 for PRMs saved by 0.2.0.dev0
    (their config says `{0: "positive", 1: "negative"}`). A config that names no `positive` label (TRL's `LABEL_0` /
    `LABEL_1`) is read in the ecosystem's order.

    Example:

    ```python
    >>> from transformers import PretrainedConfig
    >>> positive_index(PretrainedConfig(id2label={0: "negative", 1: "positive"}))
    1
    >>> positive_index(PretrainedConfig(id2label={0: "positive", 1: "negative"}))  # a 0.2.0.dev0 checkpoint
    0
    >>> positive_index(PretrainedConfig(num_labels=2))  # LABEL_0 / LABEL_1
    1

    ```
    """
    id2label = getattr(config, "id2label", None) or {}
    return next((int(index) for index, label in id2label.items() if str(label).lower() == "positive"), 1)


def prm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    positive_index: int = 1,
) -> torch.Tensor:
    """
    Cross entropy of the 2-way step logits against the targets P(positive) = y, P(negative) = 1 - y over the labelled
    positions.

    Args:
        logits (`torch.Tensor` of shape `[batch, seq, 2]`):
            Negative/positive logits at every position (in the order `positive_index` says).
        labels (`torch.Tensor` of shape `[batch, seq]`):
            Target P(positive) in [0, 1] (hard 0/1 or soft) at step-token positions, `-100` elsewhere.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            Number of labelled positions in the whole accumulated batch (set by the `Trainer` under gradient
            accumulation): the loss is then the sum over positions divided by it, else the mean over positions.
        positive_index (`int`, *optional*, defaults to `1`):
            The class index of a correct step (see [`positive_index`]).

    Example:

    ```python
    >>> logits = torch.zeros(1, 3, 2)
    >>> prm_loss(logits, torch.tensor([[-100.0, 1.0, 0.0]]))  # log(2) at both steps
    tensor(0.6931)

    ```
    """
    mask = labels != -100
    log_probs = F.log_softmax(logits[mask].float(), dim=-1)
    targets = labels[mask].float()
    losses = -(targets * log_probs[:, positive_index] + (1.0 - targets) * log_probs[:, 1 - positive_index])
    if num_items_in_batch is not None:
        return losses.sum() / num_items_in_batch
    return losses.sum() / mask.sum().clamp(min=1)


def yes_no_token_ids(tokenizer, tokens: tuple[str, str] = ("Yes", "No")) -> tuple[int, int]:
    """
    The ids of the single tokens "Yes" and "No" whose LM-head rows initialise a `yes_no` head.

    Raises:
        `ValueError`: naming the token(s) the tokenizer splits into several pieces.

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> yes_no_token_ids(tiny_tokenizer())
    (298, 296)

    ```
    """
    ids = [tokenizer(token, add_special_tokens=False).input_ids for token in tokens]
    split = [
        f"{token!r} -> {len(token_ids)} tokens"
        for token, token_ids in zip(tokens, ids, strict=True)
        if len(token_ids) != 1
    ]
    if split:
        raise ValueError(
            f"A yes_no head needs {tokens[0]!r} and {tokens[1]!r} as single tokens, but the tokenizer splits "
            f"{', '.join(split)}; use head='linear'."
        )
    return ids[0][0], ids[1][0]


def add_step_token(tokenizer, step_token: str = "<prm>") -> int:
    """
    Add `step_token` to `tokenizer` as a special token (if missing) and return its id.

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> add_step_token(tiny_tokenizer(vocab_size=600), "<prm>")
    600

    ```
    """
    if step_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(step_token, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(step_token)


class _SavedInItsOwnLayout:
    """Save the weights under the names the PRM has, not under the Hub's v4 names of its base checkpoint."""

    def save_pretrained(self, *args, save_original_format: bool = False, **kwargs):
        # transformers writes renamed checkpoints back in their original (v4) layout by default, which
        # `Trainer(resume_from_checkpoint=...)` cannot read back (huggingface/transformers#43701). No v4 code reads a
        # PRM, so it keeps its own layout; `from_pretrained` reads both.
        return super().save_pretrained(*args, save_original_format=save_original_format, **kwargs)


class Qwen2_5_VLForTokenClassification(_SavedInItsOwnLayout, GenericForTokenClassification, Qwen2_5_VLPreTrainedModel):
    pass


class Qwen2VLForTokenClassification(_SavedInItsOwnLayout, GenericForTokenClassification, Qwen2VLPreTrainedModel):
    pass


class InternVLForTokenClassification(_SavedInItsOwnLayout, GenericForTokenClassification, InternVLPreTrainedModel):
    pass


class LlavaForTokenClassification(_SavedInItsOwnLayout, GenericForTokenClassification, LlavaPreTrainedModel):
    pass


for _config_class, _prm_class, _base_class in (
    (Qwen2_5_VLConfig, Qwen2_5_VLForTokenClassification, "Qwen2_5_VLForConditionalGeneration"),
    (Qwen2VLConfig, Qwen2VLForTokenClassification, "Qwen2VLForConditionalGeneration"),
    (InternVLConfig, InternVLForTokenClassification, "InternVLForConditionalGeneration"),
    (LlavaConfig, LlavaForTokenClassification, "LlavaForConditionalGeneration"),
):
    AutoModelForTokenClassification.register(_config_class, _prm_class, exist_ok=True)
    # A base checkpoint in its Hub layout (Qwen2.5-VL: `visual.*`, `model.layers.*`) is renamed for the PRM as for its
    # own class: transformers keys these renamings by class name, so the PRM class gets its base class's
    _conversions = get_checkpoint_conversion_mapping(_base_class)
    if _conversions is not None:
        register_checkpoint_conversion_mapping(_prm_class.__name__, _conversions, overwrite=True)


def prm_class_for(config) -> type:
    """
    The PRM class of a backbone config: transformers' `AutoModelForTokenClassification` class for it (text LMs), or
    one of this module's (vision-language backbones).

    Raises:
        `ValueError`: for a backbone without one, saying how to add it.

    Example:

    ```python
    >>> prm_class_for(Qwen2_5_VLConfig()).__name__
    'Qwen2_5_VLForTokenClassification'

    ```
    """
    try:
        return MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        name = type(config).__name__.removesuffix("Config")
        raise ValueError(
            f"No token-classification class for {config.model_type!r}. Define it as transformers does and register it "
            f"before loading: `class {name}ForTokenClassification(GenericForTokenClassification, "
            f"{name}PreTrainedModel): pass` and `AutoModelForTokenClassification.register({type(config).__name__}, "
            f"{name}ForTokenClassification)`."
        ) from None


def prm_config(base_config, head: str, step_token: str, step_token_id: int):
    """
    The config of a new PRM: the base model's, plus the PRM settings (`prm_head`, `step_token`, `step_token_id`,
    `prm_base_architecture`), two labels, no dropout before the head (a `yes_no` head must equal the restricted LM
    logits) and no KV cache.

    Example:

    ```python
    >>> config = prm_config(Qwen2_5_VLConfig(), "yes_no", "<prm>", 151665)
    >>> config.prm_head, config.num_labels, config.classifier_dropout
    ('yes_no', 2, 0.0)

    ```
    """
    if head not in PRM_HEADS:
        raise ValueError(f"head must be one of {PRM_HEADS}, got {head!r}.")
    config = base_config.__class__.from_dict(base_config.to_dict())
    config.prm_head, config.step_token, config.step_token_id = head, step_token, step_token_id
    config.prm_base_architecture = (base_config.architectures or [None])[0]
    config.num_labels = 2
    config.id2label = dict(ID2LABEL)
    config.label2id = {label: i for i, label in ID2LABEL.items()}
    config.classifier_dropout = 0.0
    config.use_cache = False
    config.get_text_config().use_cache = False
    config.architectures = [prm_class_for(config).__name__]
    return config


def _checkpoint_rows(name_or_path: str | os.PathLike, rows: tuple[int, ...], **hub_kwargs) -> torch.Tensor:
    """Rows of the LM head (or of the tied input embeddings) read from a safetensors checkpoint, slice by slice."""
    from safetensors import safe_open

    try:
        index = cached_file(name_or_path, "model.safetensors.index.json", **hub_kwargs)
    except OSError:
        index = None
    weight_map = json.loads(open(index, encoding="utf-8").read())["weight_map"] if index else None
    if weight_map is None:
        single = cached_file(name_or_path, "model.safetensors", **hub_kwargs)
        with safe_open(single, "pt") as f:
            weight_map = dict.fromkeys(f.keys(), "model.safetensors")
    # an untied LM head, else the text model's input embeddings it is tied to
    candidates = [key for key in weight_map if key.endswith("lm_head.weight")] or [
        key
        for key in weight_map
        if key.endswith("embed_tokens.weight") and not any(part in key for part in ("visual", "vision"))
    ]
    if not candidates:
        raise ValueError(f"{name_or_path} has no LM head (nor tied input embeddings) to read the Yes/No rows from.")
    with safe_open(cached_file(name_or_path, weight_map[candidates[0]], **hub_kwargs), "pt") as f:
        weights = f.get_slice(candidates[0])
        return torch.cat([weights[row : row + 1] for row in rows])


@contextlib.contextmanager
def _writable(*parameters: torch.nn.Parameter):
    """Full, writable parameters: gathered from their shards under ZeRO-3 (what rank 0 writes is kept)."""
    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(parameters), modifier_rank=0):
            yield
    else:
        yield


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _from_base(prm_class: type, name_or_path, config, from_pretrained_kwargs: dict):
    """The PRM class's stock `from_pretrained` on a base checkpoint. transformers reports the LM head it leaves out and
    the new `score` head as loading problems; those two are the point, so only the other problems are reported."""
    loading_logger = transformers_logging.get_logger("transformers.modeling_utils")
    # a filter, not a higher level: transformers checks tensor-parallel plans (and warns) when the level is raised
    report_filter = _DropLoadReport()
    loading_logger.addFilter(report_filter)
    try:
        model, info = prm_class.from_pretrained(
            name_or_path, config=config, output_loading_info=True, **from_pretrained_kwargs
        )
    finally:
        loading_logger.removeFilter(report_filter)
    problems = {
        "missing": sorted(key for key in info["missing_keys"] if not key.startswith("score.")),
        "unexpected": sorted(key for key in info["unexpected_keys"] if "lm_head" not in key),
        "mismatched": sorted(str(key) for key in info["mismatched_keys"]),
    }
    for kind, keys in problems.items():
        if keys:
            shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
            logger.warning(f"{name_or_path}: {len(keys)} {kind} weight(s) for {prm_class.__name__}: {shown}")
    return model


def load_prm(
    name_or_path: str | os.PathLike, head: str | None = None, step_token: str = "<prm>", **from_pretrained_kwargs
):
    """
    Load a PRM and its processor, or create both from a base checkpoint.

    A saved PRM (its config has `prm_head`) loads with `AutoModelForTokenClassification`. A base checkpoint (a VLM,
    or a causal LM for a text PRM) becomes a new PRM: `step_token` is added to the processor's tokenizer as a special
    token, the PRM class's stock `from_pretrained` loads the base weights (under ZeRO-3 inside `zero.Init`), the
    embeddings grow if the new token needs a row (its row starts as the mean embedding), and `score` starts from the
    LM head's "Yes"/"No" rows read from the checkpoint (`head="yes_no"`, the default) or randomly (`head="linear"`).
    Save both with `model.save_pretrained(path)` and `processor.save_pretrained(path)`.

    Args:
        name_or_path (`str` or `os.PathLike`):
            A saved PRM or a base checkpoint (local directory or Hub id).
        head (`str`, *optional*):
            `"yes_no"` or `"linear"` for a base checkpoint (defaults to `"yes_no"`); `None` or the saved head for a
            saved PRM.
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            The step token, for a base checkpoint.
        **from_pretrained_kwargs:
            Passed to `from_pretrained` (`dtype`, `device_map`, `attn_implementation`, `revision`, ...).

    Returns:
        `tuple`: `(model, processor)`; for a text model the processor is its tokenizer.

    Example:

    ```python
    >>> model, processor = load_prm("Qwen/Qwen2.5-VL-3B-Instruct", head="yes_no")  # doctest: +SKIP
    >>> step_token_id = processor.tokenizer.convert_tokens_to_ids("<prm>")  # doctest: +SKIP
    >>> model.config.step_token, step_token_id == model.config.step_token_id  # doctest: +SKIP
    ('<prm>', True)

    ```
    """
    hub_kwargs = {key: from_pretrained_kwargs[key] for key in _HUB_KWARGS if key in from_pretrained_kwargs}
    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    processor = AutoProcessor.from_pretrained(name_or_path, **hub_kwargs)
    tokenizer = getattr(processor, "tokenizer", processor)
    saved_head = getattr(config, "prm_head", None)
    if saved_head is not None:
        if head not in (None, saved_head):
            raise ValueError(f"{name_or_path} is a PRM with head={saved_head!r}, not {head!r}.")
        model = AutoModelForTokenClassification.from_pretrained(name_or_path, **from_pretrained_kwargs)
        if tokenizer.convert_tokens_to_ids(config.step_token) != config.step_token_id:
            raise ValueError(
                f"The processor saved with {name_or_path} does not map the step token {config.step_token!r} to "
                f"{config.step_token_id}; save the PRM's processor next to the model."
            )
        return model, processor

    head = head or "yes_no"
    if head not in PRM_HEADS:
        raise ValueError(f"head must be one of {PRM_HEADS}, got {head!r}.")
    yes_no_ids = yes_no_token_ids(tokenizer) if head == "yes_no" else None  # (Yes, No)
    step_id = add_step_token(tokenizer, step_token)
    new_config = prm_config(config, head, step_token, step_id)
    model = _from_base(prm_class_for(config), name_or_path, new_config, from_pretrained_kwargs)
    if step_id >= model.get_input_embeddings().num_embeddings:
        # mean_resizing samples from the embeddings' covariance: random and O(hidden^2) memory on real models
        model.resize_token_embeddings(step_id + 1, mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad(), _writable(model.score.weight, model.score.bias, embeddings):
        if yes_no_ids is not None:
            yes_id, no_id = yes_no_ids
            rows = _checkpoint_rows(name_or_path, (no_id, yes_id), **hub_kwargs)  # the order of ID2LABEL
            model.score.weight.copy_(rows.to(model.score.weight.dtype))
        model.score.bias.zero_()
        # A deterministic start for the step token (also when it reuses a padding row of the vocabulary)
        embeddings[step_id] = embeddings[:step_id].mean(dim=0)
    return model.eval(), processor


# The language model's linear layers (of a VLM or of a text LM); the vision tower and projector stay frozen.
_LORA_TARGETS = (
    rf"^(?!(.*\.)?({'|'.join(VISION_TOWER_NAMES)})\.).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
)


def prm_lora_config(r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05, **kwargs):
    """
    A PEFT `LoraConfig` for a PRM: LoRA on the language model's projections, the `score` head fully trainable.

    `task_type="TOKEN_CLS"` makes PEFT wrap the model in `PeftModelForTokenClassification`, which adds `score` to
    `modules_to_save`; it is listed explicitly too. After training, `model.merge_and_unload()` gives back a plain PRM
    that saves and loads like any other.

    Args:
        r (`int`, *optional*, defaults to `16`):
            LoRA rank.
        lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA scaling numerator.
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout on the LoRA inputs.
        **kwargs:
            Other `LoraConfig` fields (e.g. `target_modules` to override the default regex).

    Example:

    ```python
    >>> from peft import get_peft_model
    >>> prm_lora_config(r=8).modules_to_save
    ['score']
    >>> peft_model = get_peft_model(model, prm_lora_config(r=8))  # doctest: +SKIP
    >>> merged = peft_model.merge_and_unload()  # doctest: +SKIP

    ```
    """
    from peft import LoraConfig

    kwargs.setdefault("target_modules", _LORA_TARGETS)
    kwargs.setdefault("modules_to_save", ["score"])
    return LoraConfig(task_type="TOKEN_CLS", r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, **kwargs)
