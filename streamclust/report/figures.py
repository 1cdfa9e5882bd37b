"""Pictures of ALL rows of a case without holding them: density histograms.

A 2-D projection of every row (:mod:`streamclust.estimators.projection`; 8 bytes a
row) is binned block by block into one ``bins x bins`` count grid per cluster
(and one for the rows flagged as outliers) by :func:`density_histograms`; the
grids, not the points, are then drawn:

* :func:`render_density_overview` -- one picture, every cluster in its colour,
  colours blended by count, lightness by log density, flagged outliers as a
  separate layer of black crosses;
* :func:`render_small_multiples` -- one panel per cluster over the grey density
  of all rows;
* :func:`render_algorithm_panels` -- one small overview per labelling of the
  same rows (one per clustering algorithm), noise in dark grey;
* :func:`render_metrics_vs_k` -- silhouette, Calinski-Harabasz, Davies-Bouldin
  and inertia against k, the chosen k marked;
* :func:`write_scatter3d_html` -- an interactive 3-D scatter of a sample of rows:
  one self-contained HTML file (canvas + a few lines of JavaScript, no CDN, no
  network at view time).

The grid extent comes from a cheap first look at the projection
(``extent="robust"``: the 0.5 / 99.5 percentiles of a seeded sample of at most
100,000 rows, widened by 5 % on each side; ``"minmax"``: one pass for the exact
range).  Rows outside the extent are clipped into the edge bins, so the counts
always add up to the number of rows (``DensityHistograms.n_clipped`` says how
many were clipped).  A lazy (Dask) projection is computed once per pass, so
materialise an expensive one (e.g. UMAP) to Zarr or numpy first: it is 8 bytes a
row.

Rendering uses matplotlib's object API on the Agg canvas (no pyplot state, no
display needed).
"""

from __future__ import annotations

import colorsys
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from streamclust.core.blocks import as_dask, block_rows_for
from streamclust.core.files import atomic_output, write_atomic
from streamclust.errors import InputError
from streamclust.estimators.blockwise import fold_blocks, is_lazy, take_rows

__all__ = [
    "DensityHistograms",
    "density_histograms",
    "projection_extent",
    "cluster_colors",
    "hex_color",
    "render_density_overview",
    "render_small_multiples",
    "render_algorithm_panels",
    "label_colors",
    "matched_label_colors",
    "render_metrics_vs_k",
    "sample_points",
    "write_scatter3d_html",
]

#: 20 distinct colours (matplotlib's tab10 then the darker/lighter tab20 partners);
#: more clusters get colours spread around the hue circle.
_PALETTE = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
    [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
    [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
], dtype=np.float64) / 255.0


def cluster_colors(n: int) -> np.ndarray:
    """``(n, 3)`` RGB colours in [0, 1], one per cluster, stable across plots."""
    if n <= len(_PALETTE):
        return _PALETTE[:n].copy()
    extra = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.85)
             for i in range(n - len(_PALETTE))]
    return np.vstack([_PALETTE, np.array(extra)])


def hex_color(rgb: Sequence[float]) -> str:
    """``"#rrggbb"`` of an RGB colour in [0, 1] (the first three of ``rgb``), e.g. for HTML."""
    return "#" + "".join(f"{int(round(255 * float(c))):02x}" for c in rgb[:3])


# --------------------------------------------------------------------------
# Histograms
# --------------------------------------------------------------------------
@dataclass
class DensityHistograms:
    """Per-cluster 2-D count grids of a projection of every row.

    Attributes
    ----------
    counts : ndarray of int64, shape (n_clusters, bins, bins)
        ``counts[c, i, j]``: rows of cluster ``clusters[c]`` in x-bin ``i`` and
        y-bin ``j``.
    clusters : ndarray of int64, shape (n_clusters,)
        Label values, sorted.
    extent : tuple of float
        ``(xmin, xmax, ymin, ymax)`` of the grid.
    bins : int
    n_rows : int
        Rows binned (always ``counts.sum()``).
    n_clipped : int
        Rows outside the extent (or non-finite), counted in the edge bins.
    outliers : ndarray of int64, shape (n_clusters, bins, bins), or None
        Rows flagged as outliers, per cluster (``outlier_total`` sums them).
    """

    counts: np.ndarray
    clusters: np.ndarray
    extent: tuple[float, float, float, float]
    bins: int
    n_rows: int
    n_clipped: int = 0
    outliers: np.ndarray | None = None

    @property
    def total(self) -> np.ndarray:
        """``(bins, bins)`` counts of all rows."""
        return self.counts.sum(axis=0)

    @property
    def cluster_sizes(self) -> pd.Series:
        """Rows per cluster, indexed by label value."""
        return pd.Series(self.counts.sum(axis=(1, 2)), index=self.clusters, name="rows")

    @property
    def outlier_total(self) -> np.ndarray | None:
        """``(bins, bins)`` counts of flagged rows of all clusters (None without flags)."""
        return None if self.outliers is None else self.outliers.sum(axis=0)

    @property
    def n_flagged(self) -> int:
        """Rows flagged as outliers (0 without flags)."""
        return 0 if self.outliers is None else int(self.outliers.sum())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the grids to a ``.npz`` file (a few MB) to redraw without a pass."""
        path = Path(path)
        extra = {} if self.outliers is None else {"outliers": self.outliers}
        with open(path, "wb") as f:
            np.savez_compressed(f, counts=self.counts, clusters=self.clusters,
                                extent=np.asarray(self.extent, np.float64),
                                meta=np.array([self.bins, self.n_rows, self.n_clipped], np.int64),
                                **extra)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DensityHistograms:
        """Read grids written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            bins, n_rows, n_clipped = (int(v) for v in z["meta"])
            return cls(counts=z["counts"], clusters=z["clusters"],
                       extent=tuple(float(v) for v in z["extent"]), bins=bins, n_rows=n_rows,
                       n_clipped=n_clipped, outliers=z["outliers"] if "outliers" in z else None)


def _as_column(a: Any, n: int, what: str) -> da.Array:
    """``(n,)`` or ``(n, 1)`` array -> Dask ``(n, 1)`` float64 column."""
    shape = tuple(int(s) for s in a.shape)
    if shape not in ((n,), (n, 1)):
        raise InputError(f"{what} has shape {shape}; it should be ({n},), one value per row.")
    if isinstance(a, np.ndarray):
        arr = da.from_array(a.reshape(n, 1), chunks=(max(1, n), 1), name=False)
    else:
        arr = as_dask(a)
        if arr.ndim == 1:
            arr = arr[:, None]
    return arr.astype(np.float64)


def _proj_2d(proj: Any) -> tuple[Any, int]:
    if len(proj.shape) != 2 or proj.shape[1] < 2:
        raise InputError(f"the projection has shape {tuple(proj.shape)}; it should be (n_rows, 2 or 3).")
    return proj, int(proj.shape[0])


def projection_extent(
    proj: Any,
    how: str = "robust",
    *,
    sample_size: int = 100_000,
    percentiles: tuple[float, float] = (0.5, 99.5),
    pad: float = 0.05,
    memory: str | int | None = None,
    random_state: int = 0,
) -> tuple[float, float, float, float]:
    """Grid extent ``(xmin, xmax, ymin, ymax)`` of the first two columns of ``proj``.

    ``how="robust"`` reads a seeded sample of at most ``sample_size`` rows (one
    block-wise pass over the blocks holding them) and takes the given
    percentiles; ``"minmax"`` takes the exact range (one pass over all rows).
    Either is widened by ``pad`` of the range on each side.  Non-finite values
    are ignored.
    """
    proj, n = _proj_2d(proj)
    if n == 0:
        raise InputError("the projection has no rows.")
    if how == "minmax":
        def mm(block: np.ndarray, rows: slice) -> np.ndarray:
            b = np.asarray(block[:, :2], np.float64)
            b = np.where(np.isfinite(b), b, np.nan)
            if not np.isfinite(b).any():
                return np.array([np.inf, -np.inf, np.inf, -np.inf])
            return np.array([np.nanmin(b[:, 0]), np.nanmax(b[:, 0]), np.nanmin(b[:, 1]), np.nanmax(b[:, 1])])

        def comb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.array([min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])])

        br = block_rows_for(int(proj.shape[1]), memory, max_rows=1 << 18)
        lo_x, hi_x, lo_y, hi_y = fold_blocks(mm, proj, br, comb)
        pad = 0.0 if pad is None else pad
    elif how == "robust":
        m = min(n, int(sample_size))
        rng = np.random.default_rng(random_state)
        idx = np.arange(n) if m >= n else np.sort(rng.choice(n, size=m, replace=False))
        br = block_rows_for(int(proj.shape[1]), memory, max_rows=1 << 18)
        pts = np.asarray(take_rows(proj, idx, br, memory=memory) if is_lazy(proj)
                         else np.asarray(proj)[idx], np.float64)[:, :2]
        pts = pts[np.isfinite(pts).all(axis=1)]
        if len(pts) == 0:
            lo_x = hi_x = lo_y = hi_y = 0.0
        else:
            lo_x, hi_x = np.percentile(pts[:, 0], percentiles)
            lo_y, hi_y = np.percentile(pts[:, 1], percentiles)
    else:
        raise ValueError(f"how={how!r} should be 'robust' or 'minmax'.")

    def widen(lo: float, hi: float) -> tuple[float, float]:
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return -1.0, 1.0
        span = hi - lo
        if span <= 0:
            return float(lo) - 0.5, float(hi) + 0.5
        return float(lo - pad * span), float(hi + pad * span)

    return (*widen(lo_x, hi_x), *widen(lo_y, hi_y))


class _BinBlock:
    """Per block: sparse (label, cell, count) triples + flagged cells + clipped count."""

    def __init__(self, extent: tuple[float, float, float, float], bins: int, has_labels: bool,
                 has_flags: bool) -> None:
        self.extent = extent
        self.bins = bins
        self.has_labels = has_labels
        self.has_flags = has_flags

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, int]:
        x0, x1, y0, y1 = self.extent
        b = self.bins
        fx = (xy[:, 0] - x0) * (b / (x1 - x0))
        fy = (xy[:, 1] - y0) * (b / (y1 - y0))
        bad = ~(np.isfinite(fx) & np.isfinite(fy))
        fx = np.where(bad, 0.0, fx)
        fy = np.where(bad, 0.0, fy)
        clipped = bad | (fx < 0) | (fx >= b) | (fy < 0) | (fy >= b)
        ix = np.clip(np.floor(fx), 0, b - 1).astype(np.int64)
        iy = np.clip(np.floor(fy), 0, b - 1).astype(np.int64)
        return ix * b + iy, int(clipped.sum())

    def __call__(self, block: np.ndarray, rows: slice) -> dict:
        block = np.asarray(block, np.float64)
        cell, n_clipped = self.cells(block[:, :2])
        col = 2
        nb = self.bins * self.bins
        if self.has_labels:
            lab = block[:, col].astype(np.int64)
            col += 1
            values, inv = np.unique(lab, return_inverse=True)
            dense = np.bincount(inv * nb + cell, minlength=len(values) * nb)
            nz = np.flatnonzero(dense)
            triples = (values[nz // nb], nz % nb, dense[nz])
        else:
            dense = np.bincount(cell, minlength=nb)
            nz = np.flatnonzero(dense)
            triples = (np.zeros(len(nz), np.int64), nz, dense[nz])
        flagged = None
        if self.has_flags:
            f = block[:, col] != 0
            lab = block[f, 2].astype(np.int64) if self.has_labels else np.zeros(int(f.sum()), np.int64)
            values, inv = np.unique(lab, return_inverse=True)
            fc = np.bincount(inv * nb + cell[f], minlength=len(values) * nb)
            fnz = np.flatnonzero(fc)
            flagged = (values[fnz // nb], fnz % nb, fc[fnz])
        return {"t": triples, "f": flagged, "clipped": n_clipped, "n": int(block.shape[0])}


class _Dense:
    """Accumulator of :class:`_BinBlock` results."""

    def __init__(self, nb: int) -> None:
        self.nb = nb
        self.grids: dict[int, np.ndarray] = {}
        self.flagged: dict[int, np.ndarray] = {}
        self.clipped = 0
        self.n = 0

    def add(self, r: dict) -> _Dense:
        self._add(self.grids, *r["t"])
        if r["f"] is not None:
            self._add(self.flagged, *r["f"])
        self.clipped += r["clipped"]
        self.n += r["n"]
        return self

    def _add(self, grids: dict[int, np.ndarray], labels: np.ndarray, cells: np.ndarray,
             counts: np.ndarray) -> None:
        for value in np.unique(labels):
            sel = labels == value
            grid = grids.get(int(value))
            if grid is None:
                grid = grids[int(value)] = np.zeros(self.nb, np.int64)
            np.add.at(grid, cells[sel], counts[sel])


def density_histograms(
    proj: Any,
    labels: Any = None,
    *,
    bins: int = 200,
    extent: tuple[float, float, float, float] | str | None = None,
    outlier_flags: Any = None,
    memory: str | int | None = None,
    block_rows: int | None = None,
    random_state: int = 0,
) -> DensityHistograms:
    """Count every row of a 2-D projection into per-cluster grids, block by block.

    Parameters
    ----------
    proj : array-like, shape (n_rows, 2) or (n_rows, 3)
        numpy, Zarr or Dask; only the first two columns are used.
    labels : array-like of int, shape (n_rows,), optional
        Cluster of every row (any integers, e.g. -1 for noise); without it all
        rows are cluster 0.
    bins : int, default 200
        Bins per axis.
    extent : (xmin, xmax, ymin, ymax), "robust", "minmax" or None
        Grid extent; ``None`` means ``"robust"`` (see :func:`projection_extent`).
        Rows outside are clipped into the edge bins.
    outlier_flags : array-like of bool, shape (n_rows,), optional
        Rows flagged as outliers, binned into :attr:`DensityHistograms.outliers`.
    memory : str or int, optional
        Memory budget of the pass (sizes the blocks; default 1 GiB).
    block_rows : int, optional
        Rows per block (overrides ``memory``).
    random_state : int
        Seed of the extent sample.

    Returns
    -------
    DensityHistograms
        ``counts.sum() == n_rows`` and ``counts[c].sum()`` is the number of rows
        labelled ``clusters[c]``.
    """
    proj, n = _proj_2d(proj)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 2 <= bins <= 4096:
        raise InputError(f"bins={bins!r} should be an integer in [2, 4096].")
    bins = int(bins)
    if extent is None or isinstance(extent, str):
        extent = projection_extent(proj, extent or "robust", memory=memory, random_state=random_state)
    extent = tuple(float(v) for v in extent)
    if len(extent) != 4 or not all(np.isfinite(extent)) or extent[1] <= extent[0] or extent[3] <= extent[2]:
        raise InputError(f"extent={extent!r} should be finite (xmin, xmax, ymin, ymax) with min < max.")
    cols = [as_dask(proj)[:, :2].astype(np.float64) if not isinstance(proj, np.ndarray)
            else da.from_array(np.asarray(proj[:, :2], np.float64), chunks=(max(1, n), 2), name=False)]
    if labels is not None:
        cols.append(_as_column(labels, n, "labels"))
    if outlier_flags is not None:
        cols.append(_as_column(outlier_flags, n, "outlier_flags"))
    width = sum(c.shape[1] for c in cols)
    stacked = da.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    if block_rows is None:
        block_rows = block_rows_for(width + 8, memory, max_rows=1 << 16)
    func = _BinBlock(extent, bins, labels is not None, outlier_flags is not None)
    nb = bins * bins

    def combine(a: Any, b: Any) -> _Dense:
        acc = a if isinstance(a, _Dense) else _Dense(nb).add(a)
        return acc.add(b)

    if n == 0:
        acc = _Dense(nb)
    else:
        # each per-block result is at most 3 int64 per row of the block
        res = fold_blocks(func, stacked, int(block_rows), combine,
                          result_nbytes=24 * int(block_rows) + 16 * nb, memory=memory)
        acc = res if isinstance(res, _Dense) else _Dense(nb).add(res)
    values = np.array(sorted(acc.grids), dtype=np.int64)
    counts = (np.stack([acc.grids[int(v)] for v in values]) if len(values)
              else np.zeros((0, nb), np.int64)).reshape(len(values), bins, bins)
    outliers = None
    if outlier_flags is not None:
        empty = np.zeros(nb, np.int64)
        outliers = np.stack([acc.flagged.get(int(v), empty) for v in values]) if len(values) \
            else np.zeros((0, nb), np.int64)
        outliers = outliers.reshape(len(values), bins, bins)
    return DensityHistograms(
        counts=counts, clusters=values, extent=extent, bins=bins, n_rows=acc.n,
        n_clipped=acc.clipped, outliers=outliers,
    )


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _grid(fig: Any, nrows: int, ncols: int, *, left: float, right: float, bottom: float, top: float,
          wgap: float, hgap: float) -> np.ndarray:
    """``(nrows, ncols)`` axes of ``fig`` with margins and gaps given in inches.

    A fixed layout instead of ``tight_layout``, which measures every text of the figure (a
    draw) and leaves a layout engine that makes ``savefig`` draw the figure a second time:
    together 2/3 of the time of a metrics figure (0.6 s -> 0.2 s).
    """
    w, h = (float(v) for v in fig.get_size_inches())
    aw = (w - left - right - (ncols - 1) * wgap) / ncols
    ah = (h - bottom - top - (nrows - 1) * hgap) / nrows
    axes: np.ndarray = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": left / w, "right": 1 - right / w, "bottom": bottom / h, "top": 1 - top / h,
        "wspace": wgap / aw, "hspace": hgap / ah})
    return axes


#: zlib level of the figures' PNGs: 3 encodes in half the time of Pillow's default 6 for 10 % more bytes.
PNG_COMPRESS_LEVEL = 3


def _save(fig: Any, path: str | os.PathLike[str], dpi: int) -> Path:
    path = Path(path)
    with atomic_output(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png", facecolor="white",
                    pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return path


def _log_alpha(c: np.ndarray, floor: float = 0.25) -> np.ndarray:
    """Opacity from counts: 0 where empty, ``floor`` for one row, 1 at the max (log scale)."""
    top = float(c.max()) if c.size else 0.0
    if top <= 0:
        return np.zeros_like(c, dtype=np.float64)
    a = np.log1p(c) / math.log1p(top)
    return np.where(c > 0, floor + (1.0 - floor) * a, 0.0)


def _compose(counts: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """RGB image (bins, bins, 3) on white: hue blended by count, opacity log density."""
    total = counts.sum(axis=0).astype(np.float64)
    mix = np.tensordot(counts.astype(np.float64), colors, axes=(0, 0))  # (b, b, 3)
    mix /= np.maximum(total, 1.0)[..., None]
    alpha = _log_alpha(total)[..., None]
    return 1.0 - alpha * (1.0 - mix)


def _imshow(ax: Any, rgb: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    # grids are indexed [x, y]; images [row=y, col=x] with y up
    ax.imshow(np.transpose(rgb, (1, 0, 2)), origin="lower", extent=extent, aspect="auto",
              interpolation="nearest")


def _outlier_layer(ax: Any, hist: DensityHistograms, cluster: int | None = None,
                   size: float = 7.0, frame: tuple[float, float, float, float] | None = None) -> Any:
    """Flagged rows as black crosses at their cells (area grows with log count); the grid is drawn
    over ``frame`` ``(xmin, xmax, ymin, ymax)`` of the axes' data (default the grid's extent)."""
    if hist.outliers is None:
        return None
    grid = hist.outlier_total if cluster is None else hist.outliers[cluster]
    n = int(grid.sum())
    if n == 0:
        return None
    ix, iy = np.nonzero(grid)
    x0, x1, y0, y1 = hist.extent if frame is None else frame
    cx = x0 + (ix + 0.5) * (x1 - x0) / hist.bins
    cy = y0 + (iy + 0.5) * (y1 - y0) / hist.bins
    c = grid[ix, iy]
    return ax.scatter(cx, cy, s=size * (1 + np.log2(c)), marker="x", c="black", linewidths=0.6,
                      alpha=0.8, label=f"flagged outliers ({n:,})", zorder=3)


def _names(hist: DensityHistograms, names: Mapping[int, str] | None) -> list[str]:
    names = names or {}
    return [str(names.get(int(v), f"cluster {int(v)}")) for v in hist.clusters]


def render_density_overview(
    hist: DensityHistograms,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    cluster_names: Mapping[int, str] | None = None,
    show_outliers: bool = True,
    axis_labels: tuple[str, str] = ("component 1", "component 2"),
    dpi: int = 110,
) -> Path:
    """One PNG of every row: each cluster in its colour (blended where clusters
    overlap), opacity by log density; flagged outliers as black crosses.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.patches import Patch

    colors = cluster_colors(len(hist.clusters))
    fig = _figure(9.0, 7.0)
    ax = fig.add_axes([0.08, 0.08, 0.66, 0.84])
    _imshow(ax, _compose(hist.counts, colors), hist.extent)
    sizes = hist.counts.sum(axis=(1, 2))
    handles = [Patch(color=colors[i], label=f"{name}: {sizes[i]:,} ({sizes[i] / max(1, hist.n_rows):.1%})")
               for i, name in enumerate(_names(hist, cluster_names))]
    if show_outliers:
        sc = _outlier_layer(ax, hist)
        if sc is not None:
            handles.append(sc)
    ax.set_xlim(hist.extent[0], hist.extent[1])
    ax.set_ylim(hist.extent[2], hist.extent[3])
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    sub = f"{hist.n_rows:,} rows, {len(hist.clusters)} clusters, log density"
    if hist.n_clipped:
        sub += f"; {hist.n_clipped:,} rows outside the frame drawn on its edge"
    ax.set_title(f"{title}\n{sub}" if title else sub, fontsize=10)
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.755, 0.92), fontsize=8,
               frameon=False, ncols=1 if len(handles) <= 24 else 2)
    return _save(fig, path, dpi)


def render_small_multiples(
    hist: DensityHistograms,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    cluster_names: Mapping[int, str] | None = None,
    ncols: int = 4,
    show_outliers: bool = True,
    panel_size: float = 2.6,
    dpi: int = 100,
) -> Path:
    """One panel per cluster: its log density in its colour over all rows in grey.

    The panels share ONE matplotlib axes whose data unit is the inch of the figure (each panel
    an image in its own box, a frame and a title): 16 axes cost more than their drawing.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.patches import Rectangle

    k = max(1, len(hist.clusters))
    ncols = max(1, min(int(ncols), k))
    nrows = math.ceil(k / ncols)
    colors = cluster_colors(len(hist.clusters))
    width, height = panel_size * ncols, panel_size * nrows + 0.6
    fig = _figure(width, height)
    left, right, bottom, top, wgap, hgap = 0.1, 0.1, 0.1, 0.75 if title else 0.35, 0.12, 0.3
    area_w, area_h = width - left - right, height - bottom - top
    ax = fig.add_axes((left / width, bottom / height, area_w / width, area_h / height))
    ax.set_axis_off()
    ax.set_xlim(0, area_w)
    ax.set_ylim(0, area_h)
    pw, ph = (area_w - (ncols - 1) * wgap) / ncols, (area_h - (nrows - 1) * hgap) / nrows
    total_alpha = _log_alpha(hist.total, floor=0.3)[..., None] * 0.45
    grey = 1.0 - total_alpha * (1.0 - np.array([0.35, 0.35, 0.35]))
    names = _names(hist, cluster_names)
    sizes = hist.counts.sum(axis=(1, 2))
    for i in range(len(hist.clusters)):
        r, c = divmod(i, ncols)
        x0, y0 = c * (pw + wgap), (nrows - 1 - r) * (ph + hgap)
        box = (x0, x0 + pw, y0, y0 + ph)
        a = _log_alpha(hist.counts[i])[..., None]
        _imshow(ax, grey * (1.0 - a) + colors[i] * a, box)
        edge = ax.add_patch(Rectangle((x0, y0), pw, ph, fill=False, edgecolor="black", linewidth=0.8, zorder=4,
                                      clip_on=False))
        crosses = _outlier_layer(ax, hist, cluster=i, size=4.0, frame=box) if show_outliers else None
        if crosses is not None:
            crosses.set_clip_path(edge)  # crosses at the panel's edge cells stop at its frame
        ax.text(x0 + pw / 2, y0 + ph + 0.08, f"{names[i]}: {sizes[i]:,} ({sizes[i] / max(1, hist.n_rows):.1%})",
                ha="center", va="bottom", fontsize=8, color=hex_color(colors[i] * 0.8))
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


#: Colour of noise (label -1) in :func:`render_algorithm_panels`: a dark grey, unlike every cluster colour.
NOISE_COLOR = np.array([0.2, 0.2, 0.2])


def label_colors(clusters: Sequence[int]) -> np.ndarray:
    """``(len(clusters), 3)`` RGB colours of sorted label values: the non-negative labels take
    :func:`cluster_colors` in order, noise (``-1``) and any other negative label :data:`NOISE_COLOR`."""
    values = np.asarray(clusters, np.int64)
    colors = np.tile(NOISE_COLOR, (len(values), 1))
    positive = values >= 0
    colors[positive] = cluster_colors(int(positive.sum()))
    return colors


def matched_label_colors(clusters: Sequence[int], overlap: np.ndarray) -> np.ndarray:
    """Colours of one labelling matched to a reference labelling's, so that the same group of rows
    has the same colour in both pictures.

    The reference's clusters are coloured by :func:`cluster_colors` in order (as
    :func:`render_density_overview` colours a labelling without noise).  The one-to-one matching of
    largest total overlap (Hungarian assignment) gives each matched cluster its reference
    cluster's colour; unmatched clusters take the colours after the reference's; noise (negative
    labels) is :data:`NOISE_COLOR`.

    Parameters
    ----------
    clusters : sequence of int, shape (n_groups,)
        The labelling's sorted label values.
    overlap : ndarray of int, shape (n_groups, n_reference)
        ``overlap[i, j]``: rows shared by cluster ``clusters[i]`` and the ``j``-th reference cluster.

    Returns
    -------
    ndarray, shape (n_groups, 3)
    """
    from scipy.optimize import linear_sum_assignment

    values = np.asarray(clusters, np.int64)
    overlap = np.asarray(overlap, np.float64)
    if overlap.shape[0] != len(values):
        raise InputError(f"overlap has {overlap.shape[0]} rows for {len(values)} clusters.")
    n_ref = overlap.shape[1]
    colors = np.tile(NOISE_COLOR, (len(values), 1))
    positive = np.flatnonzero(values >= 0)
    palette = cluster_colors(n_ref + len(positive))
    rows, cols = linear_sum_assignment(overlap[positive], maximize=True)
    colors[positive[rows]] = palette[cols]
    unmatched = np.setdiff1d(np.arange(len(positive)), rows)
    colors[positive[unmatched]] = palette[n_ref:n_ref + len(unmatched)]
    return colors


def render_algorithm_panels(
    hists: Mapping[str, DensityHistograms],
    path: str | os.PathLike[str],
    *,
    titles: Mapping[str, str] | None = None,
    colors: Mapping[str, np.ndarray] | None = None,
    title: str = "",
    axis_labels: tuple[str, str] = ("component 1", "component 2"),
    ncols: int = 4,
    panel_size: float = 3.2,
    dpi: int = 100,
) -> Path:
    """One panel per labelling of the same rows in the same projection (e.g. one per clustering
    algorithm): each panel drawn like :func:`render_density_overview` -- every cluster in its
    colour, blended where clusters overlap, opacity by log density -- with noise (label ``-1``) in
    dark grey (:data:`NOISE_COLOR`).

    Parameters
    ----------
    hists : mapping of str to DensityHistograms
        One grid set per panel, in panel order (give them the same ``extent`` to compare them).
    path : path of the PNG.
    titles : mapping of str to str, optional
        Panel titles by key (default: the key, its number of clusters and its noise share).
    colors : mapping of str to ndarray, optional
        Per key, ``(n_clusters, 3)`` RGB colours of ``hists[key].clusters`` (e.g.
        :func:`matched_label_colors`); default :func:`label_colors`.

    Returns
    -------
    Path
        ``path``.
    """
    if not hists:
        raise InputError("render_algorithm_panels needs at least one labelling.")
    n = len(hists)
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    fig = _figure(panel_size * ncols, panel_size * nrows + (0.7 if title else 0.3))
    axes = _grid(fig, nrows, ncols, left=0.3, right=0.1, bottom=0.3, top=0.95 if title else 0.55,
                 wgap=0.15, hgap=0.75)
    names = list(hists)
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        hist = hists[names[i]]
        panel_colors = (colors or {}).get(names[i])
        _imshow(ax, _compose(hist.counts, label_colors(hist.clusters) if panel_colors is None else panel_colors),
                hist.extent)
        ax.set_xlim(hist.extent[0], hist.extent[1])
        ax.set_ylim(hist.extent[2], hist.extent[3])
        text = (titles or {}).get(names[i])
        if not text:
            noise = int(hist.counts[hist.clusters < 0].sum())
            text = f"{names[i]}: {int((hist.clusters >= 0).sum())} clusters"
            if noise:
                text += f", {noise / max(1, hist.n_rows):.0%} noise"
        ax.set_title(text, fontsize=9)
        if i % ncols == 0:
            ax.set_ylabel(axis_labels[1], fontsize=8)
        if i >= n - ncols:
            ax.set_xlabel(axis_labels[0], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


#: Metrics drawn by :func:`render_metrics_vs_k`: column, title.
_METRIC_PANELS = (
    ("silhouette", "silhouette (sampled) - higher is better"),
    ("calinski_harabasz", "Calinski-Harabasz - higher is better"),
    ("davies_bouldin", "Davies-Bouldin - lower is better"),
    ("inertia", "inertia - lower; look for the elbow"),
)


def render_metrics_vs_k(
    metrics: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """Silhouette, CH, DB and inertia against k; one line per (set, algorithm).

    Parameters
    ----------
    metrics : DataFrame
        Columns ``k`` and any of ``silhouette``, ``calinski_harabasz``,
        ``davies_bouldin``, ``inertia``; optional ``set``, ``algorithm``,
        ``chosen`` (bool: the chosen k, marked with a star and a dashed line).
    path : path of the PNG.

    Returns
    -------
    Path
    """
    if "k" not in metrics.columns:
        raise InputError("metrics needs a 'k' column.")
    df = metrics.copy()
    for col in ("set", "algorithm"):
        if col not in df.columns:
            df[col] = ""
    if "chosen" not in df.columns:
        df["chosen"] = False
    groups = list(df.groupby(["set", "algorithm"], sort=True, dropna=False))
    colors = cluster_colors(max(1, len(groups)))
    line_names = [" / ".join(str(p) for p in key if str(p)) for key, _ in groups]
    legend_rows = math.ceil(len(groups) / 4) if any(line_names) else 0
    fig = _figure(10.0, 6.4)
    axes = _grid(fig, 2, 2, left=0.6, right=0.2, bottom=0.45 + (0.1 + 0.2 * legend_rows if legend_rows else 0),
                 top=0.95, wgap=0.75, hgap=0.75).ravel()
    for ax, (col, label) in zip(axes, _METRIC_PANELS):
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("k", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if col not in df.columns or df[col].isna().all():
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
            continue
        for gi, (_, g) in enumerate(groups):
            g = g.sort_values("k")
            ax.plot(g["k"], g[col], marker="o", ms=3, lw=1.4, color=colors[gi], label=line_names[gi] or None)
            chosen = g[g["chosen"].astype(bool)]
            for _, row in chosen.iterrows():
                ax.axvline(row["k"], color=colors[gi], ls="--", lw=0.8, alpha=0.7)
                ax.plot([row["k"]], [row[col]], marker="*", ms=12, color=colors[gi],
                        markeredgecolor="black", markeredgewidth=0.6, zorder=4)
        if col in ("calinski_harabasz", "inertia"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ks = sorted(df["k"].unique())
        if len(ks) <= 20:
            ax.set_xticks(ks)
    handles, names = axes[0].get_legend_handles_labels()
    if handles and any(names):
        fig.legend(handles, names, loc="lower center", ncols=min(4, len(handles)), fontsize=8,
                   frameon=False)
    fig.suptitle((title + "\n" if title else "") + "star / dashed line: chosen k", fontsize=10)
    return _save(fig, path, dpi)


# --------------------------------------------------------------------------
# Interactive 3-D scatter of a sample
# --------------------------------------------------------------------------
def sample_points(
    proj: Any,
    labels: Any = None,
    n: int = 20_000,
    *,
    random_state: int = 0,
    memory: str | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded uniform sample of rows of a projection, read block-wise.

    Returns
    -------
    points : ndarray of float32, shape (m, n_dims)
    labels : ndarray of int64, shape (m,)  (zeros without ``labels``)
    rows : ndarray of int64, shape (m,)  sorted row numbers
    """
    total = int(proj.shape[0])
    m = min(total, int(n))
    rng = np.random.default_rng(random_state)
    rows = np.arange(total) if m >= total else np.sort(rng.choice(total, size=m, replace=False))
    br = block_rows_for(int(proj.shape[1]), memory, max_rows=1 << 18)
    pts = take_rows(proj, rows, br, memory=memory) if is_lazy(proj) else np.asarray(proj)[rows]
    if labels is None:
        lab = np.zeros(m, np.int64)
    else:
        lab_arr = labels if is_lazy(labels) else np.asarray(labels)
        if is_lazy(lab_arr):
            col = _as_column(lab_arr, total, "labels")
            lab = take_rows(col, rows, block_rows_for(1, memory, max_rows=1 << 18), memory=memory)
            lab = np.asarray(lab).ravel().astype(np.int64)
        else:
            lab = lab_arr.reshape(-1)[rows].astype(np.int64)
    return np.asarray(pts, np.float32), lab, rows.astype(np.int64)


_SCATTER_JS = r"""
(function () {
  var D = JSON.parse(document.getElementById('scatter-data').textContent);
  var cv = document.getElementById('cv'), ctx = cv.getContext('2d');
  var P = D.points, L = D.labels, C = D.colors, n = L.length;
  var dim = P.length / n, yaw = 0.6, pitch = 0.35, zoom = 1.0, hidden = {};
  var lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  for (var i = 0; i < n; i++) for (var d = 0; d < dim; d++) {
    var v = P[i * dim + d]; if (v < lo[d]) lo[d] = v; if (v > hi[d]) hi[d] = v; }
  if (dim < 3) { lo[2] = 0; hi[2] = 0; }
  var mid = [0, 1, 2].map(function (d) { return (lo[d] + hi[d]) / 2; });
  var span = Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) || 1;
  function draw() {
    var w = cv.width, h = cv.height, s = Math.min(w, h) * 0.8 * zoom / span;
    ctx.fillStyle = '#ffffff'; ctx.fillRect(0, 0, w, h);
    var cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    var order = new Array(n), depth = new Float64Array(n), px = new Float64Array(n), py = new Float64Array(n);
    for (var i = 0; i < n; i++) {
      var x = P[i * dim] - mid[0], y = P[i * dim + 1] - mid[1], z = dim > 2 ? P[i * dim + 2] - mid[2] : 0;
      var x1 = cy * x + sy * z, z1 = -sy * x + cy * z;
      var y2 = cp * y - sp * z1, z2 = sp * y + cp * z1;
      px[i] = w / 2 + s * x1; py[i] = h / 2 - s * y2; depth[i] = z2; order[i] = i;
    }
    order.sort(function (a, b) { return depth[a] - depth[b]; });
    ctx.globalAlpha = 0.65;
    for (var j = 0; j < n; j++) {
      var k = order[j]; if (hidden[L[k]]) continue;
      ctx.fillStyle = C[L[k]] || '#333333'; ctx.fillRect(px[k] - 1.5, py[k] - 1.5, 3, 3);
    }
    ctx.globalAlpha = 1.0;
  }
  var drag = null;
  cv.addEventListener('mousedown', function (e) { drag = [e.clientX, e.clientY]; });
  window.addEventListener('mouseup', function () { drag = null; });
  window.addEventListener('mousemove', function (e) {
    if (!drag) return;
    yaw += (e.clientX - drag[0]) * 0.01; pitch += (e.clientY - drag[1]) * 0.01;
    drag = [e.clientX, e.clientY]; draw();
  });
  cv.addEventListener('wheel', function (e) {
    e.preventDefault(); zoom *= e.deltaY < 0 ? 1.1 : 1 / 1.1; draw(); }, {passive: false});
  var items = document.querySelectorAll('#legend [data-label]');
  for (var i = 0; i < items.length; i++) items[i].addEventListener('click', function () {
    var l = this.getAttribute('data-label'); hidden[l] = !hidden[l];
    this.style.opacity = hidden[l] ? 0.35 : 1; draw(); });
  draw();
})();
"""


def write_scatter3d_html(
    points: np.ndarray,
    labels: np.ndarray | None,
    path: str | os.PathLike[str],
    *,
    title: str = "3-D view of a sample of rows",
    cluster_names: Mapping[int, str] | None = None,
    max_points: int = 30_000,
) -> Path:
    """Write an interactive 3-D (or 2-D) scatter as ONE self-contained HTML file.

    Drag to rotate, wheel to zoom, click a legend entry to hide a cluster.  No
    external script, style sheet or font: it works offline.

    Parameters
    ----------
    points : ndarray, shape (m, 2 or 3)
        E.g. from :func:`sample_points` on a 3-D projection.
    labels : ndarray of int, shape (m,), optional
    path : path of the HTML file.
    max_points : int
        At most this many points are written (the first ones).

    Returns
    -------
    Path
    """
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise InputError(f"points has shape {pts.shape}; it should be (m, 2) or (m, 3).")
    m = min(len(pts), int(max_points))
    pts = pts[:m]
    lab = np.zeros(m, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)[:m]
    if len(lab) != m:
        raise InputError("labels should have one value per point.")
    finite = np.isfinite(pts).all(axis=1)
    pts, lab = pts[finite], lab[finite]
    values = np.unique(lab)
    colors = cluster_colors(len(values))
    color_of = {str(int(v)): hex_color(colors[i]) for i, v in enumerate(values)}
    names = cluster_names or {}
    data = {"points": [round(float(v), 4) for v in pts.ravel()],
            "labels": [str(int(v)) for v in lab], "colors": color_of}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    counts = {int(v): int(c) for v, c in zip(*np.unique(lab, return_counts=True))}
    legend = "".join(
        f'<span class="item" data-label="{int(v)}"><span class="sw" style="background:{color_of[str(int(v))]}">'
        f'</span>{html.escape(str(names.get(int(v), f"cluster {int(v)}")))} ({counts[int(v)]:,})</span>'
        for v in values)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px; color: #222; }}
#cv {{ border: 1px solid #ccc; cursor: grab; max-width: 100%; }}
#legend .item {{ display: inline-block; margin: 2px 10px 2px 0; cursor: pointer; user-select: none; }}
#legend .sw {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }}
</style></head>
<body>
<h1 style="font-size:18px">{html.escape(title)}</h1>
<p>{len(lab):,} points. Drag to rotate, mouse wheel to zoom, click a cluster below to hide or show it.</p>
<div id="legend">{legend}</div>
<canvas id="cv" width="900" height="700"></canvas>
<script type="application/json" id="scatter-data">{payload}</script>
<script>{_SCATTER_JS}</script>
</body></html>
"""
    path = Path(path)
    write_atomic(path, page)
    return path
