"""Walking row blocks of a 2-D array under a memory budget.

This is the one module that decides how many rows are in memory at once.  Every
streaming pass in streamclust (statistics, ``partial_fit`` loops, transform,
assignment, metric accumulation) goes through :func:`iter_blocks` (sequential,
with one block read ahead) or :func:`map_blocks_reduce` (parallel over blocks on
the current Dask scheduler: threads by default, a ``distributed.Client`` if one
is active).

Inputs may be numpy arrays, Zarr arrays or Dask arrays of shape ``(n_rows,
n_features)``.  Blocks are always numpy arrays of shape ``(rows, n_features)``.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import math
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from streamclust.core.progress import progress_bar, progress_enabled, show_progress
from streamclust.errors import MemoryBudgetError

if TYPE_CHECKING:  # dask is imported on first use: the conversion path never needs it
    import dask.array as da

__all__ = [
    "DEFAULT_MEMORY",
    "parse_memory",
    "block_rows_for",
    "block_nbytes",
    "as_dask",
    "iter_blocks",
    "map_blocks_reduce",
    "fold_in_order",
    "n_rows_of",
    "read_rows",
    "rows_not_in",
    "release_memory",
    "bound_heaps",
]

#: Memory budget used when none is given: 1 GiB.
DEFAULT_MEMORY = 1 << 30

T = TypeVar("T")


def _load_glibc() -> Any:
    """glibc, or None on other C libraries (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both must exist (glibc)
        return libc
    except (OSError, AttributeError):
        return None


_GLIBC = _load_glibc()

#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def bound_heaps(max_arenas: int = 2, mmap_threshold: int = 32 << 20) -> None:
    """Keep glibc's heaps from holding a process at its high-water mark (glibc only).

    The command line calls it before any work; from the API it is opt-in (call it once at the
    start of a script that runs a study), since it changes the whole process's allocator.

    * Every thread that allocates (Dask's pool, the read-ahead thread) gets its own heap
      "arena", up to 8 per core; freed blocks stay in them, fragmented.  Measured on a
      one-set study of the 416,314-row demo case: 747 MiB resident after the study with
      the default, 524 MiB with ``max_arenas=2`` (peak 868 -> 722 MiB).
    * Buffers up to ``mmap_threshold`` (32 MiB, the most glibc accepts on 64-bit) come from
      the heaps and are reused there; the free top of a heap is returned beyond twice that,
      and :func:`release_memory` hands back the rest after every pass.  (glibc's default
      threshold moves with the largest buffer freed; fixing it also fixes the trim
      threshold.)  A threshold below the block size is what a pass must not have: each
      block's buffers (Zarr's decompressed chunks, Dask's concatenation, the float64 copies)
      then get fresh mappings that the kernel faults in and zeroes, page by page.  The
      416,314-row 4-set study with UMAP (2 cores, run back to back): 461 s at a 4 MiB
      threshold, 401 s at 32 MiB (PCA 94 -> 53 s, k-means 70 -> 52 s), peak 923 -> 937 MiB.

    Process-wide and permanent (it only changes where memory comes from); a no-op
    off glibc.
    """
    if _GLIBC is not None:
        _GLIBC.mallopt(_M_ARENA_MAX, int(max_arenas))
        _GLIBC.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
        _GLIBC.mallopt(_M_TRIM_THRESHOLD, 2 * int(mmap_threshold))


def release_memory() -> None:
    """Hand the heap pages freed by a finished pass back to the operating system.

    glibc keeps freed block buffers in its heaps (one per thread that allocated
    them) and raises its mmap threshold after large frees, so without this the
    resident size of a process only ever grows to the largest pass it has run,
    and every later stage (numba compilation, the kNN index) stacks on top.
    ``dask.distributed`` workers trim the same way.  A no-op off glibc.

    pyarrow's memory pool (pandas' string columns live there) keeps its freed pages
    too: reading the 416,314-row demo case's metadata left 127 MiB resident after
    its frames were gone.  When pyarrow is loaded, its pool releases them as well.
    """
    if _GLIBC is not None:
        _GLIBC.malloc_trim(0)
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()


def parse_memory(size: str | int | float | None) -> int:
    """Parse a memory size such as ``"1GB"``, ``"512MiB"``, ``"2g"`` or ``10**9``.

    ``None`` gives :data:`DEFAULT_MEMORY`.  Text goes through :func:`dask.utils.parse_bytes`:
    decimal units (kB, MB, GB) are powers of 1000, binary units (KiB, MiB, GiB) powers of 1024.
    """
    if size is None:
        return DEFAULT_MEMORY
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        value = int(size)
    else:
        from dask.utils import parse_bytes

        try:
            value = int(parse_bytes(str(size)))
        except (ValueError, TypeError):
            raise MemoryBudgetError(
                f"memory={size!r} is not a size; write it like '1GB', '512MiB' or '2G'."
            ) from None
    if value < (8 << 20):
        raise MemoryBudgetError(
            f"memory={size!r} is below the 8 MiB minimum streamclust needs for one block."
        )
    return value


def block_nbytes(n_features: int, rows: int, *, bytes_per_value: int = 8, copies: int = 8) -> int:
    """Bytes of memory that blocks of ``rows`` x ``n_features`` take in a pass
    (``copies`` working copies; see :func:`block_rows_for`)."""
    return rows * n_features * bytes_per_value * copies


def block_rows_for(
    n_features: int,
    memory: str | int | None = None,
    *,
    bytes_per_value: int = 8,
    copies: int = 8,
    chunk_rows: int | None = None,
    min_rows: int = 64,
    max_rows: int = 1 << 18,
) -> int:
    """Rows per block so that ``copies`` working copies of a block fit in ``memory``.

    Parameters
    ----------
    n_features : int
        Columns of the array walked.
    memory : str or int, optional
        Total budget of the pass (see :func:`parse_memory`).  A block gets
        ``memory / copies`` bytes: the block itself, the one read ahead, float64
        conversions and per-row workspace.
    bytes_per_value : int
        Bytes per value of the widest working copy (8 for float64 work).
    chunk_rows : int, optional
        Row-chunk size of the underlying store; the result is rounded down to a
        multiple of it when possible so a block never splits a chunk.
    min_rows, max_rows : int
        Bounds of the result.

    Returns
    -------
    int
        Rows per block, at least ``min_rows``.

    Raises
    ------
    MemoryBudgetError
        If even ``min_rows`` rows do not fit.
    """
    budget = parse_memory(memory)
    per_block = budget // copies
    rows = per_block // max(1, n_features * bytes_per_value)
    if rows < min_rows:
        need = block_nbytes(n_features, min_rows, bytes_per_value=bytes_per_value, copies=copies)
        raise MemoryBudgetError(
            f"memory={budget / 2**20:.0f} MiB cannot hold blocks of {min_rows} rows x "
            f"{n_features} features; give at least memory='{math.ceil(need / 2**20)}MiB'."
        )
    rows = min(rows, max_rows)
    if chunk_rows and rows >= chunk_rows:
        rows = (rows // chunk_rows) * chunk_rows
    return int(rows)


def n_rows_of(X: Any) -> int:
    """Number of rows of a numpy, Zarr or Dask array."""
    return int(X.shape[0])


def as_dask(X: Any, block_rows: int | None = None) -> da.Array:
    """View ``X`` as a Dask array chunked along rows only.

    Parameters
    ----------
    X : numpy.ndarray, zarr.Array or dask.array.Array, shape (n_rows, n_features)
    block_rows : int, optional
        Rows per chunk.  Without it, Zarr chunking is kept, Dask chunking is kept
        (columns merged into one chunk) and numpy arrays become one chunk.

    Returns
    -------
    dask.array.Array, shape (n_rows, n_features)
    """
    import dask.array as da
    import zarr

    if isinstance(X, da.Array):
        arr = X
    elif isinstance(X, zarr.Array):
        arr = da.from_zarr(X)
    else:
        # numpy or any array-like with shape/__getitem__ (h5py, memmaps): read by row
        # blocks; name=False skips hashing the whole array on every pass
        rows = block_rows or max(1, int(X.shape[0]))
        arr = da.from_array(X, chunks=(rows,) + tuple(X.shape[1:]), name=False)
    if block_rows is not None:
        arr = arr.rechunk((block_rows,) + tuple(-1 for _ in arr.shape[1:]))
    elif arr.ndim > 1 and len(arr.chunks[1]) > 1:
        arr = arr.rechunk({1: -1})
    return arr


def _row_slices(n_rows: int, block_rows: int) -> list[slice]:
    return [slice(s, min(s + block_rows, n_rows)) for s in range(0, n_rows, block_rows)]


def rows_not_in(excluded: np.ndarray, ranks: Any) -> Any:
    """Row numbers of the ``ranks``-th rows (0-based) of ``0, 1, 2, ...`` that are not in ``excluded``.

    Parameters
    ----------
    excluded : ndarray of int, shape (m,)
        Sorted, distinct row numbers left out.
    ranks : int or ndarray of int, shape (r,)
        Positions among the rows that are not excluded.

    Returns
    -------
    int64 or ndarray of int64, shape (r,)
        ``rank + #(excluded rows <= the answer)``: e.g. a store row's source row when
        ``excluded`` rows were dropped, or sampled rows outside a reference sample.
    """
    shifted = np.asarray(excluded, np.int64) - np.arange(len(excluded))
    return ranks + np.searchsorted(shifted, ranks, side="right")


def read_rows(X: Any, rows: slice) -> np.ndarray:
    """Rows ``rows`` of a numpy, Zarr or Dask array as a numpy array."""
    block = X[rows]
    if hasattr(block, "compute"):  # a dask array
        block = block.compute()
    return np.asarray(block)


def iter_blocks(
    X: Any,
    block_rows: int,
    *,
    order: np.ndarray | None = None,
    progress: bool | None = None,
    desc: str | None = None,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, block)`` pairs over ``X`` one block at a time.

    The next block is read in a background thread while the caller works on the
    current one, so reading and decompression overlap with computation; at most
    two blocks are in memory.

    Parameters
    ----------
    X : array-like, shape (n_rows, n_features)
        numpy, Zarr or Dask array.
    block_rows : int
        Rows per block.
    order : ndarray of int, optional
        Visit the blocks in this order (a permutation of block indices), e.g. a
        seeded shuffle for ``partial_fit`` passes.
    progress : bool, optional
        Show a tqdm progress bar (on stderr); default: when the calling context shows
        progress (:func:`streamclust.core.progress.show_progress`).
    desc : str, optional
        Label of the progress bar; default: the current
        :func:`~streamclust.core.progress.progress_step`'s.

    Yields
    ------
    rows : slice
        Rows of ``X`` covered by the block.
    block : ndarray, shape (rows.stop - rows.start, n_features)
    """
    if block_rows < 1:
        raise ValueError(f"block_rows={block_rows} should be >= 1.")
    slices = _row_slices(n_rows_of(X), block_rows)
    if order is not None:
        slices = [slices[i] for i in order]
    if progress is None:
        progress = progress_enabled()
    bar = progress_bar(n_rows_of(X), unit="rows", desc=desc, unit_scale=True) if progress else None
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(_read_ahead, X, slices[0]) if slices else None
            for i, rows in enumerate(slices):
                assert pending is not None  # set for slices[0], then for every following slice
                block = pending.result()
                pending = pool.submit(_read_ahead, X, slices[i + 1]) if i + 1 < len(slices) else None
                yield rows, block
                if bar is not None:
                    bar.update(rows.stop - rows.start)
    finally:
        if bar is not None:
            bar.close()
    release_memory()


def _read_ahead(X: Any, rows: slice) -> np.ndarray:
    """:func:`read_rows` in the read-ahead thread, without a bar of its own (the pass has one)."""
    with show_progress(False):
        return read_rows(X, rows)


def _apply_to_block(func: Callable[[np.ndarray, slice], T], block: np.ndarray, rows: slice) -> T:
    return func(block, rows)


def map_blocks_reduce(
    func: Callable[[np.ndarray, slice], T],
    X: Any,
    block_rows: int,
    *,
    combine: Callable[[T, T], T] | None = None,
) -> T | list[T]:
    """Apply ``func(block, rows)`` to every row block in parallel and reduce.

    Runs on the active Dask scheduler (threads by default; a
    ``distributed.Client`` when one is active, see :mod:`streamclust.core.scheduler`;
    each worker then receives ``func`` once).  ``func`` should return small
    results (statistics), not blocks.  Shows a bar of its tasks when the calling
    context shows progress (:mod:`streamclust.core.progress`).

    Parameters
    ----------
    func : callable ``(block: ndarray (r, d), rows: slice) -> T``
    X : array-like, shape (n_rows, n_features)
    block_rows : int
    combine : callable ``(T, T) -> T``, optional
        Associative reduction of the per-block results (in block order).  Without
        it, the list of per-block results is returned in block order.
    """
    import uuid

    import dask

    from streamclust.core.scheduler import shared

    arr = as_dask(X, block_rows)
    starts = np.concatenate([[0], np.cumsum(arr.chunks[0])])
    delayed_blocks = arr.to_delayed().ravel()
    func_arg = shared(func)  # on a cluster: sent to each worker once, not with every task
    name = f"{type(func).__name__.strip('_')}-{uuid.uuid4().hex}"  # the pass, in task logs
    tasks = [
        dask.delayed(_apply_to_block)(func_arg, blk, slice(int(starts[i]), int(starts[i + 1])),
                                      dask_key_name=(name, i))
        for i, blk in enumerate(delayed_blocks)
    ]
    results: list[T] = list(dask.compute(*tasks))
    release_memory()
    if combine is None:
        return results
    out = results[0]
    for r in results[1:]:
        out = combine(out, r)
    return out


def _compute_block(func: Callable[[np.ndarray, slice], T], block: Any, rows: slice) -> T:
    """``func`` on one block of a Dask array, computed in the calling thread."""
    return func(np.asarray(block.compute(scheduler="sync")), rows)


def fold_in_order(
    func: Callable[[np.ndarray, slice], T],
    X: Any,
    block_rows: int,
    combine: Callable[[T, T], T],
    *,
    window: int,
    threads: int,
) -> T:
    """``func(block, rows)`` on every row block on ``threads`` local threads, folded with
    ``combine`` in block order as the results arrive, at most ``window`` of them held at a time.

    For passes whose per-block results are large (``d x d`` statistics): only ``window``
    blocks are in flight or waiting to be folded, and the fold runs while the next blocks are
    computed, so no core waits for a group of blocks to end (one ``dask.compute`` per group
    did: 2 cores half idle while the main thread merged).  The result is that of the fold
    ``combine(...combine(combine(r0, r1), r2)..., r_last)`` whatever ``window`` and ``threads``
    are.  Local threads only: with a ``distributed.Client`` active, use
    :func:`map_blocks_reduce` on groups of blocks.  Shows a bar of its blocks when the calling
    context shows progress (:mod:`streamclust.core.progress`).

    Parameters
    ----------
    func : callable ``(block: ndarray (r, d), rows: slice) -> T``
    X : array-like, shape (n_rows, n_features)
    block_rows : int
    combine : callable ``(T, T) -> T``
        May update its first argument in place.
    window : int
        Results held at most (computing or waiting), >= 1.
    threads : int
        Worker threads, >= 1 (at most ``window`` are used).

    Returns
    -------
    T
    """
    import collections

    arr = as_dask(X, block_rows)
    starts = np.concatenate([[0], np.cumsum(arr.chunks[0])]).astype(int)
    blocks = arr.to_delayed().ravel()
    n = len(blocks)
    bar = progress_bar(n, unit="block") if progress_enabled() else None
    acc: Any = None
    folded = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, window, n))) as pool:
        pending: collections.deque = collections.deque()
        try:
            for i in range(n):
                pending.append(pool.submit(_compute_block, func, blocks[i], slice(starts[i], starts[i + 1])))
                while len(pending) >= window or (i == n - 1 and pending):
                    result = pending.popleft().result()
                    acc = result if folded == 0 else combine(acc, result)
                    folded += 1
                    if bar is not None:
                        bar.update()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    release_memory()
    return cast(T, acc)
