"""ExactIndex (the brute-force kNN of small references) and the set comparison's kNN: exact against
float64 brute force and scikit-learn, ties to the lower reference row, and the same result whatever
the block size, tiling and number of threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from streamclust.analysis.comparison import _knn_indices
from streamclust.estimators import neighbors
from streamclust.estimators.neighbors import ExactIndex


def _with_duplicates(m: int, d: int, seed: int) -> np.ndarray:
    """(m, d) float32 normal rows whose rows [m/2, m/2 + m/5) repeat rows [0, m/5)."""
    R = np.random.default_rng(seed).normal(size=(m, d)).astype(np.float32)
    R[m // 2:m // 2 + m // 5] = R[:m // 5]
    return R


@pytest.mark.parametrize("m, d, k", [
    (7, 3, 7),          # k + 8 >= m: every row is a candidate
    (2500, 16, 10),     # three 1024-row tiles, the last partial
    (3000, 8, 1200),    # k + 8 > one tile: the heap fills across tiles
    (1100, 5, 1),
])
def test_exact_index_is_brute_force(m, d, k):
    R = _with_duplicates(m, d, seed=m)
    Q = np.r_[R[:10], np.random.default_rng(1).normal(size=(300, d)).astype(np.float32)]
    ind, dist = ExactIndex(R).query(Q, k=k)
    assert ind.shape == dist.shape == (len(Q), k) and ind.dtype == np.int32
    full = np.linalg.norm(Q[:, None, :].astype(np.float64) - R[None].astype(np.float64), axis=2)
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :k], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, ind.astype(np.int64), axis=1), dist, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)
    tied = np.diff(dist, axis=1) == 0
    assert np.all(np.diff(ind, axis=1)[tied] > 0)  # equal distances: the lower reference row first
    # a query equal to a duplicated reference row: both copies at distance exactly 0, lower row first
    if m // 5 >= 10 and k >= 2:
        np.testing.assert_array_equal(ind[:10, :2], np.c_[np.arange(10), m // 2 + np.arange(10)])
        assert np.all(dist[:10, :2] == 0)


def test_exact_index_does_not_depend_on_blocks_tiles_or_threads(monkeypatch):
    R = _with_duplicates(3000, 12, seed=5)
    R[2000:2040] = np.round(R[2000:2040])  # more near-ties
    Q = np.r_[R[::7], np.round(R[:50])]
    index = ExactIndex(R)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = index.query(Q, k=25)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = index.query(Q, k=25)
        monkeypatch.setattr(neighbors, "_EXACT_QUERY_ROWS", 37)
        monkeypatch.setattr(neighbors, "_EXACT_TILE_ROWS", 300)
        small = index.query(Q, k=25)
    finally:
        numba.set_num_threads(before)
    for other in (two, small):
        np.testing.assert_array_equal(one[0], other[0])
        np.testing.assert_array_equal(one[1], other[1])


def test_knn_indices_exact_and_self_excluded():
    R = _with_duplicates(4000, 16, seed=2)
    q_pos = np.union1d(np.arange(0, 4000, 9), np.arange(5))
    k = 10
    got = _knn_indices(R, q_pos, k)
    assert got.shape == (len(q_pos), k) and got.dtype == np.int64
    assert not np.any(got == q_pos[:, None])
    nn = NearestNeighbors(n_neighbors=k + 1).fit(R.astype(np.float64))
    true_dist, true_ind = nn.kneighbors(R[q_pos].astype(np.float64))
    got_dist = np.linalg.norm(R[got].astype(np.float64) - R[q_pos][:, None, :], axis=2)
    # k nearest without itself: sklearn's k + 1 minus one row at distance 0
    np.testing.assert_allclose(got_dist, true_dist[:, 1:], rtol=1e-5, atol=1e-5)
    # the queries 0..4 have a copy at m/2 + i: it is their nearest, at distance 0
    first = np.searchsorted(q_pos, np.arange(5))
    np.testing.assert_array_equal(got[first, 0], 2000 + np.arange(5))
