"""The study and the CLI on a real dask.distributed cluster give the threaded results,
survive a killed worker, and fail cleanly when the cluster goes away."""

from __future__ import annotations

import os
import signal

import distributed
import numpy as np
import pandas as pd
import pytest
from dask.utils import key_split

from streamclust.cli import main
from streamclust.core.scheduler import parse_scheduler
from streamclust.datasets.synthetic import make_demo_case
from streamclust.errors import InputError, SchedulerError
from streamclust.estimators import blockwise as _utils
from streamclust.io.ingest import convert_case
from streamclust.io.store import CaseStore, RunGroup
from streamclust.study import run_study

N_ROWS = 2000
SETS = ["efficientnet-b7", "osnet", "vdc_color", "vdc_type"]
STUDY = {"k": "3:5", "n_components": 16, "report": False, "random_state": 0}
#: small blocks, so that every parallel pass has several tasks for the two workers
BLOCK_ROWS = 512


@pytest.fixture(scope="module")
def small_blocks():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_utils, "MAX_BLOCK_ROWS", BLOCK_ROWS)
        yield


@pytest.fixture(scope="module")
def case(tmp_path_factory, small_blocks):
    """A converted demo case and the threaded study of it (the reference)."""
    root = tmp_path_factory.mktemp("dist")
    make_demo_case(root / "case", n_rows=N_ROWS, seed=0, images=False)
    convert_case(root / "case", root / "case.zarr")
    reference = run_study(root / "case.zarr", root / "threaded", **STUDY)
    return root, reference


@pytest.fixture(scope="module")
def client(small_blocks):
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def _run_arrays(store, run_id, name):
    run = CaseStore(store).run(run_id)
    return (run.array(f"{name}/labels")[:], run.array(f"{name}/outlier_score")[:],
            run.array(f"{name}/is_outlier")[:],
            np.column_stack([run.array(f"{name}/row_norm")[:], run.array(f"{name}/residual")[:]]))


def _assert_same_study(root, reference, run_id, out, sets=SETS):
    """Labels and flags identical, outlier evidence equal to float32 precision, metrics.csv equal.

    The outlier scores are robust z-scores of log-evidence: the float32 round-off of the reduced
    rows (the workers' BLAS runs one thread, the threaded run's two, and sgemm rounds differently)
    is divided by the MAD of the log k-distance (~0.05-0.2), so they agree to ~1e-5 z-units."""
    for name in sets:
        ref_labels, ref_scores, ref_flags, ref_evidence = _run_arrays(root / "case.zarr", reference.run_id, name)
        labels, scores, flags, evidence = _run_arrays(root / "case.zarr", run_id, name)
        np.testing.assert_array_equal(labels, ref_labels, err_msg=name)
        np.testing.assert_allclose(evidence, ref_evidence, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=2e-5, err_msg=name)
        np.testing.assert_array_equal(flags, ref_flags, err_msg=name)
    ref_metrics = pd.read_csv(reference.metrics_csv)
    metrics = pd.read_csv(out / "metrics.csv")
    ref_metrics = ref_metrics[ref_metrics["set"].isin(sets)].reset_index(drop=True)
    pd.testing.assert_frame_equal(metrics, ref_metrics, check_exact=False, rtol=1e-6)


@pytest.mark.distributed
def test_study_on_a_cluster_equals_the_threaded_study(case, client):
    root, reference = case
    with distributed.get_task_stream(client) as stream:
        result = run_study(root / "case.zarr", root / "cluster", client=client, **STUDY)
    _assert_same_study(root, reference, result.run_id, root / "cluster")
    # the parallel passes ran on both worker processes: PCA statistics and transform,
    # k-means and metric passes, labelling, outlier scoring
    by_pass: dict[str, set] = {}
    for task in stream.data:
        by_pass.setdefault(key_split(task["key"]), set()).add(task["worker"])
    ran = " ".join(by_pass)
    for name in ("ScatterStats", "Transform", "LloydPass", "Pass1", "Pass2", "Predict", "ScoreBlock",
                 "store-map"):
        assert name in ran, (name, sorted(by_pass))
    workers = set().union(*by_pass.values())
    assert workers == set(client.scheduler_info()["workers"]), by_pass
    assert CaseStore(root / "case.zarr").run(result.run_id).status == "complete"


@pytest.mark.distributed
def test_a_url_store_with_umap_on_a_cluster_equals_the_threaded_study(case, client):
    """The store named by a ``file://`` URL, which the worker processes open through fsspec, with the
    UMAP view: the same labels, scores and 2-D positions as the threaded run on the folder."""
    root, reference = case
    sets = ["vdc_color"]
    threaded = run_study(root / "case.zarr", root / "threaded-umap", descriptors=sets, umap=True, **STUDY)
    url = (root / "case.zarr").as_uri()
    assert type(CaseStore(url).root.store).__name__ == "FsspecStore"  # read through fsspec, not as a folder
    result = run_study(url, root / "cluster-url", client=client, descriptors=sets, umap=True, **STUDY)
    _assert_same_study(root, reference, result.run_id, root / "cluster-url", sets=sets)
    store = CaseStore(root / "case.zarr")
    np.testing.assert_allclose(store.run(result.run_id).array("vdc_color/umap")[:],
                               store.run(threaded.run_id).array("vdc_color/umap")[:], rtol=1e-5, atol=1e-5)


@pytest.mark.distributed
def test_a_killed_worker_does_not_change_the_result(case, client, monkeypatch):
    root, reference = case
    pids = client.run(os.getpid)
    killed, completions = [], []
    complete = RunGroup.complete

    def log(line):
        if "PCA" in line and not killed:  # after the first set's PCA and reduced rows
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(victim)

    def recording_complete(run, summary=None):
        completions.append((run.status, (root / "killed" / "summary.json").exists()))
        complete(run, summary)

    monkeypatch.setattr(RunGroup, "complete", recording_complete)
    result = run_study(root / "case.zarr", root / "killed", client=client, log=log, descriptors=SETS[1:3],
                       **STUDY)
    assert killed
    _assert_same_study(root, reference, result.run_id, root / "killed", sets=SETS[1:3])
    # marked complete once, after every output was written
    assert completions == [("running", True)]
    assert CaseStore(root / "case.zarr").run(result.run_id).status == "complete"
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


@pytest.mark.distributed
def test_cli_scheduler_local(case, capsys):
    root, reference = case
    out = root / "cli"
    status = main(["study", str(root / "case.zarr"), "-o", str(out), "--k", STUDY["k"], "--components", "16",
                   "--descriptors", "vdc_color", "--algorithms", "kmeans", "--no-report", "--quiet",
                   "--scheduler", "local:2"])
    assert status == 0, capsys.readouterr().err
    run_id = pd.read_json(out / "summary.json", typ="series")["run_id"]
    _assert_same_study(root, reference, run_id, out, sets=["vdc_color"])


@pytest.mark.distributed
def test_a_cluster_that_goes_away_fails_the_run_cleanly(case):
    root, reference = case
    store = CaseStore(root / "case.zarr")
    before = {r.run_id for r in store.runs()}
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:

        def log(line):
            if "PCA" in line:
                cluster.close()

        with pytest.raises(SchedulerError, match="went away"):
            run_study(root / "case.zarr", root / "gone", client=client, log=log, descriptors=SETS[1:3],
                      **STUDY)
    runs = {r.run_id: r for r in CaseStore(root / "case.zarr").runs(include_incomplete=True)}
    failed = [r for rid, r in runs.items() if rid not in before and r.status != "complete"]
    assert [r.status for r in failed] == ["failed"]
    assert not (root / "gone" / "summary.json").exists()
    # earlier runs intact
    assert {r.run_id for r in CaseStore(root / "case.zarr").runs()} == before
    np.testing.assert_array_equal(_run_arrays(root / "case.zarr", reference.run_id, "osnet")[0],
                                  CaseStore(root / "case.zarr").run(reference.run_id).array("osnet/labels")[:])


@pytest.mark.parametrize("text,kind,value", [
    (None, "default", None), ("threads", "threads", None), ("local:3", "local", 3),
    ("tcp://10.0.0.5:8786", "address", "tcp://10.0.0.5:8786"), ("host:8786", "address", "tcp://host:8786"),
])
def test_parse_scheduler(text, kind, value):
    assert parse_scheduler(text) == (kind, value)


@pytest.mark.parametrize("bad", ["local:0", "local:x", "nowhere", "tcp:/x"])
def test_parse_scheduler_refuses_bad_values(bad):
    with pytest.raises(InputError, match="scheduler="):
        parse_scheduler(bad)


@pytest.mark.parametrize("entry", ["convert_case", "run_study", "assign_new"])
def test_every_api_entry_point_takes_the_scheduler(entry, tmp_path):
    """The scheduler is chosen before any work: a bad one is refused by name, not ignored."""
    import streamclust as sc

    args = [tmp_path / "in", tmp_path / "out"] + ([tmp_path / "new.csv"] if entry == "assign_new" else [])
    with pytest.raises(InputError, match="scheduler="):
        getattr(sc, entry)(*args, scheduler="nowhere")


@pytest.mark.parametrize("command", ["convert", "study", "assign", "demo"])
def test_every_command_teaches_scheduler(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--scheduler ADDRESS" in text and "local:2" in text and "tcp://" in text, text


def test_unreachable_scheduler_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("streamclust.core.scheduler.CONNECT_TIMEOUT", 1)
    status = main(["study", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "o"), "--quiet",
                   "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert status == 2 and "scheduler='tcp://127.0.0.1:9'" in err and "dask scheduler" in err, err


class _Counted:
    """A per-block function that counts, per worker process, how often it is unpickled."""

    def __init__(self) -> None:
        self.payload = np.ones(1 << 20, np.uint8)

    def __call__(self, block, rows):
        return int(os.environ.get("STREAMCLUST_TEST_UNPICKLED", "0"))

    def __setstate__(self, state):
        os.environ["STREAMCLUST_TEST_UNPICKLED"] = str(int(os.environ.get("STREAMCLUST_TEST_UNPICKLED", "0")) + 1)
        self.__dict__.update(state)


@pytest.mark.distributed
def test_block_function_is_sent_once_per_worker(client):
    import sys

    import cloudpickle

    from streamclust.core.blocks import map_blocks_reduce

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    try:
        map_blocks_reduce(_Counted(), np.zeros((4000, 2)), 100)  # 40 tasks
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    counts = client.run(lambda: int(os.environ.get("STREAMCLUST_TEST_UNPICKLED", "0")))
    assert sorted(counts.values()) == [1, 1], counts


@pytest.mark.distributed
def test_assign_on_a_cluster_equals_the_threaded_assign(case, client):
    from streamclust.model.assign import assign_new

    root, reference = case
    model = reference.sets["osnet"].model_dir
    threaded = assign_new(model, root / "case", root / "assign_threaded.csv", memory="64MB")
    with distributed.get_task_stream(client) as stream:
        on_cluster = assign_new(model, root / "case", root / "assign_cluster.csv", memory="64MB", client=client)
    pd.testing.assert_frame_equal(pd.read_csv(on_cluster.out_csv), pd.read_csv(threaded.out_csv))
    assert on_cluster.drift.to_text() == threaded.drift.to_text()
    scored = {task["worker"] for task in stream.data if key_split(task["key"]) == "call"}
    assert scored == set(client.scheduler_info()["workers"]), stream.data
