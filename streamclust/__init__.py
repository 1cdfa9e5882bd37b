"""streamclust: cluster and screen very large sets of image descriptors out of core.

Descriptors live in a chunked Zarr store (:mod:`streamclust.io.store`), converted
once from the raw files (:mod:`streamclust.io.ingest`); streaming, scikit-learn
style estimators (:mod:`streamclust.estimators`) read them block by block with
Dask in bounded memory; :func:`run_study` runs the whole study and
:class:`DescriptorSetModel` labels new data.

Names are imported on first use, so ``streamclust convert`` does not pay for
scikit-learn and numba (about 150 MB of resident memory).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CaseStore": "io.store",
    "convert_case": "io.ingest",
    "open_source": "io.sources",
    "run_study": "study.driver",
    "assign_new": "model.assign",
    "DescriptorSetModel": "model.descriptor_model",
    "drift_report": "model.drift",
    "StreamingPCA": "estimators",
    "StreamingScaler": "estimators",
    "StreamingKMeans": "estimators",
    "KNNOutlierDetector": "estimators",
    "kmeans_sweep": "estimators",
    "cluster_metrics": "estimators",
    "sweep_metrics": "estimators",
    "sampled_silhouette": "estimators",
    "silhouette_sample": "estimators",
    "StreamclustError": "errors",
    "InputError": "errors",
    "UnsafePickleError": "errors",
    "StoreError": "errors",
    "MemoryBudgetError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamclust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
