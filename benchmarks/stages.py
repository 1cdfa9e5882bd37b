"""Benchmark stages, each run in its own process by ``_measure.measure``.

Each function takes JSON-able arguments and returns a JSON-able dict of facts
(quality figures, row counts); time and peak RSS are measured around it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd


def make_pickle(path: str, n_rows: int, n_features: int, dtype: str, seed: int = 0) -> dict:
    """Write a pickled (n_rows, n_features) array of ReLU-like random values, streamed."""
    from streamclust._pickle_stream import write_pickled_array

    rng = np.random.default_rng(seed)
    block = 8192

    def blocks():
        for start in range(0, n_rows, block):
            rows = min(block, n_rows - start)
            yield np.maximum(rng.standard_normal((rows, n_features), dtype=np.float32), 0).astype(dtype)

    write_pickled_array(path, (n_rows, n_features), np.dtype(dtype), blocks(), protocol=4)
    csv = Path(path).with_name("images_paths.csv")
    if not csv.exists():
        ids = [f"veriwild\\1\\{i // 20:05d}\\{i:06d}.jpg" for i in range(n_rows)]
        pd.DataFrame({"paths": ids}).to_csv(csv, index=False)
    return {"bytes": Path(path).stat().st_size}


def convert_streamclust(path: str, store: str, memory: str = "1GB") -> dict:
    """streamclust's conversion of one pickle (with its images_paths.csv) into a store."""
    from streamclust.ingest import convert_case

    src = Path(path)
    s = convert_case(src.parent, store, descriptors={"x": str(src)},
                     paths_csv=src.with_name("images_paths.csv"), memory=memory)
    return {"rows": s.n_rows, "bytes": src.stat().st_size}


def convert_numpy_baseline(path: str, store: str) -> dict:
    """What a user writes by hand: pickle.load the array, then zarr.save it."""
    import zarr

    with open(path, "rb") as f:
        arr = pickle.load(f)  # noqa: S301 - the baseline being measured
    zarr.save_array(store, arr.astype(np.float32, copy=False), zarr_format=3)
    return {"rows": int(arr.shape[0])}


def verify_bit_for_bit(path: str, store: str) -> dict:
    """Compare every stored value with the source after the float32 cast, block by block."""
    from streamclust._pickle_stream import open_pickled_array
    from streamclust.store import CaseStore

    src = open_pickled_array(path)
    arr = CaseStore(store).descriptor("x")
    step = arr.chunks[0] * 4
    for start in range(0, src.shape[0], step):
        stop = min(src.shape[0], start + step)
        a = src.read_rows(start, stop).astype(np.float32)
        b = arr[start:stop]
        if not np.array_equal(a.view(np.uint32), b.view(np.uint32)):
            bad = start + int(np.flatnonzero((a.view(np.uint32) != b.view(np.uint32)).any(axis=1))[0])
            return {"equal": False, "first_bad_row": bad}
    return {"equal": True}


def make_demo(out: str, n_rows: int, seed: int = 0) -> dict:
    """The demo case without images (its descriptors are the same as with images)."""
    from streamclust.datasets import make_demo_case

    make_demo_case(out, n_rows=n_rows, seed=seed, images=False)
    return {"rows": n_rows}


def convert_case_streamclust(case: str, store: str, memory: str = "1GB") -> dict:
    """streamclust convert on a whole case folder."""
    from streamclust.ingest import convert_case

    s = convert_case(case, store, memory=memory)
    return {"rows": s.n_rows, "sets": s.descriptor_names()}


def study_streamclust(store: str, out: str, k: str = "2:15", memory: str = "1GB") -> dict:
    """streamclust study: PCA(64) + k-means sweep + exact metrics + labels for every set."""
    from streamclust.study import run_study

    res = run_study(store, out, k=k, memory=memory, random_state=0)
    return {name: {"k": r.k, "seconds": round(r.seconds, 1)} for name, r in res.sets.items()}


def study_sklearn_baseline(case: str, k: str = "2:15", silhouette_samples: int = 10_000) -> dict:
    """The in-memory pipeline a user would write: load each pickle, L2-normalise, PCA(64),
    MiniBatchKMeans(n_init=3) for every k, CH/DB on all rows, silhouette on a sample."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    from sklearn.preprocessing import normalize

    lo, hi = (int(v) for v in k.split(":"))
    out = {}
    for path in sorted(Path(case, "descriptors").glob("*.pickle")):
        with open(path, "rb") as f:
            X = pickle.load(f)  # noqa: S301 - the baseline being measured
        Z = PCA(n_components=64, random_state=0).fit_transform(normalize(X)).astype(np.float32)
        del X
        best = None
        rng = np.random.default_rng(0)
        sample = rng.choice(len(Z), size=min(silhouette_samples, len(Z)), replace=False)
        for kk in range(lo, hi + 1):
            labels = MiniBatchKMeans(kk, n_init=3, random_state=0).fit_predict(Z)
            sil = silhouette_score(Z[sample], labels[sample])
            calinski_harabasz_score(Z, labels)
            davies_bouldin_score(Z, labels)
            if best is None or sil > best[1]:
                best = (kk, sil)
        out[path.stem] = {"k": best[0]}
    return out


def labelling_pass(store: str, model_dir: str, name: str) -> dict:
    """The study's own labelling pass: PCA transform + nearest centre of every row (Dask, parallel)."""
    import dask.array as da

    from streamclust.model import DescriptorSetModel
    from streamclust.store import CaseStore

    model = DescriptorSetModel.load(model_dir)
    X = da.from_zarr(CaseStore(store).descriptor(name))
    import time

    t0 = time.perf_counter()
    labels = model.kmeans.predict(model.pca.transform(X)).compute()
    seconds = time.perf_counter() - t0
    return {"rows": int(len(labels)), "rows_per_s": len(labels) / seconds, "seconds": seconds}


def assign_streamclust(store: str, model_dir: str, out: str) -> dict:
    """streamclust assign of every row of a store (labels, sentences, outlier scores, drift)."""
    import time

    from streamclust.assign import assign_new
    from streamclust.model import DescriptorSetModel

    t0 = time.perf_counter()
    DescriptorSetModel.load(model_dir)  # index rebuild + numba compile, reported apart
    load_s = time.perf_counter() - t0
    res = assign_new(model_dir, store, out)
    return {"rows": res.n_rows, "rows_per_s": res.rows_per_second, "load_s": load_s,
            "drift": res.drift.verdict}
