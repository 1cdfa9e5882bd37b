"""Hierarchical clustering of every row through weighted micro-clusters, in bounded memory.

Agglomerative clustering of ``n`` rows needs ``O(n^2)`` memory (scikit-learn's
``AgglomerativeClustering`` on 416,314 rows: a 690 GB condensed distance matrix).
:class:`MicroClusterAgglomerative` instead

1. summarises the rows by ``n_micro`` k-means micro-clusters
   (:class:`~streamclust.estimators.kmeans.StreamingKMeans`, exact streaming Lloyd
   passes),
2. reads the data once more to get, per micro-cluster, the exact count, sum and
   within sum of squares of the rows nearest to its centre (one parallel pass over
   the blocks), and
3. agglomerates the ``m <= n_micro`` micro-cluster *means* weighted by their counts
   (:func:`weighted_linkage`, ``O(m^2)`` memory: 72 MB for ``m = 3000``).

Every row takes the final label of its micro-cluster.

Why weights matter
------------------
Ward's merge cost between two groups of points ``A`` and ``B`` is the increase of
the within-cluster sum of squares,
``Delta(A, B) = |A| |B| / (|A| + |B|) * ||mu_A - mu_B||^2``; it depends on the groups
only through their sizes and means.  Treating each micro-cluster as a group of
``count`` rows located at its mean therefore gives *exactly* Ward's hierarchy of the
rows, constrained to keep each micro-cluster whole (with one row per micro-cluster it
is Ward's hierarchy of the rows, see the tests).  Neither scikit-learn's
``AgglomerativeClustering`` nor ``scipy.cluster.hierarchy.ward`` take sample
weights: on micro-centroids they would treat a 5-row and a 5,000-row micro-cluster
alike.  :func:`weighted_linkage` implements the nearest-neighbour-chain algorithm
(exact for the reducible linkages Ward and average) with the weighted costs.

Linkages
--------
``"ward"``
    weighted Ward as above (exact for the constrained problem).
``"average"``
    weighted UPGMA: the distance between two clusters is the count-weighted mean of
    the Euclidean distances between their micro-cluster means
    (``d(A u B, C) = (w_A d(A, C) + w_B d(B, C)) / (w_A + w_B)``); micro-clusters are
    treated as ``count`` coincident rows at their mean, so within-micro spread is
    ignored.
``"complete"``, ``"single"``
    ``scipy.cluster.hierarchy.linkage`` on the micro-cluster means.  Max/min
    linkages do not depend on multiplicities, so counts are irrelevant; the
    approximation is, as for ``"average"``, that each micro-cluster is represented
    by its mean.

The tree is built once; :meth:`MicroClusterAgglomerative.labels_for` re-cuts it for
any number of clusters without reading the data, and :func:`hierarchy_sweep` returns
one fitted estimator per ``k`` sharing a single micro-clustering and a single tree.

:class:`StreamingBirch` is a thin wrapper of scikit-learn's ``Birch.partial_fit``
over row blocks with the same weighted global step; see its documentation for when
Birch is usable on high-dimensional descriptors (its threshold has a sharp phase
transition there).
"""

from __future__ import annotations

import copy
import numbers
import warnings
from typing import Any

import dask.array as da
import numpy as np
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import cdist
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from streamclust.core.blocks import iter_blocks, parse_memory
from streamclust.errors import MemoryBudgetError
from streamclust.estimators.blockwise import (
    check_finite,
    check_X,
    float_dtype,
    fold_blocks,
    map_rows,
    resolve_block_rows,
    sweep_plan,
)
from streamclust.estimators.kernels import assign, prep_centers, shifted, sub_rows
from streamclust.estimators.kmeans import StreamingKMeans

__all__ = [
    "MicroClusterAgglomerative",
    "hierarchy_sweep",
    "weighted_linkage",
    "cut_linkage",
    "StreamingBirch",
]

_LINKAGES = ("ward", "average", "complete", "single")


# --------------------------------------------------------------------------- #
# Weighted agglomeration of m points (O(m^2) memory)
# --------------------------------------------------------------------------- #
def _check_tree_memory(m: int, memory: Any) -> None:
    need = 8 * m * m + (64 << 20)  # the m x m float64 matrix, rows filled in chunks
    budget = parse_memory(memory)
    if need > budget:
        raise MemoryBudgetError(
            f"agglomerating {m} micro-clusters needs ~{need / 2**20:.0f} MiB (an {m} x {m} "
            f"float64 matrix), more than memory={budget / 2**20:.0f} MiB; "
            "give fewer micro-clusters or more memory."
        )


def _nn_chain(points: np.ndarray, weights: np.ndarray, method: str) -> np.ndarray:
    """Merges ``(slot_a, slot_b, height)`` of weighted Ward/average, by nearest-neighbour chain.

    Slot ``s`` stands for the cluster holding original point ``s`` while it is
    active.  Merges come out in chain order, not sorted by height.
    """
    m = points.shape[0]
    X = np.asarray(points, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).copy()
    # the only O(m^2) array: filled by row chunks (exact differences, no temporaries)
    D = np.empty((m, m))
    chunk = max(1, (4 << 20) // (8 * m))
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        if method == "ward":
            D[s:e] = cdist(X[s:e], X, "sqeuclidean")
            D[s:e] *= w[s:e, None] * w / (w[s:e, None] + w)
        else:
            D[s:e] = cdist(X[s:e], X, "euclidean")
    np.fill_diagonal(D, np.inf)
    active = np.ones(m, dtype=bool)
    merges = np.empty((m - 1, 3), dtype=np.float64)
    chain: list[int] = []
    for step in range(m - 1):
        if not chain:
            chain.append(int(np.argmax(active)))
        while True:
            a = chain[-1]
            row = D[a]
            b = int(np.argmin(row))
            if len(chain) > 1:
                p = chain[-2]
                if row[p] <= row[b]:  # ties go back down the chain: no cycles
                    b = p
                if b == p:
                    break
            chain.append(b)
        chain.pop()
        chain.pop()
        h = D[a, b]
        keep, gone = (a, b) if a < b else (b, a)
        merges[step] = (keep, gone, h)
        wa, wb = w[keep], w[gone]
        wn = wa + wb
        active[gone] = False
        if method == "ward":
            # Lance-Williams for the Ward cost Delta (exact algebra; O(m) per merge)
            new = ((wa + w) * D[keep] + (wb + w) * D[gone] - w * h) / (wn + w)
        else:  # weighted UPGMA
            new = (wa * D[keep] + wb * D[gone]) / wn
        w[keep] = wn
        new[~active] = np.inf
        new[keep] = np.inf
        D[keep] = new
        D[:, keep] = new
        D[gone] = np.inf
        D[:, gone] = np.inf
    return merges


def _merges_to_linkage(merges: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sort merges by height (stable) and relabel them as a scipy linkage matrix."""
    m = weights.shape[0]
    order = np.argsort(merges[:, 2], kind="stable")
    merges = merges[order]
    parent = np.arange(2 * m - 1)
    size = np.concatenate([np.asarray(weights, dtype=np.float64), np.zeros(m - 1)])

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    Z = np.empty((m - 1, 4), dtype=np.float64)
    for i, (a, b, h) in enumerate(merges):
        ra, rb = find(int(a)), find(int(b))
        lo, hi = (ra, rb) if ra < rb else (rb, ra)
        new = m + i
        parent[ra] = parent[rb] = new
        size[new] = size[ra] + size[rb]
        Z[i] = (lo, hi, h, size[new])
    return Z


def weighted_linkage(
    points: Any, weights: Any = None, method: str = "ward", *, memory: Any = None
) -> np.ndarray:
    """Agglomerative hierarchy of weighted points, as a scipy linkage matrix.

    Each point stands for ``weight`` coincident observations (e.g. a micro-cluster
    of ``count`` rows at its mean).  Ward and average linkage are computed by the
    nearest-neighbour-chain algorithm with weighted costs (exact: both are
    reducible); complete and single linkage, which do not depend on multiplicity,
    by :func:`scipy.cluster.hierarchy.linkage`.

    Parameters
    ----------
    points : array-like of shape (m, n_features)
    weights : array-like of shape (m,), optional
        Positive weights (counts); default 1 each.  With unit weights ``"ward"``
        and ``"average"`` reproduce :func:`scipy.cluster.hierarchy.ward` and
        ``average`` (up to ties).
    method : {"ward", "average", "complete", "single"}
    memory : str or int, optional
        Budget checked against the ``O(m^2)`` working set.

    Returns
    -------
    Z : ndarray of float64, shape (m - 1, 4)
        scipy's format: merged cluster ids, height, total weight of the new cluster.
        Ward heights are scipy's ``sqrt(2 * Delta)`` where ``Delta`` is the increase
        of the within-cluster sum of squares; average heights are weighted mean
        Euclidean distances.
    """
    if method not in _LINKAGES:
        raise ValueError(f"linkage={method!r} should be one of {', '.join(map(repr, _LINKAGES))}.")
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] < 1:
        raise ValueError(f"points has shape {P.shape}; it should be (m >= 1, n_features).")
    m = P.shape[0]
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.all(w > 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"weights should be {m} positive finite numbers; got shape {w.shape}.")
    check_finite(P, "points")
    if m == 1:
        return np.empty((0, 4), dtype=np.float64)
    _check_tree_memory(m, memory)
    if method in ("complete", "single"):
        Z = scipy_linkage(P, method=method).astype(np.float64)
        # scipy counts observations; report weights like the weighted methods
        size = np.concatenate([w, np.zeros(m - 1)])
        for i in range(m - 1):
            size[m + i] = size[int(Z[i, 0])] + size[int(Z[i, 1])]
        Z[:, 3] = size[m:]
        return Z
    merges = _nn_chain(P, w, method)
    if method == "ward":
        merges[:, 2] = np.sqrt(2.0 * np.maximum(merges[:, 2], 0.0))
    return _merges_to_linkage(merges, w)


def cut_linkage(Z: np.ndarray, n_clusters: int) -> np.ndarray:
    """Flat clusters of the ``m`` leaves of ``Z`` obtained by undoing its last ``n_clusters - 1`` merges.

    Labels are numbered in order of each cluster's smallest leaf index (deterministic).

    Parameters
    ----------
    Z : ndarray of shape (m - 1, 4)
        Linkage matrix sorted by height (as from :func:`weighted_linkage`).
    n_clusters : int
        ``1 <= n_clusters <= m``.

    Returns
    -------
    ndarray of int32, shape (m,)
    """
    m = Z.shape[0] + 1
    if not 1 <= n_clusters <= m:
        raise ValueError(f"n_clusters={n_clusters} should be between 1 and the {m} leaves of the tree.")
    parent = np.arange(2 * m - 1)
    for i in range(m - n_clusters):
        parent[int(Z[i, 0])] = m + i
        parent[int(Z[i, 1])] = m + i
    # nodes are created in increasing id order: resolve roots top-down in one sweep
    root = parent.copy()
    for node in range(2 * m - 2, -1, -1):
        root[node] = root[parent[node]] if parent[node] != node else node
    leaf_root = root[:m]
    _, first, inverse = np.unique(leaf_root, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int32)
    return rank[inverse.ravel()]


# --------------------------------------------------------------------------- #
# Per-block statistics of the micro-clusters
# --------------------------------------------------------------------------- #
def _nearest(block: np.ndarray, shift: np.ndarray, centers: np.ndarray, chunk: int | None) -> np.ndarray:
    """Nearest centre of every row with kmeans' kernel; ``chunk`` rows at a time if given
    (bounds the ``chunk x k`` distance matrix when ``k`` is in the thousands)."""
    xs, xx = shifted(block, shift)
    cs, cc = prep_centers(centers, shift, xs.dtype)
    if chunk is None:
        return assign(xs, xx, cs, cc)[0]
    out = np.empty(xs.shape[0], dtype=np.int32)
    for s in range(0, xs.shape[0], chunk):
        out[s : s + chunk] = assign(xs[s : s + chunk], xx[s : s + chunk], cs, cc)[0]
    return out


def _leaf_chunk(n_features: int, n_leaves: int) -> int:
    """Rows per distance chunk so that the float32 ``rows x n_leaves`` matrix is <= 8 MB."""
    return int(max(256, min(sub_rows(n_features), (1 << 21) // max(1, n_leaves))))


class _MicroStats:
    """Per block: nearest centre of every row (for micro-clusters exactly as
    ``StreamingKMeans.predict`` computes it), per-centre counts, float64 sums of the
    shifted rows and sums of squared distances to the centre."""

    def __init__(self, shift: np.ndarray, centers: np.ndarray, chunk: int | None = None) -> None:
        self.shift = shift
        self.centers = centers
        self.chunk = chunk

    def __call__(self, block: np.ndarray, rows: slice) -> list:
        labels = _nearest(block, self.shift, self.centers, self.chunk)
        m, d = self.centers.shape
        counts = np.bincount(labels, minlength=m).astype(np.int64)
        sums = np.zeros((m, d))
        ss = np.zeros(m)
        c64 = self.centers - self.shift
        step = sub_rows(d)
        for s in range(0, labels.shape[0], step):
            lab = labels[s : s + step]
            x64 = np.asarray(block[s : s + step], dtype=np.float64) - self.shift
            order = np.argsort(lab, kind="stable")
            ls = lab[order]
            starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
            sums[ls[starts]] += np.add.reduceat(x64[order], starts, axis=0)
            diff = x64 - c64[lab]
            ss += np.bincount(lab, weights=np.einsum("ij,ij->i", diff, diff), minlength=m)
        return [counts, sums, ss, [labels]]


def _merge_micro(a: list, b: list) -> list:
    return [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]


class _Lookup:
    """Picklable ``labels -> table[labels]`` for ``map_blocks``."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        return self.table[labels]


def _check_int(est: Any, name: str, low: int) -> None:
    v = getattr(est, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{name}={v!r} should be an integer >= {low}.")


class _TreeMixin:
    """Cutting the fitted tree of weighted leaves (micro-clusters or Birch subclusters)."""

    def _leaf_labels_for(self, n_clusters: int) -> np.ndarray:
        """Final label of every leaf (all of them, empty ones included)."""
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
            raise ValueError(f"n_clusters={n_clusters!r} should be an integer >= 1.")
        n_leaves = self._nonempty.size
        if n_clusters > n_leaves:
            raise ValueError(
                f"n_clusters={n_clusters} exceeds the {n_leaves} non-empty leaves of the tree; "
                "fit with more micro-clusters (or a smaller threshold)."
            )
        labels = np.empty(self._leaf_centers.shape[0], dtype=np.int32)
        labels[self._nonempty] = cut_linkage(self.linkage_matrix_, int(n_clusters))
        labels[self._empty] = labels[self._nonempty][self._empty_nearest]
        return labels

    def _set_cut(self, n_clusters: int) -> None:
        leaf = self._leaf_labels_for(n_clusters)
        k = int(leaf.max()) + 1
        counts = self._leaf_counts.astype(np.float64)
        w = np.bincount(leaf, weights=counts, minlength=k)
        sums = np.zeros((k, self._leaf_sums.shape[1]))
        np.add.at(sums, leaf, self._leaf_sums)
        centers_s = sums / np.maximum(w, 1)[:, None]
        # exact within-cluster SS: leaves' own SS + their spread around the cluster mean
        nz = counts > 0
        means_s = self._leaf_sums[nz] / counts[nz, None]
        between = counts[nz] * np.einsum(
            "ij,ij->i", means_s - centers_s[leaf[nz]], means_s - centers_s[leaf[nz]]
        )
        self._leaf_label_map = leaf
        self.cluster_centers_ = centers_s + self._stat_shift
        self.cluster_counts_ = w.astype(np.int64)
        self.inertia_ = float(self._leaf_ss.sum() + between.sum())
        self.labels_ = leaf[self._row_leaf]

    def _finish_tree(self, centers: np.ndarray, counts: np.ndarray, sums: np.ndarray,
                     ss: np.ndarray, shift: np.ndarray, row_leaf: np.ndarray) -> None:
        """Build the weighted tree over the non-empty leaves and cut it at ``n_clusters``."""
        nonempty = np.flatnonzero(counts > 0)
        empty = np.flatnonzero(counts == 0)
        means = centers.astype(np.float64).copy()
        means[nonempty] = sums[nonempty] / counts[nonempty, None] + shift
        # SS about the member mean = SS about the centre - n * ||mean - centre||^2
        delta = means - centers
        ss = np.maximum(ss - counts * np.einsum("ij,ij->i", delta, delta), 0.0)
        Z = weighted_linkage(means[nonempty], counts[nonempty], self.linkage, memory=self.memory)
        if empty.size:
            d2 = ((centers[empty, None, :] - means[None, nonempty, :]) ** 2).sum(axis=2)
            self._empty_nearest = np.argmin(d2, axis=1)
        else:
            self._empty_nearest = np.empty(0, dtype=np.int64)
        self._leaf_centers = centers
        self._leaf_counts = counts
        self._leaf_sums = sums
        self._leaf_ss = ss
        self._stat_shift = shift
        self._nonempty, self._empty = nonempty, empty
        self._row_leaf = row_leaf
        self._leaf_means = means
        self.linkage_matrix_ = Z
        self.children_ = Z[:, :2].astype(np.int64)
        self.distances_ = Z[:, 2].copy()
        self.n_leaves_ = int(nonempty.size)
        k = int(self.n_clusters)
        if k > self.n_leaves_:
            warnings.warn(
                f"only {self.n_leaves_} non-empty leaves (distinct micro-clusters / BIRCH "
                f"subclusters) for n_clusters={k}; returning {self.n_leaves_} clusters. "
                "Use more micro-clusters or a smaller threshold.",
                ConvergenceWarning,
                stacklevel=3,
            )
            k = self.n_leaves_
        self._set_cut(k)


# --------------------------------------------------------------------------- #
# MicroClusterAgglomerative
# --------------------------------------------------------------------------- #
class MicroClusterAgglomerative(_TreeMixin, ClusterMixin, BaseEstimator):
    """Agglomerative clustering of every row via count-weighted k-means micro-clusters.

    ``fit`` runs :class:`~streamclust.estimators.kmeans.StreamingKMeans` with
    ``n_micro`` clusters (one start of one seeding, ``max_iter`` exact Lloyd passes), then one
    parallel pass over the blocks gathering, for the rows nearest to each
    micro-centre, their count, sum and within sum of squares (and each row's
    micro-cluster, 4 bytes a row), then agglomerates the micro-cluster means with
    :func:`weighted_linkage` (weights = counts; see the module documentation for
    why weighted Ward is exact for micro-cluster-constrained Ward).  Each row gets
    the label of its micro-cluster.

    Passes over the data: those of the micro k-means (``<= max_iter + 2``) + 1.
    Memory: one pass's blocks, the ``m x m`` matrix of the tree (``m <= n_micro``)
    and 4 bytes per row for the row -> micro-cluster map.

    Parameters
    ----------
    n_clusters : int, default=8
    n_micro : int, default=1000
        Micro-clusters (capped at ``n_samples``: with fewer rows, every row is its own
        micro-cluster and the result is exact agglomerative clustering).
    linkage : {"ward", "average", "complete", "single"}, default="ward"
    micro_init_size : int, optional
        Rows sampled for the k-means++ seeding of the micro-clusters
        (``StreamingKMeans.init_size``).
    max_iter : int, default=10
        Lloyd passes of the micro k-means (micro-clusters only need to be compact,
        not converged).
    memory : str or int, optional
        Memory budget of one pass (e.g. ``"1GB"``); sizes the row blocks.
    block_rows : int, optional
        Rows per block; overrides the size derived from ``memory``.
    random_state : int, RandomState instance or None, default=None
        Seeds the micro k-means (the agglomeration is deterministic).

    Attributes
    ----------
    labels_ : ndarray of int32, shape (n_samples,)
        Final label of every training row (kept for Zarr/Dask input too: it is
        ``micro_labels_[micro_assignment_]``).
    micro_centers_ : ndarray of float64, shape (m, n_features)
        Centres of the micro k-means (rows are assigned to the nearest one).
    micro_means_ : ndarray of float64, shape (m, n_features)
        Exact mean of the rows assigned to each micro-centre (the centre for an
        empty micro-cluster).  The tree is built on these.
    micro_counts_ : ndarray of int64, shape (m,)
    micro_inertia_ : ndarray of float64, shape (m,)
        Within sum of squares of each micro-cluster about its mean.
    micro_labels_ : ndarray of int32, shape (m,)
        Final label of each micro-cluster (empty ones take that of the nearest
        non-empty micro-cluster mean).
    micro_assignment_ : ndarray of int32, shape (n_samples,)
        Micro-cluster of every training row.
    micro_kmeans_ : StreamingKMeans
        The fitted micro k-means.
    n_iter_ : int
        Lloyd passes of the micro k-means.
    cluster_centers_ : ndarray of float64, shape (n_clusters, n_features)
        Exact mean of the rows of each final cluster.
    cluster_counts_ : ndarray of int64, shape (n_clusters,)
    inertia_ : float
        Exact within-cluster sum of squares of the final clusters over all rows.
    linkage_matrix_ : ndarray of float64, shape (n_leaves_ - 1, 4)
        scipy linkage matrix over the non-empty micro-clusters.
    children_ : ndarray of int64, shape (n_leaves_ - 1, 2)
    distances_ : ndarray of float64, shape (n_leaves_ - 1,)
        Merge heights (Ward: ``sqrt(2 * increase of the SS)``, scipy's convention).
    n_leaves_ : int
        Non-empty micro-clusters.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from streamclust.estimators.hierarchy import MicroClusterAgglomerative
    >>> X = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    >>> est = MicroClusterAgglomerative(4, n_micro=50, random_state=0).fit(X)
    >>> est.labels_.shape, est.labels_for(2).max()
    ((2000,), 1)
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_micro: int = 1000,
        linkage: str = "ward",
        micro_init_size: int | None = None,
        max_iter: int = 10,
        memory: str | int | None = None,
        block_rows: int | None = None,
        random_state: Any = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_micro = n_micro
        self.linkage = linkage
        self.micro_init_size = micro_init_size
        self.max_iter = max_iter
        self.memory = memory
        self.block_rows = block_rows
        self.random_state = random_state

    def _check_params(self) -> None:
        _check_int(self, "n_clusters", 1)
        _check_int(self, "n_micro", 1)
        _check_int(self, "max_iter", 1)
        if self.micro_init_size is not None:
            _check_int(self, "micro_init_size", 1)
        if self.linkage not in _LINKAGES:
            raise ValueError(
                f"linkage={self.linkage!r} should be one of {', '.join(map(repr, _LINKAGES))}."
            )

    def fit(self, X: Any, y: Any = None) -> MicroClusterAgglomerative:
        """Micro-cluster the rows, then agglomerate the weighted micro-clusters.

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
        if n < self.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")
        m = min(int(self.n_micro), n)
        _check_tree_memory(m, self.memory)
        init_size = None
        if self.micro_init_size is not None:
            init_size = max(m, min(n, int(self.micro_init_size)))
        km = StreamingKMeans(
            m,
            n_init=1,
            n_seedings=1,
            max_iter=self.max_iter,
            init_size=init_size,
            memory=self.memory,
            block_rows=self.block_rows,
            random_state=self.random_state,
        ).fit(X)
        br = resolve_block_rows(d, self.memory, self.block_rows, X)
        shift = km.shift_.astype(float_dtype(X.dtype)).astype(np.float64)
        counts, sums, ss, parts = fold_blocks(
            _MicroStats(shift, km.cluster_centers_), X, br, _merge_micro
        )
        check_finite(sums)
        row_micro = np.concatenate(parts).astype(np.int32, copy=False)
        self.micro_kmeans_ = km
        self._finish_tree(km.cluster_centers_, counts, sums, ss, shift, row_micro)
        self.micro_centers_ = km.cluster_centers_
        self.micro_means_ = self._leaf_means
        self.micro_counts_ = counts
        self.micro_inertia_ = self._leaf_ss
        self.micro_assignment_ = row_micro
        self.n_iter_ = int(km.n_iter_)
        return self

    def _set_cut(self, n_clusters: int) -> None:
        super()._set_cut(n_clusters)
        self.micro_labels_ = self._leaf_label_map

    # -- re-cutting ------------------------------------------------------- #
    def micro_labels_for(self, n_clusters: int) -> np.ndarray:
        """Final label of each micro-cluster for ``n_clusters`` clusters (no data pass).

        Returns
        -------
        ndarray of int32, shape (m,)
        """
        check_is_fitted(self, "linkage_matrix_")
        return self._leaf_labels_for(n_clusters)

    def labels_for(self, n_clusters: int) -> np.ndarray:
        """Labels of every training row for ``n_clusters`` clusters, re-cutting the same tree.

        No data pass: uses the stored row -> micro-cluster map.

        Parameters
        ----------
        n_clusters : int
            ``1 <= n_clusters <= n_leaves_``.

        Returns
        -------
        ndarray of int32, shape (n_samples,)
        """
        return self.micro_labels_for(n_clusters)[self.micro_assignment_]

    # -- inference -------------------------------------------------------- #
    def predict(self, X: Any) -> Any:
        """Final label of the nearest micro-centre of every row.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray of int32 (in-memory input) or lazy dask.array.Array, shape (n_samples,)
        """
        check_is_fitted(self, "micro_labels_")
        X, lazy = check_X(self, X, reset=False)
        micro = self.micro_kmeans_.predict(X)
        if isinstance(micro, da.Array):
            return micro.map_blocks(_Lookup(self.micro_labels_), dtype=np.int32)
        return self.micro_labels_[micro]

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


def hierarchy_sweep(
    X: Any,
    k_values: Any,
    *,
    n_micro: int = 1000,
    linkage: str = "ward",
    micro_init_size: int | None = None,
    max_iter: int = 10,
    memory: str | int | None = None,
    block_rows: int | None = None,
    random_state: Any = None,
) -> dict[int, MicroClusterAgglomerative]:
    """One fitted :class:`MicroClusterAgglomerative` per ``k``, sharing one micro-clustering and one tree.

    The data are read by one fit only; every other ``k`` re-cuts the tree.  An int
    ``random_state`` is used as is, so ``hierarchy_sweep(X, ks, random_state=s)[k]``
    has the same labels as ``MicroClusterAgglomerative(k, random_state=s, <same
    params>).fit(X)``; a ``RandomState`` or None gives one int drawn once (set as the
    models' ``random_state``).

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
        numpy, Zarr or Dask array.
    k_values : iterable of int
    n_micro, linkage, micro_init_size, max_iter, memory, block_rows
        As in :class:`MicroClusterAgglomerative`.
    random_state : int, RandomState instance or None

    Returns
    -------
    dict of int to MicroClusterAgglomerative
        In increasing ``k``.  The models share their micro-cluster arrays, the
        micro k-means and the tree (do not modify them in place).
    """
    ks, seed = sweep_plan(k_values, random_state)
    base = MicroClusterAgglomerative(
        ks[0],
        n_micro=n_micro,
        linkage=linkage,
        micro_init_size=micro_init_size,
        max_iter=max_iter,
        memory=memory,
        block_rows=block_rows,
        random_state=seed,
    ).fit(X)
    out = {}
    for k in ks:
        est = copy.copy(base)
        est.n_clusters = k
        est._set_cut(k)
        out[k] = est
    return out


# --------------------------------------------------------------------------- #
# StreamingBirch
# --------------------------------------------------------------------------- #
class _PredictLeaf:
    def __init__(self, shift: np.ndarray, centers: np.ndarray, table: np.ndarray) -> None:
        self.shift, self.centers, self.table = shift, centers, table
        self.chunk = _leaf_chunk(centers.shape[1], centers.shape[0])

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return self.table[_nearest(block, self.shift, self.centers, self.chunk)]


class StreamingBirch(_TreeMixin, ClusterMixin, BaseEstimator):
    """scikit-learn's BIRCH CF-tree built block by block, with a count-weighted global step.

    ``fit`` feeds the row blocks in order to :meth:`sklearn.cluster.Birch.partial_fit`
    (``n_clusters=None``: the CF-tree only), then reads the data once more to assign
    every row to its nearest subcluster centroid (scikit-learn's ``Birch.predict``
    rule) while gathering each subcluster's count, sum and sum of squares, and
    agglomerates the subcluster means weighted by their counts
    (:func:`weighted_linkage`, like :class:`MicroClusterAgglomerative`).
    scikit-learn's own global step runs an *unweighted* ``AgglomerativeClustering``
    on the subcluster centres.

    When to use it
    --------------
    In high dimension the number of subclusters has a sharp phase transition in
    ``threshold``: a subcluster's radius is about ``sigma * sqrt(d)`` as soon as it
    holds two rows of a blob of spread ``sigma``, so below that every row opens its
    own subcluster and above it whole blobs merge.  Measured on 416,314 x 64 float32
    rows (2 shared cores):

    * 10 isotropic blobs (radius ~7.2): threshold 8 -> 19,872 subclusters after 57 s
      of ``partial_fit``, still growing linearly (the global step would then need a
      3 GB matrix); 9 -> 131 subclusters in 6.7 s; 10 -> 10 subclusters;
    * ``benchmarks/bench_families.py`` (10 blobs, PCA-like decaying spectrum, median
      blob radius r = 2.22): threshold r -> 4,090 subclusters, 28 s, 701 MB peak,
      ARI 0.998; 1.25 r -> 418 subclusters, 12 s, ARI 0.995.  With the blobs closer
      (``--sep 0.9``): r -> 3,624 subclusters, ARI 0.927; 1.25 r -> ONE subcluster.

    So it labels 416k x 64 rows in well under a minute and 1 GiB *when* the threshold
    sits just above the blobs' radius; a threshold 25% off either way either
    explodes or collapses.  The insertion is sequential (one core).  Prefer
    :class:`MicroClusterAgglomerative` (the micro-cluster count is a parameter, not
    an outcome); use this when a meaningful radius ``threshold`` is known.
    ``max_subclusters`` stops a run whose tree explodes, with an error saying so;
    fewer leaves than ``n_clusters`` gives a ``ConvergenceWarning`` and fewer
    clusters (as scikit-learn's Birch).

    Parameters
    ----------
    n_clusters : int, default=8
    threshold : float, default=0.5
        Radius bound of a subcluster (scikit-learn's meaning, in the data's units).
    branching_factor : int, default=50
    linkage : {"ward", "average", "complete", "single"}, default="ward"
        Global step over the subcluster means.
    max_subclusters : int, default=5000
        Raise :class:`~streamclust.errors.MemoryBudgetError` when the CF-tree holds
        more subclusters (the global step needs ``O(m^2)`` memory).
    memory : str or int, optional
    block_rows : int, optional

    Attributes
    ----------
    labels_ : ndarray of int32, shape (n_samples,)
    birch_ : sklearn.cluster.Birch
        The CF-tree (``n_clusters=None``).
    subcluster_centers_ : ndarray of float64, shape (m, n_features)
        CF-tree subcluster centroids (rows are assigned to the nearest one).
    subcluster_counts_ : ndarray of int64, shape (m,)
        Rows nearest to each centroid.
    subcluster_labels_ : ndarray of int32, shape (m,)
    cluster_centers_ : ndarray of float64, shape (n_clusters, n_features)
    cluster_counts_ : ndarray of int64, shape (n_clusters,)
    inertia_ : float
    linkage_matrix_, children_, distances_, n_leaves_
        As in :class:`MicroClusterAgglomerative`.
    n_features_in_ : int
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        threshold: float = 0.5,
        branching_factor: int = 50,
        linkage: str = "ward",
        max_subclusters: int = 5000,
        memory: str | int | None = None,
        block_rows: int | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.threshold = threshold
        self.branching_factor = branching_factor
        self.linkage = linkage
        self.max_subclusters = max_subclusters
        self.memory = memory
        self.block_rows = block_rows

    def _check_params(self) -> None:
        _check_int(self, "n_clusters", 1)
        _check_int(self, "branching_factor", 2)
        _check_int(self, "max_subclusters", 1)
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not t > 0:
            raise ValueError(f"threshold={t!r} should be a positive number.")
        if self.linkage not in _LINKAGES:
            raise ValueError(
                f"linkage={self.linkage!r} should be one of {', '.join(map(repr, _LINKAGES))}."
            )

    def fit(self, X: Any, y: Any = None) -> StreamingBirch:
        """Build the CF-tree block by block, then label every row through the weighted tree.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            numpy, Zarr or Dask array.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        from sklearn.cluster import Birch

        self._check_params()
        X, lazy = check_X(self, X, reset=True)
        n, d = int(X.shape[0]), int(X.shape[1])
        if n < self.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")
        br = resolve_block_rows(d, self.memory, self.block_rows, X)
        birch = Birch(threshold=float(self.threshold), branching_factor=int(self.branching_factor),
                      n_clusters=None, compute_labels=False)
        mean = None
        step = max(1, min(br, 16384))
        for rows, block in iter_blocks(X, br):
            block = np.asarray(block)
            check_finite(block)
            if mean is None:
                mean = block.mean(axis=0, dtype=np.float64)
            for s in range(0, block.shape[0], step):
                birch.partial_fit(block[s : s + step])
                m = birch.subcluster_centers_.shape[0]
                if m > self.max_subclusters:
                    raise MemoryBudgetError(
                        f"threshold={self.threshold!r} gives more than max_subclusters="
                        f"{self.max_subclusters} BIRCH subclusters ({m} after "
                        f"{rows.start + min(s + step, block.shape[0])} rows); raise threshold (in high dimension the "
                        "subcluster count jumps by orders of magnitude around the blobs' radius "
                        "sigma*sqrt(n_features)) or use MicroClusterAgglomerative."
                    )
        centers = np.asarray(birch.subcluster_centers_, dtype=np.float64)
        shift = mean.astype(float_dtype(X.dtype)).astype(np.float64)
        stats = _MicroStats(shift, centers, _leaf_chunk(d, centers.shape[0]))
        counts, sums, ss, parts = fold_blocks(stats, X, br, _merge_micro)
        check_finite(sums)
        row_leaf = np.concatenate(parts).astype(np.int32, copy=False)
        self.birch_ = birch
        self._finish_tree(centers, counts, sums, ss, shift, row_leaf)
        self.subcluster_centers_ = centers
        self.subcluster_counts_ = counts
        return self

    def _set_cut(self, n_clusters: int) -> None:
        super()._set_cut(n_clusters)
        self.subcluster_labels_ = self._leaf_label_map

    def labels_for(self, n_clusters: int) -> np.ndarray:
        """Labels of every training row for ``n_clusters`` clusters (re-cut, no data pass).

        Returns
        -------
        ndarray of int32, shape (n_samples,)
        """
        check_is_fitted(self, "linkage_matrix_")
        return self._leaf_labels_for(n_clusters)[self._row_leaf]

    def predict(self, X: Any) -> Any:
        """Label of the nearest subcluster centroid of every row.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray of int32 (in-memory input) or lazy dask.array.Array, shape (n_samples,)
        """
        check_is_fitted(self, "subcluster_labels_")
        X, lazy = check_X(self, X, reset=False)
        br = resolve_block_rows(X.shape[1], self.memory, self.block_rows, X)
        f = _PredictLeaf(self._stat_shift, self.subcluster_centers_, self.subcluster_labels_)
        return map_rows(f, X, lazy, br, dtype=np.int32)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return ``labels_`` (numpy for every kind of input).

        Returns
        -------
        ndarray of int32, shape (n_samples,)
        """
        return self.fit(X).labels_
