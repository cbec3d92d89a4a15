"""The vLLM backend: `LLM.generate` with prefix caching, token-level prefixes, tensor / data parallelism, images.

vLLM is imported when the backend is created, never by the pipeline. What it is sent is built by
[`vllm_inputs`], a pure function (tested without vLLM):

- *Token-level prefixes.* A text-only prompt is sent as token ids: the chat-templated prompt's ids, then the prefix
  tokenized chunk by chunk, each chunk ending after a step separator ([`prefix_token_ids`]). The prefix of step
  `i + 1` then starts with exactly the ids of the prefix of step `i`, so with `enable_prefix_caching=True` each
  prefix reuses the KV cache of the one before (and the K continuations of a prefix share it).
- *Seeds.* By default each continuation is its own request (`SamplingParams(n=1, seed=<its seed>)`): continuation
  `j` of a step is the same whatever the estimator asks for at once, as the budgeted estimator's reuse of draws
  assumes; the K requests of a prefix share its cached prompt. `per_continuation_seeds=False` sends one request with
  `n=K, seed=<first seed>` instead (vLLM forks the K sequences after one prefill): deterministic too, but the first
  4 of 16 continuations then differ from 4 asked alone.
- *Budget.* `max_tokens` is the response budget minus the prefix's tokens.
- *Images.* A prompt with images is sent as text (the processor's chat template writes the model's image
  placeholders) with `multi_modal_data={"image": [...]}`; vLLM's prefix cache hashes the images with the tokens.

Scale-out: `tensor_parallel_size` shards the model over GPUs, `data_parallel_size` runs engine replicas (vLLM's own
data parallelism). Over several machines, `ray.data.llm` (`vLLMEngineProcessorConfig` + `build_llm_processor`) runs
the same requests — the rows of [`vllm_inputs`] as its `prompt` / `sampling_params` — on a Ray cluster; see
`docs/annotate.md`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .backend import Generation, GenerationRequest

__all__ = ["VLLMBackend", "prefix_token_ids", "vllm_inputs"]


def prefix_token_ids(tokenizer, prefix: str, separator: str = "\n\n") -> list[int]:
    """
    The token ids of `prefix`, tokenized in chunks that each end after a separator: a prefix that extends another at
    a separator extends its ids.

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> tokenizer = tiny_tokenizer("qwen2")
    >>> short = prefix_token_ids(tokenizer, "3 + 4 = 7.\\n\\n")
    >>> prefix_token_ids(tokenizer, "3 + 4 = 7.\\n\\nSo 7.")[: len(short)] == short
    True

    ```
    """
    chunks = prefix.split(separator)
    texts = [chunk + separator for chunk in chunks[:-1]] + ([chunks[-1]] if chunks[-1] else [])
    return [token for text in texts for token in tokenizer(text, add_special_tokens=False).input_ids]


def vllm_inputs(
    requests: Sequence[GenerationRequest],
    tokenizer,
    temperature: float = 0.7,
    top_p: float = 1.0,
    separator: str = "\n\n",
    per_continuation_seeds: bool = True,
    processor=None,
) -> list[dict[str, Any]]:
    """
    What [`VLLMBackend`] sends for `requests`: one entry per vLLM request, `{"request": <index in requests>,
    "prompt": <a TokensPrompt / TextPrompt dict>, "sampling_params": <SamplingParams keyword arguments>,
    "prompt_tokens": <int>}`; a request whose prefix fills the budget gets no entry (empty continuations).

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> request = GenerationRequest("s-0/step-1/0", "1 + 1?", (), "1 + 1 = 2.\\n\\n", (11, 12), (0, 1), 64)
    >>> entries = vllm_inputs([request], tiny_tokenizer("qwen2"))
    >>> [(entry["request"], entry["sampling_params"]["seed"], entry["sampling_params"]["n"]) for entry in entries]
    [(0, 11, 1), (0, 12, 1)]

    ```
    """
    from .transformers_backend import _PLACEHOLDER, chat_prompt

    prompt_ids: dict[str, list[int]] = {}
    out = []
    for index, request in enumerate(requests):
        prefix_ids = prefix_token_ids(tokenizer, request.prefix, separator)
        budget = request.max_new_tokens - len(prefix_ids)
        if budget <= 0:
            continue
        if request.images:
            from bis_prm.data.images import open_image

            content = [{"type": "image"} for _ in request.images]
            content.append({"type": "text", "text": _PLACEHOLDER.sub("", request.prompt)})
            text = (processor or tokenizer).apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
            prompt = {
                "prompt": text + request.prefix,
                "multi_modal_data": {"image": [open_image(path) for path in request.images]},
            }
            length = len(tokenizer(text, add_special_tokens=False).input_ids) + len(prefix_ids)
        else:
            if request.prompt not in prompt_ids:
                prompt_ids[request.prompt] = tokenizer(
                    chat_prompt(tokenizer, request.prompt), add_special_tokens=False
                ).input_ids
            ids = prompt_ids[request.prompt] + prefix_ids
            prompt, length = {"prompt_token_ids": ids}, len(ids)
        params = {"temperature": temperature, "top_p": top_p, "max_tokens": budget}
        groups = (
            [(seed, 1) for seed in request.seeds]
            if per_continuation_seeds
            else [(request.seeds[0], len(request.seeds))]
        )
        for seed, n in groups:
            out.append(
                {
                    "request": index,
                    "prompt": prompt,
                    "sampling_params": {**params, "n": n, "seed": seed},
                    "prompt_tokens": length,
                }
            )
    return out


class VLLMBackend:
    """
    Continuations with vLLM's offline `LLM.generate` (see the module docstring).

    Args:
        model (`str`): The policy (a local path or a Hub id).
        temperature (`float`, *optional*, defaults to `0.7`), top_p (`float`, *optional*, defaults to `1.0`).
        tensor_parallel_size (`int`, *optional*, defaults to `1`), data_parallel_size (`int`, *optional*,
            defaults to `1`): vLLM's parallelism.
        separator (`str`, *optional*, defaults to `"\\n\\n"`): Where prefixes are cut into token chunks.
        per_continuation_seeds (`bool`, *optional*, defaults to `True`): One request per continuation (see above).
        **llm_kwargs: More `vllm.LLM` arguments (`max_model_len`, `gpu_memory_utilization`, `limit_mm_per_prompt`).

    Example:

    ```python
    >>> backend = VLLMBackend("Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2)  # doctest: +SKIP
    >>> request = GenerationRequest("s-0/step-1/0", "1 + 1?", (), "1 + 1 = 2.\\n\\n", (11, 12), (0, 1), 512)
    >>> backend.generate([request])[0].cached_tokens  # doctest: +SKIP
    16

    ```
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        temperature: float = 0.7,
        top_p: float = 1.0,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        separator: str = "\n\n",
        per_continuation_seeds: bool = True,
        **llm_kwargs,
    ):
        from vllm import LLM, SamplingParams

        self._sampling_params = SamplingParams
        kwargs = {"enable_prefix_caching": True, "tensor_parallel_size": tensor_parallel_size, **llm_kwargs}
        if data_parallel_size > 1:
            kwargs["data_parallel_size"] = data_parallel_size
        self.llm = LLM(model=model, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.temperature, self.top_p = temperature, top_p
        self.separator, self.per_continuation_seeds = separator, per_continuation_seeds
        self.processor = None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if any(request.images for request in requests) and self.processor is None:
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.llm.llm_engine.model_config.model)
        entries = vllm_inputs(
            requests,
            self.tokenizer,
            self.temperature,
            self.top_p,
            self.separator,
            self.per_continuation_seeds,
            self.processor,
        )
        outputs = self.llm.generate(
            [entry["prompt"] for entry in entries],
            [self._sampling_params(**entry["sampling_params"]) for entry in entries],
            use_tqdm=False,
        )
        generations = [Generation(texts=[]) for _ in requests]
        for entry, output in zip(entries, outputs, strict=True):
            generation = generations[entry["request"]]
            generation.texts.extend(completion.text for completion in output.outputs)
            generation.prompt_tokens += entry["prompt_tokens"] * len(output.outputs)
            generation.cached_tokens += (getattr(output, "num_cached_tokens", None) or 0) * len(output.outputs)
            generation.generated_tokens += sum(len(completion.token_ids) for completion in output.outputs)
        for request, generation in zip(requests, generations, strict=True):
            if not generation.texts:  # the prefix filled the budget
                generation.texts = [""] * len(request.seeds)
        return generations
