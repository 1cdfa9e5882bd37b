"""Input and output: raw descriptor files in, a Zarr case store and saved models out.

- :mod:`~streamclust.io.pickle_stream`: reads pickled numpy arrays as a stream, never running pickle code.
- :mod:`~streamclust.io.sources`: a reader per raw descriptor format, chosen by suffix (one registry).
- :mod:`~streamclust.io.ingest`: the resumable conversion of a case's raw files to a store.
- :mod:`~streamclust.io.store`: the store's layout (:class:`~streamclust.io.store.CaseStore`) and its runs.
- :mod:`~streamclust.io.persist`: saved models (arrays + ``model.json``).

Built on :mod:`streamclust.core`; imports nothing above it (no scikit-learn), so ``streamclust convert``
stays light.
"""
