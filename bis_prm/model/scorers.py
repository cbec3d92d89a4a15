"""The PRMs of others: scorers that read P(correct step) the way each model family's own reference code does.

Every scorer takes rows `{"question": str, "steps": list[str], "image": None | path | PIL | list}` and gives one
P(correct) per step, through the batching, `DataLoader` workers and token-budget planning of
[`~bis_prm.model.inference.StepScorerBase`]:

- `bis_prm`: PRMs trained with bis_prm; P(positive) at each `<prm>` ([`~bis_prm.model.inference.StepScorer`]).
- `trl`: TRL-trained PRMs (`*ForTokenClassification`): the prompt's tokens, then each step's tokens and the
  separator's (`"\\n"`); P(positive) at each step's last token.
- `qwen_prm`: Qwen2.5-Math-PRM-7B / -72B (remote code): system, user = question, assistant = the steps, each
  followed by `<extra_0>`; P(positive) at each `<extra_0>`.
- `math_shepherd`: math-shepherd-mistral-7b-prm: `{question} {step} ки\\n{step} ки`; the LM's `+` against `-` at
  each `ки`.
- `rlhflow`: RLHFlow Llama3.1-8B-PRM-*: user = question and first step, each later step a user turn, the assistant
  answering `+`; `+` against `-` where each answer is predicted.
- `visualprm`: VisualPRM-8B style VLMs in the Hugging Face layout: as `rlhflow`, with VisualPRM's system prompt and
  first turn (the images, the question and the first step).

[`load_scorer`] loads a checkpoint with the scorer its config calls for (`scorer="auto"`), or the one named.
Remote code runs only with `trust_remote_code=True` (`--trust-remote-code`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import Any

import torch

from bis_prm.data.images import ImageProblem
from bis_prm.data.prompt import ExampleError, check_rollout, strip_image_placeholders
from bis_prm.model.inference import StepScorer, StepScorerBase, _image_sizes, _image_tokens
from bis_prm.model.modeling_prm import positive_index
from bis_prm.model.processing_prm import _example_images, is_text_processor, step_token_id

__all__ = [
    "QWEN_PRM_SYSTEM_PROMPT",
    "SCORERS",
    "VISUALPRM_SYSTEM_PROMPT",
    "ConversationScorer",
    "QwenPRMScorer",
    "RLHFlowScorer",
    "StepTagScorer",
    "TokenClassificationScorer",
    "VisualPRMScorer",
    "checkpoint_step_token",
    "load_scorer",
    "model_class_for",
    "resolve_scorer",
]

# Qwen2.5-Math-PRM's model card
QWEN_PRM_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
# VisualPRM's training conversations (OpenGVLab/InternVL, tools/reasoning_data_pipeline/utils/constants.py)
VISUALPRM_SYSTEM_PROMPT = (
    "You are an advanced AI assistant, designed to serve as a process supervision model. In this task, I will "
    "provide a problem statement followed by the first step of the solution process. For each subsequent turn, I "
    "will give you a new step in the solution. Your role is to assess whether the solution process is correct up to "
    "the current step.\n\n"
    "- In the **first round**, I will input the problem and the first step of the solution process.\n"
    "- In **each subsequent round**, I will provide the next step in the solution.\n\n"
    "For each step, you should:\n\n"
    '- Respond with **"+"** if you believe the solution process is correct up to this step.\n'
    '- Respond with **"-"** if you detect any issues or errors in the process up to this step.\n\n'
    "Please note:\n"
    '- Only respond with **"+"** or **"-"**. Do not provide any additional explanations, comments, or '
    "justifications.\n\n"
    "Your task is to verify the accuracy and correctness of each step in the given solution process."
)


def _question_and_steps(example: dict[str, Any], step_token: str | None) -> tuple[str, list[str]]:
    question, steps = example.get("question"), example.get("steps")
    if not isinstance(question, str) or not isinstance(steps, (list, tuple)):
        raise ExampleError("wrong_type", "needs a `question` string and a `steps` list")
    if not all(isinstance(step, str) for step in steps):
        raise ExampleError("wrong_type", "`steps` must be a list of strings")
    check_rollout(question, steps, step_token)
    return question, list(steps)


def _token_id(tokenizer, token: str) -> int:
    """The id of `token` as a vocabulary entry (what the reference code reads), else its single-token encoding."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is not None and token_id != tokenizer.unk_token_id:
        return token_id
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"The tokenizer has no single token for {token!r} (it encodes it as {ids}).")
    return ids[0]


def _with_pad_token(tokenizer):
    # batches need a pad token; the attention mask hides it (RLHFlow's code pads with EOS the same way)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad nor an EOS token; set `tokenizer.pad_token`.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _pad(rendered: list[tuple[list[int], list[int]]], pad_id: int, padding_side: str) -> dict[str, torch.Tensor]:
    """Token ids and step positions of rows as a padded batch with its `step_mask`."""
    width = max(len(ids) for ids, _ in rendered)
    input_ids = torch.full((len(rendered), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rendered), width), dtype=torch.long)
    step_mask = torch.zeros((len(rendered), width), dtype=torch.bool)
    for row, (ids, positions) in enumerate(rendered):
        offset = 0 if padding_side == "right" else width - len(ids)
        input_ids[row, offset : offset + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, offset : offset + len(ids)] = 1
        step_mask[row, [offset + position for position in positions]] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "step_mask": step_mask}


class TokenClassificationScorer(StepScorerBase):
    """
    Score with a token-classification PRM trained by TRL's `PRMTrainer` (`*ForTokenClassification`, 2 classes):
    the model input is built as TRL's `tokenize_row` builds it (the BOS if the tokenizer has one, the prompt's tokens,
    then each step's tokens followed by the separator's tokens), and a step's score is P(positive) at its last token
    (the separator's last), the class read from the config (see [`~bis_prm.model.modeling_prm.positive_index`]).

    Args:
        model ([`~transformers.PreTrainedModel`]): the PRM.
        processor ([`~transformers.PreTrainedTokenizerBase`]): its tokenizer.
        step_separator (`str`, *optional*, defaults to `"\\n"`): the `step_separator` it was trained with.
        **kwargs: batching arguments of [`~bis_prm.model.inference.StepScorerBase`].

    Example:

    ```python
    >>> scorer = load_scorer("my-trl-prm", scorer="trl", step_separator="\\n")  # doctest: +SKIP
    >>> scorer.score_rows([{"question": "1 + 1?", "steps": ["1 + 1 = 2.", "So 2."]}])  # doctest: +SKIP
    [[0.91, 0.88]]

    ```
    """

    def __init__(self, model, processor, step_separator: str = "\n", **kwargs):
        super().__init__(model, processor, **kwargs)
        _with_pad_token(self.tokenizer)
        self.separator_ids = self.tokenizer(step_separator, add_special_tokens=False).input_ids
        if not self.separator_ids:
            raise ValueError(f"The step separator {step_separator!r} encodes to no token.")
        self.positive_index = positive_index(model.config)

    def render(self, example: dict[str, Any], index: int) -> tuple[list[int], list[int]]:
        if example.get("image") not in (None, "", [], ()):
            raise ExampleError("image_for_text_model", "the rollout has images but the PRM is a text model", index)
        question, steps = _question_and_steps(example, None)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids = bos + self.tokenizer(question, add_special_tokens=False).input_ids
        positions = []
        for step_ids in self.tokenizer(steps, add_special_tokens=False).input_ids:
            ids += step_ids + self.separator_ids
            positions.append(len(ids) - 1)
        return ids, positions

    def collate(self, rendered: list, positions: list[int]) -> dict[str, torch.Tensor]:
        return _pad(rendered, self.tokenizer.pad_token_id, self.padding_side)

    def lengths(self, examples: Sequence[dict[str, Any]]) -> list[int]:
        lengths = []
        for index, example in enumerate(examples):
            try:
                lengths.append(len(self.render(example, index)[0]))
            except ExampleError:
                lengths.append(0)
        return lengths

    def step_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=-1)[..., self.positive_index]


class _TextScorer(StepScorerBase):
    """Rows rendered as text (a chat template's, or plain) plus images, run through the processor; the step positions
    are found in the token ids by `step_positions` and must be one per step."""

    #: Whether the tokenizer adds its special tokens (a BOS) to the rendered text of a text model.
    add_special_tokens = False

    def __init__(self, model, processor, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.text_only = is_text_processor(processor)
        _with_pad_token(self.tokenizer)

    def text(self, question: str, steps: list[str], num_images: int) -> str:
        """The model's input text for a row with `num_images` images."""
        raise NotImplementedError

    def step_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Bool `[batch, seq]`: where the step scores are read."""
        raise NotImplementedError

    def render(self, example: dict[str, Any], index: int) -> tuple[str, list, int]:
        question, steps = _question_and_steps(example, self.step_token)
        try:
            images = _example_images(example)
        except ImageProblem as error:
            raise ExampleError(error.reason, str(error), example=index) from error
        if images and self.text_only:
            raise ExampleError("image_for_text_model", "the rollout has images but the PRM is a text model", index)
        return self.text(question, steps, len(images)), images, len(steps)

    def collate(self, rendered: list, positions: list[int]) -> dict[str, torch.Tensor]:
        images = [image for _, row_images, _ in rendered for image in row_images]
        kwargs = {"images": images} if images else {}
        if self.text_only:
            kwargs["add_special_tokens"] = self.add_special_tokens
        texts = [text for text, _, _ in rendered]
        batch = self.processor(text=texts, padding=True, padding_side=self.padding_side, return_tensors="pt", **kwargs)
        batch = dict(batch)
        step_mask = self.step_positions(batch["input_ids"]) & batch["attention_mask"].bool()
        for row, (_, _, num_steps) in enumerate(rendered):
            found = int(step_mask[row].sum())
            if found != num_steps:
                raise ExampleError(
                    "processing_failed",
                    f"found {found} step positions for {num_steps} steps (the text mimics the format's markers, or "
                    "the tokenizer merged one with the text)",
                    example=positions[row],
                )
        batch["step_mask"] = step_mask
        return batch

    def lengths(self, examples: Sequence[dict[str, Any]]) -> list[int]:
        texts, image_tokens = [], []
        for example in examples:
            try:
                question, steps = _question_and_steps(example, self.step_token)
                sizes = _image_sizes(example)
                if sizes and self.text_only:
                    raise ExampleError("image_for_text_model", "the rollout has images but the PRM is a text model")
                texts.append(self.text(question, steps, len(sizes)))
                image_tokens.append(_image_tokens(self.processor, sizes))
            except (ExampleError, ImageProblem, KeyError, TypeError):
                texts.append(None)
                image_tokens.append(0)
        renderable = [text for text in texts if text is not None]
        special = self.text_only and self.add_special_tokens
        counts = iter(self.tokenizer(renderable, add_special_tokens=special)["input_ids"] if renderable else [])
        return [
            0 if text is None else len(next(counts)) + extra for text, extra in zip(texts, image_tokens, strict=True)
        ]


class QwenPRMScorer(_TextScorer):
    """
    Score with Qwen2.5-Math-PRM-7B / -72B (`Qwen2ForProcessRewardModel`, remote code), as its model card does: the
    chat `[system, user = question, assistant = "<extra_0>".join(steps) + "<extra_0>"]`, P(positive) = softmax of the
    two logits at each `<extra_0>`.

    Args:
        model ([`~transformers.PreTrainedModel`]): the PRM (logits `[batch, seq, 2]`).
        processor ([`~transformers.PreTrainedTokenizerBase`]): its tokenizer, which knows `step_token`.
        system_prompt (`str`, *optional*, defaults to `QWEN_PRM_SYSTEM_PROMPT`): the system turn.
        step_token (`str`, *optional*, defaults to `"<extra_0>"`): the token after each step.
        **kwargs: batching arguments of [`~bis_prm.model.inference.StepScorerBase`].

    Example:

    ```python
    >>> scorer = load_scorer("Qwen/Qwen2.5-Math-PRM-7B", trust_remote_code=True)  # doctest: +SKIP
    >>> scorer.score_rows([{"question": "1 + 1?", "steps": ["1 + 1 = 2.", "The answer is 2."]}])  # doctest: +SKIP
    [[0.99, 0.98]]

    ```
    """

    # `tokenizer.encode(conversation)` in the model card: Qwen's tokenizer adds no BOS, others may
    add_special_tokens = True

    def __init__(
        self, model, processor, system_prompt: str = QWEN_PRM_SYSTEM_PROMPT, step_token: str = "<extra_0>", **kwargs
    ):
        super().__init__(model, processor, **kwargs)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError("The tokenizer has no chat template; Qwen2.5-Math-PRM reads a chat conversation.")
        self.system_prompt, self.step_token = system_prompt, step_token
        self.step_token_id = step_token_id(self.tokenizer, step_token)
        self.positive_index = positive_index(model.config)

    def text(self, question: str, steps: list[str], num_images: int) -> str:
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": question},
            {"role": "assistant", "content": self.step_token.join(steps) + self.step_token},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def step_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.step_token_id

    def step_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=-1)[..., self.positive_index]


class StepTagScorer(_TextScorer):
    """
    Score with a causal LM that answers at a step tag, math-shepherd style (`peiyi9979/math-shepherd-mistral-7b-prm`):
    the input `f"{question} {step_1} ки\\n{step_2} ки..."` with the tokenizer's BOS, and at each tag the LM's logits
    of the good and bad tokens (the two tokens of `f"{good_token} {bad_token}"`), P(correct) = softmax over the two, of
    the good one.

    Args:
        model ([`~transformers.PreTrainedModel`]): the causal LM.
        processor ([`~transformers.PreTrainedTokenizerBase`]): its tokenizer.
        step_tag (`str`, *optional*, defaults to `"ки"`): the tag after each step.
        good_token (`str`, *optional*, defaults to `"+"`), bad_token (`str`, *optional*, defaults to `"-"`):
            the answers the LM was trained to give at the tag.
        **kwargs: batching arguments of [`~bis_prm.model.inference.StepScorerBase`].

    Example:

    ```python
    >>> scorer = load_scorer("peiyi9979/math-shepherd-mistral-7b-prm", scorer="math_shepherd")  # doctest: +SKIP
    >>> rows = [{"question": "1 + 1?", "steps": ["Step 1: 1 + 1 = 2.", "Step 2: The answer is: 2"]}]
    >>> scorer.score_rows(rows)  # doctest: +SKIP
    [[0.97, 0.95]]

    ```
    """

    add_special_tokens = True
    forward_kwargs = {"use_cache": False}

    def __init__(self, model, processor, step_tag: str = "ки", good_token: str = "+", bad_token: str = "-", **kwargs):
        super().__init__(model, processor, **kwargs)
        self.step_token = step_tag
        candidates = self.tokenizer(f"{good_token} {bad_token}", add_special_tokens=False).input_ids
        if len(candidates) != 2:
            raise ValueError(f"{good_token!r} and {bad_token!r} must be one token each; got {candidates}.")
        self.candidate_ids = candidates
        self.step_tag_id = self.tokenizer(step_tag, add_special_tokens=False).input_ids[-1]

    def text(self, question: str, steps: list[str], num_images: int) -> str:
        return f"{question} " + "\n".join(f"{step} {self.step_token}" for step in steps)

    def step_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.step_tag_id

    def step_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self.candidate_ids].float().softmax(dim=-1)[..., 0]


class ConversationScorer(_TextScorer):
    """
    Score with a (vision-)language model that judges a solution turn by turn: the question and the first step are the
    first user turn, every later step is a user turn, and the assistant answers `good_token` after each (the
    conversation's own answers are `good_token`, as at training time). A step's score is P(`good_token`) against
    P(`bad_token`) at the position that predicts the assistant's answer: the last token of the assistant header of its
    turn. One forward pass scores every step (a causal LM's logits there do not depend on later turns).

    Args:
        model ([`~transformers.PreTrainedModel`]): the causal LM or VLM (`*ForConditionalGeneration`).
        processor: its tokenizer or processor, with a chat template.
        system_prompt (`str`, *optional*): a system turn.
        first_turn (`str`, *optional*, defaults to `"{question} {step}"`): the first user turn's text.
        good_token (`str`, *optional*, defaults to `"+"`), bad_token (`str`, *optional*, defaults to `"-"`):
            the assistant's answers for a correct and a wrong step.
        strip_steps (`bool`, *optional*, defaults to `False`): strip every step's whitespace first.
        **kwargs: batching arguments of [`~bis_prm.model.inference.StepScorerBase`].

    Example:

    ```python
    >>> scorer = ConversationScorer(model, tokenizer, first_turn="{question}\\n\\n{step}")  # doctest: +SKIP

    ```
    """

    forward_kwargs = {"use_cache": False}

    def __init__(
        self,
        model,
        processor,
        system_prompt: str | None = None,
        first_turn: str = "{question} {step}",
        good_token: str = "+",
        bad_token: str = "-",
        strip_steps: bool = False,
        **kwargs,
    ):
        super().__init__(model, processor, **kwargs)
        if getattr(processor, "chat_template", None) is None:
            raise ValueError("The processor has no chat template; a conversation PRM reads a chat.")
        self.system_prompt, self.first_turn, self.good_token = system_prompt, first_turn, good_token
        self.strip_steps = strip_steps
        self.candidate_ids = [_token_id(self.tokenizer, good_token), _token_id(self.tokenizer, bad_token)]
        # The assistant header (`<|im_start|>assistant\\n`, ...) followed by the answer, as tokenised in context
        probe = [self._user_turn("x", 0)]
        opened = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        closed = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
        if not opened.startswith(closed) or opened == closed:
            raise ValueError("The chat template writes no assistant header to read the answer after.")
        header = self.tokenizer(opened[len(closed) :], add_special_tokens=False).input_ids
        answered = self.tokenizer(opened[len(closed) :] + good_token, add_special_tokens=False).input_ids
        if answered[: len(header)] != header or len(answered) == len(header):
            raise ValueError(f"The tokenizer merges the assistant header with {good_token!r}.")
        self.header_length = len(header)
        self.pattern = torch.tensor(answered, dtype=torch.long)

    def _user_turn(self, text: str, num_images: int) -> dict[str, Any]:
        if self.text_only:
            return {"role": "user", "content": text}
        return {"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}]}

    def _first_user_turn(self, question: str, step: str, num_images: int) -> dict[str, Any]:
        return self._user_turn(self.first_turn.format(question=question, step=step), num_images)

    def text(self, question: str, steps: list[str], num_images: int) -> str:
        steps = [step.strip() for step in steps] if self.strip_steps else steps
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        if not self.text_only and messages:
            messages[0]["content"] = [{"type": "text", "text": self.system_prompt}]
        for k, step in enumerate(steps):
            turn = self._first_user_turn(question, step, num_images) if k == 0 else self._user_turn(step, 0)
            answer = self.good_token if self.text_only else [{"type": "text", "text": self.good_token}]
            messages += [turn, {"role": "assistant", "content": answer}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def step_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        width = len(self.pattern)
        if input_ids.shape[1] < width:
            return mask
        hits = (input_ids.unfold(1, width, 1) == self.pattern).all(dim=-1)  # [batch, seq - width + 1]
        start = self.header_length - 1
        mask[:, start : start + hits.shape[1]] = hits
        return mask

    def step_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self.candidate_ids].float().softmax(dim=-1)[..., 0]


class RLHFlowScorer(ConversationScorer):
    """
    Score with an RLHFlow PRM (`RLHFlow/Llama3.1-8B-PRM-Deepseek-Data`, `-Mistral-Data`) as its evaluation code
    (RLHF-Reward-Modeling, `math-rm/prm_evaluate.py`) does: the first user turn is `question + " " + first step`,
    each later step a user turn, steps stripped, the assistant answering `"+"`; the score is P(`+`) against P(`-`)
    where the assistant's answer is predicted. (QwenLM/ProcessBench's script joins the question and the first step
    with `"\\n\\n"`: `first_turn="{question}\\n\\n{step}"`.)

    Example:

    ```python
    >>> scorer = load_scorer("RLHFlow/Llama3.1-8B-PRM-Deepseek-Data", scorer="rlhflow")  # doctest: +SKIP

    ```
    """

    def __init__(self, model, processor, first_turn: str = "{question} {step}", **kwargs):
        kwargs.setdefault("strip_steps", True)
        super().__init__(model, processor, first_turn=first_turn, **kwargs)


class VisualPRMScorer(ConversationScorer):
    """
    Score with a VisualPRM-8B style multimodal PRM in the Hugging Face layout (`AutoModelForImageTextToText`, e.g. an
    InternVL2.5 converted to `InternVLForConditionalGeneration`) as VisualPRM's `generate_steps_with_soft_score_v2`
    does: its system prompt; the first user turn
    `### Question:\\n<images>{question}\\n\\n### Solution Process:\\n{step}` (the images where VisualPRM puts its
    `<image>\\n`, the question's own `<image>` placeholders removed), each later step a user turn, the assistant
    answering `"+"`; the score is P(`+`) against P(`-`) at the last token of each assistant header.

    Example:

    ```python
    >>> scorer = load_scorer("path/to/VisualPRM-8B-hf", scorer="visualprm", dtype="bfloat16")  # doctest: +SKIP
    >>> scorer.score_rows([{"image": "fig.png", "question": "Area?", "steps": ["r = 2.", "So 4π."]}])  # doctest: +SKIP
    [[0.93, 0.71]]

    ```
    """

    def __init__(self, model, processor, system_prompt: str | None = VISUALPRM_SYSTEM_PROMPT, **kwargs):
        super().__init__(model, processor, system_prompt=system_prompt, **kwargs)

    def _first_user_turn(self, question: str, step: str, num_images: int) -> dict[str, Any]:
        rest = f"{strip_image_placeholders(question)}\n\n### Solution Process:\n{step}"
        if self.text_only:
            return {"role": "user", "content": f"### Question:\n{rest}"}
        content = [{"type": "text", "text": "### Question:\n"}, *[{"type": "image"}] * num_images]
        return {"role": "user", "content": [*content, {"type": "text", "text": rest}]}


# scorer name -> (class, the Auto class that loads its model, whether its processor is multimodal)
SCORERS: dict[str, tuple[type, str, bool]] = {
    "bis_prm": (StepScorer, "AutoModelForTokenClassification", True),
    "trl": (TokenClassificationScorer, "AutoModelForTokenClassification", False),
    "qwen_prm": (QwenPRMScorer, "AutoModel", False),
    "math_shepherd": (StepTagScorer, "AutoModelForCausalLM", False),
    "rlhflow": (RLHFlowScorer, "AutoModelForCausalLM", False),
    "visualprm": (VisualPRMScorer, "AutoModelForImageTextToText", True),
}


_ARCHITECTURE_SUFFIXES = {
    "AutoModelForTokenClassification": "ForTokenClassification",
    "AutoModelForCausalLM": "ForCausalLM",
    "AutoModelForImageTextToText": "ForConditionalGeneration",
}


def resolve_scorer(config: dict[str, Any], scorer: str = "auto") -> str:
    """
    The scorer for a checkpoint's `config.json` (as a dict): `scorer` itself unless `"auto"`, which picks `bis_prm`
    for a PRM trained here (`prm_head`), `qwen_prm` for a `*ProcessRewardModel` and `trl` for a
    `*ForTokenClassification`; a causal LM or VLM answers with tokens in a format its config does not name.

    Raises:
        `ValueError`: for an unknown scorer, or a checkpoint `"auto"` cannot place (naming the choices).

    Example:

    ```python
    >>> resolve_scorer({"architectures": ["Qwen2ForProcessRewardModel"]})
    'qwen_prm'
    >>> resolve_scorer({"architectures": ["Qwen2ForTokenClassification"]})
    'trl'

    ```
    """
    if scorer != "auto":
        if scorer not in SCORERS:
            raise ValueError(f"Unknown scorer {scorer!r}; choose one of {['auto', *SCORERS]}.")
        return scorer
    if "prm_head" in config:
        return "bis_prm"
    architectures = config.get("architectures") or []
    if any(name.endswith("ProcessRewardModel") for name in architectures):
        return "qwen_prm"
    if any(name.endswith("ForTokenClassification") for name in architectures):
        return "trl"
    raise ValueError(
        f"Cannot tell how to score a {', '.join(architectures) or 'model without architectures'}: a causal LM or VLM "
        "PRM answers with tokens in its own format; name it with scorer= (--scorer): math_shepherd, rlhflow or "
        "visualprm."
    )


def model_class_for(config: dict[str, Any], scorer: str, trust_remote_code: bool = False) -> str:
    """
    The name of the transformers Auto class that loads a checkpoint for `scorer`, from its `config.json` (as a
    dict): the scorer's own, or the checkpoint's modeling code when its `auto_map` names one for that class.

    Raises:
        `ValueError`: when that needs remote code and `trust_remote_code` is `False` (naming `--trust-remote-code`),
        or a `*ProcessRewardModel` names no modeling code.

    Example:

    ```python
    >>> model_class_for({"architectures": ["LlamaForCausalLM"]}, "rlhflow")
    'AutoModelForCausalLM'
    >>> model_class_for({"auto_map": {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}}, "qwen_prm")
    Traceback (most recent call last):
    ...
    ValueError: The checkpoint loads with its own modeling code (...); pass --trust-remote-code ...

    ```
    """
    auto_name = SCORERS[scorer][1]
    auto_map = config.get("auto_map") or {}
    if scorer == "qwen_prm" and "AutoModel" not in auto_map:
        if any(arch.endswith("ProcessRewardModel") for arch in config.get("architectures") or []):
            raise ValueError(
                f"The checkpoint is a {config['architectures'][0]} but its config.json names no modeling code."
            )
        auto_name = "AutoModelForTokenClassification"  # a Qwen2.5-Math-PRM converted to a stock class
    if auto_name in auto_map:
        if not trust_remote_code:
            raise ValueError(
                f"The checkpoint loads with its own modeling code ({auto_map[auto_name]}); pass --trust-remote-code "
                "(trust_remote_code=True) if you trust it."
            )
        return auto_name
    # a stock class loads any checkpoint of its model type, with a random head where the checkpoint has another
    suffix = _ARCHITECTURE_SUFFIXES[auto_name]
    architectures = config.get("architectures") or []
    if architectures and not any(arch.endswith(suffix) for arch in architectures):
        raise ValueError(
            f"The checkpoint is a {architectures[0]}; the {scorer!r} scorer reads a *{suffix} (scorer='auto' picks "
            "the scorer of a token-classification PRM)."
        )
    return auto_name


def checkpoint_step_token(model: str, scorer: str = "auto", head: str | None = None) -> str | None:
    """
    The text a bis_prm PRM reads its step scores at (its config's `step_token`), read without loading the model, or
    `None` for a checkpoint read by another scorer: each of those checks for its own marker (`<extra_0>`, `ки`) as
    it renders a row, and `<prm>` is plain text to it.

    Example:

    ```python
    >>> checkpoint_step_token("my-prm")  # doctest: +SKIP
    '<prm>'
    >>> checkpoint_step_token("Qwen/Qwen2.5-Math-PRM-7B") is None  # doctest: +SKIP
    True

    ```
    """
    config = _read_config(model, {})
    return config.get("step_token", "<prm>") if _scorer_name(config, scorer, head) == "bis_prm" else None


def _scorer_name(config: dict[str, Any], scorer: str, head: str | None) -> str:
    # a new head makes a bis_prm PRM of any base model
    return resolve_scorer(config, "bis_prm" if head is not None and scorer == "auto" else scorer)


def _read_config(name_or_path, hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    from transformers.utils import cached_file

    with open(cached_file(name_or_path, "config.json", **hub_kwargs), encoding="utf-8") as f:
        return json.load(f)


def load_scorer(
    model: str,
    scorer: str = "auto",
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    head: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **scorer_kwargs,
) -> StepScorerBase:
    """
    Load a PRM checkpoint and the scorer that reads its step scores (see the table in this module's docstring).

    Args:
        model (`str`):
            A local directory or Hub id.
        scorer (`str`, *optional*, defaults to `"auto"`):
            One of `SCORERS` (`bis_prm`, `trl`, `qwen_prm`, `math_shepherd`, `rlhflow`, `visualprm`), or `"auto"`
            (see [`resolve_scorer`]).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run the checkpoint's own modeling code (Qwen2.5-Math-PRM's `Qwen2ForProcessRewardModel`). A checkpoint
            that needs it is refused without it.
        device (`str` or `torch.device`, *optional*):
            Where the weights are loaded (`device_map={"": device}`).
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`):
            Weights dtype; `"auto"` keeps the checkpoint's.
        head (`str`, *optional*):
            `bis_prm` only: score a base VLM as a zero-shot judge with this new head (see [`~bis_prm.load_prm`]).
        model_kwargs (`dict`, *optional*):
            More `from_pretrained` arguments (`attn_implementation`, `revision`, ...).
        **scorer_kwargs:
            Arguments of the scorer class: `max_batch_size`, `max_batch_tokens`, `num_workers`, `padding_side`, and
            the format's own (`step_separator` for `trl`, `system_prompt`, `first_turn`, `max_images` for `bis_prm`).

    Raises:
        `ValueError`: for a checkpoint that needs remote code without `trust_remote_code`, or a scorer argument the
        scorer does not take.

    Example:

    ```python
    >>> scorer = load_scorer("Qwen/Qwen2.5-Math-PRM-7B", trust_remote_code=True, device="cuda")  # doctest: +SKIP
    >>> scorer.score_rows([{"question": "1 + 1?", "steps": ["1 + 1 = 2."]}])  # doctest: +SKIP
    [[0.99]]

    ```
    """
    import transformers

    model_kwargs = dict(model_kwargs or {})
    hub_kwargs = {
        key: model_kwargs[key] for key in ("revision", "token", "cache_dir", "local_files_only") if key in model_kwargs
    }
    config = _read_config(model, hub_kwargs)
    name = _scorer_name(config, scorer, head)
    scorer_class, _, multimodal = SCORERS[name]
    accepted = set(inspect.signature(scorer_class.__init__).parameters) | set(
        inspect.signature(StepScorerBase.__init__).parameters
    )
    unknown = sorted(set(scorer_kwargs) - accepted)
    if unknown:
        raise ValueError(f"The {name!r} scorer takes no {', '.join(unknown)}.")
    if head is not None and name != "bis_prm":
        raise ValueError(f"head={head!r} makes a bis_prm PRM of a base model; the {name!r} scorer takes none.")
    model_kwargs["dtype"] = dtype
    if device is not None:
        model_kwargs["device_map"] = {"": device}

    if name == "bis_prm":
        from bis_prm.model.modeling_prm import load_prm

        loaded, processor = load_prm(model, head=head, **model_kwargs)
        return scorer_class(loaded, processor, **scorer_kwargs)

    auto_name = model_class_for(config, name, trust_remote_code)
    loaded = getattr(transformers, auto_name).from_pretrained(
        model, trust_remote_code=trust_remote_code, **model_kwargs
    )
    processor_class = transformers.AutoProcessor if multimodal else transformers.AutoTokenizer
    processor = processor_class.from_pretrained(model, trust_remote_code=trust_remote_code, **hub_kwargs)
    return scorer_class(loaded.eval(), processor, **scorer_kwargs)
