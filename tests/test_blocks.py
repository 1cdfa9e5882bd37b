"""The block walker: budgets, order, prefetch, parallel reduction."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from streamclust.core.blocks import block_rows_for, fold_in_order, iter_blocks, map_blocks_reduce, parse_memory
from streamclust.errors import MemoryBudgetError


@pytest.mark.parametrize("text,value", [("1GB", 10**9), ("512MiB", 512 << 20), ("2g", 2 * 10**9),
                                        ("1.5GiB", 3 << 29), (10**8, 10**8), (None, 1 << 30)])
def test_parse_memory(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("bad", ["lots", "1 XB", "1MB"])
def test_parse_memory_errors_echo_the_value(bad):
    with pytest.raises(MemoryBudgetError, match=repr(bad)):
        parse_memory(bad)


def test_block_rows_respect_budget_and_chunks():
    rows = block_rows_for(2560, "256MB", chunk_rows=1024)
    assert rows % 1024 == 0 and rows * 2560 * 8 * 8 <= 256e6
    with pytest.raises(MemoryBudgetError, match="give at least memory="):
        block_rows_for(10**6, "16MiB")


@pytest.mark.parametrize("kind", ["numpy", "zarr", "dask"])
def test_iter_blocks_covers_every_row_once_in_order(tmp_path, kind):
    X = np.arange(1003 * 3, dtype=np.float32).reshape(1003, 3)
    if kind == "zarr":
        arr = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, dtype=X.dtype, chunks=(100, 3))
        arr[:] = X
        X_in = arr
    elif kind == "dask":
        X_in = da.from_array(X, chunks=(77, 3))
    else:
        X_in = X
    parts = list(iter_blocks(X_in, 200))
    assert [r.start for r, _ in parts] == list(range(0, 1003, 200))
    np.testing.assert_array_equal(np.concatenate([b for _, b in parts]), X)
    order = np.array([3, 0, 5, 1, 4, 2])
    shuffled = list(iter_blocks(X_in, 200, order=order))
    assert [r.start // 200 for r, _ in shuffled] == list(order)


def test_map_blocks_reduce_sums_and_keeps_order():
    X = np.random.default_rng(0).normal(size=(5000, 4))
    total = map_blocks_reduce(lambda b, rows: b.sum(axis=0), X, 700, combine=np.add)
    np.testing.assert_allclose(total, X.sum(axis=0))
    starts = map_blocks_reduce(lambda b, rows: rows.start, X, 700)
    assert starts == list(range(0, 5000, 700))


@pytest.mark.parametrize("window,threads", [(1, 1), (2, 2), (3, 2), (50, 2)])
def test_fold_in_order_folds_every_block_in_order(window, threads):
    """Whatever the window and threads, the fold is combine(...combine(r0, r1)..., r_last), over
    every block once: a non-commutative combine (list concatenation) shows the order."""
    X = np.arange(5000 * 3, dtype=np.float64).reshape(5000, 3)
    blocks = fold_in_order(lambda b, rows: [(rows.start, rows.stop, float(b[:, 0].sum()))], X, 700,
                           lambda a, b: a + b, window=window, threads=threads)
    assert [r[:2] for r in blocks] == [(s, min(s + 700, 5000)) for s in range(0, 5000, 700)]
    assert sum(r[2] for r in blocks) == X[:, 0].sum()


def test_fold_in_order_holds_at_most_window_results():
    """At most ``window`` blocks are computing or waiting to be folded at any time, even when
    folding is slower than computing (without the window, all 20 blocks would pile up)."""
    import threading
    import time

    lock = threading.Lock()
    live = [0, 0]  # now, most

    def func(block, rows):
        with lock:
            live[0] += 1
            live[1] = max(live[1], live[0])
        time.sleep(0.01)
        return [rows.start]

    def combine(a, b):
        time.sleep(0.02)
        with lock:
            live[0] -= 1
        return a + b

    X = da.from_array(np.zeros((2000, 2)), chunks=(100, 2))
    out = fold_in_order(func, X, 100, combine, window=3, threads=2)
    # block 0 becomes the fold without a combine call, so the count can read one more than held
    assert out == list(range(0, 2000, 100)) and live[1] <= 3 + 1


def test_fold_in_order_raises_the_first_failure():
    def func(block, rows):
        if rows.start == 1400:
            raise ValueError("block at row 1400 is bad")
        return rows.start

    with pytest.raises(ValueError, match="row 1400"):
        fold_in_order(func, np.zeros((5000, 2)), 700, lambda a, b: a + b, window=2, threads=2)
