"""The nearest-centre kernels shared by k-means, its metrics, Ward's micro-clusters and the Gaussian
mixture's initialisation: rows shifted by a common point, centres prepared for one GEMM, every row's
nearest centre for several sets of centres at once, sub-chunk by sub-chunk.

The same partition of a block into sub-chunks (:func:`sub_rows`) everywhere makes single fits,
sweeps and ``predict`` bit-identical.
"""

from __future__ import annotations

import numpy as np

from streamclust.estimators.blockwise import float_dtype

__all__ = ["sub_rows", "shifted", "prep_centers", "assign_many", "assign"]

#: Above this many clusters, per-cluster sums are taken by sorting rather than by a one-hot GEMM
#: (the two cost the same at about 96 clusters of 8,192 rows x 64 dims).
_ONEHOT_MAX_CLUSTERS = 96


def sub_rows(n_features: int) -> int:
    """Rows per sub-chunk of a block (about 2 MB of float32 rows, 256..8192).

    Every model is evaluated sub-chunk by sub-chunk, so the rows stay in cache
    while all models of a sweep use them.  Depends on ``n_features`` only:
    single fits, sweeps and ``predict`` partition a block identically and get
    bit-identical results.
    """
    return int(min(8192, max(256, (1 << 19) // max(1, n_features))))


def shifted(block: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x - shift)`` in the block's working dtype and its squared row norms."""
    cd = float_dtype(block.dtype)
    xs = np.asarray(block, dtype=cd) - shift.astype(cd)
    xx = np.einsum("ij,ij->i", xs, xs)
    return xs, xx


def prep_centers(centers: np.ndarray, shift: np.ndarray, cd: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Shifted centres in the working dtype, as ``(-2 c^T, ||c||^2)`` for the distance GEMM."""
    cs = (centers - shift.astype(cd).astype(np.float64)).astype(cd)
    cc = np.einsum("ij,ij->i", cs, cs)
    return np.ascontiguousarray((-2.0 * cs).T), cc  # scaling by -2 is exact


def assign_many(
    xs: np.ndarray, xx: np.ndarray, models: list, sums: list
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Nearest centre of every row of ``xs`` for several sets of centres.

    Parameters
    ----------
    xs : ndarray, shape (r, d)
        Shifted rows (working dtype).
    xx : ndarray, shape (r,)
        Their squared norms.
    models : list of ``(-2 c^T, ||c||^2)`` from :func:`prep_centers`
    sums : list of bool
        Whether to accumulate per-cluster sums for each model.

    Returns
    -------
    list of ``(labels int32 (r,), mind (r,), counts int64 (k,), sums float64 (k, d) or None)``
        ``mind`` is the squared distance to the nearest centre (>= 0); ``sums``
        are of the shifted rows.
    """
    r, d = xs.shape
    out = []
    for (_, cc), want in zip(models, sums):
        k = cc.shape[0]
        out.append(
            (
                np.empty(r, dtype=np.int32),
                np.empty(r, dtype=xs.dtype),
                np.zeros((k, d), dtype=np.float64) if want else None,
            )
        )
    step = sub_rows(d)
    for s in range(0, r, step):
        e = min(r, s + step)
        xsub = xs[s:e]
        xxs = xx[s:e]
        for (c2, cc), (labels, mind, tot) in zip(models, out):
            D = xsub @ c2
            D += cc
            lab = np.argmin(D, axis=1)
            labels[s:e] = lab
            mind[s:e] = np.take_along_axis(D, lab[:, None], axis=1)[:, 0] + xxs
            if tot is not None:
                tot += _cluster_sums(xsub, lab, cc.shape[0])
    result = []
    for (_, cc), (labels, mind, tot) in zip(models, out):
        np.maximum(mind, 0, out=mind)
        counts = np.bincount(labels, minlength=cc.shape[0]).astype(np.int64)
        result.append((labels, mind, counts, tot))
    return result


def _cluster_sums(rows: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of ``rows`` ((r, d), working dtype) by ``labels`` ((r,) in ``[0, k)``): ``(k, d)``.

    A one-hot GEMM for a few clusters; for more than :data:`_ONEHOT_MAX_CLUSTERS` (Ward's 1,000
    micro-clusters) the rows sorted by cluster and summed per run (``np.add.reduceat``), which does
    not build and multiply a ``(k, r)`` matrix of zeros (7x faster at k = 1,000).
    """
    if k <= _ONEHOT_MAX_CLUSTERS:
        onehot = np.zeros((k, rows.shape[0]), dtype=rows.dtype)
        onehot[labels, np.arange(rows.shape[0])] = 1.0
        return onehot @ rows
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.zeros((k, rows.shape[1]), dtype=rows.dtype)
    present = counts > 0
    out[present] = np.add.reduceat(rows[order], starts[present], axis=0)
    return out


def assign(xs: np.ndarray, xx: np.ndarray, c2: np.ndarray, cc: np.ndarray, *,
           sums: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`assign_many` for one set of centres ``(c2, cc)`` from :func:`prep_centers`.

    Returns ``(labels int32 (r,), squared distance to the nearest centre (r,), counts int64 (k,),
    sums float64 (k, d) or None)``.
    """
    return assign_many(xs, xx, [(c2, cc)], [sums])[0]
