"""What :func:`~streamclust.study.run_study` returns: one :class:`SetResult` per descriptor set or
mixture, gathered in a :class:`StudyResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamclust.analysis import ClusterProfiles, SetComparison
from streamclust.study.algorithm_comparison import AlgorithmComparison

__all__ = ["SetResult", "StudyResult"]


@dataclass(kw_only=True)
class SetResult:
    """What the study found for one descriptor set."""

    name: str
    n_features: int
    n_components: int
    explained_variance: float
    k: int
    metrics: pd.DataFrame
    seconds: float
    model_dir: Path
    #: k-means centres of the chosen k, shape (k, n_components).
    centers: np.ndarray
    n_outliers: int = 0
    outlier_rule: str = ""
    #: The outlier score used (one of :data:`~streamclust.study.rules.OUTLIER_SCORES`).
    outlier_score: str = "combined"
    #: With ``outlier_truth=``: how the flags and scores agree with the known outliers
    #: (:func:`~streamclust.study.truth.outlier_quality`).
    outlier_truth: dict[str, Any] | None = None
    #: For a mixture: ``members``, ``weights`` and the ``variance_share`` of each member.
    mixture: dict[str, Any] | None = None
    #: When the chosen k is the smallest or largest of the range: what to do
    #: (:func:`~streamclust.study.rules.k_edge_note`).
    k_note: str | None = None
    #: With ``umap=True``: ``sample_rows`` (rows UMAP embedded), ``seconds`` and the
    #: ``params`` of :class:`~streamclust.estimators.SampledUMAP`; its output is ``<set>/umap``.
    umap: dict[str, Any] | None = None


@dataclass(kw_only=True)
class StudyResult:
    """The outcome of :func:`~streamclust.study.run_study`."""

    out_dir: Path
    run_id: str
    sets: dict[str, SetResult] = field(default_factory=dict)
    recommended: str = ""
    profiles: dict[str, ClusterProfiles] = field(default_factory=dict)
    comparison: SetComparison | None = None
    #: metrics.csv: every set x algorithm x k (k-means rows first per set).
    algorithm_metrics: pd.DataFrame | None = None
    #: algorithms.csv: ARI / AMI between the chosen labellings of each pair of algorithms per set.
    agreement: pd.DataFrame | None = None
    #: summary.json's ``best`` (see ``BEST_RULE``).
    best: dict[str, Any] | None = None
    #: Per set: how its algorithms compare and the one recommended
    #: (:func:`~streamclust.study.algorithm_comparison.compare_algorithms`).
    algorithm_comparison: dict[str, AlgorithmComparison] = field(default_factory=dict)
    #: Seconds per step of the study (``"osnet: PCA"``, ``"report"``, ...): ``{"wall_s", "cpu_s", "calls"}``
    #: (:func:`~streamclust.core.progress.step_times`); summary.json's ``timings``.  With two sets at a
    #: time their steps overlap: ``cpu_s`` (the whole process's) then counts both.
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Sets taken through the steps after the PCA at the same time
    #: (:func:`~streamclust.study.rules.sets_at_once`); summary.json's ``sets_at_once``.
    sets_at_once: int = 1

    @property
    def results_csv(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def results_parquet(self) -> Path:
        """``results.csv``'s rows, typed, as Parquet: ``pandas.read_parquet(result.results_parquet)``."""
        return self.out_dir / "results.parquet"

    @property
    def metrics_csv(self) -> Path:
        return self.out_dir / "metrics.csv"

    def summary_table(self) -> pd.DataFrame:
        """One row per set: dimensions, kept variance, chosen k and its metrics."""
        rows = []
        for name, res in self.sets.items():
            chosen = res.metrics[res.metrics["chosen"]].iloc[0]
            rows.append({
                "set": name, "dims": res.n_features, "pca": res.n_components,
                "variance_kept": round(res.explained_variance, 3), "k": res.k,
                "silhouette": round(float(chosen["silhouette"]), 3),
                "calinski_harabasz": round(float(chosen["calinski_harabasz"]), 1),
                "davies_bouldin": round(float(chosen["davies_bouldin"]), 3),
                "outliers": res.n_outliers,
                **({f"known_outliers_{k}": v for k, v in res.outlier_truth.items()} if res.outlier_truth else {}),
                "seconds": round(res.seconds, 1),
                "recommended": name == self.recommended,
            })
        return pd.DataFrame(rows)
