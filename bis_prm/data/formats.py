"""Output formats of a selected subset: the HF PRM format our trainer reads, and the InternVL conversation JSONL.

The HF PRM format has the columns `image` (list of paths relative to `image_root`), `image_root`, `question`, `steps`
(list of str), `labels` (list of float), `mc_scores`, `p_pos`, `reliability`, `bis`, `is_mixed` and `source`. A subset
written to a file records `image_root` relative to the file's folder (to the directory for `save_to_disk`), so the
subset and its corpus can move together to another machine: training resolves the images wherever they are.

The InternVL format is the one the paper's `build_bis_subset.py` writes, byte for byte:
`{"image": ..., "conversations": [{"from": "human", "value": "Question: ...\\nProcess: step1<prm>\\n\\nstep2<prm>"},
{"from": "gpt", "value": [1.0, 0.0]}]}`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_utils import arrow_columns, list_array, list_parts
from .prompt import prompt_column

PRM_COLUMNS = (
    "image", "image_root", "question", "steps", "labels", "mc_scores", "p_pos", "reliability", "bis", "is_mixed",
    "source",
)  # fmt: skip
# what an output path may end with (a path without a suffix is a `save_to_disk` directory)
OUTPUT_SUFFIXES = {"hf": (".jsonl", ".parquet", ""), "internvl": (".jsonl",)}
FORMATS = ("hf", "internvl")
# what `json.dumps(..., ensure_ascii=False)` escapes besides the other control characters (as \u00XX)
_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _prm_batch(batch: pa.Table, image_root: str | None) -> pa.Table:
    image = batch.column("image").combine_chunks()
    question_orig = batch.column("question_orig")
    question = pc.if_else(pc.equal(question_orig, ""), batch.column("question"), question_orig)
    steps = batch.column("steps").combine_chunks()
    stripped_steps = pa.ListArray.from_arrays(steps.offsets, pc.utf8_trim_whitespace(steps.values))
    roots = pa.array([image_root] * batch.num_rows, pa.string())
    columns = {
        "image": image,
        "image_root": roots,
        "question": pc.utf8_trim_whitespace(question),
        "steps": stripped_steps,
    }
    columns.update({name: batch.column(name) for name in PRM_COLUMNS if name not in columns})
    return pa.table(columns)


def to_prm_format(ds: datasets.Dataset, image_root: str | os.PathLike | None = None, **map_kwargs) -> datasets.Dataset:
    """
    Convert scored rollouts to the HF PRM format the trainer reads.

    Args:
        ds (`datasets.Dataset`):
            Scored rollouts (from [`~scoring.score_rollouts`], possibly a selection of them).
        image_root (`str` or `os.PathLike`, *optional*):
            Corpus root the image paths are relative to, recorded (absolute) in the `image_root` column.
        **map_kwargs:
            Passed to `datasets.Dataset.map`.

    Returns:
        `datasets.Dataset` with the columns `PRM_COLUMNS`: `image` as in the corpus (relative to `image_root`),
        `question` is `question_orig` (or `question` when empty) stripped, `steps` are stripped.

    Example:

    >>> prm = to_prm_format(subset, image_root="VisualPRM400K-v1.1-Raw")
    >>> prm.column_names[:4]
    ['image', 'question', 'steps', 'labels']
    """
    root = None if image_root is None else str(Path(image_root).resolve())
    map_kwargs = {"batched": True, "desc": "Converting to PRM format", **map_kwargs}
    converted = ds.with_format("arrow").map(
        _prm_batch, fn_kwargs={"image_root": root}, remove_columns=ds.column_names, **map_kwargs
    )
    return converted.with_format(None)


def _json_string(strings: pa.StringArray) -> pa.Array:
    """`json.dumps(s, ensure_ascii=False)` of every string, vectorised."""
    data = strings.buffers()[2]
    # ASCII bytes stand for themselves in UTF-8, so the bytes present say which characters need escaping at all
    data = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, dtype=np.uint8)
    present = {chr(code) for code in np.unique(data[data < 0x20])}
    present |= {char for char in '"\\' if (data == ord(char)).any()}
    for char, escaped in _JSON_ESCAPES.items():  # backslash first, so inserted backslashes stay single
        if char in present:
            strings = pc.replace_substring(strings, char, escaped)
    for char in sorted(present - _JSON_ESCAPES.keys()):
        strings = pc.replace_substring(strings, char, f"\\u{ord(char):04x}")
    return pc.binary_join_element_wise('"', strings, '"', "")


def _join_lists(lists: pa.ListArray, values: pa.Array, separator: str) -> pa.Array:
    """Join the strings of each list, after replacing the flat values of `lists` by `values`."""
    lengths, _ = list_parts(lists)
    return pc.binary_join(list_array(lengths, values), separator)


def internvl_lines(batch: pa.Table) -> pa.Array:
    """
    The InternVL conversation record of each scored rollout of `batch` as one JSON line, exactly as the reference
    code writes it: `json.dumps({"image": <as in the raw file>, "conversations": [{"from": "human", "value":
    "Question: <question_orig or question>\\nProcess: <step 1><prm>\\n\\n<step 2><prm>"}, {"from": "gpt",
    "value": [1.0, 0.0]}]}, ensure_ascii=False)`, question and steps stripped like `str.strip`.

    Example:

    >>> batch = pa.table({"image": [["a.png"]], "image_is_list": [False], "question": ["<image>\\nQ"],
    ...                   "question_orig": ["Q "], "steps": [["s1 ", "s2"]], "labels": [[1.0, 0.0]]})
    >>> json.loads(internvl_lines(batch)[0].as_py())["conversations"][0]["value"]
    'Question: Q\\nProcess: s1<prm>\\n\\ns2<prm>'
    """
    names = ("image", "image_is_list", "question", "question_orig", "steps", "labels")
    images, is_list, question, question_orig, steps, labels = (batch.column(n).combine_chunks() for n in names)
    joined_images = _join_lists(images, _json_string(pc.list_flatten(images)), ", ")
    image = pc.if_else(is_list, pc.binary_join_element_wise("[", joined_images, "]", ""), joined_images)
    human = prompt_column(pc.if_else(pc.equal(question_orig, ""), question, question_orig), steps)
    label_text = pc.if_else(pc.greater(pc.list_flatten(labels), 0.0), "1.0", "0.0")
    parts = ['{"image": ', image, ', "conversations": [{"from": "human", "value": ', _json_string(human)]
    parts += ['}, {"from": "gpt", "value": [', _join_lists(labels, label_text, ", "), "]}]}"]
    return pc.binary_join_element_wise(*parts, "")


def write_internvl_jsonl(ds: datasets.Dataset, path: str | os.PathLike, batch_size: int = 10_000) -> None:
    """Write scored rollouts as InternVL conversation JSONL (see [`internvl_lines`])."""
    columns = ["image", "image_is_list", "question", "question_orig", "steps", "labels"]
    rollouts = arrow_columns(ds, columns)
    with open(path, "wb") as f:
        for start in range(0, len(rollouts), batch_size):
            lines = pc.binary_join_element_wise(internvl_lines(rollouts.slice(start, batch_size)), "\n", "")
            # the UTF-8 bytes of all lines are contiguous in the array's data buffer: write them as they are
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
            f.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])


def check_output_path(path: str | os.PathLike, format: str = "hf") -> Path:
    """
    Check that `path` can hold a subset in `format` (`.jsonl` or `.parquet`, or a directory without a suffix for
    `hf`; `.jsonl` for `internvl`) and return it; a `ValueError` says what is wrong.

    Example:

    ```python
    >>> check_output_path("bis10.csv")
    Traceback (most recent call last):
    ...
    ValueError: output bis10.csv: the hf format is written to a .jsonl or .parquet file or a directory (no suffix)
    ```
    """
    if format not in FORMATS:
        raise ValueError(f"unknown output format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if path.suffix not in OUTPUT_SUFFIXES[format] or (format == "internvl" and path.is_dir()):
        where = " or ".join(suffix or "a directory (no suffix)" for suffix in OUTPUT_SUFFIXES[format])
        kinds = where.replace(".jsonl or .parquet", ".jsonl or .parquet file")
        raise ValueError(f"output {path}: the {format} format is written to a {kinds}")
    return path


def _relative_roots(ds: datasets.Dataset, base: Path) -> datasets.Dataset:
    """The `image_root` column relative to `base` (where the subset is written), so that it moves with the subset."""

    def relative(batch: pa.Table) -> pa.Table:
        roots = batch.column("image_root").to_pylist()
        cache = {root: root and os.path.relpath(root, base) for root in set(roots)}
        index = batch.column_names.index("image_root")
        return batch.set_column(index, "image_root", pa.array([cache[root] for root in roots], pa.string()))

    absolute = {root for root in ds.unique("image_root") if root and os.path.isabs(root)}
    if not absolute:
        return ds
    return ds.with_format("arrow").map(relative, batched=True, desc="Recording image roots").with_format(None)


def selection_report_path(path: str | os.PathLike) -> Path:
    """Where the selection report of a subset written to `path` lies: `<name>.selection.json` next to a file,
    `selection.json` inside a `save_to_disk` directory."""
    path = Path(path)
    return path / "selection.json" if path.suffix == "" else path.with_name(f"{path.stem}.selection.json")


def read_selection_report(path: str | os.PathLike) -> dict[str, Any] | None:
    """The selection report written with the subset at `path`, or `None` when there is none."""
    report = selection_report_path(path)
    return json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None


def write_subset(
    ds: datasets.Dataset,
    path: str | os.PathLike,
    format: str = "hf",
    image_root: str | os.PathLike | None = None,
    report: dict[str, Any] | None = None,
) -> None:
    """
    Write a selected subset to `path`.

    Args:
        ds (`datasets.Dataset`):
            Scored rollouts (or, for `format="hf"`, a dataset already in the HF PRM format).
        path (`str` or `os.PathLike`):
            `.jsonl` or `.parquet` file, or a directory (written with `save_to_disk`). `format="internvl"` needs a
            `.jsonl` file.
        format (`str`, *optional*, defaults to `"hf"`):
            `"hf"` (HF PRM format) or `"internvl"` (the reference code's conversation JSONL, byte-compatible).
        image_root (`str` or `os.PathLike`, *optional*):
            Corpus root of the image paths, for scored rollouts in the `hf` format; it is recorded relative to where
            the subset is written.
        report (`dict`, *optional*):
            The selection report, written next to the subset (see [`selection_report_path`]) so that training can
            put it in the model card.

    Example:

    ```python
    >>> write_subset(subset, "bis10.jsonl", format="internvl")
    ```
    """
    path = check_output_path(path, format)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "internvl":
        write_internvl_jsonl(ds, path)
        return
    if "image_is_list" in ds.column_names:
        ds = to_prm_format(ds, image_root=image_root)
    if "image_root" in ds.column_names:
        ds = _relative_roots(ds, path.resolve() if path.suffix == "" else path.resolve().parent)
    if path.suffix == ".jsonl":
        ds.to_json(path, lines=True, force_ascii=False)
    elif path.suffix == ".parquet":
        ds.to_parquet(path)
    else:
        ds.save_to_disk(str(path))
    if report is not None:
        selection_report_path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
