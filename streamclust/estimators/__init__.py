"""Streaming, scikit-learn-style estimators over row blocks (see :mod:`streamclust.core.blocks`).

Every estimator reads numpy, Zarr or Dask arrays block by block under a memory
budget; ``transform``/``predict`` return numpy for in-memory input and lazy
Dask arrays otherwise.
"""

from streamclust.estimators.density import SampledHDBSCAN
from streamclust.estimators.hierarchy import MicroClusterAgglomerative, StreamingBirch, hierarchy_sweep
from streamclust.estimators.kmeans import StreamingKMeans, kmeans_sweep
from streamclust.estimators.metrics import cluster_metrics, sampled_silhouette, silhouette_sample, sweep_metrics
from streamclust.estimators.mixing import VarianceBalancer
from streamclust.estimators.mixture import StreamingGaussianMixture
from streamclust.estimators.neighbors import warm_up
from streamclust.estimators.outliers import KNNOutlierDetector
from streamclust.estimators.preprocessing import StreamingPCA, StreamingScaler, l2_normalize
from streamclust.estimators.projection import SampledUMAP, pca_projection, warm_up_umap
from streamclust.estimators.screening import RobustZScreen
from streamclust.estimators.spectral import NystromSpectralClustering, spectral_sweep

__all__ = [
    "StreamingPCA",
    "StreamingScaler",
    "l2_normalize",
    "VarianceBalancer",
    "StreamingKMeans",
    "kmeans_sweep",
    "cluster_metrics",
    "sweep_metrics",
    "sampled_silhouette",
    "silhouette_sample",
    "KNNOutlierDetector",
    "warm_up",
    "RobustZScreen",
    "SampledUMAP",
    "pca_projection",
    "warm_up_umap",
    "MicroClusterAgglomerative",
    "StreamingBirch",
    "hierarchy_sweep",
    "StreamingGaussianMixture",
    "SampledHDBSCAN",
    "NystromSpectralClustering",
    "spectral_sweep",
]
