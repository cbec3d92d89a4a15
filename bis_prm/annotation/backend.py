"""The one interface between the annotation pipeline and a generation engine: continue these prefixes.

The pipeline never imports an engine. It hands a backend [`GenerationRequest`]s — a prompt, the assistant text
already written (a step prefix, empty for a rollout), and one seed per continuation — and gets back, in the same
order, one [`Generation`] each: the continuations' texts and what they cost in tokens. Work is keyed by stable ids
(`request_id` = sample id, step and continuation index), and each continuation's text depends on its seed only, not
on what else is in the batch: shards, retries and resumes cannot change, duplicate or lose a continuation.

Backends: `ScriptedBackend` (a function, for exact tests and simulations), `TransformersBackend`
(`bis_prm.annotation.transformers_backend`), `VLLMBackend` (`bis_prm.annotation.vllm_backend`) and
`VLLMServerBackend` (`bis_prm.annotation.vllm_server_backend`, a running vLLM server).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Generation", "GenerationBackend", "GenerationRequest", "ScriptedBackend"]


@dataclass(frozen=True)
class GenerationRequest:
    """
    Continuations of one prefix.

    Args:
        request_id (`str`): `<sample id>/step-<i>/<first index>` (or `<question id>/rollouts`): names the work.
        prompt (`str`): The user turn as the policy sees it (`<image>` placeholders included).
        images (`tuple[str, ...]`): Absolute paths of the images, in placeholder order.
        prefix (`str`): The assistant text the continuations start from (empty for a rollout).
        seeds (`tuple[int, ...]`): One seed per continuation.
        indices (`tuple[int, ...]`): Each continuation's index among those of its prefix (0, 1, ...).
        max_new_tokens (`int`): The token budget of the whole response; a continuation gets what the prefix leaves.
    """

    request_id: str
    prompt: str
    images: tuple[str, ...]
    prefix: str
    seeds: tuple[int, ...]
    indices: tuple[int, ...]
    max_new_tokens: int


@dataclass
class Generation:
    """
    The continuations of one request, in seed order, and their cost.

    Args:
        texts (`list[str]`): The generated texts (without the prefix).
        prompt_tokens (`int`): Prompt (and prefix) tokens fed, summed over the continuations.
        cached_tokens (`int`): Of those, the tokens taken from a prefix cache instead of computed.
        generated_tokens (`int`): Tokens generated, summed over the continuations.
    """

    texts: list[str]
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0


class GenerationBackend(Protocol):
    """What the pipeline needs from an engine: `generate(requests) -> generations` in order, and a name."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...


class ScriptedBackend:
    """
    A backend whose continuations come from a function `script(request, index, seed) -> str`: exact tests and
    simulations. Tokens are counted as whitespace-separated words.

    Example:

    ```python
    >>> backend = ScriptedBackend(lambda request, index, seed: f"The answer is {index}.")
    >>> request = GenerationRequest("q/step-1/0", "1 + 1?", (), "", (7, 8), (0, 1), 16)
    >>> backend.generate([request])[0].texts
    ['The answer is 0.', 'The answer is 1.']

    ```
    """

    def __init__(self, script: Callable[[GenerationRequest, int, int], str], name: str = "scripted"):
        self.script = script
        self.name = name

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        out = []
        for request in requests:
            texts = [
                self.script(request, index, seed) for index, seed in zip(request.indices, request.seeds, strict=True)
            ]
            fed = len(request.prompt.split()) + len(request.prefix.split())
            out.append(
                Generation(
                    texts=texts,
                    prompt_tokens=fed * len(texts),
                    generated_tokens=sum(len(text.split()) for text in texts),
                )
            )
        return out
