"""Hierarchical (weighted micro-cluster Ward), Gaussian-mixture and sampled-HDBSCAN families.

Each family labels every row in bounded memory; these tests compare them with the
in-memory scikit-learn estimators on planted data and check the streaming
invariants (numpy vs Dask, seeds, re-cutting without a data pass).
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage as scipy_linkage
from sklearn.cluster import HDBSCAN, AgglomerativeClustering
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from streamclust.errors import MemoryBudgetError
from streamclust.estimators.density import SampledHDBSCAN, hdbscan_mst
from streamclust.estimators.hierarchy import (
    MicroClusterAgglomerative,
    StreamingBirch,
    cut_linkage,
    hierarchy_sweep,
    weighted_linkage,
)
from streamclust.estimators.mixture import StreamingGaussianMixture


def _planted(n, d, k, noise, seed, *, conc=2.0, spread=(0.6, 1.2), scale=1.0):
    """Gaussian mixture with unequal sizes (Dirichlet weights) and per-cluster spreads."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * scale
    w = rng.dirichlet(np.ones(k) * conc)
    y = rng.choice(k, n, p=w)
    s = rng.uniform(*spread, size=k)
    X = centers[y] + rng.normal(size=(n, d)) * (noise * s[y])[:, None]
    return X.astype(np.float32), y


def _ari(a, b):
    return adjusted_rand_score(a, b)


# --------------------------------------------------------------------------- #
# Weighted linkage
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("method", ["ward", "average", "complete", "single"])
def test_weighted_linkage_with_unit_weights_is_scipy(method):
    X = np.random.default_rng(0).normal(size=(300, 5))
    Z = weighted_linkage(X, None, method)
    Zs = scipy_linkage(X, method)
    np.testing.assert_array_equal(Z[:, :2], Zs[:, :2])
    np.testing.assert_allclose(Z[:, 2:], Zs[:, 2:], rtol=1e-9)
    for k in (2, 7, 40):
        assert _ari(cut_linkage(Z, k), cut_linkage(Zs, k)) == 1.0
        assert len(np.unique(cut_linkage(Z, k))) == k


def test_weighted_ward_equals_ward_on_the_repeated_rows():
    """A point of weight w is w coincident rows: weighted Ward on the distinct points
    gives scikit-learn's Ward partition of the expanded data (unweighted centroids do not)."""
    rng = np.random.default_rng(1)
    P = rng.normal(size=(120, 3))
    w = rng.integers(1, 60, size=120)
    rows = np.repeat(np.arange(120), w)
    ref = AgglomerativeClustering(5, linkage="ward").fit(P[rows]).labels_
    ours = cut_linkage(weighted_linkage(P, w, "ward"), 5)[rows]
    assert _ari(ours, ref) == 1.0
    unweighted = cut_linkage(weighted_linkage(P, None, "ward"), 5)[rows]
    assert _ari(unweighted, ref) < 1.0


def test_micro_ward_is_exact_ward_with_one_row_per_micro_cluster():
    X, _ = _planted(400, 4, 4, 1.0, 3)
    est = MicroClusterAgglomerative(4, n_micro=400, random_state=0).fit(X)
    assert est.n_leaves_ == 400
    ref = AgglomerativeClustering(4, linkage="ward").fit(X).labels_
    assert _ari(est.labels_, ref) == 1.0
    # n_micro > n_samples is capped: every row is its own micro-cluster
    big = MicroClusterAgglomerative(4, n_micro=5000, random_state=0).fit(X)
    np.testing.assert_array_equal(big.labels_, est.labels_)


@pytest.fixture(scope="module")
def mixture60k():
    # 60k x 32, 10 clusters, unequal sizes, moderate overlap (in-memory Ward ARI ~0.97)
    return _planted(60_000, 32, 10, 1.3, 0)


def test_micro_ward_on_all_rows_vs_sklearn_ward_on_a_sample(mixture60k):
    """Ours labels all 60k rows; scikit-learn's Ward needs O(n^2) memory (1.6 GB of
    distances here) and runs on a 20,000-row sample, as the promise is stated.
    Scored on the sample rows against the planted labels."""
    X, y = mixture60k
    sample = np.sort(np.random.default_rng(1).choice(len(X), 20_000, replace=False))
    ref = AgglomerativeClustering(10, linkage="ward").fit(X[sample]).labels_
    est = MicroClusterAgglomerative(10, n_micro=300, random_state=0).fit(X)
    ari_ref = _ari(y[sample], ref)
    ari_ours = _ari(y[sample], est.labels_[sample])
    print(f"\nARI on the 20k sample: micro-cluster Ward {ari_ours:.4f}, sklearn Ward {ari_ref:.4f}; "
          f"all 60k rows: {_ari(y, est.labels_):.4f}")
    assert ari_ours >= ari_ref - 0.02
    assert est.labels_.shape == (len(X),) and est.labels_.dtype == np.int32
    assert sorted(np.unique(est.labels_)) == list(range(10))
    # exact bookkeeping: counts, centres and inertia over all rows
    assert est.micro_counts_.sum() == len(X)
    x64 = X.astype(np.float64)
    centers = np.stack([x64[est.labels_ == j].mean(axis=0) for j in range(10)])
    np.testing.assert_allclose(est.cluster_centers_, centers, atol=1e-9)
    np.testing.assert_allclose(est.inertia_, ((x64 - centers[est.labels_]) ** 2).sum(), rtol=1e-9)
    np.testing.assert_array_equal(est.cluster_counts_, np.bincount(est.labels_))


def test_hierarchy_sweep_recuts_one_tree(mixture60k):
    X, y = mixture60k
    X = X[:8000]
    ks = [3, 6, 10]
    sweep = hierarchy_sweep(X, ks, n_micro=150, random_state=5)
    assert list(sweep) == ks
    base = sweep[3]
    for k in ks:
        fresh = MicroClusterAgglomerative(k, n_micro=150, random_state=5).fit(X)
        np.testing.assert_array_equal(sweep[k].labels_, fresh.labels_)
        np.testing.assert_array_equal(sweep[k].micro_labels_, fresh.micro_labels_)
        np.testing.assert_array_equal(base.labels_for(k), fresh.labels_)
        np.testing.assert_allclose(sweep[k].inertia_, fresh.inertia_, rtol=1e-12)
        assert sweep[k].micro_kmeans_ is base.micro_kmeans_  # one micro-clustering
    # the hierarchy is nested: every cluster at k=10 lies inside one cluster at k=6
    fine, coarse = sweep[10].labels_, sweep[6].labels_
    assert all(len(np.unique(coarse[fine == j])) == 1 for j in range(10))
    with pytest.raises(ValueError, match="n_clusters=151 exceeds the 150"):
        base.labels_for(151)


def test_micro_agglomerative_numpy_dask_and_linkages(mixture60k):
    X, y = mixture60k
    X = X[:6000]
    Xd = da.from_array(X, chunks=1000)
    a = MicroClusterAgglomerative(10, n_micro=120, random_state=2).fit(X)
    b = MicroClusterAgglomerative(10, n_micro=120, random_state=2, block_rows=700).fit(Xd)
    assert _ari(a.labels_, b.labels_) > 0.99
    lazy = a.predict(Xd)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), a.predict(X))
    np.testing.assert_array_equal(a.predict(X), a.labels_)  # rows take their micro-cluster's label
    for linkage in ("average", "complete", "single"):
        est = MicroClusterAgglomerative(10, n_micro=120, linkage=linkage, random_state=2).fit(X)
        assert est.labels_.shape == (6000,) and est.distances_.shape == (119,)
        assert np.all(np.diff(est.distances_) >= 0)
    with pytest.raises(ValueError, match="linkage='median'"):
        MicroClusterAgglomerative(linkage="median").fit(X)


def test_streaming_birch_with_a_weighted_global_step():
    X, y = _planted(6000, 4, 5, 0.3, 4, scale=3.0)
    est = StreamingBirch(5, threshold=0.5, block_rows=1000).fit(X)
    assert _ari(y, est.labels_) > 0.95
    assert est.subcluster_counts_.sum() == len(X)
    np.testing.assert_array_equal(est.predict(da.from_array(X, chunks=1500)).compute(), est.labels_)
    with pytest.raises(MemoryBudgetError, match="max_subclusters=50"):
        StreamingBirch(5, threshold=0.05, max_subclusters=50).fit(X)


# --------------------------------------------------------------------------- #
# Gaussian mixture
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def gmm_data():
    rng = np.random.default_rng(7)
    k, d, n = 5, 10, 30_000
    centers = rng.normal(size=(k, d)) * 2.2
    y = rng.choice(k, n, p=rng.dirichlet(np.ones(k) * 3))
    scales = rng.uniform(0.5, 1.5, size=(k, d))  # anisotropic: diag/full matter
    X = (centers[y] + rng.normal(size=(n, d)) * scales[y]).astype(np.float32)
    return X, y


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_gmm_matches_sklearn(gmm_data, covariance_type):
    X, y = gmm_data
    ours = StreamingGaussianMixture(5, covariance_type=covariance_type, random_state=0,
                                    block_rows=4096).fit(X)
    ref = GaussianMixture(5, covariance_type=covariance_type, n_init=3, random_state=0).fit(X)
    ari_ours, ari_ref = _ari(y, ours.predict(X)), _ari(y, ref.predict(X))
    ll_ours, ll_ref = ours.score(X), ref.score(X)
    print(f"\n{covariance_type}: ARI ours {ari_ours:.4f} sklearn {ari_ref:.4f}; "
          f"mean log-lik ours {ll_ours:.5f} sklearn {ll_ref:.5f}")
    assert ari_ours >= ari_ref - 0.02
    assert abs(ll_ours - ll_ref) <= 0.01 * abs(ll_ref)
    assert ours.converged_ and ours.lower_bounds_[-1] == ours.lower_bound_
    np.testing.assert_allclose(ours.score_samples(X).mean(), ll_ours, rtol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X).sum(axis=1), 1.0)


@pytest.mark.parametrize("covariance_type", ["diag", "full", "tied", "spherical"])
def test_one_streaming_em_pass_is_one_sklearn_em_step(gmm_data, covariance_type):
    """From the same parameters, a streaming EM pass over blocks gives scikit-learn's
    in-memory E+M step (to float64 round-off)."""
    X, _ = gmm_data
    X = X[:8000].astype(np.float64)  # scikit-learn keeps float32 input in float32
    kw = dict(covariance_type=covariance_type, random_state=1, block_rows=1500, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = StreamingGaussianMixture(4, max_iter=1, **kw).fit(X)
        two = StreamingGaussianMixture(4, max_iter=2, **kw).fit(X)
        ref = GaussianMixture(4, covariance_type=covariance_type, max_iter=1, tol=0.0,
                              weights_init=one.weights_, means_init=one.means_,
                              precisions_init=one.precisions_).fit(X)
    np.testing.assert_allclose(two.weights_, ref.weights_, rtol=1e-9)
    np.testing.assert_allclose(two.means_, ref.means_, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(two.covariances_, ref.covariances_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(two.lower_bound_, ref.lower_bound_, rtol=1e-9)


def test_gmm_numpy_and_dask_give_identical_results(gmm_data):
    X, _ = gmm_data
    X = X[:10_000]
    Xd = da.from_array(X, chunks=2500)
    a = StreamingGaussianMixture(5, random_state=3, block_rows=2000).fit(X)
    b = StreamingGaussianMixture(5, random_state=3, block_rows=2000).fit(Xd)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)
    for method in ("predict", "predict_proba", "score_samples"):
        lazy = getattr(a, method)(Xd)
        assert isinstance(lazy, da.Array)
        np.testing.assert_array_equal(lazy.compute(), getattr(a, method)(X))
    assert a.score(Xd) == a.score(X)


def test_gmm_bic_decreases_towards_the_true_k():
    X, y = _planted(12_000, 6, 4, 0.5, 11, conc=5.0, scale=2.5)
    bic = {k: StreamingGaussianMixture(k, random_state=0).fit(X).bic(X) for k in range(1, 7)}
    print("\nBIC by k:", {k: round(v) for k, v in bic.items()})
    assert bic[1] > bic[2] > bic[3] > bic[4]
    assert min(bic, key=bic.get) == 4
    aic = StreamingGaussianMixture(4, random_state=0).fit(X).aic(X)
    assert aic < bic[4]


# --------------------------------------------------------------------------- #
# Sampled HDBSCAN
# --------------------------------------------------------------------------- #
def _with_outliers(n, d, k, frac, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 6
    y = rng.choice(k, n, p=rng.dirichlet(np.ones(k) * 3))
    X = centers[y] + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.0, k)[y][:, None]
    n_out = int(frac * n)
    pos = rng.choice(n, n_out, replace=False)
    X[pos] = rng.uniform(X.min(axis=0) - 2, X.max(axis=0) + 2, size=(n_out, d))
    y[pos] = -1
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def outlier_data():
    return _with_outliers(20_000, 8, 6, 0.01, 1)


def test_sampled_hdbscan_noise_finds_planted_outliers(outlier_data):
    X, y = outlier_data
    est = SampledHDBSCAN(25, min_samples=10, sample_size=4000, random_state=0).fit(X)
    assert est.neighbors_ == "brute"
    noise, out = est.labels_ == -1, y == -1
    precision = (noise & out).sum() / noise.sum()
    recall = (noise & out).sum() / out.sum()
    keep = ~noise & ~out
    ari = _ari(y[keep], est.labels_[keep])
    print(f"\nnoise {noise.mean():.4f} of rows (sample {est.sample_noise_fraction_:.4f}); outlier rate "
          f"{out.mean():.4f}; precision of noise vs outliers {precision:.3f}, recall {recall:.3f}; "
          f"{est.n_clusters_} clusters, ARI of non-noise rows {ari:.4f}")
    assert precision > 20 * out.mean()
    assert recall > 0.8
    assert est.n_clusters_ == 6 and ari > 0.98
    # sample rows keep their HDBSCAN labels; same seed, same labels; dask predict is lazy
    np.testing.assert_array_equal(est.labels_[est.sample_indices_], est.sample_labels_)
    again = SampledHDBSCAN(25, min_samples=10, sample_size=4000, random_state=0,
                           block_rows=3000).fit(da.from_array(X, chunks=5000))
    np.testing.assert_array_equal(again.labels_, est.labels_)
    lazy = est.predict(da.from_array(X, chunks=5000))
    assert isinstance(lazy, da.Array)
    pred = lazy.compute()
    np.testing.assert_array_equal(pred, est.predict(X))
    not_sample = np.setdiff1d(np.arange(len(X)), est.sample_indices_)
    np.testing.assert_array_equal(pred[not_sample], est.labels_[not_sample])


def test_hdbscan_on_the_sample_is_sklearn_hdbscan(outlier_data):
    X, _ = outlier_data
    S = X[:3000]
    ours, core, _ = hdbscan_mst(S, 25, 10)
    ref = HDBSCAN(min_cluster_size=25, min_samples=10, copy=True).fit(S).labels_
    assert _ari(ours, ref) > 0.999
    np.testing.assert_array_equal(ours == -1, ref == -1)


def test_sampled_hdbscan_with_pynndescent_is_deterministic(outlier_data):
    """Sample above 4,096 points: pynndescent index (pays numba's build compilation
    once per process).  Labels agree with exact neighbours, and do not depend on the
    block size."""
    X, y = outlier_data
    X, y = X[:12_000], y[:12_000]
    a = SampledHDBSCAN(25, min_samples=10, sample_size=5000, random_state=4, block_rows=4000).fit(X)
    assert a.neighbors_ == "nndescent" and a.recall_ >= 0.95
    b = SampledHDBSCAN(25, min_samples=10, sample_size=5000, random_state=4, block_rows=2500).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    exact = SampledHDBSCAN(25, min_samples=10, sample_size=5000, random_state=4,
                           neighbors="brute").fit(X)
    np.testing.assert_array_equal(exact.sample_labels_, a.sample_labels_)
    assert np.mean(exact.labels_ == a.labels_) > 0.99
