"""Conversion of raw case folders into stores: formats, checks, provenance, resume."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from streamclust.errors import InputError, StoreError
from streamclust.io.ingest import convert_case, read_paths_csv
from streamclust.io.sources import open_source
from streamclust.io.store import CaseStore


def _write_case(root, arrays: dict[str, np.ndarray], fmt: str = "npy", n_paths: int | None = None):
    (root / "descriptors").mkdir(parents=True)
    n = next(iter(arrays.values())).shape[0] if n_paths is None else n_paths
    paths = [f"veriwild\\1\\{i // 10:05d}\\{i:06d}.jpg" for i in range(n)]
    pd.DataFrame({"paths": paths}).to_csv(root / "images_paths.csv", index=False)
    for name, arr in arrays.items():
        target = root / "descriptors" / f"{name}.{fmt}"
        if fmt == "npy":
            np.save(target, arr)
        elif fmt == "pickle":
            with open(target, "wb") as f:
                pickle.dump(arr, f, protocol=4)
        elif fmt == "npz":
            np.savez_compressed(target, arr)
        elif fmt == "csv":
            pd.DataFrame(arr).to_csv(target, index=False, float_format="%.17g")
        elif fmt == "parquet":
            pd.DataFrame(arr, columns=[f"f{j}" for j in range(arr.shape[1])]).to_parquet(target)
    return paths


@pytest.mark.parametrize("fmt", ["npy", "pickle", "npz", "csv", "parquet"])
def test_every_format_converts_exactly(tmp_path, fmt):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3001, 7)).astype(np.float32)
    b = rng.normal(size=(3001, 3))  # float64 source
    paths = _write_case(tmp_path / "case", {"a": a, "b": b}, fmt)
    store = convert_case(tmp_path / "case", tmp_path / "case.zarr", memory="64MB")
    assert store.descriptor_names() == ["a", "b"]
    np.testing.assert_array_equal(store.descriptor("a")[:], a)
    np.testing.assert_array_equal(store.descriptor("b")[:], b.astype(np.float32))
    assert list(store.ids[:3]) == [p.replace("\\", "/") for p in paths[:3]]
    attrs = dict(store.descriptor("b").attrs)
    assert attrs["source_dtype"] == "float64" and attrs["status"] == "complete"
    assert len(attrs["source_sha256"]) == 64 and attrs["schema_version"] == 1
    assert store.descriptor("a").chunks[1] == 7  # chunked along rows only


def test_row_count_mismatch_names_both_files(tmp_path):
    _write_case(tmp_path / "case", {"a": np.zeros((10, 4), np.float32)}, n_paths=11)
    with pytest.raises(InputError, match=r"a\.npy: has 10 rows .* lists 11"):
        convert_case(tmp_path / "case", tmp_path / "out.zarr")


def test_non_finite_row_is_named_and_store_not_marked_complete(tmp_path):
    a = np.ones((5000, 4), np.float32)
    a[4321, 2] = np.nan
    _write_case(tmp_path / "case", {"a": a})
    with pytest.raises(InputError, match="row 4321 holds NaN or Inf"):
        convert_case(tmp_path / "case", tmp_path / "out.zarr", memory="16MB")
    assert CaseStore(tmp_path / "out.zarr").descriptor_names() == []


def test_interrupted_conversion_resumes_and_equals_clean_run(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200_000, 16)).astype(np.float32)
    _write_case(tmp_path / "case", {"a": a})
    src_cls = type(open_source(tmp_path / "case" / "descriptors" / "a.npy"))
    original = src_cls.read_rows
    calls = {"n": 0}

    def failing(self, start, stop):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle
        return original(self, start, stop)

    monkeypatch.setattr(src_cls, "read_rows", failing)
    with pytest.raises(KeyboardInterrupt):
        convert_case(tmp_path / "case", tmp_path / "out.zarr", memory="16MB")
    partial = CaseStore(tmp_path / "out.zarr").root["descriptors"]["a"]
    written = partial.attrs["rows_written"]
    assert 0 < written < 200_000 and partial.attrs["status"] == "writing"
    monkeypatch.setattr(src_cls, "read_rows", original)
    seen = []
    monkeypatch.setattr(src_cls, "read_rows", lambda self, s, e: seen.append(s) or original(self, s, e))
    store = convert_case(tmp_path / "case", tmp_path / "out.zarr", memory="16MB")
    assert min(seen) == written  # resumed, did not start again
    np.testing.assert_array_equal(store.descriptor("a")[:], a)


def test_paths_csv_problems_are_named(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("paths\na\\1.jpg\nb\\2.jpg\na\\1.jpg\n")
    with pytest.raises(InputError, match="rows 0 and 2 name the same image"):
        read_paths_csv(csv)
    csv.write_text("path\na.jpg\n")
    with pytest.raises(InputError, match="needs a column 'paths'"):
        read_paths_csv(csv)
    csv.write_bytes(b"paths\nok.jpg\n\xff\xfe.jpg\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_paths_csv(csv)
    csv.write_text('paths\nok.jpg\n""\n')
    with pytest.raises(InputError, match="row 1 has an empty path"):
        read_paths_csv(csv)


def test_bad_arrays_are_refused_with_the_file_name(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4, 5), np.float32))
    with pytest.raises(InputError, match=r"x\.npy: expected a 2-D array"):
        open_source(tmp_path / "x.npy")
    np.save(tmp_path / "e.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match="empty"):
        open_source(tmp_path / "e.npy")
    np.save(tmp_path / "o.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"o\.npy"):
        open_source(tmp_path / "o.npy")
    (tmp_path / "d.bin").write_bytes(b"1234")
    with pytest.raises(InputError, match="unknown descriptor format"):
        open_source(tmp_path / "d.bin")


def test_explicit_descriptor_and_wrong_store(tmp_path):
    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    _write_case(tmp_path / "case", {"a": a})
    store = convert_case(tmp_path / "case", tmp_path / "s.zarr",
                         descriptors={"renamed": str(tmp_path / "case" / "descriptors" / "a.npy")})
    assert store.descriptor_names() == ["renamed"]
    with pytest.raises(StoreError, match="no streamclust store"):
        CaseStore(tmp_path / "missing.zarr")
