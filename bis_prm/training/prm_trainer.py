"""`PRMTrainer`: train a vision-language process reward model (PRM) on rollouts in the HF PRM format.

Why TRL's private `_BaseTrainer` / `_BaseConfig` and not `SFTTrainer`
--------------------------------------------------------------------
TRL 1.x dropped its PRM trainer; that trainer (like today's `RewardTrainer`) subclassed `_BaseTrainer` and
`_BaseConfig`. We do the same, deliberately:

- `_BaseConfig` carries TRL's defaults (`logging_steps=10`, gradient checkpointing on, bf16 when available) and the
  `--help` fixes for `TrainingArguments`, so `PRMConfig` reads like every other TRL config on the command line.
- `_BaseTrainer` adds model tags, TRL's telemetry and the `loss_is_scaled_for_ga` compatibility shim for older
  transformers; everything else is the stock `transformers.Trainer` (DDP, DeepSpeed, checkpointing, PEFT models).
- `SFTTrainer` is public and VLM-aware, but it is built around language-modelling data: it tokenizes into
  `input_ids`/`completion_mask`, packs, computes token-level LM losses and entropy metrics. A PRM needs none of
  that: a rollout is rendered by the processor at collation time, targets sit only at step tokens, and the loss is a
  2-way classification normalised by labelled steps. Subclassing it would mean overriding most of it.

The price of a private base is that TRL may change it without notice: we support the TRL versions pinned in
`setup.cfg` (verified on 1.16) and `tests/test_prm_trainer.py::test_trl_base_guard` fails as soon as the names,
class hierarchy or signatures we rely on move.

Gradient accumulation: the model's forward takes `num_items_in_batch` and returns `sum(loss) / num_items_in_batch`.
`transformers.Trainer` counts `labels != -100` over all micro-batches of an optimizer step (and across processes),
i.e. the labelled steps, so 1 x 4 and 4 x 1 give the same loss and gradients.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset, Sequence, Value
from huggingface_hub import ModelCard, ModelCardData
from torch import nn
from transformers import AutoProcessor, PreTrainedModel, ProcessorMixin, TrainerCallback, set_seed
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config
from transformers.trainer_utils import EvalPrediction
from transformers.utils import is_peft_available
from trl.trainer.base_trainer import _BaseTrainer

from bis_prm.model.modeling_prm import load_prm
from bis_prm.model.processing_prm import PRMCollator
from bis_prm.training.prm_config import PRMConfig

if is_peft_available():
    from peft import PeftConfig, get_peft_model

logger = get_logger(__name__)

# Submodules holding the vision encoder, by architecture (Qwen2.5-VL: `visual`; InternVL / LLaVA-style: `vision_tower`)
_VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")
# Parts of a vision module that belong to the projector and stay trainable (Qwen2.5-VL's patch merger)
_PROJECTOR_NAMES = ("merger",)
_TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"

_CITATION = """\
@article{bis_prm_2026,
  title   = {{Training Data Efficiency in Multimodal Process Reward Models}},
  journal = {arXiv preprint arXiv:2602.11111},
  year    = {2026}
}"""


class PRMDatasetError(ValueError):
    """Raised by the validation pass when a dataset cannot be used for PRM training; lists every problem found."""


def validate_prm_dataset(dataset: Dataset, args: PRMConfig, dataset_name: str = "train") -> None:
    """
    Check a dataset in the HF PRM format before training and raise one error listing the problems.

    Checks that the required columns exist, that each row has as many labels (and MC scores) as steps, that labels and
    MC scores lie in [0, 1], that every row has at least one step and that image files exist (relative paths are
    resolved against `args.image_root`). Stops collecting after `args.max_validation_errors` problems.

    Args:
        dataset (`datasets.Dataset`):
            Rollouts with the columns named by `args.dataset_*_field`.
        args ([`PRMConfig`]):
            Gives the column names, `label_mode`, `image_root` and `max_validation_errors`.
        dataset_name (`str`, *optional*, defaults to `"train"`):
            Named in the error message.

    Raises:
        [`PRMDatasetError`]: naming the dataset, column and row of each problem.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"image": [[]], "question": ["q"], "steps": [["a", "b"]], "labels": [[1.0]]})
    >>> validate_prm_dataset(ds, PRMConfig(output_dir="out"))
    Traceback (most recent call last):
    ...
    bis_prm.training.prm_trainer.PRMDatasetError: The train dataset cannot be used for PRM training (1 problem):
      - row 0: column 'labels' has 1 values but 'steps' has 2
    ```
    """
    image_field, steps_field = args.dataset_image_field, args.dataset_steps_field
    labels_field, mc_field = args.dataset_labels_field, args.dataset_mc_scores_field
    columns = set(dataset.column_names)
    has_mc = mc_field in columns
    required = [image_field, args.dataset_question_field, steps_field]
    if args.label_mode == "soft" or not has_mc:
        required.append(mc_field if args.label_mode == "soft" else labels_field)
    missing = [name for name in required if name not in columns]
    if missing:
        raise PRMDatasetError(
            f"The {dataset_name} dataset is missing the required column(s) {missing}; it has {sorted(columns)}. "
            "Rename the columns or set the `dataset_*_field` options of `PRMConfig`."
        )

    problems: list[str] = []
    target_fields = [name for name in (labels_field, mc_field) if name in columns]
    # Image files are only checked when the column holds paths; `Image()` features carry their bytes
    check_images = _holds_paths(dataset.features[image_field])
    columns_to_read = [steps_field, *target_fields] + ([image_field] if check_images else [])
    for row, example in enumerate(dataset.select_columns(columns_to_read)):
        steps = example[steps_field]
        if not steps:
            problems.append(f"row {row}: column '{steps_field}' is empty")
        for name in target_fields:
            values = example[name]
            if values is None or len(values) != len(steps or []):
                problems.append(
                    f"row {row}: column '{name}' has {len(values or [])} values but '{steps_field}' has "
                    f"{len(steps or [])}"
                )
            bad = [value for value in values or [] if value is None or not 0.0 <= value <= 1.0]
            if bad:
                problems.append(f"row {row}: column '{name}' has values outside [0, 1]: {bad[:3]}")
        if check_images:
            for path in _as_list(example[image_field]):
                resolved = resolve_image_path(path, args.image_root)
                if not os.path.isfile(resolved):
                    problems.append(f"row {row}: column '{image_field}' names a missing image file: {resolved}")
        if len(problems) >= args.max_validation_errors:
            problems.append(f"... stopped after {args.max_validation_errors} problems")
            break
    if problems:
        count = len(problems) if not problems[-1].startswith("...") else f"at least {len(problems) - 1}"
        noun = "problem" if count == 1 else "problems"
        raise PRMDatasetError(
            f"The {dataset_name} dataset cannot be used for PRM training ({count} {noun}):\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )


def resolve_image_path(path: str, image_root: str | None) -> str:
    """Return `path` joined to `image_root` when it is relative and a root is given.

    >>> resolve_image_path("ai2d/1.png", "/data/images")
    '/data/images/ai2d/1.png'
    """
    return os.path.join(image_root, path) if image_root and not os.path.isabs(path) else path


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _holds_paths(feature: Any) -> bool:
    if isinstance(feature, (list, Sequence)):
        feature = feature[0] if isinstance(feature, list) else feature.feature
    if isinstance(feature, (list, Sequence)):
        return _holds_paths(feature)
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def make_targets(
    steps: list[list[str]],
    labels: list[list[float]] | None,
    mc_scores: list[list[float]] | None,
    label_mode: str,
    tau: float,
) -> dict[str, list[list[float]]]:
    """
    Per-step training targets for a batch of rollouts, the pure function mapped over a dataset.

    `"hard"`: `1.0 if mc_score > tau else 0.0` when MC scores are given, else the labels (as floats). `"soft"`: the
    MC scores themselves, the target probability that the step is correct.

    Example:

    ```python
    >>> make_targets([["a", "b"]], None, [[0.25, 0.0]], "hard", tau=0.0)
    {'labels': [[1.0, 0.0]]}
    >>> make_targets([["a", "b"]], None, [[0.25, 0.0]], "soft", tau=0.0)
    {'labels': [[0.25, 0.0]]}
    ```
    """
    if mc_scores is None:
        return {"labels": [[float(value) for value in row] for row in labels]}
    if label_mode == "soft":
        return {"labels": [[float(value) for value in row] for row in mc_scores]}
    return {"labels": [[1.0 if value > tau else 0.0 for value in row] for row in mc_scores]}


def rollout_lengths(questions: list[str], steps: list[list[str]], tokenizer) -> dict[str, list[int]]:
    """Text-token length of each rollout (question + steps, images excluded), used by `group_by_length`."""
    texts = [question + "".join(row) for question, row in zip(questions, steps, strict=True)]
    return {"length": [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]}


def positive_probabilities(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """
    Reduce `[B, T, 2]` logits to P(positive) at the labelled positions, -100 elsewhere (`[B, T]`).

    Used as `preprocess_logits_for_metrics`, so evaluation keeps one number per labelled step instead of full logits.
    The shape follows the labels (which the Trainer pads across processes), so the gather across processes lines up.

    Example:

    ```python
    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    >>> positive_probabilities(logits, torch.tensor([[-100.0, 1.0, 0.0]])).round(decimals=3)
    tensor([[-100.0000,    0.8810,    0.5000]])
    ```
    """
    if isinstance(logits, tuple):  # models may return extra outputs after the logits
        logits = logits[0]
    probs = logits.float().softmax(dim=-1)[..., 0]
    return torch.where(labels != -100, probs, torch.full_like(probs, -100.0))


def compute_step_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """
    Step accuracy and F1 of the positive and of the negative steps.

    Predictions come from [`positive_probabilities`] (-100 off the labelled steps); a step is predicted positive when
    P(positive) >= 0.5 and is positive when its label is > 0.5 (evaluation labels are hard).

    Example:

    ```python
    >>> preds = np.array([[-100, 0.9, -100, 0.2, -100], [0.6, 0.7, 0.1, -100, -100]])
    >>> labels = np.array([[-100, 1.0, -100, 0.0, -100], [1.0, 0.0, 0.0, -100, -100]])
    >>> {k: round(v, 3) for k, v in compute_step_metrics(EvalPrediction(preds, labels)).items()}
    {'step_accuracy': 0.8, 'f1_positive': 0.8, 'f1_negative': 0.8}
    ```
    """
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    mask = labels != -100
    predicted = predictions[mask] >= 0.5
    target = labels[mask] > 0.5

    def f1(positive_class: bool) -> float:
        tp = np.sum((predicted == positive_class) & (target == positive_class))
        fp = np.sum((predicted == positive_class) & (target != positive_class))
        fn = np.sum((predicted != positive_class) & (target == positive_class))
        return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0

    return {
        "step_accuracy": float(np.mean(predicted == target)) if target.size else 0.0,
        "f1_positive": f1(True),
        "f1_negative": f1(False),
    }


def freeze_vision_tower(model: nn.Module) -> int:
    """
    Freeze the vision encoder of a VLM and keep the projector trainable; returns the number of frozen parameters.

    The vision encoder is the submodule named `visual` (Qwen2.5-VL), `vision_tower` (InternVL) or `vision_model`;
    inside it, parameters of the projector (Qwen2.5-VL's `merger`) stay trainable.

    >>> freeze_vision_tower(nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    ValueError: Found no vision encoder (a submodule named 'visual', 'vision_tower', 'vision_model') in Linear.
    """
    frozen = 0
    found = False
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        if not any(part in _VISION_TOWER_NAMES for part in parts):
            continue
        found = True
        if any(part in _PROJECTOR_NAMES for part in parts):
            continue
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    if not found:
        raise ValueError(
            "Found no vision encoder (a submodule named "
            + ", ".join(repr(name) for name in _VISION_TOWER_NAMES)
            + f") in {type(model).__name__}."
        )
    return frozen


def apply_image_limits(processor: ProcessorMixin, max_pixels: int | None, max_tiles: int | None) -> None:
    """
    Cap image sizes on a processor in place: `max_pixels` for dynamic-resolution processors (Qwen2.5-VL's
    `size["longest_edge"]`), `max_tiles` for tiling processors (InternVL's `max_patches`).

    Raises a `ValueError` naming the option when the processor has no such setting.
    """
    image_processor = getattr(processor, "image_processor", None)
    if max_pixels is not None:
        size = getattr(image_processor, "size", None)
        if size is None or "longest_edge" not in size:
            raise ValueError(
                f"`max_pixels` needs a dynamic-resolution image processor; {type(image_processor).__name__} has none. "
                "Use `max_tiles` for tiling processors."
            )
        image_processor.size = {**dict(size), "longest_edge": max_pixels}
    if max_tiles is not None:
        if not hasattr(image_processor, "max_patches"):
            raise ValueError(
                f"`max_tiles` needs a tiling image processor; {type(image_processor).__name__} has none. "
                "Use `max_pixels` for dynamic-resolution processors."
            )
        image_processor.max_patches = max_tiles


class PRMTrainer(_BaseTrainer):
    """
    Trainer for vision-language process reward models (PRMs).

    This class is a wrapper around [`~transformers.Trainer`] (through TRL's base trainer). It takes rollouts in the HF
    PRM format produced by the BIS pipeline (`image`, `question`, `steps`, `labels` and optionally `mc_scores`),
    validates them before training, renders them with the model's processor in a [`PRMCollator`] and trains the
    2-way `score` head at the step tokens. Evaluation reports loss, step accuracy and the F1 of positive and negative
    steps.

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]):
            A PRM, or a model id / path: a saved PRM or a base VLM, which [`~bis_prm.load_prm`] turns into
            a PRM with `args.head`.
        args ([`PRMConfig`], *optional*):
            Training configuration. Defaults to `PRMConfig("<model name>-PRM")`.
        data_collator (`DataCollator`, *optional*):
            Defaults to a [`PRMCollator`] built from the processor and `args`.
        train_dataset ([`~datasets.Dataset`]):
            Rollouts in the HF PRM format, local or from `load_dataset("user/subset")`.
        eval_dataset ([`~datasets.Dataset`] or `dict[str, Dataset]`, *optional*):
            Evaluation rollouts; their targets are always hard labels.
        processing_class ([`~transformers.ProcessorMixin`], *optional*):
            The processor; loaded with the model when `model` is a string, else from the model's name or path.
        compute_metrics (`Callable`, *optional*):
            Defaults to [`compute_step_metrics`] (with [`positive_probabilities`] as `preprocess_logits_for_metrics`).
        callbacks (`list[TrainerCallback]`, *optional*):
            Callbacks, as for [`~transformers.Trainer`].
        optimizers (`tuple`, *optional*):
            Optimizer and scheduler, as for [`~transformers.Trainer`].
        preprocess_logits_for_metrics (`Callable`, *optional*):
            Overrides [`positive_probabilities`].
        peft_config ([`~peft.PeftConfig`], *optional*):
            Wraps the model in a PEFT model (use `task_type="TOKEN_CLS"` so the `score` head stays trainable).

    Example:

    ```python
    >>> model, processor = load_prm("tiny-qwen2_5_vl", head="yes_no")  # doctest: +SKIP
    >>> args = PRMConfig("out")
    >>> trainer = PRMTrainer(model, args, train_dataset=dataset, processing_class=processor)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    _tag_names = ["trl", "prm", "bis-prm"]
    _name = "PRM"
    _paper = {
        "title": "Training Data Efficiency in Multimodal Process Reward Models",
        "id": "2602.11111",
        "citation": _CITATION,
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: PRMConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: ProcessorMixin | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        peft_config: PeftConfig | None = None,
    ):
        # Args
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = PRMConfig(f"{model_name.rstrip('/').split('/')[-1]}-PRM")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required.")
        if isinstance(train_dataset, IterableDataset):
            raise TypeError("`train_dataset` must be a `datasets.Dataset`: the validation pass reads every row first.")

        # Dataset validation comes first: bad data should fail in seconds, not after loading a 7B model
        validate_prm_dataset(train_dataset, args, "train")
        eval_datasets = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
        for name, dataset in eval_datasets.items():
            if dataset is not None:
                validate_prm_dataset(dataset, args, name)

        # Model
        # A base VLM gets a freshly initialised head, so seed before creating it
        set_seed(args.seed)
        if isinstance(model, str):
            model_init_kwargs = dict(args.model_init_kwargs or {})
            # Distributed training requires device_map=None ("auto" fails)
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
                model_init_kwargs["device_map"] = None
            with _unpartitioned_loading(args):
                model, loaded_processor = load_prm(
                    model, head=args.head, step_token=args.step_token, **model_init_kwargs
                )
            processing_class = processing_class or loaded_processor
        elif args.model_init_kwargs is not None:
            logger.warning("`model_init_kwargs` is ignored: the model is already instantiated.")
        if args.freeze_vision_tower:
            freeze_vision_tower(model)

        # Processing class
        if processing_class is None:
            processing_class = AutoProcessor.from_pretrained(model.config._name_or_path)
        apply_image_limits(processing_class, args.max_pixels, args.max_tiles)

        # PEFT
        if peft_config is not None:
            if not is_peft_available():
                raise ImportError("`peft_config` needs the `peft` library: `pip install peft`.")
            if is_peft_model(model):
                raise ValueError("`peft_config` was given for a model that already is a `PeftModel`.")
            model = get_peft_model(model, peft_config)
            if args.gradient_checkpointing:
                # Frozen embeddings give checkpointed blocks inputs without grad, so the adapters would get none
                model.enable_input_require_grads()

        # Data collator
        if data_collator is None:
            data_collator = PRMCollator(
                processing_class, step_token=args.step_token, max_length=args.max_length, max_images=args.max_images
            )

        # Dataset
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        eval_datasets = {
            name: self._prepare_dataset(dataset, processing_class, args, name, hard_labels=True)
            for name, dataset in eval_datasets.items()
            if dataset is not None
        }
        eval_dataset = eval_datasets if isinstance(eval_dataset, dict) else eval_datasets.get("eval")

        if compute_metrics is None:
            compute_metrics = compute_step_metrics
            preprocess_logits_for_metrics = preprocess_logits_for_metrics or positive_probabilities

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # The PRM forward takes `num_items_in_batch` (see the module docstring); saying so makes the Trainer count the
        # labelled steps of all micro-batches of an optimizer step, whatever the forward signature looks like
        self.model_accepts_loss_kwargs = True
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    def _prepare_dataset(
        self,
        dataset: Dataset,
        processing_class: ProcessorMixin,
        args: PRMConfig,
        dataset_name: str,
        hard_labels: bool = False,
    ) -> Dataset:
        map_kwargs = {"num_proc": args.dataset_num_proc}
        # Canonical column names, as the collator reads them
        renames = {
            args.dataset_image_field: "image",
            args.dataset_question_field: "question",
            args.dataset_steps_field: "steps",
        }
        labels_field, mc_field = args.dataset_labels_field, args.dataset_mc_scores_field
        has_mc = mc_field in dataset.column_names
        input_columns = [args.dataset_steps_field, labels_field if not has_mc else mc_field]
        dataset = dataset.map(
            _targets_batch,
            batched=True,
            input_columns=input_columns,
            fn_kwargs={
                "from_mc": has_mc,
                "label_mode": "hard" if hard_labels else args.label_mode,
                "tau": args.tau,
            },
            remove_columns=[labels_field] if labels_field in dataset.column_names else None,
            desc=f"Computing {dataset_name} targets",
            **map_kwargs,
        )
        dataset = dataset.cast_column("labels", Sequence(Value("float32")))
        dataset = dataset.rename_columns({old: new for old, new in renames.items() if old != new})
        if args.image_root and _holds_paths(dataset.features["image"]):
            dataset = dataset.map(
                _resolve_batch,
                batched=True,
                input_columns=["image"],
                fn_kwargs={"image_root": args.image_root},
                desc=f"Resolving {dataset_name} image paths",
                **map_kwargs,
            )
        if args.train_sampling_strategy == "group_by_length" and args.length_column_name not in dataset.column_names:
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            dataset = dataset.map(
                _lengths_batch,
                batched=True,
                input_columns=["question", "steps"],
                fn_kwargs={"tokenizer": tokenizer, "column": args.length_column_name},
                desc=f"Measuring {dataset_name} rollouts",
                **map_kwargs,
            )
        return dataset

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs.pop("num_steps", None)  # collator bookkeeping, not a model input
        # The Trainer passes `num_items_in_batch` to the model and rescales the loss by the number of processes when
        # the count is global (`average_tokens_across_devices`), so DDP/DeepSpeed gradient averaging stays exact
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)

        with torch.no_grad():
            labels = inputs["labels"]
            mask = labels != -100
            predicted = outputs.logits[..., 0] >= outputs.logits[..., 1]
            correct = (predicted == (labels > 0.5))[mask].sum()
            counts = self.accelerator.gather_for_metrics(torch.stack([correct, mask.sum()]).reshape(1, 2)).sum(0)
            self._metrics[mode]["step_accuracy"].append((counts[0] / counts[1].clamp(min=1)).item())
            if mode == "train":
                self._metrics[mode]["num_steps"].append(counts[1].item())

        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            # `compute_step_metrics` already reports the eval step accuracy over the whole split
            metrics = {f"eval_{key}": value for key, value in metrics.items() if f"eval_{key}" not in logs}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        selection: dict[str, Any] | None = None,
        eval_results: dict[str, float] | None = None,
        visualprocessbench: dict[str, Any] | None = None,
    ) -> None:
        """
        Write the model card `README.md` in `args.output_dir` from bis_prm's PRM template.

        Args:
            model_name (`str`, *optional*):
                Name of the model; defaults to the output directory's name.
            dataset_name (`str`, *optional*):
                The training data (Hub id or path).
            tags (`str` or `list[str]`, *optional*):
                Extra tags.
            selection (`dict`, *optional*):
                BIS selection parameters (`method`, `ratio`, `alpha`, `tau`, `seed`) and the selection report.
            eval_results (`dict[str, float]`, *optional*):
                Evaluation scores to put in the card.
            visualprocessbench (`dict`, *optional*):
                VisualProcessBench metrics as written by `bis-prm eval` (`metrics.json`): the card's per-source
                macro-F1 table. Without them the card says how to evaluate.
        """
        if not self.is_world_process_zero():
            return
        model_path = getattr(self.model.config, "_name_or_path", None) or "unknown"
        # A local path is no Hub reference: name it in the text, keep it out of the metadata
        base_model = None if os.path.exists(model_path) or model_path == "unknown" else model_path
        tags = {tags} if isinstance(tags, str) else set(tags or [])
        tags.update(self._tag_names)
        card_data = ModelCardData(
            base_model=base_model,
            datasets=[dataset_name] if dataset_name and not os.path.exists(dataset_name) else None,
            library_name="transformers",
            pipeline_tag="token-classification",
            model_name=model_name or Path(self.args.output_dir).name,
            tags=sorted(tags),
        )
        args = self.args
        training = {
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "warmup_steps": args.warmup_steps,
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "bf16": args.bf16,
            "head": args.head,
            "step_token": args.step_token,
            "label_mode": args.label_mode,
            "tau": args.tau,
            "max_length": args.max_length,
            "freeze_vision_tower": args.freeze_vision_tower,
            "seed": args.seed,
        }
        card = ModelCard.from_template(
            card_data,
            template_path=str(_TEMPLATE_PATH),
            model_id=args.hub_model_id or card_data.model_name,
            base_model=model_path,
            base_model_on_hub=base_model is not None,
            dataset_name=dataset_name or "unknown",
            selection=selection or {},
            training=training,
            eval_results={key: value for key, value in (eval_results or {}).items() if _is_score(key)},
            step_token=args.step_token,
            visualprocessbench=visualprocessbench or {},
            citation=_CITATION,
        )
        card.save(os.path.join(args.output_dir, "README.md"))


@contextmanager
def _unpartitioned_loading(args: PRMConfig):
    # Workaround: `load_prm` builds the PRM shell on the meta device, which `deepspeed.zero.Init` (active while a
    # ZeRO-3 config is registered with transformers) cannot initialise ("Cannot copy out of meta tensor"). Load the
    # model whole on each process instead; DeepSpeed partitions it when the engine starts. Costs one full CPU copy of
    # the weights per process during loading.
    if not is_deepspeed_zero3_enabled() or args.deepspeed_plugin is None:
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        args.deepspeed_plugin.set_deepspeed_weakref()


def _is_score(metric_name: str) -> bool:
    # Keep quality metrics in the card, not timings
    return metric_name.endswith(("loss", "accuracy")) or "f1" in metric_name


def _targets_batch(steps, values, from_mc: bool, label_mode: str, tau: float) -> dict[str, list[list[float]]]:
    # Module-level so that `datasets` can fingerprint it and cache the mapped dataset
    if from_mc:
        return make_targets(steps, None, values, label_mode, tau)
    return make_targets(steps, values, None, label_mode, tau)


def _lengths_batch(questions, steps, tokenizer, column: str) -> dict[str, list[int]]:
    return {column: rollout_lengths(questions, steps, tokenizer)["length"]}


def _resolve_batch(images, image_root: str) -> dict[str, list]:
    return {"image": [[resolve_image_path(path, image_root) for path in _as_list(row)] for row in images]}


__all__ = [
    "PRMConfig",
    "PRMDatasetError",
    "PRMTrainer",
    "apply_image_limits",
    "compute_step_metrics",
    "freeze_vision_tower",
    "make_targets",
    "positive_probabilities",
    "validate_prm_dataset",
]
