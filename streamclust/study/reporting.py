"""Turn a finished study into ``report.html``: plots of all rows, montages, profiles.

Reads the run arrays (reduced rows, labels, outlier scores and flags) block by
block: density plots are 2-D histograms of the first two principal components
of EVERY row (:mod:`streamclust.report.figures`) and, for a study run with ``umap=True``,
of every row's stored UMAP position (``<set>/umap``), with a 3-D view of a
sample of rows (first three principal components) beside; when several clustering algorithms ran, one
small density panel per algorithm (the same projection, UMAP when stored, coloured by that algorithm's
stored labels ``<set>/labels_<algorithm>``) beside their comparison
(:mod:`streamclust.study.algorithm_comparison`); montages come straight from the image zip
or folder (:mod:`streamclust.report.images`, paths checked against the root), and the
text comes from the cluster profiles and the set comparison
(:mod:`streamclust.analysis`).  Everything is written under
``OUT_DIR/report_files/`` next to ``OUT_DIR/report.html``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from streamclust.core.blocks import parse_memory
from streamclust.core.scheduler import run_concurrently
from streamclust.estimators import pca_projection
from streamclust.report import (
    AlgorithmReport,
    ClusterCard,
    ComparisonTable,
    ImageSource,
    OutlierInfo,
    ReportData,
    SetReport,
    density_histograms,
    matched_label_colors,
    montage,
    pick_montage_rows,
    render_algorithm_panels,
    render_density_overview,
    render_metrics_vs_k,
    render_small_multiples,
    sample_points,
    write_report,
    write_scatter3d_html,
)
from streamclust.study.algorithm_comparison import ALGORITHM_RULE, AlgorithmComparison
from streamclust.study.rules import K_RULE, MIX_RULE

if TYPE_CHECKING:
    from streamclust.io.store import CaseStore, RunGroup
    from streamclust.report import DensityHistograms
    from streamclust.study.results import StudyResult

__all__ = ["build_study_report"]

#: Rows drawn for the 3-D view of a set whose study stored a UMAP (``umap=True``).
SCATTER3D_ROWS = 2000

#: Bins per axis of the per-algorithm density panels (small pictures; 80 KB of counts per cluster).
ALGORITHM_PANEL_BINS = 100

#: How the report names each outlier score of the study.
SCORE_NAMES = {"combined": "combined z-score (neighbours, norm, residual)", "kdist": "k-distance",
               "lof": "kNN LOF", "mean": "mean kNN distance"}


#: JPEG quality of the montages (photographs; saved with 4:4:4 chroma so that captions and coloured tiles
#: stay sharp): on demo-20000 41 montages took 2.5 s to encode as PNG (8.3 MB), 0.06 s as JPEG (2.9 MB).
MONTAGE_JPEG_QUALITY = 90


def _montage_jpeg(source: ImageSource | None, paths: list[str], captions: list[str], path: Path,
                  title: str) -> Path | None:
    """The montage of ``paths`` written to ``path`` (a ``.jpg``); None without images."""
    if source is None or not paths:
        return None
    img = montage(source, paths, ncols=8, labels=captions, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=MONTAGE_JPEG_QUALITY, subsampling=0)
    return path


def _set_report(result: StudyResult, name: str, store: CaseStore, run: RunGroup, files: Path,
                source: ImageSource | None, memory: Any) -> SetReport:
    res = result.sets[name]
    reduced = run.array(f"{name}/reduced")
    labels = run.array(f"{name}/labels")
    flags = run.array(f"{name}/is_outlier")
    metrics_png = render_metrics_vs_k(res.metrics, files / f"{name}-metrics.png", title=name)
    hist = density_histograms(pca_projection(reduced, 2), labels, outlier_flags=flags, memory=memory)
    overview = render_density_overview(hist, files / f"{name}-density.png",
                                       title=f"{name}: all {int(hist.n_rows):,} images, first two components")
    multiples = render_small_multiples(hist, files / f"{name}-clusters.png", title=name)
    umap_png = scatter = None
    if res.umap is not None:
        umap_hist = density_histograms(run.array(f"{name}/umap"), labels, outlier_flags=flags, memory=memory)
        umap_png = render_density_overview(
            umap_hist, files / f"{name}-umap.png", axis_labels=("UMAP 1", "UMAP 2"),
            title=f"{name}: all {int(umap_hist.n_rows):,} images, UMAP fitted on {res.umap['sample_rows']:,} of them")
        points, point_labels, _ = sample_points(pca_projection(reduced, 3), labels, n=SCATTER3D_ROWS,
                                                random_state=res.umap["params"]["random_state"], memory=memory)
        scatter = write_scatter3d_html(points, point_labels, files / f"{name}-3d.html",
                                       title=f"{name}: {len(points):,} sampled images, first three components")

    shown = (run.array(f"{name}/umap"), umap_hist, ("UMAP 1", "UMAP 2"), "UMAP") if res.umap is not None else \
        (pca_projection(reduced, 2), hist, ("component 1", "component 2"), "first two principal components")
    algorithms = _algorithm_report(result, name, run, files / f"{name}-algorithms.png", *shown, memory=memory)
    picks = pick_montage_rows(reduced, labels, res.centers, n_nearest=8, n_random=8, n_border=8, memory=memory)
    if source is not None and len(picks):  # the paths of every cluster's rows in one read of the ids
        rows, where = np.unique(picks["row"].to_numpy(), return_inverse=True)
        picks["path"] = np.asarray(store.ids.get_orthogonal_selection(rows)).astype(str)[where]
    profile = result.profiles.get(name)
    cards = []
    for cluster in range(res.k):
        mine = picks[picks["cluster"] == cluster]  # nearest, random, border (pick_montage_rows order)
        paths = mine["path"].tolist() if "path" in mine.columns else []
        jpeg = _montage_jpeg(source, paths, [f"{k} {r}" for k, r in zip(mine["kind"], mine["rank"])],
                             files / f"{name}-cluster{cluster}.jpg",
                             f"{name} cluster {cluster}: nearest the centre, random, border cases")
        table = None
        if profile is not None and len(profile.table):
            t = profile.table
            table = t[(t["cluster"] == cluster) & (t["rank"] <= 2)][
                ["attribute", "value", "share_in_cluster", "lift"]].reset_index(drop=True)
        size = int(profile.sizes.get(cluster, 0)) if profile is not None else 0
        sentence = profile.sentences.get(cluster, "") if profile is not None else ""
        cards.append(ClusterCard(cluster=cluster, n_rows=size, sentence=sentence, montage=jpeg, profile=table))
    top = pd.read_csv(files.parent / "outliers.csv")
    top = top[top["set"] == name].head(24)
    out_jpeg = _montage_jpeg(source, top["path"].astype(str).tolist(),
                             [f"#{r} {s:.2f}" for r, s in zip(top["rank"], top["outlier_score"])],
                             files / f"{name}-outliers.jpg", f"{name}: top outliers")
    columns = ["rank", "path", "outlier_score", "reason", "cluster"] + (["known_outlier"] if res.outlier_truth else [])
    outliers = OutlierInfo(n_flagged=res.n_outliers, rule=res.outlier_rule, montage=out_jpeg,
                           top=top[[c for c in columns if c in top]].reset_index(drop=True),
                           score_name=SCORE_NAMES[res.outlier_score], known=_known_text(res.outlier_truth))
    notes = [f"{res.k_note[0].upper()}{res.k_note[1:]}."] if res.k_note else []
    if res.mixture:
        shares = ", ".join(f"{m} {v:.0%}" for m, v in res.mixture["variance_share"].items())
        notes.append(f"Balanced mixture ({MIX_RULE}); variance shares: {shares}.")
    return SetReport(name=name, n_features=res.n_features, n_components=res.n_components, k=res.k,
                     metrics=res.metrics, metrics_plot=metrics_png, density_overview=overview,
                     small_multiples=multiples, scatter3d=scatter, clusters=cards, outliers=outliers,
                     explained_variance=res.explained_variance, k_rule=K_RULE, notes=notes, umap_overview=umap_png,
                     algorithms=algorithms)


def _algorithm_table(comparison: AlgorithmComparison) -> pd.DataFrame:
    """The algorithm table as the report shows it, shape (n_algorithms, <= 10): noise share and BIC
    only when some algorithm has them, the best attribute only with metadata."""
    t = comparison.table
    shown = pd.DataFrame({"algorithm": t["algorithm"], "k": t["k"].astype(int),
                          "silhouette (sampled)": t["silhouette"], "Calinski-Harabasz": t["calinski_harabasz"],
                          "Davies-Bouldin": t["davies_bouldin"]})
    if t["noise_fraction"].notna().any():
        shown["noise share"] = [f"{v:.1%}" if pd.notna(v) else "" for v in t["noise_fraction"]]
    if t["bic"].notna().any():
        shown["BIC"] = t["bic"]
    shown["k at range edge"] = t["k_at_range_edge"].astype(bool)
    if t["best_attribute"].notna().any():
        shown["best attribute (AMI)"] = [f"{a} ({v:.2f})" if a else "" for a, v in
                                         zip(t["best_attribute"], t["best_attribute_ami"])]
    shown["recommended"] = t["recommended"].astype(bool)
    return shown


def _algorithm_report(result: StudyResult, name: str, run: RunGroup, path: Path, projection: Any,
                      shown: DensityHistograms, axis_labels: tuple[str, str], projection_name: str, *,
                      memory: Any) -> AlgorithmReport | None:
    """The set's algorithm comparison, with one density panel of all rows per algorithm (each a
    block-wise pass over the projection and that algorithm's stored labels, on the grid extent of
    the set's overview); None when k-means ran alone."""
    comparison = result.algorithm_comparison.get(name)
    if comparison is None or len(comparison.algorithms) < 2:
        return None
    hists, titles, colors = {}, {}, {}
    for row in comparison.table.itertuples():
        labels = run.array(f"{name}/labels" if row.algorithm == "kmeans" else f"{name}/labels_{row.algorithm}")
        hist = hists[row.algorithm] = density_histograms(projection, labels, bins=ALGORITHM_PANEL_BINS,
                                                         extent=shown.extent, memory=memory)
        overlap = comparison.overlap[row.algorithm].reindex(index=hist.clusters, fill_value=0)
        colors[row.algorithm] = matched_label_colors(hist.clusters, overlap.to_numpy())
        details = [f"silhouette {row.silhouette:.3f}"] + (
            [f"{row.noise_fraction:.0%} noise"] if pd.notna(row.noise_fraction) else [])
        titles[row.algorithm] = (f"{row.algorithm}{' (recommended)' if row.recommended else ''}: k={row.k}\n"
                                 + ", ".join(details))
    panels = render_algorithm_panels(hists, path, titles=titles, colors=colors, axis_labels=axis_labels,
                                     title=f"{name}: all {int(shown.n_rows):,} images per algorithm, "
                                           f"{projection_name}")
    return AlgorithmReport(
        table=_algorithm_table(comparison), recommended=comparison.recommended,
        reason=comparison.reason.removeprefix(f"{comparison.recommended}: "),
        rule=ALGORITHM_RULE, ari=comparison.ari, ami=comparison.ami, panels=panels,
        panels_caption=(f"Every row of the set in the same 2-D projection ({projection_name}) and frame, binned, "
                        "one panel per algorithm coloured by its clusters (blended where clusters overlap, "
                        "darker = denser, log scale); a cluster takes the colour of the k-means cluster it "
                        "shares most rows with (one to one), so like colours are like groups; dark grey = noise "
                        "(rows the algorithm left unassigned)."),
        attribute_ami=comparison.attribute_ami if comparison.attribute_ami.shape[1] else None,
        attribute_purity=comparison.attribute_purity if comparison.attribute_purity.shape[1] else None,
        best_attribute_lines=list(comparison.best_attribute_lines.values()),
        sentences={alg: p.clusters["sentence"].tolist() for alg, p in comparison.profiles.items()
                   if p.clusters is not None})


def _known_text(truth: dict | None) -> str | None:
    """One sentence on how the flags agree with the known outliers (None without a truth)."""
    if not truth:
        return None
    def pct(v):
        return "n/a" if v is None else f"{v:.0%}"
    auc = "n/a" if truth["roc_auc"] is None else f"{truth['roc_auc']:.3f}"
    return (f"Against the {truth['outliers']:,} known outliers among {truth['rows']:,} images with a known "
            f"answer: {pct(truth['precision'])} of the flagged images are known outliers (precision), "
            f"{pct(truth['recall'])} of the known outliers are flagged (recall); ROC AUC of the score {auc}.")


def build_study_report(result: StudyResult, store: CaseStore, *, images: str | os.PathLike[str] | None = None,
                       memory: Any = None, command: list[str] | None = None,
                       out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``report.html`` (and ``report_files/``) for a finished study.

    Parameters
    ----------
    result : StudyResult
    store : CaseStore
        The store the study ran on (its run holds the per-row arrays).
    images : path, optional
        ``images.zip`` or an image folder; without it the report has no montages.
    memory : str or int, optional
        Memory budget of the passes over the rows.
    command : list of str, optional
        The command line to show under "how to reproduce".
    out_dir : path, optional
        Folder holding the study's ``outliers.csv`` and receiving the report
        (default ``result.out_dir``; :func:`~streamclust.study.driver.run_study` passes the
        folder it stages its outputs in).

    Returns
    -------
    Path of ``report.html``.
    """
    run = next(r for r in store.runs(include_incomplete=True) if r.run_id == result.run_id)
    folder = Path(out_dir) if out_dir is not None else result.out_dir
    files = folder / "report_files"
    source = ImageSource.open(images) if images else None
    # the sets' sections two at a time when the study took its sets so (figures are separate Agg
    # canvases; matplotlib keys its font cache by thread; zip reads are locked)
    share = parse_memory(memory) // result.sets_at_once
    sets = run_concurrently(lambda name: _set_report(result, name, store, run, files, source, share),
                            list(result.sets), result.sets_at_once)
    comparisons = []
    comp = result.comparison
    if comp is not None:
        comparisons.append(ComparisonTable("Agreement between sets (ARI)", comp.label_agreement["ari"].round(3),
                                           "adjusted Rand index of the sets' cluster labels"))
        if len(comp.ami_table):
            comparisons.append(ComparisonTable("AMI of each set's clusters with each attribute",
                                               comp.ami_table.round(3)))
        comparisons.append(ComparisonTable("Normalised metrics", comp.normalized_metrics.round(3)))
        if comp.score_correlation is not None:
            comparisons.append(ComparisonTable("Rank correlation of outlier scores",
                                               comp.score_correlation.round(3)))
        if comp.knn_overlap is not None:
            comparisons.append(ComparisonTable("kNN overlap between sets", comp.knn_overlap.round(3)))
        comparisons.append(ComparisonTable("Recommendation per attribute", comp.recommendation))
    reproduce = [shlex.join(command)] if command else []
    reproduce.append(f"streamclust study {shlex.quote(store.path)} -o {shlex.quote(str(result.out_dir))}")
    data = ReportData(case=store.path, n_rows=store.n_rows, run_id=result.run_id, sets=sets,
                      comparisons=comparisons, recommendation=result.recommended,
                      recommendation_reasons=[comp.reason] if comp is not None else [],
                      reproduce=reproduce,
                      notes=[f"{len(source.skipped)} images could not be shown: "
                             + "; ".join(f"{p}: {r}" for p, r in source.skipped[:5])]
                      if source is not None and source.skipped else [])
    return write_report(folder, data)
