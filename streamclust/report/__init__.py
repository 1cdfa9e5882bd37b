"""The study's report: figures (PNG, interactive 3-D), image montages and the HTML page.

- :mod:`~streamclust.report.figures`: density overviews, small multiples, metric curves, the 3-D view.
- :mod:`~streamclust.report.montage`: image montages read from a zip or folder.
- :mod:`~streamclust.report.html`: the report's data classes and :func:`write_report`.

The report knows nothing of how a study runs: :mod:`streamclust.study` fills its data classes.
"""
