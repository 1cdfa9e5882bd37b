"""KNNOutlierDetector: recall, accuracy vs exact LOF, thresholds, determinism, out-of-core input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import dask
import dask.array as da
import numba
import numpy as np
import pytest
import zarr
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from streamclust.errors import MemoryBudgetError
from streamclust.estimators.neighbors import index_nbytes, warm_up
from streamclust.estimators.outliers import KNNOutlierDetector

K = 20


def make_mixture(n=20_000, d=32, seed=0, outlier_frac=0.01, n_dup_groups=5, dup_size=25):
    """Gaussian clusters + ``outlier_frac`` scattered outliers + tight near-duplicate groups
    (inliers: e.g. the same image saved several times).  Returns (X float32, is_outlier)."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(d))  # PCA-like decaying spectrum
    centres = rng.normal(size=(20, d)) * scales * 4
    lab = rng.integers(0, 20, n)
    spread = rng.uniform(0.6, 1.4, 20)[lab, None]
    X = centres[lab] + rng.normal(size=(n, d)) * scales * spread
    y = np.zeros(n, bool)
    out = rng.choice(n, int(outlier_frac * n), replace=False)
    X[out] = rng.uniform(-1, 1, size=(len(out), d)) * scales * 12
    y[out] = True
    inliers = np.flatnonzero(~y)
    for _g in range(n_dup_groups):
        rows = rng.choice(inliers, dup_size, replace=False)
        X[rows] = X[rows[0]] + rng.normal(size=(dup_size, d)) * 1e-3
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def mixture():
    return make_mixture()


@pytest.fixture(scope="module")
def fitted(mixture):
    X, _ = mixture
    # reference smaller than n so that rows in and out of the reference are both exercised; the
    # approximate index, which "auto" keeps for references over EXACT_SEARCH_ROWS rows
    return KNNOutlierDetector(n_neighbors=K, reference_size=8000, random_state=0, search="nndescent").fit(X)


def test_fitted_attributes(fitted, mixture):
    X, _ = mixture
    det = fitted
    m = 8000
    assert det.reference_indices_.shape == (m,) and np.all(np.diff(det.reference_indices_) > 0)
    assert det.reference_.dtype == np.float32 and det.reference_.shape == (m, X.shape[1])
    np.testing.assert_array_equal(det.reference_, X[det.reference_indices_])
    assert det.reference_kdist_.shape == det.reference_lrd_.shape == (m,)
    assert det.outlier_scores_.shape == (len(X),) and det.outlier_scores_.dtype == np.float32
    assert det.n_features_in_ == X.shape[1] and det.n_neighbors_ == K
    assert det.offset_ == -det.threshold_ and "MAD" in det.threshold_rule_
    assert det.recall_ >= 0.95
    assert type(det.index_).__name__ == "NNDescent"
    # the index can be rebuilt identically from the saved reference and seed
    from streamclust.estimators.neighbors import build_index

    again = build_index(det.reference_, n_neighbors=det.index_neighbors_, seed=det.index_seed_, search=det.search)
    q = X[:2000]
    np.testing.assert_array_equal(again.query(q, k=K + 1, epsilon=det.search_epsilon_)[0],
                                  det.index_.query(q, k=K + 1, epsilon=det.search_epsilon_)[0])
    # reference rows' training scores are the LOF of the reference set
    ind, dist = det.kneighbors(det.reference_, row_ids=det.reference_indices_)
    np.testing.assert_array_equal(dist[:, -1], det.reference_kdist_)


def test_kneighbors_recall_vs_exact_and_self_excluded(fitted, mixture):
    X, _ = mixture
    det = fitted
    rng = np.random.default_rng(1)
    ref_ids = det.reference_indices_
    in_ids = np.sort(rng.choice(ref_ids, 300, replace=False))
    out_ids = np.sort(rng.choice(np.setdiff1d(np.arange(len(X)), ref_ids), 300, replace=False))
    exact = NearestNeighbors(n_neighbors=K + 1, algorithm="brute").fit(det.reference_)

    # rows outside the reference: k nearest reference rows
    ind, dist = det.kneighbors(X[out_ids], row_ids=out_ids)
    assert ind.shape == dist.shape == (300, K) and ind.dtype == np.int64 and dist.dtype == np.float32
    true = exact.kneighbors(X[out_ids], n_neighbors=K, return_distance=False)
    recall_out = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(ind, true)])

    # rows in the reference: k nearest *other* reference rows
    pos = np.searchsorted(ref_ids, in_ids)
    ind_in, dist_in = det.kneighbors(X[in_ids], row_ids=in_ids)
    assert not np.any(ind_in == pos[:, None]), "a reference row counted itself"
    assert np.all(ind_in[:, 0] != pos)
    true_in = exact.kneighbors(X[in_ids], n_neighbors=K + 1, return_distance=False)
    true_in = [t[t != p][:K] for t, p in zip(true_in, pos)]
    recall_in = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(ind_in, true_in)])
    assert recall_out >= 0.95 and recall_in >= 0.95, (recall_out, recall_in)

    # distances are sorted and true euclidean distances
    assert np.all(np.diff(dist, axis=1) >= 0)
    np.testing.assert_allclose(dist, np.linalg.norm(X[out_ids][:, None] - det.reference_[ind], axis=2),
                               rtol=1e-4, atol=1e-5)
    # without row_ids a reference row finds itself first, at distance 0
    ind_self, dist_self = det.kneighbors(X[in_ids])
    assert np.mean(ind_self[:, 0] == pos) > 0.95 and np.all(dist_self[:, 0] < 1e-3)


def test_auc_planted_outliers_vs_exact_lof(fitted, mixture):
    X, y = mixture
    ours = roc_auc_score(y, fitted.outlier_scores_)
    lof = LocalOutlierFactor(n_neighbors=K).fit(X)
    exact = roc_auc_score(y, -lof.negative_outlier_factor_)
    assert ours >= 0.95 and ours >= exact - 0.01, (ours, exact)


def test_auto_threshold_catches_planted_outliers(fitted, mixture):
    _, y = mixture
    flagged = fitted.outlier_scores_ > fitted.threshold_
    assert flagged[y].mean() >= 0.9
    assert flagged[~y].mean() < 0.02
    np.testing.assert_array_equal(fitted.score_samples(fitted.reference_[:50]),
                                  -fitted.outlier_score(fitted.reference_[:50]))


def test_predict_contamination_and_auto_rule_on_clean_gaussian(mixture):
    X, _ = mixture
    det = KNNOutlierDetector(n_neighbors=K, contamination=0.02, reference_size=4000, random_state=0)
    labels = det.fit_predict(X[:10_000])
    assert set(np.unique(labels)) == {-1, 1}
    assert abs(np.mean(labels == -1) - 0.02) < 0.002
    assert det.threshold_rule_.startswith("contamination=0.02")
    dec = det.decision_function(X[:10_000], row_ids=np.arange(10_000))
    np.testing.assert_array_equal(np.where(dec < 0, -1, 1), labels)

    clean = np.random.default_rng(3).normal(size=(6000, 32)).astype(np.float32)
    for score in ("lof", "mean"):
        auto = KNNOutlierDetector(n_neighbors=K, score=score, random_state=0).fit(clean)
        frac = np.mean(auto.predict(clean, row_ids=np.arange(len(clean))) == -1)
        assert frac < 0.015, (score, frac)


def test_numpy_dask_zarr_inputs_and_block_size_give_equal_scores(fitted, mixture, tmp_path):
    X, _ = mixture
    det = fitted
    rows = np.arange(len(X))
    ref = det.score_all(X)
    np.testing.assert_array_equal(ref, det.outlier_scores_)

    lazy = det.outlier_score(da.from_array(X, chunks=(1234, X.shape[1])), row_ids=rows)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), ref)

    z = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, dtype=X.dtype, chunks=(3000, X.shape[1]))
    z[:] = X
    np.testing.assert_array_equal(det.score_all(z).compute(), ref)

    small = pickle.loads(pickle.dumps(det)).set_params(block_rows=777)
    np.testing.assert_array_equal(small.score_all(X), ref)
    np.testing.assert_array_equal(small.outlier_score(X[5:4000]), det.outlier_score(X[5:4000]))

    ind, dist = det.kneighbors(da.from_array(X[:3000], chunks=(500, X.shape[1])))
    assert isinstance(ind, da.Array)
    ind_c, dist_c = dask.compute(ind, dist)
    ind_n, dist_n = det.kneighbors(X[:3000])
    np.testing.assert_array_equal(ind_c, ind_n)
    np.testing.assert_array_equal(dist_c, dist_n)

    # fitting on the Zarr array draws the same sample and gives the same scores
    det_z = KNNOutlierDetector(n_neighbors=K, reference_size=8000, random_state=0, search="nndescent").fit(z)
    np.testing.assert_array_equal(det_z.reference_indices_, det.reference_indices_)
    np.testing.assert_array_equal(det_z.outlier_scores_, ref)
    pred = det_z.predict(z)
    assert isinstance(pred, da.Array) and pred.compute().shape == (len(X),)


def _fit_scores(X, threads, dask_workers, n_jobs):
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with dask.config.set(scheduler="threads", num_workers=dask_workers):
            # the NN-descent index (whose numba-parallel build and queries are what threads could change);
            # 6000 rows would be searched exactly by default
            det = KNNOutlierDetector(n_neighbors=10, random_state=7, block_rows=999, n_jobs=n_jobs,
                                     search="nndescent").fit(X)
            return det.outlier_scores_, det.reference_indices_
    finally:
        numba.set_num_threads(before)


def test_same_seed_same_scores_whatever_the_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    X, _ = make_mixture(n=6000, d=16, seed=5)
    s1, r1 = _fit_scores(X, threads=1, dask_workers=1, n_jobs=1)
    s2, r2 = _fit_scores(X, threads=2, dask_workers=2, n_jobs=None)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(s1, s2)
    s3, _ = _fit_scores(X, threads=2, dask_workers=2, n_jobs=2)
    np.testing.assert_array_equal(s1, s3)
    other = KNNOutlierDetector(n_neighbors=10, random_state=8, search="nndescent").fit(X)
    assert not np.array_equal(other.reference_indices_, r1) or not np.array_equal(other.outlier_scores_, s1)


@pytest.mark.slow
def test_same_scores_in_processes_with_1_and_2_numba_threads(tmp_path):
    """Fresh processes with NUMBA_NUM_THREADS=1 and 2 (each pays numba's ~20 s compile)."""
    code = textwrap.dedent(
        """
        import sys, numpy as np
        sys.path.insert(0, {tests!r})
        from test_outliers import make_mixture
        from streamclust.estimators.outliers import KNNOutlierDetector
        X, _ = make_mixture(n=6000, d=16, seed=5)
        det = KNNOutlierDetector(n_neighbors=10, random_state=7, search="nndescent").fit(X)
        np.save(sys.argv[1], det.outlier_scores_)
        """
    ).format(tests=os.path.dirname(__file__))
    outs = []
    for t in (1, 2):
        out = tmp_path / f"s{t}.npy"
        env = dict(os.environ, NUMBA_NUM_THREADS=str(t))
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env)
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_suggest_eps_and_dbscan_noise(fitted, mixture):
    X, y = mixture
    eps = fitted.suggest_eps()
    kd = fitted.reference_kdist_
    assert np.quantile(kd, 0.5) < eps <= kd.max()
    noise = fitted.dbscan_noise(X, eps, row_ids=np.arange(len(X)))
    assert noise.dtype == bool and noise.shape == (len(X),)
    assert noise[y].mean() > 0.9 and noise[~y].mean() < 0.1
    ind, dist = fitted.kneighbors(X[:500], row_ids=np.arange(500))
    np.testing.assert_array_equal(fitted.dbscan_noise(X[:500], eps, row_ids=np.arange(500)), dist[:, -1] > eps)
    with pytest.raises(ValueError, match="eps=-1"):
        fitted.dbscan_noise(X[:10], -1)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_neighbors": 0}, "n_neighbors=0"),
        ({"score": "lff"}, "score='lff'"),
        ({"reference_size": 1.5}, "reference_size=1.5"),
        ({"contamination": 0.7}, "contamination=0.7"),
        ({"threshold": "robust"}, "threshold='robust'"),
        ({"threshold": 2.0, "contamination": 0.1}, "both fix the threshold"),
        ({"mad_factor": -1}, "mad_factor=-1"),
        ({"search_epsilon": 3}, "search_epsilon=3"),
        ({"index_neighbors": 1}, "index_neighbors=1"),
        ({"reference_size": 5000}, "reference_size=5000 exceeds"),
    ],
)
def test_bad_parameters_are_echoed(params, match):
    X = np.zeros((100, 3), np.float32)
    with pytest.raises(ValueError, match=match):
        KNNOutlierDetector(**params).fit(X)


def test_reference_size_follows_the_memory_budget(tmp_path):
    n, d = 12_000, 128
    z = zarr.create_array(tmp_path / "w.zarr", shape=(n, d), dtype="float32", chunks=(2048, d))
    rng = np.random.default_rng(0)
    for s in range(0, n, 4000):
        z[s:s + 4000] = rng.normal(size=(4000, d)).astype(np.float32)
    det = KNNOutlierDetector(n_neighbors=10, memory="24MiB", random_state=0).fit(z)
    m = len(det.reference_indices_)
    assert m == (12 << 20) // index_nbytes(1, d, det.index_neighbors_) < n
    assert det.outlier_scores_.shape == (n,)
    with pytest.raises(MemoryBudgetError, match="reference_size=10000"):
        KNNOutlierDetector(reference_size=10_000, memory="24MiB").fit(z)


def test_non_finite_rows_are_rejected(tmp_path):
    X = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)
    X[2500, 1] = np.nan
    z = zarr.create_array(tmp_path / "nan.zarr", shape=X.shape, dtype=X.dtype, chunks=(500, 4))
    z[:] = X
    with pytest.raises(ValueError, match="NaN or infinity"):
        KNNOutlierDetector(n_neighbors=5, reference_size=100, random_state=0).fit(z)


def test_warm_up_and_small_reference_warns():
    assert warm_up() > 0
    from streamclust.errors import StreamclustWarning

    X = np.random.default_rng(0).normal(size=(12, 3))
    with pytest.warns(StreamclustWarning, match="using n_neighbors=11"):
        det = KNNOutlierDetector(n_neighbors=20, random_state=0).fit(X)
    assert det.n_neighbors_ == 11 and det.predict(X).shape == (12,)


@pytest.fixture(scope="module")
def demo_scores(demo_case):
    """AUCs on a small demo case: osnet and efficientnet-b7 descriptors, L2-normalised
    and reduced by PCA(32); ours (LOF-style and mean kNN distance, k=20) and exact LOF."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    from streamclust.datasets import load_truth

    case = demo_case(3000) / "case"
    y = load_truth(case)["is_outlier"].to_numpy(bool)
    out = {}
    for name in ("osnet", "efficientnet-b7"):
        with open(case / "descriptors" / f"{name}.pickle", "rb") as f:
            D = pickle.load(f)
        Z = PCA(32, random_state=0).fit_transform(normalize(D)).astype(np.float32)
        lof = roc_auc_score(y, -LocalOutlierFactor(n_neighbors=K).fit(Z).negative_outlier_factor_)
        for score in ("lof", "mean"):
            det = KNNOutlierDetector(n_neighbors=K, score=score, random_state=0).fit(Z)
            out[name, score] = (roc_auc_score(y, det.outlier_scores_), lof)
    return out


def test_demo_case_auc_vs_exact_lof(demo_scores):
    for (name, score), (ours, lof) in demo_scores.items():
        assert ours >= 0.95 and ours >= lof - 0.01, (name, score, ours, lof)


def test_small_references_are_searched_exactly(mixture):
    """``search="auto"`` searches a reference of at most EXACT_SEARCH_ROWS rows exactly: scikit-learn's
    brute-force neighbours (ties aside), a row equal to a reference row at distance exactly 0, recall 1,
    and the same scores as ``search="exact"``; a larger reference gets the NN-descent index."""
    from sklearn.neighbors import NearestNeighbors

    from streamclust.estimators.neighbors import EXACT_SEARCH_ROWS, ExactIndex, build_index

    X, _ = mixture
    det = KNNOutlierDetector(n_neighbors=K, reference_size=3000, random_state=0).fit(X)
    assert isinstance(det.index_, ExactIndex) and det.recall_ == 1.0
    exact = KNNOutlierDetector(n_neighbors=K, reference_size=3000, random_state=0, search="exact").fit(X)
    np.testing.assert_array_equal(det.outlier_scores_, exact.outlier_scores_)
    q = np.r_[X[det.reference_indices_[:50]], X[:500]]
    ind, dist = det.index_.query(q, k=K)
    true_dist, _ = NearestNeighbors(n_neighbors=K).fit(det.reference_.astype(np.float64)).kneighbors(q)
    np.testing.assert_allclose(dist, true_dist, rtol=1e-4, atol=1e-4)
    assert np.all(dist[:50, 0] == 0) and np.all(np.diff(dist, axis=1) >= 0)
    np.testing.assert_allclose(np.linalg.norm(q[:, None, :] - det.reference_[ind], axis=2), dist, rtol=1e-5)
    big = np.zeros((EXACT_SEARCH_ROWS + 1, 2), np.float32)
    assert isinstance(build_index(big[:EXACT_SEARCH_ROWS], n_neighbors=5, seed=0), ExactIndex)
    with pytest.raises(ValueError, match="search='kd'"):
        build_index(big[:10], n_neighbors=5, seed=0, search="kd")
