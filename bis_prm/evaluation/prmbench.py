"""Reading PRMBench (https://huggingface.co/papers/2501.03124) and benchmarks in its layout.

The layout is that of [hitsmy/PRMBench_Preview](https://huggingface.co/datasets/hitsmy/PRMBench_Preview) and of the
official toolkit's task `prmtest_classified` (ssmisya/PRMBench, `mr_eval`): JSON lines, in one file or in every
`.jsonl` file of a directory, of

    {"idx": "prm_test_p1_0", "classification": "circular", "original_question": "...", "modified_question": "...",
     "original_process": ["1. ...", ...], "modified_process": ["1. ...", ...], "modified_steps": [3, 4],
     "error_steps": [3, 4], "reason": "...", "question": "..."}

Each line becomes the problems the toolkit builds from it: the modified solution (`modified_question`,
`modified_process`, its 1-based `error_steps`), with the id `<classification>_<idx>`; and, for the `redundency`
lines only, the original solution as a problem of the category `correct` with no error step, id `correct_<idx>`.
As in the toolkit's models, a step's leading `"Step 3. "` or `"3. "` is removed before scoring. A second problem with
an id already read is skipped (`duplicate_id`), as the toolkit keeps the first.

No row can stop the reading: a row that cannot be scored is skipped with one of `SKIP_REASONS`, its file and its
1-based line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bis_prm.evaluation.benchmark import Benchmark, BenchmarkNotFoundError, benchmark_root, text_problem
from bis_prm.io.jsonl import iter_jsonl

__all__ = ["REPO_ID", "SKIP_REASONS", "PRMBench", "load_prmbench", "remove_step_prefix"]

REPO_ID = "hitsmy/PRMBench_Preview"
# the category whose lines also give the original, correct solution (the toolkit's `correct_sample_classification`)
CORRECT_FROM = "redundency"

SKIP_REASONS = (
    "undecodable_line",  # not valid UTF-8
    "broken_json",  # not a JSON object
    "missing_fields",  # no idx / classification / modified_question / modified_process / error_steps
    "wrong_type",  # a field of the wrong type (e.g. modified_process not a list of strings)
    "no_steps",  # an empty solution
    "invalid_text",  # text that is not valid Unicode (a lone surrogate escape)
    "step_token_in_text",  # the question or a step already contains the PRM's step token
    "duplicate_id",  # a problem id read before (the toolkit keeps the first)
    "processing_failed",  # the model's processor refused the row
)

_STEP_PREFIX = re.compile(r"^(Step\s*\d+\.\s*|\d+\.\s*)", flags=re.IGNORECASE)


def remove_step_prefix(step: str) -> str:
    """
    A step without its leading number, as the toolkit's `remove_step_prefix` (`mr_eval/utils/model_utils.py`).

    Example:

    ```python
    >>> remove_step_prefix("  Step 2. We have $3p+e=1.24$."), remove_step_prefix("12. So p = 0.29.")
    ('We have $3p+e=1.24$.', 'So p = 0.29.')

    ```
    """
    return _STEP_PREFIX.sub("", step.strip())


@dataclass
class PRMBench(Benchmark):
    """
    A loaded PRMBench.

    Parameters:
        rows (`list[dict]`):
            The usable problems: `id`, `classification`, `file`, `line` (1-based), `question`, `steps` (prefixes
            removed), `error_steps` (1-based) and `image` (`None`).
        skipped ([`~bis_prm.io.jsonl.SkippedRows`]):
            The lines left out, by reason (one of `SKIP_REASONS`), with their files, 1-based lines and problems.
        excluded (`dict[str, int]`):
            Problems left out by the `classifications` filter, per category.
        path (`Path`):
            The directory (or file) read.
        lines_read (`int`):
            Non-blank lines read.
    """

    SKIP_REASONS = SKIP_REASONS


def _wrong_types(record: dict, question: str, process: str) -> list[str]:
    steps = record[process]
    return [
        name
        for name, ok in (
            ("idx", isinstance(record["idx"], (str, int)) and not isinstance(record["idx"], bool)),
            ("classification", isinstance(record["classification"], str) and record["classification"] != ""),
            (question, isinstance(record[question], str)),
            (process, isinstance(steps, list) and all(isinstance(step, str) for step in steps)),
        )
        if not ok
    ]


def _problems(record: object, step_token: str | None) -> tuple[list[dict], tuple[str, str] | None]:
    """The problems of one line (the modified solution, and the original one for `redundency`), or why none."""
    if not isinstance(record, dict):
        return [], ("broken_json", f"not a JSON object but a {type(record).__name__}")
    required = ["idx", "classification", "modified_question", "modified_process", "error_steps"]
    if record.get("classification") == CORRECT_FROM:
        required += ["original_question", "original_process"]
    missing = [name for name in required if record.get(name) is None]
    if missing:
        return [], ("missing_fields", f"no {', '.join(missing)}")
    wrong = _wrong_types(record, "modified_question", "modified_process")
    error_steps = record["error_steps"]
    if not isinstance(error_steps, list) or not all(
        isinstance(step, int) and not isinstance(step, bool) for step in error_steps
    ):
        wrong.append("error_steps")
    if record["classification"] == CORRECT_FROM:
        wrong += [name for name in _wrong_types(record, "original_question", "original_process") if name not in wrong]
    if wrong:
        return [], ("wrong_type", f"field(s) of the wrong type: {', '.join(wrong)}")
    problems = [
        {
            "id": f"{record['classification']}_{record['idx']}",
            "classification": record["classification"],
            "question": record["modified_question"],
            "steps": [remove_step_prefix(step) for step in record["modified_process"]],
            "error_steps": list(error_steps),
        }
    ]
    if record["classification"] == CORRECT_FROM:
        problems.insert(
            0,
            {
                "id": f"correct_{record['idx']}",
                "classification": "correct",
                "question": record["original_question"],
                "steps": [remove_step_prefix(step) for step in record["original_process"]],
                "error_steps": [],
            },
        )
    for problem in problems:
        if not problem["steps"]:
            return [], ("no_steps", f"the solution of {problem['id']} has no step")
        texts = [("question", problem["question"]), *((f"step {i + 1}", s) for i, s in enumerate(problem["steps"]))]
        reason = text_problem(texts, step_token)
        if reason is not None:
            return [], reason
    return problems, None


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(path for path in root.rglob("*.jsonl") if path.is_file() and ".cache" not in path.parts)


def load_prmbench(
    dir_or_repo_id: str | os.PathLike = REPO_ID,
    classifications: Sequence[str] | None = None,
    strict: bool = False,
    max_rows: int | None = None,
    step_token: str | None = "<prm>",
) -> PRMBench:
    """
    Load PRMBench, or a benchmark in its layout: a JSONL file, or every `.jsonl` file of a directory (in name order).

    Args:
        dir_or_repo_id (`str` or `os.PathLike`, *optional*, defaults to `"hitsmy/PRMBench_Preview"`):
            A local directory or JSONL file, or a Hub dataset repo id.
        classifications (`Sequence[str]`, *optional*):
            Keep only these categories (`"correct"` included); the others are counted in `excluded`.
        strict (`bool`, *optional*, defaults to `False`):
            Raise a `ValueError` naming the file, line and problem instead of skipping.
        max_rows (`int`, *optional*):
            Read only the first `max_rows` lines of each file.
        step_token (`str`, *optional*, defaults to `"<prm>"`):
            Lines whose texts already contain it are skipped (`step_token_in_text`).

    Returns:
        [`PRMBench`]: usable problems, skipped lines by reason, problems excluded by `classifications`.

    Example:

    ```python
    >>> bench = load_prmbench("hitsmy/PRMBench_Preview")  # doctest: +SKIP
    >>> len(bench.rows), bench.skip_counts()  # doctest: +SKIP
    (6559, {})

    ```
    """
    root = benchmark_root(dir_or_repo_id, allow_patterns=["*.jsonl", "**/*.jsonl"])
    files = _files(root)
    if not files:
        raise BenchmarkNotFoundError(f"No .jsonl file in {root}.")
    benchmark = PRMBench(path=root)
    seen: set[str] = set()
    for path in files:
        name = str(path.relative_to(root)) if path != root else path.name
        for line, record, problem in iter_jsonl(path, max_rows):
            benchmark.lines_read += 1
            problems = []
            if problem is None:
                problems, problem = _problems(record, step_token)
            if problem is not None:
                if strict:
                    raise ValueError(f"{path}, line {line}: {problem[1]}.")
                benchmark.skipped.add(problem[0], line, problem[1], file=name)
                continue
            for row in problems:
                if row["id"] in seen:
                    if strict:
                        raise ValueError(f"{path}, line {line}: id {row['id']!r} was read before.")
                    benchmark.skipped.add("duplicate_id", line, f"id {row['id']!r} was read before", file=name)
                    continue
                seen.add(row["id"])
                if classifications is not None and row["classification"] not in classifications:
                    benchmark.excluded[row["classification"]] = benchmark.excluded.get(row["classification"], 0) + 1
                    continue
                benchmark.rows.append({"file": name, "line": line, "image": None, **row})
    return benchmark
