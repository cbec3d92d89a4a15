"""Scoring the steps of rollouts with a PRM, and aggregating step scores for Best-of-N.

Rollouts are scored in batches formed by total tokens (text + image tokens, image sizes read from the file headers):
sorted by length so that a batch pads little, capped by a row count and a token budget, and rendered (images
decoded, processor run) in `DataLoader` workers while the model runs. A rollout that cannot be rendered is reported
with its reason by [`StepScorer`]; [`score_steps`] raises on it.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from bis_prm.data.images import ImageProblem, read_image_size
from bis_prm.model.modeling_prm import positive_index
from bis_prm.model.processing_prm import (
    ExampleError,
    PRMCollator,
    adds_special_tokens,
    chat_text,
    collate_skipping,
    render_prompt,
    tiled_size,
)

__all__ = [
    "AGGREGATIONS",
    "ScoringStats",
    "StepScorer",
    "StepScorerBase",
    "aggregate_many",
    "aggregate_scores",
    "deal_batches",
    "plan_batches",
    "rollout_token_counts",
    "score_steps",
]

AGGREGATIONS = ("mean", "min", "last", "prod")

logger = logging.getLogger(__name__)


def _image_sizes(example: dict[str, Any]) -> list[tuple[int, int]]:
    """`(width, height)` of the example's images: given, from PIL images, or read from the file headers."""
    if example.get("image_sizes") is not None:
        return [tuple(size) for size in example["image_sizes"]]
    images = example.get("image")
    if images is None or (isinstance(images, str) and not images):
        return []
    images = images if isinstance(images, (list, tuple)) else [images]
    return [image.size if isinstance(image, Image.Image) else read_image_size(image) for image in images]


def _image_tokens(processor, sizes: list[tuple[int, int]], prompt_format: str = "bis_prm") -> int:
    """Tokens the processor adds for these images: each one-token placeholder of the chat template becomes the
    image's tokens."""
    if not sizes:
        return 0
    try:
        # the processors' own count of tokens per image size (the API vLLM uses), no image decoded
        counts = processor._get_num_multimodal_tokens(image_sizes=[[height, width] for width, height in sizes])
        return int(sum(counts.num_image_tokens)) + len(sizes) * _tokens_beside_each_image(processor, prompt_format)
    except (AttributeError, TypeError, ValueError, KeyError):  # a processor without it: the text alone orders rows
        return 0


_BESIDE_EACH_IMAGE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokens_beside_each_image(processor, prompt_format: str) -> int:
    """
    What one image adds to the model input beyond the processor's `_get_num_multimodal_tokens` count, less the
    placeholder it replaces: measured once per processor and format on a small blank image, since what that count
    covers differs between processors and versions (InternVL's counts its `<img>` and `</img>` in transformers 5.24,
    not in 5.25).
    """
    per_format = _BESIDE_EACH_IMAGE.setdefault(processor, {})
    if prompt_format not in per_format:
        side = 64
        try:
            text = chat_text(processor, "x", 1, prompt_format)
            inputs = processor(text=[text], images=[Image.new("RGB", (side, side))], add_special_tokens=False)
            text_only = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            counted = processor._get_num_multimodal_tokens(image_sizes=[[side, side]]).num_image_tokens[0]
            per_format[prompt_format] = len(inputs["input_ids"][0]) - len(text_only) - int(counted)
        except Exception as error:  # the counts only plan batches: fall back to "the placeholder becomes the count"
            logger.warning("Could not measure the tokens of an image with %s (%s)", type(processor).__name__, error)
            per_format[prompt_format] = -1
    return per_format[prompt_format]


def rollout_token_counts(
    processor,
    examples: Sequence[dict[str, Any]],
    step_token: str = "<prm>",
    max_images: int | None = None,
    prompt_format: str = "bis_prm",
) -> list[int]:
    """
    Tokens each rollout takes as model input: its text rendered in `prompt_format` plus its image tokens, without
    decoding any image (sizes come from `example["image_sizes"]`, PIL images or the file headers).

    A rollout that cannot be rendered counts 0 tokens (it fails later, where it is reported).

    Example:

    ```python
    >>> rollout_token_counts(  # doctest: +SKIP
    ...     processor, [{"image": "fig.png", "question": "Q?", "steps": ["a", "b"]}]
    ... )
    [1043]

    ```
    """
    texts, image_tokens = [], []
    for example in examples:
        try:
            sizes = _image_sizes(example)
            if max_images is not None and len(sizes) > max_images:
                sizes = [tiled_size(sizes)]
            prompt = render_prompt(example["question"], example["steps"], step_token, prompt_format)
        except (ExampleError, ImageProblem, KeyError, TypeError):
            texts.append(None)
            image_tokens.append(0)
            continue
        texts.append(chat_text(processor, prompt, len(sizes), prompt_format))
        image_tokens.append(_image_tokens(processor, sizes, prompt_format))
    tokenizer = getattr(processor, "tokenizer", processor)
    renderable = [text for text in texts if text is not None]
    special = adds_special_tokens(processor, prompt_format)
    counts = tokenizer(renderable, add_special_tokens=special)["input_ids"] if renderable else []
    lengths = iter(len(ids) for ids in counts)
    return [0 if text is None else next(lengths) + extra for text, extra in zip(texts, image_tokens, strict=True)]


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """
    Group rows into batches by length: longest first, each batch at most `max_batch_size` rows and, padded to its
    longest row, at most `max_batch_tokens` tokens (a longer row gets a batch of its own). Ties keep row order.

    Example:

    ```python
    >>> plan_batches([5, 30, 10, 28, 9], max_batch_size=2)
    [[1, 3], [2, 4], [0]]
    >>> plan_batches([5, 30, 10, 28, 9], max_batch_size=8, max_batch_tokens=60)
    [[1, 3], [2, 4, 0]]

    ```
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}.")
    order = sorted(range(len(lengths)), key=lambda row: (-lengths[row], row))
    batches: list[list[int]] = []
    for row in order:
        if batches:
            current = batches[-1]
            width = lengths[current[0]]  # the longest row comes first
            fits_tokens = max_batch_tokens is None or width * (len(current) + 1) <= max_batch_tokens
            if len(current) < max_batch_size and fits_tokens:
                current.append(row)
                continue
        batches.append([row])
    return batches


def deal_batches(batches: Sequence[Sequence[int]], lengths: Sequence[int], num_processes: int) -> list[list[int]]:
    """
    Deal batches to processes so that every process computes a similar number of (padded) tokens: the costliest
    batch first, always to the least loaded process. Returns the batch indices of each process, in order.

    The batches themselves do not depend on the number of processes, so the scores do not either.

    Example:

    ```python
    >>> deal_batches([[0], [1], [2, 3]], lengths=[10, 6, 3, 3], num_processes=2)
    [[0], [1, 2]]

    ```
    """
    costs = [len(batch) * max(lengths[row] for row in batch) for batch in batches]
    loads = [0] * num_processes
    dealt: list[list[int]] = [[] for _ in range(num_processes)]
    for index in sorted(range(len(batches)), key=lambda b: (-costs[b], b)):
        process = min(range(num_processes), key=lambda p: (loads[p], p))
        dealt[process].append(index)
        loads[process] += costs[index]
    return [sorted(indices) for indices in dealt]


class _RenderedBatches(torch.utils.data.Dataset):
    """Batch `k` rendered by the scorer (images decoded, processor run): run in `DataLoader` workers."""

    def __init__(self, examples: Sequence[dict[str, Any]], batches: Sequence[Sequence[int]], scorer: StepScorerBase):
        self.examples, self.batches, self.scorer = examples, batches, scorer

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict[str, Any]:
        rows = list(self.batches[k])
        examples = [{key: value for key, value in self.examples[row].items() if key != "labels"} for row in rows]
        batch, kept, failures = self.scorer.collate_skipping(examples)
        return {
            "batch": batch,
            "rows": [rows[position] for position in kept],
            "failures": [(rows[position], reason, message) for position, reason, message in failures],
        }


def _single_thread_worker(worker_id: int) -> None:
    # each worker renders one batch at a time; torch's intra-op threads would only compete with the model's
    torch.set_num_threads(1)


def _unbatched(item):
    return item


@dataclass
class ScoringStats:
    """What a scorer computed: non-padding and computed (rows x padded width) tokens, batches, and the time the model
    waited for rendered batches."""

    real_tokens: int = 0
    computed_tokens: int = 0
    batches: int = 0
    seconds_waiting_for_data: float = 0.0

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.computed_tokens if self.computed_tokens else 0.0


class StepScorerBase:
    """
    What every step scorer shares: rows `{"question", "steps", "image"?}` scored in token-budget batches (see
    [`plan_batches`]), rendered in `DataLoader` workers while the model runs, every row that cannot be scored
    reported with its reason. A scorer says only how rows become model inputs and how P(correct step) is read from
    the model's logits, by defining:

    - `lengths(rows) -> list[int]`: the tokens each row takes (cheap: no image decoded; 0 for a row that fails later);
    - `render(row, position)`: one row's inputs (text, images, token ids, ...), run in the workers; raises an
      [`~bis_prm.model.processing_prm.ExampleError`] for a row it cannot score;
    - `collate(rendered, positions) -> dict`: the padded batch of rendered rows, the model's keyword arguments plus
      `step_mask` (bool `[batch, seq]`, `True` where a step is read, one position per step in order);
    - `step_probabilities(logits) -> torch.Tensor`: P(correct) at every position (`[batch, seq]`) from the model's
      logits as they come (cast what you read: a causal LM's full-vocabulary logits are large).

    (Or `collate_skipping(rows)` instead of `render` and `collate`, as [`StepScorer`] does with its collator.)

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The scoring model, on its device.
        processor:
            Its processor or tokenizer.
        max_batch_size (`int`, *optional*, defaults to `8`):
            Most rollouts per forward pass.
        max_batch_tokens (`int`, *optional*):
            Most tokens per forward pass, counting padding (rows x the longest row); `None` for no limit.
        padding_side (`str`, *optional*):
            `"left"` or `"right"`; defaults to the tokenizer's.
        num_workers (`int`, *optional*, defaults to `0`):
            `DataLoader` workers that render batches while the model computes.

    Example:

    ```python
    >>> scorer = load_scorer("Qwen/Qwen2.5-Math-PRM-7B", trust_remote_code=True)  # doctest: +SKIP
    >>> for row, scores, failure in scorer.iter_scores(rows, scorer.plan(rows)):  # doctest: +SKIP
    ...     print(row, scores or failure)

    ```
    """

    #: Text that no question or step may contain (the token the scores are read at), or `None`.
    step_token: str | None = None
    #: Extra keyword arguments of every forward pass (`use_cache=False` for causal LMs).
    forward_kwargs: dict[str, Any] = {}

    def __init__(
        self,
        model,
        processor,
        max_batch_size: int = 8,
        max_batch_tokens: int | None = None,
        padding_side: str | None = None,
        num_workers: int = 0,
    ):
        self.model, self.processor = model, processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.padding_side = padding_side or self.tokenizer.padding_side
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}.")
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.num_workers = num_workers
        self.stats = ScoringStats()

    def __getstate__(self) -> dict[str, Any]:
        # workers only render batches: a spawned worker (macOS, Windows) gets the scorer without its model
        return {**self.__dict__, "model": None}

    # ---- what a scorer defines ----

    def lengths(self, examples: Sequence[dict[str, Any]]) -> list[int]:
        """Total tokens of each rollout, padding excluded."""
        raise NotImplementedError

    def render(self, example: dict[str, Any], index: int) -> Any:
        """One rollout's model inputs before batching; raises an `ExampleError` naming the problem."""
        raise NotImplementedError

    def collate(self, rendered: list, positions: list[int]) -> dict[str, torch.Tensor]:
        """The batch of rendered rollouts with its `step_mask`."""
        raise NotImplementedError

    def step_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(correct step) at every position, `[batch, seq]`, from the model's logits."""
        raise NotImplementedError

    # ---- shared ----

    def collate_skipping(
        self, examples: list[dict[str, Any]]
    ) -> tuple[dict[str, torch.Tensor] | None, list[int], list[tuple[int, str, str]]]:
        """The batch of the rollouts that can be scored, their positions, and `(position, reason, message)` for the
        others (see [`~bis_prm.model.processing_prm.collate_skipping`])."""
        return collate_skipping(examples, self.render, self.collate)

    def plan(self, examples: Sequence[dict[str, Any]], lengths: Sequence[int] | None = None) -> list[list[int]]:
        """The batches (lists of row indices) these rollouts are scored in (see [`plan_batches`])."""
        lengths = self.lengths(examples) if lengths is None else lengths
        return plan_batches(lengths, self.max_batch_size, self.max_batch_tokens)

    def iter_scores(
        self, examples: Sequence[dict[str, Any]], batches: Sequence[Sequence[int]], progress: bool = False
    ) -> Iterator[tuple[int, list[float] | None, tuple[str, str] | None]]:
        """
        Yield `(row, step scores, None)` for every scored rollout and `(row, None, (reason, message))` for every
        rollout that could not be rendered, batch by batch.
        """
        loader = torch.utils.data.DataLoader(
            _RenderedBatches(examples, batches, self),
            batch_size=None,
            collate_fn=_unbatched,
            num_workers=self.num_workers,
            worker_init_fn=_single_thread_worker if self.num_workers else None,
        )
        if progress:
            from tqdm.auto import tqdm

            loader = tqdm(loader, desc="Scoring steps", unit="batch")
        return self._score_rendered(loader)

    @torch.no_grad()
    def _score_rendered(
        self, items: Iterable[dict[str, Any]]
    ) -> Iterator[tuple[int, list[float] | None, tuple[str, str] | None]]:
        """What `iter_scores` yields, for batches rendered by `_RenderedBatches`."""
        was_training = self.model.training
        self.model.eval()
        try:
            waited = time.perf_counter()
            for item in items:
                self.stats.seconds_waiting_for_data += time.perf_counter() - waited
                for row, reason, message in item["failures"]:
                    yield row, None, (reason, message)
                if item["batch"] is not None:
                    for row, scores in zip(item["rows"], self._forward(item["batch"]), strict=True):
                        yield row, scores, None
                waited = time.perf_counter()
        finally:
            self.model.train(was_training)

    def score_rows(self, examples: Sequence[dict[str, Any]]) -> list[list[float] | ExampleError]:
        """
        Score rollouts in this scorer's token-budget batches: per rollout, in input order, its step scores or the
        [`~bis_prm.model.processing_prm.ExampleError`] that kept it from being scored (one bad rollout never stops
        the others). The in-process backend of the RL rewards and of `bis-prm serve`.

        A call of at most `max_batch_size` rollouts (a server's merged requests, an RL step's completions) is
        rendered once as one batch, and planned only if that batch exceeds `max_batch_tokens`: counting its tokens
        first would tokenize every rollout twice.
        """
        outcomes = None
        if len(examples) <= self.max_batch_size:
            item = _RenderedBatches(examples, [range(len(examples))], self)[0]
            if item["batch"] is None or self._fits(item["batch"]):
                outcomes = self._score_rendered([item])
        if outcomes is None:
            outcomes = self.iter_scores(examples, self.plan(examples))
        results: list[list[float] | ExampleError] = [None] * len(examples)  # type: ignore[list-item]
        for row, scores, failure in outcomes:
            results[row] = scores if failure is None else ExampleError(failure[0], failure[1])
        return results

    def _fits(self, batch: dict[str, torch.Tensor]) -> bool:
        """Whether a padded batch is within `max_batch_tokens` (the cost [`plan_batches`] counts); one rollout always
        is (a longer one gets a batch of its own)."""
        input_ids = batch["input_ids"]
        return self.max_batch_tokens is None or len(input_ids) == 1 or input_ids.numel() <= self.max_batch_tokens

    def _forward(self, batch: dict[str, torch.Tensor]) -> list[list[float]]:
        step_mask = batch.pop("step_mask")
        model = self.model
        inputs = {
            key: value.to(model.device, dtype=model.dtype if value.is_floating_point() else None)
            for key, value in batch.items()
        }
        self.stats.real_tokens += int(inputs["attention_mask"].sum())
        self.stats.computed_tokens += inputs["input_ids"].numel()
        self.stats.batches += 1
        outputs = model(**inputs, **self.forward_kwargs)
        # remote-code models may return a plain tuple (logits first), as Qwen2.5-Math-PRM's may
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        probs = self.step_probabilities(logits).float().cpu()
        return [probs[row][step_mask[row]].tolist() for row in range(len(probs))]


class StepScorer(StepScorerBase):
    """
    Score every step of rollouts with a bis_prm PRM: P(positive) at each step token, in token-budget batches.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            A PRM (its config names the step token and the prompt format it was trained with), on its device and in
            eval mode while scoring.
        processor ([`~transformers.ProcessorMixin`]):
            The PRM's processor.
        max_batch_size (`int`, *optional*, defaults to `8`):
            Most rollouts per forward pass.
        max_batch_tokens (`int`, *optional*):
            Most tokens per forward pass, counting padding (rows x the longest row); `None` for no limit.
        max_images (`int`, *optional*):
            Tile rollouts with more images into one grid (see [`~bis_prm.PRMCollator`]).
        padding_side (`str`, *optional*):
            `"left"` or `"right"`; defaults to the tokenizer's. Both give the same scores.
        num_workers (`int`, *optional*, defaults to `0`):
            `DataLoader` workers that decode images and run the processor while the model computes.

    Example:

    ```python
    >>> scorer = StepScorer(model, processor, max_batch_tokens=16384, num_workers=4)  # doctest: +SKIP
    >>> for row, scores, failure in scorer.iter_scores(examples, scorer.plan(examples)):  # doctest: +SKIP
    ...     print(row, scores or failure)

    ```
    """

    def __init__(
        self,
        model,
        processor,
        max_batch_size: int = 8,
        max_batch_tokens: int | None = None,
        max_images: int | None = None,
        padding_side: str | None = None,
        num_workers: int = 0,
    ):
        super().__init__(model, processor, max_batch_size, max_batch_tokens, padding_side, num_workers)
        self.step_token = model.config.step_token
        self.collator = PRMCollator(
            processor,
            step_token=self.step_token,
            padding_side=self.padding_side,
            max_images=max_images,
            # PRMs trained before `prompt_format` existed read the default format
            prompt_format=getattr(model.config, "prompt_format", "bis_prm"),
        )
        self.max_images = max_images
        self.positive_index = positive_index(model.config)

    def lengths(self, examples: Sequence[dict[str, Any]]) -> list[int]:
        """Total tokens of each rollout (see [`rollout_token_counts`])."""
        return rollout_token_counts(
            self.processor, examples, self.step_token, self.max_images, self.collator.prompt_format
        )

    def collate_skipping(
        self, examples: list[dict[str, Any]]
    ) -> tuple[dict[str, torch.Tensor] | None, list[int], list[tuple[int, str, str]]]:
        batch, kept, failures = self.collator.collate_skipping(examples)
        if batch is not None:
            batch.pop("num_steps")
            batch["step_mask"] = batch["input_ids"] == self.collator.step_token_id
        return batch, kept, failures

    def step_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=-1)[..., self.positive_index]


def score_steps(
    model,
    processor,
    examples: Sequence[dict[str, Any]],
    batch_size: int = 8,
    padding_side: str | None = None,
    progress: bool = False,
    max_images: int | None = None,
    max_batch_tokens: int | None = None,
    num_workers: int = 0,
) -> list[list[float]]:
    """
    Score every step of every rollout: P(positive) at each step token.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            A PRM from [`~bis_prm.load_prm`] (its config names the step token).
        processor ([`~transformers.ProcessorMixin`]):
            The PRM's processor.
        examples (`Sequence[dict]`):
            Rollouts with `image` (path, PIL image, list of those, or `None`), `question` and `steps`; labels are
            ignored.
        batch_size (`int`, *optional*, defaults to `8`):
            Most rollouts per forward pass (rollouts of similar length are batched together).
        padding_side (`str`, *optional*):
            `"left"` or `"right"`; defaults to the tokenizer's. Both give the same scores.
        progress (`bool`, *optional*, defaults to `False`):
            Show a tqdm progress bar.
        max_images (`int`, *optional*):
            Tile rollouts with more images into one grid (see [`~bis_prm.PRMCollator`]).
        max_batch_tokens (`int`, *optional*):
            Most tokens per forward pass, padding included.
        num_workers (`int`, *optional*, defaults to `0`):
            `DataLoader` workers rendering batches.

    Returns:
        `list[list[float]]`: one score per step, per rollout, in input order.

    Raises:
        [`~bis_prm.model.processing_prm.ExampleError`]: naming the first rollout that cannot be rendered.

    Example:

    ```python
    >>> model, processor = load_prm("path/to/prm")  # doctest: +SKIP
    >>> score_steps(  # doctest: +SKIP
    ...     model, processor, [{"image": "fig.png", "question": "2+2?", "steps": ["2+2=4.", "So 4."]}]
    ... )
    [[0.93, 0.88]]

    ```
    """
    scorer = StepScorer(model, processor, batch_size, max_batch_tokens, max_images, padding_side, num_workers)
    scores: dict[int, list[float]] = {}
    for row, row_scores, failure in scorer.iter_scores(examples, scorer.plan(examples), progress):
        if failure is not None:
            raise ExampleError(failure[0], f"Rollout {row}: {failure[1]}")
        scores[row] = row_scores
    return [scores[row] for row in range(len(examples))]


def aggregate_scores(step_scores: Sequence[float], method: str = "mean") -> float:
    """
    Reduce the step scores of one rollout to a single score for Best-of-N.

    Args:
        step_scores (`Sequence[float]`):
            P(positive) per step.
        method (`str`, *optional*, defaults to `"mean"`):
            `"mean"` (VisualPRM), `"min"` (weakest step), `"last"` (final step) or `"prod"` (all steps correct).

    Example:

    ```python
    >>> aggregate_scores([0.9, 0.5, 0.8], "min")
    0.5

    ```
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {method!r}; choose one of {AGGREGATIONS}.")
    if len(step_scores) == 0:
        raise ValueError("Cannot aggregate a rollout without step scores.")
    # plain Python: a server aggregates one rollout per request, and a dozen tensor ops cost more than the sum
    if method == "mean":
        return sum(step_scores) / len(step_scores)
    if method == "min":
        return float(min(step_scores))
    if method == "prod":
        return float(math.prod(step_scores))
    return float(step_scores[-1])


def aggregate_many(step_scores: Sequence[Sequence[float]], method: str = "mean") -> torch.Tensor:
    """
    Vectorised [`aggregate_scores`] over many rollouts of different lengths.

    Example:

    ```python
    >>> aggregate_many([[0.5, 1.0], [0.2]], "prod")
    tensor([0.5000, 0.2000], dtype=torch.float64)

    ```
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {method!r}; choose one of {AGGREGATIONS}.")
    lengths = torch.tensor([len(scores) for scores in step_scores])
    if (lengths == 0).any():
        raise ValueError(f"Rollout {int((lengths == 0).nonzero()[0])} has no step scores to aggregate.")
    padded = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(scores, dtype=torch.float64) for scores in step_scores], batch_first=True, padding_value=0.0
    )
    valid = torch.arange(padded.shape[1]) < lengths[:, None]
    if method == "mean":
        return padded.sum(dim=1) / lengths
    if method == "min":
        return padded.masked_fill(~valid, float("inf")).min(dim=1).values
    if method == "prod":
        return padded.masked_fill(~valid, 1.0).prod(dim=1)
    return padded[torch.arange(len(lengths)), lengths - 1]
