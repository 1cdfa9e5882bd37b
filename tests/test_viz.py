"""Tests of streamclust.report.figures and streamclust.estimators.projection."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from streamclust.errors import InputError
from streamclust.estimators.projection import SampledUMAP, pca_projection, umap_available
from streamclust.report.figures import (
    DensityHistograms,
    density_histograms,
    projection_extent,
    render_density_overview,
    render_metrics_vs_k,
    render_small_multiples,
    sample_points,
    write_scatter3d_html,
)


def _zarr(path, arr, chunk):
    z = zarr.create_array(str(path), shape=arr.shape, chunks=(chunk,) + arr.shape[1:], dtype=arr.dtype)
    z[:] = arr
    return z


@pytest.fixture(scope="module")
def planted():
    """20,000 rows of 6 well-separated clusters in 2-D (+ far outliers)."""
    rng = np.random.default_rng(0)
    n, k = 20_000, 6
    centers = rng.uniform(-10, 10, (k, 2))
    labels = rng.integers(0, k, n).astype(np.int32)
    xy = (centers[labels] + rng.normal(0, 0.6, (n, 2))).astype(np.float32)
    xy[:30] = rng.uniform(-200, 200, (30, 2))  # far away: clipped into the edge bins
    flags = np.zeros(n, bool)
    flags[:30] = True
    flags[rng.choice(n, 50, replace=False)] = True
    return xy, labels, flags


def _expected_counts(xy, labels, extent, bins):
    x0, x1, y0, y1 = extent
    x = np.clip(xy[:, 0].astype(np.float64), x0, x1)
    y = np.clip(xy[:, 1].astype(np.float64), y0, y1)
    out = {}
    for c in np.unique(labels):
        m = labels == c
        out[int(c)], _, _ = np.histogram2d(x[m], y[m], bins=bins, range=[[x0, x1], [y0, y1]])
    return out


def test_histograms_blockwise_zarr_equal_numpy_one_shot(tmp_path, planted):
    xy, labels, flags = planted
    zxy = _zarr(tmp_path / "xy.zarr", xy, 1500)
    zl = _zarr(tmp_path / "l.zarr", labels, 1500)
    zf = _zarr(tmp_path / "f.zarr", flags, 1500)
    extent = projection_extent(xy)  # robust: the far rows are outside
    h = density_histograms(zxy, zl, bins=64, extent=extent, outlier_flags=zf, block_rows=777)
    n = len(xy)
    assert h.counts.sum() == h.n_rows == n
    assert h.n_clipped >= 30
    assert h.clusters.tolist() == sorted(np.unique(labels).tolist())
    np.testing.assert_array_equal(h.counts.sum(axis=(1, 2)), np.bincount(labels))
    expected = _expected_counts(xy, labels, h.extent, 64)
    for i, c in enumerate(h.clusters):
        np.testing.assert_array_equal(h.counts[i], expected[int(c)])
    assert h.n_flagged == flags.sum()
    np.testing.assert_array_equal(h.outliers.sum(axis=(1, 2)), np.bincount(labels[flags], minlength=6))
    # numpy input in one block, and a Dask input, give the same grids
    h_np = density_histograms(xy, labels, bins=64, extent=extent, outlier_flags=flags)
    np.testing.assert_array_equal(h_np.counts, h.counts)
    np.testing.assert_array_equal(h_np.outliers, h.outliers)
    h_da = density_histograms(da.from_array(xy, chunks=(4000, 2)), da.from_array(labels, chunks=3000),
                              bins=64, extent=extent)
    np.testing.assert_array_equal(h_da.counts, h.counts)


def test_histograms_extents_and_options(tmp_path, planted):
    xy, labels, _ = planted
    h = density_histograms(xy, None, bins=50, extent="minmax")
    assert h.n_clipped == 0 and h.counts.shape == (1, 50, 50) and h.counts.sum() == len(xy)
    assert h.extent[0] <= xy[:, 0].min() and h.extent[1] >= xy[:, 0].max()
    robust = density_histograms(xy, labels, bins=50)
    assert robust.extent[1] - robust.extent[0] < 60  # the far rows do not stretch the frame
    assert robust.counts.sum() == len(xy)
    # 3-D input: the first two columns; non-finite rows are clipped, still counted
    xyz = np.column_stack([xy, np.zeros(len(xy), np.float32)])
    inside = 100
    x0, x1, y0, y1 = robust.extent
    assert x0 < xy[inside, 0] < x1 and y0 < xy[inside, 1] < y1
    xyz[inside, 0] = np.nan
    h3 = density_histograms(xyz, labels, bins=50, extent=robust.extent)
    assert h3.counts.sum() == len(xy) and h3.n_clipped == robust.n_clipped + 1
    noisy = labels.astype(np.int64) - (np.arange(len(labels)) % 10 == 0)  # some -1 (noise)
    hn = density_histograms(xy, noisy, bins=50, extent=robust.extent)
    assert hn.clusters[0] == -1 and hn.cluster_sizes.sum() == len(xy)
    assert hn.cluster_sizes.to_dict() == pd.Series(noisy).value_counts().to_dict()
    path = robust.save(tmp_path / "h.npz")
    back = DensityHistograms.load(path)
    np.testing.assert_array_equal(back.counts, robust.counts)
    assert back.extent == robust.extent and back.n_rows == robust.n_rows
    with pytest.raises(InputError):
        density_histograms(xy, labels[:-1])
    with pytest.raises(InputError):
        density_histograms(xy, labels, extent=(1, 0, 0, 1))


def _check_png(path, min_size=(200, 150)):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1]
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5  # not a blank picture
    return arr


def test_rendering_writes_valid_pngs(tmp_path, planted):
    xy, labels, flags = planted
    h = density_histograms(xy, labels, bins=120, outlier_flags=flags)
    over = _check_png(render_density_overview(h, tmp_path / "overview.png", title="planted",
                                              cluster_names={0: "zero <&>"}))
    assert over.shape[1] > over.shape[0]
    _check_png(render_small_multiples(h, tmp_path / "multi.png", title="planted", ncols=3))
    rows = [dict(set="s", algorithm="kmeans", k=k, silhouette=0.5 - abs(k - 6) * 0.03,
                 calinski_harabasz=1e4 / k, davies_bouldin=0.5 + abs(k - 6) * 0.1,
                 inertia=1e6 / k, chosen=k == 6) for k in range(2, 12)]
    metrics = pd.DataFrame(rows)
    _check_png(render_metrics_vs_k(metrics, tmp_path / "metrics.png", title="s"))
    two = pd.concat([metrics, metrics.assign(set="t", silhouette=metrics.silhouette - 0.1)])
    _check_png(render_metrics_vs_k(two.drop(columns=["inertia"]), tmp_path / "metrics2.png"))


def test_scatter3d_html_is_self_contained(tmp_path, planted):
    xy, labels, _ = planted
    pts = np.column_stack([xy, labels.astype(np.float32)])
    p, lab, rows = sample_points(_zarr(tmp_path / "p.zarr", pts, 3000), labels, 2000, random_state=1)
    assert p.shape == (2000, 3) and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(lab, labels[rows])
    np.testing.assert_array_equal(p, pts[rows])
    out = write_scatter3d_html(p, lab, tmp_path / "s.html", title="a <title>",
                               cluster_names={0: "</script><b>x"})
    text = out.read_text()
    assert "<canvas" in text and "a &lt;title&gt;" in text
    assert "</script><b>" not in text
    assert not re.search(r"(src|href)\s*=", text)  # nothing external
    assert "http" not in text.lower()


def test_pca_projection_shapes_and_laziness(tmp_path):
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(5000, 8)) * np.arange(8, 0, -1)).astype(np.float32)
    z = _zarr(tmp_path / "r.zarr", X, 1024)
    p = pca_projection(z, 2)
    assert isinstance(p, da.Array) and p.shape == (5000, 2) and p.dtype == np.float32
    np.testing.assert_array_equal(p.compute(), X[:, :2])
    p3 = pca_projection(X, 3)
    assert isinstance(p3, np.ndarray) and p3.shape == (5000, 3)
    fitted = pca_projection(z, 2, fit=True)
    assert isinstance(fitted, da.Array) and fitted.shape == (5000, 2)
    # the axes of largest variance: columns 0 and 1 up to sign
    corr = np.corrcoef(fitted.compute().T, X[:, :2].T)[:2, 2:]
    assert np.all(np.abs(np.diag(np.abs(corr))) > 0.9)
    with pytest.raises(ValueError):
        pca_projection(X, 4)
    # nothing is read until computed
    calls = []

    def spy(block):
        calls.append(block.shape[0])
        return block

    source = da.from_array(X, chunks=(1000, 8)).map_blocks(spy, dtype=X.dtype, meta=np.empty((0, 0), X.dtype))
    lazy = pca_projection(source, 2)
    assert calls == [] and isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), X[:, :2])
    assert sum(calls) == 5000


def _blobs(n=4000, d=16, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 6, (k, d))
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _knn_accuracy(emb, y):
    return KNeighborsClassifier(5).fit(emb[::2], y[::2]).score(emb[1::2], y[1::2])


@pytest.mark.parametrize("method", [
    "tsne",
    pytest.param("umap", marks=pytest.mark.skipif(not umap_available(), reason="umap-learn not installed")),
])
def test_sampled_embedding_preserves_clusters(tmp_path, method):
    X, y = _blobs()
    z = _zarr(tmp_path / "x.zarr", X, 700)
    est = SampledUMAP(2, sample_size=600, method=method, n_epochs=250, block_rows=900, random_state=0)
    with threadpool_limits(limits=1):  # a small problem: threads only contend
        emb = est.fit_transform(z)
    assert isinstance(emb, da.Array) and emb.shape == (4000, 2)
    emb = emb.compute()
    assert np.isfinite(emb).all()
    assert _knn_accuracy(emb, y) >= 0.9
    assert est.method_ == method and est.embedding_.shape == (600, 2)
    # sampled rows keep their exact embedding; the placement does not depend on blocks
    np.testing.assert_array_equal(emb[est.sample_indices_], est.embedding_)
    again = est.set_params(block_rows=4000).transform(X)
    assert isinstance(again, np.ndarray)
    rest = np.setdiff1d(np.arange(4000), est.sample_indices_)
    np.testing.assert_allclose(again[rest], emb[rest], atol=1e-5)


def test_sampled_embedding_parameters():
    X, _ = _blobs(n=300)
    with pytest.raises(ValueError):
        SampledUMAP(4).fit(X)
    with pytest.raises(ValueError):
        SampledUMAP(method="pca").fit(X)
    with pytest.raises(ValueError):
        SampledUMAP(method="tsne", transform_method="umap").fit(X)
