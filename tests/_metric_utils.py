"""Helpers for the VisualProcessBench metric, runner and Best-of-N tests: the loop oracle and data generators."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

SOURCES = ["MMMU", "MathVision", "MathVerse", "DynaMath", "WeMath"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def load_reference():
    """`benchmarks/reference_visualprocessbench.py`'s loop implementation (benchmarks/ is not a package)."""
    path = REPO_ROOT / "benchmarks" / "reference_visualprocessbench.py"
    spec = importlib.util.spec_from_file_location("reference_visualprocessbench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_visualprocessbench


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
