"""Helpers shared by the tests: tiny checkpoints built once per session, rollouts, datasets and benchmarks in the
real layouts (the generators of `bis_prm.testing` write the larger ones)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from bis_prm.testing import TINY_TEXT_ARCHITECTURES, make_tiny_lm, make_tiny_vlm
from bis_prm.training.prm_config import PRMConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

# ---- tiny checkpoints and rollouts of the model tests ----

_BUILT: dict[str, Path] = {}


def tiny_base(arch: str, tmp_path_factory) -> Path:
    """Build the tiny base checkpoint of `arch` once per test session; `"<arch>-tied"` ties the LM head (VLMs),
    `"<arch>-base"` has no chat template (text LMs)."""
    if arch not in _BUILT:
        name, _, tied = arch.partition("-")
        overrides = {"tie_word_embeddings": True} if tied else {}
        if name in TINY_TEXT_ARCHITECTURES:  # "<arch>-base": a base LM's tokenizer, without a chat template
            _BUILT[arch] = make_tiny_lm(name, tmp_path_factory.mktemp(f"tiny-{arch}"), chat_template=tied != "base")
        else:
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


# ---- datasets of the trainer tests ----

# Step counts differ between rollouts so that "mean over labelled steps" and "mean of per-batch means" differ
_STEP_COUNTS = [1, 4, 2, 3, 2, 4, 1, 3]


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
        "activation_checkpointing": False,
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


# ---- corpora of the data-pipeline tests ----


def _rollout(image="img/a.png", scores=(1.0, 0.0), steps=None, **extra) -> str:
    steps = steps or [f"step {i}" for i in range(len(scores))]
    record = {"image": image, "question": "<image>\nQ?", "question_orig": "Q?", "answer": "A"}
    record["steps_with_score"] = [{"step": text, "score": score} for text, score in zip(steps, scores, strict=True)]
    record.update(extra)
    return json.dumps(record, ensure_ascii=False)


# (line, expected invalid_reason or None for a blank line that is not a rollout)
DIRTY_LINES = [
    (_rollout(scores=(0.5, 0.0)), ""),
    ("", None),
    ("   ", None),
    ('{"image": "img/b.png", "steps_with_score": [{"step": "s", "sc', "broken_json"),
    ("[1, 2, 3]", "broken_json"),
    (_rollout(scores=(0.25, 0.75)).replace("0.75", "null"), "missing_score"),
    (_rollout(scores=(0.25, 0.75)).replace("0.75", '"high"'), "missing_score"),
    (_rollout(scores=(0.25, 0.75)).replace("0.75", "NaN"), "missing_score"),
    (_rollout(scores=(0.25, 0.75)).replace(', "score": 0.75', ""), "missing_score"),
    (_rollout(scores=(0.25, 1.5)), "score_out_of_range"),
    (_rollout(scores=(-0.1, 0.5)), "score_out_of_range"),
    (_rollout(scores=(0.5, 0.5), steps=["ok", "  \n "]), "blank_step"),
    (_rollout(image=""), "missing_image"),
    (_rollout(image=None), "missing_image"),
    (_rollout(image=[]), ""),  # a text-only rollout
    (_rollout(scores=()), "no_steps"),
    (_rollout(image=["img/c.png", "img/d.png"], scores=(0.0, 0.0)), ""),
    (_rollout(scores=(1, 0)), ""),
    (_rollout(scores=(0.875, 0.125, 0.0), steps=["é 中文", "two", "three"]), ""),
]


def write_dirty_corpus(root: Path, copies: int = 2) -> Path:
    """`copies` sources each holding `DIRTY_LINES`, plus a clean file; returns the annotations directory."""
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    for c in range(copies):
        (annotations / f"dirty_{c}.jsonl").write_text("\n".join(line for line, _ in DIRTY_LINES) + "\n\n")
    (annotations / "zz_clean.jsonl").write_text(_rollout(scores=(0.5, 0.0)) + "\n" + _rollout(scores=(1.0,)) + "\n")
    return annotations


# ---- benchmarks of the evaluation tests ----

SOURCES = ["MMMU", "MathVision", "MathVerse", "DynaMath", "WeMath"]


def random_benchmark(seed: int, rows: int = 200, decimals: int | None = None, sources=SOURCES):
    """Random predictions/references/data_sources; `decimals` rounds the scores to force ties."""
    rng = random.Random(seed)
    predictions, references, data_sources = [], [], []
    for _ in range(rows):
        n = rng.randint(1, 10)
        scores = [rng.random() for _ in range(n)]
        predictions.append([round(s, decimals) for s in scores] if decimals is not None else scores)
        references.append(rng.choices([1, -1, 0], weights=[6, 3, 1], k=n))
        data_sources.append(rng.choice(sources))
    return predictions, references, data_sources


def write_benchmark(root: Path, rows: int = 6, seed: int = 0, image_size: int = 32) -> Path:
    """A small benchmark in the VisualProcessBench layout: `test.jsonl` + `images/`, some rows with 2 images."""
    from PIL import Image

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(rows):
        images = []
        for k in range(1 + index % 2):
            name = f"images/{index}_{k}.png"
            color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            Image.new("RGB", (image_size, image_size), color).save(root / name)
            images.append(name)
        n = 2 + index % 3
        lines.append(
            {
                "image": images,
                "question": f"Question {index}: what is {index} + {index}?",
                "answer": str(2 * index),
                "response": {
                    "steps": [f"Step {j} of row {index}." for j in range(n)],
                    "process_correctness": [[1, -1, 0][(index + j) % 3] for j in range(n)],
                },
                "policy_model": "tiny",
                "data_source": SOURCES[index % len(SOURCES)],
            }
        )
    (root / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return root
