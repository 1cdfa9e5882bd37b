"""Core: the machinery every layer above stands on.

- :mod:`~streamclust.core.blocks`: walking row blocks under a memory budget (the one place that does it).
- :mod:`~streamclust.core.scheduler`: where the parallel passes run (threads, ``local:N``, a scheduler address).
- :mod:`~streamclust.core.files`: files written whole or not at all (atomic writes, streamed CSV).
- :mod:`~streamclust.core.logs`: progress lines through :mod:`logging`, forwarded to a callback.
- :mod:`~streamclust.core.progress`: the progress-bar switch and the labels of the bars of the long passes.
- :mod:`~streamclust.core.urls`: folders and fsspec URLs.

Nothing here imports scikit-learn or another layer of the package but :mod:`streamclust.errors`.
"""
