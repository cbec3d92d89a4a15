"""GRPO with a process reward model as the reward: TRL's `GRPOTrainer` and `bis_prm.PRMReward`.

    # a 7B policy on 8 GPUs with DeepSpeed ZeRO-3, a copy of the 7B PRM on every GPU
    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml --num_processes 8 \
        recipes/grpo/grpo.py --config recipes/grpo/config_7b.yaml

    # on a CPU in about a minute (builds nothing: see recipes/grpo/README.md for the two inputs)
    python recipes/grpo/grpo.py --config recipes/grpo/config_tiny.yaml

Every key of the YAML file can be overridden on the command line (`--prm_aggregation mean`). The prompts are the
dataset's `prompt_column`, written as a user turn (after `system_prompt`); a dataset's `image` / `images` column
goes to the policy (a VLM) and to the PRM. Each completion is cut into steps at `prm_separator`, every step is scored
by the PRM and the reward is the steps' `prm_aggregation` (see docs/rewards.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from bis_prm.rewards import PRMReward
from bis_prm.training.script import set_model_init_kwargs, setup_logging

logger = logging.getLogger(__name__)

_DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class GRPOScriptArguments(ScriptArguments):
    """
    Data and reward arguments of the GRPO recipe (with TRL's `ScriptArguments`: `dataset_name`, `dataset_config`,
    `dataset_train_split`, ...).

    Parameters that control the prompts:
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            The dataset's column holding the question (a string, or already a list of messages).
        system_prompt (`str`, *optional*):
            A system turn before every question, e.g. to ask for steps separated by blank lines.

    Parameters that control the PRM reward (see [`~bis_prm.PRMReward`]):
        prm_model (`str`, *optional*):
            A PRM trained with bis_prm (local or on the Hub). Exactly one of `prm_model` and `prm_url`.
        prm_url (`str`, *optional*):
            The address of a `bis-prm serve` server scoring the steps instead.
        prm_api_key (`str`, *optional*):
            The server's API key.
        prm_aggregation (`str`, *optional*, defaults to `"min"`):
            `"min"`, `"mean"`, `"last"` or `"prod"` of the step scores.
        prm_separator (`str`, *optional*, defaults to `"\\n\\n"`):
            What ends a step.
        prm_max_steps (`int`, *optional*, defaults to `12`):
            Most steps per completion (more are merged in runs).
        prm_device (`str`, *optional*):
            Where the PRM runs (e.g. `"cuda:1"`); by default on each process's own device.
        prm_dtype (`str`, *optional*, defaults to `"auto"`):
            The PRM's weights dtype.
        prm_max_batch_size (`int`, *optional*, defaults to `8`):
            Most completions per PRM forward pass.
        prm_max_batch_tokens (`int`, *optional*, defaults to `16384`):
            Most tokens per PRM forward pass, padding included.
        prm_max_length (`int`, *optional*):
            Completions whose PRM input is longer get no PRM reward.
    """

    prompt_column: str = field(default="prompt", metadata={"help": "The dataset's column holding the question."})
    system_prompt: str | None = field(default=None, metadata={"help": "A system turn before every question."})
    prm_model: str | None = field(default=None, metadata={"help": "A PRM trained with bis_prm (path or Hub id)."})
    prm_url: str | None = field(default=None, metadata={"help": "A `bis-prm serve` server scoring the steps."})
    prm_api_key: str | None = field(default=None, metadata={"help": "The PRM server's API key."})
    prm_aggregation: str = field(default="min", metadata={"help": "min, mean, last or prod of the step scores."})
    prm_separator: str = field(default="\n\n", metadata={"help": "What ends a step."})
    prm_max_steps: int | None = field(default=12, metadata={"help": "Most steps per completion."})
    prm_device: str | None = field(default=None, metadata={"help": "Where the PRM runs (default: each process's)."})
    prm_dtype: str = field(default="auto", metadata={"help": "The PRM's weights dtype."})
    prm_max_batch_size: int = field(default=8, metadata={"help": "Most completions per PRM forward pass."})
    prm_max_batch_tokens: int | None = field(default=16384, metadata={"help": "Most tokens per PRM forward pass."})
    prm_max_length: int | None = field(default=None, metadata={"help": "Longer PRM inputs get no PRM reward."})


def load_prompts(script_args: GRPOScriptArguments) -> datasets.Dataset:
    """
    The training prompts: the dataset's `prompt_column` as conversational prompts (a `system_prompt` turn, then the
    question as the user turn) in the column `prompt`; the other columns stay (TRL passes them to the rewards).

    Example:

    ```python
    >>> args = GRPOScriptArguments(dataset_name="data/text-sample/corpus", prompt_column="question")
    >>> load_prompts(args)  # doctest: +SKIP
    Dataset({features: ['question', 'answer', 'steps', 'mc_scores', 'prompt'], num_rows: 4000})

    ```
    """
    path = Path(script_args.dataset_name)
    if path.is_file() and path.suffix in _DATA_FILE_BUILDERS:
        dataset = load_dataset(_DATA_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
    else:  # a Hub dataset or a local folder of data files
        dataset = load_dataset(
            script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_train_split
        )
    if script_args.prompt_column not in dataset.column_names:
        raise ValueError(
            f"Dataset {script_args.dataset_name!r} has no column {script_args.prompt_column!r} (`prompt_column`); "
            f"it has {dataset.column_names}."
        )
    system = [{"role": "system", "content": script_args.system_prompt}] if script_args.system_prompt else []

    def to_conversation(question):
        turns = question if isinstance(question, list) else [{"role": "user", "content": question}]
        return {"prompt": system + turns}

    columns = ["prompt"] if script_args.prompt_column == "prompt" else []
    return dataset.map(to_conversation, input_columns=script_args.prompt_column, remove_columns=columns)


def prm_reward(script_args: GRPOScriptArguments) -> PRMReward:
    """The recipe's [`~bis_prm.PRMReward`]."""
    return PRMReward(
        script_args.prm_model,
        url=script_args.prm_url,
        api_key=script_args.prm_api_key,
        aggregation=script_args.prm_aggregation,
        separator=script_args.prm_separator,
        max_steps=script_args.prm_max_steps,
        device=script_args.prm_device,
        dtype=script_args.prm_dtype,
        max_batch_size=script_args.prm_max_batch_size,
        max_batch_tokens=script_args.prm_max_batch_tokens,
        max_length=script_args.prm_max_length,
    )


def main(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> dict[str, float]:
    """Train the policy `model_args.model_name_or_path` with GRPO on the PRM's reward, save it, return the metrics."""
    setup_logging(training_args, logger)

    # Model
    set_model_init_kwargs(training_args, model_args)

    # Data and reward
    dataset = load_prompts(script_args)
    logger.info("Training on %d prompts", len(dataset))
    reward = prm_reward(script_args)

    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(train_result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return metrics


if __name__ == "__main__":
    parser = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
