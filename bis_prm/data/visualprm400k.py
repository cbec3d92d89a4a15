"""Loading the raw VisualPRM400K layout (`<root>/annotations/<source>.jsonl`) into a `datasets.Dataset`.

One row per non-blank line of each annotation file, files in sorted name order, lines in file order. Each file is
parsed with pyarrow's C++ JSON reader; a file (or 1 000-line chunk of it) that the reader rejects (broken JSON, a
`str` image in one row and a `list` in another, a non-numeric score, ...) is parsed line by line in Python instead,
so bad input never stops the load. Every row gets an `invalid_reason` (empty when valid):

- `broken_json`: the line is not a JSON object (or is nested deeper than a parser takes).
- `invalid_utf8`: the line holds bytes that are not UTF-8.
- `invalid_text`: a text field holds a lone surrogate escape (`\\ud83d`) or a control character other than tab and
  line breaks.
- `missing_image`: `image` is missing, null, `""`, or a list with an empty/non-string entry. An empty list `[]` is a
  text-only rollout (as `bis-prm annotate` writes them), valid and without images.
- `image_outside_root`: an image path leaves the corpus root (absolute, `..`, or a symbolic link pointing out), so
  nothing outside the corpus is ever read, embedded or uploaded.
- `no_steps`: `steps_with_score` is missing or empty.
- `blank_step`: a step's text is missing, not a string, or only whitespace.
- `missing_score`: a step's score is missing, null, non-numeric or NaN.
- `score_out_of_range`: a step's score lies outside [0, 1] (a 400-digit integer included).

The first reason that applies, in this order, is recorded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from tqdm.auto import tqdm

from bis_prm.io.jsonl import encodes_as_utf8

from .arrow_utils import list_array, list_parts, per_row_sum
from .images import paths_outside_root

if TYPE_CHECKING:
    import datasets

INVALID_REASONS = (
    "broken_json",
    "invalid_utf8",
    "invalid_text",
    "missing_image",
    "image_outside_root",
    "no_steps",
    "blank_step",
    "missing_score",
    "score_out_of_range",
    # stepwise corpora in other layouts (`bis_prm.data.stepwise`): a field of the wrong type, or steps and scores that
    # differ in number
    "wrong_type",
    "length_mismatch",
)
# problems found while parsing a line, before its fields are looked at
_PARSE_PROBLEMS = INVALID_REASONS[:3]

ROLLOUT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("line", pa.int64()),
        ("file_lines", pa.int64()),
        ("image", pa.list_(pa.string())),
        ("image_is_list", pa.bool_()),
        ("question", pa.string()),
        ("question_orig", pa.string()),
        ("answer", pa.string()),
        ("steps", pa.list_(pa.string())),
        ("mc_scores", pa.list_(pa.float64())),
        ("invalid_reason", pa.string()),
    ]
)
# the rows of a block of a file (see `iter_annotation_blocks`): its number of lines is known at its end only
BLOCK_SCHEMA = pa.schema([field for field in ROLLOUT_SCHEMA if field.name != "file_lines"])

_STEP_TYPE = pa.struct([("step", pa.string()), ("score", pa.float64())])
_TEXT_FIELDS = ("question", "question_orig", "answer")
# rows per pyarrow parse attempt once a whole file was rejected: small enough that one bad line costs little
_FALLBACK_CHUNK_LINES = 1000
# how `json.dumps` writes a list / a str image; only used to choose the parse schema, a wrong guess falls back
_LIST_IMAGE, _STR_IMAGE = b'"image": [', b'"image": "'
_PEEK_BYTES = 1 << 20
# blocks are parsed in parallel; a rollout longer than a block makes the parse fail and fall back
_BLOCK_SIZE = 4 << 20
# C0 control characters other than tab, line feed and carriage return
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
# how JSON escapes them (\u0000 - \u001f): a line holding one is parsed in Python, which decides exactly
_CONTROL_ESCAPE = re.compile(rb"\\u001[0-9a-fA-F]|\\u000[0-8bBcCeEfF]")


def _raw_schema(image_type: pa.DataType) -> pa.Schema:
    fields = [("image", image_type)] + [(name, pa.string()) for name in _TEXT_FIELDS]
    return pa.schema(fields + [("steps_with_score", pa.list_(_STEP_TYPE))])


def _concat(arrays: list[pa.Array | pa.ChunkedArray]) -> pa.ChunkedArray:
    """Concatenate without copying (Arrow's JSON reader returns one chunk per parse block)."""
    chunks = [chunk for a in arrays for chunk in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    return pa.chunked_array(chunks, type=arrays[0].type)


def _arrow_to_columns(raw: pa.Table, image_is_list: bool) -> dict[str, pa.ChunkedArray]:
    """Normalise a table read with `_raw_schema` into the rollout columns (without positions and reasons)."""
    # batch by batch: combining the parse blocks first would copy every string once more
    parts = [_batch_to_columns(batch, image_is_list) for batch in raw.to_batches()]
    if not parts:
        return _python_to_columns([])
    return {name: _concat([part[name] for part in parts]) for name in parts[0]}


def _batch_to_columns(raw: pa.RecordBatch, image_is_list: bool) -> dict[str, pa.Array]:
    n = raw.num_rows
    image = raw.column("image")
    # an absent or null image is missing; a list one may be empty (a text-only rollout)
    present = pc.is_valid(image).to_numpy(zero_copy_only=False)
    if image_is_list:
        images = pc.fill_null(image, pa.scalar([], pa.list_(pa.string())))
    else:
        images = list_array(present.astype(np.int64), pc.drop_null(image))
    lengths, flat_steps = list_parts(raw.column("steps_with_score"))
    scores = pc.fill_null(flat_steps.field("score"), math.nan)
    return {
        "image": images,
        "image_is_list": pa.array(np.full(n, image_is_list)),
        **{name: pc.fill_null(raw.column(name), "") for name in _TEXT_FIELDS},
        "steps": list_array(lengths, flat_steps.field("step")),
        "mc_scores": list_array(lengths, scores),
        "_parse_problem": pa.array(np.full(n, "", dtype=object), pa.string()),
        "_missing_image": pa.array(~present),
    }


def _as_score(value: object) -> float:
    """A step score as float, NaN when missing or non-numeric (numeric strings count, as in the reference code)."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except OverflowError:  # a 400-digit integer: out of range, not unusable
        return math.inf
    except (TypeError, ValueError):
        return math.nan


def _clean_text(value: object) -> str | None:
    """`value` as text for a text field, or None when it cannot be stored (a lone surrogate, a control character)."""
    text = "" if value is None else value if isinstance(value, str) else str(value)
    if _CONTROL_CHARACTERS.search(text) or not encodes_as_utf8(text):
        return None
    return text


def _record_from_arrow(raw_line: bytes) -> dict | None:
    """The fields of one line as the C++ reader reads them (None when it rejects the line), as a raw record."""
    columns = _parse_block(raw_line)
    if columns is None or len(columns["steps"]) != 1:
        return None
    row = {name: column[0].as_py() for name, column in columns.items()}
    image = None if row["_missing_image"] else row["image"] if row["image_is_list"] else row["image"][0]
    steps = [{"step": step, "score": score} for step, score in zip(row["steps"], row["mc_scores"], strict=True)]
    return {"image": image, **{name: row[name] for name in _TEXT_FIELDS}, "steps_with_score": steps}


def _python_to_columns(lines: list[bytes]) -> dict[str, pa.Array]:
    """Robust line-by-line parse: a line that is not a JSON object of usable text is recorded as a parse problem."""
    names = ("image", "image_is_list", *_TEXT_FIELDS, "steps", "mc_scores", "_parse_problem", "_missing_image")
    out = {name: [] for name in names}
    for raw_line in lines:
        problem = ""
        try:
            record = json.loads(raw_line)
        except UnicodeDecodeError:
            record, problem = None, "invalid_utf8"
        except ValueError:
            record, problem = None, "broken_json"
        except RecursionError:  # deeper than Python's parser goes: the C++ one may still read it
            record = _record_from_arrow(raw_line)
            problem = "broken_json" if record is None else ""
        if not problem and not isinstance(record, dict):
            problem = "broken_json"
        record = record if not problem else {}
        image = record.get("image")
        is_list = isinstance(image, list)
        missing_image = not (isinstance(image, str) or is_list and all(isinstance(path, str) for path in image))
        image = [image] if isinstance(image, str) else [] if missing_image else image
        steps = record.get("steps_with_score")
        steps = [step if isinstance(step, dict) else {} for step in steps] if isinstance(steps, list) else []
        texts = {name: _clean_text(record.get(name)) for name in _TEXT_FIELDS}
        step_texts = [_clean_text(step.get("step")) if isinstance(step.get("step"), str) else "" for step in steps]
        images = [_clean_text(path) for path in image]
        if None in (*texts.values(), *step_texts, *images):
            problem = problem or "invalid_text"
            texts = {name: text or "" for name, text in texts.items()}
            images = [path or "" for path in images]
            step_texts = [text or "" for text in step_texts]
        out["image"].append(images)
        out["image_is_list"].append(is_list)
        for name in _TEXT_FIELDS:
            out[name].append(texts[name])
        out["steps"].append(
            [text if isinstance(step.get("step"), str) else None for text, step in zip(step_texts, steps, strict=True)]
        )
        out["mc_scores"].append([_as_score(step.get("score")) for step in steps])
        out["_parse_problem"].append(problem)
        out["_missing_image"].append(missing_image)
    types = {"image": pa.list_(pa.string()), "steps": pa.list_(pa.string()), "mc_scores": pa.list_(pa.float64())}
    types.update({"image_is_list": pa.bool_(), "_missing_image": pa.bool_()})
    return {name: pa.array(values, type=types.get(name, pa.string())) for name, values in out.items()}


def _parse_block(data: bytes, image_is_list: bool | None = None) -> dict[str, pa.Array] | None:
    """Columns of a block of JSON lines with the C++ reader, or None when it rejects the block."""
    read_options = pa_json.ReadOptions(block_size=_BLOCK_SIZE)
    for is_list in (False, True) if image_is_list is None else (image_is_list,):
        image_type = pa.list_(pa.string()) if is_list else pa.string()
        parse_options = pa_json.ParseOptions(
            explicit_schema=_raw_schema(image_type), unexpected_field_behavior="ignore"
        )
        try:
            raw = pa_json.read_json(pa.BufferReader(data), read_options=read_options, parse_options=parse_options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return _arrow_to_columns(raw, is_list)
    return None


def _parse_mixed_images(lines: list[bytes]) -> dict[str, pa.Array] | None:
    """Parse lines whose `image` is a str in some rows and a list in others: one C++ parse per kind, re-interleaved.

    The kind is guessed from the bytes; a wrong guess makes that parse fail and the caller falls back.
    """
    is_list = np.array([_LIST_IMAGE in line for line in lines], dtype=bool)
    parts, order = [], []
    for kind in (False, True):
        rows = np.flatnonzero(is_list == kind)
        if len(rows) == 0:
            continue
        part = _parse_block(b"\n".join(lines[i] for i in rows), image_is_list=kind)
        if part is None or len(part["_parse_problem"]) != len(rows):
            return None
        parts.append(part)
        order.append(rows)
    inverse = pa.array(np.argsort(np.concatenate(order), kind="stable"))
    return {name: _concat([part[name] for part in parts]).take(inverse) for name in parts[0]}


def _parse_lines(lines: list[bytes], python_lines: frozenset[int] = frozenset()) -> dict[str, pa.Array]:
    """Columns of non-blank lines that the whole-file parse rejected or that need a closer look: C++ parses where
    possible (all lines, else per chunk), Python line by line for the chunks that still fail and for the chunks
    holding one of `python_lines` (indices into `lines`)."""
    columns = _parse_mixed_images(lines) if lines and not python_lines else None
    if columns is not None:
        return columns
    parts = []
    for start in range(0, len(lines), _FALLBACK_CHUNK_LINES):
        chunk = lines[start : start + _FALLBACK_CHUNK_LINES]
        closer_look = any(start <= index < start + _FALLBACK_CHUNK_LINES for index in python_lines)
        parts.append(
            _python_to_columns(chunk) if closer_look else _parse_mixed_images(chunk) or _python_to_columns(chunk)
        )
    if not parts:
        return _python_to_columns([])
    return {name: _concat([part[name] for part in parts]) for name in parts[0]}


def _is_utf8(data: bytes) -> bool:
    """Whether `data` is valid UTF-8, checked by Arrow without copying (several times faster than `bytes.decode`)."""
    if data.isascii():
        return True
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64).tobytes())
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _lines_for_python(data: bytes, starts: np.ndarray, ends: np.ndarray, line_index: np.ndarray) -> frozenset[int]:
    """Positions (in `line_index`) of the lines the C++ reader would accept but that are not usable as they are:
    bytes that are not UTF-8 and escaped control characters. Python parses them and records why."""
    offsets = [match.start() for match in _CONTROL_ESCAPE.finditer(data)] if b"\\u00" in data else []
    lines = np.searchsorted(starts, np.array(offsets, dtype=np.int64), side="right") - 1
    if not _is_utf8(data):
        undecodable = [i for i in line_index if not _is_utf8(data[starts[i] : ends[i]])]
        lines = np.concatenate([lines, np.array(undecodable, dtype=np.int64)])
    return frozenset(np.searchsorted(line_index, np.unique(lines)).tolist())


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end offsets of every line of `data` (a final newline opens no extra line) and the indices of the
    non-blank ones."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    if data and not data.endswith(b"\n"):
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64) if len(ends) else ends.astype(np.int64)
    first_bytes = np.full(len(starts), -1)
    not_empty = starts < ends
    first_bytes[not_empty] = buffer[starts[not_empty]]
    # JSON lines start with "{"; only the others need a closer look
    opens_object = first_bytes == ord("{")
    others = [i for i in np.flatnonzero(~opens_object) if data[starts[i] : ends[i]].strip()]
    non_blank = np.union1d(np.flatnonzero(opens_object), np.array(others, dtype=np.int64))
    return starts, ends.astype(np.int64), non_blank.astype(np.int64)


def _invalid_reasons(columns: dict[str, pa.Array], image_root: str | os.PathLike | None) -> pa.Array:
    """Vectorised validity check; the first reason of `INVALID_REASONS` that applies wins."""
    image_lengths, flat_images = list_parts(columns["image"])
    empty_image = pc.equal(pc.fill_null(flat_images, ""), "").to_numpy(zero_copy_only=False)
    outside = paths_outside_root(pc.fill_null(flat_images, ""), image_root)
    step_lengths, flat_steps = list_parts(columns["steps"])
    # Arrow's whitespace is exactly Python's `str.isspace`, so this is the reference code's `not step.strip()`
    blank = pc.equal(pc.utf8_trim_whitespace(pc.fill_null(flat_steps, "")), "").to_numpy(zero_copy_only=False)
    _, flat_scores = list_parts(columns["mc_scores"])
    scores = flat_scores.to_numpy(zero_copy_only=False)
    missing = np.isnan(scores)
    with np.errstate(invalid="ignore"):
        out_of_range = (scores < 0.0) | (scores > 1.0)
    parse_problem = pc.fill_null(columns["_parse_problem"], "")
    checks = [
        *(pc.equal(parse_problem, reason).to_numpy(zero_copy_only=False) for reason in _PARSE_PROBLEMS),
        # an empty list is a text-only rollout; an absent or null image, or an empty path, is missing
        columns["_missing_image"].to_numpy(zero_copy_only=False) | (per_row_sum(image_lengths, empty_image) > 0),
        per_row_sum(image_lengths, outside & ~empty_image) > 0,
        step_lengths == 0,
        per_row_sum(step_lengths, blank) > 0,
        per_row_sum(step_lengths, missing) > 0,
        per_row_sum(step_lengths, out_of_range) > 0,
    ]
    codes = np.zeros(len(step_lengths), dtype=np.int8)
    for code, failed in reversed(list(enumerate(checks, start=1))):
        codes[failed] = code
    names = pa.array(("",) + INVALID_REASONS)
    return pa.DictionaryArray.from_arrays(pa.array(codes), names).cast(pa.string())


def _image_kinds(head: bytes) -> tuple[bool, bool]:
    """Whether the first MiB of a file holds list images and str images; only chooses the parse schema."""
    has_list, has_str = (head.find(marker, 0, _PEEK_BYTES) >= 0 for marker in (_LIST_IMAGE, _STR_IMAGE))
    return has_list, has_str


def _read_lines(
    data: bytes, image_root: str | os.PathLike | None, image_kinds: tuple[bool, bool]
) -> tuple[dict[str, pa.Array], np.ndarray, int]:
    """
    Parse whole lines of an annotation file (the file, or a block of it) whose first MiB holds `image_kinds`.

    Returns the rollout columns of the non-blank lines with their `invalid_reason`, the 0-based indices of those lines
    in `data`, and the number of lines of `data` (blank ones included).
    """
    starts, ends, line_index = _line_bounds(data)
    python_lines = _lines_for_python(data, starts, ends, line_index)
    has_list, has_str = image_kinds
    # a file that mixes str and list images is parsed per kind right away
    columns = None
    if not python_lines and not (has_list and has_str):
        columns = _parse_block(data, image_is_list=has_list if has_str or has_list else None)
    if columns is None or len(columns["_parse_problem"]) != len(line_index):
        columns = _parse_lines([data[starts[i] : ends[i]] for i in line_index], python_lines)
    columns["invalid_reason"] = _invalid_reasons(columns, image_root)
    return columns, line_index, len(starts)


def _rollout_table(columns: dict[str, pa.Array], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays([columns[field.name] for field in schema], schema=schema)


def read_annotation_file(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> pa.Table:
    """
    Read one `<source>.jsonl` annotation file into an Arrow table with the rollout columns (`ROLLOUT_SCHEMA`).

    Args:
        path (`str` or `os.PathLike`):
            The annotation file; its stem becomes the `source` column.
        image_root (`str` or `os.PathLike`, *optional*):
            The corpus root that image paths are relative to: paths that leave it, symbolic links included, make
            their row `image_outside_root`. Without it, absolute paths and paths climbing out with `..` do.

    Returns:
        `pyarrow.Table`: one row per non-blank line, with `line` the 0-based line index in the file, `file_lines` the
        number of lines of the file (blank ones included) and `invalid_reason` empty for valid rollouts.

    Example:

    ```python
    >>> table = read_annotation_file("annotations/ai2d.jsonl")  # doctest: +SKIP
    >>> table.column_names[:3]  # doctest: +SKIP
    ['source', 'line', 'file_lines']

    ```
    """
    path = Path(path)
    data = path.read_bytes()
    # peek at the first MiB: enough to spot a mixing file, cheap for the others
    columns, line_index, num_lines = _read_lines(data, image_root, _image_kinds(data))
    n = len(line_index)
    columns["source"] = pa.array([path.stem] * n, type=pa.string())
    columns["line"] = pa.array(line_index, type=pa.int64())
    columns["file_lines"] = pa.array(np.full(n, num_lines, dtype=np.int64))
    return _rollout_table(columns, ROLLOUT_SCHEMA)


class AnnotationBlock(NamedTuple):
    """
    Whole lines of an annotation file, read by [`iter_annotation_blocks`].

    Parameters:
        rows (`pyarrow.Table`): the rows [`read_annotation_file`] reads from these lines (`BLOCK_SCHEMA`: its
            columns but `file_lines`; `line` counts from the start of the file).
        num_lines (`int`): the number of lines of the block, blank ones included.
    """

    rows: pa.Table
    num_lines: int


def _blocks_of_lines(f: BinaryIO, block_size: int) -> Iterator[bytes]:
    """The bytes of `f` in blocks of about `block_size`, each ending after a line break (the last at the end of `f`);
    a line longer than a block makes its block longer. One block is held at a time, copied once."""
    pending = []  # the start of a line the chunks read so far do not end
    while chunk := f.read(block_size):
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            pending.append(chunk)
            continue
        pending.append(chunk if cut == len(chunk) else memoryview(chunk)[:cut])
        block = b"".join(pending)  # no copy for a whole chunk alone
        pending = [chunk[cut:]] if cut < len(chunk) else []
        del chunk
        yield block
    if pending:
        yield b"".join(pending)


def iter_annotation_blocks(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, block_size: int = _BLOCK_SIZE
) -> Iterator[AnnotationBlock]:
    """
    Read one annotation file block by block: the rows of [`read_annotation_file`], in the same order, with the same
    values and invalid reasons, holding about `block_size` bytes of the file in memory at a time.

    Args:
        path (`str` or `os.PathLike`):
            The annotation file; its stem becomes the `source` column.
        image_root (`str` or `os.PathLike`, *optional*):
            The corpus root that image paths are relative to (see [`read_annotation_file`]).
        block_size (`int`, *optional*, defaults to 4 MiB):
            Bytes read per block (about; every block ends at a line break). The default is a block of the JSON
            reader: larger blocks are parsed in parallel but take more memory.

    Returns:
        Iterator of [`AnnotationBlock`]: its `rows` (`BLOCK_SCHEMA`) and its number of lines.

    Example:

    ```python
    >>> sum(block.rows.num_rows for block in iter_annotation_blocks("annotations/ai2d.jsonl"))  # doctest: +SKIP
    10527

    ```
    """
    path = Path(path)
    with open(path, "rb") as f:
        # the parse schema is chosen from the file's first MiB, whatever the block
        image_kinds = _image_kinds(f.read(_PEEK_BYTES))
        f.seek(0)
        first_line = 0
        for data in _blocks_of_lines(f, block_size):
            columns, line_index, num_lines = _read_lines(data, image_root, image_kinds)
            columns["source"] = pa.array([path.stem] * len(line_index), type=pa.string())
            columns["line"] = pa.array(line_index + first_line, type=pa.int64())
            yield AnnotationBlock(_rollout_table(columns, BLOCK_SCHEMA), num_lines)
            first_line += num_lines


def find_annotation_files(annotations_dir: str | os.PathLike) -> list[Path]:
    """The `*.jsonl` files of `annotations_dir` in sorted name order; a clear error when there are none."""
    annotations_dir = Path(annotations_dir)
    if not annotations_dir.is_dir():
        raise FileNotFoundError(f"annotations directory not found: {annotations_dir}")
    files = sorted(annotations_dir.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl annotation files in {annotations_dir}")
    return files


def _locate_annotations(root: Path) -> Path:
    """`root/annotations` if present, else the shallowest directory under `root` holding `*.jsonl` files."""
    if (root / "annotations").is_dir():
        return root / "annotations"
    if any(root.glob("*.jsonl")):
        return root
    candidates = sorted({path.parent for path in root.rglob("*.jsonl")}, key=lambda p: (len(p.parts), str(p)))
    if not candidates:
        raise FileNotFoundError(f"no *.jsonl annotation files under {root}")
    return candidates[0]


def _extract_once(archives: Iterable[Path], key: str, cache_dir: str | os.PathLike | None) -> Path:
    """
    Unzip `archives` into one folder of the cache, once per machine, whatever the number of processes asking.

    The first process to take the folder's file lock extracts into a temporary folder and renames it into place
    (atomic); the others wait for the lock and reuse the folder. A folder without the completion marker (an
    extraction killed half-way by an earlier version) is replaced.
    """
    import datasets
    from filelock import FileLock

    cache_dir = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "bis_prm" / "visualprm400k"
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / hashlib.sha256(key.encode()).hexdigest()[:16]
    with FileLock(str(target) + ".lock"):
        if (target / ".extracted").exists():
            return target
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{target.name}-"))
        try:
            for archive in archives:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(staging)  # zipfile drops absolute paths and ".." parts of member names
            (staging / ".extracted").write_text(key)
            if target.exists():
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_visualprm400k(
    path_or_repo: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    download_images: bool = False,
) -> tuple[Path, Path]:
    """
    Find the annotation files and the image root of a VisualPRM400K-style corpus.

    Args:
        path_or_repo (`str` or `os.PathLike`):
            A local corpus root (holding `annotations/`), a directory of `*.jsonl` files, a local zip of either, or a
            Hub dataset repo id such as `"OpenGVLab/VisualPRM400K-v1.1-Raw"` (its `annotations.zip` is downloaded
            with `huggingface_hub` and unzipped into the cache once).
        revision (`str`, *optional*):
            Hub revision (branch, tag or commit) when `path_or_repo` is a repo id.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Where zips are extracted (and Hub files downloaded); defaults to the `datasets` cache.
        download_images (`bool`, *optional*, defaults to `False`):
            Also download and unzip the repo's `images.zip` (large) so that image paths resolve.

    Returns:
        `tuple[Path, Path]`: the annotations directory and the root that image paths are relative to.

    Example:

    >>> annotations_dir, root = resolve_visualprm400k("VisualPRM400K-v1.1-Raw")  # doctest: +SKIP
    >>> annotations_dir.name  # doctest: +SKIP
    'annotations'
    """
    path = Path(path_or_repo)
    if path.is_dir():
        annotations_dir = _locate_annotations(path)
        find_annotation_files(annotations_dir)
        return annotations_dir, path if annotations_dir != path else path.parent
    if path.is_file() and zipfile.is_zipfile(path):
        stat = path.stat()
        root = _extract_once([path], f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}", cache_dir)
    elif path.exists() or os.path.isabs(path_or_repo) or str(path_or_repo).count("/") != 1:
        raise FileNotFoundError(f"not a corpus directory, zip file or Hub repo id: {path_or_repo}")
    else:
        from huggingface_hub import hf_hub_download

        names = ["annotations.zip"] + (["images.zip"] if download_images else [])
        archives = [
            Path(hf_hub_download(str(path_or_repo), n, repo_type="dataset", revision=revision, cache_dir=cache_dir))
            for n in names
        ]
        # the snapshot folder name is the commit hash, so a new revision extracts anew
        root = _extract_once(archives, f"{path_or_repo}@{archives[0].parent.name}:{names}", cache_dir)
    annotations_dir = _locate_annotations(root)
    return annotations_dir, annotations_dir.parent if annotations_dir != root else root


def corpus_fingerprint(annotations_dir: str | os.PathLike, image_root: str | os.PathLike | None = None) -> str:
    """A `datasets` fingerprint of the annotation files (names, sizes, modification times) and the image root."""
    files = find_annotation_files(annotations_dir)
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    key = (str(Path(annotations_dir).resolve()), stats, image_root and str(Path(image_root).resolve()))
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def annotations_to_dataset(
    annotations_dir: str | os.PathLike,
    num_proc: int | None = None,
    progress: bool = True,
    image_root: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """[`read_annotations`] as a `datasets.Dataset`, fingerprinted from the files (hashing the table is slow)."""
    import datasets
    from datasets.table import InMemoryTable

    table = InMemoryTable(
        read_annotations(annotations_dir, num_proc=num_proc, progress=progress, image_root=image_root)
    )
    return datasets.Dataset(table, fingerprint=corpus_fingerprint(annotations_dir, image_root))


def read_annotations(
    annotations_dir: str | os.PathLike,
    num_proc: int | None = None,
    progress: bool = True,
    image_root: str | os.PathLike | None = None,
) -> pa.Table:
    """
    Read every `*.jsonl` file of `annotations_dir` (sorted by name) into one Arrow table, in parallel over files.

    Args:
        annotations_dir (`str` or `os.PathLike`):
            Directory holding the `<source>.jsonl` files.
        num_proc (`int`, *optional*):
            Number of files read at once (threads; defaults to the number of CPUs); results are kept in sorted file
            order.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over files.
        image_root (`str` or `os.PathLike`, *optional*):
            The corpus root image paths are relative to (see [`read_annotation_file`]).

    Returns:
        `pyarrow.Table` with the schema `ROLLOUT_SCHEMA`.

    Example:

    >>> read_annotations("VisualPRM400K-v1.1-Raw/annotations").num_rows  # doctest: +SKIP
    400000
    """
    files = find_annotation_files(annotations_dir)
    bar = dict(total=len(files), desc="Reading annotations", unit="file", disable=not progress)
    read = functools.partial(read_annotation_file, image_root=image_root)
    # Arrow parses each file on all cores already; a second file in flight overlaps the checks done in Python
    num_proc = num_proc or os.cpu_count() or 1
    if num_proc <= 1 or len(files) == 1:
        tables = [read(path) for path in tqdm(files, **bar)]
    else:
        # threads: Arrow's C++ reader, which does most of the work, releases the GIL
        with ThreadPoolExecutor(min(num_proc, len(files))) as pool:
            tables = list(tqdm(pool.map(read, files), **bar))
    return pa.concat_tables(tables)


def load_visualprm400k(
    path_or_repo: str | os.PathLike,
    num_proc: int | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """
    Load a VisualPRM400K-style corpus as a `datasets.Dataset` with one row per rollout.

    Args:
        path_or_repo (`str` or `os.PathLike`):
            A local corpus root, a directory of `*.jsonl` files, a local zip, or a Hub dataset repo id (see
            [`resolve_visualprm400k`]).
        num_proc (`int`, *optional*):
            Number of files read in parallel (threads; defaults to the number of CPUs).
        revision (`str`, *optional*):
            Hub revision when `path_or_repo` is a repo id.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Cache folder for downloads and extracted zips.

    Returns:
        `datasets.Dataset` with the columns of `ROLLOUT_SCHEMA`: `source`, `line`, `file_lines`, `image` (list of
        paths relative to the corpus root, empty for a text-only rollout), `image_is_list` (whether the file stored a
        list), `question`, `question_orig`, `answer`, `steps`, `mc_scores` (NaN where a score was unusable) and
        `invalid_reason`.

    Example:

    >>> ds = load_visualprm400k("VisualPRM400K-v1.1-Raw")  # doctest: +SKIP
    >>> ds[0]["source"], ds[0]["steps"][:1]  # doctest: +SKIP
    ('ai2d', ['Step 1: ...'])
    """
    annotations_dir, root = resolve_visualprm400k(path_or_repo, revision=revision, cache_dir=cache_dir)
    return annotations_to_dataset(annotations_dir, num_proc=num_proc, image_root=root)
