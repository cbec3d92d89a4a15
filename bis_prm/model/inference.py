"""Scoring rollouts with a PRM and aggregating step scores for Best-of-N."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bis_prm.model.processing_prm import PRMCollator

__all__ = ["AGGREGATIONS", "aggregate_scores", "aggregate_many", "score_steps"]

AGGREGATIONS = ("mean", "min", "last", "prod")


@torch.no_grad()
def score_steps(
    model,
    processor,
    examples: Sequence[dict[str, Any]],
    batch_size: int = 8,
    padding_side: str | None = None,
    progress: bool = False,
    max_images: int | None = None,
) -> list[list[float]]:
    """
    Score every step of every rollout: P(positive) at each step token, batched with padding.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            A PRM from [`~bis_prm.load_prm`] (its config names the step token).
        processor ([`~transformers.ProcessorMixin`]):
            The PRM's processor.
        examples (`Sequence[dict]`):
            Rollouts with `image` (path, PIL image, list of those, or `None`), `question` and `steps`; labels are
            ignored.
        batch_size (`int`, *optional*, defaults to `8`):
            Rollouts per forward pass.
        padding_side (`str`, *optional*):
            `"left"` or `"right"`; defaults to the tokenizer's. Both give the same scores.
        progress (`bool`, *optional*, defaults to `False`):
            Show a tqdm progress bar.
        max_images (`int`, *optional*):
            Tile rollouts with more images into one grid (see [`~bis_prm.PRMCollator`]).

    Returns:
        `list[list[float]]`: one score per step, per rollout, in input order.

    Example:

    ```python
    >>> model, processor = load_prm("path/to/prm")
    >>> score_steps(model, processor, [{"image": "fig.png", "question": "2+2?", "steps": ["2+2=4.", "So 4."]}])
    [[0.93, 0.88]]
    ```
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    collator = PRMCollator(
        processor,
        step_token=model.config.step_token,
        padding_side=padding_side or tokenizer.padding_side,
        max_images=max_images,
    )
    unlabelled = [{key: value for key, value in ex.items() if key != collator.label_field} for ex in examples]
    starts = range(0, len(unlabelled), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="Scoring steps", unit="batch")
    was_training = model.training
    model.eval()
    scores: list[list[float]] = []
    try:
        for start in starts:
            try:
                batch = collator(unlabelled[start : start + batch_size])
            except ValueError as error:
                raise ValueError(f"In the batch of rollouts {start}..{start + batch_size - 1}: {error}") from error
            num_steps = batch.pop("num_steps")
            inputs = {
                key: value.to(model.device, dtype=model.dtype if value.is_floating_point() else None)
                for key, value in batch.items()
            }
            probs = model(**inputs).logits.float().softmax(dim=-1)[..., 0]
            is_step = inputs["input_ids"] == collator.step_token_id
            for row in range(len(num_steps)):
                scores.append(probs[row][is_step[row]].tolist())
    finally:
        model.train(was_training)
    return scores


def aggregate_scores(step_scores: Sequence[float], method: str = "mean") -> float:
    """
    Reduce the step scores of one rollout to a single score for Best-of-N.

    Args:
        step_scores (`Sequence[float]`):
            P(positive) per step.
        method (`str`, *optional*, defaults to `"mean"`):
            `"mean"` (VisualPRM), `"min"` (weakest step), `"last"` (final step) or `"prod"` (all steps correct).

    Example:

    ```python
    >>> aggregate_scores([0.9, 0.5, 0.8], "min")
    0.5
    ```
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {method!r}; choose one of {AGGREGATIONS}.")
    if len(step_scores) == 0:
        raise ValueError("Cannot aggregate a rollout without step scores.")
    return float(aggregate_many([step_scores], method)[0])


def aggregate_many(step_scores: Sequence[Sequence[float]], method: str = "mean") -> torch.Tensor:
    """
    Vectorised [`aggregate_scores`] over many rollouts of different lengths.

    Example:

    ```python
    >>> aggregate_many([[0.5, 1.0], [0.2]], "prod")
    tensor([0.5000, 0.2000], dtype=torch.float64)
    ```
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {method!r}; choose one of {AGGREGATIONS}.")
    lengths = torch.tensor([len(scores) for scores in step_scores])
    if (lengths == 0).any():
        raise ValueError(f"Rollout {int((lengths == 0).nonzero()[0])} has no step scores to aggregate.")
    padded = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(scores, dtype=torch.float64) for scores in step_scores], batch_first=True, padding_value=0.0
    )
    valid = torch.arange(padded.shape[1]) < lengths[:, None]
    if method == "mean":
        return padded.sum(dim=1) / lengths
    if method == "min":
        return padded.masked_fill(~valid, float("inf")).min(dim=1).values
    if method == "prod":
        return padded.masked_fill(~valid, 1.0).prod(dim=1)
    return padded[torch.arange(len(lengths)), lengths - 1]
