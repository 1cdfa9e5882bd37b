"""Approximate-neighbour density outlier scores for every row, in bounded memory.

:class:`KNNOutlierDetector` scores every row of a (PCA-reduced) descriptor array
-- numpy, Zarr or Dask, e.g. 416,314 x 64 float32 and ten times that -- against a
seeded uniform *reference sample* of its rows:

1. ``fit`` reads the sample block-wise (one pass, never loading ``X``), builds a
   `pynndescent <https://pynndescent.readthedocs.io>`_ ``NNDescent`` index over it,
   tunes the query ``epsilon`` until the measured recall@k against exact
   brute-force neighbours reaches :data:`RECALL_TARGET`, and computes each reference
   point's k-distance and local reachability density (lrd) from its ``k``
   neighbours *excluding itself*;
2. every other row is then scored against the reference (one parallel pass over
   the blocks; the reference rows' scores, computed with themselves excluded, are
   reused), and the threshold is fitted on the scores of **all** rows of the
   training array (kept in :attr:`KNNOutlierDetector.outlier_scores_`, 4 bytes a
   row, so :meth:`~KNNOutlierDetector.fit_predict` needs no second pass).

Memory is the reference index (accounted by :func:`index_nbytes`, at most half of
``memory``) plus a few row blocks, whatever the number of rows, so the reference
size must not grow with ``n``: by default it is ``min(n, 100_000, what half the
budget holds)``.

Scores (higher = more outlying)
-------------------------------
``"lof"``
    LOF-style ratio ``mean(lrd(o) for o in N_k(x)) / lrd(x)`` with
    ``lrd(x) = 1 / mean(max(d(x, o), kdist(o)))`` over the ``k`` reference
    neighbours ``o`` of ``x``.  For reference rows this is exactly the LOF of the
    reference set (up to the approximate neighbours).
``"kdist"``
    distance to the k-th reference neighbour.
``"mean"``
    mean distance to the ``k`` reference neighbours.

Determinism
-----------
Same ``random_state`` -> identical scores whatever the numba and Dask thread
counts and block sizes, because

* the index is **built single-threaded**: pynndescent 0.7.0's NN-descent and
  forest code partition their work by ``numba.get_num_threads()``, so a parallel
  build gives a different (though repeatable) graph for each thread count.  On 2
  cores the single-threaded build of a 100k x 64 reference was also *faster*
  (7.8 s vs 14 s);
* queries draw random numbers (tie-breaks in the search tree, random seeds when a
  tree leaf holds fewer than ``k`` points) from a state copied at the start of each
  ``query`` call and advanced row after row, so a row's neighbours depended on the
  rows queried before it in the same call (i.e. on the block size).  The index's
  search state is set to zeros after the build: pynndescent's Tausworthe generator
  maps the all-zero state to itself, so every draw is 0 and each row's search is a
  pure function of that row -- independent of batching and of the threads of the
  parallel batch search;
* index queries are serialised by a process-wide lock (the search keeps per-index
  scratch arrays, and numba's default threading layer must not be entered by two
  threads at once); each query runs numba-parallel over the rows of its block while
  other Dask threads read and decompress the next blocks.

Numba compile cost
------------------
pynndescent 0.7.0 caches its *query* path on disk (``cache=True``: the
``search_dense_*`` kernels, tree and hub-tree code), so after the first run on a
machine a fresh process loads it in well under a second.  Its NN-descent *build*
kernels (``nn_descent``, ``init_rp_tree``, ``generate_leaf_updates``,
``process_candidates``, ...) are ``cache=False`` -- they take the distance function
as an argument, which numba cannot cache across processes -- so every fresh
process pays ~20 s compiling them on its first build, and ``NUMBA_CACHE_DIR``
cannot help (it only moves where ``cache=True`` functions are stored; set it when
site-packages is read-only).  :func:`~streamclust.estimators.neighbors.warm_up` pays both costs up front on a tiny
index so a CLI can do it visibly.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from streamclust.core.blocks import block_rows_for, map_blocks_reduce, parse_memory
from streamclust.errors import MemoryBudgetError, StreamclustWarning
from streamclust.estimators.blockwise import check_X, chunk_rows_of, rows_outside, take_rows, to_blockable
from streamclust.estimators.neighbors import QUERY_LOCK, SEARCHES, build_index, index_nbytes

__all__ = ["KNNOutlierDetector", "RECALL_TARGET"]

#: Default cap of the reference sample (rows).
MAX_REFERENCE = 100_000

#: ``search_epsilon="auto"`` raises the query epsilon until the recall@k measured
#: at fit reaches this (the sample of ~500 probe rows has a standard error of
#: ~0.002, so this leaves a margin above the 0.95 the estimator promises).
RECALL_TARGET = 0.97

#: Query epsilons tried by ``search_epsilon="auto"``, in order.
EPSILON_STEPS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5)

#: Default multiplier ``c`` of the ``"auto"`` rule ``median + c * upper-MAD`` of the
#: log-scores, per score.  Measured on 20k-row data (clean Gaussians and a
#: 50-cluster mixture with 1% planted scattered outliers, d = 2, 8, 32, 64,
#: k = 10, 20, 50; see tests/test_outliers.py and the report in
#: benchmarks/bench_outliers.py):
#:
#: * inlier log-LOF is right-skewed, so the scale is the *upper* semi-MAD,
#:   ``1.4826 * median(log s - median | log s > median)``; the symmetric MAD
#:   underestimates the right tail and flagged 1.5-5% of clean Gaussian rows at c = 4;
#: * "lof", c = 4: 0.01-0.8% of clean Gaussian rows flagged for d >= 8 (1-5% for
#:   d = 2, where LOF's tail is heavy), 0.4-0.8% of the mixture's inliers, and
#:   99.5-100% of the planted outliers caught for d >= 8 (c = 3.5 flags up to 1.2% of
#:   clean data; c = 5 starts to miss outliers at k = 50);
#: * "kdist" / "mean", c = 3: distances concentrate in high dimension, which
#:   compresses their log-scale (c = 4 caught only 27-99% of the planted outliers);
#:   at c = 3 <= 0.3% of clean Gaussian rows are flagged for d >= 8.
DEFAULT_MAD_FACTOR = {"lof": 4.0, "kdist": 3.0, "mean": 3.0}

#: Rows of the recall probe taken inside and outside the reference sample.
_N_PROBE = 256

#: Added to the mean reachability distance, as scikit-learn's LOF does, so that
#: groups of exact duplicates give a large finite density.
_LRD_EPS = 1e-10

#: ``row_ids`` of a pass over the training array itself: block rows are global rows
#: (saves an ``arange(n_samples)`` of 8 bytes a row).
_TRAINING_ROWS = "training rows"


def _score_row_nbytes(n_features: int, k: int) -> int:
    """Working bytes per query row of a scoring block: the block (input dtype, its
    float32 copy), the (k+1)-heap, int64 indices, float32 distances and the float64
    reachability arithmetic."""
    return 20 * int(n_features) + 48 * (int(k) + 1)


def _exact_kneighbors(reference: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Distances to the ``k`` exact nearest reference rows, sorted, by brute force.

    float32 GEMM on data centred on the reference mean (which keeps the cancellation
    error of ``|q|^2 + |r|^2 - 2 q.r`` near float32 precision of the squared
    *distances*), 16 queries at a time: ~13 MB of temporaries for a 100k reference,
    no float64 copy of it (this runs inside ``fit``, at the index's peak memory).
    """
    centre = reference.mean(axis=0, dtype=np.float64).astype(np.float32)
    ref = reference - centre
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    out = np.empty((queries.shape[0], k))
    for s in range(0, queries.shape[0], 16):
        q = queries[s : s + 16].astype(np.float32) - centre
        d2 = q @ ref.T
        d2 *= -2.0
        d2 += ref_sq
        d2 += np.einsum("ij,ij->i", q, q)[:, None]
        part = np.partition(d2, k - 1, axis=1)[:, :k].astype(np.float64)
        out[s : s + 16] = np.sqrt(np.maximum(np.sort(part, axis=1), 0.0))
    return out


def _recall(approx_dist: np.ndarray, exact_dist: np.ndarray) -> float:
    """Recall@k by distance: the share of returned neighbours no farther than the
    true k-th neighbour (robust to ties among duplicates; ann-benchmarks style, with
    its relative tolerance 1e-3)."""
    bound = exact_dist[:, -1:] * (1 + 1e-3) + 1e-6
    return float(np.mean(approx_dist <= bound))


class _ScoreBlock:
    """Picklable per-block function ``(block, rows) -> scores`` for ``map_blocks_reduce``."""

    def __init__(self, est: KNNOutlierDetector, row_ids: Any, what: str,
                 eps: float | None = None, ref_scores: np.ndarray | None = None) -> None:
        self.est, self.row_ids, self.what, self.eps = est, row_ids, what, eps
        self.ref_scores = ref_scores

    def __call__(self, block: np.ndarray, rows: slice) -> np.ndarray:
        if isinstance(self.row_ids, str):  # _TRAINING_ROWS (survives pickling)
            ids = np.arange(rows.start, rows.stop, dtype=np.int64)
        else:
            ids = None if self.row_ids is None else self.row_ids[rows]
        if self.ref_scores is not None:
            # fit's pass: reference rows were scored (identically) with the reference
            ref = self.est.reference_indices_
            pos = np.minimum(np.searchsorted(ref, ids), len(ref) - 1)
            is_ref = ref[pos] == ids
            out = np.empty(len(ids), np.float32)
            out[is_ref] = self.ref_scores[pos[is_ref]]
            if not is_ref.all():
                ind, dist = self.est._kneighbors_block(block[~is_ref], ids[~is_ref])
                out[~is_ref] = self.est._score_from(ind, dist)
            elif not np.all(np.isfinite(block)):
                raise ValueError("Input X contains NaN or infinity.")
            return out
        ind, dist = self.est._kneighbors_block(block, ids)
        if self.what == "score":
            return self.est._score_from(ind, dist)
        if self.what == "noise":
            return dist[:, -1] > self.eps
        # kneighbors: indices and distances packed in one float64 array
        return np.concatenate([ind.astype(np.float64), dist.astype(np.float64)], axis=1)

    def dask(self, block: np.ndarray, block_info: Any = None) -> np.ndarray:
        start, stop = block_info[0]["array-location"][0]
        return self(block, slice(start, stop))


class KNNOutlierDetector(OutlierMixin, BaseEstimator):
    """Approximate-kNN density outlier scores (LOF-style) for every row, in bounded memory.

    Neighbours are searched in a seeded uniform reference sample of the rows with a
    pynndescent index, or exactly for a small reference (``search``); see the module documentation
    for the algorithm, the determinism guarantees and numba's compile cost
    (:func:`~streamclust.estimators.neighbors.warm_up`).

    Parameters
    ----------
    n_neighbors : int, default=20
        ``k``: reference neighbours per row.  Reduced (with a warning) to
        ``reference size - 1`` when the reference is smaller.
    score : {"lof", "kdist", "mean"}, default="lof"
        Outlier score, higher = more outlying: LOF-style ratio of the neighbours' lrd
        to the row's lrd, distance to the k-th neighbour, or mean kNN distance.
    reference_size : int, float or None, default=None
        Rows of the reference sample: an int, a fraction of the rows in (0, 1], or
        None for ``min(n_samples, 100_000, rows whose index fits in half of
        memory)``.  The reference does not grow with ``n_samples`` past that cap, so
        memory does not either.
    threshold : "auto" or float, default="auto"
        Rule of :meth:`predict` when ``contamination`` is None: ``"auto"`` flags rows
        whose log-score exceeds ``median + mad_factor * MAD`` of the log-scores of
        all training rows, MAD being the upper semi-MAD (``1.4826 x`` the median
        excess over the median; robust, needs no guessed fraction); a float is a
        fixed threshold on :meth:`outlier_score`.
    contamination : float in (0, 0.5] or None, default=None
        Expected outlier fraction; the threshold becomes the ``1 - contamination``
        quantile of the training scores.
    mad_factor : float or None, default=None
        Multiplier ``c`` of the ``"auto"`` rule; None gives 4 for ``"lof"`` and 3 for
        ``"kdist"``/``"mean"`` (see :data:`DEFAULT_MAD_FACTOR` for the measurements).
    index_neighbors : int or None, default=None
        Degree of the NN-descent graph (pynndescent's ``n_neighbors``); None gives
        ``max(30, 2 * n_neighbors)``.  Higher = better recall, slower build.
    search_epsilon : "auto" or float, default="auto"
        Query ``epsilon`` of pynndescent (search breadth).  ``"auto"`` tries
        :data:`EPSILON_STEPS` until the recall@k measured at fit reaches
        :data:`RECALL_TARGET`.
    search : {"auto", "exact", "nndescent"}, default="auto"
        How the reference is searched: ``"auto"`` is exact (BLAS brute force,
        :class:`~streamclust.estimators.neighbors.ExactIndex`) for a reference of at most
        :data:`~streamclust.estimators.neighbors.EXACT_SEARCH_ROWS` rows and pynndescent above.
    memory : str, int or None, default=None
        Memory budget (e.g. ``"1GB"``; None = 1 GiB).  The index takes at most half.
    block_rows : int or None, default=None
        Rows per block of the scoring passes; None derives it from ``memory``.
        Scores do not depend on it.
    random_state : int, RandomState or None, default=None
        Seeds the reference sample, the recall probe and the index.
    n_jobs : int or None, default=None
        Numba threads of the index queries (None or -1: numba's default, all cores).
        The index build is always single-threaded (determinism); results do not
        depend on ``n_jobs``.

    Attributes
    ----------
    reference_indices_ : ndarray of int64, shape (n_reference,)
        Sorted global row numbers of the reference sample.
    reference_ : ndarray of float32, shape (n_reference, n_features)
        The sample, in the order of ``reference_indices_``.
    index_ : pynndescent.NNDescent or ExactIndex
        Index over ``reference_`` (neighbour indices are positions in it).
    index_seed_ : int
        Seed the index was built with: ``build_index(reference_,
        n_neighbors=index_neighbors_, seed=index_seed_)`` rebuilds the same index
        (the build is single-threaded and deterministic), e.g. after loading a saved
        model without pickling the index.
    n_neighbors_ : int
        ``k`` actually used.
    index_neighbors_ : int
        Degree of the index graph actually used.
    search_epsilon_ : float
        Query epsilon actually used.
    recall_ : float
        Recall@k of :meth:`kneighbors` against exact brute-force neighbours over the
        reference, measured at fit on ~256 reference rows (excluding themselves) and
        ~256 other rows.
    reference_kdist_ : ndarray of float32, shape (n_reference,)
        Distance of each reference point to its k-th other reference point.
    reference_lrd_ : ndarray of float32, shape (n_reference,)
        Local reachability density of each reference point.
    outlier_scores_ : ndarray of float32, shape (n_samples,)
        Scores of the training rows (reference rows not counting themselves).
    threshold_ : float
        Rows with ``outlier_score > threshold_`` are outliers.
    offset_ : float
        ``-threshold_``, so that ``decision_function = score_samples - offset_`` is
        negative exactly for outliers (scikit-learn's convention).
    threshold_rule_ : str
        The rule that gave ``threshold_``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only for inputs with column names.
    fit_time_ : dict
        Seconds spent in ``sample``, ``build``, ``tune``, ``reference`` and ``score``.

    Examples
    --------
    >>> import numpy as np
    >>> from streamclust.estimators.outliers import KNNOutlierDetector
    >>> X = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    >>> det = KNNOutlierDetector(n_neighbors=10, random_state=0).fit(X)
    >>> det.outlier_scores_.shape
    (2000,)
    """

    def __init__(
        self,
        n_neighbors: int = 20,
        *,
        score: str = "lof",
        reference_size: int | float | None = None,
        threshold: str | float = "auto",
        contamination: float | None = None,
        mad_factor: float | None = None,
        index_neighbors: int | None = None,
        search_epsilon: str | float = "auto",
        search: str = "auto",
        memory: str | int | None = None,
        block_rows: int | None = None,
        random_state: Any = None,
        n_jobs: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.score = score
        self.reference_size = reference_size
        self.threshold = threshold
        self.contamination = contamination
        self.mad_factor = mad_factor
        self.index_neighbors = index_neighbors
        self.search_epsilon = search_epsilon
        self.search = search
        self.memory = memory
        self.block_rows = block_rows
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ params
    def _check_params(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_real(v: Any) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool)

        if not is_int(self.n_neighbors) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors={self.n_neighbors!r} should be an integer >= 1.")
        if self.score not in ("lof", "kdist", "mean"):
            raise ValueError(f"score={self.score!r} should be one of 'lof', 'kdist', 'mean'.")
        rs = self.reference_size
        if rs is not None and not (
            (is_int(rs) and rs >= 2) or (is_real(rs) and not is_int(rs) and 0 < rs <= 1)
        ):
            raise ValueError(
                f"reference_size={rs!r} should be an integer >= 2, a fraction in (0, 1] or None."
            )
        if not (self.threshold == "auto" if isinstance(self.threshold, str) else is_real(self.threshold)):
            raise ValueError(f"threshold={self.threshold!r} should be 'auto' or a number.")
        c = self.contamination
        if c is not None and not (is_real(c) and 0 < c <= 0.5):
            raise ValueError(f"contamination={c!r} should be None or a float in (0, 0.5].")
        if c is not None and not isinstance(self.threshold, str):
            raise ValueError(
                f"threshold={self.threshold!r} and contamination={c!r} both fix the threshold; give one."
            )
        if self.mad_factor is not None and not (
            is_real(self.mad_factor) and self.mad_factor > 0 and math.isfinite(self.mad_factor)
        ):
            raise ValueError(f"mad_factor={self.mad_factor!r} should be a positive number or None.")
        if self.index_neighbors is not None and not (is_int(self.index_neighbors) and self.index_neighbors >= 2):
            raise ValueError(f"index_neighbors={self.index_neighbors!r} should be an integer >= 2 or None.")
        e = self.search_epsilon
        if not (e == "auto" if isinstance(e, str) else (is_real(e) and 0 <= e <= 1)):
            raise ValueError(f"search_epsilon={e!r} should be 'auto' or a float in [0, 1].")
        if self.search not in SEARCHES:
            raise ValueError(f"search={self.search!r} should be one of {', '.join(map(repr, SEARCHES))}.")
        if self.block_rows is not None and not (is_int(self.block_rows) and self.block_rows >= 1):
            raise ValueError(f"block_rows={self.block_rows!r} should be a positive integer or None.")
        if self.n_jobs is not None and not (is_int(self.n_jobs) and (self.n_jobs >= 1 or self.n_jobs == -1)):
            raise ValueError(f"n_jobs={self.n_jobs!r} should be a positive integer, -1 or None.")

    def _reference_size_for(self, n: int, d: int, budget: int) -> tuple[int, int]:
        """(n_reference, index_neighbors) for ``n`` rows of ``d`` features."""
        k = int(self.n_neighbors)
        nn = int(self.index_neighbors) if self.index_neighbors is not None else max(30, 2 * k)
        per_row = index_nbytes(1, d, nn)
        fits = (budget // 2) // per_row
        rs = self.reference_size
        if rs is None:
            m = min(n, MAX_REFERENCE, fits)
            if m < min(n, k + 1):
                raise MemoryBudgetError(
                    f"memory={self.memory!r} leaves room for a reference of {fits} rows "
                    f"(index of {per_row} bytes a row); n_neighbors={k} needs at least {k + 1}. "
                    "Give more memory or fewer index_neighbors."
                )
        else:
            if isinstance(rs, numbers.Integral):
                m = int(rs)
                if m > n:
                    raise ValueError(f"reference_size={rs!r} exceeds the {n} rows of X.")
            else:
                m = max(2, int(math.ceil(float(rs) * n)))
            if m > fits:
                need = 2 * m * per_row
                raise MemoryBudgetError(
                    f"reference_size={rs!r} ({m} rows) needs an index of {m * per_row / 2**20:.0f} MiB, "
                    f"more than half of memory={self.memory!r}; give memory='{math.ceil(need / 2**20)}MiB' "
                    "or a smaller reference_size."
                )
        if m < 2:
            raise ValueError(f"KNNOutlierDetector needs at least 2 rows; got n_samples={n}.")
        return m, max(2, min(nn, m - 1))

    # --------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any = None) -> KNNOutlierDetector:
        """Sample the reference, index it, and score every row once to fit the threshold.

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array, shape (n_samples, n_features)
            Read block-wise; never loaded whole unless it is already a numpy array.
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        X, lazy = check_X(self, X, reset=True)
        n, d = int(X.shape[0]), int(X.shape[1])
        budget = parse_memory(self.memory)
        times: dict[str, float] = {}
        t0 = time.perf_counter()

        m, nn = self._reference_size_for(n, d, budget)
        k = min(int(self.n_neighbors), m - 1)
        if k < self.n_neighbors:
            warnings.warn(
                f"n_neighbors={self.n_neighbors} is not smaller than the reference size {m}; "
                f"using n_neighbors={k}.",
                StreamclustWarning,
                stacklevel=2,
            )
        self.n_neighbors_ = k
        self.index_neighbors_ = nn
        rng = check_random_state(self.random_state)
        index_seed = int(rng.randint(np.iinfo(np.int32).max))
        self.index_seed_ = index_seed

        # --- reference sample + out-of-reference probe rows, read in one pass
        ref_ids = np.sort(sample_without_replacement(n, m, random_state=rng)).astype(np.int64)
        out_ids = rows_outside(ref_ids, n, _N_PROBE, rng)
        all_ids = np.union1d(ref_ids, out_ids)
        read_rows = self._block_rows(X, d, k, budget, index_nbytes(m, d, nn))
        rows = np.asarray(take_rows(X, all_ids, read_rows, memory=budget), dtype=np.float32)
        if not np.all(np.isfinite(rows)):
            raise ValueError("Input X contains NaN or infinity.")
        in_ref = np.isin(all_ids, ref_ids, assume_unique=True)
        reference = np.ascontiguousarray(rows[in_ref])
        probe_out = np.ascontiguousarray(rows[~in_ref])
        del rows
        self.reference_indices_ = ref_ids
        self.reference_ = reference
        times["sample"] = time.perf_counter() - t0

        # --- index
        t = time.perf_counter()
        self.index_ = build_index(reference, n_neighbors=nn, seed=index_seed, search=self.search)
        times["build"] = time.perf_counter() - t

        # --- query epsilon vs recall on a probe of rows in and out of the reference
        t = time.perf_counter()
        probe_in_pos = np.sort(rng.choice(m, min(_N_PROBE, m), replace=False))
        self._tune_epsilon(reference, probe_in_pos, probe_out, k)
        times["tune"] = time.perf_counter() - t

        # --- k-distance and lrd of the reference (self excluded)
        t = time.perf_counter()
        ref_rows = self._block_rows(reference, d, k, budget, index_nbytes(m, d, nn))
        kd = np.empty(m, np.float32)
        ind_all = np.empty((m, k), np.int64)
        dist_all = np.empty((m, k), np.float32)
        for s in range(0, m, ref_rows):
            sl = slice(s, min(m, s + ref_rows))
            ind, dist = self._kneighbors_block(reference[sl], ref_ids[sl])
            ind_all[sl], dist_all[sl], kd[sl] = ind, dist, dist[:, -1]
        self.reference_kdist_ = kd
        reach = np.maximum(dist_all, kd[ind_all]).astype(np.float64)
        self.reference_lrd_ = (1.0 / (reach.mean(axis=1) + _LRD_EPS)).astype(np.float32)
        del reach
        ref_scores = self._score_from(ind_all, dist_all)
        del ind_all, dist_all
        times["reference"] = time.perf_counter() - t

        # --- scores of all training rows (one parallel pass, the reference rows' scores
        # reused) and the threshold
        t = time.perf_counter()
        self.outlier_scores_ = self._run(X, _TRAINING_ROWS, "score", lazy_out=False, ref_scores=ref_scores)
        self._fit_threshold(self.outlier_scores_)
        times["score"] = time.perf_counter() - t
        self.fit_time_ = times
        return self

    def _block_rows(self, X: Any, d: int, k: int, budget: int, index_bytes: int) -> int:
        if self.block_rows is not None:
            return int(self.block_rows)
        remaining = max(16 << 20, budget - index_bytes)
        # 8 blocks' worth: Dask threads in flight, the read-ahead and the results
        return block_rows_for(
            1, remaining, bytes_per_value=_score_row_nbytes(d, k), copies=8,
            chunk_rows=chunk_rows_of(X), max_rows=1 << 17,
        )

    def _tune_epsilon(self, reference: np.ndarray, probe_in_pos: np.ndarray,
                      probe_out: np.ndarray, k: int) -> None:
        """Set ``search_epsilon_`` and ``recall_`` from a probe of reference rows
        (queried excluding themselves) and of rows outside the reference."""
        probe_in = reference[probe_in_pos]
        exact_in = _exact_kneighbors(reference, probe_in, k + 1)[:, 1:]  # drop self (distance 0)
        exact_out = _exact_kneighbors(reference, probe_out, k) if len(probe_out) else None
        ids_in = self.reference_indices_[probe_in_pos]
        steps = EPSILON_STEPS if self.search_epsilon == "auto" else (float(self.search_epsilon),)
        for eps in steps:
            self.search_epsilon_ = float(eps)
            parts = [_recall(self._kneighbors_block(probe_in, ids_in)[1], exact_in)]
            weights = [len(probe_in)]
            if exact_out is not None:
                parts.append(_recall(self._kneighbors_block(probe_out, None)[1], exact_out))
                weights.append(len(probe_out))
            self.recall_ = float(np.average(parts, weights=weights))
            if self.recall_ >= RECALL_TARGET:
                break
        if self.recall_ < 0.95:
            warnings.warn(
                f"kNN recall measured at fit is {self.recall_:.3f} (< 0.95) with "
                f"index_neighbors={self.index_neighbors_}, search_epsilon={self.search_epsilon_}; "
                "raise index_neighbors or search_epsilon.",
                StreamclustWarning,
                stacklevel=3,
            )

    def _mad_factor(self) -> float:
        if self.mad_factor is None:
            return DEFAULT_MAD_FACTOR[self.score]
        return float(self.mad_factor)

    def _fit_threshold(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if self.contamination is not None:
            thr = float(np.quantile(scores, 1.0 - float(self.contamination)))
            rule = f"contamination={self.contamination:g}: {1 - self.contamination:g}-quantile of training scores"
        elif not isinstance(self.threshold, str):
            thr = float(self.threshold)
            rule = f"fixed threshold={thr:g}"
        else:
            c = self._mad_factor()
            logs = np.log(np.maximum(scores, 1e-30))
            med = float(np.median(logs))
            above = logs[logs > med] - med
            mad = 1.4826 * float(np.median(above)) if above.size else 0.0
            if mad > 0:
                thr = float(np.exp(med + c * mad))
            else:  # more than half the rows tie at the top: flag nothing
                thr = float(np.max(scores))
            rule = (f"median + {c:g}*MAD of log-scores (upper semi-MAD: 1.4826 x median of "
                    "the log-scores' excess over their median)")
        self.threshold_ = thr
        self.offset_ = -thr
        self.threshold_rule_ = rule

    # ----------------------------------------------------------------- queries
    def _kneighbors_block(self, block: np.ndarray, row_ids: np.ndarray | None, *,
                          identical_is_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``k`` neighbours of each row of one block: (int64 positions in the reference,
        float32 distances), sorted by distance; reference rows (by ``row_ids``) skip
        themselves.  Always queries ``k + 1`` so results do not depend on ``row_ids``
        for rows outside the reference.  With ``identical_is_self`` (rows of unknown
        origin, e.g. a saved model applied to new data), a row equal to its nearest
        reference row is taken to be that row."""
        block = np.ascontiguousarray(block, dtype=np.float32)
        if not np.all(np.isfinite(block)):
            raise ValueError("Input X contains NaN or infinity.")
        k = self.n_neighbors_
        kq = min(k + 1, self.reference_.shape[0])
        with QUERY_LOCK:
            import numba

            before = numba.get_num_threads()
            if self.n_jobs not in (None, -1):
                numba.set_num_threads(max(1, min(int(self.n_jobs), numba.config.NUMBA_NUM_THREADS)))
            try:
                ind, dist = self.index_.query(block, k=kq, epsilon=self.search_epsilon_)
            finally:
                numba.set_num_threads(before)
        ind = np.asarray(ind, dtype=np.int64)
        dist = np.asarray(dist, dtype=np.float32)
        drop = np.zeros(ind.shape, dtype=bool)
        if identical_is_self:
            same = (dist[:, 0] == 0) & np.all(self.reference_[ind[:, 0]] == block, axis=1)
            row_ids = np.where(same, self.reference_indices_[ind[:, 0]], -1)
        if row_ids is not None:
            ref = self.reference_indices_
            pos = np.searchsorted(ref, row_ids)
            pos_c = np.minimum(pos, len(ref) - 1)
            is_ref = ref[pos_c] == row_ids
            drop = (ind == np.where(is_ref, pos_c, -2)[:, None])
        # rows without self among the k+1: drop the farthest
        no_self = ~drop.any(axis=1)
        if kq > k:
            drop[no_self, -1] = True
            ind = ind[~drop].reshape(len(ind), k)
            dist = dist[~drop].reshape(len(dist), k)
        elif drop.any():  # reference of k rows: the self column is replaced by the farthest
            ind = np.where(drop, ind[:, -1:], ind)
            dist = np.where(drop, dist[:, -1:], dist)
        return ind, dist

    def score_new_rows(self, block: np.ndarray) -> np.ndarray:
        """:meth:`outlier_score` of rows of unknown origin, one in-memory block, in the calling thread.

        A row equal to its nearest reference row is taken to be that row (it skips itself, as the
        reference rows do when the training rows are scored): a saved model gives the rows it was
        fitted on the scores the study gave them.

        Parameters
        ----------
        block : ndarray, shape (n, n_features)

        Returns
        -------
        ndarray of float32, shape (n,)
        """
        ind, dist = self._kneighbors_block(block, None, identical_is_self=True)
        return self._score_from(ind, dist)

    def _score_from(self, ind: np.ndarray, dist: np.ndarray) -> np.ndarray:
        if self.score == "kdist":
            return dist[:, -1].astype(np.float32)
        if self.score == "mean":
            return dist.astype(np.float64).mean(axis=1).astype(np.float32)
        reach = np.maximum(dist, self.reference_kdist_[ind]).astype(np.float64)
        lrd_nbrs = self.reference_lrd_[ind].astype(np.float64).mean(axis=1)
        return (lrd_nbrs * (reach.mean(axis=1) + _LRD_EPS)).astype(np.float32)

    def _check_row_ids(self, row_ids: Any, n: int) -> np.ndarray | None:
        if row_ids is None:
            return None
        if isinstance(row_ids, da.Array):
            row_ids = row_ids.compute()
        row_ids = np.asarray(row_ids)
        if row_ids.shape != (n,) or row_ids.dtype.kind not in "iu":
            raise ValueError(
                f"row_ids has shape {row_ids.shape} and dtype {row_ids.dtype}; it should be "
                f"({n},) integers, the global row numbers of the rows of X."
            )
        return row_ids.astype(np.int64, copy=False)

    def _run(self, X: Any, row_ids: Any, what: str, *, lazy_out: bool,
             eps: float | None = None, ref_scores: np.ndarray | None = None) -> Any:
        """One parallel pass of ``what`` over the row blocks of ``X`` (via ``_blocks``)."""
        d = int(X.shape[1])
        br = self._block_rows(X, d, self.n_neighbors_, parse_memory(self.memory),
                              index_nbytes(len(self.reference_indices_), d, self.index_neighbors_))
        func = _ScoreBlock(self, row_ids, what, eps, ref_scores)
        width = 2 * self.n_neighbors_ if what == "kneighbors" else None
        dtype = {"score": np.float32, "noise": bool, "kneighbors": np.float64}[what]
        if lazy_out:
            arr = to_blockable(X, br)
            if width is None:
                return arr.map_blocks(func.dask, dtype=dtype, drop_axis=1, chunks=(arr.chunks[0],))
            return arr.map_blocks(func.dask, dtype=dtype, chunks=(arr.chunks[0], (width,)))
        parts = map_blocks_reduce(func, to_blockable(X, br) if isinstance(X, np.ndarray) else X, br)
        if not parts:
            return np.empty((0,) if width is None else (0, width), dtype=dtype)
        return np.concatenate(parts, axis=0)

    def _prepare(self, X: Any, row_ids: Any) -> tuple[Any, bool, np.ndarray | None]:
        check_is_fitted(self, "index_")
        X, lazy = check_X(self, X, reset=False)
        return X, lazy, self._check_row_ids(row_ids, int(X.shape[0]))

    def kneighbors(self, X: Any, row_ids: Any = None) -> tuple[Any, Any]:
        """The ``k`` approximate nearest reference points of each row.

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array, shape (n_samples, n_features)
        row_ids : array-like of int, shape (n_samples,), optional
            Global row numbers of the rows of ``X`` in the training array; rows that are
            in the reference sample then do not count themselves (``k + 1`` are
            queried and self is dropped).

        Returns
        -------
        indices : ndarray of int64, shape (n_samples, k)
            Positions in ``reference_`` (``reference_indices_[indices]`` are global row
            numbers), nearest first.  Note the order (indices, distances), unlike
            scikit-learn's ``kneighbors``.
        distances : ndarray of float32, shape (n_samples, k)
            Euclidean distances.  Both are lazy Dask arrays for Zarr/Dask input
            (computing both together with ``dask.compute`` runs the pass once).
        """
        X, lazy, row_ids = self._prepare(X, row_ids)
        k = self.n_neighbors_
        packed = self._run(X, row_ids, "kneighbors", lazy_out=lazy)
        return packed[:, :k].astype(np.int64), packed[:, k:].astype(np.float32)

    def outlier_score(self, X: Any, row_ids: Any = None) -> Any:
        """Outlier score of each row against the reference; higher = more outlying.

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array, shape (n_samples, n_features)
        row_ids : array-like of int, shape (n_samples,), optional
            Global row numbers of the rows of ``X`` (see :meth:`kneighbors`).

        Returns
        -------
        scores : ndarray of float32, shape (n_samples,)
            Lazy Dask array (mapped over row blocks) for Zarr/Dask input.
        """
        X, lazy, row_ids = self._prepare(X, row_ids)
        return self._run(X, row_ids, "score", lazy_out=lazy)

    def score_all(self, X: Any) -> Any:
        """Scores of every row of the *training* array ``X`` (reference rows not
        counting themselves): ``outlier_score(X, row_ids=arange(n_samples))``.

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array, shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of float32, shape (n_samples,)
            numpy for numpy input, a lazy Dask array for Zarr/Dask input.
        """
        X, lazy, _ = self._prepare(X, None)
        return self._run(X, _TRAINING_ROWS, "score", lazy_out=lazy)

    def score_samples(self, X: Any, row_ids: Any = None) -> Any:
        """Opposite of :meth:`outlier_score` (scikit-learn: lower = more abnormal).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        row_ids : array-like of int, shape (n_samples,), optional

        Returns
        -------
        ndarray of float64, shape (n_samples,)
            (float64 as scikit-learn's detectors; :meth:`outlier_score` is float32.)
        """
        return -(self.outlier_score(X, row_ids=row_ids).astype(np.float64))

    def decision_function(self, X: Any, row_ids: Any = None) -> Any:
        """``score_samples(X) - offset_``: negative for outliers.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        row_ids : array-like of int, shape (n_samples,), optional

        Returns
        -------
        ndarray of float64, shape (n_samples,)
        """
        check_is_fitted(self, "threshold_")
        return self.score_samples(X, row_ids=row_ids) - self.offset_

    def predict(self, X: Any, row_ids: Any = None) -> Any:
        """-1 for outliers (``outlier_score > threshold_``), 1 for inliers.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        row_ids : array-like of int, shape (n_samples,), optional

        Returns
        -------
        ndarray of int64, shape (n_samples,)
        """
        dec = self.decision_function(X, row_ids=row_ids)
        if isinstance(dec, da.Array):
            return da.where(dec < 0, -1, 1).astype(np.int64)
        return np.where(dec < 0, -1, 1).astype(np.int64)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then label the training rows from the scores computed by ``fit``.

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array, shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        ndarray of int64, shape (n_samples,)
            -1 outlier, 1 inlier.
        """
        self.fit(X)
        return np.where(self.outlier_scores_ > self.threshold_, -1, 1).astype(np.int64)

    # ----------------------------------------------------------------- DBSCAN
    def suggest_eps(self) -> float:
        """DBSCAN-style ``eps`` at the knee of the sorted reference k-distance curve.

        The k-distances of the reference points (to the other reference points) are
        sorted; both axes are scaled to [0, 1] and the knee is the point farthest
        below the chord from the first to the last point (the "Kneedle" rule for a
        convex increasing curve).  They are distances within the *sample*: with a
        sample fraction ``f = n_reference / n_samples``, ``k`` reference neighbours
        correspond to about ``k / f`` neighbours in the full data.

        Returns
        -------
        float
        """
        check_is_fitted(self, "reference_kdist_")
        y = np.sort(self.reference_kdist_.astype(np.float64))
        if len(y) < 3 or y[-1] <= y[0]:
            return float(y[-1])
        xn = np.linspace(0.0, 1.0, len(y))
        yn = (y - y[0]) / (y[-1] - y[0])
        return float(y[int(np.argmax(xn - yn))])

    def dbscan_noise(self, X: Any, eps: float, row_ids: Any = None) -> Any:
        """Rows whose k-distance to the reference exceeds ``eps`` (DBSCAN-style noise:
        fewer than ``k`` reference points within ``eps``).

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array, shape (n_samples, n_features)
        eps : float
            Radius, e.g. :meth:`suggest_eps`.
        row_ids : array-like of int, shape (n_samples,), optional

        Returns
        -------
        ndarray of bool, shape (n_samples,)
            Lazy Dask array for Zarr/Dask input.
        """
        if not (isinstance(eps, numbers.Real) and not isinstance(eps, bool) and eps >= 0):
            raise ValueError(f"eps={eps!r} should be a non-negative number.")
        X, lazy, row_ids = self._prepare(X, row_ids)
        return self._run(X, row_ids, "noise", lazy_out=lazy, eps=float(eps))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags
