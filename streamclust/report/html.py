"""A static, self-contained HTML report of a study.

:func:`write_report` writes ``OUT_DIR/report.html`` from a :class:`ReportData`:
pictures are copied beside it under ``OUT_DIR/report_files/`` (or embedded as
base64 with ``embed_images=True``, giving one single file); there is no
external style sheet, script, font or CDN, so it opens offline and can be
archived or mailed as is.  Every text that comes from data (set names, cluster
sentences, table cells, paths, commands) is HTML-escaped.

It reads top to bottom:

1. **Overview** -- case, rows, descriptor sets, run id, date, software
   versions, and one summary row per set;
2. **one section per descriptor set** -- facts (dimensions, PCA components,
   chosen k), the metrics table and metrics-vs-k plot, the density overview and
   small multiples, the density overview in UMAP coordinates beside the PCA
   one when the set has it, a link to the interactive 3-D view, the *algorithm
   comparison* when several clustering algorithms ran (their chosen k and
   metrics, agreement, one density panel each, what their clusters follow, one
   sentence per cluster, the recommended algorithm and the rule), then one *card per
   cluster* (sentence, montage, profile table) and the set's *outliers* (rule,
   count flagged, montage of the top outliers with their scores).  Sets named
   like ``vdc_color+vdc_type`` are mixtures of the named sets and are flagged
   as such;
3. **Outliers** -- flagged counts of every set side by side;
4. **Comparison** -- agreement tables between sets and the recommendation with
   its reasons, and the algorithm recommended for each set;
5. **Mixtures** -- which sets are mixtures of which;
6. **How to reproduce** -- the command lines.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import importlib.metadata
import itertools
import math
import os
import platform
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamclust.core.files import write_atomic
from streamclust.errors import InputError
from streamclust.report.figures import cluster_colors, hex_color

__all__ = [
    "AlgorithmReport",
    "ClusterCard",
    "OutlierInfo",
    "SetReport",
    "ComparisonTable",
    "ReportData",
    "write_report",
    "collect_versions",
]

PathLike = str | os.PathLike


@dataclass(kw_only=True)
class ClusterCard:
    """One cluster of one set.

    Attributes
    ----------
    cluster : int
        Label value.
    n_rows : int
        Rows in the cluster.
    sentence : str
        One plain sentence describing it (the study passes the sentences of
        :func:`streamclust.analysis.profile_clusters`).
    montage : path, optional
        Montage of its images, PNG or JPEG (nearest the centre, random, border cases).
    profile : DataFrame, optional
        Any small table, e.g. columns ``attribute``, ``value``, ``share`` (the
        most common metadata values in the cluster).
    name : str, optional
        A short name shown instead of ``cluster <n>``.
    """

    cluster: int
    n_rows: int
    sentence: str = ""
    montage: PathLike | None = None
    profile: pd.DataFrame | None = None
    name: str | None = None


@dataclass(kw_only=True)
class OutlierInfo:
    """The outlier screening of one set.

    Attributes
    ----------
    n_flagged : int
        Rows flagged.
    rule : str
        How rows are flagged, in words (score, threshold).
    montage : path, optional
        Montage of the top outliers (PNG or JPEG).
    top : DataFrame, optional
        The top outliers, e.g. columns ``row``, ``path``, ``score``.
    score_name : str
        Name of the score (e.g. ``"LOF"``).
    known : str, optional
        How the flags agree with known outliers, in words (where a truth was given).
    """

    n_flagged: int
    rule: str
    montage: PathLike | None = None
    top: pd.DataFrame | None = None
    score_name: str = "score"
    known: str | None = None


@dataclass(kw_only=True)
class AlgorithmReport:
    """The comparison of the clustering algorithms run on one set.

    Attributes
    ----------
    table : DataFrame, shape (n_algorithms, n_columns)
        One row per algorithm (e.g. ``algorithm``, ``k``, the metrics at that k, noise share),
        shown as given.
    recommended : str
        The recommended algorithm (its row of ``table``, by the ``algorithm`` column, is highlighted).
    reason : str
        Why it is recommended (shown after the algorithm's name).
    rule : str
        The rule that recommends, in words.
    ari, ami : DataFrame, shape (n_algorithms, n_algorithms), optional
        Agreement between the algorithms' clusters.
    panels : path, optional
        PNG: one density panel of all rows per algorithm, coloured by its clusters
        (:func:`streamclust.report.figures.render_algorithm_panels`).
    panels_caption : str
        What the panels show (the projection).
    attribute_ami, attribute_purity : DataFrame, shape (n_algorithms, n_attributes), optional
        How each algorithm's clusters follow each metadata attribute.
    best_attribute_lines : list of str
        One line per algorithm: the attribute its clusters separate best.
    sentences : dict of str to list of str
        One sentence per cluster, by algorithm.
    """

    table: pd.DataFrame
    recommended: str
    reason: str
    rule: str = ""
    ari: pd.DataFrame | None = None
    ami: pd.DataFrame | None = None
    panels: PathLike | None = None
    panels_caption: str = ""
    attribute_ami: pd.DataFrame | None = None
    attribute_purity: pd.DataFrame | None = None
    best_attribute_lines: list[str] = field(default_factory=list)
    sentences: dict[str, list[str]] = field(default_factory=dict)


@dataclass(kw_only=True)
class SetReport:
    """Everything shown for one descriptor set.

    Attributes
    ----------
    name : str
        Set name; ``a+b`` names a mixture of sets ``a`` and ``b``.
    n_features : int
        Descriptor dimensions.
    n_components : int
        PCA components kept.
    k : int
        Chosen number of clusters.
    metrics : DataFrame
        One row per k (columns ``k``, ``silhouette``, ``calinski_harabasz``,
        ``davies_bouldin``, ``inertia``, ``chosen``, ... as in ``metrics.csv``).
    metrics_plot, density_overview, small_multiples : path, optional
        PNGs (:mod:`streamclust.report.figures`).
    scatter3d : path, optional
        Interactive 3-D view (:func:`streamclust.report.figures.write_scatter3d_html`).
    clusters : list of ClusterCard
    outliers : OutlierInfo, optional
    explained_variance : float, optional
        Fraction of variance the PCA components keep.
    k_rule : str, optional
        How k was chosen, in words.
    notes : list of str
        Extra remarks shown under the facts.
    umap_overview : path, optional
        PNG: the density overview of all rows in UMAP coordinates, shown beside
        ``density_overview``.
    algorithms : AlgorithmReport, optional
        The comparison of the clustering algorithms run on the set.
    """

    name: str
    n_features: int
    n_components: int
    k: int
    metrics: pd.DataFrame
    metrics_plot: PathLike | None = None
    density_overview: PathLike | None = None
    small_multiples: PathLike | None = None
    scatter3d: PathLike | None = None
    clusters: list[ClusterCard] = field(default_factory=list)
    outliers: OutlierInfo | None = None
    explained_variance: float | None = None
    k_rule: str | None = None
    notes: list[str] = field(default_factory=list)
    umap_overview: PathLike | None = None
    algorithms: AlgorithmReport | None = None

    @property
    def components(self) -> list[str]:
        """Sets mixed in this set (``["a", "b"]`` for ``"a+b"``; ``[name]`` otherwise)."""
        return [p for p in self.name.split("+") if p]

    @property
    def is_mixture(self) -> bool:
        """True for a set named like ``a+b``."""
        return len(self.components) > 1


@dataclass
class ComparisonTable:
    """A table of the comparison section (e.g. adjusted Rand index between sets)."""

    title: str
    table: pd.DataFrame
    caption: str = ""
    index: bool = True


@dataclass(kw_only=True)
class ReportData:
    """What :func:`write_report` shows.

    Attributes
    ----------
    case : str
        Name of the case (e.g. the store path).
    n_rows : int
        Images in the case.
    run_id : str
        Study run id.
    sets : list of SetReport
    created : str
        Date of the run (default: now, UTC).
    versions : dict
        Software versions (default: :func:`collect_versions`).
    comparisons : list of ComparisonTable
    recommendation : str, optional
        The recommended set.
    recommendation_reasons : list of str
    reproduce : list of str
        Command lines that reproduce the study and this report.
    title : str
    notes : list of str
        Remarks shown in the overview.
    """

    case: str
    n_rows: int
    run_id: str
    sets: list[SetReport]
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC)
                         .isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=lambda: collect_versions())
    comparisons: list[ComparisonTable] = field(default_factory=list)
    recommendation: str | None = None
    recommendation_reasons: list[str] = field(default_factory=list)
    reproduce: list[str] = field(default_factory=list)
    title: str = "streamclust study report"
    notes: list[str] = field(default_factory=list)


def collect_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of Python and of the packages the study uses (installed ones only)."""
    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    names = ["streamclust", "numpy", "pandas", "scikit-learn", "scipy", "dask", "zarr",
             "pynndescent", "umap-learn", "matplotlib", "pillow", *extra]
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# --------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------
_CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --line: #dde1e7; --accent: #1f6fb2; --soft: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 22px; margin: 40px 0 10px; padding-top: 12px; border-top: 2px solid var(--line); }
h3 { font-size: 17px; margin: 24px 0 8px; }
h4 { font-size: 15px; margin: 10px 0 6px; }
p, li { max-width: 900px; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.badge { display: inline-block; font-size: 12px; font-weight: 600; padding: 1px 8px; border-radius: 10px;
         background: #fdf0d5; color: #8a5a00; vertical-align: middle; margin-left: 6px; }
.badge.rec { background: #dff3e4; color: #1d6b34; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px;
          margin: 16px 0; }
nav.toc ol { margin: 4px 0; padding-left: 20px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.chosen td { background: #e9f3fb; font-weight: 600; }
table.facts th { width: 220px; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 0 16px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; background: #fff; }
.card h4 { margin-top: 2px; }
.card img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px;
          vertical-align: -1px; }
pre { background: #0f1720; color: #e6edf3; padding: 12px 14px; border-radius: 6px; overflow-x: auto;
      font-size: 13px; }
.scroll { overflow-x: auto; }
.matrices { display: flex; flex-wrap: wrap; gap: 0 28px; }
details { margin: 6px 0; }
summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 48px; color: var(--muted); font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "set"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


#: Integer columns shown without thousands separators (identifiers, not amounts).
_ID_COLUMNS = frozenset({"row", "k", "cluster", "label", "rank", "id"})


def _fmt(value: Any, column: Any = None) -> tuple[str, bool]:
    """Cell text and whether it is numeric."""
    if value is None:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else ""), False
    if isinstance(value, (int, np.integer)):
        if str(column).lower() in _ID_COLUMNS:
            return str(int(value)), True
        return f"{int(value):,}", True
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "", True
        if math.isinf(v):
            return ("inf" if v > 0 else "-inf"), True
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.2e}", True
        if abs(v) >= 1000:
            return f"{v:,.0f}", True
        if abs(v) >= 100:
            return f"{v:.1f}", True
        return f"{v:.3f}", True
    try:
        if pd.isna(value):
            return "", False
    except (TypeError, ValueError):
        pass
    return str(value), False


def _table(df: pd.DataFrame, *, index: bool = False, highlight: Sequence[bool] | None = None,
           max_rows: int = 200, classes: str = "") -> str:
    if df is None:
        return ""
    df = df.head(max_rows)
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = []
    for i, (idx, row) in enumerate(df.iterrows()):
        cells = []
        values = ([idx] if index else []) + list(row.values)
        for j, v in enumerate(values):
            text, num = _fmt(v, cols[j])
            tag = "th" if index and j == 0 else "td"
            cells.append(f'<{tag}{" class=num" if num and tag == "td" else ""}>{_e(text)}</{tag}>')
        cls = ' class="chosen"' if highlight is not None and bool(highlight[i]) else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    klass = f' class="{_e(classes)}"' if classes else ""
    return (f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _facts(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v)[0] if not isinstance(v, str) else v)}</td></tr>"
                   for k, v in pairs if v is not None and v != "")
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


class _Assets:
    """Copies (or embeds) the report's files and hands out their URLs."""

    def __init__(self, out_dir: Path, embed: bool, sources: Iterable[PathLike | None] = ()) -> None:
        self.out_dir = out_dir
        self.files_dir = out_dir / "report_files"
        self.embed = embed
        self.names: dict[Path, str] = {}
        self.missing: list[str] = []
        # files the caller already wrote into report_files/ keep their names
        files_dir = self.files_dir.resolve()
        self.used: set[str] = {Path(p).resolve().name for p in sources
                               if p is not None and Path(p).resolve().parent == files_dir}

    def url(self, path: PathLike | None, stem: str, *, embed_ok: bool = True) -> str | None:
        if path is None:
            return None
        src = Path(path)
        if not src.is_file():
            self.missing.append(str(src))
            return None
        src = src.resolve()
        if self.embed and embed_ok and src.suffix.lower() in (".png", ".jpg", ".jpeg"):
            mime = "image/png" if src.suffix.lower() == ".png" else "image/jpeg"
            return f"data:{mime};base64," + base64.b64encode(src.read_bytes()).decode("ascii")
        if src in self.names:
            return self.names[src]
        self.files_dir.mkdir(parents=True, exist_ok=True)
        files_dir = self.files_dir.resolve()
        if src.parent == files_dir:
            name = src.name
        else:
            base = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-") or "file"
            name, i = f"{base}{src.suffix.lower()}", 2
            while name in self.used:
                name, i = f"{base}-{i}{src.suffix.lower()}", i + 1
            self.used.add(name)
            shutil.copyfile(src, files_dir / name)
        url = "report_files/" + name
        self.names[src] = url
        return url


def _figure(assets: _Assets, path: PathLike | None, stem: str, alt: str, caption: str = "") -> str:
    url = assets.url(path, stem)
    if url is None:
        return ""
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_e(url)}" alt="{_e(alt)}" loading="eager">{cap}</figure>'


def _metrics_table(metrics: pd.DataFrame) -> str:
    preferred = ["k", "algorithm", "silhouette", "calinski_harabasz", "davies_bouldin", "inertia",
                 "smallest_cluster", "chosen"]
    cols = [c for c in preferred if c in metrics.columns]
    df = metrics.sort_values("k")[cols] if "k" in metrics.columns else metrics[cols]
    highlight = df["chosen"].astype(bool).tolist() if "chosen" in df.columns else None
    df = df.rename(columns={"calinski_harabasz": "Calinski-Harabasz", "davies_bouldin": "Davies-Bouldin",
                            "smallest_cluster": "smallest cluster", "silhouette": "silhouette (sampled)"})
    return _table(df.reset_index(drop=True), highlight=highlight)


def _cluster_card(assets: _Assets, set_slug: str, card: ClusterCard, color: str, n_total: int) -> str:
    title = card.name or f"Cluster {int(card.cluster)}"
    share = f" ({card.n_rows / n_total:.1%})" if n_total else ""
    parts = [f'<div class="card" id="{_e(set_slug)}-c{int(card.cluster)}">',
             f'<h4><span class="swatch" style="background:{_e(color)}"></span>{_e(title)}: '
             f"{int(card.n_rows):,} images{_e(share)}</h4>"]
    if card.sentence:
        parts.append(f"<p>{_e(card.sentence)}</p>")
    url = assets.url(card.montage, f"{set_slug}-cluster-{int(card.cluster)}-montage")
    if url:
        parts.append(f'<img src="{_e(url)}" alt="{_e(f"images of {title}")}">')
    if card.profile is not None and len(card.profile):
        parts.append(_table(card.profile))
    parts.append("</div>")
    return "".join(parts)


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------
#: Anchors of the page's fixed sections; the sets' anchors never take them.
_FIXED_ANCHORS = ("overview", "outliers", "comparison", "mixtures", "reproduce")


@dataclass(frozen=True)
class _TocEntry:
    """One line of the table of contents.

    ``group`` names a heading the entry is listed under (consecutive entries of
    the same group share it); ``note`` is plain text shown after the link.
    """

    anchor: str
    title: str
    note: str = ""
    group: str | None = None

    def html(self) -> str:
        return f'<li><a href="#{_e(self.anchor)}">{_e(self.title)}</a>{_e(self.note)}</li>'


@dataclass(frozen=True)
class _Section:
    """One section of the page: its HTML and its entry in the table of contents."""

    html: str
    toc: _TocEntry


@dataclass
class _Page:
    """What every section builder reads: the data, the pictures and the sets' anchors."""

    data: ReportData
    assets: _Assets
    set_anchors: dict[str, str]

    def set_link(self, name: str) -> str:
        """A link to the section of set ``name``, or its plain name when the report has no such set."""
        if name not in self.set_anchors:
            return _e(name)
        return f'<a href="#{_e(self.set_anchors[name])}">{_e(name)}</a>'


def _chosen_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``metrics`` marked ``chosen`` (none without that column)."""
    return metrics[metrics["chosen"].astype(bool)] if "chosen" in metrics.columns else metrics.iloc[:0]


def _toc(entries: Iterable[_TocEntry]) -> str:
    """The table of contents: entries in order, those of one group nested under its heading."""
    items = []
    for group, members in itertools.groupby(entries, key=lambda entry: entry.group):
        links = "".join(entry.html() for entry in members)
        items.append(links if group is None else f"<li>{_e(group)}<ol>{links}</ol></li>")
    return f'<nav class="toc"><strong>Contents</strong><ol>{"".join(items)}</ol></nav>'


def _sets_at_a_glance(data: ReportData) -> pd.DataFrame:
    """Shape ``(n_sets, 10)``: set, dims, PCA, k, the three metrics at the chosen k, outliers
    flagged, mixture, recommended."""
    rows = []
    for s in data.sets:
        chosen = _chosen_rows(s.metrics)
        row = {"set": s.name, "dims": s.n_features, "PCA": s.n_components, "k": s.k}
        for col, label in (("silhouette", "silhouette"), ("calinski_harabasz", "Calinski-Harabasz"),
                           ("davies_bouldin", "Davies-Bouldin")):
            row[label] = float(chosen[col].iloc[0]) if len(chosen) and col in chosen.columns else None
        row["outliers flagged"] = None if s.outliers is None else int(s.outliers.n_flagged)
        row["mixture"] = s.is_mixture
        row["recommended"] = s.name == data.recommendation
        rows.append(row)
    return pd.DataFrame(rows)


def _overview_sections(page: _Page) -> list[_Section]:
    """Case, run, notes, one summary row per set and the software versions."""
    data = page.data
    summary = _sets_at_a_glance(data)
    body = ['<section id="overview"><h2>Overview</h2>',
            _facts([("case", data.case), ("images (rows)", data.n_rows),
                    ("descriptor sets", ", ".join(s.name for s in data.sets)),
                    ("run id", data.run_id), ("date", data.created),
                    ("recommended set", data.recommendation)]),
            *(f"<p>{_e(note)}</p>" for note in data.notes),
            "<h3>Sets at a glance</h3>",
            _table(summary, highlight=summary["recommended"].tolist()),
            "<h3>Software</h3>",
            _facts(sorted(data.versions.items())),
            "</section>"]
    return [_Section("".join(body), _TocEntry("overview", "Overview"))]


def _set_facts(page: _Page, rep: SetReport, anchor: str) -> str:
    """Heading with badges, what a mixture mixes, the facts table and the set's notes."""
    badges = ""
    if rep.is_mixture:
        badges += '<span class="badge">mixture</span>'
    if page.data.recommendation and rep.name == page.data.recommendation:
        badges += '<span class="badge rec">recommended</span>'
    out = [f'<section id="{_e(anchor)}"><h2>Set {_e(rep.name)}{badges}</h2>']
    if rep.is_mixture:
        links = ", ".join(page.set_link(c) for c in rep.components)
        out.append(f"<p>This set is a <strong>mixture</strong> of the descriptor sets {links}: "
                   "their rows concatenated feature-wise and studied like any other set.</p>")
    chosen = _chosen_rows(rep.metrics)
    sil = float(chosen["silhouette"].iloc[0]) if len(chosen) and "silhouette" in chosen.columns else None
    out.append(_facts([
        ("descriptor dimensions", rep.n_features),
        ("PCA components kept", rep.n_components),
        ("variance kept", f"{rep.explained_variance:.1%}" if rep.explained_variance is not None else None),
        ("chosen k", rep.k),
        ("silhouette at chosen k", None if sil is None else f"{sil:.3f}"),
        ("how k was chosen", rep.k_rule),
        ("outliers flagged", None if rep.outliers is None else rep.outliers.n_flagged),
    ]))
    out += [f'<p class="muted">{_e(note)}</p>' for note in rep.notes]
    return "".join(out)


def _set_metrics(page: _Page, rep: SetReport, anchor: str) -> str:
    """The metrics table and the metrics-vs-k plot."""
    return ("<h3>Metrics for every k</h3>" + _metrics_table(rep.metrics)
            + _figure(page.assets, rep.metrics_plot, f"{anchor}-metrics", f"metrics against k for {rep.name}",
                      "Silhouette (sampled), Calinski-Harabasz, Davies-Bouldin and inertia against k; "
                      "the star marks the chosen k."))


def _set_pictures(page: _Page, rep: SetReport, anchor: str) -> str:
    """Density overviews (PCA, and UMAP side by side when present), small multiples, 3-D link."""
    assets = page.assets
    out = []
    if rep.density_overview or rep.small_multiples or rep.scatter3d or rep.umap_overview:
        out.append("<h3>Where the clusters lie</h3>")
    overviews = [_figure(assets, rep.density_overview, f"{anchor}-density", f"density of all rows of {rep.name}",
                         "Every row of the case in a 2-D projection, binned: colour = cluster (blended where "
                         "clusters overlap), darker = denser (log scale); crosses = flagged outliers."),
                 _figure(assets, rep.umap_overview, f"{anchor}-umap", f"UMAP density of all rows of {rep.name}",
                         "The same rows in UMAP coordinates (UMAP fitted on a seeded sample, every other row "
                         "placed at the mean of its nearest sampled rows), binned and coloured the same way.")]
    overviews = [f for f in overviews if f]
    out.append(f'<div class="pair">{"".join(overviews)}</div>' if len(overviews) > 1 else "".join(overviews))
    out.append(_figure(assets, rep.small_multiples, f"{anchor}-clusters", f"each cluster of {rep.name}",
                       "One panel per cluster over all rows in grey."))
    url3d = assets.url(rep.scatter3d, f"{anchor}-3d", embed_ok=False)
    if url3d:
        out.append(f'<p><a href="{_e(url3d)}">Interactive 3-D view of a sample of rows</a> '
                   "(opens offline; drag to rotate).</p>")
    return "".join(out)


def _set_algorithms(page: _Page, rep: SetReport, anchor: str) -> str:
    """The algorithm comparison: table, recommendation, agreement, density panels, interpretation."""
    alg = rep.algorithms
    if alg is None:
        return ""
    table = alg.table.reset_index(drop=True)
    highlight = (table["algorithm"] == alg.recommended).tolist() if "algorithm" in table.columns else None
    out = [f'<h3 id="{_e(anchor)}-algorithms">Algorithm comparison</h3>',
           "<p>Every clustering algorithm run on the set's reduced rows, at its chosen k (the k rule above; "
           "silhouette on the same sampled rows for all, the other metrics exact over all rows).</p>",
           _table(table, highlight=highlight),
           f"<p><strong>Recommended algorithm: {_e(alg.recommended)}</strong>: {_e(alg.reason)}.</p>"]
    if alg.rule:
        out.append(f'<p class="muted">Rule: {_e(alg.rule)}.</p>')
    matrices = [f"<div><h4>{_e(title)}</h4>{_table(m.round(3), index=True)}</div>"
                for title, m in (("Agreement (ARI)", alg.ari), ("Agreement (AMI)", alg.ami)) if m is not None]
    if matrices:
        out.append(f'<div class="matrices">{"".join(matrices)}</div>')
    out.append(_figure(page.assets, alg.panels, f"{anchor}-algorithms",
                       f"density of all rows of {rep.name} per algorithm", alg.panels_caption))
    if alg.best_attribute_lines or alg.attribute_ami is not None:
        out.append("<h4>What each algorithm's clusters follow</h4>")
        if alg.best_attribute_lines:
            out.append("<ul>" + "".join(f"<li>{_e(line)}.</li>" for line in alg.best_attribute_lines) + "</ul>")
        scores = [f"<div><h4>{_e(title)}</h4>{_table(m.round(3), index=True)}</div>"
                  for title, m in (("AMI with each attribute", alg.attribute_ami),
                                   ("Purity with each attribute", alg.attribute_purity))
                  if m is not None and m.shape[1]]
        if scores:
            out.append(f'<div class="matrices">{"".join(scores)}</div>')
    for name, sentences in alg.sentences.items():
        items = "".join(f"<li>{_e(s)}</li>" for s in sentences)
        out.append(f"<details><summary>{_e(name)}: one sentence per cluster ({len(sentences)})</summary>"
                   f"<ul>{items}</ul></details>")
    return "".join(out)


def _set_clusters(page: _Page, rep: SetReport, anchor: str) -> str:
    """One card per cluster, by label value, each with its density-picture colour."""
    if not rep.clusters:
        return ""
    colors = cluster_colors(max(1, len(rep.clusters)))
    order = sorted(rep.clusters, key=lambda c: int(c.cluster))
    cards = "".join(_cluster_card(page.assets, anchor, card, hex_color(colors[i]), page.data.n_rows)
                    for i, card in enumerate(order))
    which = " k-means" if rep.algorithms is not None else ""
    return (f"<h3>The {len(order)}{which} clusters</h3>"
            '<p class="muted">Each montage shows images nearest the cluster centre, a random '
            "draw, and border cases (closest to another cluster).</p>"
            f'<div class="cards">{cards}</div>')


def _set_outliers(page: _Page, rep: SetReport, anchor: str) -> str:
    """Rule, count flagged, agreement with known outliers, montage and table of the top outliers."""
    o = rep.outliers
    if o is None:
        return ""
    n_rows = page.data.n_rows
    share = f" ({o.n_flagged / n_rows:.2%} of the case)" if n_rows else ""
    out = [f'<h3 id="{_e(anchor)}-outliers">Outliers</h3>',
           f"<p><strong>{int(o.n_flagged):,}</strong> images flagged{_e(share)}. Rule: {_e(o.rule)}</p>"]
    if o.known:
        out.append(f"<p>{_e(o.known)}</p>")
    out.append(_figure(page.assets, o.montage, f"{anchor}-outliers", f"top outliers of {rep.name}",
                       f"The highest {o.score_name} scores, most outlying first."))
    if o.top is not None and len(o.top):
        out.append(_table(o.top.reset_index(drop=True)))
    return "".join(out)


def _set_sections(page: _Page) -> list[_Section]:
    """One section per descriptor set, listed under "Descriptor sets" in the contents."""
    sections = []
    for rep in page.data.sets:
        anchor = page.set_anchors[rep.name]
        parts = [build(page, rep, anchor)
                 for build in (_set_facts, _set_metrics, _set_pictures, _set_algorithms, _set_clusters,
                               _set_outliers)]
        sections.append(_Section("".join(parts) + "</section>",
                                 _TocEntry(anchor, rep.name, " (mixture)" if rep.is_mixture else "",
                                           group="Descriptor sets")))
    return sections


def _outliers_sections(page: _Page) -> list[_Section]:
    """Flagged counts of every screened set side by side (nothing when no set was screened)."""
    data = page.data
    flagged = [s for s in data.sets if s.outliers is not None]
    if not flagged:
        return []
    df = pd.DataFrame([{"set": s.name, "flagged": int(s.outliers.n_flagged),
                        "share": f"{s.outliers.n_flagged / data.n_rows:.2%}" if data.n_rows else "",
                        "rule": s.outliers.rule,
                        **({"against known outliers": s.outliers.known} if s.outliers.known else {})}
                       for s in flagged])
    links = " ".join(f'<a href="#{_e(page.set_anchors[s.name])}-outliers">Top outliers of {_e(s.name)}</a>.'
                     for s in flagged)
    return [_Section(f'<section id="outliers"><h2>Outliers</h2>{_table(df)}<p>{links}</p></section>',
                     _TocEntry("outliers", "Outliers"))]


def _comparison_sections(page: _Page) -> list[_Section]:
    """The comparison tables, then the recommended set with its reasons."""
    data = page.data
    out = ['<section id="comparison"><h2>Comparison and recommendation</h2>']
    if not data.comparisons:
        out.append('<p class="muted">No comparison tables were computed.</p>')
    for t in data.comparisons:
        out.append(f"<h3>{_e(t.title)}</h3>")
        if t.caption:
            out.append(f"<p>{_e(t.caption)}</p>")
        out.append(_table(t.table, index=t.index))
    if data.recommendation:
        out.append(f"<h3>Recommendation: {_e(data.recommendation)}</h3>")
        if data.recommendation_reasons:
            out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in data.recommendation_reasons) + "</ul>")
    compared = [s for s in data.sets if s.algorithms is not None]
    if compared:
        out.append("<h3>Algorithm recommended per set</h3><ul>"
                   + "".join(f'<li>{page.set_link(s.name)}: <a href="#{_e(page.set_anchors[s.name])}-algorithms">'
                             f"{_e(s.algorithms.recommended)}</a> ({_e(s.algorithms.reason)})</li>"
                             for s in compared if s.algorithms is not None) + "</ul>")
    out.append("</section>")
    return [_Section("".join(out), _TocEntry("comparison", "Comparison and recommendation"))]


def _mixtures_sections(page: _Page) -> list[_Section]:
    """Which sets are mixtures of which (nothing when no set is a mixture)."""
    mixtures = [s for s in page.data.sets if s.is_mixture]
    if not mixtures:
        return []
    items = "".join(f"<li>{page.set_link(s.name)} mixes {', '.join(page.set_link(c) for c in s.components)}; "
                    f"k = {int(s.k)}.</li>" for s in mixtures)
    return [_Section('<section id="mixtures"><h2>Mixtures</h2>'
                     "<p>Sets whose name joins other sets with <code>+</code> are mixtures: the rows of "
                     f"the named sets side by side, studied like any other set.</p><ul>{items}</ul></section>",
                     _TocEntry("mixtures", "Mixtures"))]


def _reproduce_sections(page: _Page) -> list[_Section]:
    """The command lines that reproduce the study and the report."""
    commands = page.data.reproduce
    if commands:
        text = ("<p>Run these commands, in order, from the project folder:</p>"
                "<pre>" + _e("\n".join(commands)) + "</pre>")
    else:
        text = '<p class="muted">The commands were not recorded.</p>'
    return [_Section(f'<section id="reproduce"><h2>How to reproduce</h2>{text}</section>',
                     _TocEntry("reproduce", "How to reproduce"))]


#: The page's sections, top to bottom: each builder returns its sections (none when it has
#: nothing to show), and the table of contents lists them in this order.
_SECTION_BUILDERS = (_overview_sections, _set_sections, _outliers_sections, _comparison_sections,
                     _mixtures_sections, _reproduce_sections)


def _picture_sources(data: ReportData) -> list[PathLike | None]:
    """Every picture and 3-D view the sets refer to."""
    sources: list[PathLike | None] = []
    for s in data.sets:
        sources += [s.metrics_plot, s.density_overview, s.umap_overview, s.small_multiples, s.scatter3d]
        sources += [c.montage for c in s.clusters]
        if s.outliers is not None:
            sources.append(s.outliers.montage)
        if s.algorithms is not None:
            sources.append(s.algorithms.panels)
    return sources


def write_report(out_dir: PathLike, data: ReportData, *, embed_images: bool = False) -> Path:
    """Write ``out_dir/report.html`` (and ``out_dir/report_files/``).

    The page is a title, the table of contents, the sections of
    ``_SECTION_BUILDERS`` in order, a note on missing pictures and a footer.

    Parameters
    ----------
    out_dir : path
        Folder of the report (created if needed).
    data : ReportData
    embed_images : bool
        Embed PNG/JPEG pictures as base64 (one self-contained file) instead of
        copying them to ``report_files/`` (the optional interactive 3-D views
        stay separate HTML files there).

    Notes
    -----
    The swatch of a cluster card has the colour the cluster has in the
    density pictures of :mod:`streamclust.report.figures` when the cards cover the same
    clusters (colours go by rank of the sorted label values).

    Returns
    -------
    Path
        The HTML file.

    Raises
    ------
    InputError
        If ``data`` has no sets or a set has no metrics.
    """
    if not data.sets:
        raise InputError("the report needs at least one descriptor set.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    assets = _Assets(out, embed_images, _picture_sources(data))
    used = set(_FIXED_ANCHORS)
    page = _Page(data, assets, {rep.name: _slug(f"set-{rep.name}", used) for rep in data.sets})
    sections = [section for build in _SECTION_BUILDERS for section in build(page)]

    body = [f"<h1>{_e(data.title)}</h1>",
            (f'<p class="muted">Case {_e(data.case)} &middot; run {_e(data.run_id)} &middot; '
             f"{_e(data.created)}</p>"),
            _toc(section.toc for section in sections),
            *(section.html for section in sections)]
    if assets.missing:
        body.append('<p class="muted">Missing pictures (not found when the report was written): '
                    + _e(", ".join(assets.missing)) + "</p>")
    version = data.versions.get("streamclust", "")
    body.append(f"<footer>Written by streamclust {_e(version)} on "
                f"{_e(_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds'))}.</footer>")

    html_text = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                 "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                 f"<title>{_e(data.title)} - {_e(data.case)}</title><style>{_CSS}</style></head>"
                 f"<body><main>{''.join(body)}</main></body></html>\n")
    path = out / "report.html"
    write_atomic(path, html_text)
    return path
