"""A verl reward function that asks a `bis-prm serve` server: `reward.custom_reward_function.path` points here.

verl calls `compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **kwargs)` for every
response (its `custom_reward_function.reward_kwargs` arrive in `kwargs`), and awaits it when it is a coroutine
function (the reward loop), so `name=compute_score_async` scores many responses concurrently without threads: the
server batches them. Both send OpenRLHF's `/get_reward` request with the question as the prompt, so the step
splitting and the aggregation are the server's (`--separator`, `--max-steps`, `--aggregation`).

The question is `extra_info["question"]` (put it there in the data preprocessing, next to `ground_truth`), else
empty. The server is `url=` (a reward kwarg) or `$BIS_PRM_REWARD_URL`, its key `api_key=` or `$BIS_PRM_API_KEY`.
The answer is a dict, which verl logs key by key: `score` (the reward), `prm_num_steps` and `prm_unscorable` (1.0 for
a response the server could not score: its score is the server's `--unscorable-reward`, 0.0 when that is `none`,
since verl needs a number).
"""

from __future__ import annotations

import os
from typing import Any

from bis_prm.serving.client import RemoteScorerError, post_json

__all__ = ["compute_score", "compute_score_async"]

URL_VARIABLE, API_KEY_VARIABLE = "BIS_PRM_REWARD_URL", "BIS_PRM_API_KEY"


def _request(solution_str: str, extra_info: dict | None, url: str | None, api_key: str | None) -> tuple:
    url = url or os.environ.get(URL_VARIABLE)
    if not url:
        raise ValueError(f"No reward server: pass url= in custom_reward_function.reward_kwargs or set ${URL_VARIABLE}")
    url = url.rstrip("/")
    url = url if url.endswith("/get_reward") else url + "/get_reward"
    question = str((extra_info or {}).get("question") or "")
    payload = {"query": [question + solution_str], "prompts": [question]}
    return url, payload, api_key or os.environ.get(API_KEY_VARIABLE)


def _result(answer: dict) -> dict[str, float]:
    reward = answer["rewards"][0]
    logs = {key: float(values[0]) for key, values in answer.get("extra_logs", {}).items()}
    return {"score": 0.0 if reward is None else float(reward), **logs}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    url: str | None = None,
    api_key: str | None = None,
    timeout: float = 600.0,
    **kwargs,
) -> dict[str, float]:
    """
    The PRM reward of one verl response (see the module docstring); `ground_truth` and `data_source` are not used.

    Example:

    ```python
    >>> url = "http://127.0.0.1:8000"
    >>> compute_score("gsm8k", "2 + 2 = 4.\\n\\nSo 4.", "4", {"question": "2 + 2?"}, url=url)  # doctest: +SKIP
    {'score': 0.87, 'prm_num_steps': 2.0, 'prm_unscorable': 0.0}

    ```
    """
    url, payload, api_key = _request(solution_str, extra_info, url, api_key)
    return _result(post_json(url, payload, api_key, timeout))


async def compute_score_async(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    url: str | None = None,
    api_key: str | None = None,
    timeout: float = 600.0,
    **kwargs,
) -> dict[str, float]:
    """
    [`compute_score`] as a coroutine (verl's reward loop awaits it), over `httpx`.

    Example:

    ```python
    >>> url = "http://127.0.0.1:8000"
    >>> await compute_score_async("gsm8k", "So 4.", "4", {"question": "2 + 2?"}, url=url)  # doctest: +SKIP
    {'score': 0.87, 'prm_num_steps': 1.0, 'prm_unscorable': 0.0}

    ```
    """
    import httpx

    url, payload, api_key = _request(solution_str, extra_info, url, api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(url, json=payload, headers=headers)
    except httpx.HTTPError as error:
        raise RemoteScorerError(f"cannot reach {url}: {error}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise RemoteScorerError(f"{url} answered {response.status_code}: {message}", response.status_code)
    return _result(response.json())
