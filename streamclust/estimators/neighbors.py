"""Approximate nearest neighbours with pynndescent, the one way every estimator builds and queries
an index: the seeded single-threaded build, the process-wide query lock, numba's disk cache for
the kernels pynndescent ships uncached, and the memory an index holds.

Queries are serialised by :data:`QUERY_LOCK`: pynndescent's query kernels are numba-parallel and
not safe to call from several Dask threads at once.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["QUERY_LOCK", "build_index", "cache_kernels", "cache_build_kernels", "index_nbytes", "warm_up"]


#: Serialises index queries across the threads of the process (see module doc).
QUERY_LOCK = threading.Lock()


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

    Builds and queries a tiny index (300 x 8) exactly as :class:`~streamclust.estimators.KNNOutlierDetector`
    does, so that the one-off compilation of its disk-cached kernels (paid once per
    machine, see :func:`cache_build_kernels`) and of the few build kernels numba
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
    index = build_index(X, n_neighbors=10, seed=0)
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


def build_index(reference: np.ndarray, *, n_neighbors: int, seed: int) -> Any:
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
    with warnings.catch_warnings():
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
