"""Tests of the demo case generator (streamclust.datasets.synthetic)."""

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
from scipy.spatial.distance import cdist, pdist
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from streamclust.datasets.synthetic import (
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
                                   "camera", "outlier_kind", "is_outlier", "outlier_group"]
    assert len(truth) == N_ROWS
    assert truth["is_outlier"].dtype == bool
    assert truth["vehicle_id"].dtype == np.int64
    assert truth["outlier_group"].dtype == np.int64
    assert (truth.loc[~truth["is_outlier"], "outlier_group"] == -1).all()
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


def test_load_truth_of_a_case_without_groups(case, tmp_path):
    """A truth.csv written before outlier groups existed reads with outlier_group -1."""
    old = pd.read_csv(case / "truth.csv", dtype=str, keep_default_na=False).drop(columns="outlier_group")
    old.to_csv(tmp_path / "truth.csv", index=False)
    t = load_truth(tmp_path)
    assert t.columns[-1] == "outlier_group" and (t["outlier_group"] == -1).all()
    assert t.drop(columns="outlier_group").equals(load_truth(case).drop(columns="outlier_group"))


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


# --------------------------------------------------------------------------
# planted outliers are as hard as real ones: groups of similar bad pictures,
# activation norms that differ, density ratios (LOF) that no longer shine
# --------------------------------------------------------------------------
def _auc(score: np.ndarray, positive: np.ndarray, inliers: np.ndarray) -> float:
    """ROC AUC of `score` for the rows of `positive` against the inliers."""
    rows = positive | inliers
    return roc_auc_score(positive[rows], score[rows])


def test_outlier_groups(truth):
    out = truth[truth["is_outlier"]]
    grouped = out[out["outlier_group"] >= 0]
    assert 0.3 <= len(grouped) / len(out) <= 0.7  # about half the outliers come in groups
    assert set(grouped["outlier_kind"]) == {"glare", "dark", "no_vehicle"}
    sizes = grouped.groupby("outlier_group").size()
    assert len(sizes) >= 3 and sizes.min() >= 3
    per_group = grouped.groupby("outlier_group")[["outlier_kind", "camera", "view"]].nunique()
    assert (per_group == 1).all().all()  # one kind, seen by one camera from one view
    # runs of several shots of one vehicle
    assert grouped.groupby(["outlier_group", "vehicle_id"]).size().max() >= 2


def test_grouped_outliers_resemble_each_other(descriptors, truth):
    groups = truth["outlier_group"].to_numpy()
    inliers = np.flatnonzero(~truth["is_outlier"].to_numpy())
    ref = np.random.default_rng(0).choice(inliers, 500, replace=False)
    for name, x in descriptors.items():
        x = _l2(x)
        for g in np.unique(groups[groups >= 0]):
            rows = np.flatnonzero(groups == g)
            within = np.median(pdist(x[rows]))
            to_inliers = np.median(cdist(x[rows], x[ref]))
            assert within < 0.8 * to_inliers, (name, g, within, to_inliers)  # measured <= 0.67


def test_bad_pictures_change_the_activation_norm(descriptors, truth):
    kind = truth["outlier_kind"].to_numpy()
    inliers = ~truth["is_outlier"].to_numpy()
    for name, x in descriptors.items():
        norm = np.linalg.norm(x, axis=1)
        ratio = {k: norm[kind == k].mean() / norm[inliers].mean() for k in ("dark", "no_vehicle", "glare")}
        # measured: dark 0.42-0.59, no_vehicle 0.74-0.90, glare 1.12-1.30
        assert ratio["dark"] < 0.75 and ratio["no_vehicle"] < 0.97 and ratio["glare"] > 1.03, (name, ratio)
        # a signal, not a giveaway (measured 0.63-0.74)
        log_norm = np.log(norm)
        auc = _auc(np.abs(log_norm - np.median(log_norm)), ~inliers, inliers)
        assert 0.55 < auc < 0.85, (name, auc)


#: Measured on the fixture case (6,000 rows, seed 0): the best of kdist /
#: IsolationForest over all outliers, and LOF(20) over the grouped ones.
_BEST_AUC = {"efficientnet-b7": 0.993, "osnet": 0.986, "vdc_color": 0.918, "vdc_type": 0.980}
_LOF_GROUPED_AUC = {"efficientnet-b7": 0.907, "osnet": 0.896, "vdc_color": 0.942, "vdc_type": 0.933}


@pytest.mark.parametrize("name", list(DESCRIPTOR_DIMS))
def test_outliers_findable_but_not_by_density_ratios(descriptors, truth, name):
    """Outliers stay findable by the distance to the 20th neighbour or an
    IsolationForest on PCA(64) of the L2-normalised descriptors, while LOF(20)
    is no longer near-perfect on the grouped ones (grouped anomalies hide
    each other from a ratio of local densities, as on real images)."""
    z = PCA(64, random_state=0).fit_transform(_l2(descriptors[name]))
    outliers = truth["is_outlier"].to_numpy()
    grouped = outliers & (truth["outlier_group"].to_numpy() >= 0)
    kdist = NearestNeighbors(n_neighbors=21).fit(z).kneighbors(z)[0][:, 20]
    iforest = -IsolationForest(random_state=0).fit(z).score_samples(z)
    lof = -LocalOutlierFactor(n_neighbors=20).fit(z).negative_outlier_factor_
    best = max(_auc(kdist, outliers, ~outliers), _auc(iforest, outliers, ~outliers))
    best_grouped = max(_auc(kdist, grouped, ~outliers), _auc(iforest, grouped, ~outliers))
    lof_grouped = _auc(lof, grouped, ~outliers)
    assert best >= _BEST_AUC[name] - 0.04, (best, _BEST_AUC[name])
    assert lof_grouped <= _LOF_GROUPED_AUC[name] + 0.03, (lof_grouped, _LOF_GROUPED_AUC[name])
    assert lof_grouped <= best_grouped - 0.02, (lof_grouped, best_grouped)
