"""Configuration of the [`PRMTrainer`]: TRL's trainer config plus the fields of multimodal PRM training."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.utils import is_torch_bf16_gpu_available
from trl.trainer.base_config import _BaseConfig

from bis_prm.data.prompt import PROMPT_FORMATS, check_prompt_format


@dataclass
class PRMConfig(_BaseConfig):
    r"""
    Configuration class for the [`PRMTrainer`].

    This class includes only the parameters that are specific to process-reward-model training. For the full list of
    training arguments, see [`~transformers.TrainingArguments`]. The defaults follow the training recipe of the BIS
    paper ([Training Data Efficiency in Multimodal Process Reward Models](https://huggingface.co/papers/2602.04145)),
    itself the VisualPRM recipe.

    Using [`~transformers.HfArgumentParser`] (or TRL's `TrlParser`) this class turns into command-line arguments.

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for `from_pretrained`, used when the `model` argument of the [`PRMTrainer`] is a model id
            or path (passed through [`~bis_prm.model.modeling_prm.load_prm`]).
        head (`str`, *optional*, defaults to `"yes_no"`):
            Head created when the model is a base VLM: `"yes_no"` initialises the 2-row `score` head from the LM
            head's "Yes"/"No" rows, `"linear"` initialises it randomly. Ignored for a model that already is a PRM.
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            Token placed after every step; the PRM is trained and read at these positions.
        freeze_vision_tower (`bool`, *optional*, defaults to `True`):
            Freeze the vision encoder (ViT) and train the projector and the language model, as in the paper.

        > Parameters that control the data preprocessing

        dataset_image_field (`str`, *optional*, defaults to `"image"`):
            Column with the image(s) of a rollout: a path, a list of paths, or `Image()` features.
        dataset_question_field (`str`, *optional*, defaults to `"question"`):
            Column with the question.
        dataset_steps_field (`str`, *optional*, defaults to `"steps"`):
            Column with the list of solution steps.
        dataset_labels_field (`str`, *optional*, defaults to `"labels"`):
            Column with the per-step hard labels (0/1 or booleans): the labels selection wrote with its `tau`.
        dataset_mc_scores_field (`str`, *optional*, defaults to `"mc_scores"`):
            Column with the per-step Monte Carlo scores in [0, 1], the targets of `label_mode="soft"`.
        label_mode (`str`, *optional*, defaults to `"hard"`):
            Training targets: `"hard"`, the labels column; `"soft"`, the MC scores. Evaluation uses the labels.
        prompt_format (`str`, *optional*, defaults to `"bis_prm"`):
            How a rollout is written for the model: `"bis_prm"`, `Question: ...\nProcess: step<prm>\n\n...` in the
            user turn of the backbone's chat template; `"bis_reference"`, the BIS reference code's InternVL2.5
            training sequence (system prompt, empty user turn, images and text in the assistant turn; InternVL
            models only). Stored in the PRM's config, so that inference renders rollouts the same way.
        image_root (`str`, *optional*):
            Directory that relative image paths are resolved against, instead of each row's `image_root` column.
        max_length (`int`, *optional*, defaults to `4096`):
            Maximum number of tokens of a rendered rollout. Longer rollouts are truncated and only the step tokens
            that survive keep their labels. `None` disables truncation.
        max_pixels (`int`, *optional*):
            Upper bound on the pixels of each image for processors that resize dynamically (Qwen2.5-VL's
            `size["longest_edge"]`). `None` keeps the processor's setting.
        max_tiles (`int`, *optional*):
            Upper bound on the number of tiles per image for tiling processors (InternVL's `max_patches`). `None` keeps
            the processor's setting.
        max_images (`int`, *optional*):
            Rollouts with more images are given to the model as one grid of them. `None` passes every image.
        padding_free (`bool`, *optional*, defaults to `False`):
            Pack the rollouts of each micro-batch into one row without padding (TRL's option name): positions restart
            at every rollout and no token attends across rollouts (`flash_attention_2` varlen on a GPU; exact on any
            attention implementation). The loss and its normalisation are those of the padded batch.
        dataset_num_proc (`int`, *optional*):
            Number of processes that prepare the dataset (the row checks open every image header).

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`]:
    > - `learning_rate`: Defaults to `1e-5` instead of `5e-5`.
    > - `weight_decay`: Defaults to `0.05` instead of `0.0`.
    > - `warmup_steps`: Defaults to `0.05` (a ratio of the total steps) instead of `0`.
    > - `lr_scheduler_type`: Defaults to `"cosine"` instead of `"linear"`.
    > - `num_train_epochs`: Defaults to `1` instead of `3`.
    > - `logging_steps`: Defaults to `10` instead of `500`.
    > - `activation_checkpointing`: Defaults to `True` instead of `False` (`activation_checkpointing_kwargs=
    >   {"every_n_layers": n}` checkpoints only every n-th layer, to spend spare memory on speed).
    > - `bf16`: Defaults to `True` on a bf16-capable accelerator when `fp16` is not set, `False` on CPU.
    > - `remove_unused_columns`: Defaults to `False` instead of `True`: the collator reads the raw columns.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    # Parameters whose default values are overridden from TrainingArguments
    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})
    weight_decay: float = field(default=0.05, metadata={"help": "Weight decay for AdamW."})
    warmup_steps: float = field(
        default=0.05,
        metadata={"help": "Linear warmup: an integer number of steps, or a float in [0, 1) as a ratio of all steps."},
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "The scheduler type to use."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Total number of training epochs."})
    activation_checkpointing: bool | None = field(
        default=True,
        metadata={"help": "Recompute activations in the backward pass to save memory (every layer by default)."},
    )
    # transformers' deprecated alias of `activation_checkpointing`: left unset, so that no FutureWarning is raised
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing`."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep the raw columns: the PRM collator renders rollouts from them."},
    )

    # Parameters that control the model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when the model is given as an id or a path."},
    )
    head: str = field(
        default="yes_no",
        metadata={
            "help": "Head created for a base VLM: `yes_no` (from the LM head's Yes/No rows) or `linear` (random).",
            "choices": ["yes_no", "linear"],
        },
    )
    step_token: str = field(default="<prm>", metadata={"help": "Token placed after every step."})
    freeze_vision_tower: bool = field(
        default=True,
        metadata={"help": "Freeze the vision encoder and train the projector and the language model."},
    )

    # Parameters that control the data preprocessing
    dataset_image_field: str = field(default="image", metadata={"help": "Column with the image(s)."})
    dataset_question_field: str = field(default="question", metadata={"help": "Column with the question."})
    dataset_steps_field: str = field(default="steps", metadata={"help": "Column with the list of steps."})
    dataset_labels_field: str = field(default="labels", metadata={"help": "Column with the per-step hard labels."})
    dataset_mc_scores_field: str = field(
        default="mc_scores", metadata={"help": "Column with the per-step Monte Carlo scores."}
    )
    label_mode: str = field(
        default="hard",
        metadata={
            "help": "`hard`: train on the labels column; `soft`: on the MC scores.",
            "choices": ["hard", "soft"],
        },
    )
    prompt_format: str = field(
        default="bis_prm",
        metadata={
            "help": "`bis_prm`: the prompt in the backbone's chat template; `bis_reference`: the BIS reference "
            "code's InternVL2.5 sequence (system prompt, empty user turn, the prompt in the assistant turn).",
            "choices": list(PROMPT_FORMATS),
        },
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Directory relative image paths are resolved against (instead of the image_root column)."},
    )
    max_length: int | None = field(
        default=4096,
        metadata={"help": "Maximum tokens per rollout; truncation keeps labels on the surviving step tokens."},
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Maximum pixels per image for dynamic-resolution processors (Qwen2.5-VL)."}
    )
    max_tiles: int | None = field(
        default=None, metadata={"help": "Maximum tiles per image for tiling processors (InternVL)."}
    )
    max_images: int | None = field(
        default=None, metadata={"help": "Tile rollouts with more images than this into one grid."}
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "Pack each micro-batch into one row without padding; positions restart at every rollout."},
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes used to prepare the dataset."}
    )

    def __post_init__(self):
        _set_cpu_distributed_defaults(self)
        # pinned memory only helps copies to an accelerator; without one torch warns at every DataLoader
        if not torch.accelerator.is_available():
            self.dataloader_pin_memory = False
        # bf16 where the hardware has it; TrainingArguments refuses bf16 on a CPU-only machine unless `use_cpu`
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and is_torch_bf16_gpu_available()
        super().__post_init__()
        if self.head not in ("yes_no", "linear"):
            raise ValueError(f"`head` must be 'yes_no' or 'linear', got {self.head!r}.")
        if self.label_mode not in ("hard", "soft"):
            raise ValueError(f"`label_mode` must be 'hard' or 'soft', got {self.label_mode!r}.")
        check_prompt_format(self.prompt_format)
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"`max_length` must be positive or None, got {self.max_length}.")


def _set_cpu_distributed_defaults(args: PRMConfig) -> None:
    # Workaround for launches on a machine without any accelerator (the tiny recipe, CI): accelerate only sets up a
    # process group there when told so, and otherwise each launched process trains alone as a 1-process world.
    # DeepSpeed configs need the gloo backend named explicitly; DDP configs need `use_cpu` (MULTI_CPU over gloo).
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    if not launched or torch.accelerator.is_available() or args.use_cpu or args.ddp_backend is not None:
        return
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        args.ddp_backend = "gloo"
    else:
        args.use_cpu = True
