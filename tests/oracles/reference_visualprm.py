"""VisualPRM's own reading of a conversation (`generate_steps_with_soft_score`), one step at a time: the
conversation so far and an open assistant turn, P(+) of the softmax over [+, -] at the last position."""

from __future__ import annotations

from bis_prm.model.scorers import VISUALPRM_SYSTEM_PROMPT


def visualprm_turn_by_turn(model, processor, row: dict) -> list[float]:
    """The step scores of `row` (`image` None, one image or a list; `question`; `steps`), read turn by turn."""
    plus, minus = processor.tokenizer.convert_tokens_to_ids(["+", "-"])
    images = [] if row["image"] is None else row["image"] if isinstance(row["image"], list) else [row["image"]]
    question = row["question"].removeprefix("<image>\n")
    history, expected = f"<|im_start|>system\n{VISUALPRM_SYSTEM_PROMPT}<|im_end|>\n", []
    for k, step in enumerate(row["steps"]):
        if k == 0:  # "<IMG_CONTEXT>\n" is the (tiny and real) InternVL template's image placeholder
            images_text = "<IMG_CONTEXT>\n" * len(images)
            step = f"### Question:\n{images_text}{question}\n\n### Solution Process:\n{step}"
        query = history + f"<|im_start|>user\n{step}<|im_end|>\n<|im_start|>assistant\n"
        inputs = processor(text=[query], images=images or None, return_tensors="pt")
        logits = model(**inputs).logits[:, -1, [plus, minus]]
        expected.append(logits.softmax(dim=-1)[0, 0].item())
        history = query + "+<|im_end|>\n"
    return expected
