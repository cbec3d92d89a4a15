"""Best-of-N: rerank N candidate solutions per question by their aggregated PRM step scores.

Candidates file (JSONL, one question per line):

    {"id": "q1", "image": ["img/q1.png"], "question": "...", "answer": "42",
     "candidates": [{"steps": ["...", "..."], "answer": "42"}, {"steps": ["..."], "correct": false}]}

`image` (paths relative to the file's folder, a string or a list) and `answer` are optional. A candidate is correct
when its `correct` flag says so, else when its `answer` equals the question's `answer` (stripped, case-insensitive);
accuracy is reported over the questions where every candidate's correctness is known.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path


def load_candidates(path: str | os.PathLike) -> list[dict]:
    """
    Read and check a candidates JSONL file (format in the module docstring); image paths are resolved.

    Example:
        >>> questions = load_candidates("candidates.jsonl")
        >>> len(questions[0]["candidates"])
        8
    """
    root = Path(path).parent
    questions = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                question = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: broken JSON ({err}).") from None
            if "question" not in question or not question.get("candidates"):
                raise ValueError(f"{where}: needs `question` and a non-empty `candidates` list.")
            for k, candidate in enumerate(question["candidates"]):
                if not candidate.get("steps"):
                    raise ValueError(f"{where}: candidate {k} has no `steps`.")
            images = question.get("image") or []
            images = [images] if isinstance(images, str) else images
            question["image"] = [str(root / image) if not os.path.isabs(image) else image for image in images]
            question.setdefault("id", line_number - 1)
            questions.append(question)
    return questions


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
) -> tuple[list[dict], dict]:
    """
    Score every candidate of a candidates file with a PRM and rerank them (see [`rerank`]).

    Example:
        >>> model, processor = load_prm("path/to/prm")
        >>> results, summary = best_of_n(model, processor, "candidates.jsonl", aggregation="min")
    """
    from bis_prm.model.inference import score_steps

    questions = load_candidates(candidates_file)
    examples = [
        {"image": q["image"], "question": q["question"], "steps": c["steps"]}
        for q in questions
        for c in q["candidates"]
    ]
    flat = iter(score_steps(model, processor, examples, batch_size=batch_size, progress=True, max_images=max_images))
    step_scores = [[next(flat) for _ in q["candidates"]] for q in questions]
    return rerank(questions, step_scores, aggregation)
