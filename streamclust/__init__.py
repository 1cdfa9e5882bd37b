"""streamclust: cluster and screen very large sets of image descriptors out of core.

Descriptors live in a chunked Zarr store (:mod:`streamclust.store`), converted
once from the raw files (:mod:`streamclust.ingest`); streaming, scikit-learn
style estimators (:mod:`streamclust.estimators`) read them block by block with
Dask in bounded memory; :func:`run_study` runs the whole study.
"""

__version__ = "0.1.0"

from .errors import InputError, MemoryBudgetError, StoreError, StreamclustError, UnsafePickleError  # noqa: E402
from .estimators import (  # noqa: E402
    StreamingKMeans,
    StreamingPCA,
    StreamingScaler,
    cluster_metrics,
    kmeans_sweep,
    sampled_silhouette,
    sweep_metrics,
)
from .ingest import convert_case, open_source  # noqa: E402
from .store import CaseStore  # noqa: E402
from .study import run_study  # noqa: E402

__all__ = [
    "__version__",
    "CaseStore",
    "convert_case",
    "open_source",
    "run_study",
    "StreamingPCA",
    "StreamingScaler",
    "StreamingKMeans",
    "kmeans_sweep",
    "cluster_metrics",
    "sweep_metrics",
    "sampled_silhouette",
    "StreamclustError",
    "InputError",
    "UnsafePickleError",
    "StoreError",
    "MemoryBudgetError",
]
