"""Density-based clustering of every row: HDBSCAN on a bounded sample, kNN assignment of the rest.

HDBSCAN needs a minimum spanning tree over all rows and ``O(n)`` to ``O(n^2)``
memory; on 416,314 x 64 rows scikit-learn's ``HDBSCAN`` does not finish in
reasonable time.  :class:`SampledHDBSCAN`

1. draws a seeded uniform sample of ``sample_size`` rows (one block-wise pass);
2. runs HDBSCAN on it: exact core distances (chunked GEMM), exact Prim minimum
   spanning tree of the mutual-reachability graph (vectorised, ``O(m)`` memory), then
   scikit-learn's ``HDBSCAN`` on that tree given as a sparse precomputed graph (its
   own condensed tree, cluster selection and labels).  This equals
   ``sklearn.cluster.HDBSCAN(min_cluster_size, min_samples).fit(sample)`` up to ties,
   but in ~``m^2 d`` flops: scikit-learn's default path spends most of its time in a
   KD-tree kNN query that degenerates in 64 dimensions (7 s for 5,000 x 64 rows,
   ~2 min for 20,000);
3. indexes ALL sample points (noise included, see below) with pynndescent (exact
   brute force when the sample has at most 4,096 points) and labels every row in one
   parallel pass over the blocks.

Assignment rule (a row ``x``)
-----------------------------
* ``N(x)``: its ``assign_k`` nearest sample points; the non-noise ones vote, and the
  most frequent label wins (ties: the label of the nearest voter).  If all ``assign_k``
  are sample noise, ``x`` is noise.
* Noise test, in HDBSCAN's own terms: with ``p`` the nearest voter of the winning
  cluster ``C`` and ``core(.)`` core distances *with respect to the sample*
  (``core(x)`` = distance to its ``min_samples - 1``-th nearest sample point, i.e.
  ``x``'s core distance if it were added to the sample), the mutual-reachability
  distance ``mr(x, p) = max(d(x, p), core(p), core(x))`` must not exceed
  ``reach(C)`` = the largest core distance of ``C``'s sample members.  In words: ``x``
  is kept if it is at least as dense as, and no farther from the cluster than, the
  sparsest point HDBSCAN kept in ``C``; otherwise it is noise (-1).
* Sample rows keep the label HDBSCAN gave them in ``labels_`` (``predict`` applies the
  rule to every row it is given).

This needs core distances of new rows, hence an index over all sample points rather
than over non-noise points only; the vote ignores noise neighbours.  Noise stays -1
and is reported (``noise_fraction_``, ``sample_noise_fraction_``).  Sampling shifts
densities (a sample fraction ``f`` sees ``f`` times fewer neighbours), which is why
both sides of every comparison are measured against the same sample.

Determinism: same ``random_state`` -> same sample, same HDBSCAN labels and the same
index (built single-threaded, seeded; its search random state zeroed so each row's
neighbours do not depend on the rows queried with it), whatever the block size.
pynndescent compiles its build kernels with numba once per process (~20 s).
"""

from __future__ import annotations

import numbers
import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from streamclust.core.blocks import iter_blocks, map_blocks_reduce, parse_memory
from streamclust.core.scheduler import one_blas_thread
from streamclust.estimators.blockwise import (
    check_finite,
    check_X,
    resolve_block_rows,
    rows_outside,
    take_rows,
    to_blockable,
)
from streamclust.estimators.neighbors import QUERY_LOCK, build_index

__all__ = ["SampledHDBSCAN", "hdbscan_mst"]

#: Samples of at most this many points are searched by exact brute force.
BRUTE_MAX = 4096

#: ``search_epsilon`` values tried until the recall measured at fit reaches 0.95.
_EPSILONS = (0.1, 0.2, 0.3, 0.5)

#: Rows outside the sample probing the recall of the index at fit.
_N_PROBE = 256


# --------------------------------------------------------------------------- #
# Exact neighbours and the mutual-reachability MST of the sample
# --------------------------------------------------------------------------- #
def _chunk_rows(m: int, memory: Any) -> int:
    """Query rows per chunk of an exact kNN: a (chunk x m) float32 matrix and its
    argpartition (int64) within 1/16 of the budget, at most 512 rows (cache-friendly)."""
    budget = parse_memory(memory) // 16
    return int(max(16, min(512, budget // max(1, 12 * m))))


def _exact_knn(ref: np.ndarray, queries: np.ndarray, k: int, memory: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``k`` nearest rows of ``ref`` for every query, sorted by (distance, index).

    Candidates are selected with a float32 distance GEMM (``k + 8`` per row), then
    their distances are recomputed exactly in float64.  One BLAS thread: on the
    reference 2-core machine OpenBLAS threads made these products slower.

    Returns
    -------
    ind : ndarray of int64, shape (q, k)
    dist : ndarray of float64, shape (q, k)
    """
    ref64 = np.asarray(ref, dtype=np.float64)
    center = ref64.mean(axis=0)
    ref32 = (ref64 - center).astype(np.float32)
    rsq = np.einsum("ij,ij->i", ref32, ref32)
    m = ref64.shape[0]
    kc = min(m, k + 8)
    q = queries.shape[0]
    ind = np.empty((q, k), dtype=np.int64)
    dist = np.empty((q, k))
    step = _chunk_rows(m, memory)
    with one_blas_thread():
        for s in range(0, q, step):
            x64 = np.asarray(queries[s : s + step], dtype=np.float64)
            x32 = (x64 - center).astype(np.float32)
            d2 = x32 @ ref32.T
            d2 *= -2.0
            d2 += rsq  # + ||x||^2 omitted: constant per row, irrelevant to the selection
            if kc < m:
                cand = np.argpartition(d2, kc - 1, axis=1)[:, :kc]
            else:
                cand = np.broadcast_to(np.arange(m), d2.shape).copy()
            del d2
            diff = ref64[cand] - x64[:, None, :]
            exact = np.einsum("ijk,ijk->ij", diff, diff)
            order = _row_lexsort(exact, cand)[:, :k]
            ind[s : s + step] = np.take_along_axis(cand, order, axis=1)
            dist[s : s + step] = np.sqrt(np.take_along_axis(exact, order, axis=1))
    return ind, dist


def _row_lexsort(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Per row, the order sorting by ``primary`` then ``secondary`` (deterministic ties)."""
    order = np.argsort(secondary, axis=1, kind="stable")
    p = np.take_along_axis(primary, order, axis=1)
    o2 = np.argsort(p, axis=1, kind="stable")
    return np.take_along_axis(order, o2, axis=1)


def _core_distances(S: np.ndarray, min_samples: int, memory: Any = None) -> np.ndarray:
    """Distance of every sample point to its ``min_samples``-th nearest sample point,
    itself included (scikit-learn's HDBSCAN definition)."""
    if min_samples <= 1:
        return np.zeros(S.shape[0])
    return _exact_knn(S, S, min_samples, memory)[1][:, -1]


def _prim_mst(S: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Exact minimum spanning tree of the mutual-reachability graph of ``S`` (Prim, O(m) memory).

    Returns
    -------
    ndarray of float64, shape (m - 1, 3)
        Edges ``(i, j, max(d(i, j), core[i], core[j]))``.
    """
    m = S.shape[0]
    # float32 products on centred rows: half the memory traffic of float64 (the loop
    # is bound by it), relative error ~1e-7 on the distances
    S64 = np.asarray(S, dtype=np.float64)
    S = np.ascontiguousarray(S64 - S64.mean(axis=0), dtype=np.float32)
    sq = np.einsum("ij,ij->i", S, S)
    edges = np.empty((max(m - 1, 0), 3))
    if m < 2:
        return edges
    out_idx = np.arange(1, m)
    P = S[1:].copy()
    psq = sq[1:].copy()
    pcore = core[1:].astype(np.float32)
    core = core.astype(np.float32)
    best = np.full(m - 1, np.inf, dtype=np.float32)
    parent = np.zeros(m - 1, dtype=np.int64)
    v = 0
    n_out = m - 1
    # one BLAS thread: two OpenBLAS threads made this GEMV 10x slower on 2 cores
    with one_blas_thread():
        for step in range(m - 1):
            Pv = P[:n_out]
            dv = Pv @ S[v]
            dv *= -2.0
            dv += psq[:n_out]
            dv += sq[v]
            np.maximum(dv, 0.0, out=dv)
            np.sqrt(dv, out=dv)
            np.maximum(dv, core[v], out=dv)
            np.maximum(dv, pcore[:n_out], out=dv)
            b = best[:n_out]
            better = dv < b
            b[better] = dv[better]
            parent[:n_out][better] = v
            j = int(np.argmin(b))
            edges[step] = (parent[j], out_idx[j], b[j])
            v = int(out_idx[j])
            last = n_out - 1
            if j != last:
                out_idx[j] = out_idx[last]
                P[j] = P[last]
                psq[j] = psq[last]
                pcore[j] = pcore[last]
                best[j] = best[last]
                parent[j] = parent[last]
            n_out -= 1
    return edges


def hdbscan_mst(S: Any, min_cluster_size: int = 5, min_samples: int | None = None, *,
                cluster_selection_method: str = "eom", memory: Any = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """HDBSCAN of an in-memory sample through an exact Prim MST and scikit-learn's tree code.

    Equals ``sklearn.cluster.HDBSCAN(min_cluster_size, min_samples, ...).fit(S)`` up
    to ties between equal mutual-reachability distances, in ``O(m^2 d)`` time and
    ``O(m)`` memory beyond the chunked kNN of the core distances.

    Parameters
    ----------
    S : array-like of shape (m, n_features)
    min_cluster_size : int
    min_samples : int, optional
        Default ``min_cluster_size``; capped at ``m``.
    cluster_selection_method : {"eom", "leaf"}
    memory : str or int, optional
        Budget of the chunked kNN.

    Returns
    -------
    labels : ndarray of int64, shape (m,)
        -1 for noise.
    core : ndarray of float64, shape (m,)
        Core distances.
    model : sklearn.cluster.HDBSCAN
        The estimator fitted on the sparse MST (``probabilities_`` etc.).
    """
    from sklearn.cluster import HDBSCAN

    S = np.asarray(S, dtype=np.float64)
    m = S.shape[0]
    ms = min(int(min_samples if min_samples is not None else min_cluster_size), m)
    core = _core_distances(S, ms, memory)
    edges = _prim_mst(S, core)
    w = edges[:, 2].copy()
    w[w <= 0] = np.finfo(np.float64).tiny  # csgraph would drop zero-weight edges
    i = np.concatenate([edges[:, 0], edges[:, 1], np.arange(m)]).astype(np.int64)
    j = np.concatenate([edges[:, 1], edges[:, 0], np.arange(m)]).astype(np.int64)
    data = np.concatenate([w, w, np.zeros(m)])
    G = sp.csr_matrix((data, (i, j)), shape=(m, m))
    # min_samples=1: the explicit zero diagonal is every point's core distance, so the
    # graph's weights (already mutual reachabilities) are used as they are.
    model = HDBSCAN(min_cluster_size=int(min_cluster_size), min_samples=1, metric="precomputed",
                    cluster_selection_method=cluster_selection_method, copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(G)
    return np.asarray(model.labels_, dtype=np.int64), core, model


# --------------------------------------------------------------------------- #
# Neighbour search over the sample
# --------------------------------------------------------------------------- #
class _Neighbors:
    """``kneighbors(block, k)`` over the sample: exact (small samples) or pynndescent."""

    def __init__(self, points: np.ndarray, method: str, seed: int, memory: Any) -> None:
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        self.method = method
        self.memory = memory
        self.epsilon = 0.1
        self.index = None
        if method == "nndescent":
            self.index = build_index(self.points, n_neighbors=30, seed=seed)

    def __call__(self, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.points.shape[0])
        if self.index is None:
            ind, dist = _exact_knn(self.points, block, k, self.memory)
            return ind, dist.astype(np.float32)
        q = np.ascontiguousarray(block, dtype=np.float32)
        with QUERY_LOCK:
            ind, dist = self.index.query(q, k=k, epsilon=self.epsilon)
        return np.asarray(ind, dtype=np.int64), np.asarray(dist, dtype=np.float32)

    def tune(self, probe: np.ndarray, k: int, seed: int) -> float:
        """Raise ``epsilon`` until the recall@k on ``probe`` reaches 0.95; return the recall.

        Without probe rows (every row is in the sample), sample points are probed
        with themselves excluded (``k + 1`` neighbours, the first dropped)."""
        if self.index is None:
            return 1.0
        drop = 0
        if probe.shape[0] == 0:
            pick = np.random.RandomState(seed).permutation(self.points.shape[0])[:_N_PROBE]
            probe, drop = self.points[np.sort(pick)], 1
        kk = min(k + drop, self.points.shape[0])
        exact = _exact_knn(self.points, probe, kk, self.memory)[1][:, drop:]
        bound = exact[:, -1:] * (1 + 1e-4) + 1e-6
        recall = 0.0
        for eps in _EPSILONS:
            self.epsilon = eps
            approx = self(probe, kk)[1][:, drop:]
            recall = float(np.mean(approx <= bound))
            if recall >= 0.95:
                break
        return recall


# --------------------------------------------------------------------------- #
# Assignment of rows
# --------------------------------------------------------------------------- #
class _Assign:
    """Per-block labels by the rule of the module documentation."""

    def __init__(self, est: SampledHDBSCAN, override: bool) -> None:
        self.neighbors = est._neighbors
        self.sample_labels = est.sample_labels_
        self.sample_core = est.sample_core_distances_
        self.reach = est.cluster_reach_
        self.assign_k = est._assign_k
        self.min_samples = est.min_samples_
        self.kq = est._kq
        self.sample_indices = est.sample_indices_ if override else None

    def labels(self, block: np.ndarray, rows: slice | None) -> np.ndarray:
        block = np.asarray(block)
        if not np.all(np.isfinite(block)):
            raise ValueError("Input X contains NaN or infinity.")
        r = block.shape[0]
        if r == 0:
            return np.empty(0, dtype=np.int32)
        ind, dist = self.neighbors(block, self.kq)
        ms = self.min_samples
        core_x = dist[:, min(ms - 2, dist.shape[1] - 1)].astype(np.float64) if ms >= 2 else np.zeros(r)
        ka = min(self.assign_k, ind.shape[1])
        labs = self.sample_labels[ind[:, :ka]]
        valid = labs >= 0
        same = (labs[:, :, None] == labs[:, None, :]) & valid[:, None, :]
        count = same.sum(axis=2) * valid
        best = np.argmax(count, axis=1)  # first maximum: the nearest voter of the winner
        rr = np.arange(r)
        win = labs[rr, best]
        has = count[rr, best] > 0
        p = ind[rr, best]
        mr = np.maximum(np.maximum(dist[rr, best].astype(np.float64), self.sample_core[p]), core_x)
        reach = self.reach[np.where(has, win, 0)] if self.reach.size else np.zeros(r)
        out = np.where(has & (mr <= reach), win, -1).astype(np.int32)
        if self.sample_indices is not None and rows is not None:
            lo, hi = np.searchsorted(self.sample_indices, [rows.start, rows.stop])
            out[self.sample_indices[lo:hi] - rows.start] = self.sample_labels[lo:hi]
        return out

    def __call__(self, block: np.ndarray, rows: slice) -> np.ndarray:
        return self.labels(block, rows)

    def dask(self, block: np.ndarray) -> np.ndarray:
        return self.labels(block, None)


class SampledHDBSCAN(ClusterMixin, BaseEstimator):
    """HDBSCAN on a seeded bounded sample of rows, then kNN assignment of every row.

    See the module documentation for the algorithm, the assignment and noise rule and
    the determinism guarantees.

    Parameters
    ----------
    min_cluster_size : int, default=50
        HDBSCAN's, counted in *sample* points (with a sample fraction ``f``, a
        cluster of ``min_cluster_size`` sample points is ~``min_cluster_size / f``
        rows).
    min_samples : int, optional
        HDBSCAN's (core distance = distance to the ``min_samples``-th nearest sample
        point, itself included); default ``min_cluster_size``.
    sample_size : int, default=20000
        Rows given to HDBSCAN (all rows if fewer).  Time ~``sample_size^2``.
    assign_k : int, default=10
        Nearest sample points voting for a row's label.
    cluster_selection_method : {"eom", "leaf"}, default="eom"
    neighbors : {"auto", "nndescent", "brute"}, default="auto"
        Neighbour search over the sample: pynndescent, exact brute force, or
        ``"auto"`` = brute force up to 4,096 sample points, pynndescent above.
    memory : str or int, optional
        Memory budget of the passes (e.g. ``"1GB"``); sizes the row blocks.
    block_rows : int, optional
        Rows per block; overrides the size derived from ``memory``.
    random_state : int, RandomState instance or None, default=None
        Seeds the sample and the index.

    Attributes
    ----------
    labels_ : ndarray of int32, shape (n_samples,)
        Label of every training row, -1 for noise.
    sample_indices_ : ndarray of int64, shape (m,)
        Sorted row numbers of the sample.
    sample_labels_ : ndarray of int64, shape (m,)
        HDBSCAN labels of the sample (-1 noise).
    sample_probabilities_ : ndarray of float64, shape (m,)
        HDBSCAN membership strengths of the sample points.
    sample_core_distances_ : ndarray of float64, shape (m,)
    cluster_reach_ : ndarray of float64, shape (n_clusters_,)
        Largest core distance of each cluster's sample members (the noise threshold).
    n_clusters_ : int
    min_samples_ : int
        ``min_samples`` actually used.
    noise_fraction_ : float
        Share of training rows labelled -1.
    sample_noise_fraction_ : float
        Share of sample points HDBSCAN labelled -1.
    recall_ : float
        Recall@k of the neighbour search measured at fit on up to 256 rows outside the
        sample against exact neighbours (1.0 for brute force); the query ``epsilon``
        is raised (0.1, 0.2, 0.3, 0.5) until it reaches 0.95.
    neighbors_ : str
        ``"brute"`` or ``"nndescent"``.
    fit_time_ : dict
        Seconds spent in ``sample``, ``hdbscan``, ``index`` (build, incl. numba
        compilation), ``tune`` and ``assign`` (the labelling pass).
    n_features_in_ : int
    """

    def __init__(
        self,
        min_cluster_size: int = 50,
        *,
        min_samples: int | None = None,
        sample_size: int = 20_000,
        assign_k: int = 10,
        cluster_selection_method: str = "eom",
        neighbors: str = "auto",
        memory: str | int | None = None,
        block_rows: int | None = None,
        random_state: Any = None,
    ) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.sample_size = sample_size
        self.assign_k = assign_k
        self.cluster_selection_method = cluster_selection_method
        self.neighbors = neighbors
        self.memory = memory
        self.block_rows = block_rows
        self.random_state = random_state

    def _check_params(self) -> None:
        def _int(name: str, low: int, none_ok: bool = False) -> None:
            v = getattr(self, name)
            if none_ok and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{name}={v!r} should be an integer >= {low}" + (" or None." if none_ok else "."))

        _int("min_cluster_size", 2)
        _int("min_samples", 1, none_ok=True)
        _int("sample_size", 2)
        _int("assign_k", 1)
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise ValueError(
                f"cluster_selection_method={self.cluster_selection_method!r} should be 'eom' or 'leaf'."
            )
        if self.neighbors not in ("auto", "nndescent", "brute"):
            raise ValueError(f"neighbors={self.neighbors!r} should be 'auto', 'nndescent' or 'brute'.")

    def fit(self, X: Any, y: Any = None) -> SampledHDBSCAN:
        """HDBSCAN on the sample, index it, and label every row in one parallel pass.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            numpy, Zarr or Dask array (read block by block).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._check_params()
        X, lazy = check_X(self, X, reset=True)
        n, d = int(X.shape[0]), int(X.shape[1])
        if n < 2:
            raise ValueError(f"n_samples={n} should be >= 2 (1 sample given).")
        br = resolve_block_rows(d, self.memory, self.block_rows, X)
        rng = check_random_state(self.random_state)
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        m = min(n, int(self.sample_size))
        idx = np.arange(n, dtype=np.int64) if m >= n else np.sort(
            sample_without_replacement(n, m, random_state=rng)).astype(np.int64)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        # probe rows for the recall of the index: rows NOT in the sample (read in the same pass)
        probe_ids = rows_outside(idx, n, _N_PROBE, rng)
        all_ids = np.union1d(idx, probe_ids)
        rows = np.asarray(take_rows(X, all_ids, br, memory=self.memory), dtype=np.float64)
        check_finite(rows)
        in_sample = np.isin(all_ids, idx, assume_unique=True)
        S, probe = rows[in_sample], rows[~in_sample]
        del rows
        times["sample"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ms = min(int(self.min_samples if self.min_samples is not None else self.min_cluster_size), m)
        labels, core, model = hdbscan_mst(S, int(self.min_cluster_size), ms,
                                          cluster_selection_method=self.cluster_selection_method,
                                          memory=self.memory)
        k_clusters = int(labels.max()) + 1 if labels.size else 0
        reach = np.zeros(k_clusters)
        member = labels >= 0
        if member.any():
            np.maximum.at(reach, labels[member], core[member])
        times["hdbscan"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        method = self.neighbors
        if method == "auto":
            method = "brute" if m <= BRUTE_MAX else "nndescent"
        self._neighbors = _Neighbors(S, method, seed, self.memory)
        times["index"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.sample_indices_ = idx
        self.sample_labels_ = labels
        self.sample_probabilities_ = np.asarray(model.probabilities_, dtype=np.float64)
        self.sample_core_distances_ = core
        self.cluster_reach_ = reach
        self.n_clusters_ = k_clusters
        self.min_samples_ = ms
        self.neighbors_ = method
        self._assign_k = int(self.assign_k)
        self._kq = max(self._assign_k, ms - 1, 1)
        self.recall_ = self._neighbors.tune(probe, self._kq, seed)
        times["tune"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.sample_noise_fraction_ = float(np.mean(labels < 0))
        # label every row (sample rows keep their HDBSCAN labels)
        f = _Assign(self, override=True)
        parts = map_blocks_reduce(f, to_blockable(X, br), br)
        self.labels_ = np.concatenate(parts).astype(np.int32, copy=False) if parts else np.empty(0, np.int32)
        self.noise_fraction_ = float(np.mean(self.labels_ < 0))
        times["assign"] = time.perf_counter() - t0
        self.fit_time_ = times
        return self

    def predict(self, X: Any) -> Any:
        """Label of every row by the assignment rule (-1 noise).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray of int32 (in-memory input) or lazy dask.array.Array, shape (n_samples,)
        """
        check_is_fitted(self, "sample_labels_")
        X, lazy = check_X(self, X, reset=False)
        br = resolve_block_rows(X.shape[1], self.memory, self.block_rows, X)
        f = _Assign(self, override=False)
        if lazy:
            arr = to_blockable(X, br)
            return arr.map_blocks(f.dask, drop_axis=1, dtype=np.int32, meta=np.empty((0,), np.int32))
        out = np.empty(X.shape[0], dtype=np.int32)
        for rows, block in iter_blocks(X, br):
            out[rows] = f.labels(block, None)
        return out

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return ``labels_`` (numpy for every kind of input).

        Returns
        -------
        ndarray of int32, shape (n_samples,)
        """
        return self.fit(X).labels_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags
