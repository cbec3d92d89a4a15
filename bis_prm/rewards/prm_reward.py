"""A step-level PRM as the reward function of TRL's online RL trainers (`GRPOTrainer`, `RLOOTrainer`).

TRL calls a reward function with the batch's `prompts` and `completions` as keyword arguments, together with
`completion_ids`, every other column of the dataset (one value per completion), `trainer_state` and two logging
hooks (`log_extra` for columns of the completions table, `log_metric` for scalars), and wants one number per
completion, or `None` where the function cannot judge it (TRL then leaves this reward out for that completion). A
PRM scores every step: [`PRMReward`] cuts each completion into steps ([`~bis_prm.data.steps.split_steps`], as
VisualPRM400K was cut), scores them with [`~bis_prm.model.inference.StepScorer`] in token-budget batches (or with a
`bis-prm serve` server) and aggregates the step scores into the completion's reward.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bis_prm.data.prompt import ExampleError
from bis_prm.data.steps import STEP_SEPARATOR, split_steps
from bis_prm.model.inference import AGGREGATIONS, StepScorer, aggregate_many
from bis_prm.model.modeling_prm import load_prm
from bis_prm.model.processing_prm import is_text_processor

__all__ = ["PRMReward", "completion_text", "prompt_question"]

logger = logging.getLogger(__name__)

# Requests a PRM server may fail in a row before the reward gives up (a dead server would leave every reward None)
MAX_FAILED_REQUESTS = 3


def _content_text(content: str | list[dict[str, Any]]) -> str:
    """The text of a message's content: the string, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")
    return "\n".join(part["text"] for part in content if part.get("type") == "text")


def prompt_question(prompt: str | list[dict[str, Any]]) -> str:
    """
    The question a PRM is shown for a prompt of TRL's standard (a string) or conversational (a list of messages)
    format: the string itself, or the text of the last user turn (the text parts of a multimodal turn).

    Raises:
        `ValueError`: when a conversational prompt has no user turn.

    Example:

    ```python
    >>> prompt_question("What is 2 + 2?")
    'What is 2 + 2?'
    >>> prompt_question(
    ...     [
    ...         {"role": "system", "content": "Think step by step."},
    ...         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many circles?"}]},
    ...     ]
    ... )
    'How many circles?'

    ```
    """
    if isinstance(prompt, str):
        return prompt
    users = [message for message in prompt if message.get("role") == "user"]
    if not users:
        raise ValueError("the conversational prompt has no user turn")
    return _content_text(users[-1]["content"])


def completion_text(completion: str | list[dict[str, Any]], separator: str = STEP_SEPARATOR) -> str:
    """
    The text of a completion of TRL's standard (a string) or conversational (a list of messages) format: the string
    itself, or the assistant messages' contents, several of them joined by `separator` (each ends a step).

    Example:

    ```python
    >>> completion_text([{"role": "assistant", "content": "2 + 2 = 4.\\n\\nThe answer is 4."}])
    '2 + 2 = 4.\\n\\nThe answer is 4.'

    ```
    """
    if isinstance(completion, str):
        return completion
    return separator.join(
        _content_text(message["content"]) for message in completion if message.get("role") == "assistant"
    )


def _prompt_images(prompt: str | list[dict[str, Any]]) -> list[Any]:
    """The images inside a conversational prompt's parts (`{"type": "image", "image": ...}`), in order."""
    if isinstance(prompt, str):
        return []
    return [
        part["image"]
        for message in prompt
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image" and part.get("image") is not None
    ]


@contextlib.contextmanager
def _whole_model():
    """Load the PRM whole, also inside a ZeRO-3 run.

    Once a ZeRO-3 training config exists (`GRPOConfig` under `accelerate launch` with a ZeRO-3 config), transformers'
    `from_pretrained` creates every model inside `deepspeed.zero.Init`, which partitions its weights for a DeepSpeed
    engine; the reward model has no engine and runs on its own (each rank holds a copy), so the config is hidden from
    `from_pretrained` while it loads (transformers has no switch for one model).
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


class PRMReward:
    """
    A process reward model as a reward function of TRL's `GRPOTrainer` and `RLOOTrainer`
    (`reward_funcs=PRMReward(...)`): each completion is cut into steps, every step is scored by the PRM (P(correct
    step)) and the step scores are aggregated into the completion's reward. Text PRMs and multimodal PRMs alike.

    Prompts and completions come in either of TRL's formats: standard (strings) or conversational (lists of
    `{"role", "content"}` messages). The PRM is shown the prompt's last user turn as the question (the text parts of
    a multimodal turn) and the assistant's text as the solution. A multimodal PRM sees the sample's images: the
    dataset's `images` column (a list per sample) or `image` column (one image, path or PIL), else the images in the
    prompt's parts; a text PRM ignores images.

    A completion that cannot be scored gets `None`, which TRL leaves out of this reward for that completion (it
    reads as NaN; a completion that every reward function leaves out gets no advantage): a conversational prompt
    without a user turn (`bad_format`), a splitter that raised (`split_failed`), no step (`no_steps`: empty or only
    separators), longer than `max_length` tokens (`too_long`), or a rollout the PRM cannot render (its reason, e.g.
    `step_token_in_text`, an unreadable image; `server_error` for the rows of a request a PRM server failed). Each
    call with such completions logs one warning with the counts per reason. A model error in-process raises, and so
    does a server that failed `MAX_FAILED_REQUESTS` (3) requests in a row.

    With TRL's logging hooks, every call logs the step scores of each completion as the column
    `<name>/step_scores` of the completions table (`log_extra`) and the share of completions left unscored as the
    metric `rewards/<name>/unscored_frac` (`log_metric`); TRL logs the reward itself as `rewards/<name>/mean`.

    Args:
        model (`str`, `os.PathLike` or `tuple`, *optional*):
            A trained PRM, local or on the Hub, loaded with [`~bis_prm.load_prm`] (a base checkpoint becomes a PRM
            with the Yes/No head), or a `(model, processor)` pair already loaded. Exactly one of `model` and `url`.
        url (`str`, *optional*):
            The address of a `bis-prm serve` server (see docs/serving.md) that scores the rows instead.
        api_key (`str`, *optional*):
            The server's API key.
        aggregation (`str`, *optional*, defaults to `"min"`):
            How step scores become the reward: `"min"` (the weakest step), `"mean"`, `"last"` or `"prod"` (see
            [`~bis_prm.aggregate_scores`]).
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            What ends a step.
        max_steps (`int`, *optional*, defaults to `12`):
            Most steps per completion: more pieces are merged in runs, as VisualPRM400K's were; `None` for no limit.
        split_steps (`Callable[[str], list[str]]`, *optional*):
            Your own splitter, from the completion's text to its steps (replaces `separator` and `max_steps`).
        device (`str` or `torch.device`, *optional*):
            Where the PRM runs, e.g. `"cuda:1"` for a GPU of its own. By default a PRM loaded here runs on the
            trainer's device (accelerate's `PartialState().device`, read at the first call) and a `(model, processor)`
            pair stays where it is.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`):
            The weights' dtype when loading `model` (`"auto"`: as saved).
        max_batch_size (`int`, *optional*, defaults to `8`):
            Most rows per forward pass.
        max_batch_tokens (`int`, *optional*, defaults to `16384`):
            Most tokens per forward pass, padding included.
        max_length (`int`, *optional*):
            Completions whose PRM input (prompt, steps and image tokens) is longer get `None` (`too_long`) instead of
            a forward pass of that size. In-process scoring only (a server applies its own limit).
        name (`str`, *optional*, defaults to `"prm_reward"`):
            The reward's `__name__`, under which TRL logs it (`rewards/<name>/mean`).

    Example:

    ```python
    >>> from trl import GRPOConfig, GRPOTrainer
    >>> reward = PRMReward("path/to/prm", aggregation="min", max_length=4096)  # doctest: +SKIP
    >>> trainer = GRPOTrainer(  # doctest: +SKIP
    ...     model="Qwen/Qwen2.5-7B-Instruct", reward_funcs=reward, args=GRPOConfig("grpo"), train_dataset=dataset
    ... )

    ```

    Called directly, as TRL calls it (here on a tiny random text PRM; the second completion has no step):

    ```python
    >>> from bis_prm.testing import make_tiny_lm
    >>> prm = load_prm(make_tiny_lm("qwen2", "/tmp/tiny-qwen2"), head="linear")  # doctest: +SKIP
    >>> reward = PRMReward(prm, aggregation="mean")  # doctest: +SKIP
    >>> rewards = reward(  # doctest: +SKIP
    ...     prompts=["What is 2 + 3?", "What is 4 + 4?"], completions=["2 + 3 = 5.\\n\\nThe answer is 5.", "\\n\\n"]
    ... )
    >>> isinstance(rewards[0], float), rewards[1]  # doctest: +SKIP
    (True, None)

    ```
    """

    def __init__(
        self,
        model: str | os.PathLike | tuple[Any, Any] | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        aggregation: str = "min",
        separator: str = STEP_SEPARATOR,
        max_steps: int | None = 12,
        split_steps: Callable[[str], list[str]] | None = None,
        device=None,
        dtype="auto",
        max_batch_size: int = 8,
        max_batch_tokens: int | None = 16384,
        max_length: int | None = None,
        name: str | None = None,
    ):
        if (model is None) == (url is None):
            raise ValueError("PRMReward needs exactly one of `model` (a PRM to run here) and `url` (a PRM server).")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"Unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}.")
        if not separator:
            raise ValueError("The step separator must not be empty.")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
        if url is not None and max_length is not None:
            raise ValueError("`max_length` applies to in-process scoring; a PRM server applies its own limit.")
        self.__name__ = name or "prm_reward"
        self.aggregation, self.separator, self.max_steps = aggregation, separator, max_steps
        self.max_length = max_length
        self._split = split_steps
        self._pending_device = False
        # a request the server failed costs its batch its rewards, not the run (`MAX_FAILED_REQUESTS` in a row do);
        # in-process, a failure is the model's or the hardware's and raises
        self._request_errors: tuple[type[Exception], ...] = ()
        self._failed_requests = 0

        # Scoring: a server, or the PRM here
        if url is not None:
            from bis_prm.serving.client import RemoteScorer, RemoteScorerError

            self.scorer = RemoteScorer(url, api_key=api_key)
            self._request_errors = (RemoteScorerError,)
            self.text_only = False  # the server knows its PRM: images go with every row
            return
        if isinstance(model, tuple):
            prm, processor = model
        else:
            with _whole_model():
                prm, processor = load_prm(model, dtype=dtype)
            prm.requires_grad_(False)
            self._pending_device = device is None
        if device is not None:
            prm.to(device)
        self.scorer = StepScorer(prm.eval(), processor, max_batch_size, max_batch_tokens)
        self.text_only = is_text_processor(processor)

    def steps(self, text: str) -> list[str]:
        """The steps of a completion's text."""
        if self._split is not None:
            return list(self._split(text))
        return split_steps(text, self.separator, self.max_steps)

    def __call__(
        self,
        prompts: Sequence[str | list[dict[str, Any]]],
        completions: Sequence[str | list[dict[str, Any]]],
        completion_ids: Sequence[Sequence[int]] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs,
    ) -> list[float | None]:
        """
        The reward of every completion (its aggregated step scores), `None` for those that cannot be scored.

        Args:
            prompts (`Sequence`):
                One prompt per completion (TRL repeats each prompt for its generations).
            completions (`Sequence`):
                The completions, strings or lists of messages.
            completion_ids (`Sequence`, *optional*):
                The completions' token ids (unused: the PRM tokenizes the steps itself).
            log_extra, log_metric (`Callable`, *optional*):
                TRL's logging hooks.
            **kwargs:
                The dataset's other columns (`image` or `images` for a multimodal PRM) and `trainer_state`.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts for {len(completions)} completions; TRL passes one each.")
        problems: Counter[str] = Counter()
        rows, positions = [], []
        for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            try:
                question = prompt_question(prompt)
                text = completion_text(completion, self.separator)
            except (AttributeError, KeyError, TypeError, ValueError):
                problems["bad_format"] += 1
                continue
            try:
                steps = self.steps(text)
            except Exception:  # noqa: BLE001 - a user's splitter failing on one completion must not stop training
                problems["split_failed"] += 1
                continue
            if not steps:
                problems["no_steps"] += 1
                continue
            images = None if self.text_only else self._images(index, prompt, kwargs)
            rows.append({"question": question, "steps": steps, "image": images})
            positions.append(index)

        if self.max_length is not None and rows:
            fits = [length <= self.max_length for length in self.scorer.lengths(rows)]
            if not all(fits):
                problems["too_long"] += fits.count(False)
            rows = [row for row, fit in zip(rows, fits, strict=True) if fit]
            positions = [position for position, fit in zip(positions, fits, strict=True) if fit]

        step_scores: list[list[float] | None] = [None] * len(completions)
        if rows:
            self._place_model()
            for position, result in zip(positions, self._score(rows), strict=True):
                if isinstance(result, (list, tuple)) and result:
                    step_scores[position] = list(result)
                else:  # an ExampleError (or a server's error with its reason), or no step score at all
                    problems[getattr(result, "reason", "no_step_scores")] += 1
        rewards: list[float | None] = [None] * len(completions)
        scored = [position for position, scores in enumerate(step_scores) if scores is not None]
        if scored:
            values = aggregate_many([step_scores[position] for position in scored], self.aggregation).tolist()
            for position, value in zip(scored, values, strict=True):
                rewards[position] = value

        unscored = sum(problems.values())
        if unscored:
            counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(problems.items()))
            logger.warning(
                f"{self.__name__}: {unscored} of {len(completions)} completions could not be scored ({counts}); "
                "their reward is None, which TRL leaves out."
            )
        if log_extra is not None:
            log_extra(f"{self.__name__}/step_scores", step_scores)
        if log_metric is not None and completions:
            log_metric(f"rewards/{self.__name__}/unscored_frac", unscored / len(completions))
        return rewards

    def _score(self, rows: list[dict[str, Any]]) -> list:
        """The scorer's results for `rows`; a failed server request leaves them all unscored (`server_error`)."""
        try:
            results = self.scorer.score_rows(rows)
        except self._request_errors as error:
            self._failed_requests += 1
            if self._failed_requests >= MAX_FAILED_REQUESTS:
                raise RuntimeError(
                    f"{self.__name__}: the PRM server failed {self._failed_requests} requests in a row: {error}"
                ) from error
            logger.warning(f"{self.__name__}: the PRM server failed a request ({error}); its rows get no reward.")
            return [ExampleError("server_error", str(error))] * len(rows)
        self._failed_requests = 0
        return results

    @staticmethod
    def _images(index: int, prompt, columns: dict[str, Any]) -> list[Any] | None:
        """The images of sample `index`: the `images` or `image` column, else the prompt's image parts."""
        for column in ("images", "image"):
            if column in columns and columns[column] is not None:
                value = columns[column][index]
                break
        else:
            value = _prompt_images(prompt)
        if value is None:
            return None
        values = value if isinstance(value, (list, tuple)) else [value]
        images = [image for image in values if image is not None and not (isinstance(image, str) and not image)]
        return images or None

    def _place_model(self) -> None:
        # the trainer's device is known once its config exists (`use_cpu`, the local rank of `accelerate launch`)
        if self._pending_device:
            from accelerate import PartialState

            self.scorer.model.to(PartialState().device)
            self._pending_device = False
