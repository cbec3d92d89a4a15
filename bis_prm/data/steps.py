"""Splitting a model's response into the steps a PRM scores, as VisualPRM400K's pipeline does.

A response is cut at a separator (`"\\n\\n"`); when that gives more than `max_steps` pieces, consecutive pieces are
merged in runs of `ceil(pieces / max_steps)` (joined with the separator again), so that no rollout has more than
`max_steps` steps and each step keeps its text. Shared by annotation (`bis-prm annotate`) and the RL rewards.
"""

from __future__ import annotations

import math

__all__ = ["STEP_SEPARATOR", "split_steps"]

STEP_SEPARATOR = "\n\n"


def split_steps(response: str, separator: str = STEP_SEPARATOR, max_steps: int | None = 12) -> list[str]:
    """
    The steps of `response`: pieces between `separator`s (stripped, empty pieces dropped), merged in runs of
    `ceil(pieces / max_steps)` when there are more than `max_steps`.

    Args:
        response (`str`):
            The model's answer.
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            What ends a step.
        max_steps (`int`, *optional*, defaults to `12`):
            Most steps (VisualPRM400K's setting); `None` for no limit.

    Returns:
        `list[str]`: the steps, in order; empty when the response has no text.

    Example:

    ```python
    >>> split_steps("a\\n\\nb\\n\\n\\n\\nc")
    ['a', 'b', 'c']
    >>> split_steps("1\\n\\n2\\n\\n3\\n\\n4\\n\\n5", max_steps=2)  # runs of ceil(5 / 2) = 3 pieces
    ['1\\n\\n2\\n\\n3', '4\\n\\n5']

    ```
    """
    if not separator:
        raise ValueError("The step separator must not be empty.")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
    pieces = [piece.strip() for piece in response.split(separator)]
    pieces = [piece for piece in pieces if piece]
    if max_steps is None or len(pieces) <= max_steps:
        return pieces
    run = math.ceil(len(pieces) / max_steps)
    return [separator.join(pieces[start : start + run]) for start in range(0, len(pieces), run)]
