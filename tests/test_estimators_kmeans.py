"""StreamingKMeans and kmeans_sweep: quality against planted truth, determinism, equivalences."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus
from sklearn.metrics import adjusted_rand_score

import streamclust.estimators.kmeans as kmeans_module
from streamclust.estimators import StreamingKMeans, kmeans_sweep
from streamclust.estimators.kernels import assign, prep_centers, shifted
from streamclust.estimators.kmeans import kmeans_plusplus_prefix


def _mixture(n=30_000, k=20, d=64, noise=1.3, seed=42):
    """Planted Gaussian mixture: k centres ~ N(0, I_d), isotropic noise (moderate overlap)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    X = (centers[y] + rng.normal(size=(n, d)) * noise).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def mixture():
    return _mixture()


@pytest.fixture(scope="module")
def small():
    return _mixture(n=4000, k=6, d=8, noise=0.4, seed=1)


def test_quality_not_worse_than_sklearn_kmeans(mixture):
    X, y = mixture
    for seed in (0,):
        ours = StreamingKMeans(20, n_init=3, random_state=seed).fit(X)
        ref = KMeans(20, n_init=3, random_state=seed).fit(X)
        ari_ours = adjusted_rand_score(y, ours.labels_)
        ari_ref = adjusted_rand_score(y, ref.labels_)
        assert ari_ours >= ari_ref - 0.02, (seed, ari_ours, ari_ref)
        assert ari_ours > 0.9
        # the reported inertia is the exact full-data one
        d2 = ((X.astype(np.float64) - ours.cluster_centers_[ours.labels_]) ** 2).sum()
        np.testing.assert_allclose(ours.inertia_, d2, rtol=1e-5)


def test_same_seed_same_result_and_block_sizes_close(mixture):
    X, y = mixture
    X = X[:10_000]
    a = StreamingKMeans(20, random_state=3).fit(X)
    b = StreamingKMeans(20, random_state=3).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_
    c = StreamingKMeans(20, random_state=3, block_rows=1500).fit(X)
    np.testing.assert_allclose(c.cluster_centers_, a.cluster_centers_, atol=1e-4)
    np.testing.assert_allclose(c.inertia_, a.inertia_, rtol=1e-6)
    assert adjusted_rand_score(a.labels_, c.labels_) > 0.999


def test_numpy_and_dask_inputs_agree(small, tmp_path):
    import zarr
    X, _ = small
    m_np = StreamingKMeans(6, random_state=0, block_rows=700).fit(X)
    z = zarr.open_array(tmp_path / "x.zarr", mode="w", shape=X.shape, chunks=(700, X.shape[1]), dtype=X.dtype)
    z[:] = X
    m_z = StreamingKMeans(6, random_state=0, block_rows=700).fit(z)
    np.testing.assert_array_equal(m_z.cluster_centers_, m_np.cluster_centers_)
    m_z2 = StreamingKMeans(6, random_state=0).fit(z)  # blocks: a multiple of the Zarr chunks
    np.testing.assert_allclose(m_z2.cluster_centers_, m_np.cluster_centers_, atol=1e-5)
    assert not hasattr(m_z, "labels_")
    np.testing.assert_array_equal(m_z.predict(z).compute(), m_np.labels_)
    Xd = da.from_array(X, chunks=(1000, 3))
    m_da = StreamingKMeans(6, random_state=0, block_rows=700).fit(Xd)
    assert not hasattr(m_da, "labels_")  # n labels are not held for out-of-core input
    np.testing.assert_array_equal(m_da.cluster_centers_, m_np.cluster_centers_)
    assert m_da.inertia_ == m_np.inertia_
    lazy = m_da.predict(Xd)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.int32
    np.testing.assert_array_equal(lazy.compute(), m_np.labels_)
    np.testing.assert_array_equal(m_np.predict(X), m_np.labels_)
    lazy_fp = m_da.fit_predict(Xd)
    assert isinstance(lazy_fp, da.Array)
    dist = m_np.transform(Xd)
    assert isinstance(dist, da.Array) and dist.shape == (X.shape[0], 6)
    np.testing.assert_allclose(dist.compute(), m_np.transform(X), rtol=1e-6)
    np.testing.assert_allclose(m_np.score(Xd), -m_np.inertia_, rtol=1e-9)


def test_transform_and_score_are_consistent(small):
    X, _ = small
    m = StreamingKMeans(6, random_state=0).fit(X)
    D = m.transform(X)
    assert D.dtype == np.float32 and D.shape == (X.shape[0], 6)
    np.testing.assert_array_equal(D.argmin(axis=1), m.labels_)
    exact = np.sqrt(((X[:, None, :].astype(np.float64) - m.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(D, exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(-m.score(X), m.inertia_, rtol=1e-9)
    assert m._counts.sum() == X.shape[0]
    assert 1 <= m.n_iter_ <= m.max_iter


def test_sweep_equals_single_fits(small):
    X, _ = small
    models = kmeans_sweep(X, [4, 2, 6], n_init=2, random_state=7, block_rows=900)
    assert list(models) == [2, 4, 6]
    for k, model in models.items():
        single = StreamingKMeans(k, n_init=2, random_state=7, block_rows=900).fit(X)
        np.testing.assert_array_equal(model.cluster_centers_, single.cluster_centers_)
        assert model.inertia_ == single.inertia_
        assert model.n_iter_ == single.n_iter_
        np.testing.assert_array_equal(model.labels_, single.labels_)
        assert model.random_state == 7


def test_sweep_seed_from_random_state_instance(small):
    X, _ = small
    models = kmeans_sweep(X[:500], [2, 3], n_init=1, random_state=np.random.RandomState(0))
    seeds = {m.random_state for m in models.values()}
    assert len(seeds) == 1 and isinstance(seeds.pop(), int)


def test_empty_clusters_are_reseeded():
    # 8 clusters on data with 3 distinct points repeated: relocation must keep
    # every centre on data and no NaN may appear
    X = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 50, axis=0)
    X = X + np.random.default_rng(0).normal(scale=0.01, size=X.shape)
    m = StreamingKMeans(8, random_state=0, n_init=1).fit(X)
    assert np.isfinite(m.cluster_centers_).all()
    assert len(np.unique(m.labels_)) == 8


def test_partial_fit_minibatch(small):
    X, y = small
    m = StreamingKMeans(6, random_state=0, batch_rows=500)
    for _ in range(3):
        m.partial_fit(X)
    assert m.n_steps_ == 3 * 8
    assert m._counts.sum() == 3 * X.shape[0]
    ref = MiniBatchKMeans(6, random_state=0, batch_size=500, n_init=1)
    for _ in range(3):
        for start in range(0, X.shape[0], 500):
            ref.partial_fit(X[start : start + 500])
    ari_ours = adjusted_rand_score(y, m.predict(X))
    assert ari_ours >= adjusted_rand_score(y, ref.predict(X)) - 0.05
    assert ari_ours > 0.8
    # one generator across calls: same seed, same calls -> same centres
    m2 = StreamingKMeans(6, random_state=0, batch_rows=500)
    for _ in range(3):
        m2.partial_fit(X)
    np.testing.assert_array_equal(m.cluster_centers_, m2.cluster_centers_)


def test_errors_echo_values():
    X = np.random.default_rng(0).normal(size=(3, 2))
    with pytest.raises(ValueError, match=r"n_samples=3 should be >= n_clusters=5\."):
        StreamingKMeans(5).fit(X)
    with pytest.raises(ValueError, match=r"n_samples=3 should be >= n_clusters=5\."):
        StreamingKMeans(5).partial_fit(X)
    with pytest.raises(ValueError, match="n_init=0"):
        StreamingKMeans(2, n_init=0).fit(X)
    with pytest.raises(ValueError, match="tol=-1"):
        StreamingKMeans(2, tol=-1).fit(X)
    m = StreamingKMeans(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but StreamingKMeans is expecting 2"):
        m.predict(da.zeros((4, 3), chunks=2))


def test_seeding_prefixes_are_the_seedings_of_fewer_clusters(mixture):
    X, _ = mixture
    x = X[:3000].astype(np.float64)
    full = kmeans_plusplus_prefix(x, 12, np.random.default_rng((5, 1)))
    for k in (1, 2, 7, 12):
        np.testing.assert_array_equal(kmeans_plusplus_prefix(x, k, np.random.default_rng((5, 1))), full[:k])
    # every centre is a distinct data row
    assert len({tuple(c) for c in full}) == 12 and all((x == c).all(axis=1).any() for c in full)


def test_seeding_is_as_good_as_sklearns_kmeans_plusplus(mixture):
    X, _ = mixture
    x = X[:5000].astype(np.float64)

    def potential(c):
        return ((x[:, None, :] - c[None]) ** 2).sum(-1).min(1).sum()

    ours = np.mean([potential(kmeans_plusplus_prefix(x, 20, np.random.default_rng(s))) for s in range(8)])
    theirs = np.mean([potential(kmeans_plusplus(x, 20, random_state=s)[0]) for s in range(8)])
    assert ours <= 1.03 * theirs, (ours, theirs)


def test_starts_do_not_depend_on_the_refining_threads(small, monkeypatch):
    X, _ = small
    fits = {}
    for threads in (1, 2):
        monkeypatch.setattr(kmeans_module, "_REFINE_THREADS", threads)
        fits[threads] = kmeans_sweep(X, [2, 3, 5, 6], n_init=3, random_state=3, block_rows=700)
    for k, model in fits[1].items():
        np.testing.assert_array_equal(model.cluster_centers_, fits[2][k].cluster_centers_)
        assert model.inertia_ == fits[2][k].inertia_


@pytest.mark.parametrize("k", [5, 300])  # one-hot GEMM sums, and sorted sums past _ONEHOT_MAX_CLUSTERS
def test_assignment_sums_equal_the_exact_per_cluster_sums(k):
    rng = np.random.default_rng(k)
    xs = rng.normal(size=(9000, 16)).astype(np.float32)  # two sub-chunks of 8,192 rows
    centers = xs[rng.choice(len(xs), k, replace=False)].astype(np.float64)
    xs_shifted, xx = shifted(xs, np.zeros(16))
    labels, mind, counts, sums = assign(xs_shifted, xx, *prep_centers(centers, np.zeros(16), np.float32), sums=True)
    exact = np.zeros((k, 16))
    np.add.at(exact, labels, xs.astype(np.float64))
    np.testing.assert_allclose(sums, exact, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=k))
    d2 = ((xs[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d2.argmin(axis=1))
