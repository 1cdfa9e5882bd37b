"""Tests of streamclust.report (write_report): a report built from a small demo case, checked as
HTML and rendered in headless Chromium (no console errors, every image loaded)."""

from __future__ import annotations

import html.parser
import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)
from sklearn.neighbors import LocalOutlierFactor
from threadpoolctl import threadpool_limits

from streamclust.analysis import profile_clusters
from streamclust.datasets.synthetic import load_truth, make_demo_case
from streamclust.errors import InputError
from streamclust.estimators.blockwise import top_outlier_rows
from streamclust.estimators.projection import pca_projection
from streamclust.report import (
    ClusterCard,
    ComparisonTable,
    ImageSource,
    OutlierInfo,
    ReportData,
    SetReport,
    density_histograms,
    montage,
    pick_montage_rows,
    render_density_overview,
    render_metrics_vs_k,
    render_small_multiples,
    sample_points,
    write_report,
    write_scatter3d_html,
)

CHROMIUM = "/usr/bin/chromium"
N_ROWS = 1500


def _load(case: Path, name: str) -> np.ndarray:
    with open(case / "descriptors" / f"{name}.pickle", "rb") as f:
        return np.asarray(pickle.load(f), np.float32)  # our own demo file


def _profile(truth: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    rows = []
    for attr in ("color", "type", "view"):
        share = truth.loc[mask, attr].value_counts(normalize=True).head(2)
        rows += [{"attribute": attr, "value": v, "share": float(s)} for v, s in share.items()]
    return pd.DataFrame(rows)


def _study_set(name: str, X: np.ndarray, truth: pd.DataFrame, source: ImageSource, files: Path,
               report_files: Path) -> tuple[SetReport, np.ndarray]:
    """A small in-memory study of one set, drawn with streamclust.report.figures / montage."""
    reduced = PCA(n_components=16, random_state=0).fit_transform(
        X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    rows, models = [], {}
    for k in range(2, 9):
        km = KMeans(k, n_init=2, random_state=0).fit(reduced)
        models[k] = km
        rows.append({"set": name, "algorithm": "kmeans", "k": k,
                     "silhouette": silhouette_score(reduced, km.labels_),
                     "calinski_harabasz": calinski_harabasz_score(reduced, km.labels_),
                     "davies_bouldin": davies_bouldin_score(reduced, km.labels_),
                     "inertia": km.inertia_, "smallest_cluster": int(np.bincount(km.labels_).min())})
    metrics = pd.DataFrame(rows)
    k = int(metrics.loc[metrics.silhouette.idxmax(), "k"])
    metrics["chosen"] = metrics.k == k
    labels = models[k].labels_
    lof = LocalOutlierFactor(20).fit(reduced)
    scores = -lof.negative_outlier_factor_
    flags = scores > np.quantile(scores, 0.99)

    slug = name.replace("+", "_")
    proj = pca_projection(reduced, 3)
    hist = density_histograms(proj, labels, bins=80, outlier_flags=flags)
    rep = SetReport(
        name=name, n_features=X.shape[1], n_components=16, k=k, metrics=metrics,
        metrics_plot=render_metrics_vs_k(metrics, files / f"{slug}-metrics.png", title=name),
        density_overview=render_density_overview(hist, report_files / f"{slug}-density.png", title=name),
        small_multiples=render_small_multiples(hist, files / f"{slug}-multiples.png", title=name),
        explained_variance=0.8, k_rule="highest silhouette <tie rule>",
        notes=["A note with <markup> & ampersands."],
    )
    pts, lab, _ = sample_points(proj, labels, 600)
    rep.scatter3d = write_scatter3d_html(pts, lab, files / f"{slug}-3d.html", title=f"{name} in 3-D")
    picks = pick_montage_rows(reduced, labels, models[k].cluster_centers_, n_nearest=4, n_random=4,
                              n_border=4, random_state=0)
    sentences = profile_clusters(labels, truth[["color", "type", "view"]], outlier_flags=flags).sentences
    for c in range(k):
        mask = labels == c
        sel = picks[picks.cluster == c]
        img = montage(source, truth.path.to_numpy()[sel.row.to_numpy()].tolist(), ncols=6,
                      labels=[f"{kd} {r}" for kd, r in zip(sel.kind, sel.row)])
        img.save(files / f"{slug}-c{c}.png")
        prof = _profile(truth, mask)
        rep.clusters.append(ClusterCard(cluster=c, n_rows=int(mask.sum()),
                                        sentence=sentences[c],
                                        montage=files / f"{slug}-c{c}.png", profile=prof))
    top = top_outlier_rows(scores, 12)
    top["path"] = truth.path.to_numpy()[top.row.to_numpy()]
    top["planted"] = truth.outlier_kind.to_numpy()[top.row.to_numpy()]
    img = montage(source, top.path.tolist(), ncols=6, labels=[f"LOF {s:.2f}" for s in top.score])
    img.save(files / f"{slug}-outliers.png")
    rep.outliers = OutlierInfo(n_flagged=int(flags.sum()), rule="LOF(k=20) above its 99th percentile",
                               montage=files / f"{slug}-outliers.png", top=top, score_name="LOF")
    return rep, labels


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    case = make_demo_case(base / "case", n_rows=N_ROWS, seed=0, images=True)
    truth = load_truth(case)
    out = base / "out"
    files = base / "pictures"
    files.mkdir()
    report_files = out / "report_files"  # pictures may also be written in place
    report_files.mkdir(parents=True)
    source = ImageSource.open(case / "images.zip")
    sets, labels = [], {}
    color, typ = _load(case, "vdc_color"), _load(case, "vdc_type")
    with threadpool_limits(limits=1):  # tiny problems: threads only contend
        for name, X in (("vdc_color", color), ("vdc_type", typ),
                        ("vdc_color+vdc_type", np.hstack([color, typ]))):
            rep, labels[name] = _study_set(name, X, truth, source, files, report_files)
            sets.append(rep)
    names = list(labels)
    ari = pd.DataFrame([[adjusted_rand_score(labels[a], labels[b]) for b in names] for a in names],
                       index=pd.Index(names, name="set"), columns=names)
    vs_truth = pd.DataFrame({attr: [adjusted_rand_score(truth[attr], labels[n]) for n in names]
                             for attr in ("color", "type", "view")}, index=pd.Index(names, name="set"))
    best = max(sets, key=lambda s: float(s.metrics.loc[s.metrics.chosen, "silhouette"].iloc[0]))
    data = ReportData(
        case=f"demo <{N_ROWS} rows>", n_rows=N_ROWS, run_id="20260101T000000Z-abcdef12", sets=sets,
        comparisons=[ComparisonTable("Agreement between sets (adjusted Rand index)", ari,
                                     "1 = identical partitions, 0 = chance."),
                     ComparisonTable("Agreement with the planted truth", vs_truth)],
        recommendation=best.name,
        recommendation_reasons=["highest silhouette at its chosen k", "a reason with <b>markup</b>"],
        reproduce=["streamclust demo --rows 1500 --out demo-out",
                   "streamclust study demo-out/case.zarr -o demo-out --k 2:8 && echo '<done>'"],
        notes=["Images of the demo case are synthetic."],
    )
    path = write_report(out, data)
    return path, data, source


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict]]:
    p = _Tags()
    p.feed(text)
    return p.tags


def test_report_is_static_self_contained_and_escaped(report_dir):
    path, data, source = report_dir
    assert path.name == "report.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    tags = _tags(text)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    assert "http://" not in text and "https://" not in text and "@import" not in text
    imgs = [a["src"] for t, a in tags if t == "img"]
    # per set: metrics, density, multiples, one montage per cluster, outliers montage
    assert len(imgs) == sum(3 + len(s.clusters) + 1 for s in data.sets)
    for src in imgs + [a["href"] for t, a in tags if t == "a" and not a["href"].startswith("#")]:
        assert src.startswith("report_files/"), src
        assert (path.parent / src).is_file(), src
    ids = {a["id"] for _, a in tags if "id" in a}
    for href in (a["href"] for t, a in tags if t == "a" and a["href"].startswith("#")):
        assert href[1:] in ids, href
    for section in ("overview", "outliers", "comparison", "mixtures", "reproduce"):
        assert section in ids
    # reading order
    order = [text.index(f'id="{s}"') for s in ("overview", "set-vdc-color", "outliers", "comparison",
                                               "mixtures", "reproduce")]
    assert order == sorted(order)
    # escaping of every data-derived text
    assert "<markup>" not in text and "&lt;markup&gt;" in text
    assert "<b>markup</b>" not in text and "demo &lt;1500 rows&gt;" in text
    assert "echo &#x27;&lt;done&gt;&#x27;" in text
    assert "mixture" in text and "vdc_color+vdc_type" in text
    # the cluster sentences (made by profile_clusters, as in the study) are on the page
    sentences = [card.sentence for s in data.sets for card in s.clusters]
    assert all(sentences) and all(html.escape(s) in text for s in sentences)
    # a second write reuses report_files without piling up copies
    n_files = len(list((path.parent / "report_files").iterdir()))
    write_report(path.parent, data)
    assert len(list((path.parent / "report_files").iterdir())) == n_files


def test_report_embedded_images_single_file(report_dir, tmp_path):
    _, data, _ = report_dir
    path = write_report(tmp_path / "single", data, embed_images=True)
    tags = _tags(path.read_text(encoding="utf-8"))
    imgs = [a["src"] for t, a in tags if t == "img"]
    assert imgs and all(s.startswith("data:image/png;base64,") for s in imgs)
    with pytest.raises(InputError):
        write_report(tmp_path / "empty", ReportData(case="x", n_rows=0, run_id="r", sets=[]))


# --------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------
_CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(String(e.message || (t && (t.currentSrc || t.src || t.href)) || 'error'));
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push(String(e.reason)); });
(function () {
  var ce = console.error;
  console.error = function () {
    window.__errors.push(Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  setTimeout(function () {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                     .map(function (i) { return i.getAttribute('src'); });
    var d = document.createElement('pre');
    d.id = '__check';
    d.textContent = 'CHECK' + JSON.stringify({images: imgs.length, broken: broken, errors: window.__errors}) + 'END';
    document.body.appendChild(d);
  }, 50);
});
</script>"""


def _chromium() -> str:
    if not os.path.exists(CHROMIUM):
        msg = "chromium not installed: apt-get install chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return CHROMIUM


def _run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "HOME": str(profile)})


def _check_page(page: Path, tmp_path: Path) -> dict:
    """Copy ``page`` beside itself with the check script injected, dump its DOM."""
    text = page.read_text(encoding="utf-8")
    checked = page.with_name(f"_check_{page.name}")
    checked.write_text(text.replace("<head>", "<head>" + _CHECK_SCRIPT, 1), encoding="utf-8")
    try:
        proc = _run_chromium(checked, tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom")
    finally:
        checked.unlink()
    match = re.search(r"CHECK(\{.*?\})END", proc.stdout, re.S)
    assert match, f"no check marker in the dumped DOM; chromium stderr:\n{proc.stderr[-3000:]}"
    return json.loads(match.group(1))


def test_report_renders_in_chromium(report_dir, tmp_path):
    path, data, _ = report_dir
    result = _check_page(path, tmp_path)
    assert result["errors"] == []
    assert result["broken"] == []
    assert result["images"] == sum(3 + len(s.clusters) + 1 for s in data.sets)
    shot = tmp_path / "report.png"
    proc = _run_chromium(path, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000",
                         "--hide-scrollbars")
    assert shot.is_file(), proc.stderr[-3000:]
    print(f"\nscreenshot of the report: {shot}")
    keep = os.environ.get("STREAMCLUST_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_scatter3d_viewer_runs_in_chromium(report_dir, tmp_path):
    path, data, _ = report_dir
    viewer = next((path.parent / "report_files").glob("*-3d.html"))
    result = _check_page(viewer, tmp_path)
    assert result["errors"] == [] and result["images"] == 0
