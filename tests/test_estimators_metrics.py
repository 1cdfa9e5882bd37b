"""Exact streaming metrics against scikit-learn's."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from streamclust.estimators import (
    StreamingKMeans,
    cluster_metrics,
    sampled_silhouette,
    sweep_metrics,
)
from streamclust.estimators.metrics import labels_metrics


@pytest.fixture(scope="module")
def offset_data():
    """float32 rows around 1000 (cancellation-prone) with some cluster structure."""
    rng = np.random.default_rng(0)
    n, d = 6000, 6
    y = rng.integers(0, 4, n)
    X = 1000.0 + rng.normal(size=(n, d)) + 2.0 * np.eye(4, d)[y]
    return X.astype(np.float32), y


def _sklearn(X, labels):
    # CH and DB are translation invariant: centring in float64 first gives
    # scikit-learn's exact value (its float32 and dot-product shortcuts lose
    # digits at an offset of 1000)
    Z = X.astype(np.float64)
    Z -= Z.mean(axis=0)
    return calinski_harabasz_score(Z, labels), davies_bouldin_score(Z, labels)


def _label_sets(y, n, rng):
    unbalanced = np.where(rng.random(n) < 0.95, 0, rng.integers(1, 4, n))
    return {
        "planted": y,
        "random": rng.integers(0, 5, n),
        "unbalanced": unbalanced,
        "noise-label": np.where(y == 0, -1, y * 10),  # arbitrary values incl. -1
    }


def test_cluster_metrics_match_sklearn(offset_data):
    X, y = offset_data
    rng = np.random.default_rng(1)
    for name, labels in _label_sets(y, X.shape[0], rng).items():
        out = cluster_metrics(X, labels, block_rows=777)
        ch, db = _sklearn(X, labels)
        np.testing.assert_allclose(out["calinski_harabasz"], ch, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(out["davies_bouldin"], db, rtol=1e-6, err_msg=name)
        uniq, counts = np.unique(labels, return_counts=True)
        np.testing.assert_array_equal(out["labels"], uniq)
        np.testing.assert_array_equal(out["sizes"], counts)
        assert out["n_clusters"] == len(uniq) and out["n_samples"] == X.shape[0]
        X64 = X.astype(np.float64)
        within = sum(((X64[labels == u] - X64[labels == u].mean(0)) ** 2).sum() for u in uniq)
        np.testing.assert_allclose(out["inertia"], within, rtol=1e-9)


def test_dask_inputs_and_block_sizes_agree(offset_data):
    X, y = offset_data
    base = cluster_metrics(X, y)
    other = cluster_metrics(da.from_array(X, chunks=(1000, 2)), da.from_array(y, chunks=500), block_rows=333)
    for key in ("inertia", "calinski_harabasz", "davies_bouldin"):
        np.testing.assert_allclose(other[key], base[key], rtol=1e-10)


def test_centers_give_nearest_centre_labels(offset_data):
    X, _ = offset_data
    km = StreamingKMeans(4, random_state=0).fit(X)
    out = cluster_metrics(X, centers=km.cluster_centers_, block_rows=1000)
    ch, db = _sklearn(X, km.labels_)
    np.testing.assert_allclose(out["calinski_harabasz"], ch, rtol=1e-6)
    np.testing.assert_allclose(out["davies_bouldin"], db, rtol=1e-6)
    np.testing.assert_allclose(out["inertia"], km.inertia_, rtol=1e-6)
    np.testing.assert_array_equal(out["sizes"], np.bincount(km.labels_, minlength=4))


def test_sweep_metrics_equal_per_k(offset_data):
    X, _ = offset_data
    centers = {k: StreamingKMeans(k, n_init=1, random_state=0).fit(X).cluster_centers_ for k in (2, 3, 5)}
    swept = sweep_metrics(X, centers, block_rows=1000)
    assert list(swept) == [2, 3, 5]
    for k, c in centers.items():
        single = cluster_metrics(X, centers=c, block_rows=1000)
        for key in ("n_samples", "n_clusters", "inertia", "calinski_harabasz", "davies_bouldin"):
            assert swept[k][key] == single[key], (k, key)
        np.testing.assert_array_equal(swept[k]["sizes"], single["sizes"])


def test_sampled_silhouette(offset_data):
    X, y = offset_data
    X, y = X[:3000], y[:3000]
    full = silhouette_score(X.astype(np.float64), y)
    est = sampled_silhouette(X, y, n_samples=1500, random_state=0)
    assert abs(est - full) < 0.02
    lazy = sampled_silhouette(
        da.from_array(X, chunks=700), da.from_array(y, chunks=700), n_samples=1500, random_state=0
    )
    assert est == lazy
    exact = sampled_silhouette(X[:500], y[:500], n_samples=10_000)
    np.testing.assert_allclose(exact, silhouette_score(X[:500].astype(np.float64), y[:500]))
    km = StreamingKMeans(4, random_state=0).fit(X)
    by_centers = sampled_silhouette(X, centers=km.cluster_centers_, n_samples=1500, random_state=0)
    assert abs(by_centers - silhouette_score(X.astype(np.float64), km.labels_)) < 0.02


def test_errors(offset_data):
    X, y = offset_data
    with pytest.raises(ValueError, match="Number of labels is 1"):
        cluster_metrics(X, np.zeros(X.shape[0], dtype=int))
    with pytest.raises(ValueError, match="exactly one of labels"):
        cluster_metrics(X)
    with pytest.raises(ValueError, match=r"labels has shape \(10,\)"):
        cluster_metrics(X, y[:10])
    with pytest.raises(ValueError, match=r"centers has shape \(3, 2\)"):
        cluster_metrics(X, centers=np.zeros((3, 2)))


def test_silhouette_sample_read_once_gives_the_same_estimates():
    from streamclust.estimators import silhouette_sample

    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 8)).astype(np.float32)
    _, rows = silhouette_sample(X, 1000, random_state=7)
    for k in (2, 4, 6):
        centers = X[rng.choice(len(X), k, replace=False)]
        assert sampled_silhouette(rows, centers=centers, n_samples=len(rows)) == sampled_silhouette(
            X, centers=centers, n_samples=1000, random_state=7)


def test_silhouette_scores_equal_scikit_learn_for_every_labelling():
    """One shared distance pass gives scikit-learn's silhouette of each labelling: random labels,
    a noise label (-1), singleton clusters, and blocks smaller than the sample (the smallest budget)."""
    from sklearn.metrics import silhouette_score

    from streamclust.estimators.metrics import silhouette_scores

    rng = np.random.default_rng(3)
    X = rng.normal(size=(1500, 12))
    X[:500] += 4
    labelings = [rng.integers(0, k, len(X)) for k in (2, 7)]
    labelings.append(rng.integers(-1, 4, len(X)))
    labelings.append(np.r_[np.zeros(len(X) - 2, int), [5, 9]])
    for memory in ("1GB", "8MiB"):  # 8 MiB: blocks of 699 rows
        ours = silhouette_scores(X, labelings, memory=memory)
        assert ours == pytest.approx([silhouette_score(X, lab) for lab in labelings], abs=1e-12)
    with pytest.raises(ValueError, match="Number of labels is 1"):
        silhouette_scores(X, [np.zeros(len(X), int)])


def test_sweep_silhouettes_equal_one_call_per_k():
    from streamclust.estimators.metrics import sweep_silhouettes

    rng = np.random.default_rng(4)
    X = rng.normal(size=(800, 6)).astype(np.float32)
    centers = {k: rng.normal(size=(k, 6)) for k in (2, 3, 5)}
    swept = sweep_silhouettes(X, centers)
    for k, C in centers.items():
        assert swept[k] == pytest.approx(sampled_silhouette(X, centers=C, n_samples=len(X)), abs=1e-12)


def test_labels_metrics_equal_one_cluster_metrics_call_per_labelling():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(3000, 6)).astype(np.float32)
    labelings = [rng.integers(0, 4, 3000), rng.integers(-1, 7, 3000), np.zeros(3000, dtype=int)]
    shared = labels_metrics(X, labelings, block_rows=700)
    for labels, got in zip(labelings[:2], shared):
        alone = cluster_metrics(X, labels=labels, block_rows=700)
        for key in ("inertia", "calinski_harabasz", "davies_bouldin"):
            assert got[key] == pytest.approx(alone[key], rel=1e-12)
        np.testing.assert_array_equal(got["sizes"], alone["sizes"])
        np.testing.assert_array_equal(got["labels"], alone["labels"])
    assert shared[2] is None  # one cluster: cluster_metrics raises


def test_sweep_labels_each_row_once_and_gives_the_same_metrics(offset_data, monkeypatch):
    """The CH pass keeps the nearest-centre labels for the DB pass (they fit the budget): every row is
    labelled once per model instead of twice, with metrics equal bit for bit to labelling it twice."""
    from streamclust.estimators import metrics

    X, _ = offset_data
    centers = {k: StreamingKMeans(k, n_init=1, random_state=0).fit(X).cluster_centers_ for k in (2, 3, 5)}
    labelled = []
    real = metrics.assign_many

    def counting(xs, xx, models, sums):
        labelled.append(len(xs) * len(models))
        return real(xs, xx, models, sums)

    monkeypatch.setattr(metrics, "assign_many", counting)
    kept = sweep_metrics(da.from_array(X, chunks=(1000, -1)), centers, block_rows=1000)
    assert sum(labelled) == len(X) * len(centers)
    labelled.clear()
    monkeypatch.setattr(metrics, "KEPT_LABELS_SHARE", 10**12)  # no room: labelled in both passes
    twice = sweep_metrics(da.from_array(X, chunks=(1000, -1)), centers, block_rows=1000)
    assert sum(labelled) == 2 * len(X) * len(centers)
    for k in centers:
        for key in ("inertia", "calinski_harabasz", "davies_bouldin"):
            assert kept[k][key] == twice[k][key], (k, key)
        np.testing.assert_array_equal(kept[k]["sizes"], twice[k]["sizes"])


def test_sweep_on_dask_processes_labels_twice_and_equals_the_threaded_sweep(offset_data):
    """Tasks in other processes cannot fill the kept labels: the DB pass then labels again."""
    import dask

    X, _ = offset_data
    centers = {k: StreamingKMeans(k, n_init=1, random_state=0).fit(X).cluster_centers_ for k in (2, 5)}
    threaded = sweep_metrics(da.from_array(X, chunks=(1000, -1)), centers, block_rows=1000)
    with dask.config.set(scheduler="processes", num_workers=2):
        elsewhere = sweep_metrics(da.from_array(X, chunks=(1000, -1)), centers, block_rows=1000)
    for k in centers:
        assert elsewhere[k]["davies_bouldin"] == threaded[k]["davies_bouldin"]
        assert elsewhere[k]["calinski_harabasz"] == threaded[k]["calinski_harabasz"]
