"""Reading ProcessBench (Qwen, https://huggingface.co/papers/2412.06559) and benchmarks in its layout.

The layout is that of [Qwen/ProcessBench](https://huggingface.co/datasets/Qwen/ProcessBench): one file per split,
`gsm8k.json`, `math.json`, `olympiadbench.json`, `omnimath.json` (400 / 1,000 / 1,000 / 1,000 problems), each a JSON
array or JSON lines of

    {"id": "gsm8k-0", "generator": "Qwen2-7B-Instruct", "problem": "...", "steps": ["...", "..."],
     "final_answer_correct": false, "label": 1}

where `label` is the 0-based index of the first wrong step, -1 when every step is correct. The TRL stepwise layout of
the same data is read too: `{"prompt": "...", "completions": ["...", ...], "labels": [true, false, ...]}`, whose label
is the first `false` (-1 when none); so are the `.parquet` files of a converted Hub dataset
(`data/<split>-00000-of-00001.parquet`). Other fields are kept out of the rows and do no harm.

No row can stop the reading: a row that cannot be scored is skipped with one of `SKIP_REASONS`, its file and its
1-based line (the line where its JSON value starts in a JSON array).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bis_prm.evaluation.benchmark import Benchmark, BenchmarkNotFoundError, benchmark_root, text_problem
from bis_prm.io.jsonl import UTF8_BOM, iter_jsonl

__all__ = ["REPO_ID", "SKIP_REASONS", "SPLITS", "ProcessBench", "iter_records", "load_processbench"]

REPO_ID = "Qwen/ProcessBench"
SPLITS = ("gsm8k", "math", "olympiadbench", "omnimath")
EXTENSIONS = (".json", ".jsonl", ".parquet")

SKIP_REASONS = (
    "undecodable_line",  # not valid UTF-8
    "broken_json",  # not a JSON object (in a JSON array: the rest of the file cannot be read either)
    "missing_fields",  # no problem / steps / label (prompt / completions / labels)
    "wrong_type",  # a field of the wrong type (e.g. steps not a list of strings, label not an integer)
    "no_steps",  # an empty solution
    "length_mismatch",  # completions and labels of different lengths
    "bad_label",  # label not -1 or the index of a step
    "invalid_text",  # text that is not valid Unicode (a lone surrogate escape)
    "step_token_in_text",  # the problem or a step already contains the PRM's step token
    "duplicate_id",  # a second problem with the id of an earlier one of its split
    "processing_failed",  # the model's processor refused the row
)


@dataclass
class ProcessBench(Benchmark):
    """
    A loaded ProcessBench.

    Parameters:
        rows (`list[dict]`):
            The usable problems: `id`, `split`, `file`, `line` (1-based), `question`, `steps`, `label` (the first
            wrong step, -1 if none) and `image` (`None`).
        skipped ([`~bis_prm.io.jsonl.SkippedRows`]):
            The problems left out, by reason (one of `SKIP_REASONS`), with their files, 1-based lines and problems.
        excluded (`dict[str, int]`):
            Problems left out by the `splits` filter, per split.
        path (`Path`):
            The directory (or file) read.
        lines_read (`int`):
            Problems read (JSON lines, elements of JSON arrays, parquet rows).
    """

    SKIP_REASONS = SKIP_REASONS


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _iter_json_array(text: str) -> Iterator[tuple[int, Any, tuple | None]]:
    decoder = json.JSONDecoder()
    position, line = text.index("[") + 1, 1
    counted = 0  # `line` is the line of `counted`; counting on from there keeps the whole file one pass

    def skip_space(at: int) -> int:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    position = skip_space(position)
    if position < len(text) and text[position] == "]":
        return
    while True:
        line += text.count("\n", counted, position)
        counted = position
        try:
            record, end = decoder.raw_decode(text, position)
        except (ValueError, RecursionError) as error:
            where = _line_of(text, error.pos) if isinstance(error, json.JSONDecodeError) else line
            yield where, None, ("broken_json", f"not valid JSON, the rest of the file is not read ({error})")
            return
        yield line, record, None
        position = skip_space(end)
        if position < len(text) and text[position] == ",":
            position = skip_space(position + 1)
            continue
        if position < len(text) and text[position] == "]":
            return
        yield _line_of(text, position), None, ("broken_json", "expected ',' or ']' in the JSON array")
        return


def iter_records(path: str | os.PathLike, max_rows: int | None = None) -> Iterator[tuple[int, Any, tuple | None]]:
    """
    Yield `(line, record, None)` for every row of a JSON array, JSON lines or parquet file, and `(line, None,
    (reason, message))` for what cannot be read; lines are 1-based (a parquet row's line is its 1-based index).
    A UTF-8 BOM and CRLF line ends are read as written.

    Example:

    ```python
    >>> for line, record, problem in iter_records("gsm8k.json"):  # doctest: +SKIP
    ...     print(line, problem or record["label"])

    ```
    """
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, record in enumerate(pq.read_table(path).to_pylist()[:max_rows]):
            yield index + 1, record, None
        return
    data = path.read_bytes()
    start = data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data
    if not start.lstrip().startswith(b"["):
        yield from iter_jsonl(path, max_rows)
        return
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError as error:
        line = start.count(b"\n", 0, error.start) + 1
        yield line, None, ("undecodable_line", f"not valid UTF-8 ({error.reason}); the file is not read")
        return
    for count, item in enumerate(_iter_json_array(text)):
        if max_rows is not None and count >= max_rows:
            return
        yield item


def _split_of(path: Path) -> str:
    # a converted Hub dataset names its files `<split>-00000-of-00001.parquet`
    return path.stem.split("-")[0] if path.suffix == ".parquet" else path.stem


def _split_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = [
        path
        for folder in (root, root / "data")
        if folder.is_dir()
        for path in folder.iterdir()
        if path.suffix in EXTENSIONS and path.is_file()
    ]
    # next to the four splits a Hub repo may hold other JSON (dataset infos, ...): only the splits are read then
    known = [path for path in files if _split_of(path) in SPLITS]
    rank = {split: index for index, split in enumerate(SPLITS)}
    return sorted(known or files, key=lambda path: (rank.get(_split_of(path), len(rank)), _split_of(path), path.name))


def _official(record: dict) -> tuple[dict | None, tuple[str, str] | None]:
    missing = [name for name in ("problem", "steps", "label") if record.get(name) is None]
    if missing:
        return None, ("missing_fields", f"no {', '.join(missing)}")
    steps, label = record["steps"], record["label"]
    wrong = [
        name
        for name, ok in (
            ("problem", isinstance(record["problem"], str)),
            ("steps", isinstance(steps, list) and all(isinstance(step, str) for step in steps)),
            ("label", isinstance(label, int) and not isinstance(label, bool)),
        )
        if not ok
    ]
    if wrong:
        return None, ("wrong_type", f"field(s) of the wrong type: {', '.join(wrong)}")
    return {"question": record["problem"], "steps": steps, "label": label}, None


def _stepwise(record: dict) -> tuple[dict | None, tuple[str, str] | None]:
    missing = [name for name in ("prompt", "completions", "labels") if record.get(name) is None]
    if missing:
        return None, ("missing_fields", f"no {', '.join(missing)}")
    steps, labels = record["completions"], record["labels"]
    wrong = [
        name
        for name, ok in (
            ("prompt", isinstance(record["prompt"], str)),
            ("completions", isinstance(steps, list) and all(isinstance(step, str) for step in steps)),
            ("labels", isinstance(labels, list) and all(isinstance(label, bool) for label in labels)),
        )
        if not ok
    ]
    if wrong:
        return None, ("wrong_type", f"field(s) of the wrong type: {', '.join(wrong)}")
    if len(steps) != len(labels):
        return None, ("length_mismatch", f"{len(steps)} completions but {len(labels)} labels")
    label = labels.index(False) if False in labels else -1
    return {"question": record["prompt"], "steps": steps, "label": label}, None


def _fields(record: object, step_token: str | None) -> tuple[dict | None, tuple[str, str] | None]:
    if not isinstance(record, dict):
        return None, ("broken_json", f"not a JSON object but a {type(record).__name__}")
    row, problem = (_stepwise if "completions" in record and "steps" not in record else _official)(record)
    if problem is not None:
        return None, problem
    if not row["steps"]:
        return None, ("no_steps", "the solution has no step")
    if not -1 <= row["label"] < len(row["steps"]):
        return None, ("bad_label", f"label {row['label']} is neither -1 nor one of the {len(row['steps'])} steps")
    if record.get("id") is not None and not isinstance(record["id"], (str, int)):
        return None, ("wrong_type", "field(s) of the wrong type: id")
    texts = [("problem", row["question"]), *((f"step {i + 1}", step) for i, step in enumerate(row["steps"]))]
    problem = text_problem(texts, step_token)
    return (None, problem) if problem is not None else (row, None)


def load_processbench(
    dir_or_repo_id: str | os.PathLike = REPO_ID,
    splits: Sequence[str] | None = None,
    strict: bool = False,
    max_rows: int | None = None,
    step_token: str | None = "<prm>",
) -> ProcessBench:
    """
    Load ProcessBench, or a benchmark in its layout: the `.json`, `.jsonl` and `.parquet` files of a directory (or of
    its `data/` folder) are splits named after the files; when some are named like ProcessBench's four splits, only
    those are read.

    Args:
        dir_or_repo_id (`str` or `os.PathLike`, *optional*, defaults to `"Qwen/ProcessBench"`):
            A local directory, one split's file, or a Hub dataset repo id.
        splits (`Sequence[str]`, *optional*):
            Keep only these splits; the others are counted in `excluded`. `None` keeps every split.
        strict (`bool`, *optional*, defaults to `False`):
            Raise a `ValueError` naming the file, line and problem instead of skipping.
        max_rows (`int`, *optional*):
            Read only the first `max_rows` problems of each file.
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            Problems whose text already contains it are skipped (`step_token_in_text`).

    Returns:
        [`ProcessBench`]: usable problems, skipped problems by reason, problems excluded by `splits`.

    Example:

    ```python
    >>> bench = load_processbench("Qwen/ProcessBench")  # doctest: +SKIP
    >>> len(bench.rows), bench.skip_counts()  # doctest: +SKIP
    (3400, {})

    ```
    """
    root = benchmark_root(dir_or_repo_id, allow_patterns=["*.json", "*.jsonl", "data/*.parquet"])
    files = _split_files(root)
    if not files:
        raise BenchmarkNotFoundError(f"No .json, .jsonl or .parquet split file in {root}.")
    benchmark = ProcessBench(path=root)
    for path in files:
        split = _split_of(path)
        seen: set[str] = set()
        for line, record, problem in iter_records(path, max_rows):
            benchmark.lines_read += 1
            row = None
            if problem is None:
                row, problem = _fields(record, step_token)
            if problem is None:
                problem_id = str(record["id"]) if record.get("id") is not None else f"{split}-{line}"
                if problem_id in seen:
                    problem = ("duplicate_id", f"id {problem_id!r} appears earlier in {path.name}")
                seen.add(problem_id)
            if problem is None and splits is not None and split not in splits:
                benchmark.excluded[split] = benchmark.excluded.get(split, 0) + 1
                continue
            if problem is not None:
                if strict:
                    raise ValueError(f"{path}, line {line}: {problem[1]}.")
                benchmark.skipped.add(problem[0], line, problem[1], file=path.name)
                continue
            benchmark.rows.append(
                {"id": problem_id, "split": split, "file": path.name, "line": line, "image": None, **row}
            )
    return benchmark
