"""Balancing descriptor sets before they are mixed.

A mixture of descriptor sets is the side-by-side concatenation of their (reduced)
rows.  Concatenated as they are, the set with the most dimensions or the largest
scale would dominate every distance.  :class:`VarianceBalancer` scales each
group of columns (one group per set) so that it carries a chosen share of the
total variance: group ``g`` with total variance ``T_g`` (the sum of its column
variances) is multiplied by ``sqrt(w_g / T_g)``, ``w`` being the weights
normalised to sum to 1.  Afterwards group ``g`` holds exactly ``w_g`` of the
total variance (which is 1), whatever its number of columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from streamclust.estimators.blockwise import check_X, float_dtype, map_rows, resolve_block_rows
from streamclust.estimators.preprocessing import StreamingScaler

__all__ = ["VarianceBalancer"]


class _Scale:
    """Picklable per-block column scaling in the block's dtype."""

    def __init__(self, scale: np.ndarray) -> None:
        self.scale = scale

    def __call__(self, block: np.ndarray) -> np.ndarray:
        x = np.asarray(block, dtype=float_dtype(block.dtype))
        return x * self.scale.astype(x.dtype)


class VarianceBalancer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Scale groups of columns so that each holds a set share of the total variance.

    ``X`` is the concatenation of several blocks of columns, e.g. the reduced
    rows of several descriptor sets side by side.  :meth:`fit` measures the
    total variance ``T_g`` of every group in one parallel pass over the rows
    (streaming moments, as :class:`StreamingScaler`); :meth:`transform`
    multiplies group ``g`` by ``scale_[g] = sqrt(w_g / T_g)`` where ``w`` are
    the weights normalised to sum 1.  The output's group ``g`` then has total
    variance ``w_g`` and the whole output total variance 1, so neither the
    number of columns nor the scale of a group decides its influence on
    Euclidean distances -- only its weight does.  Columns are not centred.

    Parameters
    ----------
    widths : sequence of int, optional
        Columns of each group, in order; they must add up to ``n_features``.
        Default: one group of all columns.
    weights : sequence of float, optional
        Relative weight of each group (positive); default equal weights.
    memory : str or int, optional
        Memory budget of one pass (e.g. ``"1GB"``); sizes the row blocks.
    block_rows : int, optional
        Rows per block; overrides the size derived from ``memory``.

    Attributes
    ----------
    total_variance_ : ndarray of shape (n_groups,)
        Sum of the population variances of each group's columns, before scaling.
    share_ : ndarray of shape (n_groups,)
        Share of the total variance each group holds after scaling (the
        normalised weights).
    scale_ : ndarray of shape (n_groups,)
        Factor applied to each group.
    column_scale_ : ndarray of shape (n_features,)
        ``scale_`` repeated over each group's columns.
    n_features_in_ : int
        Number of features seen during fit.
    """

    def __init__(
        self,
        widths: Sequence[int] | None = None,
        weights: Sequence[float] | None = None,
        *,
        memory: str | int | None = None,
        block_rows: int | None = None,
    ) -> None:
        self.widths = widths
        self.weights = weights
        self.memory = memory
        self.block_rows = block_rows

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _groups(self, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """Validated ``(widths, normalised weights)``."""
        widths = np.array([n_features] if self.widths is None else list(self.widths), dtype=np.int64)
        if widths.ndim != 1 or len(widths) == 0 or (widths < 1).any() or widths.sum() != n_features:
            raise ValueError(f"widths={self.widths!r} should be positive column counts adding up to "
                             f"n_features={n_features}.")
        weights = np.ones(len(widths)) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        if weights.shape != widths.shape or not np.all(np.isfinite(weights)) or (weights <= 0).any():
            raise ValueError(f"weights={self.weights!r} should be {len(widths)} positive numbers, "
                             "one per group of columns.")
        return widths, weights / weights.sum()

    @classmethod
    def from_fitted(cls, total_variance: np.ndarray, scale: np.ndarray, *, n_features: int,
                    **params: Any) -> VarianceBalancer:
        """A fitted balancer from a saved one's state (:meth:`fit`'s ``total_variance_`` and ``scale_``).

        Parameters
        ----------
        total_variance, scale : ndarray, shape (n_groups,)
        n_features : int
            Columns it balances.
        **params
            The constructor parameters it was fitted with (``widths`` and ``weights`` among them).

        Returns
        -------
        VarianceBalancer
            Fitted: :meth:`transform` scales as the saved one did.

        Raises
        ------
        ValueError
            The widths do not add up to ``n_features``, or the arrays do not hold one value per group.
        """
        balancer = cls(**params)
        widths, balancer.share_ = balancer._groups(int(n_features))
        total_variance, scale = np.asarray(total_variance), np.asarray(scale)
        if total_variance.shape != widths.shape or scale.shape != widths.shape:
            raise ValueError(f"total_variance and scale should hold {len(widths)} values (one per group of "
                             f"columns); got shapes {total_variance.shape} and {scale.shape}.")
        balancer.total_variance_, balancer.scale_ = total_variance, scale
        balancer.column_scale_ = np.repeat(balancer.scale_, widths)
        balancer.n_features_in_ = int(widths.sum())
        return balancer

    def fit(self, X: Any, y: Any = None) -> VarianceBalancer:
        """Measure the total variance of every group of columns (one pass).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            numpy, Zarr or Dask array.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        X, _ = check_X(self, X, reset=True)
        widths, share = self._groups(X.shape[1])
        stats = StreamingScaler(memory=self.memory, block_rows=self.block_rows).fit(X)
        bounds = np.concatenate([[0], np.cumsum(widths)])
        total = np.array([stats.var_[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
        flat = np.flatnonzero(total <= np.finfo(np.float64).tiny)
        if flat.size:
            raise ValueError(f"column group {int(flat[0])} (columns {bounds[flat[0]]}..{bounds[flat[0] + 1] - 1}) "
                             f"has zero variance over n_samples={stats.n_samples_seen_}; it cannot be balanced.")
        self.total_variance_ = total
        self.share_ = share
        self.scale_ = np.sqrt(share / total)
        self.column_scale_ = np.repeat(self.scale_, widths)
        return self

    def transform(self, X: Any) -> Any:
        """Scale every group of columns by its ``scale_``.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray or dask.array.Array, shape (n_samples, n_features)
            numpy for in-memory input, a lazy Dask array (one task per block)
            otherwise; float32 input stays float32.
        """
        check_is_fitted(self, "scale_")
        X, lazy = check_X(self, X, reset=False)
        br = resolve_block_rows(X.shape[1], self.memory, self.block_rows, X)
        return map_rows(_Scale(self.column_scale_), X, lazy, br, dtype=float_dtype(X.dtype),
                        n_cols=X.shape[1])
