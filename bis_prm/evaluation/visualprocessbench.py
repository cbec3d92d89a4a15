"""Read VisualProcessBench (or any benchmark in its layout) faithfully, counting the rows it cannot use.

The layout is that of [OpenGVLab/VisualProcessBench](https://huggingface.co/datasets/OpenGVLab/VisualProcessBench):
`<dir>/test.jsonl` plus the images it names, one row per line:

    {"image": ["images/MathVerse/1.png"], "question": "...", "answer": "...", "policy_model": "...",
     "data_source": "MathVerse_MINI_Vision_Only",
     "response": {"steps": ["...", "..."], "process_correctness": [1, -1]}}

`image` is a list of paths relative to the benchmark root (a single string is read as a one-image list), labels are
1 (correct), -1 (wrong) and 0 (neutral, not counted), and `data_source` is kept exactly as written: the real file
names its sources the way VLMEvalKit does (`MathVerse_MINI_Vision_Only`, `MMMU_DEV_VAL`, ...), and every source is
evaluated unless a `sources` filter says otherwise.

No row can stop the reading: a row that cannot be scored is skipped with one of `SKIP_REASONS` and its 1-based line
number, so a changed denominator is always visible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bis_prm.data.images import MAX_IMAGE_PIXELS, ImageProblem, read_image_size, resolve_image
from bis_prm.evaluation.benchmark import Benchmark, benchmark_root, text_problem
from bis_prm.io.jsonl import iter_jsonl

__all__ = [
    "PAPER_SOURCES",
    "REPO_ID",
    "SKIP_REASONS",
    "VisualProcessBench",
    "display_source",
    "load_visualprocessbench",
]

# The names the VisualPRM and BIS papers give the five sources; the file itself uses longer VLMEvalKit names
PAPER_SOURCES = ("MMMU", "MathVision", "MathVerse", "DynaMath", "WeMath")
REPO_ID = "OpenGVLab/VisualProcessBench"

SKIP_REASONS = (
    "undecodable_line",  # not valid UTF-8
    "broken_json",  # not a JSON object (or nested beyond what a parser can take)
    "missing_fields",  # no response / steps / process_correctness / question / data_source
    "wrong_type",  # a field of the wrong type (e.g. steps not a list of strings)
    "no_steps",  # an empty solution
    "length_mismatch",  # steps and labels of different lengths
    "bad_label",  # a label other than 1, 0, -1
    "invalid_text",  # text that is not valid Unicode (a lone surrogate escape)
    "step_token_in_text",  # the question or a step already contains the PRM's step token
    "missing_image",
    "image_unreadable",  # empty, corrupt or not an image (at reading or at decoding time)
    "image_too_large",  # more pixels than allowed (decompression bomb)
    "processing_failed",  # the model's processor refused the row
)


def display_source(name: str) -> str:
    """
    A short name for tables and plots: the paper's name when `name` is a longer variant of it; metric keys keep
    the name as written.

    Example:

    ```python
    >>> display_source("MathVerse_MINI_Vision_Only"), display_source("MMMU_DEV_VAL"), display_source("ChartQA")
    ('MathVerse', 'MMMU', 'ChartQA')

    ```
    """
    for short in PAPER_SOURCES:
        if name.startswith(f"{short}_"):
            return short
    return name


@dataclass
class VisualProcessBench(Benchmark):
    """
    A loaded VisualProcessBench.

    Parameters:
        rows (`list[dict]`):
            The usable rows: `index` (0-based line in the JSONL file), `line` (1-based), `image` (resolved paths),
            `image_sizes` (`(width, height)` from the file headers), `question`, `answer`, `steps`, `labels` (1, 0,
            -1), `data_source`, `policy_model`.
        skipped ([`~bis_prm.io.jsonl.SkippedRows`]):
            The rows left out, by reason (one of `SKIP_REASONS`), with their 1-based lines and problems.
        excluded (`dict[str, int]`):
            Rows left out by the `sources` filter, per data source.
        path (`Path`):
            The JSONL file read.
        lines_read (`int`):
            Non-blank lines read.
    """

    SKIP_REASONS = SKIP_REASONS


def _resolve(dir_or_repo_id: str | os.PathLike, split: str) -> Path:
    path = benchmark_root(dir_or_repo_id)
    if path.is_file():
        return path
    jsonl = path / f"{split}.jsonl"
    if not jsonl.is_file():
        raise FileNotFoundError(f"No {split}.jsonl in {path}.")
    return jsonl


def _fields(record: object, step_token: str | None) -> tuple[dict | None, tuple[str, str] | None]:
    """The row's fields, or `(None, (reason, message))` when it cannot be scored (the image files are not opened)."""
    if not isinstance(record, dict):
        return None, ("broken_json", f"not a JSON object but a {type(record).__name__}")
    missing = [name for name in ("question", "data_source", "response") if record.get(name) is None]
    response = record.get("response")
    if not missing and isinstance(response, dict):
        missing = [f"response.{name}" for name in ("steps", "process_correctness") if response.get(name) is None]
    if missing:
        return None, ("missing_fields", f"no {', '.join(missing)}")
    if not isinstance(response, dict):
        return None, ("wrong_type", "field(s) of the wrong type: response")
    steps, labels = response["steps"], response["process_correctness"]
    images = record.get("image")
    images = [images] if isinstance(images, str) else [] if images is None else images
    wrong = [
        name
        for name, ok in (
            ("question", isinstance(record["question"], str)),
            ("data_source", isinstance(record["data_source"], str) and record["data_source"] != ""),
            ("response.steps", isinstance(steps, list) and all(isinstance(step, str) for step in steps)),
            ("response.process_correctness", isinstance(labels, list)),
            ("image", isinstance(images, list) and all(isinstance(image, str) and image for image in images)),
        )
        if not ok
    ]
    if wrong:
        return None, ("wrong_type", f"field(s) of the wrong type: {', '.join(wrong)}")
    if not steps:
        return None, ("no_steps", "the response has no step")
    if len(steps) != len(labels):
        return None, ("length_mismatch", f"{len(steps)} steps but {len(labels)} labels")
    if any(isinstance(label, bool) or label not in (1, 0, -1) for label in labels):
        return None, ("bad_label", f"labels must be 1, 0 or -1, got {labels}")
    texts = [("question", record["question"]), *((f"step {i + 1}", step) for i, step in enumerate(steps))]
    problem = text_problem(texts, step_token)
    if problem is not None:
        return None, problem
    row = {
        "image": images,
        "question": record["question"],
        "answer": record.get("answer"),
        "steps": list(steps),
        "labels": [int(label) for label in labels],
        "data_source": record["data_source"],
        "policy_model": record.get("policy_model"),
    }
    return row, None


def load_visualprocessbench(
    dir_or_repo_id: str | os.PathLike = REPO_ID,
    split: str = "test",
    sources: Sequence[str] | None = None,
    strict: bool = False,
    max_rows: int | None = None,
    step_token: str | None = "<prm>",
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> VisualProcessBench:
    """
    Load a benchmark in the VisualProcessBench layout: `<dir>/<split>.jsonl` and the images it names.

    Every line is read as written (a UTF-8 BOM and CRLF line ends are fine); unusable rows are skipped and recorded
    with their reason and 1-based line number (or raise with `strict=True`). Image files are checked from their
    headers: missing, unreadable and oversized images skip their row.

    Args:
        dir_or_repo_id (`str` or `os.PathLike`, *optional*, defaults to `"OpenGVLab/VisualProcessBench"`):
            A local directory, a JSONL file (images relative to its folder) or a Hub dataset repo id.
        split (`str`, *optional*, defaults to `"test"`):
            The JSONL file's stem.
        sources (`Sequence[str]`, *optional*):
            Keep only these `data_source` values (exact names); the others are counted in `excluded`. `None` keeps
            every source.
        strict (`bool`, *optional*, defaults to `False`):
            Raise a `ValueError` naming the file, line and problem instead of skipping.
        max_rows (`int`, *optional*):
            Read only the first `max_rows` lines.
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            Rows whose question or steps already contain it are skipped (`step_token_in_text`).
        max_image_pixels (`int`, *optional*, defaults to PIL's decompression-bomb limit):
            Rows with a larger image are skipped (`image_too_large`).

    Returns:
        [`VisualProcessBench`]: usable rows, skipped rows by reason, rows excluded by `sources`, the file read.

    Example:

    ```python
    >>> bench = load_visualprocessbench("datasets/VisualProcessBench")  # doctest: +SKIP
    >>> len(bench.rows), bench.num_steps, bench.skip_counts()  # doctest: +SKIP
    (2866, 26950, {})

    ```
    """
    path = _resolve(dir_or_repo_id, split)
    root = path.parent
    benchmark = VisualProcessBench(path=path)
    for line, record, problem in iter_jsonl(path, max_rows):
        benchmark.lines_read += 1
        row = None
        if problem is None:
            row, problem = _fields(record, step_token)
        if problem is None and sources is not None and row["data_source"] not in sources:
            benchmark.excluded[row["data_source"]] = benchmark.excluded.get(row["data_source"], 0) + 1
            continue
        if problem is None:
            try:
                row["image"] = [str(resolve_image(image, root, contained=False)) for image in row["image"]]
                row["image_sizes"] = [read_image_size(image, max_image_pixels) for image in row["image"]]
            except ImageProblem as error:
                problem = (error.reason, str(error))
        if problem is not None:
            if strict:
                raise ValueError(f"{path}, line {line}: {problem[1]}.")
            benchmark.skipped.add(problem[0], line, problem[1])
            continue
        benchmark.rows.append({"index": line - 1, "line": line, **row})
    return benchmark
