"""Reading the analysis inputs in row blocks.

Labels, outlier flags and scores are ``(n,)`` arrays (numpy, Zarr, Dask or
pandas); reduced rows are ``(n, c)``.  The analysis modules read them through
these helpers, block by block (:func:`streamclust.core.blocks.iter_blocks`), so
only one block is in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from streamclust.core.blocks import block_rows_for, iter_blocks, read_rows
from streamclust.errors import InputError
from streamclust.estimators.blockwise import take_rows

__all__ = ["checked_label_block", "as_plain", "count_rows", "gather_rows", "iter_aligned", "label_block_rows"]


def count_rows(arr: Any) -> int:
    """Number of rows of an array (``shape[0]``) or a sequence (``len``)."""
    return int(arr.shape[0]) if hasattr(arr, "shape") else len(arr)


def as_plain(arr: Any) -> Any:
    """Pandas objects, lists and tuples to numpy; numpy, Zarr and Dask arrays unchanged."""
    if isinstance(arr, (pd.Series, pd.Index)):
        return arr.to_numpy()
    if isinstance(arr, (list, tuple)):
        return np.asarray(arr)
    return arr


def checked_label_block(block: np.ndarray, name: str, start: int) -> np.ndarray:
    """A block of labels as int64 ``(r,)``, checked: integers or booleans, or floats that are integral.

    ``name`` and ``start`` (the block's first row) name the offending row in the error.
    """
    block = np.asarray(block).reshape(-1)
    if block.dtype.kind in "iu":
        return block.astype(np.int64, copy=False)
    if block.dtype.kind == "b":
        return block.astype(np.int64)
    if block.dtype.kind == "f":
        bad = ~np.isfinite(block) | (block != np.round(block))
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise InputError(f"{name}: labels must be integers; row {row} is {block[row - start]!r}.")
        return block.astype(np.int64)
    raise InputError(f"{name}: labels must be an integer array, got dtype {block.dtype}.")


def label_block_rows(memory: str | int | None, block_rows: int | None, n_arrays: int = 1) -> int:
    """Rows per block for a pass over ``n_arrays`` label-like ``(n,)`` arrays: ``block_rows``
    when given (>= 1), else what ``memory`` allows."""
    if block_rows is not None:
        if block_rows < 1:
            raise InputError(f"block_rows={block_rows} should be >= 1.")
        return int(block_rows)
    # a label row costs 8 bytes per array in int64, plus codes and workspace
    return block_rows_for(max(1, 2 * n_arrays), memory, max_rows=1 << 18)


def iter_aligned(arrays: Sequence[Any], block_rows: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """Row blocks of several ``(n, ...)`` arrays, the first read ahead by iter_blocks."""
    first, rest = arrays[0], arrays[1:]
    for rows, block in iter_blocks(first, block_rows):
        yield rows, [block] + [read_rows(a, rows) for a in rest]


def gather_rows(arr: Any, idx: np.ndarray, block_rows: int) -> np.ndarray:
    """Rows ``idx`` (sorted, unique, shape (m,)) of a pandas, numpy, Zarr or Dask array, read block by
    block: ndarray of shape (m, ...)."""
    return take_rows(as_plain(arr), idx, block_rows)
