"""Checks of a saved descriptor-set model before anything in it is used.

:func:`streamclust.io.persist.read_model_manifest` proves that ``model.json`` and every array
are the ones the study wrote (or that whoever edited them recomputed the hashes).  The checks here
make sure that what they hold can be a fitted model, so that no value -- a forged one included --
makes ``assign`` fail with an internal error, allocate without bound or label silently wrong:

* :func:`check_layout`, on ``model.json`` alone, before any array is read: every field the model
  uses is present with the right type and within bounds (neighbour counts within the reference
  sample, dimensions and k positive and bounded, strings are strings, one sentence per cluster),
  no unknown field or array, and every array declared with the shape and dtype the others imply
  (``k x c`` centres, ``c x d`` components, a mixture's members adding up);
* :func:`check_budget`: the arrays plus the outlier index they rebuild fit in half of a memory
  budget (``assign --memory``);
* :func:`check_values`, on the arrays read: finite numbers, sorted reference rows, shares that
  sum to one, non-decreasing quantiles.

Each refusal is a :class:`~streamclust.errors.ModelError`, one line naming the model's file, the
field or array and what is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from streamclust.core.blocks import parse_memory
from streamclust.errors import MemoryBudgetError, ModelError
from streamclust.estimators import KNNOutlierDetector, RobustZScreen, StreamingKMeans, StreamingPCA, VarianceBalancer
from streamclust.estimators.neighbors import index_nbytes
from streamclust.io.persist import array_nbytes

__all__ = ["PCA_ARRAYS", "PCA_SCALARS", "DETECTOR_ARRAYS", "DETECTOR_SCALARS", "MAX_DIMENSION",
           "ModelLayout", "check_layout", "check_budget", "check_values"]

#: Fitted arrays of a PCA saved as ``<prefix><name without the trailing _>``.
PCA_ARRAYS = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_")
#: Fitted scalars of a PCA saved beside its parameters.
PCA_SCALARS = ("n_components_", "n_features_in_", "n_samples_seen_")
#: Fitted arrays of the outlier detector saved as ``det_<name without the trailing _>``.
DETECTOR_ARRAYS = ("reference_", "reference_indices_", "reference_kdist_", "reference_lrd_")
#: Fitted scalars of the outlier detector saved beside its parameters.
DETECTOR_SCALARS = ("n_neighbors_", "index_neighbors_", "search_epsilon_", "threshold_", "offset_",
                    "threshold_rule_", "n_features_in_", "recall_")
#: Upper bound of descriptor dimensions, components, clusters and mixture members.
MAX_DIMENSION = 1 << 20
#: Upper bound of reference rows and of the row counts a model records.
_MAX_ROWS = 1 << 40
#: Thresholds apply to float32 scores: one beyond their range is no threshold.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Upper bound of the quantiles of the drift reference (a study keeps 101).
_MAX_QUANTILES = 10_001

_NOT_OURS = "not a model streamclust writes; re-run the study to write a sound one"

Field = tuple[str | int, ...]
#: What an array may hold: ``"float"`` (float32 or float64), ``"float32"`` or ``"int"``.
Kind = str


def _where(path: Field) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class ModelLayout:
    """What ``model.json`` says the model is, once :func:`check_layout` accepted it.

    Attributes
    ----------
    members : list of str
        Descriptor sets read, in column order.
    n_features, n_components, k : int
        Raw descriptor columns (all members), reduced columns, clusters.
    n_reference, index_neighbors : int
        Rows of the outlier detector's reference sample and degree of its index graph.
    arrays : dict of str -> (shape, kind)
        Every array the model holds, with the shape and kind of dtype it must have.
    """

    members: list[str]
    n_features: int
    n_components: int
    k: int
    n_reference: int
    index_neighbors: int
    arrays: dict[str, tuple[tuple[int, ...], Kind]] = field(default_factory=dict)


class _Fields:
    """Typed reads of ``model.json`` fields; each bad one is refused naming the file and field."""

    def __init__(self, manifest: Path, doc: Mapping[str, Any]) -> None:
        self.manifest = manifest
        self.doc = doc

    def refuse(self, path: Field, problem: str) -> NoReturn:
        sep = "" if problem.startswith("=") else " "
        raise ModelError(f"{self.manifest}: {_where(path)}{sep}{problem}; {_NOT_OURS}.")

    def get(self, path: Field) -> Any:
        node: Any = self.doc
        for i, key in enumerate(path):
            container = node
            if isinstance(key, int):
                if not isinstance(container, list) or key >= len(container):
                    self.refuse(path[: i + 1], "is missing")
                node = container[key]
            else:
                if not isinstance(container, dict):
                    self.refuse(path[:i], f"={_short(container)} should be an object")
                if key not in container:
                    self.refuse(path[: i + 1], "is missing")
                node = container[key]
        return node

    def mapping(self, path: Field, keys: Sequence[str] | None = None) -> dict[str, Any]:
        """An object; with ``keys``, holding exactly those."""
        value = self.get(path)
        if not isinstance(value, dict):
            self.refuse(path, f"={_short(value)} should be an object")
        if keys is not None and set(value) != set(keys):
            extra, missing = sorted(set(value) - set(keys)), sorted(set(keys) - set(value))
            self.refuse(path, f"has unknown fields {extra}" if extra else f"lacks the fields {missing}")
        return value

    def sequence(self, path: Field, length: int | None = None) -> list[Any]:
        value = self.get(path)
        if not isinstance(value, list) or (length is not None and len(value) != length):
            self.refuse(path, f"={_short(value)} should be a list" + (f" of {length} items" if length else ""))
        return value

    def integer(self, path: Field, low: int, high: int, why: str = "") -> int:
        value = self.get(path)
        if not _is_int(value) or not low <= value <= high:
            self.refuse(path, f"={_short(value)} should be an integer in [{low}, {high}]{why}")
        return int(value)

    def equal(self, path: Field, expected: int, why: str) -> None:
        value = self.get(path)
        if not _is_int(value) or value != expected:
            self.refuse(path, f"={_short(value)} should be {expected} ({why})")

    def number(self, path: Field, low: float = -math.inf, high: float = math.inf) -> float:
        """A finite real number in ``[low, high]``."""
        value = self.get(path)
        if not _is_real(value) or not math.isfinite(value) or not low <= value <= high:
            span = f" in [{low:g}, {high:g}]" if math.isfinite(low) or math.isfinite(high) else ""
            self.refuse(path, f"={_short(value)} should be a finite number{span}")
        return float(value)

    def boolean(self, path: Field) -> bool:
        value = self.get(path)
        if not isinstance(value, bool):
            self.refuse(path, f"={_short(value)} should be true or false")
        return value

    def text(self, path: Field, choices: Sequence[str] | None = None) -> str:
        value = self.get(path)
        if not isinstance(value, str) or (choices is not None and value not in choices) or (
                choices is None and not value):
            self.refuse(path, f"={_short(value)} should be " + (f"one of {list(choices)}" if choices
                                                                else "a non-empty string"))
        return value

    def texts(self, path: Field, length: int | None = None) -> list[str]:
        values = self.sequence(path, length)
        for i in range(len(values)):
            self.text(path + (i,))
        return values

    def optional_integer(self, path: Field, low: int, high: int) -> None:
        if self.get(path) is not None:
            self.integer(path, low, high)

    def budget(self, path: Field) -> None:
        """A fitted estimator's ``memory``: None, a byte count or a size like ``"1GB"``."""
        value = self.get(path)
        if value is None:
            return
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            self.refuse(path, f"={_short(value)} should be null, a byte count or a size like '1GB'")
        try:
            parse_memory(value)
        except (MemoryBudgetError, ValueError, TypeError, OverflowError) as exc:
            self.refuse(path, f"={_short(value)} is not a memory budget ({' '.join(str(exc).split())})")

    def estimator(self, path: Field, make: Callable[[], Any]) -> None:
        """The section's parameters pass the estimator's own checks (those :meth:`fit` makes)."""
        try:
            make()
        except (ValueError, TypeError) as exc:
            self.refuse(path, f"is refused by its estimator: {' '.join(str(exc).split())}")


def _param_keys(estimator: Any, *extra: str) -> list[str]:
    return [*estimator.get_params(), *extra]


def _check_budget_fields(f: _Fields, section: Field) -> None:
    f.budget(section + ("memory",))
    f.optional_integer(section + ("block_rows",), 1, _MAX_ROWS)


def _check_pca(f: _Fields, section: Field, prefix: str, layout: ModelLayout, declared: Mapping[str, Any]
               ) -> tuple[int, int]:
    """One PCA's parameters and arrays; returns its ``(n_features, n_components)``."""
    f.mapping(section, _param_keys(StreamingPCA(), *PCA_SCALARS))
    name = f"{prefix}components"
    shape = declared[name]["shape"] if name in declared else None
    if shape is None or len(shape) != 2 or not 1 <= shape[0] <= shape[1] <= MAX_DIMENSION:
        f.refuse(("arrays", name), f"has shape {shape}; a (components, features) array with "
                                   f"1 <= components <= features <= {MAX_DIMENSION} was expected")
    c, d = int(shape[0]), int(shape[1])
    f.equal(section + ("n_components_",), c, f"the rows of {name}")
    f.equal(section + ("n_features_in_",), d, f"the columns of {name}")
    f.integer(section + ("n_samples_seen_",), 1, _MAX_ROWS)
    for flag in ("l2_normalize", "whiten", "standardize"):
        f.boolean(section + (flag,))
    _check_budget_fields(f, section)
    params = f.get(section)
    f.estimator(section, lambda: StreamingPCA(**{k: params[k] for k in StreamingPCA().get_params()})
                ._check_params(d))
    layout.arrays.update({name: ((c, d), "float"), f"{prefix}mean": ((d,), "float"),
                          f"{prefix}explained_variance": ((c,), "float"),
                          f"{prefix}explained_variance_ratio": ((c,), "float")})
    if params["standardize"]:
        layout.arrays[f"{prefix}scale"] = ((d,), "float")
    return d, c


def _check_preprocessing(f: _Fields, params: Mapping[str, Any], declared: Mapping[str, Any],
                         layout: ModelLayout) -> None:
    """The PCA of a descriptor set, or a mixture's member PCAs and balancer."""
    if "mixture" not in params:
        layout.n_features, layout.n_components = _check_pca(f, ("params", "pca"), "pca_", layout, declared)
        return
    mix: Field = ("params", "mixture")
    f.mapping(mix, ["members", "pca", "balancer"])
    members = f.texts(mix + ("members",))
    if not 1 <= len(members) <= MAX_DIMENSION or len(set(members)) != len(members):
        f.refuse(mix + ("members",), f"={_short(members)} should name distinct descriptor sets")
    f.sequence(mix + ("pca",), len(members))
    widths = [_check_pca(f, mix + ("pca", i), f"mix{i}_pca_", layout, declared) for i in range(len(members))]
    layout.members = list(members)
    layout.n_features = sum(d for d, _ in widths)
    layout.n_components = sum(c for _, c in widths)
    balancer = mix + ("balancer",)
    f.mapping(balancer, _param_keys(VarianceBalancer()))
    if f.get(balancer + ("widths",)) != [c for _, c in widths]:
        f.refuse(balancer + ("widths",), f"={_short(f.get(balancer + ('widths',)))} should be the members' "
                                         f"components {[c for _, c in widths]}")
    _check_budget_fields(f, balancer)
    p = f.get(balancer)
    f.estimator(balancer, lambda: VarianceBalancer(**p)._groups(layout.n_components))
    layout.arrays.update({"mix_total_variance": ((len(members),), "float"),
                          "mix_scale": ((len(members),), "float")})


def _check_kmeans(f: _Fields, declared: Mapping[str, Any], layout: ModelLayout) -> None:
    section: Field = ("params", "kmeans")
    f.mapping(section, _param_keys(StreamingKMeans()))
    shape = declared["kmeans_cluster_centers"]["shape"] if "kmeans_cluster_centers" in declared else None
    if shape is None or len(shape) != 2 or not 1 <= shape[0] <= MAX_DIMENSION or shape[1] != layout.n_components:
        f.refuse(("arrays", "kmeans_cluster_centers"), f"has shape {shape}; (k, {layout.n_components}) centres "
                                                       f"with 1 <= k <= {MAX_DIMENSION} were expected")
    layout.k = int(shape[0])
    f.equal(section + ("n_clusters",), layout.k, "the rows of kmeans_cluster_centers")
    _check_budget_fields(f, section)
    params = f.get(section)
    f.estimator(section, lambda: StreamingKMeans(**params)._check_params())
    layout.arrays.update({"kmeans_cluster_centers": ((layout.k, layout.n_components), "float"),
                          "kmeans_shift": ((layout.n_components,), "float")})


def _check_detector(f: _Fields, declared: Mapping[str, Any], layout: ModelLayout) -> None:
    section: Field = ("params", "detector")
    f.mapping(section, _param_keys(KNNOutlierDetector(), *DETECTOR_SCALARS))
    c = layout.n_components
    shape = declared["det_reference"]["shape"] if "det_reference" in declared else None
    if shape is None or len(shape) != 2 or not 2 <= shape[0] <= _MAX_ROWS or shape[1] != c:
        f.refuse(("arrays", "det_reference"), f"has shape {shape}; a reference sample of (m, {c}) rows with "
                                              "m >= 2 was expected")
    m = layout.n_reference = int(shape[0])
    why = f" (the reference sample has {m} rows)"
    f.integer(section + ("n_neighbors_",), 1, m - 1, why)
    layout.index_neighbors = f.integer(section + ("index_neighbors_",), 2, max(2, m - 1), why)
    f.equal(section + ("n_features_in_",), c, "the columns of det_reference")
    f.number(section + ("search_epsilon_",), 0.0, 1.0)
    f.number(section + ("recall_",), 0.0, 1.0)
    threshold = f.number(section + ("threshold_",), -_FLOAT32_MAX, _FLOAT32_MAX)
    if f.number(section + ("offset_",)) != -threshold:
        f.refuse(section + ("offset_",), f"={_short(f.get(section + ('offset_',)))} should be -threshold_")
    f.text(section + ("threshold_rule_",))
    f.text(section + ("score",), ["lof", "kdist", "mean"])
    _check_budget_fields(f, section)
    params = f.get(section)
    f.estimator(section, lambda: KNNOutlierDetector(**{k: params[k] for k in KNNOutlierDetector().get_params()})
                ._check_params())
    f.integer(("params", "index_seed"), 0, 2**32 - 1)
    layout.arrays.update({"det_reference": ((m, c), "float32"), "det_reference_indices": ((m,), "int"),
                          "det_reference_kdist": ((m,), "float"), "det_reference_lrd": ((m,), "float")})


def _check_screen(f: _Fields, params: Mapping[str, Any], layout: ModelLayout) -> None:
    """The combined outlier screen: the k-distance, then each member's row norm and residual."""
    if "screen" not in params:
        return
    section: Field = ("params", "screen")
    f.mapping(section, [*_param_keys(RobustZScreen(["upper"])), "n_samples_fit"])
    n_evidence = 1 + 2 * len(layout.members)
    f.sequence(section + ("sides",), n_evidence)
    f.texts(section + ("names",), n_evidence)
    f.number(section + ("threshold",), -_FLOAT32_MAX, _FLOAT32_MAX)
    f.integer(section + ("n_samples_fit",), 1, _MAX_ROWS)
    screen = dict(f.get(section))
    n_fit = screen.pop("n_samples_fit")
    f.estimator(section, lambda: RobustZScreen.from_fitted(np.zeros(n_evidence), np.ones(n_evidence),
                                                           n_samples_fit=n_fit, **screen))
    layout.arrays.update({"screen_location": ((n_evidence,), "float"),
                          "screen_scale": ((n_evidence,), "float")})


def _check_info(f: _Fields, layout: ModelLayout) -> None:
    """The set's name, k, the cluster sentences and the drift reference."""
    f.mapping(("info",))
    name = f.text(("info", "descriptor_set"))
    if "mixture" not in f.get(("params",)):
        layout.members = [name]
    f.equal(("info", "k"), layout.k, "the rows of kmeans_cluster_centers")
    sentences = f.mapping(("info", "sentences"))
    if sentences and set(sentences) != {str(c) for c in range(layout.k)}:
        f.refuse(("info", "sentences"), f"has the keys {_short(sorted(sentences))}; one sentence per cluster "
                                        f"'0'..'{layout.k - 1}' (or none) was expected")
    for key in sentences:
        f.text(("info", "sentences", key))
    f.mapping(("info", "training"), ["outlier_rate", "n_rows"])
    f.number(("info", "training", "outlier_rate"), 0.0, 1.0)
    f.integer(("info", "training", "n_rows"), 1, _MAX_ROWS)
    declared = f.get(("arrays",))
    quantiles = declared["train_distance_quantiles"]["shape"] if "train_distance_quantiles" in declared else None
    if quantiles is None or len(quantiles) != 1 or not 2 <= quantiles[0] <= _MAX_QUANTILES:
        f.refuse(("arrays", "train_distance_quantiles"), f"has shape {quantiles}; 2 to {_MAX_QUANTILES} "
                                                         "quantiles were expected")
    layout.arrays.update({"train_cluster_shares": ((layout.k,), "float"),
                          "train_distance_quantiles": ((int(quantiles[0]),), "float")})


def _check_declared_arrays(f: _Fields, declared: Mapping[str, Any], layout: ModelLayout) -> None:
    """Exactly the arrays the layout needs, each declared with its shape and a fitting dtype."""
    for name in declared:
        if name not in layout.arrays:
            f.refuse(("arrays", name), "is not an array of this model")
    for name, (shape, kind) in layout.arrays.items():
        if name not in declared:
            f.refuse(("arrays",), f"lacks the array {name!r}")
        entry = declared[name]
        if tuple(entry["shape"]) != shape:
            f.refuse(("arrays", name, "shape"), f"={entry['shape']} should be {list(shape)}")
        dtype = np.dtype(entry["dtype"])
        fits = {"float": dtype.kind == "f" and dtype.itemsize in (4, 8), "float32": dtype == np.float32,
                "int": dtype.kind in "iu" and dtype.itemsize == 8}[kind]
        if not fits or not dtype.isnative:
            want = {"float": "float32 or float64", "float32": "float32", "int": "64-bit integers"}[kind]
            f.refuse(("arrays", name, "dtype"), f"={entry['dtype']!r} should be {want} in this machine's byte order")


def check_layout(directory: str | Path, doc: Mapping[str, Any]) -> ModelLayout:
    """Check every field of a verified ``model.json`` the model uses, and the arrays it declares.

    Parameters
    ----------
    directory : path
        The model folder (for the messages).
    doc : mapping
        From :func:`~streamclust.io.persist.read_model_manifest`.

    Returns
    -------
    ModelLayout

    Raises
    ------
    ModelError
        One line naming ``model.json``, the field and what is wrong.
    """
    f = _Fields(Path(directory) / "model.json", doc)
    params = f.mapping(("params",))
    declared = doc["arrays"]
    layout = ModelLayout(members=[], n_features=0, n_components=0, k=0, n_reference=0, index_neighbors=0)
    _check_preprocessing(f, params, declared, layout)
    _check_kmeans(f, declared, layout)
    _check_detector(f, declared, layout)
    _check_info(f, layout)
    _check_screen(f, params, layout)
    known = {"pca", "mixture", "kmeans", "detector", "index_seed", "screen"}
    if set(params) - known:
        f.refuse(("params",), f"has unknown fields {sorted(set(params) - known)}")
    _check_declared_arrays(f, declared, layout)
    return layout


def check_budget(directory: str | Path, doc: Mapping[str, Any], layout: ModelLayout, memory: Any) -> None:
    """Refuse a model whose arrays plus rebuilt outlier index need more than half of ``memory``.

    Raises
    ------
    ModelError
        Naming the model, what it needs and the ``--memory`` that would do.
    """
    need = sum(array_nbytes(entry) for entry in doc["arrays"].values())
    need += index_nbytes(layout.n_reference, layout.n_components, layout.index_neighbors)
    budget = parse_memory(memory)
    if need > budget // 2:
        raise ModelError(f"{directory}: the model needs {need / 2**20:.1f} MiB in memory (its arrays and outlier "
                         f"index), more than half of the {budget / 2**20:.0f} MiB memory budget; give --memory "
                         f"{math.ceil(2 * need / 2**20)}MiB or more.")


_POSITIVE = ("mix_total_variance", "mix_scale")
_NON_NEGATIVE = ("det_reference_kdist", "det_reference_lrd", "train_cluster_shares", "train_distance_quantiles")


def check_values(directory: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse arrays no fitted model holds: NaN or Inf (a screen's scale may be +Inf: a column
    without spread), negative distances or densities, unsorted reference rows, cluster shares
    not summing to one, decreasing quantiles.

    Raises
    ------
    ModelError
        One line naming the array's file and what is wrong.
    """
    def refuse(name: str, problem: str) -> NoReturn:
        raise ModelError(f"{Path(directory) / (name + '.npy')}: {problem}; {_NOT_OURS}.")

    for name, value in arrays.items():
        if value.dtype.kind != "f":
            continue
        if name == "screen_scale":
            if np.isnan(value).any() or (value <= 0).any():
                refuse(name, "holds NaN or a scale <= 0")
        elif not np.isfinite(value).all():
            refuse(name, "holds NaN or Inf")
        if name in _POSITIVE and (value <= 0).any():
            refuse(name, "holds a value <= 0")
        if name in _NON_NEGATIVE and (value < 0).any():
            refuse(name, "holds a negative value")
    indices = arrays["det_reference_indices"]
    if (indices < 0).any() or (np.diff(indices) <= 0).any():
        refuse("det_reference_indices", "is not a strictly increasing list of row numbers")
    if abs(float(arrays["train_cluster_shares"].sum()) - 1.0) > 1e-6:
        refuse("train_cluster_shares", f"sums to {float(arrays['train_cluster_shares'].sum()):.6g}, not 1")
    if (np.diff(arrays["train_distance_quantiles"]) < 0).any():
        refuse("train_distance_quantiles", "decreases")
    for name in arrays:
        if name.endswith("explained_variance") and (arrays[name] < 0).any():
            refuse(name, "holds a negative variance")
