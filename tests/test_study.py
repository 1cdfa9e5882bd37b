"""The study end to end on a demo case: outputs, quality against planted truth, crash safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score

from streamclust.datasets.synthetic import load_truth
from streamclust.errors import InputError
from streamclust.io.persist import load_model_dir
from streamclust.io.store import CaseStore
from streamclust.study import choose_k, parse_k_range, parse_mix, run_study
from streamclust.study import steps as study_steps

N_ROWS = 3000
K = "4:9"


@pytest.fixture(scope="module")
def demo(demo_case):
    root = demo_case(N_ROWS)
    result = run_study(root / "case.zarr", root / "study", k=K, n_components=32, random_state=0,
                       metadata=root / "case" / "vehicle_info.txt")
    return root, result, load_truth(root / "case")


def test_outputs_have_the_promised_layout(demo):
    root, result, truth = demo
    res = pd.read_csv(root / "study" / "results.csv")
    sets = ["efficientnet-b7", "osnet", "vdc_color", "vdc_type"]
    assert list(res.columns) == (["path", "cluster"] + [f"cluster_{s}" for s in sets] + ["outlier_score", "is_outlier"]
                                 + [f"{c}_{s}" for s in sets for c in ("outlier_score", "is_outlier")])
    assert len(res) == N_ROWS and (res["path"] == truth["path"]).all()
    assert (res["cluster"] == res[f"cluster_{result.recommended}"]).all()
    metrics = pd.read_csv(root / "study" / "metrics.csv")
    assert len(metrics) == 4 * len(parse_k_range(K))
    assert metrics.groupby("set")["chosen"].sum().eq(1).all()
    for name, set_result in result.sets.items():
        chosen = metrics[(metrics["set"] == name) & metrics["chosen"]]
        assert int(chosen["k"].iloc[0]) == set_result.k == res[f"cluster_{name}"].nunique()
        doc, arrays = load_model_dir(set_result.model_dir, kind="descriptor-set-model")
        assert arrays["kmeans_cluster_centers"].shape == (set_result.k, set_result.n_components)
    store = CaseStore(root / "case.zarr")
    assert [r.run_id for r in store.runs()] == [result.run_id]


@pytest.mark.parametrize("name,attribute", [("vdc_color", "color"), ("vdc_type", "type")])
def test_quality_matches_in_memory_kmeans_on_the_same_reduced_data(demo, name, attribute):
    root, result, truth = demo
    run = CaseStore(root / "case.zarr").run(result.run_id)
    reduced = run.array(f"{name}/reduced")[:]
    labels = run.array(f"{name}/labels")[:]
    k = result.sets[name].k
    ours = adjusted_rand_score(truth[attribute], labels)
    reference = adjusted_rand_score(
        truth[attribute], KMeans(k, n_init=3, random_state=0).fit_predict(reduced.astype(np.float64))
    )
    print(f"{name} vs {attribute}: streaming ARI {ours:.3f}, in-memory KMeans ARI {reference:.3f} (k={k})")
    assert ours >= reference - 0.02
    assert ours > 0.5


def test_streaming_metrics_equal_sklearn(demo):
    root, result, _ = demo
    run = CaseStore(root / "case.zarr").run(result.run_id)
    metrics = pd.read_csv(root / "study" / "metrics.csv")
    for name, _set_result in result.sets.items():
        reduced = run.array(f"{name}/reduced")[:].astype(np.float64)
        labels = run.array(f"{name}/labels")[:]
        row = metrics[(metrics["set"] == name) & metrics["chosen"]].iloc[0]
        np.testing.assert_allclose(row["calinski_harabasz"], calinski_harabasz_score(reduced, labels), rtol=1e-6)
        np.testing.assert_allclose(row["davies_bouldin"], davies_bouldin_score(reduced, labels), rtol=1e-6)


def test_same_seed_same_labels(demo, tmp_path):
    root, result, _ = demo
    again = run_study(root / "case.zarr", tmp_path / "again", k=K, n_components=32, random_state=0,
                      descriptors=["vdc_type"])
    a = pd.read_csv(root / "study" / "results.csv")["cluster_vdc_type"]
    b = pd.read_csv(tmp_path / "again" / "results.csv")["cluster_vdc_type"]
    assert again.sets["vdc_type"].k == result.sets["vdc_type"].k and (a == b).all()


def test_same_seed_same_outlier_scores_on_one_thread_and_on_two(demo, tmp_path):
    import dask

    root, _, _ = demo
    scores = []
    for i, config in enumerate(({"scheduler": "synchronous"}, {"scheduler": "threads", "num_workers": 2})):
        with dask.config.set(config):
            run_study(root / "case.zarr", tmp_path / f"s{i}", k="4:5", n_components=32, random_state=0,
                      descriptors=["vdc_color"], report=False)
        scores.append(pd.read_csv(tmp_path / f"s{i}" / "results.csv")["outlier_score_vdc_color"].to_numpy())
    np.testing.assert_array_equal(scores[0], scores[1])


def test_crash_mid_study_leaves_no_complete_run(demo, tmp_path, monkeypatch):
    root, result, _ = demo
    before = [r.run_id for r in CaseStore(root / "case.zarr").runs()]
    calls = {"n": 0}
    original = study_steps.store_labels

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(study_steps, "store_labels", crash_on_second)
    with pytest.raises(OSError, match="No space left"):
        run_study(root / "case.zarr", tmp_path / "crashed", k=K, n_components=32,
                  descriptors=["vdc_color", "vdc_type"])
    store = CaseStore(root / "case.zarr")
    assert [r.run_id for r in store.runs()] == before  # earlier runs intact, the crashed one not listed
    assert result.run_id in before
    failed = [r for r in store.runs(include_incomplete=True) if r.status == "failed"]
    assert len(failed) == 1 and "No space left" in failed[0].group.attrs["error"]
    assert not (tmp_path / "crashed" / "results.csv").exists()


def test_sentences_and_recommendation_follow_the_planted_truth(demo):
    root, result, truth = demo
    clusters = pd.read_csv(root / "study" / "clusters.csv")
    assert set(clusters["set"]) == set(result.sets) and clusters["sentence"].str.len().gt(10).all()
    res = pd.read_csv(root / "study" / "results.csv")
    majority = truth.groupby(res["cluster_vdc_color"])["color"].agg(lambda s: s.mode().iloc[0])
    sentences = clusters[clusters["set"] == "vdc_color"].set_index("cluster")["sentence"]
    named = [c for c in majority.index if majority[c] in sentences[c]]
    share = res["cluster_vdc_color"].isin(named).mean()
    print(f"vdc_color sentences name the majority colour for {share:.1%} of rows")
    assert share >= 0.9
    recommendation = pd.read_csv(root / "study" / "comparison.csv", index_col=0)
    assert recommendation.loc["color", "best_set"] == "vdc_color"
    assert recommendation.loc["type", "best_set"] == "vdc_type"
    assert result.recommended == result.comparison.recommended_set


def test_default_outlier_score_finds_the_planted_outliers_grouped_ones_included(demo):
    """The combined score (k-distance, row norm, residual) on the demo's planted outliers, a third
    of which come in groups of look-alike bad pictures; measured 0.974-0.985 overall and
    0.978-0.999 on the grouped ones at 3,000 rows."""
    from sklearn.metrics import roc_auc_score

    root, result, truth = demo
    res = pd.read_csv(root / "study" / "results.csv")
    y = truth["is_outlier"].to_numpy()
    grouped = truth["outlier_group"].to_numpy() >= 0
    assert grouped.sum() >= 10
    for name in result.sets:
        score = res[f"outlier_score_{name}"].to_numpy()
        assert roc_auc_score(y, score) >= 0.95, name
        assert roc_auc_score(y[~y | grouped], score[~y | grouped]) >= 0.95, name
        assert result.sets[name].outlier_rule.startswith("root of the summed squares of the positive robust")
    top = pd.read_csv(root / "study" / "outliers.csv")
    assert set(top["reason"]) <= {"neighbours", "norm", "residual"} and top["reason"].nunique() >= 2


def test_lof_option_and_known_outliers_are_judged(demo, tmp_path):
    import json

    from sklearn.metrics import roc_auc_score

    root, _, truth = demo
    result = run_study(root / "case.zarr", tmp_path / "study", k="4:5", n_components=32, random_state=0,
                       descriptors=["osnet"], outlier_score="lof", outlier_truth=root / "case" / "truth.csv",
                       report=False)
    res = pd.read_csv(tmp_path / "study" / "results.csv")
    y, flags = truth["is_outlier"].to_numpy(), res["is_outlier_osnet"].to_numpy()
    judged = result.sets["osnet"].outlier_truth
    assert judged["rows"] == N_ROWS and judged["outliers"] == y.sum() and judged["flagged"] == flags.sum()
    assert judged["precision"] == round((flags & y).sum() / flags.sum(), 4)
    assert judged["recall"] == round((flags & y).sum() / y.sum(), 4)
    assert judged["roc_auc"] == round(roc_auc_score(y, res["outlier_score_osnet"]), 4)
    assert "MAD of log-scores" in result.sets["osnet"].outlier_rule     # the LOF detector's own rule
    top = pd.read_csv(tmp_path / "study" / "outliers.csv", keep_default_na=False)
    expected = truth.set_index("path").loc[top["path"], "is_outlier"].astype(str).to_numpy()
    assert (top["known_outlier"].astype(str).to_numpy() == expected).all()
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert summary["sets"][0]["known_outliers_precision"] == judged["precision"]


def test_outlier_truth_errors_name_the_file_and_row(demo, tmp_path):
    from streamclust.study import read_outlier_truth

    root, _, truth = demo
    ids = truth["path"].to_numpy()
    bad = tmp_path / "bad.csv"
    bad.write_text("path,is_outlier\n" + f"{ids[0]},True\n{ids[1]},maybe\n")
    with pytest.raises(InputError, match=r"bad.csv: row 3: is_outlier='maybe'"):
        read_outlier_truth(bad, ids)
    other = tmp_path / "other.csv"
    other.write_text("path,is_outlier\nelsewhere/1.jpg,True\n")
    with pytest.raises(InputError, match="none of its 1 paths"):
        read_outlier_truth(other, ids)
    partial = tmp_path / "partial.csv"
    partial.write_text("path,is_outlier\n" + ids[5].replace("/", "\\") + ",1\n" + f"{ids[7]},0\n")
    known = read_outlier_truth(partial, ids)
    assert known[5] == 1 and known[7] == 0 and (np.delete(known, [5, 7]) == -1).all()
    with pytest.raises(InputError, match="outlier_score='iforest' should be one of combined"):
        run_study(root / "case.zarr", tmp_path / "s", outlier_score="iforest")


def test_choose_k_rule():
    m = pd.DataFrame({"k": [2, 3, 4, 5], "silhouette": [0.30, 0.52, 0.515, 0.40],
                      "davies_bouldin": [1.0, 0.9, 0.7, 0.8]})
    assert choose_k(m) == 4  # 0.515 ties with 0.52 (within 0.01) and has the lower DB
    m.loc[2, "silhouette"] = 0.45
    assert choose_k(m) == 3


@pytest.mark.parametrize("spec,ks", [("2:5", [2, 3, 4, 5]), ("8", [8]), ("4,8,12", [4, 8, 12]), (6, [6])])
def test_parse_k_range(spec, ks):
    assert parse_k_range(spec) == ks


MIX = "vdc_color+vdc_type"


@pytest.fixture(scope="module")
def mixed(demo):
    root, _, truth = demo
    result = run_study(root / "case.zarr", root / "mix", k=K, n_components=32, random_state=0,
                       descriptors=["vdc_color"], mix=[MIX], metadata=root / "case" / "vehicle_info.txt",
                       report=False)
    return root, result, truth


def test_mixture_is_studied_like_a_set(mixed):
    root, result, truth = mixed
    assert list(result.sets) == ["vdc_color", "vdc_type", MIX]  # the member missing from descriptors too
    mix = result.sets[MIX]
    assert (mix.n_features, mix.n_components) == (128 + 512, 64)
    res = pd.read_csv(root / "mix" / "results.csv")
    assert {f"cluster_{MIX}", f"outlier_score_{MIX}", f"is_outlier_{MIX}"} <= set(res.columns)
    assert res[f"cluster_{MIX}"].nunique() == mix.k
    metrics = pd.read_csv(root / "mix" / "metrics.csv")
    assert len(metrics[metrics["set"] == MIX]) == len(parse_k_range(K))
    assert metrics.loc[metrics["set"] == MIX, "chosen"].sum() == 1
    clusters = pd.read_csv(root / "mix" / "clusters.csv")
    assert len(clusters[clusters["set"] == MIX]) == mix.k
    assert clusters.loc[clusters["set"] == MIX, "sentence"].str.len().gt(10).all()
    comparison = result.comparison
    assert MIX in comparison.sets and MIX in comparison.ami_table.index
    ari = adjusted_rand_score(truth["color"].astype(str) + "/" + truth["type"].astype(str), res[f"cluster_{MIX}"])
    print(f"{MIX}: k={mix.k}, ARI with colour x type {ari:.3f}; recommended set {result.recommended}")


def test_mixture_balancing_gives_each_member_its_weight_share(mixed):
    root, result, _ = mixed
    run = CaseStore(root / "case.zarr").run(result.run_id)
    mixed_rows = run.array(f"{MIX}/reduced")[:].astype(np.float64)
    widths = [result.sets["vdc_color"].n_components, result.sets["vdc_type"].n_components]
    member_var = [mixed_rows[:, :widths[0]].var(axis=0).sum(), mixed_rows[:, widths[0]:].var(axis=0).sum()]
    shares = np.array(member_var) / sum(member_var)
    print(f"{MIX}: variance shares {shares.round(4).tolist()} (weights 1, 1)")
    np.testing.assert_allclose(shares, [0.5, 0.5], atol=1e-4)
    np.testing.assert_allclose(sum(member_var), 1.0, rtol=1e-4)
    for name in ("vdc_color", "vdc_type"):  # the members' own reduced rows were unequal before
        raw = run.array(f"{name}/reduced")[:].astype(np.float64)
        np.testing.assert_allclose(result.sets[MIX].mixture["member_total_variance"][name],
                                   raw.var(axis=0).sum(), rtol=1e-4)


def test_mixture_model_labels_new_rows_from_the_member_descriptors(mixed):
    from streamclust.model.descriptor_model import DescriptorSetModel

    root, result, _ = mixed
    store = CaseStore(root / "case.zarr")
    model = DescriptorSetModel.load(result.sets[MIX].model_dir)
    assert model.members == ["vdc_color", "vdc_type"]
    rows = np.hstack([store.descriptor("vdc_color")[:400], store.descriptor("vdc_type")[:400]])
    out = model.assign(rows)
    expected = store.run(result.run_id).array(f"{MIX}/labels")[:400]
    np.testing.assert_array_equal(out["cluster"], expected)


def test_assign_a_mixture_from_a_case_folder(mixed, tmp_path):
    from streamclust.model.assign import assign_new

    root, result, _ = mixed
    assign_new(result.sets[MIX].model_dir, root / "case", tmp_path / "new.csv")
    res = pd.read_csv(root / "mix" / "results.csv")
    new = pd.read_csv(tmp_path / "new.csv")
    assert (new["path"] == res["path"]).all() and (new["cluster"] == res[f"cluster_{MIX}"]).all()
    np.testing.assert_allclose(new["outlier_score"], res[f"outlier_score_{MIX}"], rtol=1e-5)
    with pytest.raises(InputError, match="mixes the sets vdc_color, vdc_type"):
        assign_new(result.sets[MIX].model_dir, root / "case" / "descriptors" / "vdc_color.pickle",
                   tmp_path / "one.csv")


@pytest.mark.parametrize("spec,message", [
    ("vdc_color", "two or more"), ("vdc_color+nope", "unknown descriptor set(s) 'nope'"),
    ("vdc_color+vdc_type:1", "2 positive numbers"), ("vdc_color+vdc_type:1,-1", "2 positive numbers"),
    ("vdc_color+vdc_color", "twice"), (["vdc_color+vdc_type", "vdc_color+vdc_type:2,1"], "mixed twice"),
])
def test_parse_mix_errors_name_the_parameter_and_the_sets(spec, message):
    with pytest.raises(InputError, match="--mix") as exc:
        parse_mix(spec, ["vdc_color", "vdc_type"])
    assert message in str(exc.value)
    if "unknown" in message:
        assert "available sets: vdc_color, vdc_type" in str(exc.value)


def test_parse_mix_weights():
    (mix,) = parse_mix("osnet+vdc_color:2,1", ["osnet", "vdc_color"])
    assert mix.name == "osnet+vdc_color" and mix.weights == (2.0, 1.0)
    assert parse_mix(None, []) == []


def test_progress_lines_reach_logging_and_the_log_callback(demo, tmp_path, caplog):
    import logging

    root, _, _ = demo
    lines: list[str] = []
    package = logging.getLogger("streamclust")
    level, handlers = package.level, list(package.handlers)
    with caplog.at_level(logging.INFO, logger="streamclust"):
        run_study(root / "case.zarr", tmp_path / "logged", descriptors=["vdc_color"], k="3:4", n_components=8,
                  report=False, log=lines.append)
    assert any(line.startswith("vdc_color: PCA 128 -> 8 dims") for line in lines)
    assert any(line.startswith("vdc_color: k=") and " chosen from 3..4" in line for line in lines)
    assert any(line.startswith("recommended set: vdc_color") for line in lines)
    logged = [r for r in caplog.records if r.name.startswith("streamclust.study")]
    assert [r.getMessage() for r in logged] == lines
    assert {r.getMessage() for r in logged if r.levelno == logging.WARNING} == \
        {line for line in lines if "widen the range" in line}  # k=3 or 4 of 3..4 is at the edge
    assert all(r.levelno in (logging.INFO, logging.WARNING) for r in logged)
    assert (package.level, package.handlers) == (level, handlers)  # the callback's handler is gone


def test_compare_studies_script_finds_a_changed_byte(demo, tmp_path):
    import shutil
    import subprocess
    import sys

    root, _, _ = demo
    copy = tmp_path / "copy"
    shutil.copytree(root / "study", copy)
    script = [sys.executable, str(Path(__file__).parents[1] / "scripts" / "compare_studies.py")]
    same = subprocess.run([*script, str(root / "study"), str(copy)], capture_output=True, text=True)
    assert same.returncode == 0 and same.stdout.strip().endswith("files identical"), same.stdout + same.stderr
    model = next((copy / "models").iterdir())
    shares = np.load(model / "train_cluster_shares.npy")
    shares[0] = np.nextafter(shares[0], 1.0)  # one ulp
    np.save(model / "train_cluster_shares.npy", shares)
    (copy / "metrics.csv").write_text((copy / "metrics.csv").read_text().replace("kmeans", "kmeanz", 1))
    differ = subprocess.run([*script, str(root / "study"), str(copy)], capture_output=True, text=True)
    assert differ.returncode == 1
    assert f"DIFF     models/{model.name}/train_cluster_shares.npy" in differ.stdout
    assert "DIFF     metrics.csv" in differ.stdout and "2 differ" in differ.stdout


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_bad_n_top_outliers_is_refused_before_any_work(bad, tmp_path):
    with pytest.raises(InputError, match=r"n_top_outliers=.* should be an integer >= 0"):
        run_study(tmp_path / "no-store.zarr", tmp_path / "out", n_top_outliers=bad)
    assert not (tmp_path / "out").exists()


def test_results_parquet_holds_the_csv_rows_typed(demo):
    root, result, _ = demo
    csv = pd.read_csv(result.results_csv)
    parquet = pd.read_parquet(result.results_parquet)
    assert list(parquet.columns) == list(csv.columns) and len(parquet) == N_ROWS
    assert parquet["is_outlier"].dtype == bool and parquet["cluster"].dtype == np.int32
    assert parquet["outlier_score"].dtype == np.float32
    pd.testing.assert_series_equal(parquet["path"].astype(object), csv["path"].astype(object), check_dtype=False)
    for column in csv.columns.drop("path"):
        np.testing.assert_allclose(parquet[column].to_numpy(np.float64), csv[column].to_numpy(np.float64),
                                   rtol=1e-5, err_msg=column)  # the CSV rounds to 6 significant digits
    assert result.results_parquet.stat().st_size < result.results_csv.stat().st_size / 2


def test_k_at_the_edge_of_the_range_is_said_in_the_log_summary_and_report(demo, tmp_path):
    from streamclust.study.rules import k_edge_note

    assert k_edge_note(15, list(range(2, 16))) == ("k=15 is the largest of the range 2..15: a larger k may "
                                                   "score better; widen the range, e.g. --k 2:30")
    assert k_edge_note(3, [3, 4, 5]).startswith("k=3 is the smallest of the range 3..5")
    assert k_edge_note(2, [2, 3, 4]) is None and k_edge_note(3, [2, 3, 4]) is None and k_edge_note(8, [8]) is None
    root, _, _ = demo
    lines: list[str] = []
    result = run_study(root / "case.zarr", tmp_path / "edge", descriptors=["vdc_color"], k="3:4", n_components=8,
                       algorithms="kmeans,gmm", log=lines.append)
    res = result.sets["vdc_color"]
    assert res.k_note == k_edge_note(res.k, [3, 4]) and res.k_note  # with two k, either is an edge
    assert f"vdc_color: {res.k_note}" in lines
    gmm_k = int(result.algorithm_metrics.query("algorithm == 'gmm' and chosen")["k"].iloc[0])
    assert f"vdc_color: gmm: {k_edge_note(gmm_k, [3, 4])}" in lines
    summary = json.loads((tmp_path / "edge" / "summary.json").read_text())
    assert summary["k_at_range_edge"] == {"vdc_color": res.k_note}
    assert "widen the range" in (tmp_path / "edge" / "report.html").read_text()
