"""The vision encoder of a VLM-based PRM: finding it, and freezing it while the projector and LM train (the paper's
recipe)."""

from __future__ import annotations

from torch import nn

__all__ = [
    "PROJECTOR_NAMES",
    "VISION_TOWER_NAMES",
    "freeze_vision_tower",
    "has_vision_tower",
    "is_vision_tower_parameter",
]

# Submodules holding the vision encoder, by architecture (Qwen2.5-VL: `visual`; InternVL / LLaVA-style: `vision_tower`)
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")
# Parts of a vision module that belong to the projector and stay trainable (Qwen2.5-VL's patch merger)
PROJECTOR_NAMES = ("merger",)


def is_vision_tower_parameter(name: str) -> bool:
    """
    Whether the parameter `name` belongs to the vision encoder (the projector excluded).

    Example:

    ```python
    >>> is_vision_tower_parameter("model.visual.blocks.0.attn.qkv.weight")
    True
    >>> is_vision_tower_parameter("model.visual.merger.mlp.0.weight")  # the projector
    False

    ```
    """
    parts = name.split(".")
    return any(part in VISION_TOWER_NAMES for part in parts) and not any(part in PROJECTOR_NAMES for part in parts)


def has_vision_tower(model: nn.Module) -> bool:
    """
    Whether the model has a vision encoder (a VLM) or not (a text LM).

    Example:

    ```python
    >>> has_vision_tower(nn.Linear(2, 2))
    False

    ```
    """
    return any(part in VISION_TOWER_NAMES for name, _ in model.named_modules() for part in name.split("."))


def freeze_vision_tower(model: nn.Module) -> int:
    """
    Freeze the vision encoder of a VLM and keep the projector trainable; returns the number of frozen parameters.

    The vision encoder is the submodule named `visual` (Qwen2.5-VL), `vision_tower` (InternVL) or `vision_model`;
    inside it, parameters of the projector (Qwen2.5-VL's `merger`) stay trainable.

    ```python
    >>> freeze_vision_tower(nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    ValueError: Found no vision encoder (a submodule named 'visual', 'vision_tower', 'vision_model') in Linear.

    ```
    """
    frozen = 0
    found = False
    for name, parameter in model.named_parameters():
        found = found or any(part in VISION_TOWER_NAMES for part in name.split("."))
        if is_vision_tower_parameter(name):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    if not found:
        raise ValueError(
            "Found no vision encoder (a submodule named "
            + ", ".join(repr(name) for name in VISION_TOWER_NAMES)
            + f") in {type(model).__name__}."
        )
    return frozen
