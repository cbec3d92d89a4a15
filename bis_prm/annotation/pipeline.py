"""The Monte-Carlo annotation pipeline, as VisualPRM400K was made: questions in, a VisualPRM400K-Raw corpus out.

For each question, `num_rollouts` responses are sampled from the policy (or the row's own `response` / `steps` is
used); each response is split into steps ([`~bis_prm.data.steps.split_steps`]: on `"\\n\\n"`, merged to at most 12);
for each step, continuations are sampled from exactly the prefix that ends with it (the steps so far, joined by the
separator, followed by it) and each completed solution (prefix + continuation) is checked against the gold answer
([`~bis_prm.annotation.verify.AnswerChecker`]); a step's score is `num_mc_correct / num_mc_total`. How many
continuations a step gets is the estimator's choice (`bis_prm.annotation.estimators`: full MC with early stop, or
the budgeted one).

Ids and seeds are stable: a sample is `<question id>-<rollout index>`, and continuation `j` of step `i` of a sample
has the seed `hash(seed, sample id, i, j)` (a rollout: `hash(seed, question id, "rollout", r)`), so that the corpus
depends on the configuration only — not on batching, on workers or on interruptions.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bis_prm.data.images import resolve_image
from bis_prm.data.steps import split_steps

from .backend import GenerationBackend, GenerationRequest
from .config import AnnotateConfig
from .cost import CostCounter
from .estimators import FullMC, make_estimator
from .questions import Question, policy_prompt
from .verify import AnswerChecker

__all__ = ["AnnotatedSample", "annotate_questions", "derive_seed", "refine_samples", "step_prefixes"]


def derive_seed(*parts: Any) -> int:
    """
    A 63-bit seed from any parts (stable across processes and machines, unlike `hash`).

    Example:

    ```python
    >>> derive_seed(0, "q1-0", 2, 5) == derive_seed(0, "q1-0", 2, 5) != derive_seed(0, "q1-0", 2, 6)
    True

    ```
    """
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def step_prefixes(steps: Sequence[str], separator: str = "\n\n") -> list[str]:
    """
    The assistant text each step's continuations start from: the steps up to it, each followed by the separator
    (the last step's prefix is the whole response). Each prefix is a string prefix of the next.

    Example:

    ```python
    >>> step_prefixes(["a", "b", "c"])
    ['a\\n\\n', 'a\\n\\nb\\n\\n', 'a\\n\\nb\\n\\nc']

    ```
    """
    return [separator.join(steps[: i + 1]) + (separator if i + 1 < len(steps) else "") for i in range(len(steps))]


@dataclass
class AnnotatedSample:
    """One rollout being annotated: its id, text, steps, own outcome and estimator."""

    question: Question
    order: int
    rollout_index: int
    response: str
    steps: list[str]
    outcome: bool
    estimator: Any = None
    prefixes: list[str] = field(default_factory=list)

    @property
    def sample_id(self) -> str:
        return f"{self.question.question_id}-{self.rollout_index}"


def _images(question: Question) -> tuple[str, ...]:
    return tuple(str(resolve_image(path, question.image_root).resolve()) for path in question.images)


def _row(sample: AnnotatedSample, config: AnnotateConfig, image_paths: list[str]) -> dict[str, Any]:
    """The sample in the VisualPRM400K-Raw layout, plus provenance."""
    question = sample.question
    scores = [(correct / total if total else 0.0, correct, total) for correct, total in sample.estimator.counts]
    image: str | list[str] = image_paths if question.image_is_list or len(image_paths) != 1 else image_paths[0]
    row = {
        "image": image,
        "question": policy_prompt(question.question, len(question.images), config.instruction),
        "question_orig": question.question,
        "answer": question.answer,
        "response": sample.response,
        "steps_with_score": [
            {"step": step, "score": score, "num_mc_correct": correct, "num_mc_total": total}
            for step, (score, correct, total) in zip(sample.steps, scores, strict=True)
        ],
        "num_mc_sequences": config.num_mc,
        "policy_model": config.policy,
        "rollout_index": sample.rollout_index,
        "sample_id": sample.sample_id,
    }
    if not image_paths:
        # the VisualPRM400K loader reads `image: []` as text-only; the stepwise columns also let `bis-prm select
        # --layout stepwise` (and the text sample's recipes) read text-only rows
        row["steps"] = list(sample.steps)
        row["mc_scores"] = [score for score, _, _ in scores]
    return row


def annotate_questions(
    questions: Sequence[tuple[int, Question]],
    backend: GenerationBackend,
    checker: AnswerChecker,
    config: AnnotateConfig,
    cost: CostCounter,
    image_path=None,
) -> list[dict[str, Any]]:
    """
    Annotate a batch of questions: sample their rollouts, run the estimator of every rollout to the end in rounds
    (one backend call per round, the draws of all rollouts together), and return the part records: one per
    annotated sample (`question_id`, `sample_id`, `source`, `order`, `row`) and one per question left without a
    sample (`question_id`, `skipped`).

    Args:
        questions (`Sequence[tuple[int, Question]]`): The questions with their positions in the input.
        backend ([`GenerationBackend`]): The engine.
        checker ([`AnswerChecker`]): Checks completed solutions.
        config ([`AnnotateConfig`]): Rollouts, K, sampling, estimator.
        cost ([`CostCounter`]): Receives the tokens and continuations spent.
        image_path (`Callable[[Question, str], str]`, *optional*): Maps an input image path to its path in the
            corpus (the store copies it); defaults to the input path.
    """
    started = time.perf_counter()
    image_path = image_path or (lambda question, path: path)
    samples: list[AnnotatedSample] = []
    to_sample = [(order, q) for order, q in questions if q.response is None and q.steps is None]
    requests = [
        GenerationRequest(
            request_id=f"{q.question_id}/rollouts",
            prompt=policy_prompt(q.question, len(q.images), config.instruction),
            images=_images(q),
            prefix="",
            seeds=tuple(derive_seed(config.seed, q.question_id, "rollout", r) for r in range(config.num_rollouts)),
            indices=tuple(range(config.num_rollouts)),
            max_new_tokens=config.max_new_tokens,
        )
        for _, q in to_sample
    ]
    responses = {}
    for (_, q), generation in zip(to_sample, backend.generate(requests) if requests else [], strict=True):
        cost.add_rollouts(generation)
        responses[q.question_id] = generation.texts
    records = []
    for order, q in questions:
        texts = responses.get(q.question_id, [q.response if q.steps is None else config.separator.join(q.steps)])
        kept = 0
        for r, text in enumerate(texts):
            steps = list(q.steps) if q.steps is not None else split_steps(text, config.separator, config.max_steps)
            if not steps:
                continue
            outcome = checker(text, q.gold)
            estimator = make_estimator(config.estimator, len(steps), config.num_mc, outcome, config.initial_mc)
            samples.append(
                AnnotatedSample(q, order, r, text, steps, outcome, estimator, step_prefixes(steps, config.separator))
            )
            kept += 1
        if kept == 0:
            records.append({"question_id": q.question_id, "skipped": "no_steps"})
    _run_rounds(samples, backend, checker, config, cost)
    records += [_record(sample, config, image_path) for sample in samples]
    cost.wall_seconds += time.perf_counter() - started
    return records


def _record(sample: AnnotatedSample, config: AnnotateConfig, image_path, refined: bool = False) -> dict[str, Any]:
    paths = [image_path(sample.question, path) for path in sample.question.images]
    record = {
        "question_id": sample.question.question_id,
        "sample_id": sample.sample_id,
        "source": sample.question.source,
        "order": [sample.order, sample.rollout_index],
        "outcome": sample.outcome,
        "row": _row(sample, config, paths),
    }
    if hasattr(sample.estimator, "drawn"):  # what a refinement reuses
        record["drawn"] = sample.estimator.drawn()
    if refined:
        record["refined"] = True
    return record


def refine_samples(
    records: Sequence[dict[str, Any]],
    questions: dict[str, Question],
    backend: GenerationBackend,
    checker: AnswerChecker,
    config: AnnotateConfig,
    cost: CostCounter,
    image_path=None,
) -> list[dict[str, Any]]:
    """
    The second phase of the budgeted estimator: full Monte Carlo for the samples of `records` (first-phase part
    records), reusing the continuations they drew; returns their refined records (`refined: True`).
    """
    started = time.perf_counter()
    image_path = image_path or (lambda question, path: path)
    samples = []
    for record in records:
        row = record["row"]
        steps = [step["step"] for step in row["steps_with_score"]]
        known = [tuple(pair) for pair in record["drawn"]]
        samples.append(
            AnnotatedSample(
                questions[record["question_id"]],
                record["order"][0],
                row["rollout_index"],
                row["response"],
                steps,
                record["outcome"],
                FullMC(len(steps), config.num_mc, known=known),
                step_prefixes(steps, config.separator),
            )
        )
    _run_rounds(samples, backend, checker, config, cost)
    cost.wall_seconds += time.perf_counter() - started
    return [_record(sample, config, image_path, refined=True) for sample in samples]


def _run_rounds(
    samples: list[AnnotatedSample],
    backend: GenerationBackend,
    checker: AnswerChecker,
    config: AnnotateConfig,
    cost: CostCounter,
) -> None:
    while True:
        wanted = [(sample, draw) for sample in samples for draw in sample.estimator.pending()]
        if not wanted:
            return
        requests = []
        for sample, draw in wanted:
            indices = tuple(range(draw.first, draw.first + draw.n))
            requests.append(
                GenerationRequest(
                    request_id=f"{sample.sample_id}/step-{draw.step + 1}/{draw.first}",
                    prompt=policy_prompt(sample.question.question, len(sample.question.images), config.instruction),
                    images=_images(sample.question),
                    prefix=sample.prefixes[draw.step],
                    seeds=tuple(derive_seed(config.seed, sample.sample_id, draw.step, j) for j in indices),
                    indices=indices,
                    max_new_tokens=config.max_new_tokens,
                )
            )
        for (sample, draw), request, generation in zip(wanted, requests, backend.generate(requests), strict=True):
            cost.add_continuations(generation)
            correct = sum(checker(request.prefix + text, sample.question.gold) for text in generation.texts)
            sample.estimator.record(draw.step, correct, draw.n)
