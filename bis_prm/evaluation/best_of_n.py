"""Best-of-N: rerank N candidate solutions per question by their aggregated PRM step scores.

Candidates file (JSONL, one question per line):

    {"id": "q1", "image": ["img/q1.png"], "question": "...", "answer": "42",
     "candidates": [{"steps": ["...", "..."], "answer": "42"}, {"steps": ["..."], "correct": false}]}

`image` (paths relative to the file's folder, a string or a list) and `answer` are optional. A candidate is correct
when its `correct` flag says so, else when its `answer` equals the question's `answer` (stripped, case-insensitive);
accuracy is reported over the questions where every candidate's correctness is known.

No line can stop the run: a question that cannot be read or scored (broken JSON, a candidate without steps, an
unreadable image, ...) is skipped and reported by reason with its 1-based line in the summary's `skipped`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bis_prm.data.images import MAX_IMAGE_PIXELS, ImageProblem, read_image_size, resolve_image
from bis_prm.io.jsonl import SkippedRows, iter_jsonl

if TYPE_CHECKING:
    from bis_prm.model.inference import StepScorerBase

__all__ = ["best_of_n", "load_candidates", "rerank"]


def _question_problem(question: object, step_token: str | None) -> tuple[str, str] | None:
    """(reason, message) when a candidates line cannot be reranked, else None."""
    if not isinstance(question, dict):
        return "broken_json", f"not a JSON object but a {type(question).__name__}"
    if question.get("question") is None or question.get("candidates") is None:
        return "missing_fields", "needs `question` and `candidates`"
    candidates = question["candidates"]
    images = question.get("image")
    images = [images] if isinstance(images, str) else [] if images is None else images
    if not isinstance(question["question"], str) or not isinstance(images, list):
        return "wrong_type", "`question` must be a string and `image` a path or a list of paths"
    if not isinstance(candidates, list) or not candidates or not all(isinstance(c, dict) for c in candidates):
        return "wrong_type", "`candidates` must be a non-empty list of objects"
    for k, candidate in enumerate(candidates):
        steps = candidate.get("steps")
        if not steps:
            return "no_steps", f"candidate {k} has no `steps`"
        if not isinstance(steps, list) or not all(isinstance(step, str) for step in steps):
            return "wrong_type", f"candidate {k}: `steps` must be a list of strings"
        if step_token and any(step_token in step for step in [question["question"], *steps]):
            return "step_token_in_text", f"candidate {k}: the text already contains the step token {step_token!r}"
    if not all(isinstance(image, str) and image for image in images):
        return "wrong_type", "`image` must be a path or a list of paths"
    return None


def load_candidates(
    path: str | os.PathLike, step_token: str | None = "<prm>", max_image_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[list[dict], SkippedRows]:
    """
    Read a candidates JSONL file (format in the module docstring), image paths resolved and checked from their
    headers. A line that cannot be reranked is skipped and recorded with its reason and 1-based line.

    Returns:
        `tuple`: the usable questions (each with its `line`) and the [`~bis_prm.io.jsonl.SkippedRows`].

    Example:

    ```python
    >>> questions, skipped = load_candidates("candidates.jsonl")  # doctest: +SKIP
    >>> len(questions[0]["candidates"]), skipped.counts()  # doctest: +SKIP
    (8, {})

    ```
    """
    root = Path(path).parent
    questions, skipped = [], SkippedRows()
    for line, question, problem in iter_jsonl(path):
        problem = problem or _question_problem(question, step_token)
        if problem is None:
            images = question.get("image") or []
            images = [images] if isinstance(images, str) else images
            try:
                question["image"] = [str(resolve_image(image, root, contained=False)) for image in images]
                question["image_sizes"] = [read_image_size(image, max_image_pixels) for image in question["image"]]
            except ImageProblem as error:
                problem = (error.reason, str(error))
        if problem is not None:
            skipped.add(problem[0], line, problem[1])
            continue
        question.setdefault("id", line - 1)
        question["line"] = line
        questions.append(question)
    return questions, skipped


def _is_correct(question: dict, candidate: dict) -> bool | None:
    if "correct" in candidate:
        return bool(candidate["correct"])
    if candidate.get("answer") is not None and question.get("answer") is not None:
        return str(candidate["answer"]).strip().lower() == str(question["answer"]).strip().lower()
    return None


def rerank(
    questions: Sequence[dict], step_scores: Sequence[Sequence[Sequence[float]]], aggregation: str = "mean"
) -> tuple[list[dict], dict]:
    """
    Pick the candidate with the highest aggregated step score for each question (the first one on ties).

    Args:
        questions (`Sequence[dict]`): questions with `candidates` (see [`load_candidates`]).
        step_scores (`Sequence`): per question, per candidate, the step scores.
        aggregation (`str`, *optional*, defaults to `"mean"`): `"mean"`, `"min"`, `"last"` or `"prod"`.

    Returns:
        `tuple[list[dict], dict]`: per question `{"id", "chosen", "scores", "correct"}`, and the summary:
        `questions`, `aggregation`, `with_answers`, `accuracy` (chosen candidate), `first_candidate` (baseline)
        and `oracle` (pass@N); accuracies are `None` without answers.

    Example:
        >>> candidates = [{"steps": ["a"], "answer": "5"}, {"steps": ["b"], "answer": "4"}]
        >>> q = {"id": 0, "answer": "4", "candidates": candidates}
        >>> rerank([q], [[[0.2], [0.9]]])[1]["accuracy"]
        1.0
    """
    from bis_prm.model.inference import aggregate_scores

    results = []
    for question, scores in zip(questions, step_scores, strict=True):
        aggregated = [aggregate_scores(candidate_scores, aggregation) for candidate_scores in scores]
        chosen = max(range(len(aggregated)), key=lambda k: (aggregated[k], -k))
        correct = [_is_correct(question, candidate) for candidate in question["candidates"]]
        results.append({"id": question["id"], "chosen": chosen, "scores": aggregated, "correct": correct})

    judged = [r for r in results if None not in r["correct"]]

    def accuracy(pick: Callable[[dict], bool]) -> float | None:
        return sum(pick(r) for r in judged) / len(judged) if judged else None

    summary = {
        "questions": len(results),
        "aggregation": aggregation,
        "with_answers": len(judged),
        "accuracy": accuracy(lambda r: r["correct"][r["chosen"]]),
        "first_candidate": accuracy(lambda r: r["correct"][0]),
        "oracle": accuracy(lambda r: any(r["correct"])),
    }
    return results, summary


def best_of_n(
    model,
    processor,
    candidates_file: str | os.PathLike,
    aggregation: str = "mean",
    batch_size: int = 8,
    max_images: int | None = None,
    max_batch_tokens: int | None = None,
    num_workers: int = 0,
    scorer: StepScorerBase | None = None,
) -> tuple[list[dict], dict]:
    """
    Score every candidate of a candidates file with a PRM and rerank them (see [`rerank`]).

    `scorer` (from [`~bis_prm.model.scorers.load_scorer`], e.g. for another library's PRM) scores instead of a
    [`~bis_prm.model.inference.StepScorer`] built from `model` and `processor` and the batching arguments.

    A question that cannot be read, or one of whose candidates cannot be rendered, is skipped (a reranking over
    fewer candidates would not be Best-of-N) and reported in the summary's `skipped` by reason and line.

    Example:

    ```python
    >>> model, processor = load_prm("path/to/prm")  # doctest: +SKIP
    >>> results, summary = best_of_n(model, processor, "candidates.jsonl", aggregation="min")  # doctest: +SKIP

    ```
    """
    from bis_prm.model.inference import StepScorer

    if scorer is None:
        scorer = StepScorer(model, processor, batch_size, max_batch_tokens, max_images, num_workers=num_workers)
    questions, skipped = load_candidates(candidates_file, step_token=scorer.step_token)
    examples, owner = [], []
    for q, question in enumerate(questions):
        for candidate in question["candidates"]:
            examples.append(
                {**{k: question[k] for k in ("image", "image_sizes", "question")}, "steps": candidate["steps"]}
            )
            owner.append(q)
    scores, failed = {}, {}
    for row, row_scores, failure in scorer.iter_scores(examples, scorer.plan(examples), progress=True):
        if failure is None:
            scores[row] = row_scores
        else:
            failed.setdefault(owner[row], failure)
    for q, (reason, message) in sorted(failed.items()):
        skipped.add(reason, questions[q]["line"], message)
    kept = [q for q in range(len(questions)) if q not in failed]
    step_scores = {q: [] for q in kept}
    for row, q in enumerate(owner):
        if q in step_scores:
            step_scores[q].append(scores[row])
    results, summary = rerank([questions[q] for q in kept], [step_scores[q] for q in kept], aggregation)
    summary["questions_read"] = len(questions) + skipped.total() - len(failed)
    summary["skipped"] = skipped.summary()
    return results, summary
