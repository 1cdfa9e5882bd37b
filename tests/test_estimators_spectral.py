"""Nystrom spectral clustering: quality against planted labels, determinism, the k sweep sharing one
embedding, refusals, and memory that does not grow with the number of rows."""

from __future__ import annotations

import tracemalloc

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score

from streamclust.errors import InputError
from streamclust.estimators import NystromSpectralClustering, StreamingKMeans, spectral_sweep
from streamclust.estimators.spectral import rule_gamma


def _lift(X: np.ndarray, dims: int = 10, seed: int = 0) -> np.ndarray:
    """2-d points placed in ``dims`` dimensions: 0.05 noise on the extra axes, then a random rotation."""
    rng = np.random.default_rng(seed)
    Z = np.hstack([X, rng.normal(scale=0.05, size=(len(X), dims - X.shape[1]))])
    Q, _ = np.linalg.qr(rng.normal(size=(dims, dims)))
    return (Z @ Q).astype(np.float32)


@pytest.fixture(scope="module")
def moons():
    X, y = make_moons(3000, noise=0.05, random_state=0)
    return _lift(X), y


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(3000, n_features=10, centers=5, cluster_std=1.5, random_state=0)
    return X.astype(np.float32), y


def test_non_convex_clusters_spectral_separates_and_kmeans_does_not(moons):
    X, y = moons
    kmeans = adjusted_rand_score(y, StreamingKMeans(2, random_state=0).fit(X).labels_)
    aris = [adjusted_rand_score(y, NystromSpectralClustering(2, random_state=seed).fit(X).labels_)
            for seed in range(3)]
    print(f"two moons in 10-d: k-means ARI {kmeans:.3f}, spectral ARI {aris}")
    assert kmeans < 0.5
    assert min(aris) > 0.95


def test_blobs_as_well_as_kmeans_and_the_eigenvalues_show_the_clusters(blobs):
    X, y = blobs
    kmeans = adjusted_rand_score(y, StreamingKMeans(5, random_state=0).fit(X).labels_)
    est = NystromSpectralClustering(5, random_state=0).fit(da.from_array(X, chunks=700))
    spectral = adjusted_rand_score(y, est.predict(X))
    print(f"5 blobs in 10-d: k-means ARI {kmeans:.3f}, spectral ARI {spectral:.3f}, "
          f"eigenvalues {np.round(est.eigenvalues_, 3)}")
    assert spectral >= kmeans - 0.02 and spectral > 0.95
    assert np.all(est.eigenvalues_ > 0.9) and est.eigenvalues_[0] == pytest.approx(1.0, abs=1e-3)
    assert not hasattr(est, "labels_")  # lazy input: labels come from predict
    assert est.gamma_ == pytest.approx(rule_gamma(est.landmarks_ - est.landmarks_.mean(axis=0)))


def test_same_seed_same_model_and_labels_whatever_the_input_kind(blobs, tmp_path):
    X, _ = blobs
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, dtype="float32", chunks=(500, 10))
    z[:] = X
    a = NystromSpectralClustering(4, n_landmarks=120, random_state=3).fit(X)
    b = NystromSpectralClustering(4, n_landmarks=120, random_state=3).fit(z)
    for attr in ("landmarks_", "landmark_degrees_", "eigenvalues_"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-5)
    assert a.gamma_ == b.gamma_
    np.testing.assert_array_equal(a.labels_, b.predict(z).compute())
    again = NystromSpectralClustering(4, n_landmarks=120, random_state=3).fit(z)
    np.testing.assert_array_equal(again.landmarks_, b.landmarks_)
    np.testing.assert_array_equal(again.predict(z).compute(), b.predict(z).compute())
    other = NystromSpectralClustering(4, n_landmarks=120, random_state=4).fit(X)
    assert not np.array_equal(other.landmarks_, a.landmarks_)


def test_sweep_shares_one_embedding_and_equals_single_fits(moons):
    X, y = moons
    models = spectral_sweep(X, [4, 2, 3], n_landmarks=150, random_state=0)
    assert list(models) == [2, 3, 4]
    assert all(m.landmarks_ is models[4].landmarks_ for m in models.values())  # one sample, one embedding
    assert all(m.n_clusters == k and m.eigenvalues_.shape == (k,) for k, m in models.items())
    np.testing.assert_array_equal(models[2].eigenvalues_, models[4].eigenvalues_[:2])
    single = NystromSpectralClustering(3, n_landmarks=150, random_state=0).fit(X)
    np.testing.assert_array_equal(single.labels_, models[3].labels_)
    assert adjusted_rand_score(y, models[2].predict(X)) > 0.95


def test_refusals_name_the_parameter_and_the_fix():
    X = np.random.default_rng(0).normal(size=(200, 3))
    with pytest.raises(ValueError, match=r"n_landmarks=3 should be >= n_clusters=5"):
        NystromSpectralClustering(5, n_landmarks=3).fit(X)
    with pytest.raises(ValueError, match=r"gamma=-1.0 should be a positive real number or None"):
        NystromSpectralClustering(gamma=-1.0).fit(X)
    with pytest.raises(ValueError, match=r"kmeans_rows=2 should be an integer >= 3"):
        NystromSpectralClustering(3, kmeans_rows=2).fit(X)
    two_points = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]]), 50, axis=0)
    with pytest.raises(InputError, match=r"rank 2 < n_clusters=3: .*too few distinct values.*fewer clusters"):
        NystromSpectralClustering(3).fit(two_points)


def _write_blobs(path, n_rows: int) -> zarr.Array:
    z = zarr.create_array(str(path), shape=(n_rows, 16), dtype="float32", chunks=(8192, 16))
    centres = np.random.default_rng(0).normal(scale=4.0, size=(6, 16)).astype(np.float32)
    for s in range(0, n_rows, 20_000):
        rng = np.random.default_rng(s)
        e = min(n_rows, s + 20_000)
        z[s:e] = centres[rng.integers(0, 6, e - s)] + rng.normal(size=(e - s, 16)).astype(np.float32)
    return z


def test_memory_stays_within_a_small_budget_at_150000_rows(tmp_path):
    """fit + predict of 150,000 rows under memory="32MB": the traced peak (numpy buffers included) is
    a few blocks, below the budget and far below the (n, n_landmarks) affinities the Nystrom
    approximation is made of (150,000 x 100 float32 = 57 MiB), which are never held."""
    z = _write_blobs(tmp_path / "x.zarr", 150_000)
    tracemalloc.start()
    try:
        est = NystromSpectralClustering(6, n_landmarks=100, kmeans_rows=4000, memory="32MB", random_state=0).fit(z)
        labels = est.predict(z).compute()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"traced peak {peak / 2**20:.1f} MiB at 150,000 rows")
    assert labels.shape == (150_000,) and len(np.unique(labels)) == 6
    assert peak < 24 << 20
