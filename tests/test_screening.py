"""RobustZScreen: the combined outlier score (robust z-scores of log evidence, combined)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from streamclust.estimators import RobustZScreen, StreamingPCA
from streamclust.estimators.screening import DEFAULT_Z_THRESHOLD


def test_location_and_scale_are_the_median_and_mad_of_the_logs():
    rng = np.random.default_rng(0)
    E = np.exp(rng.normal(1.0, 2.0, size=(20_001, 2)))
    screen = RobustZScreen(["upper", "both"], ["dist", "norm"]).fit(E)
    logs = np.log(E)
    med = np.median(logs, axis=0)
    np.testing.assert_allclose(screen.location_, med)
    up = logs[:, 0][logs[:, 0] > med[0]] - med[0]
    np.testing.assert_allclose(screen.scale_[0], 1.4826 * np.median(up))
    np.testing.assert_allclose(screen.scale_[1], 1.4826 * np.median(np.abs(logs[:, 1] - med[1])))
    # normal logs: both scales estimate the standard deviation 2
    np.testing.assert_allclose(screen.scale_, 2.0, rtol=0.03)
    assert screen.threshold_ == DEFAULT_Z_THRESHOLD and screen.n_samples_fit_ == len(E)


def test_score_is_the_largest_z_and_the_reason_names_its_column():
    rng = np.random.default_rng(1)
    E = np.exp(rng.normal(size=(5000, 3)))
    screen = RobustZScreen(["upper", "both", "upper"], ["neighbours", "norm", "residual"], combine="max").fit(E)
    probe = np.array([[1.0, 1.0, 1.0],          # typical
                      [np.e ** 6, 1.0, 1.0],    # far from its neighbours
                      [1.0, np.e ** -6, 1.0],   # tiny norm: the "both" side counts
                      [1.0, 1.0, np.e ** 6],    # off the subspace
                      [np.e ** -6, 1.0, 1.0]])  # very close neighbours: not anomalous
    z = screen.z_scores(probe)
    np.testing.assert_allclose(screen.score(probe), z.max(axis=1))
    assert list(screen.reasons(probe)[1:4]) == ["neighbours", "norm", "residual"]
    flags = screen.predict(probe)
    assert list(flags) == [1, -1, -1, -1, 1]
    assert z[2, 1] > 5 and z[4, 0] < 0


def test_rms_adds_up_the_positive_z_scores():
    rng = np.random.default_rng(3)
    E = np.exp(rng.normal(size=(5000, 3)))
    screen = RobustZScreen(["upper", "both", "upper"]).fit(E)
    assert screen.combine == "rms"
    probe = np.exp(np.array([[3.0, 0.0, 0.0], [3.0, 0.0, 3.0], [-6.0, 0.0, 3.0]]) * screen.scale_ + screen.location_)
    z = screen.z_scores(probe)
    np.testing.assert_allclose(screen.score(probe), np.sqrt((np.maximum(z, 0) ** 2).sum(axis=1)), rtol=1e-6)
    s = screen.score(probe)
    assert s[1] > s[0] * 1.4             # two tests at 3 sigma weigh more than one
    np.testing.assert_allclose(s[2], s[0], rtol=1e-5)   # a very small distance does not cancel evidence
    assert list(screen.reasons(probe)) == ["e0", "e0", "e2"]


def test_zero_distances_and_ties_stay_finite():
    E = np.ones((100, 2))
    E[:10, 0] = 0.0            # duplicates: distance 0
    E[50:, 1] = 2.0
    screen = RobustZScreen(["upper", "both"]).fit(E)
    assert np.all(np.isfinite(screen.scale_) | (screen.scale_ == np.inf))
    assert np.all(np.isfinite(screen.score(E)))
    # a column whose values all tie carries no information: z = 0
    flat = RobustZScreen(["upper"]).fit(np.full((50, 1), 3.0))
    assert flat.scale_[0] == np.inf
    assert np.all(flat.score(np.array([[3.0], [300.0]])) == 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sides=[]), "sides"), (dict(sides=["up"]), "sides"),
    (dict(sides=["upper"], names=["a", "b"]), "names"),
    (dict(sides=["upper"], threshold=float("nan")), "threshold"),
    (dict(sides=["upper"], threshold="3"), "threshold"),
    (dict(sides=["upper"], combine="mean"), "combine"),
])
def test_bad_parameters_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RobustZScreen(**kwargs).fit(np.ones((5, len(kwargs["sides"]) or 1)))


def test_bad_evidence_is_refused():
    screen = RobustZScreen(["upper", "upper"]).fit(np.ones((5, 2)) + np.arange(5)[:, None])
    for bad in (np.ones((3, 3)), -np.ones((3, 2)), np.full((3, 2), np.nan)):
        with pytest.raises(ValueError, match="evidence"):
            screen.score(bad)


def test_a_group_of_look_alike_anomalies_is_found_where_lof_hides_it():
    """Real anomalies come in groups (dark frames resemble each other): LOF compares a row
    with its look-alikes and misses the group; the k-distance and the norm do not."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)) * 4
    X = centres[rng.integers(0, 20, 6000)] + rng.normal(size=(6000, 16))
    group = rng.normal(size=16) * 9 + rng.normal(size=(120, 16)) * 0.3   # 120 alike anomalies, 2 %
    X = np.vstack([X, group]).astype(np.float32)
    y = np.r_[np.zeros(6000, bool), np.ones(120, bool)]
    norm = np.r_[rng.lognormal(0, 0.1, 6000), rng.lognormal(-1, 0.1, 120)]   # weak activations
    lof = roc_auc_score(y, -LocalOutlierFactor(20).fit(X).negative_outlier_factor_)
    dist = NearestNeighbors(n_neighbors=21).fit(X).kneighbors(X)[0][:, 20]
    E = np.column_stack([dist, norm])
    sample = rng.choice(len(X), 2000, replace=False)
    combined = roc_auc_score(y, RobustZScreen(["upper", "both"]).fit(E[sample]).score(E))
    assert lof < 0.7 < 0.99 < combined


def test_row_stats_are_the_norm_and_the_reconstruction_error():
    rng = np.random.default_rng(0)
    X = rng.gamma(1.0, size=(3000, 40)).astype(np.float32)
    for kwargs in ({}, {"whiten": True}, {"standardize": True}, {"l2_normalize": False}):
        pca = StreamingPCA(8, **kwargs).fit(X)
        reduced, stats = pca.transform_with_row_stats(X)
        np.testing.assert_array_equal(reduced, pca.transform(X))
        x = X / np.linalg.norm(X, axis=1, keepdims=True) if pca.l2_normalize else X.astype(np.float64)
        xc = (x - pca.mean_) / (pca.scale_ if pca.scale_ is not None else 1.0)
        residual = np.linalg.norm(xc - (xc @ pca.components_.T) @ pca.components_, axis=1)
        np.testing.assert_allclose(stats[:, 0], np.linalg.norm(X, axis=1), rtol=1e-5)
        np.testing.assert_allclose(stats[:, 1], residual, rtol=1e-4, atol=1e-6)


def test_row_stats_are_lazy_and_read_the_input_once_on_dask():
    import dask
    import dask.array as da

    X = np.random.default_rng(1).normal(size=(2000, 12)).astype(np.float32)
    pca = StreamingPCA(4).fit(X)
    reads = []

    def read(block):
        reads.append(len(block))
        return block

    dX = da.from_array(X, chunks=(500, 12)).map_blocks(read, dtype=X.dtype)
    reduced, stats = pca.transform_with_row_stats(dX)
    assert isinstance(reduced, da.Array) and isinstance(stats, da.Array)
    r, s = dask.compute(reduced, stats, scheduler="sync")
    assert sum(reads) == len(X)        # one pass serves both outputs
    ref_r, ref_s = pca.transform_with_row_stats(X)
    np.testing.assert_allclose(r, ref_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5)


def test_screen_scores_fits_on_the_reference_rows_and_scores_every_row_in_blocks():
    from streamclust.estimators.screening import screen_scores

    rng = np.random.default_rng(2)
    n = 40_000
    kdist, norm, residual = np.exp(rng.normal(size=(3, n)))
    ref = np.sort(rng.choice(n, 800, replace=False))
    evidence = {"norm": norm.astype(np.float32), "residual": residual.astype(np.float32)}
    screen, scores = screen_scores(kdist, evidence, ref)
    assert screen.names == ["neighbours", "norm", "residual"] and screen.sides == ["upper", "both", "upper"]
    E = np.column_stack([kdist, evidence["norm"], evidence["residual"]])
    expected = RobustZScreen(["upper", "both", "upper"]).fit(E[ref]).score(E)
    np.testing.assert_array_equal(scores, expected)
    _, small_blocks = screen_scores(kdist, evidence, ref, memory="8MiB")   # 14,563 rows a block
    np.testing.assert_array_equal(small_blocks, scores)


def test_from_fitted_rebuilds_the_same_screen_and_refuses_bad_state():
    E = np.exp(np.random.default_rng(4).normal(size=(500, 2)))
    fitted = RobustZScreen(["upper", "both"], ["kdist", "norm"], threshold=3.0).fit(E)
    again = RobustZScreen.from_fitted(fitted.location_, fitted.scale_, n_samples_fit=500, **fitted.get_params())
    np.testing.assert_array_equal(again.score(E), fitted.score(E))
    assert again.threshold_rule_ == fitted.threshold_rule_ and again.threshold_ == 3.0
    for location, scale in (([0.0], [1.0]), ([0.0, 0.0], [1.0, -1.0]), ([np.nan, 0.0], [1.0, 1.0])):
        with pytest.raises(ValueError):
            RobustZScreen.from_fitted(location, scale, n_samples_fit=1, **fitted.get_params())
