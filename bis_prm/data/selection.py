"""Per-source subset selection: BIS and the paper's baselines, plus the per-source counts report.

Every method keeps, per source, `k = max(1, int(m * ratio))` of the `m` valid rollouts (invalid ones are excluded
before ranking) and returns them in original order:

- `bis`: highest BIS first.
- `random`: `k` valid rollouts drawn without replacement with `numpy.random.default_rng(seed)` (one generator,
  sources in order of appearance).
- `mixed`: mixed rollouts (both positive and negative steps) first.
- `reliable`: highest reliability R first.
- `low_mc`: lowest mean MC score over all steps first (the "hardest" rollouts).
- `full`: every valid rollout (`ratio` is ignored).

Ranking ties keep the original (file) order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_utils import arrow_columns, list_parts, per_row_sum
from .formats import to_prm_format
from .scoring import bis_from_stats, score_rollouts
from .stepwise import StepwiseColumns, is_stepwise_corpus, read_stepwise
from .visualprm400k import INVALID_REASONS, annotations_to_dataset, find_annotation_files, resolve_visualprm400k

METHODS = ("bis", "random", "mixed", "reliable", "low_mc", "full")
LAYOUTS = ("auto", "visualprm400k", "stepwise")


def _groups(ds: datasets.Dataset, by: str | None) -> list[tuple[str, np.ndarray]]:
    """(group name, row indices) in order of first appearance."""
    if by is None:
        return [("all", np.arange(len(ds)))]
    encoded = pc.dictionary_encode(arrow_columns(ds, [by]).column(by)).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(names)))[:-1]
    members = np.split(order, bounds)
    # dictionary codes are assigned in order of first appearance
    return [(str(name), rows) for name, rows in zip(names, members, strict=True)]


def _mean_mc(mc_scores: pa.ChunkedArray) -> np.ndarray:
    lengths, flat = list_parts(mc_scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        return per_row_sum(lengths, flat.to_numpy(zero_copy_only=False)) / lengths


def ranking_key(table: pa.Table, method: str, alpha: float) -> np.ndarray | None:
    """The ranking key of each rollout of `table` (`p_pos`, `reliability`, `is_mixed`, and `mc_scores` for `low_mc`):
    higher is kept first; None for the methods that do not rank."""
    column = lambda name: table.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
    if method == "bis":
        return bis_from_stats(column("p_pos"), column("reliability"), alpha)
    if method == "reliable":
        return column("reliability")
    if method == "mixed":
        return column("is_mixed").astype(np.float64)
    if method == "low_mc":
        return -_mean_mc(table.column("mc_scores"))
    return None


def pick_rows(
    rows: np.ndarray, key: np.ndarray | None, method: str, ratio: float, rng: np.random.Generator
) -> np.ndarray | None:
    """
    The rows `method` keeps of the valid `rows` of one group (`key`: their ranking keys), not sorted; None when it
    keeps none. `rng` is drawn from for `random` only. The streaming selection calls it file by file, so that both
    keep the same rows.

    Example:

    >>> pick_rows(np.array([3, 5, 8]), np.array([0.1, 0.3, 0.3]), "bis", 0.5, np.random.default_rng(0))
    array([5])
    """
    m = len(rows)
    k = m if method == "full" else min(m, max(1, int(m * ratio)))
    if k == 0:
        return None
    if method == "random":
        return rows[rng.choice(m, size=k, replace=False)]
    if method == "full":
        return rows
    # stable sort of the negated key: descending, ties in original order
    return rows[np.argsort(-key, kind="stable")[:k]]


def selection_indices(
    ds: datasets.Dataset,
    method: str = "bis",
    ratio: float = 0.1,
    alpha: float = 0.2,
    seed: int = 0,
    by: str | None = "source",
) -> np.ndarray:
    """
    Row indices of the selected rollouts of a scored dataset, in increasing (original) order.

    Args:
        ds (`datasets.Dataset`):
            Rollouts scored with [`~scoring.score_rollouts`].
        method (`str`, *optional*, defaults to `"bis"`):
            One of `METHODS` (see the module docstring).
        ratio (`float`, *optional*, defaults to `0.1`):
            Fraction of the valid rollouts kept per group, in (0, 1].
        alpha (`float`, *optional*, defaults to `0.2`):
            BIS smoothing term (BIS is recomputed from `p_pos` and `reliability`, so any alpha works).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the `random` baseline.
        by (`str`, *optional*, defaults to `"source"`):
            Column whose values form the groups selected from independently; `None` selects over the whole dataset.

    Returns:
        `numpy.ndarray` of int64 indices.

    Example:

    >>> rollouts = {"source": ["a", "a", "b", "b"], "mc_scores": [[1.0, 0.0], [1.0], [0.0], [0.5, 0.0]]}
    >>> scored = score_rollouts(datasets.Dataset.from_dict(rollouts))
    >>> selection_indices(scored, method="bis", ratio=0.5, alpha=0.2)
    array([0, 3])
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    needed = ["p_pos", "reliability", "is_mixed"] + (["mc_scores"] if method == "low_mc" else [])
    table = arrow_columns(ds, needed)
    valid = np.isfinite(table.column("p_pos").to_numpy(zero_copy_only=False))
    key = ranking_key(table, method, alpha)
    rng = np.random.default_rng(seed)
    chosen = []
    for _, rows in _groups(ds, by):
        rows = rows[valid[rows]]
        picked = pick_rows(rows, None if key is None else key[rows], method, ratio, rng)
        if picked is not None:
            chosen.append(picked)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def select_subset(
    ds: datasets.Dataset,
    method: str = "bis",
    ratio: float = 0.1,
    alpha: float = 0.2,
    seed: int = 0,
    by: str | None = "source",
    tau: float = 0.0,
) -> datasets.Dataset:
    """
    Select a subset of rollouts per source with BIS or one of the baselines (see the module docstring).

    Args:
        ds (`datasets.Dataset`):
            Rollouts, scored or not (unscored ones are scored first with `tau` and `alpha`).
        method (`str`, *optional*, defaults to `"bis"`):
            `"bis"`, `"random"`, `"mixed"`, `"reliable"`, `"low_mc"` or `"full"`.
        ratio (`float`, *optional*, defaults to `0.1`):
            Fraction kept per source: `max(1, int(m * ratio))` of its `m` valid rollouts.
        alpha (`float`, *optional*, defaults to `0.2`):
            BIS smoothing term.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the `random` baseline.
        by (`str`, *optional*, defaults to `"source"`):
            Grouping column; `None` for one group.
        tau (`float`, *optional*, defaults to `0.0`):
            Hard-label threshold, used only when `ds` is not scored yet.

    Returns:
        `datasets.Dataset`: the selected rows, in original order.

    Example:

    >>> rollouts = {"source": ["a", "a", "b", "b"], "mc_scores": [[1.0, 0.0], [1.0], [0.0], [0.5, 0.0]]}
    >>> subset = select_subset(datasets.Dataset.from_dict(rollouts), method="bis", ratio=0.5, alpha=0.2)
    >>> subset["mc_scores"]
    Column([[1.0, 0.0], [0.5, 0.0]])
    """
    if "p_pos" not in ds.column_names:
        ds = score_rollouts(ds, tau=tau, alpha=alpha)
    return ds.select(selection_indices(ds, method=method, ratio=ratio, alpha=alpha, seed=seed, by=by))


def select_bis(ds: datasets.Dataset, ratio: float, alpha: float, by: str | None = "source") -> datasets.Dataset:
    """
    Keep, per source, the top `max(1, int(m * ratio))` valid rollouts by BIS (ties in original order).

    Example:

    >>> rollouts = {"source": ["a", "a", "b", "b"], "mc_scores": [[1.0, 0.0], [1.0], [0.0], [0.5, 0.0]]}
    >>> scored = score_rollouts(datasets.Dataset.from_dict(rollouts))
    >>> subset = select_bis(scored, ratio=0.5, alpha=0.2)
    >>> subset["bis"]
    Column([0.45, 0.225])
    """
    return select_subset(ds, method="bis", ratio=ratio, alpha=alpha, by=by)


# the per-rollout values the label-mixture statistics average
MIXTURE_COLUMNS = ("p_pos", "reliability", "bis", "is_mixed")


def _mixture_stats(table: pa.Table) -> dict[str, float | int]:
    """Label-mixture statistics over the valid rollouts of `table`."""
    valid = np.isfinite(table.column("p_pos").to_numpy(zero_copy_only=False))
    labels = pc.list_flatten(table.column("labels").combine_chunks()).to_numpy(zero_copy_only=False)
    values = {name: table.column(name).to_numpy(zero_copy_only=False)[valid] for name in MIXTURE_COLUMNS}
    return mixture_summary(values, int((labels > 0).sum()), int((labels == 0).sum()))


def mixture_summary(values: dict[str, np.ndarray], positive_steps: int, negative_steps: int) -> dict[str, Any]:
    """The `"stats"` entry of a report from the `MIXTURE_COLUMNS` of the valid rollouts (in corpus order: the means
    are numpy's, whose pairwise sums depend on the order) and their numbers of positive and negative steps."""

    def mean(name: str) -> float:
        return float(values[name].mean()) if len(values[name]) else 0.0

    return {
        "rollouts": len(values["p_pos"]),
        "share_mixed": mean("is_mixed"),
        "mean_p_pos": mean("p_pos"),
        "mean_reliability": mean("reliability"),
        "mean_bis": mean("bis"),
        "positive_steps": positive_steps,
        "negative_steps": negative_steps,
    }


def source_counts(reason_counts: np.ndarray, kept: int, blank_lines: int) -> dict[str, Any]:
    """The report entry of one source: `reason_counts` holds its rows per `INVALID_REASONS` code, valid rows last."""
    dropped = {reason: int(n) for reason, n in zip(INVALID_REASONS, reason_counts, strict=False)}
    valid = int(reason_counts[-1])
    dropped["not_selected"] = valid - kept
    return {
        "read": int(reason_counts.sum()),
        "valid": valid,
        "kept": kept,
        "dropped": dropped,
        "blank_lines": blank_lines,
    }


def assemble_report(
    report_sources: dict[str, dict[str, Any]],
    dropped_rows: dict[str, list[dict[str, Any]]],
    stats: dict[str, dict[str, Any]],
    params: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report of [`subset_report`] from its per-source entries ([`source_counts`]), the dropped rows of each
    reason (sources in order), the statistics of `"all"` and `"kept"` rollouts and the parameters."""
    counted = ("read", "valid", "kept", "blank_lines")
    total = {key: sum(counts[key] for counts in report_sources.values()) for key in counted}
    total["dropped"] = {
        reason: sum(counts["dropped"][reason] for counts in report_sources.values())
        for reason in (*INVALID_REASONS, "not_selected")
    }
    dropped_rows = {reason: dropped_rows[reason] for reason in INVALID_REASONS if reason in dropped_rows}
    return {
        "sources": report_sources,
        "total": total,
        "dropped_rows": dropped_rows,
        "stats": stats,
        "params": dict(params or {}),
    }


def subset_report(
    ds: datasets.Dataset,
    subset: datasets.Dataset,
    params: dict[str, Any] | None = None,
    by: str = "source",
    sources: Sequence[str] = (),
) -> dict[str, Any]:
    """
    Per-source counts of a selection: rollouts read, valid, kept and dropped by reason, the file and line of every
    dropped rollout, and label statistics.

    Args:
        ds (`datasets.Dataset`):
            All scored rollouts (with `invalid_reason` and, for `blank_lines` and `dropped_rows`, `file_lines` and
            `line`).
        subset (`datasets.Dataset`):
            The selected rows of `ds`.
        params (`dict`, *optional*):
            Selection parameters to record under `"params"`.
        by (`str`, *optional*, defaults to `"source"`):
            Grouping column.
        sources (`Sequence[str]`, *optional*):
            Every source read, in order, also those without a single row (an empty file shows 0 rows read).

    Returns:
        `dict` with `"sources"` (`{source: {"read", "valid", "kept", "dropped": {reason: n, "not_selected": n},
        "blank_lines"}}`), `"total"` (the same counts summed), `"dropped_rows"` (`{reason: [{"file", "line"}]}`,
        1-based lines of every invalid rollout), `"stats"` (label-mixture statistics of `"all"` valid and `"kept"`
        rollouts) and `"params"`. For every source, `kept + sum(dropped.values()) == read`.

    Example:

    ```python
    >>> rollouts = {"source": ["a", "a", "b"], "mc_scores": [[1.0, 0.0], [1.0], [0.5]], "invalid_reason": ["", "", ""]}
    >>> scored = score_rollouts(datasets.Dataset.from_dict(rollouts))
    >>> report = subset_report(scored, select_subset(scored, ratio=0.5))
    >>> report["total"]["kept"] + sum(report["total"]["dropped"].values()) == report["total"]["read"]
    True

    ```
    """
    has_lines = "file_lines" in ds.column_names and "line" in ds.column_names
    table = arrow_columns(ds, [by, "invalid_reason"] + (["file_lines", "line"] if has_lines else []))
    kept_per_source = pc.value_counts(arrow_columns(subset, [by]).column(by).combine_chunks()).to_pylist()
    kept_per_source = {item["values"]: item["counts"] for item in kept_per_source}
    # reasons as integer codes: counting them per source is then one bincount
    reason_codes = pc.index_in(table.column("invalid_reason"), pa.array(INVALID_REASONS))
    codes = pc.fill_null(reason_codes, len(INVALID_REASONS)).to_numpy(zero_copy_only=False)
    file_lines = table.column("file_lines").to_numpy(zero_copy_only=False) if has_lines else None
    lines = table.column("line").to_numpy(zero_copy_only=False) if has_lines else None
    groups = dict(_groups(ds, by))
    empty = np.zeros(0, dtype=np.int64)
    report_sources, dropped_rows = {}, {}
    for source in [*sources, *(name for name in groups if name not in sources)]:
        rows = groups.get(source, empty)
        counts = np.bincount(codes[rows], minlength=len(INVALID_REASONS) + 1)
        blank_lines = int(file_lines[rows[0]]) - len(rows) if has_lines and len(rows) else 0
        report_sources[source] = source_counts(counts, int(kept_per_source.get(source, 0)), blank_lines)
        if has_lines:
            for row in rows[codes[rows] < len(INVALID_REASONS)]:
                entry = {"file": f"{source}.jsonl", "line": int(lines[row]) + 1}
                dropped_rows.setdefault(INVALID_REASONS[codes[row]], []).append(entry)
    stat_columns = [*MIXTURE_COLUMNS, "labels"]
    stats = {
        "all": _mixture_stats(arrow_columns(ds, stat_columns)),
        "kept": _mixture_stats(arrow_columns(subset, stat_columns)),
    }
    return assemble_report(report_sources, dropped_rows, stats, params)


def selection_params(
    corpus: str, revision: str | None, method: str, ratio: float, alpha: float, tau: float, seed: int
) -> dict[str, Any]:
    """The `"params"` a report records."""
    params = {"corpus": corpus, "revision": revision, "method": method, "ratio": ratio}
    params.update({"alpha": alpha, "tau": tau, "seed": seed})
    return params


@dataclass
class Selection:
    """
    What a selection run produced (see [`run_selection`]).

    Parameters:
        scored (`datasets.Dataset`): every rollout read, scored, with its `invalid_reason`.
        subset (`datasets.Dataset`): the kept rollouts, in original order, with the raw columns.
        report (`dict`): the [`subset_report`].
        image_root (`Path`): the corpus root the image paths are relative to (`None` for a Hub stepwise dataset or a
            `Dataset`: their paths are used as they are).
    """

    scored: datasets.Dataset
    subset: datasets.Dataset
    report: dict[str, Any]
    image_root: Path | None

    def to_prm(self) -> datasets.Dataset:
        """The subset in the HF PRM format the trainer reads (see [`~formats.to_prm_format`])."""
        return to_prm_format(self.subset, image_root=self.image_root)


def run_selection(
    path_or_repo: str | os.PathLike | datasets.Dataset,
    method: str = "bis",
    ratio: float = 0.1,
    alpha: float = 0.2,
    tau: float = 0.0,
    seed: int = 0,
    num_proc: int | None = None,
    revision: str | None = None,
    progress: bool = True,
    download_images: bool = False,
    layout: str = "auto",
    columns: StepwiseColumns | dict[str, str | None] | None = None,
) -> Selection:
    """
    Load a corpus, score it and select a subset: the one pipeline behind `bis-prm select`, [`build_subset`],
    on-the-fly selection in training and the quickstart.

    Takes the arguments of [`build_subset`], plus:

    Args:
        layout (`str`, *optional*, defaults to `"auto"`):
            `"visualprm400k"` (the VisualPRM400K-Raw layout), `"stepwise"` (any stepwise dataset, see
            [`~bis_prm.data.stepwise.read_stepwise`]) or `"auto"`: stepwise for a `Dataset`, for local files that are
            not VisualPRM400K annotations ([`~bis_prm.data.stepwise.is_stepwise_corpus`]) and when `columns` is
            given; VisualPRM400K otherwise.
        columns ([`~bis_prm.data.stepwise.StepwiseColumns`] or `dict`, *optional*):
            Column names of a stepwise corpus (question, steps, scores, image, source).

    Example:

    ```python
    >>> selection = run_selection("VisualPRM400K-v1.1-Raw", method="bis", ratio=0.1, alpha=0.2)  # doctest: +SKIP
    >>> selection.report["total"]["kept"] == len(selection.subset)  # doctest: +SKIP
    True

    ```
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown corpus layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        stepwise = columns is not None or isinstance(path_or_repo, datasets.Dataset)
        layout = "stepwise" if stepwise or is_stepwise_corpus(path_or_repo) else "visualprm400k"
    if layout == "stepwise":
        rollouts, sources, root = read_stepwise(path_or_repo, columns, revision=revision, num_proc=num_proc)
    else:
        annotations_dir, root = resolve_visualprm400k(path_or_repo, revision=revision, download_images=download_images)
        rollouts = annotations_to_dataset(annotations_dir, num_proc=num_proc, progress=progress, image_root=root)
        sources = [path.stem for path in find_annotation_files(annotations_dir)]
    scored = score_rollouts(rollouts, tau=tau, alpha=alpha)
    subset = select_subset(scored, method=method, ratio=ratio, alpha=alpha, seed=seed)
    corpus = "Dataset" if isinstance(path_or_repo, datasets.Dataset) else str(path_or_repo)
    params = selection_params(corpus, revision, method, ratio, alpha, tau, seed)
    report = subset_report(scored, subset, params, sources=sources)
    return Selection(scored, subset, report, Path(root) if root is not None else None)


def build_subset(
    path_or_repo: str | os.PathLike,
    method: str = "bis",
    ratio: float = 0.1,
    alpha: float = 0.2,
    tau: float = 0.0,
    seed: int = 0,
    num_proc: int | None = None,
    revision: str | None = None,
    progress: bool = True,
    download_images: bool = False,
    layout: str = "auto",
    columns: StepwiseColumns | dict[str, str | None] | None = None,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """
    Load a corpus (VisualPRM400K-style or any stepwise dataset), score it, select a subset and convert it to the HF
    PRM format, in one call.

    Args:
        path_or_repo (`str` or `os.PathLike`):
            Local corpus root, annotations directory, zip, or Hub repo id.
        method (`str`, *optional*, defaults to `"bis"`):
            Selection method, one of `METHODS`.
        ratio (`float`, *optional*, defaults to `0.1`):
            Fraction kept per source.
        alpha (`float`, *optional*, defaults to `0.2`):
            BIS smoothing term.
        tau (`float`, *optional*, defaults to `0.0`):
            Hard-label threshold.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the `random` baseline.
        num_proc (`int`, *optional*):
            Processes reading annotation files.
        revision (`str`, *optional*):
            Hub revision when `path_or_repo` is a repo id.
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars.
        download_images (`bool`, *optional*, defaults to `False`):
            For a Hub repo id, also download and unzip its `images.zip` (large) so that the subset's image paths
            exist, as training needs.
        layout (`str`, *optional*, defaults to `"auto"`):
            The corpus layout (see [`run_selection`]).
        columns ([`~bis_prm.data.stepwise.StepwiseColumns`] or `dict`, *optional*):
            Column names of a stepwise corpus.

    Returns:
        `tuple[datasets.Dataset, dict]`: the subset in the HF PRM format (image paths relative to its `image_root`
        column, the corpus root) and the report of [`subset_report`].

    Example:

    ```python
    >>> train_dataset, report = build_subset(  # doctest: +SKIP
    ...     "VisualPRM400K-v1.1-Raw", method="bis", ratio=0.1, alpha=0.2
    ... )
    >>> report["total"]["kept"] == len(train_dataset)  # doctest: +SKIP
    True

    ```
    """
    selection = run_selection(
        path_or_repo, method, ratio, alpha, tau, seed, num_proc, revision, progress, download_images, layout, columns
    )
    return selection.to_prm(), selection.report
