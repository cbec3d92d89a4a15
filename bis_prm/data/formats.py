"""Output formats of a selected subset: the HF PRM format our trainer reads, and the InternVL conversation JSONL
(written by [`~bis_prm.data.internvl`]).

The HF PRM format has the columns `image` (list of paths relative to `image_root`, `[]` for a text-only rollout),
`image_root`, `question`, `steps` (list of str), `labels` (list of float), `mc_scores`, `p_pos`, `reliability`, `bis`,
`is_mixed` and `source`. A subset written to a file records `image_root` relative to the file's folder (to the
directory for `save_to_disk`), so the subset and its corpus can move together to another machine: training resolves
the images wherever they are.

The InternVL format is the one the paper's `build_bis_subset.py` writes, byte for byte (see
[`~bis_prm.data.internvl`]), with the hard labels or, with `label_mode="soft"`, the MC scores as the gpt value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

# `internvl_lines` is re-exported: the InternVL format was written here before it got its own module
from .internvl import LABEL_MODES, internvl_lines, write_internvl_jsonl  # noqa: F401

PRM_COLUMNS = (
    "image", "image_root", "question", "steps", "labels", "mc_scores", "p_pos", "reliability", "bis", "is_mixed",
    "source",
)  # fmt: skip
# what an output path may end with (a path without a suffix is a `save_to_disk` directory)
OUTPUT_SUFFIXES = {"hf": (".jsonl", ".parquet", ""), "internvl": (".jsonl",)}
FORMATS = ("hf", "internvl")


def prm_batch(batch: pa.Table, image_root: str | None) -> pa.Table:
    """
    One batch of scored rollouts in the HF PRM format (the transform of [`to_prm_format`]), `image_root` recorded
    as given.

    Example:

    >>> from bis_prm.data.scoring import score_rollouts
    >>> from bis_prm.data.stepwise import stepwise_rollouts
    >>> ds = datasets.Dataset.from_dict({"question": ["q"], "steps": [["a", "b"]], "mc_scores": [[0.5, 0.0]]})
    >>> scored = score_rollouts(stepwise_rollouts(ds))
    >>> prm_batch(scored.with_format("arrow")[:2], "/data/corpus").column_names[:4]
    ['image', 'image_root', 'question', 'steps']
    """
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

    >>> from bis_prm.data.scoring import score_rollouts
    >>> from bis_prm.data.stepwise import stepwise_rollouts
    >>> ds = datasets.Dataset.from_dict({"question": ["q"], "steps": [["a", "b"]], "mc_scores": [[0.5, 0.0]]})
    >>> scored = score_rollouts(stepwise_rollouts(ds))
    >>> prm = to_prm_format(scored, image_root="VisualPRM400K-v1.1-Raw")
    >>> prm.column_names[:4]
    ['image', 'image_root', 'question', 'steps']
    """
    root = None if image_root is None else str(Path(image_root).resolve())
    map_kwargs = {"batched": True, "desc": "Converting to PRM format", **map_kwargs}
    converted = ds.with_format("arrow").map(
        prm_batch, fn_kwargs={"image_root": root}, remove_columns=ds.column_names, **map_kwargs
    )
    return converted.with_format(None)


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


def check_label_mode(label_mode: str, format: str = "hf") -> None:
    """
    Check that a subset in `format` can be written with `label_mode`; a `ValueError` says what is wrong.

    Example:

    ```python
    >>> check_label_mode("soft", "hf")
    Traceback (most recent call last):
    ...
    ValueError: label mode soft is for the internvl format: the hf format holds both labels and mc_scores ...

    ```
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {label_mode!r}; choose one of {', '.join(LABEL_MODES)}")
    if label_mode == "soft" and format != "internvl":
        raise ValueError(
            f"label mode soft is for the internvl format: the {format} format holds both labels and mc_scores "
            "(training takes the MC scores with label_mode: soft)"
        )


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


def write_selection_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write the selection report of the subset written to `path` where [`read_selection_report`] finds it."""
    selection_report_path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _write_hf(ds: datasets.Dataset, path: Path, image_root: str | os.PathLike | None) -> None:
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


def write_subset(
    ds: datasets.Dataset,
    path: str | os.PathLike,
    format: str = "hf",
    image_root: str | os.PathLike | None = None,
    report: dict[str, Any] | None = None,
    label_mode: str = "hard",
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
        label_mode (`str`, *optional*, defaults to `"hard"`):
            The targets of an `internvl` file: `"hard"`, the labels (`1.0` / `0.0`); `"soft"`, the MC scores (the
            reference code's `converted_soft`). The `hf` format always holds both (`labels` and `mc_scores`; training
            picks one with `PRMConfig.label_mode`), so `"soft"` is refused there.

    Example:

    ```python
    >>> write_subset(subset, "bis10.jsonl", format="internvl")  # doctest: +SKIP
    >>> write_subset(subset, "bis10_soft.jsonl", format="internvl", label_mode="soft")  # doctest: +SKIP

    ```
    """
    path = check_output_path(path, format)
    check_label_mode(label_mode, format)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "internvl":
        write_internvl_jsonl(ds, path, label_mode=label_mode)
    else:
        _write_hf(ds, path, image_root)
    if report is not None:
        write_selection_report(path, report)
