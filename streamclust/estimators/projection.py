"""2-D / 3-D views of every row of a (PCA-reduced) descriptor array.

Two kinds of projection, both returning numpy for in-memory input and a lazy
Dask array (one task per row block) for Zarr/Dask input:

:func:`pca_projection`
    Linear.  The study's reduced rows are already PCA scores (largest variance
    first), so the view is simply their first 2 or 3 columns; with
    ``fit=True`` a :class:`~streamclust.estimators.StreamingPCA` is fitted first
    (one pass) for inputs that are not PCA scores.

:class:`SampledUMAP`
    Non-linear.  `UMAP <https://umap-learn.readthedocs.io>`_ (``umap-learn``)
    is fitted on a seeded uniform sample of the rows (default 20,000, read in one
    block-wise pass); every row is then placed block by block:

    ``transform_method="knn"`` (default)
        at the mean embedding of its ``n_interp_neighbors`` nearest *sampled*
        rows, found with a pynndescent index over the sample.  Rows of the sample
        itself keep their exact UMAP position in :meth:`SampledUMAP.fit_transform`.
    ``transform_method="umap"``
        with ``umap.UMAP.transform`` (neighbours in the sample, then a short
        optimisation of each new point's position).

    Why ``"knn"`` is the default (measured on the reference machine, 2 cores, on
    416,314 x 64 float32 rows of 15 planted clusters read from Zarr, sample
    20,000): ``umap.UMAP.transform`` placed all rows in 132 s (a neighbour search
    plus an SGD refinement of every new point), the kNN interpolation in 12 s;
    both kept the cluster structure equally well (kNN accuracy of the planted
    labels in 2-D: 0.994 vs 0.993).  ``"umap"`` is kept for comparison.  The
    UMAP fit of the sample took 29 s, plus ~55 s of numba compilation on the
    first fit of a process; peak RSS of the whole job 0.82 GB (knn) / 0.90 GB
    (umap), of which ~0.33 GB is importing numba/UMAP and ~0.4 GB the one-off
    compilation, neither growing with the number of rows.

    With ``method="tsne"`` the sample is embedded with scikit-learn's
    :class:`~sklearn.manifold.TSNE` instead (no extra dependency, no numba
    compilation) and every row is placed by the same kNN interpolation (t-SNE
    has no ``transform``).  ``method="auto"`` uses UMAP when ``umap-learn`` is
    importable and t-SNE otherwise.

Determinism: the same ``random_state`` gives the same sample, the same sample
embedding (UMAP runs single-threaded when seeded) and the same placement of
every row whatever the block size and the number of Dask threads: the
interpolation index is built single-threaded and its search random state is
zeroed (see :mod:`streamclust.estimators.outliers`), and queries are
serialised by a lock.

Numba compilation: umap-learn's fit kernels (:data:`_UNCACHED_UMAP_KERNELS`)
and pynndescent's array-only build kernels ship without ``cache=True``;
:func:`_cache_umap_kernels` (called before every UMAP fit) puts them in
numba's disk cache, so a machine compiles them once (:func:`warm_up_umap`,
run by ``make``'s install step) and every later process loads them.  What is
left per process are pynndescent's NN-descent kernels, which take the distance
function as an argument and cannot be cached.  Measured with
``SampledUMAP(random_state=0).fit_transform`` of 20,000 x 64 float32 rows in a
fresh process (2 cores, loaded by another job; pynndescent's query kernels
already cached, as after any install): 46.8 s and 681 MB peak RSS without the
disk cache; 23.1 s / 523 MB with pynndescent's build kernels cached; 21.7 s /
526 MB on the first run that also compiles and stores UMAP's kernels; 18.4 s /
485 MB once they are cached (262 MB of it is importing the libraries).  With an
empty cache (nothing compiled on the machine yet, no install-time warm-up):
99.2 s / 1,081 MB.  :func:`warm_up_umap` in a fresh process with the cache warm:
0.5 s after :func:`~streamclust.estimators.warm_up`.
"""

from __future__ import annotations

import numbers
import time
import warnings
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from streamclust.core.blocks import iter_blocks
from streamclust.estimators.blockwise import check_data, check_X, resolve_block_rows, take_rows, to_blockable

# one process-wide lock for every pynndescent query; the same deterministic index build
from streamclust.estimators.neighbors import QUERY_LOCK, build_index, cache_build_kernels, cache_kernels

__all__ = ["pca_projection", "SampledUMAP", "umap_available", "warm_up_umap", "EXACT_KNN_MAX_SAMPLE"]

#: Samples of at most this many rows are interpolated with exact (brute-force)
#: neighbours; larger ones through a pynndescent index (whose numba build kernels
#: cost ~20 s of compilation per process).
EXACT_KNN_MAX_SAMPLE = 4096


def umap_available() -> bool:
    """True when ``umap-learn`` can be imported."""
    try:
        import umap  # noqa: F401
    except Exception:
        return False
    return True


#: umap-learn kernels that :class:`SampledUMAP` compiles in every fresh process
#: (``umap.UMAP.fit`` / ``transform``) although they ship without ``cache=True``
#: and take only arrays and scalars.  Only the single-threaded layout epoch is
#: listed: its ``parallel=True`` twin wraps the same Python function and would
#: share its cache files (seeded UMAP never uses it).
_UNCACHED_UMAP_KERNELS = {
    "umap.umap_": ("smooth_knn_dist", "compute_membership_strengths"),
    "umap.layouts": ("_nb_optimize_layout_euclidean_single_epoch",),
}


def _cache_umap_kernels() -> None:
    """Turn on numba's disk cache for :data:`_UNCACHED_UMAP_KERNELS` and for the
    pynndescent build kernels UMAP's own neighbour graph uses (see
    :func:`streamclust.estimators.neighbors.cache_build_kernels`).

    Called before every UMAP fit; see the module docstring for the measured effect.
    """
    cache_build_kernels()
    cache_kernels(_UNCACHED_UMAP_KERNELS)


def warm_up_umap(verbose: bool = False) -> float:
    """Compile (or load from numba's disk cache) the kernels :class:`SampledUMAP` uses.

    Fits a tiny UMAP (4,200 x 8 rows, enough for UMAP's approximate neighbour
    graph and for the pynndescent interpolation index, the code paths of real
    samples) so that the one-off compilation happens here, visibly, rather than
    inside the first study.

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
    X = np.random.default_rng(0).normal(size=(EXACT_KNN_MAX_SAMPLE + 104, 8)).astype(np.float32)
    SampledUMAP(n_epochs=11, random_state=0).fit_transform(X)
    elapsed = time.perf_counter() - t0
    if verbose:
        print(f"streamclust: numba kernels of UMAP ready in {elapsed:.1f} s")
    return elapsed


def _check_n_components(n_components: Any, n_features: int | None = None) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, numbers.Integral) \
            or n_components not in (2, 3):
        raise ValueError(f"n_components={n_components!r} should be 2 or 3.")
    if n_features is not None and n_components > n_features:
        raise ValueError(f"n_components={n_components} > n_features={n_features}.")
    return int(n_components)


class _FirstColumns:
    """Picklable block function: the first ``k`` columns as float32."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(block[:, : self.k], dtype=np.float32)


def pca_projection(
    reduced: Any,
    n_components: int = 2,
    *,
    fit: bool = False,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> Any:
    """Linear 2-D / 3-D view of every row.

    Parameters
    ----------
    reduced : array-like, shape (n_rows, n_features)
        numpy, Zarr or Dask.  By default its columns are taken to be PCA scores,
        largest variance first (the study's ``runs/<id>/<set>/reduced``).
    n_components : {2, 3}
    fit : bool, default False
        Fit a :class:`~streamclust.estimators.StreamingPCA` (no L2
        normalisation, one pass) and project on its first axes, for inputs that
        are not PCA scores.
    memory : str or int, optional
        Memory budget of a pass (sizes the blocks).
    block_rows : int, optional
        Rows per block (overrides ``memory``).

    Returns
    -------
    ndarray or dask.array.Array of float32, shape (n_rows, n_components)
        numpy for numpy input; a lazy Dask array (nothing read yet) for Zarr or
        Dask input.
    """
    k = _check_n_components(n_components)
    if fit:
        from streamclust.estimators.preprocessing import StreamingPCA

        pca = StreamingPCA(n_components=k, l2_normalize=False, memory=memory, block_rows=block_rows)
        return pca.fit(reduced).transform(reduced)

    X, lazy = check_data(reduced)
    _check_n_components(k, int(X.shape[1]))
    if not lazy:
        return np.ascontiguousarray(np.asarray(X)[:, :k], dtype=np.float32)
    br = resolve_block_rows(int(X.shape[1]), memory, block_rows, X)
    arr = to_blockable(X, br)
    return arr.map_blocks(_FirstColumns(k), dtype=np.float32, chunks=(arr.chunks[0], (k,)),
                          meta=np.empty((0, 0), np.float32))


def _exact_knn(reference: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest reference rows of every query (brute force, float64,
    256 queries at a time)."""
    ref = reference.astype(np.float64)
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    out = np.empty((queries.shape[0], k), np.int64)
    for s in range(0, queries.shape[0], 256):
        q = queries[s : s + 256].astype(np.float64)
        d2 = ref_sq[None, :] - 2.0 * (q @ ref.T)
        out[s : s + 256] = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < ref.shape[0] \
            else np.broadcast_to(np.arange(ref.shape[0]), (len(q), ref.shape[0]))
    return out


class _PlaceBlock:
    """Picklable per-block function placing rows in the embedding."""

    def __init__(self, est: SampledUMAP, exact_sample: bool) -> None:
        self.est = est
        self.exact_sample = exact_sample

    def __call__(self, block: np.ndarray, start: int | None = None) -> np.ndarray:
        est = self.est
        out = est._place(block)
        if self.exact_sample and start is not None:
            idx = est.sample_indices_
            lo, hi = np.searchsorted(idx, [start, start + block.shape[0]])
            if hi > lo:
                out[idx[lo:hi] - start] = est.embedding_[lo:hi]
        return out

    def dask(self, block: np.ndarray, block_info: Any = None) -> np.ndarray:
        start = None if block_info is None else int(block_info[0]["array-location"][0][0])
        return self(block, start)


class SampledUMAP(TransformerMixin, BaseEstimator):
    """UMAP (or t-SNE) of a seeded sample, then every row placed block by block.

    See the module docstring for the method and the measured trade-offs.

    Parameters
    ----------
    n_components : {2, 3}, default 2
    sample_size : int, default 20000
        Rows embedded by UMAP / t-SNE (all rows when there are fewer).
    n_neighbors : int, default 15
        UMAP's ``n_neighbors`` (t-SNE: ``perplexity = n_neighbors * 2``).
    min_dist : float, default 0.1
        UMAP's ``min_dist``.
    method : {"umap", "tsne", "auto"}, default "umap"
    transform_method : {"knn", "umap"}, default "knn"
        How rows are placed (``"umap"`` only with ``method="umap"``).
    n_interp_neighbors : int, default 10
        Sampled neighbours averaged by ``transform_method="knn"`` (exact
        neighbours for samples of at most :data:`EXACT_KNN_MAX_SAMPLE` rows, a
        pynndescent index beyond).
    n_epochs : int, optional
        UMAP's ``n_epochs`` / t-SNE's ``max_iter`` (>= 250); default: theirs.
    memory : str or int, optional
        Memory budget of a pass (sizes the blocks).
    block_rows : int, optional
        Rows per block (overrides ``memory``).
    random_state : int or None, default 0
        Seed of the sample, the embedding and the index.

    Attributes
    ----------
    sample_indices_ : ndarray of int64, shape (n_sample,)
        Sorted rows of the fitted array that were embedded.
    embedding_ : ndarray of float32, shape (n_sample, n_components)
        Their embedding.
    method_ : str
        ``"umap"`` or ``"tsne"``.
    umap_ : umap.UMAP or None
        The fitted UMAP model (``method_ == "umap"``).
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components: int = 2,
        *,
        sample_size: int = 20_000,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        method: Literal["umap", "tsne", "auto"] = "umap",
        transform_method: Literal["knn", "umap"] = "knn",
        n_interp_neighbors: int = 10,
        n_epochs: int | None = None,
        memory: str | int | None = None,
        block_rows: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.n_components = n_components
        self.sample_size = sample_size
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.method = method
        self.transform_method = transform_method
        self.n_interp_neighbors = n_interp_neighbors
        self.n_epochs = n_epochs
        self.memory = memory
        self.block_rows = block_rows
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def _check_params(self, n_features: int) -> str:
        _check_n_components(self.n_components)
        for name in ("sample_size", "n_neighbors", "n_interp_neighbors"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 2:
                raise ValueError(f"{name}={v!r} should be an integer >= 2.")
        if self.method not in ("umap", "tsne", "auto"):
            raise ValueError(f"method={self.method!r} should be 'umap', 'tsne' or 'auto'.")
        if self.transform_method not in ("knn", "umap"):
            raise ValueError(f"transform_method={self.transform_method!r} should be 'knn' or 'umap'.")
        method = self.method
        if method == "auto":
            method = "umap" if umap_available() else "tsne"
        if method == "umap" and not umap_available():
            raise ImportError("method='umap' needs the umap-learn package: pip install umap-learn "
                              "(or use method='tsne').")
        if self.transform_method == "umap" and method != "umap":
            raise ValueError("transform_method='umap' needs method='umap'.")
        return method

    def fit(self, X: Any, y: Any = None) -> SampledUMAP:
        """Embed a seeded sample of the rows of ``X`` (one block-wise read).

        Parameters
        ----------
        X : array-like, shape (n_rows, n_features)
            numpy, Zarr or Dask.
        """
        X, _ = check_X(self, X, reset=True)
        n, d = int(X.shape[0]), int(X.shape[1])
        method = self._check_params(d)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(0, 2**31 - 1))
        m = min(int(self.sample_size), n)
        if m < 3:
            raise ValueError(f"SampledUMAP needs at least 3 rows; got {n}.")
        idx = np.arange(n) if m >= n else np.sort(sample_without_replacement(n, m, random_state=rng))
        br = resolve_block_rows(d, self.memory, self.block_rows, X)
        sample = np.ascontiguousarray(take_rows(X, idx, br, memory=self.memory), dtype=np.float32)
        n_nb = int(min(self.n_neighbors, m - 1))
        self.umap_ = None
        if method == "umap":
            import umap

            _cache_umap_kernels()
            with QUERY_LOCK, warnings.catch_warnings():  # numba-parallel kernels: one caller at a time
                warnings.simplefilter("ignore")
                model = umap.UMAP(
                    n_components=int(self.n_components), n_neighbors=max(2, n_nb),
                    min_dist=float(self.min_dist), metric="euclidean",
                    random_state=seed, transform_seed=seed, n_jobs=1, low_memory=True,
                    verbose=False, n_epochs=None if self.n_epochs is None else int(self.n_epochs),
                )
                emb = model.fit_transform(sample)
            self.umap_ = model
        else:
            from sklearn.manifold import TSNE

            perplexity = float(min(2 * self.n_neighbors, max(2.0, (m - 1) / 3.0)))
            extra = {} if self.n_epochs is None else {"max_iter": max(250, int(self.n_epochs))}
            emb = TSNE(n_components=int(self.n_components), perplexity=perplexity, init="pca",
                       random_state=seed, learning_rate="auto", **extra).fit_transform(sample)
        self.method_ = method
        self.sample_indices_ = idx.astype(np.int64)
        self.embedding_ = np.ascontiguousarray(emb, dtype=np.float32)
        self._index = None
        self._sample = None
        if self.transform_method == "knn":
            k = int(min(self.n_interp_neighbors, m))
            if m <= EXACT_KNN_MAX_SAMPLE:
                self._sample = sample  # exact neighbours by brute force
            else:
                self._index = build_index(sample, n_neighbors=int(min(max(k, 15), m - 1)),
                                           seed=seed)
                with QUERY_LOCK:  # compile / warm the query path once, outside Dask threads
                    self._index.query(sample[: min(m, 8)], k=k, epsilon=0.1)
        return self

    # ------------------------------------------------------------ transform
    def _place(self, block: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(block, dtype=np.float32)
        if q.shape[0] == 0:
            return np.empty((0, int(self.n_components)), np.float32)
        if self.transform_method == "umap":
            with QUERY_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(self.umap_.transform(q), dtype=np.float32)
        k = int(min(self.n_interp_neighbors, self.embedding_.shape[0]))
        if self._index is None:
            ind = _exact_knn(self._sample, q, k)
        else:
            with QUERY_LOCK:
                ind, _ = self._index.query(q, k=k, epsilon=0.1)
        return self.embedding_[ind].mean(axis=1, dtype=np.float64).astype(np.float32)

    def _apply(self, X: Any, exact_sample: bool) -> Any:
        check_is_fitted(self, "embedding_")
        X, lazy = check_X(self, X, reset=False)
        f = _PlaceBlock(self, exact_sample)
        br = resolve_block_rows(int(X.shape[1]), self.memory, self.block_rows, X)
        k = int(self.n_components)
        if lazy:
            arr = to_blockable(X, br)
            return arr.map_blocks(f.dask, dtype=np.float32, chunks=(arr.chunks[0], (k,)),
                                  meta=np.empty((0, 0), np.float32))
        out = np.empty((X.shape[0], k), np.float32)
        for rows, block in iter_blocks(X, br):
            out[rows] = f(block, rows.start)
        return out

    def transform(self, X: Any) -> Any:
        """Place every row of ``X`` in the embedding.

        Returns
        -------
        ndarray or dask.array.Array of float32, shape (n_rows, n_components)
            numpy for numpy input, a lazy Dask array for Zarr/Dask input.
        """
        return self._apply(X, exact_sample=False)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """:meth:`fit`, then place every row; sampled rows keep their exact embedding."""
        return self.fit(X)._apply(X, exact_sample=True)
