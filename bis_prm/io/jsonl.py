"""Reading JSONL inputs so that no line can stop a run: each line is a record or a located, counted problem."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SkippedRows", "encodes_as_utf8", "iter_jsonl"]

UTF8_BOM = b"\xef\xbb\xbf"


def encodes_as_utf8(text: str) -> bool:
    """
    Whether `text` can be written as UTF-8: JSON lets a line hold a lone surrogate escape such as `\\ud83d`, which
    decodes to a `str` that no UTF-8 file, Arrow column or tokenizer accepts.

    Example:

    ```python
    >>> encodes_as_utf8("ok"), encodes_as_utf8(json.loads('"\\ud83d"'))
    (True, False)

    ```
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class SkippedRows:
    """
    The rows of input files left out of a run, by reason, each with its 1-based line, what was wrong and, for a
    benchmark of several files, the file's name.

    Example:

    ```python
    >>> skipped = SkippedRows()
    >>> skipped.add("broken_json", 3, "not valid JSON")
    >>> skipped.counts(), skipped.summary()["broken_json"]["lines"]
    ({'broken_json': 1}, [3])

    ```
    """

    rows: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, reason: str, line: int, problem: str, file: str | None = None) -> None:
        entry = {"line": line, "problem": problem}
        if file is not None:
            entry["file"] = file
        self.rows.setdefault(reason, []).append(entry)

    def counts(self) -> dict[str, int]:
        return {reason: len(rows) for reason, rows in self.rows.items()}

    def total(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def summary(self, order: Sequence[str] = ()) -> dict[str, dict]:
        """Per reason (known reasons in `order` first): `count`, the 1-based `lines` and their `problems`, and the
        `files` of those lines when rows of several files were added."""
        rank = {reason: index for index, reason in enumerate(order)}
        items = sorted(self.rows.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))
        summary = {}
        for reason, rows in items:
            entry = {
                "count": len(rows),
                "lines": [row["line"] for row in rows],
                "problems": [row["problem"] for row in rows],
            }
            if any("file" in row for row in rows):
                entry["files"] = [row.get("file") for row in rows]
            summary[reason] = entry
        return summary


def iter_jsonl(path: str | os.PathLike, max_lines: int | None = None) -> Iterator[tuple[int, Any, tuple | None]]:
    """
    Yield `(line, record, None)` for every non-blank line that parses, and `(line, None, (reason, message))` for the
    others (`undecodable_line`: not UTF-8; `broken_json`: not JSON, or nested deeper than the parser takes). Lines
    are 1-based; a UTF-8 BOM and CRLF line ends are read as written.

    Example:

    ```python
    >>> for line, record, problem in iter_jsonl("test.jsonl"):  # doctest: +SKIP
    ...     print(line, problem or record["data_source"])

    ```
    """
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    lines = data.split(b"\n")
    for index, raw in enumerate(lines[:max_lines] if max_lines is not None else lines):
        raw = raw.removesuffix(b"\r")  # CRLF files: the "\r" goes with the line break
        if not raw.strip():
            continue
        try:
            yield index + 1, json.loads(raw.decode("utf-8")), None
        except UnicodeDecodeError as error:
            yield index + 1, None, ("undecodable_line", f"not valid UTF-8 ({error.reason} at byte {error.start})")
        except (ValueError, RecursionError) as error:
            yield index + 1, None, ("broken_json", f"not valid JSON ({str(error) or type(error).__name__})")
