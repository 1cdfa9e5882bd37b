"""Metadata alignment, cluster profiles and sentences, and the comparison of descriptor sets."""

from __future__ import annotations

import pickle
import re

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.preprocessing import normalize

from streamclust.analysis import comparison, contingency, profiles
from streamclust.analysis.comparison import compare_sets
from streamclust.analysis.contingency import contingency_scores
from streamclust.analysis.metadata import read_metadata
from streamclust.analysis.profiles import cluster_spread, profile_clusters
from streamclust.datasets.synthetic import COLORS, DESCRIPTOR_DIMS, TYPES, load_truth, make_demo_case
from streamclust.errors import InputError

N_ROWS = 4000
ATTRS = ("color", "type", "model", "camera")
_WORDS = re.compile(r"\b(" + "|".join(COLORS + TYPES + ("suvs", "sedans", "buses")) + r")\b", re.I)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 4000-row demo case, its truth, and in-memory k-means labels of every set."""
    case = make_demo_case(tmp_path_factory.mktemp("demo"), n_rows=N_ROWS, seed=0, images=False)
    truth = load_truth(case)
    reduced, labels = {}, {}
    for name in DESCRIPTOR_DIMS:
        with open(case / "descriptors" / f"{name}.pickle", "rb") as f:
            X = pickle.load(f)
        Z = PCA(32, random_state=0).fit_transform(normalize(X)).astype(np.float32)
        k = len(TYPES) if name == "vdc_type" else len(COLORS)
        labels[name] = KMeans(k, n_init=3, random_state=0).fit_predict(Z)
        reduced[name] = Z
    meta = read_metadata(case / "vehicle_info.txt", truth["path"].to_numpy())
    return {"case": case, "truth": truth, "labels": labels, "reduced": reduced, "meta": meta}


# --------------------------------------------------------------------------- read_metadata
def test_read_metadata_veriwild_matches_truth(demo):
    meta, truth = demo["meta"], demo["truth"]
    assert len(meta) == N_ROWS and meta.attrs["match_rate"] == 1.0
    assert meta.attrs["format"] == "veriwild" and meta.attrs["duplicate_keys"] == 0
    assert {"camera", "time", "model", "type", "color"} <= set(meta.columns)
    for col in ATTRS:
        assert isinstance(meta[col].dtype, pd.CategoricalDtype)
        np.testing.assert_array_equal(meta[col].astype(str).to_numpy(), truth[col].to_numpy())
    assert meta["time"].dtype.kind == "M" and meta["time"].notna().all()


def test_read_metadata_accepts_windows_ids_and_zarr(demo):
    paths = pd.read_csv(demo["case"] / "images_paths.csv")["paths"].to_numpy()
    ids = zarr.create_array(store={}, shape=paths.shape, dtype=str, chunks=(1000,))  # as store.ids
    ids[:] = paths.astype(str)
    meta = read_metadata(demo["case"] / "vehicle_info.txt", ids)
    assert meta.attrs["match_rate"] == 1.0
    np.testing.assert_array_equal(meta["color"].astype(str), demo["truth"]["color"])


def test_read_metadata_csv_with_path_column(demo, tmp_path):
    truth = demo["truth"]
    df = truth[["path", "color", "view", "vehicle_id"]].sample(frac=1.0, random_state=1)
    df = df.rename(columns={"color": "Colour", "view": "View Name"})
    df["path"] = df["path"].str.replace("/", "\\")
    df = pd.concat([df, df.iloc[:5].assign(Colour="purple")])  # duplicates: the first wins
    df.to_csv(tmp_path / "meta.csv", index=False)
    meta = read_metadata(tmp_path / "meta.csv", truth["path"].to_numpy())
    assert meta.attrs["match_rate"] == 1.0 and meta.attrs["duplicate_keys"] == 5
    assert meta.attrs["match_methods"] == {"path": N_ROWS}
    np.testing.assert_array_equal(meta["color"].astype(str), truth["color"])
    np.testing.assert_array_equal(meta["view_name"].astype(str), truth["view"])
    assert meta["vehicle_id"].dtype.kind in "iu"


def test_read_metadata_basename_partial_and_parquet(demo, tmp_path):
    import pyarrow  # noqa: F401 - the parquet reader needs it
    truth = demo["truth"]
    part = truth.iloc[: int(0.7 * N_ROWS)]
    pd.DataFrame({"file": part["path"].str.rsplit("/", n=1).str[-1],
                  "type": " " + part["type"] + " "}).to_parquet(tmp_path / "m.parquet")
    meta = read_metadata(tmp_path / "m.parquet", truth["path"].to_numpy())
    assert meta.attrs["match_rate"] == pytest.approx(0.7, abs=1e-3)
    assert meta.attrs["match_methods"] == {"basename": len(part)}
    known = meta["type"].notna().to_numpy()
    assert known.sum() == len(part) and not known[len(part):].any()
    np.testing.assert_array_equal(meta["type"][known].astype(str), part["type"])


def test_read_metadata_without_matches_names_file_and_keys(demo, tmp_path):
    bad = tmp_path / "other_case.txt"
    bad.write_text("id/image;Camera ID;Time;Model;Type;Color\n"
                   "99999/999991;c001;2018-03-01 00:00:00; Audi A4; sedan; red\n"
                   "99999/999992;c001;2018-03-01 00:00:00; Audi A4; sedan; red\n")
    with pytest.raises(InputError, match=r"other_case\.txt.*99999/999991.*00001/000001"):
        read_metadata(bad, demo["truth"]["path"].to_numpy())
    nopath = tmp_path / "nopath.csv"
    nopath.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"nopath\.csv: no path column"):
        read_metadata(nopath, demo["truth"]["path"].to_numpy())


# --------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("seed,r,c,n", [(0, 5, 7, 3000), (1, 2, 2, 50), (2, 12, 3, 10000),
                                        (3, 1, 4, 100), (4, 1, 1, 20), (5, 30, 40, 800)])
def test_contingency_scores_equal_sklearn(seed, r, c, n):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, r, n) - 1  # includes -1 (noise) when r > 1
    b = np.where(rng.random(n) < 0.6, a + 1, rng.integers(0, c, n)) % c
    C = pd.crosstab(a, b).to_numpy()
    got = contingency_scores(C)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(b, a), abs=1e-9)
    assert got["ami"] == pytest.approx(adjusted_mutual_info_score(b, a), abs=1e-9)
    assert got["ari"] == pytest.approx(adjusted_rand_score(b, a), abs=1e-9)
    assert got["purity"] == pytest.approx(C.max(axis=1).sum() / n)
    if C.size > 1:  # the numpy EMI used when sklearn's private one is missing
        got_np = contingency_scores(C, emi=contingency._emi_numpy)
        assert got_np["ami"] == pytest.approx(got["ami"], abs=1e-9)


def test_profile_agreement_equals_sklearn_on_demo(demo):
    lab, truth = demo["labels"]["vdc_type"], demo["truth"]
    prof = profile_clusters(lab, demo["meta"], attribute_columns=ATTRS)
    for _, row in prof.agreement.iterrows():
        y = truth[row["attribute"]].to_numpy()
        assert row["nmi"] == pytest.approx(normalized_mutual_info_score(y, lab), abs=1e-9)
        assert row["ami"] == pytest.approx(adjusted_mutual_info_score(y, lab), abs=1e-9)
        assert row["ari"] == pytest.approx(adjusted_rand_score(y, lab), abs=1e-9)


def test_profile_blockwise_equals_one_block(demo):
    lab = demo["labels"]["osnet"].astype(np.int32).copy()
    lab[::97] = -1  # some noise
    flags = demo["truth"]["is_outlier"].to_numpy()
    one = profile_clusters(lab, demo["meta"], outlier_flags=flags)
    for labels_in, flags_in in [(zarr.array(lab, chunks=(500,)), zarr.array(flags, chunks=(700,))),
                                (da.from_array(lab, chunks=1000), flags)]:
        many = profile_clusters(labels_in, demo["meta"], outlier_flags=flags_in, block_rows=333)
        pd.testing.assert_series_equal(many.sizes, one.sizes)
        pd.testing.assert_frame_equal(many.table, one.table)
        pd.testing.assert_frame_equal(many.agreement, one.agreement, check_exact=False, atol=1e-12)
        pd.testing.assert_series_equal(many.outlier_rate, one.outlier_rate)
        assert many.sentences == one.sentences
    assert -1 in one.sizes.index and one.sentences[-1].startswith("Noise (label -1")
    assert one.sizes.sum() == N_ROWS and one.shares.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- sentences
def test_sentences_name_the_majority_colour(demo):
    lab, truth = demo["labels"]["vdc_color"], demo["truth"]
    prof = profile_clusters(lab, demo["meta"], outlier_flags=truth["is_outlier"].to_numpy())
    majority = truth.groupby(lab)["color"].agg(lambda s: s.value_counts().index[0])
    right = sum(int(prof.sizes[c]) for c, colour in majority.items()
                if re.search(rf"\b{colour}\b", prof.sentences[c]))
    assert right / N_ROWS >= 0.9
    for c, sentence in prof.sentences.items():
        assert sentence.startswith(f"Cluster {c} (") and sentence.endswith(".")
        assert sentence.count(". ") == 0  # one sentence
    t = prof.table
    assert set(t.columns) == {"cluster", "attribute", "value", "count", "share_in_cluster",
                              "share_overall", "lift", "rank"}
    np.testing.assert_allclose(t["lift"], t["share_in_cluster"] / t["share_overall"])
    assert (t.groupby(["cluster", "attribute"])["rank"].min() == 1).all()


def test_sentences_pluralise_types(demo):
    prof = profile_clusters(demo["labels"]["vdc_type"], demo["meta"])
    text = " ".join(prof.sentences.values())
    assert re.search(r"\b(SUVs|sedans|hatchbacks|vans|trucks|buses)\b", text)
    assert profiles._plural("bus") == "buses" and profiles._plural("suv") == "SUVs"
    assert profiles._plural("light passenger vehicle") == "light passenger vehicles"


def test_sentences_without_metadata_invent_nothing(demo):
    lab, Z = demo["labels"]["osnet"], demo["reduced"]["osnet"]
    spread = cluster_spread(Z, lab)
    prof = profile_clusters(lab, None, outlier_flags=demo["truth"]["is_outlier"].to_numpy(),
                            spread=spread)
    assert prof.table.empty and prof.agreement.empty
    for _c, sentence in prof.sentences.items():
        assert "no metadata: see the montage" in sentence
        assert "flagged as outliers" in sentence and "spread" in sentence
        assert not _WORDS.search(sentence), sentence
    # cluster_spread is the mean distance to the centroid
    c0 = Z[lab == 0].astype(np.float64)
    assert spread[0] == pytest.approx(np.linalg.norm(c0 - c0.mean(0), axis=1).mean(), rel=1e-9)
    assert cluster_spread(zarr.array(Z, chunks=(300, 32)), lab, block_rows=300)[0] == \
        pytest.approx(spread[0], rel=1e-9)


# --------------------------------------------------------------------------- compare_sets
def test_compare_sets_on_demo(demo):
    labels, reduced, truth = demo["labels"], demo["reduced"], demo["truth"]
    scores = {s: zarr.array(np.linalg.norm(Z, axis=1), chunks=(512,)) for s, Z in reduced.items()}
    cmp = compare_sets({s: zarr.array(v, chunks=(512,)) for s, v in labels.items()},
                       attributes=demo["meta"], outlier_scores_by_set=scores,
                       reduced_by_set=reduced, sample_size=1000, reference_size=3000,
                       block_rows=700)
    rec = cmp.recommendation
    assert rec.loc["color", "best_set"] == "vdc_color"
    assert rec.loc["type", "best_set"] == "vdc_type"
    assert rec.loc["color", "reason"].startswith("vdc_color: AMI ")
    assert cmp.recommended_set in labels and cmp.reason.startswith(cmp.recommended_set)
    # label agreement equals sklearn on the labels
    ami, ari = cmp.label_agreement["ami"], cmp.label_agreement["ari"]
    assert ami.loc["vdc_color", "osnet"] == pytest.approx(
        adjusted_mutual_info_score(labels["vdc_color"], labels["osnet"]), abs=1e-9)
    assert ari.loc["vdc_type", "efficientnet-b7"] == pytest.approx(
        adjusted_rand_score(labels["vdc_type"], labels["efficientnet-b7"]), abs=1e-9)
    np.testing.assert_allclose(np.diag(ami), 1.0)
    np.testing.assert_allclose(ami, ami.T)
    assert cmp.ami_table.loc["vdc_color", "color"] == pytest.approx(
        adjusted_mutual_info_score(truth["color"], labels["vdc_color"]), abs=1e-9)
    # samples
    assert cmp.score_correlation.shape == (4, 4)
    np.testing.assert_allclose(np.diag(cmp.score_correlation), 1.0)
    knn = cmp.knn_overlap
    np.testing.assert_allclose(np.diag(knn), 1.0)
    assert ((knn >= 0) & (knn <= 1)).all().all()
    na = cmp.neighbour_agreement
    assert na.loc["vdc_type", "type"] > na.loc["vdc_color", "type"] + 0.3
    assert na.loc["vdc_color", "color"] > na.loc["vdc_type", "color"] + 0.3
    assert "silhouette" in cmp.normalized_metrics.columns


def test_compare_sets_without_metadata_uses_metrics(demo):
    labels = {s: demo["labels"][s] for s in ("vdc_color", "osnet")}
    metrics = pd.DataFrame([
        {"set": "vdc_color", "k": 8, "n_rows": N_ROWS, "silhouette": 0.31, "davies_bouldin": 1.1,
         "calinski_harabasz": 900.0, "chosen": True},
        {"set": "vdc_color", "k": 9, "n_rows": N_ROWS, "silhouette": 0.2, "davies_bouldin": 1.3,
         "calinski_harabasz": 700.0, "chosen": False},
        {"set": "osnet", "k": 8, "n_rows": N_ROWS, "silhouette": 0.42, "davies_bouldin": 0.9,
         "calinski_harabasz": 1200.0, "chosen": True},
    ])
    cmp = compare_sets(labels, metrics=metrics)
    assert cmp.recommended_set == "osnet" and "silhouette" in cmp.reason
    assert cmp.recommendation.loc["silhouette", "best_set"] == "osnet"
    nm = cmp.normalized_metrics
    assert nm.loc["osnet", "between_within_ratio"] == pytest.approx(1200.0 * 7 / (N_ROWS - 8))
    assert 0 < nm.loc["osnet", "variance_explained"] < 1
    assert cmp.knn_overlap is None and cmp.score_correlation is None


def test_compare_sets_blockwise_and_errors(demo):
    labels = demo["labels"]
    a = compare_sets(labels)
    b = compare_sets({s: da.from_array(v, chunks=450) for s, v in labels.items()}, block_rows=450)
    pd.testing.assert_frame_equal(a.label_agreement, b.label_agreement, check_exact=False, atol=1e-12)
    with pytest.raises(InputError, match="osnet"):
        compare_sets({"vdc_color": labels["vdc_color"], "osnet": labels["osnet"][:-1]})
    with pytest.raises(InputError, match="integer"):
        profile_clusters(np.array(["a", "b"]))
    with pytest.raises(InputError, match="rows"):
        profile_clusters(labels["osnet"], demo["meta"].iloc[:10])
    with pytest.raises(InputError, match="nonexistent"):
        profile_clusters(labels["osnet"], demo["meta"], attribute_columns=["nonexistent"])


def test_sentence_grammar_on_a_small_table():
    labels = np.repeat([0, 1], 100)
    attributes = pd.DataFrame({
        "color": ["white"] * 100 + ["red"] * 40 + ["blue"] * 35 + ["black"] * 25,
        "type": ["sedan"] * 55 + ["bus"] * 45 + ["suv"] * 100,
    }).astype("category")
    flags = np.zeros(200, bool)
    flags[100:130] = True
    prof = profile_clusters(labels, attributes, outlier_flags=flags)
    assert prof.sentences[0] == ("Cluster 0 (100 images, 50.0% of all): "
                                 "mostly white (100%) sedans (55%) and buses (45%).")
    assert prof.sentences[1] == ("Cluster 1 (100 images, 50.0% of all): mostly SUVs (100%); "
                                 "mixed colours: red 40% (2.0x overall), blue 35%, black 25%; "
                                 "30% flagged as outliers (15% overall).")
    row = prof.table.query("cluster == 1 and attribute == 'color' and value == 'red'").iloc[0]
    assert (row["count"], row["rank"], row["share_overall"]) == (40, 1, 0.2)


def test_recommendation_tie_rule():
    ami = pd.DataFrame({"color": [0.90, 0.89, 0.30], "type": [0.20, 0.05, 0.90],
                        "camera": [0.30, 0.31, 0.0]}, index=["general", "colour_net", "type_net"])
    color = comparison._recommend_attribute("color", ami, ["color", "type"], 0.02)
    assert color["best_set"] == "colour_net" and color["tie"] and "specificity" in color["reason"]
    assert comparison._recommend_attribute("color", ami, ["color", "type"], 0.005)["best_set"] == "general"
    camera = comparison._recommend_attribute("camera", ami, ["color", "type"], 0.02)
    assert camera["best_set"] == "colour_net" and "not rewarded" in camera["reason"]
    best, reason, _ = comparison._recommend_overall(ami, ["color", "type"], [color], None, 0.02)
    assert best == "type_net" and "mean AMI 0.60" in reason  # camera never counts
    sil = pd.Series({"general": 0.5, "colour_net": 0.1, "type_net": 0.2})
    best, reason, _ = comparison._recommend_overall(ami, ["color", "type"], [color], sil, 0.06)
    assert best == "general" and "broken by the higher silhouette" in reason
