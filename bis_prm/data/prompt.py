"""The PRM prompt: how a rollout is written for the model, defined once.

    Question: {question}
    Process: {step 1}<prm>

    {step 2}<prm>

The step token after each step is where the PRM reads the step's score. [`render_prompt`] writes it for the model
(by the [`~bis_prm.PRMCollator`], for training and inference); [`prompt_column`] writes the same text for a whole
Arrow column, for the reference code's InternVL conversation files.

Two prompt formats (`PROMPT_FORMATS`, `PRMConfig.prompt_format`, stored in the PRM's config) place that text in the
model's input:

- `"bis_prm"` (the default): in the user turn of the backbone's own chat template, the images first, `<image>`
  placeholders removed from the question.
- `"bis_reference"`: exactly the training sequence of the BIS reference code (its `preprocess_internvl2_5`, template
  `internvl2_5`) for InternVL models: the InternVL system prompt, an empty user turn, and the images and the text in
  the assistant turn ([`internvl2_5_conversation`]):

      <|im_start|>system\\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\\n<|im_start|>user\\n<|im_end|>\\n
      <|im_start|>assistant\\n<image>\\nQuestion: {question}\\nProcess: {step 1}<prm>\\n\\n{step 2}<prm><|im_end|>\\n

  (one line here, wrapped for reading), each `<image>` becoming `<img><IMG_CONTEXT>...</img>` in the processor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .arrow_utils import list_array, list_parts

__all__ = [
    "INTERNVL2_5_SYSTEM_MESSAGE",
    "PROCESS_PREFIX",
    "PROMPT_FORMATS",
    "QUESTION_PREFIX",
    "STEP_SEPARATOR",
    "ExampleError",
    "check_prompt_format",
    "check_rollout",
    "internvl2_5_conversation",
    "prompt_column",
    "render_prompt",
    "strip_image_placeholders",
]

QUESTION_PREFIX = "Question: "
PROCESS_PREFIX = "\nProcess: "
STEP_SEPARATOR = "\n\n"
PROMPT_FORMATS = ("bis_prm", "bis_reference")
# the system message of InternVL's `internvl2_5` conversation template (internvl/conversation.py), which the BIS
# reference code trains with
INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
# the image placeholder of the reference's conversations: each one becomes an image's tokens
REFERENCE_IMAGE_PLACEHOLDER = "<image>"
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


def check_prompt_format(prompt_format: str) -> None:
    """
    Raise a `ValueError` naming the choices when `prompt_format` is not one of `PROMPT_FORMATS`.

    Example:

    ```python
    >>> check_prompt_format("bis_reference")

    ```
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"`prompt_format` must be one of {', '.join(PROMPT_FORMATS)}; got {prompt_format!r}.")


def render_prompt(
    question: str, steps: Sequence[str], step_token: str = "<prm>", prompt_format: str = "bis_prm"
) -> str:
    """
    Render a rollout as the PRM prompt, one `step_token` after every step.

    Args:
        question (`str`):
            The question, stripped. With `prompt_format="bis_prm"`, `<image>` / `<imageN>` placeholders are removed
            (the chat template places the images); with `"bis_reference"` it is kept as given, placeholders included,
            as the reference code's conversation files hold it ([`internvl2_5_conversation`] puts the images there).
        steps (`Sequence[str]`):
            The solution steps, in order. Each is stripped.
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            The token whose position scores the step before it.
        prompt_format (`str`, *optional*, defaults to `"bis_prm"`):
            One of `PROMPT_FORMATS` (see the module docstring).

    Returns:
        `str`: `"Question: {question}\\nProcess: {step_1}<prm>\\n\\n{step_2}<prm>..."`.

    Raises:
        [`ExampleError`]: when there is no step (`no_steps`), or the question or a step already contains
        `step_token` (`step_token_in_text`).

    Example:

    ```python
    >>> render_prompt("<image>\\nHow many circles?", ["I count 2.", "The answer is 2."])
    'Question: How many circles?\\nProcess: I count 2.<prm>\\n\\nThe answer is 2.<prm>'
    >>> render_prompt("<image>\\nHow many circles?", ["I count 2."], prompt_format="bis_reference")
    'Question: <image>\\nHow many circles?\\nProcess: I count 2.<prm>'

    ```
    """
    check_prompt_format(prompt_format)
    question = strip_image_placeholders(question) if prompt_format == "bis_prm" else question.strip()
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


def internvl2_5_conversation(prompt: str, num_images: int, image_token: str, bos_token: str = "") -> str:
    """
    The BIS reference code's training sequence of a rendered prompt (`prompt_format="bis_reference"`): InternVL's
    `internvl2_5` template with its system message, an empty user turn and the prompt in the assistant turn, as its
    `preprocess_internvl2_5` writes it.

    Without an `<image>` placeholder in the prompt, one `<image>\\n` per image goes before it (the reference does this
    for one image and refuses several without placeholders; here each missing one is added in front); the first
    `num_images` placeholders become `image_token`, which the InternVL processor expands to
    `<img><IMG_CONTEXT>*(tokens per tile * tiles)</img>`. Further `<image>` strings stay text, as in the reference.

    Args:
        prompt (`str`):
            The prompt of [`render_prompt`] with `prompt_format="bis_reference"`.
        num_images (`int`):
            The rollout's number of images.
        image_token (`str`):
            The processor's image token (`<IMG_CONTEXT>` for InternVL).
        bos_token (`str`, *optional*, defaults to `""`):
            Written first: the reference starts the sequence with the tokenizer's BOS when the tokenizer adds one
            (`add_bos_token`, the InternLM2 tokenizer of InternVL2.5-8B), and with nothing otherwise.

    Example:

    ```python
    >>> text = internvl2_5_conversation("Question: Q\\nProcess: a<prm>", 1, "<IMG_CONTEXT>")
    >>> text.splitlines()[-6:]
    ['<|im_start|>user', '<|im_end|>', '<|im_start|>assistant', '<IMG_CONTEXT>', 'Question: Q',
     'Process: a<prm><|im_end|>']

    ```
    """
    missing = num_images - prompt.count(REFERENCE_IMAGE_PLACEHOLDER)
    if missing > 0:
        prompt = f"{REFERENCE_IMAGE_PLACEHOLDER}\n" * missing + prompt
    if num_images > 0:
        prompt = prompt.replace(REFERENCE_IMAGE_PLACEHOLDER, image_token, num_images)
    return (
        f"{bos_token}<|im_start|>system\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\n"
        f"<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n{prompt}<|im_end|>\n"
    )


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
