"""Streaming k-means: exact Lloyd passes over row blocks, and k sweeps sharing passes.

:class:`StreamingKMeans` fits by k-means++ on a seeded row sample followed by
exact Lloyd iterations, each of which is ONE parallel pass over the blocks
(per-cluster counts and sums are accumulated per block and added up).
:func:`kmeans_sweep` fits one model per ``k`` with every pass serving all ``k``
and all starts.  ``partial_fit`` offers MiniBatchKMeans-style updates.

Distances use the expansion ``||x||^2 - 2 x.c + ||c||^2`` on rows shifted by a
fixed vector close to the data mean (the data mean for ``fit``, the first batch
mean for ``partial_fit``), with float32 GEMMs for float32 input; sums and
inertia are accumulated in float64.
"""

from __future__ import annotations

import hashlib
import numbers
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.cluster._kmeans import _kmeans_single_lloyd  # private, stable since 1.0; pinned in constraints.txt
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from streamclust.core.blocks import iter_blocks, parse_memory, read_rows
from streamclust.core.scheduler import active_client, one_blas_thread
from streamclust.estimators.blockwise import (
    check_finite,
    check_X,
    column_moments,
    float_dtype,
    fold_blocks,
    map_rows,
    merge_moments,
    resolve_block_rows,
    sweep_plan,
)
from streamclust.estimators.kernels import assign, assign_many, prep_centers, shifted

__all__ = ["StreamingKMeans", "kmeans_sweep", "kmeans_plusplus_prefix"]

_DONE, _ACTIVE, _EVAL = 0, 1, 2

#: Local trials per centre of the greedy k-means++ seeding (scikit-learn uses ``2 + log k``: 4 at
#: k = 15); fixed so that seedings of smaller k are prefixes of larger ones.
_SEEDING_TRIALS = 4

#: Threads refining the starts on the init sample (each single-threaded: results do not depend on it).
_REFINE_THREADS = 2

#: A fit reads lazy rows into memory once when they take at most 1/IN_MEMORY_SHARE of its budget.
IN_MEMORY_SHARE = 4

#: Inertias within this relative margin of the lowest count as equal and the earlier start
#: (or seeding) wins: two starts that reach the same optimum with their centres in another
#: order differ only by round-off (~1e-7 relative), which another BLAS kernel
#: (``OPENBLAS_CORETYPE``) or block size can flip, swapping the cluster numbers.
_INERTIA_TIE = 1e-6


class _SamplePass:
    """Pass 1 of ``fit``: per-feature moments (for the data mean and ``tol``) and the init sample."""

    def __init__(self, index: np.ndarray) -> None:
        self.index = index

    def __call__(self, block: np.ndarray, rows: slice) -> list:
        lo, hi = np.searchsorted(self.index, [rows.start, rows.stop])
        picked = np.asarray(block[self.index[lo:hi] - rows.start], dtype=np.float64)
        return column_moments(block) + [[picked]]


def _merge_sample(a: list, b: list) -> list:
    return merge_moments(a, b) + [a[3] + b[3]]


class _LloydPass:
    """One Lloyd pass for many runs: per run, counts/sums/inertia/farthest rows
    (``update`` runs) or inertia/counts (``eval`` runs), and labels on request."""

    def __init__(self, shift: np.ndarray, centers: list, modes: list, keep_labels: bool) -> None:
        self.shift = shift
        self.centers = centers
        self.modes = modes
        self.keep_labels = keep_labels

    def __call__(self, block: np.ndarray, rows: slice) -> list:
        xs, xx = shifted(block, self.shift)
        prepped = [prep_centers(c, self.shift, xs.dtype) for c in self.centers]
        assigned = assign_many(xs, xx, prepped, [m == _ACTIVE for m in self.modes])
        out = []
        for centers, mode, (labels, mind, counts, sums) in zip(self.centers, self.modes, assigned):
            res = {
                "counts": counts,
                "inertia": float(mind.sum(dtype=np.float64)),
                "labels": [labels] if self.keep_labels else None,
            }
            if mode == _ACTIVE:
                k = centers.shape[0]
                m = min(k, xs.shape[0])
                top = np.argpartition(mind, xs.shape[0] - m)[xs.shape[0] - m :]
                res["sums"] = sums
                res["far"] = _top_far(
                    mind[top].astype(np.float64),
                    top.astype(np.int64) + rows.start,
                    labels[top],
                    np.asarray(block[top], dtype=np.float64),
                    k,
                )
            out.append(res)
        return out


def _top_far(dist, idx, lab, rowsv, m):
    """Keep the ``m`` farthest candidates, ordered by distance (desc) then row (asc)."""
    order = np.lexsort((idx, -dist))[:m]
    return (dist[order], idx[order], lab[order], rowsv[order])


def _merge_lloyd(a: list, b: list) -> list:
    out = []
    for ra, rb in zip(a, b):
        r = {
            "counts": ra["counts"] + rb["counts"],
            "inertia": ra["inertia"] + rb["inertia"],
            "labels": (ra["labels"] + rb["labels"]) if ra["labels"] is not None else None,
        }
        if "sums" in ra:
            r["sums"] = ra["sums"] + rb["sums"]
            fa, fb = ra["far"], rb["far"]
            r["far"] = _top_far(*(np.concatenate([p, q]) for p, q in zip(fa, fb)), len(ra["counts"]))
        out.append(r)
    return out


class _Score:
    """Per-block squared distance sum to the nearest centre."""

    def __init__(self, shift: np.ndarray, centers: np.ndarray) -> None:
        self.shift = shift
        self.centers = centers

    def __call__(self, block: np.ndarray, rows: slice) -> float:
        xs, xx = shifted(block, self.shift)
        cs, cc = prep_centers(self.centers, self.shift, xs.dtype)
        return float(assign(xs, xx, cs, cc)[1].sum(dtype=np.float64))


class _Predict:
    """Per-block labels (``what="labels"``) or distances (``what="distances"``)."""

    def __init__(self, shift: np.ndarray, centers: np.ndarray, what: str) -> None:
        self.shift = shift
        self.centers = centers
        self.what = what

    def __call__(self, block: np.ndarray) -> np.ndarray:
        xs, xx = shifted(block, self.shift)
        cs, cc = prep_centers(self.centers, self.shift, xs.dtype)
        if self.what == "labels":
            return assign(xs, xx, cs, cc)[0]
        D = xs @ cs
        D += cc
        D += xx[:, None]
        np.maximum(D, 0, out=D)
        return np.sqrt(D, out=D)


# --------------------------------------------------------------------------- #
# Fitting many (k, start) runs with shared passes
# --------------------------------------------------------------------------- #
class _Run:
    __slots__ = ("model", "k", "centers", "status", "n_iter", "inertia", "labels", "counts")

    def __init__(self, model: int, centers: np.ndarray) -> None:
        self.model = model
        self.k = centers.shape[0]
        self.centers = centers
        self.status = _ACTIVE
        self.n_iter = 0
        self.inertia = np.inf
        self.labels = None
        self.counts = None


def _relocate_empty(counts, sums, far, shift_c):
    """Re-seed empty clusters with the farthest rows seen (deterministic order).

    Each far row leaves its cluster (if that keeps it non-empty) and becomes the
    centre of an empty one, as scikit-learn's Lloyd does.  ``sums`` are of the
    shifted rows.
    """
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return counts, sums
    counts = counts.copy()
    sums = sums.copy()
    dist, _, lab, rowsv = far
    c = 0
    for j in empty:
        while c < len(dist) and (counts[lab[c]] <= 1 or dist[c] <= 0):
            c += 1
        if c >= len(dist):
            break
        row = rowsv[c] - shift_c
        counts[lab[c]] -= 1
        sums[lab[c]] -= row
        counts[j] = 1
        sums[j] = row
        c += 1
    return counts, sums


def _lloyd_on_sample(xs: np.ndarray, centers: np.ndarray, max_iter: int, tol_abs: float) -> tuple[np.ndarray, float]:
    """Lloyd iterations on the in-memory init sample (shifted rows, working dtype) from ``centers``:
    scikit-learn's own single-run Lloyd (its chunked Cython kernel on one thread: 1.7x faster than
    the block kernel here, which the full-data passes keep for their bit-identical results).

    Brings each start close to its local optimum before the full-data passes, which then only
    polish it (far fewer passes over the data).  Returns the centres (float64, (k, d)) and the
    sample inertia.
    """
    weights = np.ones(xs.shape[0], dtype=xs.dtype)
    _, inertia, fitted, _ = _kmeans_single_lloyd(xs, weights, np.asarray(centers, dtype=xs.dtype),
                                                 max_iter=max_iter, tol=tol_abs, n_threads=1)
    return np.asarray(fitted, dtype=np.float64), float(inertia)


def kmeans_plusplus_prefix(xs: np.ndarray, n_clusters: int, rng: np.random.Generator, *,
                           n_trials: int = _SEEDING_TRIALS) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's greedy variant) of ``xs``.

    The number of local trials per centre is fixed (``n_trials``, not ``2 + log k``), so the first
    ``j`` centres of a seeding of ``n_clusters`` are exactly the seeding of ``j`` clusters from a
    generator in the same state: a k sweep seeds once with the largest k and every smaller k takes
    a prefix.

    Parameters
    ----------
    xs : ndarray of float64, shape (n, d)
    n_clusters : int
    rng : numpy Generator
    n_trials : int

    Returns
    -------
    ndarray of float64, shape (n_clusters, d)
    """
    n = xs.shape[0]
    xx = np.einsum("ij,ij->i", xs, xs)
    chosen = np.empty(n_clusters, dtype=np.int64)
    chosen[0] = rng.integers(n)
    closest = np.maximum(xx - 2.0 * (xs @ xs[chosen[0]]) + xx[chosen[0]], 0.0)
    potential = float(closest.sum())
    for c in range(1, n_clusters):
        if potential > 0:
            cand = np.searchsorted(np.cumsum(closest), rng.random(n_trials) * potential)
            cand = np.minimum(cand, n - 1)
        else:  # every row is already a centre
            cand = rng.integers(n, size=n_trials)
        dist = np.maximum(xx[cand, None] - 2.0 * (xs[cand] @ xs.T) + xx[None, :], 0.0)
        np.minimum(dist, closest, out=dist)
        pots = dist.sum(axis=1)
        best = int(np.argmin(pots))
        chosen[c], closest, potential = cand[best], dist[best], float(pots[best])
    return xs[chosen].copy()


def _refine_starts(models: list[StreamingKMeans], plans: list, sample: np.ndarray, union: np.ndarray,
                   shift_c: np.ndarray, cd: np.dtype, tol_abs: list[float]) -> list[_Run]:
    """The starting centres of every start of every model: its ``n_seedings`` seedings
    (:func:`kmeans_plusplus_prefix`, one per ``(seed, candidate)`` generator) each refined by Lloyd on
    the model's in-memory init sample, the lowest sample inertia kept per start.

    Seedings are shared: models with the same init sample and seed (a sweep with an int seed) seed
    once with their largest ``k`` and each takes its prefix (and its first ``n_seedings``), so results
    equal single fits.  The seedings and refinements are independent single-threaded tasks run on
    two threads (BLAS and scikit-learn's Lloyd release the GIL); results do not depend on the order
    they finish in.

    Returns one :class:`_Run` per (model, start), in model then start order.
    """
    samples: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # the sample, float64 and working dtype
    largest: dict[tuple[bytes, int], tuple[int, int]] = {}  # (sample, seed) -> (largest k, most seedings)
    keys = []
    for m, (idx, seeds) in zip(models, plans):
        key = hashlib.sha1(idx.tobytes()).digest()
        if key not in samples:
            xs64 = sample[np.searchsorted(union, idx)] - shift_c
            samples[key] = (xs64, np.ascontiguousarray(xs64, dtype=cd))
        keys.append(key)
        for seed in seeds:
            k, count = largest.get((key, int(seed)), (0, 0))
            largest[key, int(seed)] = (max(k, m.n_clusters), max(count, m.n_seedings))

    def seeding(task: tuple[bytes, int, int]) -> np.ndarray:
        key, seed, c = task
        return kmeans_plusplus_prefix(samples[key][0], largest[key, seed][0], np.random.default_rng((seed, c)))

    def refine(task: tuple[int, int]) -> np.ndarray:
        mi, seed = task
        m = models[mi]
        xs = samples[keys[mi]][1]
        best, best_inertia = None, np.inf
        for c in range(m.n_seedings):
            c0 = seedings[keys[mi], seed, c][: m.n_clusters]
            centers, inertia = _lloyd_on_sample(xs, c0, m.max_iter, tol_abs[mi])
            if inertia < best_inertia * (1 - _INERTIA_TIE):
                best, best_inertia = centers, inertia
        return best + shift_c

    seed_tasks = [(key, seed, c) for (key, seed), (_, count) in largest.items() for c in range(count)]
    tasks = [(mi, int(seed)) for mi, (_, seeds) in enumerate(plans) for seed in seeds]
    # small GEMMs: one BLAS thread each (OpenBLAS threads spin and contend on 2 busy cores)
    with one_blas_thread(), ThreadPoolExecutor(_REFINE_THREADS) as pool:
        seedings = dict(zip(seed_tasks, pool.map(seeding, seed_tasks)))
        starts = list(pool.map(refine, tasks))
    return [_Run(mi, centers) for (mi, _), centers in zip(tasks, starts)]


def _fit_lloyd(models: list[StreamingKMeans], X: Any) -> None:
    """Fit every model of ``models`` (same data, same block parameters) with shared passes."""
    head = models[0]
    X, lazy = check_X(head, X, reset=True)
    n, d = int(X.shape[0]), int(X.shape[1])
    for m in models:
        m._check_params()
        m.n_features_in_ = d
        if hasattr(head, "feature_names_in_"):
            m.feature_names_in_ = head.feature_names_in_
        elif m is not head and hasattr(m, "feature_names_in_"):
            del m.feature_names_in_
        if n < m.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={m.n_clusters}.")
    br = resolve_block_rows(d, head.memory, head.block_rows, X)
    budget = parse_memory(head.memory)
    held = int(n) * d * np.dtype(X.dtype).itemsize
    if lazy and held <= budget // IN_MEMORY_SHARE and active_client() is None:
        # the rows fit a quarter of the budget: read them once, and every pass (often 20 at 416,314
        # rows, most of them for a few runs still converging) slices memory instead of reading and
        # decompressing the store again.  Same blocks, same results; labels still not kept.
        X = read_rows(X, slice(0, n))
        budget -= held

    # seeds and init samples, drawn per model from its own generator
    plans = []
    for m in models:
        rng = check_random_state(m.random_state)
        size = m._init_size(n, d, budget)
        idx = np.arange(n) if size >= n else np.sort(sample_without_replacement(n, size, random_state=rng))
        seeds = rng.randint(np.iinfo(np.int32).max, size=m.n_init)
        m._random_state = rng
        plans.append((idx, seeds))
    union = np.unique(np.concatenate([p[0] for p in plans])) if plans else np.empty(0, np.int64)

    # pass 1: data moments (mean = shift, variance -> tol) and the sample rows
    n_tot, mean, m2, parts = fold_blocks(_SamplePass(union), X, br, _merge_sample)
    check_finite(mean)
    check_finite(m2)
    if n_tot != n:
        raise ValueError(f"read {n_tot} rows from X of shape {X.shape}; the array changed during the fit.")
    sample = np.concatenate(parts, axis=0)
    cd = float_dtype(X.dtype)
    shift_c = mean.astype(cd).astype(np.float64)  # the shift actually applied to blocks
    mean_var = float(np.mean(m2 / n_tot))

    tol_abs = [m.tol * mean_var for m in models]
    runs = _refine_starts(models, plans, sample, union, shift_c, cd, tol_abs)

    # Lloyd passes: each serves every run still active or awaiting its final evaluation
    while True:
        live = [r for r in runs if r.status != _DONE]
        if not live:
            break
        f = _LloydPass(mean, [r.centers for r in live], [r.status for r in live], not lazy)
        nbytes = sum(r.k * d * 16 + 64 for r in live)
        res = fold_blocks(f, X, br, _merge_lloyd, result_nbytes=nbytes, memory=budget)
        for r, s in zip(live, res):
            labels = np.concatenate(s["labels"]) if s["labels"] is not None else None
            if r.status == _EVAL:
                r.inertia, r.counts, r.labels, r.status = s["inertia"], s["counts"], labels, _DONE
                continue
            counts, sums = _relocate_empty(s["counts"], s["sums"], s["far"], shift_c)
            new = r.centers.copy()
            nz = counts > 0
            new[nz] = sums[nz] / counts[nz, None] + shift_c
            shift_tot = float(((new - r.centers) ** 2).sum())
            r.n_iter += 1
            if shift_tot == 0.0:
                # strict convergence: this pass's labels/inertia are those of the final centres
                r.inertia, r.counts, r.labels, r.status = s["inertia"], s["counts"], labels, _DONE
            else:
                r.centers = new
                model = models[r.model]
                if shift_tot <= tol_abs[r.model] or r.n_iter >= model.max_iter:
                    r.status = _EVAL

    for mi, m in enumerate(models):
        mine = [r for r in runs if r.model == mi]
        lowest = min(r.inertia for r in mine)
        best = next(r for r in mine if r.inertia <= lowest * (1 + _INERTIA_TIE))
        m.cluster_centers_ = best.centers
        m.inertia_ = float(best.inertia)
        m.n_iter_ = int(best.n_iter)
        m._counts = best.counts.astype(np.float64)
        m.shift_ = mean.copy()
        if best.labels is not None:
            m.labels_ = best.labels
        elif hasattr(m, "labels_"):
            del m.labels_


# --------------------------------------------------------------------------- #
# StreamingKMeans
# --------------------------------------------------------------------------- #
class StreamingKMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """K-means over row blocks: exact Lloyd passes, several starts, bounded memory.

    ``fit`` draws a seeded sample of ``init_size`` rows (block-wise, in the
    first pass, which also measures the data mean and variance).  Each of the
    ``n_init`` starts takes ``n_seedings`` (3) greedy k-means++ seedings
    (:func:`kmeans_plusplus_prefix`) of that sample, refines each by
    Lloyd iterations on the in-memory sample and keeps the one of lowest sample
    inertia (cheap, and it makes bad local optima rarer and the full-data
    passes fewer); then come exact Lloyd iterations over all rows.  Every
    iteration is ONE parallel pass over the blocks
    (via :func:`streamclust.core.blocks.map_blocks_reduce`) accumulating
    per-cluster counts and sums for all starts at once.  A start stops when the
    squared centre shift is ``<= tol * mean(var(X))`` (scikit-learn's rule) or
    after ``max_iter`` iterations; its final inertia is then measured exactly
    over all rows in the next pass.  The start with the lowest full-data
    inertia is kept.  Empty clusters are re-seeded with the rows farthest from
    their centres (ordered by distance then row index: deterministic).

    Passes of ``fit``: 1 (moments + sample) + at most ``max_iter + 1``.

    ``partial_fit`` performs MiniBatchKMeans-style updates (per-centre counts
    ``_counts``, learning rate ``1 / count``) with each block of ``batch_rows``
    rows; its first call initialises with k-means++ on the first block.

    Parameters
    ----------
    n_clusters : int, default=8
    n_init : int, default=3
        Number of starts of ``fit``.
    n_seedings : int, default=3
        k-means++ seedings per start, each refined by Lloyd on the init sample; the one of lowest
        sample inertia starts the full passes (1: one seeding, e.g. for micro-clusters that only
        need to be compact).
    max_iter : int, default=20
        Maximum Lloyd iterations (passes) per start.
    tol : float, default=1e-4
        Convergence threshold on the total squared centre shift, relative to the
        mean per-feature variance of the data.
    init_size : int, optional
        Rows sampled for k-means++; default ``max(3 * n_clusters, min(n, 20000))``,
        capped so the float64 sample takes at most a quarter of ``memory``.
    batch_rows : int, optional
        Rows per mini-batch of ``partial_fit``; default: the block size.
    memory : str or int, optional
        Memory budget of one pass (e.g. ``"1GB"``); sizes the row blocks.
    block_rows : int, optional
        Rows per block; overrides the size derived from ``memory``.
    random_state : int, RandomState instance or None, default=None
        Seeds the init sample and the k-means++ of every start.  One generator
        is kept across ``partial_fit`` calls.

    Attributes
    ----------
    cluster_centers_ : ndarray of float64, shape (n_clusters, n_features)
    labels_ : ndarray of int32, shape (n_samples,)
        Only when ``fit`` got an in-memory (numpy-like) array: for Zarr/Dask
        input the ``n`` labels are not held; use :meth:`predict`, which is lazy.
    inertia_ : float
        Sum of squared distances of ALL rows to their nearest centre (exact,
        computed in a full pass with the final centres).
    n_iter_ : int
        Lloyd iterations of the kept start.
    n_features_in_ : int
    n_steps_ : int
        Mini-batch steps done by ``partial_fit``.
    shift_ : ndarray of float64, shape (n_features,)
        The point rows and centres are shifted by before the distance products (the mean of the
        first rows seen): labels are computed in the shifted frame, so a saved model keeps it to
        label new rows exactly as the fit did.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_init: int = 3,
        n_seedings: int = 3,
        max_iter: int = 20,
        tol: float = 1e-4,
        init_size: int | None = None,
        batch_rows: int | None = None,
        memory: str | int | None = None,
        block_rows: int | None = None,
        random_state: Any = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.n_seedings = n_seedings
        self.max_iter = max_iter
        self.tol = tol
        self.init_size = init_size
        self.batch_rows = batch_rows
        self.memory = memory
        self.block_rows = block_rows
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- parameters --------------------------------------------------------- #
    def _check_params(self) -> None:
        def _int(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{name}={v!r} should be an integer >= {low}.")

        _int("n_clusters", 1)
        _int("n_init", 1)
        _int("n_seedings", 1)
        _int("max_iter", 1)
        if isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real) or self.tol < 0:
            raise ValueError(f"tol={self.tol!r} should be a real number >= 0.")
        if self.init_size is not None:
            _int("init_size", 1)
            if self.init_size < self.n_clusters:
                raise ValueError(
                    f"init_size={self.init_size} should be >= n_clusters={self.n_clusters}."
                )
        if self.batch_rows is not None:
            _int("batch_rows", 1)

    def _init_size(self, n: int, d: int, budget: int) -> int:
        k = self.n_clusters
        if self.init_size is not None:
            return min(n, int(self.init_size))
        cap = max(3 * k, budget // (4 * 8 * max(1, d)))
        return int(min(n, max(3 * k, min(n, 20_000)), cap))

    def _reset(self) -> None:
        for attr in (
            "cluster_centers_",
            "labels_",
            "inertia_",
            "n_iter_",
            "n_steps_",
            "_counts",
            "shift_",
            "_random_state",
        ):
            if hasattr(self, attr):
                delattr(self, attr)

    # -- fitting ------------------------------------------------------------ #
    def fit(self, X: Any, y: Any = None) -> StreamingKMeans:
        """Fit by k-means++ on a sample, then exact streaming Lloyd passes.

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
        self._reset()
        _fit_lloyd([self], X)
        return self

    def partial_fit(self, X: Any, y: Any = None) -> StreamingKMeans:
        """Mini-batch k-means update with the rows of ``X`` (in ``batch_rows`` batches).

        The first call initialises the centres with k-means++ on the first batch
        (which needs at least ``n_clusters`` rows).  Each centre moves towards
        the mean of its new members with weight ``new / (old + new)`` (per-centre
        counts, as scikit-learn's MiniBatchKMeans).  Clears ``labels_`` and
        ``inertia_`` of a previous ``fit``.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        self
        """
        first = not hasattr(self, "cluster_centers_")
        self._check_params()
        X, _ = check_X(self, X, reset=first)
        d = X.shape[1]
        if first:
            self._random_state = check_random_state(self.random_state)
        self.n_steps_ = getattr(self, "n_steps_", 0)
        br = self.batch_rows or resolve_block_rows(d, self.memory, self.block_rows, X)
        k = self.n_clusters
        for _, block in iter_blocks(X, br):
            block = np.asarray(block)
            check_finite(block)
            if not hasattr(self, "cluster_centers_"):
                if block.shape[0] < k:
                    raise ValueError(f"n_samples={block.shape[0]} should be >= n_clusters={k}.")
                x64 = np.asarray(block, dtype=np.float64)
                self.shift_ = x64.mean(axis=0)
                cd = float_dtype(block.dtype)
                shift_c = self.shift_.astype(cd).astype(np.float64)
                seed = self._random_state.randint(np.iinfo(np.int32).max)
                centers = kmeans_plusplus_prefix(x64 - shift_c, k, np.random.default_rng(int(seed)))
                self.cluster_centers_ = centers + shift_c
                self._counts = np.zeros(k, dtype=np.float64)
            xs, xx = shifted(block, self.shift_)
            cs, cc = prep_centers(self.cluster_centers_, self.shift_, xs.dtype)
            _, _, counts, sums = assign(xs, xx, cs, cc, sums=True)
            shift_c = self.shift_.astype(xs.dtype).astype(np.float64)
            nz = counts > 0
            old = self._counts[nz]
            new_counts = old + counts[nz]
            C = self.cluster_centers_.copy()
            C[nz] = (C[nz] * old[:, None] + sums[nz] + counts[nz, None] * shift_c) / new_counts[:, None]
            self.cluster_centers_ = C
            self._counts[nz] = new_counts
            self.n_steps_ += 1
        for attr in ("labels_", "inertia_"):
            if hasattr(self, attr):
                delattr(self, attr)
        return self

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit, then return the label of every row.

        Returns
        -------
        ndarray of int32 (numpy input) or lazy dask.array.Array, shape (n_samples,)
        """
        self.fit(X)
        if hasattr(self, "labels_"):
            return self.labels_
        return self.predict(X)

    @property
    def _n_features_out(self) -> int:
        return self.cluster_centers_.shape[0]

    # -- inference ---------------------------------------------------------- #
    def _map(self, X: Any, what: str) -> Any:
        check_is_fitted(self, "cluster_centers_")
        X, lazy = check_X(self, X, reset=False)
        br = resolve_block_rows(X.shape[1], self.memory, self.block_rows, X)
        f = _Predict(self.shift_, self.cluster_centers_, what)
        if what == "labels":
            return map_rows(f, X, lazy, br, dtype=np.int32)
        return map_rows(f, X, lazy, br, dtype=float_dtype(X.dtype), n_cols=self.n_clusters)

    def predict(self, X: Any) -> Any:
        """Index of the nearest centre of every row.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray of int32 (in-memory input) or lazy dask.array.Array, shape (n_samples,)
        """
        return self._map(X, "labels")

    def transform(self, X: Any) -> Any:
        """Euclidean distance of every row to every centre.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray or lazy dask.array.Array, shape (n_samples, n_clusters)
            float32 for float32 input, float64 otherwise.
        """
        return self._map(X, "distances")

    def score(self, X: Any, y: Any = None) -> float:
        """Opposite of the inertia of ``X`` (one parallel pass).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        float
        """
        check_is_fitted(self, "cluster_centers_")
        X, _ = check_X(self, X, reset=False)
        br = resolve_block_rows(X.shape[1], self.memory, self.block_rows, X)
        total = fold_blocks(_Score(self.shift_, self.cluster_centers_), X, br, lambda a, b: a + b)
        return -float(total)


# --------------------------------------------------------------------------- #
# k sweep
# --------------------------------------------------------------------------- #
def kmeans_sweep(
    X: Any,
    k_values: Any,
    *,
    n_init: int = 3,
    max_iter: int = 20,
    tol: float = 1e-4,
    init_size: int | None = None,
    memory: str | int | None = None,
    block_rows: int | None = None,
    random_state: Any = None,
) -> dict[int, StreamingKMeans]:
    """Fit one :class:`StreamingKMeans` per ``k`` with passes shared by all ``k``.

    The first pass computes the data moments and reads the init samples of all
    models; then every pass over the blocks computes, per block, the
    assignments and statistics of every (k, start) still iterating (and the
    final inertia of those that just converged).  The number of passes is that
    of the slowest model, not the sum over ``k``.

    Seeds: an int ``random_state`` is used as is by every ``k``, so
    ``kmeans_sweep(X, ks, random_state=s)[k]`` equals
    ``StreamingKMeans(k, random_state=s, <same params>).fit(X)`` exactly.  A
    ``RandomState`` instance or ``None`` gives one int drawn once, used for all
    ``k``; each returned model has ``random_state`` set to the int used.

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
        numpy, Zarr or Dask array.
    k_values : iterable of int
        Numbers of clusters (duplicates are fitted once).
    n_init, max_iter, tol, init_size, memory, block_rows
        As in :class:`StreamingKMeans`.
    random_state : int, RandomState instance or None

    Returns
    -------
    dict of int to StreamingKMeans
        Fitted models keyed by ``k``, in increasing ``k``.
    """
    ks, seed = sweep_plan(k_values, random_state)
    models = {
        k: StreamingKMeans(
            k,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            init_size=init_size,
            memory=memory,
            block_rows=block_rows,
            random_state=seed,
        )
        for k in ks
    }
    _fit_lloyd(list(models.values()), X)
    return models
