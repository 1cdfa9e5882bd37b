"""Input and output: raw descriptor files in, a Zarr case store and saved models out.

- :mod:`~streamclust.io.pickle_stream`: reads pickled numpy arrays as a stream, never running pickle code.
- :mod:`~streamclust.io.ingest`: the readers per raw format and the resumable conversion to a store.
- :mod:`~streamclust.io.store`: the store's layout (:class:`~streamclust.io.store.CaseStore`) and its runs.
- :mod:`~streamclust.io.persist`: saved models (arrays + ``model.json``).

Built on :mod:`streamclust.core`; imports nothing above it (no scikit-learn), so ``streamclust convert``
stays light.
"""
