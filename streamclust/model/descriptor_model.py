"""A saved model per descriptor set: label and screen NEW descriptors without refitting.

:class:`DescriptorSetModel` bundles what a study fitted for one descriptor set --
the preprocessing (:class:`~streamclust.estimators.StreamingPCA`), the chosen
k-means centres, the kNN outlier detector's reference sample, densities and
threshold, the cluster sentences, and a drift reference (training cluster
shares, outlier rate and quantiles of the distance to the assigned centre).  It
is saved as arrays + JSON (:mod:`streamclust.io.persist`; never pickle) and loaded
with ``model.json``'s own hash and every array's SHA-256 checked, and every value checked
(:mod:`streamclust.model.checks`) before it is used.

:meth:`DescriptorSetModel.assign` labels numpy blocks, or Zarr/Dask arrays
lazily (so it runs on any Dask scheduler), and :func:`~streamclust.model.drift.drift_report`
compares a new batch with the training data.

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

from streamclust.errors import ModelError, StoreError
from streamclust.estimators import KNNOutlierDetector, RobustZScreen, StreamingKMeans, StreamingPCA, VarianceBalancer
from streamclust.estimators.neighbors import build_index
from streamclust.io.persist import read_model_arrays, read_model_manifest, save_model_dir
from streamclust.model.checks import (
    DETECTOR_ARRAYS,
    DETECTOR_SCALARS,
    PCA_ARRAYS,
    PCA_SCALARS,
    check_budget,
    check_layout,
    check_values,
)

__all__ = ["DescriptorSetModel", "MixPreprocessing", "MODEL_KIND"]

MODEL_KIND = "descriptor-set-model"


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
    """Arrays (named ``<prefix><attr>``; ``<prefix>scale`` too when standardising) and JSON
    parameters of a fitted PCA."""
    arrays = {f"{prefix}{a.rstrip('_')}": getattr(pca, a) for a in PCA_ARRAYS}
    if pca.scale_ is not None:
        arrays[f"{prefix}scale"] = pca.scale_
    return arrays, {**pca.get_params(), **{a: _plain(getattr(pca, a)) for a in PCA_SCALARS}}


def _pca_from_state(arrays: dict[str, np.ndarray], params: dict[str, Any], prefix: str) -> StreamingPCA:
    """Inverse of :func:`_pca_state`."""
    pca = StreamingPCA(**{k: v for k, v in params.items() if k in StreamingPCA().get_params()})
    for a in PCA_ARRAYS:
        setattr(pca, a, arrays[f"{prefix}{a.rstrip('_')}"])
    for a in PCA_SCALARS:
        setattr(pca, a, params[a])
    pca.scale_ = arrays.get(f"{prefix}scale")
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
        arrays.update({f"det_{a.rstrip('_')}": getattr(self.detector, a) for a in DETECTOR_ARRAYS})
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
                         **{a: _plain(getattr(self.detector, a)) for a in DETECTOR_SCALARS}},
            "index_seed": int(self.index_seed),
        })
        info = {**self.info, "descriptor_set": self.name, "k": self.k,
                "sentences": {str(c): s for c, s in self.sentences.items()},
                "training": {"outlier_rate": float(self.training["outlier_rate"]),
                             "n_rows": int(self.training["n_rows"])}}
        return save_model_dir(directory, MODEL_KIND, params, arrays, info)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, memory: str | int | None = None) -> DescriptorSetModel:
        """Load and verify a model folder; refuses edited, damaged or impossible models.

        Order: ``model.json``'s hash and format (:func:`~streamclust.io.persist.read_model_manifest`),
        every field and declared array shape (:func:`~streamclust.model.checks.check_layout`), the
        memory the model needs (with ``memory``), the array files' headers and sizes, then their
        data, hashed as read (:func:`~streamclust.io.persist.read_model_arrays`), then their values
        (:func:`~streamclust.model.checks.check_values`).  Nothing is allocated before its size is
        known to be sound.

        Parameters
        ----------
        directory : path
        memory : str or int, optional
            A budget (e.g. ``"1GB"``; ``assign --memory``): the arrays and the rebuilt outlier index
            must fit in half of it.  None: no such check.

        Raises
        ------
        ModelError
            One line naming the model's file, the field or array, and what is wrong.
        """
        directory = Path(directory)
        doc = read_model_manifest(directory, kind=MODEL_KIND)
        layout = check_layout(directory, doc)
        if memory is not None:
            check_budget(directory, doc, layout, memory)
        arrays = read_model_arrays(directory, doc)
        check_values(directory, arrays)
        try:
            return cls._from_checked(doc, arrays)
        except (KeyError, TypeError, ValueError) as exc:  # a rule the checks do not know yet
            raise ModelError(f"{directory}: model.json is incomplete or of another layout "
                             f"({' '.join(repr(exc).split())}).") from exc

    @classmethod
    def _from_checked(cls, doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> DescriptorSetModel:
        """The model of a manifest and arrays :meth:`load` checked."""
        params, info = doc["params"], doc["info"]
        pca: StreamingPCA | MixPreprocessing
        if "mixture" in params:
            mix = params["mixture"]
            pcas = [_pca_from_state(arrays, p, f"mix{i}_pca_") for i, p in enumerate(mix["pca"])]
            balancer = VarianceBalancer.from_fitted(
                arrays["mix_total_variance"], arrays["mix_scale"],
                n_features=sum(int(p.n_components_) for p in pcas), **mix["balancer"])
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
        for a in DETECTOR_ARRAYS:
            setattr(det, a, arrays[f"det_{a.rstrip('_')}"])
        for a in DETECTOR_SCALARS:
            setattr(det, a, det_params[a])
        seed = int(params["index_seed"])
        det.index_ = build_index(det.reference_, n_neighbors=int(det.index_neighbors_), seed=seed,
                                 search=det.search)
        screen = None
        if "screen" in params:
            screen_params = dict(params["screen"])
            screen = RobustZScreen.from_fitted(arrays["screen_location"], arrays["screen_scale"],
                                               n_samples_fit=screen_params.pop("n_samples_fit"), **screen_params)
        sentences = {int(c): s for c, s in info["sentences"].items()}
        training = {"cluster_shares": arrays["train_cluster_shares"],
                    "distance_quantiles": arrays["train_distance_quantiles"], **info["training"]}
        return cls(info["descriptor_set"], pca, kmeans, det, seed, sentences, training, info, screen)


def _plain(value: Any) -> Any:
    """numpy scalars -> JSON-able Python values."""
    return value.item() if isinstance(value, np.generic) else value
