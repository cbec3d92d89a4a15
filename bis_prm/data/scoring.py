"""Balanced-Information Score (BIS) of rollouts, as a batched, vectorised `datasets.map` transform.

For a rollout with step MC scores `s_1..s_n`: hard labels `y_j = 1 if s_j > tau else 0`, `p_pos` the share of
positive steps, `R` (reliability) the mean MC score of the positive steps (1.0 when there are none) and
`BIS = (p_pos * (1 - p_pos) + alpha) * R` (https://huggingface.co/papers/2602.04145).
"""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_utils import list_array, list_parts, per_row_sum

SCORE_COLUMNS = ("labels", "p_pos", "reliability", "bis", "is_mixed")


def bis_from_stats(p_pos: np.ndarray, reliability: np.ndarray, alpha: float) -> np.ndarray:
    """
    BIS from the label mixture and the reliability: `(p_pos * (1 - p_pos) + alpha) * reliability`.

    Example:

    >>> bis_from_stats(np.array([0.5]), np.array([0.8]), alpha=0.2)
    array([0.36])
    """
    return (p_pos * (1.0 - p_pos) + alpha) * reliability


def score_batch(batch: pa.Table, tau: float = 0.0, alpha: float = 0.2) -> pa.Table:
    """
    Add the BIS columns to one batch of rollouts (a `pyarrow.Table` with a `mc_scores` list column).

    A rollout is scored only when its `invalid_reason` (if the column exists) is empty and it has at least one step
    with every score finite and in [0, 1]; other rollouts get NaN scores, empty `labels` and `is_mixed=False`.

    Args:
        batch (`pyarrow.Table`):
            The batch; `mc_scores` is a list of float scores per rollout (the soft labels).
        tau (`float`, *optional*, defaults to `0.0`):
            A step is labelled positive when its score is strictly greater than `tau`.
        alpha (`float`, *optional*, defaults to `0.2`):
            Smoothing term of the BIS.

    Returns:
        `pyarrow.Table`: the batch with `labels` (list of 0.0/1.0), `p_pos`, `reliability`, `bis` and `is_mixed`
        set.

    Example:

    >>> batch = pa.table({"mc_scores": [[0.5, 0.0], [1.0]]})
    >>> score_batch(batch, alpha=0.2).column("bis").to_pylist()
    [0.225, 0.2]
    """
    lengths, flat_scores = list_parts(batch.column("mc_scores"))
    scores = flat_scores.to_numpy(zero_copy_only=False).astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad_step = ~np.isfinite(scores) | (scores < 0.0) | (scores > 1.0)
    valid = (lengths > 0) & (per_row_sum(lengths, bad_step) == 0)
    if "invalid_reason" in batch.column_names:
        valid &= pc.equal(batch.column("invalid_reason"), "").to_numpy(zero_copy_only=False)
    positive = scores > tau
    n_pos = per_row_sum(lengths, positive)
    # a sequential per-row sum, like Python's `sum`, so ties are broken exactly as in the reference code
    sum_pos = per_row_sum(lengths, np.where(positive, scores, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_pos = np.where(valid, n_pos / lengths, np.nan)
        reliability = np.where(valid, np.where(n_pos > 0, sum_pos / n_pos, 1.0), np.nan)
    label_values = pa.array(positive[np.repeat(valid, lengths)].astype(np.float64))
    labels = list_array(np.where(valid, lengths, 0), label_values)
    columns = {
        "labels": labels,
        "p_pos": pa.array(p_pos),
        "reliability": pa.array(reliability),
        "bis": pa.array(bis_from_stats(p_pos, reliability, alpha)),
        "is_mixed": pa.array(valid & (n_pos > 0) & (n_pos < lengths)),
    }
    for name, column in columns.items():
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, column)
        else:
            batch = batch.append_column(name, column)
    return batch


def score_rollouts(ds: datasets.Dataset, tau: float = 0.0, alpha: float = 0.2, **map_kwargs) -> datasets.Dataset:
    """
    Score every rollout of `ds` with [`score_batch`] through `datasets.Dataset.map` (batched, `num_proc`-safe).

    Args:
        ds (`datasets.Dataset`):
            Rollouts with a `mc_scores` column (e.g. from [`~visualprm400k.load_visualprm400k`]).
        tau (`float`, *optional*, defaults to `0.0`):
            Hard-label threshold: a step is positive when its score is `> tau`.
        alpha (`float`, *optional*, defaults to `0.2`):
            BIS smoothing term.
        **map_kwargs:
            Passed to `datasets.Dataset.map` (`num_proc`, `batch_size`, `desc`, `load_from_cache_file`, ...).

    Returns:
        `datasets.Dataset`: `ds` with the columns `labels`, `p_pos`, `reliability`, `bis` and `is_mixed`;
        `mc_scores` stays as the soft labels.

    Example:

    >>> ds = datasets.Dataset.from_dict({"mc_scores": [[0.5, 0.0], [1.0]]})
    >>> score_rollouts(ds, alpha=0.2)["bis"]
    Column([0.225, 0.2])
    """
    map_kwargs = {"batched": True, "batch_size": 10_000, "desc": "Scoring rollouts", **map_kwargs}
    inputs = [name for name in ("mc_scores", "invalid_reason") if name in ds.column_names]
    # map over the score inputs only, then attach the new columns: the other (large text) columns are not copied
    scores = (
        ds.select_columns(inputs)
        .with_format("arrow")
        .map(score_batch, fn_kwargs={"tau": tau, "alpha": alpha}, **map_kwargs)
    )
    base = ds.remove_columns([name for name in SCORE_COLUMNS if name in ds.column_names])
    scored = datasets.concatenate_datasets([base, scores.remove_columns(inputs).with_format(None)], axis=1)
    return scored.with_format(ds.format["type"], **ds.format["format_kwargs"])
