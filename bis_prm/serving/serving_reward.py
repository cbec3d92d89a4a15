"""The endpoints of `bis-prm serve`, one class each: a request model in, a response model out, no HTTP.

[`ServingStepScores`] (`POST /v1/score_steps`) scores rows as they are sent. [`ServingReward`] (`POST /get_reward`,
OpenRLHF's protocol) turns each query into a row first ([`RewardConfig.row`]): the response is the query after its
prompt, split into steps by [`~bis_prm.data.steps.split_steps`], the question is the prompt (or the part of it
`question_pattern` names); the step scores are aggregated into the reward
by [`~bis_prm.model.inference.aggregate_scores`]. Rows go through the [`~bis_prm.serving.engine.BatchingEngine`],
merged with the rows of every other request in flight.

A row that cannot be scored never fails its request: it gets a [`~bis_prm.serving.protocol.RowError`] and the
others are scored.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from bis_prm.data.steps import STEP_SEPARATOR, split_steps
from bis_prm.model.inference import AGGREGATIONS, aggregate_scores
from bis_prm.model.processing_prm import ExampleError
from bis_prm.serving.engine import BatchingEngine
from bis_prm.serving.media import MediaError, load_request_image
from bis_prm.serving.protocol import (
    RewardRequest,
    RewardResponse,
    RowError,
    ScoreStepsRequest,
    ScoreStepsResponse,
    StepRow,
)

__all__ = ["RewardConfig", "ServingReward", "ServingStepScores"]

logger = logging.getLogger(__name__)


@dataclass
class RewardConfig:
    """
    How the endpoints turn requests into rows and step scores into rewards.

    Args:
        aggregation (`str`, *optional*, defaults to `"min"`):
            `"min"`, `"mean"`, `"last"` or `"prod"` of the step scores: the reward of `/get_reward`.
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            What ends a step of a response.
        max_steps (`int`, *optional*, defaults to `12`):
            Responses with more pieces are merged into this many steps (VisualPRM's setting); `None` for no limit.
        unscorable_reward (`float`, *optional*, defaults to `0.0`):
            The reward (and score) of a query that cannot be scored (no step, no prompt prefix, too long, ...);
            `None` sends `null`. OpenRLHF turns every reward into a tensor, so it needs a number. Each such row is
            flagged in `extra_logs["prm_unscorable"]` and named in `errors`.
        allowed_local_media_path (`str`, *optional*):
            A directory whose files requests may name as images; `None` (the default): data URLs only.
        question_pattern (`str`, *optional*):
            A regular expression whose group `question` (or first group) is the question within a `/get_reward`
            prompt, e.g. the last user turn of a ChatML prompt: `user\\n(?P<question>.*?)<[|]im_end[|]>` (the last
            match counts); a prompt it does not match is the question as it is. `None`: the whole prompt.
        strip_suffixes (`tuple[str, ...]`, *optional*, defaults to `()`):
            Markers cut from the end of a `/get_reward` response before it is split, e.g. the policy's
            end-of-sequence token that OpenRLHF decodes with the text (`"<|im_end|>"`, `"</s>"`).
    """

    aggregation: str = "min"
    separator: str = STEP_SEPARATOR
    max_steps: int | None = 12
    unscorable_reward: float | None = 0.0
    allowed_local_media_path: str | os.PathLike | None = None
    question_pattern: str | None = None
    strip_suffixes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}.")
        if not self.separator:
            raise ValueError("The step separator must not be empty.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}.")
        self._question = re.compile(self.question_pattern, re.DOTALL) if self.question_pattern else None
        if self._question is not None and self._question.groups == 0:
            raise ValueError(f"question_pattern needs a group around the question: {self.question_pattern!r}")
        self.strip_suffixes = tuple(suffix for suffix in self.strip_suffixes if suffix)

    def question(self, prompt: str) -> str:
        """The question within a `/get_reward` prompt (see `question_pattern`)."""
        matches = list(self._question.finditer(prompt)) if self._question is not None else []
        if not matches:
            return prompt
        match = matches[-1]
        return match.group("question") if "question" in match.re.groupindex else match.group(1)

    def response(self, text: str) -> str:
        """`text` without trailing whitespace and `strip_suffixes` (repeatedly, in any order)."""
        text, stripped = text.rstrip(), True
        while stripped:
            stripped = False
            for suffix in self.strip_suffixes:
                if text.endswith(suffix):
                    text, stripped = text[: -len(suffix)].rstrip(), True
        return text

    def row(self, query: str, prompt: str) -> dict[str, Any] | ExampleError:
        """
        The row `/get_reward` scores for one query: the question within `prompt`, and the response
        (`query[len(prompt):]`) split into steps; an `ExampleError` for a query that does not start with its prompt
        (`query_without_prompt`) or a response without a step (`no_steps`).

        Example:

        ```python
        >>> RewardConfig().row("Q?\\nA.\\n\\nB.", "Q?\\n")
        {'question': 'Q?\\n', 'steps': ['A.', 'B.'], 'image': None}

        ```
        """
        if not query.startswith(prompt):
            return ExampleError("query_without_prompt", "the query does not start with its prompt")
        steps = split_steps(self.response(query[len(prompt) :]), self.separator, self.max_steps)
        if not steps:
            return ExampleError("no_steps", "the response has no step (it is empty or only separators)")
        return {"question": self.question(prompt), "steps": steps, "image": None}


def _row_error(error: ExampleError | MediaError) -> RowError:
    return RowError(reason=error.reason, message=getattr(error, "detail", None) or str(error))


class ServingStepScores:
    """
    `POST /v1/score_steps`: per row, its step probabilities or its error.

    Example:

    ```python
    >>> serving = ServingStepScores(engine, RewardConfig())  # doctest: +SKIP
    >>> request = ScoreStepsRequest(rows=[{"question": "1+1?", "steps": ["1+1=2."]}])
    >>> await serving.score_steps(request)  # doctest: +SKIP
    ScoreStepsResponse(scores=[[0.93]], errors=[None])

    ```
    """

    def __init__(self, engine: BatchingEngine, config: RewardConfig):
        self.engine, self.config = engine, config

    def _to_row(self, row: StepRow) -> dict[str, Any] | ExampleError | MediaError:
        if row.image is None:
            return {"question": row.question, "steps": row.steps, "image": None}
        values = [row.image] if isinstance(row.image, str) else row.image
        try:
            images = [load_request_image(value, self.config.allowed_local_media_path) for value in values]
        except MediaError as error:
            return error
        return {"question": row.question, "steps": row.steps, "image": images[0] if len(images) == 1 else images}

    async def score_rows(
        self, rows: list[dict[str, Any] | ExampleError | MediaError]
    ) -> list[list[float] | ExampleError | MediaError]:
        """Score the rows that are dicts through the engine; errors stay in place."""
        scorable = [position for position, row in enumerate(rows) if isinstance(row, dict)]
        results: list[Any] = list(rows)
        for position, result in zip(scorable, await self.engine.score([rows[p] for p in scorable]), strict=True):
            results[position] = result
        return results

    async def score_steps(self, request: ScoreStepsRequest) -> ScoreStepsResponse:
        results = await self.score_rows([self._to_row(row) for row in request.rows])
        scores = [result if isinstance(result, list) else None for result in results]
        errors = [None if isinstance(result, list) else _row_error(result) for result in results]
        return ScoreStepsResponse(scores=scores, errors=errors)


class ServingReward:
    """
    `POST /get_reward` (OpenRLHF's remote reward): one reward per query, the aggregated step scores of its
    response.

    The response is `query[i][len(prompts[i]):]`; a query that does not start with its prompt is not guessed at: it
    gets the error `query_without_prompt` (and `unscorable_reward`).

    Example:

    ```python
    >>> serving = ServingReward(ServingStepScores(engine, RewardConfig(aggregation="min")))  # doctest: +SKIP
    >>> await serving.create_reward(RewardRequest(query=["Q?A.\\n\\nB."], prompts=["Q?"]))  # doctest: +SKIP
    RewardResponse(rewards=[0.41], scores=[0.41], extra_logs={...}, errors=[None])

    ```
    """

    def __init__(self, steps: ServingStepScores):
        self.steps, self.config = steps, steps.config

    async def create_reward(self, request: RewardRequest) -> RewardResponse:
        rows = [self.config.row(query, prompt) for query, prompt in zip(request.query, request.prompts, strict=True)]
        results = await self.steps.score_rows(rows)
        rewards, errors, num_steps = [], [], []
        for result in results:
            if isinstance(result, list) and result:
                rewards.append(aggregate_scores(result, self.config.aggregation))
                errors.append(None)
                num_steps.append(float(len(result)))
            else:
                failure = result if not isinstance(result, list) else ExampleError("no_steps", "no step was scored")
                rewards.append(self.config.unscorable_reward)
                errors.append(_row_error(failure))
                num_steps.append(0.0)
        unscorable = [float(error is not None) for error in errors]
        if any(unscorable):
            logger.warning(
                "%d of %d queries could not be scored: %s",
                sum(unscorable),
                len(errors),
                sorted({error.reason for error in errors if error is not None}),
            )
        return RewardResponse(
            rewards=rewards,
            scores=rewards,
            extra_logs={"prm_num_steps": num_steps, "prm_unscorable": unscorable},
            errors=errors,
        )
