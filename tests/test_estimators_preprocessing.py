"""StreamingPCA, StreamingScaler and l2_normalize against scikit-learn."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler, normalize

from streamclust.estimators import StreamingPCA, StreamingScaler, VarianceBalancer, l2_normalize


def _data(n=6000, d=24, offset=3.0, seed=0, dtype=np.float64):
    """Rows with well-separated eigenvalues (geometric decay) and a mean offset."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    ev = 0.7 ** np.arange(d)
    X = (rng.normal(size=(n, d)) * np.sqrt(ev)) @ q.T + offset
    X[:, 0] *= 3.0  # uneven feature scales, so standardising matters
    return X.astype(dtype)


def _reference(X, *, l2, standardize, n_components, whiten=False):
    Z = X.astype(np.float64)
    if l2:
        Z = normalize(Z)
    if standardize:
        Z = StandardScaler().fit_transform(Z)
    return PCA(n_components, svd_solver="full", whiten=whiten).fit(Z), Z


def _assert_components_close(ours, ref, k):
    cos = np.abs(np.sum(ours.components_[:k] * ref.components_[:k], axis=1))
    assert cos.min() > 0.9999, cos


# --------------------------------------------------------------------------- #
# l2_normalize
# --------------------------------------------------------------------------- #
def test_l2_normalize_rows_and_zero_rows():
    X = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    out = l2_normalize(X)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
    assert X[0, 0] == 3.0  # input untouched
    lazy = l2_normalize(da.from_array(X, chunks=2))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), out)


# --------------------------------------------------------------------------- #
# StreamingPCA
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("l2", [True, False])
@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pca_matches_sklearn(l2, standardize, dtype):
    X = _data(dtype=dtype)
    k = 8
    ours = StreamingPCA(k, l2_normalize=l2, standardize=standardize, block_rows=1000).fit(X)
    ref, Z = _reference(X, l2=l2, standardize=standardize, n_components=k)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-5)
    _assert_components_close(ours, ref, k)
    # same sign convention as scikit-learn's svd_flip -> same projections
    T = ours.transform(X)
    assert T.dtype == np.float32 and T.shape == (X.shape[0], k)
    np.testing.assert_allclose(T, ref.transform(Z), atol=2e-5 * np.abs(ref.transform(Z)).max())
    assert ours.n_samples_seen_ == X.shape[0] and ours.n_features_in_ == X.shape[1]
    assert (ours.scale_ is None) == (not standardize)


def test_pca_partial_eigh_for_many_features():
    # d >= 256 and n_components <= d / 2: only the top eigenpairs are computed
    X = _data(n=800, d=260, dtype=np.float32)
    ours = StreamingPCA(10, block_rows=300).fit(X)
    ref, _ = _reference(X, l2=True, standardize=False, n_components=10)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-5)
    _assert_components_close(ours, ref, 10)
    np.testing.assert_allclose(ours.components_, ref.components_, atol=1e-5)


def test_pca_whiten_matches_sklearn():
    X = _data()
    ours = StreamingPCA(5, whiten=True, standardize=True).fit(X)
    ref, Z = _reference(X, l2=True, standardize=True, n_components=5, whiten=True)
    np.testing.assert_allclose(ours.transform(X), ref.transform(Z), atol=1e-4)
    np.testing.assert_allclose(ours.transform(X).std(axis=0, ddof=1), 1.0, rtol=1e-3)


def test_pca_float_n_components_reaches_target_variance():
    X = _data()
    ours = StreamingPCA(0.9, l2_normalize=False).fit(X)
    ref, _ = _reference(X, l2=False, standardize=False, n_components=0.9)
    assert ours.n_components_ == ref.n_components_
    assert ours.explained_variance_ratio_.sum() >= 0.9
    assert ours.explained_variance_ratio_[:-1].sum() < 0.9
    assert ours.components_.shape == (ours.n_components_, X.shape[1])


def test_pca_numpy_dask_zarr_and_block_size_agree(tmp_path):
    import zarr
    X = _data(n=5000, dtype=np.float32)
    base = StreamingPCA(6, block_rows=5000).fit(X)
    z = zarr.open_array(tmp_path / "x.zarr", mode="w", shape=X.shape, chunks=(700, X.shape[1]), dtype=X.dtype)
    z[:] = X
    for Xi, br in [(X, 333), (da.from_array(X, chunks=(900, 7)), None), (z, None), (z, 1400)]:
        other = StreamingPCA(6, block_rows=br).fit(Xi)
        np.testing.assert_allclose(other.explained_variance_, base.explained_variance_, rtol=1e-6)
        np.testing.assert_allclose(other.components_, base.components_, atol=1e-6)
        np.testing.assert_allclose(other.mean_, base.mean_, atol=1e-7)
    lazy = StreamingPCA(6).fit(X).transform(da.from_array(X, chunks=1000))
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32 and lazy.shape == (X.shape[0], 6)
    np.testing.assert_allclose(lazy.compute(), base.transform(X), atol=1e-5)
    np.testing.assert_allclose(base.transform(z), base.transform(X), atol=0)


def test_pca_partial_fit_adds_up_to_fit():
    X = _data(n=3000)
    full = StreamingPCA(4, standardize=True).fit(X)
    inc = StreamingPCA(4, standardize=True)
    for part in np.array_split(X, 7):
        inc.partial_fit(part)
    np.testing.assert_allclose(inc.explained_variance_, full.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(inc.components_, full.components_, atol=1e-9)
    assert inc.n_samples_seen_ == X.shape[0]


def test_pca_inverse_transform_roundtrip():
    X = _data(n=2000, d=10)
    p = StreamingPCA(10, l2_normalize=False, whiten=True).fit(X)
    np.testing.assert_allclose(p.inverse_transform(p.transform(X)), X, atol=1e-4)


def test_pca_incremental_solver_close_to_exact():
    X = _data(n=4000)
    exact = StreamingPCA(5, standardize=True).fit(X)
    inc = StreamingPCA(5, standardize=True, solver="incremental", block_rows=500).fit(X)
    # IncrementalPCA is approximate: it only keeps 5 directions between blocks
    np.testing.assert_allclose(inc.explained_variance_, exact.explained_variance_, rtol=1e-2)
    cos = np.abs(np.sum(inc.components_ * exact.components_, axis=1))
    assert cos.min() > 0.99, cos
    np.testing.assert_allclose(inc.mean_, exact.mean_, atol=1e-12)
    np.testing.assert_allclose(inc.scale_, exact.scale_, rtol=1e-12)
    with pytest.raises(ValueError, match="standardize=True with solver='incremental'"):
        StreamingPCA(5, standardize=True, solver="incremental").partial_fit(X)
    with pytest.raises(ValueError, match="n_components=0.5"):
        StreamingPCA(0.5, solver="incremental").fit(X)


def test_pca_errors_echo_values():
    X = _data(n=50, d=4)
    with pytest.raises(ValueError, match="n_components=64 should be >= 1 and <= n_features=4"):
        StreamingPCA().fit(X)
    with pytest.raises(ValueError, match="solver='svd'"):
        StreamingPCA(2, solver="svd").fit(X)
    with pytest.raises(ValueError, match="n_samples=1"):
        StreamingPCA(2).fit(X[:1])
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StreamingPCA(2).fit(da.from_array(bad, chunks=10))


# --------------------------------------------------------------------------- #
# StreamingScaler
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("with_mean,with_std", [(True, True), (False, True), (True, False), (False, False)])
def test_scaler_matches_standard_scaler(with_mean, with_std):
    X = _data(n=3000, offset=1000.0, dtype=np.float32)
    ref = StandardScaler(with_mean=with_mean, with_std=with_std).fit(X.astype(np.float64))
    ours = StreamingScaler(with_mean, with_std, block_rows=256).fit(X)
    for attr in ("mean_", "var_", "scale_"):
        a, b = getattr(ours, attr), getattr(ref, attr)
        assert (a is None) == (b is None), attr
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-6)
    assert ours.n_samples_seen_ == 3000
    T = ours.transform(X)
    assert T.dtype == np.float32
    np.testing.assert_allclose(T, ref.transform(X.astype(np.float64)), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(X.astype(np.float64))), X, rtol=1e-6)


def test_scaler_partial_fit_and_dask():
    X = _data(n=2000)
    X[:, 3] = 5.0  # a constant feature gets scale 1
    inc = StreamingScaler()
    for part in np.array_split(X, 5):
        inc.partial_fit(part)
    ref = StandardScaler().fit(X)
    np.testing.assert_allclose(inc.mean_, ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(inc.var_, ref.var_, rtol=1e-9, atol=1e-20)
    np.testing.assert_allclose(inc.scale_, ref.scale_, rtol=1e-9)
    assert inc.scale_[3] == 1.0
    Xd = da.from_array(X, chunks=(300, 5))
    lazy = StreamingScaler().fit(Xd).transform(Xd)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), ref.transform(X), rtol=1e-9, atol=1e-12)


def test_variance_balancer_gives_each_group_its_weight_share_numpy_and_dask():
    rng = np.random.default_rng(0)
    X = np.hstack([rng.normal(scale=10.0, size=(500, 3)), rng.normal(scale=0.1, size=(500, 40))])
    bal = VarianceBalancer([3, 40], [3, 1], block_rows=64).fit(da.from_array(X, chunks=(100, -1)))
    for out in (bal.transform(X), bal.transform(da.from_array(X, chunks=(100, -1))).compute()):
        var = out.var(axis=0)
        np.testing.assert_allclose([var[:3].sum(), var[3:].sum()], [0.75, 0.25], rtol=1e-10)
    np.testing.assert_allclose(bal.total_variance_, [X[:, :3].var(axis=0).sum(), X[:, 3:].var(axis=0).sum()])
    with pytest.raises(ValueError, match="widths"):
        VarianceBalancer([3, 3]).fit(X)
    with pytest.raises(ValueError, match="weights"):
        VarianceBalancer([3, 40], [1, 0]).fit(X)
