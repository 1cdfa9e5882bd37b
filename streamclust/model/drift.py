"""Has new data drifted from what a model was trained on?  The cluster shares, the outlier rate and
the distances to the assigned centres of a new batch against the training reference a
:class:`~streamclust.model.descriptor_model.DescriptorSetModel` keeps (``training``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streamclust.errors import StoreError

if TYPE_CHECKING:
    from streamclust.model.descriptor_model import DescriptorSetModel

__all__ = ["DriftReport", "DriftAccumulator", "drift_report", "distance_quantiles"]


#: Quantiles of the training distance-to-centre distribution kept for drift checks.
_N_QUANTILES = 101


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

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able values (``streamclust assign --json``), with ``drifted``."""
        return {**asdict(self), "drifted": self.drifted}

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
        """Add one block of :meth:`~streamclust.model.DescriptorSetModel.assign` output."""
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
        Output of :meth:`~streamclust.model.DescriptorSetModel.assign` for the batch.
    """
    acc = DriftAccumulator(model)
    acc.update(clusters, is_outlier, distances)
    return acc.report()


def distance_quantiles(distances: np.ndarray) -> np.ndarray:
    """The ``_N_QUANTILES`` quantiles of a (sample of) training distances."""
    return np.quantile(np.asarray(distances, np.float64), np.linspace(0, 1, _N_QUANTILES))
