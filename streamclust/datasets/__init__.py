"""Cases to try the package on.

- :mod:`~streamclust.datasets.synthetic`: :func:`make_demo_case`, a synthetic case in the VeRi-Wild
  layout with planted clusters and planted outliers (``truth.csv``).
- :mod:`~streamclust.datasets.real`: :func:`~streamclust.datasets.real.make_real_case`, real photos
  (Fashion-MNIST, from a Debian package) with real anomalies from other sources.
"""

from streamclust.datasets.synthetic import (
    COLORS,
    DESCRIPTOR_DIMS,
    MODELS,
    OUTLIER_KINDS,
    TYPES,
    VIEWS,
    load_truth,
    make_demo_case,
)

__all__ = ["COLORS", "DESCRIPTOR_DIMS", "MODELS", "OUTLIER_KINDS", "TYPES", "VIEWS", "load_truth",
           "make_demo_case"]
