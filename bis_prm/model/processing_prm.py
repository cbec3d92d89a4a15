"""Turning rollouts into PRM model inputs: prompt rendering, image loading/tiling and the batch collator.

A rollout is `{"image": ..., "question": str, "steps": list[str], "labels": list[float]}`. It is rendered as
`Question: {question}\\nProcess: {step_1}<prm>\\n\\n{step_2}<prm>...` inside the user turn of the backbone's own chat
template (images first; a text LM without a chat template, a base model, reads the prompt as it is), and every
`<prm>` token carries the label of its step. A text PRM's rollouts have no `image`. With
`prompt_format="bis_reference"` an InternVL PRM reads the BIS reference code's own training sequence instead (see
[`~bis_prm.data.prompt.internvl2_5_conversation`]).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from bis_prm.data.images import MAX_IMAGE_PIXELS, ImageProblem, open_image
from bis_prm.data.prompt import ExampleError, check_prompt_format, internvl2_5_conversation, render_prompt

__all__ = [
    "ExampleError",
    "PRMCollator",
    "adds_special_tokens",
    "apply_image_limits",
    "chat_text",
    "check_processor_format",
    "collate_skipping",
    "is_text_processor",
    "load_image",
    "render_prompt",
    "step_token_id",
    "tile_images",
    "tiled_size",
]

# Per-token processor outputs besides the tokenizer's own (Qwen2.5-VL marks image tokens in `mm_token_type_ids`).
_TOKEN_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")


def is_text_processor(processor) -> bool:
    """
    Whether `processor` is a text LM's tokenizer (a text PRM) rather than a multimodal processor.

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> is_text_processor(tiny_tokenizer("qwen2"))  # a text LM's tokenizer
    True

    ```
    """
    return not hasattr(processor, "image_processor")


def check_processor_format(processor, prompt_format: str) -> None:
    """
    Raise a `ValueError` when `processor` cannot render `prompt_format`: `"bis_reference"` is the InternVL template of
    the reference code, so it needs an InternVL processor whose tokenizer has `<|im_start|>` and `<|im_end|>` as
    single tokens.

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> check_processor_format(tiny_tokenizer("qwen2"), "bis_prm")

    ```
    """
    check_prompt_format(prompt_format)
    if prompt_format != "bis_reference":
        return
    from transformers import InternVLProcessor

    if not isinstance(processor, InternVLProcessor):
        raise ValueError(
            f"prompt_format='bis_reference' is the BIS reference code's InternVL2.5 template; it needs an "
            f"InternVLProcessor, not {type(processor).__name__}. Use prompt_format='bis_prm' (the backbone's own "
            "chat template) for other backbones."
        )
    tokenizer = processor.tokenizer
    for marker in ("<|im_start|>", "<|im_end|>"):
        if len(tokenizer(marker, add_special_tokens=False).input_ids) != 1:
            raise ValueError(f"prompt_format='bis_reference' needs {marker!r} as one token; this tokenizer splits it.")


def chat_text(processor, prompt: str, num_images: int = 0, prompt_format: str = "bis_prm") -> str:
    """
    The model's input text for a rendered PRM prompt: the user turn of the backbone's chat template, with `num_images`
    images before the prompt; for a text LM without a chat template (a base model), the prompt itself. With
    `prompt_format="bis_reference"`, the BIS reference code's InternVL sequence
    ([`~bis_prm.data.prompt.internvl2_5_conversation`]), starting with the BOS when the tokenizer adds one.

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> chat_text(tiny_tokenizer("qwen2"), "Question: 1 + 1?")
    '<|im_start|>user\\nQuestion: 1 + 1?<|im_end|>\\n'

    ```
    """
    if prompt_format == "bis_reference":
        tokenizer = processor.tokenizer
        bos = tokenizer.bos_token if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token else ""
        return internvl2_5_conversation(prompt, num_images, processor.image_token, bos)
    if getattr(processor, "chat_template", None) is None:
        return prompt
    if is_text_processor(processor):
        # tokenizers' chat templates take the content as a string (many would print a list of parts as it is)
        content = prompt
    else:
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def adds_special_tokens(processor, prompt_format: str = "bis_prm") -> bool:
    """
    Whether the tokenizer adds its special tokens (a BOS) to the model input: only for a text LM without a chat
    template, since a chat template writes them itself (and so does [`chat_text`] with `"bis_reference"`).

    Example:

    ```python
    >>> adds_special_tokens(processor)  # a VLM's processor: its chat template  # doctest: +SKIP
    False

    ```
    """
    if prompt_format == "bis_reference":
        return False
    return is_text_processor(processor) and getattr(processor, "chat_template", None) is None


def load_image(image: str | os.PathLike | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """
    Open an image (a path or a PIL image) as RGB.

    Raises:
        [`~bis_prm.data.images.ImageProblem`]: naming the path when the file is missing (`missing_image`), cannot be
        decoded (`image_unreadable`) or has more than `max_pixels` pixels (`image_too_large`, checked before
        decoding).

    Example:

    ```python
    >>> load_image(Image.new("L", (4, 4))).mode
    'RGB'

    ```
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return open_image(image, max_pixels)


def tile_images(images: Sequence[Image.Image], max_cols: int = 3) -> Image.Image:
    """
    Tile several images into one grid, for backbones that take a single image per prompt.

    Every cell is `max_w x max_h` (the largest width and height), the image centred on a white background; at most
    `max_cols` columns, filled row by row.

    Example:

    ```python
    >>> grid = tile_images([Image.new("RGB", (10, 20)), Image.new("RGB", (30, 10))] * 2, max_cols=3)
    >>> grid.size
    (90, 40)

    ```
    """
    if not images:
        raise ValueError("tile_images needs at least one image.")
    grid = Image.new("RGB", tiled_size([image.size for image in images], max_cols), "white")
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    cols = min(max_cols, len(images))
    for i, image in enumerate(images):
        row, col = divmod(i, cols)
        x = col * cell_w + (cell_w - image.width) // 2
        y = row * cell_h + (cell_h - image.height) // 2
        grid.paste(image.convert("RGB"), (x, y))
    return grid


def tiled_size(sizes: Sequence[tuple[int, int]], max_cols: int = 3) -> tuple[int, int]:
    """
    `(width, height)` of the grid [`tile_images`] makes from images of these `(width, height)` sizes.

    Example:

    ```python
    >>> tiled_size([(10, 20), (30, 10), (10, 20), (30, 10)])
    (90, 40)

    ```
    """
    cols = min(max_cols, len(sizes))
    rows = math.ceil(len(sizes) / cols)
    return cols * max(width for width, _ in sizes), rows * max(height for _, height in sizes)


def _example_images(example: dict[str, Any]) -> list[Image.Image]:
    images = example.get("image")
    if images is None or (isinstance(images, str) and not images):
        return []
    if not isinstance(images, (list, tuple)):
        images = [images]
    return [load_image(image) for image in images]


class PRMCollator:
    """
    Collate rollouts into a padded PRM batch: the processor's outputs plus step labels at the step-token positions.

    Args:
        processor ([`~transformers.ProcessorMixin`]):
            The backbone's processor; its tokenizer must know `step_token` (see `bis_prm.load_prm`).
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            The token placed after every step.
        max_length (`int`, *optional*):
            Truncate longer sequences to this many tokens (from the right). Steps whose step token is cut are dropped
            with their labels, so labels stay aligned to the surviving step tokens. Image tokens are never cut: a
            `max_length` that cannot hold the images, the question and one step raises a `ValueError`.
        padding_side (`str`, *optional*, defaults to `"right"`):
            `"right"` or `"left"`.
        label_field (`str`, *optional*, defaults to `"labels"`):
            Example key holding the per-step targets P(positive) in [0, 1] (hard 0/1 or soft MC scores). When no
            example has it, the batch has no `labels` (inference).
        max_images (`int`, *optional*):
            When an example has more images than this, they are tiled into one grid with `tile_images`. `None`
            passes every image to the processor (Qwen2.5-VL, InternVL and LLaVA processors take several).
        padding_free (`bool`, *optional*, defaults to `False`):
            Concatenate the rollouts of the batch into one row without padding (TRL's `padding_free`):
            `position_ids` restart at every rollout, and there is no `attention_mask`, so transformers masks attention
            to each rollout (varlen `flash_attention_2` on a GPU, a block-diagonal mask for `sdpa` and `eager`).
        rope_index (`Callable`, *optional*):
            With `padding_free`, the base model's `get_rope_index` for backbones with multimodal rotary positions
            (Qwen2-VL, Qwen2.5-VL): each rollout gets the positions it has on its own, and `position_ids` is
            `[4, 1, tokens]` (text positions first, as these models expect of packed inputs).
        prompt_format (`str`, *optional*, defaults to `"bis_prm"`):
            `"bis_prm"`, the prompt in the user turn of the backbone's chat template, or `"bis_reference"`, the BIS
            reference code's InternVL training sequence (InternVL processors only; see
            [`~bis_prm.data.prompt.internvl2_5_conversation`]).

    Returns from `__call__`: a dict with the processor's tensors (`input_ids`, `attention_mask`, `pixel_values`,
    `image_grid_thw`, ...), `labels` (float [batch, seq], -100 off the step tokens) and `num_steps` (long [batch],
    steps that survived truncation); with `padding_free`, one row and `position_ids` instead of `attention_mask`.
    A rollout that cannot be rendered raises an [`ExampleError`] naming it;
    [`~PRMCollator.collate_skipping`] leaves such rollouts out instead.

    Example:

    ```python
    >>> collator = PRMCollator(processor)  # doctest: +SKIP
    >>> batch = collator(  # doctest: +SKIP
    ...     [{"image": "cat.png", "question": "Is it a cat?", "steps": ["Yes."], "labels": [1.0]}]
    ... )
    >>> batch["labels"].shape == batch["input_ids"].shape  # doctest: +SKIP
    True

    ```
    """

    def __init__(
        self,
        processor,
        step_token: str = "<prm>",
        max_length: int | None = None,
        padding_side: str = "right",
        label_field: str = "labels",
        max_images: int | None = None,
        padding_free: bool = False,
        rope_index: Callable | None = None,
        prompt_format: str = "bis_prm",
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.step_token = step_token
        self.step_token_id = step_token_id(self.tokenizer, step_token)
        self.max_length = max_length
        self.padding_side = padding_side
        self.label_field = label_field
        self.max_images = max_images
        self.padding_free, self.rope_index = padding_free, rope_index
        self.image_token_id = getattr(processor, "image_token_id", None)
        self.text_only = is_text_processor(processor)
        check_processor_format(processor, prompt_format)
        self.prompt_format = prompt_format
        if getattr(processor, "chat_template", None) is None and not self.text_only:
            raise ValueError("The processor has no chat template; PRM prompts are rendered with the backbone's own.")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token` before collating batches.")

    def render(self, example: dict[str, Any], index: int = 0) -> tuple[str, list[Image.Image]]:
        """Render one example as (chat-formatted text, images); raises an [`ExampleError`] naming `index`."""
        if self.text_only and example.get("image") not in (None, "", [], ()):
            raise ExampleError("image_for_text_model", "the rollout has images but the PRM is a text model", index)
        try:
            images = _example_images(example)
            if self.max_images is not None and len(images) > self.max_images:
                images = [tile_images(images)]
            if not isinstance(example.get("question"), str) or not isinstance(example.get("steps"), (list, tuple)):
                raise ExampleError("wrong_type", "needs a `question` string and a `steps` list")
            prompt = render_prompt(example["question"], example["steps"], self.step_token, self.prompt_format)
        except (ExampleError, ImageProblem) as error:
            raise ExampleError(error.reason, str(error), example=index) from error
        return chat_text(self.processor, prompt, len(images), self.prompt_format), images

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labelled = self._has_labels(examples)
        rendered = [self._render_with_targets(example, index, labelled) for index, example in enumerate(examples)]
        return self._collate(examples, rendered, labelled, positions=range(len(examples)))

    def collate_skipping(
        self, examples: list[dict[str, Any]]
    ) -> tuple[dict[str, torch.Tensor] | None, list[int], list[tuple[int, str, str]]]:
        """
        Collate the examples that can be rendered and leave the others out.

        Returns:
            `tuple`: the batch of the kept examples (`None` when none is left), their positions in `examples`, and
            `(position, reason, message)` for every example left out.

        Example:

        ```python
        >>> batch, kept, failures = collator.collate_skipping([good, {"question": "q", "steps": []}])  # doctest: +SKIP
        >>> kept, failures[0][:2]  # doctest: +SKIP
        ([0], (1, 'no_steps'))

        ```
        """
        labelled = self._has_labels(examples)
        return collate_skipping(
            examples,
            lambda example, index: self._render_with_targets(example, index, labelled),
            lambda rendered, kept: self._collate([examples[i] for i in kept], rendered, labelled, kept),
        )

    def _has_labels(self, examples: list[dict[str, Any]]) -> bool:
        return any(example.get(self.label_field) is not None for example in examples)

    def _render_with_targets(
        self, example: dict[str, Any], index: int, labelled: bool
    ) -> tuple[str, list[Image.Image], list[float] | None]:
        text, images = self.render(example, index)
        return text, images, self._targets(example, index) if labelled else None

    def _targets(self, example: dict[str, Any], index: int) -> list[float]:
        values = example.get(self.label_field)
        if values is None:
            raise ExampleError(
                "missing_labels", f"no {self.label_field!r} while other examples of the batch have them", example=index
            )
        try:
            targets = [float(label) for label in values]
        except (TypeError, ValueError):
            raise ExampleError("bad_label", f"labels must be numbers, got {values!r}", example=index) from None
        if len(targets) != len(example["steps"]):
            raise ExampleError(
                "length_mismatch",
                f"{len(example['steps'])} steps but {len(targets)} labels in {self.label_field!r}",
                example=index,
            )
        if any(not 0.0 <= target <= 1.0 for target in targets):
            raise ExampleError("bad_label", f"labels must lie in [0, 1], got {targets}", example=index)
        return targets

    def _collate(
        self, examples: list[dict[str, Any]], rendered: list, labelled: bool, positions: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        texts = [text for text, _, _ in rendered]
        images = [image for _, example_images, _ in rendered for image in example_images]
        kwargs = {"images": images} if images else {}
        if self.text_only or self.prompt_format == "bis_reference":
            kwargs["add_special_tokens"] = adds_special_tokens(self.processor, self.prompt_format)
        batch = self.processor(text=texts, padding=True, padding_side=self.padding_side, return_tensors="pt", **kwargs)
        batch = dict(batch)
        truncated = batch["attention_mask"].sum(dim=1) > (self.max_length or batch["input_ids"].shape[1])
        if truncated.any():
            batch = self._truncate(batch, positions)

        is_step = batch["input_ids"] == self.step_token_id
        num_steps = is_step.sum(dim=1)
        for index, example in enumerate(examples):
            found, expected = int(num_steps[index]), len(example["steps"])
            if found > expected or (found < expected and not truncated[index]):
                raise ExampleError(
                    "processing_failed",
                    f"found {found} step tokens {self.step_token!r} for {expected} steps; the chat template added "
                    "some or the tokenizer merged some with the text (use a special token)",
                    example=positions[index],
                )
        batch["num_steps"] = num_steps
        if labelled:
            labels = torch.full(is_step.shape, -100.0)
            for index, (_, _, targets) in enumerate(rendered):
                positions = is_step[index].nonzero().squeeze(1)
                labels[index, positions] = torch.tensor(targets[: len(positions)], dtype=torch.float)
            batch["labels"] = labels
        return self._pack(batch) if self.padding_free else batch

    def _pack(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The rows of a padded batch as one row: real tokens only, positions restarting at every rollout."""
        real = batch.pop("attention_mask").bool()
        lengths = real.sum(dim=1)
        text_positions = torch.cat([torch.arange(int(n)) for n in lengths])[None]
        if self.rope_index is not None:
            inputs = {key: batch[key] for key in ("input_ids", "mm_token_type_ids", "image_grid_thw") if key in batch}
            rope, _ = self.rope_index(**inputs, attention_mask=real.long())
            batch["position_ids"] = torch.cat([text_positions[None], rope[:, real][:, None]])
        else:
            batch["position_ids"] = text_positions
        per_token = [key for key, value in batch.items() if key != "position_ids" and value.shape[:2] == real.shape]
        for key in per_token:
            batch[key] = batch[key][real][None]
        return batch

    def _truncate(self, batch: dict[str, torch.Tensor], positions: Sequence[int]) -> dict[str, torch.Tensor]:
        """Keep the first `max_length` real tokens of every row and re-pad; refuse to cut image tokens."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"].bool()
        per_token = [key for key in (*self.tokenizer.model_input_names, *_TOKEN_TYPE_KEYS) if key in batch]
        lengths = attention_mask.sum(dim=1).clamp(max=self.max_length)
        width = int(lengths.max())
        out = {key: value for key, value in batch.items() if key not in per_token}
        for key in per_token:
            pad = self.tokenizer.pad_token_id if key == "input_ids" else 0
            out[key] = torch.full((len(input_ids), width), pad, dtype=batch[key].dtype)
        for row in range(len(input_ids)):
            real = attention_mask[row].nonzero().squeeze(1)
            kept, cut = real[: lengths[row]], real[lengths[row] :]
            image_cut = self.image_token_id is not None and bool((input_ids[row, cut] == self.image_token_id).any())
            if image_cut or not bool((input_ids[row, kept] == self.step_token_id).any()):
                raise ExampleError(
                    "too_long",
                    f"max_length={self.max_length} cannot hold the image(s), the question and one step "
                    f"({len(real)} tokens in all); raise max_length",
                    example=positions[row],
                )
            target = slice(0, len(kept)) if self.padding_side == "right" else slice(width - len(kept), width)
            for key in per_token:
                out[key][row, target] = batch[key][row, kept]
        return out


def collate_skipping(
    examples: Sequence[Any], render: Callable[[Any, int], Any], collate: Callable[[list, list[int]], Any]
) -> tuple[Any, list[int], list[tuple[int, str, str]]]:
    """
    Collate the examples that can be rendered and leave the others out: `render(example, position)` turns one
    example into what `collate(rendered, positions)` makes a batch of; either raises an [`ExampleError`] for an
    example it refuses. When the batch fails as a whole (a processor's own error on hostile input), the examples are
    collated one by one to find those it refuses.

    Returns:
        `tuple`: the batch of the kept examples (`None` when none is left), their positions in `examples`, and
        `(position, reason, message)` for every example left out.

    Example:

    ```python
    >>> def render(text, position):
    ...     if not text:
    ...         raise ExampleError("no_steps", "empty")
    ...     return text.upper()
    >>> collate_skipping(["a", "", "b"], render, lambda rendered, positions: "".join(rendered))
    ('AB', [0, 2], [(1, 'no_steps', 'empty')])

    ```
    """
    kept, rendered, failures = [], [], []
    for index, example in enumerate(examples):
        try:
            rendered.append(render(example, index))
            kept.append(index)
        except ExampleError as error:
            failures.append((index, error.reason, error.detail))
    if not kept:
        return None, kept, failures
    try:
        return collate(rendered, kept), kept, failures
    except Exception:  # the processor's own errors on hostile input come in many types
        pass
    # the batch was refused: collate one by one to find the examples refused
    good = []
    for index, item in zip(kept, rendered, strict=True):
        try:
            collate([item], [index])
            good.append((index, item))
        except Exception as error:
            failures.append(
                (index, getattr(error, "reason", "processing_failed"), getattr(error, "detail", str(error)))
            )
    failures.sort()
    if not good:
        return None, [], failures
    kept = [index for index, _ in good]
    return collate([item for _, item in good], kept), kept, failures


def apply_image_limits(processor, max_pixels: int | None, max_tiles: int | None) -> None:
    """
    Cap image sizes on a processor in place: `max_pixels` for dynamic-resolution processors (Qwen2.5-VL's
    `size["longest_edge"]`), `max_tiles` for tiling processors (InternVL's `max_patches`).

    Raises a `ValueError` naming the option when the processor has no such setting.

    Example:

    ```python
    >>> apply_image_limits(processor, max_pixels=1003520, max_tiles=None)  # doctest: +SKIP
    >>> processor.image_processor.size["longest_edge"]  # doctest: +SKIP
    1003520

    ```
    """
    image_processor = getattr(processor, "image_processor", None)
    if max_pixels is not None:
        size = getattr(image_processor, "size", None)
        if size is None or "longest_edge" not in size:
            raise ValueError(
                f"`max_pixels` needs a dynamic-resolution image processor; {type(image_processor).__name__} has none. "
                "Use `max_tiles` for tiling processors."
            )
        image_processor.size = {**dict(size), "longest_edge": max_pixels}
    if max_tiles is not None:
        if not hasattr(image_processor, "max_patches"):
            raise ValueError(
                f"`max_tiles` needs a tiling image processor; {type(image_processor).__name__} has none. "
                "Use `max_pixels` for dynamic-resolution processors."
            )
        image_processor.max_patches = max_tiles


def step_token_id(tokenizer, step_token: str) -> int:
    """
    The id of `step_token` in `tokenizer`, which must hold it as one (added) token.

    Example:

    ```python
    >>> from bis_prm.testing import tiny_tokenizer
    >>> tokenizer = tiny_tokenizer(vocab_size=600)
    >>> tokenizer.add_tokens(["<prm>"], special_tokens=True)
    1
    >>> step_token_id(tokenizer, "<prm>")
    600

    ```
    """
    ids = tokenizer.convert_tokens_to_ids([step_token])
    if (
        ids[0] is None
        or ids[0] == tokenizer.unk_token_id
        or len(tokenizer(step_token, add_special_tokens=False).input_ids) != 1
    ):
        raise ValueError(
            f"The tokenizer does not know the step token {step_token!r} as a single token; load the model and "
            "processor with `bis_prm.load_prm`, or add it with `tokenizer.add_special_tokens(...)`."
        )
    return ids[0]
