"""Selection from corpora larger than memory: the pipeline behind `bis-prm select --streaming`.

[`stream_selection`] writes what [`~selection.run_selection`] followed by [`~formats.write_subset`] writes, byte for
byte, and returns the same report, in two passes over the annotation files, each file read in blocks of whole lines
([`~visualprm400k.iter_annotation_blocks`]: the same parsing and checks):

1. Every rollout is parsed, checked and scored. What stays in memory is what decides the selection (row numbers and
   ranking keys of the valid rollouts of the file at hand) and what the report needs (counts, the line of every
   dropped rollout, the values its statistics average). When a file ends, its kept rows are picked as
   [`~selection.selection_indices`] picks them: same keys, ties in file order, one random generator drawn from
   source by source in file order.
2. The files are read again; only the kept rows are materialised, converted and written, in corpus order.

Memory: a block of a file (`DEFAULT_BLOCK_SIZE`) and its rows, the keys of one file, a batch of output rows, and 25
bytes per valid rollout for the report's statistics (means over the whole corpus with numpy's pairwise sums, so that
they equal the in-memory ones to the last bit), not the corpus text. A `.parquet` file sizes its row groups from the
whole subset, so the kept rows are staged in an Arrow file next to it first, which `datasets` memory-maps to convert
it. A `save_to_disk` directory and a push to the Hub need the subset as a `datasets.Dataset`: use
[`~selection.run_selection`] for those.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter
from datasets.table import InMemoryTable
from tqdm.auto import tqdm

from .arrow_utils import list_parts, per_row_sum
from .formats import check_label_mode, check_output_path, internvl_lines, prm_batch, write_selection_report
from .scoring import score_batch
from .selection import (
    METHODS,
    MIXTURE_COLUMNS,
    assemble_report,
    mixture_summary,
    pick_rows,
    ranking_key,
    selection_params,
    source_counts,
)
from .stepwise import is_stepwise_corpus
from .visualprm400k import INVALID_REASONS, find_annotation_files, iter_annotation_blocks, resolve_visualprm400k

# `Dataset.map`'s batch and writer size: the in-memory path holds the hf subset in chunks of this many rows, and
# `to_json` writes it in batches of as many (`datasets.config.DEFAULT_MAX_BATCH_SIZE`)
_BATCH_ROWS = 1000
# bytes of an annotation file read at a time: a block and its parsed rows are most of the memory a selection takes
# (on 10 files of 10k rollouts, 16 MiB blocks take 100 MB more than 4 MiB ones, for 25 % less time)
DEFAULT_BLOCK_SIZE = 4 << 20
_EMPTY = {"int64": np.zeros(0, dtype=np.int64), "float64": np.zeros(0), "bool": np.zeros(0, dtype=bool)}


@dataclass
class _FilePlan:
    """What the second pass needs of one annotation file."""

    path: Path
    stat: tuple[int, int]  # size and modification time: the file must not change between the passes
    rows: int  # non-blank lines
    kept: np.ndarray  # row numbers (0-based among the non-blank lines), increasing


def _concat(arrays: list[np.ndarray], dtype: str) -> np.ndarray:
    return np.concatenate(arrays) if arrays else _EMPTY[dtype]


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _first_pass(
    files: list[Path],
    image_root: Path,
    method: str,
    ratio: float,
    alpha: float,
    tau: float,
    seed: int,
    block_size: int,
    progress: bool,
) -> tuple[list[_FilePlan], dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Score every rollout and pick the kept rows of each file; return the plans, the report's counts and dropped
    rows, and the `MIXTURE_COLUMNS` of all valid and of the kept rollouts."""
    rng = np.random.default_rng(seed)
    plans, report_sources, dropped_rows = [], {}, {}
    values = {kind: {name: [] for name in MIXTURE_COLUMNS} for kind in ("all", "kept")}
    steps = {kind: np.zeros(2, dtype=np.int64) for kind in ("all", "kept")}  # positive, negative
    for path in tqdm(files, desc="Scoring rollouts (streaming)", unit="file", disable=not progress):
        stat = _stat(path)
        counts = np.zeros(len(INVALID_REASONS) + 1, dtype=np.int64)
        read = lines = 0
        # per valid rollout of this file: row number, ranking key, averaged values, positive and negative steps
        positions, keys, file_values, file_steps = [], [], {name: [] for name in MIXTURE_COLUMNS}, []
        for block in iter_annotation_blocks(path, image_root, block_size):
            rows = block.rows
            scored = score_batch(rows.select(["mc_scores", "invalid_reason"]), tau=tau, alpha=alpha)
            # the report counts rows by reason, as `subset_report` does
            codes = pc.index_in(rows.column("invalid_reason"), pa.array(INVALID_REASONS))
            codes = pc.fill_null(codes, len(INVALID_REASONS)).to_numpy(zero_copy_only=False)
            counts += np.bincount(codes, minlength=len(INVALID_REASONS) + 1)
            line = rows.column("line").to_numpy(zero_copy_only=False)
            for row in np.flatnonzero(codes < len(INVALID_REASONS)):
                entry = {"file": f"{path.stem}.jsonl", "line": int(line[row]) + 1}
                dropped_rows.setdefault(INVALID_REASONS[codes[row]], []).append(entry)
            # selection ranks the rollouts with a finite p_pos, as `selection_indices` does
            valid = np.flatnonzero(np.isfinite(scored.column("p_pos").to_numpy(zero_copy_only=False)))
            positions.append(valid + read)
            key = ranking_key(scored, method, alpha)
            keys.append(key[valid] if key is not None else None)
            for name in MIXTURE_COLUMNS:
                file_values[name].append(scored.column(name).to_numpy(zero_copy_only=False)[valid])
            lengths, labels = list_parts(scored.column("labels"))
            positive = per_row_sum(lengths, labels.to_numpy(zero_copy_only=False) > 0).astype(np.int64)
            file_steps.append(np.stack([positive, lengths - positive], axis=1)[valid])
            read += rows.num_rows
            lines += block.num_lines
        positions = _concat(positions, "int64")
        key = None if not keys or keys[0] is None else _concat(keys, "float64")
        picked = pick_rows(positions, key, method, ratio, rng)
        kept = np.sort(picked) if picked is not None else _EMPTY["int64"]
        kept_among_valid = np.searchsorted(positions, kept)
        for name in MIXTURE_COLUMNS:
            all_values = _concat(file_values[name], "bool" if name == "is_mixed" else "float64")
            values["all"][name].append(all_values)
            values["kept"][name].append(all_values[kept_among_valid])
        file_steps = np.concatenate(file_steps) if file_steps else np.zeros((0, 2), dtype=np.int64)
        steps["all"] += file_steps.sum(axis=0)
        steps["kept"] += file_steps[kept_among_valid].sum(axis=0)
        report_sources[path.stem] = source_counts(counts, len(kept), lines - read if read else 0)
        plans.append(_FilePlan(path, stat, read, kept))
    mixture = {
        kind: {name: np.concatenate(arrays) for name, arrays in values[kind].items()} for kind in ("all", "kept")
    }
    stats = {kind: mixture_summary(mixture[kind], int(steps[kind][0]), int(steps[kind][1])) for kind in mixture}
    return plans, {"sources": report_sources, "dropped_rows": dropped_rows, "stats": stats}, mixture


def _kept_rows(
    plans: list[_FilePlan], image_root: Path, alpha: float, tau: float, block_size: int, progress: bool
) -> Iterator[pa.Table]:
    """The kept rollouts, scored, block by block in corpus order (the second pass)."""
    for plan in tqdm(plans, desc="Writing kept rollouts (streaming)", unit="file", disable=not progress):
        if len(plan.kept) == 0:
            continue
        changed = ValueError(f"{plan.path} changed during the streaming selection; run it again")
        if _stat(plan.path) != plan.stat:
            raise changed
        first = 0
        for block in iter_annotation_blocks(plan.path, image_root, block_size):
            n = block.rows.num_rows
            start, stop = np.searchsorted(plan.kept, [first, first + n])
            if stop > start:
                rows = block.rows.take(pa.array(plan.kept[start:stop] - first))
                yield score_batch(rows, tau=tau, alpha=alpha)
            first += n
        if first != plan.rows:
            raise changed


def _rebatch(tables: Iterable[pa.Table], size: int) -> Iterator[pa.Table]:
    """The rows of `tables` in one-chunk tables of `size` rows (the last one shorter)."""
    pending, count = [], 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= size:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, size).combine_chunks()
            pending, count = [merged.slice(size)], count - size
    if count:
        yield pa.concat_tables(pending).combine_chunks()


@contextlib.contextmanager
def _system_memory_pool() -> Iterator[None]:
    """
    Allocate Arrow memory with the C library's malloc while streaming. pyarrow's default pool, mimalloc, keeps the
    pages its threads' heaps freed: block after block that grows to 60-80 MB on a 4 MiB block, as much as the
    selection itself needs. `pyarrow.set_memory_pool` is pyarrow's public switch; every buffer is freed by the pool
    that allocated it, so switching back is safe.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


@contextlib.contextmanager
def _no_datasets_progress_bars() -> Iterator[None]:
    """`to_json` draws a progress bar per call; one call per batch would draw hundreds."""
    disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not disabled:
            datasets.enable_progress_bars()


def _write_internvl(rows: Iterable[pa.Table], f: BinaryIO, label_mode: str) -> None:
    for batch in rows:
        lines = internvl_lines(batch, label_mode)
        text = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "\n")[0]
        f.write(text.as_buffer())
        f.write(b"\n")


def _write_hf_jsonl(rows: Iterable[pa.Table], f: BinaryIO, image_root: str) -> None:
    with _no_datasets_progress_bars():
        for batch in _rebatch((prm_batch(batch, image_root) for batch in rows), _BATCH_ROWS):
            # the batches `write_subset`'s `to_json` converts, through the same code
            datasets.Dataset(InMemoryTable(batch)).to_json(f, lines=True, force_ascii=False)


def _write_hf_parquet(rows: Iterable[pa.Table], path: Path, image_root: str) -> None:
    # `to_parquet` sizes row groups from the whole subset (rows and Arrow bytes): stage it in the Arrow chunks of the
    # in-memory path, then convert it with the same call
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".arrow")
    os.close(fd)
    try:
        written = 0
        with ArrowWriter(path=staging, writer_batch_size=_BATCH_ROWS) as writer:
            for batch in _rebatch((prm_batch(batch, image_root) for batch in rows), _BATCH_ROWS):
                writer.write_table(batch)
                written += batch.num_rows
            if written:
                writer.finalize()
        # nothing kept: the in-memory subset has no columns either
        subset = datasets.Dataset.from_file(staging) if written else datasets.Dataset(InMemoryTable(pa.table({})))
        subset.to_parquet(str(path))
    finally:
        os.unlink(staging)


def _write_output(rows: Iterable[pa.Table], path: Path, format: str, label_mode: str, image_root: str) -> None:
    """Write the kept rows to `path`, which appears once complete."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as f:
            if format == "internvl":
                _write_internvl(rows, f, label_mode)
            elif path.suffix == ".jsonl":
                _write_hf_jsonl(rows, f, image_root)
        if path.suffix == ".parquet":
            _write_hf_parquet(rows, partial, image_root)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def stream_selection(
    path_or_repo: str | os.PathLike,
    output: str | os.PathLike,
    method: str = "bis",
    ratio: float = 0.1,
    alpha: float = 0.2,
    tau: float = 0.0,
    seed: int = 0,
    format: str = "hf",
    label_mode: str = "hard",
    revision: str | None = None,
    download_images: bool = False,
    plot: str | os.PathLike | None = None,
    progress: bool = True,
    block_size: int | None = None,
) -> dict[str, Any]:
    """
    Select a subset of a VisualPRM400K-style corpus and write it, holding neither the corpus nor its text in memory:
    the output file, the selection report next to it and the returned report are those of
    [`~selection.run_selection`] + [`~formats.write_subset`], byte for byte.

    Args:
        path_or_repo (`str` or `os.PathLike`):
            Local corpus root, annotations directory, zip, or Hub repo id (see
            [`~visualprm400k.resolve_visualprm400k`]). Stepwise corpora are read in memory only.
        output (`str` or `os.PathLike`):
            A `.jsonl` or `.parquet` file (`hf` format) or a `.jsonl` file (`internvl` format); the file appears once
            complete.
        method (`str`, *optional*, defaults to `"bis"`):
            Selection method, one of `METHODS`.
        ratio (`float`, *optional*, defaults to `0.1`):
            Fraction kept per source, in (0, 1].
        alpha (`float`, *optional*, defaults to `0.2`):
            BIS smoothing term.
        tau (`float`, *optional*, defaults to `0.0`):
            Hard-label threshold.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the `random` baseline.
        format (`str`, *optional*, defaults to `"hf"`):
            `"hf"` or `"internvl"` (see [`~formats.write_subset`]).
        label_mode (`str`, *optional*, defaults to `"hard"`):
            The targets of an `internvl` file: `"hard"` labels or `"soft"` MC scores.
        revision (`str`, *optional*):
            Hub revision when `path_or_repo` is a repo id.
        download_images (`bool`, *optional*, defaults to `False`):
            For a Hub repo id, also download and unzip its `images.zip`.
        plot (`str` or `os.PathLike`, *optional*):
            Draw the p_pos / R / BIS histograms of all valid vs kept rollouts into this image file.
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars.
        block_size (`int`, *optional*, defaults to `DEFAULT_BLOCK_SIZE`, 4 MiB):
            Bytes of an annotation file read at a time.

    Returns:
        `dict`: the report of [`~selection.subset_report`].

    Example:

    ```python
    >>> report = stream_selection(  # doctest: +SKIP
    ...     "VisualPRM400K-v1.1-Raw", "bis10.jsonl", method="bis", ratio=0.1, alpha=0.2
    ... )
    >>> report["total"]["kept"]  # doctest: +SKIP
    40019

    ```
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    path = check_output_path(output, format)
    check_label_mode(label_mode, format)
    if path.suffix == "":
        raise ValueError(f"output {path}: a streaming selection writes a .jsonl or .parquet file, not a directory")
    if is_stepwise_corpus(path_or_repo):
        raise ValueError(f"{path_or_repo} is a stepwise corpus: a streaming selection reads VisualPRM400K annotations")
    annotations_dir, root = resolve_visualprm400k(path_or_repo, revision=revision, download_images=download_images)
    files = find_annotation_files(annotations_dir)
    block_size = block_size or DEFAULT_BLOCK_SIZE
    with _system_memory_pool():
        plans, parts, mixture = _first_pass(files, root, method, ratio, alpha, tau, seed, block_size, progress)
        params = selection_params(str(path_or_repo), revision, method, ratio, alpha, tau, seed)
        report = assemble_report(parts["sources"], parts["dropped_rows"], parts["stats"], params)
        path.parent.mkdir(parents=True, exist_ok=True)
        # image roots are recorded relative to the file's folder, as `write_subset` records them
        relative_root = os.path.relpath(str(Path(root).resolve()), path.resolve().parent)
        _write_output(
            _kept_rows(plans, root, alpha, tau, block_size, progress), path, format, label_mode, relative_root
        )
    write_selection_report(path, report)

    if plot is not None:
        from .plots import plot_selection_histograms

        all_valid, kept = (datasets.Dataset.from_dict(mixture[kind]) for kind in ("all", "kept"))
        plot_selection_histograms(all_valid, kept, plot)
    return report
