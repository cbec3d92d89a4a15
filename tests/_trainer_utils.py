"""Shared helpers of the trainer tests: a tiny base VLM on disk and small rollout datasets in the HF PRM format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from bis_prm.testing import make_tiny_vlm
from bis_prm.training.prm_config import PRMConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Step counts differ between rollouts so that "mean over labelled steps" and "mean of per-batch means" differ
_STEP_COUNTS = [1, 4, 2, 3, 2, 4, 1, 3]


def tiny_vlm(root: Path) -> str:
    """Write (once per root) the tiny random Qwen2.5-VL base checkpoint and return its path."""
    path = root / "tiny-qwen2_5_vl"
    if not (path / "config.json").exists():
        make_tiny_vlm("qwen2_5_vl", path)
    return str(path)


def write_images(root: Path, count: int = 4) -> list[str]:
    """Write `count` small coloured PNGs and return their absolute paths."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = root / f"img_{index}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def prm_dataset(image_paths: list[str], num_rows: int = 8, with_mc: bool = True) -> Dataset:
    """Rollouts in the HF PRM format; step `j` of row `i` is negative when `(i + j) % 3 == 2`."""
    rows = {"image": [], "question": [], "steps": [], "labels": [], "mc_scores": []}
    for i in range(num_rows):
        n = _STEP_COUNTS[i % len(_STEP_COUNTS)]
        mc = [0.0 if (i + j) % 3 == 2 else 0.5 + 0.125 * ((i + j) % 4) for j in range(n)]
        rows["image"].append([image_paths[i % len(image_paths)]])
        rows["question"].append(f"How many red circles are there in figure {i}?")
        rows["steps"].append([f"Step {j + 1}: we count {i + j} red circles." for j in range(n)])
        rows["labels"].append([1.0 if score > 0 else 0.0 for score in mc])
        rows["mc_scores"].append(mc)
    if not with_mc:
        del rows["mc_scores"]
    return Dataset.from_dict(rows)


def tiny_config(output_dir: Path, **overrides) -> PRMConfig:
    """A PRMConfig that trains the tiny model quickly and deterministically on a CPU."""
    kwargs = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "lr_scheduler_type": "constant",
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "bf16": False,
        "report_to": "none",
        "disable_tqdm": True,
        "max_length": 512,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    kwargs.update(overrides)
    return PRMConfig(**kwargs)


def state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def write_raw_corpus(root: Path, rollouts_per_source: int = 6) -> Path:
    """A VisualPRM400K-Raw style corpus (`annotations/*.jsonl` + images) with two sources; returns its root."""
    image_dir = root / "VisualPRM400K-v1.1-Raw" / "shapes"
    images = write_images(image_dir, count=3)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for source in ("shapes", "colors"):
        lines = []
        for i in range(rollouts_per_source):
            n = _STEP_COUNTS[i % len(_STEP_COUNTS)]
            scores = [0.0 if (i + j) % 3 == 2 else 0.5 + 0.125 * ((i + j) % 4) for j in range(n)]
            record = {
                "image": os.path.relpath(images[i % len(images)], root),
                "question": f"<image>\nHow many shapes are in {source} figure {i}?",
                "question_orig": f"How many shapes are in {source} figure {i}?",
                "answer": str(i),
                "steps_with_score": [{"step": f"We count {i + j}.", "score": s} for j, s in enumerate(scores)],
            }
            lines.append(json.dumps(record))
        (root / "annotations" / f"{source}.jsonl").write_text("\n".join(lines) + "\n")
    return root
