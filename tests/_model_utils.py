"""Shared helpers for the model tests: tiny checkpoints built once per session, and sample rollouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from bis_prm.testing import make_tiny_vlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_BUILT: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one thread: for these tiny models, syncing threads on a loaded machine costs ~10x the compute."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_base(arch: str, tmp_path_factory) -> Path:
    """Build the tiny base checkpoint of `arch` once per test session; `"<arch>-tied"` ties the LM head."""
    if arch not in _BUILT:
        name, _, tied = arch.partition("-")
        overrides = {"tie_word_embeddings": True} if tied else {}
        _BUILT[arch] = make_tiny_vlm(name, tmp_path_factory.mktemp(f"tiny-{arch}"), **overrides)
    return _BUILT[arch]


def image(colour: str, size: tuple[int, int] = (40, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def rollouts() -> list[dict]:
    """Four rollouts of mixed lengths (1 to 4 steps), with one, two or no images, hard labels."""
    return [
        {
            "image": image("red"),
            "question": "<image>\nHow many red circles are there?",
            "steps": ["I count 2 red circles.", "So the answer is 2."],
            "labels": [1.0, 1.0],
        },
        {
            "image": [image("blue", (56, 28)), image("green", (28, 56))],
            "question": "<image1><image2>Which shape is blue?",
            "steps": ["The left one is blue.", "It is a square.", "Square has 4 sides.", "Answer: square."],
            "labels": [1.0, 0.0, 1.0, 0.0],
        },
        {"image": None, "question": "What is 3 + 4?", "steps": ["3 + 4 = 8."], "labels": [0.0]},
        {
            "image": image("yellow", (30, 30)),
            "question": "What is 12 * 3?",
            "steps": ["12 * 3 = 36.", "The answer is 36.", "Done."],
            "labels": [1.0, 0.0, 1.0],
        },
    ]


def soft(examples: list[dict]) -> list[dict]:
    """The same rollouts with soft (MC-score-like) labels."""
    values = [0.9, 0.2, 0.75, 0.1]
    return [
        {**ex, "labels": [values[(i + j) % len(values)] for j in range(len(ex["steps"]))]}
        for i, ex in enumerate(examples)
    ]


def step_logits(model, batch: dict, step_token_id: int) -> list[torch.Tensor]:
    """Logits [num_steps, 2] at the step tokens of every row."""
    inputs = {key: value for key, value in batch.items() if key not in ("labels", "num_steps")}
    with torch.no_grad():
        logits = model(**inputs).logits
    is_step = batch["input_ids"] == step_token_id
    return [logits[row][is_step[row]] for row in range(len(logits))]
