"""Nystrom-approximated spectral clustering of every row, in bounded memory, with dask-ml's kernels.

Spectral clustering embeds the rows by the top eigenvectors of the normalised affinity
``M = D^-1/2 W D^-1/2`` (``W_xy = exp(-gamma ||x - y||^2)``, ``D`` its row sums) and runs k-means
on the row-normalised embedding (Ng, Jordan and Weiss).  ``W`` has ``n^2`` entries (1.4 TB in
float64 for 416,314 rows); the Nystrom method (Fowlkes, Belongie, Chung and Malik, 2004) needs
only the affinities of every row to ``l`` seeded landmark rows, ``W ~ C A^+ C^T`` with ``C``
``(n, l)`` and ``A`` the landmarks' ``(l, l)`` block.  :class:`NystromSpectralClustering`

1. reads a seeded sample of ``kmeans_rows`` rows (one block-wise pass) and takes ``n_landmarks``
   of them as landmarks (drawn as :class:`dask_ml.cluster.SpectralClustering` draws its
   ``n_components`` rows);
2. sets ``gamma`` by :data:`GAMMA_RULE` unless given;
3. pass over all rows: the landmarks' exact degrees ``r = C^T 1`` (the affinities come from
   :func:`dask_ml.metrics.pairwise.rbf_kernel` on the Dask array of the rows);
4. eigendecomposes ``A2 = diag(r)^-1/2 A diag(r)^-1/2 = U S U^T`` (``(l, l)``; directions with
   ``S < 1e-8 S_max`` are dropped), so that ``M ~ G G^T`` with row ``g_x = (k_x / sqrt(r)) U
   S^-1/2 / sqrt(d_x)``, ``k_x`` the row's affinities to the landmarks and ``d_x = k_x^T A^+ r`` its
   degree in the approximated graph (the formula of dask-ml's ``d2``);
5. pass over all rows: ``R = G^T G`` (``(q, q)``), whose eigenvectors ``U_R`` and eigenvalues
   ``L`` give orthonormal approximate eigenvectors ``V = G U_R L^-1/2`` of ``M`` (Fowlkes et al.'s
   orthogonalisation; the eigenvalues, ``eigenvalues_``, are ~1 for every well-separated cluster);
6. fits :class:`~streamclust.estimators.kmeans.StreamingKMeans` on the row-normalised first
   ``n_clusters`` columns of the sample's embedding.

``predict`` embeds any rows block by block and gives each the nearest k-means centre (lazy for
Dask/Zarr input).  A row's own factors ``sqrt(d_x)`` and ``exp(-gamma min_j ||x - l_j||^2)``
cancel in the row normalisation, so the embedding is computed from the kernel shifted by each
row's nearest landmark: rows far from every landmark (outliers) are embedded like their nearest
landmark instead of underflowing to 0/0, and ``||x||^2`` is not needed (``predict`` takes
``||l_j||^2 - 2 x.l_j`` from one float32 GEMM per chunk of rows; dask-ml's distance graph, three
temporaries per block, cost 3-5x that, and ``predict`` runs once per k in a study).  Rows whose
approximated degree is not positive (the Nystrom graph can give a few) are left out of ``R`` and
counted (``nonpositive_degree_rows_``).

Why not :class:`dask_ml.cluster.SpectralClustering` as it is
----------------------------------------------------------
Measured on 416,314 x 64 float32 rows (10 planted blobs, 2 cores, ``n_components=300``, one k):
200 s and 2.3 GB peak RSS (its k-means|| runs over the persisted embedding); it has no
``predict`` (its labels are for the fitted rows only); its embedding depends on k (the first k
eigenvectors are taken before the normalisation), so a k sweep repeats everything; and it uses the
extended eigenvectors without orthogonalising them ("OK when V2 is orthogonal", they are not): on
two moons lifted to 10-d (5,000 rows, 300 landmarks, gamma by :data:`GAMMA_RULE`) it gave ARI
0.39 / 0.99 / 0.58 for seeds 0 / 1 / 2, this estimator 1.0 for all three.  dask-ml's pairwise
kernels serve here as they are: its ``rbf_kernel`` (step 3) and ``euclidean_distances`` (step 5)
compute the affinities of every row.

Cost and memory: three reads of the rows (sample, degrees, ``R``) and ``predict``'s one, each
``O(n l d)`` flops, in float32 (rows and landmarks shifted by the landmarks' mean; sums and the
``(l, l)`` algebra in float64); memory is the sample (``kmeans_rows x d``), its ``kmeans_rows x
n_clusters`` embedding, blocks of ``(rows, l)`` affinities and ``O(l^2)``.  The embedding does
not depend on k: :func:`spectral_sweep` fits it once for the largest k and one k-means per k.

Determinism: a given ``random_state`` gives the same sample, landmarks, gamma and k-means seeds;
the passes fold their blocks in order.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from streamclust.core.blocks import parse_memory
from streamclust.core.scheduler import one_blas_thread
from streamclust.errors import InputError, MemoryBudgetError
from streamclust.estimators.blockwise import (
    check_finite,
    check_X,
    fold_blocks,
    map_rows,
    resolve_block_rows,
    sweep_plan,
    take_rows,
    to_blockable,
)
from streamclust.estimators.kernels import assign, prep_centers, shifted
from streamclust.estimators.kmeans import StreamingKMeans

__all__ = ["NystromSpectralClustering", "spectral_sweep", "GAMMA_RULE", "rule_gamma", "normalise_rows"]

#: The landmark neighbour whose squared distance sets the kernel width (Zelnik-Manor and Perona's
#: self-tuning spectral clustering scales each point by its 7th neighbour; here one global scale).
GAMMA_NEIGHBOR = 7

#: How ``gamma=None`` is chosen.  The median of all pairwise squared distances (the usual "median
#: heuristic") gives a kernel so wide that on two moons lifted to 10-d spectral clustering is no
#: better than k-means (ARI 0.27-0.30 vs 0.25); this rule gave 1.0 there and the blobs' 1.0.
GAMMA_RULE = (f"gamma = 1 / median over the landmarks of the squared distance to their {GAMMA_NEIGHBOR}th "
              "nearest other landmark (landmarks at distance 0 from it, duplicates, are left out; 1 when all coincide)")

#: Eigen-directions of the landmarks' normalised affinity below this share of the largest are dropped.
_EIG_RTOL = 1e-8


def _check_int(est: Any, name: str, low: int) -> None:
    v = getattr(est, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{name}={v!r} should be an integer >= {low}.")


def rule_gamma(landmarks: np.ndarray) -> float:
    """:data:`GAMMA_RULE` on the landmark rows.

    Parameters
    ----------
    landmarks : ndarray, shape (l, d)

    Returns
    -------
    float
    """
    L = np.asarray(landmarks, dtype=np.float64)
    if L.shape[0] < 2:
        return 1.0
    sq = np.einsum("ij,ij->i", L, L)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (L @ L.T), 0.0)
    np.fill_diagonal(d2, np.inf)
    nth = min(GAMMA_NEIGHBOR, L.shape[0] - 1) - 1
    kth = np.partition(d2, nth, axis=1)[:, nth]
    kth = kth[kth > 0]
    return 1.0 / float(np.median(kth)) if kth.size else 1.0


def _landmark_sq_distances(X: Any, landmarks: np.ndarray, shift: np.ndarray, block_rows: int) -> da.Array:
    """Lazy ``(n, l)`` float32 squared distances of every row to every landmark, by dask-ml's
    ``euclidean_distances`` in row chunks of ``block_rows`` (rows and landmarks shifted by
    ``shift``, the landmarks' mean, so the float32 expansion loses no digits that matter)."""
    from dask_ml.metrics.pairwise import euclidean_distances  # imported when used: dask-ml takes ~1.5 s to import

    rows = to_blockable(X, block_rows).astype(np.float32) - shift.astype(np.float32)
    return euclidean_distances(rows, (landmarks - shift).astype(np.float32), squared=True)


def _distance_block_rows(n_landmarks: int, memory: Any, block_rows: Any, X: Any = None) -> int:
    """Rows per block of the fit's ``(rows, n_landmarks)`` float32 distance passes by dask-ml: its
    distance task and the block function hold ~5 such arrays each, two tasks run at once."""
    return resolve_block_rows(n_landmarks, memory, block_rows, X, bytes_per_value=4, copies=16)


class _DegreeSum:
    """Per block of ``(r, l)`` affinities: their column sums (the landmarks' degrees), in float64."""

    def __call__(self, block: np.ndarray, rows: slice) -> np.ndarray:
        return np.sum(block, axis=0, dtype=np.float64)


def normalise_rows(e: np.ndarray) -> np.ndarray:
    """Rows of ``e`` scaled to unit length, float32 (a row of zeros stays zeros).

    Parameters
    ----------
    e : ndarray, shape (r, k)

    Returns
    -------
    ndarray of float32, shape (r, k)
    """
    e = np.asarray(e, dtype=np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", e, e))[:, None]
    return np.divide(e, norm, out=np.zeros_like(e), where=norm > 0).astype(np.float32)


class _Embedding:
    """The fitted embedding of rows: ``(r, d)`` rows -> ``(r, width)`` spectral coordinates before
    the row normalisation (``projection`` gives the width).

    Only differences between a row's squared distances to the landmarks matter (the row's own
    factors cancel), so rows are mapped through ``||l_j||^2 - 2 x.l_j`` (one float32 GEMM, no
    ``||x||^2``), ``chunk`` rows at a time so the ``(rows, l)`` temporaries stay in cache.
    """

    def __init__(self, gamma: float, landmarks: np.ndarray, shift: np.ndarray, inv_sqrt_degree: np.ndarray,
                 projection: np.ndarray) -> None:
        lm = (np.asarray(landmarks, dtype=np.float64) - shift).astype(np.float32)
        self.gamma = float(gamma)
        self.shift = np.asarray(shift, dtype=np.float32)  # (d,)
        self.minus_2lt = np.ascontiguousarray(-2.0 * lm.T)  # (d, l), exact scaling
        self.sq_landmarks = np.einsum("ij,ij->i", lm, lm)  # (l,)
        self.inv_sqrt_degree = np.asarray(inv_sqrt_degree, dtype=np.float32)  # (l,)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)  # (l, width)
        self.chunk = int(max(256, (1 << 19) // max(1, lm.shape[0])))

    def narrowed(self, width: int) -> _Embedding:
        """The same embedding keeping its first ``width`` columns."""
        out = copy.copy(self)
        out.projection = np.ascontiguousarray(self.projection[:, :width])
        return out

    def scaled_affinities(self, d2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """From ``(r, l)`` float32 squared distances up to a per-row constant (overwritten):
        ``exp(-gamma (d2 - min_j d2)) / sqrt(landmark degree)`` (r, l) and ``min_j d2`` (r,)."""
        nearest = d2.min(axis=1)
        d2 -= nearest[:, None]
        d2 *= np.float32(-self.gamma)
        np.exp(d2, out=d2)
        d2 *= self.inv_sqrt_degree
        return d2, nearest

    def raw(self, block: np.ndarray) -> np.ndarray:
        """Embedding rows of a block of rows before the normalisation, float32 ``(r, width)``."""
        out = np.empty((block.shape[0], self.projection.shape[1]), dtype=np.float32)
        for s in range(0, block.shape[0], self.chunk):
            x = np.asarray(block[s : s + self.chunk], dtype=np.float32) - self.shift
            offsets = x @ self.minus_2lt
            offsets += self.sq_landmarks
            out[s : s + self.chunk] = self.scaled_affinities(offsets)[0] @ self.projection
        return out


class _GramPass:
    """Per block of dask-ml's ``(r, l)`` squared distances: ``sum_x g_x g_x^T`` over the rows of
    positive degree (``(q, q)`` float32) and how many rows had a degree <= 0."""

    def __init__(self, embedding: _Embedding, degree_weights: np.ndarray) -> None:
        self.embedding = embedding
        # sqrt(r) A^+ r, (l,): a row's degree is its scaled affinities . this
        self.degree_weights = np.asarray(degree_weights, dtype=np.float32)

    def __call__(self, d2: np.ndarray, rows: slice) -> list:
        f, nearest = self.embedding.scaled_affinities(np.array(d2, dtype=np.float32))
        degree = (f @ self.degree_weights).astype(np.float64)  # d_x / exp(-gamma nearest)
        ok = degree > 0
        f = f if ok.all() else f[ok]
        f *= np.sqrt(np.exp(-self.embedding.gamma * nearest[ok].astype(np.float64)) / degree[ok]
                     ).astype(np.float32)[:, None]
        g = f @ self.embedding.projection
        return [g.T @ g, int((~ok).sum())]  # float32 per block (half the pending results), float64 sums


class _Labels:
    """Per block of rows: the nearest k-means centre of each row's normalised embedding."""

    def __init__(self, embedding: _Embedding, kmeans: StreamingKMeans) -> None:
        self.embedding = embedding
        self.shift = kmeans.shift_
        self.centers = kmeans.cluster_centers_

    def __call__(self, block: np.ndarray) -> np.ndarray:
        xs, xx = shifted(normalise_rows(self.embedding.raw(block)), self.shift)
        cs, cc = prep_centers(self.centers, self.shift, xs.dtype)
        return assign(xs, xx, cs, cc)[0]


def _add_gram(a: list, b: list) -> list:
    return [np.add(a[0], b[0], dtype=np.float64), a[1] + b[1]]


class NystromSpectralClustering(ClusterMixin, BaseEstimator):
    """Spectral clustering of every row through ``n_landmarks`` Nystrom landmarks.

    See the module documentation for the algorithm, why dask-ml's ``SpectralClustering`` is not
    used as it is, and :data:`GAMMA_RULE`.  Passes over the data of ``fit``: 3 (the sample, the
    landmarks' degrees, the Gram matrix of the embedding), plus the k-means' passes over the
    in-memory sample; ``predict`` is one more.

    Parameters
    ----------
    n_clusters : int, default=8
    n_landmarks : int, default=300
        Landmark rows of the Nystrom approximation (dask-ml's ``n_components``), capped at the
        sample size; at least ``n_clusters``.
    gamma : float, optional
        RBF kernel coefficient, ``exp(-gamma ||x - y||^2)``; default :data:`GAMMA_RULE`.
    kmeans_rows : int, default=50_000
        Rows sampled (seeded) whose embedding the final k-means is fitted on, capped so the sample
        takes at most a quarter of ``memory``; all rows when there are fewer.
    n_init : int, default=3
        Starts of the final k-means.
    memory : str or int, optional
        Memory budget of one pass (e.g. ``"1GB"``); sizes the row blocks.
    block_rows : int, optional
        Rows per block; overrides the size derived from ``memory``.
    random_state : int, RandomState instance or None, default=None
        Seeds the sample, the landmarks and the k-means.

    Attributes
    ----------
    landmarks_ : ndarray of float64, shape (n_landmarks_, n_features)
    gamma_ : float
        The kernel coefficient used.
    landmark_degrees_ : ndarray of float64, shape (n_landmarks_,)
        Sum of every landmark's affinities to all rows.
    eigenvalues_ : ndarray of float64, shape (n_clusters,)
        Top eigenvalues of the approximated normalised affinity (1 = a cluster with no affinity
        outside it; a gap after the k-th suggests k clusters).
    nonpositive_degree_rows_ : int
        Rows whose approximated degree was <= 0, left out of the Gram matrix.
    kmeans_ : StreamingKMeans
        The k-means on the sample's row-normalised embedding (centres in that space).
    labels_ : ndarray of int32, shape (n_samples,)
        Only when ``fit`` got an in-memory (numpy-like) array; use :meth:`predict` otherwise.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import make_moons
    >>> X, y = make_moons(2000, noise=0.05, random_state=0)
    >>> labels = NystromSpectralClustering(2, random_state=0).fit(X).labels_
    >>> bool(abs(np.corrcoef(labels, y)[0, 1]) > 0.99)
    True
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_landmarks: int = 300,
        gamma: float | None = None,
        kmeans_rows: int = 50_000,
        n_init: int = 3,
        memory: str | int | None = None,
        block_rows: int | None = None,
        random_state: Any = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_landmarks = n_landmarks
        self.gamma = gamma
        self.kmeans_rows = kmeans_rows
        self.n_init = n_init
        self.memory = memory
        self.block_rows = block_rows
        self.random_state = random_state

    def _check_params(self) -> None:
        _check_int(self, "n_clusters", 1)
        _check_int(self, "n_landmarks", 1)
        _check_int(self, "kmeans_rows", int(self.n_clusters))
        _check_int(self, "n_init", 1)
        g = self.gamma
        if g is not None and (isinstance(g, bool) or not isinstance(g, numbers.Real) or not 0 < g < np.inf):
            raise ValueError(f"gamma={g!r} should be a positive real number or None.")
        if self.n_landmarks < self.n_clusters:
            raise ValueError(f"n_landmarks={self.n_landmarks} should be >= n_clusters={self.n_clusters}.")

    def fit(self, X: Any, y: Any = None) -> NystromSpectralClustering:
        """Fit the landmark embedding and the k-means on the sample's embedding.

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
        _fit_models([self], X)
        return self

    def _labels(self, X: Any, lazy: bool) -> Any:
        """Labels of the validated rows ``X``: lazy Dask for lazy input, numpy otherwise (computed
        with one BLAS thread, as the passes are)."""
        br = resolve_block_rows(X.shape[1], self.memory, self.block_rows, X)
        if lazy:
            return map_rows(_Labels(self._embedding, self.kmeans_), X, True, br, dtype=np.int32)
        with one_blas_thread():
            return map_rows(_Labels(self._embedding, self.kmeans_), X, False, br, dtype=np.int32)

    def predict(self, X: Any) -> Any:
        """Nearest k-means centre of every row's spectral embedding.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray of int32 (in-memory input) or lazy dask.array.Array, shape (n_samples,)
            Compute a lazy result under ``one_blas_thread()`` when Dask
            runs its tasks in threads: two OpenBLAS threads per task made it 4-5x slower on 2 cores
            (the limit only works when set by the thread that starts the computation).
        """
        check_is_fitted(self, "kmeans_")
        X, lazy = check_X(self, X, reset=False)
        return self._labels(X, lazy)

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit, then return the label of every row.

        Returns
        -------
        ndarray of int32 (in-memory input) or lazy dask.array.Array, shape (n_samples,)
        """
        self.fit(X)
        return self.labels_ if hasattr(self, "labels_") else self.predict(X)


def _sample_rows(head: NystromSpectralClustering, X: Any, n: int, d: int, width: int, br: int,
                 rng: np.random.RandomState) -> np.ndarray:
    """The seeded sample of ``min(n, kmeans_rows)`` rows (capped so its float64 copy takes at most a
    quarter of the budget), as stored, ``(m, d)``."""
    budget = parse_memory(head.memory)
    cap = budget // (4 * 8 * d)
    if cap < min(n, width):
        raise MemoryBudgetError(f"memory={budget / 2**20:.0f} MiB holds a sample of {cap} rows of {d} features, "
                                f"fewer than n_clusters={width}; give more memory.")
    size = int(min(n, head.kmeans_rows, cap))
    idx = np.arange(n) if size >= n else np.sort(sample_without_replacement(n, size, random_state=rng))
    return np.asarray(take_rows(X, idx, br, memory=head.memory))


def _fit_embedding(head: NystromSpectralClustering, X: Any, sample: np.ndarray, width: int,
                   rng: np.random.RandomState) -> tuple[_Embedding, dict[str, Any]]:
    """Landmarks, gamma and the two passes over ``X``: the embedding ``width`` columns wide and the
    fitted attributes every model shares (``landmarks_``, ``gamma_``, ...)."""
    m = sample.shape[0]
    n_land = min(head.n_landmarks, m)
    landmarks = np.asarray(sample[np.sort(rng.choice(m, n_land, replace=False))], dtype=np.float64)
    shift = landmarks.mean(axis=0)
    lm = landmarks - shift
    gamma = float(head.gamma) if head.gamma is not None else rule_gamma(lm)
    br = _distance_block_rows(n_land, head.memory, head.block_rows, X)
    rows = to_blockable(X, br).astype(np.float32) - shift.astype(np.float32)
    from dask_ml.metrics.pairwise import rbf_kernel  # imported when used: dask-ml takes ~1.5 s to import

    degrees = fold_blocks(_DegreeSum(), rbf_kernel(rows, lm.astype(np.float32), gamma=gamma), br, np.add)
    check_finite(degrees)  # each >= ~1: a landmark is one of the rows
    inv_sqrt = 1.0 / np.sqrt(degrees)
    sq = np.einsum("ij,ij->i", lm, lm)
    a = np.exp(-gamma * np.maximum(sq[:, None] + sq[None, :] - 2.0 * (lm @ lm.T), 0.0))
    s, u = np.linalg.eigh(inv_sqrt[:, None] * a * inv_sqrt[None, :])
    keep = s > _EIG_RTOL * s.max()
    s, u = s[keep][::-1], u[:, keep][:, ::-1]
    if s.size < width:
        raise InputError(f"the {n_land} landmarks' affinities have rank {s.size} < n_clusters={width}: the "
                         "rows have too few distinct values for that many clusters; ask for fewer clusters.")
    half = u / np.sqrt(s)  # U S^-1/2, (l, q)
    degree_weights = u @ ((u.T @ np.sqrt(degrees)) / s)  # sqrt(r) A^+ r: a row's degree from its scaled affinities
    gram, n_bad = fold_blocks(_GramPass(_Embedding(gamma, landmarks, shift, inv_sqrt, half), degree_weights),
                              _landmark_sq_distances(X, landmarks, shift, br), br, _add_gram,
                              result_nbytes=4 * half.shape[1] ** 2, memory=head.memory)
    check_finite(gram)
    lam, ur = np.linalg.eigh(gram)
    lam, ur = lam[::-1][:width], ur[:, ::-1][:, :width]
    if not np.all(lam > 0):
        raise InputError(f"the approximated affinity has fewer than n_clusters={width} positive eigenvalues: "
                         "the rows have too few distinct values for that many clusters; ask for fewer clusters.")
    shared = {"landmarks_": landmarks, "gamma_": gamma, "landmark_degrees_": degrees,
              "nonpositive_degree_rows_": int(n_bad), "eigenvalues_": lam}
    return _Embedding(gamma, landmarks, shift, inv_sqrt, half @ (ur / np.sqrt(lam))), shared


def _fit_models(models: list[NystromSpectralClustering], X: Any) -> None:
    """Fit every model of ``models`` (same data and parameters but ``n_clusters``; the first one
    draws the sample, landmarks and seeds) on ONE embedding as wide as the largest ``n_clusters``;
    each gets its own k-means on the sample's embedding."""
    head = models[0]
    X, lazy = check_X(head, X, reset=True)
    n, d = int(X.shape[0]), int(X.shape[1])
    width = max(m.n_clusters for m in models)
    for m in models:
        m._check_params()
        if n < m.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={m.n_clusters}.")
    rng = check_random_state(head.random_state)
    sample = _sample_rows(head, X, n, d, width, resolve_block_rows(d, head.memory, head.block_rows, X), rng)
    # the (l, l) eigenproblems and the sample's embedding: one BLAS thread, as in the passes (two
    # OpenBLAS threads made a 300 x 300 eigh take 140-530 ms instead of 33-39 ms on a loaded 2-core machine)
    with one_blas_thread():
        embedding, shared = _fit_embedding(head, X, sample, width, rng)
        raw = embedding.raw(sample)
    seed = int(rng.randint(np.iinfo(np.int32).max))
    for m in models:
        k = m.n_clusters
        for name, value in shared.items():
            setattr(m, name, value)
        m.n_features_in_ = d
        m.eigenvalues_ = shared["eigenvalues_"][:k].copy()
        m._embedding = embedding.narrowed(k)
        m.kmeans_ = StreamingKMeans(k, n_init=m.n_init, memory=m.memory, random_state=seed).fit(
            normalise_rows(raw[:, :k]))
        if not lazy:
            m.labels_ = m._labels(X, lazy=False)
        elif hasattr(m, "labels_"):
            del m.labels_


def spectral_sweep(
    X: Any,
    k_values: Any,
    *,
    n_landmarks: int = 300,
    gamma: float | None = None,
    kmeans_rows: int = 50_000,
    n_init: int = 3,
    memory: str | int | None = None,
    block_rows: int | None = None,
    random_state: Any = None,
) -> dict[int, NystromSpectralClustering]:
    """One fitted :class:`NystromSpectralClustering` per ``k``, sharing one sample, one landmark
    embedding (as wide as the largest ``k``) and its passes; only the final k-means is per ``k``.

    An int ``random_state`` is used as is, so ``spectral_sweep(X, ks, random_state=s)[k]`` has
    the same landmarks, embedding and k-means seed as ``NystromSpectralClustering(k,
    random_state=s, <same params>).fit(X)``; a ``RandomState`` or None gives one int drawn once
    (set as the models' ``random_state``).

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
        numpy, Zarr or Dask array.
    k_values : iterable of int
    n_landmarks, gamma, kmeans_rows, n_init, memory, block_rows
        As in :class:`NystromSpectralClustering`.
    random_state : int, RandomState instance or None

    Returns
    -------
    dict of int to NystromSpectralClustering
        Fitted models keyed by ``k``, in increasing ``k``.
    """
    ks, seed = sweep_plan(k_values, random_state)
    template = NystromSpectralClustering(ks[-1], n_landmarks=n_landmarks, gamma=gamma, kmeans_rows=kmeans_rows,
                                         n_init=n_init, memory=memory, block_rows=block_rows, random_state=seed)
    models = {k: copy.copy(template).set_params(n_clusters=k) for k in ks}
    _fit_models([models[ks[-1]]] + [models[k] for k in ks[:-1]], X)
    return models
