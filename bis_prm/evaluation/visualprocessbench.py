"""Read VisualProcessBench (or any benchmark in its layout) faithfully, counting the rows it cannot use."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DATA_SOURCES = ("MMMU", "MathVision", "MathVerse", "DynaMath", "WeMath")
REPO_ID = "OpenGVLab/VisualProcessBench"


@dataclass
class VisualProcessBench:
    """
    A loaded benchmark.

    Parameters:
        rows (`list[dict]`):
            The usable rows: `index` (0-based line in the JSONL file), `image` (absolute paths), `question`,
            `answer`, `steps`, `labels` (1, 0, -1), `data_source`, `policy_model`.
        skipped (`dict[str, list[int]]`):
            Reason -> line indices of the rows left out (`broken_json`, `missing_fields`, `length_mismatch`,
            `bad_label`, `unknown_source`, `missing_image`).
        path (`Path`):
            The JSONL file read.
    """

    rows: list[dict] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_steps(self) -> int:
        return sum(len(row["labels"]) for row in self.rows)

    def skip_counts(self) -> dict[str, int]:
        return {reason: len(indices) for reason, indices in self.skipped.items()}


def _resolve(dir_or_repo_id: str | os.PathLike, split: str) -> Path:
    path = Path(dir_or_repo_id)
    if path.is_file():
        return path
    if not path.exists():
        if str(dir_or_repo_id).count("/") != 1:
            raise FileNotFoundError(f"Benchmark {dir_or_repo_id!r} is neither a local directory nor a Hub repo id.")
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(dir_or_repo_id), repo_type="dataset"))
    jsonl = path / f"{split}.jsonl"
    if not jsonl.is_file():
        raise FileNotFoundError(f"No {split}.jsonl in {path}.")
    return jsonl


def _problem(record: dict, root: Path, sources: Sequence[str] | None) -> tuple[str, str] | None:
    """(reason, message) when a row cannot be used, else None."""
    response = record.get("response")
    if not isinstance(response, dict) or "steps" not in response or "process_correctness" not in response:
        return "missing_fields", "no response.steps / response.process_correctness"
    if "question" not in record:
        return "missing_fields", "no question"
    steps, labels = response["steps"], response["process_correctness"]
    if len(steps) != len(labels):
        return "length_mismatch", f"{len(steps)} steps but {len(labels)} labels"
    if any(label not in (1, 0, -1) or isinstance(label, bool) for label in labels):
        return "bad_label", f"labels must be 1, 0 or -1, got {labels}"
    source = record.get("data_source")
    if not isinstance(source, str) or not source or (sources is not None and source not in sources):
        return "unknown_source", f"data_source {source!r} is not one of {list(sources or [])}"
    for image in _images(record, root):
        if not image.is_file():
            return "missing_image", f"image {image} not found"
    return None


def _images(record: dict, root: Path) -> list[Path]:
    images = record.get("image") or []
    # the dataset card declares `image` a string; the JSONL holds a list
    images = [images] if isinstance(images, str) else images
    return [Path(image) if os.path.isabs(image) else root / image for image in images]


def load_visualprocessbench(
    dir_or_repo_id: str | os.PathLike = REPO_ID,
    split: str = "test",
    sources: Sequence[str] | None = DATA_SOURCES,
    strict: bool = False,
    max_rows: int | None = None,
) -> VisualProcessBench:
    """
    Load a benchmark in the VisualProcessBench layout: `<dir>/<split>.jsonl` and the images it names.

    Every line is read as written; unusable rows are skipped and counted by reason (or raise with `strict=True`),
    so a changed denominator is always visible.

    Args:
        dir_or_repo_id (`str` or `os.PathLike`, *optional*, defaults to `"OpenGVLab/VisualProcessBench"`):
            A local directory, a JSONL file (images relative to its folder) or a Hub dataset repo id.
        split (`str`, *optional*, defaults to `"test"`):
            The JSONL file's stem.
        sources (`Sequence[str]`, *optional*, defaults to the five VisualProcessBench sources):
            Accepted `data_source` values; `None` accepts any non-empty string.
        strict (`bool`, *optional*, defaults to `False`):
            Raise a `ValueError` naming the file, line and problem instead of skipping.
        max_rows (`int`, *optional*):
            Read only the first `max_rows` lines.

    Returns:
        [`VisualProcessBench`]: usable rows, skipped line indices by reason, and the file read.

    Example:
        >>> bench = load_visualprocessbench("datasets/VisualProcessBench")
        >>> len(bench.rows), bench.num_steps, bench.skip_counts()
        (2866, 26950, {})
    """
    path = _resolve(dir_or_repo_id, split)
    root = path.parent
    benchmark = VisualProcessBench(path=path)
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f]
    for index, line in enumerate(lines[:max_rows] if max_rows is not None else lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = None if isinstance(record, dict) else ("broken_json", "not a JSON object")
        except json.JSONDecodeError as err:
            problem = ("broken_json", str(err))
        problem = problem or _problem(record, root, sources)
        if problem is not None:
            if strict:
                raise ValueError(f"{path}, line {index + 1}: {problem[1]}.")
            benchmark.skipped.setdefault(problem[0], []).append(index)
            continue
        benchmark.rows.append(
            {
                "index": index,
                "image": [str(image) for image in _images(record, root)],
                "question": record["question"],
                "answer": record.get("answer"),
                "steps": list(record["response"]["steps"]),
                "labels": list(record["response"]["process_correctness"]),
                "data_source": record["data_source"],
                "policy_model": record.get("policy_model"),
            }
        )
    return benchmark
