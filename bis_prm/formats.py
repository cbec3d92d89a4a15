"""Output formats of a selected subset: the HF PRM format our trainer reads, and the InternVL conversation JSONL.

The HF PRM format has the columns `image` (list of paths), `question`, `steps` (list of str), `labels` (list of
float), `mc_scores`, `p_pos`, `reliability`, `bis`, `is_mixed` and `source`. The InternVL format is the one the
paper's `build_bis_subset.py` writes, byte for byte:
`{"image": ..., "conversations": [{"from": "human", "value": "Question: ...\\nProcess: step1<prm>\\n\\nstep2<prm>"},
{"from": "gpt", "value": [1.0, 0.0]}]}`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PRM_COLUMNS = (
    "image", "question", "steps", "labels", "mc_scores", "p_pos", "reliability", "bis", "is_mixed", "source"
)  # fmt: skip
FORMATS = ("hf", "internvl")


def _prm_batch(batch: pa.Table, image_root: str | None) -> pa.Table:
    image = batch.column("image").combine_chunks()
    if image_root is not None:
        lengths = pc.list_value_length(image).to_numpy(zero_copy_only=False)
        paths = pc.binary_join_element_wise(image_root, pc.list_flatten(image), "/")
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        image = pa.ListArray.from_arrays(pa.array(offsets), paths)
    question_orig = batch.column("question_orig")
    question = pc.if_else(pc.equal(question_orig, ""), batch.column("question"), question_orig)
    steps = batch.column("steps").combine_chunks()
    stripped_steps = pa.ListArray.from_arrays(steps.offsets, pc.utf8_trim_whitespace(steps.values))
    columns = {"image": image, "question": pc.utf8_trim_whitespace(question), "steps": stripped_steps}
    columns.update({name: batch.column(name) for name in PRM_COLUMNS if name not in columns})
    return pa.table(columns)


def to_prm_format(ds: datasets.Dataset, image_root: str | os.PathLike | None = None, **map_kwargs) -> datasets.Dataset:
    """
    Convert scored rollouts to the HF PRM format the trainer reads.

    Args:
        ds (`datasets.Dataset`):
            Scored rollouts (from [`~scoring.score_rollouts`], possibly a selection of them).
        image_root (`str` or `os.PathLike`, *optional*):
            Corpus root the image paths are relative to; when given, paths become absolute.
        **map_kwargs:
            Passed to `datasets.Dataset.map`.

    Returns:
        `datasets.Dataset` with the columns `PRM_COLUMNS`: `question` is `question_orig` (or `question` when empty)
        stripped, `steps` are stripped.

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


def internvl_record(row: dict) -> dict:
    """
    The InternVL conversation record of one scored rollout (image as stored in the raw file).

    Example:

    >>> row = {"image": ["a.png"], "image_is_list": False, "question": "<image>\\nQ", "question_orig": "Q ",
    ...        "steps": ["s1 ", "s2"], "labels": [1.0, 0.0]}
    >>> internvl_record(row)["conversations"][0]["value"]
    'Question: Q\\nProcess: s1<prm>\\n\\ns2<prm>'
    """
    question = (row["question_orig"] or row["question"] or "").strip()
    process = "\n\n".join(step.strip() + "<prm>" for step in row["steps"])
    return {
        "image": row["image"] if row["image_is_list"] else row["image"][0],
        "conversations": [
            {"from": "human", "value": f"Question: {question}\nProcess: {process}"},
            {"from": "gpt", "value": [float(label) for label in row["labels"]]},
        ],
    }


def write_internvl_jsonl(ds: datasets.Dataset, path: str | os.PathLike) -> None:
    """Write scored rollouts as InternVL conversation JSONL, one `json.dumps(..., ensure_ascii=False)` per line."""
    columns = ["image", "image_is_list", "question", "question_orig", "steps", "labels"]
    with open(path, "w", encoding="utf-8") as f:
        for batch in ds.select_columns(columns).iter(batch_size=1000):
            for i in range(len(batch["image"])):
                row = {name: batch[name][i] for name in columns}
                f.write(json.dumps(internvl_record(row), ensure_ascii=False) + "\n")


def write_subset(
    ds: datasets.Dataset, path: str | os.PathLike, format: str = "hf", image_root: str | os.PathLike | None = None
) -> None:
    """
    Write a selected subset to `path`.

    Args:
        ds (`datasets.Dataset`):
            Scored rollouts (or, for `format="hf"`, a dataset already in the HF PRM format).
        path (`str` or `os.PathLike`):
            `.jsonl` or `.parquet` file, or a directory (written with `save_to_disk`). `format="internvl"` needs a
            file path.
        format (`str`, *optional*, defaults to `"hf"`):
            `"hf"` (HF PRM format) or `"internvl"` (the reference code's conversation JSONL, byte-compatible).
        image_root (`str` or `os.PathLike`, *optional*):
            Corpus root for absolute image paths in the `hf` format.

    Example:

    >>> write_subset(subset, "bis10.jsonl", format="internvl")
    """
    if format not in FORMATS:
        raise ValueError(f"unknown output format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "internvl":
        if path.is_dir():
            raise ValueError(f"--format internvl writes a .jsonl file, got the directory {path}")
        write_internvl_jsonl(ds, path)
        return
    if "image_is_list" in ds.column_names:
        ds = to_prm_format(ds, image_root=image_root)
    if path.suffix == ".jsonl":
        ds.to_json(path, lines=True, force_ascii=False)
    elif path.suffix == ".parquet":
        ds.to_parquet(path)
    else:
        ds.save_to_disk(str(path))
