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

The loss is the Trainer's `compute_loss_func`: [`~bis_prm.model.modeling_prm.prm_loss`] on the model's logits, summed
over the labelled steps and divided by `num_items_in_batch`, which `transformers.Trainer` counts as `labels != -100`
over all micro-batches of an optimizer step (and across processes): 1 x 4 and 4 x 1 give the same loss and gradients,
and so do 2 processes x 1 and 1 x 2.

No single rollout stops a run: rows that cannot be trained on are dropped before training, by dataset row and reason
([`~bis_prm.training.dataset.prepare_prm_dataset`]); a rollout that still fails when its batch is rendered is left out
of that batch and counted (logged as `rollouts_skipped`, written into the model card). A failure in the very first
batch is an error, so that a wholly broken dataset is not trained on silently.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import AutoProcessor, PreTrainedModel, ProcessorMixin, TrainerCallback, set_seed
from transformers.integrations.liger import apply_liger_kernel
from transformers.trainer_pt_utils import BatchRebalanceSampler
from transformers.trainer_utils import EvalPrediction
from transformers.utils import is_peft_available
from trl.trainer.base_trainer import _BaseTrainer

from bis_prm.data.stepwise import from_trl_stepwise, is_trl_stepwise
from bis_prm.model.inference import rollout_token_counts
from bis_prm.model.modeling_prm import load_prm, positive_index, prm_loss
from bis_prm.model.processing_prm import PRMCollator, apply_image_limits
from bis_prm.model.vision_tower import freeze_vision_tower, has_vision_tower
from bis_prm.training.dataset import DatasetCheck, PRMDatasetError, check_columns, prepare_prm_dataset
from bis_prm.training.model_card import CITATION, training_settings, write_model_card
from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.sampling import PackedBatchRebalanceSampler

if is_peft_available():
    from peft import PeftConfig, get_peft_model

logger = get_logger(__name__)


def positive_probabilities(logits: torch.Tensor, labels: torch.Tensor, positive_index: int = 1) -> torch.Tensor:
    """
    Reduce `[B, T, 2]` logits to P(positive) at the labelled positions, -100 elsewhere (`[B, T]`).

    Used as `preprocess_logits_for_metrics`, so evaluation keeps one number per labelled step instead of full logits.
    The shape follows the labels (which the Trainer pads across processes), so the gather across processes lines up.

    Example:

    ```python
    >>> logits = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])
    >>> positive_probabilities(logits, torch.tensor([[-100.0, 1.0, 0.0]])).round(decimals=3)
    tensor([[-100.0000,    0.8810,    0.5000]])

    ```
    """
    if isinstance(logits, tuple):  # models may return extra outputs after the logits
        logits = logits[0]
    probs = logits.float().softmax(dim=-1)[..., positive_index]
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


class SkippingCollator:
    """
    The trainer's collator: a rollout that cannot be rendered is left out of its batch, and reported with the batch
    under `skipped` as `(dataset row, reason, message)`.

    A batch whose every rollout fails becomes `fallback` (a rollout known to render) with every label set to -100:
    it adds nothing to the loss, but every process still runs its forward and backward passes, which DDP and
    DeepSpeed need to stay in step.

    Example:

    ```python
    >>> collator = SkippingCollator(PRMCollator(processor), fallback=train_dataset[0])  # doctest: +SKIP
    >>> batch = collator([good_row, row_with_a_corrupt_image])  # doctest: +SKIP
    >>> batch["skipped"]  # doctest: +SKIP
    [(17, 'image_unreadable', "image '.../corrupt.png' cannot be read: ...")]

    ```
    """

    def __init__(self, collator: PRMCollator, fallback: dict[str, Any]):
        self.collator, self.fallback = collator, fallback

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch, _, failures = self.collator.collate_skipping(examples)
        if batch is None:
            batch = self.collator([self.fallback])
            batch["labels"].fill_(-100.0)
        batch["skipped"] = [(examples[i].get("row_index", i), reason, message) for i, reason, message in failures]
        return batch


class PRMTrainer(_BaseTrainer):
    """
    Trainer for vision-language process reward models (PRMs).

    This class is a wrapper around [`~transformers.Trainer`] (through TRL's base trainer). It takes rollouts in the HF
    PRM format produced by the BIS pipeline (`image`, `image_root`, `question`, `steps`, `labels` and optionally
    `mc_scores`), checks every row before training, renders them with the model's processor in a [`PRMCollator`] and
    trains the 2-way `score` head at the step tokens. Evaluation reports loss, step accuracy and the F1 of positive and
    negative steps. Saving writes a model card (`README.md`) with the selection report, the training settings, the
    rows left out and the evaluation scores.

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
        dataset_name (`str`, *optional*):
            Where the training data comes from (Hub id or path), for the model card.
        selection_report (`dict`, *optional*):
            The report of the selection that produced `train_dataset` (see [`~bis_prm.data.selection.subset_report`]),
            for the model card.

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
        "id": "2602.04145",
        "citation": CITATION,
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
        dataset_name: str | None = None,
        selection_report: dict[str, Any] | None = None,
    ):
        # Args
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = PRMConfig(f"{model_name.rstrip('/').split('/')[-1]}-PRM")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required.")
        if isinstance(train_dataset, IterableDataset):
            raise TypeError("`train_dataset` must be a `datasets.Dataset`: every row is checked before training.")
        eval_datasets = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
        eval_datasets = {name: dataset for name, dataset in eval_datasets.items() if dataset is not None}

        # Dataset
        # Bad data should fail in seconds, not after loading a 7B model: missing columns raise, bad rows are dropped
        # TRL's stepwise-supervision rows (prompt, completions, bool labels) are read as they are
        if is_trl_stepwise(train_dataset.column_names):
            train_dataset = from_trl_stepwise(train_dataset)
        eval_datasets = {
            name: from_trl_stepwise(dataset) if is_trl_stepwise(dataset.column_names) else dataset
            for name, dataset in eval_datasets.items()
        }
        check_columns(train_dataset, args, "train")
        for name, dataset in eval_datasets.items():
            check_columns(dataset, args, name, hard_labels=True)
        train_dataset, train_check = prepare_prm_dataset(train_dataset, args, "train")
        checks = [train_check]
        for name in list(eval_datasets):
            eval_datasets[name], check = prepare_prm_dataset(eval_datasets[name], args, name, hard_labels=True)
            checks.append(check)
        for check in checks:
            if check.num_dropped():
                logger.warning(check.describe())

        # Model
        # A base VLM gets a freshly initialised head, so seed before creating it
        set_seed(args.seed)
        if isinstance(model, str):
            model_init_kwargs = dict(args.model_init_kwargs or {})
            # Distributed training requires device_map=None ("auto" fails)
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
                model_init_kwargs["device_map"] = None
            # Under DeepSpeed ZeRO-3 (`zero3_init_flag`), `from_pretrained` creates the PRM inside `zero.Init`: each
            # process holds its shard only
            model, loaded_processor = load_prm(model, head=args.head, step_token=args.step_token, **model_init_kwargs)
            processing_class = processing_class or loaded_processor
        elif args.model_init_kwargs is not None:
            logger.warning("`model_init_kwargs` is ignored: the model is already instantiated.")
        if args.freeze_vision_tower and has_vision_tower(model):  # a text PRM has none
            freeze_vision_tower(model)
        # the saved PRM names the format it was trained with, so that inference renders rollouts the same way
        trained_format = getattr(model.config, "prompt_format", None)
        if trained_format not in (None, args.prompt_format):
            logger.warning(
                f"The model was trained with prompt_format={trained_format!r}; training it further with "
                f"prompt_format={args.prompt_format!r}, which its saved config will name from now on."
            )
        model.config.prompt_format = args.prompt_format
        base_model = model.base_model
        if args.use_liger_kernel:
            # Liger's kernels go into the backbone. Its fused LM-head loss has no place in a PRM (there is no LM
            # head), and the Trainer would hand Liger the whole PRM, a class it does not know: patch the base model
            # here and tell the Trainer it is done
            kernel_config = {**(args.liger_kernel_config or {}), "fused_linear_cross_entropy": False}
            apply_liger_kernel(base_model, kernel_config)
            args.use_liger_kernel = False

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
            if args.activation_checkpointing:
                # Frozen embeddings give checkpointed blocks inputs without grad, so the adapters would get none
                model.enable_input_require_grads()

        # Data collator
        attention = getattr(model.config, "_attn_implementation", None) or ""
        if args.padding_free and torch.cuda.is_available() and not attention.startswith("flash"):
            logger.warning(
                f"`padding_free` with `attn_implementation={attention!r}`: packed rows attend through a dense "
                "block-diagonal mask (exact, but quadratic in the length of the whole row). `flash_attention_2` "
                'attends within each rollout only: pip install "bis_prm[gpu]" and set `attn_implementation: '
                "flash_attention_2`."
            )
        if data_collator is None:
            collator = PRMCollator(
                processing_class,
                step_token=args.step_token,
                max_length=args.max_length,
                max_images=args.max_images,
                padding_free=args.padding_free,
                # multimodal rotary positions (Qwen2-VL family) are computed per rollout when rollouts are packed
                rope_index=getattr(base_model, "get_rope_index", None),
                prompt_format=args.prompt_format,
            )
            data_collator = SkippingCollator(collator, fallback=train_dataset[0])

        # the length-aware samplers (`group_by_length`, `batch_rebalance`) see total tokens, image tokens included
        length_aware = args.train_sampling_strategy in ("group_by_length", "batch_rebalance")
        if length_aware and args.length_column_name not in train_dataset.column_names:
            train_dataset = _with_lengths(train_dataset, processing_class, args)

        # the class order of this model (0.2.0.dev0 checkpoints have the positive class first)
        positive = positive_index(model.config)
        if compute_metrics is None:
            compute_metrics = compute_step_metrics
            preprocess_logits_for_metrics = preprocess_logits_for_metrics or partial(
                positive_probabilities, positive_index=positive
            )

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_datasets if isinstance(eval_dataset, dict) else eval_datasets.get("eval"),
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            compute_loss_func=partial(_prm_loss, positive_index=positive),
        )
        # The loss is ours (`compute_loss_func`): the model gets no loss arguments
        self.model_accepts_loss_kwargs = False
        self._positive_index = positive
        self.dataset_name, self.selection_report = dataset_name, selection_report
        self.dataset_checks: dict[str, DatasetCheck] = {check.name: check for check in checks}
        # rollouts skipped while collating, by mode: the rows of this process, and the count over all processes
        self.skipped_rollouts: dict[str, list[tuple]] = {"train": [], "eval": []}
        self._skipped_total = {"train": 0, "eval": 0}
        # correct steps, labelled steps, micro-batches and skipped rollouts since the last log, kept on the device
        self._counts: dict[str, torch.Tensor | None] = {"train": None, "eval": None}
        self._first_batch = True
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    def _get_train_sampler(self, train_dataset: Dataset | None = None):
        sampler = super()._get_train_sampler(train_dataset)
        if self.args.padding_free and type(sampler) is BatchRebalanceSampler:
            # packed micro-batches cost their total tokens, not rollouts x longest rollout
            sampler = PackedBatchRebalanceSampler(
                sampler.lengths,
                sampler.effective_batch_size,
                sampler.dp_size,
                sampler.grad_accum,
                shuffle=sampler.shuffle,
                seed=sampler.seed,
                rank=sampler.rank,
                drop_last=sampler.drop_last,
            )
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs.pop("num_steps", None)  # collator bookkeeping, not a model input
        skipped = inputs.pop("skipped", [])
        if skipped:
            if mode == "train" and self._first_batch:
                problems = "\n".join(f"  - row {row}: {reason}: {message}" for row, reason, message in skipped)
                raise PRMDatasetError(f"The first training batch could not be rendered:\n{problems}")
            self.skipped_rollouts[mode].extend(skipped)
            for row, reason, message in skipped:
                logger.warning(f"Skipped the {mode} rollout at row {row} ({reason}): {message}")
        if mode == "train":
            self._first_batch = False
        labels = inputs["labels"]
        # The Trainer passes `num_items_in_batch` to `compute_loss_func` and rescales the loss by the number of
        # processes when the count is global (`average_tokens_across_devices`), so DDP/DeepSpeed averaging stays exact
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)

        with torch.no_grad():
            mask = labels != -100
            positive = self._positive_index
            predicted = outputs.logits[..., positive] >= outputs.logits[..., 1 - positive]
            correct = (predicted == (labels > 0.5))[mask].sum()
            # summed on the device; read (one sync) only when logging
            counts = torch.stack(
                [correct, mask.sum(), torch.ones_like(correct), torch.full_like(correct, len(skipped))]
            )
            self._counts[mode] = counts if self._counts[mode] is None else self._counts[mode] + counts

        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        counts = self._counts[mode]
        if counts is not None:
            correct, labelled, batches, skipped = self.accelerator.reduce(counts, reduction="sum").tolist()
            metrics = {"step_accuracy": correct / max(labelled, 1)}
            if mode == "train":
                metrics["num_steps"] = labelled / max(batches / self.accelerator.num_processes, 1)
            self._skipped_total[mode] += int(skipped)
            if self._skipped_total[mode]:
                metrics["rollouts_skipped"] = self._skipped_total[mode]
            if mode == "eval":
                # `compute_step_metrics` already reports the eval step accuracy over the whole split
                metrics = {f"eval_{key}": value for key, value in metrics.items() if f"eval_{key}" not in logs}
            logs.update(metrics)
            self._counts[mode] = None
        super().log(logs, start_time)

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
        Write the model card `README.md` (and the facts it is made of) in `args.output_dir`.

        Args:
            model_name (`str`, *optional*):
                Name of the model; defaults to the Hub model id or the output directory's name.
            dataset_name (`str`, *optional*):
                The training data (Hub id or path); defaults to the trainer's `dataset_name`.
            tags (`str` or `list[str]`, *optional*):
                Extra tags.
            selection (`dict`, *optional*):
                The selection report; defaults to the trainer's `selection_report`.
            eval_results (`dict[str, float]`, *optional*):
                Evaluation scores; defaults to the last evaluation logged.
            visualprocessbench (`dict`, *optional*):
                VisualProcessBench metrics as written by `bis-prm eval` (`metrics.json`): the card's per-source
                macro-F1 table. Without them the card says how to evaluate.
        """
        if not self.is_world_process_zero():
            return
        args = self.args
        if eval_results is None:
            logged = [entry for entry in self.state.log_history if "eval_loss" in entry]
            eval_results = logged[-1] if logged else {}
        data_problems = {
            name: ", ".join(f"{reason}: {n}" for reason, n in check.counts().items()) + " (dropped before training)"
            for name, check in self.dataset_checks.items()
            if check.num_dropped()
        }
        for mode, total in self._skipped_total.items():
            if total:
                data_problems[f"{mode} batches"] = f"{total} rollouts skipped while collating"
        training = training_settings(args)
        model_id = args.hub_model_id or model_name or Path(args.output_dir).name
        write_model_card(
            args.output_dir,
            {
                "model_id": model_id,
                "base_model": getattr(self.model.config, "_name_or_path", None),
                "dataset_name": dataset_name or self.dataset_name,
                "selection": selection or self.selection_report,
                "training": training,
                "eval_results": {key: value for key, value in eval_results.items() if isinstance(value, (int, float))},
                "visualprocessbench": visualprocessbench,
                "data_problems": data_problems,
                "step_token": args.step_token,
                "step_token_id": getattr(self.model.config, "step_token_id", None),
                "positive_index": self._positive_index,
                "tags": [tags] if isinstance(tags, str) else list(tags or []),
            },
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if not _internal_call and (output_dir is None or Path(output_dir) == Path(self.args.output_dir)):
            self.create_model_card()

    # The model card is kept up to date with every checkpoint, as TRL's trainers do
    def _save_checkpoint(self, model, trial):
        self.create_model_card()
        super()._save_checkpoint(model, trial)


def _prm_loss(
    outputs, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None, positive_index: int = 1
) -> torch.Tensor:
    return prm_loss(outputs.logits, labels, num_items_in_batch, positive_index)


def _lengths_batch(
    batch: dict[str, list], processor, step_token: str, max_images: int | None, prompt_format: str
) -> dict[str, list]:
    # Module-level so that `datasets` can map it in several processes
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    return {"length": rollout_token_counts(processor, rows, step_token, max_images, prompt_format)}


def _with_lengths(dataset: Dataset, processor, args: PRMConfig) -> Dataset:
    """The dataset with a length column: total tokens of each rollout (text + image tokens, image sizes from the
    file headers), so that the length-aware samplers group and balance rollouts by the tokens they really cost."""
    lengths = dataset.select_columns(["image", "question", "steps"]).map(
        _lengths_batch,
        batched=True,
        fn_kwargs={
            "processor": processor,
            "step_token": args.step_token,
            "max_images": args.max_images,
            "prompt_format": args.prompt_format,
        },
        remove_columns=["image", "question", "steps"],
        num_proc=args.dataset_num_proc,
        desc="Measuring rollouts",
    )
    return dataset.add_column(args.length_column_name, lengths["length"])


__all__ = [
    "PRMConfig",
    "PRMDatasetError",
    "PRMTrainer",
    "SkippingCollator",
    "compute_step_metrics",
    "positive_probabilities",
]
