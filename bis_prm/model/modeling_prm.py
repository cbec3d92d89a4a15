"""Step-level process reward models on top of any `transformers` image-text-to-text backbone.

A PRM is the backbone's base model (`model`) plus a 2-row linear head `score` (row 0: positive / "Yes", row 1:
negative / "No") applied to the last hidden state. Only the positions of the step token (`<prm>`) are trained and
read. `head="yes_no"` initialises `score` from the language-model head's "Yes"/"No" rows, which computes exactly the
LM logits restricted to those two tokens (VisualPRM); `head="linear"` initialises it randomly (Qwen2.5-Math-PRM).

The classes follow transformers' task-head pattern, `<Arch>ForTokenClassification(<mixin>, <Arch>PreTrainedModel)`
with `base_model_prefix = "model"`, so a base `<Arch>ForConditionalGeneration` checkpoint's `model.*` weights load
straight in, and they are registered with `AutoModelForTokenClassification` when this module is imported.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from tokenizers import AddedToken
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForTokenClassification,
    AutoProcessor,
    AutoTokenizer,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLPreTrainedModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaPreTrainedModel,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLPreTrainedModel,
)
from transformers.modeling_outputs import TokenClassifierOutput
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

__all__ = [
    "PRM_HEADS",
    "GenericPRMForTokenClassification",
    "InternVLForTokenClassification",
    "LlavaForTokenClassification",
    "Qwen2_5_VLForTokenClassification",
    "add_step_token",
    "load_prm",
    "prm_lora_config",
    "prm_class_for",
    "prm_loss",
    "register_prm_architecture",
    "yes_no_token_ids",
]

PRM_HEADS = ("yes_no", "linear")
ID2LABEL = {0: "positive", 1: "negative"}
# Hub/cache arguments that must reach the config and tokenizer loaders too, not only the model's.
_HUB_KWARGS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "token",
    "revision",
    "subfolder",
    "trust_remote_code",
)


def prm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """
    Cross entropy of the 2-way step logits against the targets `[y, 1 - y]` over the labelled positions.

    Args:
        logits (`torch.Tensor` of shape `[batch, seq, 2]`):
            Positive/negative logits at every position.
        labels (`torch.Tensor` of shape `[batch, seq]`):
            Target P(positive) in [0, 1] (hard 0/1 or soft) at step-token positions, `-100` elsewhere.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            Number of labelled positions in the whole accumulated batch (set by the `Trainer` under gradient
            accumulation): the loss is then the sum over positions divided by it, else the mean over positions.

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
    losses = -(targets * log_probs[:, 0] + (1.0 - targets) * log_probs[:, 1])
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
    >>> yes_no_token_ids(processor.tokenizer)
    (421, 389)
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
    >>> add_step_token(processor.tokenizer, "<prm>")
    600
    ```
    """
    if step_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(step_token, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(step_token)


class GenericPRMForTokenClassification:
    """
    Mixin turning a VLM backbone into a step-level PRM; combine with the backbone's `PreTrainedModel` class.

    The config is the backbone's own, with the PRM settings `prm_head`, `step_token`, `step_token_id`,
    `prm_base_architecture`, `num_labels=2` and `id2label`. `forward` returns a
    [`~transformers.modeling_outputs.TokenClassifierOutput`] with `logits` `[batch, seq, 2]` and, given float
    `labels` (`-100` off the step tokens), the loss of [`prm_loss`].
    """

    base_model_prefix = "model"
    # The loss divides by the Trainer's `num_items_in_batch` itself (some backbones' classes set this to False).
    accepts_loss_kwargs = True
    # The checkpoint class this PRM is built from, e.g. `Qwen2_5_VLForConditionalGeneration`.
    base_model_class: type[PreTrainedModel]

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = 2
        self.model = AutoModel.from_config(config)
        # No dropout before the head: a yes_no head must equal the restricted LM logits exactly.
        self.score = nn.Linear(config.get_text_config().hidden_size, 2)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        r"""
        labels (`torch.FloatTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Target P(positive) at the step-token positions, `-100` elsewhere.
        num_items_in_batch (`int`, *optional*):
            Labelled positions in the accumulated batch (passed by the `Trainer`); see [`prm_loss`].
        """
        kwargs.setdefault("use_cache", False)
        kwargs.pop("num_steps", None)  # collator bookkeeping, not a model input
        kwargs.pop("return_dict", None)  # PEFT passes it; the output is always a TokenClassifierOutput
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = self.score(outputs.last_hidden_state)
        loss = prm_loss(logits, labels, num_items_in_batch) if labels is not None else None
        return TokenClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        head: str | None = None,
        step_token: str = "<prm>",
        tokenizer=None,
        **kwargs,
    ):
        """
        Load a saved PRM, or create one from a base VLM checkpoint when `head` is given.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A saved PRM, or a base `...ForConditionalGeneration` checkpoint.
            head (`str`, *optional*):
                `"yes_no"` or `"linear"`; creates a new PRM from a base checkpoint. For a saved PRM it must be
                `None` or its own head.
            step_token (`str`, *optional*, defaults to `"<prm>"`):
                Step token added to the tokenizer when creating a PRM.
            tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
                Tokenizer to add the step token to when creating a PRM (loaded from the checkpoint if omitted). Pass
                your processor's tokenizer to keep both consistent, or use [`load_prm`].
            **kwargs:
                Passed to `PreTrainedModel.from_pretrained` (`dtype`, `device_map`, `revision`, ...).

        Example:

        ```python
        >>> model = AutoModelForTokenClassification.from_pretrained(base_path, head="yes_no", step_token="<prm>")
        >>> model.config.prm_head
        'yes_no'
        ```
        """
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        config = kwargs.get("config")
        if config is None or isinstance(config, (str, os.PathLike)):
            config = AutoConfig.from_pretrained(config or pretrained_model_name_or_path, **hub_kwargs)
        saved_head = getattr(config, "prm_head", None)
        if saved_head is not None:
            if head not in (None, saved_head):
                raise ValueError(f"{pretrained_model_name_or_path} is a PRM with head={saved_head!r}, not {head!r}.")
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if head is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a base checkpoint without PRM settings; pass head='yes_no' or "
                "head='linear' to create a PRM from it."
            )
        if head not in PRM_HEADS:
            raise ValueError(f"head must be one of {PRM_HEADS}, got {head!r}.")
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        yes_no_ids = yes_no_token_ids(tokenizer) if head == "yes_no" else None
        step_id = add_step_token(tokenizer, step_token)

        base = cls.base_model_class.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        config = base.config
        config.prm_head = head
        config.step_token = step_token
        config.step_token_id = step_id
        config.prm_base_architecture = cls.base_model_class.__name__
        config.num_labels = 2
        config.id2label = dict(ID2LABEL)
        config.label2id = {label: i for i, label in ID2LABEL.items()}
        config.architectures = [cls.__name__]

        lm_head = base.get_output_embeddings().weight
        # Build the shell on the meta device and move the loaded backbone in: no second copy of the weights.
        with torch.device("meta"):
            model = cls(config)
        model.model = base.model
        model.score = nn.Linear(lm_head.shape[1], 2, device=lm_head.device, dtype=lm_head.dtype)
        with torch.no_grad():
            if head == "yes_no":
                model.score.weight.copy_(lm_head[list(yes_no_ids)])
            else:
                model.score.weight.normal_(0.0, getattr(config.get_text_config(), "initializer_range", 0.02))
            model.score.bias.zero_()
        if step_id >= model.get_input_embeddings().num_embeddings:
            # mean_resizing samples from the embeddings' covariance: random and O(hidden^2) memory on real models
            model.resize_token_embeddings(step_id + 1, mean_resizing=False)
        with torch.no_grad():
            # A deterministic start for the step token (also when it reuses a padding row of the vocabulary).
            embeddings = model.get_input_embeddings().weight
            embeddings[step_id] = embeddings[:step_id].mean(dim=0)
        if hasattr(base, "hf_device_map"):
            model.hf_device_map = base.hf_device_map
        model.name_or_path = base.name_or_path
        return model.eval()


class Qwen2_5_VLForTokenClassification(GenericPRMForTokenClassification, Qwen2_5_VLPreTrainedModel):
    base_model_class = Qwen2_5_VLForConditionalGeneration


class InternVLForTokenClassification(GenericPRMForTokenClassification, InternVLPreTrainedModel):
    base_model_class = InternVLForConditionalGeneration


class LlavaForTokenClassification(GenericPRMForTokenClassification, LlavaPreTrainedModel):
    base_model_class = LlavaForConditionalGeneration


for _config_class, _model_class in (
    (Qwen2_5_VLConfig, Qwen2_5_VLForTokenClassification),
    (InternVLConfig, InternVLForTokenClassification),
    (LlavaConfig, LlavaForTokenClassification),
):
    AutoModelForTokenClassification.register(_config_class, _model_class, exist_ok=True)


def register_prm_architecture(model_type: str) -> type[PreTrainedModel]:
    """
    Create and register the PRM class of any `AutoModelForImageTextToText` architecture.

    The class is `<Arch>ForTokenClassification(GenericPRMForTokenClassification, <Arch>PreTrainedModel)`, added to
    this module and registered with `AutoModelForTokenClassification`; calling again returns the same class.

    Args:
        model_type (`str`):
            The config's `model_type`, e.g. `"idefics3"`.

    Example:

    ```python
    >>> register_prm_architecture("idefics3").__name__
    'Idefics3ForTokenClassification'
    ```
    """
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ValueError(
            f"{model_type!r} is not an AutoModelForImageTextToText architecture of transformers (remote-code models "
            "must be converted to a transformers architecture first)."
        )
    config_class = AutoConfig.for_model(model_type).__class__
    if config_class in AutoModelForTokenClassification._model_mapping:
        registered = AutoModelForTokenClassification._model_mapping[config_class]
        if issubclass(registered, GenericPRMForTokenClassification):
            return registered
    base_class = AutoModelForImageTextToText._model_mapping[config_class]
    if base_class.base_model_prefix != "model":
        # e.g. BLIP-2 keeps its parts side by side; the PRM reads `model(...).last_hidden_state`.
        raise ValueError(f"{base_class.__name__} does not keep its backbone under `model`; it cannot become a PRM.")
    pretrained_class = next(
        klass
        for klass in base_class.__mro__[1:]
        if issubclass(klass, PreTrainedModel) and klass.__name__.endswith("PreTrainedModel")
    )
    name = base_class.__name__.removesuffix("ForConditionalGeneration") + "ForTokenClassification"
    prm_class = type(
        name,
        (GenericPRMForTokenClassification, pretrained_class),
        {"base_model_class": base_class, "__module__": __name__},
    )
    setattr(sys.modules[__name__], name, prm_class)  # importable by name, so it pickles
    AutoModelForTokenClassification.register(config_class, prm_class, exist_ok=True)
    return prm_class


def prm_class_for(config) -> type[PreTrainedModel]:
    """
    The PRM class for a backbone config (registering it on first use).

    Example:

    ```python
    >>> prm_class_for(AutoConfig.from_pretrained("Qwen/Qwen2.5-VL-3B-Instruct")).__name__
    'Qwen2_5_VLForTokenClassification'
    ```
    """
    return register_prm_architecture(config.model_type)


def load_prm(
    name_or_path: str | os.PathLike, head: str | None = None, step_token: str = "<prm>", **from_pretrained_kwargs
):
    """
    Load a PRM and its processor, or create both from a base VLM checkpoint.

    A saved PRM (its config has `prm_head`) loads with `AutoModelForTokenClassification`. A base checkpoint becomes a
    new PRM: `step_token` is added to the processor's tokenizer as a special token, the embeddings are resized if
    needed and `score` is initialised from the LM head's "Yes"/"No" rows (`head="yes_no"`, the default) or randomly
    (`head="linear"`). Save both with `model.save_pretrained(path)` and `processor.save_pretrained(path)`.

    Args:
        name_or_path (`str` or `os.PathLike`):
            A saved PRM or a base image-text-to-text checkpoint (local directory or Hub id).
        head (`str`, *optional*):
            `"yes_no"` or `"linear"` for a base checkpoint (defaults to `"yes_no"`); `None` or the saved head for a
            saved PRM.
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            The step token, for a base checkpoint.
        **from_pretrained_kwargs:
            Passed to `from_pretrained` (`dtype`, `device_map`, `attn_implementation`, `revision`, ...).

    Returns:
        `tuple`: `(model, processor)`.

    Example:

    ```python
    >>> model, processor = load_prm("Qwen/Qwen2.5-VL-3B-Instruct", head="yes_no")
    >>> model.config.step_token, processor.tokenizer.convert_tokens_to_ids("<prm>") == model.config.step_token_id
    ('<prm>', True)
    ```
    """
    hub_kwargs = {key: from_pretrained_kwargs[key] for key in _HUB_KWARGS if key in from_pretrained_kwargs}
    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    processor = AutoProcessor.from_pretrained(name_or_path, **hub_kwargs)
    tokenizer = getattr(processor, "tokenizer", processor)
    prm_class = prm_class_for(config)
    if getattr(config, "prm_head", None) is not None:
        model = prm_class.from_pretrained(name_or_path, head=head, **from_pretrained_kwargs)
        if tokenizer.convert_tokens_to_ids(config.step_token) != config.step_token_id:
            raise ValueError(
                f"The processor saved with {name_or_path} does not map the step token {config.step_token!r} to "
                f"{config.step_token_id}; save the PRM's processor next to the model."
            )
        return model, processor
    model = prm_class.from_pretrained(
        name_or_path, head=head or "yes_no", step_token=step_token, tokenizer=tokenizer, **from_pretrained_kwargs
    )
    return model, processor


# The language model's linear layers; the vision tower and projector stay frozen.
_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


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
    >>> peft_model = get_peft_model(model, prm_lora_config(r=8))
    >>> merged = peft_model.merge_and_unload()
    ```
    """
    from peft import LoraConfig

    kwargs.setdefault("target_modules", _LORA_TARGETS)
    kwargs.setdefault("modules_to_save", ["score"])
    return LoraConfig(task_type="TOKEN_CLS", r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, **kwargs)
