"""What the benchmark readers share: the loaded benchmark, the checks of a row's texts, and finding its files.

A benchmark reader (`load_visualprocessbench`, `load_processbench`, `load_prmbench`) returns a [`Benchmark`]: the
usable rows, each `{"question", "steps", "image", "line", ...}` ready for [`~bis_prm.model.inference.StepScorer`],
and the rows it skipped, by reason and 1-based line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from bis_prm.io.jsonl import SkippedRows, encodes_as_utf8

__all__ = ["Benchmark", "BenchmarkNotFoundError", "benchmark_root", "text_problem"]


class BenchmarkNotFoundError(FileNotFoundError):
    """Raised when a benchmark is neither a local path nor a Hub dataset that can be downloaded; the message says
    which and why."""


@dataclass
class Benchmark:
    """
    A loaded benchmark.

    Parameters:
        rows (`list[dict]`):
            The usable rows: at least `question`, `steps`, `image` and the 1-based `line` of their file.
        skipped ([`~bis_prm.io.jsonl.SkippedRows`]):
            The rows left out, by reason (one of `SKIP_REASONS`), with their 1-based lines and problems.
        excluded (`dict[str, int]`):
            Rows left out by a filter (of sources, splits), per value.
        path (`Path`):
            The file or directory read.
        lines_read (`int`):
            Rows read (non-blank lines, or elements of a JSON array).
    """

    SKIP_REASONS: ClassVar[tuple[str, ...]] = ()

    rows: list[dict] = field(default_factory=list)
    skipped: SkippedRows = field(default_factory=SkippedRows)
    excluded: dict[str, int] = field(default_factory=dict)
    path: Path | None = None
    lines_read: int = 0

    @property
    def num_steps(self) -> int:
        return sum(len(row["steps"]) for row in self.rows)

    def skip_counts(self) -> dict[str, int]:
        return self.skipped.counts()

    def skipped_summary(self) -> dict[str, dict]:
        """Per reason: `count`, the 1-based `lines` and one `problems` message per line (for `metrics.json`)."""
        return self.skipped.summary(self.SKIP_REASONS)


def text_problem(texts: Iterable[tuple[str, str]], step_token: str | None) -> tuple[str, str] | None:
    """
    `(reason, message)` when one of the named texts cannot be scored, else `None`: `invalid_text` for a lone
    surrogate, `step_token_in_text` when it already holds the PRM's step token (its steps would be miscounted).

    Example:

    ```python
    >>> text_problem([("question", "Q?"), ("step 1", "a <prm> b")], "<prm>")
    ('step_token_in_text', "the step 1 already contains the step token '<prm>'")

    ```
    """
    texts = list(texts)
    for name, text in texts:
        if not encodes_as_utf8(text):
            return "invalid_text", f"the {name} is not valid Unicode (a lone surrogate)"
    if step_token:
        for name, text in texts:
            if step_token in text:
                return "step_token_in_text", f"the {name} already contains the step token {step_token!r}"
    return None


def benchmark_root(dir_or_repo_id: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """
    The local file or directory of a benchmark: the path itself when it exists, else the Hub dataset repo of that id
    downloaded (only `allow_patterns` files, when given).

    Example:

    ```python
    >>> benchmark_root("Qwen/ProcessBench", ["*.json"])  # doctest: +SKIP
    PosixPath('/root/.cache/huggingface/hub/datasets--Qwen--ProcessBench/snapshots/...')

    ```
    """
    path = Path(dir_or_repo_id)
    if path.exists():
        return path
    if str(dir_or_repo_id).count("/") != 1 or str(dir_or_repo_id).startswith((".", "/")):
        raise BenchmarkNotFoundError(f"Benchmark {dir_or_repo_id!r} is neither a local directory nor a Hub repo id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(dir_or_repo_id), repo_type="dataset", allow_patterns=allow_patterns))
    except OSError as error:  # offline, no such repository, no access: the Hub's errors are all OSErrors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BenchmarkNotFoundError(f"Could not download the Hub dataset {dir_or_repo_id!r}: {reason}") from None
