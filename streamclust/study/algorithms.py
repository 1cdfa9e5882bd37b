"""The clustering algorithms a study compares, in one registry.

k-means always runs first (:mod:`streamclust.study.steps`: it defines ``cluster_<set>`` and the
saved model).  Every other algorithm is one entry of :data:`REGISTRY`: a function that fits it on
a set's stored reduced rows for the k range and returns ``{k: fitted model}`` (each with a
``predict`` that labels lazy Dask rows) plus any extra metric columns per k.  To add one: write
its estimator in :mod:`streamclust.estimators`, then one ``_fit_<name>`` function and one
``REGISTRY`` entry here; the CLI's ``--algorithms``, ``metrics.csv``, ``algorithms.csv`` and the
``cluster_<set>_<name>`` columns follow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from streamclust.core.progress import progress_step
from streamclust.core.scheduler import one_blas_thread
from streamclust.errors import InputError
from streamclust.estimators import (
    SampledHDBSCAN,
    StreamingGaussianMixture,
    hierarchy_sweep,
    spectral_sweep,
)
from streamclust.estimators.metrics import labels_metrics, silhouette_scores
from streamclust.io.store import RunGroup
from streamclust.study.rules import choose_k, k_edge_note

logger = logging.getLogger(__name__)

__all__ = ["ALGORITHMS", "REGISTRY", "Algorithm", "parse_algorithms", "study_algorithms", "score_labels",
           "store_algorithm_labels", "agreement"]


FitResult = tuple[dict[int, Any], dict[int, dict[str, float]]]


@dataclass(frozen=True)
class Algorithm:
    """One entry of :data:`REGISTRY`."""

    #: ``fit(reduced, ks, *, budget, random_state) -> ({k: fitted model}, {k: extra metric columns})``;
    #: ``reduced`` is the set's stored reduced rows (zarr, (n, d)); an algorithm that finds its own k
    #: returns one model under that k.
    fit: Callable[..., FitResult]
    #: Its labels may hold noise (-1): ``noise_fraction`` is kept in ``metrics.csv`` and logged.
    has_noise: bool = False
    #: Its models keep ``labels_`` of every fitted row, equal to ``predict`` of those rows (Ward: each
    #: row's micro-cluster's label): the study reads them instead of labelling the rows again.
    keeps_labels: bool = False

    def labels(self, model: Any, lazy_reduced: da.Array) -> Any:
        """``model``'s labels of the rows it was fitted on: ``labels_`` or lazy ``predict``."""
        return model.labels_ if self.keeps_labels else model.predict(lazy_reduced)


def _fit_ward(reduced: Any, ks: list[int], *, budget: int, random_state: int) -> FitResult:
    """Ward agglomeration on micro-clusters: one micro-clustering and one tree serve every k."""
    return hierarchy_sweep(reduced, ks, memory=budget, random_state=random_state), {}


def _fit_gmm(reduced: Any, ks: list[int], *, budget: int, random_state: int) -> FitResult:
    """A diagonal Gaussian mixture per k, with its BIC."""
    models: dict[int, Any] = {}
    extra: dict[int, dict[str, float]] = {}
    for kk in ks:
        gmm = StreamingGaussianMixture(kk, covariance_type="diag", memory=budget,
                                       random_state=random_state).fit(reduced)
        models[kk] = gmm
        extra[kk] = {"bic": float(gmm.bic(reduced))}
    return models, extra


def _fit_hdbscan(reduced: Any, ks: list[int], *, budget: int, random_state: int) -> FitResult:
    """One sampled HDBSCAN; k is the number of clusters it finds (``ks`` is not used)."""
    hdb = SampledHDBSCAN(memory=budget, random_state=random_state).fit(reduced)
    return {int(hdb.n_clusters_): hdb}, {}


def _fit_spectral(reduced: Any, ks: list[int], *, budget: int, random_state: int) -> FitResult:
    """Nystrom spectral clustering (dask-ml's kernels): one landmark embedding serves every k,
    only the final k-means is per k."""
    return spectral_sweep(reduced, ks, memory=budget, random_state=random_state), {}


#: The algorithms a study can run besides k-means, by the name ``--algorithms`` takes.
REGISTRY: dict[str, Algorithm] = {
    "ward": Algorithm(_fit_ward, keeps_labels=True),
    "gmm": Algorithm(_fit_gmm),
    "hdbscan": Algorithm(_fit_hdbscan, has_noise=True),
    "spectral": Algorithm(_fit_spectral),
}

#: Clustering algorithms the study can run on the reduced rows; ``kmeans`` always runs
#: (it defines ``cluster_<set>`` and the saved model).
ALGORITHMS = ("kmeans", *REGISTRY)


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


def store_algorithm_labels(labels: Any, reduced: Any, run: RunGroup, name: str, algorithm: str) -> Any:
    """Write the labels of one algorithm (lazy Dask, or held: ``(n,)`` ints) to
    ``runs/<id>/<name>/labels_<algorithm>`` (int32)."""
    target = run.create_array(f"{name}/labels_{algorithm}", (reduced.shape[0],), "int32",
                              chunk_rows=reduced.chunks[0],
                              attrs={"descriptor_set": name, "algorithm": algorithm})
    if isinstance(labels, np.ndarray):
        target[:] = labels.astype(np.int32, copy=False)
        return target
    with one_blas_thread():  # tasks run in threads, one BLAS thread each
        da.store(labels.astype(np.int32).rechunk((target.chunks[0],)), target, lock=False)
    return target


def score_labels(reduced: Any, labelings: Sequence[Any], sample: tuple[np.ndarray, np.ndarray], *,
                 budget: int) -> list[dict[str, Any]]:
    """Exact all-row CH / DB / inertia and the sampled silhouette of each labelling (noise -1 counts
    as a cluster, as in scikit-learn); NaN when there are fewer than 2 clusters.

    The labellings (lazy Dask or ``(n,)`` ints) are computed a group at a time, as many as an eighth of
    ``budget`` holds (``12 n`` bytes each with their codes), each group scored on all rows in two shared
    passes (:func:`~streamclust.estimators.metrics.labels_metrics`) and then let go but for their sample
    rows; ``sample`` is the set's ``(idx (m,), rows (m, d))`` from
    :func:`~streamclust.estimators.silhouette_sample`, read once for every algorithm and k, and the
    silhouettes of all the labellings share one ``(m, m)`` distance pass
    (:func:`~streamclust.estimators.metrics.silhouette_scores`).
    """
    nan = float("nan")
    idx, rows = sample
    n = int(reduced.shape[0])
    group = max(1, (budget // 8) // (12 * max(1, n)))
    scores: list[dict[str, Any]] = []
    on_sample = []
    for g0 in range(0, len(labelings), group):
        with one_blas_thread():  # tasks run in threads, one BLAS thread each
            computed = [np.asarray(lab.compute() if isinstance(lab, da.Array) else lab)
                        for lab in labelings[g0:g0 + group]]
        for labels, m in zip(computed, labels_metrics(reduced, computed, memory=budget)):
            if m is None:
                scores.append({"inertia": nan, "calinski_harabasz": nan, "davies_bouldin": nan,
                               "silhouette": nan, "smallest_cluster": 0, "noise_fraction": nan})
                continue
            values, sizes = np.asarray(m["labels"]), np.asarray(m["sizes"])
            kept = sizes[values >= 0]
            scores.append({"inertia": float(m["inertia"]), "calinski_harabasz": float(m["calinski_harabasz"]),
                           "davies_bouldin": float(m["davies_bouldin"]), "silhouette": nan,
                           "smallest_cluster": int(kept.min()) if kept.size else 0,
                           "noise_fraction": float(sizes[values < 0].sum()) / n})
            if 1 < len(np.unique(labels[idx])) < len(idx):  # else NaN, as a sample of one label
                on_sample.append((len(scores) - 1, labels[idx]))
        del computed
    if on_sample:
        silhouettes = silhouette_scores(rows, [lab for _, lab in on_sample], memory=budget)
        for (i, _), sil in zip(on_sample, silhouettes):
            scores[i]["silhouette"] = sil
    return scores


def study_algorithms(run: RunGroup, name: str, reduced: Any, ks: list[int], algorithms: Sequence[str], *,
                     base: dict[str, Any], budget: int, sample: tuple[np.ndarray, np.ndarray],
                     random_state: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The registered algorithms of ``algorithms`` (k-means is skipped: the study runs it first) on the
    stored reduced rows of one set; their silhouettes are estimated on ``sample``, the k-means sweep's.

    Returns the metrics rows (one per algorithm x k, ``chosen`` by :func:`~streamclust.study.rules.choose_k`
    per algorithm) and the chosen labels per algorithm (zarr arrays in the run).
    """
    lazy_reduced = da.from_zarr(reduced)
    frames, labels = [], {}
    for alg in algorithms:
        if alg == "kmeans":
            continue
        t0 = time.perf_counter()
        entry = REGISTRY[alg]
        with progress_step(f"{name}: {alg}"):
            models, extra = entry.fit(reduced, ks, budget=budget, random_state=random_state)
        with progress_step(f"{name}: {alg} metrics"):
            scores = score_labels(reduced, [entry.labels(model, lazy_reduced) for model in models.values()],
                                  sample, budget=budget)
        rows = []
        for kk, score in zip(models, scores):
            if not entry.has_noise:
                score["noise_fraction"] = float("nan")
            rows.append({**base, "algorithm": alg, "k": kk, **score, "bic": float("nan"), **extra.get(kk, {})})
        metrics = pd.DataFrame(rows)
        chosen = choose_k(metrics)
        metrics["chosen"] = metrics["k"] == chosen
        if len(models) > 1 and (note := k_edge_note(chosen, ks)):  # hdbscan finds its own k
            logger.warning(f"{name}: {alg}: {note}")
        with progress_step(f"{name}: {alg} labels"):
            labels[alg] = store_algorithm_labels(entry.labels(models[chosen], lazy_reduced), reduced, run, name, alg)
        frames.append(metrics)
        row = metrics[metrics["chosen"]].iloc[0]
        logger.info(f"{name}: {alg} k={chosen} chosen (silhouette {row['silhouette']:.3f}"
                    + (f", noise {row['noise_fraction']:.1%}" if entry.has_noise else "")
                    + f") in {time.perf_counter() - t0:.1f} s")
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), labels


def agreement(name: str, labels: dict[str, Any]) -> pd.DataFrame:
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
