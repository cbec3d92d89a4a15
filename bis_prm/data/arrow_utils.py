"""Arrow plumbing shared by the data pipeline: fast column access on selected datasets, list-array helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:  # worker processes reading annotation files never import datasets
    import datasets


def arrow_columns(ds: datasets.Dataset, names: list[str]) -> pa.Table:
    """
    The given columns of `ds` as one Arrow table, with the selection (indices mapping) of `ds` applied.

    `ds.with_format("arrow")[:]` gathers a selection row by row into a one-chunk-per-row table, which makes every
    later compute call slow, and `pyarrow.Table.take` first concatenates all chunks of the table; this takes the
    rows chunk by chunk instead.

    Example:

    >>> import datasets
    >>> arrow_columns(datasets.Dataset.from_dict({"a": [1, 2, 3]}).select([2, 0]), ["a"]).column("a").to_pylist()
    [3, 1]
    """
    table = ds.data.table.select(names)
    if ds._indices is None:
        return table
    indices = ds._indices.column(0).to_numpy().astype(np.int64)
    batches = table.to_batches()
    starts = np.cumsum([0] + [batch.num_rows for batch in batches])
    chunk_of_row = np.searchsorted(starts, indices, side="right") - 1
    order = np.argsort(chunk_of_row, kind="stable")
    parts = []
    for chunk in np.unique(chunk_of_row):
        rows = indices[order][chunk_of_row[order] == chunk] - starts[chunk]
        parts.append(batches[chunk].take(pa.array(rows)))
    taken = pa.Table.from_batches(parts, schema=table.schema)
    if np.any(np.diff(order) < 0):  # an unsorted selection: back to its own order
        taken = taken.take(pa.array(np.argsort(order, kind="stable")))
    return taken


def list_parts(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array | pa.ChunkedArray]:
    """Per-row lengths (0 for null lists) and the flat values of a list array."""
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, pc.list_flatten(array)


def list_array(lengths: np.ndarray, values: pa.Array) -> pa.ListArray:
    """The list array whose rows hold `lengths[i]` consecutive items of the flat `values`."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def per_row_sum(lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of each row's flat `values` (row i holds `lengths[i]` of them), added in order like Python's `sum`."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(rows, weights=values, minlength=len(lengths))
