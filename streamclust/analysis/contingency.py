"""Count tables of two labellings and the agreement scores computed from them.

:class:`Counts` accumulates a dense ``(n_row_keys, n_col_keys)`` count table
block by block; :func:`contingency_scores` turns a finished table into purity,
NMI, AMI and ARI equal to scikit-learn's label-based functions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics.cluster import mutual_info_score

from streamclust.errors import InputError

__all__ = ["Counts", "contingency_scores"]


class Counts:
    """A dense count table whose row and column keys (ints) grow as blocks arrive."""

    def __init__(self) -> None:
        self.rows = np.empty(0, np.int64)
        self.cols = np.empty(0, np.int64)
        self.table = np.zeros((0, 0), np.int64)

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Count the pairs ``(a[i], b[i])`` of two ``(m,)`` integer blocks."""
        if a.size == 0:
            return
        ua, ia = np.unique(a, return_inverse=True)
        ub, ib = np.unique(b, return_inverse=True)
        block = np.bincount(ia.ravel() * len(ub) + ib.ravel(), minlength=len(ua) * len(ub))
        block = block.reshape(len(ua), len(ub))
        new_rows, new_cols = np.union1d(self.rows, ua), np.union1d(self.cols, ub)
        if len(new_rows) != len(self.rows) or len(new_cols) != len(self.cols):
            grown = np.zeros((len(new_rows), len(new_cols)), np.int64)
            grown[np.ix_(np.searchsorted(new_rows, self.rows),
                         np.searchsorted(new_cols, self.cols))] = self.table
            self.rows, self.cols, self.table = new_rows, new_cols, grown
        self.table[np.ix_(np.searchsorted(self.rows, ua), np.searchsorted(self.cols, ub))] += block


def _entropy_from_counts(counts: np.ndarray) -> float:
    """Entropy (nats) of a labelling from its class counts, as sklearn's ``_entropy``."""
    pi = np.asarray(counts, dtype=np.float64)
    pi = pi[pi > 0]
    if pi.size == 0:
        return 1.0
    if pi.size == 1:
        return 0.0
    total = pi.sum()
    return float(-np.sum((pi / total) * (np.log(pi) - math.log(total))))


def _emi_numpy(contingency: np.ndarray, n_samples: int) -> float:
    """Expected mutual information under the permutation model (numpy version of
    sklearn's ``expected_mutual_information``; used when that private function is
    unavailable)."""
    from scipy.special import gammaln

    a = np.asarray(contingency.sum(axis=1), dtype=np.int64).ravel()
    b = np.asarray(contingency.sum(axis=0), dtype=np.int64).ravel()
    a, b = a[a > 0], b[b > 0]
    N = int(n_samples)
    if a.size == 1 and b.size == 1:
        return 1.0
    top = int(max(a.max(), b.max()))
    nijs = np.arange(0, top + 1, dtype=np.float64)
    nijs[0] = 1.0
    term1 = nijs / N
    log_a, log_b = np.log(a), np.log(b)
    log_nnij = math.log(N) + np.log(nijs)
    gln_a, gln_b = gammaln(a + 1.0), gammaln(b + 1.0)
    gln_na, gln_nb = gammaln(N - a + 1.0), gammaln(N - b + 1.0)
    gln_nnij = gammaln(nijs + 1.0) + math.lgamma(N + 1.0)
    emi = 0.0
    for i in range(a.size):
        for j in range(b.size):
            start = max(1, int(a[i]) - N + int(b[j]))
            end = min(int(a[i]), int(b[j])) + 1
            if end <= start:
                continue
            nij = np.arange(start, end)
            term2 = log_nnij[nij] - log_a[i] - log_b[j]
            gln = (gln_a[i] + gln_b[j] + gln_na[i] + gln_nb[j] - gln_nnij[nij]
                   - gammaln(a[i] - nij + 1.0) - gammaln(b[j] - nij + 1.0)
                   - gammaln(N - a[i] - b[j] + nij + 1.0))
            emi += float(np.sum(term1[nij] * term2 * np.exp(gln)))
    return emi


def _emi(contingency: np.ndarray, n_samples: int) -> float:
    try:
        from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information
    except ImportError:  # private in sklearn: keep a numpy version for other releases
        return _emi_numpy(contingency, n_samples)
    return float(expected_mutual_information(contingency, int(n_samples)))


def contingency_scores(contingency: np.ndarray, *, emi: Any = None) -> dict[str, float]:
    """Agreement scores of two labellings from their contingency table.

    The results equal scikit-learn's label-based ``normalized_mutual_info_score``,
    ``adjusted_mutual_info_score`` (arithmetic normalisation, sklearn's default)
    and ``adjusted_rand_score`` for the labels the table counts (to rounding, well
    below 1e-9), so they can be computed from tables accumulated block by block.

    Parameters
    ----------
    contingency : ndarray of int, shape (n_clusters, n_values)
        ``contingency[i, j]`` = rows in cluster ``i`` with value ``j``.  Rows are
        the clusters (``purity`` is taken over them); the other scores are
        symmetric.  Empty rows and columns are ignored.
    emi : callable, optional
        ``emi(contingency, n) -> float`` expected mutual information; defaults to
        scikit-learn's implementation (a numpy version when that is missing).

    Returns
    -------
    dict
        ``n`` (rows counted), ``purity`` (sum over clusters of the largest count,
        divided by ``n``), ``nmi``, ``ami``, ``ari`` (``nan`` when ``n == 0``).
    """
    C = np.asarray(contingency, dtype=np.int64)
    if C.ndim != 2:
        raise InputError(f"contingency must be 2-D, got shape {C.shape}.")
    C = C[C.sum(axis=1) > 0][:, C.sum(axis=0) > 0]
    n = int(C.sum())
    if n == 0:
        return {"n": 0, "purity": float("nan"), "nmi": float("nan"), "ami": float("nan"),
                "ari": float("nan")}
    r, c = C.shape
    purity = float(C.max(axis=1).sum() / n)
    h_rows, h_cols = _entropy_from_counts(C.sum(axis=1)), _entropy_from_counts(C.sum(axis=0))
    mi = float(mutual_info_score(None, None, contingency=C)) if (r > 1 and c > 1) else 0.0
    normalizer = (h_rows + h_cols) / 2.0
    # NMI, as normalized_mutual_info_score
    if r == c == 1:
        nmi = 1.0
    elif mi == 0:
        nmi = 0.0
    else:
        nmi = mi / normalizer
    # AMI, as adjusted_mutual_info_score
    if r == c == 1:
        ami = 1.0
    elif r == 1 or c == 1:
        ami = 0.0
    else:
        expected = (emi or _emi)(C, n)
        eps = np.finfo("float64").eps
        den = normalizer - expected
        den = min(den, -eps) if den < 0 else max(den, eps)
        num = mi - expected
        num = min(num, -eps) if num < 0 else max(num, eps)
        ami = num / den
    # ARI, as adjusted_rand_score via the pair confusion matrix (Python ints: no overflow)
    n_c = C.sum(axis=1)
    n_k = C.sum(axis=0)
    sum_squares = int((C.astype(object) ** 2).sum())
    tp = sum_squares - n
    fp = int((C.astype(object) @ n_k.astype(object)).sum()) - sum_squares
    fn = int((C.T.astype(object) @ n_c.astype(object)).sum()) - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        ari = 1.0
    else:
        ari = 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    return {"n": n, "purity": purity, "nmi": float(nmi), "ami": float(ami), "ari": float(ari)}
