"""Picture montages of clusters and outliers: which rows to show, and the grid of thumbnails.

* :func:`pick_montage_rows` -- in ONE pass over the row blocks, per cluster: the
  rows nearest its centre, a seeded uniform random draw (:func:`random_row_keys`),
  and the border cases (smallest margin between the nearest and second-nearest
  centre), keeping only bounded candidate lists, never all distances.
* :func:`montage` -- a captioned grid of thumbnails (``PIL.Image``) read from an
  :class:`~streamclust.report.images.ImageSource` (safe reading of a zip or folder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from streamclust.core.blocks import as_dask, block_rows_for
from streamclust.errors import InputError
from streamclust.estimators.blockwise import fold_blocks
from streamclust.report.images import ImageSource

__all__ = [
    "pick_montage_rows",
    "montage",
    "random_row_keys",
    "squared_distances",
]


# --------------------------------------------------------------------------
# Choosing rows
# --------------------------------------------------------------------------
_KINDS = ("nearest", "random", "border")


def random_row_keys(rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform random key per row, independent of blocking: splitmix64 of (row, seed).

    Parameters
    ----------
    rows : ndarray of int, shape (n,)
        Row numbers.
    seed : int
        Only its low 32 bits are used.

    Returns
    -------
    ndarray of uint64, shape (n,)
        ``keys / 2.0**64`` is uniform in [0, 1); :func:`pick_montage_rows` draws
        the rows with the smallest keys.
    """
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape ``(r, k)``, of ``x`` ``(r, d)`` to ``centers`` ``(k, d)``.

    Computed in float64 as ``|x|^2 - 2 x.c + |c|^2``, clamped at 0.
    """
    x = np.asarray(x, np.float64)
    c = np.asarray(centers, np.float64)
    d2 = np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * (x @ c.T) + np.einsum("ij,ij->i", c, c)[None, :]
    return np.maximum(d2, 0.0)


def _montage_candidates(x: np.ndarray, lab: np.ndarray, rows: np.ndarray, centers: np.ndarray,
                        seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per kind: (cluster, value, row) of every row with a valid label (value: lower = preferred)."""
    k = centers.shape[0]
    keep = lab >= 0
    x, lab, rows = x[keep], lab[keep], rows[keep]
    d2 = squared_distances(x, centers)
    own = np.sqrt(d2[np.arange(len(lab)), lab])
    if k >= 2:
        two = np.sqrt(np.partition(d2, 1, axis=1)[:, :2])
        margin = two[:, 1] - two[:, 0]
    else:
        margin = np.full(len(lab), np.inf)
    key = random_row_keys(rows, seed).astype(np.float64) / 2.0**64
    return {"nearest": (lab, own, rows), "random": (lab, key, rows), "border": (lab, margin, rows)}


def _top_per_group(group: np.ndarray, value: np.ndarray, rows: np.ndarray, n: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the ``n`` smallest ``(value, row)`` of every group, sorted."""
    if n <= 0 or len(group) == 0:
        empty = np.empty(0, np.int64)
        return empty, np.empty(0, np.float64), empty
    order = np.lexsort((rows, value, group))
    g = group[order]
    starts = np.searchsorted(g, g, side="left")
    rank = np.arange(len(g)) - starts
    sel = order[rank < n]
    return group[sel], value[sel], rows[sel]


class _PickBlock:
    def __init__(self, centers: np.ndarray, n: dict[str, int], seed: int) -> None:
        self.centers = centers
        self.n = n
        self.seed = seed

    def __call__(self, block: np.ndarray, rows: slice) -> dict:
        d = self.centers.shape[1]
        x = block[:, :d]
        lab = block[:, d].astype(np.int64)
        k = self.centers.shape[0]
        if lab.size and lab.max() >= k:
            raise InputError(f"label {int(lab.max())} has no centre: {k} centres given.")
        ids = np.arange(rows.start, rows.stop, dtype=np.int64)
        cands = _montage_candidates(x, lab, ids, self.centers, self.seed)
        return {kind: _top_per_group(*cands[kind], self.n[kind]) for kind in _KINDS}


def _merge_picks(n: dict[str, int]):
    def combine(a: dict, b: dict) -> dict:
        return {kind: _top_per_group(*(np.concatenate([a[kind][i], b[kind][i]]) for i in range(3)), n[kind])
                for kind in _KINDS}
    return combine


def _stack_columns(X: Any, extra: Sequence[Any], n: int) -> da.Array:
    """Dask ``(n, d + len(extra))`` float64 array of ``X`` and extra ``(n,)`` columns."""
    if isinstance(X, np.ndarray):
        base = da.from_array(np.asarray(X), chunks=(max(1, n), X.shape[1]), name=False)
    else:
        base = as_dask(X)
    cols = [base.astype(np.float64)]
    for a in extra:
        shape = tuple(int(s) for s in a.shape)
        if shape not in ((n,), (n, 1)):
            raise InputError(f"an array of shape {shape} was given where one value per row ({n},) is needed.")
        col = (da.from_array(np.asarray(a).reshape(n, 1), chunks=(max(1, n), 1), name=False)
               if isinstance(a, np.ndarray) else as_dask(a))
        if col.ndim == 1:
            col = col[:, None]
        cols.append(col.astype(np.float64))
    return da.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]


def pick_montage_rows(
    reduced: Any,
    labels: Any,
    centers: Any,
    *,
    n_nearest: int = 8,
    n_random: int = 8,
    n_border: int = 8,
    random_state: int = 0,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> pd.DataFrame:
    """Rows to show for every cluster, chosen in ONE pass over the row blocks.

    For each cluster ``c`` (rows with ``labels == c``; negative labels are
    ignored):

    * ``"nearest"``: the ``n_nearest`` rows closest to ``centers[c]``
      (``value`` = Euclidean distance);
    * ``"random"``: ``n_random`` rows drawn uniformly without replacement:
      the rows with the smallest seeded random keys (a splitmix64 hash of the
      row number and ``random_state``), so the draw does not depend on the
      block size or order (``value`` = the key in [0, 1));
    * ``"border"``: the ``n_border`` rows with the smallest margin
      ``d(second-nearest centre) - d(nearest centre)`` (``value`` = margin).

    Each block keeps only its best ``n`` candidates per cluster and kind, and
    blocks are merged the same way, so memory is ``O(k * n)`` whatever the
    number of rows.  Ties are broken by the lower row number.

    Parameters
    ----------
    reduced : array-like, shape (n_rows, d)
        numpy, Zarr or Dask (the space ``centers`` live in).
    labels : array-like of int, shape (n_rows,)
    centers : array-like, shape (k, d)
    n_nearest, n_random, n_border : int
    random_state : int
    memory : str or int, optional
        Memory budget of the pass (sizes the blocks).
    block_rows : int, optional
        Rows per block (overrides ``memory``).

    Returns
    -------
    DataFrame
        Columns ``cluster``, ``kind`` (``"nearest"``, ``"random"``,
        ``"border"``), ``rank`` (0 = best), ``row``, ``value``; sorted by
        cluster, kind (in that order), rank.
    """
    centers = np.asarray(centers, np.float64)
    if centers.ndim != 2:
        raise InputError(f"centers has shape {centers.shape}; it should be (k, n_features).")
    n, d = int(reduced.shape[0]), int(reduced.shape[1])
    if centers.shape[1] != d:
        raise InputError(f"centers have {centers.shape[1]} features, the rows {d}.")
    counts = {"nearest": int(n_nearest), "random": int(n_random), "border": int(n_border)}
    if any(v < 0 for v in counts.values()):
        raise InputError(f"n_nearest, n_random, n_border should be >= 0, got {counts}.")
    k = centers.shape[0]
    stacked = _stack_columns(reduced, [labels], n)
    if block_rows is None:
        block_rows = block_rows_for(d + 1 + 2 * k + 8, memory, max_rows=1 << 16)
    combine = _merge_picks(counts)
    out = fold_blocks(_PickBlock(centers, counts, int(random_state)), stacked, int(block_rows),
                      combine) if n else {kind: (np.empty(0, np.int64),) * 3 for kind in _KINDS}
    frames = []
    for ki, kind in enumerate(_KINDS):
        g, v, r = out[kind]
        order = np.lexsort((r, v, g))
        g, v, r = g[order], v[order], r[order]
        rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
        frames.append(pd.DataFrame({"cluster": g.astype(np.int64), "kind": kind, "kind_order": ki,
                                    "rank": rank.astype(np.int64), "row": r.astype(np.int64),
                                    "value": v.astype(np.float64)}))
    table = pd.concat(frames, ignore_index=True)
    table = table.sort_values(["cluster", "kind_order", "rank"], kind="stable").drop(columns="kind_order")
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def montage(
    source: ImageSource,
    paths: Sequence[str],
    *,
    ncols: int = 8,
    tile: tuple[int, int] = (96, 72),
    labels: Sequence[str] | None = None,
    title: str | None = None,
    caption_lines: int = 1,
) -> Image.Image:
    """A grid of thumbnails with captions.

    Parameters
    ----------
    source : ImageSource
    paths : sequence of str
        Image paths relative to the source's root (e.g. store ids).
    ncols : int
        Tiles per row.
    tile : (width, height)
        Box each thumbnail is fitted into (aspect ratio kept).
    labels : sequence of str, optional
        Caption of every tile (default: the file name).  ``"\\n"`` separates
        caption lines.
    title : str, optional
        A line above the grid.
    caption_lines : int
        Lines of caption under each tile.

    Returns
    -------
    PIL.Image.Image
        RGB.  Unreadable images are drawn as grey tiles marked "not readable";
        the reasons are in ``source.skipped``.
    """
    paths = list(paths)
    if labels is not None and len(labels) != len(paths):
        raise InputError(f"{len(labels)} labels for {len(paths)} paths.")
    tw, th = int(tile[0]), int(tile[1])
    ncols = max(1, min(int(ncols), max(1, len(paths))))
    nrows = max(1, math.ceil(len(paths) / ncols))
    pad = 4
    font = _font(11)
    line_h = 13
    cap_h = line_h * max(0, int(caption_lines))
    title_h = 22 if title else 0
    width = ncols * (tw + pad) + pad
    height = title_h + nrows * (th + cap_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), _fit_text(draw, title, _font(13), width - 2 * pad), fill=(20, 20, 20),
                  font=_font(13))
    for i, path in enumerate(paths):
        r, c = divmod(i, ncols)
        x = pad + c * (tw + pad)
        y = title_h + pad + r * (th + cap_h + pad)
        img = source.read(path, max_side=2 * max(tw, th))
        if img is None:
            draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=(215, 215, 215), outline=(160, 160, 160))
            draw.text((x + 4, y + th // 2 - 7), "not readable", fill=(90, 90, 90), font=font)
        else:
            img = ImageOps.contain(img, (tw, th), Image.Resampling.LANCZOS)
            canvas.paste(img, (x + (tw - img.width) // 2, y + (th - img.height) // 2))
        if cap_h:
            text = labels[i] if labels is not None else PurePosixPath(str(path).replace("\\", "/")).name
            for j, line in enumerate(str(text).split("\n")[: int(caption_lines)]):
                draw.text((x, y + th + 1 + j * line_h), _fit_text(draw, line, font, tw),
                          fill=(40, 40, 40), font=font)
    return canvas
