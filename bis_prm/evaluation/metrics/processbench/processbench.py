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
"""ProcessBench first-error F1 metric for process reward models (PRMs)."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
ProcessBench asks a model for the earliest wrong step of a math solution, or -1 when every step is correct. Each
problem's reference is the 0-based index of its first wrong step (-1 for an all-correct solution). A process reward
model (PRM) answers with the first step whose score (its probability that the step is correct) is below `threshold`,
-1 when there is none.

Per split (gsm8k, math, olympiadbench, omnimath), as the official script (QwenLM/ProcessBench,
`code/run_eval_prm_rlhflow.py`): `error_acc` is the percentage of problems with an error whose prediction equals the
reference, `correct_acc` the percentage of all-correct problems predicted -1, and `f1 = 2 * error_acc * correct_acc /
(error_acc + correct_acc)`. The headline number, `average_f1`, is the mean F1 over the splits (the papers' "Avg. F1").

With `threshold="auto"` the threshold is tuned on these very predictions: among the sorted unique scores rounded to 4
decimals (every `len // 1000`-th one when there are more than 1000), the first with the highest `average_f1`. For an
honest number choose it on another split with `select_threshold` and pass the float.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Per problem, the PRM's score (probability of "correct") of each step.
    references (`list` of `int`):
        Per problem, the 0-based index of its first wrong step, -1 if every step is correct.
    splits (`list` of `str`):
        Per problem, its split (e.g. "gsm8k"); metrics are computed per split.
    threshold (`float` or `"auto"`, *optional*, defaults to `0.5`):
        The first step scored below it is the predicted error. `"auto"` tunes it on these predictions.

Returns:
    average_f1 (`float` or `None`): mean F1 over the splits that have one, in percent.
    threshold (`float`): the threshold used.
    threshold_source (`str`): "fixed" or "auto (same split)".
    problems (`int`): number of problems.
    per_split (`dict`): {split: {"error_acc", "correct_acc", "f1", "problems", "error_problems",
        "correct_problems"}} in order of first appearance; an accuracy over no problem, and the F1 that needs it,
        is `None` (the official script prints nan).
    predicted_errors (`list` of `int`): the predicted index of each problem.
    auto_search (`dict` or `None`): with `threshold="auto"`, the number of candidates and the best one.

Examples:
    >>> import evaluate
    >>> metric = evaluate.load("processbench")
    >>> results = metric.compute(
    ...     predictions=[[0.9, 0.2, 0.7], [0.8, 0.6], [0.9, 0.4]],
    ...     references=[1, -1, -1],
    ...     splits=["gsm8k", "gsm8k", "gsm8k"],
    ... )
    >>> results["predicted_errors"], round(results["average_f1"], 2)
    ([1, -1, 1], 66.67)
"""

_CITATION = """
@inproceedings{processbench,
  title={ProcessBench: Identifying Process Errors in Mathematical Reasoning},
  author={Chujie Zheng and Zhenru Zhang and Beichen Zhang and Runji Lin and Keming Lu and Bowen Yu and Dayiheng Liu
    and Jingren Zhou and Junyang Lin},
  booktitle={The 63rd Annual Meeting of the Association for Computational Linguistics},
  year={2025}
}
"""

_MAX_CANDIDATES = 1000


def _validate(predictions, references, splits) -> None:
    if not len(predictions) == len(references) == len(splits):
        raise ValueError(
            f"predictions, references and splits must have one entry per problem, got {len(predictions)}, "
            f"{len(references)} and {len(splits)}."
        )
    for row, (scores, label, split) in enumerate(zip(predictions, references, splits, strict=True)):
        if len(scores) == 0:
            raise ValueError(f"Problem {row}: no step score.")
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not -1 <= label < len(scores):
            raise ValueError(f"Problem {row}: the label must be -1 or a step index below {len(scores)}, got {label!r}")
        if any(score != score for score in scores):
            raise ValueError(f"Problem {row}: a step score is NaN.")
        if not isinstance(split, str) or not split:
            raise ValueError(f"Problem {row}: the split must be a non-empty string, got {split!r}.")


def _running_minima(predictions) -> list[np.ndarray]:
    # the first step below t is the first whose running minimum is below t: one searchsorted per problem
    return [-np.minimum.accumulate(np.asarray(scores, dtype=np.float64)) for scores in predictions]


def _predicted(negated_minima: list[np.ndarray], thresholds: np.ndarray) -> np.ndarray:
    """Predicted first-error index of every problem (rows) at every threshold (columns), -1 for none."""
    out = np.empty((len(negated_minima), len(thresholds)), dtype=np.int64)
    for row, negated in enumerate(negated_minima):
        # steps before the first error: those whose running minimum is >= t, i.e. negated minimum <= -t
        kept = np.searchsorted(negated, -thresholds, side="right")
        out[row] = np.where(kept == len(negated), -1, kept)
    return out


def _split_metrics(predicted: np.ndarray, references: np.ndarray, codes: np.ndarray, order) -> tuple[list, np.ndarray]:
    """Per split (in `order`) its accuracies and F1 at every threshold, and the mean F1 over splits with one."""
    has_error = references != -1
    match = predicted == references[:, None]
    per_split, f1s = [], []
    for code in order:
        in_split = codes == code
        error, correct = in_split & has_error, in_split & ~has_error
        error_acc = match[error].mean(axis=0) * 100 if error.any() else None
        correct_acc = match[correct].mean(axis=0) * 100 if correct.any() else None
        f1 = None
        if error_acc is not None and correct_acc is not None:
            total = error_acc + correct_acc
            # 0 when both accuracies are 0 (the harmonic mean's limit; the official script divides 0 by 0 there)
            f1 = np.divide(2 * error_acc * correct_acc, total, out=np.zeros_like(total), where=total > 0)
            f1s.append(f1)
        per_split.append((code, error_acc, correct_acc, f1, int(in_split.sum()), int(error.sum()), int(correct.sum())))
    average = np.mean(f1s, axis=0) if f1s else None
    return per_split, average


def _encode(predictions, references, splits):
    _validate(predictions, references, splits)
    as_text = np.asarray(splits, dtype=object).astype(str)
    names, first, codes = np.unique(as_text, return_index=True, return_inverse=True)
    order = np.argsort(first)
    return _running_minima(predictions), np.asarray(references, dtype=np.int64), codes.reshape(-1), order, names


def _candidates(predictions) -> np.ndarray:
    unique = np.unique(np.concatenate([np.asarray(scores, dtype=np.float64) for scores in predictions]))
    candidates = np.array(sorted({round(float(score), 4) for score in unique}), dtype=np.float64)
    if len(candidates) > _MAX_CANDIDATES:
        candidates = candidates[:: max(1, len(candidates) // _MAX_CANDIDATES)]
    return candidates


def _auto_search(predictions, encoded) -> dict | None:
    minima, references, codes, order, _ = encoded
    candidates = _candidates(predictions) if predictions else np.array([])
    _, average = _split_metrics(_predicted(minima, candidates), references, codes, order)
    if average is None or len(candidates) == 0:  # no split has both kinds of problems: nothing to tune
        return None
    best = int(np.argmax(average))  # the first best candidate
    return {
        "num_candidates": len(candidates),
        "threshold": float(candidates[best]),
        "average_f1": float(average[best]),
    }


def select_threshold(predictions, references, splits) -> float:
    """
    The threshold with the highest average F1 on these predictions (the first best candidate; 0.5 when no split has
    both problems with an error and all-correct ones). Run it on another split than the one you report.

    Example:
        >>> select_threshold([[0.9, 0.3], [0.8, 0.6]], [1, -1], ["math", "math"])
        0.6
    """
    search = _auto_search(predictions, _encode(predictions, references, splits))
    return 0.5 if search is None else search["threshold"]


def compute_processbench(predictions, references, splits, threshold: float | str = 0.5) -> dict:
    """
    ProcessBench metrics of step scores (NumPy only), as the official `run_eval_prm_rlhflow.py` computes them.

    Args:
        predictions (`list[list[float]]`): per problem, the PRM's probability that each step is correct.
        references (`list[int]`): per problem, the index of its first wrong step, -1 if none.
        splits (`list[str]`): per problem, its split.
        threshold (`float` or `"auto"`, *optional*, defaults to `0.5`): the first step scored below it is the error.

    Returns:
        `dict`: `average_f1`, `threshold`, `threshold_source`, `problems`, `per_split`, `predicted_errors` and
        `auto_search` (see the metric card).

    Example:
        >>> results = compute_processbench([[0.9, 0.2], [0.8, 0.6]], [1, -1], ["gsm8k", "gsm8k"])
        >>> results["per_split"]["gsm8k"]["f1"], results["predicted_errors"]
        (100.0, [1, -1])
    """
    encoded = _encode(predictions, references, splits)
    auto_search, threshold_source = None, "fixed"
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(f'threshold must be a float or "auto", got {threshold!r}.')
        auto_search, threshold_source = _auto_search(predictions, encoded), "auto (same split)"
        threshold = 0.5 if auto_search is None else auto_search["threshold"]
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f'threshold must be a float or "auto", got {threshold!r}.')
    threshold = float(threshold)
    minima, references_array, codes, order, names = encoded
    predicted = _predicted(minima, np.array([threshold]))
    per_split, average = _split_metrics(predicted, references_array, codes, order)

    def value(array):
        return None if array is None else float(array[0])

    return {
        "average_f1": value(average),
        "threshold": threshold,
        "threshold_source": threshold_source,
        "problems": len(predictions),
        "per_split": {
            str(names[code]): {
                "error_acc": value(error_acc),
                "correct_acc": value(correct_acc),
                "f1": value(f1),
                "problems": problems,
                "error_problems": errors,
                "correct_problems": corrects,
            }
            for code, error_acc, correct_acc, f1, problems, errors, corrects in per_split
        },
        "predicted_errors": predicted[:, 0].tolist(),
        "auto_search": auto_search,
    }


def f1_curve(predictions, references, splits, thresholds) -> dict:
    """
    Average and per-split F1 at each threshold (for plots): `{"thresholds", "average_f1", "per_split"}`, `None`
    where a split lacks one kind of problem.

    Example:
        >>> f1_curve([[0.9, 0.2], [0.8, 0.6]], [1, -1], ["gsm8k", "gsm8k"], [0.1, 0.5])["average_f1"]
        [0.0, 100.0]
    """
    minima, references_array, codes, order, names = _encode(predictions, references, splits)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    per_split, average = _split_metrics(_predicted(minima, thresholds), references_array, codes, order)
    return {
        "thresholds": thresholds.tolist(),
        "average_f1": None if average is None else average.tolist(),
        "per_split": {str(names[code]): None if f1 is None else f1.tolist() for code, _, _, f1, *_ in per_split},
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Processbench(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int32"),
                    "splits": datasets.Value("string"),
                }
            ),
            reference_urls=[
                "https://github.com/QwenLM/ProcessBench",
                "https://huggingface.co/datasets/Qwen/ProcessBench",
            ],
        )

    def _compute(self, predictions, references, splits, threshold=0.5):
        return compute_processbench(predictions, references, splits, threshold=threshold)
