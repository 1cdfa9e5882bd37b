"""A saved model per descriptor set: label and screen NEW descriptors without refitting.

:class:`DescriptorSetModel` bundles what a study fitted for one descriptor set --
the preprocessing (:class:`~streamclust.estimators.StreamingPCA`), the chosen
k-means centres, the kNN outlier detector's reference sample, densities and
threshold, the cluster sentences, and a drift reference (training cluster
shares, outlier rate and quantiles of the distance to the assigned centre).  It
is saved as arrays + JSON (:mod:`streamclust.io.persist`; never pickle) and loaded
with every array's SHA-256 checked.

:meth:`DescriptorSetModel.assign` labels numpy blocks, or Zarr/Dask arrays
lazily (so it runs on any Dask scheduler), and :func:`drift_report` compares a
new batch with the training data.

A mixture of descriptor sets (``vdc_color+vdc_type``) is saved the same way with a
:class:`MixPreprocessing` in place of the PCA: each member's PCA, then the
balancing (:class:`~streamclust.estimators.VarianceBalancer`), so it labels new
rows given the members' raw descriptors side by side, in member order.

The outlier index (pynndescent) is rebuilt on load from the saved reference
sample with the saved seed; the build is single-threaded and deterministic, so
the rebuilt index equals the one of the study.  A new row that is identical to a
reference row (distance 0) is taken to *be* that row and does not count itself
as its own neighbour -- which is what reproduces the study's scores of the
training rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from streamclust.errors import StoreError
from streamclust.estimators import KNNOutlierDetector, RobustZScreen, StreamingKMeans, StreamingPCA, VarianceBalancer
from streamclust.estimators.neighbors import build_index
from streamclust.io.persist import load_model_dir, save_model_dir

__all__ = ["DescriptorSetModel", "MixPreprocessing", "DriftReport", "DriftAccumulator", "drift_report",
           "distance_quantiles", "MODEL_KIND"]

MODEL_KIND = "descriptor-set-model"

#: Quantiles of the training distance-to-centre distribution kept for drift checks.
_N_QUANTILES = 101

_PCA_ATTRS = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_")
_PCA_SCALARS = ("n_components_", "n_features_in_", "n_samples_seen_")
_DET_ARRAYS = ("reference_", "reference_indices_", "reference_kdist_", "reference_lrd_")
_DET_SCALARS = ("n_neighbors_", "index_neighbors_", "search_epsilon_", "threshold_", "offset_",
                "threshold_rule_", "n_features_in_", "recall_")


@dataclass
class MixPreprocessing:
    """The preprocessing of a mixture of descriptor sets: member PCAs side by side, balanced.

    Attributes
    ----------
    members : list of str
        Member descriptor sets, in column order.
    pcas : list of StreamingPCA
        Each member's fitted PCA (as in the member's own model).
    balancer : VarianceBalancer
        Fitted on the members' reduced rows side by side.
    """

    members: list[str]
    pcas: list[StreamingPCA]
    balancer: VarianceBalancer

    @property
    def n_features_in_(self) -> int:
        """Raw columns: the members' descriptor dimensions added up."""
        return sum(int(p.n_features_in_) for p in self.pcas)

    @property
    def n_components_(self) -> int:
        """Mixed columns: the members' PCA components added up."""
        return sum(int(p.n_components_) for p in self.pcas)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Mixed rows of raw member descriptors.

        Parameters
        ----------
        X : ndarray, shape (n, n_features_in_)
            The members' raw descriptors side by side, in ``members`` order.

        Returns
        -------
        ndarray of float32, shape (n, n_components_)
        """
        bounds = np.cumsum([0] + [int(p.n_features_in_) for p in self.pcas])
        reduced = np.hstack([p.transform(X[:, a:b]) for p, a, b in zip(self.pcas, bounds[:-1], bounds[1:])])
        return self.balancer.transform(reduced)

    def transform_with_row_stats(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`transform`, plus every member's raw row norm and residual off its principal
        subspace (:meth:`StreamingPCA.transform_with_row_stats`).

        Parameters
        ----------
        X : ndarray, shape (n, n_features_in_)

        Returns
        -------
        reduced : ndarray of float32, shape (n, n_components_)
        stats : ndarray of float32, shape (n, 2 * len(members))
            ``norm``, ``residual`` of the first member, then of the next, ...
        """
        bounds = np.cumsum([0] + [int(p.n_features_in_) for p in self.pcas])
        parts = [p.transform_with_row_stats(X[:, a:b]) for p, a, b in zip(self.pcas, bounds[:-1], bounds[1:])]
        return (self.balancer.transform(np.hstack([r for r, _ in parts])),
                np.hstack([st for _, st in parts]))


def _pca_state(pca: StreamingPCA, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (named ``<prefix><attr>``) and JSON parameters of a fitted PCA."""
    arrays = {f"{prefix}{a.rstrip('_')}": getattr(pca, a) for a in _PCA_ATTRS}
    return arrays, {**pca.get_params(), **{a: _plain(getattr(pca, a)) for a in _PCA_SCALARS}}


def _pca_from_state(arrays: dict[str, np.ndarray], params: dict[str, Any], prefix: str) -> StreamingPCA:
    """Inverse of :func:`_pca_state`."""
    pca = StreamingPCA(**{k: v for k, v in params.items() if k in StreamingPCA().get_params()})
    for a in _PCA_ATTRS:
        setattr(pca, a, arrays[f"{prefix}{a.rstrip('_')}"])
    for a in _PCA_SCALARS:
        setattr(pca, a, params[a])
    pca.scale_ = None
    return pca


@dataclass
class DescriptorSetModel:
    """The fitted pieces of one descriptor set, ready to label new rows.

    Attributes
    ----------
    name : str
        Descriptor set (e.g. ``"osnet"``, or ``"vdc_color+vdc_type"`` for a mixture).
    pca : StreamingPCA or MixPreprocessing
    kmeans : StreamingKMeans
    detector : KNNOutlierDetector
    index_seed : int
        Seed the detector's index was built with (rebuilt identically on load).
    screen : RobustZScreen or None
        The combined outlier score (the study's default): the robust z-scores of
        the detector's k-distance and the preprocessing's row norm(s) and residual(s);
        None when the detector's own score was used.
    sentences : dict of int -> str
        One sentence per cluster.
    training : dict
        Drift reference: ``cluster_shares`` (k,), ``outlier_rate``,
        ``distance_quantiles`` (101,), ``n_rows``.
    info : dict
        Provenance: store, run id, source hash, versions.
    """

    name: str
    pca: StreamingPCA | MixPreprocessing
    kmeans: StreamingKMeans
    detector: KNNOutlierDetector
    index_seed: int
    sentences: dict[int, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    screen: RobustZScreen | None = None

    @property
    def threshold(self) -> float:
        """Rows with ``outlier_score`` above this are outliers."""
        return float(self.screen.threshold_ if self.screen is not None else self.detector.threshold_)

    @property
    def members(self) -> list[str]:
        """Descriptor sets the model reads, in column order (``[name]`` unless a mixture)."""
        return list(self.pca.members) if isinstance(self.pca, MixPreprocessing) else [self.name]

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.kmeans.cluster_centers_.shape[0])

    # --------------------------------------------------------------- labelling
    def _assign_block(self, block: np.ndarray) -> np.ndarray:
        """Labels, outlier scores and distances of one block: ``(rows, 3)`` float64."""
        if self.screen is None:
            reduced, stats = self.pca.transform(np.asarray(block)), None
        else:
            reduced, stats = self.pca.transform_with_row_stats(np.asarray(block))
        labels = self.kmeans.predict(reduced)
        dist = self.kmeans.transform(reduced)[np.arange(len(labels)), labels]
        scores = self._outlier_scores(reduced, stats)
        return np.column_stack([labels, scores, dist]).astype(np.float64)

    def _outlier_scores(self, reduced: np.ndarray, stats: np.ndarray | None) -> np.ndarray:
        kdist = self.detector.score_new_rows(reduced)
        if self.screen is None:
            return kdist
        return self.screen.score(np.column_stack([kdist, stats]))

    def assign(self, X: Any) -> dict[str, Any]:
        """Label and screen rows of this descriptor set.

        Parameters
        ----------
        X : ndarray, zarr.Array or dask.array.Array, shape (n, n_features)
            Raw descriptors, as converted (float32) or as delivered.

        Returns
        -------
        dict
            ``cluster`` (n,) int32, ``outlier_score`` (n,) float32, ``is_outlier``
            (n,) bool, ``distance`` (n,) float32 to the assigned centre; numpy for
            numpy input, lazy Dask arrays otherwise.
        """
        d = self.pca.n_features_in_
        if X.ndim != 2 or X.shape[1] != d:
            raise StoreError(
                f"model {self.name!r} expects (n, {d}) descriptors; got shape {tuple(X.shape)}."
            )
        if isinstance(X, np.ndarray):
            packed = self._assign_block(X)
        else:
            arr = X if isinstance(X, da.Array) else da.from_zarr(X)
            arr = arr.rechunk({1: -1})
            packed = arr.map_blocks(self._assign_block, dtype=np.float64,
                                    chunks=(arr.chunks[0], (3,)), meta=np.empty((0, 0)))
        scores = packed[:, 1].astype(np.float32)
        return {"cluster": packed[:, 0].astype(np.int32), "outlier_score": scores,
                "is_outlier": scores > self.threshold,
                "distance": packed[:, 2].astype(np.float32)}

    def sentence(self, labels: np.ndarray) -> np.ndarray:
        """The cluster sentence of every label, as an object array."""
        table = np.array([self.sentences.get(c, f"Cluster {c}") for c in range(self.k)], dtype=object)
        return table[np.asarray(labels)]

    # ------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model folder (arrays + ``model.json``)."""
        params: dict[str, Any] = {}
        if isinstance(self.pca, MixPreprocessing):
            arrays, member_params = {}, []
            for i, pca in enumerate(self.pca.pcas):
                a, p = _pca_state(pca, f"mix{i}_pca_")
                arrays.update(a)
                member_params.append(p)
            arrays["mix_total_variance"] = self.pca.balancer.total_variance_
            arrays["mix_scale"] = self.pca.balancer.scale_
            params["mixture"] = {"members": list(self.pca.members), "pca": member_params,
                                 "balancer": self.pca.balancer.get_params()}
        else:
            arrays, params["pca"] = _pca_state(self.pca, "pca_")
        arrays["kmeans_cluster_centers"] = self.kmeans.cluster_centers_
        arrays["kmeans_shift"] = self.kmeans.shift_
        arrays.update({f"det_{a.rstrip('_')}": getattr(self.detector, a) for a in _DET_ARRAYS})
        if self.screen is not None:
            arrays["screen_location"] = self.screen.location_
            arrays["screen_scale"] = self.screen.scale_
            params["screen"] = {**self.screen.get_params(), "sides": list(self.screen.sides),
                                "names": list(self.screen.names), "n_samples_fit": self.screen.n_samples_fit_}
        arrays["train_cluster_shares"] = np.asarray(self.training["cluster_shares"], np.float64)
        arrays["train_distance_quantiles"] = np.asarray(self.training["distance_quantiles"], np.float64)
        params.update({
            "kmeans": self.kmeans.get_params(),
            "detector": {**self.detector.get_params(),
                         **{a: _plain(getattr(self.detector, a)) for a in _DET_SCALARS}},
            "index_seed": int(self.index_seed),
        })
        info = {**self.info, "descriptor_set": self.name, "k": self.k,
                "sentences": {str(c): s for c, s in self.sentences.items()},
                "training": {"outlier_rate": float(self.training["outlier_rate"]),
                             "n_rows": int(self.training["n_rows"])}}
        return save_model_dir(directory, MODEL_KIND, params, arrays, info)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DescriptorSetModel:
        """Load and verify a model folder; refuses tampered or incompatible files."""
        doc, arrays = load_model_dir(directory, kind=MODEL_KIND)
        try:
            params, info = doc["params"], doc["info"]
            pca: StreamingPCA | MixPreprocessing
            if "mixture" in params:
                mix = params["mixture"]
                pcas = [_pca_from_state(arrays, p, f"mix{i}_pca_") for i, p in enumerate(mix["pca"])]
                balancer = VarianceBalancer.from_fitted(
                    arrays["mix_total_variance"], arrays["mix_scale"],
                    sum(int(p.n_components_) for p in pcas), **mix["balancer"])
                pca = MixPreprocessing(list(mix["members"]), pcas, balancer)
            else:
                pca = _pca_from_state(arrays, params["pca"], "pca_")
            kmeans = StreamingKMeans(**params["kmeans"])
            kmeans.cluster_centers_ = arrays["kmeans_cluster_centers"]
            kmeans.shift_ = arrays["kmeans_shift"]
            kmeans.n_features_in_ = int(kmeans.cluster_centers_.shape[1])
            det_params = dict(params["detector"])
            det = KNNOutlierDetector(**{k: v for k, v in det_params.items()
                                        if k in KNNOutlierDetector().get_params()})
            for a in _DET_ARRAYS:
                setattr(det, a, arrays[f"det_{a.rstrip('_')}"])
            for a in _DET_SCALARS:
                setattr(det, a, det_params[a])
            seed = int(params["index_seed"])
            det.index_ = build_index(det.reference_, n_neighbors=int(det.index_neighbors_), seed=seed)
            screen = None
            if "screen" in params:
                screen = RobustZScreen.from_fitted(arrays["screen_location"], arrays["screen_scale"],
                                                   **params["screen"])
            sentences = {int(c): s for c, s in info.get("sentences", {}).items()}
            training = {"cluster_shares": arrays["train_cluster_shares"],
                        "distance_quantiles": arrays["train_distance_quantiles"],
                        **info["training"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{directory}: model.json is incomplete or of another layout ({exc!r}).") from exc
        return cls(info["descriptor_set"], pca, kmeans, det, seed, sentences, training, info, screen)


def _plain(value: Any) -> Any:
    """numpy scalars -> JSON-able Python values."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class DriftReport:
    """How a new batch compares with the training data of a model.

    Attributes
    ----------
    n_rows : int
    cluster_shares : DataFrame-like dict
        ``training`` and ``batch`` share per cluster.
    share_shift : float
        Total-variation distance between the two cluster distributions, in [0, 1].
    share_shift_limit : float
        The value a same-distribution batch of this size stays under (99.9%).
    outlier_rate, training_outlier_rate, outlier_rate_limit : float
    distance_ks, distance_ks_limit : float
        Kolmogorov-Smirnov distance of the distance-to-centre distribution from the
        training one, and its 99.9% critical value.
    verdict : str
        One line: ``"no drift: ..."`` or ``"DRIFT: ..."``.
    """

    n_rows: int
    cluster_shares: dict[str, list[float]]
    share_shift: float
    share_shift_limit: float
    outlier_rate: float
    training_outlier_rate: float
    outlier_rate_limit: float
    distance_ks: float
    distance_ks_limit: float
    verdict: str

    @property
    def drifted(self) -> bool:
        """True when any check exceeded its limit."""
        return self.verdict.startswith("DRIFT")

    def to_text(self) -> str:
        """A short human-readable report ending with the verdict line."""
        lines = [f"batch of {self.n_rows} rows vs training data",
                 f"  cluster shares: total-variation shift {self.share_shift:.3f} (limit {self.share_shift_limit:.3f})",
                 f"  outlier rate: {self.outlier_rate:.2%} vs {self.training_outlier_rate:.2%} in training "
                 f"(limit {self.outlier_rate_limit:.2%})",
                 f"  distance to centre: KS {self.distance_ks:.3f} (limit {self.distance_ks_limit:.3f})",
                 "  cluster  training  batch"]
        for c, (a, b) in enumerate(zip(self.cluster_shares["training"], self.cluster_shares["batch"])):
            lines.append(f"  {c:7d}  {a:8.1%}  {b:6.1%}")
        lines.append(self.verdict)
        return "\n".join(lines)


class DriftAccumulator:
    """Streaming counts for :func:`drift_report`: feed batches, then :meth:`report`.

    Holds ``k + 101`` counters, whatever the number of rows.
    """

    def __init__(self, model: DescriptorSetModel) -> None:
        self.model = model
        self.quantiles = np.asarray(model.training["distance_quantiles"], np.float64)
        self.n = 0
        self.cluster_counts = np.zeros(model.k, np.int64)
        self.n_outliers = 0
        self.below = np.zeros(len(self.quantiles), np.int64)

    def update(self, clusters: np.ndarray, is_outlier: np.ndarray, distances: np.ndarray) -> None:
        """Add one block of :meth:`DescriptorSetModel.assign` output."""
        clusters = np.asarray(clusters)
        self.n += len(clusters)
        self.cluster_counts += np.bincount(clusters, minlength=self.model.k)[: self.model.k]
        self.n_outliers += int(np.count_nonzero(is_outlier))
        d = np.sort(np.asarray(distances, np.float64))
        self.below += np.searchsorted(d, self.quantiles, side="right")

    def report(self) -> DriftReport:
        """The three checks of :func:`drift_report` on everything fed so far."""
        n = self.n
        if n == 0:
            raise StoreError("a drift report needs at least one row.")
        train = np.asarray(self.model.training["cluster_shares"], np.float64)
        batch = self.cluster_counts / n
        tv = 0.5 * float(np.abs(batch - train).sum())
        tv_limit = 0.5 * float(np.sum(3.3 * np.sqrt(train * (1 - train) / n))) + 0.02
        r = max(float(self.model.training["outlier_rate"]), 1e-3)
        rate = self.n_outliers / n
        rate_limit = float(r + 3.3 * np.sqrt(r * (1 - r) / n) + 0.005)
        levels = np.linspace(0, 1, len(self.quantiles))
        ks = float(np.max(np.abs(self.below / n - levels)))
        ks_limit = float(1.95 / np.sqrt(n) + 0.02)
        reasons = []
        if tv > tv_limit:
            reasons.append(f"cluster shares moved by {tv:.2f} (limit {tv_limit:.2f})")
        if rate > rate_limit:
            reasons.append(f"outlier rate {rate:.1%} vs {r:.1%} in training (limit {rate_limit:.1%})")
        if ks > ks_limit:
            reasons.append(f"distances to the centres shifted (KS {ks:.2f}, limit {ks_limit:.2f})")
        verdict = ("DRIFT: " + "; ".join(reasons)) if reasons else (
            f"no drift: {n} rows look like the training data on cluster shares, outlier rate and distances")
        return DriftReport(n, {"training": train.tolist(), "batch": batch.tolist()}, tv, tv_limit,
                           rate, r, rate_limit, ks, ks_limit, verdict)


def drift_report(model: DescriptorSetModel, clusters: np.ndarray, is_outlier: np.ndarray,
                 distances: np.ndarray) -> DriftReport:
    """Compare a labelled batch with the model's training data.

    Three checks, each against the limit a batch drawn from the training
    distribution stays under with probability ~99.9%:

    * cluster shares: total-variation distance; limit from the multinomial
      sampling noise, ``0.5 * sum_j 3.3 * sqrt(p_j (1 - p_j) / n)`` (plus 0.02);
    * outlier rate: binomial upper limit ``r + 3.3 * sqrt(r (1 - r) / n)`` of the
      training rate ``r`` (plus 0.5 points), with ``r`` at least 0.1%;
    * distance to the assigned centre: Kolmogorov-Smirnov distance to the training
      quantiles, limit ``1.95 / sqrt(n)`` (plus 0.02).

    Parameters
    ----------
    model : DescriptorSetModel
    clusters, is_outlier, distances : ndarray, shape (n,)
        Output of :meth:`DescriptorSetModel.assign` for the batch.
    """
    acc = DriftAccumulator(model)
    acc.update(clusters, is_outlier, distances)
    return acc.report()


def distance_quantiles(distances: np.ndarray) -> np.ndarray:
    """The ``_N_QUANTILES`` quantiles of a (sample of) training distances."""
    return np.quantile(np.asarray(distances, np.float64), np.linspace(0, 1, _N_QUANTILES))
