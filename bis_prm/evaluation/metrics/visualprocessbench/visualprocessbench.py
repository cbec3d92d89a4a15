# Copyright 2026 The bis_prm Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""VisualProcessBench step-level F1 metric for process reward models (PRMs)."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
VisualProcessBench scores a process reward model (PRM) on human-annotated reasoning steps. Each benchmark row is a
solution whose steps carry a label: 1 (correct), -1 (wrong) or 0 (neutral). Neutral steps are ignored. A step is
predicted correct when its score (the PRM's probability that the step is correct) is at least `threshold`.

For every data source (MMMU, MathVision, MathVerse, DynaMath, WeMath) the metric computes the F1 of the class
"correct" and the F1 of the class "wrong", F1 = 2TP / (2TP + FP + FN) (0 when the denominator is 0), and their mean,
the source's macro-F1. The headline number, `micro_over_sources` (the "Overall" column of the VisualPRM and BIS
papers), is the mean of the per-source macro-F1 weighted by each source's number of counted steps. The pooled
macro-F1 over all steps and the AUROC are reported as well.

With `threshold="auto"` the threshold is chosen as in the reference evaluator: among the sorted unique scores
rounded to 4 decimals (every `len // 1000`-th one when there are more than 1000), the first one with the highest
`micro_over_sources`. This tunes the threshold on the evaluated data itself; for an honest number choose it on a
separate split with `select_threshold` and pass the float.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Per benchmark row, the PRM's score (probability of "correct") of each step.
    references (`list` of `list` of `int`):
        Per benchmark row, the label of each step: 1 (correct), -1 (wrong) or 0 (neutral, ignored). Must have the
        same length as the row's predictions.
    data_sources (`list` of `str`):
        Per benchmark row, its data source (e.g. "MMMU"); metrics are computed per source.
    threshold (`float` or `"auto"`, *optional*, defaults to `0.5`):
        Scores `>= threshold` predict "correct". `"auto"` picks the threshold maximising `micro_over_sources` on
        these very predictions, as the reference evaluator does.

Returns:
    micro_over_sources (`float`): per-source macro-F1 weighted by the sources' counted steps (the paper's Overall).
    macro_f1_pooled (`float`): macro-F1 over all counted steps pooled together.
    f1_positive (`float`): pooled F1 of the class "correct".
    f1_negative (`float`): pooled F1 of the class "wrong".
    threshold (`float`): the threshold used.
    threshold_source (`str`): "fixed" or "auto (same split)".
    total_steps (`int`): number of counted (non-neutral) steps.
    auroc (`float` or `None`): area under the ROC curve of the scores for "correct" vs "wrong" (None with one class).
    per_source (`dict`): {source: {"macro_f1", "f1_positive", "f1_negative", "steps"}}, sources with counted steps
        only, in order of first appearance.
    auto_search (`dict` or `None`): with `threshold="auto"`, the number of candidates and the best threshold and
        score for `micro_over_sources` and for `macro_f1_pooled` (None without counted steps: threshold 0.5).

Examples:
    >>> import evaluate
    >>> metric = evaluate.load("visualprocessbench")
    >>> results = metric.compute(
    ...     predictions=[[0.9, 0.2, 0.7], [0.8, 0.6]],
    ...     references=[[1, -1, 0], [1, -1]],
    ...     data_sources=["MathVerse", "MMMU"],
    ... )
    >>> round(results["micro_over_sources"], 4), results["total_steps"]
    (0.6667, 4)
    >>> results["per_source"]["MathVerse"]
    {'macro_f1': 1.0, 'f1_positive': 1.0, 'f1_negative': 1.0, 'steps': 2}
"""

_CITATION = """
@article{wang2025visualprm,
  title={VisualPRM: An Effective Process Reward Model for Multimodal Reasoning},
  author={Wang, Weiyun and Gao, Zhangwei and Chen, Lianjie and Chen, Zhe and Zhu, Jinguo and others},
  journal={arXiv preprint arXiv:2503.10291},
  year={2025}
}
"""

_MAX_CANDIDATES = 1000


def _validate(predictions, references, data_sources) -> None:
    if not len(predictions) == len(references) == len(data_sources):
        raise ValueError(
            f"predictions, references and data_sources must have one entry per benchmark row, got "
            f"{len(predictions)}, {len(references)} and {len(data_sources)}."
        )
    for row, (scores, labels, source) in enumerate(zip(predictions, references, data_sources, strict=True)):
        if len(scores) != len(labels):
            raise ValueError(f"Row {row}: {len(scores)} step scores but {len(labels)} step labels.")
        if not isinstance(source, str) or not source:
            raise ValueError(f"Row {row}: data source must be a non-empty string, got {source!r}.")


def _flatten(predictions, references, data_sources):
    """Counted (non-neutral) steps as arrays, plus the sources in order of their first counted step."""
    _validate(predictions, references, data_sources)
    lengths = np.array([len(labels) for labels in references], dtype=np.int64)
    scores = np.array([s for row in predictions for s in row], dtype=np.float64)
    labels = np.array([y for row in references for y in row], dtype=np.int64)
    bad = ~np.isin(labels, (-1, 0, 1))
    if bad.any():
        step = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(np.cumsum(lengths), step, side="right"))
        raise ValueError(f"Row {row}: step labels must be 1, 0 or -1, got {int(labels[step])}.")
    if np.isnan(scores).any():
        step = int(np.flatnonzero(np.isnan(scores))[0])
        row = int(np.searchsorted(np.cumsum(lengths), step, side="right"))
        raise ValueError(f"Row {row}: step score is NaN.")
    names, row_codes = np.unique(np.asarray(data_sources, dtype=object).astype(str), return_inverse=True)
    codes = np.repeat(row_codes.reshape(-1), lengths)
    counted = labels != 0
    scores, labels, codes = scores[counted], labels[counted], codes[counted]
    # the reference creates a source's entry at its first counted step; keep that order
    present, first = np.unique(codes, return_index=True)
    order = present[np.argsort(first)]
    return scores, labels == 1, codes, order, names


def _f1(tp, fp, fn):
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def _macro_f1(pos_below, neg_below, num_pos, num_neg):
    """F1 of both classes and their mean, for every threshold at once, from the counts of scores below it."""
    # predicted "correct" = score >= threshold; positives below the threshold are the false negatives
    f1_positive = _f1(num_pos - pos_below, num_neg - neg_below, pos_below)
    f1_negative = _f1(neg_below, pos_below, num_neg - neg_below)
    return (f1_positive + f1_negative) / 2, f1_positive, f1_negative


def _sweep(scores, positive, codes, order, thresholds):
    """Per-source and pooled F1 at every threshold: one sort and one searchsorted per source and class."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    weighted = np.zeros_like(thresholds)
    pooled_pos_below = np.zeros(thresholds.shape, dtype=np.int64)
    pooled_neg_below = np.zeros(thresholds.shape, dtype=np.int64)
    per_source = []
    for code in order:
        in_source = codes == code
        pos_scores = np.sort(scores[in_source & positive])
        neg_scores = np.sort(scores[in_source & ~positive])
        pos_below = np.searchsorted(pos_scores, thresholds, side="left")
        neg_below = np.searchsorted(neg_scores, thresholds, side="left")
        macro, f1_positive, f1_negative = _macro_f1(pos_below, neg_below, len(pos_scores), len(neg_scores))
        steps = len(pos_scores) + len(neg_scores)
        weighted = weighted + macro * steps
        pooled_pos_below += pos_below
        pooled_neg_below += neg_below
        per_source.append((code, macro, f1_positive, f1_negative, steps))
    total = len(scores)
    micro = weighted / total if total else np.zeros_like(thresholds)
    num_pos = int(positive.sum())
    pooled = _macro_f1(pooled_pos_below, pooled_neg_below, num_pos, total - num_pos)
    return micro, pooled, per_source


def _round4(values: np.ndarray) -> np.ndarray:
    """Python's `round(x, 4)` on an array: NumPy's scale-and-rint, with Python's own rounding near halfway cases."""
    rounded = np.round(values, 4)
    scaled = values * 1e4
    # np.round scales by 1e4 before rounding, which can flip a value lying within a few ulps of a halfway point
    near_half = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) < 1e-6 * np.maximum(1.0, np.abs(scaled))
    near_half &= np.isfinite(values)
    rounded[near_half] = [round(float(x), 4) for x in values[near_half]]
    return rounded


def _candidates(scores: np.ndarray) -> np.ndarray:
    candidates = np.unique(_round4(np.unique(scores)))
    if len(candidates) > _MAX_CANDIDATES:
        candidates = candidates[:: max(1, len(candidates) // _MAX_CANDIDATES)]
    return candidates


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with tied scores given their average rank (equal to `sklearn.metrics.roc_auc_score`)."""
    num_pos = int(positive.sum())
    num_neg = len(scores) - num_pos
    if num_pos == 0 or num_neg == 0:
        return None
    sorted_scores, inverse = np.unique(scores, return_inverse=True)
    tie_counts = np.bincount(inverse.reshape(-1), minlength=len(sorted_scores))
    # 1-based rank of each distinct score: the mean of the ranks its ties occupy
    ends = np.cumsum(tie_counts)
    average_rank = ends - (tie_counts - 1) / 2
    rank_sum = average_rank[inverse.reshape(-1)][positive].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def select_threshold(predictions, references, data_sources) -> float:
    """
    Choose the threshold maximising `micro_over_sources`, as the reference evaluator's `--auto` does.

    Run it on a split other than the one you report (e.g. a dev split) for an honest threshold.

    Args:
        predictions (`list[list[float]]`): step scores per row.
        references (`list[list[int]]`): step labels (1, 0, -1) per row.
        data_sources (`list[str]`): data source per row.

    Returns:
        `float`: the first candidate threshold (sorted unique scores rounded to 4 decimals, thinned to about 1000)
        with the highest `micro_over_sources`; 0.5 when no step is counted (as the reference).

    Example:
        >>> select_threshold([[0.9, 0.4, 0.2]], [[1, 1, -1]], ["MMMU"])
        0.4
    """
    scores, positive, codes, order, _ = _flatten(predictions, references, data_sources)
    auto_search = _auto_search(scores, positive, codes, order)
    return 0.5 if auto_search is None else auto_search["best_threshold_micro_over_sources"]["threshold"]


def _auto_search(scores, positive, codes, order) -> dict | None:
    if len(scores) == 0:  # nothing to tune on; the reference keeps its default threshold
        return None
    candidates = _candidates(scores)
    micro, (pooled, _, _), _ = _sweep(scores, positive, codes, order, candidates)
    # argmax returns the first maximum, as the reference's strict `>` update does
    best_micro, best_pooled = int(np.argmax(micro)), int(np.argmax(pooled))
    return {
        "num_candidates": len(candidates),
        "best_threshold_micro_over_sources": {
            "threshold": float(candidates[best_micro]),
            "score": float(micro[best_micro]),
        },
        "best_threshold_pooled_macro": {
            "threshold": float(candidates[best_pooled]),
            "score": float(pooled[best_pooled]),
        },
    }


def compute_visualprocessbench(predictions, references, data_sources, threshold: float | str = 0.5) -> dict:
    """
    VisualProcessBench metrics of step scores (NumPy only, vectorised over steps and candidate thresholds).

    Args:
        predictions (`list[list[float]]`):
            Per row, the PRM's probability that each step is correct.
        references (`list[list[int]]`):
            Per row, each step's label: 1 (correct), -1 (wrong), 0 (neutral, ignored).
        data_sources (`list[str]`):
            Per row, its data source.
        threshold (`float` or `"auto"`, *optional*, defaults to `0.5`):
            Scores `>= threshold` predict "correct"; `"auto"` selects it on these predictions like the reference.

    Returns:
        `dict`: `micro_over_sources`, `macro_f1_pooled`, `f1_positive`, `f1_negative`, `threshold`,
        `threshold_source`, `total_steps`, `auroc`, `per_source` and `auto_search` (see the metric card).

    Example:
        >>> results = compute_visualprocessbench([[0.9, 0.2], [0.8, 0.6]], [[1, -1], [1, -1]], ["MathVerse", "MMMU"])
        >>> round(results["micro_over_sources"], 4), round(results["macro_f1_pooled"], 4)
        (0.6667, 0.7333)
    """
    scores, positive, codes, order, names = _flatten(predictions, references, data_sources)
    auto_search, threshold_source = None, "fixed"
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(f'threshold must be a float or "auto", got {threshold!r}.')
        auto_search, threshold_source = _auto_search(scores, positive, codes, order), "auto (same split)"
        threshold = 0.5 if auto_search is None else auto_search["best_threshold_micro_over_sources"]["threshold"]
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f'threshold must be a float or "auto", got {threshold!r}.')
    threshold = float(threshold)
    micro, pooled, per_source = _sweep(scores, positive, codes, order, [threshold])
    return {
        "micro_over_sources": float(micro[0]),
        "macro_f1_pooled": float(pooled[0][0]),
        "f1_positive": float(pooled[1][0]),
        "f1_negative": float(pooled[2][0]),
        "threshold": threshold,
        "threshold_source": threshold_source,
        "total_steps": len(scores),
        "auroc": _auroc(scores, positive),
        "per_source": {
            str(names[code]): {
                "macro_f1": float(macro[0]),
                "f1_positive": float(f1_positive[0]),
                "f1_negative": float(f1_negative[0]),
                "steps": steps,
            }
            for code, macro, f1_positive, f1_negative, steps in per_source
        },
        "auto_search": auto_search,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Visualprocessbench(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                    "data_sources": datasets.Value("string"),
                }
            ),
            reference_urls=["https://huggingface.co/datasets/OpenGVLab/VisualProcessBench"],
        )

    def _compute(self, predictions, references, data_sources, threshold=0.5):
        return compute_visualprocessbench(predictions, references, data_sources, threshold=threshold)
