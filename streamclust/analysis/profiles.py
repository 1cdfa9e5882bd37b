"""What is in each cluster, and which descriptor set clusters best: the analysis layer.

A study gives, per descriptor set, an ``(n,)`` integer label array (``-1`` =
noise), optionally an ``(n,)`` outlier score and flag and the ``(n, c)``
reduced rows.  This module turns them into something a person can read:

* :func:`read_metadata` reads per-image metadata (VeRi-Wild ``vehicle_info.txt``
  or any CSV / Parquet with a path column) and aligns it to the store's ids;
* :func:`profile_clusters` builds, for one labelling, contingency tables of
  cluster x attribute value (accumulated block by block, so the labels may be
  Zarr or Dask arrays of any length), the over-represented values of every
  cluster, agreement scores between clusters and attributes (purity, NMI, AMI,
  ARI -- equal to scikit-learn's label-based functions) and ONE sentence per
  cluster that says only what the counts support;
* :func:`compare_sets` compares descriptor sets with one another (label
  agreement, outlier-score rank correlation, k-nearest-neighbour overlap in each
  set's reduced space), with the metadata (AMI per attribute, and how often
  kNN neighbours share an attribute value) and by their clustering metrics
  normalised to be comparable, and recommends a set;
* :func:`cluster_spread` gives the mean distance to the centroid per cluster
  (two block-wise passes), which the sentences use to call clusters compact
  or diffuse.

Memory
------
Labels, flags and scores are read in row blocks (:func:`streamclust.core.blocks.iter_blocks`);
only the count tables (clusters x values) and fixed-size samples are kept.
The metadata DataFrame is in memory (it is small: a few bytes per row and
column once categorical).  :func:`compare_sets` reads reduced rows only
through seeded samples (20k rows by default).

Conventions
-----------
Noise (label ``-1``) is a group of its own everywhere: in the sizes, the
tables and the agreement scores (scikit-learn would treat it the same way if
given the labels).  Rows whose attribute value is missing (metadata not
matched) are left out of that attribute's table and scores; shares of a value
are among the cluster's rows whose value is known.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics.cluster import mutual_info_score

from streamclust.core.blocks import block_rows_for, iter_blocks, read_rows
from streamclust.estimators.blockwise import take_rows
from streamclust.errors import InputError

__all__ = [
    "ClusterProfiles",
    "SetComparison",
    "read_metadata",
    "profile_clusters",
    "compare_sets",
    "cluster_spread",
    "contingency_scores",
    "VEHICLE_ATTRIBUTES",
    "CONDITION_ATTRIBUTES",
]

#: Attributes describing the vehicle itself, in the order sentences mention them.
VEHICLE_ATTRIBUTES: tuple[str, ...] = ("color", "type", "view", "model")

#: Attributes describing acquisition conditions (nuisance for a descriptor set):
#: reported, but never used to recommend a set.
CONDITION_ATTRIBUTES: tuple[str, ...] = ("camera", "time", "date", "hour", "daytime")

_DEFAULT_ORDER = ("color", "type", "view", "model", "camera")
_MAX_VALUES = 10_000  # distinct values of a profiled attribute (count tables are dense)
_PATH_COLUMNS = ("path", "paths", "image", "file", "image_path", "img_path", "filename",
                 "file_name", "image_name", "img", "image_file")
_ALIASES = {
    "colour": "color", "vehicle_color": "color", "vehicle_colour": "color", "car_color": "color",
    "camera_id": "camera", "cam": "camera", "cam_id": "camera", "cameraid": "camera",
    "camera_name": "camera",
    "vehicle_type": "type", "body_type": "type", "car_type": "type",
    "vehicle_model": "model", "model_name": "model", "car_model": "model",
    "timestamp": "time", "datetime": "time", "date_time": "time",
}
_ACRONYMS = {"suv": "SUV", "mpv": "MPV", "suvs": "SUVs", "mpvs": "MPVs"}
_PLURAL_EXCEPTIONS = {"bus": "buses", "minibus": "minibuses", "suv": "SUVs", "mpv": "MPVs",
                      "coach": "coaches", "taxi": "taxis", "lorry": "lorries"}


# ---------------------------------------------------------------------------
# reading rows
# ---------------------------------------------------------------------------
def _n_rows(arr: Any) -> int:
    return int(arr.shape[0]) if hasattr(arr, "shape") else len(arr)


def _plain(arr: Any) -> Any:
    """Pandas objects to numpy; numpy, Zarr and Dask arrays unchanged."""
    if isinstance(arr, (pd.Series, pd.Index)):
        return arr.to_numpy()
    if isinstance(arr, (list, tuple)):
        return np.asarray(arr)
    return arr


def _as_labels(block: np.ndarray, name: str, start: int) -> np.ndarray:
    """Check an integer label block; floats must be integral."""
    block = np.asarray(block).reshape(-1)
    if block.dtype.kind in "iu":
        return block.astype(np.int64, copy=False)
    if block.dtype.kind == "b":
        return block.astype(np.int64)
    if block.dtype.kind == "f":
        bad = ~np.isfinite(block) | (block != np.round(block))
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise InputError(f"{name}: labels must be integers; row {row} is {block[row - start]!r}.")
        return block.astype(np.int64)
    raise InputError(f"{name}: labels must be an integer array, got dtype {block.dtype}.")


def _block_rows(memory: str | int | None, block_rows: int | None, n_arrays: int = 1) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise InputError(f"block_rows={block_rows} should be >= 1.")
        return int(block_rows)
    # a label row costs 8 bytes per array in int64, plus codes and workspace
    return block_rows_for(max(1, 2 * n_arrays), memory, max_rows=1 << 18)


def _iter_aligned(arrays: Sequence[Any], block_rows: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """Row blocks of several ``(n, ...)`` arrays, the first read ahead by iter_blocks."""
    first, rest = arrays[0], arrays[1:]
    for rows, block in iter_blocks(first, block_rows):
        yield rows, [block] + [read_rows(a, rows) for a in rest]


def _take_rows(arr: Any, idx: np.ndarray, block_rows: int) -> np.ndarray:
    """Rows ``idx`` (sorted, unique) of a pandas, numpy, Zarr or Dask array, read block by block."""
    return take_rows(_plain(arr), idx, block_rows)


# ---------------------------------------------------------------------------
# contingency tables
# ---------------------------------------------------------------------------
class _Counts:
    """A dense count table whose row and column keys (ints) grow as blocks arrive."""

    def __init__(self) -> None:
        self.rows = np.empty(0, np.int64)
        self.cols = np.empty(0, np.int64)
        self.table = np.zeros((0, 0), np.int64)

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.size == 0:
            return
        ua, ia = np.unique(a, return_inverse=True)
        ub, ib = np.unique(b, return_inverse=True)
        block = np.bincount(ia.ravel() * len(ub) + ib.ravel(), minlength=len(ua) * len(ub))
        block = block.reshape(len(ua), len(ub))
        new_rows, new_cols = np.union1d(self.rows, ua), np.union1d(self.cols, ub)
        if len(new_rows) != len(self.rows) or len(new_cols) != len(self.cols):
            grown = np.zeros((len(new_rows), len(new_cols)), np.int64)
            grown[np.ix_(np.searchsorted(new_rows, self.rows),
                         np.searchsorted(new_cols, self.cols))] = self.table
            self.rows, self.cols, self.table = new_rows, new_cols, grown
        self.table[np.ix_(np.searchsorted(self.rows, ua), np.searchsorted(self.cols, ub))] += block


def _entropy_from_counts(counts: np.ndarray) -> float:
    """Entropy (nats) of a labelling from its class counts, as sklearn's ``_entropy``."""
    pi = np.asarray(counts, dtype=np.float64)
    pi = pi[pi > 0]
    if pi.size == 0:
        return 1.0
    if pi.size == 1:
        return 0.0
    total = pi.sum()
    return float(-np.sum((pi / total) * (np.log(pi) - math.log(total))))


def _emi_numpy(contingency: np.ndarray, n_samples: int) -> float:
    """Expected mutual information under the permutation model (numpy version of
    sklearn's ``expected_mutual_information``; used when that private function is
    unavailable)."""
    from scipy.special import gammaln

    a = np.asarray(contingency.sum(axis=1), dtype=np.int64).ravel()
    b = np.asarray(contingency.sum(axis=0), dtype=np.int64).ravel()
    a, b = a[a > 0], b[b > 0]
    N = int(n_samples)
    if a.size == 1 and b.size == 1:
        return 1.0
    top = int(max(a.max(), b.max()))
    nijs = np.arange(0, top + 1, dtype=np.float64)
    nijs[0] = 1.0
    term1 = nijs / N
    log_a, log_b = np.log(a), np.log(b)
    log_nnij = math.log(N) + np.log(nijs)
    gln_a, gln_b = gammaln(a + 1.0), gammaln(b + 1.0)
    gln_na, gln_nb = gammaln(N - a + 1.0), gammaln(N - b + 1.0)
    gln_nnij = gammaln(nijs + 1.0) + math.lgamma(N + 1.0)
    emi = 0.0
    for i in range(a.size):
        for j in range(b.size):
            start = max(1, int(a[i]) - N + int(b[j]))
            end = min(int(a[i]), int(b[j])) + 1
            if end <= start:
                continue
            nij = np.arange(start, end)
            term2 = log_nnij[nij] - log_a[i] - log_b[j]
            gln = (gln_a[i] + gln_b[j] + gln_na[i] + gln_nb[j] - gln_nnij[nij]
                   - gammaln(a[i] - nij + 1.0) - gammaln(b[j] - nij + 1.0)
                   - gammaln(N - a[i] - b[j] + nij + 1.0))
            emi += float(np.sum(term1[nij] * term2 * np.exp(gln)))
    return emi


def _emi(contingency: np.ndarray, n_samples: int) -> float:
    try:
        from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information
    except ImportError:  # private in sklearn: keep a numpy version for other releases
        return _emi_numpy(contingency, n_samples)
    return float(expected_mutual_information(contingency, int(n_samples)))


def contingency_scores(contingency: np.ndarray, *, emi: Any = None) -> dict[str, float]:
    """Agreement scores of two labellings from their contingency table.

    The results equal scikit-learn's label-based ``normalized_mutual_info_score``,
    ``adjusted_mutual_info_score`` (arithmetic normalisation, sklearn's default)
    and ``adjusted_rand_score`` for the labels the table counts (to rounding, well
    below 1e-9), so they can be computed from tables accumulated block by block.

    Parameters
    ----------
    contingency : ndarray of int, shape (n_clusters, n_values)
        ``contingency[i, j]`` = rows in cluster ``i`` with value ``j``.  Rows are
        the clusters (``purity`` is taken over them); the other scores are
        symmetric.  Empty rows and columns are ignored.
    emi : callable, optional
        ``emi(contingency, n) -> float`` expected mutual information; defaults to
        scikit-learn's implementation (a numpy version when that is missing).

    Returns
    -------
    dict
        ``n`` (rows counted), ``purity`` (sum over clusters of the largest count,
        divided by ``n``), ``nmi``, ``ami``, ``ari`` (``nan`` when ``n == 0``).
    """
    C = np.asarray(contingency, dtype=np.int64)
    if C.ndim != 2:
        raise InputError(f"contingency must be 2-D, got shape {C.shape}.")
    C = C[C.sum(axis=1) > 0][:, C.sum(axis=0) > 0]
    n = int(C.sum())
    if n == 0:
        return {"n": 0, "purity": float("nan"), "nmi": float("nan"), "ami": float("nan"),
                "ari": float("nan")}
    r, c = C.shape
    purity = float(C.max(axis=1).sum() / n)
    h_rows, h_cols = _entropy_from_counts(C.sum(axis=1)), _entropy_from_counts(C.sum(axis=0))
    mi = float(mutual_info_score(None, None, contingency=C)) if (r > 1 and c > 1) else 0.0
    normalizer = (h_rows + h_cols) / 2.0
    # NMI, as normalized_mutual_info_score
    if r == c == 1:
        nmi = 1.0
    elif mi == 0:
        nmi = 0.0
    else:
        nmi = mi / normalizer
    # AMI, as adjusted_mutual_info_score
    if r == c == 1:
        ami = 1.0
    elif r == 1 or c == 1:
        ami = 0.0
    else:
        expected = (emi or _emi)(C, n)
        eps = np.finfo("float64").eps
        den = normalizer - expected
        den = min(den, -eps) if den < 0 else max(den, eps)
        num = mi - expected
        num = min(num, -eps) if num < 0 else max(num, eps)
        ami = num / den
    # ARI, as adjusted_rand_score via the pair confusion matrix (Python ints: no overflow)
    n_c = C.sum(axis=1)
    n_k = C.sum(axis=0)
    sum_squares = int((C.astype(object) ** 2).sum())
    tp = sum_squares - n
    fp = int((C.astype(object) @ n_k.astype(object)).sum()) - sum_squares
    fn = int((C.T.astype(object) @ n_c.astype(object)).sum()) - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        ari = 1.0
    else:
        ari = 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    return {"n": n, "purity": purity, "nmi": float(nmi), "ami": float(ami), "ari": float(ari)}


# ---------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------
def _snake(name: str) -> str:
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name).strip())
    s = re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()
    return s or "column"


def _normalise_columns(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        s = _snake(name)
        s = _ALIASES.get(s, s)
        base, k = s, 2
        while s in out:
            s, k = f"{base}_{k}", k + 1
        out.append(s)
    return out


def _normalise_paths(values: Any) -> pd.Series:
    """Paths as strings with forward slashes, no leading ``./`` or ``/``, stripped.

    Uses pandas' ``str`` dtype (Arrow-backed, vectorised, when pyarrow is installed).
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    # object first: numpy's variable-width StringDType (zarr string arrays) cannot cast to "U"
    s = pd.Series(arr.astype(object), dtype="str")
    s = s.str.strip().str.replace("\\", "/", regex=False)
    return s.str.replace(r"^(\./|/)+", "", regex=True)


def _strip_ext(s: pd.Series) -> pd.Series:
    return s.str.replace(r"\.[^./]*$", "", regex=True)


def _basename(s: pd.Series) -> pd.Series:
    return s.str.replace(r"^.*/", "", regex=True)


def _last_two(s: pd.Series) -> pd.Series:
    """``a/b/00001/000001.jpg`` -> ``00001/000001``."""
    return _strip_ext(s).str.replace(r"^.*/([^/]*/[^/]*)$", r"\1", regex=True)


def _strip_zeros(s: pd.Series) -> pd.Series:
    """``00001/000010`` -> ``1/10`` (no look-ahead: Arrow's RE2 has none)."""
    return s.str.replace(r"(^|/)0+([0-9])", r"\1\2", regex=True)


def _read_header(path: Path) -> tuple[str, str]:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            lines = []
            for line in f:
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                if len(lines) == 2:
                    break
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc}).") from exc
    if not lines:
        raise InputError(f"{path}: empty metadata file.")
    return lines[0], (lines[1] if len(lines) > 1 else "")


def _read_table(path: Path, sep: str, header: int | None, names: list[str] | None,
                quoting: int = csv.QUOTE_MINIMAL) -> pd.DataFrame:
    try:  # undecodable bytes become U+FFFD rather than failing a 416k-line file
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, header=header,
                           names=names, encoding="utf-8-sig", encoding_errors="replace",
                           skip_blank_lines=True, quoting=quoting)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: empty metadata file.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: cannot parse as {sep!r}-separated metadata ({exc}).") from exc


def _clean_frame(df: pd.DataFrame, key_col: str) -> pd.DataFrame:
    """Strip strings, empty -> NA; numbers stay numeric, ``time`` parsed, other strings categorical."""
    out = {}
    for col in df.columns:
        values = df[col]
        if col == key_col or values.dtype.kind in "iufbM" \
                or isinstance(values.dtype, pd.CategoricalDtype):
            out[col] = values
            continue
        text = values.astype("str").str.strip()
        text = text.mask(text == "")
        known = text.notna().to_numpy()
        if col in ("time", "date") and known.any():
            parsed = pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S", errors="coerce")
            if parsed[known].isna().mean() > 0.1:
                parsed = pd.to_datetime(text, errors="coerce", format="mixed")
            if parsed[known].notna().mean() >= 0.9:
                out[col] = parsed
                continue
        head = text[known][:200]
        if known.any() and col != "camera" and pd.to_numeric(head, errors="coerce").notna().all():
            numeric = pd.to_numeric(text, errors="coerce")
            if numeric[known].notna().all():
                out[col] = numeric
                continue
        out[col] = text.astype("category")
    return pd.DataFrame(out, index=df.index)


def read_metadata(path: str | os.PathLike[str], ids: Any, *, min_match: float = 0.5) -> pd.DataFrame:
    """Read per-image metadata and align it to the image ids of a store.

    Formats (detected from the content, not the name):

    * **VeRi-Wild** ``vehicle_info.txt``: ``;``-separated, header
      ``id/image;Camera ID;Time;Model;Type;Color`` (a file without the header is
      accepted when its first field looks like ``00001/000001``), lines like
      ``00001/000001;c004;2018-03-04 09:33:10; Audi A4; sedan; white``; values
      are stripped.  The key ``<vehicle id>/<image id>`` is matched against the
      last two path components of each id without extension (then, for the ids
      left, with leading zeros removed from both).
    * **CSV** (``,``, ``;``, tab or ``|`` separated) or **Parquet** with a path
      column (``path``, ``paths``, ``image``, ``file``, ``filename``, ...) and any
      attribute columns.  Paths are normalised (backslashes -> ``/``, leading
      ``./`` removed) and matched on the full path; ids left unmatched are then
      matched on the basename, then on the basename without extension, where that
      is unique on both sides.

    Parameters
    ----------
    path : str or os.PathLike
        The metadata file.
    ids : array-like of str, shape (n,)
        Image paths in store order (e.g. ``CaseStore.ids``, a Zarr array; read
        whole: a few tens of MB for 416k ids).
    min_match : float, default 0.5
        Smallest fraction of ids that must match a metadata row.

    Returns
    -------
    pandas.DataFrame, shape (n, n_attributes)
        Row ``i`` describes ``ids[i]`` (RangeIndex).  Column names are
        snake_case with the usual aliases (``Camera ID`` -> ``camera``,
        ``colour`` -> ``color``); strings are categorical, numbers numeric,
        ``time`` is datetime64 when it parses; unmatched rows are NA.
        ``.attrs`` holds ``source``, ``format``, ``n_rows``, ``n_matched``,
        ``match_rate``, ``match_methods`` (rows matched by each method),
        ``duplicate_keys`` (metadata rows dropped because their key was already
        seen: the first wins) and ``n_metadata_rows``.

    Raises
    ------
    InputError
        If the file is missing, empty or unparsable, has no path column, or
        fewer than ``min_match`` of the ids match (the message shows three
        example keys from each side).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such metadata file.")
    ids = _plain(ids)
    ids_norm = _normalise_paths(ids if isinstance(ids, np.ndarray) else read_rows(ids, slice(None)))
    n = len(ids_norm)
    if n == 0:
        raise InputError(f"{p}: no image ids to align the metadata to.")

    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            raw = pd.read_parquet(p)
        except Exception as exc:  # pyarrow raises many types
            raise InputError(f"{p}: cannot read as Parquet ({exc}).") from exc
        raw.columns = _normalise_columns([str(c) for c in raw.columns])
        fmt = "parquet"
    else:
        header, first = _read_header(p)
        head_fields = [f.strip() for f in header.split(";")]
        key_like = re.compile(r"^\s*\d+/\d+\s*$")
        if ";" in header and (head_fields[0].lower().replace(" ", "") in ("id/image", "id/img")
                              or key_like.match(head_fields[0])):
            has_header = not key_like.match(head_fields[0])
            names = None
            if not has_header:
                default = ["id/image", "Camera ID", "Time", "Model", "Type", "Color"]
                n_fields = len(head_fields)
                names = (default + [f"column_{i}" for i in range(6, n_fields)])[:n_fields]
            raw = _read_table(p, ";", 0 if has_header else None, names, csv.QUOTE_NONE)
            cols = _normalise_columns([str(c) for c in raw.columns])
            cols[0] = "__key__"
            raw.columns = cols
            fmt = "veriwild"
        else:
            counts = {s: header.count(s) for s in (",", ";", "\t", "|")}
            sep = max(counts, key=counts.get)
            if counts[sep] == 0:
                sep = ","
            raw = _read_table(p, sep, 0, None)
            raw.columns = _normalise_columns([str(c) for c in raw.columns])
            fmt = "csv"
    if len(raw) == 0:
        raise InputError(f"{p}: the metadata file has a header but no rows.")

    if fmt == "veriwild":
        key_col = "__key__"
        meta_base = _strip_ext(_normalise_paths(raw[key_col].to_numpy()))
        id_base = _last_two(ids_norm)
        # (method, key of the ids, key of the metadata rows): tried in order, built lazily
        strategies = [("key", lambda s: s, lambda s: s),
                      ("key_without_zeros", _strip_zeros, _strip_zeros)]
    else:
        found = [c for c in _PATH_COLUMNS if c in raw.columns]
        if not found:
            raise InputError(
                f"{p}: no path column; name one of {list(_PATH_COLUMNS[:4])} "
                f"(the file has columns {list(raw.columns)})."
            )
        key_col = found[0]
        meta_base = _normalise_paths(raw[key_col].to_numpy())
        id_base = ids_norm
        strategies = [("path", lambda s: s, lambda s: s),
                      ("basename", _basename, _basename),
                      ("stem", lambda s: _strip_ext(_basename(s)), lambda s: _strip_ext(_basename(s)))]

    # duplicates: the first row of a key wins
    dup = meta_base.duplicated(keep="first").to_numpy()
    n_dup = int(dup.sum())
    raw = raw.loc[~dup].reset_index(drop=True)
    meta_base = meta_base[~dup].reset_index(drop=True)

    pos = np.full(n, -1, dtype=np.int64)
    methods: dict[str, int] = {}
    for i, (method, id_fn, meta_fn) in enumerate(strategies):
        todo = pos < 0
        if not todo.any():
            break
        mk, ik = meta_fn(meta_base), id_fn(id_base)
        if i == 0:
            found_pos = pd.Index(mk).get_indexer(ik[todo])
        else:  # fallback keys count only where unique on both sides
            unique_meta = ~mk.duplicated(keep=False).to_numpy()
            unique_ids = ~ik.duplicated(keep=False).to_numpy()
            found_pos = pd.Index(mk[unique_meta]).get_indexer(ik[todo])
            found_pos = np.where((found_pos >= 0) & unique_ids[todo],
                                 np.flatnonzero(unique_meta)[np.maximum(found_pos, 0)], -1)
        new = found_pos >= 0
        if new.any():
            idx = np.flatnonzero(todo)
            pos[idx[new]] = found_pos[new]
            methods[method] = int(new.sum())
    matched = int((pos >= 0).sum())
    rate = matched / n
    if rate < min_match:
        ex_meta = list(meta_base.head(3))
        ex_ids = list(id_base.head(3))
        raise InputError(
            f"{p}: only {matched:,} of {n:,} image ids ({rate:.1%}) match a row of this "
            f"metadata file (at least {min_match:.0%} needed); example keys in the file: "
            f"{ex_meta}; example keys from the image ids: {ex_ids}.  Is it the metadata "
            "of this case?"
        )

    raw = _clean_frame(raw, key_col).drop(columns=[key_col])
    # unmatched ids (pos -1) are not in the RangeIndex of raw: reindex leaves them NA
    df = raw.reindex(pos).reset_index(drop=True)
    df.attrs.update({
        "source": str(p), "format": fmt, "n_rows": n, "n_matched": matched, "match_rate": rate,
        "match_methods": methods, "duplicate_keys": n_dup, "n_metadata_rows": int(len(raw) + n_dup),
    })
    return df


# ---------------------------------------------------------------------------
# per-cluster profiles
# ---------------------------------------------------------------------------
@dataclass
class ClusterProfiles:
    """What is in each cluster of one labelling (see :func:`profile_clusters`).

    Attributes
    ----------
    n_rows : int
        Rows labelled.
    sizes : pandas.Series, shape (n_groups,)
        Rows per cluster, indexed by label (noise ``-1`` is a group of its own).
    shares : pandas.Series, shape (n_groups,)
        ``sizes / n_rows``.
    table : pandas.DataFrame, shape (n_entries, 8)
        Long format, the ``top`` most frequent values of every cluster x
        attribute: ``cluster``, ``attribute``, ``value``, ``count``,
        ``share_in_cluster`` (among the cluster's rows with a known value),
        ``share_overall`` (of the value among all rows with a known value),
        ``lift`` (= share_in_cluster / share_overall) and ``rank`` (1 = most
        frequent in the cluster).
    agreement : pandas.DataFrame, shape (n_attributes, 7)
        One row per attribute: ``attribute``, ``n`` (rows with a known value),
        ``n_values``, ``purity``, ``nmi``, ``ami``, ``ari`` (see
        :func:`contingency_scores`).
    sentences : dict of int to str
        One sentence per cluster.
    contingency : dict of str to pandas.DataFrame
        Full count table per attribute, shape (n_groups, n_values).
    outlier_rate : pandas.Series or None, shape (n_groups,)
        Fraction of flagged rows per cluster (when flags were given).
    overall_outlier_rate : float or None
    spread_ratio : pandas.Series or None
        Mean distance to centroid relative to the median over clusters (when
        ``spread`` was given).
    clusters : pandas.DataFrame, shape (n_groups, ...)
        One row per cluster: size, share, outlier rate, spread ratio, top value
        and its share for every attribute, and the sentence.
    attributes : list of str
        Attributes profiled.
    """

    n_rows: int
    sizes: pd.Series
    shares: pd.Series
    table: pd.DataFrame
    agreement: pd.DataFrame
    sentences: dict[int, str]
    contingency: dict[str, pd.DataFrame] = field(default_factory=dict)
    outlier_rate: pd.Series | None = None
    overall_outlier_rate: float | None = None
    spread_ratio: pd.Series | None = None
    clusters: pd.DataFrame | None = None
    attributes: list[str] = field(default_factory=list)


def _attribute_codes(
    attributes: pd.DataFrame | None, columns: Sequence[str] | None, n: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (codes (n,) int, -1 = missing; values (m,))}`` of the attributes profiled."""
    if attributes is None:
        if columns:
            raise InputError(f"attribute_columns={list(columns)} given without attributes.")
        return {}
    if not isinstance(attributes, pd.DataFrame):
        raise InputError(f"attributes must be a pandas DataFrame aligned to the rows, got {type(attributes).__name__}.")
    if len(attributes) != n:
        source = attributes.attrs.get("source", "attributes")
        raise InputError(f"{source}: has {len(attributes):,} rows but the labels have {n:,}; "
                         "align the metadata to the store ids with read_metadata.")
    if columns is None:
        chosen = [c for c in _DEFAULT_ORDER if c in attributes.columns]
        for c in attributes.columns:
            if c in chosen or c in CONDITION_ATTRIBUTES or c in _PATH_COLUMNS:
                continue
            col = attributes[c]
            if col.dtype.kind in "iufcM" or col.dtype.kind == "m":
                continue
            if 2 <= col.nunique(dropna=True) <= 1000:
                chosen.append(c)
    else:
        missing = [c for c in columns if c not in attributes.columns]
        if missing:
            raise InputError(f"attribute column(s) {missing} not in the metadata; it has "
                             f"{list(attributes.columns)}.")
        chosen = list(columns)
    out = {}
    for c in chosen:
        col = attributes[c]
        n_values = col.nunique(dropna=True)
        if n_values > _MAX_VALUES:
            raise InputError(
                f"attribute column {c!r} has {n_values:,} distinct values (at most {_MAX_VALUES:,}); "
                "bin it first (e.g. hour of the day from the time) or leave it out.")
        if isinstance(col.dtype, pd.CategoricalDtype):
            codes = col.cat.codes.to_numpy().astype(np.int64)
            values = np.asarray(col.cat.categories.astype(object))
        else:
            codes, uniques = pd.factorize(col, sort=True)
            codes = codes.astype(np.int64)
            values = np.asarray(uniques.astype(object))
        out[c] = (codes, values)
    return out


def _pct(x: float) -> str:
    if x >= 0.995:
        return "100%" if x >= 1 else "99%"
    if x < 0.01:
        return "<1%" if x > 0 else "0%"
    return f"{x * 100:.0f}%"


def _display(value: Any) -> str:
    s = str(value).strip()
    return _ACRONYMS.get(s.lower(), s)


def _plural(word: str) -> str:
    """``sedan`` -> ``sedans``, ``suv`` -> ``SUVs``, ``bus`` -> ``buses``; the last word of a phrase."""
    s = str(word).strip()
    head, _, last = s.rpartition(" ")
    low = last.lower()
    if low in _PLURAL_EXCEPTIONS:
        new = _PLURAL_EXCEPTIONS[low]
    elif last.isupper() and len(last) <= 4:
        new = last + "s"
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        new = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        new = last[:-1] + "ies"
    else:
        new = last + "s"
    return f"{head} {new}" if head else new


def _top_values(counts: pd.Series, overall: pd.Series, top: int) -> list[tuple[Any, int, float, float]]:
    """``[(value, count, share, lift)]`` of a cluster's top values, most frequent first."""
    known = int(counts.sum())
    if known == 0:
        return []
    order = counts[counts > 0].sort_values(ascending=False, kind="stable").head(top)
    out = []
    for value, cnt in order.items():
        share = cnt / known
        lift = share / overall[value] if overall[value] > 0 else float("nan")
        out.append((value, int(cnt), float(share), float(lift)))
    return out


def _plural_display(value: Any) -> str:
    return _plural(_display(value))


def _dominant(tops: list, name: Any, second: float = 0.2) -> str:
    """``"trucks (50%)"``, or ``"trucks (50%) and buses (45%)"`` when the runner-up is common."""
    text = f"{name(tops[0][0])} ({_pct(tops[0][2])})"
    if len(tops) > 1 and tops[1][2] >= second:
        text += f" and {name(tops[1][0])} ({_pct(tops[1][2])})"
    return text


def _mixed(label: str, tops: list, top: int) -> str:
    items = []
    for i, (v, _, s, lift) in enumerate(tops[:max(2, min(top, 3))]):
        if i > 0 and s < 0.1:
            break
        text = f"{_display(v)} {_pct(s)}"
        if i == 0 and lift >= 1.5:
            text += f" ({lift:.1f}x overall)"
        items.append(text)
    return f"mixed {label}: " + ", ".join(items)


def _sentence(
    cluster: int, size: int, share: float, tops: dict[str, list], *, dominant: float, top: int,
    outlier_rate: float | None, overall_rate: float | None, spread_ratio: float | None,
    has_metadata: bool, set_name: str | None,
) -> str:
    head = "Noise (label -1" if cluster == -1 else f"Cluster {cluster} ("
    head += ("; " if cluster == -1 else "") + f"{size:,} images, {share:.1%} of all)"
    if set_name:
        head = f"{set_name}: {head}"
    clauses: list[str] = []
    if cluster == -1:
        clauses.append("rows the clustering left unassigned")
    if has_metadata and not any(tops.values()):
        clauses.append("none of its images has metadata: see the montage")
    elif has_metadata:
        color, vtype = tops.get("color"), tops.get("type")
        col_dom = bool(color) and color[0][2] >= dominant
        typ_dom = bool(vtype) and vtype[0][2] >= dominant
        subject = ""
        if col_dom:
            subject = f"mostly {_dominant(color, lambda v: _display(v))}"
            subject += f" {_dominant(vtype, _plural_display)}" if typ_dom else " vehicles"
        elif typ_dom:
            subject = f"mostly {_dominant(vtype, _plural_display)}"
        if subject:
            clauses.append(subject)
        if color and not col_dom:
            clauses.append(_mixed("colours", color, top))
        if vtype and not typ_dom:
            clauses.append(_mixed("types", vtype, top))
        for attr, tv in tops.items():
            if attr in ("color", "type") or not tv:
                continue
            value, _, s, lift = tv[0]
            if s >= dominant:
                if attr == "view":
                    clauses.append(_dominant(tv, lambda v: f"{_display(v)} view"))
                elif attr == "model":
                    clauses.append("model " + _dominant(tv, lambda v: _display(v)))
                elif attr == "camera":
                    clauses.append("mostly from camera " + _dominant(tv, lambda v: _display(v)))
                else:
                    clauses.append(f"{attr.replace('_', ' ')} " + _dominant(tv, lambda v: _display(v)))
            elif s >= 0.2 and lift >= 2.0:
                clauses.append(f"over-represented {attr.replace('_', ' ')} {_display(value)} "
                               f"({_pct(s)}, {lift:.1f}x overall)")
        if size < 30:
            clauses.append("few images, so the shares are rough")
    if spread_ratio is not None and np.isfinite(spread_ratio):
        if spread_ratio < 0.8:
            clauses.append(f"compact (spread {spread_ratio:.2f}x the median cluster's)")
        elif spread_ratio > 1.25:
            clauses.append(f"diffuse (spread {spread_ratio:.2f}x the median cluster's)")
        elif not has_metadata:
            clauses.append(f"typical spread ({spread_ratio:.2f}x the median cluster's)")
    if outlier_rate is not None:
        notable = overall_rate is not None and outlier_rate >= 2 * overall_rate \
            and outlier_rate >= overall_rate + 0.02
        if notable or not has_metadata:
            text = f"{_pct(outlier_rate)} flagged as outliers"
            if overall_rate is not None:
                text += f" ({_pct(overall_rate)} overall)"
            clauses.append(text)
    if not has_metadata:
        clauses.append("no metadata: see the montage")
    if not clauses:
        clauses.append("no attribute value stands out")
    return f"{head}: {'; '.join(clauses)}."


def _contingencies(
    labels: Any, codes: dict[str, tuple[np.ndarray, np.ndarray]], outlier_flags: Any,
    block_rows: int, name: str,
) -> tuple[pd.Series, dict[str, _Counts], _Counts | None]:
    """One pass: label sizes, cluster x attribute counts, cluster x flag counts."""
    sizes = _Counts()
    tables = {a: _Counts() for a in codes}
    flags_t = _Counts() if outlier_flags is not None else None
    arrays = [labels] + ([outlier_flags] if outlier_flags is not None else [])
    for rows, blocks in _iter_aligned(arrays, block_rows):
        lab = _as_labels(blocks[0], name, rows.start)
        sizes.add(lab, np.zeros(1, np.int64).repeat(len(lab)))
        for attr, (c, _) in codes.items():
            cb = c[rows]
            known = cb >= 0
            tables[attr].add(lab[known], cb[known])
        if flags_t is not None:
            fl = np.asarray(blocks[1]).reshape(-1)
            if fl.dtype.kind == "f":
                fl = np.where(np.isnan(fl), 0, fl)
            flags_t.add(lab, (fl != 0).astype(np.int64))
    size_series = pd.Series(sizes.table[:, 0] if sizes.table.size else np.empty(0, np.int64),
                            index=pd.Index(sizes.rows, name="cluster"), name="size")
    return size_series, tables, flags_t


def profile_clusters(
    labels: Any,
    attributes: pd.DataFrame | None = None,
    *,
    outlier_flags: Any = None,
    attribute_columns: Sequence[str] | None = None,
    top: int = 3,
    spread: Mapping[int, float] | None = None,
    dominant: float = 0.5,
    set_name: str | None = None,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> ClusterProfiles:
    """Profile every cluster of one labelling against per-image attributes.

    Counts are accumulated block by block over the rows (labels and flags may be
    numpy, Zarr or Dask arrays; the attribute DataFrame is sliced to the same
    rows), so memory is one block plus the count tables.

    Parameters
    ----------
    labels : array-like of int, shape (n,)
        Cluster of every row; ``-1`` (noise) is profiled as a group of its own.
    attributes : pandas.DataFrame, shape (n, n_columns), optional
        Per-image metadata aligned to the rows by position (see
        :func:`read_metadata`).  Without it the sentences say only what the
        statistics support.
    outlier_flags : array-like of bool, shape (n,), optional
        Rows flagged as outliers; gives each cluster's outlier rate.
    attribute_columns : sequence of str, optional
        Attributes to profile.  Default: ``color``, ``type``, ``view``,
        ``model``, ``camera`` when present, then every other non-numeric column
        with 2 to 1000 distinct values (acquisition time excluded).  A column
        with more than 10,000 distinct values is refused (bin it first).
    top : int, default 3
        Values per cluster x attribute kept in ``table`` and named in mixed
        sentences.
    spread : mapping of int to float, optional
        Mean distance to the centroid per cluster (e.g. :func:`cluster_spread`);
        sentences call a cluster compact below 0.8x and diffuse above 1.25x the
        median over clusters (noise excluded from the median).
    dominant : float, default 0.5
        A value whose share in the cluster reaches this is said to dominate
        ("mostly white (81%)"); below it the top values are listed as mixed.
    set_name : str, optional
        Prefix of the sentences.
    memory : str or int, optional
        Memory budget of the pass (default 1 GiB); sets the block size.
    block_rows : int, optional
        Rows per block (overrides ``memory``).

    Returns
    -------
    ClusterProfiles

    Raises
    ------
    InputError
        If the lengths differ, labels are not integers, or a requested
        attribute column is missing.
    """
    labels = _plain(labels)
    n = _n_rows(labels)
    if n == 0:
        raise InputError("labels: no rows to profile.")
    if outlier_flags is not None:
        outlier_flags = _plain(outlier_flags)
        if _n_rows(outlier_flags) != n:
            raise InputError(f"outlier_flags has {_n_rows(outlier_flags):,} rows, labels {n:,}.")
    if top < 1:
        raise InputError(f"top={top} should be >= 1.")
    codes = _attribute_codes(attributes, attribute_columns, n)
    rows_per_block = _block_rows(memory, block_rows, 2 + len(codes))
    sizes, tables, flags_t = _contingencies(labels, codes, outlier_flags, rows_per_block,
                                            set_name or "labels")
    clusters = sizes.index
    shares = (sizes / n).rename("share")

    contingency: dict[str, pd.DataFrame] = {}
    table_parts = []
    agreement_rows = []
    tops_by_cluster: dict[int, dict[str, list]] = {int(c): {} for c in clusters}
    for attr, counts in tables.items():
        values = codes[attr][1]
        frame = pd.DataFrame(counts.table, index=pd.Index(counts.rows, name="cluster"),
                             columns=pd.Index(values[counts.cols], name=attr))
        frame = frame.reindex(clusters, fill_value=0)
        contingency[attr] = frame
        scores = contingency_scores(frame.to_numpy())
        agreement_rows.append({"attribute": attr, "n": scores["n"], "n_values": frame.shape[1],
                               "purity": scores["purity"], "nmi": scores["nmi"],
                               "ami": scores["ami"], "ari": scores["ari"]})
        overall = frame.sum(axis=0)
        overall_share = overall / max(1, int(overall.sum()))
        for c in clusters:
            tv = _top_values(frame.loc[c], overall_share, top)
            tops_by_cluster[int(c)][attr] = tv
            for rank, (v, cnt, s, lift) in enumerate(tv, start=1):
                table_parts.append((int(c), attr, v, cnt, s, float(overall_share[v]), lift, rank))
    table = pd.DataFrame(table_parts, columns=["cluster", "attribute", "value", "count",
                                               "share_in_cluster", "share_overall", "lift", "rank"])
    agreement = pd.DataFrame(agreement_rows, columns=["attribute", "n", "n_values", "purity",
                                                      "nmi", "ami", "ari"])

    outlier_rate = overall_rate = None
    if flags_t is not None:
        flagged = pd.Series(0, index=clusters, dtype=np.int64)
        if 1 in flags_t.cols:
            j = int(np.searchsorted(flags_t.cols, 1))
            flagged = pd.Series(flags_t.table[:, j], index=pd.Index(flags_t.rows, name="cluster"))
            flagged = flagged.reindex(clusters, fill_value=0)
        outlier_rate = (flagged / sizes).rename("outlier_rate")
        overall_rate = float(flagged.sum() / n)

    spread_ratio = None
    if spread is not None:
        sp = pd.Series({int(k): float(v) for k, v in dict(spread).items()}, dtype=np.float64)
        sp = sp.reindex(clusters)
        base = sp.drop(index=-1, errors="ignore").median()
        spread_ratio = (sp / base if base and np.isfinite(base) and base > 0 else sp * np.nan)
        spread_ratio = spread_ratio.rename("spread_ratio")

    has_meta = bool(codes)
    sentences = {}
    for c in clusters:
        ci = int(c)
        sentences[ci] = _sentence(
            ci, int(sizes[c]), float(shares[c]), tops_by_cluster[ci], dominant=dominant, top=top,
            outlier_rate=None if outlier_rate is None else float(outlier_rate[c]),
            overall_rate=overall_rate,
            spread_ratio=None if spread_ratio is None else float(spread_ratio[c]),
            has_metadata=has_meta, set_name=set_name,
        )

    summary = pd.DataFrame({"size": sizes, "share": shares})
    if outlier_rate is not None:
        summary["outlier_rate"] = outlier_rate
    if spread_ratio is not None:
        summary["spread_ratio"] = spread_ratio
    for attr in codes:
        summary[f"top_{attr}"] = [tops_by_cluster[int(c)][attr][0][0] if tops_by_cluster[int(c)][attr]
                                  else None for c in clusters]
        summary[f"top_{attr}_share"] = [tops_by_cluster[int(c)][attr][0][2]
                                        if tops_by_cluster[int(c)][attr] else np.nan for c in clusters]
    summary["sentence"] = [sentences[int(c)] for c in clusters]

    return ClusterProfiles(
        n_rows=n, sizes=sizes, shares=shares, table=table, agreement=agreement,
        sentences=sentences, contingency=contingency, outlier_rate=outlier_rate,
        overall_outlier_rate=overall_rate, spread_ratio=spread_ratio, clusters=summary,
        attributes=list(codes),
    )


def cluster_spread(
    X: Any, labels: Any, *, memory: str | int | None = None, block_rows: int | None = None,
) -> dict[int, float]:
    """Mean Euclidean distance of each cluster's rows to the cluster's centroid.

    Two passes over ``X`` (centroids, then distances), block by block.

    Parameters
    ----------
    X : array-like, shape (n, c)
        Rows in the space the clustering was made in (e.g. the reduced rows).
    labels : array-like of int, shape (n,)
    memory : str or int, optional
    block_rows : int, optional

    Returns
    -------
    dict of int to float
        ``{cluster: mean distance}`` (noise ``-1`` included when present).
    """
    X, labels = _plain(X), _plain(labels)
    n = _n_rows(X)
    if _n_rows(labels) != n:
        raise InputError(f"X has {n:,} rows but labels {_n_rows(labels):,}.")
    d = int(X.shape[1])
    rows_per_block = block_rows or block_rows_for(d + 1, memory)
    keys: np.ndarray = np.empty(0, np.int64)
    sums = np.zeros((0, d))
    counts = np.zeros(0, np.int64)
    for rows, (xb, lb) in _iter_aligned([X, labels], rows_per_block):
        lab = _as_labels(lb, "labels", rows.start)
        u, inv = np.unique(lab, return_inverse=True)
        new = np.union1d(keys, u)
        if len(new) != len(keys):
            s2, c2 = np.zeros((len(new), d)), np.zeros(len(new), np.int64)
            at = np.searchsorted(new, keys)
            s2[at], c2[at] = sums, counts
            keys, sums, counts = new, s2, c2
        at = np.searchsorted(keys, u)
        bs = np.zeros((len(u), d))
        np.add.at(bs, inv, np.asarray(xb, dtype=np.float64))
        sums[at] += bs
        counts[at] += np.bincount(inv, minlength=len(u))
    centroids = sums / np.maximum(counts, 1)[:, None]
    dist = np.zeros(len(keys))
    for rows, (xb, lb) in _iter_aligned([X, labels], rows_per_block):
        lab = _as_labels(lb, "labels", rows.start)
        at = np.searchsorted(keys, lab)
        dd = np.linalg.norm(np.asarray(xb, dtype=np.float64) - centroids[at], axis=1)
        dist += np.bincount(at, weights=dd, minlength=len(keys))
    return {int(k): float(dist[i] / counts[i]) for i, k in enumerate(keys)}


# ---------------------------------------------------------------------------
# comparing descriptor sets
# ---------------------------------------------------------------------------
@dataclass
class SetComparison:
    """How descriptor sets compare (see :func:`compare_sets`).

    Attributes
    ----------
    sets : list of str
    label_agreement : pandas.DataFrame, shape (n_sets, 2 * n_sets)
        Columns ``("ari", set)`` and ``("ami", set)``: ``label_agreement["ami"]``
        is the set x set AMI matrix (diagonal 1).
    attribute_agreement : pandas.DataFrame
        Long format: ``set``, ``attribute``, ``n``, ``n_values``, ``purity``,
        ``nmi``, ``ami``, ``ari`` (empty without metadata).
    ami_table : pandas.DataFrame, shape (n_sets, n_attributes)
        AMI of every set's labels with every attribute.
    score_correlation : pandas.DataFrame or None, shape (n_sets, n_sets)
        Spearman rank correlation of the outlier scores on a seeded sample.
    knn_overlap : pandas.DataFrame or None, shape (n_sets, n_sets)
        Mean Jaccard overlap of k-nearest-neighbour sets between sets.
    normalized_metrics : pandas.DataFrame, shape (n_sets, ...)
        Per-set metrics made comparable across dimensionality and size.
    recommendation : pandas.DataFrame
        Index ``attribute`` (or ``silhouette`` without metadata): ``best_set``,
        ``score``, ``runner_up``, ``runner_up_score``, ``metric``, ``tie``, ``reason``.
    recommended_set : str or None
    reason : str
    neighbour_agreement : pandas.DataFrame or None, shape (n_sets, n_attributes)
        Chance-corrected agreement of each attribute between the kNN query rows
        and their neighbours, in each set's reduced space (clustering-free:
        how well the representation itself encodes the attribute).
    notes : dict of str to str
        How each table was computed (sample sizes, seeds).
    """

    sets: list[str]
    label_agreement: pd.DataFrame
    attribute_agreement: pd.DataFrame
    ami_table: pd.DataFrame
    score_correlation: pd.DataFrame | None
    knn_overlap: pd.DataFrame | None
    normalized_metrics: pd.DataFrame
    recommendation: pd.DataFrame
    recommended_set: str | None
    reason: str
    neighbour_agreement: pd.DataFrame | None = None
    notes: dict[str, str] = field(default_factory=dict)


def _knn_indices(R: np.ndarray, q_pos: np.ndarray, k: int, chunk: int = 512) -> np.ndarray:
    """Exact k nearest rows of ``R`` (Euclidean) for the queries ``R[q_pos]``, each itself excluded.

    Ranks ``|r|^2 - 2 q.r`` (the query's own norm does not change its ranking) in
    float32 chunks of ``chunk`` queries: memory ``chunk x len(R)`` floats.
    """
    R = np.ascontiguousarray(R, dtype=np.float32)
    r2 = np.einsum("ij,ij->i", R, R, dtype=np.float64).astype(np.float32)
    out = np.empty((len(q_pos), k), dtype=np.int64)
    for s in range(0, len(q_pos), chunk):
        rows = q_pos[s:s + chunk]
        d = R[rows] @ R.T
        d *= -2.0
        d += r2[None, :]
        d[np.arange(len(rows)), rows] = np.inf
        out[s:s + chunk] = np.argpartition(d, k - 1, axis=1)[:, :k]
    return out


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = (a[:, :, None] == b[:, None, :]).sum(axis=(1, 2))
    k = a.shape[1]
    return float(np.mean(inter / (2 * k - inter)))


def _metrics_by_set(metrics: Any, sets: Sequence[str]) -> pd.DataFrame | None:
    """One row of metrics per set, indexed by set name."""
    if metrics is None:
        return None
    if isinstance(metrics, Mapping):
        rows = {}
        for name, m in metrics.items():
            if isinstance(m, pd.DataFrame):
                m = m[m["chosen"].astype(bool)] if "chosen" in m.columns else m
                if len(m) != 1:
                    raise InputError(f"metrics[{name!r}] has {len(m)} rows; give one (or a 'chosen' column).")
                m = m.iloc[0]
            rows[name] = dict(m)
        frame = pd.DataFrame.from_dict(rows, orient="index")
    elif isinstance(metrics, pd.DataFrame):
        frame = metrics
        if "chosen" in frame.columns:
            frame = frame[frame["chosen"].astype(bool)]
        if "set" in frame.columns:
            if frame["set"].duplicated().any():
                dup = frame.loc[frame["set"].duplicated(), "set"].iloc[0]
                raise InputError(f"metrics: several rows for set {dup!r}; keep one per set "
                                 "(or give the 'chosen' column of the study's metrics).")
            frame = frame.set_index("set")
    else:
        raise InputError(f"metrics must be a DataFrame or a dict per set, got {type(metrics).__name__}.")
    missing = [s for s in sets if s not in frame.index]
    if missing:
        raise InputError(f"metrics: no row for set(s) {missing}; it has {list(frame.index)}.")
    return frame.loc[list(sets)]


def _normalized_metrics(
    metrics: pd.DataFrame | None, sizes: dict[str, pd.Series], n: int,
    sampled_silhouette: dict[str, float] | None,
) -> pd.DataFrame:
    rows = []
    for name, sz in sizes.items():
        k_found = int((sz.index >= 0).sum())
        row: dict[str, Any] = {"set": name, "k": k_found, "n_rows": n,
                               "largest_cluster_share": float(sz.max() / n),
                               "smallest_cluster_share": float(sz[sz.index >= 0].min() / n) if k_found else np.nan,
                               "noise_share": float(sz.get(-1, 0) / n)}
        if metrics is not None:
            m = metrics.loc[name]
            k = int(m["k"]) if "k" in m and pd.notna(m["k"]) else k_found
            nn = int(m["n_rows"]) if "n_rows" in m and pd.notna(m["n_rows"]) else n
            row["k"] = k
            for col in ("n_features", "n_components"):
                if col in m:
                    row[col] = m[col]
            row["silhouette"] = float(m["silhouette"]) if "silhouette" in m else np.nan
            row["davies_bouldin"] = float(m["davies_bouldin"]) if "davies_bouldin" in m else np.nan
            if "calinski_harabasz" in m and k > 1 and nn > k:
                ratio = float(m["calinski_harabasz"]) * (k - 1) / (nn - k)
                row["between_within_ratio"] = ratio
                row["variance_explained"] = ratio / (1.0 + ratio)
        if sampled_silhouette is not None and (metrics is None or not np.isfinite(row.get("silhouette", np.nan))):
            row["silhouette"] = sampled_silhouette.get(name, np.nan)
            row["silhouette_source"] = "sampled here"
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


def _neighbour_kappa(ref_codes: np.ndarray, q_pos: np.ndarray, neigh: np.ndarray) -> float:
    """Chance-corrected agreement of an attribute between queries and their neighbours."""
    qv = ref_codes[q_pos][:, None]
    nv = ref_codes[neigh]
    known = (qv >= 0) & (nv >= 0)
    if not known.any():
        return float("nan")
    observed = float((qv == nv)[known].mean())
    counts = np.bincount(ref_codes[ref_codes >= 0])
    p = counts / counts.sum()
    chance = float((p ** 2).sum())
    return (observed - chance) / (1.0 - chance) if chance < 1 else float("nan")


def _specificity(ami_table: pd.DataFrame, attr: str, vehicle_attrs: Sequence[str]) -> pd.Series:
    """Mean AMI of every set with the vehicle attributes other than ``attr`` (lower = more specific)."""
    others = [a for a in vehicle_attrs if a != attr]
    if not others:
        return pd.Series(0.0, index=ami_table.index)
    return ami_table[others].mean(axis=1)


def _recommend_attribute(
    attr: str, ami_table: pd.DataFrame, vehicle_attrs: Sequence[str], tol: float,
) -> dict[str, Any] | None:
    col = ami_table[attr].dropna().sort_values(ascending=False, kind="stable")
    if col.empty:
        return None
    top_score = float(col.iloc[0])
    tied = col[col >= top_score - tol]
    tie = len(tied) > 1
    if tie and attr not in CONDITION_ATTRIBUTES:
        # equally aligned: the set whose clusters are about this attribute only wins
        spec = _specificity(ami_table, attr, vehicle_attrs)[tied.index]
        best = str(spec.sort_values(kind="stable").index[0])
    else:
        best = str(col.index[0])
    score = float(col[best])
    rest = col.drop(index=best)
    runner = str(rest.index[0]) if len(rest) else None
    r_score = float(rest.iloc[0]) if len(rest) else float("nan")
    reason = f"{best}: AMI {score:.2f} with {attr}"
    if runner is not None:
        reason += f" vs {r_score:.2f} for {runner}"
    if tie and attr in CONDITION_ATTRIBUTES:
        reason += f" (a tie within {tol:g})"
    elif tie:
        spec = _specificity(ami_table, attr, vehicle_attrs)
        others = [s for s in tied.index if s != best]
        reason += (f"; a tie within {tol:g} with {', '.join(others)}, broken by specificity: "
                   f"{best}'s clusters follow the other vehicle attributes least (mean AMI "
                   f"{spec[best]:.2f} vs " + ", ".join(f"{spec[o]:.2f} for {o}" for o in others) + ")")
    if attr in CONDITION_ATTRIBUTES:
        reason += (f"; {attr} is an acquisition condition: a high value means the set groups "
                   f"images by {attr}, not by vehicle, and is not rewarded")
    return {"attribute": attr, "best_set": best, "score": score, "runner_up": runner,
            "runner_up_score": r_score, "metric": "ami", "tie": tie, "reason": reason}


def _recommend_overall(
    ami_table: pd.DataFrame, vehicle_attrs: Sequence[str], rec_rows: list[dict[str, Any]],
    sil: pd.Series | None, tol: float,
) -> tuple[str | None, str, dict[str, Any] | None]:
    has_sil = sil is not None and bool(sil.notna().any())
    if vehicle_attrs:
        mean_ami = ami_table[list(vehicle_attrs)].mean(axis=1).sort_values(ascending=False, kind="stable")
        tied = mean_ami[mean_ami >= mean_ami.iloc[0] - tol]
        tie = len(tied) > 1 and has_sil and bool(sil[tied.index].notna().any())
        best = str(sil[tied.index].idxmax()) if tie else str(mean_ami.index[0])
        reason = (f"{best}: mean AMI {mean_ami[best]:.2f} with the vehicle attributes "
                  f"({', '.join(vehicle_attrs)})")
        rest = mean_ami.drop(index=best)
        if len(rest):
            reason += f" vs {rest.iloc[0]:.2f} for {rest.index[0]}"
        if tie:
            reason += (f"; a tie within {tol:g}, broken by the higher silhouette "
                       f"({sil[best]:.3f})")
        best_for = [r["attribute"] for r in rec_rows if r["best_set"] == best]
        if best_for:
            reason += f"; best set for {', '.join(best_for)}"
        for other in dict.fromkeys(r["best_set"] for r in rec_rows if r["best_set"] != best
                                   and r["attribute"] in vehicle_attrs):
            attrs = [r["attribute"] for r in rec_rows if r["best_set"] == other
                     and r["attribute"] in vehicle_attrs]
            reason += f"; {other} is better for {', '.join(attrs)}"
        return best, reason, None
    if has_sil:
        order = sil.dropna().sort_values(ascending=False, kind="stable")
        best = str(order.index[0])
        runner = str(order.index[1]) if len(order) > 1 else None
        vs = f" vs {order.iloc[1]:.3f} for {runner}" if runner is not None else ""
        row = {"attribute": "silhouette", "best_set": best, "score": float(order.iloc[0]),
               "runner_up": runner,
               "runner_up_score": float(order.iloc[1]) if runner is not None else float("nan"),
               "metric": "silhouette", "tie": False,
               "reason": f"{best}: silhouette {order.iloc[0]:.3f}{vs}"}
        reason = (f"{best}: highest silhouette ({order.iloc[0]:.3f}{vs}); no vehicle metadata, "
                  "so the choice rests on cluster geometry only -- check the montages")
        return best, reason, row
    return None, "nothing to recommend on: give vehicle metadata, metrics or reduced rows", None


def compare_sets(
    labels_by_set: Mapping[str, Any],
    *,
    attributes: pd.DataFrame | None = None,
    attribute_columns: Sequence[str] | None = None,
    outlier_scores_by_set: Mapping[str, Any] | None = None,
    reduced_by_set: Mapping[str, Any] | None = None,
    metrics: Any = None,
    sample_size: int = 5000,
    reference_size: int = 20_000,
    n_neighbors: int = 10,
    random_state: int = 0,
    tie_tolerance: float = 0.02,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> SetComparison:
    """Compare descriptor sets by their clusterings, outliers, neighbourhoods and metrics.

    One block-wise pass over all label arrays gives exact (all rows) label and
    attribute agreement; outlier scores and reduced rows are only read through
    seeded samples.  See the Notes for how every table is computed and how the
    set is recommended.

    Parameters
    ----------
    labels_by_set : mapping of str to array-like of int, shape (n,)
        Labels of every set (numpy, Zarr or Dask), all of the same length.
    attributes : pandas.DataFrame, shape (n, n_columns), optional
        Metadata aligned to the rows.
    attribute_columns : sequence of str, optional
        As in :func:`profile_clusters`.
    outlier_scores_by_set : mapping of str to array-like of float, shape (n,), optional
    reduced_by_set : mapping of str to array-like, shape (n, c_set), optional
        Reduced rows of every set (c may differ between sets).
    metrics : DataFrame or mapping, optional
        The study's metrics: a DataFrame with a ``set`` column (rows with
        ``chosen`` True are used when that column exists) or ``{set: row}``;
        columns used: ``k``, ``n_rows``, ``silhouette``, ``davies_bouldin``,
        ``calinski_harabasz``, ``n_features``, ``n_components``.
    sample_size : int, default 5000
        Rows sampled for score correlation and kNN queries.
    reference_size : int, default 20000
        Reference rows for the kNN search.
    n_neighbors : int, default 10
    random_state : int, default 0
        Seed of the samples (scores, kNN reference and queries).
    tie_tolerance : float, default 0.02
        AMI differences up to this count as ties in the recommendation.
    memory : str or int, optional
        Memory budget of the block-wise passes (default 1 GiB).
    block_rows : int, optional
        Rows per block (overrides ``memory``).

    Returns
    -------
    SetComparison

    Raises
    ------
    InputError
        If fewer than one set is given, lengths differ, or a mapping names a set
        without labels.

    Notes
    -----
    **Tables.**

    * **label_agreement** -- ARI and AMI between every pair of sets' labels, from
      contingency tables accumulated in one block-wise pass over all label arrays
      (exact, all rows).
    * **attribute_agreement / ami_table** -- purity, NMI, AMI, ARI of each set's
      labels with each metadata attribute (same pass; rows with a missing value
      left out).
    * **score_correlation** -- Spearman rank correlation of the outlier scores
      between sets on a seeded sample of ``sample_size`` rows (the same rows for
      every set).  A sample estimate: its standard error is about
      ``1 / sqrt(sample_size)``.
    * **knn_overlap** -- a seeded reference sample of ``reference_size`` rows
      (the same rows for every set) is read from every set's reduced rows;
      ``sample_size`` of them are queries.  For each query, the exact
      (brute-force, Euclidean) ``n_neighbors`` nearest rows among the reference
      sample (itself excluded) are found in each set's space, and the table is
      the mean Jaccard overlap of these neighbour sets between two sets (1 on the
      diagonal; chance level is about ``n_neighbors / reference_size``).  Because
      the reference is a sample, the neighbourhoods are those of a
      ``n / reference_size`` times sparser data set: coarser than the true
      nearest neighbours, but comparable between sets.
    * **normalized_metrics** -- per set: ``silhouette`` (in [-1, 1], already
      scale free) and ``davies_bouldin`` (a ratio of distances, scale free) as
      given; the Calinski-Harabasz index grows with the number of rows and
      depends on k, so it is replaced by ``between_within_ratio`` =
      ``CH * (k - 1) / (n - k)`` = between-cluster over within-cluster sum of
      squares, and ``variance_explained`` = ``ratio / (1 + ratio)`` (the share
      of the variance the clustering explains, R^2); plus cluster-size shares.
      Without ``metrics`` and with ``reduced_by_set``, a silhouette is estimated
      here on the reference sample (``silhouette_source = "sampled here"``).
    * **neighbour_agreement** -- with metadata and reduced rows: for the same
      kNN queries, the chance-corrected share of neighbours with the query's
      attribute value (clustering-free evidence of what each space encodes).

    **Recommendation.**  Per attribute, the set whose labels have the highest
    AMI with it (reason like ``"vdc_color: AMI 0.71 with color vs 0.22 for
    osnet"``).  Sets within ``tie_tolerance`` of the best AMI are a tie (``tie``
    column, said in the reason); a tie goes to the most *specific* set, the one whose clusters
    have the lowest mean AMI with the other vehicle attributes (its clusters
    are about this attribute, not a mix).  Overall, the set with the best mean
    AMI over the vehicle attributes present (:data:`VEHICLE_ATTRIBUTES` and
    other non-condition attributes), ties within ``tie_tolerance`` broken by
    the higher silhouette; acquisition conditions (:data:`CONDITION_ATTRIBUTES`,
    e.g. camera) are reported but never rewarded -- a set that groups images
    by camera is not better for it.  Without metadata, the set with the best
    silhouette.
    """
    sets = list(labels_by_set)
    if not sets:
        raise InputError("labels_by_set is empty; give the labels of at least one set.")
    labels = {s: _plain(labels_by_set[s]) for s in sets}
    n = _n_rows(labels[sets[0]])
    for s in sets:
        if _n_rows(labels[s]) != n:
            raise InputError(f"labels of {s!r} have {_n_rows(labels[s]):,} rows, those of "
                             f"{sets[0]!r} {n:,}; all sets must label the same rows.")
    for what, mapping in (("outlier_scores_by_set", outlier_scores_by_set),
                          ("reduced_by_set", reduced_by_set)):
        for s in (mapping or {}):
            if s not in labels:
                raise InputError(f"{what} names set {s!r} that has no labels; sets: {sets}.")
            if _n_rows(mapping[s]) != n:
                raise InputError(f"{what}[{s!r}] has {_n_rows(mapping[s]):,} rows, the labels {n:,}.")
    codes = _attribute_codes(attributes, attribute_columns, n)
    rows_per_block = _block_rows(memory, block_rows, len(sets) + len(codes) + 1)
    notes: dict[str, str] = {}

    # ---- one pass: sizes, set x set and set x attribute contingency tables
    sizes_t = {s: _Counts() for s in sets}
    pair_t = {(a, b): _Counts() for i, a in enumerate(sets) for b in sets[i + 1:]}
    attr_t = {(s, a): _Counts() for s in sets for a in codes}
    for rows, blocks in _iter_aligned([labels[s] for s in sets], rows_per_block):
        labs = {s: _as_labels(b, f"labels of {s!r}", rows.start) for s, b in zip(sets, blocks)}
        zeros = np.zeros(rows.stop - rows.start, np.int64)
        for s in sets:
            sizes_t[s].add(labs[s], zeros)
        for (a, b), t in pair_t.items():
            t.add(labs[a], labs[b])
        for attr, (c, _) in codes.items():
            cb = c[rows]
            known = cb >= 0
            for s in sets:
                attr_t[s, attr].add(labs[s][known], cb[known])
    sizes = {s: pd.Series(sizes_t[s].table[:, 0], index=sizes_t[s].rows) for s in sets}

    ari = pd.DataFrame(np.eye(len(sets)), index=sets, columns=sets)
    ami = ari.copy()
    for (a, b), t in pair_t.items():
        sc = contingency_scores(t.table)
        ari.loc[a, b] = ari.loc[b, a] = sc["ari"]
        ami.loc[a, b] = ami.loc[b, a] = sc["ami"]
    label_agreement = pd.concat({"ari": ari, "ami": ami}, axis=1)
    label_agreement.index.name = "set"

    agree_rows = []
    for (s, attr), t in attr_t.items():
        sc = contingency_scores(t.table)
        agree_rows.append({"set": s, "attribute": attr, "n": sc["n"], "n_values": len(t.cols),
                           "purity": sc["purity"], "nmi": sc["nmi"], "ami": sc["ami"], "ari": sc["ari"]})
    attribute_agreement = pd.DataFrame(agree_rows, columns=["set", "attribute", "n", "n_values",
                                                            "purity", "nmi", "ami", "ari"])
    if agree_rows:
        ami_table = attribute_agreement.pivot(index="set", columns="attribute", values="ami")
        ami_table = ami_table.loc[sets, list(codes)]
    else:
        ami_table = pd.DataFrame(index=pd.Index(sets, name="set"))

    rng = np.random.default_rng(random_state)
    # ---- outlier score correlation on a sample
    score_correlation = None
    if outlier_scores_by_set:
        m = min(int(sample_size), n)
        idx = np.sort(rng.choice(n, size=m, replace=False))
        sample = {}
        for s, arr in outlier_scores_by_set.items():
            br = _block_rows(memory, block_rows, 1)
            sample[s] = _take_rows(arr, idx, br).astype(np.float64).reshape(-1)
        score_correlation = pd.DataFrame(sample).corr(method="spearman")
        score_correlation.index.name = "set"
        notes["score_correlation"] = (f"Spearman rank correlation on {m:,} rows sampled with "
                                      f"seed {random_state} (same rows for every set).")
    else:
        rng.random()  # keep the kNN sample independent of whether scores were given

    # ---- kNN overlap on a reference sample
    knn_overlap = None
    neighbour_agreement = None
    sampled_sil: dict[str, float] | None = None
    if reduced_by_set:
        knn_rng = np.random.default_rng([random_state, 1])
        r = min(int(reference_size), n)
        ref = np.sort(knn_rng.choice(n, size=r, replace=False))
        q = min(int(sample_size), r)
        q_pos = np.sort(knn_rng.choice(r, size=q, replace=False))
        k = max(1, min(int(n_neighbors), r - 1))
        neigh = {}
        ref_rows = {}
        for s, arr in reduced_by_set.items():
            arr = _plain(arr)
            br = block_rows or block_rows_for(int(arr.shape[1]), memory)
            R = _take_rows(arr, ref, br).astype(np.float32)
            ref_rows[s] = R
            if r > 1:
                neigh[s] = _knn_indices(R, q_pos, k)
        have = [s for s in sets if s in neigh]
        if have:
            knn_overlap = pd.DataFrame(np.eye(len(have)), index=have, columns=have)
            for i, a in enumerate(have):
                for b in have[i + 1:]:
                    knn_overlap.loc[a, b] = knn_overlap.loc[b, a] = _jaccard(neigh[a], neigh[b])
            knn_overlap.index.name = "set"
            notes["knn_overlap"] = (
                f"mean Jaccard overlap of the {k} nearest neighbours (exact, Euclidean, in each "
                f"set's reduced space) of {q:,} query rows among a reference sample of {r:,} rows "
                f"(seed {random_state}); chance level ~{k / max(1, r - 1):.4f}.")
            if codes:
                neighbour_agreement = pd.DataFrame(
                    {attr: [_neighbour_kappa(c[ref], q_pos, neigh[s]) for s in have]
                     for attr, (c, _) in codes.items()},
                    index=pd.Index(have, name="set"))
                notes["neighbour_agreement"] = (
                    "chance-corrected share of the same kNN neighbours (as knn_overlap) having the "
                    "query's attribute value: (observed - chance) / (1 - chance), chance = sum of "
                    "squared value shares in the reference sample; 1 = neighbours always agree, "
                    "0 = no better than chance.  Independent of any clustering.")
        if metrics is None:
            from sklearn.metrics import silhouette_score

            sampled_sil = {}
            m = min(int(sample_size), r)
            sub = np.sort(knn_rng.choice(r, size=m, replace=False))
            for s, R in ref_rows.items():
                lab = _as_labels(_take_rows(labels[s], ref[sub], rows_per_block), s, 0)
                keep = lab >= 0
                if len(np.unique(lab[keep])) >= 2 and keep.sum() > len(np.unique(lab[keep])):
                    sampled_sil[s] = float(silhouette_score(R[sub][keep].astype(np.float64), lab[keep]))
                else:
                    sampled_sil[s] = float("nan")
            notes["silhouette"] = (f"silhouette estimated here on {m:,} sampled rows of the "
                                   "reduced space (noise left out).")

    normalized = _normalized_metrics(_metrics_by_set(metrics, sets), sizes, n, sampled_sil)
    for key, frame in (("score_correlation", score_correlation), ("knn_overlap", knn_overlap),
                       ("neighbour_agreement", neighbour_agreement),
                       ("silhouette", normalized)):
        if frame is not None and key in notes:
            frame.attrs["note"] = notes[key]

    # ---- recommendation
    vehicle_attrs = [a for a in codes if a not in CONDITION_ATTRIBUTES]
    sil = normalized["silhouette"] if "silhouette" in normalized.columns else None
    rec_rows = [_recommend_attribute(attr, ami_table, vehicle_attrs, tie_tolerance) for attr in codes]
    rec_rows = [r for r in rec_rows if r is not None]
    recommended, reason, overall_row = _recommend_overall(
        ami_table, vehicle_attrs, rec_rows, sil, tie_tolerance)
    if overall_row is not None:
        rec_rows.append(overall_row)
    recommendation = pd.DataFrame(rec_rows, columns=["attribute", "best_set", "score", "runner_up",
                                                     "runner_up_score", "metric", "tie", "reason"])
    recommendation = recommendation.set_index("attribute")

    return SetComparison(
        sets=sets, label_agreement=label_agreement, attribute_agreement=attribute_agreement,
        ami_table=ami_table, score_correlation=score_correlation, knn_overlap=knn_overlap,
        normalized_metrics=normalized, recommendation=recommendation,
        recommended_set=recommended, reason=reason, neighbour_agreement=neighbour_agreement,
        notes=notes,
    )
