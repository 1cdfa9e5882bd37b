""""One pass over the data" claims, asserted by counting the rows actually read."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streamclust.estimators import (
    StreamingKMeans,
    StreamingPCA,
    StreamingScaler,
    cluster_metrics,
    kmeans_sweep,
    sweep_metrics,
)


class CountingArray:
    """Read-only numpy-like 2-D array that counts the rows read through ``__getitem__``.

    It has ``shape``, ``dtype``, ``ndim`` and ``chunks`` (like a Zarr array),
    so :func:`streamclust.core.blocks.as_dask` wraps it with ``da.from_array`` and
    every block read goes through ``__getitem__``.
    """

    def __init__(self, data: np.ndarray, chunk_rows: int) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.chunks = (chunk_rows, data.shape[1])
        self.rows_read = 0
        self._lock = threading.Lock()

    def __getitem__(self, key):
        out = self._data[key]
        with self._lock:
            self.rows_read += out.shape[0] if out.ndim == 2 else 1
        return out

    @property
    def passes(self) -> float:
        return self.rows_read / self.shape[0]


def _data(n=4000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(5, d)) * 4
    return (centers[rng.integers(0, 5, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_pca_and_scaler_fit_read_each_row_once():
    X = _data()
    for est in (StreamingPCA(4, standardize=True), StreamingScaler()):
        counted = CountingArray(X, 500)
        est.fit(counted)
        assert counted.rows_read == X.shape[0], type(est).__name__
    counted = CountingArray(X, 500)
    StreamingPCA(4).fit(X).transform(counted).compute()
    assert counted.rows_read == X.shape[0]


@pytest.fixture
def kmeans_reads_the_store(monkeypatch):
    """Rows that fit a quarter of the budget are read into memory once (test below); these tests
    count the passes over the store, so the data must not fit."""
    from streamclust.estimators import kmeans

    monkeypatch.setattr(kmeans, "IN_MEMORY_SHARE", 10**12)


def test_kmeans_fit_pass_budget(kmeans_reads_the_store):
    X = _data()
    counted = CountingArray(X, 500)
    m = StreamingKMeans(5, n_init=3, max_iter=10, random_state=0).fit(counted)
    # 1 pass (moments + init sample) + n_iter Lloyd passes + final evaluation,
    # all starts sharing each pass
    assert counted.rows_read % X.shape[0] == 0
    assert counted.passes <= 1 + m.max_iter + 1


def test_kmeans_sweep_passes_do_not_scale_with_k(kmeans_reads_the_store):
    X = _data()
    few = CountingArray(X, 500)
    kmeans_sweep(few, [3], n_init=2, max_iter=6, random_state=0)
    many = CountingArray(X, 500)
    models = kmeans_sweep(many, range(2, 10), n_init=2, max_iter=6, random_state=0)
    assert many.rows_read % X.shape[0] == 0
    # 1 pass for moments + samples, then at most max_iter Lloyd passes and one
    # final evaluation pass, shared by the 8 values of k and their 2 starts
    # (fitting them one by one would read up to 8 x 8 passes)
    assert many.passes <= 1 + 6 + 1
    assert many.passes >= 1 + max(m.n_iter_ for m in models.values())
    assert few.passes <= many.passes


def test_kmeans_sweep_reads_rows_that_fit_once_with_the_same_result(monkeypatch):
    """Rows taking at most a quarter of the budget are read once, not once per Lloyd pass, and the
    models equal those of the pass-by-pass fit bit for bit (same blocks, same fold order)."""
    from streamclust.estimators import kmeans

    X = _data()
    once = CountingArray(X, 500)
    held = kmeans_sweep(once, range(2, 8), n_init=2, max_iter=20, random_state=0, memory="64MB")
    assert once.passes == 1
    assert not hasattr(held[3], "labels_")  # as for any lazy input: labels are not kept
    monkeypatch.setattr(kmeans, "IN_MEMORY_SHARE", 10**12)
    passes = CountingArray(X, 500)
    read = kmeans_sweep(passes, range(2, 8), n_init=2, max_iter=20, random_state=0, memory="64MB")
    assert passes.passes > 3
    for k in held:
        np.testing.assert_array_equal(held[k].cluster_centers_, read[k].cluster_centers_)
        assert held[k].inertia_ == read[k].inertia_


def test_metrics_read_each_row_twice():
    X = _data()
    labels = np.arange(X.shape[0]) % 4
    counted = CountingArray(X, 500)
    cluster_metrics(counted, labels)
    assert counted.passes == 2
    centers = {k: X[:k].astype(np.float64) for k in range(2, 9)}
    counted = CountingArray(X, 500)
    sweep_metrics(counted, centers)
    assert counted.passes == 2  # two passes shared by the 7 values of k
