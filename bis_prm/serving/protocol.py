"""The wire format of `bis-prm serve`: one pydantic model per request and response body.

- `POST /get_reward`: OpenRLHF's remote reward protocol (`--reward.remote_url`). OpenRLHF sends
  `{"query": [...], "prompts": [...], "labels": [...]}` (`openrlhf/utils/agent.py`, `SingleTurnAgentExecutor`:
  the decoded prompt + response, the prompt, the label) and reads `rewards`, `scores` (for dynamic filtering) and
  `extra_logs` (each value one number per row, logged as it is) from the answer. `errors` is ours: OpenRLHF ignores it.
- `POST /v1/score_steps`: rows `{question, steps, image?}` -> per-step P(correct) per row, or the row's error.
- `GET /health`.

Errors are vLLM's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

__all__ = [
    "ErrorInfo",
    "ErrorResponse",
    "HealthResponse",
    "RewardRequest",
    "RewardResponse",
    "RowError",
    "ScoreStepsRequest",
    "ScoreStepsResponse",
    "StepRow",
]


class RowError(BaseModel):
    """Why one row could not be scored: `reason` is a stable name to count (`no_steps`, `query_without_prompt`,
    `image_not_allowed`, `image_unreadable`, `image_for_text_model`, `backend_error`, ...)."""

    reason: str
    message: str


class RewardRequest(BaseModel):
    """OpenRLHF's reward request: `query[i]` is prompt + response as the policy decoded it, `prompts[i]` its prompt
    (the PRM's question); `labels` (the ground truth) are accepted and not used: a PRM judges the steps."""

    query: list[str]
    prompts: list[str]
    labels: list[Any] | None = None

    @model_validator(mode="after")
    def _same_lengths(self) -> RewardRequest:
        if len(self.prompts) != len(self.query):
            raise ValueError(f"prompts has {len(self.prompts)} entries and query {len(self.query)}; one per query")
        if self.labels is not None and len(self.labels) != len(self.query):
            raise ValueError(f"labels has {len(self.labels)} entries and query {len(self.query)}; one per query")
        return self


class RewardResponse(BaseModel):
    """One reward per query (the aggregated step scores; `None` or the server's `--unscorable-reward` for a row
    that cannot be scored, see `errors`), `scores` equal to `rewards`, and per-row numbers in `extra_logs`."""

    rewards: list[float | None]
    scores: list[float | None]
    extra_logs: dict[str, list[float]]
    errors: list[RowError | None]


class StepRow(BaseModel):
    """A rollout to score. `image`: `data:image/...;base64,...` URLs, or file paths when the server was started
    with `--allowed-local-media-path` (inside that directory only)."""

    question: str
    steps: list[str]
    image: str | list[str] | None = None


class ScoreStepsRequest(BaseModel):
    rows: list[StepRow]


class ScoreStepsResponse(BaseModel):
    """Per row, in order: its step probabilities and `None`, or `None` and its error."""

    scores: list[list[float] | None]
    errors: list[RowError | None]


class HealthResponse(BaseModel):
    status: str = "ok"
    model: str
    backends: list[str]
    stats: dict[str, int | float] = Field(default_factory=dict)


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo
