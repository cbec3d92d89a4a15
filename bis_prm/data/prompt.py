"""The PRM prompt: how a rollout is written for the model, defined once.

    Question: {question}
    Process: {step 1}<prm>

    {step 2}<prm>

The step token after each step is where the PRM reads the step's score. [`render_prompt`] writes it for the model
(inside the backbone's chat template, by the [`~bis_prm.PRMCollator`]); [`prompt_column`] writes the same text for a
whole Arrow column, for the reference code's InternVL conversation files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .arrow_utils import list_array, list_parts

__all__ = [
    "PROCESS_PREFIX",
    "QUESTION_PREFIX",
    "STEP_SEPARATOR",
    "ExampleError",
    "check_rollout",
    "prompt_column",
    "render_prompt",
    "strip_image_placeholders",
]

QUESTION_PREFIX = "Question: "
PROCESS_PREFIX = "\nProcess: "
STEP_SEPARATOR = "\n\n"
# "<image>" / "<image1>" placeholders of the VisualPRM data; the chat template places the images itself.
_IMAGE_PLACEHOLDER = re.compile(r"<image\d*>\s*")


class ExampleError(ValueError):
    """
    A rollout that cannot be turned into model inputs. `reason` names the problem (`no_steps`, `step_token_in_text`,
    `length_mismatch`, `bad_label`, `missing_labels`, `processing_failed`, `image_for_text_model`, or an image
    reason of [`~bis_prm.data.images.ImageProblem`]) so that runs which skip bad rollouts can count them.
    """

    def __init__(self, reason: str, message: str, example: int | None = None):
        super().__init__(message if example is None else f"Example {example}: {message}")
        self.reason = reason
        self.detail = message


def render_prompt(question: str, steps: Sequence[str], step_token: str = "<prm>") -> str:
    """
    Render a rollout as the PRM prompt, one `step_token` after every step.

    Args:
        question (`str`):
            The question; `<image>` / `<imageN>` placeholders are removed (the chat template places the images).
        steps (`Sequence[str]`):
            The solution steps, in order. Each is stripped.
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            The token whose position scores the step before it.

    Returns:
        `str`: `"Question: {question}\\nProcess: {step_1}<prm>\\n\\n{step_2}<prm>..."`.

    Raises:
        [`ExampleError`]: when there is no step (`no_steps`), or the question or a step already contains
        `step_token` (`step_token_in_text`).

    Example:

    ```python
    >>> render_prompt("<image>\\nHow many circles?", ["I count 2.", "The answer is 2."])
    'Question: How many circles?\\nProcess: I count 2.<prm>\\n\\nThe answer is 2.<prm>'

    ```
    """
    question = strip_image_placeholders(question)
    check_rollout(question, steps, step_token)
    process = STEP_SEPARATOR.join(f"{step.strip()}{step_token}" for step in steps)
    return f"{QUESTION_PREFIX}{question}{PROCESS_PREFIX}{process}"


def check_rollout(question: str, steps: Sequence[str], step_token: str | None = None) -> None:
    """
    Raise an [`ExampleError`] when a rollout has no step (`no_steps`), or its question or a step already contains
    `step_token`, the text a PRM reads its scores at (`step_token_in_text`).

    Example:

    ```python
    >>> check_rollout("What is 1 + 1?", ["1 + 1 = 2<prm>"], "<prm>")
    Traceback (most recent call last):
    ...
    bis_prm.data.prompt.ExampleError: The step 0 already contains the step token '<prm>': '1 + 1 = 2<prm>'

    ```
    """
    if not steps:
        raise ExampleError("no_steps", "The rollout has no step to score.")
    if not step_token:
        return
    for name, text in [("question", question), *((f"step {i}", step) for i, step in enumerate(steps))]:
        if step_token in text:
            raise ExampleError(
                "step_token_in_text", f"The {name} already contains the step token {step_token!r}: {text[:80]!r}"
            )


def strip_image_placeholders(question: str) -> str:
    """
    The question without its `<image>` / `<imageN>` placeholders (a chat template places the images), stripped.

    Example:

    ```python
    >>> strip_image_placeholders("<image1><image2>Which shape is blue?")
    'Which shape is blue?'

    ```
    """
    return _IMAGE_PLACEHOLDER.sub("", question).strip()


def prompt_column(questions: pa.Array, steps: pa.ListArray, step_token: str = "<prm>") -> pa.Array:
    """
    [`render_prompt`]'s text for every row of Arrow columns, questions and steps stripped like `str.strip`; the
    question is kept as given (the reference code's files keep their `<image>` placeholders).

    Example:

    ```python
    >>> prompt_column(pa.array([" Q "]), pa.array([["s1 ", "s2"]])).to_pylist()
    ['Question: Q\\nProcess: s1<prm>\\n\\ns2<prm>']

    ```
    """
    lengths, flat_steps = list_parts(steps)
    marked = pc.binary_join_element_wise(pc.utf8_trim_whitespace(flat_steps), step_token, "")
    process = pc.binary_join(list_array(lengths, marked), STEP_SEPARATOR)
    question = pc.utf8_trim_whitespace(questions)
    return pc.binary_join_element_wise(QUESTION_PREFIX, question, PROCESS_PREFIX, process, "")
