"""Helpers shared by the streaming estimators and the layers above them.

Input dispatch (in-memory numpy vs. out-of-core Zarr/Dask), validation with
scikit-learn's conventions, block sizing, the grouped block reduction that
keeps the per-block results of one pass within the memory budget, rows taken
by index, and the ``n`` highest scores of a column (:func:`top_outlier_rows`).  Every pass
over the data still goes through :func:`streamclust.core.blocks.map_blocks_reduce`
or :func:`streamclust.core.blocks.iter_blocks`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_array, validate_data

from streamclust.core.blocks import (
    as_dask,
    block_rows_for,
    fold_in_order,
    iter_blocks,
    map_blocks_reduce,
    parse_memory,
    rows_not_in,
)
from streamclust.core.scheduler import local_cores, one_blas_thread
from streamclust.errors import InputError

__all__: list[str] = []

#: Upper bound of the derived block size.  Larger blocks do not make the GEMMs
#: faster (the kernels work on cache-sized sub-chunks) but leave a numpy array
#: of a few hundred thousand rows in ONE block, i.e. one task and no
#: parallelism.  A fixed bound (not derived from the core count) keeps results
#: identical across machines.
MAX_BLOCK_ROWS = 1 << 16


def is_lazy(X: Any) -> bool:
    """True for arrays that must be walked block by block (Dask, Zarr, array-likes
    with ``shape``/``dtype``/``__getitem__`` that are not numpy, pandas or sparse)."""
    if isinstance(X, da.Array):
        return True
    if isinstance(X, np.ndarray) or sp.issparse(X):
        return False
    module = type(X).__module__ or ""
    if module.startswith(("pandas", "polars", "pyarrow", "sklearn")):
        return False
    return all(hasattr(X, a) for a in ("shape", "dtype", "ndim", "__getitem__"))


def float_dtype(dtype: Any) -> np.dtype:
    """Working dtype of a block: float32 stays float32, everything else is float64."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float32 else np.dtype(np.float64)


def check_X(estimator: Any, X: Any, *, reset: bool) -> tuple[Any, bool]:
    """Validate ``X`` the scikit-learn way and return ``(X, lazy)``.

    In-memory inputs go through :func:`sklearn.utils.validation.validate_data`
    (float64/float32, finite, 2-D, non-empty); out-of-core inputs get the same
    shape, dtype and feature-count checks without reading the data (finiteness is
    checked on the accumulated statistics instead).
    """
    if not is_lazy(X):
        X = validate_data(estimator, X, reset=reset, dtype=[np.float64, np.float32])
        return X, False
    if X.ndim != 2:
        raise ValueError(
            f"Expected 2D array, got {X.ndim}D array instead: shape={tuple(X.shape)}. "
            "Reshape your data to (n_samples, n_features)."
        )
    kind = np.dtype(X.dtype).kind
    if kind not in "fiub":
        raise ValueError(f"X has dtype={np.dtype(X.dtype)}; a real numeric dtype is needed.")
    n, d = int(X.shape[0]), int(X.shape[1])
    if n < 1:
        raise ValueError(f"Found array with 0 sample(s) (shape=({n}, {d})) while a minimum of 1 is required.")
    if d < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape=({n}, {d})) while a minimum of 1 is required.")
    if reset:
        estimator.n_features_in_ = d
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    else:
        expected = getattr(estimator, "n_features_in_", None)
        if expected is not None and d != expected:
            raise ValueError(
                f"X has {d} features, but {type(estimator).__name__} is expecting "
                f"{expected} features as input."
            )
    return X, True


def check_data(X: Any) -> tuple[Any, bool]:
    """Validate ``X`` without an estimator (for functions): ``(X, lazy)``."""
    if not is_lazy(X):
        return check_array(X, dtype=[np.float64, np.float32]), False

    class _Holder:
        pass

    return check_X(_Holder(), X, reset=True)


def check_finite(values: Any, what: str = "X") -> None:
    """Raise the scikit-learn error for non-finite input, detected on statistics."""
    if not np.all(np.isfinite(values)):
        raise ValueError(f"Input {what} contains NaN or infinity.")


def chunk_rows_of(X: Any) -> int | None:
    """Row-chunk size of a Zarr/Dask/chunked array, if it has a regular one."""
    chunks = getattr(X, "chunks", None)
    if chunks is None:
        return None
    first = chunks[0]
    if isinstance(first, tuple):  # dask: tuple of chunk sizes
        return int(first[0]) if first else None
    try:
        return int(first)
    except (TypeError, ValueError):
        return None


def resolve_block_rows(
    n_features: int, memory: Any, block_rows: Any, X: Any = None, **kwargs: Any
) -> int:
    """Rows per block: ``block_rows`` if given (validated) else sized from ``memory``
    with :func:`streamclust.core.blocks.block_rows_for` (at most :data:`MAX_BLOCK_ROWS`)."""
    if block_rows is not None:
        if not isinstance(block_rows, numbers.Integral) or isinstance(block_rows, bool) or block_rows < 1:
            raise ValueError(f"block_rows={block_rows!r} should be a positive integer or None.")
        return int(block_rows)
    kwargs.setdefault("max_rows", MAX_BLOCK_ROWS)
    return block_rows_for(
        int(n_features), memory, chunk_rows=chunk_rows_of(X) if X is not None else None, **kwargs
    )


def to_blockable(X: Any, block_rows: int) -> Any:
    """Dask view of ``X`` chunked in ``block_rows`` rows (:func:`streamclust.core.blocks.as_dask`)."""
    return as_dask(X, block_rows)


def map_rows(func: Callable[[np.ndarray], np.ndarray], X: Any, lazy: bool, block_rows: int, *,
             dtype: Any, n_cols: int | None = None) -> Any:
    """Apply a per-block function to every row block of ``X``.

    Parameters
    ----------
    func : callable ``(block (r, d)) -> (r,) or (r, n_cols)``
    X : array-like, shape (n_samples, n_features)
    lazy : bool
        From :func:`check_X`: return a lazy Dask array (one task per block)
        instead of filling a numpy array block by block.
    block_rows : int
    dtype : dtype of the output
    n_cols : int, optional
        Columns of the output; ``None`` for one value per row.

    Returns
    -------
    ndarray or dask.array.Array, shape (n_samples,) or (n_samples, n_cols)
    """
    dtype = np.dtype(dtype)
    if lazy:
        arr = to_blockable(X, block_rows)
        if n_cols is None:
            return arr.map_blocks(func, drop_axis=1, dtype=dtype, meta=np.empty((0,), dtype))
        return arr.map_blocks(func, dtype=dtype, chunks=(arr.chunks[0], (n_cols,)),
                              meta=np.empty((0, 0), dtype))
    out = np.empty((X.shape[0],) if n_cols is None else (X.shape[0], n_cols), dtype=dtype)
    for rows, block in iter_blocks(X, block_rows):
        out[rows] = func(block)
    return out


def fold_blocks(
    func: Callable[[np.ndarray, slice], Any],
    X: Any,
    block_rows: int,
    combine: Callable[[Any, Any], Any],
    *,
    result_nbytes: int = 0,
    memory: Any = None,
) -> Any:
    """One parallel pass: ``func(block, rows)`` on every block, folded left in block order.

    :func:`map_blocks_reduce` holds all per-block results at once before
    reducing; when those results are large (e.g. ``d x d`` matrices) at most a quarter of
    the memory budget is taken by pending results: on local threads they are folded as
    they arrive (:func:`~streamclust.core.blocks.fold_in_order`), with a client the pass runs in
    groups of consecutive blocks.  The fold order (block 0, 1, 2, ...) is the same either way,
    so results do not depend on it.
    """
    arr = to_blockable(X, block_rows)
    n = int(arr.shape[0])
    n_blocks = max(1, math.ceil(n / block_rows))
    budget = parse_memory(memory) // 4
    group = n_blocks if result_nbytes <= 0 else max(1, min(n_blocks, budget // max(1, result_nbytes)))
    # One BLAS thread per task: the parallelism is across blocks (Dask threads); OpenBLAS threads
    # contending with them made GEMMs up to 7x slower on a 2-core machine.  (Distributed workers
    # already run with OPENBLAS_NUM_THREADS=1.)
    with one_blas_thread():
        if group < n_blocks and (cores := local_cores()) > 1:
            # large results on local threads: fold them as they come, no core idle between groups
            return fold_in_order(func, arr, block_rows, combine, window=group, threads=cores)
        acc = None
        first = True
        for g0 in range(0, n_blocks, group):
            start = g0 * block_rows
            stop = min(n, (g0 + group) * block_rows)
            if start == 0 and stop == n:
                part, f = arr, func
            else:
                part, f = arr[start:stop], _Offset(func, start)
            results = map_blocks_reduce(f, part, block_rows)
            for r in results:
                if first:
                    acc, first = r, False
                else:
                    acc = combine(acc, r)
    return acc


class _Offset:
    """Picklable wrapper shifting the ``rows`` slice given to ``func`` by ``offset``."""

    def __init__(self, func: Callable[[np.ndarray, slice], Any], offset: int) -> None:
        self.func = func
        self.offset = offset

    def __call__(self, block: np.ndarray, rows: slice) -> Any:
        return self.func(block, slice(rows.start + self.offset, rows.stop + self.offset))


class _TakeRows:
    """Per-block function returning the rows of ``index`` (sorted, global) in the block."""

    def __init__(self, index: np.ndarray) -> None:
        self.index = index

    def __call__(self, block: np.ndarray, rows: slice) -> list[np.ndarray]:
        lo, hi = np.searchsorted(self.index, [rows.start, rows.stop])
        return [np.array(block[self.index[lo:hi] - rows.start])]


def rows_outside(sample: np.ndarray, n_rows: int, size: int, random_state: Any) -> np.ndarray:
    """Up to ``size`` seeded rows of ``range(n_rows)`` that are not in ``sample``, sorted.

    Parameters
    ----------
    sample : ndarray of int64, shape (m,)
        Sorted, distinct row numbers.
    n_rows : int
    size : int
    random_state : RandomState instance
        Consumed for one draw (none when every row is in ``sample``).

    Returns
    -------
    ndarray of int64, shape (min(size, n_rows - m),)
    """
    m = len(sample)
    size = min(int(size), n_rows - m)
    if size <= 0:
        return np.empty(0, np.int64)
    ranks = np.sort(sample_without_replacement(n_rows - m, size, random_state=random_state)).astype(np.int64)
    return rows_not_in(sample, ranks)


def take_rows(X: Any, index: np.ndarray, block_rows: int, *, memory: Any = None) -> np.ndarray:
    """Rows ``X[index]`` (``index`` sorted, unique) read in one block-wise pass."""
    index = np.asarray(index, dtype=np.int64)
    if isinstance(X, np.ndarray):
        return X[index]
    parts = fold_blocks(_TakeRows(index), X, block_rows, lambda a, b: a + b)
    return np.concatenate(parts, axis=0)


def column_moments(block: np.ndarray) -> list:
    """``[n, mean, m2]`` of every column of a block, in float64.

    ``m2`` is the sum of squared deviations from the block mean (two passes
    over the block, in cache-sized sub-chunks), ready for Chan's merge
    (:func:`merge_moments`).
    """
    n, d = block.shape
    mean = np.sum(block, axis=0, dtype=np.float64) / max(n, 1)
    m2 = np.zeros(d)
    step = max(256, (1 << 19) // max(1, d))
    for s in range(0, n, step):
        diff = np.asarray(block[s : s + step], dtype=np.float64) - mean
        m2 += np.einsum("ij,ij->j", diff, diff)
    return [n, mean, m2]


def merge_moments(a: list, b: list) -> list:
    """Chan et al.'s parallel merge of per-column ``[n, mean, m2]``."""
    na, ma, va = a[:3]
    nb, mb, vb = b[:3]
    if nb == 0:
        return list(a)
    if na == 0:
        return list(b)
    n = na + nb
    delta = mb - ma
    return [n, ma + delta * (nb / n), va + vb + delta**2 * (na * nb / n)]


def as_labels(labels: Any, n_samples: int) -> np.ndarray:
    """1-D label array of length ``n_samples`` as numpy (Dask labels are computed)."""
    if isinstance(labels, da.Array):
        labels = labels.compute()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        labels = np.ravel(labels) if labels.ndim == 2 and 1 in labels.shape else labels
    if labels.ndim != 1 or labels.shape[0] != n_samples:
        raise ValueError(
            f"labels has shape {labels.shape}; it should be ({n_samples},), one label per row of X."
        )
    return labels


class _TopScores:
    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, block: np.ndarray, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(block, np.float64).reshape(-1)
        ids = np.arange(rows.start, rows.stop, dtype=np.int64)
        ok = ~np.isnan(s)
        return _top_scores(s[ok], ids[ok], self.n)


def _top_scores(s: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, -s))[:n]
    return s[order], ids[order]


def top_outlier_rows(
    scores: Any,
    n: int,
    *,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> pd.DataFrame:
    """The ``n`` rows with the highest scores, in one block-wise pass.

    Parameters
    ----------
    scores : array-like, shape (n_rows,)
        numpy, Zarr or Dask (higher = more outlying); NaN scores are ignored.
    n : int

    Returns
    -------
    DataFrame
        Columns ``row`` and ``score``, highest score first (ties: lower row first).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n={n!r} should be an integer >= 0.")
    total = int(scores.shape[0])
    if n == 0 or total == 0:
        return pd.DataFrame({"row": np.empty(0, np.int64), "score": np.empty(0, np.float64)})
    if isinstance(scores, np.ndarray):
        col = da.from_array(np.asarray(scores).reshape(total, 1), chunks=(total, 1), name=False)
    else:
        col = as_dask(scores)
        col = col[:, None] if col.ndim == 1 else col
    if block_rows is None:
        block_rows = block_rows_for(4, memory, max_rows=1 << 18)

    def combine(a: tuple, b: tuple) -> tuple:
        return _top_scores(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), int(n))

    s, ids = fold_blocks(_TopScores(int(n)), col, int(block_rows), combine)
    return pd.DataFrame({"row": ids.astype(np.int64), "score": s.astype(np.float64)})


def sweep_plan(k_values: Any, random_state: Any) -> tuple[list[int], int]:
    """``(ks, seed)`` of a sweep: the distinct numbers of clusters in increasing order, and the one
    integer seed every model of the sweep shares (``random_state`` itself when it is an int, else a draw
    from it), so that a sweep's model for ``k`` equals a single fit with that ``k``.

    Raises
    ------
    ValueError
        ``k_values`` is empty.
    """
    ks = sorted({int(k) for k in k_values})
    if not ks:
        raise ValueError("k_values is empty; give at least one number of clusters.")
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return ks, int(random_state)
    return ks, int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
