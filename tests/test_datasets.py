"""Tests of the demo case generator (streamclust.datasets)."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor

from streamclust.datasets import (
    COLORS,
    DESCRIPTOR_DIMS,
    MODELS,
    OUTLIER_KINDS,
    TYPES,
    VIEWS,
    load_truth,
    make_demo_case,
)
from streamclust.errors import InputError

N_ROWS = 6000
TEXT_FILES = ("images_paths.csv", "truth.csv", "vehicle_info.txt")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "case"
    assert make_demo_case(out, N_ROWS, seed=0, images=True) == out
    return out


@pytest.fixture(scope="module")
def truth(case) -> pd.DataFrame:
    return load_truth(case)


@pytest.fixture(scope="module")
def descriptors(case) -> dict[str, np.ndarray]:
    out = {}
    for name in DESCRIPTOR_DIMS:
        with open(case / "descriptors" / f"{name}.pickle", "rb") as f:
            out[name] = pickle.load(f)
    return out


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _kmeans_labels(x: np.ndarray, k: int) -> np.ndarray:
    z = PCA(32, random_state=0).fit_transform(_l2(x))
    return KMeans(k, n_init=3, random_state=0).fit_predict(z)


# --------------------------------------------------------------------------
# files and formats
# --------------------------------------------------------------------------
def test_descriptor_pickles(case, descriptors):
    assert sorted(p.name for p in (case / "descriptors").iterdir()) == sorted(
        f"{name}.pickle" for name in DESCRIPTOR_DIMS
    )
    for name, d in DESCRIPTOR_DIMS.items():
        arr = descriptors[name]
        assert type(arr) is np.ndarray
        assert arr.dtype == np.float32
        assert arr.shape == (N_ROWS, d)
        assert arr.flags.c_contiguous
        assert np.isfinite(arr).all()
        assert arr.min() >= 0.0  # ReLU features
        assert 0.2 < (arr == 0).mean() < 0.8  # sparse, not degenerate
        head = (case / "descriptors" / f"{name}.pickle").read_bytes()[:2]
        assert head == b"\x80\x04"  # protocol 4


def test_paths_csv(case, truth):
    text = (case / "images_paths.csv").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "paths"
    paths = lines[1:]
    assert len(paths) == N_ROWS
    pattern = re.compile(r"veriwild\\1\\(\d{5})\\(\d{6})\.jpg")
    keys = []
    for p in paths:
        m = pattern.fullmatch(p)
        assert m, p
        keys.append((int(m.group(1)), int(m.group(2))))
    assert keys == sorted(keys)  # by vehicle id, then image id
    assert len(set(keys)) == N_ROWS
    # pandas reads it back as one column
    frame = pd.read_csv(case / "images_paths.csv", dtype=str)
    assert list(frame.columns) == ["paths"]
    assert frame["paths"].tolist() == paths
    # truth.csv rows align with the CSV rows
    assert truth["path"].tolist() == [p.replace("\\", "/") for p in paths]
    assert truth["vehicle_id"].tolist() == [k[0] for k in keys]


def test_truth_table(truth):
    assert list(truth.columns) == ["path", "vehicle_id", "color", "type", "view", "model",
                                   "camera", "outlier_kind", "is_outlier"]
    assert len(truth) == N_ROWS
    assert truth["is_outlier"].dtype == bool
    assert truth["vehicle_id"].dtype == np.int64
    assert set(truth["color"]) == set(COLORS)
    assert set(truth["type"]) == set(TYPES)
    assert set(truth["view"]) == set(VIEWS)
    assert set(truth["outlier_kind"]) == set(OUTLIER_KINDS) | {""}
    assert (truth["is_outlier"] == (truth["outlier_kind"] != "")).all()
    assert truth["camera"].str.fullmatch(r"c\d{3}").all()
    for vtype, model in zip(truth["type"], truth["model"]):
        assert model in MODELS[vtype]
    per_vehicle = truth.groupby("vehicle_id")[["color", "type", "model"]].nunique()
    assert (per_vehicle == 1).all().all()
    sizes = truth.groupby("vehicle_id").size()
    assert sizes.iloc[:-1].between(5, 40).all()  # the last vehicle may be cut short
    assert 8 <= sizes.mean() <= 13
    freq = truth["color"].value_counts(normalize=True)
    assert freq.index[0] in ("white", "black") and freq.max() > 2 * freq.min()


def test_outlier_fraction(truth):
    n_out = int(truth["is_outlier"].sum())
    assert n_out == round(0.01 * N_ROWS)
    counts = truth.loc[truth["is_outlier"], "outlier_kind"].value_counts()
    assert set(counts.index) == set(OUTLIER_KINDS)
    assert counts.max() - counts.min() <= 1


def test_images_zip(case, truth):
    with zipfile.ZipFile(case / "images.zip") as zf:
        names = zf.namelist()
        assert names == truth["path"].tolist()
        rng = np.random.default_rng(0)
        for i in rng.choice(N_ROWS, 20, replace=False):
            with Image.open(io.BytesIO(zf.read(names[i]))) as im:
                assert im.format == "JPEG"
                assert im.size == (64, 48)
                assert im.mode == "RGB"


def test_vehicle_info(case, truth):
    lines = (case / "vehicle_info.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id/image;Camera ID;Time;Model;Type;Color"
    rows = [line.split(";") for line in lines[1:]]
    assert len(rows) == N_ROWS
    assert all(len(r) == 6 for r in rows)
    for key, camera, time, model, vtype, color in rows[:200]:
        assert re.fullmatch(r"\d{5}/\d{6}", key)
        assert re.fullmatch(r"c\d{3}", camera)
        assert re.fullmatch(r"2018-03-\d\d \d\d:\d\d:\d\d", time)
        for value in (model, vtype, color):
            assert value.startswith(" ") and not value.startswith("  ")
    info = pd.DataFrame(rows, columns=["key", "camera", "time", "model", "type", "color"])
    truth_keys = truth["path"].str.extract(r"veriwild/1/(\d{5})/(\d{6})\.jpg$")
    truth = truth.assign(key=truth_keys[0] + "/" + truth_keys[1])
    assert info["key"].tolist() != truth["key"].tolist()  # another order than the CSV
    merged = info.merge(truth, on="key", how="outer", suffixes=("_info", ""), validate="1:1")
    assert len(merged) == N_ROWS and merged.notna().all().all()
    for col in ("model", "type", "color"):
        assert (merged[f"{col}_info"].str.strip() == merged[col]).all()
    assert (merged["camera_info"] == merged["camera"]).all()


# --------------------------------------------------------------------------
# determinism and arguments
# --------------------------------------------------------------------------
def test_same_seed_same_bytes(tmp_path):
    a = make_demo_case(tmp_path / "a", 1100, seed=3, images=True, block_rows=512)
    b = make_demo_case(tmp_path / "b", 1100, seed=3, images=True, block_rows=100_000)
    c = make_demo_case(tmp_path / "c", 1100, seed=4, images=False)
    for name in DESCRIPTOR_DIMS:
        rel = Path("descriptors") / f"{name}.pickle"
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), name
        assert (a / rel).read_bytes() != (c / rel).read_bytes(), name
    for rel in TEXT_FILES + ("images.zip",):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "truth.csv").read_bytes() != (c / "truth.csv").read_bytes()
    assert not (c / "images.zip").exists()
    leftovers = [p.name for d in (a, b, c) for p in d.rglob("*") if p.name.startswith(".") or "partial" in p.name]
    assert leftovers == []


def test_tiny_cases(tmp_path):
    one = make_demo_case(tmp_path / "one", 1, seed=1, progress=True)
    t = load_truth(one)
    assert len(t) == 1 and not t["is_outlier"].any()
    with open(one / "descriptors" / "osnet.pickle", "rb") as f:
        assert pickle.load(f).shape == (1, 512)
    clean = make_demo_case(tmp_path / "clean", 300, seed=1, images=False, outlier_fraction=0.0)
    assert not load_truth(clean)["is_outlier"].any()


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_rows=0), dict(n_rows=2.5), dict(outlier_fraction=0.7), dict(outlier_fraction=-0.1),
     dict(block_rows=0), dict(seed=-1)],
)
def test_bad_arguments(tmp_path, kwargs):
    args = dict(n_rows=10) | kwargs
    n_rows = args.pop("n_rows")
    with pytest.raises(InputError):
        make_demo_case(tmp_path / "x", n_rows, **args)


def test_out_dir_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        make_demo_case(target, 10)


def test_load_truth_needs_truth(tmp_path):
    with pytest.raises(InputError, match="truth"):
        load_truth(tmp_path)


# --------------------------------------------------------------------------
# the planted structure is recoverable
# --------------------------------------------------------------------------
def test_color_set_clusters_by_color(descriptors, truth):
    labels = _kmeans_labels(descriptors["vdc_color"], len(COLORS))
    assert adjusted_rand_score(truth["color"], labels) >= 0.6
    assert adjusted_rand_score(truth["type"], labels) < 0.1


def test_type_set_clusters_by_type(descriptors, truth):
    labels = _kmeans_labels(descriptors["vdc_type"], len(TYPES))
    assert adjusted_rand_score(truth["type"], labels) >= 0.4
    assert adjusted_rand_score(truth["color"], labels) < 0.1


@pytest.mark.parametrize("name", ["efficientnet-b7", "osnet"])
def test_outliers_detectable_in_generic_sets(descriptors, truth, name):
    z = PCA(64, random_state=0).fit_transform(_l2(descriptors[name]))
    lof = LocalOutlierFactor(n_neighbors=20).fit(z)
    auc = roc_auc_score(truth["is_outlier"], -lof.negative_outlier_factor_)
    assert auc >= 0.95
