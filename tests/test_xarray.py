"""xarray (and any Zarr reader) opens a store: dimension names on every array, consolidated metadata
that never hides a node from streamclust itself, and ids in a fixed-width string type."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from streamclust.errors import InputError, StoreError
from streamclust.io import store as store_module
from streamclust.io.ingest import convert_case
from streamclust.io.store import CaseStore, run_dimension_names
from streamclust.study import run_study

N_ROWS = 300
STUDY = {"k": "3:4", "n_components": 8, "report": False, "random_state": 0, "progress": False}
MIX = "vdc_color+vdc_type"


@pytest.fixture(scope="module")
def studied(demo_case, tmp_path_factory):
    """A copy of a 300-row demo store and one study run of ``osnet`` and the mixture ``MIX``."""
    root = tmp_path_factory.mktemp("xarray")
    shutil.copytree(demo_case(N_ROWS) / "case.zarr", root / "case.zarr")
    result = run_study(root / "case.zarr", root / "study", descriptors=["osnet"], mix=[MIX], **STUDY)
    return root / "case.zarr", result.run_id


def _paths(case: Path) -> list[str]:
    return pd.read_csv(case / "images_paths.csv")["paths"].str.replace("\\", "/", regex=False).tolist()


def _tiny_case(folder: Path, paths: list[str], sets: dict[str, int]) -> Path:
    """A case folder with ``paths`` and one ``.npy`` of ``d`` random columns per set name."""
    rng = np.random.default_rng(0)
    (folder / "descriptors").mkdir(parents=True)
    pd.DataFrame({"paths": paths}).to_csv(folder / "images_paths.csv", index=False)
    for name, d in sets.items():
        np.save(folder / "descriptors" / f"{name}.npy", rng.normal(size=(len(paths), d)).astype(np.float32))
    return folder


def _zarr_json(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())


def test_ids_and_descriptors_open_with_xarray(demo_case):
    root = demo_case(N_ROWS)
    store = CaseStore(root / "case.zarr")
    ds = xr.open_zarr(root / "case.zarr", group="descriptors")
    for name in store.descriptor_names():
        d = store.descriptor(name).shape[1]
        assert ds[name].dims == ("image", f"{name}_feature") and ds[name].shape == (N_ROWS, d)
        np.testing.assert_array_equal(ds[name].values, store.descriptor(name)[:])
    ids = xr.open_zarr(root / "case.zarr")["ids"]
    assert ids.dims == ("image",) and ids.shape == (N_ROWS,)
    assert ids.values.tolist() == _paths(root / "case")
    tree = xr.open_datatree(root / "case.zarr", engine="zarr")
    assert tree["descriptors"].sizes["image"] == N_ROWS and tree["ids"].dims == ("image",)


def test_ids_are_fixed_width_utf32_and_read_as_before(demo_case):
    root = demo_case(N_ROWS)
    paths = _paths(root / "case")
    meta = _zarr_json(root / "case.zarr" / "ids")
    longest = max(map(len, paths))
    assert meta["data_type"] == {"name": "fixed_length_utf32", "configuration": {"length_bytes": 4 * longest}}
    assert meta["dimension_names"] == ["image"]
    ids = CaseStore(root / "case.zarr").ids
    assert ids.dtype == np.dtype(f"<U{longest}")
    assert np.asarray(ids[:]).astype(object).tolist() == paths  # what the study's callers do
    assert [str(p) for p in ids.get_orthogonal_selection(np.array([0, N_ROWS - 1]))] == [paths[0], paths[-1]]


def test_a_study_run_opens_with_xarray(studied):
    path, run_id = studied
    run = CaseStore(path).run(run_id)
    ds = xr.open_zarr(path, group=f"runs/{run_id}/osnet")
    assert ds["reduced"].dims == ("image", "component") and ds["reduced"].shape == (N_ROWS, 8)
    for name in ("labels", "outlier_score", "is_outlier", "row_norm", "residual"):
        assert ds[name].dims == ("image",) and ds[name].shape == (N_ROWS,), name
    np.testing.assert_array_equal(ds["labels"].values, run.array("osnet/labels")[:])
    np.testing.assert_array_equal(ds["outlier_score"].values, run.array("osnet/outlier_score")[:])
    tree = xr.open_datatree(path, engine="zarr")
    mixed = tree[f"runs/{run_id}/{MIX}"]
    assert mixed["reduced"].dims == ("image", "component") and mixed["labels"].sizes == {"image": N_ROWS}
    assert tree[f"runs/{run_id}"].attrs["status"] == "complete"


def test_consolidated_metadata_lists_the_complete_run(studied):
    path, run_id = studied
    assert "consolidated_metadata" in _zarr_json(path)
    flat = zarr.open_consolidated(path).metadata.consolidated_metadata.flattened_metadata
    assert flat[f"runs/{run_id}"].attributes["status"] == "complete"
    assert flat[f"runs/{run_id}/osnet/reduced"].dimension_names == ("image", "component")
    assert {"ids", "descriptors/osnet"} <= set(flat)


def test_a_run_created_after_the_last_consolidation_is_still_listed(studied, tmp_path):
    shutil.copytree(studied[0], tmp_path / "case.zarr")
    path, first = tmp_path / "case.zarr", studied[1]
    earlier = {r.run_id for r in CaseStore(path).runs()}  # first, and any run other tests left in the shared case
    assert first in earlier
    later = CaseStore(path, mode="r+").new_run({"by": "test"})
    later.create_array("osnet/labels", (N_ROWS,), "int32")[:] = 1
    later.group.attrs["status"] = "complete"  # e.g. written by another process, not consolidated yet
    stale = zarr.open_consolidated(path).metadata.consolidated_metadata.flattened_metadata
    assert f"runs/{later.run_id}" not in stale  # the consolidated view lags ...
    assert {r.run_id for r in CaseStore(path).runs()} == earlier | {later.run_id}  # ... streamclust does not
    np.testing.assert_array_equal(CaseStore(path).run(later.run_id).array("osnet/labels")[:], 1)
    result = run_study(path, tmp_path / "study", descriptors=["vdc_color"], **STUDY)  # a finished run consolidates
    assert {r.run_id for r in CaseStore(path).runs()} == earlier | {later.run_id, result.run_id}
    flat = zarr.open_consolidated(path).metadata.consolidated_metadata.flattened_metadata
    assert {f"runs/{first}", f"runs/{later.run_id}", f"runs/{result.run_id}"} <= set(flat)


def test_a_failed_run_leaves_the_consolidated_view(studied, tmp_path):
    shutil.copytree(studied[0], tmp_path / "case.zarr")
    store = CaseStore(tmp_path / "case.zarr", mode="r+")
    run = store.new_run({})
    run.create_array("osnet/labels", (N_ROWS,), "int32")[:] = 0
    store.consolidate()  # e.g. another study completed meanwhile: the running run is in the view
    run.fail("test")
    flat = zarr.open_consolidated(tmp_path / "case.zarr").metadata.consolidated_metadata.flattened_metadata
    assert flat[f"runs/{run.run_id}"].attributes["status"] == "failed"
    assert f"runs/{run.run_id}/osnet/labels" not in flat
    assert run.run_id not in [r.run_id for r in CaseStore(tmp_path / "case.zarr").runs()]


def test_run_array_dimension_names():
    assert run_dimension_names("osnet/reduced", (10, 4)) == ("image", "component")
    assert run_dimension_names("a+b/umap", (10, 2)) == ("image", "umap_axis")
    assert run_dimension_names("osnet/labels_gmm", (10,)) == ("image",)
    assert run_dimension_names("osnet/centers", (10, 3)) == ("image", "centers_dim1")
    assert run_dimension_names("cube", (10, 3, 2)) == ("image", "cube_dim1", "cube_dim2")


def test_run_array_dimension_names_can_be_given(tmp_path):
    store = CaseStore(tmp_path / "s.zarr", mode="a")
    run = store.new_run({})
    arr = run.create_array("osnet/probabilities", (50, 3), "float32", dimension_names=("image", "cluster"))
    assert arr.metadata.dimension_names == ("image", "cluster")
    assert run.create_array("osnet/reduced", (50, 3), "float32").metadata.dimension_names == ("image", "component")
    with pytest.raises(ValueError, match="one non-empty name per dimension"):
        run.create_array("osnet/x", (50, 3), "float32", dimension_names=("image",))


def test_set_names_with_plus_and_minus_make_feature_dimensions(tmp_path):
    paths = [f"cam/{i:03d}.jpg" for i in range(40)]
    case = _tiny_case(tmp_path / "case", paths, {"color+type": 6, "net-b7": 5})
    convert_case(case, tmp_path / "case.zarr")
    ds = xr.open_zarr(tmp_path / "case.zarr", group="descriptors")
    assert ds["color+type"].dims == ("image", "color+type_feature") and ds["color+type"].shape == (40, 6)
    assert ds["net-b7"].dims == ("image", "net-b7_feature") and ds.sizes["net-b7_feature"] == 5
    tree = xr.open_datatree(tmp_path / "case.zarr", engine="zarr")
    assert tree["descriptors"].sizes == {"image": 40, "color+type_feature": 6, "net-b7_feature": 5}


def test_paths_of_any_unicode_round_trip(tmp_path):
    paths = ["é/ü.jpg", "日本/車.png", "a b/c,d.jpg", "x/\U0001f697.jpg", "ends/with space ", "tab\tin"]
    case = _tiny_case(tmp_path / "case", paths, {"s": 3})
    store = convert_case(case, tmp_path / "case.zarr")
    assert store.ids.dtype == np.dtype(f"<U{max(map(len, paths))}")
    assert np.asarray(store.ids[:]).astype(object).tolist() == paths
    assert xr.open_zarr(tmp_path / "case.zarr")["ids"].values.tolist() == paths


def test_a_path_holding_nul_is_refused(tmp_path):
    case = _tiny_case(tmp_path / "case", ["a.jpg", "b.jpg"], {"s": 3})
    (case / "images_paths.csv").write_text("paths\na.jpg\nb.jpg\x00\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"row 1 has a NUL character"):
        convert_case(case, tmp_path / "case.zarr")
    assert not (tmp_path / "case.zarr").exists()


def test_very_long_paths_keep_the_variable_length_type(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_FIXED_ID_CHARS", 12)
    paths = ["short.jpg", "a/much/longer/path/than/twelve.jpg"]
    store = convert_case(_tiny_case(tmp_path / "case", paths, {"s": 3}), tmp_path / "case.zarr")
    assert _zarr_json(tmp_path / "case.zarr" / "ids")["data_type"] == "string"
    assert np.asarray(store.ids[:]).astype(object).tolist() == paths
    assert xr.open_zarr(tmp_path / "case.zarr")["ids"].dims == ("image",)


def test_write_ids_refuses_what_a_fixed_width_would_change(tmp_path):
    store = CaseStore(tmp_path / "s.zarr", mode="a")
    with pytest.raises(StoreError, match=r"id 1 \('abcd'\) is longer than max_len=3"):
        store.write_ids(iter([np.array(["abc", "abcd"])]), 2, {}, max_len=3)
    with pytest.raises(StoreError, match="ends with a NUL character"):
        store.write_ids(iter([np.array(["abc", "ab\x00"], dtype=np.dtypes.StringDType())]), 2, {}, max_len=3)
    with pytest.raises(StoreError, match="has no complete 'ids'"):
        store.ids  # noqa: B018
    arr = store.write_ids(iter([np.array(["a"]), np.array(["bcd", "ef"])]), 3, {})  # width measured
    assert arr.dtype == np.dtype("<U3") and store.ids[:].tolist() == ["a", "bcd", "ef"]


def test_a_store_with_variable_length_ids_still_works(tmp_path):
    """Stores written before the fixed-width ids keep zarr-python's ``string`` type: read the same,
    kept by a new conversion (same paths CSV), and given consolidated metadata by it."""
    paths = [f"img/{i}.jpg" for i in range(30)]
    case = _tiny_case(tmp_path / "case", paths, {"s": 3})
    store = convert_case(case, tmp_path / "case.zarr")
    attrs = dict(store.ids.attrs)
    old = store.root.create_array("ids", shape=(30,), dtype=str, chunks=(30,), overwrite=True)  # as before
    old[:] = np.array(paths, dtype=np.dtypes.StringDType())
    old.attrs.update(attrs)
    root = _zarr_json(tmp_path / "case.zarr")
    root.pop("consolidated_metadata", None)  # an old store had none
    (tmp_path / "case.zarr" / "zarr.json").write_text(json.dumps(root))
    again = convert_case(case, tmp_path / "case.zarr")
    assert _zarr_json(tmp_path / "case.zarr" / "ids")["data_type"] == "string"  # not rewritten
    assert np.asarray(again.ids[:]).astype(object).tolist() == paths
    assert "consolidated_metadata" in _zarr_json(tmp_path / "case.zarr")
    assert xr.open_zarr(tmp_path / "case.zarr", group="descriptors")["s"].shape == (30, 3)


def test_a_url_store_is_consolidated_and_opens_with_xarray(tmp_path):
    url = f"memory://streamclust-xarray-{uuid.uuid4().hex}/case.zarr"
    try:
        paths = [f"p/{i}.jpg" for i in range(25)]
        convert_case(_tiny_case(tmp_path / "case", paths, {"s": 4}), url)
        flat = zarr.open_consolidated(url).metadata.consolidated_metadata.flattened_metadata
        assert {"ids", "descriptors", "descriptors/s"} <= set(flat)
        assert xr.open_zarr(url)["ids"].values.tolist() == paths
        assert xr.open_zarr(url, group="descriptors")["s"].dims == ("image", "s_feature")
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists(url.rpartition("/")[0]):
            fs.rm(url.rpartition("/")[0], recursive=True)
