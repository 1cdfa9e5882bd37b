"""Streaming, scikit-learn-style estimators over row blocks (see :mod:`streamclust._blocks`).

Every estimator reads numpy, Zarr or Dask arrays block by block under a memory
budget; ``transform``/``predict`` return numpy for in-memory input and lazy
Dask arrays otherwise.
"""

from .kmeans import StreamingKMeans, kmeans_sweep
from .metrics import cluster_metrics, sampled_silhouette, silhouette_sample, sweep_metrics
from .outliers import KNNOutlierDetector, warm_up
from .screening import RobustZScreen
from .projection import SampledUMAP, pca_projection, warm_up_umap
from .hierarchy import MicroClusterAgglomerative, StreamingBirch, hierarchy_sweep
from .mixture import StreamingGaussianMixture
from .density import SampledHDBSCAN
from .preprocessing import StreamingPCA, StreamingScaler, l2_normalize
from .mixing import VarianceBalancer

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
]
