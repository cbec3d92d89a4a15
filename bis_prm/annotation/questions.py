"""Reading the questions to annotate: local JSONL / Parquet files, a directory of them, or a Hub dataset.

A row holds `question` and `answer`, optionally `image` (a path or a list of paths relative to the image root; none,
`null` or `[]` for a text-only question), `source` (else the file's stem, or `"all"` for a Hub dataset) and a ready
`response` (a string) or `steps` (a list of strings): such a row is scored as it is, without sampling rollouts.
Other fields are ignored. A row that cannot be annotated is skipped and counted with its reason and 1-based line
([`~bis_prm.evaluation.jsonl.SkippedRows`]): `broken_json`, `undecodable_line`, `wrong_type` (a field of the wrong
type), `missing_question`, `missing_answer`, `unparsable_answer` (the checker cannot read the gold answer), `no_steps`
(a blank response or step) and the image reasons of `bis_prm.data.images` (`missing_image`, `image_outside_root`,
`image_unreadable`, `image_too_large`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bis_prm.data.images import ImageProblem, read_image_size, resolve_image
from bis_prm.evaluation.jsonl import SkippedRows, iter_jsonl

from .verify import AnswerChecker, Gold

__all__ = ["QUESTION_SUFFIXES", "Question", "policy_prompt", "read_questions"]

QUESTION_SUFFIXES = (".jsonl", ".parquet")
_SOURCE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Question:
    """
    One question to annotate, as read by [`read_questions`].

    Args:
        question_id (`str`): A stable id: a hash of the source and the row's content, plus `#<k>` for the k-th
            repeat of an identical row, so that shards, retries and resumes name the same work alike.
        source (`str`): The annotation file it goes to (`annotations/<source>.jsonl`).
        line (`int`): Its 1-based line (row) in its input file.
        question (`str`): The raw question (`question_orig` in the output).
        answer (`str`): The gold answer as written.
        gold (`Gold`): The gold answer parsed by the checker.
        images (`list[str]`): Image paths relative to `image_root` (empty for a text-only question).
        image_is_list (`bool`): Whether the input stored a list (written back the same way).
        image_root (`str`): The folder the image paths are relative to.
        response (`str`, *optional*): A ready response: then no rollout is sampled.
        steps (`list[str]`, *optional*): Ready steps: then no rollout is sampled and they are not split again.
    """

    question_id: str
    source: str
    line: int
    question: str
    answer: str
    gold: Gold
    images: list[str] = field(default_factory=list)
    image_is_list: bool = True
    image_root: str = "."
    response: str | None = None
    steps: list[str] | None = None


def policy_prompt(question: str, num_images: int, instruction: str = "") -> str:
    """
    The user turn the policy sees (the `question` field of VisualPRM400K): one `<image>` placeholder per image
    (`Image-k: <image>` lines when there are several), the question, and the instruction on a new line.

    Example:

    ```python
    >>> policy_prompt("What is 2 + 3?", 0, "Answer step by step.")
    'What is 2 + 3?\\nAnswer step by step.'
    >>> policy_prompt("Which is larger?", 2)
    'Image-1: <image>\\nImage-2: <image>\\nWhich is larger?'

    ```
    """
    images = "<image>\n" if num_images == 1 else "".join(f"Image-{k + 1}: <image>\n" for k in range(num_images))
    return f"{images}{question}\n{instruction}" if instruction else f"{images}{question}"


def _source_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in QUESTION_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no *.jsonl or *.parquet question files in {path}")
        return files
    if path.suffix not in QUESTION_SUFFIXES:
        raise ValueError(f"{path}: question files are .jsonl or .parquet")
    return [path]


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any, tuple | None]]:
    import pyarrow.parquet as pq

    for index, record in enumerate(pq.read_table(path).to_pylist()):
        yield index + 1, record, None


def _iter_hub(repo_id: str, split: str) -> Iterator[tuple[int, Any, tuple | None]]:
    import datasets

    for index, record in enumerate(datasets.load_dataset(repo_id, split=split)):
        yield index + 1, record, None


def _row(
    record: Any, source: str, image_root: Path, checker: AnswerChecker, image_dir: Path | None, line: int
) -> dict[str, Any]:
    """The fields of a [`Question`] but its id; a `(reason, problem)` tuple under `"skip"` when it is unusable."""
    if not isinstance(record, dict):
        return {"skip": ("wrong_type", f"a row is a JSON object, got {type(record).__name__}")}
    question, answer = record.get("question"), record.get("answer")
    if question is None or (isinstance(question, str) and not question.strip()):
        return {"skip": ("missing_question", "no question")}
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return {"skip": ("missing_answer", "no answer")}
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(question, str) or not isinstance(answer, str):
        return {"skip": ("wrong_type", "question and answer must be strings")}
    source = record.get("source") if record.get("source") is not None else source
    if not isinstance(source, str) or not _SOURCE_NAME.sub("", source):
        return {"skip": ("wrong_type", f"source must be a non-empty string, got {source!r}")}
    try:
        gold = checker.parse_gold(answer)
    except ValueError as error:
        return {"skip": ("unparsable_answer", str(error))}
    response, steps = record.get("response"), record.get("steps")
    if response is not None and not isinstance(response, str):
        return {"skip": ("wrong_type", "response must be a string")}
    if steps is not None and not (isinstance(steps, list) and all(isinstance(step, str) for step in steps)):
        return {"skip": ("wrong_type", "steps must be a list of strings")}
    if (response is not None and not response.strip()) or (
        steps is not None and (not steps or any(not step.strip() for step in steps))
    ):
        return {"skip": ("no_steps", "a blank response or step")}
    image = record.get("image")
    images = [] if image is None else image if isinstance(image, list) else [image]
    paths = []
    for index, item in enumerate(images):
        if not isinstance(item, str):
            item = _save_decoded(item, image_dir, source, line, index)
            if item is None:
                return {"skip": ("wrong_type", "image must be a path or a list of paths")}
        try:
            read_image_size(resolve_image(item, image_root))
        except ImageProblem as problem:
            return {"skip": (problem.reason, str(problem))}
        paths.append(item)
    return {
        "source": _SOURCE_NAME.sub("_", source),
        "question": question,
        "answer": answer,
        "gold": gold,
        "images": paths,
        "image_is_list": not isinstance(image, str),
        "response": response,
        "steps": steps,
    }


def _save_decoded(image: Any, image_dir: Path | None, source: str, line: int, index: int) -> str | None:
    """A decoded image of a Hub dataset (PIL, or `datasets`' `{"bytes": ...}`) saved as a PNG under `image_dir`,
    named by its row: its path relative to `image_dir`."""
    from io import BytesIO

    from PIL import Image

    if isinstance(image, dict) and isinstance(image.get("bytes"), bytes):
        image = Image.open(BytesIO(image["bytes"]))
    if not isinstance(image, Image.Image) or image_dir is None:
        return None
    relative = f"{source}/{line}-{index}.png"
    (image_dir / source).mkdir(parents=True, exist_ok=True)
    image.save(image_dir / relative)
    return relative


def read_questions(
    questions: str | os.PathLike,
    checker: AnswerChecker | None = None,
    image_root: str | os.PathLike | None = None,
    split: str = "train",
    image_dir: str | os.PathLike | None = None,
) -> tuple[list[Question], SkippedRows]:
    """
    Read the questions to annotate, in file order (files in sorted name order), and the rows skipped.

    Args:
        questions (`str` or `os.PathLike`):
            A `.jsonl` / `.parquet` file, a directory of them, or a Hub dataset id (read with `datasets`).
        checker ([`AnswerChecker`], *optional*):
            Parses the gold answers; defaults to `AnswerChecker("auto")`.
        image_root (`str` or `os.PathLike`, *optional*):
            The folder image paths are relative to (they must stay inside it); defaults to the questions' folder.
        split (`str`, *optional*, defaults to `"train"`):
            The split of a Hub dataset.
        image_dir (`str` or `os.PathLike`, *optional*):
            Where a Hub dataset's decoded images are saved (they then are relative to it).

    Returns:
        `tuple[list[Question], SkippedRows]`: the questions and the skipped rows (reasons, lines; the line is
        prefixed with the file name when there are several files).

    Example:

    ```python
    >>> questions, skipped = read_questions("questions.jsonl")  # doctest: +SKIP
    >>> questions[0].source, skipped.counts()  # doctest: +SKIP
    ('questions', {'unparsable_answer': 1})

    ```
    """
    checker = checker or AnswerChecker()
    path = Path(questions)
    if path.exists():
        files = [
            (file, file.stem, iter_jsonl(file) if file.suffix == ".jsonl" else _iter_parquet(file))
            for file in _source_files(path)
        ]
        root = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    elif str(questions).count("/") == 1 and not str(questions).startswith((".", "/", "~")):
        files = [(None, "all", _iter_hub(str(questions), split))]
        root = Path(image_root or image_dir or ".")
    else:
        raise FileNotFoundError(f"questions not found: {questions} (not a file, a directory or a Hub dataset id)")
    out, skipped, seen = [], SkippedRows(), {}
    for file, stem, rows in files:
        for line, record, problem in rows:
            row = (
                {"skip": problem}
                if problem
                else _row(record, stem, root, checker, image_dir and Path(image_dir), line)
            )
            if "skip" in row:
                reason, message = row["skip"]
                where = f"{file.name}: " if file is not None and len(files) > 1 else ""
                skipped.add(reason, line, where + message)
                continue
            key = json.dumps(
                [row["source"], row["question"], row["answer"], row["images"], row["response"], row["steps"]]
            )
            digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
            seen[digest] = seen.get(digest, 0) + 1
            question_id = digest if seen[digest] == 1 else f"{digest}#{seen[digest]}"
            out.append(Question(question_id=question_id, line=line, image_root=str(root), **row))
    return out, skipped
