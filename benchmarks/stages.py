"""Benchmark stages, each run in its own process by ``_measure.measure``.

Each function takes JSON-able arguments and returns a JSON-able dict of facts
(quality figures, row counts); wall time and peak RSS are measured around the
whole call, so everything a function does (imports, reads, numba compilation,
writing its output) is what is measured.  Functions named ``*_quality`` are not
measured methods: they compare the outputs the measured stages left under
``<work>/`` (components, centres, scores, embeddings).

streamclust's stages chain what :func:`streamclust.study.driver.run_study` does for one
descriptor set (:func:`streamclust.study.steps.study_set`), with the same parameters, and write what the
study writes to its run into ``<work>/stages.zarr`` (a run group named ``bench``):
``<set>/reduced`` (preprocess) -> ``<set>/labels`` (k sweep) ->
``<set>/outlier_score``, ``<set>/is_outlier`` (outliers) -> projections.
Baselines read the same inputs (the pickles, or the stored reduced rows).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

#: The reference case's four descriptor sets (2560, 512, 128 and 512 dims).
SETS = ("efficientnet-b7", "osnet", "vdc_color", "vdc_type")
#: Parameters of run_study's defaults, used by every method of a stage.
N_COMPONENTS = 64
N_INIT = 3
N_NEIGHBORS = 20
SILHOUETTE_SAMPLES = 10_000
SEED = 0
#: Rows per block of the benchmark's own (unmeasured or baseline) block loops.
BLOCK = 65_536


# ------------------------------------------------------------------ helpers
def _ks(k: str) -> list[int]:
    """``"2:15"`` -> [2..15], ``"4,8"`` -> [4, 8] (without importing streamclust into baselines)."""
    if ":" in k:
        lo, hi = (int(v) for v in k.split(":"))
        return list(range(lo, hi + 1))
    return sorted({int(v) for v in k.split(",")})


def _budget(memory: str) -> int:
    """The block budget run_study derives from its ``memory`` (which covers the whole process)."""
    from streamclust.core.blocks import parse_memory
    from streamclust.study import LIBRARY_BASELINE

    total = parse_memory(memory)
    return max(total - LIBRARY_BASELINE, total // 4)


def _run_group(work: str):
    """The benchmark's run group ``<work>/stages.zarr`` (streamclust's stages write there)."""
    import zarr

    from streamclust.io.store import RunGroup

    Path(work).mkdir(parents=True, exist_ok=True)
    return RunGroup(zarr.open_group(str(Path(work) / "stages.zarr"), mode="a", zarr_format=3), "bench")


def _stored(work: str, name: str, what: str = "reduced"):
    """An array written by a streamclust stage, opened with zarr alone (baselines use this)."""
    import zarr

    return zarr.open_array(str(Path(work) / "stages.zarr" / name / what), mode="r")


def _save(work: str, name: str, what: str, **arrays: np.ndarray) -> None:
    """Keep a stage's output for its ``*_quality`` comparison: ``<work>/<name>/<what>.npz``."""
    folder = Path(work) / name
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{what}.npz", **arrays)


def _load(work: str, name: str, what: str) -> dict | None:
    path = Path(work) / name / f"{what}.npz"
    if not path.exists():
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _load_pickle(path: str | Path) -> np.ndarray:
    """What a user does with a descriptor pickle: ``pickle.load`` the whole array."""
    with open(path, "rb") as f:
        return pickle.load(f)


def _lof_from_knn(ind: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """scikit-learn's LOF from each row's k nearest OTHER rows: ``ind``/``dist`` (n, k), sorted."""
    kdist = dist[:, -1]
    reach = np.maximum(dist, kdist[ind]).astype(np.float64)
    lrd = 1.0 / (reach.mean(axis=1) + 1e-10)
    return (lrd[ind].mean(axis=1) / lrd).astype(np.float32)


def _lof_sklearn(Z: np.ndarray) -> np.ndarray:
    """Exact scikit-learn LocalOutlierFactor(n_neighbors=20) on all rows of ``Z`` (all cores);
    higher = more outlying."""
    from sklearn.neighbors import LocalOutlierFactor

    return (-LocalOutlierFactor(n_neighbors=N_NEIGHBORS, n_jobs=-1).fit(Z).negative_outlier_factor_).astype(np.float32)


def _sklearn_sweep(Z: np.ndarray, ks: list[int]) -> dict:
    """The in-memory k sweep a user writes: MiniBatchKMeans(n_init=3) per k, Calinski-Harabasz and
    Davies-Bouldin on all rows, silhouette on a seeded sample; k of the highest silhouette."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    sample = np.random.default_rng(SEED).choice(len(Z), size=min(SILHOUETTE_SAMPLES, len(Z)), replace=False)
    centers, best = {}, None
    for kk in ks:
        km = MiniBatchKMeans(kk, n_init=N_INIT, random_state=SEED).fit(Z)
        sil = silhouette_score(Z[sample], km.labels_[sample])
        calinski_harabasz_score(Z, km.labels_)
        davies_bouldin_score(Z, km.labels_)
        centers[kk] = km.cluster_centers_
        if best is None or sil > best[1]:
            best = (kk, sil)
    return {"k": best[0], "centers": centers}


def _sklearn_pipeline(load, ks: list[int], lof_rows: int | None = None, outliers: str = "lof") -> dict:
    """The issue's in-memory baseline for one descriptor array: ``load()`` it whole, L2-normalise,
    PCA(64), the k sweep of :func:`_sklearn_sweep`, then the outlier scores of every row: exact LOF
    on all rows (or the first ``lof_rows``), or ``outliers="iforest"``: scikit-learn's
    ``IsolationForest`` (its defaults, seeded)."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import normalize

    Z = PCA(n_components=N_COMPONENTS, random_state=SEED).fit_transform(normalize(load())).astype(np.float32)
    sweep = _sklearn_sweep(Z, ks)
    if outliers == "iforest":
        scores = -IsolationForest(random_state=SEED).fit(Z).score_samples(Z)
    else:
        scores = _lof_sklearn(Z[:lof_rows])
    return {"k": sweep["k"], "outlier_rows": int(len(scores))}


def imports_only() -> dict:
    """Peak RSS of a process that only imports numpy, pandas, scikit-learn and zarr (the baselines' floor)."""
    import sklearn.cluster
    import sklearn.neighbors  # noqa: F401
    import zarr  # noqa: F401

    return {}


def make_pickle(path: str, n_rows: int, n_features: int, dtype: str, seed: int = 0) -> dict:
    """Write a pickled (n_rows, n_features) array of ReLU-like random values, streamed."""
    from streamclust.io.pickle_stream import write_pickled_array

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


def convert_streamclust(path: str, store: str, memory: str = "1GB", paths_csv: str | None = None,
                        name: str = "x") -> dict:
    """streamclust's conversion of one pickle (with ``paths_csv``, default its sibling
    images_paths.csv) into a store, as descriptor set ``name``."""
    from streamclust.io.ingest import convert_case

    src = Path(path)
    s = convert_case(src.parent, store, descriptors={name: str(src)},
                     paths_csv=paths_csv or src.with_name("images_paths.csv"), memory=memory)
    return {"rows": s.n_rows, "bytes": src.stat().st_size}


def convert_numpy_baseline(path: str, store: str) -> dict:
    """What a user writes by hand: pickle.load the array, then zarr.save it."""
    import zarr

    arr = _load_pickle(path)
    zarr.save_array(store, arr.astype(np.float32, copy=False), zarr_format=3)
    return {"rows": int(arr.shape[0])}


def verify_bit_for_bit(path: str, store: str, name: str = "x") -> dict:
    """Compare every stored value with the source after the float32 cast, block by block."""
    from streamclust.io.pickle_stream import open_pickled_array
    from streamclust.io.store import CaseStore

    src = open_pickled_array(path)
    arr = CaseStore(store).descriptor(name)
    step = arr.chunks[0] * 4
    for start in range(0, src.shape[0], step):
        stop = min(src.shape[0], start + step)
        a = src.read_rows(start, stop).astype(np.float32)
        b = arr[start:stop]
        if not np.array_equal(a.view(np.uint32), b.view(np.uint32)):
            bad = start + int(np.flatnonzero((a.view(np.uint32) != b.view(np.uint32)).any(axis=1))[0])
            return {"equal": False, "first_bad_row": bad}
    return {"equal": True}


def convert_quality(path: str, store: str, baseline_store: str, name: str) -> dict:
    """The 'convert' stage's check: streamclust's store holds the pickle bit for bit; then both
    scratch stores are deleted (a 416k x 2560 store is ~4 GB)."""
    import shutil

    equal = verify_bit_for_bit(path, store, name)
    for folder in (store, baseline_store):
        shutil.rmtree(folder, ignore_errors=True)
    return {"streamclust": {"bit_for_bit": equal["equal"]}}


def make_demo(out: str, n_rows: int, seed: int = 0) -> dict:
    """The demo case without images (its descriptors are the same as with images)."""
    from streamclust.datasets.synthetic import make_demo_case

    make_demo_case(out, n_rows=n_rows, seed=seed, images=False)
    return {"rows": n_rows}


def convert_case_streamclust(case: str, store: str, memory: str = "1GB") -> dict:
    """streamclust convert on a whole case folder."""
    from streamclust.io.ingest import convert_case

    s = convert_case(case, store, memory=memory)
    return {"rows": s.n_rows, "sets": s.descriptor_names()}


def study_streamclust(store: str, out: str, k: str = "2:15", memory: str = "1GB", umap: bool = False,
                      algorithms: str = "kmeans") -> dict:
    """The whole streamclust study (run_study, report=True): per set StreamingPCA(64), the k sweep with
    exact metrics and labels, kNN outlier scores of every row, profiles and models; then the set
    comparison, results/outliers/clusters CSVs and report.html with density plots of all rows
    (``umap``: also every row's position in a 2-D UMAP of each set, shown in the report; ``algorithms``:
    the clustering algorithms, compared in the report)."""
    from streamclust.study import run_study

    res = run_study(store, out, k=k, memory=memory, random_state=SEED, report=True, umap=umap,
                    algorithms=algorithms.split(","))
    return {name: {"k": r.k, "seconds": round(r.seconds, 1), "outliers": r.n_outliers}
            for name, r in res.sets.items()}


def study_sklearn_baseline(case: str, k: str = "2:15", lof_rows: int | None = None, outliers: str = "lof") -> dict:
    """The issue's in-memory baseline of the study: every pickle loaded with numpy, then
    :func:`_sklearn_pipeline` (normalise, PCA(64), MiniBatchKMeans over the same k with CH/DB on all
    rows and a sampled silhouette, exact LOF on all rows or ``outliers="iforest"``)."""
    return {path.stem: _sklearn_pipeline(lambda p=path: _load_pickle(p), _ks(k), lof_rows, outliers)
            for path in sorted(Path(case, "descriptors").glob("*.pickle"))}


def labelling_pass(store: str, model_dir: str, name: str) -> dict:
    """The study's own labelling pass: PCA transform + nearest centre of every row (Dask, parallel)."""
    import dask.array as da

    from streamclust.io.store import CaseStore
    from streamclust.model.descriptor_model import DescriptorSetModel

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

    from streamclust.model.assign import assign_new
    from streamclust.model.descriptor_model import DescriptorSetModel

    t0 = time.perf_counter()
    DescriptorSetModel.load(model_dir)  # index rebuild + numba compile, reported apart
    load_s = time.perf_counter() - t0
    res = assign_new(model_dir, store, out)
    return {"rows": res.n_rows, "rows_per_s": res.rows_per_second, "load_s": load_s,
            "drift": res.drift.verdict}


# ------------------------------------------------------------------ stages: preprocess
def pca_streamclust(store: str, name: str, work: str, memory: str = "1GB") -> dict:
    """run_study's step 1: StreamingPCA(64, l2_normalize=True) fitted in ONE pass over the Zarr
    descriptors (exact covariance), then one transform pass writing the reduced rows to Zarr."""
    import dask.array as da

    from streamclust.estimators import StreamingPCA
    from streamclust.io.store import CaseStore
    from streamclust.study.steps import store_reduced

    X = CaseStore(store).descriptor(name)
    pca = StreamingPCA(n_components=N_COMPONENTS, l2_normalize=True, memory=_budget(memory))
    pca.fit(da.from_zarr(X))
    store_reduced(pca, X, _run_group(work), name)
    _save(work, name, "pca-streamclust", components=pca.components_, evr=pca.explained_variance_ratio_)
    return {"rows": int(X.shape[0])}


def pca_sklearn(case: str, name: str, work: str) -> dict:
    """In memory: ``pickle.load`` the set, ``normalize``, ``PCA(64).fit_transform`` (scikit-learn picks its solver)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    X = _load_pickle(Path(case, "descriptors", f"{name}.pickle"))
    pca = PCA(n_components=N_COMPONENTS, random_state=SEED)
    pca.fit_transform(normalize(X))
    _save(work, name, "pca-sklearn", components=pca.components_, evr=pca.explained_variance_ratio_)
    return {"rows": int(X.shape[0]), "solver": pca._fit_svd_solver}


def pca_daskml(store: str, name: str, work: str, kind: str = "incremental") -> dict:
    """dask-ml ``IncrementalPCA`` (``kind="incremental"``, its default batches) or ``PCA`` on the Zarr
    descriptors as a dask array, rows L2-normalised lazily; the reduced rows are written to Zarr
    (``<work>/daskml.zarr``) as streamclust writes its own.  Warnings raised are reported."""
    import dask.array as da
    from dask_ml.decomposition import PCA, IncrementalPCA

    from streamclust.io.store import CaseStore

    X = da.from_zarr(CaseStore(store).descriptor(name))
    Xn = X / da.linalg.norm(X, axis=1, keepdims=True)
    est = (IncrementalPCA if kind == "incremental" else PCA)(n_components=N_COMPONENTS, random_state=SEED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(Xn)
        da.to_zarr(est.transform(Xn).astype(np.float32), str(Path(work) / "daskml.zarr"),
                   component=f"{name}/{kind}", overwrite=True)
    _save(work, name, f"pca-daskml-{kind}", components=np.asarray(est.components_),
          evr=np.asarray(est.explained_variance_ratio_))
    return {"rows": int(X.shape[0]), "warnings": sorted({str(w.message)[:60] for w in caught})[:3]}


def pca_quality(store: str, name: str, work: str, methods: list[str]) -> dict:
    """Not measured.  The exact reference: the covariance of the L2-normalised rows accumulated in
    float64 block by block with plain numpy, one ``eigh``.  For each method's 64 components W:
    ``variance_kept`` = tr(W C W') / (sum of the exact top 64 eigenvalues) (1 = optimal),
    ``cos2`` = mean squared cosine of the principal angles to the exact subspace, and
    ``evr_reported`` (its own explained_variance_ratio_ sum) vs ``evr_true`` = tr(W C W') / tr(C)."""
    from streamclust.io.store import CaseStore

    X = CaseStore(store).descriptor(name)
    n, d = X.shape
    total, gram = np.zeros(d), np.zeros((d, d))
    for s in range(0, n, BLOCK // 4):
        B = X[s:s + BLOCK // 4].astype(np.float64)
        B /= np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-300)
        total += B.sum(axis=0)
        gram += B.T @ B
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    vals, vecs = np.linalg.eigh(cov)
    top_vals, top = vals[::-1][:N_COMPONENTS], vecs[:, ::-1][:, :N_COMPONENTS]
    out = {}
    for m in methods:
        saved = _load(work, name, f"pca-{m}")
        if saved is None:
            continue
        W = saved["components"].astype(np.float64)
        captured = float(np.einsum("ij,jk,ik->", W, cov, W))
        cosines = np.linalg.svd(W @ top, compute_uv=False)
        out[m] = {"evr_reported": float(saved["evr"].sum()), "evr_true": captured / float(np.trace(cov)),
                  "variance_kept": captured / float(top_vals.sum()), "cos2": float(np.mean(cosines ** 2))}
    return out


# ------------------------------------------------------------------ stages: k sweep
def kmeans_streamclust(work: str, name: str, k: str = "2:15", memory: str = "1GB") -> dict:
    """run_study's steps 2-5 on the stored reduced rows: ``kmeans_sweep`` (n_init=3, passes shared by
    all k), ``sweep_metrics`` (exact all-row inertia, CH, DB; shared passes), sampled silhouette,
    ``choose_k``, and the labels of every row written to Zarr."""
    from streamclust.estimators import kmeans_sweep, sampled_silhouette, sweep_metrics
    from streamclust.study import choose_k
    from streamclust.study.steps import store_labels

    run, budget, ks = _run_group(work), _budget(memory), _ks(k)
    reduced = run.array(f"{name}/reduced")
    models = kmeans_sweep(reduced, ks, n_init=N_INIT, memory=budget, random_state=SEED)
    centers = {kk: m.cluster_centers_ for kk, m in models.items()}
    scores = sweep_metrics(reduced, centers, memory=budget)
    metrics = pd.DataFrame([{"k": kk, "davies_bouldin": scores[kk]["davies_bouldin"],
                             "silhouette": sampled_silhouette(reduced, centers=centers[kk],
                                                              n_samples=SILHOUETTE_SAMPLES,
                                                              random_state=SEED)} for kk in ks])
    chosen = choose_k(metrics)
    store_labels(models[chosen], reduced, run, name)
    _save(work, name, "kmeans-streamclust", **{str(kk): c for kk, c in centers.items()})
    return {"rows": int(reduced.shape[0]), "k": chosen}


def kmeans_sklearn(work: str, name: str, k: str = "2:15") -> dict:
    """In memory: the stored reduced rows loaded whole, then :func:`_sklearn_sweep`
    (MiniBatchKMeans n_init=3 per k, CH/DB on all rows, sampled silhouette)."""
    Z = _stored(work, name)[:]
    sweep = _sklearn_sweep(Z, _ks(k))
    _save(work, name, "kmeans-sklearn", **{str(kk): c for kk, c in sweep["centers"].items()})
    return {"rows": int(len(Z)), "k": sweep["k"]}


def kmeans_daskml(work: str, name: str, k: str = "2:15") -> dict:
    """dask-ml ``KMeans`` (k-means|| init, its defaults) per k on the stored reduced rows as a dask array."""
    import dask.array as da
    from dask_ml.cluster import KMeans

    X = da.from_zarr(_stored(work, name))
    centers = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kk in _ks(k):
            centers[str(kk)] = KMeans(n_clusters=kk, random_state=SEED).fit(X).cluster_centers_
    _save(work, name, "kmeans-daskml", **centers)
    return {"rows": int(X.shape[0])}


def kmeans_faiss(work: str, name: str, k: str = "2:15") -> dict:
    """faiss ``Kmeans`` in memory per k: 20 Lloyd iterations, nredo=3 starts (as n_init=3), and
    ``max_points_per_centroid`` raised so it trains on every row (faiss subsamples 256 a centroid by default)."""
    import faiss

    Z = np.ascontiguousarray(_stored(work, name)[:], dtype=np.float32)
    centers = {}
    for kk in _ks(k):
        km = faiss.Kmeans(Z.shape[1], kk, niter=20, nredo=N_INIT, seed=SEED,
                          max_points_per_centroid=len(Z), verbose=False)
        km.train(Z)
        centers[str(kk)] = km.centroids.copy()
    _save(work, name, "kmeans-faiss", **centers)
    return {"rows": int(len(Z)), "threads": faiss.omp_get_max_threads()}


def kmeans_quality(work: str, name: str, methods: list[str]) -> dict:
    """Not measured.  Full-data inertia (float64, block by block with numpy) of every method's
    centres for every k, the same computation for all methods."""
    Z = _stored(work, name)
    saved = {m: _load(work, name, f"kmeans-{m}") for m in methods}
    saved = {m: c for m, c in saved.items() if c is not None}
    inertia = {m: {kk: 0.0 for kk in c} for m, c in saved.items()}
    for s in range(0, Z.shape[0], BLOCK):
        B = Z[s:s + BLOCK].astype(np.float64)
        bb = np.einsum("ij,ij->i", B, B)
        for m, cs in saved.items():
            for kk, C in cs.items():
                C = C.astype(np.float64)
                d2 = bb[:, None] - 2 * B @ C.T + np.einsum("ij,ij->i", C, C)[None]
                inertia[m][kk] += float(np.maximum(d2.min(axis=1), 0).sum())
    return inertia


# ------------------------------------------------------------------ stages: outliers
def outliers_streamclust(work: str, name: str, memory: str = "1GB") -> dict:
    """run_study's step 6 with its default score: ``KNNOutlierDetector(n_neighbors=20, score="kdist").fit``
    on the stored reduced rows (bounded reference sample, pynndescent index incl. its numba compilation
    in this fresh process, recall-tuned search, k-distance of every row), then the combined score
    (``screen_scores``: largest robust z-score of the k-distance and the row norm and residual the
    preprocess stage stored) and its threshold; scores and flags written to Zarr."""
    from streamclust.estimators import KNNOutlierDetector
    from streamclust.estimators.screening import screen_scores
    from streamclust.study import OUTLIER_NEIGHBORS, outlier_index_neighbors

    run = _run_group(work)
    reduced = run.array(f"{name}/reduced")
    det = KNNOutlierDetector(n_neighbors=OUTLIER_NEIGHBORS, index_neighbors=outlier_index_neighbors(OUTLIER_NEIGHBORS),
                             score="kdist", memory=_budget(memory), random_state=SEED).fit(reduced)
    evidence = {"norm": run.array(f"{name}/row_norm"), "residual": run.array(f"{name}/residual")}
    screen, scores = screen_scores(det.outlier_scores_, evidence, det.reference_indices_, memory=_budget(memory))
    flags = scores > screen.threshold_
    run.create_array(f"{name}/outlier_score", scores.shape, "float32")[:] = scores
    run.create_array(f"{name}/is_outlier", flags.shape, "bool")[:] = flags
    _save(work, name, "outliers-streamclust", scores=scores)
    return {"rows": int(len(scores)), "recall": det.recall_, "reference": int(len(det.reference_indices_)),
            "flagged": int(flags.sum()), "fit_time": {k: round(v, 1) for k, v in det.fit_time_.items()}}


def outliers_lof(work: str, name: str, rows: int | None = None) -> dict:
    """In memory: exact scikit-learn ``LocalOutlierFactor(n_neighbors=20, n_jobs=-1)`` on all stored
    reduced rows (or the first ``rows``)."""
    scores = _lof_sklearn(_stored(work, name)[:rows])
    _save(work, name, "outliers-lof", scores=scores)
    return {"rows": int(len(scores))}


def outliers_faiss(work: str, name: str) -> dict:
    """In memory: exact kNN of every row among all rows (faiss ``IndexFlatL2``, all threads; self
    excluded), then scikit-learn's LOF formula (:func:`_lof_from_knn`)."""
    import faiss

    Z = np.ascontiguousarray(_stored(work, name)[:], dtype=np.float32)
    n = len(Z)
    index = faiss.IndexFlatL2(Z.shape[1])
    index.add(Z)
    ind = np.empty((n, N_NEIGHBORS), np.int64)
    dist = np.empty((n, N_NEIGHBORS), np.float32)
    for s in range(0, n, BLOCK // 4):
        D, found = index.search(Z[s:s + BLOCK // 4], N_NEIGHBORS + 1)
        drop = found == np.arange(s, s + len(found))[:, None]
        drop[~drop.any(axis=1), -1] = True  # a duplicate came first: drop the farthest instead
        ind[s:s + len(found)] = found[~drop].reshape(len(found), N_NEIGHBORS)
        dist[s:s + len(found)] = np.sqrt(np.maximum(D[~drop], 0)).reshape(len(found), N_NEIGHBORS)
    scores = _lof_from_knn(ind, dist)
    _save(work, name, "outliers-faiss", scores=scores)
    return {"rows": n, "threads": faiss.omp_get_max_threads()}


def outliers_quality(work: str, name: str, methods: list[str], case: str | None = None) -> dict:
    """Not measured.  ``auc_planted``: ROC AUC of each method's scores against the outliers planted
    in the demo ``case`` (its truth.csv), over the rows it scored.  Agreement with the exact LOF of the most rows --
    scikit-learn's when it scored as many rows as faiss, else faiss' (exact kNN of all rows with
    scikit-learn's LOF formula; a capped LOF computes its densities within its first rows only,
    so it is not the all-row reference) -- over the rows both scored: Spearman rank correlation and
    the overlap of their top 1%."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from streamclust.datasets.synthetic import load_truth

    planted = load_truth(case)["is_outlier"].to_numpy(bool) if case else None
    exact = [(m, r) for m in ("lof", "faiss") if (r := _load(work, name, f"outliers-{m}")) is not None]
    if not exact:
        return {}
    ref_name, ref = max(exact, key=lambda item: len(item[1]["scores"]))  # the first of equals: scikit-learn's
    ref = ref["scores"]
    top = max(1, len(ref) // 100)
    ref_top = set(np.argsort(-ref)[:top].tolist())
    out = {}
    for m in methods:
        saved = _load(work, name, f"outliers-{m}")
        if saved is None:
            continue
        s = saved["scores"][:len(ref)]
        r = ref[:len(s)]
        r_top = ref_top if len(s) == len(ref) else set(np.argsort(-r)[:max(1, len(r) // 100)].tolist())
        out[m] = {"spearman_vs_exact": float(spearmanr(s, r).statistic),
                  "top1%_overlap": len(r_top & set(np.argsort(-s)[:len(r_top)].tolist())) / len(r_top),
                  "exact_reference": {"lof": "scikit-learn LOF", "faiss": "faiss exact kNN + LOF formula"}[ref_name]
                  + f", {len(r):,} rows"}
        if planted is not None:
            out[m]["auc_planted"] = float(roc_auc_score(planted[:len(saved["scores"])], saved["scores"]))
    return out


# ------------------------------------------------------------------ stages: projection
def projection_pca_streamclust(work: str, name: str, memory: str = "1GB") -> dict:
    """What the study's report does for its density plots: ``pca_projection`` (the first two principal
    components of every stored reduced row, lazy) counted into per-cluster 2-D histograms with the
    outlier layer (``density_histograms``), block by block."""
    from streamclust.estimators import pca_projection
    from streamclust.report.figures import density_histograms

    run = _run_group(work)
    hist = density_histograms(pca_projection(run.array(f"{name}/reduced"), 2), run.array(f"{name}/labels"),
                              outlier_flags=run.array(f"{name}/is_outlier"), memory=_budget(memory))
    return {"rows": int(hist.n_rows)}


def projection_pca_sklearn(work: str, name: str) -> dict:
    """In memory: the stored reduced rows and labels loaded whole, ``PCA(2).fit_transform``, and one
    ``numpy.histogram2d`` per cluster (200 x 200 bins)."""
    from sklearn.decomposition import PCA

    Z = _stored(work, name)[:]
    labels = _stored(work, name, "labels")[:]
    P = PCA(n_components=2, random_state=SEED).fit_transform(Z)
    edges = [np.linspace(P[:, i].min(), P[:, i].max(), 201) for i in range(2)]
    for c in np.unique(labels):
        np.histogram2d(P[labels == c, 0], P[labels == c, 1], bins=edges)
    return {"rows": int(len(Z))}


def projection_umap_streamclust(work: str, name: str, memory: str = "1GB", sample_size: int = 20_000) -> dict:
    """``SampledUMAP``: UMAP of a seeded 20,000-row sample (incl. numba compilation in this fresh
    process), then every row placed at the mean of its nearest sampled rows, written to Zarr."""
    import dask.array as da

    from streamclust.estimators import SampledUMAP

    run = _run_group(work)
    reduced = run.array(f"{name}/reduced")
    emb = SampledUMAP(n_components=2, sample_size=sample_size, memory=_budget(memory),
                      random_state=SEED).fit_transform(reduced)
    target = run.create_array(f"{name}/umap", (int(reduced.shape[0]), 2), "float32")
    da.store(emb.rechunk((target.chunks[0], 2)), target, lock=False)
    return {"rows": int(reduced.shape[0]), "sample": min(sample_size, int(reduced.shape[0]))}


def projection_umap_full(work: str, name: str, rows: int | None = None) -> dict:
    """In memory: ``umap.UMAP(n_components=2).fit_transform`` of all stored reduced rows (or the first
    ``rows``), unseeded so umap-learn runs in parallel (seeded it is single-threaded)."""
    import umap

    Z = _stored(work, name)[:rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = umap.UMAP(n_components=2).fit_transform(Z)
    _save(work, name, "umap-full", embedding=emb.astype(np.float32))
    return {"rows": int(len(Z))}


def projection_quality(work: str, name: str, sample: int = 5_000) -> dict:
    """Not measured.  ``trustworthiness`` (10 neighbours) of each 2-D view of the reduced rows on one
    seeded sample of rows (drawn from the rows every view placed): PCA 2-D, streamclust's SampledUMAP,
    UMAP of all rows."""
    from sklearn.manifold import trustworthiness

    Z = _stored(work, name)
    full = _load(work, name, "umap-full")
    n = len(full["embedding"]) if full is not None else int(Z.shape[0])
    idx = np.sort(np.random.default_rng(SEED).choice(n, size=min(sample, n), replace=False))
    X = Z.get_orthogonal_selection((idx, slice(None)))
    views = {"pca": X[:, :2], "umap-sampled": _stored(work, name, "umap").get_orthogonal_selection((idx, slice(None)))}
    if full is not None:
        views["umap-full"] = full["embedding"][idx]
    return {v: {"trustworthiness": float(trustworthiness(X, E, n_neighbors=10))} for v, E in views.items()}


# ------------------------------------------------------------------ stages: scale
def make_scale_store(src_store: str, name: str, dst: str, n_rows: int, seed: int = SEED) -> dict:
    """A one-set store of ``n_rows`` rows (``dst``): row i is row ``i % n_src`` of ``src_store``'s set
    ``name`` plus seeded Gaussian noise (5% of each column's spread), written block by block through
    ``CaseStore`` (never holding the rows).  An existing complete store is kept (its old runs dropped)."""
    from streamclust.io.store import CaseStore

    src = CaseStore(src_store).descriptor(name)
    n_src, d = src.shape
    store = CaseStore(dst, mode="a")
    if name in store.descriptor_names() and store.n_rows == n_rows:
        if "runs" in store.root:  # earlier benchmark runs (1 GB of reduced rows each at 10x)
            del store.root["runs"]
        return {"rows": n_rows, "existing": True}
    store.write_ids((np.array([f"scale/{i // 1000:05d}/{i:08d}.jpg" for i in range(s, min(n_rows, s + BLOCK))])
                     for s in range(0, n_rows, BLOCK)), n_rows, {"source": f"synthetic rows of {src_store}"},
                    max_len=len(f"scale/{(n_rows - 1) // 1000:05d}/{n_rows - 1:08d}.jpg"))
    arr, done = store.open_descriptor_for_writing(name, n_rows, d, {
        "source": f"{src_store}:{name} tiled with noise", "source_fingerprint": f"scale-{n_rows}-{seed}"})
    noise = 0.05 * src[:min(n_src, BLOCK)].std(axis=0)
    for s in range(done, n_rows, BLOCK):
        e = min(n_rows, s + BLOCK)
        parts, i = [], s
        while i < e:  # the source rows, wrapping around
            j = min(e, i + n_src - i % n_src)
            parts.append(src[i % n_src:(j - 1) % n_src + 1])
            i = j
        rng = np.random.default_rng([seed, s])
        arr[s:e] = np.concatenate(parts) + rng.standard_normal((e - s, d), dtype=np.float32) * noise
        arr.attrs["rows_written"] = e
    arr.attrs.update({"status": "complete"})
    return {"rows": n_rows}


def scale_streamclust(store: str, out: str, k: str = "2:15", memory: str = "1GB") -> dict:
    """The streaming pipeline on a one-set store: ``run_study(report=False)`` -- StreamingPCA 128 -> 64
    with the reduced rows written, the k sweep with exact metrics and labels, the kNN outlier score of
    every row, profiles, results.csv and the saved model."""
    from streamclust.study import run_study

    res = run_study(store, out, k=k, memory=memory, random_state=SEED, report=False)
    return {name: {"k": r.k, "outliers": r.n_outliers} for name, r in res.sets.items()}


def scale_sklearn(store: str, name: str, k: str = "2:15", lof_rows: int | None = None) -> dict:
    """In memory: all rows of the store's set read into numpy, then :func:`_sklearn_pipeline`
    (normalise, PCA(64), MiniBatchKMeans sweep with metrics, exact LOF on all rows)."""
    import zarr

    return _sklearn_pipeline(lambda: zarr.open_array(str(Path(store) / "descriptors" / name), mode="r")[:],
                             _ks(k), lof_rows)


# ------------------------------------------------------------------ speed: the study per stage
def study_streamclust_timed(store: str, out: str, k: str = "2:15", memory: str = "1GB", umap: bool = False,
                      algorithms: str = "kmeans") -> dict:
    """The whole study (run_study, report=True) with its per-step seconds (``StudyResult.timings``), the
    rows and the width of every set: what :func:`run.bench_speed` turns into its per-stage table.
    (Named ``*streamclust*`` so that ``_measure`` bounds the heaps as the command line does.)"""
    from streamclust.io.store import CaseStore
    from streamclust.study import run_study

    res = run_study(store, out, k=k, memory=memory, random_state=SEED, report=True, umap=umap,
                    algorithms=algorithms.split(","))
    case = CaseStore(store)
    return {"k": {name: r.k for name, r in res.sets.items()}, "timings": res.timings, "n_rows": case.n_rows,
            "sets_at_once": res.sets_at_once,
            "dims": {name: int(case.descriptor(name).shape[1]) for name in res.sets}}


def machine_limits(store: str) -> dict:
    """What this machine can do, measured now: the read speed of every descriptor set of ``store``
    (zarr decode included, from the page cache as the study reads them after a conversion) and the
    GEMM speed (float32 and float64, all cores), the yardsticks of the per-stage limits."""
    import time

    import zarr

    group = zarr.open_group(store, mode="r")
    read = {}
    for name in group["descriptors"].array_keys():
        arr = group["descriptors"][name]
        arr[: arr.chunks[0]]  # open and warm
        t0 = time.perf_counter()
        for start in range(0, arr.shape[0], BLOCK):
            arr[start:start + BLOCK]
        read[name] = arr.nbytes / (time.perf_counter() - t0)
    gemm = {}
    for dtype in ("float32", "float64"):
        a = np.random.default_rng(0).standard_normal((4096, 4096)).astype(dtype)
        a @ a
        t0 = time.perf_counter()
        for _ in range(3):
            a @ a
        gemm[dtype] = 3 * 2 * 4096**3 / (time.perf_counter() - t0)
    return {"read_bytes_per_s": read, "gemm_flops_per_s": gemm}
