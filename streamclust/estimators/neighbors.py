"""Nearest neighbours, the one way every estimator builds and queries an index: pynndescent's
approximate index (the seeded single-threaded build, numba's disk cache for the kernels pynndescent
ships uncached), an exact brute-force index with the same interface for small references, the
process-wide query lock, and the memory an index holds.

References of at most :data:`EXACT_SEARCH_ROWS` rows are searched exactly (:class:`ExactIndex`):
there, a BLAS distance block per query block is faster than NN-descent's build and queries, and it
spares the process the ~20-50 s numba compilation of ``nn_descent``, which pynndescent's code keeps
out of numba's disk cache (it takes the distance function as an argument and reads the thread count
through a pointer, so every process compiles it anew).

Queries and index builds are serialised by :data:`QUERY_LOCK`: pynndescent's kernels are
numba-parallel and not safe to call from several threads at once under numba's ``workqueue``
threading layer (the one left when neither TBB nor OpenMP is installed), e.g. from Dask's threads
or from two sets studied at the same time.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamclust.core.scheduler import one_blas_thread

__all__ = ["EXACT_SEARCH_ROWS", "ExactIndex", "QUERY_LOCK", "SEARCHES", "build_index", "build_nndescent_index",
           "cache_kernels", "cache_build_kernels", "index_nbytes", "warm_up"]


#: Serialises the numba-parallel kernels (index builds and queries, UMAP fits) across the threads
#: of the process (see module doc).
QUERY_LOCK = threading.RLock()

#: References up to this many rows get an :class:`ExactIndex` instead of an NN-descent index.
EXACT_SEARCH_ROWS = 20_000

#: The ``search=`` values of :func:`build_index`.
SEARCHES = ("auto", "exact", "nndescent")

#: Extra candidates taken from the float32 distance block before their distances are recomputed
#: row by row: a true neighbour that the block's round-off ranks just past ``k`` is still found.
_EXACT_MARGIN = 8

#: Bytes of the temporary arrays of one :meth:`ExactIndex.query`, shared by its threads.
_EXACT_BLOCK_BYTES = 32 << 20

#: Query rows of one step of a thread (fewer when :data:`_EXACT_BLOCK_BYTES` asks).
_EXACT_QUERY_ROWS = 256

#: Reference rows of one distance tile: a tile of ``256 x 1024`` float32 (1 MiB) stays in the
#: core's cache between the GEMM that writes it and the selection that reads it.
_EXACT_TILE_ROWS = 1024


class ExactIndex:
    """Brute-force nearest neighbours of a small reference, queried like ``pynndescent.NNDescent``.

    Each block of queries gets its float32 distance block to the reference centred on its mean
    (which keeps the cancellation of ``|q|^2 + |r|^2 - 2 q.r`` small), computed one cache-sized
    tile of reference rows at a time by a GEMM of ``-2 q`` and the tile, the ``k + 8`` nearest
    candidates by that block (a bounded heap per query row, :func:`_heap_kernel`, carried from
    tile to tile), then their distances recomputed directly as ``sqrt(sum((q - r)^2))``, so a
    row identical to a reference row is at distance exactly 0, as in pynndescent.  Equal
    distances are ordered by reference row (the lower first), whatever the block size, tiling
    and threads.  (Until Dec 2026 they kept the heap's order, which followed the last bits of
    the float32 block and so changed with the block size and the number of BLAS threads.)  Only
    when more than 8 rows tie at the ``k``-th distance may the float32 block decide which of
    them are kept.

    Query blocks run on ``numba.get_num_threads()`` threads (set it, e.g. through the
    detector's ``n_jobs``, to use fewer), each with one BLAS thread.

    Parameters
    ----------
    reference : ndarray of float32, shape (m, d)
    """

    def __init__(self, reference: np.ndarray) -> None:
        self.reference = np.ascontiguousarray(reference, dtype=np.float32)
        self._centre = self.reference.mean(axis=0, dtype=np.float64).astype(np.float32)
        self._centred = self.reference - self._centre
        self._sq = np.einsum("ij,ij->i", self._centred, self._centred)

    def query(self, queries: np.ndarray, k: int = 10, epsilon: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest reference rows of every query, nearest first.

        Parameters
        ----------
        queries : ndarray, shape (n, d)
        k : int
            At most the reference's rows.
        epsilon : float
            Ignored (the search is exact); accepted for pynndescent's interface.

        Returns
        -------
        indices : ndarray of int32, shape (n, k)
            Rows of the reference.
        distances : ndarray of float32, shape (n, k)
            Euclidean distances, ascending.
        """
        import numba

        queries = np.asarray(queries, dtype=np.float32)
        (m, d), n = self.reference.shape, queries.shape[0]
        k = int(k)
        if not 1 <= k <= m:
            raise ValueError(f"k={k} should be between 1 and the reference's {m} rows.")
        width = min(m, k + _EXACT_MARGIN)
        threads = max(1, min(numba.get_num_threads(), -(-n // _EXACT_QUERY_ROWS)))
        # per query row of a thread: its distance tile row, heap and candidates' differences (float32)
        row_bytes = 4 * (min(m, _EXACT_TILE_ROWS) + width * (d + 4))
        step = max(1, min(_EXACT_QUERY_ROWS, _EXACT_BLOCK_BYTES // threads // row_bytes))
        indices = np.empty((n, k), np.int32)
        distances = np.empty((n, k), np.float32)

        def run(s: int) -> None:
            indices[s:s + step], distances[s:s + step] = self._query_block(queries[s:s + step], k, width)

        # the parallelism is across query blocks: OpenBLAS threads contending with them, or
        # with other processes, made the small GEMMs up to 10x slower on a 2-core machine
        with one_blas_thread():
            if threads == 1:
                for s in range(0, n, step):
                    run(s)
            else:
                with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
                    list(pool.map(run, range(0, n, step)))
        return indices, distances

    def _query_block(self, rows: np.ndarray, k: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`query` of ``(b, d)`` rows: ``(b, k)`` int32 indices and float32 distances."""
        m = self.reference.shape[0]
        q = rows - self._centre
        if width < m:  # candidates in reference order: ties go to the lower reference row
            cand = np.sort(self._candidates(q, width), axis=1)
        else:
            cand = np.broadcast_to(np.arange(m, dtype=np.int32), (len(q), m))
        diff = np.take(self._centred, cand.astype(np.intp), axis=0)  # 2-4x faster than fancy indexing
        diff -= q[:, None, :]
        exact = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(cand, order, axis=1), np.take_along_axis(exact, order, axis=1)

    def _candidates(self, q: np.ndarray, width: int) -> np.ndarray:
        """Reference rows of the ``width`` smallest float32 ``|r|^2 - 2 q.r`` of every centred
        query row ``q`` (heap order): ``(b, d)`` -> ``(b, width)`` int32."""
        m, b = self.reference.shape[0], q.shape[0]
        minus2q = q * np.float32(-2.0)  # exact (a power of two): the GEMM gives -2 q.r
        heap_values = np.empty((b, width), np.float32)
        heap_rows = np.empty((b, width), np.int32)
        tile = np.empty((b, min(m, _EXACT_TILE_ROWS)), np.float32)
        for c0 in range(0, m, _EXACT_TILE_ROWS):
            c1 = min(m, c0 + _EXACT_TILE_ROWS)
            out = tile if c1 - c0 == tile.shape[1] else np.empty((b, c1 - c0), np.float32)
            np.matmul(minus2q, self._centred[c0:c1].T, out=out)
            _heap_kernel()(out, self._sq[c0:c1], c0, heap_values, heap_rows)
        return heap_rows


@functools.cache
def _heap_kernel() -> Any:
    """The compiled selection kernel of :meth:`ExactIndex._candidates` (compiled or loaded from
    numba's disk cache on first use).

    ``kernel(block, sq, c0, heap_values, heap_rows)`` pushes the values ``block + sq`` of the
    reference rows ``c0, c0 + 1, ...`` (``block``: ``(b, t)``, ``sq``: ``(t,)``) into every
    row's bounded max-heap of ``width`` entries (``(b, width)``, filled by the first ``width``
    reference rows), value by value (most values are rejected by one comparison with the top).
    The heap does not depend on how the reference rows are cut into tiles.  Its cost is in the
    pushes' mispredicted branches: on 256 x 20,000 float32 distances of the demo case (osnet,
    width 59), one core, best of 30 on a loaded machine: 7.0 ms in 1024-row tiles, 6.4 ms for
    the kernel used until Dec 2026 on the whole block; a vectorised pre-filter of the values
    below the top (6.9 ms) and a buffer shrunk by quickselect (5.7-7.3 ms) did not pay.
    """
    import numba

    @numba.njit(cache=True, nogil=True)
    def push(block, sq, c0, heap_values, heap_rows):  # pragma: no cover - compiled
        b, t = block.shape
        width = heap_values.shape[1]
        j0 = min(t, max(0, width - c0))  # columns that fill the heap
        for i in range(b):
            row, hv, hi = block[i], heap_values[i], heap_rows[i]
            for j in range(j0):  # insertion into the partly filled heap
                v, c = row[j] + sq[j], c0 + j
                while c > 0 and hv[(c - 1) >> 1] < v:
                    p = (c - 1) >> 1
                    hv[c], hi[c] = hv[p], hi[p]
                    c = p
                hv[c], hi[c] = v, c0 + j
            for j in range(j0, t):
                v = row[j] + sq[j]
                if v >= hv[0]:
                    continue
                c = 0  # replace the top and sift it down
                while True:
                    left = 2 * c + 1
                    if left >= width:
                        break
                    big = left + 1 if left + 1 < width and hv[left + 1] > hv[left] else left
                    if hv[big] <= v:
                        break
                    hv[c], hi[c] = hv[big], hi[big]
                    c = big
                hv[c], hi[c] = v, c0 + j

    return push


def index_nbytes(n_reference: int, n_features: int, index_neighbors: int) -> int:
    """Bytes held while building and querying an NNDescent index (upper estimate).

    Three float32 copies of the sample (``reference_``, the index's reordered copy and
    the build's working copy) plus the NN-descent heaps (indices, distances and
    flags for the graph and its candidates) and the pruned search graph, ~40 bytes
    per edge.  Measured on 100k x 64 with 40 index neighbours: 130-190 MB of peak
    RSS for the build, vs 246 MB estimated.

    Parameters
    ----------
    n_reference : int
        Rows of the reference sample.
    n_features : int
    index_neighbors : int
        Degree of the NN-descent graph.

    Returns
    -------
    int
    """
    return int(n_reference) * (12 * int(n_features) + 40 * int(index_neighbors))


def warm_up(verbose: bool = False) -> float:
    """Compile (or load from numba's disk cache) every kernel the detector uses.

    Builds and queries a tiny NN-descent index (300 x 8) as :class:`~streamclust.estimators.KNNOutlierDetector`
    does for references over :data:`EXACT_SEARCH_ROWS` rows, so that the one-off compilation of its
    disk-cached kernels (paid once per machine, see :func:`cache_build_kernels`) and of the few build kernels numba
    cannot cache (``nn_descent`` takes the distance function as an argument: paid
    once per process) happen here, visibly, rather than inside the first ``fit``.

    Parameters
    ----------
    verbose : bool
        Print the time taken.

    Returns
    -------
    float
        Seconds spent.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    index = build_nndescent_index(X, n_neighbors=10, seed=0)
    with QUERY_LOCK:
        index.query(X[:20], k=5, epsilon=0.1)
    elapsed = time.perf_counter() - t0
    if verbose:
        print(f"streamclust: numba kernels of the kNN outlier detector ready in {elapsed:.1f} s")
    return elapsed


#: pynndescent build kernels that ship without ``cache=True`` although their
#: arguments are plain arrays and scalars (no function arguments, no dynamic
#: globals), so numba can keep them in its disk cache like the rest.
_UNCACHED_BUILD_KERNELS = {
    "pynndescent.utils": ("apply_sorted_graph_update_array", "build_candidates_owner",
                          "deheap_sort", "sort_updates_by_block"),
    "pynndescent.kernels": ("generate_graph_update_array_batched",),
    "pynndescent.distances": ("alternative_dot",),
}


def cache_kernels(kernels: Mapping[str, Sequence[str]]) -> None:
    """Turn on numba's disk cache for the named njit kernels (``module -> names``).

    Only for kernels whose arguments are plain arrays, scalars and tuples of them
    (no function arguments, no dynamic globals): numba can then store their machine
    code on disk and later processes load it instead of compiling.  Modules or
    kernels a version of the library lacks are skipped; kernels already cached are
    left alone.
    """
    import importlib

    from numba.core.caching import FunctionCache

    for module_name, names in kernels.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in names:
            kernel = getattr(module, name, None)
            if hasattr(kernel, "enable_caching") and not isinstance(kernel._cache, FunctionCache):
                kernel.enable_caching()


def cache_build_kernels() -> None:
    """Turn on numba's disk cache for :data:`_UNCACHED_BUILD_KERNELS`.

    Compiling them costs every fresh process ~17 s and ~85 MB of peak RSS (LLVM)
    on a 100k x 64 build (measured: 41 s / 609 MB -> 24 s / 525 MB); loading them
    from the cache costs neither.
    """
    cache_kernels(_UNCACHED_BUILD_KERNELS)


def build_index(reference: np.ndarray, *, n_neighbors: int, seed: int, search: str = "auto") -> Any:
    """The index of ``reference``, ready to query: an :class:`ExactIndex` or :func:`build_nndescent_index`.

    Parameters
    ----------
    reference : ndarray of float32, shape (m, d), C-contiguous
    n_neighbors : int
        Degree of the NN-descent graph (unused by an exact index).
    seed : int
        Seeds the NN-descent build (an exact index has no randomness).
    search : {"auto", "exact", "nndescent"}
        ``"auto"``: exact up to :data:`EXACT_SEARCH_ROWS` rows, NN-descent above.

    Returns
    -------
    ExactIndex or pynndescent.NNDescent
        Query it under :data:`QUERY_LOCK` with ``index.query(rows, k=k, epsilon=eps)``.
    """
    if search not in SEARCHES:
        raise ValueError(f"search={search!r} should be one of {', '.join(map(repr, SEARCHES))}.")
    if search == "exact" or (search == "auto" and reference.shape[0] <= EXACT_SEARCH_ROWS):
        return ExactIndex(reference)
    return build_nndescent_index(reference, n_neighbors=n_neighbors, seed=seed)


def build_nndescent_index(reference: np.ndarray, *, n_neighbors: int, seed: int) -> Any:
    """Single-threaded, deterministic NNDescent over ``reference``, ready to query.

    Parameters
    ----------
    reference : ndarray of float32, shape (m, d), C-contiguous
    n_neighbors : int
        Degree of the NN-descent graph.
    seed : int
        The same seed and rows give the same index, in any process.

    Returns
    -------
    pynndescent.NNDescent
        Query it under :data:`QUERY_LOCK`; its search RNG state is zeroed, so a row's neighbours
        do not depend on the rows queried before it.
    """
    import pynndescent

    cache_build_kernels()
    with QUERY_LOCK, warnings.catch_warnings():
        # tiny references: "Failed to correctly find n_neighbors for some samples"
        warnings.filterwarnings("ignore", message="Failed to correctly find n_neighbors")
        index = pynndescent.NNDescent(
            reference,
            metric="euclidean",
            n_neighbors=int(n_neighbors),
            random_state=int(seed),
            n_jobs=1,
            low_memory=True,
            compressed=True,
            parallel_batch_queries=True,
        )
        index.prepare()
    # All-zero Tausworthe state is a fixed point: every random draw of a query is 0,
    # so a row's neighbours do not depend on the rows queried before it.
    index.search_rng_state = np.zeros_like(index.search_rng_state)
    return index
