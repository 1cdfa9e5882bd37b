"""A store given as an fsspec URL (what a Dask cluster's workers read) converts, studies and
assigns exactly like the same store in a local folder; bad URLs fail with one clear line."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from streamclust.cli import _store_arg, main
from streamclust.core.urls import is_url
from streamclust.errors import InputError, StoreError
from streamclust.io.ingest import convert_case, dropped_rows_report_path
from streamclust.io.store import CaseStore
from streamclust.model.assign import assign_new
from streamclust.study import run_study

STUDY = {"k": "3:4", "n_components": 8, "algorithms": ["kmeans"], "report": False, "random_state": 0,
         "descriptors": ["osnet", "vdc_color"]}


@pytest.fixture
def memory_url():
    """A fresh ``memory://`` folder (fsspec's in-process filesystem), removed afterwards."""
    root = f"memory://streamclust-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture(scope="module")
def folder_study(demo_case):
    """A 1,200-row demo case, its store in a folder and the study of that store (the reference)."""
    root = demo_case(1200, seed=1)
    return root, run_study(root / "case.zarr", root / "study", progress=False, **STUDY)


def _arrays(store, run_id, name):
    run = CaseStore(store).run(run_id)
    return [run.array(f"{name}/{what}")[:] for what in ("labels", "outlier_score", "is_outlier")]


def test_a_url_store_converts_studies_and_assigns_like_a_folder(folder_study, memory_url, tmp_path):
    root, reference = folder_study
    url = f"{memory_url}/case.zarr"
    store = convert_case(root / "case", url, progress=False)
    assert type(store.root.store).__name__ == "FsspecStore"
    folder = CaseStore(root / "case.zarr")
    assert store.path == url and store.descriptor_names() == folder.descriptor_names()
    for name in folder.descriptor_names():
        np.testing.assert_array_equal(store.descriptor(name)[:], folder.descriptor(name)[:])
    np.testing.assert_array_equal(store.ids[:], folder.ids[:])

    result = run_study(url, tmp_path / "study", progress=False, **STUDY)
    for name in STUDY["descriptors"]:
        labels, scores, flags = _arrays(url, result.run_id, name)
        ref_labels, ref_scores, ref_flags = _arrays(root / "case.zarr", reference.run_id, name)
        np.testing.assert_array_equal(labels, ref_labels, err_msg=name)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(flags, ref_flags, err_msg=name)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "study" / "metrics.csv"),
                                  pd.read_csv(reference.metrics_csv), check_exact=False, rtol=1e-6)

    assigned = assign_new(tmp_path / "study" / "models" / "osnet", url, tmp_path / "assigned.csv",
                          progress=False)
    table = pd.read_csv(tmp_path / "assigned.csv")
    np.testing.assert_array_equal(table["cluster"], _arrays(url, result.run_id, "osnet")[0])
    assert assigned.n_rows == 1200


def test_dropped_rows_report_of_a_url_store_lies_beside_it(memory_url, tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 5)).astype(np.float32)
    a[[3, 30], 1] = np.nan
    (tmp_path / "case" / "descriptors").mkdir(parents=True)
    np.save(tmp_path / "case" / "descriptors" / "a.npy", a)
    pd.DataFrame({"paths": [f"img/{i}.jpg" for i in range(40)]}).to_csv(tmp_path / "case" / "images_paths.csv",
                                                                      index=False)
    url = f"{memory_url}/sub/case.zarr"
    store = convert_case(tmp_path / "case", url, nan_policy="drop", progress=False)
    report = dropped_rows_report_path(url)
    assert report == f"{memory_url}/sub/case.dropped_rows.csv"
    assert store.n_rows == 38 and store.ids.attrs["dropped_rows_report"] == report
    with fsspec.open(report, "r") as f:
        rows = list(csv.reader(io.StringIO(f.read())))
    assert rows == [["row", "path", "set", "reason"], ["3", "img/3.jpg", "a", "NaN"], ["30", "img/30.jpg", "a", "NaN"]]

    a[[3, 30], 1] = 0.0  # converted again without bad rows: the stale report goes
    np.save(tmp_path / "case" / "descriptors" / "a.npy", a)
    fsspec.filesystem("memory").rm(url, recursive=True)
    assert convert_case(tmp_path / "case", url, nan_policy="drop", progress=False).n_rows == 40
    assert not fsspec.filesystem("memory").exists(report)


def test_a_file_url_store_is_written_in_the_folder_it_names(folder_study, tmp_path):
    root, _ = folder_study
    url = (tmp_path / "new" / "deeper" / "case.zarr").as_uri()
    assert url.startswith("file:///")
    convert_case(root / "case", url, progress=False)
    assert (tmp_path / "new" / "deeper" / "case.zarr" / "zarr.json").exists()
    assert CaseStore(tmp_path / "new" / "deeper" / "case.zarr").descriptor_names() == \
        CaseStore(url).descriptor_names()


@pytest.mark.parametrize("url,message", [
    ("nosuchprotocol://bucket/case.zarr", r"nosuchprotocol://bucket/case\.zarr: cannot open the URL"),
    ("file:///nowhere/at/all/case.zarr", r"file:///nowhere/at/all/case\.zarr: no streamclust store here"),
])
def test_a_bad_url_is_one_line_naming_it(url, message):
    with pytest.raises(StoreError, match=message) as info:
        CaseStore(url)
    assert "\n" not in str(info.value)


def test_cli_keeps_urls_as_text_and_paths_as_paths(tmp_path, capsys):
    assert _store_arg("s3://bucket/case.zarr") == "s3://bucket/case.zarr"
    assert _store_arg("file:///data/case.zarr") == "file:///data/case.zarr"
    assert _store_arg("data/case.zarr") == Path("data/case.zarr")
    assert _store_arg("C://data/case.zarr") == Path("C://data/case.zarr")
    assert main(["study", "nosuchprotocol://b/case.zarr", "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuchprotocol://b/case.zarr: cannot open the URL" in err[0]


@pytest.mark.parametrize("text,url", [
    ("s3://bucket/case.zarr", True), ("file:///data/case.zarr", True), ("memory://x", True),
    ("simplecache::s3://bucket/case.zarr", True), ("gcs://b/c.zarr", True),
    ("/data/case.zarr", False), ("out/run://x/case.zarr", False), ("C://data/case.zarr", False),
    ("case.zarr", False), (Path("/tmp/x.zarr"), False),
])
def test_is_url_tells_urls_from_local_paths(text, url):
    assert is_url(text) is url


def test_cli_converts_into_a_url_store(folder_study, memory_url, capsys):
    root, _ = folder_study
    url = f"{memory_url}/cli.zarr"
    assert main(["convert", str(root / "case"), "-o", url, "--quiet"]) == 0, capsys.readouterr().err
    assert CaseStore(url).descriptor_names() == CaseStore(root / "case.zarr").descriptor_names()


def test_a_store_at_the_root_of_a_bucket_has_no_place_for_a_report():
    with pytest.raises(InputError, match=r"s3://bucket: a store at the root of a bucket .* \(s3://BUCKET/case\.zarr\)"):
        dropped_rows_report_path("s3://bucket")
    assert dropped_rows_report_path("s3://bucket/case.zarr/") == "s3://bucket/case.dropped_rows.csv"


def test_a_memory_store_is_refused_on_a_cluster(monkeypatch, memory_url):
    from streamclust.io import store as store_module

    monkeypatch.setattr(store_module, "active_client", lambda: object())
    with pytest.raises(StoreError, match="memory:// store lives in this process only"):
        CaseStore(f"{memory_url}/case.zarr", mode="a")
