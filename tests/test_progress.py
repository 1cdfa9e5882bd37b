"""Progress bars: the package-wide switch, the step labels, threads and a distributed client;
bars go to stderr only when asked for, and change no result."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback

from streamclust.cli import main
from streamclust.core.blocks import iter_blocks, map_blocks_reduce
from streamclust.core.progress import progress_desc, progress_enabled, progress_step, show_progress, step_times
from streamclust.core.scheduler import active_client
from streamclust.study import run_study

N_ROWS = 1500
STUDY = {"descriptors": ["vdc_color"], "k": "3:4", "n_components": 8, "report": False}
#: The steps of a k-means-only study of one set, as its bars name them.
STEPS = ["PCA", "k-means 3..4", "metrics", "labels", "outlier scores", "top outliers", "profiles"]


def _row_sums(block: np.ndarray, rows: slice) -> float:
    return float(block.sum())


def _add(a: float, b: float) -> float:
    return a + b


@pytest.fixture(scope="module")
def studies(demo_case, tmp_path_factory):
    """The same study with and without bars: ``{progress: (out_dir, stdout, stderr)}``."""
    store = demo_case(N_ROWS) / "case.zarr"
    root = tmp_path_factory.mktemp("progress")
    runs = {}
    for progress in (False, True):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_study(store, root / str(progress), progress=progress, **STUDY)
        runs[progress] = (root / str(progress), out.getvalue(), err.getvalue())
    return runs


def test_study_bars_name_every_step_on_stderr(studies):
    _, out, err = studies[True]
    for step in STEPS:
        assert f"vdc_color: {step}" in err, step
    assert "task" in err and "rows" in err  # Dask computations and sequential passes both
    assert out == ""


def test_study_without_progress_writes_nothing(studies):
    _, out, err = studies[False]
    assert out == "" and err == ""


def test_bars_change_no_result(studies):
    for name in ("results.csv", "metrics.csv", "outliers.csv"):
        assert (studies[True][0] / name).read_bytes() == (studies[False][0] / name).read_bytes(), name


def test_switch_is_off_after_the_study(studies):
    assert not progress_enabled() and progress_desc() is None
    assert not any(cb for cb in Callback.active if cb[1] is not None and "progress" in cb[1].__module__)


@pytest.mark.parametrize("quiet", [True, False])
def test_cli_bars_go_to_stderr_unless_quiet(demo_case, tmp_path, capfd, quiet):
    store = demo_case(N_ROWS) / "case.zarr"
    args = ["study", str(store), "-o", str(tmp_path / "o"), "--descriptors", "vdc_color", "--k", "3:4",
            "--components", "8", "--no-report", "--algorithms", "kmeans"]
    assert main(args + (["--quiet"] if quiet else [])) == 0
    out, err = capfd.readouterr()
    assert "vdc_color: k-means" not in out and "task/s" not in out and "\r" not in out
    if quiet:
        assert "vdc_color: " not in err and "task" not in err and "\r" not in err
    else:
        for step in STEPS:
            assert f"vdc_color: {step}" in err, step


def test_iter_blocks_follows_the_switch(capsys):
    X = da.from_array(np.ones((1000, 3)), chunks=(100, 3))
    for _ in iter_blocks(X, 100):
        pass
    assert capsys.readouterr().err == ""
    with show_progress(True), progress_step("set: pass"):
        assert progress_enabled() and progress_desc() == "set: pass"
        for _ in iter_blocks(X, 100):
            pass
        err = capsys.readouterr().err
        for _ in iter_blocks(X, 100, progress=False):  # an explicit choice wins
            pass
        with show_progress(False):
            for _ in iter_blocks(X, 100):
                pass
        assert capsys.readouterr().err == ""
    assert "set: pass" in err and "rows" in err
    assert "task" not in err  # the dask reads of the read-ahead thread draw no bar of their own
    assert not progress_enabled() and progress_desc() is None


def test_parallel_passes_show_a_labelled_bar_of_their_tasks(capsys):
    X = np.arange(3000.0).reshape(1000, 3)
    expected = map_blocks_reduce(_row_sums, X, 100, combine=_add)
    assert capsys.readouterr().err == ""
    with show_progress(True):
        with progress_step("set: sums"):
            assert map_blocks_reduce(_row_sums, X, 100, combine=_add) == expected
            assert float(da.from_array(X, chunks=(100, 3)).sum().compute()) == X.sum()
    err = capsys.readouterr().err
    assert err.count("set: sums") >= 2 and "task" in err
    with progress_step("set: sums"):  # a label alone shows nothing
        map_blocks_reduce(_row_sums, X, 100, combine=_add)
    assert capsys.readouterr().err == ""


def test_switch_belongs_to_the_thread_that_turned_it_on(capsys):
    X = da.from_array(np.ones((1000, 3)), chunks=(100, 3))
    done = threading.Event()

    def other() -> None:
        X.sum().compute()
        for _ in iter_blocks(X, 100):
            pass
        done.set()

    with show_progress(True), progress_step("mine"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert done.is_set()
    assert capsys.readouterr().err == ""


def _slow(i: int) -> int:
    time.sleep(0.4)
    return i


def test_distributed_client_bars(capsys):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, dask.config.set(scheduler=client):
        tasks = [dask.delayed(_slow)(i) for i in range(4)]
        assert dask.compute(*tasks) == (0, 1, 2, 3)
        assert capsys.readouterr().err == ""
        with show_progress(True), progress_step("set: slow"):
            assert active_client() is client  # the wrapped scheduler still names its client
            assert dask.compute(*[dask.delayed(_slow)(i) for i in range(4, 8)]) == (4, 5, 6, 7)
            assert np.array_equal(da.arange(10, chunks=5).compute(), np.arange(10))
        err = capsys.readouterr().err
        assert "set: slow" in err and "task" in err
        assert dask.config.get("scheduler") is client and active_client() is client
        with pytest.raises(ZeroDivisionError), show_progress(True):  # errors come through unchanged
            dask.delayed(lambda: 1 / 0)().compute()


def test_study_on_a_client_with_bars_gives_the_threaded_results(demo_case, studies, tmp_path):
    distributed = pytest.importorskip("distributed")
    store = demo_case(N_ROWS) / "case.zarr"
    err = io.StringIO()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client, contextlib.redirect_stderr(err):
        run_study(store, tmp_path / "o", progress=True, client=client, **STUDY)
        assert dask.config.get("scheduler", None) is None  # nothing left installed
    assert (tmp_path / "o" / "results.csv").read_bytes() == (studies[False][0] / "results.csv").read_bytes()
    assert "vdc_color: profiles" in err.getvalue()  # a sequential pass: its bar does not depend on timing


def test_step_times_sum_each_steps_seconds_by_name():
    with step_times() as times:
        for _ in range(2):
            with progress_step("a: sleep"):
                time.sleep(0.05)
        with progress_step("b: spin"):
            t0 = time.process_time()
            while time.process_time() - t0 < 0.05:
                pass
    with progress_step("after"):  # outside the record: not counted
        pass
    assert set(times) == {"a: sleep", "b: spin"}
    assert times["a: sleep"]["calls"] == 2 and times["b: spin"]["calls"] == 1
    assert times["a: sleep"]["wall_s"] >= 0.1 and times["a: sleep"]["cpu_s"] < 0.05
    assert times["b: spin"]["cpu_s"] >= 0.05


def test_study_reports_the_seconds_of_every_step(studies):
    out, _, _ = studies[False]
    timings = json.loads((out / "summary.json").read_text())["timings"]
    assert set(f"vdc_color: {step}" for step in STEPS + ["model"]) <= set(timings)
    assert all(t["calls"] >= 1 and t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in timings.values())
    assert timings["vdc_color: k-means 3..4"]["wall_s"] > 0
