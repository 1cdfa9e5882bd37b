"""The report compares the clustering algorithms of every set (issue #15, item 1): one table of every
algorithm's chosen k and metrics, their agreement, one density panel of all rows per algorithm, what
their clusters follow and one sentence per cluster, the recommended algorithm with its reason; the
same in summary.json, and every algorithm's clusters in clusters.csv."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_report import _check_page, _tags

from streamclust.io.ingest import convert_case
from streamclust.io.store import CaseStore
from streamclust.report import matched_label_colors
from streamclust.report.figures import NOISE_COLOR, cluster_colors
from streamclust.study import run_study
from streamclust.study.algorithm_comparison import ALGORITHM_RULE, MAX_NOISE_SHARE, recommend_algorithm

N_ROWS = 2000
ALGS = ["kmeans", "ward", "gmm", "hdbscan"]
SETS = ["vdc_color", "vdc_type"]
K = "4:7"


def _write_images(case, paths: list[str]) -> None:
    """An images.zip of tiny one-colour JPEGs, one per path (the montages need only something to show)."""
    colours = []
    for i in range(5):
        buf = io.BytesIO()
        Image.new("RGB", (16, 12), (40 * i, 120, 200 - 40 * i)).save(buf, format="JPEG")
        colours.append(buf.getvalue())
    with zipfile.ZipFile(case / "images.zip", "w", zipfile.ZIP_STORED) as zf:
        for i, path in enumerate(paths):
            zf.writestr(path, colours[i % 5])


@pytest.fixture(scope="module")
def study(demo_case, tmp_path_factory):
    """The issue's scenario on a copy of the 2,000-row demo case: its folder (vehicle_info.txt and an
    images.zip) converted, then one study of 2 sets x 4 algorithms given neither metadata nor images:
    it uses those convert recorded."""
    base = tmp_path_factory.mktemp("algorithm-report")
    shutil.copytree(demo_case(N_ROWS) / "case", base / "case")
    paths = pd.read_csv(base / "case" / "images_paths.csv")["paths"].str.replace("\\", "/").tolist()
    _write_images(base / "case", paths)
    convert_case(base / "case", base / "case.zarr")
    result = run_study(base / "case.zarr", base / "study", descriptors=SETS, k=K, n_components=16, algorithms=ALGS,
                       random_state=0)
    return base / "study", result


def _section(text: str, name: str) -> str:
    """The report's algorithm comparison of set ``name`` (up to the next h3)."""
    anchor = "set-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + "-algorithms"
    start = text.index(f'<h3 id="{anchor}">Algorithm comparison</h3>')
    end = text.find("<h3", start + 10)
    return text[start:end]


def test_report_compares_every_algorithm_of_every_set(study):
    out, result = study
    text = (out / "report.html").read_text(encoding="utf-8")
    metrics = pd.read_csv(out / "metrics.csv")
    for name in SETS:
        section = _section(text, name)
        comparison = result.algorithm_comparison[name]
        rows = re.findall(r"<tr( class=\"chosen\")?><td>(\w+)</td><td class=num>(\d+)</td>", section)
        chosen_k = metrics[(metrics["set"] == name) & metrics["chosen"]].set_index("algorithm")["k"]
        assert [(alg, int(k)) for _, alg, k in rows] == [(alg, int(chosen_k[alg])) for alg in ALGS]
        assert [alg for chosen, alg, _ in rows if chosen] == [comparison.recommended]
        assert "noise share" in section and "BIC" in section and "Davies-Bouldin" in section
        reason = html.escape(comparison.reason.removeprefix(f"{comparison.recommended}: "), quote=True)
        assert f"Recommended algorithm: {comparison.recommended}</strong>: {reason}." in section
        assert html.escape(ALGORITHM_RULE, quote=True) in section
        assert "Agreement (ARI)" in section and "Agreement (AMI)" in section
        # what each algorithm's clusters follow, then one sentence per cluster per algorithm
        for alg in ALGS:
            assert re.search(rf"<li>{alg} separates \w+ best: AMI", section), alg
            sentences = comparison.profiles[alg].sentences
            assert f"{alg}: one sentence per cluster ({len(sentences)})" in section
            assert all(html.escape(s, quote=True) in section for s in sentences.values())
        # one picture, one panel per algorithm, its file beside the report
        srcs = [a["src"] for t, a in _tags(section) if t == "img"]
        assert srcs == [f"report_files/{name}-algorithms.png"] and (out / srcs[0]).stat().st_size > 10_000
    assert text.count("Algorithm comparison</h3>") == len(SETS)
    assert "<h3>Algorithm recommended per set</h3>" in text
    # the k-means cards say whose clusters they are, with montages from the recorded images.zip
    assert f"<h3>The {result.sets['vdc_color'].k} k-means clusters</h3>" in text
    for name in SETS:
        assert all(f'src="report_files/{name}-cluster{c}.jpg"' in text for c in range(result.sets[name].k))


def test_summary_carries_the_algorithm_comparison(study):
    out, result = study
    summary = json.loads((out / "summary.json").read_text())
    metrics = pd.read_csv(out / "metrics.csv")
    agreement = pd.read_csv(out / "algorithms.csv")
    assert summary["algorithm_rule"] == ALGORITHM_RULE
    assert set(summary["algorithm_comparison"]) == set(SETS)
    for name, entry in summary["algorithm_comparison"].items():
        assert set(entry) == {"algorithms", "agreement", "recommended", "reason"}
        assert list(entry["algorithms"]) == ALGS and entry["recommended"] in ALGS and entry["reason"]
        assert entry["reason"].startswith(entry["recommended"] + ":")
        for alg, row in entry["algorithms"].items():
            chosen = metrics[(metrics["set"] == name) & (metrics["algorithm"] == alg) & metrics["chosen"]].iloc[0]
            assert row["k"] == int(chosen["k"])
            for col in ("silhouette", "calinski_harabasz", "davies_bouldin"):
                assert row[col] == pytest.approx(chosen[col])
            assert (row["bic"] is not None) == (alg == "gmm")
            assert (row["noise_fraction"] is not None) == (alg == "hdbscan")
            assert row["recommended"] == (alg == entry["recommended"])
            assert set(row["attributes"]) == {"color", "type", "model", "camera"}
            best = max(row["attributes"], key=lambda a: row["attributes"][a]["ami"])
            assert row["best_attribute"] == best and row["best_attribute_line"].startswith(f"{alg} separates {best}")
        for pair in agreement[agreement["set"] == name].itertuples():
            assert entry["agreement"]["ari"][pair.algorithm_a][pair.algorithm_b] == pytest.approx(pair.ari)
            assert entry["agreement"]["ami"][pair.algorithm_b][pair.algorithm_a] == pytest.approx(pair.ami)
    # on the planted truth, the colour set's algorithms separate colour and the type set's type
    for name, attribute in (("vdc_color", "color"), ("vdc_type", "type")):
        for alg in ALGS:
            assert summary["algorithm_comparison"][name]["algorithms"][alg]["best_attribute"] == attribute


def test_clusters_csv_has_every_algorithms_clusters(study):
    out, result = study
    clusters = pd.read_csv(out / "clusters.csv")
    kmeans_columns = ["cluster", *result.profiles["vdc_color"].clusters.columns, "set"]
    assert list(clusters.columns) == kmeans_columns + ["algorithm"]
    res = pd.read_csv(out / "results.csv")
    for name in SETS:
        mine = clusters[clusters["set"] == name]
        assert list(dict.fromkeys(mine["algorithm"])) == ALGS  # k-means rows first
        for alg in ALGS:
            rows = mine[mine["algorithm"] == alg]
            labels = res[f"cluster_{name}" if alg == "kmeans" else f"cluster_{name}_{alg}"]
            assert sorted(rows["cluster"]) == sorted(labels.unique())
            sizes = labels.value_counts()
            assert (rows.set_index("cluster")["size"] == sizes.reindex(rows["cluster"]).to_numpy()).all()
            prefix = f"{name}: " if alg == "kmeans" else f"{name} ({alg}): "
            assert rows["sentence"].str.startswith(prefix).all()
        # the k-means rows are the set's profile, as before
        kmeans = mine[mine["algorithm"] == "kmeans"].drop(columns=["set", "algorithm"]).set_index("cluster")
        expected = result.profiles[name].clusters
        assert kmeans["sentence"].tolist() == expected["sentence"].tolist()
        np.testing.assert_allclose(kmeans["share"], expected["share"])
    assert (clusters.loc[clusters["algorithm"] == "hdbscan", "cluster"] == -1).any()


def test_report_with_every_algorithm_renders_in_chromium(study, tmp_path):
    out, _ = study
    page = out / "report.html"
    check = _check_page(page, tmp_path)
    assert check["errors"] == [] and check["broken"] == []
    assert check["images"] == len(re.findall(r"<img ", page.read_text(encoding="utf-8"))) >= 4 * len(SETS)


def test_overlap_with_kmeans_counts_every_row_of_the_stored_labels(study):
    """The overlap tables the panels' colours are matched by: every stored label of every algorithm,
    every row counted once; k-means against itself is diagonal."""
    _, result = study
    store = CaseStore(result.out_dir.parent / "case.zarr")
    run = store.run(result.run_id)
    for name in SETS:
        comparison = result.algorithm_comparison[name]
        for alg in ALGS:
            overlap = comparison.overlap[alg]
            assert int(overlap.to_numpy().sum()) == N_ROWS
            stored = run.array(f"{name}/labels" if alg == "kmeans" else f"{name}/labels_{alg}")[:]
            assert list(overlap.index) == sorted(np.unique(stored))
        kmeans = comparison.overlap["kmeans"].to_numpy()
        assert (kmeans == np.diag(np.diag(kmeans))).all()


# --------------------------------------------------------------------------
# The rule, on its own
# --------------------------------------------------------------------------
def _table(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["algorithm", "k", "silhouette", "davies_bouldin", "noise_fraction",
                                       "k_at_range_edge"])


def test_rule_leaves_out_edges_and_noisy_algorithms():
    table = _table([("kmeans", 15, 0.60, 0.7, np.nan, True), ("ward", 9, 0.50, 0.8, np.nan, False),
                    ("gmm", 8, 0.45, 0.9, np.nan, False), ("hdbscan", 30, 0.70, 0.6, 0.62, False)])
    name, reason, eligible = recommend_algorithm(table)
    assert name == "ward" and eligible.tolist() == [False, True, True, False]
    assert reason.startswith("ward: the highest silhouette, 0.500 at k=9 vs 0.450 for gmm")
    assert "kmeans (k=15 at the edge of the k range)" in reason
    assert f"hdbscan ({0.62:.0%} of the rows left as noise)" in reason and MAX_NOISE_SHARE == 0.5


def test_rule_breaks_ties_by_metadata_then_davies_bouldin_and_falls_back_when_none_passes():
    table = _table([("kmeans", 6, 0.500, 0.90, np.nan, False), ("ward", 6, 0.495, 0.70, np.nan, False),
                    ("gmm", 6, 0.420, 0.50, np.nan, False)])
    name, reason, _ = recommend_algorithm(table, pd.Series({"kmeans": 0.30, "ward": 0.45, "gmm": 0.9}))
    assert name == "ward" and "within 0.01 of the highest (0.500, kmeans)" in reason
    assert "the highest mean AMI with the vehicle attributes (0.450 vs 0.300 for kmeans)" in reason
    name, reason, _ = recommend_algorithm(table)  # no metadata: the lower Davies-Bouldin
    assert name == "ward" and "the lowest Davies-Bouldin index (0.700 vs 0.900 for kmeans)" in reason
    edges = table.assign(k_at_range_edge=True)
    name, reason, eligible = recommend_algorithm(edges)
    assert name == "ward" and not eligible.any() and "so all were compared: widen the k range" in reason


def test_matched_colors_follow_the_reference_clusters():
    overlap = np.array([[0, 5, 90], [80, 3, 1], [2, 70, 0], [1, 1, 1], [3, 2, 4]])  # rows: labels -1, 0, 1, 2, 3
    colors = matched_label_colors([-1, 0, 1, 2, 3], overlap)
    palette = cluster_colors(3 + 4)
    np.testing.assert_array_equal(colors[0], NOISE_COLOR)
    np.testing.assert_array_equal(colors[1:3], palette[[0, 1]])  # label 0 ~ reference 0, label 1 ~ reference 1
    np.testing.assert_array_equal(colors[4], palette[2])  # label 3 overlaps reference 2 most
    np.testing.assert_array_equal(colors[3], palette[3])  # label 2 is left over: the next colour
