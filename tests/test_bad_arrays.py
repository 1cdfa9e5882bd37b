"""Bad arrays and bad paths at conversion: the NaN/Inf policy, degenerate values, shapes and counts.

Every test here fails if the protection it names is removed (see tests/README.md).
"""

from __future__ import annotations

import csv
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from streamclust.cli import main
from streamclust.errors import InputError, StoreError
from streamclust.estimators import StreamingKMeans, StreamingPCA, StreamingScaler
from streamclust.io import ingest
from streamclust.io.ingest import (
    _DroppedRows,
    convert_case,
    dropped_rows_report_path,
    open_source,
    read_paths_csv,
)
from streamclust.io.store import CaseStore


def _case(root, arrays: dict[str, np.ndarray], n_paths: int | None = None) -> list[str]:
    """A case folder with ``descriptors/<name>.npy`` and ``images_paths.csv`` (Windows separators)."""
    (root / "descriptors").mkdir(parents=True)
    n = next(iter(arrays.values())).shape[0] if n_paths is None else n_paths
    paths = [f"veriwild\\{i // 100}\\{i:06d}.jpg" for i in range(n)]
    pd.DataFrame({"paths": paths}).to_csv(root / "images_paths.csv", index=False)
    for name, arr in arrays.items():
        np.save(root / "descriptors" / f"{name}.npy", arr)
    return [p.replace("\\", "/") for p in paths]


def _two_sets(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, 6)).astype(np.float32)
    b = rng.normal(size=(n, 3))  # float64 source
    a[5, 2] = np.nan
    b[7, 0] = np.inf
    a[9, 1], b[9, 2] = np.nan, -np.inf
    return a, b


# -- nan_policy="fail" -----------------------------------------------------------------


def test_fail_names_the_file_and_first_bad_rows(tmp_path):
    a = np.ones((5000, 4), np.float32)
    bad = [17, 18, 300, 301, 302, 4000, 4001]
    a[bad, 1] = np.nan
    _case(tmp_path / "case", {"a": a})
    with pytest.raises(InputError, match=r"a\.npy: rows 17, 18, 300, 301, 302 \(and 2 more in this block\) "
                                         r"hold NaN or Inf.*nan_policy='drop'") as info:
        convert_case(tmp_path / "case", tmp_path / "s.zarr")
    assert "\n" not in str(info.value)
    assert CaseStore(tmp_path / "s.zarr").descriptor_names() == []


def test_float64_beyond_float32_range_is_refused_not_stored_as_inf(tmp_path):
    a = np.ones((50, 3))
    a[31, 2] = 1e39  # finite in float64, Inf once stored as float32
    _case(tmp_path / "case", {"a": a})
    with pytest.raises(InputError, match=r"a\.npy: row 31 holds NaN or Inf"):
        convert_case(tmp_path / "case", tmp_path / "s.zarr")


def test_unknown_nan_policy_is_named(tmp_path):
    _case(tmp_path / "case", {"a": np.ones((5, 2), np.float32)})
    with pytest.raises(InputError, match=r"nan_policy='skip' should be one of fail, drop, impute"):
        convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="skip")


# -- nan_policy="drop" -----------------------------------------------------------------


def test_drop_removes_bad_rows_from_every_set_and_ids_and_reports_them(tmp_path):
    a, b = _two_sets()
    paths = _case(tmp_path / "case", {"a": a, "b": b})
    store = convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="drop")
    keep = np.setdiff1d(np.arange(300), [5, 7, 9])
    assert store.n_rows == 297
    assert list(store.ids[:]) == [paths[i] for i in keep]
    np.testing.assert_array_equal(store.descriptor("a")[:], a[keep])
    np.testing.assert_array_equal(store.descriptor("b")[:], b[keep].astype(np.float32))
    report = dropped_rows_report_path(tmp_path / "s.zarr")
    assert report == tmp_path / "s.dropped_rows.csv"
    with open(report, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["row", "path", "set", "reason"],
                    ["5", paths[5], "a", "NaN"],
                    ["7", paths[7], "b", "Inf"],
                    ["9", paths[9], "a", "NaN"],
                    ["9", paths[9], "b", "Inf"]]
    ids_attrs = dict(store.ids.attrs)
    assert ids_attrs["dropped_rows"] == 3 and ids_attrs["dropped_rows_report"] == str(report)
    assert store.descriptor("a").attrs["nan_policy"] == "drop"


def test_cli_drop_prints_how_many_and_fail_is_one_line(tmp_path, capsys):
    a, b = _two_sets()
    _case(tmp_path / "case", {"a": a, "b": b})
    assert main(["convert", str(tmp_path / "case"), "-o", str(tmp_path / "f.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.npy: rows 5, 9 hold NaN or Inf" in err[0]
    assert main(["convert", str(tmp_path / "case"), "-o", str(tmp_path / "d.zarr"), "--nan", "drop",
                 "--quiet"]) == 0
    assert "dropped 3 rows holding NaN/Inf, listed in" in capsys.readouterr().out
    assert CaseStore(tmp_path / "d.zarr").n_rows == 297


def test_dropped_rows_map_store_rows_to_source_rows():
    rows = np.array([0, 3, 4, 9])
    dropped = _DroppedRows(rows, 12)
    kept = np.setdiff1d(np.arange(12), rows)
    assert dropped.n_kept == len(kept)
    assert [dropped.source_row(i) for i in range(len(kept))] == list(kept)
    np.testing.assert_array_equal(dropped.keep(2, 10), ~np.isin(np.arange(2, 10), rows))


def test_drop_conversion_interrupted_resumes_to_the_clean_result(tmp_path, monkeypatch):
    """Blocks of 1024 rows (d = 2048): the resume must start at the right SOURCE row."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4000, 2048)).astype(np.float32)
    a[[10, 1500, 1501, 3999], 7] = np.nan
    _case(tmp_path / "case", {"a": a})
    src_cls = type(open_source(tmp_path / "case" / "descriptors" / "a.npy"))
    original = src_cls.read_rows
    calls = {"n": 0}

    def interrupted(self, start, stop):
        calls["n"] += 1
        if calls["n"] == 4 + 2:  # the scan pass (4 blocks), then 2 blocks written
            raise KeyboardInterrupt
        return original(self, start, stop)

    monkeypatch.setattr(src_cls, "read_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_case(tmp_path / "case", tmp_path / "s.zarr", memory="32MB", nan_policy="drop")
    partial = CaseStore(tmp_path / "s.zarr").root["descriptors"]["a"]
    assert partial.attrs["status"] == "writing" and 0 < partial.attrs["rows_written"] < 3996
    monkeypatch.setattr(src_cls, "read_rows", original)
    store = convert_case(tmp_path / "case", tmp_path / "s.zarr", memory="32MB", nan_policy="drop")
    np.testing.assert_array_equal(store.descriptor("a")[:], np.delete(a, [10, 1500, 1501, 3999], axis=0))


def test_drop_never_mixes_with_an_earlier_row_selection(tmp_path):
    a, b = _two_sets()
    _case(tmp_path / "case", {"a": a, "b": b})
    convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="drop")
    with pytest.raises(StoreError, match="already holds 297 images, .* lists 300; convert into a new store"):
        convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="impute")  # other rows: refused
    assert CaseStore(tmp_path / "s.zarr").n_rows == 297  # the dropped store is intact
    report = dropped_rows_report_path(tmp_path / "s.zarr")
    listed = report.read_text()
    a[5, 2] = 0.0  # the source changes: dropping would now keep 298 rows
    np.save(tmp_path / "case" / "descriptors" / "a.npy", a)
    with pytest.raises(StoreError, match="already holds 297 images, .* lists 298 after dropping 2 rows"):
        convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="drop")
    assert report.read_text() == listed  # the report still describes the store's rows
    assert CaseStore(tmp_path / "s.zarr").n_rows == 297


def test_drop_of_every_row_is_refused(tmp_path):
    a, b = _two_sets()
    _case(tmp_path / "case", {"a": a, "b": b})
    convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="drop")
    listed = dropped_rows_report_path(tmp_path / "s.zarr").read_text()
    shutil.rmtree(tmp_path / "case")
    _case(tmp_path / "case", {"a": np.full((4, 2), np.nan, np.float32)})
    with pytest.raises(InputError, match=r"every one of its 4 rows holds NaN or Inf in some set \(row 0: NaN in a\)"):
        convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="drop")
    assert dropped_rows_report_path(tmp_path / "s.zarr").read_text() == listed  # the store's report stays


# -- nan_policy="impute" ---------------------------------------------------------------


def test_impute_fills_column_means_of_finite_values_and_records_them(tmp_path, monkeypatch):
    a, b = _two_sets()
    _case(tmp_path / "case", {"a": a, "b": b})
    scans = []
    monkeypatch.setattr(ingest, "_scan_finite", lambda src, rows, f=ingest._scan_finite: scans.append(
        src.path.name) or f(src, rows))
    store = convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="impute")
    assert store.n_rows == 300 and sorted(scans) == ["a.npy", "b.npy"]  # one extra pass per bad set
    for name, raw in (("a", a), ("b", b)):
        raw32 = raw.astype(np.float32)
        finite = np.isfinite(raw32)
        means = np.where(finite, raw32, 0).sum(0, dtype=np.float64) / finite.sum(0)
        expected = np.where(finite, raw32, means.astype(np.float32))
        got = store.descriptor(name)[:]
        np.testing.assert_array_equal(got, expected)
        attrs = dict(store.descriptor(name).attrs)
        assert attrs["nan_policy"] == "impute" and attrs["imputed_rows"] == 2
        assert attrs["imputed_values"] == 2
        bad_cols = np.flatnonzero(~finite.all(0))
        assert sorted(attrs["impute_column_means"]) == sorted(str(j) for j in bad_cols)
        for j in bad_cols:
            assert attrs["impute_column_means"][str(j)] == pytest.approx(means[j], rel=1e-6)


def test_impute_without_bad_values_costs_no_extra_pass(tmp_path, monkeypatch):
    _case(tmp_path / "case", {"a": np.ones((10, 2), np.float32)})
    monkeypatch.setattr(ingest, "_scan_finite", lambda *a: pytest.fail("scanned a clean set"))
    convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="impute")


def test_impute_refuses_a_column_without_finite_values(tmp_path):
    a = np.ones((10, 3), np.float32)
    a[:, 1] = np.nan
    _case(tmp_path / "case", {"a": a})
    with pytest.raises(InputError, match=r"a\.npy: column 1 holds no finite value"):
        convert_case(tmp_path / "case", tmp_path / "s.zarr", nan_policy="impute")


# -- degenerate values: all-zero rows, constant columns --------------------------------


def test_zero_rows_and_constant_columns_give_finite_pca_and_kmeans():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    X[:40] = 0.0  # all-zero rows: L2 normalisation must not divide by 0
    X[:, 2] = 3.0  # a constant column
    X[:, 5] = X[:, 0] + X[:, 1]  # a collinear one: a zero-variance component
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for params in ({"l2_normalize": True}, {"l2_normalize": True, "whiten": True},
                       {"l2_normalize": False, "standardize": True, "whiten": True}):
            Z = StreamingPCA(n_components=6, **params).fit(X).transform(X)
            assert np.isfinite(Z).all(), params
        km = StreamingKMeans(n_clusters=3, random_state=0).fit(Z)
        assert np.isfinite(km.cluster_centers_).all()


@pytest.mark.parametrize("params", [{"l2_normalize": False, "whiten": True},
                                    {"l2_normalize": True, "standardize": True, "whiten": True}])
def test_constant_data_gives_zeros_not_nan(params):
    C = np.full((100, 4), 2.5, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pca = StreamingPCA(n_components=2, **params).fit(C)
        np.testing.assert_array_equal(pca.transform(C), 0.0)
        assert np.isfinite(pca.inverse_transform(pca.transform(C))).all()
        assert np.isfinite(StreamingScaler().fit(C).transform(C)).all()


# -- shapes, counts, paths -------------------------------------------------------------


def test_wrong_width_for_an_existing_set_is_refused_and_the_set_kept(tmp_path):
    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    _case(tmp_path / "case", {"a": a})
    convert_case(tmp_path / "case", tmp_path / "s.zarr")
    np.save(tmp_path / "case" / "descriptors" / "a.npy", np.ones((10, 5), np.float32))
    with pytest.raises(StoreError, match=r"descriptor set 'a' has 4 features, .*a\.npy has 5"):
        convert_case(tmp_path / "case", tmp_path / "s.zarr")
    np.testing.assert_array_equal(CaseStore(tmp_path / "s.zarr").descriptor("a")[:], a)


def test_paths_csv_without_rows_is_refused(tmp_path):
    (tmp_path / "p.csv").write_text("paths\n")
    with pytest.raises(InputError, match=r"p\.csv: no rows"):
        read_paths_csv(tmp_path / "p.csv")
    (tmp_path / "q.csv").write_text("")
    with pytest.raises(InputError, match=r"q\.csv: empty file"):
        read_paths_csv(tmp_path / "q.csv")


def test_short_csv_row_is_an_empty_path(tmp_path):
    (tmp_path / "p.csv").write_text("id,paths\n1,a.jpg\n2\n")
    with pytest.raises(InputError, match="row 1 has an empty path"):
        read_paths_csv(tmp_path / "p.csv")


def test_fewer_rows_than_k_is_named(tmp_path):
    X = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=8"):
        StreamingKMeans(n_clusters=8).fit(X)
    _case(tmp_path / "case", {"a": X.astype(np.float32)})
    convert_case(tmp_path / "case", tmp_path / "s.zarr")
    from streamclust.study import run_study

    with pytest.raises(InputError, match="n_samples=5 should be >= n_clusters=8"):
        run_study(tmp_path / "s.zarr", tmp_path / "out", k="2:8", report=False)
    assert CaseStore(tmp_path / "s.zarr").runs(include_incomplete=True) == []  # refused before any run
