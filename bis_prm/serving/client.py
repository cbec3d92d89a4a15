"""`RemoteScorer`: the step scores of a `bis-prm serve` server, in the shape of `StepScorer.score_rows`.

It sends rows to `POST /v1/score_steps` with the standard library's `urllib` (no dependency), images as data URLs
(PIL images as PNG, files as their bytes), and returns per row its step scores or an
[`~bis_prm.model.processing_prm.ExampleError`] with the server's reason and message. `bis_prm.PRMReward(url=...)`
scores through it, so a TRL reward is the same code in-process and remote.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from PIL import Image

from bis_prm.model.processing_prm import ExampleError
from bis_prm.serving.media import to_data_url

__all__ = ["RemoteScorer", "RemoteScorerError"]

SCORE_STEPS_PATH = "/v1/score_steps"


class RemoteScorerError(RuntimeError):
    """The server refused or failed a whole request (HTTP status `status`, the server's `message`), or cannot be
    reached (`status` is `None`)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _wire_image(image: Any) -> str | list[str] | None:
    if image is None or (isinstance(image, str) and not image):
        return None
    if isinstance(image, (list, tuple)):
        return [_wire_image(item) for item in image]
    if isinstance(image, Image.Image):
        return to_data_url(image)
    if isinstance(image, str) and image.startswith("data:"):
        return image
    return to_data_url(image)  # a path on this machine: its bytes travel, the server reads no file


def post_json(url: str, payload: dict | bytes, api_key: str | None = None, timeout: float = 600.0) -> dict:
    """
    POST `payload` as JSON (a dict, or JSON bytes) and return the JSON answer; a non-2xx answer or an unreachable
    server raises [`RemoteScorerError`] with the server's message.

    Example:

    ```python
    >>> post_json("http://127.0.0.1:8000/get_reward", {"query": ["Q?A."], "prompts": ["Q?"]})  # doctest: +SKIP
    {'rewards': [0.41], 'scores': [0.41], 'extra_logs': {...}, 'errors': [None]}

    ```
    """
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace")
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body or error.reason
        raise RemoteScorerError(f"{url} answered {error.code}: {message}", error.code) from None
    except (urllib.error.URLError, OSError) as error:
        raise RemoteScorerError(f"cannot reach {url}: {getattr(error, 'reason', error)}") from None


class RemoteScorer:
    """
    Score rollouts on a `bis-prm serve` server; `score_rows` returns exactly what
    [`~bis_prm.model.inference.StepScorer.score_rows`] returns for the server's PRM.

    Args:
        url (`str`):
            The server, `http://host:port` (or its `/v1/score_steps` endpoint).
        api_key (`str`, *optional*):
            The server's `--api-key`.
        timeout (`float`, *optional*, defaults to `600.0`):
            Seconds to wait for an answer.
        max_request_bytes (`int`, *optional*, defaults to 16 MiB):
            Rows are sent in requests of at most this many bytes (half the server's default limit), so that many
            images do not make one request too large; a row larger than that goes alone.

    Example:

    ```python
    >>> scorer = RemoteScorer("http://127.0.0.1:8000", api_key="secret")  # doctest: +SKIP
    >>> rows = [{"question": "1+1?", "steps": ["1+1=2.", "So 2."]}, {"question": "?", "steps": []}]
    >>> scorer.score_rows(rows)  # doctest: +SKIP
    [[0.91, 0.88], ExampleError('The rollout has no step to score.')]

    ```
    """

    def __init__(
        self, url: str, api_key: str | None = None, timeout: float = 600.0, max_request_bytes: int = 16 * 2**20
    ):
        url = url.rstrip("/")
        self.url = url if url.endswith(SCORE_STEPS_PATH) else url + SCORE_STEPS_PATH
        self.api_key, self.timeout, self.max_request_bytes = api_key, timeout, max_request_bytes

    def score_rows(self, rows: Sequence[dict[str, Any]]) -> list[list[float] | ExampleError]:
        """Per row, in order, its step scores or the [`~bis_prm.model.processing_prm.ExampleError`] that kept it
        from being scored (a local image that cannot be read included); [`RemoteScorerError`] when the whole
        request fails."""
        results: list[list[float] | ExampleError | None] = [None] * len(rows)
        chunks: list[tuple[list[int], list[str]]] = []  # (positions, rows as JSON) of each request
        size = 0
        for position, row in enumerate(rows):
            try:
                image = _wire_image(row.get("image"))
            except OSError as error:
                results[position] = ExampleError("missing_image", f"image cannot be read: {error}")
                continue
            wire = json.dumps({"question": row["question"], "steps": list(row["steps"]), "image": image})
            if not chunks or size + len(wire) + 1 > self.max_request_bytes:
                chunks.append(([], []))
                size = len('{"rows": []}')
            chunks[-1][0].append(position)
            chunks[-1][1].append(wire)
            size += len(wire) + 1
        for positions, wire_rows in chunks:
            body = ('{"rows": [' + ",".join(wire_rows) + "]}").encode()
            answer = post_json(self.url, body, self.api_key, self.timeout)
            for position, scores, error in zip(positions, answer["scores"], answer["errors"], strict=True):
                results[position] = scores if error is None else ExampleError(error["reason"], error["message"])
        return results  # type: ignore[return-value]
