"""Core: the machinery every layer above stands on.

- :mod:`~streamclust.core.blocks`: walking row blocks under a memory budget (the one place that does it).
- :mod:`~streamclust.core.scheduler`: where the parallel passes run (threads, ``local:N``, a scheduler address).
- :mod:`~streamclust.core.urls`: folders and fsspec URLs.

Nothing here imports scikit-learn, Zarr or any other layer of the package.
"""
