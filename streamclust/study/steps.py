"""The study's steps for one descriptor set or mixture (the numbers are those of the
:mod:`streamclust.study.driver` docstring): reduce (1), mix (8), sweep k, score, label and
screen outliers, profile and save the model (2-6), project (9).  Each writes its arrays to the
run in the store."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from streamclust.analysis import ClusterProfiles, profile_clusters
from streamclust.core.progress import progress_step
from streamclust.estimators import (
    KNNOutlierDetector,
    SampledUMAP,
    StreamingKMeans,
    StreamingPCA,
    VarianceBalancer,
    kmeans_sweep,
    silhouette_sample,
    sweep_metrics,
)
from streamclust.estimators.metrics import sweep_silhouettes
from streamclust.estimators.screening import evidence_rows, screen_scores
from streamclust.io.store import CaseStore, RunGroup
from streamclust.model import DescriptorSetModel, MixPreprocessing, distance_quantiles
from streamclust.study.outputs import top_outliers
from streamclust.study.results import SetResult
from streamclust.study.rules import MixSpec, choose_k, k_edge_note, outlier_index_neighbors
from streamclust.study.truth import outlier_quality

logger = logging.getLogger(__name__)

__all__ = ["Reduced", "SetOutcome", "reduce_set", "mix_sets", "study_set", "store_reduced", "store_labels",
           "store_umap", "umap_params"]


def store_reduced(pca: StreamingPCA, X: Any, run: RunGroup, name: str) -> tuple[Any, dict[str, Any]]:
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


def umap_params(projector: SampledUMAP) -> dict[str, Any]:
    """The parameters of ``projector`` that shape the embedding (not the block sizing)."""
    return {k: v for k, v in projector.get_params().items() if k not in ("memory", "block_rows")}


def store_umap(projector: SampledUMAP, reduced: Any, run: RunGroup, name: str) -> dict[str, Any]:
    """Step 9 of the :mod:`~streamclust.study.driver` docstring: a fresh clone of ``projector``
    fitted on a sample of the reduced rows, every row's position written block by block to
    ``runs/<id>/<name>/umap`` (float32, shape (n, 2), row chunks of the labels)."""
    from sklearn.base import clone

    t0 = time.perf_counter()
    est = clone(projector)
    with progress_step(f"{name}: UMAP"):
        embedding = est.fit_transform(reduced)
        info = {"sample_rows": int(len(est.sample_indices_)), "params": umap_params(est)}
        target = run.create_array(f"{name}/umap", (reduced.shape[0], int(est.n_components)), "float32",
                                  chunk_rows=reduced.chunks[0],
                                  attrs={"descriptor_set": name, "projection": "umap", **info})
        da.store(embedding.rechunk((target.chunks[0], -1)), target, lock=False)
    info["seconds"] = time.perf_counter() - t0
    logger.info(f"{name}: UMAP of {info['sample_rows']:,} sampled rows, every row placed, "
                f"in {info['seconds']:.1f} s")
    return info


def store_labels(model: StreamingKMeans, reduced: Any, run: RunGroup, name: str) -> Any:
    """Step 5: every row's k-means label into ``runs/<id>/<name>/labels`` (int32, (n,), chunked like
    ``reduced``); returns that zarr array."""
    target = run.create_array(f"{name}/labels", (reduced.shape[0],), "int32",
                              chunk_rows=reduced.chunks[0], attrs={"descriptor_set": name})
    labels = model.predict(da.from_zarr(reduced)).astype(np.int32)
    da.store(labels.rechunk((target.chunks[0],)), target, lock=False)
    return target


@dataclass(kw_only=True)
class SetOutcome:
    """What :func:`study_set` hands back for one set: its result, and the run's arrays (zarr, (n,))
    the comparison and the output files read."""

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


@dataclass(kw_only=True)
class Reduced:
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


def reduce_set(store: CaseStore, run: RunGroup, name: str, *, n_components: int | float, budget: int) -> Reduced:
    """Step 1 of the :mod:`~streamclust.study.driver` docstring for one descriptor set."""
    t0 = time.perf_counter()
    X = store.descriptor(name)
    components = min(n_components, X.shape[1]) if isinstance(n_components, int) else n_components
    pca = StreamingPCA(n_components=components, l2_normalize=True, memory=budget)
    with progress_step(f"{name}: PCA"):
        pca.fit(da.from_zarr(X))
        reduced, evidence = store_reduced(pca, X, run, name)
    logger.info(f"{name}: PCA {X.shape[1]} -> {pca.n_components_} dims keeps "
                f"{pca.explained_variance_ratio_.sum():.1%} of the variance")
    return Reduced(pca=pca, reduced=reduced, n_features=int(X.shape[1]),
                   explained_variance=float(pca.explained_variance_ratio_.sum()), seconds=time.perf_counter() - t0,
                   info={"source_sha256": X.attrs.get("source_sha256"), "source": X.attrs.get("source")},
                   evidence=evidence)


def mix_sets(run: RunGroup, mix: MixSpec, parts: dict[str, Reduced], *, budget: int) -> Reduced:
    """Step 8 of the :mod:`~streamclust.study.driver` docstring: the mixed rows of ``mix``, stored.

    The members' reduced rows are read lazily, side by side, twice (the
    balancer's variance pass, then the scaled rows written block by block).
    """
    t0 = time.perf_counter()
    members = [parts[m] for m in mix.members]
    rows = members[0].reduced.chunks[0]
    side_by_side = da.concatenate([da.from_zarr(p.reduced).rechunk((rows, -1)) for p in members], axis=1)
    with progress_step(f"{mix.name}: mixing"):
        balancer = VarianceBalancer([int(p.pca.n_components_) for p in members], mix.weights,
                                    memory=budget).fit(side_by_side)
    shares = {m: float(w) for m, w in zip(mix.members, balancer.share_)}
    mixture = {"members": list(mix.members), "weights": list(mix.weights), "variance_share": shares,
               "member_total_variance": dict(zip(mix.members, balancer.total_variance_.tolist())),
               "scale": dict(zip(mix.members, balancer.scale_.tolist()))}
    target = run.create_array(f"{mix.name}/reduced", side_by_side.shape, "float32",
                              attrs={"descriptor_set": mix.name, "mixture": mixture})
    with progress_step(f"{mix.name}: mixing"):
        da.store(balancer.transform(side_by_side).rechunk((target.chunks[0], -1)), target, lock=False)
    # the balanced members' variance is w_i; each kept the fraction e_i of its own, so the mixture
    # keeps sum(w) / sum(w_i / e_i) of the balanced members' full variance
    kept = 1.0 / sum(w / p.explained_variance for w, p in zip(balancer.share_, members))
    logger.info(f"{mix.name}: {' + '.join(f'{m} ({100 * v:.0f}% of the variance)' for m, v in shares.items())} "
                f"-> {target.shape[1]} dims")
    evidence = {f"{key}[{m}]": arr for m, p in zip(mix.members, members) for key, arr in p.evidence.items()}
    return Reduced(pca=MixPreprocessing(list(mix.members), [p.pca for p in members], balancer), reduced=target,
                   n_features=sum(p.n_features for p in members), explained_variance=kept,
                   seconds=time.perf_counter() - t0,
                   info={"members": {m: p.info for m, p in zip(mix.members, members)}}, evidence=evidence,
                   mixture=mixture)


def study_set(store: CaseStore, run: RunGroup, name: str, ks: list[int], prepared: Reduced, *, out: Path,
              n_init: int, budget: int, silhouette_samples: int,
              outlier_neighbors: int, outlier_score: str, n_top_outliers: int, random_state: int,
              attributes: pd.DataFrame | None, known: np.ndarray | None) -> SetOutcome:
    """Steps 2-6 of the :mod:`~streamclust.study.driver` docstring for one set or mixture; saves its model."""
    t0 = time.perf_counter()
    pca, reduced = prepared.pca, prepared.reduced
    with progress_step(f"{name}: k-means {ks[0]}..{ks[-1]}"):
        models = kmeans_sweep(reduced, ks, n_init=n_init, memory=budget, random_state=random_state)
    centers = {kk: m.cluster_centers_ for kk, m in models.items()}
    with progress_step(f"{name}: metrics"):
        scores = sweep_metrics(reduced, centers, memory=budget)
        sil_sample = silhouette_sample(reduced, silhouette_samples, random_state=random_state, memory=budget)
        silhouettes = sweep_silhouettes(sil_sample[1], centers, memory=budget)  # one sample, one distance pass
    rows = []
    for kk in ks:
        sil = silhouettes[kk]
        rows.append({"set": name, "algorithm": "kmeans", "k": kk, "n_rows": store.n_rows,
                     "n_features": prepared.n_features, "n_components": pca.n_components_,
                     "inertia": scores[kk]["inertia"],
                     "calinski_harabasz": scores[kk]["calinski_harabasz"],
                     "davies_bouldin": scores[kk]["davies_bouldin"], "silhouette": sil,
                     "smallest_cluster": int(np.min(scores[kk]["sizes"]))})
    metrics = pd.DataFrame(rows)
    chosen = choose_k(metrics)
    metrics["chosen"] = metrics["k"] == chosen
    k_note = k_edge_note(chosen, ks)
    if k_note:
        logger.warning(f"{name}: {k_note}")
    kmeans = models[chosen]
    with progress_step(f"{name}: labels"):
        labels = store_labels(kmeans, reduced, run, name)

    with progress_step(f"{name}: outlier scores"):
        detector = KNNOutlierDetector(n_neighbors=outlier_neighbors, memory=budget, random_state=random_state,
                                      index_neighbors=outlier_index_neighbors(outlier_neighbors),
                                      score="kdist" if outlier_score == "combined" else outlier_score).fit(reduced)
    screen, reasons = None, None
    if outlier_score == "combined":
        with progress_step(f"{name}: outlier scores"):
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
    with progress_step(f"{name}: top outliers"):
        top = top_outliers(name, outlier_scores, flags, labels, store.ids, n_top_outliers, reasons, known)
    logger.info(f"{name}: {n_flagged} outliers flagged ({flags.mean():.2%}) by {rule}; "
                f"kNN recall {detector.recall_:.3f}")
    truth = None
    if known is not None:
        truth = outlier_quality(outlier_scores, flags, known)
        logger.info(f"{name}: against the {truth['outliers']:,} known outliers among {truth['rows']:,} listed images: "
                    f"precision {truth['precision']}, recall {truth['recall']}, ROC AUC {truth['roc_auc']}")

    with progress_step(f"{name}: profiles"):
        profile = profile_clusters(labels, attributes, outlier_flags=flag_arr, set_name=name, memory=budget)

    with progress_step(f"{name}: model"):
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
    logger.info(f"{name}: k={chosen} chosen from {ks[0]}..{ks[-1]} "
                f"(silhouette {metrics.loc[metrics['chosen'], 'silhouette'].iloc[0]:.3f}) in {seconds:.1f} s")
    result = SetResult(name=name, n_features=prepared.n_features, n_components=int(pca.n_components_),
                       explained_variance=prepared.explained_variance, k=chosen, metrics=metrics, seconds=seconds,
                       model_dir=model_dir, centers=kmeans.cluster_centers_, n_outliers=n_flagged,
                       outlier_rule=rule, outlier_score=outlier_score, outlier_truth=truth,
                       mixture=prepared.mixture, k_note=k_note)
    return SetOutcome(result=result, labels=labels, scores=score_arr, flags=flag_arr, reduced=reduced,
                      profile=profile, top_outliers=top, silhouette_rows=sil_sample)
