"""One outlier score from several kinds of per-row evidence: robust z-scores combined.

Why (measured on real images, Dec 2026; ``benchmarks/bench_real_outliers.py``)
-------------------------------------------------------------------------------
Real anomalies come in groups that resemble each other (dark frames look alike,
glare frames look alike, crops of the same photo look alike), so a ratio of local
densities (LOF) lets a group hide itself: on Fashion-MNIST photos with 1 % real
anomalies from other sources LOF reached ROC AUC 0.51-0.69.  What finds them is
evidence that does not compare a row with its look-alikes:

``neighbours``
    the distance to the ``k``-th nearest row of a reference sample in the reduced
    space (:class:`~streamclust.estimators.KNNOutlierDetector` with
    ``score="kdist"``): far from every normal row;
``norm``
    the raw row norm (:meth:`~streamclust.estimators.StreamingPCA.transform_with_row_stats`),
    which L2 normalisation removes from the reduced rows: a network that barely
    responds (dark, empty pictures) or responds everywhere (glare) -- both sides
    count;
``residual``
    the distance of the preprocessed row to the principal subspace: what the
    components fitted on normal rows cannot explain.

Each is a different test.  Each evidence column ``j`` is put on one scale -- the robust
z-score of its logarithm, ``z_j = (log e_j - median_j) / s_j``, with ``median_j`` and ``s_j``
(``1.4826`` x the MAD) measured on a sample of the data (the kNN detector's reference
sample in the study).  For ``"upper"`` evidence (distances: only large is bad) ``s_j`` is
the *upper* semi-MAD, ``1.4826 x median(log e - median | log e > median)``, since
log-distances are right-skewed; for ``"both"`` (the norm) the z-score is
``|log e - median| / MAD``.  The score combines the positive z-scores, by default as
their Euclidean norm ``sqrt(sum_j max(z_j, 0)^2)`` (``combine="rms"``): one strong test
suffices and agreeing tests add up, while a very small distance cannot cancel other
evidence.  ``combine="max"`` takes the largest.  Measured (k = 50 neighbours, ROC AUC of
the anomalies; rms / max): real images at 70,700 rows 0.973 / 0.971 (cnn), 0.967 / 0.960
(hog), 0.890 / 0.911 (pixels), at 424,200 rows 0.925 / 0.912, 0.968 / 0.959, 0.874 /
0.904; the demo case at 416,314 rows 0.959-0.987 / 0.941-0.979 -- the max lets a channel
whose normal rows have a heavy tail (the demo's row norms) flag normal rows.  The scores
are in units of robust standard deviations, so one threshold (:data:`DEFAULT_Z_THRESHOLD`)
serves every set, and the column with the largest z-score is the *reason* a row is flagged.

Everything is per row: fitting needs only the sample's evidence (a few arrays of
``n_reference`` values), scoring is elementwise, so the memory does not depend on
the number of rows.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from streamclust.core.blocks import parse_memory

__all__ = ["RobustZScreen", "screen_scores", "evidence_rows", "DEFAULT_Z_THRESHOLD", "LOG_FLOOR"]

#: Default flagging threshold on the (``"rms"``) score, in robust standard deviations.  Judged
#: on the real-image benchmark (``benchmarks/bench_real_outliers.py``, 1 % real anomalies;
#: its table gives thresholds 3 to 6): at 4 the flags were 0.7-1.2 % of the rows with
#: precision 0.34-0.51 at 70,700 rows, 0.1-1.1 % with precision 0.27-0.72 at 424,200 rows;
#: at 3.5, 0.4-2.8 % of the rows and precision 0.13-0.38.
DEFAULT_Z_THRESHOLD = 4.0

#: Evidence values are floored here before the logarithm (a zero distance or an all-zero
#: row stays finite: ``log(1e-30) = -69``, far below any real value).
LOG_FLOOR = 1e-30

Side = Literal["upper", "both"]
Combine = Literal["rms", "max"]


def _log(values: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(values, dtype=np.float64), LOG_FLOOR))


class RobustZScreen(BaseEstimator):
    """Robust z-scores of the logarithms of several evidence columns, combined into one score.

    See the module documentation for what the evidence is and why.

    Parameters
    ----------
    sides : sequence of {"upper", "both"}
        One per evidence column: ``"upper"`` when only large values are anomalous
        (distances), ``"both"`` when small and large are (the row norm).
    names : sequence of str or None, default=None
        Names of the columns (the *reason* of a flag); None gives ``"e0"``, ``"e1"``, ...
    threshold : float, default=DEFAULT_Z_THRESHOLD
        Rows scoring above it are outliers.
    combine : {"rms", "max"}, default="rms"
        How a row's z-scores make its score: ``"rms"``, the Euclidean norm of the positive
        ones, ``sqrt(sum_j max(z_j, 0)^2)`` (evidence adds up, one strong test suffices);
        ``"max"``, the largest.  The module docstring gives the measurements behind the default.

    Attributes
    ----------
    location_ : ndarray of float64, shape (n_evidence,)
        Median of each column's logarithm.
    scale_ : ndarray of float64, shape (n_evidence,)
        ``1.4826`` x the (upper semi-, for ``"upper"``) MAD of each column's logarithm;
        where that is 0 (more than half the values tie), ``1.2533`` x the mean absolute
        deviation on the same side; where that is 0 too, ``inf`` (the column then
        contributes a z of 0: it carries no information).
    threshold_ : float
    threshold_rule_ : str
        The rule, in words, for logs and reports.
    n_samples_fit_ : int
    n_features_in_ : int
        Number of evidence columns.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> E = np.exp(rng.normal(size=(1000, 2)))
    >>> screen = RobustZScreen(["upper", "both"], names=["kdist", "norm"]).fit(E)
    >>> screen.score(np.array([[1.0, 1.0], [1.0, 100.0]])).round(1)
    array([0. , 4.9], dtype=float32)
    """

    def __init__(self, sides: Sequence[Side], names: Sequence[str] | None = None, *,
                 threshold: float = DEFAULT_Z_THRESHOLD, combine: Combine = "rms") -> None:
        self.sides = sides
        self.names = names
        self.threshold = threshold
        self.combine = combine

    def _check_params(self) -> tuple[list[str], list[str]]:
        sides = list(self.sides)
        if not sides or any(s not in ("upper", "both") for s in sides):
            raise ValueError(f"sides={self.sides!r} should be a non-empty sequence of 'upper' / 'both'.")
        names = [f"e{j}" for j in range(len(sides))] if self.names is None else [str(n) for n in self.names]
        if len(names) != len(sides):
            raise ValueError(f"names={self.names!r} should name each of the {len(sides)} evidence columns.")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not np.isfinite(t):
            raise ValueError(f"threshold={t!r} should be a finite number.")
        if self.combine not in ("rms", "max"):
            raise ValueError(f"combine={self.combine!r} should be 'rms' or 'max'.")
        return sides, names

    def _check_E(self, E: Any, n_columns: int) -> np.ndarray:
        E = np.asarray(E, dtype=np.float64)
        if E.ndim != 2 or E.shape[1] != n_columns:
            raise ValueError(f"evidence has shape {E.shape}; expected (n_rows, {n_columns}).")
        if not np.all(np.isfinite(E)) or np.any(E < 0):
            raise ValueError("evidence should be finite and non-negative (distances and norms).")
        return E

    def fit(self, E: Any, y: Any = None) -> RobustZScreen:
        """Location and scale of each evidence column's logarithm.

        Parameters
        ----------
        E : array-like, shape (n_samples, n_evidence)
            Non-negative evidence of a sample of rows (e.g. the kNN detector's
            reference rows, their k-distance computed without themselves).
        y : ignored

        Returns
        -------
        self
        """
        sides, _ = self._check_params()
        E = self._check_E(E, len(sides))
        if E.shape[0] < 2:
            raise ValueError(f"n_samples={E.shape[0]} should be >= 2.")
        logs = _log(E)
        loc = np.median(logs, axis=0)
        scale = np.empty(len(sides))
        for j, side in enumerate(sides):
            dev = logs[:, j] - loc[j]
            dev = dev[dev > 0] if side == "upper" else np.abs(dev)
            s = 1.4826 * float(np.median(dev)) if dev.size else 0.0
            if s <= 0:
                s = 1.2533 * float(dev.mean()) if dev.size else 0.0
            scale[j] = s if s > 0 else np.inf
        return self._set_fitted(loc, scale, E.shape[0])

    def _set_fitted(self, location: np.ndarray, scale: np.ndarray, n_samples_fit: int) -> RobustZScreen:
        """Set the fitted attributes (one place for :meth:`fit` and :meth:`from_fitted`)."""
        self.location_, self.scale_ = location, scale
        self.threshold_ = float(self.threshold)
        self.n_samples_fit_ = int(n_samples_fit)
        self.n_features_in_ = len(location)
        self.threshold_rule_ = self.describe()
        return self

    @classmethod
    def from_fitted(cls, location: Any, scale: Any, *, n_samples_fit: int, **params: Any) -> RobustZScreen:
        """A fitted screen from saved state (e.g. a model folder), without refitting.

        Parameters
        ----------
        location, scale : array-like of float, shape (n_evidence,)
            ``location_`` and ``scale_`` of the fitted screen.
        n_samples_fit : int
        **params
            The constructor's parameters (``sides``, ``names``, ``threshold``, ``combine``).

        Raises
        ------
        ValueError
            If the parameters are invalid or the arrays do not have one value per evidence column.
        """
        screen = cls(**params)
        sides, _ = screen._check_params()
        location, scale = np.asarray(location, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        if location.shape != (len(sides),) or scale.shape != location.shape:
            raise ValueError(f"location of shape {location.shape} and scale of shape {scale.shape} "
                             f"for {len(sides)} evidence columns")
        if np.isnan(location).any() or np.isnan(scale).any() or (scale <= 0).any():
            raise ValueError("location and scale should be numbers, scale > 0")
        return screen._set_fitted(location, scale, n_samples_fit)

    def describe(self) -> str:
        """The flagging rule in words."""
        sides, names = self._check_params()
        parts = [f"{n} ({'both sides' if s == 'both' else 'large'})" for n, s in zip(names, sides)]
        how = ("root of the summed squares of the positive robust z-scores" if self.combine == "rms"
               else "largest robust z-score")
        return f"{how} (log scale, median/MAD of a sample) of {', '.join(parts)} > {float(self.threshold):g}"

    def z_scores(self, E: Any) -> np.ndarray:
        """Robust z-score of every evidence column.

        Parameters
        ----------
        E : array-like, shape (n_samples, n_evidence)

        Returns
        -------
        ndarray of float32, shape (n_samples, n_evidence)
        """
        check_is_fitted(self, "scale_")
        sides, _ = self._check_params()
        logs = _log(self._check_E(E, self.n_features_in_))
        with np.errstate(invalid="ignore"):
            z = (logs - self.location_) / self.scale_
        z = np.nan_to_num(z, nan=0.0)
        both = np.array([s == "both" for s in sides])
        z[:, both] = np.abs(z[:, both])
        return z.astype(np.float32)

    def score(self, E: Any) -> np.ndarray:
        """The outlier score of each row from its z-scores (``combine``; higher = more outlying).

        Parameters
        ----------
        E : array-like, shape (n_samples, n_evidence)

        Returns
        -------
        ndarray of float32, shape (n_samples,)
        """
        z = self.z_scores(E)
        if self.combine == "max":
            return z.max(axis=1)
        return np.sqrt(np.square(np.maximum(z, 0.0)).sum(axis=1, dtype=np.float64)).astype(np.float32)

    def reasons(self, E: Any) -> np.ndarray:
        """Name of the evidence column with the largest z-score of each row (what gave or
        contributed most to its score).

        Parameters
        ----------
        E : array-like, shape (n_samples, n_evidence)

        Returns
        -------
        ndarray of object (str), shape (n_samples,)
        """
        _, names = self._check_params()
        return np.asarray(names, dtype=object)[self.z_scores(E).argmax(axis=1)]

    def predict(self, E: Any) -> np.ndarray:
        """-1 for outliers (``score > threshold_``), 1 for inliers.

        Parameters
        ----------
        E : array-like, shape (n_samples, n_evidence)

        Returns
        -------
        ndarray of int64, shape (n_samples,)
        """
        return np.where(self.score(E) > self.threshold_, -1, 1).astype(np.int64)


def evidence_rows(kdist: np.ndarray, evidence: Mapping[str, Any], rows: np.ndarray | slice) -> np.ndarray:
    """The evidence matrix of some rows: their k-distance, then each evidence array's value.

    Parameters
    ----------
    kdist : ndarray, shape (n,)
        k-distance of every row (e.g. ``KNNOutlierDetector(score="kdist").outlier_scores_``).
    evidence : mapping of str -> array-like of shape (n,)
        Further evidence per row, e.g. zarr arrays ``{"norm": ..., "residual": ...}``.
    rows : slice or sorted ndarray of int
        Rows to take.

    Returns
    -------
    ndarray of float64, shape (n_rows, 1 + len(evidence))
    """
    def take(arr: Any) -> np.ndarray:
        if isinstance(rows, slice) or not hasattr(arr, "get_orthogonal_selection"):
            return np.asarray(arr[rows])
        return np.asarray(arr.get_orthogonal_selection(rows))

    return np.column_stack([np.asarray(kdist)[rows]] + [take(a) for a in evidence.values()]).astype(np.float64)


def screen_scores(kdist: np.ndarray, evidence: Mapping[str, Any], reference_rows: np.ndarray, *,
                  threshold: float = DEFAULT_Z_THRESHOLD, memory: Any = None) -> tuple[RobustZScreen, np.ndarray]:
    """Fit a :class:`RobustZScreen` on the reference rows' evidence and score every row.

    The columns are ``neighbours`` (the k-distance, ``"upper"``), then the ``evidence``
    arrays in their order; an evidence name starting with ``norm`` is two-sided, the others
    ``"upper"``.  Rows are scored block by block (at most ``memory / 8`` bytes of evidence
    at once), so the memory is the ``(n,)`` result plus one block.

    Parameters
    ----------
    kdist : ndarray, shape (n,)
        k-distance of every row, the reference rows' computed without themselves.
    evidence : mapping of str -> array-like of shape (n,)
        Further evidence per row (numpy or zarr arrays).
    reference_rows : sorted ndarray of int, shape (n_reference,)
        Rows whose evidence fixes the location and scale (e.g. the kNN detector's
        ``reference_indices_``).
    threshold : float
    memory : str, int or None
        Memory budget (None: 1 GiB).

    Returns
    -------
    screen : RobustZScreen
    scores : ndarray of float32, shape (n,)
    """
    names = ["neighbours", *evidence]
    sides = ["upper"] + ["both" if str(key).startswith("norm") else "upper" for key in evidence]
    screen = RobustZScreen(sides, names, threshold=threshold).fit(
        evidence_rows(kdist, evidence, np.asarray(reference_rows)))
    n = len(kdist)
    step = max(1, parse_memory(memory) // (8 * 8 * 3 * len(names)))  # float64 evidence, logs, z
    scores = np.empty(n, np.float32)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        scores[rows] = screen.score(evidence_rows(kdist, evidence, rows))
    return screen, scores
