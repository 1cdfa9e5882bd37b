"""The same pipeline on a real dask.distributed cluster gives the threaded results."""

from __future__ import annotations

import distributed
import numpy as np
import pytest

from streamclust.estimators import StreamingPCA, cluster_metrics, kmeans_sweep, sweep_metrics


def _pipeline(X):
    pca = StreamingPCA(6, standardize=True, block_rows=1500).fit(X)
    Z = pca.transform(X)
    models = kmeans_sweep(Z, [3, 5], n_init=2, max_iter=8, random_state=0, block_rows=1500)
    centers = {k: m.cluster_centers_ for k, m in models.items()}
    return pca, centers, sweep_metrics(Z, centers, block_rows=1500), cluster_metrics(
        Z, models[5].labels_, block_rows=1500
    )


@pytest.mark.distributed
def test_distributed_matches_threaded():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 3
    X = (centers[rng.integers(0, 5, 6000)] + rng.normal(size=(6000, 16))).astype(np.float32)
    ref_pca, ref_centers, ref_sweep, ref_metrics = _pipeline(X)
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        pca, cents, swept, metrics = _pipeline(X)
        # the per-block work really ran on both worker processes
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        assert len(executed) == 2 and all(count > 0 for count in executed.values()), executed
    np.testing.assert_allclose(pca.components_, ref_pca.components_, atol=1e-6)
    np.testing.assert_allclose(pca.explained_variance_, ref_pca.explained_variance_, rtol=1e-6)
    for k in ref_centers:
        np.testing.assert_allclose(cents[k], ref_centers[k], atol=1e-6)
        for key in ("inertia", "calinski_harabasz", "davies_bouldin"):
            np.testing.assert_allclose(swept[k][key], ref_sweep[k][key], rtol=1e-6)
    for key in ("inertia", "calinski_harabasz", "davies_bouldin"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-6)
