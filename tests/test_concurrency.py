"""Studying small sets two at a time: the rule, the helper that runs them, and the outcome."""

from __future__ import annotations

import re
import threading
import time

import pytest
from threadpoolctl import threadpool_info

from streamclust.core.progress import progress_desc, progress_step, step_times
from streamclust.core.scheduler import run_concurrently
from streamclust.study.rules import MIN_SHARED_BUDGET, SMALL_STUDY_ROWS, sets_at_once


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_run_concurrently_keeps_order_context_and_restores_blas():
    before = _blas_threads()
    seen: list[tuple[str, set[int], str | None]] = []
    lock = threading.Lock()

    def work(item: str) -> str:
        time.sleep(0.05 if item == "a" else 0.0)  # "a" finishes last
        with lock:
            seen.append((item, _blas_threads(), progress_desc()))
        with progress_step(f"{item}: step"):
            pass
        return item.upper()

    with step_times() as times, progress_step("outer"):
        out = run_concurrently(work, ["a", "b", "c"], 2)
    assert out == ["A", "B", "C"]
    assert {s[0] for s in seen} == {"a", "b", "c"} and all(s[1] == {1} for s in seen)
    assert all(s[2] == "outer" for s in seen)  # the caller's context followed the work
    assert {"a: step", "b: step", "c: step"} <= set(times)
    assert _blas_threads() == before


def test_run_concurrently_one_thread_runs_in_order_here():
    main = threading.get_ident()
    calls: list[tuple[int, int]] = []
    out = run_concurrently(lambda i: calls.append((i, threading.get_ident())) or i * 2, [1, 2, 3], 1)
    assert out == [2, 4, 6] and calls == [(1, main), (2, main), (3, main)]


def test_run_concurrently_raises_the_failure_and_cancels_the_rest():
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 0:
            time.sleep(0.05)
            raise RuntimeError("set 0 failed")
        time.sleep(0.05)
        return i

    with pytest.raises(RuntimeError, match="set 0 failed"):
        run_concurrently(work, list(range(8)), 2)
    assert len(started) < 8  # those not started when it failed never ran


@pytest.mark.parametrize("n_rows,n_sets,budget,cores,expected", [
    (20_000, 4, 424 << 20, 2, 2),
    (SMALL_STUDY_ROWS, 2, 424 << 20, 2, 2),
    (SMALL_STUDY_ROWS + 1, 4, 424 << 20, 2, 1),   # large sets: their passes fill the cores already
    (20_000, 1, 424 << 20, 2, 1),                  # nothing to pair
    (20_000, 4, 424 << 20, 1, 1),                  # one core (or a distributed client)
    (20_000, 4, 2 * MIN_SHARED_BUDGET - 1, 2, 1),  # half the budget would be too little
])
def test_sets_at_once(n_rows, n_sets, budget, cores, expected):
    assert sets_at_once(n_rows, n_sets, budget, cores) == expected


def test_sets_studied_two_at_a_time_equal_one_at_a_time(demo_case, tmp_path, monkeypatch):
    """The same study with the sets taken two at a time and one at a time writes the same labels,
    outlier scores, flags and metrics, and every set's lines reach the log callback either way."""
    import shutil

    import pandas as pd

    from streamclust.study import driver, run_study

    store = shutil.copytree(demo_case(3000) / "case.zarr", tmp_path / "case.zarr")  # keep the shared one runless
    results, logs = [], []
    for cores in (2, 1):
        monkeypatch.setattr(driver, "local_cores", lambda cores=cores: cores)
        lines: list[str] = []
        out = run_study(store, tmp_path / f"cores{cores}", descriptors=["vdc_color", "osnet", "vdc_type"],
                        k="3:6", n_components=16, random_state=0, report=False, log=lines.append,
                        algorithms="kmeans,ward")
        assert out.sets_at_once == cores
        results.append((pd.read_csv(tmp_path / f"cores{cores}" / "results.csv"),
                        pd.read_csv(tmp_path / f"cores{cores}" / "metrics.csv")))
        logs.append(sorted(re.sub(r"[\d.]+ s\b", "_ s", line) for line in lines))  # durations differ
    pd.testing.assert_frame_equal(results[0][0], results[1][0])
    pd.testing.assert_frame_equal(results[0][1], results[1][1])
    assert logs[0] == logs[1]
    assert {line.split(":")[0] for line in logs[0] if " chosen from 3..6" in line} == {"vdc_color", "osnet", "vdc_type"}
