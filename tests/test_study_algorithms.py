"""Several clustering algorithms at full scale on the study's reduced rows, compared side by side."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score, silhouette_score

from streamclust.cli import main
from streamclust.datasets.synthetic import load_truth
from streamclust.io.store import CaseStore
from streamclust.study import ALGORITHMS, run_study
from streamclust.study.algorithms import score_labels

SETS = {"vdc_color": "color", "vdc_type": "type"}
ALGS = ("kmeans", "ward", "gmm", "hdbscan", "spectral")


@pytest.fixture(scope="module")
def study(demo_case):
    root = demo_case(2000)
    result = run_study(root / "case.zarr", root / "study", descriptors=list(SETS), k="5:8", n_components=16,
                       algorithms=ALGS, report=False, random_state=0)
    return root, result, load_truth(root / "case")


def test_metrics_have_every_set_and_algorithm_with_one_chosen_k(study):
    root, result, _ = study
    metrics = pd.read_csv(root / "study" / "metrics.csv")
    assert {"bic", "noise_fraction", "algorithm", "chosen"} <= set(metrics.columns)
    counts = metrics.groupby(["set", "algorithm"]).size()
    assert set(counts.index) == {(s, a) for s in SETS for a in ALGS}
    for a in ("kmeans", "ward", "gmm", "spectral"):
        assert (counts.xs(a, level="algorithm") == 4).all()
    assert (counts.xs("hdbscan", level="algorithm") == 1).all()
    assert metrics.groupby(["set", "algorithm"])["chosen"].sum().eq(1).all()
    assert metrics.loc[metrics["algorithm"] == "gmm", "bic"].notna().all()
    assert metrics.loc[metrics["algorithm"] != "gmm", "bic"].isna().all()
    assert metrics.loc[metrics["algorithm"] == "hdbscan", "noise_fraction"].between(0, 1).all()
    assert metrics.loc[metrics["algorithm"] != "hdbscan", "noise_fraction"].isna().all()


def test_ward_metrics_equal_sklearn_and_results_have_the_new_columns(study):
    root, result, truth = study
    run = CaseStore(root / "case.zarr").run(result.run_id)
    metrics = pd.read_csv(root / "study" / "metrics.csv")
    res = pd.read_csv(root / "study" / "results.csv")
    base = (["path", "cluster"] + [f"cluster_{s}" for s in SETS] + ["outlier_score", "is_outlier"]
            + [f"{c}_{s}" for s in SETS for c in ("outlier_score", "is_outlier")])
    assert list(res.columns) == base + [f"cluster_{s}_{a}" for s in SETS for a in ALGS[1:]]
    for name, attribute in SETS.items():
        reduced = run.array(f"{name}/reduced")[:].astype(np.float64)
        labels = run.array(f"{name}/labels_ward")[:]
        assert labels.dtype == np.int32
        row = metrics[(metrics["set"] == name) & (metrics["algorithm"] == "ward") & metrics["chosen"]].iloc[0]
        assert int(row["k"]) == len(np.unique(labels))
        np.testing.assert_allclose(row["calinski_harabasz"], calinski_harabasz_score(reduced, labels), rtol=1e-6)
        np.testing.assert_allclose(row["davies_bouldin"], davies_bouldin_score(reduced, labels), rtol=1e-6)
        aris = {}
        for alg in ALGS:
            col = f"cluster_{name}" if alg == "kmeans" else f"cluster_{name}_{alg}"
            stored = run.array(f"{name}/labels" if alg == "kmeans" else f"{name}/labels_{alg}")[:]
            assert (res[col].to_numpy() == stored).all()
            aris[alg] = adjusted_rand_score(truth[attribute], stored)
        print(f"{name} vs {attribute}: " + ", ".join(f"{a} ARI {v:.3f}" for a, v in aris.items()))
        if name == "vdc_color":
            assert aris["ward"] >= 0.5
            assert aris["spectral"] >= aris["kmeans"] - 0.05


def test_agreement_table_and_summary(study):
    root, result, _ = study
    agreement = pd.read_csv(root / "study" / "algorithms.csv")
    assert list(agreement.columns) == ["set", "algorithm_a", "algorithm_b", "ari", "ami"]
    for name in SETS:
        pairs = {frozenset(p) for p in agreement.loc[agreement["set"] == name, ["algorithm_a", "algorithm_b"]]
                 .itertuples(index=False)}
        assert pairs == {frozenset((a, b)) for i, a in enumerate(ALGS) for b in ALGS[i + 1:]}
    assert agreement["ari"].between(-1, 1).all() and agreement["ami"].between(-1, 1).all()
    summary = json.loads((root / "study" / "summary.json").read_text())
    metrics = pd.read_csv(root / "study" / "metrics.csv")
    chosen = metrics[metrics["chosen"]]
    best = chosen.loc[chosen["silhouette"].idxmax()]
    assert summary["best"]["set"] == best["set"] and summary["best"]["algorithm"] == best["algorithm"]
    assert summary["best"]["k"] == int(best["k"]) and summary["best_rule"]
    assert len(summary["agreement"]) == len(agreement)


def test_cli_rejects_an_unknown_algorithm(tmp_path, capsys):
    status = main(["study", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "out"),
                   "--algorithms", "kmeans,dbscan", "--quiet"])
    assert status == 2
    err = capsys.readouterr().err
    assert "dbscan" in err and all(a in err for a in ALGORITHMS)


def test_cli_spectral_writes_its_labels_metrics_and_agreement(demo_case, tmp_path):
    import shutil

    store = tmp_path / "case.zarr"  # a copy: the shared case keeps no run of this test
    shutil.copytree(demo_case(300) / "case.zarr", store)
    out = tmp_path / "out"
    assert main(["study", str(store), "-o", str(out), "--descriptors", "vdc_color", "--k", "3:5",
                 "--components", "8", "--algorithms", "kmeans,spectral", "--no-report", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    labels = CaseStore(store).run(summary["run_id"]).array("vdc_color/labels_spectral")
    assert labels.shape == (300,) and labels.dtype == np.int32
    metrics = pd.read_csv(out / "metrics.csv")
    rows = metrics[metrics["algorithm"] == "spectral"]
    assert sorted(rows["k"]) == [3, 4, 5] and rows["chosen"].sum() == 1
    assert rows[["silhouette", "calinski_harabasz", "davies_bouldin"]].notna().all().all()
    assert int(rows.loc[rows["chosen"], "k"].iloc[0]) == len(np.unique(labels[:]))
    agreement = pd.read_csv(out / "algorithms.csv")
    assert agreement[["algorithm_a", "algorithm_b"]].values.tolist() == [["kmeans", "spectral"]]
    assert (pd.read_csv(out / "results.csv")["cluster_vdc_color_spectral"].to_numpy() == labels[:]).all()


def test_hdbscan_noise_overlaps_the_planted_outliers(study):
    root, result, truth = study
    res = pd.read_csv(root / "study" / "results.csv")
    outlier = truth["is_outlier"].to_numpy()
    for name in ("vdc_color", "vdc_type"):
        noise = res[f"cluster_{name}_hdbscan"].to_numpy() == -1
        precision = outlier[noise].mean() if noise.any() else 0.0
        recall = noise[outlier].mean()
        print(f"{name}: HDBSCAN noise {noise.mean():.1%} of rows, precision vs planted outliers "
              f"{precision:.3f} (chance {outlier.mean():.3f}), recall {recall:.3f}")
        assert noise.any()
        assert precision > 2 * outlier.mean()


def test_scores_of_several_labellings_equal_sklearns_each():
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(c, 1.0, size=(300, 5)) for c in (0, 4, 8)]).astype(np.float32)
    idx = np.sort(rng.choice(len(X), 400, replace=False))
    labelings = [np.repeat([0, 1, 2], 300), rng.integers(0, 4, len(X)), np.where(np.arange(900) < 450, -1, 1),
                 np.zeros(900, dtype=int)]
    scores = score_labels(X, labelings, (idx, X[idx]), budget=2**28)
    for labels, got in zip(labelings[:3], scores):
        np.testing.assert_allclose(got["silhouette"], silhouette_score(X[idx].astype(np.float64), labels[idx]),
                                   rtol=1e-9)
        np.testing.assert_allclose(got["calinski_harabasz"], calinski_harabasz_score(X, labels), rtol=1e-6)
        np.testing.assert_allclose(got["davies_bouldin"], davies_bouldin_score(X, labels), rtol=1e-6)
    assert scores[2]["noise_fraction"] == 0.5
    assert np.isnan(scores[3]["silhouette"]) and np.isnan(scores[3]["calinski_harabasz"])
    # scored one at a time (as a budget that holds one labelling does): the same
    one_by_one = [score_labels(X, [labels], (idx, X[idx]), budget=2**28)[0] for labels in labelings]
    pd.testing.assert_frame_equal(pd.DataFrame(one_by_one), pd.DataFrame(scores), rtol=1e-12)
