"""The transformers backend: `model.generate` on CPU or a small GPU, one seed per continuation.

The continuations of a request are generated as one batch (they share the prompt, so no padding). Sampling is
done by [`SeededSampling`], a logits processor that draws each row's token with that row's own `torch.Generator`
(temperature and top-p applied) and hands `generate` a one-hot choice (greedy decoding then takes it): a
continuation depends on its seed only, not on the batch it runs in — what makes resumes and Ray shards give the same
corpus. A continuation from a prefix of `p` tokens gets `max_new_tokens - p` new tokens. Images (a VLM policy) go
through the model's processor and chat template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .backend import Generation, GenerationRequest

__all__ = ["SeededSampling", "TransformersBackend", "chat_prompt", "token_counters"]

_PLACEHOLDER = re.compile(r"(?:Image-\d+: )?<image>\n?")


def chat_prompt(tokenizer, prompt: str) -> str:
    """
    The text a text-only policy is fed for `prompt`: its chat template with the generation prompt, or the prompt
    and a newline for a base model without a template. The continuations' prefixes follow it.

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> chat_prompt(tiny_tokenizer("qwen2"), "1 + 1?")
    '<|im_start|>user\\n1 + 1?<|im_end|>\\n<|im_start|>assistant\\n'

    ```
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return prompt + "\n"
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class SeededSampling(LogitsProcessor):
    """
    Sample every row from its own generator: temperature, then top-p, then a draw; returns logits that are 0 at
    the drawn token and -inf elsewhere (run with greedy decoding).

    Example:

    ```python
    >>> sampler = SeededSampling([0, 0, 1], temperature=1.0)
    >>> choice = sampler(None, torch.zeros(3, 5)).argmax(-1)
    >>> bool(choice[0] == choice[1])  # the same seed draws the same token
    True

    ```
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_p: float = 1.0, device="cpu"):
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest set whose mass reaches top_p (the most likely token always)
            drop = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        chosen = torch.stack(
            [
                torch.multinomial(row, 1, generator=generator)
                for row, generator in zip(probs, self.generators, strict=True)
            ]
        )
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)


class TransformersBackend:
    """
    Continuations with `model.generate` (see the module docstring).

    Args:
        model_name_or_path (`str`): A causal LM, or a VLM (`AutoModelForImageTextToText`) for questions with images.
        temperature (`float`, *optional*, defaults to `0.7`), top_p (`float`, *optional*, defaults to `1.0`):
            Sampling parameters.
        device (`str`, *optional*): Defaults to CUDA when available.
        dtype (`torch.dtype`, *optional*, defaults to `"auto"`).

    Example:

    ```python
    >>> backend = TransformersBackend("Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
    >>> request = GenerationRequest("q/step-1/0", "What is 2 + 3?", (), "2 + 3 = 5.\\n\\n", (1, 2), (0, 1), 64)
    >>> len(backend.generate([request])[0].texts)  # doctest: +SKIP
    2

    ```
    """

    name = "transformers"

    def __init__(
        self,
        model_name_or_path: str,
        temperature: float = 0.7,
        top_p: float = 1.0,
        device: str | None = None,
        dtype: str | torch.dtype = "auto",
    ):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        config = AutoConfig.from_pretrained(model_name_or_path)
        self.multimodal = hasattr(config, "vision_config")
        model_class = AutoModelForImageTextToText if self.multimodal else AutoModelForCausalLM
        self.model = model_class.from_pretrained(model_name_or_path, dtype=dtype).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(model_name_or_path)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.temperature, self.top_p = temperature, top_p

    def _prompt_text(self, request: GenerationRequest) -> str:
        if not request.images:
            return chat_prompt(self.tokenizer, request.prompt)
        text = _PLACEHOLDER.sub("", request.prompt)
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return [self._generate_one(request) for request in requests]

    def _generate_one(self, request: GenerationRequest) -> Generation:
        n = len(request.seeds)
        prefix_ids = self.tokenizer(request.prefix, add_special_tokens=False).input_ids if request.prefix else []
        budget = request.max_new_tokens - len(prefix_ids)
        text = self._prompt_text(request) + request.prefix
        if request.images:
            from bis_prm.data.images import open_image

            images = [open_image(path) for path in request.images]
            inputs = self.processor(text=[text] * n, images=[images] * n, return_tensors="pt")
        else:
            inputs = self.tokenizer([text] * n, return_tensors="pt", add_special_tokens=False)
        inputs = inputs.to(self.device)
        length = inputs["input_ids"].shape[1]
        if budget <= 0:
            return Generation([""] * n, prompt_tokens=n * length)
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        pad = pad[0] if isinstance(pad, list) else pad
        output = self.model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=budget,
            logits_processor=LogitsProcessorList(
                [SeededSampling(request.seeds, self.temperature, self.top_p, device=self.device)]
            ),
            pad_token_id=pad,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new = output[:, length:]
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        texts, generated = [], 0
        for row in new.tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))
            generated += end
            texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
        return Generation(texts, prompt_tokens=n * length, generated_tokens=generated)


def token_counters(model_name_or_path: str):
    """
    The dry run's token counters for a policy: `(count_prompt, count_text)`, the tokens of a prompt with the chat
    template applied, and of a plain text (a prefix). Loads the tokenizer only.

    Example:

    ```python
    >>> count_prompt, count_text = token_counters("Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
    >>> count_text("2 + 3 = 5.")  # doctest: +SKIP
    7

    ```
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)

    def count_text(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    return (lambda prompt: count_text(chat_prompt(tokenizer, prompt))), count_text
