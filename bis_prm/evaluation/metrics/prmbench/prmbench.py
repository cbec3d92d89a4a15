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
"""PRMBench PRMScore metric for process reward models (PRMs)."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
PRMBench asks a process reward model (PRM) to tell the correct steps of a solution from the erroneous ones, across nine
error categories. A step is predicted correct when its score (the PRM's probability that the step is correct) is
strictly above `threshold` (the toolkit's `validity_threshold`, 0.5).

Exactly as the official toolkit (ssmisya/PRMBench, `mr_eval/tasks/prmtest_classified/task.py` and
`mr_visualize/.../form_latex_strs.ipynb`): "correct" steps are the positive class, the annotated `error_steps` the
negative one. Over all problems of the nine categories (the `"correct"` problems, built from the original solutions,
are scored for their own category only) the counts TP, FP, TN, FN give `f1` (the positive class) and `negative_f1`;
a precision or recall over no step is -1, and so is an F1 whose precision and recall sum to 0.
`prm_score = 0.5 * f1 + 0.5 * negative_f1`, reported as 0 when it is not positive. Per category the same, except for
`multi_solutions` (no error step), whose PRMScore is its `f1`. The three groups of the paper (simplicity, soundness,
sensitivity) are the means of their categories' PRMScores.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Per problem, the PRM's score (probability of "correct") of each step.
    references (`list` of `list` of `int`):
        Per problem, its erroneous steps, 1-based as in the dataset's `error_steps` (empty for a correct solution).
    classifications (`list` of `str`):
        Per problem, its category (`"circular"`, ..., `"multi_solutions"`, or `"correct"`).
    threshold (`float`, *optional*, defaults to `0.5`):
        Scores strictly above it predict "correct".

Returns:
    prm_score (`float`): the overall PRMScore, in [0, 1].
    f1, negative_f1, precision, recall, negative_precision, negative_recall (`float`): over all non-"correct" problems.
    threshold (`float`): the threshold used.
    problems (`int`): number of problems.
    per_category (`dict`): {category: {"prm_score", "f1", "negative_f1", "problems", "steps"}}.
    groups (`dict`): {"simplicity" | "soundness" | "sensitivity": mean PRMScore of its categories present}.

Examples:
    >>> import evaluate
    >>> metric = evaluate.load("prmbench")
    >>> results = metric.compute(
    ...     predictions=[[0.9, 0.2, 0.7], [0.8, 0.6, 0.3]],
    ...     references=[[2], [3]],
    ...     classifications=["circular", "confidence"],
    ... )
    >>> round(results["prm_score"], 4), results["per_category"]["circular"]["prm_score"]
    (1.0, 1.0)
"""

_CITATION = """
@article{song2025prmbench,
  title={PRMBench: A Fine-grained and Challenging Benchmark for Process-Level Reward Models},
  author={Mingyang Song and Zhaochen Su and Xiaoye Qu and Jiawei Zhou and Yu Cheng},
  journal={arXiv preprint arXiv:2501.03124},
  year={2025}
}
"""

# the paper's table: categories by group, in its column order (the toolkit spells "redundency")
GROUPS = {
    "simplicity": ("redundency", "circular"),
    "soundness": ("counterfactual", "step_contradiction", "domain_inconsistency", "confidence"),
    "sensitivity": ("missing_condition", "deception", "multi_solutions"),
}
CORRECT = "correct"


def _validate(predictions, references, classifications) -> None:
    if not len(predictions) == len(references) == len(classifications):
        raise ValueError(
            f"predictions, references and classifications must have one entry per problem, got {len(predictions)}, "
            f"{len(references)} and {len(classifications)}."
        )
    for row, (scores, error_steps, category) in enumerate(zip(predictions, references, classifications, strict=True)):
        if any(score != score for score in scores):
            raise ValueError(f"Problem {row}: a step score is NaN.")
        if any(isinstance(step, bool) or not isinstance(step, (int, np.integer)) for step in error_steps):
            raise ValueError(f"Problem {row}: error steps must be 1-based integers, got {error_steps!r}.")
        if not isinstance(category, str) or not category:
            raise ValueError(f"Problem {row}: the classification must be a non-empty string, got {category!r}.")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator != 0 else -1


def _f1(precision: float, recall: float) -> float:
    # the toolkit's arithmetic, -1 sentinels included
    return 2 * precision * recall / (precision + recall) if (precision + recall) != 0 else -1


def _scores(tp: int, fp: int, tn: int, fn: int) -> dict:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    negative_precision, negative_recall = _ratio(tn, tn + fn), _ratio(tn, tn + fp)
    return {
        "f1": _f1(precision, recall),
        "negative_f1": _f1(negative_precision, negative_recall),
        "precision": precision,
        "recall": recall,
        "negative_precision": negative_precision,
        "negative_recall": negative_recall,
    }


def _prm_score(scores: dict, positive_only: bool = False) -> float:
    value = scores["f1"] if positive_only else scores["f1"] * 0.5 + scores["negative_f1"] * 0.5
    return value if value > 0 else 0


def _counts(scores, error_steps, threshold: float) -> tuple[int, int, int, int]:
    """TP, FP, TN, FN of one problem: "correct" is the positive class."""
    positive = np.asarray(scores, dtype=np.float64) > threshold
    wrong = np.zeros(len(positive), dtype=bool)
    inside = [step - 1 for step in error_steps if 1 <= step <= len(positive)]  # others name no scored step
    wrong[inside] = True
    return (
        int((positive & ~wrong).sum()),
        int((positive & wrong).sum()),
        int((~positive & wrong).sum()),
        int((~positive & ~wrong).sum()),
    )


def compute_prmbench(predictions, references, classifications, threshold: float = 0.5) -> dict:
    """
    PRMBench's PRMScore and per-category scores of step scores, as the official `mr_eval` toolkit computes them.

    Args:
        predictions (`list[list[float]]`): per problem, the PRM's probability that each step is correct.
        references (`list[list[int]]`): per problem, its 1-based erroneous steps.
        classifications (`list[str]`): per problem, its category.
        threshold (`float`, *optional*, defaults to `0.5`): scores strictly above it predict "correct".

    Returns:
        `dict`: `prm_score`, `f1`, `negative_f1`, `precision`, `recall`, `negative_precision`, `negative_recall`,
        `threshold`, `problems`, `per_category` and `groups` (see the metric card).

    Example:
        >>> results = compute_prmbench([[0.9, 0.2], [0.8, 0.6]], [[2], [2]], ["circular", "circular"])
        >>> results["f1"], round(results["negative_f1"], 4), round(results["prm_score"], 4)
        (0.8, 0.6667, 0.7333)
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a float, got {threshold!r}.")
    _validate(predictions, references, classifications)
    total = np.zeros(4, dtype=np.int64)
    by_category: dict[str, np.ndarray] = {}
    problems: dict[str, int] = {}
    steps: dict[str, int] = {}
    for scores, error_steps, category in zip(predictions, references, classifications, strict=True):
        counts = np.array(_counts(scores, error_steps, float(threshold)))
        by_category[category] = by_category.get(category, np.zeros(4, dtype=np.int64)) + counts
        problems[category] = problems.get(category, 0) + 1
        steps[category] = steps.get(category, 0) + len(scores)
        if category != CORRECT:  # the toolkit leaves the correct solutions out of the totals
            total += counts
    overall = _scores(*(int(x) for x in total))
    per_category = {}
    for category, counts in by_category.items():
        scores = _scores(*(int(x) for x in counts))
        per_category[category] = {
            "prm_score": _prm_score(scores, positive_only=category == "multi_solutions"),
            "f1": scores["f1"],
            "negative_f1": scores["negative_f1"],
            "problems": problems[category],
            "steps": steps[category],
        }
    groups = {}
    for group, members in GROUPS.items():
        present = [per_category[name]["prm_score"] for name in members if name in per_category]
        if present:
            groups[group] = sum(present) / len(present)
    return {
        "prm_score": _prm_score(overall),
        **overall,
        "threshold": float(threshold),
        "problems": len(predictions),
        "per_category": per_category,
        "groups": groups,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Prmbench(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                    "classifications": datasets.Value("string"),
                }
            ),
            reference_urls=[
                "https://github.com/ssmisya/PRMBench",
                "https://huggingface.co/datasets/hitsmy/PRMBench_Preview",
            ],
        )

    def _compute(self, predictions, references, classifications, threshold=0.5):
        return compute_prmbench(predictions, references, classifications, threshold=threshold)
