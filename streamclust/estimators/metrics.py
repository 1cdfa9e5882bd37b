"""Exact full-data clustering metrics from per-cluster sufficient statistics.

:func:`cluster_metrics` and :func:`sweep_metrics` compute inertia,
Calinski-Harabasz and Davies-Bouldin over ALL rows in bounded memory with two
parallel passes over the blocks:

1. per cluster: count, mean and M2 (sum of squared deviations from the mean),
   per block in float64 and merged across blocks with Chan's parallel formula
   (numerically stable; no "sum of squares minus square of sum") ->
   within-cluster and between-cluster dispersion -> Calinski-Harabasz, inertia;
2. per cluster: the sum of Euclidean distances of members to their mean ->
   Davies-Bouldin.

:func:`sweep_metrics` shares both passes among all ``k``.
:func:`sampled_silhouette` is a silhouette estimate on a seeded row sample.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
from scipy.spatial.distance import cdist
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement

from streamclust.core.blocks import parse_memory
from streamclust.core.scheduler import computes_in_this_process
from streamclust.estimators.blockwise import (
    as_labels,
    check_data,
    check_finite,
    fold_blocks,
    resolve_block_rows,
    take_rows,
)
from streamclust.estimators.kernels import assign_many, prep_centers, shifted, sub_rows

__all__ = ["cluster_metrics", "labels_metrics", "sweep_metrics", "sampled_silhouette", "silhouette_sample",
           "silhouette_scores", "sweep_silhouettes"]


#: The CH pass keeps every row's nearest-centre labels for the DB pass when they take at most
#: 1/KEPT_LABELS_SHARE of the budget (416,314 rows x 14 k of a sweep: 5.8 MB; the labelling was
#: 1.8 s of a 3.3 s single-threaded sweep at 416,314 x 64).
KEPT_LABELS_SHARE = 8


# --------------------------------------------------------------------------- #
# Label sources: given labels (encoded 0..K-1) or nearest of given centres
# --------------------------------------------------------------------------- #
class _Source:
    """Where a row's cluster comes from: ``codes`` (encoded labels) or ``centers``."""

    def __init__(self, *, codes: np.ndarray | None = None, n_clusters: int = 0,
                 centers: np.ndarray | None = None) -> None:
        self.codes = codes
        self.centers = centers
        if centers is not None:
            self.centers = np.asarray(centers, dtype=np.float64)
            self.shift = self.centers.mean(axis=0)
            self.n_clusters = self.centers.shape[0]
        else:
            self.shift = None
            self.n_clusters = int(n_clusters)


def _block_labels(sources: list[_Source], block: np.ndarray, rows: slice) -> list[np.ndarray]:
    """Cluster of every row of the block for every source (nearest centres in one sweep)."""
    out: list = [None] * len(sources)
    by_shift: dict = {}
    for i, src in enumerate(sources):
        if src.codes is not None:
            out[i] = src.codes[rows]
        else:
            by_shift.setdefault(src.shift.tobytes(), []).append(i)
    for members in by_shift.values():
        shift = sources[members[0]].shift
        xs, xx = shifted(block, shift)
        prepped = [prep_centers(sources[i].centers, shift, xs.dtype) for i in members]
        for i, res in zip(members, assign_many(xs, xx, prepped, [False] * len(members))):
            out[i] = res[0]
    return out


def _add_sums(tot: np.ndarray, x64: np.ndarray, lab: np.ndarray) -> None:
    """``tot[j] += sum of rows of x64 labelled j`` (float64, one-hot product)."""
    K, r = tot.shape[0], lab.shape[0]
    if K * r <= 1 << 21:
        onehot = np.zeros((K, r))
        onehot[lab, np.arange(r)] = 1.0
        tot += onehot @ x64
    else:
        tot += sp.csr_matrix((np.ones(r), (lab, np.arange(r))), shape=(K, r)) @ x64


def _sub_slices(r: int, d: int) -> list[slice]:
    step = sub_rows(d)
    return [slice(s, min(r, s + step)) for s in range(0, r, step)]


class _Pass1:
    """Per block and source: ``(counts, means, m2)`` of every cluster.

    Rows are converted to float64 one cache-sized sub-chunk at a time.  ``m2`` (the squared
    deviations from the block's cluster means) is ``sum |x|^2 - count |mean|^2`` per cluster: the
    rows' squared norms are computed once and shared by every labelling, instead of a
    ``rows x d`` difference per labelling.  With ``keep`` (``(n_sources, n)``, filled in this
    process's threads) every row's labels are kept for the second pass.
    """

    def __init__(self, sources: list[_Source], keep: np.ndarray | None = None) -> None:
        self.sources = sources
        self.keep = keep

    def __call__(self, block: np.ndarray, rows: slice) -> list:
        r, d = block.shape
        labels = _block_labels(self.sources, block, rows)
        if self.keep is not None:
            for kept, lab in zip(self.keep, labels):
                kept[rows] = lab
        sums = [np.zeros((s.n_clusters, d)) for s in self.sources]
        squares = [np.zeros(s.n_clusters) for s in self.sources]
        for sl in _sub_slices(r, d):
            x64 = np.asarray(block[sl], dtype=np.float64)
            sq = np.einsum("ij,ij->i", x64, x64)
            for lab, tot, sqs in zip(labels, sums, squares):
                _add_sums(tot, x64, lab[sl])
                sqs += np.bincount(lab[sl], weights=sq, minlength=sqs.shape[0])
        out = []
        for src, lab, tot, sqs in zip(self.sources, labels, sums, squares):
            cnt = np.bincount(lab, minlength=src.n_clusters).astype(np.int64)
            nz = cnt > 0
            tot[nz] /= cnt[nz, None]
            m2 = np.maximum(sqs - cnt * np.einsum("ij,ij->i", tot, tot), 0.0)
            out.append((cnt, tot, m2))
        return out


def _merge1(a: list, b: list) -> list:
    out = []
    for (na, ma, va), (nb, mb, vb) in zip(a, b):
        n = na + nb
        w = np.divide(nb, n, out=np.zeros(n.shape), where=n > 0)
        delta = mb - ma
        mean = ma + delta * w[:, None]
        cross = np.divide(na * nb, n, out=np.zeros(n.shape), where=n > 0)
        m2 = va + vb + np.einsum("ij,ij->i", delta, delta) * cross
        out.append((n, mean, m2))
    return out


class _Pass2:
    """Per block and source: sum of distances of members to their cluster mean.

    ``|x - m|^2 = |x|^2 - 2 x.m + |m|^2`` with ``x.m`` for the means of every labelling from one
    GEMM per sub-chunk (what scikit-learn's ``euclidean_distances`` computes too), instead of a
    ``rows x d`` difference per labelling.
    """

    def __init__(self, sources: list[_Source], means: list[np.ndarray]) -> None:
        self.sources = sources
        self.every = np.concatenate(means)  # every labelling's means, (sum of k, d)
        self.norms = np.einsum("ij,ij->i", self.every, self.every)
        self.offsets = np.cumsum([0] + [m.shape[0] for m in means[:-1]])  # each labelling's first row

    def __call__(self, block: np.ndarray, rows: slice) -> list:
        r, d = block.shape
        labels = _block_labels(self.sources, block, rows)
        out = [np.zeros(s.n_clusters) for s in self.sources]
        for sl in _sub_slices(r, d):
            x64 = np.asarray(block[sl], dtype=np.float64)
            sq = np.einsum("ij,ij->i", x64, x64)
            dots = x64 @ self.every.T
            at = np.arange(x64.shape[0])
            for lab, off, acc in zip(labels, self.offsets, out):
                ls = lab[sl]
                col = off + ls
                d2 = sq - 2.0 * dots[at, col] + self.norms[col]
                dist = np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2)
                acc += np.bincount(ls, weights=dist, minlength=acc.shape[0])
        return out


def _merge2(a: list, b: list) -> list:
    return [p + q for p, q in zip(a, b)]


def _finish(src: _Source, stats: tuple, intra_sum: np.ndarray, n: int) -> dict:
    cnt, means, m2 = stats
    nz = cnt > 0
    k = int(nz.sum())
    if not 1 < k < n:
        raise ValueError(
            f"Number of labels is {k}. Valid values are 2 to n_samples - 1 (inclusive)"
        )
    c, mu, w = cnt[nz].astype(np.float64), means[nz], m2[nz]
    overall = (c[:, None] * mu).sum(axis=0) / n
    extra = float((c * ((mu - overall) ** 2).sum(axis=1)).sum())
    intra = float(w.sum())
    ch = 1.0 if intra == 0.0 else extra * (n - k) / (intra * (k - 1.0))
    intra_d = intra_sum[nz] / c
    cdists = cdist(mu, mu)
    if np.allclose(intra_d, 0) or np.allclose(cdists, 0):
        db = 0.0
    else:
        cdists[cdists == 0] = np.inf
        db = float(np.mean(np.max((intra_d[:, None] + intra_d[None, :]) / cdists, axis=1)))
    inertia = intra
    if src.centers is not None:
        inertia += float((c * ((mu - src.centers[nz]) ** 2).sum(axis=1)).sum())
    return {
        "n_samples": int(n),
        "n_clusters": k,
        "inertia": inertia,
        "calinski_harabasz": float(ch),
        "davies_bouldin": db,
        "sizes": cnt.copy(),
    }


def _kept_labels(sources: list[_Source], n: int, memory: Any) -> np.ndarray | None:
    """Room for every row's label under every source, ``(n_sources, n)`` (only the rows of centre
    sources are filled), when there is a centre source, the labels take at most
    ``1 / KEPT_LABELS_SHARE`` of the budget and the passes run in this process."""
    if all(s.codes is not None for s in sources):
        return None
    dtype = np.min_scalar_type(max(s.n_clusters for s in sources))
    if len(sources) * n * dtype.itemsize > parse_memory(memory) // KEPT_LABELS_SHARE or not computes_in_this_process():
        return None
    return np.empty((len(sources), n), dtype)


def _run(X: Any, sources: list[_Source], memory: Any, block_rows: Any) -> list[dict]:
    n, d = int(X.shape[0]), int(X.shape[1])
    br = resolve_block_rows(d, memory, block_rows, X)
    nbytes = sum(s.n_clusters * (d + 2) * 8 for s in sources)
    keep = _kept_labels(sources, n, memory)
    stats = fold_blocks(_Pass1(sources, keep), X, br, _merge1, result_nbytes=nbytes, memory=memory)
    for _, mu, m2 in stats:
        check_finite(mu)
        check_finite(m2)
    # the second pass reads the labels the first one found instead of finding them again
    second = sources if keep is None else [
        src if src.codes is not None else _Source(codes=kept, n_clusters=src.n_clusters)
        for src, kept in zip(sources, keep)
    ]
    intra = fold_blocks(
        _Pass2(second, [s[1] for s in stats]), X, br, _merge2,
        result_nbytes=sum(s.n_clusters * 8 for s in sources), memory=memory,
    )
    return [_finish(src, st, it, n) for src, st, it in zip(sources, stats, intra)]


def _source_from(labels: Any, centers: Any, n: int, d: int) -> tuple[_Source, np.ndarray | None]:
    if (labels is None) == (centers is None):
        raise ValueError("Give exactly one of labels= (one per row of X) or centers=.")
    if centers is not None:
        centers = np.asarray(centers, dtype=np.float64)
        if centers.ndim != 2 or centers.shape[1] != d:
            raise ValueError(
                f"centers has shape {centers.shape}; it should be (n_clusters, {d}) for X with {d} features."
            )
        return _Source(centers=centers), None
    lab = as_labels(labels, n)
    uniq, codes = np.unique(lab, return_inverse=True)
    return _Source(codes=codes.astype(np.int32).ravel(), n_clusters=len(uniq)), uniq


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def cluster_metrics(
    X: Any,
    labels: Any = None,
    *,
    centers: Any = None,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> dict:
    """Exact inertia, Calinski-Harabasz and Davies-Bouldin over all rows of ``X``.

    Two parallel passes over the blocks (see the module docstring); memory is
    the blocks plus ``O(n_clusters x n_features)``.  Equals
    :func:`sklearn.metrics.calinski_harabasz_score` and
    :func:`sklearn.metrics.davies_bouldin_score` on the same labels.

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
        numpy, Zarr or Dask array.
    labels : array-like of shape (n_samples,), optional
        Cluster of every row (any integer values, e.g. -1 for noise counts as a
        cluster, as in scikit-learn).  Dask labels are computed into memory
        (``n`` integers).
    centers : ndarray of shape (n_clusters, n_features), optional
        Instead of ``labels``: every row belongs to its nearest centre (computed
        per block, never stored); ``inertia`` is then the sum of squared
        distances to those centres.  Centres without members are left out of
        ``n_clusters`` (as scikit-learn would not see them in the labels).
    memory : str or int, optional
        Memory budget of a pass.
    block_rows : int, optional
        Rows per block.

    Returns
    -------
    dict
        ``n_samples``, ``n_clusters`` (non-empty clusters), ``inertia`` (with
        labels: sum of squared distances to the cluster means),
        ``calinski_harabasz``, ``davies_bouldin``, ``sizes`` (ndarray of
        members per cluster: per sorted label value, or per centre) and, with
        ``labels``, ``labels`` (the sorted label values).

    Raises
    ------
    ValueError
        If there are fewer than 2 non-empty clusters or as many as rows.
    """
    X, _ = check_data(X)
    n, d = int(X.shape[0]), int(X.shape[1])
    src, uniq = _source_from(labels, centers, n, d)
    out = _run(X, [src], memory, block_rows)[0]
    if uniq is not None:
        out["labels"] = uniq
    return out


def labels_metrics(
    X: Any,
    labelings: list[Any],
    *,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> list[dict | None]:
    """:func:`cluster_metrics` of several labellings of the same rows with the two passes shared.

    Each block is read twice in all (not twice per labelling); per block, the statistics of every
    labelling are taken.  Memory: the labellings' cluster codes together (``4 n`` bytes each) plus
    ``O(sum of n_clusters x n_features)``.

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
    labelings : list of array-like, each of shape (n_samples,)
        As ``labels`` of :func:`cluster_metrics`.
    memory, block_rows
        As in :func:`cluster_metrics`.

    Returns
    -------
    list of dict or None
        Per labelling, :func:`cluster_metrics`' dict, or None when it has fewer than 2 clusters or
        as many as rows (where :func:`cluster_metrics` raises).
    """
    X, _ = check_data(X)
    n, d = int(X.shape[0]), int(X.shape[1])
    parsed = [_source_from(lab, None, n, d) for lab in labelings]
    valid = [i for i, (_, uniq) in enumerate(parsed) if uniq is not None and 1 < len(uniq) < n]
    outs: list[dict | None] = [None] * len(parsed)
    if valid:
        for i, out in zip(valid, _run(X, [parsed[i][0] for i in valid], memory, block_rows)):
            out["labels"] = parsed[i][1]
            outs[i] = out
    return outs


def sweep_metrics(
    X: Any,
    centers_by_k: dict,
    *,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> dict:
    """:func:`cluster_metrics` for many sets of centres with the two passes shared.

    Each block is read twice in total (not twice per ``k``); per block, the
    nearest centre of every row is computed for each set.

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
    centers_by_k : dict of key to ndarray of shape (k, n_features)
        E.g. ``{k: model.cluster_centers_ for k, model in kmeans_sweep(...).items()}``.
    memory : str or int, optional
    block_rows : int, optional

    Returns
    -------
    dict of key to dict
        The :func:`cluster_metrics` dict of every key.
    """
    X, _ = check_data(X)
    n, d = int(X.shape[0]), int(X.shape[1])
    keys = list(centers_by_k)
    if not keys:
        raise ValueError("centers_by_k is empty; give at least one set of centres.")
    sources = [_source_from(None, centers_by_k[key], n, d)[0] for key in keys]
    return dict(zip(keys, _run(X, sources, memory, block_rows)))


def silhouette_sample(
    X: Any,
    n_samples: int = 10_000,
    *,
    random_state: Any = None,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The seeded rows :func:`sampled_silhouette` estimates on, read in one block-wise pass.

    Reading them once and passing them as ``X`` (with ``n_samples=len(rows)``) to several
    :func:`sampled_silhouette` calls gives the same values as calling it on ``X`` each
    time, without re-reading the array (e.g. one sample for every k of a sweep).

    Parameters
    ----------
    X : array-like, shape (n_samples_total, n_features)
    n_samples : int, default=10000
        Sample size (all rows if there are fewer).
    random_state : int, RandomState instance or None
    memory, block_rows
        Block sizing of the pass.

    Returns
    -------
    idx : ndarray of int, shape (m,)
        Sorted row numbers of the sample.
    rows : ndarray, shape (m, n_features)
        Those rows, in ``X``'s dtype.
    """
    X, _ = check_data(X)
    n, d = int(X.shape[0]), int(X.shape[1])
    rng = check_random_state(random_state)
    m = min(int(n_samples), n)
    idx = np.arange(n) if m >= n else np.sort(sample_without_replacement(n, m, random_state=rng))
    br = resolve_block_rows(d, memory, block_rows, X)
    return idx, np.asarray(take_rows(X, idx, br, memory=memory))


def silhouette_scores(rows: np.ndarray, labelings: list[np.ndarray], *, memory: str | int | None = None) -> list[float]:
    """Silhouette coefficients of several labellings of the same rows, sharing one distance pass.

    Equals :func:`sklearn.metrics.silhouette_score` (Euclidean) of each labelling up to round-off,
    but computes the ``(m, m)`` distances once for all of them (half of them: they are symmetric, see
    :func:`_distance_sums`): each tile of distances is multiplied by the stacked one-hot matrix of
    every labelling (``(m, sum of cluster counts)``), which gives every row's summed distance to every
    cluster of every labelling.  A k-means sweep's 14 silhouettes cost less than one scikit-learn call.

    Parameters
    ----------
    rows : ndarray, shape (m, d)
        The sample (float64 is used throughout).
    labelings : list of ndarray of int, each shape (m,)
        One label per row; the labels present define the clusters (as scikit-learn's
        ``LabelEncoder`` does), noise labels (-1) included.
    memory : str or int, optional
        Bounds the distance tile to a 16th of the budget (8-64 MiB).

    Returns
    -------
    list of float
        One coefficient per labelling, in order.

    Raises
    ------
    ValueError
        A labelling with fewer than 2 or more than ``m - 1`` distinct labels, as scikit-learn does.
    """
    X = np.asarray(rows, dtype=np.float64)
    m = X.shape[0]
    codes, sizes, offsets = [], [], [0]
    for lab in labelings:
        lab = np.asarray(lab)
        if lab.shape != (m,):
            raise ValueError(f"a labelling has shape {lab.shape}; it should be ({m},).")
        _, code = np.unique(lab, return_inverse=True)
        n_labels = int(code.max()) + 1 if m else 0
        if not 1 < n_labels < m:
            raise ValueError(f"Number of labels is {n_labels}. Valid values are 2 to n_samples - 1 (inclusive)")
        codes.append(code)
        sizes.append(np.bincount(code, minlength=n_labels).astype(np.float64))
        offsets.append(offsets[-1] + n_labels)
    onehot = np.zeros((m, offsets[-1]))
    for code, off in zip(codes, offsets):
        onehot[np.arange(m), off + code] = 1.0
    sums = _distance_sums(X, onehot, memory)  # every row's summed distance to every cluster of every labelling
    totals = np.zeros(len(codes))
    at = np.arange(m)
    for j, (code, size, off) in enumerate(zip(codes, sizes, offsets)):
        per = sums[:, off:off + len(size)]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = per[at, code] / (size[code] - 1.0)
            mean = per / size
        mean[at, code] = np.inf
        b = mean.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            sil = (b - a) / np.maximum(a, b)
        totals[j] = np.nan_to_num(sil).sum()
    return [float(t / m) for t in totals]


def _distance_sums(X: np.ndarray, onehot: np.ndarray, memory: str | int | None) -> np.ndarray:
    """``dist(X, X) @ onehot`` (Euclidean, float64, (m, c)) without holding the ``(m, m)`` distances.

    The distances are symmetric: the matrix is built tile by tile above the diagonal only (square
    tiles of at most a 16th of ``memory``, 8-64 MiB) and each off-diagonal tile serves both its rows
    and, transposed, its columns -- half the distance GEMMs and square roots of a row-block sweep.
    """
    m = X.shape[0]
    sq = np.einsum("ij,ij->i", X, X)
    chunk_mib = max(8, min(64, (parse_memory(memory) >> 20) // 16))
    tile = max(1, int(np.sqrt((chunk_mib << 20) / 8)))
    sums = np.zeros((m, onehot.shape[1]))
    for i in range(0, m, tile):
        rows = slice(i, min(m, i + tile))
        for j in range(i, m, tile):
            cols = slice(j, min(m, j + tile))
            d2 = X[rows] @ X[cols].T  # squared distances, built in place
            d2 *= -2.0
            d2 += sq[rows, None]
            d2 += sq[None, cols]
            np.maximum(d2, 0.0, out=d2)
            if i == j:
                np.fill_diagonal(d2, 0.0)
            dist = np.sqrt(d2, out=d2)
            sums[rows] += dist @ onehot[cols]
            if i != j:
                sums[cols] += dist.T @ onehot[rows]
    return sums


def sweep_silhouettes(rows: np.ndarray, centers: dict[int, np.ndarray], *,
                      memory: str | int | None = None) -> dict[int, float]:
    """Silhouette of the nearest-centre labelling of ``rows`` for every model of a sweep.

    The rows' labels of every ``k`` come from one nearest-centre sweep, and their silhouettes
    from one shared distance pass (:func:`silhouette_scores`); equals calling
    :func:`sampled_silhouette` ``(rows, centers=centers[k], n_samples=len(rows))`` for each k.

    Parameters
    ----------
    rows : ndarray, shape (m, d)
        The sample, e.g. from :func:`silhouette_sample`.
    centers : dict of int -> ndarray, shape (k, d)
        Centres per ``k``.
    memory : str or int, optional
        Bounds the distance blocks (see :func:`silhouette_scores`).

    Returns
    -------
    dict of int -> float
    """
    raw = np.asarray(rows)
    m, d = raw.shape
    ks = list(centers)
    sources = [_source_from(None, centers[kk], m, d)[0] for kk in ks]
    labels = _block_labels(sources, raw, slice(0, m))
    return dict(zip(ks, silhouette_scores(raw, labels, memory=memory)))


def sampled_silhouette(
    X: Any,
    labels: Any = None,
    *,
    centers: Any = None,
    n_samples: int = 10_000,
    random_state: Any = None,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> float:
    """Silhouette coefficient ESTIMATED on a seeded random sample of rows.

    The exact silhouette needs all pairwise distances (quadratic); this draws
    ``n_samples`` rows without replacement (one block-wise pass) and computes
    :func:`sklearn.metrics.silhouette_score` of them in float64 (with :func:`silhouette_scores`).  It is a
    sample estimate: its standard error shrinks like ``1 / sqrt(n_samples)``.

    Parameters
    ----------
    X : array-like, shape (n_samples_total, n_features)
    labels : array-like of shape (n_samples_total,), optional
    centers : ndarray of shape (n_clusters, n_features), optional
        Instead of ``labels``: nearest centre of every sampled row.
    n_samples : int, default=10000
        Sample size (all rows if there are fewer).
    random_state : int, RandomState instance or None
    memory, block_rows
        Block sizing of the sampling pass.

    Returns
    -------
    float
    """
    X, _ = check_data(X)
    n, d = int(X.shape[0]), int(X.shape[1])
    if (labels is None) == (centers is None):
        raise ValueError("Give exactly one of labels= (one per row of X) or centers=.")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise ValueError(f"n_samples={n_samples!r} should be an integer >= 2.")
    idx, raw = silhouette_sample(X, n_samples, random_state=random_state, memory=memory,
                                 block_rows=block_rows)
    rows = raw.astype(np.float64)
    if centers is not None:
        src, _ = _source_from(None, centers, n, d)
        lab = _block_labels([src], raw, slice(0, len(raw)))[0]
    elif isinstance(labels, da.Array):
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"labels has shape {labels.shape}; it should be ({n},).")
        lab = np.asarray(labels[idx].compute())
    else:
        lab = as_labels(labels, n)[idx]
    return silhouette_scores(rows, [lab], memory=memory)[0]
