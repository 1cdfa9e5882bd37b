"""The study's report: figures (PNG, interactive 3-D), image montages (JPEG) and the HTML page.

- :mod:`~streamclust.report.figures`: density overviews, small multiples, one panel per algorithm, metric curves,
  the 3-D view.
- :mod:`~streamclust.report.images`: images read safely from a zip or folder (path checks, size limits).
- :mod:`~streamclust.report.zipdir`: a zip's central directory in compact arrays, bounded member reads.
- :mod:`~streamclust.report.montages`: which rows to show per cluster, the top outliers, image montages.
- :mod:`~streamclust.report.html`: the report's data classes and :func:`write_report`.

The report knows nothing of how a study runs: :mod:`streamclust.study` fills its data classes.
"""

from streamclust.report.figures import (
    DensityHistograms,
    cluster_colors,
    density_histograms,
    label_colors,
    matched_label_colors,
    projection_extent,
    render_algorithm_panels,
    render_density_overview,
    render_metrics_vs_k,
    render_small_multiples,
    sample_points,
    write_scatter3d_html,
)
from streamclust.report.html import (
    AlgorithmReport,
    ClusterCard,
    ComparisonTable,
    OutlierInfo,
    ReportData,
    SetReport,
    collect_versions,
    write_report,
)
from streamclust.report.images import ImageSource, UnsafePathError
from streamclust.report.montages import montage, pick_montage_rows

__all__ = [
    "AlgorithmReport",
    "ClusterCard",
    "ComparisonTable",
    "DensityHistograms",
    "ImageSource",
    "OutlierInfo",
    "ReportData",
    "SetReport",
    "UnsafePathError",
    "cluster_colors",
    "collect_versions",
    "density_histograms",
    "label_colors",
    "matched_label_colors",
    "montage",
    "pick_montage_rows",
    "projection_extent",
    "render_algorithm_panels",
    "render_density_overview",
    "render_metrics_vs_k",
    "render_small_multiples",
    "sample_points",
    "write_report",
    "write_scatter3d_html",
]
