"""The training script behind `recipes/train.py`: load or select the data, train a PRM, save, evaluate, push.

`main(script_args, training_args, model_args)` is the whole run, so the quickstart and the tests call the same code
path as `accelerate launch recipes/train.py --config recipe.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import transformers
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from trl import ModelConfig, TrlParser

from bis_prm.data.formats import read_selection_report
from bis_prm.data.internvl import is_internvl_jsonl, read_internvl_jsonl
from bis_prm.model.modeling_prm import prm_lora_config
from bis_prm.recipes import recipe_path
from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.prm_trainer import PRMTrainer

logger = logging.getLogger(__name__)

_SELECTION_KEYS = ("method", "ratio", "alpha", "tau", "seed", "layout", "columns")
_DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class ScriptArguments:
    """
    Data arguments of the training script.

    Parameters:
        dataset_name (`str`):
            Where the rollouts come from: a local corpus root or Hub repo in the VisualPRM400K-Raw layout (needs
            `selection`), a pushed subset repo (`load_dataset("user/subset")`), a local subset file
            (`.jsonl`/`.json`/`.parquet`) or a directory written by `Dataset.save_to_disk`. A `.jsonl` file of the
            reference code's InternVL conversation records (`bis-prm select --format internvl`) is read with
            [`~bis_prm.data.internvl.read_internvl_jsonl`]; its image paths are relative to the corpus root, which
            the recipe gives as `image_root` (a [`PRMConfig`] field; without it, the file's folder).
        dataset_config (`str`, *optional*):
            Configuration name of a Hub dataset.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split used for training.
        dataset_test_split (`str`, *optional*):
            Split used for evaluation, when the dataset has one.
        eval_ratio (`float`, *optional*, defaults to `0.0`):
            Share of the training rollouts held out for evaluation when there is no test split.
        selection (`dict`, *optional*):
            Run data selection on the fly with `bis_prm.data.selection.run_selection`: keys `method` (`"bis"`, ...),
            `ratio`, `alpha`, `tau`, `seed`, and for corpora that are not in the VisualPRM400K-Raw layout `layout:
            stepwise` and `columns` (`{"question": ..., "steps": ..., "scores": ..., "image": ..., "source": ...}`,
            see `bis_prm.data.stepwise.StepwiseColumns`). Leave unset to train on `dataset_name` as is (the HF PRM
            format, or TRL's stepwise-supervision format).
    """

    dataset_name: str = field(metadata={"help": "Corpus root / Hub repo (with `selection`), subset repo or file."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split used for training."})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Split used for evaluation."})
    eval_ratio: float = field(
        default=0.0, metadata={"help": "Share of training rollouts held out for evaluation without a test split."}
    )
    selection: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": 'Select on the fly, e.g. \'{"method": "bis", "ratio": 0.1, "alpha": 0.2}\'.'},
    )

    def __post_init__(self):
        if isinstance(self.selection, str):  # from the command line
            self.selection = json.loads(self.selection)
        if self.selection is not None:
            unknown = set(self.selection) - set(_SELECTION_KEYS)
            if unknown:
                raise ValueError(f"`selection` has unknown keys {sorted(unknown)}; allowed: {list(_SELECTION_KEYS)}.")
        if not 0.0 <= self.eval_ratio < 1.0:
            raise ValueError(f"`eval_ratio` must be in [0, 1), got {self.eval_ratio}.")


def _content_cache_dir(path: Path) -> str:
    """A `datasets` cache folder named after the file's content: a subset edited in place (even with its modification
    time kept) is read anew, where `datasets` alone would serve the cache of its old content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "bis_prm" / "subsets" / digest.hexdigest()[:16])


def _absolute_roots(dataset: DatasetDict, base: Path) -> DatasetDict:
    """Resolve a relative `image_root` column against the subset's folder, where `write_subset` recorded it."""

    def resolve(batch: dict[str, list]) -> dict[str, list]:
        return {"image_root": [None if root is None else str(base / root) for root in batch["image_root"]]}

    return DatasetDict(
        {
            split: ds.map(resolve, batched=True, input_columns=None, desc="Resolving image roots")
            if "image_root" in ds.column_names
            else ds
            for split, ds in dataset.items()
        }
    )


def load_prm_datasets(
    script_args: ScriptArguments, seed: int = 0, num_proc: int | None = None
) -> tuple[Dataset, Dataset | None, dict[str, Any] | None]:
    """
    Load (or select) the training rollouts and the evaluation split described by `script_args`.

    A local subset written by `bis-prm select` is read with its `image_root` resolved against the subset's folder
    (so subset and corpus can move together) and with its selection report (`<name>.selection.json`, for the model
    card); its `datasets` cache is keyed on the file's content. A `.jsonl` file of InternVL conversation records
    is read with [`~bis_prm.data.internvl.read_internvl_jsonl`] (its `image_root` column is the file's folder;
    `PRMConfig.image_root`, the corpus root, takes precedence at training).

    Args:
        script_args ([`ScriptArguments`]):
            The data arguments.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the `eval_ratio` hold-out split.
        num_proc (`int`, *optional*):
            Processes used by the selection.

    Returns:
        `tuple`: the training `Dataset`, the evaluation `Dataset` (or `None`) and the selection report (or `None`).

    Example:

    ```python
    >>> train, eval_, report = load_prm_datasets(ScriptArguments("subset.jsonl", eval_ratio=0.1))  # doctest: +SKIP

    ```
    """
    name = script_args.dataset_name
    path = Path(name)
    report = None
    if script_args.selection is not None:
        from bis_prm.data.selection import run_selection

        # training reads the images: a Hub corpus needs its images.zip too
        selection = run_selection(name, **script_args.selection, num_proc=num_proc, download_images=True)
        dataset, report = DatasetDict({script_args.dataset_train_split: selection.to_prm()}), selection.report
    elif path.suffix == ".jsonl" and path.is_file() and is_internvl_jsonl(path):
        # the reference code's conversation records: `image` and the turns' `value` mix strings and lists, which
        # Arrow's JSON reader (`load_dataset("json")`) rejects
        dataset, report = DatasetDict({"train": read_internvl_jsonl(path)}), read_selection_report(path)
    elif path.suffix in _DATA_FILE_BUILDERS and path.is_file():
        dataset = load_dataset(
            _DATA_FILE_BUILDERS[path.suffix], data_files={"train": name}, cache_dir=_content_cache_dir(path)
        )
        dataset, report = _absolute_roots(dataset, path.resolve().parent), read_selection_report(path)
    elif any((path / marker).is_file() for marker in ("state.json", "dataset_dict.json")):
        dataset = load_from_disk(name)
        if isinstance(dataset, Dataset):
            dataset = DatasetDict({"train": dataset})
        dataset, report = _absolute_roots(dataset, path.resolve()), read_selection_report(path)
    else:
        dataset = load_dataset(name, script_args.dataset_config)

    if script_args.dataset_train_split not in dataset:
        raise ValueError(
            f"Dataset {name!r} has no split {script_args.dataset_train_split!r}; it has {list(dataset)}. "
            "Set `dataset_train_split`."
        )
    train_dataset = dataset[script_args.dataset_train_split]
    eval_dataset = None
    if script_args.dataset_test_split is not None:
        if script_args.dataset_test_split not in dataset:
            raise ValueError(
                f"Dataset {name!r} has no split {script_args.dataset_test_split!r}; it has {list(dataset)}."
            )
        eval_dataset = dataset[script_args.dataset_test_split]
    elif script_args.eval_ratio > 0:
        split = train_dataset.train_test_split(test_size=script_args.eval_ratio, seed=seed)
        train_dataset, eval_dataset = split["train"], split["test"]
    return train_dataset, eval_dataset, report


def main(script_args: ScriptArguments, training_args: PRMConfig, model_args: ModelConfig) -> dict[str, float]:
    """
    Train a PRM as described by the three argument groups and return the train (and eval) metrics.

    Loads or selects the data, creates the PRM from `model_args.model_name_or_path` (a base VLM gets the head
    `training_args.head`), trains (resuming from `training_args.resume_from_checkpoint` when set), saves the model
    (16-bit weights gathered under ZeRO-3) and processor, evaluates when there is an evaluation split, writes the model
    card and pushes when `training_args.push_to_hub`.

    Example:

    ```python
    >>> from trl import TrlParser
    >>> parser = TrlParser((ScriptArguments, PRMConfig, ModelConfig))
    >>> main(*parser.parse_args_and_config(["--config", "recipes/tiny/config_sample.yaml"]))  # doctest: +SKIP

    ```
    """
    setup_logging(training_args, logger)
    if model_args.model_name_or_path is None:
        raise ValueError("`model_name_or_path` is required: a base VLM or a saved PRM.")

    # the main process selects (or extracts a zipped corpus) first; the others then reuse its work
    with training_args.main_process_first(desc="loading the training data"):
        train_dataset, eval_dataset, report = load_prm_datasets(
            script_args, seed=training_args.seed, num_proc=training_args.dataset_num_proc
        )
    logger.info("Training on %d rollouts, evaluating on %s", len(train_dataset), eval_dataset and len(eval_dataset))

    set_model_init_kwargs(training_args, model_args)

    peft_config = get_prm_peft_config(model_args)

    trainer = PRMTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=peft_config,
        dataset_name=script_args.dataset_name,
        selection_report=report,
    )

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(train_result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    # Under ZeRO-3, `save_model` gathers the 16-bit weights when `stage3_gather_16bit_weights_on_model_save` is set
    # (`zero3_save_16bit_model: true` in recipes/accelerate_configs/zero3.yaml), so the directory loads with
    # `from_pretrained`
    trainer.save_model(training_args.output_dir)

    if eval_dataset is not None:
        eval_results = trainer.evaluate()
        trainer.log_metrics("eval", eval_results)
        trainer.save_metrics("eval", eval_results)
        metrics.update(eval_results)
        trainer.create_model_card()  # now with the evaluation scores
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return metrics


def parse_recipe(
    argv: list[str] | None = None, prog: str | None = None
) -> tuple[ScriptArguments, PRMConfig, ModelConfig]:
    """
    Parse `--config RECIPE.yaml` and command-line overrides into the three argument groups of [`main`], as
    `recipes/train.py` and `bis-prm train` do. A `--config` that is not a file may name a recipe shipped with bis_prm
    (`tiny/config_sample.yaml`, `qwen2_5_vl_7b/bis10.yaml`, ...).

    Raises:
        `FileNotFoundError`: when the recipe is neither a file nor a shipped recipe.

    Example:

    ```python
    >>> script_args, training_args, model_args = parse_recipe(  # doctest: +SKIP
    ...     ["--config", "recipe.yaml", "--max_steps", "10"]
    ... )

    ```
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        index = argv.index("--config") + 1
        recipe = argv[index] if index < len(argv) else ""
        if not os.path.isfile(recipe):
            argv[index] = str(recipe_path(recipe))
    parser = TrlParser((ScriptArguments, PRMConfig, ModelConfig), prog=prog)
    return parser.parse_args_and_config(argv)


def get_prm_peft_config(model_args: ModelConfig):
    """
    The LoRA config of a PRM from TRL's `ModelConfig` (`use_peft`, `lora_r`, ...), or `None` without `use_peft`.

    Always `task_type="TOKEN_CLS"` (whatever `lora_task_type` says) so the `score` head stays trainable; without
    `lora_target_modules` the adapters go on the language model's projections
    ([`~bis_prm.model.modeling_prm.prm_lora_config`]). With LoRA, the output directory holds the adapter.

    >>> get_prm_peft_config(ModelConfig(use_peft=True, lora_r=8)).task_type
    'TOKEN_CLS'
    """
    if not model_args.use_peft:
        return None
    kwargs = {"use_rslora": model_args.use_rslora, "use_dora": model_args.use_dora}
    if model_args.lora_target_modules is not None:
        kwargs["target_modules"] = model_args.lora_target_modules
    if model_args.lora_modules_to_save is not None:
        kwargs["modules_to_save"] = model_args.lora_modules_to_save
    return prm_lora_config(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout, **kwargs
    )


def setup_logging(training_args, script_logger: logging.Logger) -> None:
    """Log to stdout at the process's log level (TRL's scripts' set-up): the script's logger, `datasets` and
    `transformers` alike. Shared by the recipes' scripts (`recipes/train.py`, `recipes/grpo/grpo.py`)."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    script_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def set_model_init_kwargs(training_args, model_args: ModelConfig) -> None:
    """Pass `model_args`' revision, dtype and attention implementation to the trainer's `model_init_kwargs` (what
    the trainer hands to `from_pretrained`), without overriding keys the recipe set there itself."""
    model_init_kwargs = dict(training_args.model_init_kwargs or {})
    model_init_kwargs.setdefault("revision", model_args.model_revision)
    if model_args.dtype is not None:
        model_init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation is not None:
        model_init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    training_args.model_init_kwargs = model_init_kwargs


__all__ = [
    "ScriptArguments",
    "get_prm_peft_config",
    "load_prm_datasets",
    "main",
    "parse_recipe",
    "set_model_init_kwargs",
    "setup_logging",
]
