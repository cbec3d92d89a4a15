"""The model card of a trained PRM: `README.md` rendered from bis_prm's template, and the facts it is made of.

The facts (base model, data and selection report, training settings, rows left out, evaluation scores) are kept in
`bis_prm_card.json` next to the weights, so that a later step can add to the card without the trainer: the
quickstart adds its VisualProcessBench table with [`update_model_card`] after evaluating.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from bis_prm.serving.vllm import vllm_serve_command_line

__all__ = ["CARD_FACTS", "TEMPLATE_PATH", "training_settings", "update_model_card", "write_model_card"]

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
CARD_FACTS = "bis_prm_card.json"

CITATION = """\
@article{bis_prm_2026,
  title   = {{Training Data Efficiency in Multimodal Process Reward Models}},
  journal = {arXiv preprint arXiv:2602.04145},
  year    = {2026}
}"""
TAGS = ("trl", "prm", "bis-prm")


def _is_score(metric_name: str) -> bool:
    # Keep quality metrics in the card, not timings
    return metric_name.endswith(("loss", "accuracy")) or "f1" in metric_name


def training_settings(args) -> dict[str, Any]:
    """
    The settings of a training run that the card's "Training procedure" table shows, from its [`PRMConfig`] (the
    repository's `model_card.md`, the card of a paper-faithful run, lists the same ones).

    Example:

    ```python
    >>> training_settings(PRMConfig("out", prompt_format="bis_reference"))["prompt_format"]  # doctest: +SKIP
    'bis_reference'

    ```
    """
    return {
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
        "prompt_format": args.prompt_format,
        "max_length": args.max_length,
        "max_pixels": args.max_pixels,
        "max_tiles": args.max_tiles,
        "freeze_vision_tower": args.freeze_vision_tower,
        "seed": args.seed,
    }


def write_model_card(output_dir: str | os.PathLike, facts: dict[str, Any]) -> Path:
    """
    Render `README.md` in `output_dir` from the template and save the `facts` it was made of.

    Args:
        output_dir (`str` or `os.PathLike`):
            The trained PRM's folder.
        facts (`dict`):
            `model_id`, `base_model` (id or path), `dataset_name`, `selection` (the selection report, with its
            `params`), `training` (settings shown as a table), `step_token`, and optionally `step_token_id` and
            `positive_index` (the card then gives the `vllm serve` command), `eval_results`, `visualprocessbench`
            (the metrics of `bis-prm eval`), `data_problems` (rows left out, per dataset) and `tags`.

    Returns:
        `Path`: the card.

    Example:

    ```python
    >>> write_model_card(  # doctest: +SKIP
    ...     "my-prm", {"model_id": "my-prm", "base_model": "Qwen/Qwen2.5-VL-7B-Instruct", ...}
    ... )
    PosixPath('my-prm/README.md')

    ```
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base_model = facts.get("base_model") or "unknown"
    # A local path is no Hub reference: name it in the text, keep it out of the metadata
    on_hub = not os.path.exists(base_model) and base_model != "unknown"
    dataset_name = facts.get("dataset_name") or "unknown"
    model_id = facts.get("model_id") or output_dir.name
    step_token_id = facts.get("step_token_id")
    card_data = ModelCardData(
        base_model=base_model if on_hub else None,
        datasets=[dataset_name] if dataset_name != "unknown" and not os.path.exists(dataset_name) else None,
        library_name="transformers",
        pipeline_tag="token-classification",
        model_name=model_id,
        tags=sorted({*TAGS, *facts.get("tags", [])}),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_id=model_id,
        base_model=base_model,
        base_model_on_hub=on_hub,
        dataset_name=dataset_name,
        selection=facts.get("selection") or {},
        training=facts.get("training") or {},
        eval_results={key: value for key, value in (facts.get("eval_results") or {}).items() if _is_score(key)},
        step_token=facts.get("step_token", "<prm>"),
        step_token_id=step_token_id,
        positive_index=facts.get("positive_index", 1),
        vllm_command=None if step_token_id is None else vllm_serve_command_line(model_id, step_token_id),
        visualprocessbench=facts.get("visualprocessbench") or {},
        data_problems=facts.get("data_problems") or {},
        citation=CITATION,
    )
    (output_dir / CARD_FACTS).write_text(json.dumps(facts, indent=2, default=str) + "\n", encoding="utf-8")
    path = output_dir / "README.md"
    card.save(path)
    return path


def update_model_card(output_dir: str | os.PathLike, **updates: Any) -> Path:
    """
    Add facts to the card of a PRM trained by bis_prm (e.g. `visualprocessbench=metrics` after `bis-prm eval`) and
    render it again.

    Example:

    ```python
    >>> update_model_card("my-prm", visualprocessbench=json.load(open("eval/metrics.json")))  # doctest: +SKIP
    PosixPath('my-prm/README.md')

    ```
    """
    facts_file = Path(output_dir) / CARD_FACTS
    if not facts_file.is_file():
        raise FileNotFoundError(f"{facts_file} not found: {output_dir} was not saved by PRMTrainer")
    facts = json.loads(facts_file.read_text(encoding="utf-8"))
    return write_model_card(output_dir, {**facts, **updates})
