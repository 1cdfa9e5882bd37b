"""The study: every descriptor set of a store preprocessed, clustered and summarised.

For each descriptor set, in bounded memory:

1. **Preprocess** -- :class:`~streamclust.estimators.StreamingPCA` (L2-normalise rows,
   centre, project on ``n_components`` principal axes) fitted in ONE pass over the
   raw descriptors; a second pass writes the reduced rows to the run
   (``runs/<id>/<set>/reduced``).  Everything after works on those.
2. **Sweep k** -- :func:`~streamclust.estimators.kmeans_sweep` fits k-means for
   every k of the range (each pass over the reduced rows serves all k).
3. **Score** -- exact full-data inertia, Calinski-Harabasz and Davies-Bouldin for
   every k (:func:`~streamclust.estimators.sweep_metrics`), silhouette on a seeded
   sample.
4. **Choose k** -- the rule in :func:`choose_k`.
5. **Label** every row with the chosen model (``runs/<id>/<set>/labels``).
6. **Score outliers** of every row (``runs/<id>/<set>/outlier_score``, ``is_outlier``).
   The default (``outlier_score="combined"``, :data:`OUTLIER_SCORES`) combines robust
   z-scores (:class:`~streamclust.estimators.RobustZScreen`: the Euclidean norm of the
   positive ones) of three kinds of evidence: the distance to the ``k``-th (50th) nearest row of a bounded reference sample
   of the reduced rows (:class:`~streamclust.estimators.KNNOutlierDetector`,
   ``score="kdist"``), the raw row norm (both sides) and the residual off the
   principal subspace, the last two written by step 1's transform pass
   (``runs/<id>/<set>/row_norm``, ``residual``).  Rows scoring above
   :data:`~streamclust.estimators.screening.DEFAULT_Z_THRESHOLD` are flagged and
   ``outliers.csv`` names the evidence that flagged each.  A mixture's evidence is its
   own k-distance plus every member's norm and residual.  ``"lof"``, ``"kdist"`` and
   ``"mean"`` use the kNN detector's score alone, with its own threshold rule.

7. **Other algorithms** (``algorithms=``, see :data:`ALGORITHMS`) -- Ward
   agglomeration on micro-clusters, a diagonal Gaussian mixture, sampled HDBSCAN --
   on the same reduced rows, scored with the same exact all-row metrics and the
   same sampled silhouette, k chosen by the same rule; their chosen labels go to
   ``runs/<id>/<set>/labels_<algorithm>`` and ``algorithms.csv`` compares them
   (ARI / AMI) with k-means and each other.

8. **Mixtures** (``mix=``, see :func:`parse_mix`) -- a mixture such as
   ``vdc_color+vdc_type`` is built from the members' stored reduced rows
   (step 1), side by side, each member balanced by
   :class:`~streamclust.estimators.VarianceBalancer`: member ``i`` with total
   variance ``T_i`` (sum of its column variances) is multiplied by
   ``sqrt(w_i / T_i)``, ``w`` the weights normalised to sum 1, so it holds
   exactly the share ``w_i`` of the mixture's variance whatever its number of
   dimensions or scale.  The mixed rows are written block by block to
   ``runs/<id>/<mix>/reduced`` and the mixture goes through steps 2-7 like any
   other set (its saved model chains the member PCAs and the balancing, so
   ``streamclust assign`` labels new rows from the members' descriptors).
   Members not listed in ``descriptors`` are studied too.

9. **Projections** (``umap=True``) -- :class:`~streamclust.estimators.SampledUMAP`
   (UMAP of a seeded sample of the stored reduced rows, every row then placed at
   the mean of its nearest sampled rows, block by block) writes every row's 2-D
   position to ``runs/<id>/<set>/umap`` (float32, ``(n, 2)``, chunked like the
   labels), for every set and mixture.  The linear 2-D / 3-D view needs no copy:
   it is ``runs/<id>/<set>/reduced[:, :2]`` / ``[:, :3]`` (the reduced rows are
   PCA scores, largest variance first; :func:`~streamclust.estimators.pca_projection`).

Outputs in ``out_dir``: ``results.csv`` (``path``, ``cluster``, ``cluster_<set>``
per set, ``outlier_score``, ``is_outlier``, then ``outlier_score_<set>``,
``is_outlier_<set>`` per set; one row per image in store order; the unsuffixed
columns are the recommended set's), ``outliers.csv`` (the top outliers of each
set with score, rank and flag), ``metrics.csv`` (one row per set x algorithm x
k, with ``bic`` for gmm and ``noise_fraction`` for hdbscan), ``algorithms.csv``
(``set, algorithm_a, algorithm_b, ari, ami``), ``cluster_<set>_<algorithm>``
columns at the end of ``results.csv`` for the algorithms other than k-means, ``models/<set>/`` (arrays + JSON, see :mod:`streamclust.io.persist`) and
``summary.json``.  They are written into ``out_dir/.partial-<run id>/`` and moved
into ``out_dir`` (``summary.json`` last) only when everything is written, and the
run in the store is marked complete after that: a study that fails or is killed
leaves the previous study's outputs in ``out_dir`` untouched and never a run that
looks finished (a killed one leaves its ``.partial-*`` folder, safe to delete).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from streamclust.core.blocks import block_nbytes, bound_heaps, parse_memory
from streamclust.core.scheduler import runs_on_scheduler
from streamclust.errors import InputError, MemoryBudgetError
from streamclust.estimators import (
    KNNOutlierDetector,
    SampledHDBSCAN,
    SampledUMAP,
    StreamingGaussianMixture,
    StreamingKMeans,
    StreamingPCA,
    VarianceBalancer,
    cluster_metrics,
    hierarchy_sweep,
    kmeans_sweep,
    sampled_silhouette,
    silhouette_sample,
    sweep_metrics,
)
from streamclust.estimators.screening import evidence_rows, screen_scores
from streamclust.model.descriptor_model import DescriptorSetModel, MixPreprocessing, distance_quantiles
from streamclust.analysis import ClusterProfiles, SetComparison, compare_sets, profile_clusters, read_metadata
from streamclust.io.persist import write_atomic
from streamclust.io.store import CaseStore, RunGroup, disk_full_error
from streamclust.study.results import SetResult, StudyResult
from streamclust.study.rules import (
    BEST_RULE,
    K_RULE,
    MIX_RULE,
    OUTLIER_NEIGHBORS,
    OUTLIER_SCORES,
    MixSpec,
    best_clustering,
    choose_k,
    outlier_index_neighbors,
    parse_k_range,
    parse_mix,
)

__all__ = ["ALGORITHMS", "OUTLIER_NEIGHBORS", "OUTLIER_SCORES", "MixSpec", "outlier_index_neighbors", "SetResult", "StudyResult", "choose_k", "outlier_quality",
           "parse_algorithms", "parse_k_range", "parse_mix", "read_outlier_truth", "run_study"]

#: Clustering algorithms the study can run on the reduced rows; ``kmeans`` always runs
#: (it defines ``cluster_<set>`` and the saved model).
ALGORITHMS = ("kmeans", "ward", "gmm", "hdbscan")


#: Resident memory a study holds besides its blocks, subtracted from ``memory`` before sizing them.
#: Measured on the 416,314-row demo case (with :func:`~streamclust.core.blocks.bound_heaps`): 267 MiB
#: after import, ~530 MiB once numba has compiled the kNN index's kernels and between sets.
LIBRARY_BASELINE = 600 << 20


def _block_budget(memory: str | int | None, n_features: dict[str, int]) -> int:
    """Bytes left for blocks, statistics and caches once the libraries are loaded.

    The budget covers the whole process: Python, numpy/scikit-learn/numba/pynndescent
    and their compiled kernels take ``LIBRARY_BASELINE`` before any block is read.
    Checked before any work: the widest set's PCA holds ~5 ``d x d`` float64
    matrices (the accumulated scatter, one block's, the covariance and ``eigh``'s
    copies) next to blocks of at least 64 rows.

    Parameters
    ----------
    memory : str or int or None
        The ``memory=`` of :func:`run_study`.
    n_features : dict of str -> int
        Columns of every descriptor set studied.

    Returns
    -------
    int
        ``memory`` minus ``LIBRARY_BASELINE``: what the passes size their blocks from.

    Raises
    ------
    MemoryBudgetError
        If the budget cannot hold that, naming the set and the smallest budget that does.
    """
    total = parse_memory(memory)
    name = max(n_features, key=n_features.get)
    d = n_features[name]
    need = LIBRARY_BASELINE + 5 * 8 * d * d + block_nbytes(d, 64)
    if total < need:
        raise MemoryBudgetError(
            f"memory={total / 2**20:.0f} MiB cannot hold this study: the libraries take "
            f"~{LIBRARY_BASELINE >> 20} MiB and the PCA of {name!r} ({d} features) needs "
            f"{(need - LIBRARY_BASELINE) / 2**20:.0f} MiB more; give at least "
            f"memory='{math.ceil(need / 2**20)}MiB' (--memory), or leave {name!r} out (--descriptors)."
        )
    return total - LIBRARY_BASELINE


def _store_reduced(pca: StreamingPCA, X: Any, run: RunGroup, name: str) -> tuple[Any, dict[str, Any]]:
    """Transform every row (parallel over blocks, one pass) into ``runs/<id>/<name>/reduced``
    and its raw norm and residual off the principal subspace into ``<name>/row_norm`` and
    ``<name>/residual`` (float32, (n,)).  Returns the reduced array and ``{"norm": ...,
    "residual": ...}``."""
    reduced, stats = pca.transform_with_row_stats(da.from_zarr(X))
    target = run.create_array(f"{name}/reduced", (X.shape[0], pca.n_components_), "float32",
                              attrs={"descriptor_set": name})
    rows = target.chunks[0]
    evidence = {key: run.create_array(f"{name}/{array}", (X.shape[0],), "float32", chunk_rows=rows,
                                      attrs={"descriptor_set": name, "evidence": key})
                for key, array in (("norm", "row_norm"), ("residual", "residual"))}
    da.store([reduced.rechunk((rows, -1)), stats[:, 0].rechunk((rows,)), stats[:, 1].rechunk((rows,))],
             [target, evidence["norm"], evidence["residual"]], lock=False)
    return target, evidence


def _umap_params(projector: SampledUMAP) -> dict[str, Any]:
    """The parameters of ``projector`` that shape the embedding (not the block sizing)."""
    return {k: v for k, v in projector.get_params().items() if k not in ("memory", "block_rows")}


def _store_umap(projector: SampledUMAP, reduced: Any, run: RunGroup, name: str,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Step 9 of the module docstring: a fresh clone of ``projector`` fitted on a sample of the
    reduced rows, every row's position written block by block to ``runs/<id>/<name>/umap``
    (float32, shape (n, 2), row chunks of the labels)."""
    from sklearn.base import clone

    t0 = time.perf_counter()
    est = clone(projector)
    embedding = est.fit_transform(reduced)
    info = {"sample_rows": int(len(est.sample_indices_)), "params": _umap_params(est)}
    target = run.create_array(f"{name}/umap", (reduced.shape[0], int(est.n_components)), "float32",
                              chunk_rows=reduced.chunks[0],
                              attrs={"descriptor_set": name, "projection": "umap", **info})
    da.store(embedding.rechunk((target.chunks[0], -1)), target, lock=False)
    info["seconds"] = time.perf_counter() - t0
    log(f"{name}: UMAP of {info['sample_rows']:,} sampled rows, every row placed, "
        f"in {info['seconds']:.1f} s")
    return info


def _store_labels(model: StreamingKMeans, reduced: Any, run: RunGroup, name: str) -> Any:
    target = run.create_array(f"{name}/labels", (reduced.shape[0],), "int32",
                              chunk_rows=reduced.chunks[0], attrs={"descriptor_set": name})
    labels = model.predict(da.from_zarr(reduced)).astype(np.int32)
    da.store(labels.rechunk((target.chunks[0],)), target, lock=False)
    return target


def _write_results_csv(path: Path, ids: Any, columns: dict[str, Any]) -> None:
    """Stream ``path`` then ``columns`` (name -> (n,) array) for every row into ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    block = 1 << 16
    with open(tmp, "w", newline="") as f:
        for start in range(0, ids.shape[0], block):
            stop = min(ids.shape[0], start + block)
            frame = pd.DataFrame({"path": np.asarray(ids[start:stop]).astype(object)})
            for name, arr in columns.items():
                frame[name] = np.asarray(arr[start:stop])
            frame.to_csv(f, header=start == 0, index=False, float_format="%.6g")
    os.replace(tmp, path)


def read_outlier_truth(path: str | os.PathLike[str], ids: np.ndarray) -> np.ndarray:
    """Known outliers for judging the flags: ``(n,)`` int8, 1 outlier, 0 normal, -1 not listed.

    Parameters
    ----------
    path : path
        A CSV with a ``path`` column (as in ``images_paths.csv``; backslashes are read as
        ``/``) and an ``is_outlier`` column (``True``/``False`` or ``1``/``0``), e.g. a demo
        case's ``truth.csv`` or a hand-labelled sample of the images.
    ids : ndarray of str, shape (n,)
        The store's image paths.

    Raises
    ------
    InputError
        Missing file or columns, unreadable flags, or no listed path in the store.
    """
    try:
        table = pd.read_csv(path, usecols=["path", "is_outlier"], dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such outlier truth file.") from exc
    except ValueError as exc:
        raise InputError(f"{path}: an outlier truth file needs columns path and is_outlier ({exc}).") from exc
    flags = table["is_outlier"].str.strip().str.lower()
    bad = ~flags.isin(["true", "false", "1", "0"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: row {row + 2}: is_outlier={table['is_outlier'].iloc[row]!r} should be "
                         "True/False or 1/0.")
    where = pd.Index(np.asarray(ids).astype(object)).get_indexer(table["path"].str.replace("\\", "/", regex=False))
    if not (where >= 0).any():
        raise InputError(f"{path}: none of its {len(table):,} paths is an image of the store.")
    known = np.full(len(ids), -1, np.int8)
    known[where[where >= 0]] = flags.isin(["true", "1"]).to_numpy()[where >= 0]
    return known


def outlier_quality(scores: np.ndarray, flags: np.ndarray, known: np.ndarray) -> dict[str, Any]:
    """How flags and scores agree with known outliers, over the rows whose truth is known.

    Parameters
    ----------
    scores : ndarray, shape (n,)
    flags : ndarray of bool, shape (n,)
    known : ndarray of int8, shape (n,)
        From :func:`read_outlier_truth` (-1: unknown).

    Returns
    -------
    dict
        ``rows`` (with truth), ``outliers`` (known), ``flagged``, ``precision`` (flagged rows that
        are known outliers), ``recall`` (known outliers flagged), ``roc_auc`` of the scores (None
        when only one class is known).
    """
    from sklearn.metrics import roc_auc_score

    m = known >= 0
    y, f = known[m] == 1, np.asarray(flags)[m]
    tp = int((f & y).sum())
    both = 0 < int(y.sum()) < len(y)
    return {"rows": int(m.sum()), "outliers": int(y.sum()), "flagged": int(f.sum()),
            "precision": round(tp / int(f.sum()), 4) if f.any() else None,
            "recall": round(tp / int(y.sum()), 4) if y.any() else None,
            "roc_auc": round(float(roc_auc_score(y, np.asarray(scores)[m])), 4) if both else None}


def _top_outliers(name: str, scores: np.ndarray, flags: np.ndarray, labels: Any, ids: Any,
                  n_top: int, reasons: Callable[[np.ndarray], np.ndarray] | None = None,
                  known: np.ndarray | None = None) -> pd.DataFrame:
    """The ``n_top`` highest-scoring rows of one set, ranked; ``reasons(rows)`` names the
    evidence that flagged each (empty when the score has a single kind of evidence); with
    ``known`` (:func:`read_outlier_truth`) a ``known_outlier`` column."""
    top = np.argsort(-scores, kind="stable")[:n_top]
    order = np.sort(top)  # read ids and labels in store order
    frame = pd.DataFrame({"set": name, "row": order, "path": np.asarray(ids.get_orthogonal_selection(order)).astype(object),
                          "outlier_score": scores[order], "is_outlier": flags[order],
                          "reason": reasons(order) if reasons is not None else "",
                          **({"known_outlier": np.array(["", "False", "True"])[known[order] + 1]}
                             if known is not None else {}),
                          "cluster": np.asarray(labels.get_orthogonal_selection(order))})
    frame = frame.sort_values("outlier_score", ascending=False, kind="stable")
    frame.insert(1, "rank", np.arange(1, len(frame) + 1))
    return frame


def _publish(stage: Path, out: Path) -> None:
    """Move a finished study's outputs from ``stage`` into ``out``, ``summary.json`` last.

    Each output replaces the one of the same name (``models/<set>`` one set at a time);
    anything else in ``out`` stays.  Until this runs, ``out`` holds only the previous
    study's outputs, so a study that fails or is killed never touches them.
    """
    def replace(src: Path, dst: Path) -> None:
        if dst.is_dir() and not dst.is_symlink():
            old = dst.with_name(f".{dst.name}.replaced-{stage.name}")
            os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old)
        else:
            os.replace(src, dst)

    for src in sorted(stage.iterdir(), key=lambda p: p.name == "summary.json"):
        if src.name == "models":
            (out / "models").mkdir(exist_ok=True)
            for model in src.iterdir():
                replace(model, out / "models" / model.name)
            src.rmdir()
        else:
            replace(src, out / src.name)
    stage.rmdir()


@dataclass
class _SetOutcome:
    result: SetResult
    labels: Any
    scores: Any
    flags: Any
    reduced: Any
    profile: ClusterProfiles
    top_outliers: pd.DataFrame
    #: ``(idx (m,), rows (m, d))``: the seeded rows every silhouette of the set is estimated on.
    silhouette_rows: tuple[np.ndarray, np.ndarray]


def _sample_rows(n: int, size: int, random_state: int) -> np.ndarray:
    """Sorted seeded sample of row numbers."""
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


@dataclass
class _Reduced:
    """Step 1's outcome for a set or a mixture: the preprocessing and the stored reduced rows."""

    pca: StreamingPCA | MixPreprocessing
    reduced: Any
    n_features: int
    explained_variance: float
    seconds: float
    info: dict[str, Any]
    #: Per-row evidence for the outlier screen beside the k-distance, name -> zarr array (n,):
    #: ``norm`` and ``residual`` of a set; ``norm[<member>]``, ``residual[<member>]`` of a mixture.
    evidence: dict[str, Any]
    mixture: dict[str, Any] | None = None


def _reduce_set(store: CaseStore, run: RunGroup, name: str, *, n_components: int | float, budget: int,
                log: Callable[[str], None]) -> _Reduced:
    """Step 1 of the module docstring for one descriptor set."""
    t0 = time.perf_counter()
    X = store.descriptor(name)
    components = min(n_components, X.shape[1]) if isinstance(n_components, int) else n_components
    pca = StreamingPCA(n_components=components, l2_normalize=True, memory=budget)
    pca.fit(da.from_zarr(X))
    reduced, evidence = _store_reduced(pca, X, run, name)
    log(f"{name}: PCA {X.shape[1]} -> {pca.n_components_} dims keeps "
        f"{pca.explained_variance_ratio_.sum():.1%} of the variance")
    return _Reduced(pca, reduced, int(X.shape[1]), float(pca.explained_variance_ratio_.sum()),
                    time.perf_counter() - t0,
                    {"source_sha256": X.attrs.get("source_sha256"), "source": X.attrs.get("source")}, evidence)


def _mix_sets(run: RunGroup, mix: MixSpec, parts: dict[str, _Reduced], *, budget: int,
              log: Callable[[str], None]) -> _Reduced:
    """Step 8 of the module docstring: the balanced mixed rows of ``mix`` into ``runs/<id>/<mix>/reduced``.

    The members' reduced rows are read lazily, side by side, twice (the
    balancer's variance pass, then the scaled rows written block by block).
    """
    t0 = time.perf_counter()
    members = [parts[m] for m in mix.members]
    rows = members[0].reduced.chunks[0]
    side_by_side = da.concatenate([da.from_zarr(p.reduced).rechunk((rows, -1)) for p in members], axis=1)
    balancer = VarianceBalancer([int(p.pca.n_components_) for p in members], mix.weights,
                                memory=budget).fit(side_by_side)
    shares = {m: float(w) for m, w in zip(mix.members, balancer.share_)}
    mixture = {"members": list(mix.members), "weights": list(mix.weights), "variance_share": shares,
               "member_total_variance": dict(zip(mix.members, balancer.total_variance_.tolist())),
               "scale": dict(zip(mix.members, balancer.scale_.tolist()))}
    target = run.create_array(f"{mix.name}/reduced", side_by_side.shape, "float32",
                              attrs={"descriptor_set": mix.name, "mixture": mixture})
    da.store(balancer.transform(side_by_side).rechunk((target.chunks[0], -1)), target, lock=False)
    # the balanced members' variance is w_i; each kept the fraction e_i of its own, so the mixture
    # keeps sum(w) / sum(w_i / e_i) of the balanced members' full variance
    kept = 1.0 / sum(w / p.explained_variance for w, p in zip(balancer.share_, members))
    log(f"{mix.name}: {' + '.join(f'{m} ({100 * v:.0f}% of the variance)' for m, v in shares.items())} "
        f"-> {target.shape[1]} dims")
    evidence = {f"{key}[{m}]": arr for m, p in zip(mix.members, members) for key, arr in p.evidence.items()}
    return _Reduced(MixPreprocessing(list(mix.members), [p.pca for p in members], balancer), target,
                    sum(p.n_features for p in members), kept, time.perf_counter() - t0,
                    {"members": {m: p.info for m, p in zip(mix.members, members)}}, evidence, mixture)


def _study_set(store: CaseStore, run: RunGroup, name: str, ks: list[int], prepared: _Reduced, *, out: Path,
               n_init: int, budget: int, silhouette_samples: int,
               outlier_neighbors: int, outlier_score: str, n_top_outliers: int, random_state: int,
               attributes: pd.DataFrame | None, known: np.ndarray | None,
               log: Callable[[str], None]) -> _SetOutcome:
    """Steps 2-6 of the module docstring for one descriptor set or mixture; saves its model."""
    t0 = time.perf_counter()
    pca, reduced = prepared.pca, prepared.reduced
    models = kmeans_sweep(reduced, ks, n_init=n_init, memory=budget, random_state=random_state)
    centers = {kk: m.cluster_centers_ for kk, m in models.items()}
    scores = sweep_metrics(reduced, centers, memory=budget)
    sil_sample = silhouette_sample(reduced, silhouette_samples, random_state=random_state, memory=budget)
    sil_rows = sil_sample[1]
    rows = []
    for kk in ks:  # one sample read for every k
        sil = sampled_silhouette(sil_rows, centers=centers[kk], n_samples=len(sil_rows))
        rows.append({"set": name, "algorithm": "kmeans", "k": kk, "n_rows": store.n_rows,
                     "n_features": prepared.n_features, "n_components": pca.n_components_,
                     "inertia": scores[kk]["inertia"],
                     "calinski_harabasz": scores[kk]["calinski_harabasz"],
                     "davies_bouldin": scores[kk]["davies_bouldin"], "silhouette": sil,
                     "smallest_cluster": int(np.min(scores[kk]["sizes"]))})
    metrics = pd.DataFrame(rows)
    chosen = choose_k(metrics)
    metrics["chosen"] = metrics["k"] == chosen
    kmeans = models[chosen]
    labels = _store_labels(kmeans, reduced, run, name)

    detector = KNNOutlierDetector(n_neighbors=outlier_neighbors, memory=budget, random_state=random_state,
                                  index_neighbors=outlier_index_neighbors(outlier_neighbors),
                                  score="kdist" if outlier_score == "combined" else outlier_score).fit(reduced)
    screen, reasons = None, None
    if outlier_score == "combined":
        screen, outlier_scores = screen_scores(detector.outlier_scores_, prepared.evidence,
                                               detector.reference_indices_, memory=budget)
        threshold, rule = screen.threshold_, screen.threshold_rule_

        def reasons(rows: np.ndarray) -> np.ndarray:
            return screen.reasons(evidence_rows(detector.outlier_scores_, prepared.evidence, rows))
    else:
        outlier_scores = detector.outlier_scores_
        threshold, rule = detector.threshold_, detector.threshold_rule_
    flags = outlier_scores > threshold
    n_flagged = int(flags.sum())
    score_arr = run.create_array(f"{name}/outlier_score", outlier_scores.shape, "float32")
    score_arr[:] = outlier_scores
    flag_arr = run.create_array(f"{name}/is_outlier", flags.shape, "bool",
                                attrs={"n_flagged": n_flagged, "rule": rule})
    flag_arr[:] = flags
    top = _top_outliers(name, outlier_scores, flags, labels, store.ids, n_top_outliers, reasons, known)
    log(f"{name}: {n_flagged} outliers flagged ({flags.mean():.2%}) by {rule}; "
        f"kNN recall {detector.recall_:.3f}")
    truth = None
    if known is not None:
        truth = outlier_quality(outlier_scores, flags, known)
        log(f"{name}: against the {truth['outliers']:,} known outliers among {truth['rows']:,} listed images: "
            f"precision {truth['precision']}, recall {truth['recall']}, ROC AUC {truth['roc_auc']}")

    profile = profile_clusters(labels, attributes, outlier_flags=flag_arr, set_name=name, memory=budget)

    sample = _sample_rows(store.n_rows, 20_000, random_state)
    sample_rows = reduced.get_orthogonal_selection((sample, slice(None)))
    sample_dist = kmeans.transform(sample_rows)[np.arange(len(sample)), kmeans.predict(sample_rows)]
    model = DescriptorSetModel(
        name, pca, kmeans, detector,
        index_seed=int(detector.index_seed_), screen=screen,
        sentences={int(c): str(t) for c, t in profile.sentences.items()},
        training={"cluster_shares": np.asarray(scores[chosen]["sizes"]) / store.n_rows,
                  "outlier_rate": n_flagged / store.n_rows,
                  "distance_quantiles": distance_quantiles(sample_dist), "n_rows": store.n_rows},
        info={"store": store.path, "run_id": run.run_id, **prepared.info},
    )
    model_dir = model.save(out / "models" / name)
    seconds = prepared.seconds + time.perf_counter() - t0
    log(f"{name}: k={chosen} chosen from {ks[0]}..{ks[-1]} "
        f"(silhouette {metrics.loc[metrics['chosen'], 'silhouette'].iloc[0]:.3f}) in {seconds:.1f} s")
    result = SetResult(name, prepared.n_features, int(pca.n_components_), prepared.explained_variance,
                       chosen, metrics, seconds, model_dir, kmeans.cluster_centers_, n_flagged,
                       rule, outlier_score, truth, prepared.mixture)
    return _SetOutcome(result, labels, score_arr, flag_arr, reduced, profile, top, sil_sample)


def parse_algorithms(spec: str | Sequence[str]) -> list[str]:
    """``"kmeans,ward"`` or ``("kmeans", "gmm")`` -> validated names, ``kmeans`` first, no repeats.

    ``kmeans`` is always run (it defines ``cluster_<set>`` and the saved model).
    """
    names = [p.strip().lower() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown or not names:
        raise InputError(f"unknown clustering algorithm(s) {unknown or names!r}; "
                         f"valid ones are {', '.join(ALGORITHMS)}.")
    out = ["kmeans"]
    for n in names:
        if n not in out:
            out.append(n)
    return out


def _store_algorithm_labels(labels: Any, reduced: Any, run: RunGroup, name: str, algorithm: str) -> Any:
    """Write the lazy labels of one algorithm to ``runs/<id>/<name>/labels_<algorithm>`` (int32)."""
    target = run.create_array(f"{name}/labels_{algorithm}", (reduced.shape[0],), "int32",
                              chunk_rows=reduced.chunks[0],
                              attrs={"descriptor_set": name, "algorithm": algorithm})
    da.store(labels.astype(np.int32).rechunk((target.chunks[0],)), target, lock=False)
    return target


def _score_labels(reduced: Any, labels: Any, sample: tuple[np.ndarray, np.ndarray], *,
                  budget: int) -> dict[str, Any]:
    """Exact all-row CH / DB / inertia and the sampled silhouette of one labelling (noise -1 counts
    as a cluster, as in scikit-learn); NaN when there are fewer than 2 clusters.

    ``labels`` (lazy Dask or ``(n,)`` ints) are computed once and serve both; ``sample`` is the set's
    ``(idx (m,), rows (m, d))`` from :func:`silhouette_sample`, read once for every algorithm and k.
    """
    nan = float("nan")
    labels = np.asarray(labels.compute() if isinstance(labels, da.Array) else labels)
    try:
        m = cluster_metrics(reduced, labels=labels, memory=budget)
    except ValueError:
        return {"inertia": nan, "calinski_harabasz": nan, "davies_bouldin": nan, "silhouette": nan,
                "smallest_cluster": 0, "noise_fraction": nan}
    values, sizes = np.asarray(m["labels"]), np.asarray(m["sizes"])
    kept = sizes[values >= 0]
    idx, rows = sample
    try:
        sil = sampled_silhouette(rows, labels=labels[idx], n_samples=len(rows), memory=budget)
    except ValueError:  # a sample with a single label
        sil = nan
    return {"inertia": float(m["inertia"]), "calinski_harabasz": float(m["calinski_harabasz"]),
            "davies_bouldin": float(m["davies_bouldin"]), "silhouette": sil,
            "smallest_cluster": int(kept.min()) if kept.size else 0,
            "noise_fraction": float(sizes[values < 0].sum()) / int(reduced.shape[0])}


def _study_algorithms(run: RunGroup, name: str, reduced: Any, ks: list[int], algorithms: Sequence[str], *,
                      base: dict[str, Any], budget: int, sample: tuple[np.ndarray, np.ndarray],
                      random_state: int, log: Callable[[str], None]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The extra algorithms (all but k-means) on the stored reduced rows of one set; their
    silhouettes are estimated on ``sample``, the k-means sweep's (:class:`_SetOutcome`).

    Returns the metrics rows (one per algorithm x k, ``chosen`` by :func:`choose_k`
    per algorithm) and the chosen labels per algorithm (zarr arrays in the run).
    """
    lazy_reduced = da.from_zarr(reduced)
    frames, labels = [], {}
    for alg in algorithms:
        if alg == "kmeans":
            continue
        t0 = time.perf_counter()
        models: dict[int, Any] = {}
        extra: dict[int, dict[str, Any]] = {}
        if alg == "ward":
            models = hierarchy_sweep(reduced, ks, memory=budget, random_state=random_state)
        elif alg == "gmm":
            for kk in ks:
                gmm = StreamingGaussianMixture(kk, covariance_type="diag", memory=budget,
                                               random_state=random_state).fit(reduced)
                models[kk] = gmm
                extra[kk] = {"bic": float(gmm.bic(reduced))}
        elif alg == "hdbscan":
            hdb = SampledHDBSCAN(memory=budget, random_state=random_state).fit(reduced)
            models[int(hdb.n_clusters_)] = hdb
        else:  # pragma: no cover - parse_algorithms rejects these
            raise InputError(f"unknown clustering algorithm {alg!r}; valid ones are {', '.join(ALGORITHMS)}.")
        rows = []
        for kk, model in models.items():
            scores = _score_labels(reduced, model.predict(lazy_reduced), sample, budget=budget)
            if alg != "hdbscan":
                scores["noise_fraction"] = float("nan")
            rows.append({**base, "algorithm": alg, "k": kk, **scores, "bic": float("nan"), **extra.get(kk, {})})
        metrics = pd.DataFrame(rows)
        chosen = choose_k(metrics)
        metrics["chosen"] = metrics["k"] == chosen
        labels[alg] = _store_algorithm_labels(models[chosen].predict(lazy_reduced), reduced, run, name, alg)
        frames.append(metrics)
        row = metrics[metrics["chosen"]].iloc[0]
        log(f"{name}: {alg} k={chosen} chosen (silhouette {row['silhouette']:.3f}"
            + (f", noise {row['noise_fraction']:.1%}" if alg == "hdbscan" else "")
            + f") in {time.perf_counter() - t0:.1f} s")
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), labels


def _agreement(name: str, labels: dict[str, Any]) -> pd.DataFrame:
    """ARI / AMI between the chosen labellings of every pair of algorithms on one set (labels read
    from the run: ``n`` int32 each; HDBSCAN noise -1 counts as one more label)."""
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    values = {alg: np.asarray(arr[:]) for alg, arr in labels.items()}
    algs = list(values)
    rows = []
    for i, a in enumerate(algs):
        for b in algs[i + 1:]:
            rows.append({"set": name, "algorithm_a": a, "algorithm_b": b,
                         "ari": float(adjusted_rand_score(values[a], values[b])),
                         "ami": float(adjusted_mutual_info_score(values[a], values[b]))})
    return pd.DataFrame(rows, columns=["set", "algorithm_a", "algorithm_b", "ari", "ami"])


@runs_on_scheduler
def run_study(
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    descriptors: Sequence[str] | None = None,
    k: str | int | Sequence[int] = "2:15",
    n_components: int | float = 64,
    n_init: int = 3,
    memory: str | int | None = None,
    silhouette_samples: int = 10_000,
    metadata: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    report: bool = True,
    outlier_neighbors: int = OUTLIER_NEIGHBORS,
    outlier_score: str = "combined",
    outlier_truth: str | os.PathLike[str] | None = None,
    n_top_outliers: int = 100,
    random_state: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    algorithms: str | Sequence[str] = ("kmeans",),
    mix: str | Sequence[str] | None = None,
    scheduler: str | None = None,
    client: Any = None,
    umap: bool = False,
) -> StudyResult:
    """Run the study on a store; see the module docstring.

    Parameters
    ----------
    store_path : path or str
        A store written by :func:`streamclust.io.ingest.convert_case`: its folder or fsspec URL.
    out_dir : path
        Folder for ``results.csv``, ``metrics.csv``, ``models/``, ``summary.json``.
    descriptors : list of str, optional
        Descriptor sets to study (default: all in the store).
    k : str, int or list of int
        k values to sweep, e.g. ``"2:15"``.
    n_components : int or float
        PCA components, or the fraction of variance to keep.
    n_init : int
        k-means starts per k; the lowest full-data inertia wins.
    memory : str or int, optional
        Memory budget, e.g. ``"1GB"`` (default 1 GiB).
    silhouette_samples : int
        Rows sampled for the silhouette estimate.
    metadata : path, optional
        Per-image attributes (VeRi-Wild ``vehicle_info.txt``, or a CSV/Parquet with
        a path column): cluster profiles, sentences and the set recommendation use
        them (:mod:`streamclust.analysis.profiles`).
    images : path, optional
        ``images.zip`` or an image folder for the report's montages.
    report : bool
        Write ``report.html`` (:mod:`streamclust.study.reporting`).
    outlier_neighbors : int
        ``k`` of the kNN outlier scores (default 50: at 416k rows the reference sample holds a
        quarter of the rows, and groups of look-alike anomalies of a few hundred rows hid from
        k = 20; ROC AUC on the demo's vdc_type 0.933 -> 0.969 with the k-distance alone).  The
        index graph has ``max(40, k + 10)`` neighbours (recall 0.999 at k = 50).
    outlier_score : {"combined", "kdist", "lof", "mean"}
        The outlier score (:data:`OUTLIER_SCORES`; module docstring, step 6):
        ``"combined"`` (default) combines the robust z-scores of the k-distance, the
        raw row norm and the residual off the principal subspace, flagged above
        :data:`~streamclust.estimators.screening.DEFAULT_Z_THRESHOLD`; the others are
        :class:`~streamclust.estimators.KNNOutlierDetector`'s scores alone with its
        median + MAD rule (``"lof"``, the density ratio, hides anomalies that resemble
        each other: measured ROC AUC 0.51-0.69 on real images, vs 0.90-0.97 combined).
    outlier_truth : path, optional
        Known outliers to judge the flags by (:func:`read_outlier_truth`: a CSV with ``path`` and
        ``is_outlier``, e.g. a demo case's ``truth.csv``, or a labelled sample): per set, the
        precision and recall of the flags and the ROC AUC of the scores over the listed images go
        to the log, ``summary.json``, the report and :attr:`SetResult.outlier_truth`, and
        ``outliers.csv`` gains a ``known_outlier`` column.
    n_top_outliers : int
        Rows per set listed in ``outliers.csv``.
    random_state : int
        Seed; the same seed gives the same result.
    progress : bool
        Progress bars.
    log : callable, optional
        Receives one line per finished step.
    algorithms : str or list of str
        Clustering algorithms compared on the reduced rows of every set, among
        ``ALGORITHMS`` (``"kmeans,ward"`` or a list).  ``kmeans`` always runs and
        alone defines ``cluster_<set>`` and the saved model.  Each other one
        (``ward``: one micro-clustering + tree for all k; ``gmm``: diagonal
        Gaussian mixture per k, with its BIC; ``hdbscan``: one sampled HDBSCAN,
        k = the clusters it finds, with the noise fraction) adds rows to
        ``metrics.csv`` (exact all-row CH/DB, sampled silhouette, k chosen by
        :func:`choose_k`), its chosen labels to the run
        (``<set>/labels_<algorithm>``) and ``cluster_<set>_<algorithm>`` columns
        at the end of ``results.csv``; ``algorithms.csv`` holds the ARI/AMI
        between the algorithms of each set.  The default runs k-means only
        (the CLI's ``--algorithms`` default is ``kmeans,ward``).
    mix : str or list of str, optional
        Mixtures of descriptor sets to study as sets of their own, e.g.
        ``["vdc_color+vdc_type", "osnet+vdc_color:2,1"]`` (see :func:`parse_mix`;
        weights after ``:``, default equal).  Each is built from the members'
        reduced rows, balanced so that member ``i`` holds the share
        ``w_i / sum(w)`` of the mixture's variance (module docstring, step 8),
        and gets everything a set gets: k sweep, metrics, labels, outliers,
        profiles, a place in the comparison (it can be recommended),
        ``cluster_<mix>`` columns and a saved model.  Members missing from
        ``descriptors`` are studied too.
    scheduler : str, optional
        Where the parallel passes run: ``"local:N"`` starts ``N`` worker
        processes for the call, ``"tcp://host:port"`` uses a running scheduler
        whose workers can read ``store_path`` (a path or URL they all see);
        default: Dask's threads (see :mod:`streamclust.core.scheduler`).  On a
        cluster the parallel passes (PCA statistics, transform, labelling,
        metric statistics, outlier scoring, histograms) run on the workers and
        the sequential ones (k-means ``partial_fit``, the kNN index build) here;
        results equal the threaded run's.  ``memory`` applies to each process.
    client : distributed.Client, optional
        An existing client instead of ``scheduler`` (left open).
    umap : bool
        Also store every row's position in a 2-D UMAP of each set and mixture
        (``runs/<id>/<set>/umap``, float32 ``(n, 2)``; module docstring, step 9):
        :class:`~streamclust.estimators.SampledUMAP` with its defaults (UMAP of a
        20,000-row sample, every row placed at the mean of its 10 nearest sampled
        rows), seeded with ``random_state``; its parameters go to the run's
        params and ``summary.json`` (``umap``).  The report then shows a density
        overview of all rows in UMAP coordinates beside the PCA one, and links a
        3-D view of 2,000 sampled rows (first three PCA components).  The first
        UMAP fit on a machine compiles umap-learn's numba kernels once (kept in
        numba's disk cache; ``streamclust.estimators.warm_up_umap``).

    Returns
    -------
    StudyResult
    """
    log = log or (lambda line: None)
    bound_heaps()
    ks = parse_k_range(k)
    algs = parse_algorithms(algorithms)
    if outlier_score not in OUTLIER_SCORES:
        raise InputError(f"outlier_score={outlier_score!r} should be one of {', '.join(OUTLIER_SCORES)}.")
    store = CaseStore(store_path, mode="r+")
    names = list(descriptors) if descriptors else store.descriptor_names()
    available = store.descriptor_names()
    missing = [n for n in names if n not in available]
    if missing or not names:
        raise InputError(f"{store.path}: no descriptor set(s) {missing or names}; it has {available}.")
    mixes = parse_mix(mix, available)
    names = list(dict.fromkeys(names + [m for spec in mixes for m in spec.members]))  # members studied too
    if store.n_rows < max(ks):
        raise InputError(f"n_samples={store.n_rows} should be >= n_clusters={max(ks)}.")
    budget = _block_budget(memory, {n: int(store.descriptor(n).shape[1]) for n in names})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {"descriptors": names, "mix": [f"{m.name}:{','.join(map(str, m.weights))}" for m in mixes],
              "k": ks, "n_components": n_components, "n_init": n_init,
              "memory": parse_memory(memory), "block_memory": budget,
              "silhouette_samples": silhouette_samples,
              "outlier_neighbors": outlier_neighbors, "outlier_score": outlier_score,
              "outlier_truth": str(outlier_truth) if outlier_truth else None,
              "random_state": random_state,
              "metadata": str(metadata) if metadata else None, "algorithms": algs}
    projector = None
    if umap:
        projector = SampledUMAP(n_components=2, memory=budget, random_state=random_state)
        params["umap"] = _umap_params(projector)
    attributes = read_metadata(metadata, store.ids[:]) if metadata else None
    known = read_outlier_truth(outlier_truth, store.ids[:]) if outlier_truth else None
    if attributes is not None:
        log(f"metadata: {Path(metadata).name} matched {attributes.attrs.get('match_rate', 1.0):.1%} of the images")
    run = store.new_run(params)
    result = StudyResult(out_dir=out, run_id=run.run_id)
    # outputs are written into a hidden folder and moved into `out` once the run is complete
    stage = out / f".partial-{run.run_id}"
    stage.mkdir()
    try:
        labels: dict[str, Any] = {}
        outlier_scores: dict[str, Any] = {}
        outlier_flags: dict[str, Any] = {}
        top_outliers: list[pd.DataFrame] = []
        reduced: dict[str, Any] = {}
        all_metrics = []
        extra_labels: dict[str, dict[str, Any]] = {}
        agreement = []
        prepared: dict[str, _Reduced] = {}
        mix_by_name = {m.name: m for m in mixes}
        for name in names + list(mix_by_name):
            prepared[name] = (_mix_sets(run, mix_by_name[name], prepared, budget=budget, log=log)
                              if name in mix_by_name else
                              _reduce_set(store, run, name, n_components=n_components, budget=budget, log=log))
            outcome = _study_set(store, run, name, ks, prepared[name], out=stage, n_init=n_init,
                                 budget=budget, silhouette_samples=silhouette_samples,
                                 outlier_neighbors=outlier_neighbors, outlier_score=outlier_score,
                                 n_top_outliers=n_top_outliers,
                                 random_state=random_state, attributes=attributes, known=known, log=log)
            result.sets[name] = outcome.result
            if projector is not None:
                outcome.result.umap = _store_umap(projector, outcome.reduced, run, name, log)
            result.profiles[name] = outcome.profile
            reduced[name] = outcome.reduced
            labels[name], outlier_scores[name], outlier_flags[name] = outcome.labels, outcome.scores, outcome.flags
            top_outliers.append(outcome.top_outliers)
            all_metrics.append(outcome.result.metrics)
            if len(algs) > 1:
                first = outcome.result.metrics.iloc[0]
                base = {c: first[c] for c in ("set", "n_rows", "n_features", "n_components")}
                extra, extra_labels[name] = _study_algorithms(
                    run, name, outcome.reduced, ks, algs, base=base, budget=budget,
                    sample=outcome.silhouette_rows, random_state=random_state, log=log)
                all_metrics.append(extra)
                agreement.append(_agreement(name, {"kmeans": outcome.labels, **extra_labels[name]}))
        metrics_all = pd.concat(all_metrics, ignore_index=True)
        for col in ("bic", "noise_fraction"):
            if col not in metrics_all:
                metrics_all[col] = np.nan
        metrics_all = metrics_all[list(outcome.result.metrics.columns) + ["bic", "noise_fraction"]]
        agreement_all = (pd.concat(agreement, ignore_index=True) if agreement else
                         pd.DataFrame(columns=["set", "algorithm_a", "algorithm_b", "ari", "ami"]))
        result.algorithm_metrics = metrics_all
        result.agreement = agreement_all
        result.best = best_clustering(metrics_all)
        kmeans_chosen = metrics_all[metrics_all["chosen"] & (metrics_all["algorithm"] == "kmeans")]
        comparison = compare_sets(labels, attributes=attributes, outlier_scores_by_set=outlier_scores,
                                  reduced_by_set=reduced, metrics=kmeans_chosen,
                                  random_state=random_state, memory=budget)
        result.comparison = comparison
        result.recommended = comparison.recommended_set or names[0]
        log(f"recommended set: {result.recommended} ({comparison.reason})")
        write_atomic(stage / "metrics.csv", metrics_all.to_csv(index=False))
        write_atomic(stage / "algorithms.csv", agreement_all.to_csv(index=False))
        write_atomic(stage / "comparison.csv", comparison.recommendation.to_csv())
        clusters = pd.concat([p.clusters.rename_axis("cluster").reset_index().assign(set=n)
                              for n, p in result.profiles.items()], ignore_index=True)
        write_atomic(stage / "clusters.csv", clusters.to_csv(index=False))
        rec = result.recommended
        columns = {"cluster": labels[rec], **{f"cluster_{n}": a for n, a in labels.items()},
                   "outlier_score": outlier_scores[rec], "is_outlier": outlier_flags[rec]}
        for n in result.sets:
            columns[f"outlier_score_{n}"] = outlier_scores[n]
            columns[f"is_outlier_{n}"] = outlier_flags[n]
        for n in result.sets:
            for alg, arr in extra_labels.get(n, {}).items():
                columns[f"cluster_{n}_{alg}"] = arr
        _write_results_csv(stage / "results.csv", store.ids, columns)
        write_atomic(stage / "outliers.csv", pd.concat(top_outliers, ignore_index=True).to_csv(index=False))
        if report:
            from streamclust.study.reporting import build_study_report

            page = build_study_report(result, store, images=images, memory=budget, out_dir=stage)
            log(f"report: {out / page.name}")
        summary = {"run_id": run.run_id, "store": store.path, "recommended": result.recommended,
                   "recommended_reason": comparison.reason,
                   "k_rule": K_RULE,
                   "sets": result.summary_table().to_dict(orient="records"),
                   "algorithms": algs, "best": result.best, "best_rule": BEST_RULE,
                   "mixtures": {n: r.mixture for n, r in result.sets.items() if r.mixture},
                   "mix_rule": MIX_RULE,
                   "agreement": agreement_all.to_dict(orient="records")}
        if projector is not None:
            summary["umap"] = {"params": params["umap"],
                               "sets": {n: {k: v for k, v in r.umap.items() if k != "params"}
                                        for n, r in result.sets.items()}}
        write_atomic(stage / "summary.json", json.dumps(summary, indent=2, default=str))
        _publish(stage, out)
        for res in result.sets.values():
            res.model_dir = out / "models" / res.name
        chosen_rows = metrics_all[metrics_all["chosen"]]
        run.complete({"recommended": result.recommended,
                      "chosen_k": {n: r.k for n, r in result.sets.items()},
                      "chosen_k_by_algorithm": {f"{r.set}/{r.algorithm}": int(r.k)
                                                for r in chosen_rows.itertuples()}})
    except BaseException as exc:
        run.fail(f"{type(exc).__name__}: {exc}")
        shutil.rmtree(stage, ignore_errors=True)
        full = disk_full_error(exc, out, f"writing study run {run.run_id} (its partial outputs were removed)")
        if full is not None:
            raise full from exc
        raise
    return result
